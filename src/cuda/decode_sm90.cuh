// Decode attention against a paged KV cache on the GPU (flash-decoding: Dao, Haziza, Massa,
// Sizov 2023; split-KV as in FlashInfer and FlashAttention's split kernels). Memory-bound: each
// cached key and value is read once, 16 bytes per access, while tensor cores do the little
// arithmetic there is, so that the instruction stream stays far below the memory stream.
//
// One warp = one work item (decode_params.h): rows = up to 8 (kRT = 1) or 16 (kRT = 2)
// (query token, query head) pairs of one KV head, against a chunk of its keys, 16 keys a step.
// Each warp runs its own cp.async pipeline of `stages` steps in shared memory:
//   stage : K block [16 keys][D] then V block [16][D]        16-byte chunks XOR-swizzled
// and per step
//   S  = Q Kᵀ     m16n8k16, M = rows (padded to 16), N = 8 keys ×2, K = head_dim
//   online softmax on S (log2 domain, rows spread over quads of lanes)
//   Oᵀ += Vᵀ Pᵀ   m16n8k16, M = head_dim, N = rows (8 per tile), K = 16 keys
// Both products take their operands straight from 16-byte shared loads, without ldmatrix:
// - S: a dot product over d is the same under any permutation of d applied to Q and K, so
//   lane (g = lane/4, c = lane%4) reads key g's d ∈ [32u + 8c, 32u + 8c + 8) as one vector,
//   which is the B fragment of k-steps 2u and 2u + 1; Q's A fragments use the same order.
// - Oᵀ: with Vᵀ as the A operand, the rows of an m-tile are any 16 values of d: lane g takes
//   d = 64h + 8g + [0, 8) of keys 2c, 2c+1, 2c+8, 2c+9 and interleaves key pairs with byte
//   permutes. Pᵀ is the B operand, and S's accumulator fragment already is Pᵀ's B fragment
//   (row g, keys 2c, 2c+1 | 2c+8, 2c+9), as in FlashAttention-2's register reuse.
//   Output fragment: Oᵀ[d][row]: lane holds rows 8r + 2c, 8r + 2c + 1 at d, d + 1 with
//   d = 64(t/4) + 8g + 2(t%4) for m-tile t.
// Swizzle: chunk' = chunk ^ swz(row), swz(row) = 2·((row >> 1) & 3) ^ 4·(row & 1), which puts
// the 8 lanes of each quarter-warp phase on 8 distinct bank groups for the cp.async writes, the
// K reads (rows g, chunks 4u + c) and the V reads (rows 2c [+1, +8, +9], chunks 8h + g).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/decode_params.h"
#include "cuda/mma_sm80.cuh"

namespace attnkit::cuda {
namespace decode_detail {

constexpr float kLog2e = 1.44269504088896340736f;
constexpr float kLn2 = 0.69314718055994530942f;

__device__ __forceinline__ int swz(int row) { return (((row >> 1) & 3) << 1) ^ ((row & 1) << 2); }

// cp.async and its waits, ordered against ordinary shared-memory accesses ("memory" clobber).
// kHint: the L2 fetch size hint on a miss (0: none, 1: 128 bytes, 2: 256 bytes), a template
// argument so that a block's 16 copies carry no branch each.
template <int kHint>
__device__ __forceinline__ void copy16(void* smem, const void* gmem) {
  if constexpr (kHint == 2) {
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem) : "memory");
  } else if constexpr (kHint == 1) {
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem) : "memory");
  } else {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem) : "memory");
  }
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void wait_pending(int n) {  // at most n groups still in flight
  switch (n) {
    case 0: asm volatile("cp.async.wait_group 0;\n" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;\n" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;\n" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 3;\n" ::: "memory"); break;
  }
}

__device__ __forceinline__ uint32_t lo_pairs(uint32_t x, uint32_t y) { return __byte_perm(x, y, 0x5410); }
__device__ __forceinline__ uint32_t hi_pairs(uint32_t x, uint32_t y) { return __byte_perm(x, y, 0x7632); }

// Word e of a vector; e is a constant once the caller's loop is unrolled.
__device__ __forceinline__ uint32_t word(const uint4& v, int e) {
  return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w;
}

__device__ __forceinline__ uint32_t load_pair(const uint16_t* q, int64_t stride, bool valid) {
  if (!valid) return 0u;
  return uint32_t{q[0]} | (uint32_t{q[stride]} << 16);
}

template <bool kBf16>
__device__ __forceinline__ void store_elem(void* base, int64_t off, float x) {
  if constexpr (kBf16) {
    static_cast<__nv_bfloat16*>(base)[off] = __float2bfloat16_rn(x);
  } else {
    static_cast<__half*>(base)[off] = __float2half_rn(x);
  }
}

}  // namespace decode_detail

