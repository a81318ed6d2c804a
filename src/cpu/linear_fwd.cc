// Linear attention forward on the CPU (see include/attnkit/linear.h), Highway SIMD with
// runtime dispatch, threads over (batch, KV head): the query heads of a group share the keys'
// features and the carried state.
//
// Non-causal: S = Σ_j φ(k_j) v_jᵀ, z = Σ_j φ(k_j) over all keys, then per query chunk
//   out = (Φq S) / (Φq z + eps).
// Causal, per chunk of C = 64 rows (Katharopoulos et al. 2020, §3.3, in chunked form):
//   A   = mask(Φq Φkᵀ)                      A   : [C][C]   exact within the chunk, j <= i
//   num = A V + Φq S                        num : [C][Dp]  S from the chunks before
//   den = rowsum(A) + Φq z + eps
//   out = num / den;  then S += Φkᵀ V, z += colsum(Φk)
// Every product is a TileProduct over zero-padded f32 buffers; extra memory is O(F·D) per thread.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/linear_fwd.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <algorithm>
#include <vector>

#include "core/problem.h"
#include "core/thread_pool.h"
#include "cpu/gemm_tile-inl.h"
#include "cpu/kernels.h"
#include "cpu/linear_features-inl.h"
#include "cpu/linear_kernels.h"
#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace {

constexpr int64_t kC = kLinearChunk;

struct FwdScratch {
  hwy::AlignedFreeUniquePtr<float[]> mem;
  float *x, *phq, *phk, *phkt, *vv, *a, *num, *s, *z, *den;

  FwdScratch(int64_t Dp, int64_t Fp)
      : mem(hwy::AllocateAligned<float>(3 * kC * Dp + 2 * kC * Fp + Fp * kC + kC * kC + Fp * Dp + Fp + kC)) {
    x = mem.get();        // [C][Dp]  raw rows, then scaled for favor_plus
    vv = x + kC * Dp;     // [C][Dp]
    num = vv + kC * Dp;   // [C][Dp]
    phq = num + kC * Dp;  // [C][Fp]
    phk = phq + kC * Fp;  // [C][Fp]
    phkt = phk + kC * Fp; // [Fp][C]
    a = phkt + Fp * kC;   // [C][C]
    s = a + kC * kC;      // [Fp][Dp]
    z = s + Fp * Dp;      // [Fp]
    den = z + Fp;         // [C]
  }
};

// Keys and values of rows [t0, t0 + n) into phk (and phkt when causal) and vv.
void LoadKeyChunk(const FeatureCtx& c, const TensorView& k, const TensorView& v, int64_t b, int64_t hk, int64_t t0,
                  int64_t n, bool transpose, FwdScratch& s) {
  LoadRows(k, b, t0, hk, n, kC, c.D, c.Dp, s.x);
  FeaturesFwd(c, s.x, n, kC, s.phk);
  if (transpose) Transpose(s.phk, kC, c.Fp, s.phkt);
  LoadRows(v, b, t0, hk, n, kC, c.D, c.Dp, s.vv);
}

// Rows [t0, t0 + n) of the group's q heads (and of k, v when causal) are requested ahead: each
// row of a head is a short segment at a large stride, which the hardware prefetchers miss.
void PrefetchChunk(const TensorView& q, const TensorView& k, const TensorView& v, int64_t b, int64_t hk, int64_t G,
                   int64_t t0, int64_t n, int64_t D, bool keys) {
  auto rows = [&](const TensorView& t, int64_t h) {
    const auto* base = static_cast<const char*>(t.data);
    const int64_t es = dtype_size(t.dtype), span = (D - 1) * t.strides[3] * es;
    for (int64_t r = 0; r < n; ++r) {
      const char* p = base + offset4(t, b, t0 + r, h, 0) * es;
      for (int64_t o = 0; o <= span; o += 64) hwy::Prefetch(p + o);
    }
  };
  for (int64_t g = 0; g < G; ++g) rows(q, hk * G + g);
  if (keys) {
    rows(k, hk);
    rows(v, hk);
  }
}

// S += Φkᵀ V, z += colsum(Φk) over the chunk's n rows.
void AddToState(const FeatureCtx& c, int64_t n, FwdScratch& s) {
  TileProduct<Accum::add>(c.F, c.Dp, {s.phk, 1, c.Fp}, s.vv, c.Dp, n, s.s, c.Dp);
  AddColumnSums(s.phk, n, c.Fp, s.z);
}

