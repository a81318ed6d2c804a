// Flash attention backward in one pass over key tiles, mma.sync tensor cores, dQ accumulated
// with f32 atomics (FlashAttention-2, Dao 2023, Algorithm 2 as written): per CTA one key tile
// of kBN keys and one KV head; for every (query head of the group, query tile of kBM rows):
//   Sᵀ = K Qᵀ, dPᵀ = V dOᵀ               (rows = keys: each warp owns 16 keys)
//   Pᵀ = 2^(Sᵀ·scale·log2 e − lse·log2 e), dSᵀ = Pᵀ ∘ (dPᵀ − delta)
//   dV += Pᵀ dO, dK += dSᵀ Q            (registers, the CTA's whole life)
//   dQ_acc += dS K                      (dSᵀ through shared memory, f32 atomics to global)
// Five products per (key tile, query tile) instead of the deterministic path's seven (which
// recomputes S and dP in a separate dQ kernel). The order of the atomic adds varies, so dQ is
// not bitwise reproducible: AttentionParams::deterministic selects flash_bwd_sm80.cuh instead.
// delta and the zeroed dQ_acc come from flash_bwd_delta_kernel; flash_bwd_dq_convert_kernel
// scales dQ_acc by the softmax scale and writes dq.
// Layouts as in FlashParams; dq_acc [B, Sq, Hq, D] f32 contiguous (workspace).
#pragma once

#include <cmath>

#include "cuda/flash_params.h"
#include "cuda/mma_sm80.cuh"

namespace attnkit::cuda {

template <int kD, int kBN, int kBM_>
struct BwdAtomicTile {
  static constexpr int kWarps = kBN / 16;  // one warp per 16 keys
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBM = kBM_;  // query rows per step
  static constexpr int kLd = kD + kPad;
  static constexpr int kLdS = kBM + kPad;  // sdSᵀ row stride
  // dQ = dS K: warps as kBM / 16 groups of 16 query rows × kDqSplit column blocks.
  static constexpr int kDqSplit = kWarps / (kBM / 16);
  static constexpr int kDqCols = kD / kDqSplit;
  // sK, sV [kBN][kLd]; sQ, sdO [2][kBM][kLd]; sdSᵀ [kBN][kLdS]; lse·log2 e, delta [2][kBM] f32
  static constexpr int kSmem = (2 * kBN + 4 * kBM) * kLd * 2 + kBN * kLdS * 2 + 4 * kBM * 4;
  static_assert(kWarps % (kBM / 16) == 0 && kDqSplit >= 1 && kD % kDqSplit == 0);
};

// acc(16 × kN) += A(16 × kK) · B with A given transposed in shared memory, sAt [kK][kLda]
// (rows m_off.. contiguous), and B a shared tile [kK][kLdb] (n contiguous): dQ += dS K from dSᵀ.
template <int kK, int kN, int kLda, int kLdb, bool kBf16, typename T>
__device__ __forceinline__ void gemm_tn(float (&acc)[kN / 8][4], const T* sAt, int m_off, const T* sB, int n_off,
                                        int lane) {
  const int i = lane / 8, r = lane % 8;
#pragma unroll
  for (int k0 = 0; k0 < kK; k0 += 16) {
    uint32_t a[4];
    ldsm_x4_trans(a, sAt + (k0 + (i / 2) * 8 + r) * kLda + m_off + (i % 2) * 8);
#pragma unroll
    for (int n0 = 0; n0 < kN; n0 += 16) {
      uint32_t b[4];
      ldsm_x4_trans(b, sB + (k0 + r + (i % 2) * 8) * kLdb + n_off + n0 + (i / 2) * 8);
      mma16816<kBf16>(acc[n0 / 8], a, b[0], b[1]);
      mma16816<kBf16>(acc[n0 / 8 + 1], a, b[2], b[3]);
    }
  }
}

template <int kD, int kBN, int kBM, bool kBf16, bool kCausal>
__global__ void __launch_bounds__(BwdAtomicTile<kD, kBN, kBM>::kThreads)
    flash_bwd_atomic_kernel(const __grid_constant__ FlashParams p) {
  using T = Elem<kBf16>;
  using Tile = BwdAtomicTile<kD, kBN, kBM>;
  constexpr int kLd = Tile::kLd, kLdS = Tile::kLdS, kThreads = Tile::kThreads;
  constexpr int kDqCols = Tile::kDqCols;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);  // [kBN][kLd]
  T* sV = sK + kBN * kLd;                  // [kBN][kLd]
  T* sQ = sV + kBN * kLd;                  // [2][kBM][kLd]
  T* sdO = sQ + 2 * kBM * kLd;             // [2][kBM][kLd]
  T* sdSt = sdO + 2 * kBM * kLd;           // [kBN][kLdS]: dSᵀ, keys × queries
  float* sLse2 = reinterpret_cast<float*>(sdSt + kBN * kLdS);  // [2][kBM]
  float* sDelta = sLse2 + 2 * kBM;                              // [2][kBM]

