// Flash attention forward on Hopper (sm_90a): TMA + wgmma, warp specialised (FlashAttention-3,
// Shah et al. 2024, §3.1). A CTA owns kBM = 128 query rows of one head of one sequence at a time:
//   warpgroup 0, the producer: one thread loads the Q tile once and the K and V tiles (kBN key
//     rows each) into a kStages-deep ring with TMA, each stage completing on an mbarrier
//     ("full"); it reuses a stage once both consumers have released it ("empty");
//   warpgroups 1 and 2, the consumers: 64 query rows each, for each key tile
//     S = Q Kᵀ         (wgmma m64n{kBN}k16, Q and K from shared memory)
//     m' = max(m, rowmax S);  P = 2^(S·c − m'·c) with c = scale·log2(e) (one FFMA + EX2)
//     l = l·2^((m − m')·c) + rowsum P;  O = O·2^((m − m')·c) + P V
//                      (wgmma m64n{kD}k16, P from registers, V from shared memory transposed)
//   then O /= l, lse = (m·c + log2 l)·ln 2. Key tiles run from the last to the first, so the
//   causal diagonal (the only tiles that need a mask) comes first.
// Within a warpgroup the S product of tile j overlaps the softmax of tile j − 1 and its P V
// product (§3.2); at kD = 64 the two warpgroups also take turns at issuing products
// ("ping-pong", §3.1), so that one's softmax runs under the other's products.
// setmaxnreg gives the consumers 232 registers and the producer 40.
// Layouts: q, o [B, Sq, Hq, D]; k, v [B, Sk, Hkv, D]; lse [B, Hq, Sq] (FlashParams); shared
// tiles in swizzled column blocks (hopper_sm90.cuh). Work: a persistent grid walks
// (query tile, head, sequence) units in pairs of equal causal work (sm90_unit, sm90_work), the
// rings' barrier phases running on across units. Causal masking is bottom-right aligned.
#pragma once

#include <cuda.h>

#include <cmath>

#include "cuda/flash_params.h"
#include "cuda/mma_sm80.cuh"
#include "cuda/hopper_sm90.cuh"
#include "cuda/wgmma_ops_sm90.cuh"

