// RWKV-6 time mixing (WKV-6) on the CPU, forward and backward (see include/attnkit/recurrent.h),
// Highway SIMD with runtime dispatch. Threads take (batch, head); the K × K state S (row i = key
// channel) lives in L1 and each step is a rank-1 update plus a vector–matrix product, vectorized
// along the value channels. Backward keeps S at every kT6-th step, recomputes the chunk, and
// walks back with the adjoint dS_{t−1} = diag(d_t) dS_t + r_t dy_tᵀ.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/rwkv6_kernels.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/problem.h"
#include "core/thread_pool.h"
#include "cpu/rwkv_kernels.h"
#include "cpu/scan_exp-inl.h"
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace {

using DF = hn::ScalableTag<float>;
using V = hn::Vec<DF>;

constexpr int64_t kT6 = 16;  // WKV-6 steps per backward chunk

struct Wkv6Scratch {
  int64_t kp;  // K padded to a multiple of 16
  hwy::AlignedFreeUniquePtr<float[]> mem;
  float *r, *k, *v, *d, *dd, *y, *gy;  // [kp] rows of one step; dd = −∂d/∂w = exp(w − e^w)
  float *s;                       // [K][kp]
  float *ds;                      // [K][kp] adjoint
  float *gk, *gv, *gr, *gd, *du;  // [kp]
  float *hist;                    // [kT6 + 1][K][kp]
  std::vector<float> ckpt;

  Wkv6Scratch(const Wkv6Dims& s_, int64_t kp_)
      : kp(kp_), mem(hwy::AllocateAligned<float>(12 * kp_ + (2 + kT6 + 1) * s_.head_size * kp_)) {
    float* p = mem.get();
    for (float** b : {&r, &k, &v, &d, &dd, &y, &gy, &gk, &gv, &gr, &gd, &du}) *b = p, p += kp;
    s = p, p += s_.head_size * kp;
    ds = p, p += s_.head_size * kp;
    hist = p;
  }
};

// Loads row (b, t, h) of x into dst[0..kp), zero padded.
HWY_INLINE void Row(const TensorView& x, int64_t b, int64_t t, int64_t h, int64_t K, int64_t kp, float* dst) {
  const float* p = fptr(x) + b * x.strides[0] + t * x.strides[1] + h * x.strides[2];
  for (int64_t i = 0; i < K; ++i) dst[i] = p[i * x.strides[3]];
  std::fill(dst + K, dst + kp, 0.0f);
}
HWY_INLINE void StoreRow(const float* src, const TensorView& x, int64_t b, int64_t t, int64_t h, int64_t K) {
  float* p = fptr_mut(x) + b * x.strides[0] + t * x.strides[1] + h * x.strides[2];
  for (int64_t i = 0; i < K; ++i) p[i * x.strides[3]] = src[i];
}

// Decays d = exp(−exp(w)) of row (b, t, h) into sc.d; with slope, also −∂d/∂w = exp(w − e^w)
// into sc.dd, formed in the exponent so that a decay that underflows to 0 gives 0, not 0·∞.
HWY_INLINE void Decay(const TensorView& w, int64_t b, int64_t t, int64_t h, int64_t K, Wkv6Scratch& sc,
                      bool slope = false) {
  const DF df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  Row(w, b, t, h, K, sc.kp, sc.d);
  const V lo = hn::Set(df, -150.0f);
  for (int64_t i = 0; i < sc.kp; i += L) {
    const V wv = hn::Load(df, sc.d + i), ew = FastExp(df, hn::Min(wv, hn::Set(df, 80.0f)));
    hn::Store(FastExp(df, hn::Max(hn::Neg(ew), lo)), df, sc.d + i);
    if (slope) hn::Store(FastExp(df, hn::Max(hn::Sub(wv, ew), lo)), df, sc.dd + i);
  }
}

// One step on the state s: y = rᵀ(S + diag(u) k vᵀ) (when y), then S = diag(d) S + k vᵀ.
HWY_INLINE void Wkv6Step(int64_t K, int64_t kp, const float* u, Wkv6Scratch& sc, float* HWY_RESTRICT S, float* y) {
  const DF df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  float ruk = 0.0f;
  for (int64_t i = 0; i < K; ++i) ruk += sc.r[i] * u[i] * sc.k[i];
  // Columns in groups of 4 vectors: y and v of the group stay in registers.
  for (int64_t j0 = 0; j0 < kp; j0 += 4 * L) {
    const int64_t nvec = std::min<int64_t>(4, (kp - j0) / L);
    V acc[4], vv[4];
    for (int64_t x = 0; x < nvec; ++x) {
      vv[x] = hn::Load(df, sc.v + j0 + x * L);
      acc[x] = hn::Mul(hn::Set(df, ruk), vv[x]);
    }
    for (int64_t i = 0; i < K; ++i) {
      const V ri = hn::Set(df, sc.r[i]), di = hn::Set(df, sc.d[i]), ki = hn::Set(df, sc.k[i]);
      float* row = S + i * kp + j0;
      for (int64_t x = 0; x < nvec; ++x) {
        const V sv = hn::Load(df, row + x * L);
        acc[x] = hn::MulAdd(ri, sv, acc[x]);
        hn::Store(hn::MulAdd(di, sv, hn::Mul(ki, vv[x])), df, row + x * L);
      }
    }
    if (y)
      for (int64_t x = 0; x < nvec; ++x) hn::Store(acc[x], df, y + j0 + x * L);
  }
}

void Wkv6ForwardItem(const Wkv6Dims& s, const TensorView& r, const TensorView& k, const TensorView& v,
                     const TensorView& w, const float* u, const TensorView& y, int64_t b, int64_t h, Wkv6Scratch& sc) {
  const int64_t K = s.head_size, kp = sc.kp;
  std::fill(sc.s, sc.s + K * kp, 0.0f);
  for (int64_t t = 0; t < s.seq; ++t) {
    Row(r, b, t, h, K, kp, sc.r);
    Row(k, b, t, h, K, kp, sc.k);
    Row(v, b, t, h, K, kp, sc.v);
    Decay(w, b, t, h, K, sc);
    Wkv6Step(K, kp, u, sc, sc.s, sc.y);
    StoreRow(sc.y, y, b, t, h, K);
  }
}

// Backward for head h over all batches (du sums over them).
void Wkv6BackwardHead(const Wkv6Dims& s, const TensorView& r, const TensorView& k, const TensorView& v,
                      const TensorView& w, const float* u, const TensorView& dy, const TensorView& dr,
                      const TensorView& dk, const TensorView& dv, const TensorView& dw, float* du_out, int64_t h,
                      Wkv6Scratch& sc) {
  const DF df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  const int64_t K = s.head_size, kp = sc.kp, KS = K * kp;
  const int64_t chunks = (s.seq + kT6 - 1) / kT6;
  sc.ckpt.resize(chunks * KS);
  std::fill(sc.du, sc.du + kp, 0.0f);
  for (int64_t b = 0; b < s.batch; ++b) {
    std::fill(sc.s, sc.s + KS, 0.0f);
    for (int64_t t = 0; t < s.seq; ++t) {
      if (t % kT6 == 0) std::memcpy(&sc.ckpt[(t / kT6) * KS], sc.s, KS * sizeof(float));
      Row(r, b, t, h, K, kp, sc.r);
      Row(k, b, t, h, K, kp, sc.k);
      Row(v, b, t, h, K, kp, sc.v);
      Decay(w, b, t, h, K, sc);
      Wkv6Step(K, kp, u, sc, sc.s, nullptr);
    }
    std::fill(sc.ds, sc.ds + KS, 0.0f);
    for (int64_t ci = chunks - 1; ci >= 0; --ci) {
      const int64_t t0 = ci * kT6, nt = std::min(kT6, s.seq - t0);
      // hist[j] = S before step t0 + j
      std::memcpy(sc.hist, &sc.ckpt[ci * KS], KS * sizeof(float));
      for (int64_t j = 0; j + 1 < nt; ++j) {
        std::memcpy(sc.hist + (j + 1) * KS, sc.hist + j * KS, KS * sizeof(float));
        Row(r, b, t0 + j, h, K, kp, sc.r);
        Row(k, b, t0 + j, h, K, kp, sc.k);
        Row(v, b, t0 + j, h, K, kp, sc.v);
        Decay(w, b, t0 + j, h, K, sc);
        Wkv6Step(K, kp, u, sc, sc.hist + (j + 1) * KS, nullptr);
      }
      for (int64_t j = nt - 1; j >= 0; --j) {
        const int64_t t = t0 + j;
        const float* Sp = sc.hist + j * KS;  // S_{t−1}
        Row(r, b, t, h, K, kp, sc.r);
        Row(k, b, t, h, K, kp, sc.k);
        Row(v, b, t, h, K, kp, sc.v);
        Row(dy, b, t, h, K, kp, sc.gy);
        Decay(w, b, t, h, K, sc, true);
        float vg = 0.0f, ruk = 0.0f;
        for (int64_t i = 0; i < K; ++i) {
          vg += sc.v[i] * sc.gy[i];
          ruk += sc.r[i] * u[i] * sc.k[i];
        }
        for (int64_t i = 0; i < kp; i += L) hn::Store(hn::Mul(hn::Set(df, ruk), hn::Load(df, sc.gy + i)), df, sc.gv + i);
        for (int64_t i = 0; i < K; ++i) {
          const float* si = Sp + i * kp;
          float* dsi = sc.ds + i * kp;
          V a_sg = hn::Zero(df), a_dsv = hn::Zero(df), a_dss = hn::Zero(df);
          const V ki = hn::Set(df, sc.k[i]), di = hn::Set(df, sc.d[i]), ri = hn::Set(df, sc.r[i]);
          for (int64_t j2 = 0; j2 < kp; j2 += L) {
            const V sv = hn::Load(df, si + j2), dsv = hn::Load(df, dsi + j2), gyv = hn::Load(df, sc.gy + j2);
            a_sg = hn::MulAdd(sv, gyv, a_sg);
            a_dsv = hn::MulAdd(dsv, hn::Load(df, sc.v + j2), a_dsv);
            a_dss = hn::MulAdd(dsv, sv, a_dss);
            hn::Store(hn::MulAdd(dsv, ki, hn::Load(df, sc.gv + j2)), df, sc.gv + j2);
            hn::Store(hn::MulAdd(di, dsv, hn::Mul(ri, gyv)), df, dsi + j2);  // dS_{t−1}
          }
          const float sg = hn::GetLane(hn::SumOfLanes(df, a_sg));
          sc.gr[i] = sg + u[i] * sc.k[i] * vg;
          sc.gk[i] = sc.r[i] * u[i] * vg + hn::GetLane(hn::SumOfLanes(df, a_dsv));
          sc.du[i] += sc.r[i] * sc.k[i] * vg;
          sc.gd[i] = -hn::GetLane(hn::SumOfLanes(df, a_dss)) * sc.dd[i];
        }
        StoreRow(sc.gr, dr, b, t, h, K);
        StoreRow(sc.gk, dk, b, t, h, K);
        StoreRow(sc.gv, dv, b, t, h, K);
        StoreRow(sc.gd, dw, b, t, h, K);
      }
    }
  }
  for (int64_t i = 0; i < K; ++i) du_out[i] = sc.du[i];
}

}  // namespace

