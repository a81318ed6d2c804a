// gemv (gemv.h): rows in blocks of kRowsPerItem over the pool's threads; each thread takes four
// rows at a time with two accumulators each, so that eight independent FMA chains run over x.
// The weights are read once, front to back within a block. While four rows are read, the rows
// kAheadRows further on are requested a line per step: four interleaved row streams are more
// than the hardware prefetcher keeps ahead of (lab/decode_cpu 08: the 'small' decoder's step
// 4-7 % faster).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/gemv.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <algorithm>
#include <vector>

#include "core/thread_pool.h"
#include "cpu/gemv.h"
#include "cpu/prefetch.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace {
namespace hn = hwy::HWY_NAMESPACE;

// 64 rows of 512 floats: 128 KiB of weights per item, dozens of items per projection.
constexpr int64_t kRowsPerItem = 64;
constexpr int64_t kAheadRows = 8;

// y[r] = w[r][:] · x for NR rows; `ahead` (or nullptr): NR rows to request meanwhile.
template <int NR>
HWY_INLINE void Rows(const float* HWY_RESTRICT w, int64_t in, const float* HWY_RESTRICT x, float* HWY_RESTRICT y,
                     const float* ahead) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  V a[NR], b[NR];
  for (int r = 0; r < NR; ++r) a[r] = b[r] = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * L <= in; i += 2 * L) {
    const V x0 = hn::LoadU(df, x + i), x1 = hn::LoadU(df, x + i + L);
    if (ahead != nullptr) {  // the same 2·L floats of each row ahead, a line at a time
      for (int r = 0; r < NR; ++r)
        for (int64_t f = 0; f < 2 * L; f += 16) prefetch_l1(ahead + r * in + i + f);
    }
    for (int r = 0; r < NR; ++r) {
      a[r] = hn::MulAdd(hn::LoadU(df, w + r * in + i), x0, a[r]);
      b[r] = hn::MulAdd(hn::LoadU(df, w + r * in + i + L), x1, b[r]);
    }
  }
  for (; i + L <= in; i += L) {
    const V x0 = hn::LoadU(df, x + i);
    for (int r = 0; r < NR; ++r) a[r] = hn::MulAdd(hn::LoadU(df, w + r * in + i), x0, a[r]);
  }
  for (int r = 0; r < NR; ++r) {
    float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(a[r], b[r])));
    for (int64_t t = i; t < in; ++t) s += w[r * in + t] * x[t];
    y[r] = s;
  }
}

}  // namespace

void Gemv(std::span<const GemvPart> parts, const float* x, int64_t in) {
  // Items: (part, first row) for every block of rows of every part.
  std::vector<std::pair<int32_t, int64_t>> items;
  for (size_t p = 0; p < parts.size(); ++p) {
    for (int64_t r = 0; r < parts[p].rows; r += kRowsPerItem) items.emplace_back(static_cast<int32_t>(p), r);
  }
  pool().parallel_for(static_cast<int64_t>(items.size()), [&](int64_t it, int) {
    const GemvPart& part = parts[static_cast<size_t>(items[it].first)];
    const int64_t r0 = items[it].second, r1 = std::min(part.rows, r0 + kRowsPerItem);
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
      Rows<4>(part.w + r * in, in, x, part.y + r, r + kAheadRows + 4 <= r1 ? part.w + (r + kAheadRows) * in : nullptr);
    }
    for (; r < r1; ++r) Rows<1>(part.w + r * in, in, x, part.y + r, nullptr);
  });
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {
HWY_EXPORT(Gemv);
void gemv(std::span<const GemvPart> parts, const float* x, int64_t in) { HWY_DYNAMIC_DISPATCH(Gemv)(parts, x, in); }
}  // namespace attnkit::cpu
#endif
