// RWKV time mixing: WKV-4 (stable form) and WKV-6 (data-dependent decay), forward, backward and
// the streaming steps against float64 references, on fresh random inputs with outputs poisoned;
// long sequences with extreme decays; bad inputs rejected.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "cpu/rwkv_kernels.h"
#include "reference/recurrent_ref.h"
#include "test_util.h"

namespace attnkit::test {
namespace {

void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected an attnkit::Error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

std::vector<double> dense(const HostTensor& t) {
  std::vector<double> r(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) r[i] = t.get(i);
  return r;
}

int64_t count_nonfinite(const HostTensor& t) {
  int64_t bad = 0;
  for (int64_t i = 0; i < t.numel(); ++i) bad += !std::isfinite(t.get(i));
  return bad;
}

// Token s of a [B, T, ...] view, with the seq dim dropped.
TensorView token(const HostTensor& t, int64_t s) {
  const TensorView& v = t.view;
  TensorView r = v;
  r.data = static_cast<float*>(v.data) + s * v.strides[1];
  r.ndim = v.ndim - 1;
  r.shape[0] = v.shape[0];
  r.strides[0] = v.strides[0];
  for (int i = 1; i < r.ndim; ++i) {
    r.shape[i] = v.shape[i + 1];
    r.strides[i] = v.strides[i + 1];
  }
  r.shape[r.ndim] = r.strides[r.ndim] = 0;
  return r;
}

// ---- WKV-4 ----

struct Case4 {
  std::string name;
  int64_t B = 1, T = 40, C = 16;
  float w_mean = 0.0f;  // w = exp(N(w_mean, 1)): the decay rate per step
  float k_scale = 1.0f;
  bool strided = false;
  // Blocks of 16 channels in turn: u − w = −29.9 and +29.9 (the forward weighs the output
  // through g = e^{u−w} at the edges of its bound) and u − w = −30.5 (its own exponential).
  bool bonus_edges = false;
};
void PrintTo(const Case4& c, std::ostream* os) { *os << c.name; }

struct Inputs4 {
  HostTensor w, u, k, v, dy;
};

Inputs4 make4(const Case4& c, std::mt19937_64& rng) {
  Inputs4 in;
  in.w = HostTensor(DType::f32, {c.C});
  in.u = HostTensor(DType::f32, {c.C});
  for (HostTensor* t : {&in.k, &in.v, &in.dy}) {
    if (c.strided) {  // [B, T, C] inside a [B, T, 2C] buffer, channel stride 2
      *t = HostTensor(DType::f32, {c.B, c.T, 2 * c.C});
      t->view.shape[2] = c.C;
      t->view.strides[2] = 2;
    } else {
      *t = HostTensor(DType::f32, {c.B, c.T, c.C});
    }
  }
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < c.C; ++i) in.w.set(i, std::exp(c.w_mean + normal(rng)));
  in.u.fill_random(rng);
  in.k.fill_random(rng, c.k_scale);
  in.v.fill_random(rng);
  in.dy.fill_random(rng);
  if (c.bonus_edges) {
    for (int64_t i = 0; i < c.C; ++i) {
      const float u = in.u.get(i), w = in.w.get(i);
      switch (i / 16 % 3) {
        case 0: in.w.set(i, u + 29.9f); break;
        case 1: in.u.set(i, w + 29.9f); break;
        default: in.w.set(i, u + 30.5f); break;
      }
    }
  }
  return in;
}

std::vector<Case4> cases4() {
  return {
      {.name = "one_step", .T = 1, .C = 3},
      {.name = "basic", .T = 40, .C = 16},
      {.name = "odd", .B = 2, .T = 150, .C = 21},
      {.name = "strided", .B = 2, .T = 70, .C = 18, .strided = true},
      {.name = "large_keys", .T = 120, .C = 16, .k_scale = 30.0f},
      {.name = "slow_decay", .T = 300, .C = 8, .w_mean = -9.0f},
      {.name = "fast_decay", .T = 300, .C = 8, .w_mean = 4.0f},
      // Rows of 1, 2 and 4 KiB: the forward reads them in tiles of 4, 2 and 2 rows.
      {.name = "rows_1k", .T = 150, .C = 256},
      {.name = "rows_2k", .T = 133, .C = 512},
      {.name = "rows_4k", .T = 77, .C = 1024},
      {.name = "bonus_edges", .B = 2, .T = 200, .C = 48, .k_scale = 4.0f, .bonus_edges = true},
  };
}

class Wkv4 : public ::testing::TestWithParam<Case4> {};

// f32 rounds an exponent argument of size |k| to about |k|·2⁻²⁴, which is the relative error of
// that token's weight; keys scaled ×30 reach arguments near 100, so the forward's error bound
// grows with the keys' scale (measured at ×30: forward up to 1.2e-5, dw up to 2.0e-4).
double tol4(const Case4& c, bool backward) {
  return tolerance(DType::f32, backward) * std::max(1.0f, c.k_scale / 8.0f);
}

TEST_P(Wkv4, ForwardMatchesReference) {
  const Case4& c = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name));
  const Inputs4 in = make4(c, rng);
  HostTensor y(DType::f32, {c.B, c.T, c.C});
  y.poison();
  wkv4_forward(in.w.view, in.u.view, in.k.view, in.v.view, y.view);
  expect_close(y, ref::wkv4_forward(in.w.view, in.u.view, in.k.view, in.v.view), tol4(c, false),
               c.name + " y");
}

