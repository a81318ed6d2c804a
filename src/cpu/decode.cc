// Decode attention against the paged KV cache on the CPU (flash-decoding: Dao, Haziza, Massa,
// Sizov 2023), Highway SIMD with runtime dispatch, threads over the plan's items.
//
// One item = one KV head hk, query tokens [qa, qb) of one sequence, keys [k0, k1). Its rows are
// every (token, query head of hk) pair, so the group's G query heads share each pass over the
// keys (GQA): R = (qb − qa) · G rows, row r = token (r / G), head hk·G + r % G.
//   qs : [R][Dp]  scale · log2e · q, zero-padded  s : [R][kB]  base-2 scores of one key block
//   o  : [R][Dp]  unnormalized output           m, l : [R]   running max and sum
// Key blocks (kB keys, never crossing a page) are read in place when the cache is f32 and
// head_dim fills whole vector pairs, else converted into kb / vb. Per block:
//   s = qs · Kᵀ (two keys × four rows of dot products per step), mask, online softmax,
//   o = alpha ∘ o + P V (four rows × two vectors of accumulators per step).
// Each item writes its rows' o / l and lse = m + log l to the partial buffers of its chunk; a
// final pass merges a row's chunks: lse = log Σ_c exp(lse_c), out = Σ_c exp(lse_c − lse) o_c.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/decode.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/problem.h"
#include "core/thread_pool.h"
#include "cpu/decode.h"
#include "cpu/prefetch.h"
#include "cpu/softmax-inl.h"
#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace {
namespace hn = hwy::HWY_NAMESPACE;

constexpr int64_t kB = 32;  // keys per block: K and V blocks of 16 KiB each at D = 128 (L1)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t VecPair() { return 2 * static_cast<int64_t>(hn::Lanes(hn::ScalableTag<float>())); }

struct Scratch {
  int64_t rows = 0, dp = 0;
  hwy::AlignedFreeUniquePtr<float[]> mem;
  float *qs = nullptr, *o = nullptr, *s = nullptr, *m = nullptr, *l = nullptr, *alpha = nullptr, *kb = nullptr,
        *vb = nullptr;
  std::vector<int64_t> lo, hi;  // per row: visible keys [lo, hi)

  void reserve(int64_t R, int64_t Dp) {
    if (R <= rows && Dp == dp) return;
    rows = std::max(R, rows);
    dp = Dp;
    mem = hwy::AllocateAligned<float>(static_cast<size_t>(2 * rows * dp + rows * kB + 3 * rows + 2 * kB * dp));
    qs = mem.get();          // [rows][dp]
    o = qs + rows * dp;      // [rows][dp]
    s = o + rows * dp;       // [rows][kB]
    kb = s + rows * kB;      // [kB][dp]
    vb = kb + kB * dp;       // [kB][dp]
    m = vb + kB * dp;        // [rows]
    l = m + rows;            // [rows]
    alpha = l + rows;        // [rows]
    lo.resize(rows);
    hi.resize(rows);
  }
};

// s[r][j] = Σ_d qs[r][d] · k[j][d] for NR rows and nb keys, two keys per step.
// Touches the rows [j, j + n) of the next block (n · ldk floats each) so that they are on their
// way from memory while this block computes: spread over the block's steps, the requests never
// pile up in the load queue as one burst would.
HWY_INLINE void PrefetchRows(const float* next, int64_t j, int64_t n, int64_t ld) {
  if (next == nullptr) return;
  const char* p = reinterpret_cast<const char*>(next + j * ld);
  const int64_t bytes = n * ld * static_cast<int64_t>(sizeof(float));
  for (int64_t b = 0; b < bytes; b += 64) hwy::Prefetch(p + b);
}