namespace attnkit::cuda {

struct Sm90Maps {
  CUtensorMap q, k, v;  // 4-d maps [B][S][H][D], boxes of 64 columns (tma_host_sm90.h)
};

template <int kD>
struct Sm90FwdTile {
  static constexpr int kBM = 128;  // query rows per CTA: two consumer warpgroups × 64
  static constexpr int kBN = 128;  // key rows per tile
  static constexpr int kStages = kD <= 64 ? 4 : 3;  // 226 KB of shared memory at kD = 128
  // Ping-pong of the consumer warpgroups: +3-10% at kD = 64, where the softmax takes about as
  // long as the products; at kD = 128 -3-5% at Sq = 4096, +2% at 16384 (lab/cuda/NOTES.md 09).
  static constexpr bool kPingPong = kD <= 64;
  static constexpr int kThreads = 384;
  static constexpr int kBlocks = kD / 64;  // 64-column blocks per row
  static constexpr int kQBytes = kBM * kD * 2;
  static constexpr int kKVBytes = kBN * kD * 2;
  static constexpr int kBarBytes = 8 * (2 + 3 * kStages);
  static constexpr int kSmemBytes = 1024 + kQBytes + 2 * kStages * kKVBytes + kBarBytes;
};

// One unit of work: query tile m0 of head h of sequence z.
struct Sm90Work {
  SeqInfo si;
  int m0, h;
};
// The schedule: units (query tile t, head·sequence) paired as t = m_tiles − 1 − i and t = i of
// one head (unit 2i and 2i + 1 of the head), so that with causal masking every pair holds the
// same number of key tiles (m_tiles + 1 when Sq = Sk); a CTA takes the pairs b, b + grid, ...,
// the longer unit first. A static stride over single causal units lost 5-11% to imbalance, and
// one CTA per unit (the hardware's block scheduler) 12-15% at Sq = 4096 to unhidden prologues
// (lab/cuda/NOTES.md 05, 09). Query tiles innermost: the CTAs running at once share a few
// heads' K and V in L2.
__device__ __forceinline__ int sm90_unit(int k) { return 2 * (blockIdx.x + (k >> 1) * gridDim.x) + (k & 1); }
__device__ __forceinline__ Sm90Work sm90_work(const FlashParams& p, int kBM, int w, int m_tiles) {
  const int hz = w / m_tiles, r = w % m_tiles;
  Sm90Work u;
  u.m0 = ((r & 1) == 0 ? m_tiles - 1 - (r >> 1) : r >> 1) * kBM;
  u.h = hz % p.heads_q;
  u.si = seq_info(p, hz / p.heads_q);
  return u;
}

template <int kD, bool kBf16, bool kCausal>
__global__ void __launch_bounds__(384, 1)
    flash_fwd_sm90_kernel(const __grid_constant__ FlashParams p, const __grid_constant__ Sm90Maps maps, int m_tiles) {
  using T = Elem<kBf16>;
  using Tile = Sm90FwdTile<kD>;
  constexpr int kBM = Tile::kBM, kBN = Tile::kBN, kStages = Tile::kStages;
  constexpr bool kPingPong = Tile::kPingPong;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* sQ = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint8_t* sK = sQ + Tile::kQBytes;                // [kStages][kBlocks][kBN][128 B]
  uint8_t* sV = sK + kStages * Tile::kKVBytes;     // [kStages][kBlocks][kBN][128 B]
  uint64_t* bars = reinterpret_cast<uint64_t*>(sV + kStages * Tile::kKVBytes);
  uint64_t* bar_q = bars;        // Q tile loaded
  uint64_t* q_empty = bars + 1;  // Q tile free again (both consumers done with it)
  uint64_t* full_k = bars + 2;
  uint64_t* full_v = full_k + kStages;
  uint64_t* empty = full_v + kStages;
  const int total = m_tiles * p.heads_q * p.num_seqs;

  if (threadIdx.x == 0) {
    mbar_init(bar_q, 1);
    mbar_init(q_empty, 256);
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&full_k[s], 1);
      mbar_init(&full_v[s], 1);
      mbar_init(&empty[s], 8);  // one arrival per consumer warp
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x < 128) {  // producer warpgroup
    setmaxnreg_dec<40>();
    if (threadIdx.x == 0) {
      int kv_it = 0, t = 0;  // K/V tiles and query tiles loaded so far (the rings' phases)
      for (int ku = 0;; ++ku) {
        const int w = sm90_unit(ku);
        if (w >= total) break;
        const Sm90Work u = sm90_work(p, kBM, w, m_tiles);
        const SeqInfo& si = u.si;
        if (u.m0 >= si.nq) continue;
        int n_end = si.nk;
        if (kCausal) n_end = min(n_end, u.m0 + kBM + si.nk - si.nq);
        const int n_blocks = n_end > 0 ? (n_end + kBN - 1) / kBN : 0;
        const int b = p.varlen ? 0 : si.batch, hk = u.h / p.group;
        mbar_wait(q_empty, (t & 1) ^ 1);
        mbar_arrive_expect_tx(bar_q, Tile::kQBytes);
#pragma unroll
        for (int c = 0; c < Tile::kBlocks; ++c)
          tma_load_4d(sQ + c * kBM * 128, &maps.q, bar_q, c * 64, si.q0 + u.m0, u.h, b);
        ++t;
        for (int it = 0; it < n_blocks; ++it, ++kv_it) {
          const int j = n_blocks - 1 - it, s = kv_it % kStages;
          mbar_wait(&empty[s], ((kv_it / kStages) & 1) ^ 1);
          const int row = si.k0 + j * kBN;
          uint8_t* k_dst = sK + s * Tile::kKVBytes;
          uint8_t* v_dst = sV + s * Tile::kKVBytes;
          mbar_arrive_expect_tx(&full_k[s], Tile::kKVBytes);
#pragma unroll
          for (int c = 0; c < Tile::kBlocks; ++c)
            tma_load_4d(k_dst + c * kBN * 128, &maps.k, &full_k[s], c * 64, row, hk, b);
          mbar_arrive_expect_tx(&full_v[s], Tile::kKVBytes);
#pragma unroll
          for (int c = 0; c < Tile::kBlocks; ++c)
            tma_load_4d(v_dst + c * kBN * 128, &maps.v, &full_v[s], c * 64, row, hk, b);
        }
      }
    }
    return;
  }

