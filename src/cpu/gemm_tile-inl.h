// Register-blocked tile products for the CPU attention kernels (Highway, per target).
//
//   C[r][j] = (C[r][j] · row_scale[r] | 0) + Σ_k A(r, k) · B[k][j]
//
// A is read one element at a time and broadcast, so it may have any strides (a_rs, a_cs):
// the same kernel reads K rows, Pᵀ columns or dSᵀ columns without a copy. B and C are row-major
// with rows of 2·Lanes floats per step; callers pad their column counts to kColAlign.
// Register block: R rows × 2 vectors of accumulators, R chosen so that accumulators, two B
// vectors and a broadcast fit the register file (16 on AVX2, 32 on AVX-512) while keeping at
// least FMA latency × ports = 8 independent sums in flight.

#if defined(ATTNKIT_CPU_GEMM_TILE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNKIT_CPU_GEMM_TILE_INL_H_
#undef ATTNKIT_CPU_GEMM_TILE_INL_H_
#else
#define ATTNKIT_CPU_GEMM_TILE_INL_H_
#endif

#include <cstdint>

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Rows per register block.
#if HWY_TARGET <= HWY_AVX3
inline constexpr int64_t kTileRows = 8;
#else
inline constexpr int64_t kTileRows = 6;
#endif

enum class Accum { overwrite, add, scale_add };

struct TileA {
  const float* p;
  int64_t rs, cs;  // element strides between rows and along k
};

template <int R, Accum kMode>
HWY_INLINE void TileKernel(const TileA a, const float* HWY_RESTRICT b, int64_t ldb, int64_t kdim,
                           float* HWY_RESTRICT c, int64_t ldc, const float* HWY_RESTRICT row_scale) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  V c0[R], c1[R];
  for (int r = 0; r < R; ++r) {
    if constexpr (kMode == Accum::overwrite) {
      c0[r] = hn::Zero(df);
      c1[r] = hn::Zero(df);
    } else {
      c0[r] = hn::LoadU(df, c + r * ldc);
      c1[r] = hn::LoadU(df, c + r * ldc + L);
      if constexpr (kMode == Accum::scale_add) {
        const V s = hn::Set(df, row_scale[r]);
        c0[r] = hn::Mul(c0[r], s);
        c1[r] = hn::Mul(c1[r], s);
      }
    }
  }
  const float* ap = a.p;
  for (int64_t k = 0; k < kdim; ++k) {
    const V b0 = hn::LoadU(df, b + k * ldb);
    const V b1 = hn::LoadU(df, b + k * ldb + L);
    for (int r = 0; r < R; ++r) {
      const V x = hn::Set(df, ap[r * a.rs]);
      c0[r] = hn::MulAdd(x, b0, c0[r]);
      c1[r] = hn::MulAdd(x, b1, c1[r]);
    }
    ap += a.cs;
  }
  for (int r = 0; r < R; ++r) {
    hn::StoreU(c0[r], df, c + r * ldc);
    hn::StoreU(c1[r], df, c + r * ldc + L);
  }
}

// rows × cols block of C from rows of A and kdim rows of B; cols a multiple of 2·Lanes.
template <Accum kMode>
HWY_NOINLINE void TileProduct(int64_t rows, int64_t cols, TileA a, const float* HWY_RESTRICT b, int64_t ldb,
                              int64_t kdim, float* HWY_RESTRICT c, int64_t ldc,
                              const float* HWY_RESTRICT row_scale = nullptr) {
  const hn::ScalableTag<float> df;
  const int64_t W = 2 * static_cast<int64_t>(hn::Lanes(df));
  for (int64_t j = 0; j < cols; j += W) {
    int64_t r = 0;
    for (; r + kTileRows <= rows; r += kTileRows) {
      TileKernel<kTileRows, kMode>({a.p + r * a.rs, a.rs, a.cs}, b + j, ldb, kdim, c + r * ldc + j, ldc,
                                   row_scale ? row_scale + r : nullptr);
    }
    const TileA ar{a.p + r * a.rs, a.rs, a.cs};
    float* cr = c + r * ldc + j;
    const float* sr = row_scale ? row_scale + r : nullptr;
    switch (rows - r) {
      case 0: break;
      case 1: TileKernel<1, kMode>(ar, b + j, ldb, kdim, cr, ldc, sr); break;
      case 2: TileKernel<2, kMode>(ar, b + j, ldb, kdim, cr, ldc, sr); break;
      case 3: TileKernel<3, kMode>(ar, b + j, ldb, kdim, cr, ldc, sr); break;
      case 4: TileKernel<4, kMode>(ar, b + j, ldb, kdim, cr, ldc, sr); break;
      case 5: TileKernel<5, kMode>(ar, b + j, ldb, kdim, cr, ldc, sr); break;
      case 6: TileKernel<6, kMode>(ar, b + j, ldb, kdim, cr, ldc, sr); break;
      case 7: TileKernel<7, kMode>(ar, b + j, ldb, kdim, cr, ldc, sr); break;
    }
  }
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // include guard
