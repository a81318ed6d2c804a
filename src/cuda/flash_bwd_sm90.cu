// Host launch of the Hopper backward (flash_bwd_sm90.cuh): delta (zeroing dq_acc), the key-tile
// kernel, then dq = scale · dq_acc, all on the caller's stream. Runtime head_dim, dtype and
// causal become template arguments here (2 × 2 × 2 instantiations).
#include <cstdint>

#include "cuda/flash_bwd_atomic_sm80.cuh"  // flash_bwd_dq_convert_kernel
#include "cuda/flash_bwd_sm80.cuh"  // flash_bwd_delta_kernel
#include "cuda/flash_bwd_sm90.cuh"
#include "cuda/launch_util.cuh"
#include "cuda/tma_host_sm90.h"

namespace attnkit::cuda {
namespace {

template <int kD, bool kBf16, bool kCausal>
void run_bwd_sm90(const FlashParams& p, int max_seq_k, cudaStream_t stream) {
  using Tile = Sm90BwdTile<kD>;
  const int64_t rows = int64_t{p.batch} * p.seq_q * p.heads_q;
  flash_bwd_delta_kernel<kD, kBf16><<<static_cast<unsigned>((rows + 255) / 256), 256, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "flash_bwd_delta_kernel launch");

  Sm90BwdMaps maps{};
  const int64_t b = p.varlen ? 1 : p.batch;
  maps.q = make_tile_map(p.q, kBf16, kD, p.seq_q, p.heads_q, b, p.q_s.row, p.q_s.head, p.q_s.batch, Tile::kBM);
  maps.dout =
      make_tile_map(p.dout, kBf16, kD, p.seq_q, p.heads_q, b, p.do_s.row, p.do_s.head, p.do_s.batch, Tile::kBM);
  maps.k = make_tile_map(p.k, kBf16, kD, p.seq_k, p.heads_kv, b, p.k_s.row, p.k_s.head, p.k_s.batch, Tile::kBN);
  maps.v = make_tile_map(p.v, kBf16, kD, p.seq_k, p.heads_kv, b, p.v_s.row, p.v_s.head, p.v_s.batch, Tile::kBN);
  maps.dq_acc = make_f32_tile_map(p.dq_acc, kD, p.seq_q, p.heads_q, b, Tile::kBM);
  auto kernel = flash_bwd_sm90_kernel<kD, kBf16, kCausal>;
  allow_smem(kernel, Tile::kSmemBytes);
  // Key tiles first along x: causal tiles near the start see the most queries and start first.
  const dim3 grid((max_seq_k + Tile::kBN - 1) / Tile::kBN, p.heads_kv, p.num_seqs);
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p, maps);
  check_cuda(cudaGetLastError(), "flash_bwd_sm90_kernel launch");

  const int64_t chunks = rows * (kD / 8);
  flash_bwd_dq_convert_kernel<kD, kBf16><<<static_cast<unsigned>((chunks + 255) / 256), 256, 0, stream>>>(p);
  check_cuda(cudaGetLastError(), "flash_bwd_dq_convert_kernel launch");
}

template <int kD, bool kBf16>
void run_bwd_sm90(const FlashParams& p, bool causal, int max_seq_k, cudaStream_t stream) {
  if (causal) return run_bwd_sm90<kD, kBf16, true>(p, max_seq_k, stream);
  run_bwd_sm90<kD, kBf16, false>(p, max_seq_k, stream);
}

}  // namespace

bool launch_flash_bwd_sm90(const FlashParams& p, bool is_bf16, int head_dim, bool causal, int max_seq_k,
                           void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (head_dim) {
    case 64:
      is_bf16 ? run_bwd_sm90<64, true>(p, causal, max_seq_k, s) : run_bwd_sm90<64, false>(p, causal, max_seq_k, s);
      return true;
    case 128:
      is_bf16 ? run_bwd_sm90<128, true>(p, causal, max_seq_k, s) : run_bwd_sm90<128, false>(p, causal, max_seq_k, s);
      return true;
    default: return false;
  }
}

}  // namespace attnkit::cuda
