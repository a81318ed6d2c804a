// Flash attention backward on Hopper (sm_90a): TMA + wgmma, warp specialised, one pass over key
// tiles with dQ summed in f32 (FlashAttention-2's Algorithm 2, Dao 2023, laid out as
// FlashAttention-3's backward, Shah et al. 2024). One CTA owns kBN = 128 keys of one KV head of
// one sequence and walks the (query head of the group, query tile of kBM rows) steps:
//   warpgroup 0, the producer: one warp; its lane 0 loads K and V once and each step's Q and dO
//     tiles into a kStages-deep ring with TMA, its 32 lanes the step's lse·log2 e and delta
//     (plain loads), each completing on the stage's "full" barriers;
//   warpgroups 1 and 2, the consumers: 64 keys each, dK and dV (m64 × kD) in registers for the
//     CTA's life; per step, in the transposed frame (rows = keys, columns = queries):
//       Sᵀ  = K Qᵀ,  dPᵀ = V dOᵀ             (wgmma m64n{kBM}k16, both operands in shared memory)
//       Pᵀ  = 2^(Sᵀ·scale·log2 e − lse·log2 e),  dSᵀ = Pᵀ ∘ (dPᵀ − delta)
//       dV += Pᵀ dO,  dK += dSᵀ Q             (wgmma m64n{kD}k16, Pᵀ / dSᵀ from registers,
//                                               dO / Q from shared memory transposed)
//       dSᵀ → shared memory (two buffers, alternate steps); barrier over both consumers;
//       dQ  = dS K                              (wgmma m64n{kD/2}k16, dS and K both transposed
//                                               in shared memory; each warpgroup one half of
//                                               the columns of the kBM × kD tile)
//     and adds dQ into the f32 accumulator dq_acc (workspace): the fragment goes to a shared
//     staging tile, which one thread per warpgroup adds into dq_acc with TMA reduce-adds
//     (cp.reduce.async.bulk.tensor; rows past the tensor are skipped).
// The delta kernel (flash_bwd_sm80.cuh) zeroes dq_acc first; flash_bwd_dq_convert_kernel
// scales it into dq. dQ's last bits depend on the order of the adds (not reproducible;
// AttentionParams::deterministic selects flash_bwd_sm80.cuh).
// Layouts as in FlashParams; dq_acc [B, Sq, Hq, D] f32; shared tiles in swizzled column blocks
// (hopper_sm90.cuh). Causal masking is bottom-right aligned.
#pragma once

#include <cuda.h>

#include <climits>
#include <cmath>

#include "cuda/flash_params.h"
#include "cuda/hopper_sm90.cuh"
#include "cuda/mma_sm80.cuh"
#include "cuda/wgmma_ops_sm90.cuh"