TEST_P(Wkv4, BackwardMatchesReference) {
  const Case4& c = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name) ^ 1);
  const Inputs4 in = make4(c, rng);
  HostTensor dw(DType::f32, {c.C}), du(DType::f32, {c.C}), dk(DType::f32, {c.B, c.T, c.C}),
      dv(DType::f32, {c.B, c.T, c.C});
  for (HostTensor* t : {&dw, &du, &dk, &dv}) t->poison();
  wkv4_backward(in.w.view, in.u.view, in.k.view, in.v.view, in.dy.view, dw.view, du.view, dk.view, dv.view);
  const ref::Wkv4GradsRef r = ref::wkv4_backward(in.w.view, in.u.view, in.k.view, in.v.view, in.dy.view);
  const double tol = tol4(c, true);
  // dw and du sum terms of both signs over every token; with fast decays the sum can be far
  // below its terms (seen: dw 8e-4 of its terms' size; f32 error 2.3e-4 of dw, 1.8e-7 of the terms).
  expect_close_to_sum(dw, r.dw, r.dw_terms, tol, c.name + " dw");
  expect_close_to_sum(du, r.du, r.du_terms, tol, c.name + " du");
  expect_close(dk, r.dk, tol, c.name + " dk");
  expect_close(dv, r.dv, tol, c.name + " dv");
}

TEST_P(Wkv4, StepsEqualFullSequence) {
  const Case4& c = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name) ^ 2);
  const Inputs4 in = make4(c, rng);
  HostTensor full(DType::f32, {c.B, c.T, c.C}), stepped(DType::f32, {c.B, c.T, c.C});
  wkv4_forward(in.w.view, in.u.view, in.k.view, in.v.view, full.view);
  stepped.poison();
  Wkv4State st(c.B, c.C);
  for (int64_t s = 0; s < c.T; ++s) wkv4_step(st, in.w.view, in.u.view, token(in.k, s), token(in.v, s), token(stepped, s));
  expect_close(stepped, dense(full), tol4(c, false), c.name + " steps");
}

INSTANTIATE_TEST_SUITE_P(Cases, Wkv4, ::testing::ValuesIn(cases4()), [](const auto& info) { return info.param.name; });

