// 01: the exp ceiling of the selective scan on this CPU (single thread, time on the CPU).
//
// The selective scan's inner step per (time, channel, state) is
//   a = 2^{Δ·A'[n]},  h[n] = a·h[n] + (Δx)·B[n],  y += C[n]·h[n]
// with SIMD lanes over channels. This program times that step, and pieces of it, on data in
// L1 (T steps × one block of channels), with several exp2 variants:
//   e6   the library's FastExp2 before this lab: clamp to [−126, 127], round, degree-6 Taylor,
//        convert, add the bias, shift, multiply (relative error 1.2e-7)
//   e5   degree-5 minimax on [−1/2, 1/2] (relative error 9.1e-8 before f32 rounding), 1 + f·q(f)
//        so that 2^0 = 1 exactly; n by the 1.5·2^23 shifter (no round, no convert), the exponent
//        added as an integer to p's bits (no multiply); one clamp (x >= −126), x <= 0 because
//        Δ >= 0 and A <= 0
//   e4   degree-4 minimax (2.8e-6): only to see what one FMA less buys
// and reports nanoseconds and cycles per 8-lane vector of (channel, state) elements; the
// clock is calibrated in the same run from a chain of dependent integer adds (1 cycle each).
// Time is thread CPU time, so other processes on the machine inflate it only through caches.
//
//   lab_linear_exp [reps]
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

// Nanoseconds per cycle from 2^28 dependent adds.
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

HWY_INLINE V Exp2Taylor6(DF df, V x) {
  const DI di;
  x = hn::Min(hn::Max(x, hn::Set(df, -126.0f)), hn::Set(df, 127.0f));
  const V n = hn::Round(x);
  const V f = hn::Sub(x, n);
  V p = hn::Set(df, 1.5403530393381609e-4f);
  p = hn::MulAdd(p, f, hn::Set(df, 1.3333558146428443e-3f));
  p = hn::MulAdd(p, f, hn::Set(df, 9.6181291076284772e-3f));
  p = hn::MulAdd(p, f, hn::Set(df, 5.5504108664821580e-2f));
  p = hn::MulAdd(p, f, hn::Set(df, 2.4022650695910071e-1f));
  p = hn::MulAdd(p, f, hn::Set(df, 6.9314718055994531e-1f));
  p = hn::MulAdd(p, f, hn::Set(df, 1.0f));
  const V scale = hn::BitCast(df, hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, n), hn::Set(di, 127))));
  return hn::Mul(p, scale);
}

// 1.5·2^23: x + kShift rounds x to an integer n (ties to even) held in the low mantissa bits.
constexpr float kShift = 12582912.0f;