namespace attnkit::cuda {

struct Sm90BwdMaps {
  CUtensorMap q, k, v, dout;  // 4-d maps [B][S][H][D], boxes of 64 columns (tma_host_sm90.h)
  CUtensorMap dq_acc;         // f32 [B][Sq][Hq][D], boxes of 32 columns × kBM rows
};

template <int kD>
struct Sm90BwdTile {
  static constexpr int kBN = 128;                  // keys per CTA: two consumer warpgroups × 64
  // Queries per step. 128 at kD = 64 leaves ptxas short of registers (Sᵀ and dPᵀ at 64 each):
  // it serializes the wgmma.
  static constexpr int kBM = 64;
  static constexpr int kDqN = kD / 2;  // dQ columns per consumer warpgroup
  static constexpr int kStages = 2;
  static constexpr int kThreads = 384;
  static constexpr int kBlocks = kD / 64;             // 64-column blocks of K, V, Q, dO
  static constexpr int kKVBytes = kBN * kD * 2;       // K or V
  static constexpr int kQBytes = kBM * kD * 2;        // Q or dO, one stage
  static constexpr int kDSBytes = kBN * kBM * 2;      // dSᵀ [kBN][kBM], one of two buffers
  static constexpr int kDQBytes = 2 * kBM * kDqN * 4;  // dQ staging, per warpgroup m64 × kDqN f32
  static constexpr int kVecBytes = kStages * kBM * 4;             // lse·log2 e or delta
  static constexpr int kBarBytes = 8 * (1 + 3 * kStages);
  static constexpr int kSmemBytes =
      1024 + 2 * kKVBytes + 2 * kStages * kQBytes + 2 * kDSBytes + kDQBytes + 2 * kVecBytes + kBarBytes;
  static_assert(kSmemBytes <= 227 * 1024, "Sm90BwdTile: shared memory");
};

template <int kD, bool kBf16, bool kCausal>
__global__ void __launch_bounds__(384, 1)
    flash_bwd_sm90_kernel(const __grid_constant__ FlashParams p, const __grid_constant__ Sm90BwdMaps maps) {
  using T = Elem<kBf16>;
  using Tile = Sm90BwdTile<kD>;
  constexpr int kBM = Tile::kBM, kBN = Tile::kBN, kStages = Tile::kStages;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* sK = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint8_t* sV = sK + Tile::kKVBytes;            // [kBlocks][kBN][128 B]
  uint8_t* sQ = sV + Tile::kKVBytes;            // [kStages][kBlocks][kBM][128 B]
  uint8_t* sdO = sQ + kStages * Tile::kQBytes;  // [kStages][kBlocks][kBM][128 B]
  uint8_t* sdS = sdO + kStages * Tile::kQBytes; // [2][kBM / 64][kBN][128 B]: dSᵀ, keys × queries
  uint8_t* sdQ = sdS + 2 * Tile::kDSBytes;      // [2 warpgroups][kDqN / 32][kBM][128 B] f32
  float* sLse2 = reinterpret_cast<float*>(sdQ + Tile::kDQBytes);  // [kStages][kBM]
  float* sDelta = sLse2 + kStages * kBM;                          // [kStages][kBM]
  uint64_t* bars = reinterpret_cast<uint64_t*>(sDelta + kStages * kBM);
  uint64_t* bar_kv = bars;              // K and V loaded
  uint64_t* full_q = bars + 1;          // Q tile and lse of the stage
  uint64_t* full_do = full_q + kStages; // dO tile and delta of the stage
  uint64_t* empty = full_do + kStages;  // the stage is free again

  const SeqInfo si = seq_info(p, blockIdx.z);
  const int n0 = blockIdx.x * kBN;
  if (n0 >= si.nk) return;
  const int hk = blockIdx.y;
  const int diag = si.nk - si.nq;  // query i sees key j when j <= i + diag (causal)
  // Causal: the first query tile that sees this key tile.
  const int m_first = kCausal ? max(0, n0 - diag) : 0;
  const int m_begin = m_first < si.nq ? m_first / kBM : 0;
  const int m_tiles = m_first < si.nq ? (si.nq + kBM - 1) / kBM - m_begin : 0;
  const int steps = m_tiles * p.group;  // (query head, query tile) pairs, head-major
  // Non-causal CTAs start at different query tiles so that their dQ adds spread out.
  const int rot = kCausal || m_tiles == 0 ? 0 : blockIdx.x % m_tiles;
  auto step_m0 = [&](int t) { return (m_begin + (t % m_tiles + rot) % m_tiles) * kBM; };
  auto step_h = [&](int t) { return hk * p.group + t / m_tiles; };

  if (threadIdx.x == 0) {
    mbar_init(bar_kv, 1);
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&full_q[s], 1 + 32);  // the TMA thread's expect_tx, then each producer lane
      mbar_init(&full_do[s], 1 + 32);
      mbar_init(&empty[s], 256);  // one arrival per consumer thread
    }
    fence_barrier_init();
  }
  __syncthreads();

  const int b = p.varlen ? 0 : si.batch;
  if (threadIdx.x < 128) {  // producer warpgroup: warp 0 loads, warps 1-3 leave
    setmaxnreg_dec<24>();
    if (threadIdx.x >= 32) return;
    const int lane = threadIdx.x;
    if (lane == 0) {
      mbar_arrive_expect_tx(bar_kv, 2 * Tile::kKVBytes);
#pragma unroll
      for (int c = 0; c < Tile::kBlocks; ++c) {
        tma_load_4d(sK + c * kBN * 128, &maps.k, bar_kv, c * 64, si.k0 + n0, hk, b);
        tma_load_4d(sV + c * kBN * 128, &maps.v, bar_kv, c * 64, si.k0 + n0, hk, b);
      }
    }
    for (int t = 0; t < steps; ++t) {
      const int s = t % kStages, h = step_h(t), m0 = step_m0(t);
      mbar_wait(&empty[s], ((t / kStages) & 1) ^ 1);
      if (lane == 0) {
        mbar_arrive_expect_tx(&full_q[s], Tile::kQBytes);
#pragma unroll
        for (int c = 0; c < Tile::kBlocks; ++c)
          tma_load_4d(sQ + s * Tile::kQBytes + c * kBM * 128, &maps.q, &full_q[s], c * 64, si.q0 + m0, h, b);
      }
      // lse·log2 e; +inf for rows past the sequence and rows that see no key (P = 0 there).
      for (int i = lane; i < kBM; i += 32) {
        const int row = m0 + i;
        float lse2 = INFINITY;
        if (row < si.nq) {
          const float lse = p.lse[si.batch * p.lse_s[0] + h * p.lse_s[1] + (si.q0 + row) * p.lse_s[2]];
          if (lse != -INFINITY) lse2 = lse * 1.4426950408889634f;
        }
        st_shared_f32(smem_u32(sLse2 + s * kBM + i), lse2);
      }
      mbar_arrive(&full_q[s]);
      if (lane == 0) {
        mbar_arrive_expect_tx(&full_do[s], Tile::kQBytes);
#pragma unroll
        for (int c = 0; c < Tile::kBlocks; ++c)
          tma_load_4d(sdO + s * Tile::kQBytes + c * kBM * 128, &maps.dout, &full_do[s], c * 64, si.q0 + m0, h, b);
      }
      for (int i = lane; i < kBM; i += 32) {
        const int row = m0 + i;
        const float delta =
            row < si.nq ? p.delta[(int64_t{si.batch} * p.heads_q + h) * p.seq_q + si.q0 + row] : 0.0f;
        st_shared_f32(smem_u32(sDelta + s * kBM + i), delta);
      }
      mbar_arrive(&full_do[s]);
    }
    return;
  }

  // Consumer warpgroups: wg owns keys n0 + 64·wg + [0, 64).
  setmaxnreg_inc<240>();
  const int wg = threadIdx.x / 128 - 1, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const float c = p.scale_log2;
  const uint32_t k_addr = smem_u32(sK), v_addr = smem_u32(sV);
  const int key_w = n0 + wg * 64;                  // this warpgroup's first key
  const int key_a = key_w + warp * 16 + lane / 4;  // this thread's keys key_a and key_a + 8
  // dQ = dS K, m64 × kDqN per warpgroup: all kBM queries × columns [kDqN·wg, kDqN·(wg + 1)).
  constexpr int kDqN = Tile::kDqN;
  const int dq_col_off = kDqN * wg;
  float dk[kD / 2], dv[kD / 2];  // m64 × kD: rows = this warpgroup's keys
