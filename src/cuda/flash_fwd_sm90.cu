// Host launch of the Hopper forward kernel (flash_fwd_sm90.cuh): builds the TMA tensor maps
// and turns runtime head_dim, dtype and causal into template arguments (2 × 2 × 2
// instantiations). Head dims other than 64 and 128 stay on the sm80 kernel.
#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "cuda/launch_util.cuh"
#include "cuda/flash_fwd_sm90.cuh"
#include "cuda/tma_host_sm90.h"

namespace attnkit::cuda {
namespace {

template <int kD, bool kBf16, bool kCausal>
void run_fwd_sm90(const FlashParams& p, int max_seq_q, cudaStream_t stream) {
  using Tile = Sm90FwdTile<kD>;
  Sm90Maps maps;
  const int64_t b = p.varlen ? 1 : p.batch;
  maps.q = make_tile_map(p.q, kBf16, kD, p.seq_q, p.heads_q, b, p.q_s.row, p.q_s.head, p.q_s.batch, Tile::kBM);
  maps.k = make_tile_map(p.k, kBf16, kD, p.seq_k, p.heads_kv, b, p.k_s.row, p.k_s.head, p.k_s.batch, Tile::kBN);
  maps.v = make_tile_map(p.v, kBf16, kD, p.seq_k, p.heads_kv, b, p.v_s.row, p.v_s.head, p.v_s.batch, Tile::kBN);
  auto kernel = flash_fwd_sm90_kernel<kD, kBf16, kCausal>;
  allow_smem(kernel, Tile::kSmemBytes);
  // Persistent: at most one CTA per multiprocessor walks the pairs of (query tile, head,
  // sequence) units (sm90_unit), so that the next unit's loads overlap this one's epilogue.
  int dev = 0, sms = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  const int m_tiles = (max_seq_q + Tile::kBM - 1) / Tile::kBM;
  const int64_t total = int64_t{m_tiles} * p.heads_q * p.num_seqs;
  if (total > INT32_MAX / 2) throw std::runtime_error("attnkit: flash_fwd_sm90: too many query tiles for one launch");
  const int grid = static_cast<int>(std::min<int64_t>((total + 1) / 2, sms));
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p, maps, m_tiles);
  check_cuda(cudaGetLastError(), "flash_fwd_sm90_kernel launch");
}

template <int kD, bool kBf16>
void run_fwd_sm90(const FlashParams& p, bool causal, int max_seq_q, cudaStream_t stream) {
  if (causal) return run_fwd_sm90<kD, kBf16, true>(p, max_seq_q, stream);
  run_fwd_sm90<kD, kBf16, false>(p, max_seq_q, stream);
}

template <int kD>
void run_fwd_sm90(const FlashParams& p, bool is_bf16, bool causal, int max_seq_q, cudaStream_t stream) {
  if (is_bf16) return run_fwd_sm90<kD, true>(p, causal, max_seq_q, stream);
  run_fwd_sm90<kD, false>(p, causal, max_seq_q, stream);
}

}  // namespace

bool launch_flash_fwd_sm90(const FlashParams& p, bool is_bf16, int head_dim, bool causal, int max_seq_q,
                           void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (head_dim) {
    case 64: run_fwd_sm90<64>(p, is_bf16, causal, max_seq_q, s); return true;
    case 128: run_fwd_sm90<128>(p, is_bf16, causal, max_seq_q, s); return true;
    default: return false;
  }
}

}  // namespace attnkit::cuda
