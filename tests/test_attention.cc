// Exact attention (naive and flash, forward and backward) against the float64 reference on
// fresh random inputs, with every output poisoned with NaN before the call.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "core/problem.h"
#include "reference/attention_ref.h"
#include "test_util.h"

namespace attnkit::test {
namespace {

struct Case {
  std::string name;
  int64_t B = 1, Nq = 16, Nk = 16, Hq = 2, Hkv = 2, D = 64;
  bool causal = false;
  DType dtype = DType::f32;
  Layout layout = Layout::contiguous;
  float softcap = 0;
  float input_scale = 1;
  std::vector<int32_t> cu_q, cu_k;  // non-empty: variable-length batch
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

struct Inputs {
  HostTensor q, k, v, dout;
  AttentionParams params;
  Problem pr;
};

Inputs make_inputs(const Case& c, std::mt19937_64& rng) {
  Inputs in;
  in.q = HostTensor(c.dtype, {c.B, c.Nq, c.Hq, c.D}, c.layout);
  in.k = HostTensor(c.dtype, {c.B, c.Nk, c.Hkv, c.D}, c.layout);
  in.v = HostTensor(c.dtype, {c.B, c.Nk, c.Hkv, c.D}, c.layout);
  in.dout = HostTensor(c.dtype, {c.B, c.Nq, c.Hq, c.D}, c.layout);
  in.q.fill_random(rng, c.input_scale, 0.01f);
  in.k.fill_random(rng, c.input_scale, 0.01f);
  in.v.fill_random(rng);
  in.dout.fill_random(rng);
  in.params.causal = c.causal;
  in.params.softcap = c.softcap;
  in.params.cu_seqlens_q = c.cu_q;
  in.params.cu_seqlens_k = c.cu_k;
  HostTensor out(c.dtype, {c.B, c.Nq, c.Hq, c.D});
  in.pr = validate_forward(in.q.view, in.k.view, in.v.view, out.view, in.params, {});
  return in;
}

std::vector<Case> cases() {
  std::vector<Case> cs;
  auto add = [&](Case c) { cs.push_back(std::move(c)); };
  add({.name = "single_token", .Nq = 1, .Nk = 1, .D = 32});
  add({.name = "cross_q_lt_k", .Nq = 37, .Nk = 91, .D = 64});
  add({.name = "cross_q_gt_k", .Nq = 91, .Nk = 37, .Hq = 1, .Hkv = 1, .D = 48});
  add({.name = "odd_sizes_causal", .B = 2, .Nq = 77, .Nk = 77, .D = 96, .causal = true});
  add({.name = "causal_q_lt_k", .Nq = 20, .Nk = 70, .D = 64, .causal = true});
  add({.name = "causal_q_gt_k", .Nq = 70, .Nk = 20, .D = 64, .causal = true});  // first rows see nothing
  add({.name = "gqa", .Nq = 40, .Nk = 50, .Hq = 6, .Hkv = 2, .D = 32, .causal = true});
  add({.name = "mqa", .Nq = 33, .Nk = 65, .Hq = 4, .Hkv = 1, .D = 64});
  add({.name = "padded_view", .B = 2, .Nq = 30, .Nk = 45, .D = 40, .layout = Layout::padded});
  add({.name = "bhsd_view", .Nq = 65, .Nk = 65, .D = 64, .causal = true, .layout = Layout::bhsd});
  add({.name = "strided_d", .Nq = 21, .Nk = 34, .D = 24, .layout = Layout::strided_d});
  add({.name = "head_dim_1", .Nq = 9, .Nk = 13, .D = 1});
  add({.name = "head_dim_256", .Nq = 70, .Nk = 70, .Hq = 1, .Hkv = 1, .D = 256, .causal = true});
  add({.name = "head_dim_200", .Nq = 19, .Nk = 67, .Hq = 1, .Hkv = 1, .D = 200});
  add({.name = "softcap", .Nq = 40, .Nk = 60, .D = 32, .softcap = 5.0f, .input_scale = 3.0f});
  add({.name = "bf16", .Nq = 70, .Nk = 90, .D = 64, .causal = true, .dtype = DType::bf16});
  add({.name = "bf16_gqa_padded", .Nq = 50, .Nk = 50, .Hq = 4, .Hkv = 2, .D = 128, .dtype = DType::bf16,
       .layout = Layout::padded});
  add({.name = "f16", .Nq = 45, .Nk = 66, .D = 64, .dtype = DType::f16});
  // Sequences of length 5, 0 (with keys), 35, 1 and 0; one with queries but no keys.
  add({.name = "varlen_empty", .Nq = 41, .Nk = 70, .Hq = 4, .Hkv = 2, .D = 32,
       .cu_q = {0, 5, 5, 40, 41, 41}, .cu_k = {0, 7, 30, 60, 60, 70}});
  add({.name = "varlen_causal", .Nq = 100, .Nk = 100, .D = 64, .causal = true,
       .cu_q = {0, 10, 73, 100}, .cu_k = {0, 10, 73, 100}});
  return cs;
}

class Attention : public ::testing::TestWithParam<std::tuple<Case, Algorithm>> {};

TEST_P(Attention, ForwardMatchesReference) {
  const auto& [c, algo] = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name));
  Inputs in = make_inputs(c, rng);
  HostTensor out(c.dtype, {c.B, c.Nq, c.Hq, c.D}, c.layout);
  HostTensor lse(DType::f32, {c.B, c.Hq, c.Nq});
  out.poison();
  lse.poison();
  in.params.algorithm = algo;
  forward(in.q.view, in.k.view, in.v.view, out.view, in.params, lse.view);
  const ref::ForwardResult r = ref::forward(in.pr, in.q.view, in.k.view, in.v.view);
  expect_close(out, r.out, tolerance(c.dtype, false), c.name + " out");
  expect_close(lse, r.lse, tolerance(DType::f32, false) * 10, c.name + " lse");
}

TEST_P(Attention, BackwardMatchesReference) {
  const auto& [c, algo] = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name) ^ 1);
  Inputs in = make_inputs(c, rng);
  HostTensor out(c.dtype, {c.B, c.Nq, c.Hq, c.D}, c.layout);
  HostTensor lse(DType::f32, {c.B, c.Hq, c.Nq});
  in.params.algorithm = algo;
  forward(in.q.view, in.k.view, in.v.view, out.view, in.params, lse.view);
  HostTensor dq(c.dtype, {c.B, c.Nq, c.Hq, c.D}, c.layout);
  HostTensor dk(c.dtype, {c.B, c.Nk, c.Hkv, c.D}, c.layout);
  HostTensor dv(c.dtype, {c.B, c.Nk, c.Hkv, c.D}, c.layout);
  dq.poison();
  dk.poison();
  dv.poison();
  backward(in.q.view, in.k.view, in.v.view, out.view, in.dout.view, lse.view, dq.view, dk.view, dv.view, in.params);
  const ref::BackwardResult r = ref::backward(in.pr, in.q.view, in.k.view, in.v.view, in.dout.view);
  const double tol = tolerance(c.dtype, true);
  expect_close(dq, r.dq, tol, c.name + " dq");
  expect_close(dk, r.dk, tol, c.name + " dk");
  expect_close(dv, r.dv, tol, c.name + " dv");
}