#pragma unroll
  for (int i = 0; i < kD / 2; ++i) dk[i] = dv[i] = 0.0f;
  mbar_wait(bar_kv, 0);

  for (int t = 0; t < steps; ++t) {
    const int s = t % kStages;
    const uint32_t ph = (t / kStages) & 1;
    const int h = step_h(t), m0 = step_m0(t);
    const uint32_t q_addr = smem_u32(sQ + s * Tile::kQBytes), do_addr = smem_u32(sdO + s * Tile::kQBytes);
    // This thread's columns 8·i + 2·(lane % 4) + {0, 1} of lse·log2 e and delta.
    const uint32_t lse2_addr = smem_u32(sLse2 + s * kBM + 2 * (lane % 4));
    const uint32_t delta_addr = smem_u32(sDelta + s * kBM + 2 * (lane % 4));

    float st[kBM / 2];   // m64 × kBM: Sᵀ, then Pᵀ
    float dpt[kBM / 2];  // m64 × kBM: dPᵀ, then dSᵀ
    mbar_wait(&full_q[s], ph);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      const uint32_t off = (kk % 4) * 32;  // 16 columns of a 64-column block
      const uint64_t da = make_desc(k_addr + (kk / 4) * kBN * 128 + wg * 64 * 128 + off, 16, 1024);
      const uint64_t db = make_desc(q_addr + (kk / 4) * kBM * 128 + off, 16, 1024);
      wgmma_ss<kBM, kBf16>(st, da, db, kk > 0);
    }
    wgmma_commit();
    mbar_wait(&full_do[s], ph);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      const uint32_t off = (kk % 4) * 32;
      const uint64_t da = make_desc(v_addr + (kk / 4) * kBN * 128 + wg * 64 * 128 + off, 16, 1024);
      const uint64_t db = make_desc(do_addr + (kk / 4) * kBM * 128 + off, 16, 1024);
      wgmma_ss<kBM, kBf16>(dpt, da, db, kk > 0);
    }
    wgmma_commit();

    // Pᵀ; masked: keys past the sequence, and (causal) keys after the query's diagonal. Key
    // row r is masked at the step's columns 8·i + (e & 1) < lim[r] (a compare and a select per
    // element, no branch: a divergent path here would serialize the wgmma).
    wgmma_wait<1>();
    fence_regs(st);
    int lim[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = key_a + 8 * r;
      lim[r] = key >= si.nk ? kBM : (kCausal ? key - diag - m0 - 2 * (lane % 4) : INT_MIN);
    }
