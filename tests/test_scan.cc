// Mamba selective scan: forward, backward and the streaming step against the float64
// sequential reference, on fresh random inputs with outputs poisoned; bad inputs rejected.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "reference/recurrent_ref.h"
#include "test_util.h"

namespace attnkit::test {
namespace {

struct Case {
  std::string name;
  int64_t B = 1, L = 40, Dch = 16, N = 4;
  bool has_d = true, has_z = true;
  bool strided = false;     // stride 2 on the last dim of x, delta, z, out and A
  float delta_scale = 0.1f;  // Δ ~ U(0, 2·delta_scale)
  bool mixed_sign_a = false;  // every third A positive (in (0, 0.5])
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// A [.., n] tensor whose last dim has stride 2 when strided (a view into a wider buffer).
HostTensor make(std::vector<int64_t> shape, bool strided) {
  if (!strided) return HostTensor(DType::f32, shape);
  std::vector<int64_t> wide = shape;
  wide.back() *= 2;
  HostTensor t(DType::f32, wide);
  t.view.shape[t.view.ndim - 1] = shape.back();
  t.view.strides[t.view.ndim - 1] = 2;
  return t;
}

std::vector<Case> cases() {
  return {
      {.name = "one_step", .L = 1, .Dch = 3, .N = 2},
      {.name = "basic", .L = 40, .Dch = 16, .N = 4},
      {.name = "odd_channels_chunks", .B = 2, .L = 150, .Dch = 37, .N = 16},
      {.name = "no_d_no_z", .L = 70, .Dch = 20, .N = 8, .has_d = false, .has_z = false},
      {.name = "gate_only", .L = 65, .Dch = 9, .N = 3, .has_d = false},
      {.name = "strided", .B = 2, .L = 66, .Dch = 24, .N = 5, .strided = true},
      {.name = "state_1", .L = 30, .Dch = 17, .N = 1},
      {.name = "large_decay", .L = 200, .Dch = 16, .N = 16, .delta_scale = 5.0f},
      {.name = "small_decay", .L = 200, .Dch = 16, .N = 16, .delta_scale = 1e-4f},
      // Some A > 0 (growing modes): the kernels' exponential then needs its upper clamp too.
      {.name = "growing_modes", .B = 2, .L = 70, .Dch = 35, .N = 6, .delta_scale = 0.1f, .mixed_sign_a = true},
  };
}

struct Inputs {
  HostTensor x, delta, A, Bm, Cm, D, z, dout;
  ScanInputs view() const {
    return {x.view, delta.view, A.view, Bm.view, Cm.view, D.mem.empty() ? TensorView{} : D.view,
            z.mem.empty() ? TensorView{} : z.view};
  }
};

Inputs make_inputs(const Case& c, std::mt19937_64& rng) {
  Inputs in;
  in.x = make({c.B, c.L, c.Dch}, c.strided);
  in.delta = make({c.B, c.L, c.Dch}, c.strided);
  in.A = make({c.Dch, c.N}, c.strided);
  in.Bm = HostTensor(DType::f32, {c.B, c.L, c.N});
  in.Cm = HostTensor(DType::f32, {c.B, c.L, c.N});
  in.dout = make({c.B, c.L, c.Dch}, c.strided);
  in.x.fill_random(rng);
  in.Bm.fill_random(rng);
  in.Cm.fill_random(rng);
  in.dout.fill_random(rng);
  std::uniform_real_distribution<float> uni(0.0f, 2.0f * c.delta_scale);
  for (int64_t i = 0; i < in.delta.numel(); ++i) in.delta.set(i, uni(rng));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < in.A.numel(); ++i) {
    const float a = -std::exp(normal(rng));  // S4D-style negative real
    in.A.set(i, c.mixed_sign_a && i % 3 == 0 ? std::min(0.5f, -0.1f * a) : a);  // growth <= e^{0.1} a step
  }
  if (c.has_d) {
    in.D = HostTensor(DType::f32, {c.Dch});
    in.D.fill_random(rng);
  }
  if (c.has_z) {
    in.z = make({c.B, c.L, c.Dch}, c.strided);
    in.z.fill_random(rng);
  }
  return in;
}

class Scan : public ::testing::TestWithParam<Case> {};

TEST_P(Scan, ForwardMatchesReference) {
  const Case& c = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name));
  const Inputs in = make_inputs(c, rng);
  HostTensor out = make({c.B, c.L, c.Dch}, c.strided);
  out.poison();
  selective_scan_forward(in.view(), out.view);
  expect_close(out, ref::scan_forward(in.view()), tolerance(DType::f32, false), c.name + " out");
}

