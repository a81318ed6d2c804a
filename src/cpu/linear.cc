// Linear attention entry points (include/attnkit/linear.h): validation, the FAVOR+ random
// features, dispatch to the chunked kernels (linear_fwd.cc, linear_bwd.cc), and the streaming
// step, which is O(F·D) per token and head and allocates nothing after the state is built.
#include "attnkit/linear.h"

#include <fmt/format.h>

#include <cmath>
#include <random>
#include <span>
#include <vector>

#include "attnkit/error.h"
#include "core/problem.h"
#include "cpu/linear_checks.h"
#include "cpu/linear_kernels.h"

namespace attnkit {

const char* to_string(FeatureMap f) {
  switch (f) {
    case FeatureMap::elu_plus_one: return "elu_plus_one";
    case FeatureMap::relu: return "relu";
    case FeatureMap::favor_plus: return "favor_plus";
  }
  return "?";
}

namespace {

constexpr int64_t kMaxFeatures = 1 << 16;
constexpr int64_t kMaxHeadDim = 256;

void check_map(const LinearAttentionParams& p, int64_t head_dim) {
  if (p.feature_map > FeatureMap::favor_plus) {
    throw Error(fmt::format("params.feature_map: expected elu_plus_one, relu or favor_plus, given value {}",
                            static_cast<int>(p.feature_map)));
  }
  if (head_dim > kMaxHeadDim) {
    throw Error(fmt::format("q: expected head_dim in 1..{}, given {}", kMaxHeadDim, head_dim));
  }
  if (p.feature_map == FeatureMap::favor_plus) {
    if (p.features == nullptr) {
      throw Error("params.features: expected RandomFeatures for the favor_plus feature map, given nullptr");
    }
    if (p.features->head_dim() != head_dim) {
      throw Error(fmt::format("params.features: expected random features of head_dim {} (the head_dim of q), "
                              "given head_dim {}",
                              head_dim, p.features->head_dim()));
    }
  }
  if (p.scale && !(std::isfinite(*p.scale) && *p.scale > 0)) {
    throw Error(fmt::format("params.scale: expected a finite positive number, given {}", *p.scale));
  }
  if (!(std::isfinite(p.eps) && p.eps >= 0)) {
    throw Error(fmt::format("params.eps: expected a finite number >= 0, given {}", p.eps));
  }
}

cpu::LinearProblem make_problem(const TensorView& q, const TensorView& k, const TensorView& v,
                                const LinearAttentionParams& p) {
  lin::check_view(q, "q", 4);
  lin::check_view(k, "k", 4);
  lin::check_view(v, "v", 4);
  check_dtype(k, "k", q.dtype, "the dtype of q");
  check_dtype(v, "v", q.dtype, "the dtype of q");
  cpu::LinearProblem pr;
  pr.batch = q.shape[0];
  pr.seq_q = q.shape[1];
  pr.heads_q = q.shape[2];
  pr.head_dim = q.shape[3];
  pr.seq_k = k.shape[1];
  pr.heads_kv = k.shape[2];
  check_map(p, pr.head_dim);
  check_shape(k, "k", {pr.batch, pr.seq_k, pr.heads_kv, pr.head_dim}, "batch and head_dim of q");
  check_shape(v, "v", {pr.batch, pr.seq_k, pr.heads_kv, pr.head_dim}, "the shape of k");
  if (pr.heads_q % pr.heads_kv != 0) {
    throw Error(fmt::format("k: expected a number of heads that divides q's {} heads (grouped-query attention), "
                            "given {}",
                            pr.heads_q, pr.heads_kv));
  }
  if (p.causal && pr.seq_q != pr.seq_k) {
    throw Error(fmt::format("k: causal linear attention expects as many keys as queries ({}), given {}", pr.seq_q,
                            pr.seq_k));
  }
  pr.features = feature_dim(p, pr.head_dim);
  pr.map = p.feature_map;
  pr.eps = p.eps;
  pr.causal = p.causal;
  const float scale = p.scale ? *p.scale : 1.0f / std::sqrt(static_cast<float>(pr.head_dim));
  pr.xscale = std::sqrt(scale);
  if (p.feature_map == FeatureMap::favor_plus) pr.w = p.features->matrix().data();
  return pr;
}

// Features of one row x[0..D) into phi[0..F) (the step's scalar form of linear_features-inl.h).
void row_features(const LinearAttentionParams& p, float xscale, const float* x, int64_t D, int64_t F, float* xs,
                  float* phi) {
  switch (p.feature_map) {
    case FeatureMap::elu_plus_one:
      for (int64_t d = 0; d < D; ++d) phi[d] = x[d] > 0 ? x[d] + 1.0f : std::exp(x[d]);
      return;
    case FeatureMap::relu:
      for (int64_t d = 0; d < D; ++d) phi[d] = x[d] > 0 ? x[d] : 0.0f;
      return;
    case FeatureMap::favor_plus: {
      float sq = 0.0f;
      for (int64_t d = 0; d < D; ++d) {
        xs[d] = xscale * x[d];
        sq += xs[d] * xs[d];
      }
      const float off = 0.5f * sq + 0.5f * std::log(static_cast<float>(F));
      const float* w = p.features->matrix().data();
      for (int64_t f = 0; f < F; ++f) {
        float proj = 0.0f;
        for (int64_t d = 0; d < D; ++d) proj += w[f * D + d] * xs[d];
        phi[f] = std::exp(proj - off);
      }
      return;
    }
  }
}

}  // namespace

RandomFeatures::RandomFeatures(int64_t head_dim, int64_t num_features, uint64_t seed)
    : head_dim_(head_dim), num_features_(num_features), seed_(seed) {
  if (head_dim <= 0 || head_dim > kMaxHeadDim) {
    throw Error(fmt::format("RandomFeatures: head_dim: expected 1..{}, given {}", kMaxHeadDim, head_dim));
  }
  if (num_features <= 0 || num_features > kMaxFeatures) {
    throw Error(fmt::format("RandomFeatures: num_features (m): expected 1..{}, given {}", kMaxFeatures, num_features));
  }
  redraw(seed);
}

void RandomFeatures::redraw(uint64_t seed) {
  seed_ = seed;
  const int64_t D = head_dim_, m = num_features_;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  w_.assign(m * D, 0.0f);
  std::vector<double> block(D * D);
  for (int64_t f0 = 0; f0 < m; f0 += D) {
    // D orthonormal rows by modified Gram–Schmidt on a Gaussian matrix (full rank almost surely).
    for (double& x : block) x = normal(rng);
    for (int64_t i = 0; i < D; ++i) {
      double* bi = &block[i * D];
      for (int64_t j = 0; j < i; ++j) {
        const double* bj = &block[j * D];
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += bi[d] * bj[d];
        for (int64_t d = 0; d < D; ++d) bi[d] -= dot * bj[d];
      }
      double nrm = 0;
      for (int64_t d = 0; d < D; ++d) nrm += bi[d] * bi[d];
      nrm = std::sqrt(nrm);
      for (int64_t d = 0; d < D; ++d) bi[d] /= nrm;
    }
    // Row norms from the chi(D) distribution: the norm of an independent Gaussian vector.
    for (int64_t i = 0; i < D && f0 + i < m; ++i) {
      double len = 0;
      for (int64_t d = 0; d < D; ++d) {
        const double g = normal(rng);
        len += g * g;
      }
      len = std::sqrt(len);
      for (int64_t d = 0; d < D; ++d) w_[(f0 + i) * D + d] = static_cast<float>(len * block[i * D + d]);
    }
  }
}

int64_t feature_dim(const LinearAttentionParams& params, int64_t head_dim) {
  if (params.feature_map == FeatureMap::favor_plus && params.features) return params.features->num_features();
  return head_dim;
}

void linear_forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                    const LinearAttentionParams& params) {
  const cpu::LinearProblem pr = make_problem(q, k, v, params);
  lin::check_view(out, "out", 4);
  check_dtype(out, "out", q.dtype, "the dtype of q");
  check_shape(out, "out", {pr.batch, pr.seq_q, pr.heads_q, pr.head_dim}, "the shape of q");
  lin::check_output(out, "out", {{&q, "q"}, {&k, "k"}, {&v, "v"}});
  cpu::linear_fwd(pr, q, k, v, out);
}

