// Short exponentials for the recurrent kernels and linear attention's feature maps (Highway, per
// target). Highway's Exp covers the whole float range with a longer reduction; the recurrences
// evaluate one exp per state element and step (the selective scan: N per channel and step), so
// its length is their cost.
//
//   Exp2NonPositive(x) = 2^x for x <= 0: x = n + f with n = round(x), f in [−1/2, 1/2], both
//     from one addition of the shifter 1.5·2^23 (n lands in the low mantissa bits: no round, no
//     float-to-int conversion); 2^f = 1 + f·q(f) with q of degree 4, a minimax fit of the
//     relative error (9.1e-8 before rounding, 1.7e-7 measured in f32; 2^0 = 1 exactly, and a
//     decay 2^{−ε} keeps its relative accuracy for small ε); 2^n is added to the exponent field of
//     the polynomial's bits as an integer (no multiply). x is clamped below at −125, so results
//     under 2^−125 ≈ 2.4e-38 come out as 2^−125·2^f: never denormal, harmless for decays and
//     merge weights (they multiply values <= 1). Measured on the 2-core AVX2 development machine:
//     lab/linear_cpu/01_exp_ceiling.cc (about 5 cycles per 8 lanes in a loop of exps, against
//     7.6 for the degree-6 Taylor form with Round and ConvertTo that it replaces).
//   FastExp2(x) = the same for any x, clamped above at 127 as well (2^127·2^f stays finite).
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

// 2^x for x in [−125, 127] (the caller clamps): see the file header.
template <class D, class V = hn::Vec<D>>
HWY_INLINE V Exp2Clamped(D d, V x) {
  const hn::RebindToSigned<D> di;
  const V shift = hn::Set(d, 12582912.0f);  // 1.5·2^23: x + shift rounds x to an integer n
  const V nf = hn::Add(x, shift);
  const V f = hn::Sub(x, hn::Sub(nf, shift));  // exact: x − n
  V p = hn::Set(d, 1.326472382e-3f);
  p = hn::MulAdd(p, f, hn::Set(d, 9.671512991e-3f));
  p = hn::MulAdd(p, f, hn::Set(d, 5.550733581e-2f));
  p = hn::MulAdd(p, f, hn::Set(d, 2.402224243e-1f));
  p = hn::MulAdd(p, f, hn::Set(d, 6.931470037e-1f));
  p = hn::MulAdd(p, f, hn::Set(d, 1.0f));
  // The low bits of nf's representation hold n (two's complement, modulo 2^9 after the shift).
  return hn::BitCast(d, hn::Add(hn::BitCast(di, p), hn::ShiftLeft<23>(hn::BitCast(di, nf))));
}

template <class D, class V = hn::Vec<D>>
HWY_INLINE V Exp2NonPositive(D d, V x) {
  return Exp2Clamped(d, hn::Max(x, hn::Set(d, -125.0f)));
}

template <class D, class V = hn::Vec<D>>
HWY_INLINE V FastExp2(D d, V x) {
  return Exp2Clamped(d, hn::Min(hn::Max(x, hn::Set(d, -125.0f)), hn::Set(d, 127.0f)));
}

template <class D, class V = hn::Vec<D>>
HWY_INLINE V FastExp(D d, V x) {
  return FastExp2(d, hn::Mul(x, hn::Set(d, kLog2e)));
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // include guard
