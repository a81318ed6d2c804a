// Linear attention backward on the CPU (see include/attnkit/linear.h and linear_fwd.cc).
//
// With a_ij = φq_i·φk_j (j <= i when causal), s_i = Σ_j a_ij + eps, out_i = Σ_j a_ij v_j / s_i:
//   dn_i  = dout_i / s_i,   ds_i = −(dout_i · out_i) / s_i
//   da_ij = dn_i · v_j + ds_i
//   dφq_i = Σ_j da_ij φk_j = S_i dn_i + z_i ds_i      (+ the exact within-chunk part)
//   dφk_j = Σ_i da_ij φq_i = R_j v_j + r_j            R_j = Σ_{i>=j} φq_i dn_iᵀ, r_j = Σ φq_i ds_i
//   dv_j  = Σ_i a_ij dn_i  = R_jᵀ φk_j
// Two sweeps per (batch, KV head): forward over chunks for dq (carrying S, Sᵀ, z and keeping
// s_i and ds_i per query row), then backward over chunks for dk and dv (carrying R, Rᵀ, r).
// The non-causal form is the same with whole-sequence states.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/linear_bwd.cc"
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
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace {

constexpr int64_t kC = kLinearChunk;

struct BwdScratch {
  hwy::AlignedFreeUniquePtr<float[]> mem;
  float *xq, *xk, *vv, *num, *dn, *dx, *dvv;  // [C][Dp]
  float *phq, *phk, *dphi, *dphk;             // [C][Fp]
  float *phkt;                                // [Fp][C]
  float *vvt;                                 // [Dp][C]
  float *a, *da;                              // [C][C]
  float *s, *r;                               // [Fp][Dp]  S and R
  float *st, *rt;                             // [Dp][Fp]  Sᵀ and Rᵀ
  float *z, *rv;                              // [Fp]
  std::vector<float> den, ds;                 // [G][Nq]
  int64_t dp, fp;

  BwdScratch(int64_t Dp, int64_t Fp)
      : mem(hwy::AllocateAligned<float>(8 * kC * Dp + 5 * kC * Fp + 2 * kC * kC + 4 * Fp * Dp + 2 * Fp)),
        dp(Dp), fp(Fp) {
    float* p = mem.get();
    for (float** b : {&xq, &xk, &vv, &num, &dn, &dx, &dvv}) *b = p, p += kC * Dp;
    for (float** b : {&phq, &phk, &dphi, &dphk}) *b = p, p += kC * Fp;
    phkt = p, p += Fp * kC;
    vvt = p, p += Dp * kC;
    for (float** b : {&a, &da}) *b = p, p += kC * kC;
    for (float** b : {&s, &r, &st, &rt}) *b = p, p += Fp * Dp;
    z = p, p += Fp;
    rv = p;
  }
};

// The query chunk of head h: φq in phq (xq keeps the rows as FeaturesFwd left them), dout / s
// in dn and ds_i, from out = num / s. Needs num and the row sums s (without eps) computed.
void QueryGrads(const LinearProblem& pr, const FeatureCtx& c, const TensorView& dout, int64_t b, int64_t t0,
                int64_t h, int64_t n, const float* sums, BwdScratch& s, float* den_out, float* ds_out) {
  LoadRows(dout, b, t0, h, n, kC, c.D, c.Dp, s.dn);
  for (int64_t i = 0; i < n; ++i) {
    const float inv = 1.0f / (sums[i] + pr.eps);
    float* dni = s.dn + i * c.Dp;
    const float* ni = s.num + i * c.Dp;
    float dot = 0.0f;
    for (int64_t d = 0; d < c.D; ++d) dot += dni[d] * ni[d];
    for (int64_t d = 0; d < c.D; ++d) dni[d] *= inv;
    den_out[i] = sums[i] + pr.eps;
    ds_out[i] = -dot * inv * inv;  // −(dout · num/s) / s
  }
}

// Causal: a = mask(φq φkᵀ); with sums, the row sums of a.
void MaskedScores(const FeatureCtx& c, int64_t n, BwdScratch& s, float* sums) {
  TileProduct<Accum::overwrite>(n, kC, {s.phq, c.Fp, 1}, s.phkt, kC, c.F, s.a, kC);
  for (int64_t i = 0; i < n; ++i) {
    float* ai = s.a + i * kC;
    float sum = 0.0f;
    for (int64_t j = 0; j <= i; ++j) sum += ai[j];
    std::fill(ai + i + 1, ai + kC, 0.0f);
    if (sums) sums[i] = sum;
  }
}

// Causal: da = mask(dn vᵀ + ds).
void MaskedScoreGrads(const FeatureCtx& c, int64_t n, const float* ds, BwdScratch& s) {
  TileProduct<Accum::overwrite>(n, kC, {s.dn, c.Dp, 1}, s.vvt, kC, c.D, s.da, kC);
  for (int64_t i = 0; i < n; ++i) {
    float* di = s.da + i * kC;
    for (int64_t j = 0; j <= i; ++j) di[j] += ds[i];
    std::fill(di + i + 1, di + kC, 0.0f);
  }
}

void LoadKeys(const FeatureCtx& c, const TensorView& k, const TensorView& v, int64_t b, int64_t hk, int64_t t0,
              int64_t n, BwdScratch& s) {
  LoadRows(k, b, t0, hk, n, kC, c.D, c.Dp, s.xk);
  FeaturesFwd(c, s.xk, n, kC, s.phk);
  Transpose(s.phk, kC, c.Fp, s.phkt);
  LoadRows(v, b, t0, hk, n, kC, c.D, c.Dp, s.vv);
  Transpose(s.vv, kC, c.Dp, s.vvt);
}

void LoadQueries(const FeatureCtx& c, const TensorView& q, int64_t b, int64_t t0, int64_t h, int64_t n,
                 BwdScratch& s) {
  LoadRows(q, b, t0, h, n, kC, c.D, c.Dp, s.xq);
  FeaturesFwd(c, s.xq, n, kC, s.phq);
}

// Sweep 1: dq, and s_i, ds_i per row. Non-causal also accumulates R, Rᵀ, r.
void QuerySweep(const LinearProblem& pr, const FeatureCtx& c, const TensorView& q, const TensorView& k,
                const TensorView& v, const TensorView& dout, const TensorView& dq, int64_t b, int64_t hk,
                BwdScratch& s) {
  const int64_t G = pr.group(), Fp = c.Fp, Dp = c.Dp;
  float sums[kC];
  for (float* p : {s.s, s.st}) std::fill(p, p + Fp * Dp, 0.0f);
  std::fill(s.z, s.z + Fp, 0.0f);
  auto add_state = [&](int64_t n) {
    TileProduct<Accum::add>(c.F, Dp, {s.phk, 1, Fp}, s.vv, Dp, n, s.s, Dp);
    TileProduct<Accum::add>(c.D, Fp, {s.vv, 1, Dp}, s.phk, Fp, n, s.st, Fp);
    AddColumnSums(s.phk, n, Fp, s.z);
  };
  if (!pr.causal) {
    for (int64_t t0 = 0; t0 < pr.seq_k; t0 += kC) {
      const int64_t n = std::min(kC, pr.seq_k - t0);
      LoadKeys(c, k, v, b, hk, t0, n, s);
      add_state(n);
    }
  }
  for (int64_t t0 = 0; t0 < pr.seq_q; t0 += kC) {
    const int64_t n = std::min(kC, pr.seq_q - t0);
    if (pr.causal) LoadKeys(c, k, v, b, hk, t0, n, s);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = hk * G + g;
      float* den = s.den.data() + g * pr.seq_q + t0;
      float* ds = s.ds.data() + g * pr.seq_q + t0;
      LoadQueries(c, q, b, t0, h, n, s);
      if (pr.causal) {
        MaskedScores(c, n, s, sums);
        TileProduct<Accum::overwrite>(n, Dp, {s.a, kC, 1}, s.vv, Dp, n, s.num, Dp);
        TileProduct<Accum::add>(n, Dp, {s.phq, Fp, 1}, s.s, Dp, c.F, s.num, Dp);
      } else {
        std::fill(sums, sums + n, 0.0f);
        TileProduct<Accum::overwrite>(n, Dp, {s.phq, Fp, 1}, s.s, Dp, c.F, s.num, Dp);
      }
      for (int64_t i = 0; i < n; ++i) sums[i] += Dot(s.phq + i * Fp, s.z, Fp);
      QueryGrads(pr, c, dout, b, t0, h, n, sums, s, den, ds);
      // dφq = da φk (within the chunk) + dn Sᵀ + ds z
      if (pr.causal) {
        MaskedScoreGrads(c, n, ds, s);
        TileProduct<Accum::overwrite>(n, Fp, {s.da, kC, 1}, s.phk, Fp, n, s.dphi, Fp);
        TileProduct<Accum::add>(n, Fp, {s.dn, Dp, 1}, s.st, Fp, c.D, s.dphi, Fp);
      } else {
        TileProduct<Accum::overwrite>(n, Fp, {s.dn, Dp, 1}, s.st, Fp, c.D, s.dphi, Fp);
        // R += φqᵀ dn, Rᵀ += dnᵀ φq, r += φqᵀ ds
        TileProduct<Accum::add>(c.F, Dp, {s.phq, 1, Fp}, s.dn, Dp, n, s.r, Dp);
        TileProduct<Accum::add>(c.D, Fp, {s.dn, 1, Dp}, s.phq, Fp, n, s.rt, Fp);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t f = 0; f < c.F; ++f) s.rv[f] += s.phq[i * Fp + f] * ds[i];
      }
      for (int64_t i = 0; i < n; ++i)
        for (int64_t f = 0; f < c.F; ++f) s.dphi[i * Fp + f] += ds[i] * s.z[f];
      std::fill(s.dphi + n * Fp, s.dphi + kC * Fp, 0.0f);
      FeaturesBwd(c, s.xq, s.phq, s.dphi, n, s.dx);
      StoreRows(s.dx, Dp, dq, b, t0, h, n, c.D);
    }
    if (pr.causal) add_state(n);
  }
}

