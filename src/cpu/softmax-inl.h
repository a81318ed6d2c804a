// Online-softmax pieces shared by the CPU flash kernels (Highway, per target).
//
// Scores live in a tile st[key][query] (keys × queries, row stride ld): a query's values are a
// column, so the running max and sum of kBq queries are a few vectors and every update is a
// vertical operation.

#if defined(ATTNKIT_CPU_SOFTMAX_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNKIT_CPU_SOFTMAX_INL_H_
#undef ATTNKIT_CPU_SOFTMAX_INL_H_
#else
#define ATTNKIT_CPU_SOFTMAX_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>

#include "attnkit/mask.h"

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Scores are kept in base 2: the kernels fold log2(e) into the query scale, so that every
// exponential is a 2^x, cheaper than e^x (FlashAttention-3 does the same on GPUs).
inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

// 2^x, to about 2 ulp, and exactly 0 for x < −126 (−inf included): x = n + f with n an
// integer and |f| <= 1/2, 2^f from its Taylor series to degree 6 (truncation below 1.2e-7
// relative), and n added to the exponent bits.
template <class DF, class V = hn::Vec<DF>>
HWY_INLINE V Exp2(DF df, V x) {
  const hn::RebindToSigned<DF> di;
  const V n = hn::Round(x);
  const V f = hn::Sub(x, n);
  V p = hn::Set(df, 1.5403530393381606e-4f);  // ln2^6 / 6!
  p = hn::MulAdd(p, f, hn::Set(df, 1.3333558146428443e-3f));
  p = hn::MulAdd(p, f, hn::Set(df, 9.618129107628477e-3f));
  p = hn::MulAdd(p, f, hn::Set(df, 5.550410866482158e-2f));
  p = hn::MulAdd(p, f, hn::Set(df, 0.2402265069591007f));
  p = hn::MulAdd(p, f, hn::Set(df, 0.6931471805599453f));
  p = hn::MulAdd(p, f, hn::Set(df, 1.0f));
  const auto bits = hn::Add(hn::BitCast(di, p), hn::ShiftLeft<23>(hn::ConvertTo(di, hn::Max(n, hn::Set(df, -127.0f)))));
  return hn::IfThenZeroElse(hn::Lt(x, hn::Set(df, -126.0f)), hn::BitCast(df, bits));
}

// Which scores of a tile survive, and how logits are shaped before the softmax.
struct TileLogits {
  float softcap = 0.0f;  // > 0: s = softcap · tanh(s / softcap), in the units s arrives in
  int64_t q_first = 0;   // position of the tile's first query within its sequence
  int64_t k_first = 0;   // position of the tile's first key
  int64_t diag = 0;      // nk − nq: query i sits at position p = i + diag
  // Set when some pair of the tile lies outside a band: query position p keeps key j when
  // p − left <= j <= p + right. The causal mask is {MaskBand::kUnbounded, 0}; a sparse mask's
  // band comes from Mask::band.
  std::optional<MaskBand> band;
  // Element mask of a partial tile of a sparse mask, keep[r · keep_ld + c] (0 drops the pair);
  // nullptr on full tiles, which skip element masking.
  const uint8_t* keep = nullptr;
  int64_t keep_ld = 0;
};