void Wkv6Forward(const Wkv6Dims& s, const TensorView& r, const TensorView& k, const TensorView& v,
                 const TensorView& w, const TensorView& u, const TensorView& y) {
  const int64_t K = s.head_size, kp = (K + 15) / 16 * 16;
  std::vector<float> ub(s.heads * K);
  for (int64_t h = 0; h < s.heads; ++h)
    for (int64_t i = 0; i < K; ++i) ub[h * K + i] = fptr(u)[h * u.strides[0] + i * u.strides[1]];
  ThreadPool& tp = pool();
  std::vector<Wkv6Scratch> scratch;
  for (int t = 0; t < tp.size(); ++t) scratch.emplace_back(Wkv6Dims{s.batch, 0, s.heads, K}, kp);
  tp.parallel_for(s.batch * s.heads, [&](int64_t item, int thread) {
    const int64_t b = item / s.heads, h = item % s.heads;
    Wkv6ForwardItem(s, r, k, v, w, ub.data() + h * K, y, b, h, scratch[thread]);
  });
}

void Wkv6Backward(const Wkv6Dims& s, const TensorView& r, const TensorView& k, const TensorView& v,
                  const TensorView& w, const TensorView& u, const TensorView& dy, const TensorView& dr,
                  const TensorView& dk, const TensorView& dv, const TensorView& dw, const TensorView& du) {
  const int64_t K = s.head_size, kp = (K + 15) / 16 * 16;
  std::vector<float> ub(s.heads * K), dub(s.heads * K);
  for (int64_t h = 0; h < s.heads; ++h)
    for (int64_t i = 0; i < K; ++i) ub[h * K + i] = fptr(u)[h * u.strides[0] + i * u.strides[1]];
  ThreadPool& tp = pool();
  std::vector<Wkv6Scratch> scratch;
  for (int t = 0; t < tp.size(); ++t) scratch.emplace_back(s, kp);
  tp.parallel_for(s.heads, [&](int64_t h, int thread) {
    Wkv6BackwardHead(s, r, k, v, w, ub.data() + h * K, dy, dr, dk, dv, dw, dub.data() + h * K, h, scratch[thread]);
  });
  for (int64_t h = 0; h < s.heads; ++h)
    for (int64_t i = 0; i < K; ++i) fptr_mut(du)[h * du.strides[0] + i * du.strides[1]] = dub[h * K + i];
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {
HWY_EXPORT(Wkv6Forward);
HWY_EXPORT(Wkv6Backward);
void wkv6_fwd(const Wkv6Dims& s, const TensorView& r, const TensorView& k, const TensorView& v, const TensorView& w,
              const TensorView& u, const TensorView& y) {
  HWY_DYNAMIC_DISPATCH(Wkv6Forward)(s, r, k, v, w, u, y);
}
void wkv6_bwd(const Wkv6Dims& s, const TensorView& r, const TensorView& k, const TensorView& v, const TensorView& w,
              const TensorView& u, const TensorView& dy, const TensorView& dr, const TensorView& dk,
              const TensorView& dv, const TensorView& dw, const TensorView& du) {
  HWY_DYNAMIC_DISPATCH(Wkv6Backward)(s, r, k, v, w, u, dy, dr, dk, dv, dw, du);
}
}  // namespace attnkit::cpu
#endif
