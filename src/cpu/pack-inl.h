// Loading strided f32 / bf16 / f16 rows into contiguous f32 buffers (Highway, per target).

#if defined(ATTNKIT_CPU_PACK_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNKIT_CPU_PACK_INL_H_
#undef ATTNKIT_CPU_PACK_INL_H_
#else
#define ATTNKIT_CPU_PACK_INL_H_
#endif

#include <cstring>

#include "core/problem.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// dst[0..n) = t[offset + i·step] as f32, then zeros up to n_padded.
HWY_INLINE void LoadRowF32(const TensorView& t, int64_t offset, int64_t step, int64_t n, int64_t n_padded,
                           float* HWY_RESTRICT dst) {
  int64_t i = 0;
  if (t.dtype == DType::f32 && step == 1) {
    std::memcpy(dst, static_cast<const float*>(t.data) + offset, n * sizeof(float));
    i = n;
  } else if (t.dtype == DType::bf16 && step == 1) {
    const hn::ScalableTag<float> df;
    const hn::Rebind<hwy::bfloat16_t, decltype(df)> dbf;
    const int64_t L = static_cast<int64_t>(hn::Lanes(df));
    const auto* src = static_cast<const hwy::bfloat16_t*>(t.data) + offset;
    for (; i + L <= n; i += L) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dbf, src + i)), df, dst + i);
  }
  for (; i < n; ++i) dst[i] = load_f32(t, offset + i * step);
  for (; i < n_padded; ++i) dst[i] = 0.0f;
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // include guard