// One warp's running result over its keys: Oᵀ fragments (unnormalized), row max (log2
// domain) and row sum for the rows it scores (g, g + 8), and whether a page-table entry was bad.
template <int kD, int kRT>
struct WarpState {
  float o[kD / 16][kRT][4];
  float m[kRT], l[kRT];
  bool bad;
};

// Streams keys [16·b_lo, 16·b_hi) ∩ [ck0, ck1) of (sequence s, KV head hk) through this warp's
// pipeline into st (see the file header). stage0: this warp's `stages` stages.
template <int kD, bool kBf16, int kRT, class P>
__device__ __forceinline__ void stream_item(const P& p, int s, int hk, int rt, int b_lo, int b_hi,
                                            int ck0, int ck1, uint16_t* stage0, WarpState<kD, kRT>& st) {
  using namespace decode_detail;
  constexpr int kNR = 8 * kRT;
  constexpr int kCpr = kD / 8;
  constexpr int kStage = 2 * 16 * kD;
  constexpr float kNegInf = -INFINITY;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const int kend = p.key_end[s], window = p.window[s];

  // The rows this lane scores: g (i = 0) and g + 8 (i = 1), visible keys [lo, hi) of the chunk.
  int lo[kRT], hi[kRT];
#pragma unroll
  for (int i = 0; i < kRT; ++i) {
    const int rr = rt * kNR + g + 8 * i;
    lo[i] = 1;
    hi[i] = 0;
    if (rr < p.rows) {
      const int pos = kend - p.nq + rr / p.group;
      hi[i] = min(ck1, pos + 1);
      lo[i] = window > 0 ? max(ck0, pos - window + 1) : ck0;
    }
  }

  const int ns = p.stages;
  const auto* pages = static_cast<const uint16_t*>(p.pages);
  const int32_t* table = p.table + s * p.table_stride;
  const int64_t head_off = p.head_off + int64_t{hk} * p.page_size * kD;

  // Blocks are fetched in order b_lo, b_lo + 1, ...: two cursors (page-table index and key
  // offset within the page) follow them without a division per step, one for the page-table
  // reads (a block ahead, to hide their latency) and one for the copies.
  struct Cursor {
    int b, entry, off;
  };
  const int entry0 = (16 * b_lo) / p.page_size;
  Cursor rd{b_lo, entry0, 16 * b_lo - entry0 * p.page_size}, cp = rd;
  auto advance = [&](Cursor& u) {
    ++u.b;
    u.off += 16;
    if (u.off == p.page_size) {
      u.off = 0;
      ++u.entry;
    }
  };
  auto next_page = [&] {  // the physical page of block rd.b (0 past the chunk), then rd moves on
    const int phys = rd.b < b_hi ? __ldg(table + rd.entry) : 0;
    advance(rd);
    return phys;
  };
  // Copies block cp.b (on physical page phys) into stage `slot`, then commits a group (empty
  // past the chunk, so that group counting stays uniform); cp moves on.
  auto issue = [&](int phys, int slot) {
    if (cp.b < b_hi) {
      if (phys < 0 || phys >= p.num_pages) {
        st.bad = true;
        phys = 0;
      }
      const uint16_t* kg = pages + phys * p.page_elems + head_off + int64_t{cp.off} * kD;
      const uint16_t* vg = kg + p.kv_off;
      uint16_t* ks = stage0 + slot * kStage;
      uint16_t* vs = ks + 16 * kD;
      auto copies = [&](auto hint) {
        constexpr int kHint = decltype(hint)::value;
#pragma unroll
        for (int i = 0; i < kCpr / 2; ++i) {
          const int q = lane + 32 * i, row = q / kCpr, ch = q % kCpr;
          const int dst = row * kD + ((ch ^ swz(row)) * 8);
          copy16<kHint>(ks + dst, kg + row * kD + ch * 8);
          copy16<kHint>(vs + dst, vg + row * kD + ch * 8);
        }
      };
      if (p.prefetch == 2) {
        copies(std::integral_constant<int, 2>());
      } else if (p.prefetch == 1) {
        copies(std::integral_constant<int, 1>());
      } else {
        copies(std::integral_constant<int, 0>());
      }
    }
    commit();
    advance(cp);
  };

  // The first stages are requested before Q is loaded, so that their latency covers Q's: all
  // `ns` of them with early refills (see the loops below), ns − 1 otherwise.
  const int steps = b_hi - b_lo;
  const bool early = p.early_refill != 0;
  for (int i = 0; i < ns - (early ? 0 : 1); ++i) issue(next_page(), i);
  int next_phys = next_page();
  auto refill = [&](int slot) {  // with the next block not yet requested
    const int phys = next_phys;
    next_phys = next_page();
    issue(phys, slot);
  };

  // Q as A fragments of S = Q Kᵀ in the permuted d order; rows past p.rows are zero.
  uint32_t qa[kD / 16][4];
  {
    const auto* q = static_cast<const uint16_t*>(p.q);
    bool valid[2];
    const uint16_t* qrow[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int rr = rt * kNR + g + 8 * i;
      valid[i] = i < kRT && rr < p.rows;
      const int tok = valid[i] ? rr / p.group : 0, head = valid[i] ? hk * p.group + rr % p.group : 0;
      qrow[i] = q + s * p.q_s[0] + tok * p.q_s[1] + head * p.q_s[2];
    }
    const int64_t sd = p.q_s[3];
#pragma unroll
    for (int k = 0; k < kD / 16; ++k) {
      const int d0 = 32 * (k / 2) + 8 * c + 4 * (k % 2);
      qa[k][0] = load_pair(qrow[0] + d0 * sd, sd, valid[0]);
      qa[k][1] = load_pair(qrow[1] + d0 * sd, sd, valid[1]);
      qa[k][2] = load_pair(qrow[0] + (d0 + 2) * sd, sd, valid[0]);
      qa[k][3] = load_pair(qrow[1] + (d0 + 2) * sd, sd, valid[1]);
    }
  }

  const int sk = swz(g);                     // K rows g and 8 + g
  const int sv0 = 2 * c, sv1 = (2 * c) ^ 4;  // V rows 2c, 2c + 8 | 2c + 1, 2c + 9

  // One step: block b_lo + it from stage `slot` into st.
  auto step = [&](int it, int slot) {
    const uint16_t* ks = stage0 + slot * kStage;
    const uint16_t* vs = ks + 16 * kD;
    const int key0 = 16 * (b_lo + it);

    // S = Q Kᵀ: two n8 tiles, keys key0 + 8j + g.
    float sc[2][4];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
      const uint16_t* krow = ks + (8 * j + g) * kD;
#pragma unroll
      for (int u = 0; u < kD / 32; ++u) {
        const uint4 kv = *reinterpret_cast<const uint4*>(krow + (((4 * u + c) ^ sk) * 8));
        mma16816<kBf16>(sc[j], qa[2 * u], kv.x, kv.y);
        mma16816<kBf16>(sc[j], qa[2 * u + 1], kv.z, kv.w);
      }
    }

    // Online softmax, log2 domain. sc[j][e]: row g + 8·(e / 2), key key0 + 8j + 2c + e % 2.
    float alpha[kRT];
#pragma unroll
    for (int i = 0; i < kRT; ++i) {
      float mx = kNegInf;
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = key0 + 8 * j + 2 * c + e;
          float x = sc[j][2 * i + e];
          x = p.softcap > 0.0f ? p.softcap * tanhf(x * p.scale / p.softcap) * kLog2e : x * p.scale_log2;
          x = key >= lo[i] && key < hi[i] ? x : kNegInf;
          sc[j][2 * i + e] = x;
          mx = fmaxf(mx, x);
        }
      mx = quad_max(mx);
      const float m_new = fmaxf(st.m[i], mx);
      const float base = m_new == kNegInf ? 0.0f : m_new;
      alpha[i] = fast_exp2(st.m[i] - base);  // m = −inf: 0 (nothing accumulated yet)
      st.m[i] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pe = fast_exp2(sc[j][2 * i + e] - base);
          sc[j][2 * i + e] = pe;
          sum += pe;
        }
      st.l[i] = st.l[i] * alpha[i] + sum;
    }

    // Rescale O: output rows 8r + 2c and 8r + 2c + 1 live in lanes 8c and 8c + 4.
    uint32_t pb[kRT][2];
