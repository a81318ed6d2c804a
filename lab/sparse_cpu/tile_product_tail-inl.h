// Lab helper (variants 16 and 15/17): TileProduct for column counts that are a whole number of
// vectors but not of vector pairs: the pairs through src's TileProduct, the last vector through
// a one-vector register block (R up to twice kTileRows). Not in src: nothing there needs it.

#if defined(ATTNKIT_LAB_TILE_PRODUCT_TAIL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNKIT_LAB_TILE_PRODUCT_TAIL_INL_H_
#undef ATTNKIT_LAB_TILE_PRODUCT_TAIL_INL_H_
#else
#define ATTNKIT_LAB_TILE_PRODUCT_TAIL_INL_H_
#endif

#include <algorithm>
#include <cstdint>

#include "cpu/gemm_tile-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <int R, Accum kMode>
HWY_INLINE void TileKernel1(const TileA a, const float* HWY_RESTRICT b, int64_t ldb, int64_t kdim,
                            float* HWY_RESTRICT c, int64_t ldc, const float* HWY_RESTRICT row_scale) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  V c0[R];
  for (int r = 0; r < R; ++r) {
    if constexpr (kMode == Accum::overwrite) {
      c0[r] = hn::Zero(df);
    } else {
      c0[r] = hn::LoadU(df, c + r * ldc);
      if constexpr (kMode == Accum::scale_add) c0[r] = hn::Mul(c0[r], hn::Set(df, row_scale[r]));
    }
  }
  const float* ap = a.p;
  for (int64_t k = 0; k < kdim; ++k) {
    const V b0 = hn::LoadU(df, b + k * ldb);
    for (int r = 0; r < R; ++r) c0[r] = hn::MulAdd(hn::Set(df, ap[r * a.rs]), b0, c0[r]);
    ap += a.cs;
  }
  for (int r = 0; r < R; ++r) hn::StoreU(c0[r], df, c + r * ldc);
}

// TileProduct with cols a multiple of Lanes.
template <Accum kMode>
HWY_NOINLINE void TileProductAny(int64_t rows, int64_t cols, TileA a, const float* HWY_RESTRICT b, int64_t ldb,
                                 int64_t kdim, float* HWY_RESTRICT c, int64_t ldc,
                                 const float* HWY_RESTRICT row_scale = nullptr) {
  const hn::ScalableTag<float> df;
  const int64_t W = 2 * static_cast<int64_t>(hn::Lanes(df));
  const int64_t cols2 = cols / W * W;
  if (cols2 > 0) TileProduct<kMode>(rows, cols2, a, b, ldb, kdim, c, ldc, row_scale);
  if (cols2 == cols) return;
  constexpr int kR1 = 2 * kTileRows;
  const int64_t j = cols2;
  int64_t r = 0;
  for (; r + kR1 <= rows; r += kR1) {
    TileKernel1<kR1, kMode>({a.p + r * a.rs, a.rs, a.cs}, b + j, ldb, kdim, c + r * ldc + j, ldc,
                            row_scale ? row_scale + r : nullptr);
  }
  for (; r < rows; r += 4) {
    const TileA ar{a.p + r * a.rs, a.rs, a.cs};
    float* cr = c + r * ldc + j;
    const float* sr = row_scale ? row_scale + r : nullptr;
    switch (std::min<int64_t>(4, rows - r)) {
      case 1: TileKernel1<1, kMode>(ar, b + j, ldb, kdim, cr, ldc, sr); break;
      case 2: TileKernel1<2, kMode>(ar, b + j, ldb, kdim, cr, ldc, sr); break;
      case 3: TileKernel1<3, kMode>(ar, b + j, ldb, kdim, cr, ldc, sr); break;
      default: TileKernel1<4, kMode>(ar, b + j, ldb, kdim, cr, ldc, sr); break;
    }
  }
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // include guard