HWY_INLINE V Exp2Minimax5(DF df, V x) {
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

// e5 with Estrin's scheme (one multiply more, 12 instead of 20 cycles of latency) and vroundps
// for f (two adds less on the critical path); the exponent still comes from the shifter.
HWY_INLINE V Exp2Minimax5Estrin(DF df, V x) {
  const DI di;
  x = hn::Max(x, hn::Set(df, -126.0f));
  const V nf = hn::Add(x, hn::Set(df, kShift));
  const V f = hn::Sub(x, hn::Round(x));
  const V f2 = hn::Mul(f, f);
  const V a = hn::MulAdd(hn::Set(df, 6.931470037e-01f), f, hn::Set(df, 1.0f));
  const V b = hn::MulAdd(hn::Set(df, 5.550733581e-02f), f, hn::Set(df, 2.402224243e-01f));
  const V c = hn::MulAdd(hn::Set(df, 1.326472382e-03f), f, hn::Set(df, 9.671512991e-03f));
  const V p = hn::MulAdd(hn::MulAdd(c, f2, b), f2, a);
  return hn::BitCast(df, hn::Add(hn::BitCast(di, p), hn::ShiftLeft<23>(hn::BitCast(di, nf))));
}

HWY_INLINE V Exp2Minimax4(DF df, V x) {
  const DI di;
  x = hn::Max(x, hn::Set(df, -126.0f));
  const V nf = hn::Add(x, hn::Set(df, kShift));
  const V f = hn::Sub(x, hn::Sub(nf, hn::Set(df, kShift)));
  V p = hn::Set(df, 9.582851082e-03f);
  p = hn::MulAdd(p, f, hn::Set(df, 5.590642989e-02f));
  p = hn::MulAdd(p, f, hn::Set(df, 2.402409911e-01f));
  p = hn::MulAdd(p, f, hn::Set(df, 6.931241751e-01f));
  p = hn::MulAdd(p, f, hn::Set(df, 1.0f));
  return hn::BitCast(df, hn::Add(hn::BitCast(di, p), hn::ShiftLeft<23>(hn::BitCast(di, nf))));
}

// e5 on K vectors at once, each step applied to all K before the next: the K dependency chains
// are interleaved in program order, so the scheduler always holds ready instructions.
template <int K>
HWY_INLINE void Exp2Minimax5xK(DF df, V* x) {
  const DI di;
  V nf[K], p[K];
  for (int k = 0; k < K; ++k) x[k] = hn::Max(x[k], hn::Set(df, -126.0f));
  for (int k = 0; k < K; ++k) nf[k] = hn::Add(x[k], hn::Set(df, kShift));
  for (int k = 0; k < K; ++k) x[k] = hn::Sub(x[k], hn::Sub(nf[k], hn::Set(df, kShift)));  // f
  for (int k = 0; k < K; ++k) p[k] = hn::MulAdd(hn::Set(df, 1.326472382e-03f), x[k], hn::Set(df, 9.671512991e-03f));
  for (int k = 0; k < K; ++k) p[k] = hn::MulAdd(p[k], x[k], hn::Set(df, 5.550733581e-02f));
  for (int k = 0; k < K; ++k) p[k] = hn::MulAdd(p[k], x[k], hn::Set(df, 2.402224243e-01f));
  for (int k = 0; k < K; ++k) p[k] = hn::MulAdd(p[k], x[k], hn::Set(df, 6.931470037e-01f));
  for (int k = 0; k < K; ++k) p[k] = hn::MulAdd(p[k], x[k], hn::Set(df, 1.0f));
  for (int k = 0; k < K; ++k)
    x[k] = hn::BitCast(df, hn::Add(hn::BitCast(di, p[k]), hn::ShiftLeft<23>(hn::BitCast(di, nf[k]))));
}

constexpr int64_t kN = 16;    // states
constexpr int64_t kT = 2048;  // steps per pass

struct Data {
  int64_t W;  // channels in the block (multiple of the vector length)
  hwy::AlignedFreeUniquePtr<float[]> dt, dtx, at, B, C, h, y;
  explicit Data(int64_t w) : W(w) {
    dt = hwy::AllocateAligned<float>(kT * W);
    dtx = hwy::AllocateAligned<float>(kT * W);
    at = hwy::AllocateAligned<float>(kN * W);
    B = hwy::AllocateAligned<float>(kT * kN);
    C = hwy::AllocateAligned<float>(kT * kN);
    h = hwy::AllocateAligned<float>(kN * W);
    y = hwy::AllocateAligned<float>(kT * W);
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> u(0, 1);
    for (int64_t i = 0; i < kT * W; ++i) dt[i] = 0.001f + 0.1f * u(rng), dtx[i] = u(rng) - 0.5f;
    for (int64_t i = 0; i < kN * W; ++i) at[i] = -1.4427f * (0.1f + 2 * u(rng)), h[i] = 0;
    for (int64_t i = 0; i < kT * kN; ++i) B[i] = u(rng) - 0.5f, C[i] = u(rng) - 0.5f;
  }
};

enum class Exp { taylor6, minimax5, minimax4, none, estrin5 };
enum class Body { scan, exp_only };

// One pass over kT steps; h lives in memory (L1), the channel vectors of a step in registers.
// kAcc partial sums of y per vector (state n goes to n % kAcc): one chain of 16 dependent
// FMAs per step would otherwise bound the step at 16 × 4 cycles.
template <Exp E, Body K, int64_t NV, int kAcc = 1>
HWY_NOINLINE void Pass(Data& d) {
  const DF df;
  constexpr int64_t L = hn::MaxLanes(df);
  constexpr int64_t W = NV * L;
  const float* HWY_RESTRICT at = d.at.get();
  float* HWY_RESTRICT h = d.h.get();
  const float* HWY_RESTRICT B = d.B.get();
  const float* HWY_RESTRICT C = d.C.get();
  for (int64_t t = 0; t < kT; ++t) {
    V dt[NV], dtx[NV], acc[kAcc][NV];
    for (int64_t v = 0; v < NV; ++v) {
      dt[v] = hn::Load(df, d.dt.get() + t * W + v * L);
      dtx[v] = hn::Load(df, d.dtx.get() + t * W + v * L);
      for (int j = 0; j < kAcc; ++j) acc[j][v] = hn::Zero(df);
    }
    for (int64_t n = 0; n < kN; ++n) {
      const V bn = hn::Set(df, B[t * kN + n]), cn = hn::Set(df, C[t * kN + n]);
      for (int64_t v = 0; v < NV; ++v) {
        const V x = hn::Mul(dt[v], hn::Load(df, at + n * W + v * L));
        V a;
        if constexpr (E == Exp::taylor6) a = Exp2Taylor6(df, x);
        if constexpr (E == Exp::minimax5) a = Exp2Minimax5(df, x);
        if constexpr (E == Exp::minimax4) a = Exp2Minimax4(df, x);
        if constexpr (E == Exp::estrin5) a = Exp2Minimax5Estrin(df, x);
        if constexpr (E == Exp::none) a = x;
        V& ac = acc[n % kAcc][v];
        if constexpr (K == Body::scan) {
          float* hp = h + n * W + v * L;
          const V hv = hn::MulAdd(a, hn::Load(df, hp), hn::Mul(dtx[v], bn));
          hn::Store(hv, df, hp);
          ac = hn::MulAdd(cn, hv, ac);
        } else {
          ac = hn::Add(ac, a);
        }
      }
    }
    for (int64_t v = 0; v < NV; ++v) {
      for (int j = 1; j < kAcc; ++j) acc[0][v] = hn::Add(acc[0][v], acc[j][v]);
      hn::Store(acc[0][v], df, d.y.get() + t * W + v * L);
    }
  }
}

// Interleaved: per step and group of G states, the G·NV exponentials first (interleaved), then
// the G·NV state updates.
template <Body K, int64_t NV, int G>
HWY_NOINLINE void PassInterleaved(Data& d) {
  const DF df;
  constexpr int64_t L = hn::MaxLanes(df);
  constexpr int64_t W = NV * L;
  const float* HWY_RESTRICT at = d.at.get();
  float* HWY_RESTRICT h = d.h.get();
  const float* HWY_RESTRICT B = d.B.get();
  const float* HWY_RESTRICT C = d.C.get();
  for (int64_t t = 0; t < kT; ++t) {
    V dt[NV], dtx[NV], acc[NV];
    for (int64_t v = 0; v < NV; ++v) {
      dt[v] = hn::Load(df, d.dt.get() + t * W + v * L);
      dtx[v] = hn::Load(df, d.dtx.get() + t * W + v * L);
      acc[v] = hn::Zero(df);
    }
    for (int64_t n0 = 0; n0 < kN; n0 += G) {
      V a[G * NV];
      for (int g = 0; g < G; ++g)
        for (int64_t v = 0; v < NV; ++v) a[g * NV + v] = hn::Mul(dt[v], hn::Load(df, at + (n0 + g) * W + v * L));
      Exp2Minimax5xK<G * NV>(df, a);
      for (int g = 0; g < G; ++g) {
        const V bn = hn::Set(df, B[t * kN + n0 + g]), cn = hn::Set(df, C[t * kN + n0 + g]);
        for (int64_t v = 0; v < NV; ++v) {
          if constexpr (K == Body::scan) {
            float* hp = h + (n0 + g) * W + v * L;
            const V hv = hn::MulAdd(a[g * NV + v], hn::Load(df, hp), hn::Mul(dtx[v], bn));
            hn::Store(hv, df, hp);
            acc[v] = hn::MulAdd(cn, hv, acc[v]);
          } else {
            acc[v] = hn::Add(acc[v], a[g * NV + v]);
          }
        }
      }
    }
    for (int64_t v = 0; v < NV; ++v) hn::Store(acc[v], df, d.y.get() + t * W + v * L);
  }
}

template <Body K, int64_t NV, int G>
double TimeInterleaved(int reps) {
  Data d(NV * hn::MaxLanes(DF()));
  PassInterleaved<K, NV, G>(d);
  double best = 1e9;
  for (int r = 0; r < reps; ++r) {
    const double t0 = cpu_now();
    for (int i = 0; i < 8; ++i) PassInterleaved<K, NV, G>(d);
    best = std::min(best, cpu_now() - t0);
  }
  return best / (8.0 * kT * kN * NV) * 1e9;
}

template <Exp E, Body K, int64_t NV, int kAcc = 1>
double Time(int reps) {
  Data d(NV * hn::MaxLanes(DF()));
  Pass<E, K, NV, kAcc>(d);
  double best = 1e9;
  for (int r = 0; r < reps; ++r) {
    const double t0 = cpu_now();
    for (int i = 0; i < 8; ++i) Pass<E, K, NV, kAcc>(d);
    best = std::min(best, cpu_now() - t0);
  }
  return best / (8.0 * kT * kN * NV) * 1e9;  // ns per vector
}

// Max relative error of an exp2 variant against std::exp2 over x in [−30, 0].
template <Exp E>
double MaxRel() {
  const DF df;
  constexpr int64_t L = hn::MaxLanes(df);
  double worst = 0;
  float buf[L], out[L];
  for (int64_t i = 0; i < 3000000; i += L) {
    for (int64_t j = 0; j < L; ++j) buf[j] = -30.0f * static_cast<float>(i + j) / 3000000.0f;
    V r;
    if constexpr (E == Exp::taylor6) r = Exp2Taylor6(df, hn::LoadU(df, buf));
    if constexpr (E == Exp::minimax5) r = Exp2Minimax5(df, hn::LoadU(df, buf));
    if constexpr (E == Exp::minimax4) r = Exp2Minimax4(df, hn::LoadU(df, buf));
    if constexpr (E == Exp::estrin5) r = Exp2Minimax5Estrin(df, hn::LoadU(df, buf));
    hn::StoreU(r, df, out);
    for (int64_t j = 0; j < L; ++j) {
      const double ref = std::exp2(static_cast<double>(buf[j]));
      worst = std::max(worst, std::abs(out[j] - ref) / ref);
    }
  }
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 7;
  const double nspc = ns_per_cycle();
  std::printf("target %s, %zu lanes; clock %.2f GHz (from dependent adds)\n", hwy::TargetName(HWY_TARGET),
              hn::MaxLanes(DF()), 1.0 / nspc);
  std::printf("max relative error on [-30, 0]: e6 %.2e, e5 %.2e, e5 Estrin %.2e, e4 %.2e\n", MaxRel<Exp::taylor6>(),
              MaxRel<Exp::minimax5>(), MaxRel<Exp::estrin5>(), MaxRel<Exp::minimax4>());
  struct Row {
    const char* name;
    double ns;
  } rows[] = {
      {"scan step, e6 (library), 2 vectors, 1 acc", Time<Exp::taylor6, Body::scan, 2>(reps)},
      {"scan step, e6 (library), 2 vectors, 4 acc", Time<Exp::taylor6, Body::scan, 2, 4>(reps)},
      {"scan step, e5, 1 vector, 1 acc", Time<Exp::minimax5, Body::scan, 1>(reps)},
      {"scan step, e5, 1 vector, 4 acc", Time<Exp::minimax5, Body::scan, 1, 4>(reps)},
      {"scan step, e5, 2 vectors, 1 acc", Time<Exp::minimax5, Body::scan, 2>(reps)},
      {"scan step, e5, 2 vectors, 2 acc", Time<Exp::minimax5, Body::scan, 2, 2>(reps)},
      {"scan step, e5, 2 vectors, 4 acc", Time<Exp::minimax5, Body::scan, 2, 4>(reps)},
      {"scan step, e5, 4 vectors, 4 acc", Time<Exp::minimax5, Body::scan, 4, 4>(reps)},
      {"scan step, e5 Estrin, 2 vectors, 4 acc", Time<Exp::estrin5, Body::scan, 2, 4>(reps)},
      {"scan step, e4, 2 vectors, 4 acc", Time<Exp::minimax4, Body::scan, 2, 4>(reps)},
      {"scan step, no exp (a = x), 2 vectors, 1 acc", Time<Exp::none, Body::scan, 2>(reps)},
      {"scan step, no exp (a = x), 2 vectors, 4 acc", Time<Exp::none, Body::scan, 2, 4>(reps)},
      {"exp only, e6, 2 vectors, 4 acc", Time<Exp::taylor6, Body::exp_only, 2, 4>(reps)},
      {"exp only, e5, 2 vectors, 1 acc", Time<Exp::minimax5, Body::exp_only, 2>(reps)},
      {"exp only, e5, 2 vectors, 4 acc", Time<Exp::minimax5, Body::exp_only, 2, 4>(reps)},
      {"exp only, e5 Estrin, 2 vectors, 4 acc", Time<Exp::estrin5, Body::exp_only, 2, 4>(reps)},
      {"exp only, e4, 2 vectors, 4 acc", Time<Exp::minimax4, Body::exp_only, 2, 4>(reps)},
  };
  for (const Row& r : rows) std::printf("%-44s %6.3f ns/vector = %5.2f cycles\n", r.name, r.ns, r.ns / nspc);
  return 0;
}
