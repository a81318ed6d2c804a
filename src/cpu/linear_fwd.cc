// Linear attention forward on the CPU (see include/attnkit/linear.h), Highway SIMD with
// runtime dispatch, threads over (batch, group of KV heads): the query heads of a KV head share
// its keys' features and carried state. Rows are read and written in place; while one (chunk,
// KV head) computes, the next one's rows are prefetched.
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
#include "cpu/prefetch.h"
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

  FwdScratch(int64_t Dp, int64_t Fp, int64_t nh)
      : mem(hwy::AllocateAligned<float>(3 * kC * Dp + 2 * kC * Fp + Fp * kC + kC * kC + kC + nh * (Fp * Dp + Fp) +
                                        64)) {
    float* p = mem.get();
    for (float** b : {&x, &vv, &num}) *b = p, p += kC * Dp;  // x: raw rows, then scaled for favor_plus
    for (float** b : {&phq, &phk}) *b = p, p += kC * Fp;
    phkt = p, p += Fp * kC;
    a = p, p += kC * kC;
    s = p, p += nh * Fp * Dp;
    z = p, p += nh * Fp;
    den = p;
  }
};

// Rows [t0, t0 + n) of heads [h0, h0 + nh) of batch b, as a view indexed [0, r, j, d] (in place).
TensorView HeadRows(const TensorView& t, int64_t b, int64_t t0, int64_t n, int64_t h0, int64_t nh) {
  TensorView v = t;
  v.data = static_cast<char*>(t.data) + offset4(t, b, t0, h0, 0) * dtype_size(t.dtype);
  v.shape = {1, n, nh, t.shape[3]};
  return v;
}

// Asks for row r of heads [h0, h0 + nh) of a HeadRows view to be brought into L2 (each 64-byte
// line of its row segments): the kernel reads a head's chunk straight from the tensor, and
// prefetches the next one's rows, one row at a time, while it computes.
void PrefetchRow(const TensorView& t, int64_t r, int64_t h0, int64_t nh) {
  const char* base = static_cast<const char*>(t.data);
  const int64_t es = dtype_size(t.dtype);
  for (int64_t h = h0; h < h0 + nh; ++h) {
    const char* row = base + (r * t.strides[1] + h * t.strides[2]) * es;
    const int64_t bytes = ((t.shape[3] - 1) * t.strides[3] + 1) * es;
    for (int64_t x = 0; x < bytes; x += 64) prefetch_l2(row + x);
  }
}

// Keys and values of chunk rows [0, n) of head j of the views into phk (and phkt when causal)
// and vv.
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

// The chunk and KV head that ForwardItem takes after (t0, j), for prefetching; t0 = -1 if none.
struct Next {
  int64_t t0, j, n;
};