void linear_backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
                     const TensorView& dq, const TensorView& dk, const TensorView& dv,
                     const LinearAttentionParams& params) {
  const cpu::LinearProblem pr = make_problem(q, k, v, params);
  lin::check_view(dout, "dout", 4);
  check_dtype(dout, "dout", q.dtype, "the dtype of q");
  check_shape(dout, "dout", {pr.batch, pr.seq_q, pr.heads_q, pr.head_dim}, "the shape of q");
  for (auto [g, name] : {std::pair{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}}) {
    lin::check_view(*g, name, 4);
    check_dtype(*g, name, q.dtype, "the dtype of q");
  }
  check_shape(dq, "dq", {pr.batch, pr.seq_q, pr.heads_q, pr.head_dim}, "the shape of q");
  check_shape(dk, "dk", {pr.batch, pr.seq_k, pr.heads_kv, pr.head_dim}, "the shape of k");
  check_shape(dv, "dv", {pr.batch, pr.seq_k, pr.heads_kv, pr.head_dim}, "the shape of v");
  lin::check_output(dq, "dq", {{&q, "q"}, {&k, "k"}, {&v, "v"}, {&dout, "dout"}, {&dk, "dk"}, {&dv, "dv"}});
  lin::check_output(dk, "dk", {{&q, "q"}, {&k, "k"}, {&v, "v"}, {&dout, "dout"}, {&dv, "dv"}});
  lin::check_output(dv, "dv", {{&q, "q"}, {&k, "k"}, {&v, "v"}, {&dout, "dout"}});
  cpu::linear_bwd(pr, q, k, v, dout, dq, dk, dv);
}