  // Consumer warpgroups.
  setmaxnreg_inc<232>();
  const int wg = threadIdx.x / 128 - 1;
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const float c = p.scale_log2;
  const uint32_t q_addr = smem_u32(sQ) + wg * 64 * 128;
  int kv_base = 0, t = 0;
  // Ping-pong (FlashAttention-3 §3.1): the warpgroups take turns at issuing their products,
  // through named barriers 1 (warpgroup 0's turn) and 2 (warpgroup 1's), so that one's softmax
  // runs while the other's products occupy the tensor cores. Warpgroup 1 hands the first turn.
  if (kPingPong && wg == 1) named_barrier_arrive(1, 256);
  auto turn_wait = [&] {
    if constexpr (kPingPong) named_barrier_sync(1 + wg, 256);
  };
  auto turn_pass = [&] {
    if constexpr (kPingPong) named_barrier_arrive(2 - wg, 256);
  };
  for (int ku = 0;; ++ku) {
  const int w = sm90_unit(ku);
  if (w >= total) break;
  const Sm90Work u = sm90_work(p, kBM, w, m_tiles);
  const SeqInfo& si = u.si;
  const int m0 = u.m0, h = u.h;
  if (m0 >= si.nq) continue;
  const int diag = si.nk - si.nq;  // query i sees key j when j <= i + diag (causal)
  int n_end = si.nk;
  if (kCausal) n_end = min(n_end, m0 + kBM + diag);
  const int n_blocks = n_end > 0 ? (n_end + kBN - 1) / kBN : 0;
  const int wg_m0 = m0 + wg * 64;
  const int row_a = wg_m0 + warp * 16 + lane / 4;  // rows row_a and row_a + 8, within the sequence
  float o[kD / 2];  // O: m64 × kD accumulator fragment
#pragma unroll
  for (int i = 0; i < kD / 2; ++i) o[i] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  mbar_wait(bar_q, t & 1);

  // S = Q Kᵀ for the key tile in stage s, issued and committed (not waited for).
  auto issue_s = [&](float (&sc)[kBN / 2], int s) {
    const uint32_t k_addr = smem_u32(sK + s * Tile::kKVBytes);
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      const uint32_t off = (kk % 4) * 32;  // 16 columns of a 64-column block
      const uint64_t da = make_desc(q_addr + (kk / 4) * kBM * 128 + off, 16, 1024);
      const uint64_t db = make_desc(k_addr + (kk / 4) * kBN * 128 + off, 16, 1024);
      wgmma_ss<kBN, kBf16>(sc, da, db, kk > 0);
    }
    wgmma_commit();
  };
  // O += P V for the value tile in stage s, issued and committed.
  auto issue_pv = [&](const uint32_t (&pa)[kBN / 16][4], int s) {
    const uint32_t v_addr = smem_u32(sV + s * Tile::kKVBytes);
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      const uint64_t db = make_desc(v_addr + kk * 16 * 128, kBN * 128, 1024);
      wgmma_rs<kD, kBf16, true>(o, pa[kk], db, 1);
    }
    wgmma_commit();
  };
  // Masks key tile j of S, updates m and l, turns S into P (f32) and returns the factors
  // 2^((m − m')·c) by which O must be rescaled.
  auto softmax = [&](float (&sc)[kBN / 2], int j, float (&alpha)[2]) {
    const int n0 = j * kBN;
    const bool need_mask = n0 + kBN > si.nk || (kCausal && n0 + kBN - 1 > wg_m0 + diag);
    if (need_mask) {
#pragma unroll
      for (int i = 0; i < kBN / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = n0 + 8 * i + 2 * (lane % 4) + (e & 1), row = row_a + (e >> 1) * 8;
          if (col >= si.nk || (kCausal && col > row + diag)) sc[4 * i + e] = -INFINITY;
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = m[r];
#pragma unroll
      for (int i = 0; i < kBN / 8; ++i) mx = fmaxf(mx, fmaxf(sc[4 * i + 2 * r], sc[4 * i + 2 * r + 1]));
      const float m_new = quad_max(mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new * c;  // a row with nothing visible yet
      alpha[r] = fast_exp2(m[r] * c - m_use);
      m[r] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < kBN / 8; ++i) {
        sc[4 * i + 2 * r] = fast_exp2(fmaf(sc[4 * i + 2 * r], c, -m_use));
        sc[4 * i + 2 * r + 1] = fast_exp2(fmaf(sc[4 * i + 2 * r + 1], c, -m_use));
        sum += sc[4 * i + 2 * r] + sc[4 * i + 2 * r + 1];
      }
      l[r] = l[r] * alpha[r] + sum;
    }
  };
  auto to_p = [&](const float (&sc)[kBN / 2], uint32_t (&pa)[kBN / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      pa[kk][0] = pack2<kBf16>(sc[8 * kk + 0], sc[8 * kk + 1]);
      pa[kk][1] = pack2<kBf16>(sc[8 * kk + 2], sc[8 * kk + 3]);
      pa[kk][2] = pack2<kBf16>(sc[8 * kk + 4], sc[8 * kk + 5]);
      pa[kk][3] = pack2<kBf16>(sc[8 * kk + 6], sc[8 * kk + 7]);
    }
  };
  auto release = [&](int s) {
    if (lane == 0) mbar_arrive(&empty[s]);
  };
  // Q is free once the unit's last S product has completed: the producer loads the next
  // unit's Q during the last softmax, P V and the epilogue.
  // Every consumer thread arrives (count 256): a lane-divergent arrival while P V is in flight
  // would make ptxas serialize the wgmma pipeline.
  auto release_q = [&] { mbar_arrive(q_empty); };

  // Software pipeline within the warpgroup (FlashAttention-3 §3.2): the S product of tile
  // it runs on the tensor cores together with the P V product of tile it − 1, and the
  // softmax of tile it overlaps the latter.
  float sc[kBN / 2];          // S, then P (f32): m64 × kBN
  uint32_t pa[kBN / 16][4];   // P as the A fragments of O += P V
  float alpha[2];
  if (n_blocks > 0) {
    const int s0 = kv_base % kStages;
    mbar_wait(&full_k[s0], (kv_base / kStages) & 1);
    turn_wait();
    wgmma_fence();
    issue_s(sc, s0);
    wgmma_wait<0>();
    fence_regs(sc);
    turn_pass();
    if (n_blocks == 1) release_q();
    softmax(sc, n_blocks - 1, alpha);
    to_p(sc, pa);
  }
  for (int it = 1; it < n_blocks; ++it) {
    const int s = (kv_base + it) % kStages, prev = (kv_base + it - 1) % kStages;
    mbar_wait(&full_k[s], ((kv_base + it) / kStages) & 1);
    turn_wait();
    wgmma_fence();
    issue_s(sc, s);
    mbar_wait(&full_v[prev], ((kv_base + it - 1) / kStages) & 1);
    issue_pv(pa, prev);
    turn_pass();
    wgmma_wait<1>();
    fence_regs(sc);
    if (it == n_blocks - 1) release_q();
    softmax(sc, n_blocks - 1 - it, alpha);
    wgmma_wait<0>();
    fence_regs(o);
    fence_regs(pa);
    release(prev);
#pragma unroll
    for (int d = 0; d < kD / 8; ++d) {
      o[4 * d] *= alpha[0];
      o[4 * d + 1] *= alpha[0];
      o[4 * d + 2] *= alpha[1];
      o[4 * d + 3] *= alpha[1];
    }
    to_p(sc, pa);
  }
  if (n_blocks > 0) {
    const int last = (kv_base + n_blocks - 1) % kStages;
    mbar_wait(&full_v[last], ((kv_base + n_blocks - 1) / kStages) & 1);
    turn_wait();
    wgmma_fence();
    issue_pv(pa, last);
    turn_pass();
    wgmma_wait<0>();
    fence_regs(o);
    fence_regs(pa);
    release(last);
  }

  if (n_blocks == 0) release_q();
  ++t;
  kv_base += n_blocks;

  // Epilogue: O /= l (0 for a row that sees no key), lse, O straight to global memory.
  T* gO = static_cast<T*>(p.o) + si.batch * p.o_s.batch + si.q0 * p.o_s.row + h * p.o_s.head;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float lt = quad_sum(l[r]);
    const float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
    const int row = row_a + r * 8;
    if (row >= si.nq) continue;
    if (p.lse != nullptr && lane % 4 == 0) {
      const float lse = lt > 0.0f ? (m[r] * c + log2f(lt)) * 0.69314718055994531f : -INFINITY;
      p.lse[si.batch * p.lse_s[0] + h * p.lse_s[1] + (si.q0 + row) * p.lse_s[2]] = lse;
    }
    T* g = gO + row * p.o_s.row + 2 * (lane % 4);
#pragma unroll
    for (int d = 0; d < kD / 8; ++d) {
      *reinterpret_cast<uint32_t*>(g + 8 * d) = pack2<kBf16>(o[4 * d + 2 * r] * inv, o[4 * d + 2 * r + 1] * inv);
    }
  }
  }
  if (kPingPong && wg == 0) named_barrier_sync(1, 256);  // warpgroup 1's last hand-off
}

}  // namespace attnkit::cuda
