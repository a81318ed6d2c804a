// Host launch of the Hopper forward kernel (flash_fwd_sm90.cuh): builds the TMA tensor maps
// and turns runtime head_dim, dtype and causal into template arguments (2 × 2 × 2
// instantiations). Head dims other than 64 and 128 stay on the sm80 kernel.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include "cuda/launch_util.cuh"
#include "cuda/flash_fwd_sm90.cuh"
#include "cuda/tma_host_sm90.h"

namespace attnkit::cuda {
namespace {

// LAB ONLY (lab/cuda 09): ATTNKIT_LAB_FWD="order,pingpong,half,persistent" picks the variant
// (Sm90Lab in flash_fwd_sm90.cuh; persistent: 1 = a grid of one CTA per multiprocessor instead
// of one per unit, n > 1 = n CTAs). Default: the schedule before lab 09 ("0,0,0,P", P = 1 unless causal).
struct LabChoice {
  Sm90Lab lab{0, 1, 0};
  bool pingpong = false;
  int persistent = -1;
};
LabChoice lab_choice() {
  LabChoice c;
  if (const char* e = std::getenv("ATTNKIT_LAB_FWD")) {
    int o = 0, pp = 0, half = 0, pers = -1;
    std::sscanf(e, "%d,%d,%d,%d", &o, &pp, &half, &pers);
    c.lab.order = o;
    c.pingpong = pp != 0;
    c.lab.half = half;
    c.persistent = pers;
  }
  return c;
}

template <int kD, bool kBf16, bool kCausal, bool kPingPong>
void run_fwd_sm90(const FlashParams& p, int max_seq_q, LabChoice c, cudaStream_t stream) {
  using Tile = Sm90FwdTile<kD>;
  Sm90Maps maps;
  const int64_t b = p.varlen ? 1 : p.batch;
  maps.q = make_tile_map(p.q, kBf16, kD, p.seq_q, p.heads_q, b, p.q_s.row, p.q_s.head, p.q_s.batch, Tile::kBM);
  maps.k = make_tile_map(p.k, kBf16, kD, p.seq_k, p.heads_kv, b, p.k_s.row, p.k_s.head, p.k_s.batch, Tile::kBN);
  maps.v = make_tile_map(p.v, kBf16, kD, p.seq_k, p.heads_kv, b, p.v_s.row, p.v_s.head, p.v_s.batch, Tile::kBN);
  auto kernel = flash_fwd_sm90_kernel<kD, kBf16, kCausal, kPingPong>;
  allow_smem(kernel, Tile::kSmemBytes);
  int dev = 0, sms = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  const int m_tiles = (max_seq_q + Tile::kBM - 1) / Tile::kBM;
  const int64_t total = int64_t{m_tiles} * p.heads_q * p.num_seqs;
  if (total > INT32_MAX) throw std::runtime_error("attnkit: flash_fwd_sm90: too many query tiles for one launch");
  const bool persistent = c.persistent < 0 ? !kCausal : c.persistent != 0;
  // order 1: as many heads per group as fit 16 MB of K and V
  const int64_t kv_bytes = int64_t{std::max(p.seq_k, 1)} * kD * 4;
  c.lab.group = static_cast<int>(std::clamp<int64_t>((int64_t{16} << 20) / kv_bytes, 1, int64_t{p.heads_q} * p.num_seqs));
  const int64_t slots = c.lab.order == 2 ? (total + 1) / 2 : total;
  const int cap = c.persistent > 1 ? c.persistent : sms;  // lab: a small grid, many units per CTA
  const int grid = static_cast<int>(persistent ? std::min<int64_t>(slots, cap) : slots);
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p, maps, m_tiles, c.lab);
  check_cuda(cudaGetLastError(), "flash_fwd_sm90_kernel launch");
}

template <int kD, bool kBf16>
void run_fwd_sm90(const FlashParams& p, bool causal, int max_seq_q, cudaStream_t stream) {
  const LabChoice c = lab_choice();
  if constexpr (kBf16) {
    if (c.pingpong) {
      if (causal) return run_fwd_sm90<kD, kBf16, true, true>(p, max_seq_q, c, stream);
      return run_fwd_sm90<kD, kBf16, false, true>(p, max_seq_q, c, stream);
    }
  }
  if (causal) return run_fwd_sm90<kD, kBf16, true, false>(p, max_seq_q, c, stream);
  run_fwd_sm90<kD, kBf16, false, false>(p, max_seq_q, c, stream);
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
