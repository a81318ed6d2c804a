// 02: the WKV-4 forward step on this CPU (single thread, time on the CPU, data in L2 like the
// library's staged chunks: [64 steps][256 channels]).
//
// One step per channel (stable form, state (a, b, p), see src/cpu/rwkv_kernels.cc):
//   d1 = p − (u + k);  e = e^{−|d1|};  (e1, e2) = d1 < 0 ? (e, 1) : (1, e)
//   y  = (e1·a + e2·v) / (e1·b + e2)
//   d2 = (p − w) − k;  e = e^{−|d2|};  (f1, f2) = d2 < 0 ? (e, 1) : (1, e)
//   a = f1·a + f2·v;  b = f1·b + f2;  p = max(p − w, k)
// Variants:
//   v0  the library's loop before this lab: FastExp (e^x = 2^{x·log2 e}, degree-6 Taylor,
//       clamp both sides, round, convert with Highway's overflow fix-up), −|d| as Neg(Abs(d)),
//       1/den by the estimate and one Newton step, one channel vector at a time
//   v1  the state's exponent p and k, u, w kept in base 2 (k·log2 e once per element, no multiply
//       in either exp); −|d| in one OR of the sign bit; 2^x by degree-5 minimax with the shifter
//       (no round, no convert) and the exponent added to p's bits; one vector at a time
//   v2  v1 on NV channel vectors per step, interleaved in program order
//   v4  the library's step at the start of the seventh session (natural units, e5 with −|d|·log2 e,
//       2 vectors interleaved, divps) against the same with one exponential per step (the bonus
//       as the factor g = e^{u−w}, see PassV4); also 1 and 4 vectors, and rcp + Newton for 1/den
// Reports cycles per 8-lane vector-step; clock calibrated from dependent adds in the same run.
//
// Seventh session (2026-11-22, idle VM, 3.19 GHz): v4 two exps 21.3-22.2 cycles, one exp
// 13.98 (2 vectors), 15.60 (1 vector), 13.87 (4 vectors), 15.59 (2 vectors, rcp + Newton
// instead of divps). Promoted: one exp, 2 vectors, divps.
//   lab_linear_wkv4 [reps]
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"

namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using V = hn::Vec<DF>;
using DI = hn::RebindToSigned<DF>;

namespace {

double cpu_now() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

double ns_per_cycle() {
  double best = 1e9;
  for (int r = 0; r < 5; ++r) {
    uint64_t x = 0;
    const double t0 = cpu_now();
    for (uint64_t i = 0; i < (uint64_t{1} << 26); ++i) {
      asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    }
    best = std::min(best, (cpu_now() - t0) / double(uint64_t{1} << 28) * 1e9);
  }
  return best;
}

constexpr float kLog2e = 1.44269504088896341f;

// ---- v0: the library's pieces before this lab ----
HWY_INLINE V FastExp2Old(DF d, V x) {
  const DI di;
  x = hn::Min(hn::Max(x, hn::Set(d, -126.0f)), hn::Set(d, 127.0f));
  const V n = hn::Round(x);
  const V f = hn::Sub(x, n);
  V p = hn::Set(d, 1.5403530393381609e-4f);
  p = hn::MulAdd(p, f, hn::Set(d, 1.3333558146428443e-3f));
  p = hn::MulAdd(p, f, hn::Set(d, 9.6181291076284772e-3f));
  p = hn::MulAdd(p, f, hn::Set(d, 5.5504108664821580e-2f));
  p = hn::MulAdd(p, f, hn::Set(d, 2.4022650695910071e-1f));
  p = hn::MulAdd(p, f, hn::Set(d, 6.9314718055994531e-1f));
  p = hn::MulAdd(p, f, hn::Set(d, 1.0f));
  const V scale = hn::BitCast(d, hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, n), hn::Set(di, 127))));
  return hn::Mul(p, scale);
}
HWY_INLINE void MergeOld(DF df, V x, V y, V& m, V& ex, V& ey) {
  const V d = hn::Sub(x, y);
  m = hn::Max(x, y);
  const V e = FastExp2Old(df, hn::Mul(hn::Neg(hn::Abs(d)), hn::Set(df, kLog2e)));
  const V one = hn::Set(df, 1.0f);
  ex = hn::IfNegativeThenElse(d, e, one);
  ey = hn::IfNegativeThenElse(d, one, e);
}
HWY_INLINE V Reciprocal(DF df, V x) {
  const V r = hn::ApproximateReciprocal(x);
  return hn::Mul(r, hn::NegMulAdd(x, r, hn::Set(df, 2.0f)));
}

