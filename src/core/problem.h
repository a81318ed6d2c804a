// The validated shape of one attention call, shared by every backend.
//
// validate_forward / validate_backward check the public arguments (before any data is touched)
// and reduce them to a Problem: sizes, scale, masking, and the list of sequences, each with its
// batch index and its offsets along the seq axis, so that fixed-length and packed
// variable-length batches are walked by the same loops.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "attnkit/attention.h"
#include "attnkit/tensor.h"

namespace attnkit {

struct Sequence {
  int64_t batch;   // index along B
  int64_t q0, nq;  // rows [q0, q0 + nq) along the seq axis of q / out / lse
  int64_t k0, nk;  // rows [k0, k0 + nk) along the seq axis of k / v
};

struct Problem {
  int64_t batch = 0, seq_q = 0, seq_k = 0;  // seq_* are the packed lengths when varlen
  int64_t heads_q = 0, heads_kv = 0, head_dim = 0;
  Device device = Device::cpu;  // where every tensor of the call lives
  float scale = 1.0f;
  float softcap = 0.0f;
  bool causal = false;
  const Mask* mask = nullptr;
  std::vector<Sequence> seqs;

  int64_t group() const { return heads_q / heads_kv; }  // query heads per KV head
  // Causal: the last key that query row i (within its sequence) may see, as an exclusive end.
  static int64_t causal_end(int64_t i, int64_t nq, int64_t nk) { return i + 1 + (nk - nq); }
};

Problem validate_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                         const TensorView& out, const AttentionParams& p, const TensorView& lse);
Problem validate_backward(const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& out, const TensorView& dout, const TensorView& lse,
                          const TensorView& dq, const TensorView& dk, const TensorView& dv,
                          const AttentionParams& p);

// The CUDA backward's workspace starts with delta = rowsum(dout ∘ out), [B, Hq, Sq] f32, padded
// to 256 bytes; the f32 dQ accumulator follows (backward_workspace_bytes).
inline int64_t backward_delta_bytes(int64_t batch, int64_t seq_q, int64_t heads_q) {
  return (batch * seq_q * heads_q * 4 + 255) / 256 * 256;
}

// Element offset of [b, s, h, d] in a BSHD view.
inline int64_t offset4(const TensorView& t, int64_t b, int64_t s, int64_t h, int64_t d) {
  return b * t.strides[0] + s * t.strides[1] + h * t.strides[2] + d * t.strides[3];
}
// Element offset of [b, h, s] in an LSE view.
inline int64_t offset3(const TensorView& t, int64_t b, int64_t h, int64_t s) {
  return b * t.strides[0] + h * t.strides[1] + s * t.strides[2];
}

// The data of an f32 view (already checked to be f32), for kernels that index it themselves.
inline const float* fptr(const TensorView& t) { return static_cast<const float*>(t.data); }
inline float* fptr_mut(const TensorView& t) { return static_cast<float*>(t.data); }

float load_f32(const TensorView& t, int64_t offset);
void store_f32(const TensorView& t, int64_t offset, float x);

}  // namespace attnkit
