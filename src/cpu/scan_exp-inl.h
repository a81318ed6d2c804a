// Short exponentials for the recurrent kernels (Highway, per target). Highway's Exp covers the
// whole float range with a longer reduction; the recurrences evaluate one exp per state element
// and step, so its length is their cost.
//   FastExp2(x) = 2^x: n = round(x), f = x − n in [−1/2, 1/2] (exact), 2^f by its degree-6
//     Taylor polynomial (relative error 1.2e-7), times 2^n built in the exponent field. x is
//     clamped to [−126, 127]: results below 2^−126 ≈ 1.2e-38 come out as 2^−126·2^f, never
//     denormal, which is harmless for decays and merge weights (they multiply values <= 1).
//   FastExp(x) = FastExp2(x·log2 e); the product's rounding adds a relative error of about
//     |x|·6e-8, negligible where the result is not already tiny.

#if defined(ATTNKIT_CPU_SCAN_EXP_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNKIT_CPU_SCAN_EXP_INL_H_
#undef ATTNKIT_CPU_SCAN_EXP_INL_H_
#else
#define ATTNKIT_CPU_SCAN_EXP_INL_H_
#endif

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

inline constexpr float kLog2e = 1.44269504088896341f;

template <class D, class V = hn::Vec<D>>
HWY_INLINE V FastExp2(D d, V x) {
  const hn::RebindToSigned<D> di;
  x = hn::Min(hn::Max(x, hn::Set(d, -126.0f)), hn::Set(d, 127.0f));
  const V n = hn::Round(x);
  const V f = hn::Sub(x, n);
  V p = hn::Set(d, 1.5403530393381609e-4f);  // (ln 2)^k / k!, k = 6 … 0
  p = hn::MulAdd(p, f, hn::Set(d, 1.3333558146428443e-3f));
  p = hn::MulAdd(p, f, hn::Set(d, 9.6181291076284772e-3f));
  p = hn::MulAdd(p, f, hn::Set(d, 5.5504108664821580e-2f));
  p = hn::MulAdd(p, f, hn::Set(d, 2.4022650695910071e-1f));
  p = hn::MulAdd(p, f, hn::Set(d, 6.9314718055994531e-1f));
  p = hn::MulAdd(p, f, hn::Set(d, 1.0f));
  const V scale = hn::BitCast(d, hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, n), hn::Set(di, 127))));
  return hn::Mul(p, scale);
}

template <class D, class V = hn::Vec<D>>
HWY_INLINE V FastExp(D d, V x) {
  return FastExp2(d, hn::Mul(x, hn::Set(d, kLog2e)));
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // include guard
