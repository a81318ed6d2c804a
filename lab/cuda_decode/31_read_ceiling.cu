// Lab cuda_decode 31: the fastest any kernel can read each of the bench's page layouts, beside
// cuDNN and ours in the same rounds (31_read_ceiling.py). Measured (H100, 2026-11-23, log
// 31_read_ceiling_h100.log): the read alone takes 348.4 / 351.7 µs (B = 32, physical / churned)
// and 345.0 / 349.6 (B = 4), where cuDNN took 361.0 / 365.0 and ours 356.6 / 359.3 and 356.7 /
// 361.8: ours is 2.2 % (B = 32) and 3.4 % (B = 4) slower than the read on every layout alike.
// A shared library for ctypes, not built by CMake:
//   nvcc -O3 -std=c++17 -shared -Xcompiler -fPIC -gencode=arch=compute_90a,code=sm_90a \
//     lab/cuda_decode/31_read_ceiling.cu -o lab31_read.so
//
// lab31_read launches a kernel that reads a paged pool in the decode kernel's own split and
// does nothing else with the bytes: grid (KV heads, chunk groups, sequences), `warps` warps a
// CTA, warp w of CTA y streaming chunk y·warps + w of its (sequence, KV head), `chunk_blocks`
// 16-key blocks long, each block's K and V (4 KiB each at head_dim 128) copied with 16-byte
// cp.async into a ring of `stages` stages (the decode kernel's loads and L2 hint), one word of
// each folded into a checksum. Pool layout as the bench's: [page][K, V][head][16][128] bf16.
#include <cuda_runtime.h>

#include <cstdint>

namespace {

constexpr int kD = 128, kBlock = 16 * kD;  // elements of one head's K (or V) block

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

struct Params {
  const uint16_t* pool;
  const int* table;
  uint32_t* sink;
  int heads_kv, pages_per_seq, chunk_blocks, warps;
};

template <int kStages, int kPrefetch>
__global__ void __launch_bounds__(256) read_split(const __grid_constant__ Params p) {
  extern __shared__ __align__(16) uint16_t smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int hk = blockIdx.x, s = blockIdx.z, chunk = blockIdx.y * p.warps + warp;
  const int b0 = chunk * p.chunk_blocks, b1 = min(p.pages_per_seq, b0 + p.chunk_blocks);
  const int n = b1 - b0;
  if (n <= 0) return;
  const int* table = p.table + int64_t{s} * p.pages_per_seq;
  const int64_t page_elems = 2LL * p.heads_kv * kBlock, kv_off = int64_t{p.heads_kv} * kBlock;
  uint16_t* ring = smem + warp * kStages * 2 * kBlock;
  auto issue = [&](int i, int slot) {
    if (i < n) {
      const int phys = __ldg(table + b0 + i);
      const uint16_t* kg = p.pool + phys * page_elems + int64_t{hk} * kBlock;
      uint16_t* st = ring + slot * 2 * kBlock;
#pragma unroll
      for (int kv = 0; kv < 2; ++kv)
#pragma unroll
        for (int x = 0; x < 8; ++x) {
          const int off = (lane + 32 * x) * 8;
          const uint16_t* src = kg + kv * kv_off + off;
          if constexpr (kPrefetch == 256) {
            asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(smem_addr(st + kv * kBlock + off)),
                         "l"(src)
                         : "memory");
          } else {
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(st + kv * kBlock + off)),
                         "l"(src)
                         : "memory");
          }
        }
    }
    asm volatile("cp.async.commit_group;\n" ::: "memory");
  };
  for (int i = 0; i < kStages - 1; ++i) issue(i, i);
  uint32_t acc = 0;
  int use = 0, fill = kStages - 1;
  for (int i = 0; i < n; ++i) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 2) : "memory");
    __syncwarp();
    issue(i + kStages - 1, fill);  // the stage that step i − 1 consumed
    fill = fill + 1 == kStages ? 0 : fill + 1;
    const uint16_t* st = ring + use * 2 * kBlock;
    use = use + 1 == kStages ? 0 : use + 1;
    acc ^= reinterpret_cast<const uint32_t*>(st)[lane] ^ reinterpret_cast<const uint32_t*>(st + kBlock)[lane];
  }
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  if (acc == 0x12345678u) p.sink[0] = acc;
}

template <int kStages, int kPrefetch>
int launch(const Params& p, int chunk_groups, int seqs, cudaStream_t stream) {
  const int smem = p.warps * kStages * 2 * kBlock * 2;
  if (cudaFuncSetAttribute(read_split<kStages, kPrefetch>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) !=
      cudaSuccess)
    return 2;
  read_split<kStages, kPrefetch><<<dim3(p.heads_kv, chunk_groups, seqs), p.warps * 32, smem, stream>>>(p);
  return cudaGetLastError() == cudaSuccess ? 0 : 3;
}

}  // namespace

// pool, table [seqs][pages_per_seq] int32, sink (≥ 4 bytes): device pointers. 0 on success.
extern "C" int lab31_read(const void* pool, const int* table, void* sink, int seqs, int heads_kv, int pages_per_seq,
                          int chunk_blocks, int chunk_groups, int warps, int stages, int prefetch, void* stream) {
  const Params p{static_cast<const uint16_t*>(pool), table, static_cast<uint32_t*>(sink), heads_kv, pages_per_seq,
                 chunk_blocks, warps};
  const auto st = static_cast<cudaStream_t>(stream);
  if (stages == 2) return prefetch ? launch<2, 256>(p, chunk_groups, seqs, st) : launch<2, 0>(p, chunk_groups, seqs, st);
  if (stages == 3) return prefetch ? launch<3, 256>(p, chunk_groups, seqs, st) : launch<3, 0>(p, chunk_groups, seqs, st);
  if (stages == 4) return prefetch ? launch<4, 256>(p, chunk_groups, seqs, st) : launch<4, 0>(p, chunk_groups, seqs, st);
  return 1;
}