INSTANTIATE_TEST_SUITE_P(Exact, Attention,
                         ::testing::Combine(::testing::ValuesIn(cases()),
                                            ::testing::Values(Algorithm::naive, Algorithm::flash,
                                                              Algorithm::reference)),
                         [](const auto& info) {
                           return std::get<0>(info.param).name + "_" + to_string(std::get<1>(info.param));
                         });

// A row whose keys are all masked yields output 0 and LSE = −inf, never NaN.
TEST(AttentionEdge, FullyMaskedRowsAreZero) {
  for (Algorithm algo : {Algorithm::naive, Algorithm::flash, Algorithm::reference}) {
    std::mt19937_64 rng(test_seed());
    const Case c{.name = "masked", .Nq = 80, .Nk = 8, .D = 64, .causal = true};
    Inputs in = make_inputs(c, rng);
    in.params.algorithm = algo;
    HostTensor out(DType::f32, {1, 80, 2, 64}), lse(DType::f32, {1, 2, 80});
    out.poison();
    lse.poison();
    forward(in.q.view, in.k.view, in.v.view, out.view, in.params, lse.view);
    // Query i sees keys j <= i − 72: rows 0..71 see none.
    for (int64_t i = 0; i < 72; ++i)
      for (int64_t h = 0; h < 2; ++h) {
        EXPECT_EQ(lse.get(h * 80 + i), -std::numeric_limits<float>::infinity()) << to_string(algo) << " row " << i;
        for (int64_t d = 0; d < 64; ++d) ASSERT_EQ(out.get((i * 2 + h) * 64 + d), 0.0f) << to_string(algo);
      }
    HostTensor dq(DType::f32, {1, 80, 2, 64}), dk(DType::f32, {1, 8, 2, 64}), dv(DType::f32, {1, 8, 2, 64});
    dq.poison();
    dk.poison();
    dv.poison();
    backward(in.q.view, in.k.view, in.v.view, out.view, in.dout.view, lse.view, dq.view, dk.view, dv.view, in.params);
    for (int64_t i = 0; i < dq.numel(); ++i) ASSERT_TRUE(std::isfinite(dq.get(i))) << to_string(algo);
    for (int64_t i = 0; i < 72 * 2 * 64; ++i) ASSERT_EQ(dq.get(i), 0.0f) << to_string(algo);
  }
}

