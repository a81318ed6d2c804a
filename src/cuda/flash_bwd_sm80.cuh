// Flash attention backward, mma.sync tensor cores, recomputing P from the forward's LSE
// (FlashAttention-2, Dao 2023, Algorithm 2), in three deterministic kernels with no atomics:
//   delta = rowsum(dO ∘ O)                                   flash_bwd_delta_kernel
//   dQ    = scale · Σ_keys dS K, dS = P ∘ (dO Vᵀ − delta)    flash_bwd_dq_kernel  (per query tile)
//   dV    = Σ_queries Pᵀ dO, dK = scale · Σ_queries dSᵀ Q    flash_bwd_dkv_kernel (per key tile)
// where P = 2^(S·scale·log2 e − lse·log2 e). The key-tile kernel works in the transposed frame
// (rows = keys, columns = queries), so Pᵀ and dSᵀ stay in registers and feed the next products
// directly; it sums over the query heads of its KV head (GQA) inside the CTA, in a fixed order.
// Head dim 256 splits dK/dV's columns over two CTAs (each recomputes S and dP) to fit registers.
// Layouts as in FlashParams; delta [B, Hq, Sq] f32.
#pragma once

#include <cmath>

#include "cuda/flash_params.h"
#include "cuda/mma_sm80.cuh"