// ---- v1/v2 ----
constexpr float kShift = 12582912.0f;  // 1.5·2^23
// 2^x for x <= 0 (x = −|d|): degree-5 minimax, clamp at −126 below.
HWY_INLINE V Exp2NonPos(DF df, V x) {
  const DI di;
  x = hn::Max(x, hn::Set(df, -126.0f));
  const V nf = hn::Add(x, hn::Set(df, kShift));
  const V f = hn::Sub(x, hn::Sub(nf, hn::Set(df, kShift)));
  V p = hn::Set(df, 1.326472382e-03f);
  p = hn::MulAdd(p, f, hn::Set(df, 9.671512991e-03f));
  p = hn::MulAdd(p, f, hn::Set(df, 5.550733581e-02f));
  p = hn::MulAdd(p, f, hn::Set(df, 2.402224243e-01f));
  p = hn::MulAdd(p, f, hn::Set(df, 6.931470037e-01f));
  p = hn::MulAdd(p, f, hn::Set(df, 1.0f));
  return hn::BitCast(df, hn::Add(hn::BitCast(di, p), hn::ShiftLeft<23>(hn::BitCast(di, nf))));
}
HWY_INLINE V NegAbs(DF df, V d) { return hn::Or(d, hn::Set(df, -0.0f)); }

constexpr int64_t kT = 64, kWidth = 256;

// aliased: k, v, y carved from one allocation 64 KiB apart, as the library's staging buffers
// were: the loads of step t + 1 then share their address bits 0..11 with the store of step t.
struct Data {
  hwy::AlignedFreeUniquePtr<float[]> mem, w, u, g, st;
  float *k, *v, *y;
  explicit Data(bool aliased = false) {
    const int64_t pad = aliased ? 0 : 48;  // floats between the buffers when not aliased
    mem = hwy::AllocateAligned<float>(3 * (kT * kWidth + pad));
    k = mem.get();
    v = k + kT * kWidth + pad;
    y = v + kT * kWidth + pad;
    w = hwy::AllocateAligned<float>(kWidth);
    u = hwy::AllocateAligned<float>(kWidth);
    g = hwy::AllocateAligned<float>(kWidth);
    st = hwy::AllocateAligned<float>(3 * kWidth);
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> g(-2, 2);
    for (int64_t i = 0; i < kT * kWidth; ++i) k[i] = g(rng), v[i] = g(rng);
    for (int64_t i = 0; i < kWidth; ++i) {
      w[i] = 0.01f + std::abs(g(rng));
      u[i] = g(rng);
      this->g[i] = float(std::exp(double(u[i]) - double(w[i])));  // v4's e^{u−w}
      st[i] = st[kWidth + i] = 0;
      st[2 * kWidth + i] = -1e38f;
    }
  }
};

HWY_NOINLINE void PassV0(Data& d) {
  const DF df;
  constexpr int64_t L = hn::MaxLanes(df);
  float* HWY_RESTRICT sa = d.st.get();
  float* HWY_RESTRICT sb = sa + kWidth;
  float* HWY_RESTRICT sp = sb + kWidth;
  const float* HWY_RESTRICT K = d.k;
  const float* HWY_RESTRICT Vv = d.v;
  float* HWY_RESTRICT Y = d.y;
  for (int64_t o = 0; o < kWidth; o += L) {
    const V wv = hn::Load(df, d.w.get() + o), uv = hn::Load(df, d.u.get() + o);
    V a = hn::Load(df, sa + o), bb = hn::Load(df, sb + o), p = hn::Load(df, sp + o);
    for (int64_t t = 0; t < kT; ++t) {
      const V kt = hn::Load(df, K + t * kWidth + o), vt = hn::Load(df, Vv + t * kWidth + o);
      V q, e1, e2;
      MergeOld(df, p, hn::Add(uv, kt), q, e1, e2);
      hn::Store(hn::Mul(hn::MulAdd(e1, a, hn::Mul(e2, vt)), Reciprocal(df, hn::MulAdd(e1, bb, e2))), df,
                Y + t * kWidth + o);
      V p2, f1, f2;
      MergeOld(df, hn::Sub(p, wv), kt, p2, f1, f2);
      a = hn::MulAdd(f1, a, hn::Mul(f2, vt));
      bb = hn::MulAdd(f1, bb, f2);
      p = p2;
    }
    hn::Store(a, df, sa + o);
    hn::Store(bb, df, sb + o);
    hn::Store(p, df, sp + o);
  }
}