// The next block's V rows are requested here too, a line per step of the dot products (rows j
// and j + 1 while keys j and j + 1 are scored): a whole block of V requests issued at once
// (Accumulate's first pass, before) filled the core's miss buffers and stalled the loads behind
// them, and here they are a block's scoring earlier than Accumulate needs them (lab/decode_cpu
// 06: 20–25 % faster at D = 128).
template <int NR>
HWY_INLINE void Scores(const float* HWY_RESTRICT qs, int64_t Dp, const float* HWY_RESTRICT k, int64_t ldk,
                       int64_t nb, float* HWY_RESTRICT s, const float* knext, const float* vnext, int64_t nnext) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  constexpr int64_t kLine = 64 / sizeof(float);
  const int64_t row_lines = (Dp + kLine - 1) / kLine, steps = Dp / L;
  int64_t j = 0;
  for (; j + 2 <= nb; j += 2) {
    if (j < nnext) PrefetchRows(knext, j, std::min<int64_t>(2, nnext - j), ldk);
    const int64_t v_lines = vnext == nullptr ? 0 : std::max<int64_t>(0, std::min<int64_t>(2, nnext - j)) * row_lines;
    int64_t issued = 0;
    V a0[NR], a1[NR];
    for (int r = 0; r < NR; ++r) a0[r] = a1[r] = hn::Zero(df);
    const float* k0 = k + j * ldk;
    const float* k1 = k0 + ldk;
    for (int64_t t = 0; t < Dp; t += L) {
      for (const int64_t want = (t / L + 1) * v_lines / steps; issued < want; ++issued) {
        prefetch_l1(vnext + (j + issued / row_lines) * ldk + (issued % row_lines) * kLine);
      }
      const V x0 = hn::LoadU(df, k0 + t), x1 = hn::LoadU(df, k1 + t);
      for (int r = 0; r < NR; ++r) {
        const V qv = hn::Load(df, qs + r * Dp + t);
        a0[r] = hn::MulAdd(qv, x0, a0[r]);
        a1[r] = hn::MulAdd(qv, x1, a1[r]);
      }
    }
    for (int r = 0; r < NR; ++r) {
      s[r * kB + j] = hn::GetLane(hn::SumOfLanes(df, a0[r]));
      s[r * kB + j + 1] = hn::GetLane(hn::SumOfLanes(df, a1[r]));
    }
  }
  if (j < nb) {
    V a0[NR];
    for (int r = 0; r < NR; ++r) a0[r] = hn::Zero(df);
    for (int64_t t = 0; t < Dp; t += L) {
      const V x0 = hn::LoadU(df, k + j * ldk + t);
      for (int r = 0; r < NR; ++r) a0[r] = hn::MulAdd(hn::Load(df, qs + r * Dp + t), x0, a0[r]);
    }
    for (int r = 0; r < NR; ++r) s[r * kB + j] = hn::GetLane(hn::SumOfLanes(df, a0[r]));
  }
}

// o[r][:] = alpha[r] · o[r][:] + Σ_j s[r][j] · v[j][:] for NR rows.
template <int NR>
HWY_INLINE void Accumulate(const float* HWY_RESTRICT s, const float* HWY_RESTRICT alpha, const float* HWY_RESTRICT v,
                           int64_t ldv, int64_t nb, float* HWY_RESTRICT o, int64_t Dp) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  for (int64_t t = 0; t < Dp; t += 2 * L) {
    V c0[NR], c1[NR];
    for (int r = 0; r < NR; ++r) {
      const V a = hn::Set(df, alpha[r]);
      c0[r] = hn::Mul(a, hn::Load(df, o + r * Dp + t));
      c1[r] = hn::Mul(a, hn::Load(df, o + r * Dp + t + L));
    }
    for (int64_t j = 0; j < nb; ++j) {
      const V v0 = hn::LoadU(df, v + j * ldv + t), v1 = hn::LoadU(df, v + j * ldv + t + L);
      for (int r = 0; r < NR; ++r) {
        const V p = hn::Set(df, s[r * kB + j]);
        c0[r] = hn::MulAdd(p, v0, c0[r]);
        c1[r] = hn::MulAdd(p, v1, c1[r]);
      }
    }
    for (int r = 0; r < NR; ++r) {
      hn::Store(c0[r], df, o + r * Dp + t);
      hn::Store(c1[r], df, o + r * Dp + t + L);
    }
  }
}

template <class F>
HWY_INLINE void ByFour(int64_t R, const F& f) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) f(r, std::integral_constant<int, 4>());
  switch (R - r) {
    case 1: f(r, std::integral_constant<int, 1>()); break;
    case 2: f(r, std::integral_constant<int, 2>()); break;
    case 3: f(r, std::integral_constant<int, 3>()); break;
    default: break;
  }
}