// y at every 4-byte offset modulo 32 bytes: the forward writes aligned rows with whole-vector or
// half-vector non-temporal stores and any other rows with ordinary ones. T = 100 is split in
// time between two threads, C = 32 is read in place.
TEST(Wkv4, OutputAlignments) {
  const Case4 c{.name = "aligned", .T = 100, .C = 32};
  std::mt19937_64 rng(test_seed() ^ 7);
  const Inputs4 in = make4(c, rng);
  const std::vector<double> want = ref::wkv4_forward(in.w.view, in.u.view, in.k.view, in.v.view);
  for (int64_t off = 0; off < 8; ++off) {
    HostTensor y(DType::f32, {c.B, c.T, c.C + 8});  // rows of C + 8 floats: 160 bytes apart
    y.poison();
    y.view.shape[2] = c.C;
    y.view.data = static_cast<float*>(y.view.data) + off;
    wkv4_forward(in.w.view, in.u.view, in.k.view, in.v.view, y.view);
    expect_close(y, want, tolerance(DType::f32, false), "y at offset " + std::to_string(off));
  }
}

// The step keeps what it derives from w and u between calls; a call with another w, or another
// u, must not reuse it: state b steps with other inputs first, then must match fresh states.
TEST(Wkv4, StepsNoticeChangedDecayAndBonus) {
  const Case4 c{.name = "changed", .B = 2, .T = 12, .C = 40};
  std::mt19937_64 rng(test_seed() ^ 11);
  const Inputs4 in = make4(c, rng), other = make4(c, rng);
  HostTensor ya(DType::f32, {c.B, c.T, c.C}), yb(DType::f32, {c.B, c.T, c.C});
  ya.poison();
  yb.poison();
  Wkv4State b(c.B, c.C);
  wkv4_step(b, other.w.view, other.u.view, token(in.k, 0), token(in.v, 0), token(yb, 0));
  b.reset();
  {  // w changed, u not
    Wkv4State a(c.B, c.C);
    wkv4_step(a, in.w.view, other.u.view, token(in.k, 0), token(in.v, 0), token(ya, 0));
    wkv4_step(b, in.w.view, other.u.view, token(in.k, 0), token(in.v, 0), token(yb, 0));
    expect_close(yb, dense(ya), 1e-12, "a step after another w");
  }
  b.reset();
  Wkv4State a(c.B, c.C);  // u changed, w not
  for (int64_t s = 0; s < c.T; ++s) {
    wkv4_step(a, in.w.view, in.u.view, token(in.k, s), token(in.v, s), token(ya, s));
    wkv4_step(b, in.w.view, in.u.view, token(in.k, s), token(in.v, s), token(yb, s));
  }
  expect_close(yb, dense(ya), 1e-12, "steps after another u");
  expect_close(ya, ref::wkv4_forward(in.w.view, in.u.view, in.k.view, in.v.view), tolerance(DType::f32, false),
               "steps against the reference");
}

// The forward's splits of one sequence in time, forced at sizes the automatic choice would give
// to the other (or to neither), on 2 to 4 threads: the rerun (segments from the empty state,
// their first rows computed again from the true start state until it no longer weighs) and the
// state pass. Keys of +40 every 64 rows make a start state dominate a segment for dozens of rows
// beyond what w predicts; slow decays make the rerun span whole segments.
TEST(Wkv4, TimeSplitsMatchReference) {
  struct Split {
    Case4 c;
    bool spikes;
  };
  const Split splits[] = {
      {{.name = "mixed", .T = 600, .C = 32}, false},
      {{.name = "spikes", .T = 600, .C = 48}, true},
      {{.name = "slow", .T = 400, .C = 16, .w_mean = -6.0f}, false},
      {{.name = "fast", .B = 2, .T = 500, .C = 32, .w_mean = 2.0f, .k_scale = 4.0f}, true},
      {{.name = "bonus_edges", .T = 300, .C = 48, .k_scale = 4.0f, .bonus_edges = true}, true},
      {{.name = "odd_channels", .T = 300, .C = 40}, false},  // not whole blocks: no rerun
  };
  cpu::Wkv4FwdTuning& tune = cpu::wkv4_fwd_tuning();
  const cpu::Wkv4FwdTuning saved = tune;
  const int threads = num_threads();
  for (const Split& sp : splits) {
    std::mt19937_64 rng(test_seed() ^ 13);
    Inputs4 in = make4(sp.c, rng);
    if (sp.spikes) {
      for (int64_t b = 0; b < sp.c.B; ++b)
        for (int64_t t = 60; t < sp.c.T; t += 64)
          for (int64_t j = 0; j < sp.c.C; ++j) in.k.set((b * sp.c.T + t) * sp.c.C + j, 40.0f);
    }
    const std::vector<double> want = ref::wkv4_forward(in.w.view, in.u.view, in.k.view, in.v.view);
    for (const cpu::Wkv4TimeSplit mode :
         {cpu::Wkv4TimeSplit::rerun, cpu::Wkv4TimeSplit::state_pass, cpu::Wkv4TimeSplit::automatic}) {
      for (const int n : {2, 3, 4}) {
        tune.time_split = mode;
        set_num_threads(n);
        HostTensor y(DType::f32, {sp.c.B, sp.c.T, sp.c.C});
        y.poison();
        wkv4_forward(in.w.view, in.u.view, in.k.view, in.v.view, y.view);
        expect_close(y, want, tol4(sp.c, false),
                     sp.c.name + ", split " + std::to_string(static_cast<int>(mode)) + ", " + std::to_string(n) +
                         " threads");
      }
    }
  }
  tune = saved;
  set_num_threads(threads);
}

