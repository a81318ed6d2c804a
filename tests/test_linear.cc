// Kernelized linear attention (elu+1, ReLU, FAVOR+), forward, backward and the streaming step,
// against the float64 O(N²) reference on fresh random inputs; outputs poisoned with NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "reference/linear_ref.h"
#include "test_util.h"

namespace attnkit::test {
namespace {

struct Case {
  std::string name;
  int64_t B = 1, Nq = 16, Nk = 16, Hq = 2, Hkv = 2, D = 32;
  FeatureMap map = FeatureMap::elu_plus_one;
  int64_t m = 0;  // favor_plus features
  bool causal = false;
  DType dtype = DType::f32;
  Layout layout = Layout::contiguous;
  float input_scale = 1;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> cases() {
  using FM = FeatureMap;
  return {
      {.name = "elu_single_query", .Nq = 1, .Nk = 3, .D = 8},
      {.name = "elu_cross", .Nq = 37, .Nk = 91, .D = 64},
      {.name = "elu_causal_odd", .B = 2, .Nq = 150, .Nk = 150, .D = 40, .causal = true},
      {.name = "elu_causal_one_chunk", .Nq = 64, .Nk = 64, .D = 32, .causal = true},
      {.name = "elu_gqa_causal", .Nq = 130, .Nk = 130, .Hq = 6, .Hkv = 2, .D = 32, .causal = true},
      {.name = "elu_mqa", .Nq = 33, .Nk = 65, .Hq = 4, .Hkv = 1, .D = 16},
      {.name = "elu_padded", .B = 2, .Nq = 70, .Nk = 70, .D = 24, .causal = true, .layout = Layout::padded},
      {.name = "elu_strided_d", .Nq = 21, .Nk = 34, .D = 24, .layout = Layout::strided_d},
      {.name = "elu_bhsd_large_inputs", .Nq = 90, .Nk = 90, .D = 32, .causal = true, .layout = Layout::bhsd,
       .input_scale = 4},
      {.name = "relu_causal", .Nq = 100, .Nk = 100, .D = 32, .map = FM::relu, .causal = true},
      {.name = "relu_cross_gqa", .Nq = 40, .Nk = 77, .Hq = 4, .Hkv = 2, .D = 48, .map = FM::relu},
      {.name = "favor_noncausal", .Nq = 50, .Nk = 80, .D = 32, .map = FM::favor_plus, .m = 64},
      {.name = "favor_causal_m_odd", .Nq = 140, .Nk = 140, .D = 32, .map = FM::favor_plus, .m = 37,
       .causal = true},
      {.name = "favor_gqa_m_gt_d", .Nq = 70, .Nk = 70, .Hq = 4, .Hkv = 1, .D = 16, .map = FM::favor_plus, .m = 100,
       .causal = true},
      {.name = "favor_head_dim_1", .Nq = 9, .Nk = 13, .D = 1, .map = FM::favor_plus, .m = 5},
      {.name = "elu_bf16", .Nq = 70, .Nk = 70, .D = 64, .causal = true, .dtype = DType::bf16},
      {.name = "favor_f16", .Nq = 45, .Nk = 66, .D = 32, .map = FM::favor_plus, .m = 48, .dtype = DType::f16},
  };
}

struct Inputs {
  HostTensor q, k, v, dout;
  std::unique_ptr<RandomFeatures> rf;
  LinearAttentionParams p;
};

Inputs make_inputs(const Case& c, std::mt19937_64& rng) {
  Inputs in;
  in.q = HostTensor(c.dtype, {c.B, c.Nq, c.Hq, c.D}, c.layout);
  in.k = HostTensor(c.dtype, {c.B, c.Nk, c.Hkv, c.D}, c.layout);
  in.v = HostTensor(c.dtype, {c.B, c.Nk, c.Hkv, c.D}, c.layout);
  in.dout = HostTensor(c.dtype, {c.B, c.Nq, c.Hq, c.D}, c.layout);
  // FAVOR+ features grow like exp(|x|²/2·scale): keep its inputs moderate, as real q, k are.
  const float s = c.map == FeatureMap::favor_plus ? 0.5f * c.input_scale : c.input_scale;
  in.q.fill_random(rng, s, c.map == FeatureMap::favor_plus ? 0.0f : 0.01f);
  in.k.fill_random(rng, s, c.map == FeatureMap::favor_plus ? 0.0f : 0.01f);
  in.v.fill_random(rng);
  in.dout.fill_random(rng);
  in.p.feature_map = c.map;
  in.p.causal = c.causal;
  if (c.map == FeatureMap::favor_plus) {
    in.rf = std::make_unique<RandomFeatures>(c.D, c.m, rng());
    in.p.features = in.rf.get();
  }
  return in;
}

class Linear : public ::testing::TestWithParam<Case> {};

TEST_P(Linear, ForwardMatchesReference) {
  const Case& c = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name));
  Inputs in = make_inputs(c, rng);
  HostTensor out(c.dtype, {c.B, c.Nq, c.Hq, c.D}, c.layout);
  out.poison();
  linear_forward(in.q.view, in.k.view, in.v.view, out.view, in.p);
  expect_close(out, ref::linear_forward(in.q.view, in.k.view, in.v.view, in.p), tolerance(c.dtype, false),
               c.name + " out");
}

TEST_P(Linear, BackwardMatchesReference) {
  const Case& c = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name) ^ 1);
  Inputs in = make_inputs(c, rng);
  HostTensor dq(c.dtype, {c.B, c.Nq, c.Hq, c.D}, c.layout);
  HostTensor dk(c.dtype, {c.B, c.Nk, c.Hkv, c.D}, c.layout);
  HostTensor dv(c.dtype, {c.B, c.Nk, c.Hkv, c.D}, c.layout);
  dq.poison();
  dk.poison();
  dv.poison();
  linear_backward(in.q.view, in.k.view, in.v.view, in.dout.view, dq.view, dk.view, dv.view, in.p);
  const ref::LinearGrads r = ref::linear_backward(in.q.view, in.k.view, in.v.view, in.dout.view, in.p);
  const double tol = tolerance(c.dtype, true);
  expect_close(dq, r.dq, tol, c.name + " dq");
  expect_close(dk, r.dk, tol, c.name + " dk");
  expect_close(dv, r.dv, tol, c.name + " dv");
}