#pragma unroll
    for (int r = 0; r < kRT; ++r) {
      const float a0 = __shfl_sync(0xffffffffu, alpha[r], 8 * c);
      const float a1 = __shfl_sync(0xffffffffu, alpha[r], 8 * c + 4);
#pragma unroll
      for (int t = 0; t < kD / 16; ++t) {
        st.o[t][r][0] *= a0;
        st.o[t][r][1] *= a1;
        st.o[t][r][2] *= a0;
        st.o[t][r][3] *= a1;
      }
      pb[r][0] = pack2<kBf16>(sc[0][2 * r], sc[0][2 * r + 1]);
      pb[r][1] = pack2<kBf16>(sc[1][2 * r], sc[1][2 * r + 1]);
    }

    // V rows 2c, 2c + 1, 2c + 8, 2c + 9; keys outside the chunk may hold anything (NaN in
    // unwritten slots): zero them, since P = 0 does not cancel NaN.
    uint4 vk[4][kD / 64];
    const int vrow[4] = {2 * c, 2 * c + 1, 2 * c + 8, 2 * c + 9};
    const int vsw[4] = {sv0, sv1, sv0, sv1};
#pragma unroll
    for (int k = 0; k < 4; ++k)
#pragma unroll
      for (int h = 0; h < kD / 64; ++h)
        vk[k][h] = *reinterpret_cast<const uint4*>(vs + vrow[k] * kD + (((8 * h + g) ^ vsw[k]) * 8));
    if (key0 < ck0 || key0 + 16 > ck1) {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int key = key0 + vrow[k];
        if (key < ck0 || key >= ck1)
#pragma unroll
          for (int h = 0; h < kD / 64; ++h) vk[k][h] = make_uint4(0, 0, 0, 0);
      }
    }

    // Oᵀ += Vᵀ Pᵀ over the m-tiles of d: m-tile t takes word t % 4 of vector t / 4.
