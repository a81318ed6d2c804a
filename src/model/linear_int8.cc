// Weight-only int8 matrix product (see linear_int8.h). Per output row, the int8 weights are
// widened to f32 a vector at a time and multiplied into up to four token rows at once, so one
// pass over the (memory-bound) weights serves four tokens.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "model/linear_int8.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <algorithm>

#include "core/thread_pool.h"
#include "hwy/highway.h"
#include "model/linear_int8.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::model::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void LinearInt8(const float* x, int64_t tokens, int64_t in, const int8_t* w, const float* scale, int64_t out,
                float* y) {
  constexpr int64_t kRowsPerItem = 64;
  pool().parallel_for((out + kRowsPerItem - 1) / kRowsPerItem, [&](int64_t blk, int) {
    const hn::ScalableTag<float> df;
    const hn::Rebind<int8_t, decltype(df)> d8;
    const hn::Rebind<int32_t, decltype(df)> di;
    const int64_t L = static_cast<int64_t>(hn::Lanes(df));
    for (int64_t o = blk * kRowsPerItem; o < std::min(out, (blk + 1) * kRowsPerItem); ++o) {
      const int8_t* wr = w + o * in;
      for (int64_t t0 = 0; t0 < tokens; t0 += 4) {
        const int64_t nt = std::min<int64_t>(4, tokens - t0);
        auto a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
        int64_t i = 0;
        for (; i + L <= in; i += L) {
          const auto wv = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, wr + i)));
          a0 = hn::MulAdd(hn::LoadU(df, x + t0 * in + i), wv, a0);
          if (nt > 1) a1 = hn::MulAdd(hn::LoadU(df, x + (t0 + 1) * in + i), wv, a1);
          if (nt > 2) a2 = hn::MulAdd(hn::LoadU(df, x + (t0 + 2) * in + i), wv, a2);
          if (nt > 3) a3 = hn::MulAdd(hn::LoadU(df, x + (t0 + 3) * in + i), wv, a3);
        }
        float s[4] = {hn::GetLane(hn::SumOfLanes(df, a0)), hn::GetLane(hn::SumOfLanes(df, a1)),
                      hn::GetLane(hn::SumOfLanes(df, a2)), hn::GetLane(hn::SumOfLanes(df, a3))};
        for (; i < in; ++i)
          for (int64_t t = 0; t < nt; ++t) s[t] += x[(t0 + t) * in + i] * wr[i];
        for (int64_t t = 0; t < nt; ++t) y[(t0 + t) * out + o] = s[t] * scale[o];
      }
    }
  });
}

}  // namespace attnkit::model::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::model {
HWY_EXPORT(LinearInt8);
void linear_int8(const float* x, int64_t tokens, int64_t in, const int8_t* w, const float* scale, int64_t out,
                 float* y) {
  HWY_DYNAMIC_DISPATCH(LinearInt8)(x, tokens, in, w, scale, out, y);
}
}  // namespace attnkit::model
#endif