// Sweep 2: dk and dv, over key chunks (last to first when causal).
void KeySweep(const LinearProblem& pr, const FeatureCtx& c, const TensorView& q, const TensorView& k,
              const TensorView& v, const TensorView& dout, const TensorView& dk, const TensorView& dv, int64_t b,
              int64_t hk, BwdScratch& s) {
  const int64_t G = pr.group(), Fp = c.Fp, Dp = c.Dp;
  const int64_t chunks = (pr.seq_k + kC - 1) / kC;
  for (int64_t ci = chunks - 1; ci >= 0; --ci) {
    const int64_t t0 = ci * kC, n = std::min(kC, pr.seq_k - t0);
    LoadKeys(c, k, v, b, hk, t0, n, s);
    // From the later chunks (all queries when non-causal): dφk = v Rᵀ + r, dv = φk R.
    TileProduct<Accum::overwrite>(n, Fp, {s.vv, Dp, 1}, s.rt, Fp, c.D, s.dphk, Fp);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t f = 0; f < c.F; ++f) s.dphk[i * Fp + f] += s.rv[f];
    TileProduct<Accum::overwrite>(n, Dp, {s.phk, Fp, 1}, s.r, Dp, c.F, s.dvv, Dp);
    if (pr.causal) {
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = hk * G + g;
        const float* den = s.den.data() + g * pr.seq_q + t0;
        const float* ds = s.ds.data() + g * pr.seq_q + t0;
        LoadQueries(c, q, b, t0, h, n, s);
        MaskedScores(c, n, s, nullptr);
        LoadRows(dout, b, t0, h, n, kC, c.D, Dp, s.dn);
        for (int64_t i = 0; i < n; ++i) {
          const float inv = 1.0f / den[i];
          for (int64_t d = 0; d < c.D; ++d) s.dn[i * Dp + d] *= inv;
        }
        MaskedScoreGrads(c, n, ds, s);
        // dφk += daᵀ φq, dv += aᵀ dn (within the chunk)
        TileProduct<Accum::add>(n, Fp, {s.da, 1, kC}, s.phq, Fp, n, s.dphk, Fp);
        TileProduct<Accum::add>(n, Dp, {s.a, 1, kC}, s.dn, Dp, n, s.dvv, Dp);
        // R += φqᵀ dn, Rᵀ += dnᵀ φq, r += φqᵀ ds
        TileProduct<Accum::add>(c.F, Dp, {s.phq, 1, Fp}, s.dn, Dp, n, s.r, Dp);
        TileProduct<Accum::add>(c.D, Fp, {s.dn, 1, Dp}, s.phq, Fp, n, s.rt, Fp);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t f = 0; f < c.F; ++f) s.rv[f] += s.phq[i * Fp + f] * ds[i];
      }
    }
    FeaturesBwd(c, s.xk, s.phk, s.dphk, n, s.dx);
    StoreRows(s.dx, Dp, dk, b, t0, hk, n, c.D);
    StoreRows(s.dvv, Dp, dv, b, t0, hk, n, c.D);
  }
}

}  // namespace