#pragma unroll
    for (int i = 0; i < kBM / 8; ++i) {
      const float2 l2 = ld_shared_v2_f32(lse2_addr + 32 * i);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = fast_exp2(fmaf(st[4 * i + e], c, -((e & 1) ? l2.y : l2.x)));
        st[4 * i + e] = 8 * i + (e & 1) < lim[e >> 1] ? 0.0f : x;
      }
    }
    // dV += Pᵀ dO, issued now: it runs during the dSᵀ math.
    uint32_t pa[kBM / 16][4];  // Pᵀ as the A fragments of dV += Pᵀ dO
#pragma unroll
    for (int kk = 0; kk < kBM / 16; ++kk)
#pragma unroll
      for (int f = 0; f < 4; ++f) pa[kk][f] = pack2<kBf16>(st[8 * kk + 2 * f], st[8 * kk + 2 * f + 1]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBM / 16; ++kk) {
      const uint64_t db = make_desc(do_addr + kk * 16 * 128, kBM * 128, 1024);
      wgmma_rs<kD, kBf16, true>(dv, pa[kk], db, 1);
    }
    wgmma_commit();

    // dSᵀ = Pᵀ ∘ (dPᵀ − delta), to registers (dK) and to shared memory (dQ).
    wgmma_wait<1>();  // dPᵀ done (dV may still run)
    fence_regs(dpt);
#pragma unroll
    for (int i = 0; i < kBM / 8; ++i) {
      const float2 dl = ld_shared_v2_f32(delta_addr + 32 * i);
#pragma unroll
      for (int e = 0; e < 4; ++e) dpt[4 * i + e] = st[4 * i + e] * (dpt[4 * i + e] - ((e & 1) ? dl.y : dl.x));
    }
    uint32_t dsa[kBM / 16][4];  // dSᵀ as the A fragments of dK += dSᵀ Q
#pragma unroll
    for (int kk = 0; kk < kBM / 16; ++kk)
