// Linear attention forward on the CPU (see include/attnkit/linear.h), Highway SIMD with
// runtime dispatch, threads over (batch, group of KV heads): the query heads of a KV head share
// its keys' features and carried state, and a chunk's rows are staged for the whole group of
// heads as contiguous row segments.
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
#include <cstring>
#include <vector>

#include "core/problem.h"
#include "core/thread_pool.h"
#include "cpu/gemm_tile-inl.h"
#include "cpu/kernels.h"
#include "cpu/linear_features-inl.h"
#include "cpu/linear_kernels.h"
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace {

constexpr int64_t kC = kLinearChunk;

struct FwdScratch {
  hwy::AlignedFreeUniquePtr<float[]> mem;
  float *x, *phq, *phk, *phkt, *vv, *a, *num, *den;
  float *s, *z;                       // per KV head of the item: [nh][Fp][Dp], [nh][Fp]
  float *qs, *ks, *vs, *os;           // staged rows: [C][nh·G·D] for q and out, [C][nh·D] for k, v

  FwdScratch(int64_t Dp, int64_t Fp, int64_t D, int64_t nh, int64_t G)
      : mem(hwy::AllocateAligned<float>(3 * kC * Dp + 2 * kC * Fp + Fp * kC + kC * kC + kC +
                                        nh * (Fp * Dp + Fp) + 2 * kC * nh * G * D + 2 * kC * nh * D + 64)) {
    float* p = mem.get();
    for (float** b : {&x, &vv, &num}) *b = p, p += kC * Dp;  // x: raw rows, then scaled for favor_plus
    for (float** b : {&phq, &phk}) *b = p, p += kC * Fp;
    phkt = p, p += Fp * kC;
    a = p, p += kC * kC;
    s = p, p += nh * Fp * Dp;
    z = p, p += nh * Fp;
    den = p, p += kC;
    for (float** b : {&qs, &os}) *b = p, p += kC * nh * G * D;
    for (float** b : {&ks, &vs}) *b = p, p += kC * nh * D;
  }
};

// Rows [t0, t0 + n) of heads [h0, h0 + nh) of batch b, as a view indexed [0, r, j, d]. An f32
// tensor whose heads lie back to back is copied into buf one row segment at a time (sequential
// reads, which the prefetchers stream); any other tensor is viewed in place.
TensorView StageHeads(const TensorView& t, int64_t b, int64_t t0, int64_t n, int64_t h0, int64_t nh, float* buf,
                      bool copy_in) {
  const int64_t D = t.shape[3];
  if (t.dtype == DType::f32 && t.strides[3] == 1 && t.strides[2] == D) {
    if (copy_in) {
      for (int64_t r = 0; r < n; ++r)
        std::memcpy(buf + r * nh * D, static_cast<const float*>(t.data) + offset4(t, b, t0 + r, h0, 0),
                    nh * D * sizeof(float));
    }
    return TensorView(buf, DType::f32, {1, n, nh, D});
  }
  TensorView v = t;
  v.data = static_cast<char*>(t.data) + offset4(t, b, t0, h0, 0) * dtype_size(t.dtype);
  v.shape = {1, n, nh, D};
  return v;
}

// Writes staged output rows back (the inverse of StageHeads for an f32, head-contiguous out).
void UnstageHeads(const TensorView& staged, const TensorView& t, int64_t b, int64_t t0, int64_t n, int64_t h0,
                  int64_t nh) {
  if (staged.data == static_cast<char*>(t.data) + offset4(t, b, t0, h0, 0) * dtype_size(t.dtype)) return;
  const int64_t D = t.shape[3];
  for (int64_t r = 0; r < n; ++r)
    std::memcpy(static_cast<float*>(t.data) + offset4(t, b, t0 + r, h0, 0),
                static_cast<const float*>(staged.data) + r * nh * D, nh * D * sizeof(float));
}

// Keys and values of chunk rows [0, n) of head j of the staged views into phk (and phkt when
// causal) and vv.
void LoadKeyChunk(const FeatureCtx& c, const TensorView& k, const TensorView& v, int64_t j, int64_t n,
                  bool transpose, FwdScratch& s) {
  LoadRows(k, 0, 0, j, n, kC, c.D, c.Dp, s.x);
  FeaturesFwd(c, s.x, n, kC, s.phk);
  if (transpose) Transpose(s.phk, kC, c.Fp, s.phkt);
  LoadRows(v, 0, 0, j, n, kC, c.D, c.Dp, s.vv);
}

// S += Φkᵀ V, z += colsum(Φk) over the chunk's n rows.
void AddToState(const FeatureCtx& c, int64_t n, float* S, float* z, FwdScratch& s) {
  TileProduct<Accum::add>(c.F, c.Dp, {s.phk, 1, c.Fp}, s.vv, c.Dp, n, S, c.Dp);
  AddColumnSums(s.phk, n, c.Fp, z);
}

// KV heads [hk0, hk0 + nh) of batch b, with their query heads.
void ForwardItem(const LinearProblem& pr, const FeatureCtx& c, const TensorView& q, const TensorView& k,
                 const TensorView& v, const TensorView& out, int64_t b, int64_t hk0, int64_t nh, FwdScratch& s) {
  const int64_t G = pr.group(), SD = c.Fp * c.Dp;
  std::fill(s.s, s.s + nh * SD, 0.0f);
  std::fill(s.z, s.z + nh * c.Fp, 0.0f);
  if (!pr.causal) {
    for (int64_t t0 = 0; t0 < pr.seq_k; t0 += kC) {
      const int64_t n = std::min(kC, pr.seq_k - t0);
      const TensorView ks = StageHeads(k, b, t0, n, hk0, nh, s.ks, true);
      const TensorView vs = StageHeads(v, b, t0, n, hk0, nh, s.vs, true);
      for (int64_t j = 0; j < nh; ++j) {
        LoadKeyChunk(c, ks, vs, j, n, false, s);
        AddToState(c, n, s.s + j * SD, s.z + j * c.Fp, s);
      }
    }
  }
  for (int64_t t0 = 0; t0 < pr.seq_q; t0 += kC) {
    const int64_t n = std::min(kC, pr.seq_q - t0);
    const TensorView qs = StageHeads(q, b, t0, n, hk0 * G, nh * G, s.qs, true);
    const TensorView os = StageHeads(out, b, t0, n, hk0 * G, nh * G, s.os, false);
    TensorView ks, vs;
    if (pr.causal) {
      ks = StageHeads(k, b, t0, n, hk0, nh, s.ks, true);
      vs = StageHeads(v, b, t0, n, hk0, nh, s.vs, true);
    }
    for (int64_t j = 0; j < nh; ++j) {
      const float* S = s.s + j * SD;
      float* z = s.z + j * c.Fp;
      if (pr.causal) LoadKeyChunk(c, ks, vs, j, n, true, s);
      for (int64_t g = 0; g < G; ++g) {
        LoadRows(qs, 0, 0, j * G + g, n, kC, c.D, c.Dp, s.x);
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
            for (int64_t jj = 0; jj <= i; ++jj) sum += ai[jj];
            std::fill(ai + i + 1, ai + kC, 0.0f);
            s.den[i] = sum;
          }
          for (int64_t r = 0; r < n; r += kTileRows) {
            const int64_t rows = std::min(kTileRows, n - r);
            TileProduct<Accum::overwrite>(rows, c.Dp, {s.a + r * kC, kC, 1}, s.vv, c.Dp, r + rows, s.num + r * c.Dp,
                                          c.Dp);
          }
          TileProduct<Accum::add>(n, c.Dp, {s.phq, c.Fp, 1}, S, c.Dp, c.F, s.num, c.Dp);
        } else {
          std::fill(s.den, s.den + n, 0.0f);
          TileProduct<Accum::overwrite>(n, c.Dp, {s.phq, c.Fp, 1}, S, c.Dp, c.F, s.num, c.Dp);
        }
        for (int64_t i = 0; i < n; ++i) {
          const float inv = 1.0f / (s.den[i] + Dot(s.phq + i * c.Fp, z, c.Fp) + pr.eps);
          float* row = s.num + i * c.Dp;
          for (int64_t d = 0; d < c.D; ++d) row[d] *= inv;
        }
        StoreRows(s.num, c.Dp, os, 0, 0, j * G + g, n, c.D);
      }
      if (pr.causal) AddToState(c, n, s.s + j * SD, z, s);
    }
    UnstageHeads(os, out, b, t0, n, hk0 * G, nh * G);
  }
}

}  // namespace

void LinearForward(const LinearProblem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                   const TensorView& out) {
  const FeatureCtx c(pr);
  ThreadPool& tp = pool();
  // KV heads per item: about two items per thread over the batch, so that staged row segments
  // are long and the threads stay balanced when the cores are shared.
  const int64_t want = std::max<int64_t>(1, 2 * tp.size() / std::max<int64_t>(1, pr.batch));
  const int64_t nh = std::max<int64_t>(1, pr.heads_kv / std::min(want, pr.heads_kv));
  const int64_t groups = (pr.heads_kv + nh - 1) / nh;
  std::vector<FwdScratch> scratch;
  scratch.reserve(tp.size());
  for (int t = 0; t < tp.size(); ++t) scratch.emplace_back(c.Dp, c.Fp, c.D, nh, pr.group());
  tp.parallel_for(pr.batch * groups, [&](int64_t item, int thread) {
    const int64_t hk0 = (item % groups) * nh;
    ForwardItem(pr, c, q, k, v, out, item / groups, hk0, std::min(nh, pr.heads_kv - hk0), scratch[thread]);
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