TEST_P(Linear, StepsEqualCausalForward) {
  Case c = GetParam();
  if (c.dtype != DType::f32 || c.Nq != c.Nk) GTEST_SKIP() << "steps are checked on f32 self-attention cases";
  c.causal = true;
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name) ^ 2);
  Inputs in = make_inputs(c, rng);
  HostTensor full(c.dtype, {c.B, c.Nq, c.Hq, c.D});
  linear_forward(in.q.view, in.k.view, in.v.view, full.view, in.p);
  HostTensor stepped(c.dtype, {c.B, c.Nq, c.Hq, c.D});
  stepped.poison();
  LinearState state(c.B, c.Hkv, c.D, in.p);
  auto at = [](const HostTensor& t, int64_t s) {  // [B, H, D] view of token s
    const TensorView& v = t.view;
    return TensorView(static_cast<float*>(v.data) + s * v.strides[1], DType::f32, {v.shape[0], v.shape[2], v.shape[3]},
                      {v.strides[0], v.strides[2], v.strides[3]});
  };
  for (int64_t s = 0; s < c.Nq; ++s) linear_step(state, at(in.q, s), at(in.k, s), at(in.v, s), at(stepped, s));
  EXPECT_EQ(state.tokens(), c.Nq);
  std::vector<double> ref(full.numel());
  for (int64_t i = 0; i < full.numel(); ++i) ref[i] = full.get(i);
  expect_close(stepped, ref, tolerance(c.dtype, false), c.name + " steps");

  // The same steps on a state the caller keeps (KVCache::state in a decoder).
  HostTensor outside(c.dtype, {c.B, c.Nq, c.Hq, c.D});
  outside.poison();
  std::vector<float> st(static_cast<size_t>(linear_state_floats(c.B, c.Hkv, c.D, in.p)), 0.0f);
  for (int64_t s = 0; s < c.Nq; ++s) linear_step(st, in.p, at(in.q, s), at(in.k, s), at(in.v, s), at(outside, s));
  expect_close(outside, ref, tolerance(c.dtype, false), c.name + " steps on a caller's state");
}