#pragma unroll
      for (int f = 0; f < 4; ++f) dsa[kk][f] = pack2<kBf16>(dpt[8 * kk + 2 * f], dpt[8 * kk + 2 * f + 1]);
    // dSᵀ tile [kBN keys][kBM queries] in swizzled column blocks of 64 queries; fragment f of
    // dsa[kk] holds row r + 8·(f & 1), columns 16·kk + 8·(f >> 1) + 2·(lane % 4) + {0, 1}.
    const uint32_t ds_addr = smem_u32(sdS) + (t & 1) * Tile::kDSBytes;
    {
      const int r = wg * 64 + warp * 16 + lane / 4;  // r % 8 == lane / 4
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk)
#pragma unroll
        for (int f = 0; f < 4; ++f) {
          const int row = r + 8 * (f & 1), chunk = (2 * kk + (f >> 1)) % 8, blk = (16 * kk) / 64;
          st_shared_b32(ds_addr + blk * kBN * 128 + row * 128 + ((chunk ^ (lane / 4)) * 16) + 4 * (lane % 4),
                        dsa[kk][f]);
        }
    }
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBM / 16; ++kk) {
      const uint64_t db = make_desc(q_addr + kk * 16 * 128, kBM * 128, 1024);
      wgmma_rs<kD, kBf16, true>(dk, dsa[kk], db, 1);
    }
    wgmma_commit();

    // dQ (m64 × kDqN of this warpgroup) = dS K over all kBN keys: both halves of dSᵀ needed.
    // This warpgroup's dQ staging tile must be free: the reduce-add of the last step has read it.
    if (warp == 0 && lane == 0) bulk_wait_read<0>();
    fence_proxy_async();
    named_barrier_sync(1, 256);
    wgmma_fence();
    float dq[kDqN / 2];
    {
      // K's columns [dq_col_off, + kDqN): a 64-column block, or half of one (a 64-byte offset
      // inside the swizzled rows, as K-major tiles step 32 bytes per k16).
      const uint32_t kb_addr = k_addr + (dq_col_off / 64) * kBN * 128 + (dq_col_off % 64) * 2;
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk) {
        const uint64_t da = make_desc(ds_addr + kk * 16 * 128, kBN * 128, 1024);
        const uint64_t db = make_desc(kb_addr + kk * 16 * 128, kBN * 128, 1024);
        wgmma_ss<kDqN, kBf16, true, true>(dq, da, db, kk > 0);
      }
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(dq);
    fence_regs(dv);
    fence_regs(dk);
    fence_regs(pa);
    fence_regs(dsa);
    // Q, dO, lse and delta of this stage are done. Every thread arrives: an arrival releases
    // only its own thread's reads of lse and delta (racecheck flags a one-lane release).
    mbar_arrive(&empty[s]);

    {
      // dQ through shared memory: staging tile [kDqN / 32 blocks of 32 columns][kBM rows]
      // [128 B], the 16-byte chunks of a row at chunk ^ (row % 8) (the map's 128-byte swizzle).
      const uint32_t stage_addr = smem_u32(sdQ + wg * (kDqN / 32) * kBM * 128);
#pragma unroll
      for (int i = 0; i < kDqN / 8; ++i)
#pragma unroll
        for (int r2 = 0; r2 < 2; ++r2) {
          const int row = warp * 16 + lane / 4 + 8 * r2;  // row % 8 == lane / 4
          const int chunk = 2 * (i % 4) + (lane % 4) / 2;
          st_shared_v2_f32(
              stage_addr + (i / 4) * kBM * 128 + row * 128 + ((chunk ^ (lane / 4)) * 16) + 8 * (lane % 2),
              dq[4 * i + 2 * r2], dq[4 * i + 2 * r2 + 1]);
        }
      fence_proxy_async();
      named_barrier_sync(2 + wg, 128);
      if (warp == 0 && lane == 0) {
        const uint8_t* stage = sdQ + wg * (kDqN / 32) * kBM * 128;
#pragma unroll
        for (int j = 0; j < kDqN / 32; ++j)
          tma_reduce_add_4d(&maps.dq_acc, stage + j * kBM * 128, dq_col_off + 32 * j, si.q0 + m0, h, b);
        bulk_commit();
      }
    }
  }
  if (warp == 0 && lane == 0) bulk_wait<0>();  // the last reduce-adds are done

  // Epilogue: dK = scale · dK; dK and dV straight from registers to global memory.
  T* gdK = static_cast<T*>(p.dk) + si.batch * p.dk_s.batch + si.k0 * p.dk_s.row + hk * p.dk_s.head;
  T* gdV = static_cast<T*>(p.dv) + si.batch * p.dv_s.batch + si.k0 * p.dv_s.row + hk * p.dv_s.head;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = key_a + r * 8;
    if (key >= si.nk) continue;
    T* k_out = gdK + key * p.dk_s.row + 2 * (lane % 4);
    T* v_out = gdV + key * p.dv_s.row + 2 * (lane % 4);
#pragma unroll
    for (int d = 0; d < kD / 8; ++d) {
      *reinterpret_cast<uint32_t*>(k_out + 8 * d) =
          pack2<kBf16>(dk[4 * d + 2 * r] * p.scale, dk[4 * d + 2 * r + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(v_out + 8 * d) = pack2<kBf16>(dv[4 * d + 2 * r], dv[4 * d + 2 * r + 1]);
    }
  }
}

}  // namespace attnkit::cuda