// KV heads [hk0, hk0 + nh) of batch b, with their query heads, read and written in place; while
// a (chunk, KV head) unit computes, the rows of the next unit are prefetched (see PrefetchRow).
void ForwardItem(const LinearProblem& pr, const FeatureCtx& c, const TensorView& q, const TensorView& k,
                 const TensorView& v, const TensorView& out, int64_t b, int64_t hk0, int64_t nh, FwdScratch& s) {
  const int64_t G = pr.group(), SD = c.Fp * c.Dp;
  std::fill(s.s, s.s + nh * SD, 0.0f);
  std::fill(s.z, s.z + nh * c.Fp, 0.0f);
  auto next_unit = [&](int64_t t0, int64_t j, int64_t seq) {
    if (j + 1 < nh) return Next{t0, j + 1, std::min(kC, seq - t0)};
    if (t0 + kC < seq) return Next{t0 + kC, 0, std::min(kC, seq - t0 - kC)};
    return Next{-1, 0, 0};
  };
  if (!pr.causal) {
    for (int64_t t0 = 0; t0 < pr.seq_k; t0 += kC) {
      const int64_t n = std::min(kC, pr.seq_k - t0);
      const TensorView ks = HeadRows(k, b, t0, n, hk0, nh), vs = HeadRows(v, b, t0, n, hk0, nh);
      for (int64_t j = 0; j < nh; ++j) {
        const Next nx = next_unit(t0, j, pr.seq_k);
        if (nx.t0 >= 0) {
          const TensorView kn = HeadRows(k, b, nx.t0, nx.n, hk0, nh), vn = HeadRows(v, b, nx.t0, nx.n, hk0, nh);
          for (int64_t r = 0; r < nx.n; ++r) {
            PrefetchRow(kn, r, nx.j, 1);
            PrefetchRow(vn, r, nx.j, 1);
          }
        }
        LoadKeyChunk(c, ks, vs, j, n, false, s);
        AddToState(c, n, s.s + j * SD, s.z + j * c.Fp, s);
      }
    }
  }
  for (int64_t t0 = 0; t0 < pr.seq_q; t0 += kC) {
    const int64_t n = std::min(kC, pr.seq_q - t0);
    const TensorView qs = HeadRows(q, b, t0, n, hk0 * G, nh * G);
    const TensorView os = HeadRows(out, b, t0, n, hk0 * G, nh * G);
    TensorView ks, vs;
    if (pr.causal) {
      ks = HeadRows(k, b, t0, n, hk0, nh);
      vs = HeadRows(v, b, t0, n, hk0, nh);
    }
    for (int64_t j = 0; j < nh; ++j) {
      const float* S = s.s + j * SD;
      float* z = s.z + j * c.Fp;
      const Next nx = next_unit(t0, j, pr.seq_q);
      TensorView qn, kn, vn;
      if (nx.t0 >= 0) {
        qn = HeadRows(q, b, nx.t0, nx.n, hk0 * G, nh * G);
        if (pr.causal) kn = HeadRows(k, b, nx.t0, nx.n, hk0, nh), vn = HeadRows(v, b, nx.t0, nx.n, hk0, nh);
      }
      // Rows [r0, r1) of the next unit, asked for while the within-chunk products of the first
      // query head run (the kernel's reads of them are then L2 hits).
      auto prefetch_next = [&](int64_t r0, int64_t r1) {
        if (nx.t0 < 0) return;
        for (int64_t i = r0; i < std::min(r1, nx.n); ++i) {
          PrefetchRow(qn, i, nx.j * G, G);
          if (pr.causal) {
            PrefetchRow(kn, i, nx.j, 1);
            PrefetchRow(vn, i, nx.j, 1);
          }
        }
      };
      if (pr.causal) LoadKeyChunk(c, ks, vs, j, n, true, s);
      for (int64_t g = 0; g < G; ++g) {
        LoadRows(qs, 0, 0, j * G + g, n, kC, c.D, c.Dp, s.x);
        FeaturesFwd(c, s.x, n, kC, s.phq);
        if (pr.causal) {
          // a[i][j] = φq_i · φk_j for j <= i, den_i = Σ_j a[i][j]; per block of kTileRows rows only
          // the columns up to the diagonal are formed, and the product with V stops there too.
          for (int64_t r = 0; r < n; r += kTileRows) {
            const int64_t rows = std::min(kTileRows, n - r), cols = std::min(kC, (r + rows + 15) / 16 * 16);
            if (g == 0) prefetch_next(r, r + rows);
            TileProduct<Accum::overwrite>(rows, cols, {s.phq + r * c.Fp, c.Fp, 1}, s.phkt, kC, c.F, s.a + r * kC, kC);
          }
          for (int64_t i = 0; i < n; ++i) {
            float* ai = s.a + i * kC;
            std::fill(ai + i + 1, ai + kC, 0.0f);
            s.den[i] = RowSum(ai, kC);
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
        if (!pr.causal && g == 0) prefetch_next(0, n);
        for (int64_t i = 0; i < n; ++i) {
          const float inv = 1.0f / (s.den[i] + Dot(s.phq + i * c.Fp, z, c.Fp) + pr.eps);
          float* row = s.num + i * c.Dp;
          for (int64_t d = 0; d < c.D; ++d) row[d] *= inv;
        }
        StoreRows(s.num, c.Dp, os, 0, 0, j * G + g, n, c.D);
      }
      if (pr.causal) AddToState(c, n, s.s + j * SD, z, s);
    }
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
  for (int t = 0; t < tp.size(); ++t) scratch.emplace_back(c.Dp, c.Fp, nh);
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