// nb rows [slot, slot + nb) of one cache block, converted to f32 rows of Dp floats.
void ConvertRows(const KVCache& cache, int32_t page, int64_t layer, int kv, int64_t head, int64_t slot, int64_t nb,
                 int64_t D, int64_t Dp, float* HWY_RESTRICT dst) {
  const hn::ScalableTag<float> df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  const void* blk = cache.block(page, layer, kv, head);
  const KVDType t = cache.config().dtype;
  for (int64_t j = 0; j < nb; ++j) {
    float* out = dst + j * Dp;
    const int64_t e0 = (slot + j) * D;
    int64_t d = 0;
    switch (t) {
      case KVDType::f32: std::copy_n(static_cast<const float*>(blk) + e0, D, out); d = D; break;
      case KVDType::bf16: {
        const hn::Rebind<hwy::bfloat16_t, decltype(df)> dh;
        const auto* src = static_cast<const hwy::bfloat16_t*>(blk) + e0;
        for (; d + L <= D; d += L) hn::Store(hn::PromoteTo(df, hn::LoadU(dh, src + d)), df, out + d);
        for (; d < D; ++d) out[d] = to_float(static_cast<const bf16*>(blk)[e0 + d]);
        break;
      }
      case KVDType::f16: {
        const hn::Rebind<hwy::float16_t, decltype(df)> dh;
        const auto* src = static_cast<const hwy::float16_t*>(blk) + e0;
        for (; d + L <= D; d += L) hn::Store(hn::PromoteTo(df, hn::LoadU(dh, src + d)), df, out + d);
        for (; d < D; ++d) out[d] = to_float(static_cast<const f16*>(blk)[e0 + d]);
        break;
      }
      case KVDType::int8: {
        const hn::Rebind<int8_t, decltype(df)> d8;
        const hn::Rebind<int32_t, decltype(df)> di;
        const float scale = cache.block_scale(page, layer, kv, head);
        const auto sv = hn::Set(df, scale);
        const auto* src = static_cast<const int8_t*>(blk) + e0;
        for (; d + L <= D; d += L) {
          hn::Store(hn::Mul(sv, hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, src + d)))), df, out + d);
        }
        for (; d < D; ++d) out[d] = src[d] * scale;
        break;
      }
    }
    std::fill(out + D, out + Dp, 0.0f);
  }
}