LinearState::LinearState(int64_t batch, int64_t heads_kv, int64_t head_dim, const LinearAttentionParams& params)
    : batch_(batch), heads_kv_(heads_kv), head_dim_(head_dim), params_(params) {
  if (batch <= 0) throw Error(fmt::format("LinearState: batch: expected >= 1, given {}", batch));
  if (heads_kv <= 0) throw Error(fmt::format("LinearState: heads_kv: expected >= 1, given {}", heads_kv));
  if (head_dim <= 0) throw Error(fmt::format("LinearState: head_dim: expected >= 1, given {}", head_dim));
  check_map(params, head_dim);
  params_.causal = true;
  features_ = feature_dim(params, head_dim);
  s_.assign(batch * heads_kv * features_ * head_dim, 0.0f);
  z_.assign(batch * heads_kv * features_, 0.0f);
  scratch_.assign(2 * features_ + 3 * head_dim, 0.0f);
}

void LinearState::reset() {
  std::fill(s_.begin(), s_.end(), 0.0f);
  std::fill(z_.begin(), z_.end(), 0.0f);
  tokens_ = 0;
}

namespace {

// One step of causal linear attention on the state (S : [B, Hkv, F, D], z : [B, Hkv, F]).
void step_state(const LinearAttentionParams& p, int64_t B, int64_t Hkv, int64_t D, int64_t F, float* s_all,
                float* z_all, float* scratch, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& out) {
  lin::check_view(q, "q", 3);
  lin::check_view(k, "k", 3);
  lin::check_view(v, "v", 3);
  lin::check_view(out, "out", 3);
  for (auto [t, name] : {std::pair{&k, "k"}, {&v, "v"}, {&out, "out"}}) check_dtype(*t, name, q.dtype, "the dtype of q");
  const int64_t Hq = q.shape[1];
  check_shape(q, "q", {B, Hq, D}, "[batch, heads_q, head_dim] of the state");
  check_shape(k, "k", {B, Hkv, D}, "[batch, heads_kv, head_dim] of the state");
  check_shape(v, "v", {B, Hkv, D}, "[batch, heads_kv, head_dim] of the state");
  check_shape(out, "out", {B, Hq, D}, "the shape of q");
  if (Hq % Hkv != 0) {
    throw Error(fmt::format("q: expected a multiple of the state's {} KV heads, given {} heads", Hkv, Hq));
  }
  lin::check_output(out, "out", {{&q, "q"}, {&k, "k"}, {&v, "v"}});
  const float scale = p.scale ? *p.scale : 1.0f / std::sqrt(static_cast<float>(D));
  const float xscale = std::sqrt(scale);
  float* phk = scratch;
  float* phq = phk + F;
  float* x = phq + F;
  float* xs = x + D;
  float* vv = xs + D;
  const int64_t G = Hq / Hkv;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t hk = 0; hk < Hkv; ++hk) {
      float* S = s_all + (b * Hkv + hk) * F * D;  // [F][D]
      float* z = z_all + (b * Hkv + hk) * F;      // [F]
      for (int64_t d = 0; d < D; ++d) {
        x[d] = load_f32(k, b * k.strides[0] + hk * k.strides[1] + d * k.strides[2]);
        vv[d] = load_f32(v, b * v.strides[0] + hk * v.strides[1] + d * v.strides[2]);
      }
      row_features(p, xscale, x, D, F, xs, phk);
      for (int64_t f = 0; f < F; ++f) {
        z[f] += phk[f];
        for (int64_t d = 0; d < D; ++d) S[f * D + d] += phk[f] * vv[d];
      }
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = hk * G + g;
        for (int64_t d = 0; d < D; ++d) x[d] = load_f32(q, b * q.strides[0] + h * q.strides[1] + d * q.strides[2]);
        row_features(p, xscale, x, D, F, xs, phq);
        float den = p.eps;
        for (int64_t d = 0; d < D; ++d) vv[d] = 0.0f;
        for (int64_t f = 0; f < F; ++f) {
          den += phq[f] * z[f];
          for (int64_t d = 0; d < D; ++d) vv[d] += phq[f] * S[f * D + d];
        }
        for (int64_t d = 0; d < D; ++d) {
          store_f32(out, b * out.strides[0] + h * out.strides[1] + d * out.strides[2], vv[d] / den);
        }
      }
    }
  }
}

}  // namespace

