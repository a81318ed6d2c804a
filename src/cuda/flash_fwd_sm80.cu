// Host launch of the forward kernel (flash_fwd_sm80.cuh): runtime head_dim, dtype and causal
// become template arguments here, and only here (3 × 2 × 2 instantiations).
#include "cuda/flash_fwd_sm80.cuh"
#include "cuda/launch_util.cuh"

namespace attnkit::cuda {
namespace {

template <int kD, bool kBf16, bool kCausal>
void run_fwd(const FlashParams& p, int max_seq_q, cudaStream_t stream) {
  using Tile = FwdTile<kD>;
  auto kernel = flash_fwd_kernel<kD, kBf16, kCausal>;
  allow_smem(kernel, Tile::kSmemBytes);
  const dim3 grid((max_seq_q + Tile::kBM - 1) / Tile::kBM, p.heads_q, p.num_seqs);
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p);
  check_cuda(cudaGetLastError(), "flash_fwd_kernel launch");
}

template <int kD, bool kBf16>
void run_fwd(const FlashParams& p, bool causal, int max_seq_q, cudaStream_t stream) {
  if (causal) return run_fwd<kD, kBf16, true>(p, max_seq_q, stream);
  run_fwd<kD, kBf16, false>(p, max_seq_q, stream);
}

template <int kD>
void run_fwd(const FlashParams& p, bool is_bf16, bool causal, int max_seq_q, cudaStream_t stream) {
  if (is_bf16) return run_fwd<kD, true>(p, causal, max_seq_q, stream);
  run_fwd<kD, false>(p, causal, max_seq_q, stream);
}

}  // namespace

void launch_flash_fwd(const FlashParams& p, bool is_bf16, int head_dim, bool causal, int max_seq_q,
                      void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (head_dim) {
    case 64: return run_fwd<64>(p, is_bf16, causal, max_seq_q, s);
    case 128: return run_fwd<128>(p, is_bf16, causal, max_seq_q, s);
    case 256: return run_fwd<256>(p, is_bf16, causal, max_seq_q, s);
    default: throw std::logic_error("launch_flash_fwd: unsupported head_dim passed validation");
  }
}

bool device_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    return false;
  }
  return major == 9;
}

}  // namespace attnkit::cuda