#pragma unroll
    for (int t = 0; t < kD / 16; ++t) {
      const int h = t / 4, e = t % 4;
      const uint32_t w0 = word(vk[0][h], e), w1 = word(vk[1][h], e);
      const uint32_t w2 = word(vk[2][h], e), w3 = word(vk[3][h], e);
      const uint32_t a[4] = {lo_pairs(w0, w1), hi_pairs(w0, w1), lo_pairs(w2, w3), hi_pairs(w2, w3)};
#pragma unroll
      for (int r = 0; r < kRT; ++r) mma16816<kBf16>(st.o[t][r], a, pb[r][0], pb[r][1]);
    }
  };

  // Late refill: a step waits for its block, then refills the stage that the previous step
  // read, so ns − 1 blocks are in flight. Early refill: a step refills its own stage as soon
  // as it has read it, so all ns are in flight while the warp waits. With 8 warps a
  // multiprocessor late refill over 2 stages reads fastest; with 4 (one a scheduler), early
  // refill over 2 stages (lab/cuda_decode 32).
  if (early) {
    for (int it = 0, slot = 0; it < steps; ++it, slot = slot + 1 == ns ? 0 : slot + 1) {
      wait_pending(ns - 1);
      __syncwarp();
      step(it, slot);
      __syncwarp();  // every lane is done reading the stage
      refill(slot);
    }
  } else {
    for (int it = 0, slot = 0; it < steps; ++it) {
      wait_pending(ns - 2);
      __syncwarp();
      refill(slot == 0 ? ns - 1 : slot - 1);  // the stage the previous step read
      step(it, slot);
      slot = slot + 1 == ns ? 0 : slot + 1;
    }
  }
  wait_pending(0);
#pragma unroll
  for (int i = 0; i < kRT; ++i) st.l[i] = quad_sum(st.l[i]);
}