void RunItem(const DecodeArgs& a, const DecodeItem& it, Scratch& sc, float* part_o, float* part_lse) {
  const KVCache& cache = *a.cache;
  const DecodePlan& plan = *a.plan;
  const int64_t D = plan.head_dim, Dp = (D + VecPair() - 1) / VecPair() * VecPair();
  const int64_t G = plan.heads_q / plan.heads_kv, nq = plan.queries_per_seq, ps = plan.page_size;
  const int64_t R = (it.q_end - it.q_begin) * G;
  const int64_t len = a.length[it.seq], window = plan.ranges[it.seq].window;
  sc.reserve(R, Dp);

  // Scores in base 2 (log2 e folded into the query scale and the softcap): every exponential
  // is a 2^x (softmax-inl.h's Exp2), cheaper than e^x; the LSE returns to base e at the end
  // (lab/decode_cpu 08: the 'small' decoder's step 2-4 % faster).
  const float qscale = a.scale * kLog2e;
  const float cap = a.softcap * kLog2e;
  // Rows, their visible keys within this chunk, and the key span any row sees.
  int64_t span_lo = it.key_end, span_hi = it.key_begin;
  int64_t lo_max = it.key_begin, hi_min = it.key_end;  // keys every row sees: [lo_max, hi_min)
  for (int64_t r = 0; r < R; ++r) {
    const int64_t tok = it.q_begin + r / G, h = it.head_kv * G + r % G;
    const int64_t pos = len - nq + tok;
    sc.lo[r] = std::max(it.key_begin, window > 0 ? pos - window + 1 : int64_t{0});
    sc.hi[r] = std::min(it.key_end, pos + 1);
    lo_max = std::max(lo_max, sc.lo[r]);
    hi_min = std::min(hi_min, sc.hi[r]);
    if (sc.lo[r] < sc.hi[r]) {
      span_lo = std::min(span_lo, sc.lo[r]);
      span_hi = std::max(span_hi, sc.hi[r]);
    }
    const int64_t base = offset4(a.q, it.seq, tok, h, 0);
    float* qr = sc.qs + r * Dp;
    for (int64_t d = 0; d < D; ++d) qr[d] = qscale * load_f32(a.q, base + d * a.q.strides[3]);
    std::fill(qr + D, qr + Dp, 0.0f);
  }
  std::fill(sc.o, sc.o + R * Dp, 0.0f);
  std::fill(sc.m, sc.m + R, kNegInf);
  std::fill(sc.l, sc.l + R, 0.0f);

  const hn::ScalableTag<float> df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  const bool in_place = cache.config().dtype == KVDType::f32 && D == Dp;
  const int32_t* table = a.tables[it.seq];
  const int64_t first_page = a.first_page[it.seq];

  for (int64_t j0 = span_lo; j0 < span_hi;) {
    const int64_t page_end = (j0 / ps + 1) * ps;
    const int64_t nb = std::min({kB, span_hi - j0, page_end - j0});
    const int32_t page = table[j0 / ps - first_page];
    const int64_t slot = j0 % ps;
    const float *kp = sc.kb, *vp = sc.vb;
    const float *knext = nullptr, *vnext = nullptr;  // the next block, prefetched during this one
    int64_t nnext = 0;
    if (in_place) {
      kp = static_cast<const float*>(cache.block(page, a.layer, 0, it.head_kv)) + slot * D;
      vp = static_cast<const float*>(cache.block(page, a.layer, 1, it.head_kv)) + slot * D;
      // The next block may lie on another page, where the hardware prefetcher does not follow:
      // Scores and Accumulate request it row by row so that its loads overlap this block's work.
      const int64_t j1 = j0 + nb;
      if (j1 < span_hi) {
        nnext = std::min({kB, span_hi - j1, (j1 / ps + 1) * ps - j1});
        const int32_t next = table[j1 / ps - first_page];
        knext = static_cast<const float*>(cache.block(next, a.layer, 0, it.head_kv)) + (j1 % ps) * D;
        vnext = static_cast<const float*>(cache.block(next, a.layer, 1, it.head_kv)) + (j1 % ps) * D;
      }
    } else {
      ConvertRows(cache, page, a.layer, 0, it.head_kv, slot, nb, D, Dp, sc.kb);
      ConvertRows(cache, page, a.layer, 1, it.head_kv, slot, nb, D, Dp, sc.vb);
    }
    ByFour(R, [&](int64_t r, auto nr) {
      Scores<decltype(nr)::value>(sc.qs + r * Dp, Dp, kp, Dp, nb, sc.s + r * kB, r == 0 ? knext : nullptr,
                                  r == 0 ? vnext : nullptr, nnext);
    });

    // Blocks that every row sees whole (all but a chunk's edges) need no masking.
    const bool whole = nb == kB && j0 >= lo_max && j0 + nb <= hi_min;
    for (int64_t r = 0; r < R; ++r) {
      float* s = sc.s + r * kB;
      // Mask keys outside the row's window; pad the block to whole vectors.
      for (int64_t j = 0; j < kB && !whole; ++j) {
        const int64_t key = j0 + j;
        if (j >= nb || key < sc.lo[r] || key >= sc.hi[r]) s[j] = kNegInf;
      }
      if (a.softcap > 0) {
        for (int64_t j = 0; j < nb; ++j)
          if (s[j] != kNegInf) s[j] = cap * std::tanh(s[j] / cap);
      }
      auto mx = hn::Set(df, kNegInf);
      for (int64_t j = 0; j < kB; j += L) mx = hn::Max(mx, hn::Load(df, s + j));
      const float m_new = std::max(sc.m[r], hn::GetLane(hn::MaxOfLanes(df, mx)));
      if (m_new == kNegInf) {  // nothing visible yet: keep o = 0, l = 0
        sc.alpha[r] = 1.0f;
        std::fill(s, s + kB, 0.0f);
        continue;
      }
      const auto mv = hn::Set(df, m_new);
      auto sum = hn::Zero(df);
      for (int64_t j = 0; j < kB; j += L) {
        const auto e = Exp2(df, hn::Sub(hn::Load(df, s + j), mv));
        hn::Store(e, df, s + j);
        sum = hn::Add(sum, e);
      }
      sc.alpha[r] = std::exp2(sc.m[r] - m_new);
      sc.l[r] = sc.l[r] * sc.alpha[r] + hn::GetLane(hn::SumOfLanes(df, sum));
      sc.m[r] = m_new;
    }
    ByFour(R, [&](int64_t r, auto nr) {
      Accumulate<decltype(nr)::value>(sc.s + r * kB, sc.alpha + r, vp, Dp, nb, sc.o + r * Dp, Dp);
    });
    j0 += nb;
  }

  // Partial result of this chunk: [split][token][head][D] and [split][token][head].
  const int64_t split = plan.split_offset[it.seq] + it.split, Hq = plan.heads_q;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t tok = it.q_begin + r / G, h = it.head_kv * G + r % G;
    const int64_t row = (split * nq + tok) * Hq + h;
    const float inv = sc.l[r] > 0 ? 1.0f / sc.l[r] : 0.0f;
    for (int64_t d = 0; d < D; ++d) part_o[row * D + d] = sc.o[r * Dp + d] * inv;
    part_lse[row] = sc.l[r] > 0 ? (sc.m[r] + std::log2(sc.l[r])) * kLn2 : kNegInf;
  }
}

}  // namespace