namespace attnkit::cuda {

template <int kD>
struct BwdTile {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBM = 64;  // query rows per tile
  static constexpr int kBN = 64;  // key rows per tile
  static constexpr int kLd = kD + kPad;
  static constexpr int kDOut = kD < 128 ? kD : 128;  // dK/dV columns per CTA
  // dQ kernel: sQ, sdO [kBM][kLd]; sK, sV [2][kBN][kLd]
  static constexpr int kSmemDq = (2 * kBM + 4 * kBN) * kLd * 2;
  // dK/dV kernel: sK, sV [kBN][kLd]; sQ, sdO [2][kBM][kLd]; lse·log2 e and delta [2][kBM] f32
  static constexpr int kSmemDkv = (2 * kBN + 4 * kBM) * kLd * 2 + 4 * kBM * 4;
};

// delta = rowsum(dO ∘ O), one thread per (b, s, h) row; also zeroes that row of dq_acc when the
// atomic path (flash_bwd_atomic_sm80.cuh) runs.
template <int kD, bool kBf16>
__global__ void flash_bwd_delta_kernel(const __grid_constant__ FlashParams p) {
  using T = Elem<kBf16>;
  const int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t rows = int64_t{p.batch} * p.seq_q * p.heads_q;
  if (idx >= rows) return;
  const int h = idx % p.heads_q;
  const int64_t s = (idx / p.heads_q) % p.seq_q, b = idx / (int64_t{p.heads_q} * p.seq_q);
  const T* o = static_cast<const T*>(p.o) + b * p.o_s.batch + s * p.o_s.row + h * p.o_s.head;
  const T* dout = static_cast<const T*>(p.dout) + b * p.do_s.batch + s * p.do_s.row + h * p.do_s.head;
  float acc = 0.0f;
#pragma unroll 4
  for (int d = 0; d < kD; d += 8) {
    const uint4 a = *reinterpret_cast<const uint4*>(o + d), c = *reinterpret_cast<const uint4*>(dout + d);
    const T* ae = reinterpret_cast<const T*>(&a);
    const T* ce = reinterpret_cast<const T*>(&c);
#pragma unroll
    for (int i = 0; i < 8; ++i) acc += static_cast<float>(ae[i]) * static_cast<float>(ce[i]);
  }
  p.delta[(b * p.heads_q + h) * p.seq_q + s] = acc;
  if (p.dq_acc != nullptr) {  // the atomic path's dQ accumulator row starts at zero
    float4* z = reinterpret_cast<float4*>(p.dq_acc + idx * kD);
#pragma unroll
    for (int d = 0; d < kD / 4; ++d) z[d] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
}

template <int kD, bool kBf16, bool kCausal>
__global__ void __launch_bounds__(BwdTile<kD>::kThreads)
    flash_bwd_dq_kernel(const __grid_constant__ FlashParams p) {
  using T = Elem<kBf16>;
  using Tile = BwdTile<kD>;
  constexpr int kBM = Tile::kBM, kBN = Tile::kBN, kLd = Tile::kLd, kThreads = Tile::kThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // [kBM][kLd]
  T* sdO = sQ + kBM * kLd;                 // [kBM][kLd]
  T* sK = sdO + kBM * kLd;                 // [2][kBN][kLd]
  T* sV = sK + 2 * kBN * kLd;              // [2][kBN][kLd]

  const SeqInfo si = seq_info(p, blockIdx.z);
  const int m0 = blockIdx.x * kBM;
  if (m0 >= si.nq) return;
  const int h = blockIdx.y, hk = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* gQ = static_cast<const T*>(p.q) + si.batch * p.q_s.batch + (si.q0 + m0) * p.q_s.row + h * p.q_s.head;
  const T* gdO =
      static_cast<const T*>(p.dout) + si.batch * p.do_s.batch + (si.q0 + m0) * p.do_s.row + h * p.do_s.head;
  const T* gK = static_cast<const T*>(p.k) + si.batch * p.k_s.batch + si.k0 * p.k_s.row + hk * p.k_s.head;
  const T* gV = static_cast<const T*>(p.v) + si.batch * p.v_s.batch + si.k0 * p.v_s.row + hk * p.v_s.head;
  const int q_rows = min(kBM, si.nq - m0);
  const int diag = si.nk - si.nq;
  int n_end = si.nk;
  if (kCausal) n_end = min(n_end, m0 + kBM + diag);
  const int n_blocks = n_end > 0 ? (n_end + kBN - 1) / kBN : 0;

  load_tile<kBM, kD, kThreads>(sQ, gQ, p.q_s.row, q_rows);
  load_tile<kBM, kD, kThreads>(sdO, gdO, p.do_s.row, q_rows);
  if (n_blocks > 0) {
    load_tile<kBN, kD, kThreads>(sK, gK, p.k_s.row, si.nk);
    load_tile<kBN, kD, kThreads>(sV, gV, p.v_s.row, si.nk);
  }
  cp_async_commit();

  // Per-row constants of this thread's rows row_a and row_a + 8; rows past the sequence get
  // lse = +inf so that their P is 0.
  const int row_a = m0 + warp * 16 + lane / 4;
  float lse2[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row_a + r * 8;
    lse2[r] = INFINITY;
    delta[r] = 0.0f;
    if (row < si.nq) {
      const float lse = p.lse[si.batch * p.lse_s[0] + h * p.lse_s[1] + (si.q0 + row) * p.lse_s[2]];
      if (lse != -INFINITY) lse2[r] = lse * 1.4426950408889634f;
      delta[r] = p.delta[(int64_t{si.batch} * p.heads_q + h) * p.seq_q + si.q0 + row];
    }
  }

  float dq[kD / 8][4] = {};
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

    float s[kBN / 8][4] = {}, dp[kBN / 8][4] = {};  // 16 rows × kBN keys
    gemm_nt<kD, kBN, kBf16>(s, sQ + warp * 16 * kLd, sK + buf * kBN * kLd, lane);
    gemm_nt<kD, kBN, kBf16>(dp, sdO + warp * 16 * kLd, sV + buf * kBN * kLd, lane);
    const int n0 = j * kBN;
#pragma unroll
    for (int n = 0; n < kBN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = n0 + n * 8 + 2 * (lane % 4) + (e & 1), row = row_a + (e >> 1) * 8;
        const bool masked = col >= si.nk || (kCausal && col > row + diag);
        const float pr = masked ? 0.0f : fast_exp2(s[n][e] * p.scale_log2 - lse2[e >> 1]);
        s[n][e] = pr * (dp[n][e] - delta[e >> 1]);  // dS
      }
    uint32_t dsa[kBN / 16][4];
    acc_to_a<kBN, kBf16>(dsa, s);
    gemm_rn<kBN, kD, kLd, kBf16>(dq, dsa, sK + buf * kBN * kLd, 0, lane);
    __syncthreads();
  }

  cp_async_wait<0>();
  __syncthreads();
#pragma unroll
  for (int d = 0; d < kD / 8; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[d][e] *= p.scale;
  T* sOut = sQ + warp * 16 * kLd;
  store_acc_smem<kD, kLd, kBf16>(sOut, dq, lane);
  __syncwarp();
  T* gdQ = static_cast<T*>(p.dq) + si.batch * p.dq_s.batch + (si.q0 + m0 + warp * 16) * p.dq_s.row + h * p.dq_s.head;
  store_rows_global<kD, kLd>(gdQ, p.dq_s.row, sOut, q_rows - warp * 16, lane);
}

template <int kD, bool kBf16, bool kCausal>
__global__ void __launch_bounds__(BwdTile<kD>::kThreads)
    flash_bwd_dkv_kernel(const __grid_constant__ FlashParams p) {
  using T = Elem<kBf16>;
  using Tile = BwdTile<kD>;
  constexpr int kBM = Tile::kBM, kBN = Tile::kBN, kLd = Tile::kLd, kThreads = Tile::kThreads;
  constexpr int kDOut = Tile::kDOut, kSplit = kD / kDOut;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);  // [kBN][kLd]
  T* sV = sK + kBN * kLd;                  // [kBN][kLd]
  T* sQ = sV + kBN * kLd;                  // [2][kBM][kLd]
  T* sdO = sQ + 2 * kBM * kLd;             // [2][kBM][kLd]
  float* sLse2 = reinterpret_cast<float*>(sdO + 2 * kBM * kLd);  // [2][kBM]
  float* sDelta = sLse2 + 2 * kBM;                                // [2][kBM]

  const SeqInfo si = seq_info(p, blockIdx.z);
  const int n0 = blockIdx.x * kBN;
  if (n0 >= si.nk) return;
  const int hk = blockIdx.y / kSplit, d_off = (blockIdx.y % kSplit) * kDOut;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* gK = static_cast<const T*>(p.k) + si.batch * p.k_s.batch + (si.k0 + n0) * p.k_s.row + hk * p.k_s.head;
  const T* gV = static_cast<const T*>(p.v) + si.batch * p.v_s.batch + (si.k0 + n0) * p.v_s.row + hk * p.v_s.head;
  const int k_rows = min(kBN, si.nk - n0);
  const int diag = si.nk - si.nq;
  // Causal: key j is seen by queries i >= j - diag; the first query tile that sees this tile.
  const int m_first = kCausal ? max(0, n0 - diag) : 0;
  const int m_begin = m_first < si.nq ? m_first / kBM : 0;
  const int m_tiles = m_first < si.nq ? (si.nq + kBM - 1) / kBM - m_begin : 0;
  const int steps = m_tiles * p.group;  // (query head, query tile) pairs, head-major

  auto load_step = [&](int t, int buf) {
    const int h = hk * p.group + t / m_tiles, m0 = (m_begin + t % m_tiles) * kBM;
    const T* gQ = static_cast<const T*>(p.q) + si.batch * p.q_s.batch + (si.q0 + m0) * p.q_s.row + h * p.q_s.head;
    const T* gdO =
        static_cast<const T*>(p.dout) + si.batch * p.do_s.batch + (si.q0 + m0) * p.do_s.row + h * p.do_s.head;
    load_tile<kBM, kD, kThreads>(sQ + buf * kBM * kLd, gQ, p.q_s.row, si.nq - m0);
    load_tile<kBM, kD, kThreads>(sdO + buf * kBM * kLd, gdO, p.do_s.row, si.nq - m0);
    for (int i = threadIdx.x; i < kBM; i += kThreads) {
      const int row = m0 + i;
      float lse2 = INFINITY, delta = 0.0f;
      if (row < si.nq) {
        const float lse = p.lse[si.batch * p.lse_s[0] + h * p.lse_s[1] + (si.q0 + row) * p.lse_s[2]];
        if (lse != -INFINITY) lse2 = lse * 1.4426950408889634f;
        delta = p.delta[(int64_t{si.batch} * p.heads_q + h) * p.seq_q + si.q0 + row];
      }
      sLse2[buf * kBM + i] = lse2;
      sDelta[buf * kBM + i] = delta;
    }
  };

  load_tile<kBN, kD, kThreads>(sK, gK, p.k_s.row, k_rows);
  load_tile<kBN, kD, kThreads>(sV, gV, p.v_s.row, k_rows);
  if (steps > 0) load_step(0, 0);
  cp_async_commit();

  float dk[kDOut / 8][4] = {}, dv[kDOut / 8][4] = {};  // this warp's 16 keys × kDOut columns
  const int key_a = n0 + warp * 16 + lane / 4;         // keys key_a and key_a + 8
  for (int t = 0; t < steps; ++t) {
    const int buf = t & 1;
    if (t + 1 < steps) load_step(t + 1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    const int m0 = (m_begin + t % m_tiles) * kBM;
    const T* q = sQ + buf * kBM * kLd;
    const T* dout = sdO + buf * kBM * kLd;
    float st[kBM / 8][4] = {}, dpt[kBM / 8][4] = {};  // 16 keys × kBM queries
    gemm_nt<kD, kBM, kBf16>(st, sK + warp * 16 * kLd, q, lane);
    gemm_nt<kD, kBM, kBf16>(dpt, sV + warp * 16 * kLd, dout, lane);
#pragma unroll
    for (int n = 0; n < kBM / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = n * 8 + 2 * (lane % 4) + (e & 1), key = key_a + (e >> 1) * 8;
        const bool masked = key >= si.nk || (kCausal && key > m0 + c + diag);
        const float pr = masked ? 0.0f : fast_exp2(st[n][e] * p.scale_log2 - sLse2[buf * kBM + c]);
        st[n][e] = pr;                                        // Pᵀ
        dpt[n][e] = pr * (dpt[n][e] - sDelta[buf * kBM + c]);  // dSᵀ
      }
    uint32_t pa[kBM / 16][4], dsa[kBM / 16][4];
    acc_to_a<kBM, kBf16>(pa, st);
    acc_to_a<kBM, kBf16>(dsa, dpt);
    gemm_rn<kBM, kDOut, kLd, kBf16>(dv, pa, dout, d_off, lane);
    gemm_rn<kBM, kDOut, kLd, kBf16>(dk, dsa, q, d_off, lane);
    __syncthreads();
  }

  cp_async_wait<0>();
  __syncthreads();
#pragma unroll
  for (int d = 0; d < kDOut / 8; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[d][e] *= p.scale;
  // Each warp reads only its own 16 rows of sK / sV, so it may overwrite them now.
  T* sdK = sK + warp * 16 * kLd;
  T* sdV = sV + warp * 16 * kLd;
  store_acc_smem<kDOut, kLd, kBf16>(sdK, dk, lane);
  store_acc_smem<kDOut, kLd, kBf16>(sdV, dv, lane);
  __syncwarp();
  const int rows = k_rows - warp * 16;
  T* gdK = static_cast<T*>(p.dk) + si.batch * p.dk_s.batch + (si.k0 + n0 + warp * 16) * p.dk_s.row +
           hk * p.dk_s.head + d_off;
  T* gdV = static_cast<T*>(p.dv) + si.batch * p.dv_s.batch + (si.k0 + n0 + warp * 16) * p.dv_s.row +
           hk * p.dv_s.head + d_off;
  store_rows_global<kDOut, kLd>(gdK, p.dk_s.row, sdK, rows, lane);
  store_rows_global<kDOut, kLd>(gdV, p.dv_s.row, sdV, rows, lane);
}

}  // namespace attnkit::cuda