TEST(Wkv4, LongSequencesWithExtremeDecaysStayFinite) {
  for (float w_mean : {-12.0f, 5.0f}) {
    const Case4 c{.name = "long", .T = 50000, .C = 16, .w_mean = w_mean, .k_scale = 40.0f};
    std::mt19937_64 rng(test_seed() ^ 9);
    const Inputs4 in = make4(c, rng);
    HostTensor y(DType::f32, {1, c.T, c.C}), dw(DType::f32, {c.C}), du(DType::f32, {c.C}),
        dk(DType::f32, {1, c.T, c.C}), dv(DType::f32, {1, c.T, c.C});
    wkv4_forward(in.w.view, in.u.view, in.k.view, in.v.view, y.view);
    wkv4_backward(in.w.view, in.u.view, in.k.view, in.v.view, in.dy.view, dw.view, du.view, dk.view, dv.view);
    for (const HostTensor* t : {&y, &dw, &du, &dk, &dv}) EXPECT_EQ(count_nonfinite(*t), 0) << "w_mean " << w_mean;
  }
}

TEST(Wkv4, BadArgumentsThrow) {
  HostTensor w(DType::f32, {4}), u(DType::f32, {4}), k(DType::f32, {1, 8, 4}), v(DType::f32, {1, 8, 4}),
      y(DType::f32, {1, 8, 4}), w5(DType::f32, {5}), v9(DType::f32, {1, 9, 4});
  expect_error([&] { wkv4_forward(w5.view, u.view, k.view, v.view, y.view); }, "w: expected shape [4]");
  expect_error([&] { wkv4_forward(w.view, u.view, k.view, v9.view, y.view); }, "v: expected shape");
  expect_error([&] { wkv4_forward(w.view, u.view, k.view, v.view, v.view); }, "y: expected memory disjoint from v");
  w.set(1, INFINITY);
  expect_error([&] { wkv4_forward(w.view, u.view, k.view, v.view, y.view); }, "w: expected finite elements");
  w.set(1, 1.0f);
  TensorView neg = k.view;
  neg.shape[2] = -4;
  expect_error([&] { wkv4_forward(w.view, u.view, neg, v.view, y.view); }, "k: expected every size to be positive");
  HostTensor dw(DType::f32, {4}), du(DType::f32, {4}), dk(DType::f32, {1, 8, 4});
  expect_error([&] { wkv4_backward(w.view, u.view, k.view, v.view, y.view, dw.view, du.view, dk.view, dk.view); },
               "dk: expected memory disjoint from dv");
  expect_error([] { Wkv4State(0, 4); }, "batch: expected >= 1");
  Wkv4State st(1, 5);
  expect_error([&] { wkv4_step(st, w.view, u.view, token(k, 0), token(v, 0), token(y, 0)); }, "the state's");
}

// ---- WKV-6 ----

struct Case6 {
  std::string name;
  int64_t B = 1, T = 20, H = 2, K = 16;
  float w_mean = -1.0f;  // decay d = exp(−exp(w)), w ~ N(w_mean, 1)
};
void PrintTo(const Case6& c, std::ostream* os) { *os << c.name; }