// grid = (heads_kv · row_tiles, ceil(max_splits / warps), num_seqs): warp w of CTA y takes chunk
// y·warps + w; a sequence of at most `warps` chunks is merged inside its one CTA (shared memory,
// one barrier) and written to out. head_warps: grid = (ceil(heads_kv / warps) · row_tiles,
// max_splits, num_seqs), warp w takes KV head x·warps + w of chunk y. Sequences of one chunk are
// written directly; the others write partials for decode_combine_kernel.
template <int kD, bool kBf16, int kRT, int kSeqs>
__global__ void __launch_bounds__(256) decode_kernel(const __grid_constant__ DecodeParamsT<kSeqs> p) {
  using namespace decode_detail;
  constexpr int kNR = 8 * kRT;
  constexpr int kStage = 2 * 16 * kD;
  constexpr float kNegInf = -INFINITY;
  extern __shared__ __align__(16) uint16_t smem[];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  // x: KV head (or head group) × row tile, fastest, so that CTAs launched together read the
  // neighbouring head blocks of the same pages; y: chunk group; z: sequence.
  // A combine kernel launched after this one (programmatic dependent launch) may start now: its
  // CTAs wait in griddepcontrol.wait for this grid to finish, so its launch is not on the path.
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  const int s = blockIdx.z, rt = blockIdx.x % p.row_tiles;
  // Warps of a CTA: consecutive chunks of one KV head, or (head_warps) one chunk of
  // consecutive KV heads, which read neighbouring blocks of the same pages.
  const int hk = p.head_warps ? blockIdx.x / p.row_tiles * p.warps + warp : blockIdx.x / p.row_tiles;
  const int split = p.head_warps ? blockIdx.y : blockIdx.y * p.warps + warp;
  const int kbeg = p.key_begin[s], kend = p.key_end[s];
  const int fb = kbeg / 16;
  const int nb = (kend - 1) / 16 - fb + 1;
  const int splits = (nb + p.chunk_blocks - 1) / p.chunk_blocks;
  const bool active = split < splits && hk < p.heads_kv;
  uint16_t* stage0 = smem + warp * p.stages * kStage;

  WarpState<kD, kRT> st;
#pragma unroll
  for (int t = 0; t < kD / 16; ++t)
#pragma unroll
    for (int r = 0; r < kRT; ++r) st.o[t][r][0] = st.o[t][r][1] = st.o[t][r][2] = st.o[t][r][3] = 0.0f;
#pragma unroll
  for (int i = 0; i < kRT; ++i) {
    st.m[i] = kNegInf;
    st.l[i] = 0.0f;
  }
  st.bad = false;
  if (active) {
    const int b_lo = fb + split * p.chunk_blocks, b_hi = min(fb + nb, b_lo + p.chunk_blocks);
    const int ck0 = max(kbeg, 16 * b_lo), ck1 = min(kend, 16 * b_hi);  // this chunk's keys
    stream_item<kD, kBf16, kRT>(p, s, hk, rt, b_lo, b_hi, ck0, ck1, stage0, st);
  }

  // The same for every warp of the CTA: all chunks of the sequence are this CTA's warps.
  const bool cta_merge = !p.head_warps && splits <= p.warps;
  if (cta_merge && splits > 1) {
    // Each active warp leaves (O unnormalized, m, l) in its own stage memory; after the barrier
    // every thread merges some (row, d) elements over the warps.
    float* red = reinterpret_cast<float*>(stage0);  // [kNR][kD] o, then [kNR] m, [kNR] l
    __syncwarp();  // every lane is done reading its stages
    if (active) {
#pragma unroll
      for (int r = 0; r < kRT; ++r)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int row = 8 * r + 2 * c + e;
#pragma unroll
          for (int t = 0; t < kD / 16; ++t) {
            const int d = 64 * (t / 4) + 8 * g + 2 * (t % 4);
            *reinterpret_cast<float2*>(red + row * kD + d) = make_float2(st.o[t][r][e], st.o[t][r][2 + e]);
          }
        }
      if (c == 0) {
#pragma unroll
        for (int i = 0; i < kRT; ++i) {
          red[kNR * kD + g + 8 * i] = st.m[i];
          red[kNR * kD + kNR + g + 8 * i] = st.bad ? NAN : st.l[i];
        }
      }
    }
    __syncthreads();
    const int warp_floats = p.stages * kStage / 2;
    const auto* all = reinterpret_cast<const float*>(smem);
    for (int idx = threadIdx.x; idx < kNR * kD; idx += blockDim.x) {
      const int row = idx / kD, d = idx % kD, rr = rt * kNR + row;
      if (rr >= p.rows) continue;
      float mx = kNegInf;
      bool nan = false;
      for (int w = 0; w < splits; ++w) {
        mx = fmaxf(mx, all[w * warp_floats + kNR * kD + row]);
        nan |= isnan(all[w * warp_floats + kNR * kD + kNR + row]);
      }
      float num = 0.0f, den = nan ? NAN : 0.0f;
      if (mx != kNegInf && !nan) {
        for (int w = 0; w < splits; ++w) {
          const float* wr = all + w * warp_floats;
          const float f = fast_exp2(wr[kNR * kD + row] - mx);
          num += f * wr[row * kD + d];
          den += f * wr[kNR * kD + kNR + row];
        }
      }
      const int tok = rr / p.group, head = hk * p.group + rr % p.group;
      const float o = den > 0.0f ? num / den : (isnan(den) ? NAN : 0.0f);
      store_elem<kBf16>(p.out, s * p.o_s[0] + tok * p.o_s[1] + head * p.o_s[2] + d * p.o_s[3], o);
      if (d == 0 && p.lse != nullptr) {
        p.lse[s * p.lse_s[0] + head * p.lse_s[1] + tok * p.lse_s[2]] =
            den > 0.0f ? (mx + log2f(den)) * kLn2 : (isnan(den) ? NAN : kNegInf);
      }
    }
    return;
  }
  if (!active) return;

  // One chunk: the final result; several CTAs: this chunk's partial result. Each lane writes
  // rows 8r + 2c (+1) at its d, d + 1.
