// Host launch of the backward kernels (flash_bwd_sm80.cuh): delta, then dQ and dK/dV, all on
// the caller's stream. Runtime head_dim, dtype and causal become template arguments here.
#include "cuda/flash_bwd_sm80.cuh"
#include "cuda/launch_util.cuh"

namespace attnkit::cuda {
namespace {

template <int kD, bool kBf16, bool kCausal>
void run_bwd(const FlashParams& p, int max_seq_q, int max_seq_k, cudaStream_t stream) {
  using Tile = BwdTile<kD>;
  const int64_t rows = int64_t{p.batch} * p.seq_q * p.heads_q;
  flash_bwd_delta_kernel<kD, kBf16><<<static_cast<unsigned>((rows + 255) / 256), 256, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "flash_bwd_delta_kernel launch");

  auto dq_kernel = flash_bwd_dq_kernel<kD, kBf16, kCausal>;
  allow_smem(dq_kernel, Tile::kSmemDq);
  const dim3 dq_grid((max_seq_q + Tile::kBM - 1) / Tile::kBM, p.heads_q, p.num_seqs);
  dq_kernel<<<dq_grid, Tile::kThreads, Tile::kSmemDq, stream>>>(p);
  check_cuda(cudaGetLastError(), "flash_bwd_dq_kernel launch");

  auto dkv_kernel = flash_bwd_dkv_kernel<kD, kBf16, kCausal>;
  allow_smem(dkv_kernel, Tile::kSmemDkv);
  const dim3 dkv_grid((max_seq_k + Tile::kBN - 1) / Tile::kBN, p.heads_kv * (kD / Tile::kDOut), p.num_seqs);
  dkv_kernel<<<dkv_grid, Tile::kThreads, Tile::kSmemDkv, stream>>>(p);
  check_cuda(cudaGetLastError(), "flash_bwd_dkv_kernel launch");
}

template <int kD, bool kBf16>
void run_bwd(const FlashParams& p, bool causal, int max_seq_q, int max_seq_k, cudaStream_t stream) {
  if (causal) return run_bwd<kD, kBf16, true>(p, max_seq_q, max_seq_k, stream);
  run_bwd<kD, kBf16, false>(p, max_seq_q, max_seq_k, stream);
}

template <int kD>
void run_bwd(const FlashParams& p, bool is_bf16, bool causal, int max_seq_q, int max_seq_k, cudaStream_t stream) {
  if (is_bf16) return run_bwd<kD, true>(p, causal, max_seq_q, max_seq_k, stream);
  run_bwd<kD, false>(p, causal, max_seq_q, max_seq_k, stream);
}

}  // namespace

void launch_flash_bwd(const FlashParams& p, bool is_bf16, int head_dim, bool causal, int max_seq_q,
                      int max_seq_k, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (head_dim) {
    case 64: return run_bwd<64>(p, is_bf16, causal, max_seq_q, max_seq_k, s);
    case 128: return run_bwd<128>(p, is_bf16, causal, max_seq_q, max_seq_k, s);
    case 256: return run_bwd<256>(p, is_bf16, causal, max_seq_q, max_seq_k, s);
    default: throw std::logic_error("launch_flash_bwd: unsupported head_dim passed validation");
  }
}

}  // namespace attnkit::cuda