  const SeqInfo si = seq_info(p, blockIdx.z);
  const int n0 = blockIdx.x * kBN;
  if (n0 >= si.nk) return;
  const int hk = blockIdx.y;
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
  // Non-causal CTAs start at different query tiles so that their atomics spread over dQ.
  const int rot = kCausal || m_tiles == 0 ? 0 : blockIdx.x % m_tiles;
  auto step_m0 = [&](int t) { return (m_begin + (t % m_tiles + rot) % m_tiles) * kBM; };
  auto step_h = [&](int t) { return hk * p.group + t / m_tiles; };

  auto load_step = [&](int t, int buf) {
    const int h = step_h(t), m0 = step_m0(t);
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

  float dk[kD / 8][4] = {}, dv[kD / 8][4] = {};  // this warp's 16 keys × kD columns
  const int key_a = n0 + warp * 16 + lane / 4;   // keys key_a and key_a + 8
  // dQ: this warp's 16 query rows (of the step's 64) and kDqCols columns.
  const int dq_row = (warp % (kBM / 16)) * 16, dq_col = (warp / (kBM / 16)) * kDqCols;
  for (int t = 0; t < steps; ++t) {
    const int buf = t & 1;
    cp_async_wait<0>();
    __syncthreads();  // step t's tiles have landed; every warp is done with step t − 1
    if (t + 1 < steps) load_step(t + 1, buf ^ 1);  // lands while step t computes
    cp_async_commit();

    const int h = step_h(t), m0 = step_m0(t);
    const T* q = sQ + buf * kBM * kLd;
    const T* dout = sdO + buf * kBM * kLd;
    // Pᵀ first and dV with it, then dPᵀ: Sᵀ and dPᵀ are never live together with their
    // 16-bit copies, which keeps D = 128 inside the register file.
    float pt[kBM / 8][4] = {};  // 16 keys × kBM queries: Sᵀ, then Pᵀ
    gemm_nt<kD, kBM, kBf16>(pt, sK + warp * 16 * kLd, q, lane);
#pragma unroll
    for (int n = 0; n < kBM / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = n * 8 + 2 * (lane % 4) + (e & 1), key = key_a + (e >> 1) * 8;
        const bool masked = key >= si.nk || (kCausal && key > m0 + c + diag);
        pt[n][e] = masked ? 0.0f : fast_exp2(pt[n][e] * p.scale_log2 - sLse2[buf * kBM + c]);
      }
    {
      uint32_t pa[kBM / 16][4];
      acc_to_a<kBM, kBf16>(pa, pt);
      gemm_rn<kBM, kD, kLd, kBf16>(dv, pa, dout, 0, lane);
    }
    float dst[kBM / 8][4] = {};  // 16 keys × kBM queries: dPᵀ, then dSᵀ
    gemm_nt<kD, kBM, kBf16>(dst, sV + warp * 16 * kLd, dout, lane);
#pragma unroll
    for (int n = 0; n < kBM / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = n * 8 + 2 * (lane % 4) + (e & 1);
        dst[n][e] = pt[n][e] * (dst[n][e] - sDelta[buf * kBM + c]);
      }
    uint32_t dsa[kBM / 16][4];
    acc_to_a<kBM, kBf16>(dsa, dst);
    // dSᵀ to shared memory, in the A-fragment order of acc_to_a: [0] rows r, cols c; [1] rows
    // r + 8; [2] cols c + 8; [3] both.
    {
      T* s = sdSt + (warp * 16 + lane / 4) * kLdS + 2 * (lane % 4);
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk)
#pragma unroll
        for (int f = 0; f < 4; ++f)
          *reinterpret_cast<uint32_t*>(s + (f & 1) * 8 * kLdS + kk * 16 + (f >> 1) * 8) = dsa[kk][f];
    }
    __syncthreads();  // dSᵀ complete
    gemm_rn<kBM, kD, kLd, kBf16>(dk, dsa, q, 0, lane);

    float dq[kDqCols / 8][4] = {};  // 16 queries × kDqCols, summed over this tile's kBN keys
    gemm_tn<kBN, kDqCols, kLdS, kLd, kBf16>(dq, sdSt, dq_row, sK, dq_col, lane);
    // Lane pairs swap halves so that each adds 4 adjacent columns of one row: the even lane
    // row r, the odd lane row r + 8.
    const bool odd = lane & 1;
    const int row = m0 + dq_row + lane / 4 + (odd ? 8 : 0);
    float* g = p.dq_acc + ((int64_t{si.batch} * p.seq_q + si.q0 + row) * p.heads_q + h) * kD + dq_col +
               2 * (lane % 4) - (odd ? 2 : 0);
#pragma unroll
    for (int n = 0; n < kDqCols / 8; ++n) {
      const float r0 = __shfl_xor_sync(0xffffffffu, odd ? dq[n][0] : dq[n][2], 1);
      const float r1 = __shfl_xor_sync(0xffffffffu, odd ? dq[n][1] : dq[n][3], 1);
      const float4 v = odd ? make_float4(r0, r1, dq[n][2], dq[n][3]) : make_float4(dq[n][0], dq[n][1], r0, r1);
      if (row < si.nq) atomicAdd(reinterpret_cast<float4*>(g + n * 8), v);
    }
  }