// Base-2 state: p, and w, u in base 2 (w2 = w·log2 e, u2 = u·log2 e), k2 = k·log2 e per element.
template <int NV, bool kDiv = false>
HWY_NOINLINE void PassV2(Data& d) {
  const DF df;
  constexpr int64_t L = hn::MaxLanes(df);
  float* HWY_RESTRICT sa = d.st.get();
  float* HWY_RESTRICT sb = sa + kWidth;
  float* HWY_RESTRICT sp = sb + kWidth;
  const float* HWY_RESTRICT K = d.k;
  const float* HWY_RESTRICT Vv = d.v;
  float* HWY_RESTRICT Y = d.y;
  const V log2e = hn::Set(df, kLog2e), one = hn::Set(df, 1.0f);
  for (int64_t o = 0; o < kWidth; o += NV * L) {
    V w2[NV], u2[NV], a[NV], b[NV], p[NV];
    for (int j = 0; j < NV; ++j) {
      w2[j] = hn::Mul(hn::Load(df, d.w.get() + o + j * L), log2e);
      u2[j] = hn::Mul(hn::Load(df, d.u.get() + o + j * L), log2e);
      a[j] = hn::Load(df, sa + o + j * L);
      b[j] = hn::Load(df, sb + o + j * L);
      p[j] = hn::Load(df, sp + o + j * L);
    }
    for (int64_t t = 0; t < kT; ++t) {
      V k2[NV], vt[NV], d1[NV], d2[NV], e[NV], g[NV];
      for (int j = 0; j < NV; ++j) {
        k2[j] = hn::Mul(hn::Load(df, K + t * kWidth + o + j * L), log2e);
        vt[j] = hn::Load(df, Vv + t * kWidth + o + j * L);
        d1[j] = hn::Sub(p[j], hn::Add(u2[j], k2[j]));
        e[j] = Exp2NonPos(df, NegAbs(df, d1[j]));
        const V pw = hn::Sub(p[j], w2[j]);
        d2[j] = hn::Sub(pw, k2[j]);
        p[j] = hn::Max(pw, k2[j]);
        g[j] = Exp2NonPos(df, NegAbs(df, d2[j]));
      }
      for (int j = 0; j < NV; ++j) {
        const V e1 = hn::IfNegativeThenElse(d1[j], e[j], one), e2 = hn::IfNegativeThenElse(d1[j], one, e[j]);
        const V num = hn::MulAdd(e1, a[j], hn::Mul(e2, vt[j]));
        const V den = hn::MulAdd(e1, b[j], e2);
        if constexpr (kDiv) {
          hn::Store(hn::Div(num, den), df, Y + t * kWidth + o + j * L);
        } else {
          hn::Store(hn::Mul(num, Reciprocal(df, den)), df, Y + t * kWidth + o + j * L);
        }
        const V f1 = hn::IfNegativeThenElse(d2[j], g[j], one), f2 = hn::IfNegativeThenElse(d2[j], one, g[j]);
        a[j] = hn::MulAdd(f1, a[j], hn::Mul(f2, vt[j]));
        b[j] = hn::MulAdd(f1, b[j], f2);
      }
    }
    for (int j = 0; j < NV; ++j) {
      hn::Store(a[j], df, sa + o + j * L);
      hn::Store(b[j], df, sb + o + j * L);
      hn::Store(p[j], df, sp + o + j * L);
    }
  }
}

