// Stores of outputs that are not read back by the kernel (Highway, per target): non-temporal
// where the rows allow it. An ordinary store first reads the line from memory; a streaming
// store writes it without the read, which for a recurrence that reads two or three [B, T, C]
// inputs and writes one output saves a quarter to a third of its memory traffic.
//   RowStore::stream         whole vectors (rows and their stride vector-aligned)
//   RowStore::stream_halves  two half-vector stores (16-byte alignment suffices on AVX2, which
//                            is what malloc gives large blocks)
//   RowStore::normal         anything else
// A kernel that streamed calls hwy::FlushStream() before it returns.

#if defined(ATTNKIT_CPU_STREAM_STORE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNKIT_CPU_STREAM_STORE_INL_H_
#undef ATTNKIT_CPU_STREAM_STORE_INL_H_
#else
#define ATTNKIT_CPU_STREAM_STORE_INL_H_
#endif

#include <cstdint>

#include "hwy/cache_control.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

enum class RowStore { normal, stream, stream_halves };

// The store for rows at p, p + ld, p + 2·ld, ... (ld in floats) written a vector at a time at
// offsets that are multiples of the vector length.
inline RowStore ChooseRowStore(const float* p, int64_t ld) {
  const hn::ScalableTag<float> df;
  const uintptr_t vbytes = hn::Lanes(df) * sizeof(float);
  auto aligned = [&](uintptr_t bytes) {
    return reinterpret_cast<uintptr_t>(p) % bytes == 0 && (static_cast<uintptr_t>(ld) * sizeof(float)) % bytes == 0;
  };
  if (aligned(vbytes)) return RowStore::stream;
  if (vbytes >= 32 && aligned(vbytes / 2)) return RowStore::stream_halves;
  return RowStore::normal;
}

template <RowStore kStore, class V>
HWY_INLINE void StoreRow(V v, float* HWY_RESTRICT p) {
  const hn::ScalableTag<float> df;
  if constexpr (kStore == RowStore::stream) {
    hn::Stream(v, df, p);
  } else if constexpr (kStore == RowStore::stream_halves) {
#if HWY_TARGET == HWY_SCALAR
    hn::StoreU(v, df, p);
#else
    const hn::Half<decltype(df)> dh;
    hn::Stream(hn::LowerHalf(dh, v), dh, p);
    hn::Stream(hn::UpperHalf(dh, v), dh, p + hn::Lanes(dh));
#endif
  } else {
    hn::StoreU(v, df, p);
  }
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // include guard