void LinearBackward(const LinearProblem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                    const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv) {
  const FeatureCtx c(pr);
  ThreadPool& tp = pool();
  std::vector<BwdScratch> scratch;
  scratch.reserve(tp.size());
  for (int t = 0; t < tp.size(); ++t) {
    scratch.emplace_back(c.Dp, c.Fp);
    scratch.back().den.resize(pr.group() * pr.seq_q);
    scratch.back().ds.resize(pr.group() * pr.seq_q);
  }
  tp.parallel_for(pr.batch * pr.heads_kv, [&](int64_t item, int thread) {
    BwdScratch& s = scratch[thread];
    const int64_t b = item / pr.heads_kv, hk = item % pr.heads_kv;
    for (float* p : {s.r, s.rt}) std::fill(p, p + s.fp * s.dp, 0.0f);
    std::fill(s.rv, s.rv + s.fp, 0.0f);
    QuerySweep(pr, c, q, k, v, dout, dq, b, hk, s);
    KeySweep(pr, c, q, k, v, dout, dk, dv, b, hk, s);
  });
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {
HWY_EXPORT(LinearBackward);
void linear_bwd(const LinearProblem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv) {
  HWY_DYNAMIC_DISPATCH(LinearBackward)(pr, q, k, v, dout, dq, dk, dv);
}
}  // namespace attnkit::cpu
#endif