TEST_P(Scan, BackwardMatchesReference) {
  const Case& c = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name) ^ 1);
  const Inputs in = make_inputs(c, rng);
  HostTensor dx = make({c.B, c.L, c.Dch}, c.strided), ddelta = make({c.B, c.L, c.Dch}, c.strided),
             dz = make({c.B, c.L, c.Dch}, c.strided);
  HostTensor dA(DType::f32, {c.Dch, c.N}), dB(DType::f32, {c.B, c.L, c.N}), dC(DType::f32, {c.B, c.L, c.N}),
      dD(DType::f32, {c.Dch});
  for (HostTensor* t : {&dx, &ddelta, &dz, &dA, &dB, &dC, &dD}) t->poison();
  const ScanGrads g{dx.view, ddelta.view, dA.view, dB.view, dC.view, c.has_d ? dD.view : TensorView{},
                    c.has_z ? dz.view : TensorView{}};
  selective_scan_backward(in.view(), in.dout.view, g);
  const ref::ScanGradsRef r = ref::scan_backward(in.view(), in.dout.view);
  const double tol = tolerance(DType::f32, true);
  expect_close(dx, r.dx, tol, c.name + " dx");
  expect_close(ddelta, r.ddelta, tol, c.name + " ddelta");
  expect_close(dA, r.dA, tol, c.name + " dA");
  expect_close(dB, r.dB, tol, c.name + " dB");
  expect_close(dC, r.dC, tol, c.name + " dC");
  if (c.has_d) expect_close(dD, r.dD, tol, c.name + " dD");
  if (c.has_z) expect_close(dz, r.dz, tol, c.name + " dz");
}

// Token s of a [B, L, n] view as a [B, n] view.
TensorView token(const HostTensor& t, int64_t s) {
  const TensorView& v = t.view;
  return TensorView(static_cast<float*>(v.data) + s * v.strides[1], DType::f32, {v.shape[0], v.shape[2]},
                    {v.strides[0], v.strides[2]});
}

TEST_P(Scan, StepsEqualFullSequence) {
  const Case& c = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name) ^ 2);
  const Inputs in = make_inputs(c, rng);
  HostTensor full = make({c.B, c.L, c.Dch}, c.strided), stepped = make({c.B, c.L, c.Dch}, c.strided);
  selective_scan_forward(in.view(), full.view);
  stepped.poison();
  ScanState st(c.B, c.Dch, c.N);
  for (int64_t s = 0; s < c.L; ++s) {
    const ScanInputs si{token(in.x, s), token(in.delta, s), in.A.view, token(in.Bm, s), token(in.Cm, s),
                        c.has_d ? in.D.view : TensorView{}, c.has_z ? token(in.z, s) : TensorView{}};
    selective_scan_step(st, si, token(stepped, s));
  }
  std::vector<double> ref(full.numel());
  for (int64_t i = 0; i < full.numel(); ++i) ref[i] = full.get(i);
  expect_close(stepped, ref, tolerance(DType::f32, false), c.name + " steps");
}

INSTANTIATE_TEST_SUITE_P(Cases, Scan, ::testing::ValuesIn(cases()), [](const auto& info) { return info.param.name; });

TEST(Scan, LongSequencesStayFinite) {
  for (float ds : {20.0f, 1e-5f}) {  // decays exp(ΔA) that vanish, and decays that stay ~1
    const Case c{.name = "long", .L = 20000, .Dch = 16, .N = 16, .delta_scale = ds};
    std::mt19937_64 rng(test_seed() ^ 5);
    const Inputs in = make_inputs(c, rng);
    HostTensor out(DType::f32, {c.B, c.L, c.Dch});
    selective_scan_forward(in.view(), out.view);
    int64_t bad = 0;
    for (int64_t i = 0; i < out.numel(); ++i) bad += !std::isfinite(out.get(i));
    EXPECT_EQ(bad, 0) << "delta scale " << ds;
  }
}