struct Inputs6 {
  HostTensor r, k, v, w, u, dy;
};

Inputs6 make6(const Case6& c, std::mt19937_64& rng) {
  Inputs6 in;
  for (HostTensor* t : {&in.r, &in.k, &in.v, &in.w, &in.dy}) {
    *t = HostTensor(DType::f32, {c.B, c.T, c.H, c.K});
    t->fill_random(rng);
  }
  std::normal_distribution<float> normal(c.w_mean, 1.0f);
  for (int64_t i = 0; i < in.w.numel(); ++i) in.w.set(i, normal(rng));
  in.u = HostTensor(DType::f32, {c.H, c.K});
  in.u.fill_random(rng);
  return in;
}

// Σ |term| of every output: y = Σ_i r_i (u_i k_i v_j + S_ij) with S a decayed sum of k v, so the
// reference over |r|, |k|, |v|, |u| (the same decays) adds the terms' magnitudes. An output whose
// K terms of size about 1 cancel to 1e-3 carries f32 rounding relative to this, not to itself.
std::vector<double> wkv6_terms(const Inputs6& in) {
  auto abs_of = [](const HostTensor& t) {
    HostTensor a(DType::f32, std::vector<int64_t>(t.view.shape.begin(), t.view.shape.begin() + t.view.ndim));
    for (int64_t i = 0; i < t.numel(); ++i) a.set(i, std::fabs(t.get(i)));
    return a;
  };
  const HostTensor r = abs_of(in.r), k = abs_of(in.k), v = abs_of(in.v), u = abs_of(in.u);
  return ref::wkv6_forward(r.view, k.view, v.view, in.w.view, u.view);
}

std::vector<Case6> cases6() {
  return {
      {.name = "one_step", .T = 1, .H = 1, .K = 4},
      {.name = "basic", .T = 20, .H = 2, .K = 16},
      {.name = "odd_size_chunks", .B = 2, .T = 37, .H = 3, .K = 23},
      {.name = "head_64", .T = 18, .H = 1, .K = 64},
      {.name = "decay_near_one", .T = 60, .H = 1, .K = 8, .w_mean = -8.0f},
      {.name = "decay_near_zero", .T = 60, .H = 1, .K = 8, .w_mean = 3.0f},
  };
}

class Wkv6 : public ::testing::TestWithParam<Case6> {};

TEST_P(Wkv6, ForwardMatchesReference) {
  const Case6& c = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name));
  const Inputs6 in = make6(c, rng);
  HostTensor y(DType::f32, {c.B, c.T, c.H, c.K});
  y.poison();
  wkv6_forward(in.r.view, in.k.view, in.v.view, in.w.view, in.u.view, y.view);
  expect_close_to_sum(y, ref::wkv6_forward(in.r.view, in.k.view, in.v.view, in.w.view, in.u.view), wkv6_terms(in),
                      tolerance(DType::f32, false), c.name + " y");
}

TEST_P(Wkv6, BackwardMatchesReference) {
  const Case6& c = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name) ^ 1);
  const Inputs6 in = make6(c, rng);
  HostTensor dr(DType::f32, {c.B, c.T, c.H, c.K}), dk(DType::f32, {c.B, c.T, c.H, c.K}),
      dv(DType::f32, {c.B, c.T, c.H, c.K}), dw(DType::f32, {c.B, c.T, c.H, c.K}), du(DType::f32, {c.H, c.K});
  for (HostTensor* t : {&dr, &dk, &dv, &dw, &du}) t->poison();
  wkv6_backward(in.r.view, in.k.view, in.v.view, in.w.view, in.u.view, in.dy.view, dr.view, dk.view, dv.view,
                dw.view, du.view);
  const ref::Wkv6GradsRef r = ref::wkv6_backward(in.r.view, in.k.view, in.v.view, in.w.view, in.u.view, in.dy.view);
  const double tol = tolerance(DType::f32, true);
  expect_close(dr, r.dr, tol, c.name + " dr");
  expect_close(dk, r.dk, tol, c.name + " dk");
  expect_close(dv, r.dv, tol, c.name + " dv");
  expect_close(dw, r.dw, tol, c.name + " dw");
  expect_close(du, r.du, tol, c.name + " du");
}

