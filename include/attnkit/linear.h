// Kernelized linear attention (Katharopoulos et al. 2020; Performer, Choromanski et al. 2021).
//
//   out_i = Σ_j (φ(q_i)·φ(k_j)) v_j  /  (Σ_j φ(q_i)·φ(k_j) + eps)
//
// over all keys j, or j <= i when causal. Because φ(q_i)·φ(k_j) factors, the sums are
// φ(q_i)ᵀ S and φ(q_i)·z with S = Σ_j φ(k_j) v_jᵀ (F × D) and z = Σ_j φ(k_j) (F): O(N·F·D)
// instead of O(N²·D). The causal form is computed chunk-wise: exact (quadratic) within a
// chunk of 64 rows, the carried state (S, z) between chunks.
//
// Feature maps φ, F features:
//   elu_plus_one  φ(x) = elu(x) + 1                          F = head_dim
//   relu          φ(x) = max(x, 0)                           F = head_dim
//   favor_plus    φ(x) = exp(W x' − |x'|²/2) / √m,  x' = √scale · x,   F = m
//                 W: m positive orthogonal random features (RandomFeatures), so that
//                 E[φ(q)·φ(k)] = exp(scale · q·k): an unbiased estimate of softmax attention.
//
// Layouts (strides free, in elements), as for exact attention:
//   q, out, dq, dout : [B, Nq, Hq, D]
//   k, v, dk, dv     : [B, Nk, Hkv, D]      Hq a multiple of Hkv (GQA / MQA)
// Causal requires Nq == Nk. Storage f32, bf16 or f16; arithmetic f32.
//
// Streaming: LinearState carries (S, z) per (batch, KV head), F·(D + 1) floats, so that a
// token costs O(F·D) time and no memory beyond the state; linear_step's outputs equal the
// causal full-sequence outputs.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "attnkit/tensor.h"

namespace attnkit {

enum class FeatureMap : uint8_t { elu_plus_one, relu, favor_plus };
const char* to_string(FeatureMap f);

// FAVOR+ positive orthogonal random features: m rows of dimension head_dim, drawn in blocks of
// head_dim mutually orthogonal directions (Gram–Schmidt of a Gaussian matrix), each row's norm
// drawn from the chi distribution with head_dim degrees of freedom, so every row is marginally
// N(0, I). Deterministic for a given seed; redraw() replaces them (Performer redraws during
// training).
class RandomFeatures {
 public:
  RandomFeatures(int64_t head_dim, int64_t num_features, uint64_t seed);
  void redraw(uint64_t seed);

  int64_t head_dim() const { return head_dim_; }
  int64_t num_features() const { return num_features_; }
  uint64_t seed() const { return seed_; }
  const std::vector<float>& matrix() const { return w_; }  // [num_features][head_dim]

 private:
  int64_t head_dim_, num_features_;
  uint64_t seed_;
  std::vector<float> w_;
};

struct LinearAttentionParams {
  FeatureMap feature_map = FeatureMap::elu_plus_one;
  const RandomFeatures* features = nullptr;  // required by favor_plus, its head_dim = D
  std::optional<float> scale;  // favor_plus only: the softmax scale approximated, default 1/√D
  bool causal = false;
  float eps = 1e-6f;  // added to the denominator (ReLU features may sum to 0)
};

// Features per head for these parameters (D or m).
int64_t feature_dim(const LinearAttentionParams& params, int64_t head_dim);

// Writes out. Throws attnkit::Error before touching any data when the arguments do not fit.
void linear_forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                    const LinearAttentionParams& params = {});

// Gradients of sum(out · dout) with respect to q, k and v (the forward is recomputed).
void linear_backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
                     const TensorView& dq, const TensorView& dk, const TensorView& dv,
                     const LinearAttentionParams& params = {});

// The carried state of causal linear attention for streaming generation: S : [B, Hkv, F, D]
// and z : [B, Hkv, F], plus per-step scratch, all allocated once here.
class LinearState {
 public:
  // params must outlive the state when it points at RandomFeatures; params.causal is implied.
  LinearState(int64_t batch, int64_t heads_kv, int64_t head_dim, const LinearAttentionParams& params);
  void reset();  // back to the empty prefix

  int64_t batch() const { return batch_; }
  int64_t heads_kv() const { return heads_kv_; }
  int64_t head_dim() const { return head_dim_; }
  int64_t features() const { return features_; }
  int64_t tokens() const { return tokens_; }  // steps taken since construction or reset
  const LinearAttentionParams& params() const { return params_; }

 private:
  friend void linear_step(LinearState&, const TensorView&, const TensorView&, const TensorView&,
                          const TensorView&);
  int64_t batch_, heads_kv_, head_dim_, features_, tokens_ = 0;
  LinearAttentionParams params_;
  std::vector<float> s_, z_;  // [B, Hkv, F, D], [B, Hkv, F]
  std::vector<float> scratch_;
};

// One token: q, out : [B, Hq, D]; k, v : [B, Hkv, D]. Adds (k, v) to the state, then attends.
void linear_step(LinearState& state, const TensorView& q, const TensorView& k, const TensorView& v,
                 const TensorView& out);

// The same step on a state the caller keeps (a decoder's per-sequence cache, KVCache::state):
// S : [B, Hkv, F, D] then z : [B, Hkv, F], linear_state_floats(B, Hkv, D, params) floats, all
// zero for the empty prefix. B, Hkv and D are read from k. params.causal is implied.
int64_t linear_state_floats(int64_t batch, int64_t heads_kv, int64_t head_dim, const LinearAttentionParams& params);
void linear_step(std::span<float> state, const LinearAttentionParams& params, const TensorView& q, const TensorView& k,
                 const TensorView& v, const TensorView& out);

// FLOPs of the forward pass (multiply-add = 2), counting only what the math needs: the
// feature-space products 4·N·F·D per head plus, when causal, the within-chunk pairs
// (j <= i in a chunk of 64) at 2·(F + D) each. Feature maps are not counted.
double linear_attention_fwd_flops(int64_t batch, int64_t seq, int64_t heads_q, int64_t head_dim,
                                  int64_t features, bool causal);

}  // namespace attnkit