INSTANTIATE_TEST_SUITE_P(Cases, Linear, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

TEST(Linear, LongCausalSequenceStaysFinite) {
  // 4096 tokens with large inputs: the state sums grow with N but stay far from overflow.
  std::mt19937_64 rng(test_seed() ^ 77);
  for (FeatureMap map : {FeatureMap::elu_plus_one, FeatureMap::relu, FeatureMap::favor_plus}) {
    Case c{.name = to_string(map), .Nq = 4096, .Nk = 4096, .Hq = 1, .Hkv = 1, .D = 32, .map = map, .m = 64,
           .causal = true, .input_scale = 3};
    Inputs in = make_inputs(c, rng);
    HostTensor out(DType::f32, {1, c.Nq, 1, c.D});
    out.poison();
    linear_forward(in.q.view, in.k.view, in.v.view, out.view, in.p);
    int64_t bad = 0;
    for (int64_t i = 0; i < out.numel(); ++i) bad += !std::isfinite(out.get(i));
    EXPECT_EQ(bad, 0) << c.name;
  }
}

TEST(RandomFeatures, OrthogonalBlocksDeterministicAndRedrawable) {
  const int64_t D = 16, m = 40;
  RandomFeatures a(D, m, 123), b(D, m, 123);
  EXPECT_EQ(a.matrix(), b.matrix());
  const auto& w = a.matrix();
  for (int64_t i = 0; i < D; ++i) {  // rows of one block are orthogonal
    for (int64_t j = 0; j < i; ++j) {
      double dot = 0, ni = 0, nj = 0;
      for (int64_t d = 0; d < D; ++d) {
        dot += w[i * D + d] * w[j * D + d];
        ni += w[i * D + d] * w[i * D + d];
        nj += w[j * D + d] * w[j * D + d];
      }
      EXPECT_LT(std::abs(dot) / std::sqrt(ni * nj), 1e-5) << i << ", " << j;
    }
  }
  b.redraw(124);
  EXPECT_NE(a.matrix(), b.matrix());
  EXPECT_EQ(b.seed(), 124u);
  b.redraw(123);
  EXPECT_EQ(a.matrix(), b.matrix());
}

// Every rejected call names the argument in its message.
void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected an attnkit::Error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Linear, BadArgumentsThrow) {
  HostTensor q(DType::f32, {1, 8, 2, 16}), k(DType::f32, {1, 8, 2, 16}), v(DType::f32, {1, 8, 2, 16}),
      out(DType::f32, {1, 8, 2, 16});
  HostTensor k9(DType::f32, {1, 9, 2, 16}), k3h(DType::f32, {1, 8, 3, 16}), kd(DType::f32, {1, 8, 2, 8}),
      qbf(DType::bf16, {1, 8, 2, 16}), q3(DType::f32, {8, 2, 16});
  const LinearAttentionParams causal{.causal = true};
  const auto fwd = [&](const TensorView& a, const TensorView& b, const TensorView& c, const TensorView& o,
                       const LinearAttentionParams& p) { return [=] { linear_forward(a, b, c, o, p); }; };
  expect_error(fwd(q.view, kd.view, v.view, out.view, {}), "k: expected shape");
  expect_error(fwd(q.view, k3h.view, k3h.view, out.view, {}), "k: expected a number of heads");
  expect_error(fwd(q.view, k9.view, k9.view, out.view, causal), "k: causal linear attention");
  expect_error(fwd(q.view, k.view, k9.view, out.view, {}), "v: expected shape");
  expect_error(fwd(qbf.view, k.view, v.view, out.view, {}), "k: expected dtype");
  expect_error(fwd(q3.view, k.view, v.view, out.view, {}), "q: expected 4 dimensions");
  expect_error(fwd(q.view, k.view, v.view, q.view, {}), "out: expected memory disjoint from q");
  expect_error(fwd(q.view, k.view, v.view, k9.view, {}), "out: expected shape");
  TensorView neg = q.view;
  neg.shape[1] = -3;
  expect_error(fwd(neg, k.view, v.view, out.view, {}), "q: expected every size to be positive");
  expect_error(fwd(q.view, k.view, v.view, out.view, {.feature_map = FeatureMap::favor_plus}), "params.features");
  RandomFeatures rf8(8, 16, 1);
  expect_error(fwd(q.view, k.view, v.view, out.view, {.feature_map = FeatureMap::favor_plus, .features = &rf8}),
               "params.features: expected random features of head_dim 16");
  expect_error(fwd(q.view, k.view, v.view, out.view, {.scale = -1.0f}), "params.scale");
  expect_error(fwd(q.view, k.view, v.view, out.view, {.eps = -1.0f}), "params.eps");
  expect_error([] { RandomFeatures(16, 0, 1); }, "num_features (m): expected 1..");
  expect_error([] { RandomFeatures(0, 8, 1); }, "head_dim: expected");
  expect_error([&] { linear_backward(q.view, k.view, v.view, out.view, q.view, k.view, v.view); },
               "dq: expected memory disjoint from q");
  expect_error([&] { linear_backward(q.view, k.view, v.view, k9.view, out.view, k.view, v.view); },
               "dout: expected shape");
  expect_error([] { LinearState(1, 0, 16, {}); }, "heads_kv: expected >= 1");
  LinearState st(1, 2, 16, {});
  HostTensor t(DType::f32, {1, 2, 16}), t2(DType::f32, {1, 2, 16}), t3(DType::f32, {1, 3, 16}),
      o(DType::f32, {1, 2, 16});
  expect_error([&] { linear_step(st, t.view, t3.view, t3.view, o.view); }, "k: expected shape");
  expect_error([&] { linear_step(st, t3.view, t.view, t2.view, t3.view); }, "q: expected a multiple");
  expect_error([&] { linear_step(st, t.view, t.view, t2.view, t.view); }, "out: expected memory disjoint");
  std::vector<float> small(7);
  expect_error([&] { linear_step(small, {}, t.view, t.view, t.view, o.view); }, "state: expected");
  expect_error([] { linear_state_floats(1, 0, 16, {}); }, "expected batch, heads_kv, head_dim >= 1");
  EXPECT_EQ(st.tokens(), 0);
}

}  // namespace
}  // namespace attnkit::test