#pragma unroll
  for (int r = 0; r < kRT; ++r) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int src = 8 * c + 4 * e;
      const float lr = __shfl_sync(0xffffffffu, st.l[r], src);
      const float mr = __shfl_sync(0xffffffffu, st.m[r], src);
      const int rr = rt * kNR + 8 * r + 2 * c + e;
      if (rr >= p.rows) continue;
      const int tok = rr / p.group, head = hk * p.group + rr % p.group;
      float inv = lr > 0.0f ? 1.0f / lr : 0.0f;
      float lse = lr > 0.0f ? (mr + log2f(lr)) * kLn2 : kNegInf;
      if (st.bad) inv = lse = NAN;
      if (splits > 1) {
        const int64_t prow = ((int64_t{s} * p.max_splits + split) * p.nq + tok) * p.heads_q + head;
        float* po = p.part_o + prow * kD;
#pragma unroll
        for (int t = 0; t < kD / 16; ++t) {
          const int d = 64 * (t / 4) + 8 * g + 2 * (t % 4);
          *reinterpret_cast<float2*>(po + d) = make_float2(st.o[t][r][e] * inv, st.o[t][r][2 + e] * inv);
        }
        if (g == 0) p.part_lse[prow] = lse;
      } else {
        const int64_t ob = s * p.o_s[0] + tok * p.o_s[1] + head * p.o_s[2];
#pragma unroll
        for (int t = 0; t < kD / 16; ++t) {
          const int d = 64 * (t / 4) + 8 * g + 2 * (t % 4);
          store_elem<kBf16>(p.out, ob + d * p.o_s[3], st.o[t][r][e] * inv);
          store_elem<kBf16>(p.out, ob + (d + 1) * p.o_s[3], st.o[t][r][2 + e] * inv);
        }
        if (g == 0 && p.lse != nullptr) p.lse[s * p.lse_s[0] + head * p.lse_s[1] + tok * p.lse_s[2]] = lse;
      }
    }
  }
}