// v3: row by row over the 256 channels (the state and constants rows of st in L1, loaded and
// stored at every step), as src/cpu/rwkv_kernels.cc walks them now.
HWY_NOINLINE void PassV3(Data& d) {
  const DF df;
  constexpr int64_t L = hn::MaxLanes(df);
  static float st[5 * kWidth] __attribute__((aligned(64)));
  static bool init = false;
  if (!init) {
    for (int64_t j = 0; j < kWidth; ++j) {
      st[j] = st[kWidth + j] = 0;
      st[2 * kWidth + j] = -1e38f;
      st[3 * kWidth + j] = d.w[j];
      st[4 * kWidth + j] = d.u[j];
    }
    init = true;
  }
  const V one = hn::Set(df, 1.0f), neg_log2e = hn::Set(df, -kLog2e);
  for (int64_t t = 0; t < kT; ++t) {
    const float* k = d.k + t * kWidth;
    const float* v = d.v + t * kWidth;
    float* y = d.y + t * kWidth;
    for (int64_t o = 0; o < kWidth; o += L) {
      float* sa = st + o;
      float* sb = sa + kWidth;
      float* sp = sb + kWidth;
      const V kt = hn::LoadU(df, k + o), vt = hn::LoadU(df, v + o);
      const V a = hn::Load(df, sa), b = hn::Load(df, sb), p = hn::Load(df, sp);
      const V w = hn::Load(df, sp + kWidth), u = hn::Load(df, sp + 2 * kWidth);
      const V d1 = hn::Sub(p, hn::Add(u, kt));
      const V e = Exp2NonPos(df, hn::Mul(hn::Abs(d1), neg_log2e));
      const V e1 = hn::IfNegativeThenElse(d1, e, one), e2 = hn::IfNegativeThenElse(d1, one, e);
      hn::StoreU(hn::Div(hn::MulAdd(e1, a, hn::Mul(e2, vt)), hn::MulAdd(e1, b, e2)), df, y + o);
      const V pw = hn::Sub(p, w);
      const V d2 = hn::Sub(pw, kt);
      const V f = Exp2NonPos(df, hn::Mul(hn::Abs(d2), neg_log2e));
      const V f1 = hn::IfNegativeThenElse(d2, f, one), f2 = hn::IfNegativeThenElse(d2, one, f);
      hn::Store(hn::MulAdd(f1, a, hn::Mul(f2, vt)), df, sa);
      hn::Store(hn::MulAdd(f1, b, f2), df, sb);
      hn::Store(hn::Max(pw, kt), df, sp);
    }
  }
}

// v4 (kOneExp = false): the library's step as src/cpu/rwkv_kernels.cc had it at the start of the
// seventh session: natural units, e5 with −|d|·log2 e, 2 vectors interleaved, divps.
// v4 (kOneExp = true): one exponential per step. With p' = max(p − w, k), f1 = e^{(p−w)−p'} and
// f2 = e^{k−p'} (the state update's factors), the output's weights e^{p} and e^{u+k}, divided by
// e^{p'+w}, are f1 and g·f2 with the per-channel constant g = e^{u−w}:
//   y = (f1·a + g·f2·v) / (f1·b + g·f2),  a' = f1·a + f2·v,  b' = f1·b + f2.
template <bool kOneExp, int NV = 2, bool kRcp = false>
HWY_NOINLINE void PassV4(Data& d) {
  const DF df;
  constexpr int64_t L = hn::MaxLanes(df);
  float* HWY_RESTRICT sa = d.st.get();
  float* HWY_RESTRICT sb = sa + kWidth;
  float* HWY_RESTRICT sp = sb + kWidth;
  const float* HWY_RESTRICT K = d.k;
  const float* HWY_RESTRICT Vv = d.v;
  float* HWY_RESTRICT Y = d.y;
  const V one = hn::Set(df, 1.0f), neg_log2e = hn::Set(df, -kLog2e);
  for (int64_t o = 0; o < kWidth; o += NV * L) {
    V w[NV], u[NV], g[NV], a[NV], b[NV], p[NV];
    for (int j = 0; j < NV; ++j) {
      w[j] = hn::Load(df, d.w.get() + o + j * L);
      u[j] = hn::Load(df, d.u.get() + o + j * L);
      g[j] = hn::Load(df, d.g.get() + o + j * L);
      a[j] = hn::Load(df, sa + o + j * L);
      b[j] = hn::Load(df, sb + o + j * L);
      p[j] = hn::Load(df, sp + o + j * L);
    }
    for (int64_t t = 0; t < kT; ++t) {
      V kt[NV], vt[NV], d1[NV], d2[NV], e[NV], f[NV];
      for (int j = 0; j < NV; ++j) {
        kt[j] = hn::Load(df, K + t * kWidth + o + j * L);
        vt[j] = hn::Load(df, Vv + t * kWidth + o + j * L);
        if constexpr (!kOneExp) {
          d1[j] = hn::Sub(p[j], hn::Add(u[j], kt[j]));
          e[j] = Exp2NonPos(df, hn::Mul(hn::Abs(d1[j]), neg_log2e));
        }
        const V pw = hn::Sub(p[j], w[j]);
        d2[j] = hn::Sub(pw, kt[j]);
        p[j] = hn::Max(pw, kt[j]);
        f[j] = Exp2NonPos(df, hn::Mul(hn::Abs(d2[j]), neg_log2e));
      }
      for (int j = 0; j < NV; ++j) {
        const V f1 = hn::IfNegativeThenElse(d2[j], f[j], one), f2 = hn::IfNegativeThenElse(d2[j], one, f[j]);
        if constexpr (kOneExp) {
          const V f1a = hn::Mul(f1, a[j]), f1b = hn::Mul(f1, b[j]), gf2 = hn::Mul(g[j], f2);
          const V num = hn::MulAdd(gf2, vt[j], f1a), den = hn::Add(f1b, gf2);
          if constexpr (kRcp) {
            hn::Store(hn::Mul(num, Reciprocal(df, den)), df, Y + t * kWidth + o + j * L);
          } else {
            hn::Store(hn::Div(num, den), df, Y + t * kWidth + o + j * L);
          }
          a[j] = hn::MulAdd(f2, vt[j], f1a);
          b[j] = hn::Add(f1b, f2);
        } else {
          const V e1 = hn::IfNegativeThenElse(d1[j], e[j], one), e2 = hn::IfNegativeThenElse(d1[j], one, e[j]);
          hn::Store(hn::Div(hn::MulAdd(e1, a[j], hn::Mul(e2, vt[j])), hn::MulAdd(e1, b[j], e2)), df,
                    Y + t * kWidth + o + j * L);
          a[j] = hn::MulAdd(f1, a[j], hn::Mul(f2, vt[j]));
          b[j] = hn::MulAdd(f1, b[j], f2);
        }
      }
    }
    for (int j = 0; j < NV; ++j) {
      hn::Store(a[j], df, sa + o + j * L);
      hn::Store(b[j], df, sb + o + j * L);
      hn::Store(p[j], df, sp + o + j * L);
    }
  }
}

