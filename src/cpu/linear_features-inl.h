// Feature maps of linear attention on chunks of rows, forward and backward (Highway, per
// target). Rows live in row-major f32 buffers: x : [C][Dp], φ : [C][Fp], zero-padded (rows
// n..C and columns D..Dp, F..Fp are 0 so that padded lanes add nothing to any product).
//   elu_plus_one  φ = x + 1 (x > 0), exp(x) (x <= 0)     φ' = 1 (x > 0), exp(x) = φ
//   relu          φ = max(x, 0)                          φ' = [x > 0]
//   favor_plus    φ_f = exp(w_f·x' − |x'|²/2 − log √m)   ∂φ_f/∂x' = φ_f (w_f − x')
// The exponentials are the short ones of scan_exp-inl.h (relative error about 2e-7): a feature
// map evaluates one per element of every query and key row, as many as the chunk products' rows.

#if defined(ATTNKIT_CPU_LINEAR_FEATURES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNKIT_CPU_LINEAR_FEATURES_INL_H_
#undef ATTNKIT_CPU_LINEAR_FEATURES_INL_H_
#else
#define ATTNKIT_CPU_LINEAR_FEATURES_INL_H_
#endif

#include <algorithm>
#include <cmath>

#include "cpu/gemm_tile-inl.h"
#include "cpu/kernels.h"
#include "cpu/linear_kernels.h"
#include "cpu/pack-inl.h"
#include "cpu/scan_exp-inl.h"
#include "hwy/aligned_allocator.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// What the feature functions need, built once per call.
struct FeatureCtx {
  FeatureMap map;
  int64_t D, Dp, F, Fp;
  float xscale;
  float log_norm;  // log √m
  hwy::AlignedFreeUniquePtr<float[]> w, wt;  // favor_plus: [Fp][Dp] and its transpose [Dp][Fp]

  explicit FeatureCtx(const LinearProblem& pr)
      : map(pr.map), D(pr.head_dim), Dp(pad_cols(pr.head_dim)), F(pr.features), Fp(pad_cols(pr.features)),
        xscale(pr.xscale), log_norm(0.5f * std::log(static_cast<float>(pr.features))) {
    if (map != FeatureMap::favor_plus) return;
    w = hwy::AllocateAligned<float>(Fp * Dp);
    wt = hwy::AllocateAligned<float>(Dp * Fp);
    std::fill(w.get(), w.get() + Fp * Dp, 0.0f);
    std::fill(wt.get(), wt.get() + Dp * Fp, 0.0f);
    for (int64_t f = 0; f < F; ++f)
      for (int64_t d = 0; d < D; ++d) w[f * Dp + d] = wt[d * Fp + f] = pr.w[f * D + d];
  }
};

// dst[r][0..Dp) = row s0 + r of head h in batch b of t, for r < n; zeros for rows n..C.
// Contiguous f32 rows are copied by vectors in line (a memcpy call per short row costs more
// than the copy).
HWY_INLINE void LoadRows(const TensorView& t, int64_t b, int64_t s0, int64_t h, int64_t n, int64_t C, int64_t D,
                         int64_t Dp, float* HWY_RESTRICT dst) {
  const hn::ScalableTag<float> df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  if (t.dtype == DType::f32 && t.strides[3] == 1) {
    const float* src = static_cast<const float*>(t.data);
    for (int64_t r = 0; r < n; ++r) {
      const float* row = src + offset4(t, b, s0 + r, h, 0);
      float* d = dst + r * Dp;
      int64_t i = 0;
      for (; i + L <= D; i += L) hn::Store(hn::LoadU(df, row + i), df, d + i);
      for (; i < D; ++i) d[i] = row[i];
      for (; i < Dp; ++i) d[i] = 0.0f;
    }
  } else {
    for (int64_t r = 0; r < n; ++r) LoadRowF32(t, offset4(t, b, s0 + r, h, 0), t.strides[3], D, Dp, dst + r * Dp);
  }
  std::fill(dst + n * Dp, dst + C * Dp, 0.0f);
}

// Rows r < n of src [.][ld] into t; columns 0..D.
HWY_INLINE void StoreRows(const float* HWY_RESTRICT src, int64_t ld, const TensorView& t, int64_t b, int64_t s0,
                          int64_t h, int64_t n, int64_t D) {
  for (int64_t r = 0; r < n; ++r) {
    const int64_t base = offset4(t, b, s0 + r, h, 0);
    if (t.dtype == DType::f32 && t.strides[3] == 1) {
      std::copy(src + r * ld, src + r * ld + D, static_cast<float*>(t.data) + base);
    } else {
      for (int64_t d = 0; d < D; ++d) store_f32(t, base + d * t.strides[3], src[r * ld + d]);
    }
  }
}

