// Host launch of the GPU decode kernels (decode_sm90.cuh): runtime head_dim, dtype, rows per
// item and the parameter form (up to 64 or 1024 sequences) become template arguments here, and
// only here (20 decode instantiations: head_dim 64 and 128 with 8 or 16 rows, 256 with 8, each
// bf16 and f16, each parameter form; 8 combine: 4 or 8 warps, each dtype and form), plus the
// device queries that the partition needs (cached per device).
#include <cuda_runtime.h>

#include <array>
#include <mutex>
#include <stdexcept>
#include <type_traits>

#include "cuda/decode_sm90.cuh"
#include "cuda/launch_util.cuh"

namespace attnkit::cuda {
namespace {

constexpr int kMaxDevices = 64;

// The kernel, its dynamic shared-memory limit raised to the device's opt-in maximum once per
// device (so that launches need no attribute call).
template <int kD, bool kBf16, int kRT, int kSeqs>
auto prepared_kernel() {
  static std::mutex mu;
  static std::array<bool, kMaxDevices> done{};
  auto kernel = decode_kernel<kD, kBf16, kRT, kSeqs>;
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mu);
  if (dev >= kMaxDevices || !done[dev]) {
    int optin = 0;
    check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
    allow_smem(kernel, optin);
    if (dev < kMaxDevices) done[dev] = true;
  }
  return kernel;
}

// Calls f(kernel) with the instantiation for the runtime arguments, taking parameters of kSeqs
// sequences.
template <int kSeqs, typename F>
void with_kernel(bool is_bf16, int head_dim, int row_tile_rows, F&& f) {
  auto pick = [&](auto dc) {
    constexpr int kD = decltype(dc)::value;
    if constexpr (kD == 256) {  // 16-row items would spill: head_dim 256 always takes 8 rows
      (void)row_tile_rows;
      if (is_bf16) return f(prepared_kernel<kD, true, 1, kSeqs>());
      return f(prepared_kernel<kD, false, 1, kSeqs>());
    } else {
      if (is_bf16) {
        if (row_tile_rows == 8) return f(prepared_kernel<kD, true, 1, kSeqs>());
        return f(prepared_kernel<kD, true, 2, kSeqs>());
      }
      if (row_tile_rows == 8) return f(prepared_kernel<kD, false, 1, kSeqs>());
      return f(prepared_kernel<kD, false, 2, kSeqs>());
    }
  };
  switch (head_dim) {
    case 64: return pick(std::integral_constant<int, 64>());
    case 128: return pick(std::integral_constant<int, 128>());
    case 256: return pick(std::integral_constant<int, 256>());
    default: throw std::logic_error("decode: unsupported head_dim passed validation");
  }
}

int smem_bytes(int head_dim, int warps, int stages) { return warps * stages * 2 * 16 * head_dim * 2; }

// The decode kernel and, when sequences span several CTAs, the combine kernel, with p's
// parameters in the form of kSeqs sequences.
template <int kSeqs>
void launch_with(const DecodeParamsT<kSeqs>& p, bool is_bf16, int head_dim, int row_tile_rows, int units,
                 int chunk_groups, bool combine, cudaStream_t st) {
  const int smem = smem_bytes(head_dim, p.warps, p.stages);
  const dim3 grid(units, chunk_groups, p.num_seqs);  // heads fastest: see decode_kernel
  with_kernel<kSeqs>(is_bf16, head_dim, row_tile_rows, [&](auto kernel) {
    kernel<<<grid, p.warps * 32, smem, st>>>(p);
  });
  check_cuda(cudaGetLastError(), "decode_kernel launch");
  if (!combine) return;
  // Sequences over several CTAs: their partial results merged by a programmatic dependent
  // launch, whose CTAs are placed while decode_kernel runs and start merging as soon as it
  // finishes, instead of after a launch gap.
  const int64_t rows = int64_t{p.num_seqs} * p.nq * p.heads_q;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(rows));
  const bool wide = p.max_splits > 32;  // 8 warps past 32 chunks a row (one round of loads)
  cfg.blockDim = dim3(wide ? 256 : 128);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const cudaError_t e =
      wide ? (is_bf16 ? cudaLaunchKernelEx(&cfg, decode_combine_kernel<true, kSeqs, 8>, p, head_dim)
                      : cudaLaunchKernelEx(&cfg, decode_combine_kernel<false, kSeqs, 8>, p, head_dim))
           : (is_bf16 ? cudaLaunchKernelEx(&cfg, decode_combine_kernel<true, kSeqs, 4>, p, head_dim)
                      : cudaLaunchKernelEx(&cfg, decode_combine_kernel<false, kSeqs, 4>, p, head_dim));
  check_cuda(e, "decode_combine_kernel launch");
}

}  // namespace

int current_device_sms() {
  static std::array<int, kMaxDevices> sms{};
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  if (dev < kMaxDevices && sms[dev] > 0) return sms[dev];
  int n = 0;
  check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  if (dev < kMaxDevices) sms[dev] = n;
  return n;
}

int decode_ctas_per_sm(bool is_bf16, int head_dim, int row_tile_rows, int warps, int stages) {
  // Cache: [device][head_dim 64/128/256][dtype][rows 8/16][warps 1..8][stages 2..4].
  static std::mutex mu;
  static std::array<int, kMaxDevices * 3 * 2 * 2 * 8 * 3> cache{};
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  const int di = head_dim == 64 ? 0 : head_dim == 128 ? 1 : 2;
  const size_t key = ((((static_cast<size_t>(dev) * 3 + di) * 2 + is_bf16) * 2 + (row_tile_rows == 16)) * 8 +
                      (warps - 1)) * 3 + (stages - 2);
  {
    std::lock_guard<std::mutex> lock(mu);
    if (dev < kMaxDevices && cache[key] > 0) return cache[key];
  }
  const int smem = smem_bytes(head_dim, warps, stages);
  int n = 0;
  with_kernel<kMaxDecodeSeqs>(is_bf16, head_dim, row_tile_rows, [&](auto kernel) {
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, warps * 32, smem),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  });
  std::lock_guard<std::mutex> lock(mu);
  if (dev < kMaxDevices) cache[key] = n;
  return n;
}

void launch_decode(const DecodeKernelParams& p, bool is_bf16, int head_dim, int row_tile_rows, int units,
                   int chunk_groups, bool combine, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  if (p.num_seqs > kSmallDecodeSeqs) {
    launch_with(p, is_bf16, head_dim, row_tile_rows, units, chunk_groups, combine, st);
    return;
  }
  DecodeParamsT<kSmallDecodeSeqs> small{};
  static_cast<DecodeCommonParams&>(small) = p;
  std::copy(p.key_begin, p.key_begin + p.num_seqs, small.key_begin);
  std::copy(p.key_end, p.key_end + p.num_seqs, small.key_end);
  std::copy(p.window, p.window + p.num_seqs, small.window);
  launch_with(small, is_bf16, head_dim, row_tile_rows, units, chunk_groups, combine, st);
}

int pointer_location(const void* ptr) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return -2;
  }
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, ptr) != cudaSuccess) {
    cudaGetLastError();  // not a pointer the runtime knows
    return 0;
  }
  if (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged) return a.device == dev ? 1 : -1;
  return 0;
}

}  // namespace attnkit::cuda
