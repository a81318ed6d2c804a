// float64 reference for kernelized linear attention, written from the definition in its
// explicit O(N²) form: every a_ij = φ(q_i)·φ(k_j) is formed, no state, no chunks.
// Results are dense and contiguous: out, dq : [B, Nq, Hq, D]; dk, dv : [B, Nk, Hkv, D].
#pragma once

#include <vector>

#include "attnkit/linear.h"

namespace attnkit::ref {

struct LinearGrads {
  std::vector<double> dq, dk, dv;
};

// The arguments must already be valid (the tests validate through the public API).
std::vector<double> linear_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                                   const LinearAttentionParams& p);
LinearGrads linear_backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
                            const LinearAttentionParams& p);

// φ(x) for one row in float64 (exposed for the approximation study and the step tests).
std::vector<double> linear_features(const LinearAttentionParams& p, const std::vector<double>& x);

}  // namespace attnkit::ref