// Merges the chunks of every row (sequence, token, head) of a sequence split over several
// CTAs, by log-sum-exp: one CTA of kWarps warps (4, or 8 past 32 chunks) a row. Warp w takes
// chunks w, w + kWarps, ... in batches of 8: it loads a batch's LSEs and partial rows at once
// (lanes over head_dim, 16 bytes each), then folds them into its running (max, sum, row) with
// one rescale per batch; the warps' results meet in shared memory. One round of loads for up to
// 8·kWarps chunks, where a first pass for the maximum would cost a second (1 × 4096, 64 chunks:
// 13.6 → 10.0 µs a call, lab/cuda_decode 17). A NaN partial (a bad page-table entry) makes the
// row NaN; chunks with LSE −∞ (no visible key) weigh nothing.
template <bool kBf16, int kSeqs, int kWarps>
__global__ void __launch_bounds__(kWarps * 32) decode_combine_kernel(const __grid_constant__ DecodeParamsT<kSeqs> p,
                                                                     int head_dim) {
  using namespace decode_detail;
  constexpr int kBatch = 8;
  __shared__ __align__(16) float acc_s[kWarps][256];
  __shared__ float m_s[kWarps], l_s[kWarps];
  __shared__ int nan_s[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // Launched as a programmatic dependent of decode_kernel: wait until that grid has finished and
  // its partial results are visible (a no-op for an ordinary launch).
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  const int64_t row = blockIdx.x;
  const int64_t per_seq = int64_t{p.nq} * p.heads_q;
  const int s = static_cast<int>(row / per_seq);
  const int tok = static_cast<int>(row % per_seq / p.heads_q), head = static_cast<int>(row % p.heads_q);
  const int nb = (p.key_end[s] - 1) / 16 - p.key_begin[s] / 16 + 1;
  const int splits = (nb + p.chunk_blocks - 1) / p.chunk_blocks;
  if (splits == 1 || (!p.head_warps && splits <= p.warps)) return;  // written by the decode kernel
  const int64_t first = (int64_t{s} * p.max_splits * p.nq + tok) * p.heads_q + head;
  // Lane l holds d = 4l + [0, 4) (and 128 + 4l + [0, 4) for head_dim 256), loaded 16 bytes at a
  // time (part_o rows are 16-byte aligned when the workspace is: otherwise 4-byte loads).
  const bool vec = (reinterpret_cast<uintptr_t>(p.part_o) & 15) == 0;
  float m = -INFINITY, l = 0.0f;
  bool nan = false;
  float4 acc[2] = {make_float4(0.0f, 0.0f, 0.0f, 0.0f), make_float4(0.0f, 0.0f, 0.0f, 0.0f)};
  for (int k0 = warp; k0 < splits; k0 += kWarps * kBatch) {
    float lse[kBatch];
    float4 x[kBatch][2];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {  // the batch's loads, all in flight together
      const int k = k0 + b * kWarps;
      lse[b] = -INFINITY;
      x[b][0] = x[b][1] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (k < splits) {
        const int64_t pr = first + k * per_seq;
        lse[b] = p.part_lse[pr];
        const float* po = p.part_o + pr * head_dim;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int d = 4 * lane + 128 * i;
          if (d < head_dim) {
            x[b][i] = vec ? *reinterpret_cast<const float4*>(po + d) : make_float4(po[d], po[d + 1], po[d + 2], po[d + 3]);
          }
        }
      }
    }
    float mb = m;
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      nan |= isnan(lse[b]);
      mb = fmaxf(mb, lse[b]);
    }
    if (mb == -INFINITY) continue;  // nothing visible yet
    const float r = __expf(m - mb);  // m = −∞: 0
    l *= r;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      acc[i].x *= r;
      acc[i].y *= r;
      acc[i].z *= r;
      acc[i].w *= r;
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const float w = __expf(lse[b] - mb);  // lse = −∞: 0
      l += w;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        acc[i].x += w * x[b][i].x;
        acc[i].y += w * x[b][i].y;
        acc[i].z += w * x[b][i].z;
        acc[i].w += w * x[b][i].w;
      }
    }
    m = mb;
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int d = 4 * lane + 128 * i;
    if (d < head_dim) *reinterpret_cast<float4*>(&acc_s[warp][d]) = acc[i];
  }
  if (lane == 0) {
    m_s[warp] = m;
    l_s[warp] = l;
    nan_s[warp] = nan;
  }
  __syncthreads();
  float M = -INFINITY;
  bool any_nan = false;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    M = fmaxf(M, m_s[w]);
    any_nan |= nan_s[w] != 0;
  }
  float scale[kWarps];
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    scale[w] = M == -INFINITY ? 0.0f : __expf(m_s[w] - M);  // a warp with nothing visible: 0
    total += scale[w] * l_s[w];
  }
  const float inv = any_nan ? NAN : total > 0.0f ? 1.0f / total : 0.0f;
  const int64_t ob = s * p.o_s[0] + tok * p.o_s[1] + head * p.o_s[2];
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) o += scale[w] * acc_s[w][d];
    store_elem<kBf16>(p.out, ob + d * p.o_s[3], o * inv);
  }
  if (threadIdx.x == 0 && p.lse != nullptr) {
    p.lse[s * p.lse_s[0] + head * p.lse_s[1] + tok * p.lse_s[2]] =
        any_nan ? NAN : total > 0.0f ? M + logf(total) : -INFINITY;
  }
}

}  // namespace attnkit::cuda