TEST_P(Wkv6, StepsEqualFullSequence) {
  const Case6& c = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name) ^ 2);
  const Inputs6 in = make6(c, rng);
  HostTensor full(DType::f32, {c.B, c.T, c.H, c.K}), stepped(DType::f32, {c.B, c.T, c.H, c.K});
  wkv6_forward(in.r.view, in.k.view, in.v.view, in.w.view, in.u.view, full.view);
  stepped.poison();
  Wkv6State st(c.B, c.H, c.K);
  for (int64_t s = 0; s < c.T; ++s) {
    wkv6_step(st, token(in.r, s), token(in.k, s), token(in.v, s), token(in.w, s), in.u.view, token(stepped, s));
  }
  // An output is a sum of K products r·k·v of size about 1 that may cancel to 0.01, and the step
  // adds them in another order than the forward's chunks: a few f32 roundings of the terms
  // (1e-7 each) against outputs that small reach 1e-5 relative, so the bound is the backward's.
  expect_close(stepped, dense(full), tolerance(DType::f32, true), c.name + " steps");
}

INSTANTIATE_TEST_SUITE_P(Cases, Wkv6, ::testing::ValuesIn(cases6()), [](const auto& info) { return info.param.name; });

TEST(Wkv6, LongSequencesWithExtremeDecaysStayFinite) {
  for (float w_mean : {-15.0f, 6.0f}) {
    const Case6 c{.name = "long", .T = 3000, .H = 1, .K = 16, .w_mean = w_mean};
    std::mt19937_64 rng(test_seed() ^ 11);
    const Inputs6 in = make6(c, rng);
    HostTensor y(DType::f32, {1, c.T, 1, c.K}), dr(DType::f32, {1, c.T, 1, c.K}), dk(DType::f32, {1, c.T, 1, c.K}),
        dv(DType::f32, {1, c.T, 1, c.K}), dw(DType::f32, {1, c.T, 1, c.K}), du(DType::f32, {1, c.K});
    wkv6_forward(in.r.view, in.k.view, in.v.view, in.w.view, in.u.view, y.view);
    wkv6_backward(in.r.view, in.k.view, in.v.view, in.w.view, in.u.view, in.dy.view, dr.view, dk.view, dv.view,
                  dw.view, du.view);
    for (const HostTensor* t : {&y, &dr, &dk, &dv, &dw, &du}) EXPECT_EQ(count_nonfinite(*t), 0) << "w_mean " << w_mean;
  }
}

TEST(Wkv6, BadArgumentsThrow) {
  HostTensor r(DType::f32, {1, 8, 2, 4}), k(DType::f32, {1, 8, 2, 4}), v(DType::f32, {1, 8, 2, 4}),
      w(DType::f32, {1, 8, 2, 4}), u(DType::f32, {2, 4}), y(DType::f32, {1, 8, 2, 4}), u3(DType::f32, {3, 4}),
      r5(DType::f32, {1, 8, 2, 5});
  expect_error([&] { wkv6_forward(r.view, k.view, v.view, w.view, u3.view, y.view); }, "u: expected shape [2, 4]");
  expect_error([&] { wkv6_forward(r5.view, k.view, v.view, w.view, u.view, y.view); }, "r: expected shape");
  expect_error([&] { wkv6_forward(r.view, k.view, v.view, w.view, u.view, r.view); }, "y: expected memory disjoint");
  w.set(3, NAN);
  expect_error([&] { wkv6_forward(r.view, k.view, v.view, w.view, u.view, y.view); }, "w: expected finite elements");
  w.set(3, 0.0f);
  expect_error([] { Wkv6State(1, 1, 0); }, "head_size: expected 1..");
  Wkv6State st(1, 3, 4);
  expect_error([&] { wkv6_step(st, token(r, 0), token(k, 0), token(v, 0), token(w, 0), u.view, token(y, 0)); },
               "the state's");
}

}  // namespace
}  // namespace attnkit::test
