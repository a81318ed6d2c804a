// Flash attention forward, mma.sync tensor cores (FlashAttention-2's schedule, Dao 2023):
// each CTA owns kBM query rows of one head of one sequence (16 rows per warp), streams the
// sequence's keys and values through shared memory in kBN-row tiles (cp.async, two stages),
// and keeps the online-softmax state (running max m, running sum l, output O) in registers:
//   S = Q Kᵀ · scale·log2(e);  m' = max(m, rowmax S);  P = 2^(S − m');
//   l = l·2^(m − m') + rowsum P;  O = O·2^(m − m') + P V;  finally O /= l, lse = (m + log2 l)·ln 2.
// Layouts: q, o [B, Sq, Hq, D]; k, v [B, Sk, Hkv, D]; lse [B, Hq, Sq] (FlashParams).
// Grid: (ceil(max Sq / kBM), Hq, num_seqs). Causal masking is bottom-right aligned.
#pragma once

#include <cmath>

#include "cuda/flash_params.h"
#include "cuda/mma_sm80.cuh"

namespace attnkit::cuda {

template <int kD>
struct FwdTile {
  static constexpr int kWarps = kD <= 128 ? 8 : 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBM = 16 * kWarps;  // query rows per CTA
  static constexpr int kBN = 64;           // key rows per tile
  static constexpr int kLd = kD + kPad;
  // sQ [kBM][kLd], sK and sV [2][kBN][kLd]
  static constexpr int kSmemBytes = (kBM + 4 * kBN) * kLd * 2;
};

template <int kD, bool kBf16, bool kCausal>
__global__ void __launch_bounds__(FwdTile<kD>::kThreads)
    flash_fwd_kernel(const __grid_constant__ FlashParams p) {
  using T = Elem<kBf16>;
  using Tile = FwdTile<kD>;
  constexpr int kBM = Tile::kBM, kBN = Tile::kBN, kLd = Tile::kLd, kThreads = Tile::kThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // [kBM][kLd]
  T* sK = sQ + kBM * kLd;                  // [2][kBN][kLd]
  T* sV = sK + 2 * kBN * kLd;              // [2][kBN][kLd]

  const SeqInfo si = seq_info(p, blockIdx.z);
  const int m0 = blockIdx.x * kBM;
  if (m0 >= si.nq) return;
  const int h = blockIdx.y, hk = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  const T* gQ = static_cast<const T*>(p.q) + si.batch * p.q_s.batch + (si.q0 + m0) * p.q_s.row + h * p.q_s.head;
  const T* gK = static_cast<const T*>(p.k) + si.batch * p.k_s.batch + si.k0 * p.k_s.row + hk * p.k_s.head;
  const T* gV = static_cast<const T*>(p.v) + si.batch * p.v_s.batch + si.k0 * p.v_s.row + hk * p.v_s.head;
  const int q_rows = min(kBM, si.nq - m0);
  const int diag = si.nk - si.nq;  // query i sees key j when j <= i + diag (causal)
  int n_end = si.nk;
  if (kCausal) n_end = min(n_end, m0 + kBM + diag);
  const int n_blocks = n_end > 0 ? (n_end + kBN - 1) / kBN : 0;

  load_tile<kBM, kD, kThreads>(sQ, gQ, p.q_s.row, q_rows);
  if (n_blocks > 0) {
    load_tile<kBN, kD, kThreads>(sK, gK, p.k_s.row, si.nk);
    load_tile<kBN, kD, kThreads>(sV, gV, p.v_s.row, si.nk);
  }
  cp_async_commit();

  float o[kD / 8][4] = {};  // O: this warp's 16 rows × kD
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const int row_a = m0 + warp * 16 + lane / 4;  // rows row_a and row_a + 8, within the sequence

  for (int j = 0; j < n_blocks; ++j) {
    const int buf = j & 1;
    if (j + 1 < n_blocks) {
      const int next = (j + 1) * kBN;
      load_tile<kBN, kD, kThreads>(sK + (buf ^ 1) * kBN * kLd, gK + next * p.k_s.row, p.k_s.row, si.nk - next);
      load_tile<kBN, kD, kThreads>(sV + (buf ^ 1) * kBN * kLd, gV + next * p.v_s.row, p.v_s.row, si.nk - next);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    float s[kBN / 8][4] = {};  // S: 16 rows × kBN keys
    gemm_nt<kD, kBN, kBf16>(s, sQ + warp * 16 * kLd, sK + buf * kBN * kLd, lane);

    const int n0 = j * kBN;
    const bool need_mask = n0 + kBN > si.nk || (kCausal && n0 + kBN - 1 > m0 + warp * 16 + diag);
#pragma unroll
    for (int n = 0; n < kBN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[n][e] * p.scale_log2;
        if (need_mask) {
          const int col = n0 + n * 8 + 2 * (lane % 4) + (e & 1), row = row_a + (e >> 1) * 8;
          if (col >= si.nk || (kCausal && col > row + diag)) x = -INFINITY;
        }
        s[n][e] = x;
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < kBN / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
      const float m_new = fmaxf(m[r], quad_max(mx));
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet
      const float alpha = fast_exp2(m[r] - m_use);
      m[r] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < kBN / 8; ++n) {
        s[n][2 * r] = fast_exp2(s[n][2 * r] - m_use);
        s[n][2 * r + 1] = fast_exp2(s[n][2 * r + 1] - m_use);
        sum += s[n][2 * r] + s[n][2 * r + 1];
      }
      l[r] = l[r] * alpha + sum;
#pragma unroll
      for (int d = 0; d < kD / 8; ++d) {
        o[d][2 * r] *= alpha;
        o[d][2 * r + 1] *= alpha;
      }
    }
    uint32_t pa[kBN / 16][4];
    acc_to_a<kBN, kBf16>(pa, s);
    gemm_rn<kBN, kD, kLd, kBf16>(o, pa, sV + buf * kBN * kLd, 0, lane);
    __syncthreads();
  }

  // Epilogue: O /= l (0 for a row that sees no key), lse, then O through shared memory.
  cp_async_wait<0>();
  __syncthreads();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float lt = quad_sum(l[r]);
    const float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
#pragma unroll
    for (int d = 0; d < kD / 8; ++d) {
      o[d][2 * r] *= inv;
      o[d][2 * r + 1] *= inv;
    }
    const int row = row_a + r * 8;
    if (p.lse != nullptr && lane % 4 == 0 && row < si.nq) {
      const float lse = lt > 0.0f ? (m[r] + log2f(lt)) * 0.69314718055994531f : -INFINITY;
      p.lse[si.batch * p.lse_s[0] + h * p.lse_s[1] + (si.q0 + row) * p.lse_s[2]] = lse;
    }
  }
  T* sO = sQ + warp * 16 * kLd;  // this warp's own rows of the Q tile
  store_acc_smem<kD, kLd, kBf16>(sO, o, lane);
  __syncwarp();
  T* gO = static_cast<T*>(p.o) + si.batch * p.o_s.batch + (si.q0 + m0 + warp * 16) * p.o_s.row + h * p.o_s.head;
  store_rows_global<kD, kLd>(gO, p.o_s.row, sO, q_rows - warp * 16, lane);
}

}  // namespace attnkit::cuda