// Applies softcap, the band and the element mask to st[0..rows)[0..cols) in place.
HWY_INLINE void ShapeLogits(float* HWY_RESTRICT st, int64_t ld, int64_t rows, int64_t cols, const TileLogits& t) {
  const hn::ScalableTag<float> df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  const auto neg_inf = hn::Set(df, -std::numeric_limits<float>::infinity());
  if (t.softcap > 0) {
    const auto cap = hn::Set(df, t.softcap), inv = hn::Set(df, 1.0f / t.softcap);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; c += L) {
        float* p = st + r * ld + c;
        hn::StoreU(hn::Mul(cap, hn::Tanh(df, hn::Mul(hn::LoadU(df, p), inv))), df, p);
      }
  }
  if (t.band) {
    // Bounds clamped to ±2^30 (an unbounded side) before they become floats; query indices
    // are exact in f32 below 2^24, as for the causal mask.
    constexpr int64_t kFar = int64_t{1} << 30;
    for (int64_t r = 0; r < rows; ++r) {
      // key j = k_first + r is kept by the queries i with j − right − diag <= i <= j + left − diag
      const int64_t j = t.k_first + r;
      const auto lo = hn::Set(df, static_cast<float>(std::max(j - t.diag - std::min(t.band->right, kFar), -kFar)));
      const auto hi = hn::Set(df, static_cast<float>(std::min(j - t.diag + std::min(t.band->left, kFar), kFar)));
      for (int64_t c = 0; c < cols; c += L) {
        float* p = st + r * ld + c;
        const auto qi = hn::Iota(df, static_cast<float>(t.q_first + c));
        hn::StoreU(hn::IfThenElse(hn::And(hn::Ge(qi, lo), hn::Le(qi, hi)), hn::LoadU(df, p), neg_inf), df, p);
      }
    }
  }
  if (t.keep != nullptr) {
    const hn::Rebind<uint8_t, decltype(df)> d8;
    const hn::Rebind<int32_t, decltype(df)> di;
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* k = t.keep + r * t.keep_ld;
      for (int64_t c = 0; c < cols; c += L) {
        float* p = st + r * ld + c;
        const auto kept = hn::RebindMask(df, hn::Ne(hn::PromoteTo(di, hn::LoadU(d8, k + c)), hn::Zero(di)));
        hn::StoreU(hn::IfThenElse(kept, hn::LoadU(df, p), neg_inf), df, p);
      }
    }
  }
}

// One online-softmax step over a tile of `rows` keys (scores in base 2): updates the running
// max m and sum l of each query column, turns st into probabilities 2^(s − m), and returns in
// alpha the factor by which each query's earlier output must be rescaled. A column with no
// visible key so far keeps m = −inf, l = 0 and probabilities 0. The column max runs over four
// accumulators and the sum over two: one chain of dependent instructions per column step was
// bound by their latency.
HWY_INLINE void OnlineSoftmaxStep(float* HWY_RESTRICT st, int64_t ld, int64_t rows, int64_t cols,
                                  float* HWY_RESTRICT m, float* HWY_RESTRICT l, float* HWY_RESTRICT alpha) {
  const hn::ScalableTag<float> df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  const auto neg_inf = hn::Set(df, -std::numeric_limits<float>::infinity());
  for (int64_t c = 0; c < cols; c += L) {
    auto x0 = neg_inf, x1 = neg_inf, x2 = neg_inf, x3 = neg_inf;
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
      x0 = hn::Max(x0, hn::LoadU(df, st + r * ld + c));
      x1 = hn::Max(x1, hn::LoadU(df, st + (r + 1) * ld + c));
      x2 = hn::Max(x2, hn::LoadU(df, st + (r + 2) * ld + c));
      x3 = hn::Max(x3, hn::LoadU(df, st + (r + 3) * ld + c));
    }
    for (; r < rows; ++r) x0 = hn::Max(x0, hn::LoadU(df, st + r * ld + c));
    const auto m_old = hn::LoadU(df, m + c);
    const auto m_new = hn::Max(m_old, hn::Max(hn::Max(x0, x1), hn::Max(x2, x3)));
    const auto m_use = hn::IfThenZeroElse(hn::Eq(m_new, neg_inf), m_new);
    const auto a = Exp2(df, hn::Sub(m_old, m_use));
    auto s0 = hn::Zero(df), s1 = hn::Zero(df);
    for (r = 0; r + 2 <= rows; r += 2) {
      float* p = st + r * ld + c;
      const auto e0 = Exp2(df, hn::Sub(hn::LoadU(df, p), m_use));
      const auto e1 = Exp2(df, hn::Sub(hn::LoadU(df, p + ld), m_use));
      hn::StoreU(e0, df, p);
      hn::StoreU(e1, df, p + ld);
      s0 = hn::Add(s0, e0);
      s1 = hn::Add(s1, e1);
    }
    if (r < rows) {
      float* p = st + r * ld + c;
      const auto e = Exp2(df, hn::Sub(hn::LoadU(df, p), m_use));
      hn::StoreU(e, df, p);
      s0 = hn::Add(s0, e);
    }
    hn::StoreU(hn::MulAdd(hn::LoadU(df, l + c), a, hn::Add(s0, s1)), df, l + c);
    hn::StoreU(m_new, df, m + c);
    hn::StoreU(a, df, alpha + c);
  }
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // include guard