void ForwardItem(const LinearProblem& pr, const FeatureCtx& c, const TensorView& q, const TensorView& k,
                 const TensorView& v, const TensorView& out, int64_t b, int64_t hk, FwdScratch& s) {
  const int64_t G = pr.group();
  std::fill(s.s, s.s + c.Fp * c.Dp, 0.0f);
  std::fill(s.z, s.z + c.Fp, 0.0f);
  if (!pr.causal) {
    for (int64_t t0 = 0; t0 < pr.seq_k; t0 += kC) {
      const int64_t n = std::min(kC, pr.seq_k - t0);
      LoadKeyChunk(c, k, v, b, hk, t0, n, false, s);
      AddToState(c, n, s);
    }
  }
  for (int64_t t0 = 0; t0 < pr.seq_q; t0 += kC) {
    const int64_t n = std::min(kC, pr.seq_q - t0);
    PrefetchChunk(q, k, v, b, hk, G, t0 + kC, std::min(kC, pr.seq_q - t0 - kC), c.D, pr.causal);
    if (pr.causal) LoadKeyChunk(c, k, v, b, hk, t0, n, true, s);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = hk * G + g;
      LoadRows(q, b, t0, h, n, kC, c.D, c.Dp, s.x);
      FeaturesFwd(c, s.x, n, kC, s.phq);
      if (pr.causal) {
        // a[i][j] = φq_i · φk_j for j <= i, den_i = Σ_j a[i][j]; per block of kTileRows rows only
        // the columns up to the diagonal are formed, and the product with V stops there too.
        for (int64_t r = 0; r < n; r += kTileRows) {
          const int64_t rows = std::min(kTileRows, n - r), cols = std::min(kC, (r + rows + 15) / 16 * 16);
          TileProduct<Accum::overwrite>(rows, cols, {s.phq + r * c.Fp, c.Fp, 1}, s.phkt, kC, c.F, s.a + r * kC, kC);
        }
        for (int64_t i = 0; i < n; ++i) {
          float* ai = s.a + i * kC;
          float sum = 0.0f;
          for (int64_t j = 0; j <= i; ++j) sum += ai[j];
          std::fill(ai + i + 1, ai + kC, 0.0f);
          s.den[i] = sum;
        }
        for (int64_t r = 0; r < n; r += kTileRows) {
          const int64_t rows = std::min(kTileRows, n - r);
          TileProduct<Accum::overwrite>(rows, c.Dp, {s.a + r * kC, kC, 1}, s.vv, c.Dp, r + rows, s.num + r * c.Dp, c.Dp);
        }
        TileProduct<Accum::add>(n, c.Dp, {s.phq, c.Fp, 1}, s.s, c.Dp, c.F, s.num, c.Dp);
      } else {
        std::fill(s.den, s.den + n, 0.0f);
        TileProduct<Accum::overwrite>(n, c.Dp, {s.phq, c.Fp, 1}, s.s, c.Dp, c.F, s.num, c.Dp);
      }
      for (int64_t i = 0; i < n; ++i) {
        const float inv = 1.0f / (s.den[i] + Dot(s.phq + i * c.Fp, s.z, c.Fp) + pr.eps);
        float* row = s.num + i * c.Dp;
        for (int64_t d = 0; d < c.D; ++d) row[d] *= inv;
      }
      StoreRows(s.num, c.Dp, out, b, t0, h, n, c.D);
    }
    if (pr.causal) AddToState(c, n, s);
  }
}

}  // namespace

void LinearForward(const LinearProblem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                   const TensorView& out) {
  const FeatureCtx c(pr);
  ThreadPool& tp = pool();
  std::vector<FwdScratch> scratch;
  scratch.reserve(tp.size());
  for (int t = 0; t < tp.size(); ++t) scratch.emplace_back(c.Dp, c.Fp);
  tp.parallel_for(pr.batch * pr.heads_kv, [&](int64_t item, int thread) {
    ForwardItem(pr, c, q, k, v, out, item / pr.heads_kv, item % pr.heads_kv, scratch[thread]);
  });
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {
HWY_EXPORT(LinearForward);
void linear_fwd(const LinearProblem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& out) {
  HWY_DYNAMIC_DISPATCH(LinearForward)(pr, q, k, v, out);
}
}  // namespace attnkit::cpu
#endif
