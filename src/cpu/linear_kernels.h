// Linear attention CPU kernels and their validated problem, called by src/cpu/linear.cc.
#pragma once

#include <cstdint>

#include "attnkit/linear.h"
#include "attnkit/tensor.h"

namespace attnkit::cpu {

// Rows per chunk of the causal form (exact within a chunk, carried state between chunks).
inline constexpr int64_t kLinearChunk = 64;

struct LinearProblem {
  int64_t batch = 0, seq_q = 0, seq_k = 0;
  int64_t heads_q = 0, heads_kv = 0, head_dim = 0;
  int64_t features = 0;  // F
  FeatureMap map = FeatureMap::elu_plus_one;
  float xscale = 1.0f;  // favor_plus: x' = xscale · x, xscale = √scale
  float eps = 1e-6f;
  bool causal = false;
  const float* w = nullptr;  // favor_plus: [F][D]

  int64_t group() const { return heads_q / heads_kv; }
};

void linear_fwd(const LinearProblem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& out);
void linear_bwd(const LinearProblem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv);

}  // namespace attnkit::cpu