void DecodeRun(const DecodeArgs& a) {
  const DecodePlan& plan = *a.plan;
  const int64_t nq = plan.queries_per_seq, Hq = plan.heads_q, D = plan.head_dim;
  std::vector<float> part_o(static_cast<size_t>(plan.total_splits * nq * Hq * D));
  std::vector<float> part_lse(static_cast<size_t>(plan.total_splits * nq * Hq));
  ThreadPool& tp = pool();
  std::vector<Scratch> scratch(static_cast<size_t>(tp.size()));
  tp.parallel_for(static_cast<int64_t>(plan.items.size()), [&](int64_t i, int thread) {
    RunItem(a, plan.items[i], scratch[thread], part_o.data(), part_lse.data());
  });
  // Merge: rows (sequence, token, head) over the sequence's chunks.
  const int64_t S = static_cast<int64_t>(plan.ranges.size());
  tp.parallel_for(S * nq, [&](int64_t st, int) {
    const int64_t s = st / nq, tok = st % nq, n = plan.splits[s];
    for (int64_t h = 0; h < Hq; ++h) {
      float mx = kNegInf;
      for (int64_t c = 0; c < n; ++c) mx = std::max(mx, part_lse[((plan.split_offset[s] + c) * nq + tok) * Hq + h]);
      const int64_t obase = offset4(a.out, s, tok, h, 0);
      float acc[256] = {};
      double total = 0;
      if (mx != kNegInf) {
        for (int64_t c = 0; c < n; ++c) {
          const int64_t row = ((plan.split_offset[s] + c) * nq + tok) * Hq + h;
          const float w = std::exp(part_lse[row] - mx);
          total += w;
          for (int64_t d = 0; d < D; ++d) acc[d] += w * part_o[row * D + d];
        }
      }
      const float inv = total > 0 ? static_cast<float>(1.0 / total) : 0.0f;
      for (int64_t d = 0; d < D; ++d) store_f32(a.out, obase + d * a.out.strides[3], acc[d] * inv);
      if (!a.lse.empty()) {
        static_cast<float*>(a.lse.data)[offset3(a.lse, s, h, tok)] =
            total > 0 ? mx + static_cast<float>(std::log(total)) : kNegInf;
      }
    }
  });
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {
HWY_EXPORT(DecodeRun);
void decode_run(const DecodeArgs& args) { HWY_DYNAMIC_DISPATCH(DecodeRun)(args); }
}  // namespace attnkit::cpu
#endif