void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected an attnkit::Error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Scan, BadArgumentsThrow) {
  std::mt19937_64 rng(test_seed());
  const Case c{.name = "bad", .L = 8, .Dch = 4, .N = 3};
  Inputs in = make_inputs(c, rng);
  HostTensor out(DType::f32, {1, 8, 4}), wrong(DType::f32, {1, 8, 5}), wrongN(DType::f32, {1, 8, 2});
  HostTensor bf(DType::bf16, {1, 8, 4});
  auto fwd = [&](ScanInputs si, const TensorView& o) { return [=] { selective_scan_forward(si, o); }; };
  ScanInputs si = in.view();
  si.delta = wrong.view;
  expect_error(fwd(si, out.view), "delta: expected shape");
  si = in.view();
  si.B = wrongN.view;
  expect_error(fwd(si, out.view), "B: expected shape");
  si = in.view();
  si.x = bf.view;
  expect_error(fwd(si, out.view), "x: expected dtype f32");
  si = in.view();
  si.x.shape[1] = -1;
  expect_error(fwd(si, out.view), "x: expected every size to be positive");
  si = in.view();
  si.A.shape[1] = 0;
  expect_error(fwd(si, out.view), "A: expected every size to be positive");
  expect_error(fwd(in.view(), wrong.view), "out: expected shape");
  expect_error(fwd(in.view(), in.x.view), "out: expected memory disjoint from x");
  in.delta.set(13, -0.5f);
  expect_error(fwd(in.view(), out.view), "delta: expected every element >= 0, given -0.5 at [0, 3, 1]");
  in.delta.set(13, 0.5f);
  in.A.set(2, NAN);
  expect_error(fwd(in.view(), out.view), "A: expected finite elements");
  in.A.set(2, -1.0f);
  HostTensor g1(DType::f32, {1, 8, 4}), g2(DType::f32, {1, 8, 4}), g3(DType::f32, {4, 3}), g4(DType::f32, {1, 8, 3}),
      g5(DType::f32, {1, 8, 3}), g6(DType::f32, {4}), g7(DType::f32, {1, 8, 4});
  const ScanGrads ok{g1.view, g2.view, g3.view, g4.view, g5.view, g6.view, g7.view};
  ScanGrads g = ok;
  g.dD = {};
  expect_error([&] { selective_scan_backward(in.view(), in.dout.view, g); }, "dD: expected a gradient view");
  g = ok;
  g.dB = g5.view;
  expect_error([&] { selective_scan_backward(in.view(), in.dout.view, g); }, "dC: expected memory disjoint from dB");
  g = ok;
  g.dA = wrongN.view;
  expect_error([&] { selective_scan_backward(in.view(), in.dout.view, g); }, "dA: expected 2 dimensions");
  expect_error([] { ScanState(1, 4, 0); }, "state_dim: expected 1..");
  ScanState st(1, 4, 3);
  ScanState st2(1, 5, 3);
  const ScanInputs step{token(in.x, 0), token(in.delta, 0), in.A.view, token(in.Bm, 0), token(in.Cm, 0),
                        in.D.view, token(in.z, 0)};
  HostTensor o(DType::f32, {1, 4});
  expect_error([&] { selective_scan_step(st2, step, o.view); }, "the state's");
  expect_error([&] { selective_scan_step(st, in.view(), o.view); }, "x: expected 2 dimensions");
}

// Δ of a million elements is checked by the thread pool in parts: the error still names the
// first negative element, also when a later part holds another one (or a NaN).
TEST(Scan, NegativeDeltaInALargeTensorIsTheFirstOne) {
  std::mt19937_64 rng(test_seed() ^ 11);
  const Case c{.name = "large", .L = 2048, .Dch = 512, .N = 1};
  Inputs in = make_inputs(c, rng);
  HostTensor out(DType::f32, {1, c.L, c.Dch});
  in.delta.set(1500 * 512 + 7, NAN);
  in.delta.set(1000 * 512 + 300, -2.0f);
  expect_error([&] { selective_scan_forward(in.view(), out.view); },
               "delta: expected every element >= 0, given -2 at [0, 1000, 300]");
}

}  // namespace
}  // namespace attnkit::test