// φ[C][Fp] of rows x[C][Dp] (n valid). favor_plus scales x in place by xscale first.
HWY_INLINE void FeaturesFwd(const FeatureCtx& c, float* HWY_RESTRICT x, int64_t n, int64_t C,
                            float* HWY_RESTRICT phi) {
  const hn::ScalableTag<float> df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  std::fill(phi + n * c.Fp, phi + C * c.Fp, 0.0f);
  if (c.map == FeatureMap::favor_plus) {
    const auto vs = hn::Set(df, c.xscale);
    for (int64_t i = 0; i < n * c.Dp; i += L) hn::Store(hn::Mul(hn::Load(df, x + i), vs), df, x + i);
    TileProduct<Accum::overwrite>(n, c.Fp, {x, c.Dp, 1}, c.wt.get(), c.Fp, c.D, phi, c.Fp);
    for (int64_t r = 0; r < n; ++r) {
      auto sq = hn::Zero(df);
      for (int64_t d = 0; d < c.Dp; d += L) {
        const auto xv = hn::Load(df, x + r * c.Dp + d);
        sq = hn::MulAdd(xv, xv, sq);
      }
      const auto off = hn::Set(df, 0.5f * hn::GetLane(hn::SumOfLanes(df, sq)) + c.log_norm);
      float* p = phi + r * c.Fp;
      for (int64_t f = 0; f < c.Fp; f += L) hn::Store(FastExp(df, hn::Sub(hn::Load(df, p + f), off)), df, p + f);
      std::fill(p + c.F, p + c.Fp, 0.0f);
    }
    return;
  }
  const auto zero = hn::Zero(df), one = hn::Set(df, 1.0f), log2e = hn::Set(df, kLog2e);
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * c.Dp;
    float* p = phi + r * c.Fp;
    for (int64_t d = 0; d < c.Dp; d += L) {
      const auto xv = hn::Load(df, xr + d);
      const auto pos = hn::Gt(xv, zero);
      const auto y = c.map == FeatureMap::relu
                         ? hn::IfThenElseZero(pos, xv)
                         : hn::IfThenElse(pos, hn::Add(xv, one), Exp2NonPositive(df, hn::Mul(hn::Min(xv, zero), log2e)));
      hn::Store(y, df, p + d);
    }
    std::fill(p + c.D, p + c.Fp, 0.0f);
  }
}

// dx[C][Dp] (rows < n) from dφ; x as left by FeaturesFwd. Overwrites dphi with dφ ∘ φ for favor_plus.
HWY_INLINE void FeaturesBwd(const FeatureCtx& c, const float* HWY_RESTRICT x, const float* HWY_RESTRICT phi,
                            float* HWY_RESTRICT dphi, int64_t n, float* HWY_RESTRICT dx) {
  const hn::ScalableTag<float> df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  const auto zero = hn::Zero(df);
  if (c.map == FeatureMap::favor_plus) {
    for (int64_t i = 0; i < n * c.Fp; i += L)
      hn::Store(hn::Mul(hn::Load(df, dphi + i), hn::Load(df, phi + i)), df, dphi + i);
    // dx' = Σ_f g_f w_f − x' Σ_f g_f,  dx = xscale · dx'
    TileProduct<Accum::overwrite>(n, c.Dp, {dphi, c.Fp, 1}, c.w.get(), c.Dp, c.F, dx, c.Dp);
    const auto vs = hn::Set(df, c.xscale);
    for (int64_t r = 0; r < n; ++r) {
      auto gs = hn::Zero(df);
      for (int64_t f = 0; f < c.Fp; f += L) gs = hn::Add(gs, hn::Load(df, dphi + r * c.Fp + f));
      const auto g = hn::Set(df, hn::GetLane(hn::SumOfLanes(df, gs)));
      for (int64_t d = 0; d < c.Dp; d += L) {
        const auto v = hn::NegMulAdd(hn::Load(df, x + r * c.Dp + d), g, hn::Load(df, dx + r * c.Dp + d));
        hn::Store(hn::Mul(v, vs), df, dx + r * c.Dp + d);
      }
    }
    return;
  }
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t d = 0; d < c.Dp; d += L) {
      const auto xv = hn::Load(df, x + r * c.Dp + d);
      const auto g = hn::Load(df, dphi + r * c.Fp + d);
      const auto pos = hn::Gt(xv, zero);
      const auto y = c.map == FeatureMap::relu ? hn::IfThenElseZero(pos, g)
                                               : hn::IfThenElse(pos, g, hn::Mul(g, hn::Load(df, phi + r * c.Fp + d)));
      hn::Store(y, df, dx + r * c.Dp + d);
    }
  }
}

// dst[Fp][C] = srcᵀ for src[C][Fp].
HWY_INLINE void Transpose(const float* HWY_RESTRICT src, int64_t rows, int64_t cols, float* HWY_RESTRICT dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
}

// acc[0..cols) += Σ_r src[r][0..cols) over rows < n.
HWY_INLINE void AddColumnSums(const float* HWY_RESTRICT src, int64_t n, int64_t cols, float* HWY_RESTRICT acc) {
  const hn::ScalableTag<float> df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  for (int64_t c = 0; c < cols; c += L) {
    auto s = hn::Load(df, acc + c);
    for (int64_t r = 0; r < n; ++r) s = hn::Add(s, hn::Load(df, src + r * cols + c));
    hn::Store(s, df, acc + c);
  }
}

// Σ_c a[c] over cols (a multiple of Lanes).
HWY_INLINE float RowSum(const float* HWY_RESTRICT a, int64_t cols) {
  const hn::ScalableTag<float> df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  auto s = hn::Zero(df);
  for (int64_t c = 0; c < cols; c += L) s = hn::Add(s, hn::Load(df, a + c));
  return hn::GetLane(hn::SumOfLanes(df, s));
}

// Σ_c a[c] · b[c] over cols (a multiple of Lanes).
HWY_INLINE float Dot(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, int64_t cols) {
  const hn::ScalableTag<float> df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  auto s = hn::Zero(df);
  for (int64_t c = 0; c < cols; c += L) s = hn::MulAdd(hn::Load(df, a + c), hn::Load(df, b + c), s);
  return hn::GetLane(hn::SumOfLanes(df, s));
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // include guard