void linear_step(LinearState& st, const TensorView& q, const TensorView& k, const TensorView& v,
                 const TensorView& out) {
  step_state(st.params_, st.batch_, st.heads_kv_, st.head_dim_, st.features_, st.s_.data(), st.z_.data(),
             st.scratch_.data(), q, k, v, out);
  ++st.tokens_;
}

int64_t linear_state_floats(int64_t batch, int64_t heads_kv, int64_t head_dim, const LinearAttentionParams& params) {
  if (batch <= 0 || heads_kv <= 0 || head_dim <= 0) {
    throw Error(fmt::format("linear_state_floats: expected batch, heads_kv, head_dim >= 1, given {}, {}, {}", batch,
                            heads_kv, head_dim));
  }
  check_map(params, head_dim);
  return batch * heads_kv * feature_dim(params, head_dim) * (head_dim + 1);
}

void linear_step(std::span<float> state, const LinearAttentionParams& params, const TensorView& q, const TensorView& k,
                 const TensorView& v, const TensorView& out) {
  lin::check_view(k, "k", 3);
  const int64_t B = k.shape[0], Hkv = k.shape[1], D = k.shape[2];
  const int64_t need = linear_state_floats(B, Hkv, D, params), F = feature_dim(params, D);
  if (static_cast<int64_t>(state.size()) != need) {
    throw Error(fmt::format("linear_step: state: expected {} floats (S and z of {} × {} heads, {} features, head_dim "
                            "{}), given {}",
                            need, B, Hkv, F, D, state.size()));
  }
  std::vector<float> scratch(static_cast<size_t>(2 * F + 3 * D));
  step_state(params, B, Hkv, D, F, state.data(), state.data() + B * Hkv * F * D, scratch.data(), q, k, v, out);
}

double linear_attention_fwd_flops(int64_t batch, int64_t seq, int64_t heads_q, int64_t head_dim, int64_t features,
                                  bool causal) {
  const double heads = static_cast<double>(batch) * static_cast<double>(heads_q);
  double per_head = 4.0 * static_cast<double>(seq) * static_cast<double>(features) * static_cast<double>(head_dim);
  if (causal) {
    double pairs = 0;
    for (int64_t t0 = 0; t0 < seq; t0 += cpu::kLinearChunk) {
      const double n = static_cast<double>(std::min(cpu::kLinearChunk, seq - t0));
      pairs += n * (n + 1) / 2;
    }
    per_head += 2.0 * static_cast<double>(features + head_dim) * pairs;
  }
  return heads * per_head;
}

}  // namespace attnkit
