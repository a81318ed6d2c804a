// Host launch of the one-pass backward (flash_bwd_atomic_sm80.cuh): delta (zeroing dq_acc),
// the key-tile kernel, then dq = scale · dq_acc, all on the caller's stream.
#include "cuda/flash_bwd_atomic_sm80.cuh"
#include "cuda/flash_bwd_sm80.cuh"
#include "cuda/launch_util.cuh"

namespace attnkit::cuda {
namespace {

template <int kD, int kBN, int kBM, bool kBf16, bool kCausal>
void run_bwd_atomic(const FlashParams& p, int max_seq_k, cudaStream_t stream) {
  using Tile = BwdAtomicTile<kD, kBN, kBM>;
  const int64_t rows = int64_t{p.batch} * p.seq_q * p.heads_q;
  flash_bwd_delta_kernel<kD, kBf16><<<static_cast<unsigned>((rows + 255) / 256), 256, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "flash_bwd_delta_kernel launch");

  auto kernel = flash_bwd_atomic_kernel<kD, kBN, kBM, kBf16, kCausal>;
  allow_smem(kernel, Tile::kSmem);
  const dim3 grid((max_seq_k + kBN - 1) / kBN, p.heads_kv, p.num_seqs);
  kernel<<<grid, Tile::kThreads, Tile::kSmem, stream>>>(p);
  check_cuda(cudaGetLastError(), "flash_bwd_atomic_kernel launch");

  const int64_t chunks = rows * (kD / 8);
  flash_bwd_dq_convert_kernel<kD, kBf16><<<static_cast<unsigned>((chunks + 255) / 256), 256, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "flash_bwd_dq_convert_kernel launch");
}

template <int kD, bool kBf16>
void run_bwd_atomic(const FlashParams& p, bool causal, int max_seq_k, cudaStream_t stream) {
  // 128 keys (8 warps) per CTA; 128 queries per step at D = 64, 64 at D = 128 (registers:
  // dK and dV take 128 of them there). Lab 07 in lab/cuda/NOTES.md.
  constexpr int kBM = kD == 64 ? 128 : 64;
  if (causal) return run_bwd_atomic<kD, 128, kBM, kBf16, true>(p, max_seq_k, stream);
  run_bwd_atomic<kD, 128, kBM, kBf16, false>(p, max_seq_k, stream);
}

}  // namespace

bool launch_flash_bwd_atomic(const FlashParams& p, bool is_bf16, int head_dim, bool causal, int max_seq_k,
                             void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (head_dim) {
    case 64:
      is_bf16 ? run_bwd_atomic<64, true>(p, causal, max_seq_k, s) : run_bwd_atomic<64, false>(p, causal, max_seq_k, s);
      return true;
    case 128:
      is_bf16 ? run_bwd_atomic<128, true>(p, causal, max_seq_k, s)
              : run_bwd_atomic<128, false>(p, causal, max_seq_k, s);
      return true;
    default: return false;
  }
}

}  // namespace attnkit::cuda