template <class F>
double Time(F pass, int reps, bool aliased = false) {
  Data d(aliased);
  pass(d);
  double best = 1e9;
  for (int r = 0; r < reps; ++r) {
    const double t0 = cpu_now();
    for (int i = 0; i < 64; ++i) pass(d);
    best = std::min(best, cpu_now() - t0);
  }
  return best / (64.0 * kT * kWidth / hn::MaxLanes(DF())) * 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 7;
  const double nspc = ns_per_cycle();
  std::printf("target %s, %zu lanes; clock %.2f GHz (from dependent adds)\n", hwy::TargetName(HWY_TARGET),
              hn::MaxLanes(DF()), 1.0 / nspc);
  struct Row {
    const char* name;
    double ns;
  } rows[] = {
      {"v0 library loop, buffers 64 KiB apart", Time(PassV0, reps, true)},
      {"v0 library loop", Time(PassV0, reps)},
      {"v2 base 2, e5, 2 vectors, 64 KiB apart", Time(PassV2<2>, reps, true)},
      {"v2 base 2, e5, 2 vectors, divps", Time(PassV2<2, true>, reps)},
      {"v2 base 2, e5, 4 vectors, divps", Time(PassV2<4, true>, reps)},
      {"v3 row by row, state in L1 (library)", Time(PassV3, reps)},
      {"v2 base 2, e5, 1 vector", Time(PassV2<1>, reps)},
      {"v2 base 2, e5, 2 vectors", Time(PassV2<2>, reps)},
      {"v2 base 2, e5, 4 vectors", Time(PassV2<4>, reps)},
      {"v4 two exps (library, session 7)", Time(PassV4<false>, reps)},
      {"v4 one exp, bonus as g = e^{u-w}", Time(PassV4<true>, reps)},
      {"v4 two exps again", Time(PassV4<false>, reps)},
      {"v4 one exp again", Time(PassV4<true>, reps)},
      {"v4 one exp, 1 vector", Time(PassV4<true, 1>, reps)},
      {"v4 one exp, 4 vectors", Time(PassV4<true, 4>, reps)},
      {"v4 one exp, rcp + Newton", Time(PassV4<true, 2, true>, reps)},
  };
  for (const Row& r : rows) std::printf("%-32s %6.3f ns/vector-step = %5.2f cycles\n", r.name, r.ns, r.ns / nspc);
  return 0;
}
