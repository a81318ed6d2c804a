// Host side of the TMA loads: builds the tensor maps (CUtensorMap) that the sm_90a kernels take
// as __grid_constant__ parameters. cuTensorMapEncodeTiled is a driver function; it is reached
// through the runtime's driver entry point, so that nothing links libcuda (CI has no driver).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace attnkit::cuda {

inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t e =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found);
    if (e != cudaSuccess || found != cudaDriverEntryPointSuccess || f == nullptr) {
      throw std::runtime_error("attnkit: cuTensorMapEncodeTiled not found in the CUDA driver");
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// A 4-d map over a [batch][rows][heads][cols] 16-bit tensor (strides in elements, cols
// contiguous) whose box is 64 columns × box_rows rows of one head of one batch entry, written
// to shared memory in the 128-byte swizzle. Reads past `rows` are zero-filled.
inline CUtensorMap make_tile_map(const void* base, bool bf16, int cols, int64_t rows, int64_t heads, int64_t batch,
                                 int64_t stride_row, int64_t stride_head, int64_t stride_batch, int box_rows) {
  CUtensorMap map;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows),
                              static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(batch)};
  // An extent of 1 never steps its stride; give it a legal one (a multiple of 16 bytes).
  auto legal = [](int64_t s, int64_t extent) { return static_cast<cuuint64_t>(extent > 1 ? s * 2 : 16); };
  const cuuint64_t strides[3] = {legal(stride_row, rows), legal(stride_head, heads), legal(stride_batch, batch)};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUresult r = tensor_map_encoder()(
      &map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, const_cast<void*>(base), dims,
      strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) throw std::runtime_error("attnkit: cuTensorMapEncodeTiled failed, error " + std::to_string(r));
  return map;
}

// A 4-d map over a contiguous f32 tensor [batch][rows][heads][cols] (the backward's dQ
// accumulator) whose box is 32 columns (128 bytes) × box_rows rows of one head, in the 128-byte
// swizzle; the target of TMA reduce-adds, which skip elements outside the tensor.
inline CUtensorMap make_f32_tile_map(void* base, int cols, int64_t rows, int64_t heads, int64_t batch,
                                     int box_rows) {
  CUtensorMap map;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows),
                              static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(batch)};
  const int64_t row = heads * cols * 4, head = cols * 4, seq = rows * row;
  auto legal = [](int64_t s, int64_t extent) { return static_cast<cuuint64_t>(extent > 1 ? s : 16); };
  const cuuint64_t strides[3] = {legal(row, rows), legal(head, heads), legal(seq, batch)};
  const cuuint32_t box[4] = {32, static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, base, dims, strides, box,
                                          elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) throw std::runtime_error("attnkit: cuTensorMapEncodeTiled failed, error " + std::to_string(r));
  return map;
}

}  // namespace attnkit::cuda