  cp_async_wait<0>();
  __syncthreads();
#pragma unroll
  for (int d = 0; d < kD / 8; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[d][e] *= p.scale;
  // Each warp reads only its own 16 rows of sK / sV from here on, so it may overwrite them.
  T* sdK = sK + warp * 16 * kLd;
  T* sdV = sV + warp * 16 * kLd;
  store_acc_smem<kD, kLd, kBf16>(sdK, dk, lane);
  store_acc_smem<kD, kLd, kBf16>(sdV, dv, lane);
  __syncwarp();
  const int rows = k_rows - warp * 16;
  T* gdK = static_cast<T*>(p.dk) + si.batch * p.dk_s.batch + (si.k0 + n0 + warp * 16) * p.dk_s.row + hk * p.dk_s.head;
  T* gdV = static_cast<T*>(p.dv) + si.batch * p.dv_s.batch + (si.k0 + n0 + warp * 16) * p.dv_s.row + hk * p.dv_s.head;
  store_rows_global<kD, kLd>(gdK, p.dk_s.row, sdK, rows, lane);
  store_rows_global<kD, kLd>(gdV, p.dv_s.row, sdV, rows, lane);
}

// dq = scale · dq_acc, 8 elements per thread; rows [B, Sq, Hq] in dq_acc's order.
template <int kD, bool kBf16>
__global__ void flash_bwd_dq_convert_kernel(const __grid_constant__ FlashParams p) {
  using T = Elem<kBf16>;
  const int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t rows = int64_t{p.batch} * p.seq_q * p.heads_q;
  if (idx >= rows * (kD / 8)) return;
  const int64_t row = idx / (kD / 8);
  const int c = static_cast<int>(idx % (kD / 8)) * 8;
  const int h = row % p.heads_q;
  const int64_t s = (row / p.heads_q) % p.seq_q, b = row / (int64_t{p.heads_q} * p.seq_q);
  const float4* src = reinterpret_cast<const float4*>(p.dq_acc + row * kD + c);
  const float4 x = src[0], y = src[1];
  uint4 out;
  out.x = pack2<kBf16>(x.x * p.scale, x.y * p.scale);
  out.y = pack2<kBf16>(x.z * p.scale, x.w * p.scale);
  out.z = pack2<kBf16>(y.x * p.scale, y.y * p.scale);
  out.w = pack2<kBf16>(y.z * p.scale, y.w * p.scale);
  T* dq = static_cast<T*>(p.dq) + b * p.dq_s.batch + s * p.dq_s.row + h * p.dq_s.head + c;
  *reinterpret_cast<uint4*>(dq) = out;
}

}  // namespace attnkit::cuda