// Logits of magnitude 1e4: finite, and flash's error no worse than twice naive's (same f32
// arithmetic) plus one rounding of the largest logit.
TEST(AttentionEdge, HugeLogitsStayFiniteAndAccurate) {
  std::mt19937_64 rng(test_seed());
  const Case c{.name = "huge", .Nq = 70, .Nk = 90, .D = 64, .causal = true, .input_scale = 12.5f};
  Inputs in = make_inputs(c, rng);
  in.params.scale = 1.0f;  // |q·k| ~ 12.5² · 8 = 1e4 and beyond
  HostTensor probe(DType::f32, {1, 70, 2, 64});
  const Problem pr = validate_forward(in.q.view, in.k.view, in.v.view, probe.view, in.params, {});
  const ref::ForwardResult r = ref::forward(pr, in.q.view, in.k.view, in.v.view);
  double max_lse = 0;
  for (double x : r.lse) max_lse = std::max(max_lse, std::abs(x));
  EXPECT_GT(max_lse, 1e4);
  double err[2];
  int n = 0;
  for (Algorithm algo : {Algorithm::naive, Algorithm::flash}) {
    HostTensor out(DType::f32, {1, 70, 2, 64}), lse(DType::f32, {1, 2, 70});
    out.poison();
    lse.poison();
    in.params.algorithm = algo;
    forward(in.q.view, in.k.view, in.v.view, out.view, in.params, lse.view);
    const Errors e = compare(out, r.out, "huge logits");
    EXPECT_EQ(e.nonfinite, 0);
    const Errors el = compare(lse, r.lse, "huge logits lse");
    EXPECT_EQ(el.nonfinite, 0);
    EXPECT_LT(el.rel, 1e-5);
    err[n++] = e.rel;
  }
  // Flash folds scale · log2(e) into Q: one more f32 rounding of every logit, worth
  // eps · max|logit| on top of the naive computation's error.
  const double fold = std::numeric_limits<float>::epsilon() * max_lse;
  EXPECT_LE(err[1], 2 * err[0] + fold) << "flash " << err[1] << " vs naive " << err[0] << ", fold " << fold;
}

// Rows outside every sequence of a packed batch are left as they were.
TEST(AttentionEdge, VarlenLeavesUncoveredRowsAlone) {
  std::mt19937_64 rng(test_seed());
  HostTensor q(DType::f32, {1, 20, 1, 32}), k(DType::f32, {1, 20, 1, 32}), v(DType::f32, {1, 20, 1, 32});
  q.fill_random(rng);
  k.fill_random(rng);
  v.fill_random(rng);
  const std::vector<int32_t> cu = {0, 6, 12};
  HostTensor out(DType::f32, {1, 20, 1, 32});
  for (int64_t i = 0; i < out.numel(); ++i) out.set(i, 7.0f);
  AttentionParams p;
  p.cu_seqlens_q = cu;
  p.cu_seqlens_k = cu;
  forward(q.view, k.view, v.view, out.view, p);
  for (int64_t i = 12 * 32; i < 20 * 32; ++i) ASSERT_EQ(out.get(i), 7.0f);
}

// The flash backward against central finite differences of the float64 reference forward.
TEST(AttentionGradient, FiniteDifferences) {
  std::mt19937_64 rng(test_seed());
  const Case c{.name = "fd", .Nq = 5, .Nk = 7, .Hq = 2, .Hkv = 1, .D = 4, .causal = true, .softcap = 2.0f};
  Inputs in = make_inputs(c, rng);
  HostTensor out(DType::f32, {1, 5, 2, 4}), lse(DType::f32, {1, 2, 5});
  forward(in.q.view, in.k.view, in.v.view, out.view, in.params, lse.view);
  HostTensor dq(DType::f32, {1, 5, 2, 4}), dk(DType::f32, {1, 7, 1, 4}), dv(DType::f32, {1, 7, 1, 4});
  backward(in.q.view, in.k.view, in.v.view, out.view, in.dout.view, lse.view, dq.view, dk.view, dv.view, in.params);
  auto loss = [&] {
    const ref::ForwardResult r = ref::forward(in.pr, in.q.view, in.k.view, in.v.view);
    double s = 0;
    for (int64_t i = 0; i < in.dout.numel(); ++i) s += r.out[i] * in.dout.get(i);
    return s;
  };
  for (auto [x, g, name] : {std::tuple{&in.q, &dq, "dq"}, {&in.k, &dk, "dk"}, {&in.v, &dv, "dv"}}) {
    std::vector<double> fd(x->numel());
    for (int64_t i = 0; i < x->numel(); ++i) {
      const float x0 = x->get(i);
      const float hi = x0 + 1e-3f, lo = x0 - 1e-3f;  // f32 inputs, float64 loss: truncation ~h²
      x->set(i, hi);
      const double lhi = loss();
      x->set(i, lo);
      const double llo = loss();
      x->set(i, x0);
      fd[i] = (lhi - llo) / (static_cast<double>(hi) - lo);
    }
    expect_close(*g, fd, 2e-4, std::string("finite differences ") + name);
  }
}

}  // namespace
}  // namespace attnkit::test
