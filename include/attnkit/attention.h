// Exact attention: out = softmax(scale · Q Kᵀ [+ mask]) V, forward and backward.
//
// Layouts (strides free, in elements):
//   q, out, dq, dout : [B, Nq, Hq, D]
//   k, v, dk, dv     : [B, Nk, Hkv, D]      Hq a multiple of Hkv (GQA / MQA)
//   lse              : [B, Hq, Nq] f32      natural log of each row's softmax denominator
// Causal masking is aligned to the bottom-right corner: query i attends key j when
// j <= i + (Nk - Nq). A row whose keys are all masked gives output 0 and LSE = -inf.
// Variable-length batches: B = 1, the sequences packed back to back along the seq axis, and
// cu_seqlens_q / cu_seqlens_k hold num_seqs + 1 offsets into it (empty sequences allowed);
// lse is then [1, Hq, total_q].
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "attnkit/tensor.h"

namespace attnkit {

class Mask;  // mask.h: sparse patterns compiled into block layouts

enum class Algorithm : uint8_t {
  automatic,  // the fastest algorithm that supports the call
  reference,  // float64, written for clarity: the ground truth
  naive,      // materializes the Nq×Nk scores (O(N²) memory) with BLAS GEMMs
  flash,      // tiled online softmax, O(N) extra memory
};
const char* to_string(Algorithm a);

struct AttentionParams {
  std::optional<float> scale;  // default 1/sqrt(head_dim)
  bool causal = false;
  float softcap = 0.0f;        // > 0: logits become softcap · tanh(logits / softcap)
  const Mask* mask = nullptr;  // optional sparsity pattern; nullptr is dense
  Algorithm algorithm = Algorithm::automatic;
  std::span<const int32_t> cu_seqlens_q;  // empty unless the batch is variable-length
  std::span<const int32_t> cu_seqlens_k;  // host memory, also for CUDA tensors (see below)

  // CUDA tensors (Device::cuda) only. The backend follows the tensors: all of them must live
  // on the current CUDA device. cu_seqlens stay host spans: they are validated on the host and
  // passed to the kernels by value (at most kMaxCudaVarlenSeqs sequences), so a call copies
  // nothing and allocates nothing. The call is asynchronous on `stream`.
  void* stream = nullptr;        // a cudaStream_t; nullptr is the legacy default stream
  void* workspace = nullptr;     // device memory for backward: backward_workspace_bytes()
  int64_t workspace_bytes = 0;   // size of `workspace`
  // Backward only: true gives bitwise reproducible gradients (dQ summed in a fixed order, by a
  // second pass over the keys, about 1.4x the backward's work); false (the default) lets dQ
  // be summed with floating-point atomics, whose order varies from run to run.
  bool deterministic = false;
};

inline constexpr int kMaxCudaVarlenSeqs = 1024;

// Device workspace (bytes) for the fastest backward of queries shaped like q; 0 for CPU tensors.
// Forward needs none. It holds delta ([B, Hq, Sq] f32) and an f32 dQ accumulator for the
// query heads of whole KV heads: all heads, or as many as fit in kBackwardDqAccBytes (so that
// a long sequence's extra memory stays O(N)), over which the backward then runs in groups. A
// smaller workspace runs smaller groups; one too small for the query heads of a single KV head
// (B·Sq·D·4 bytes each beyond delta) runs the deterministic pass; less than delta throws
// attnkit::Error.
inline constexpr int64_t kBackwardDqAccBytes = int64_t{256} << 20;
int64_t backward_workspace_bytes(const TensorView& q);

// Whether this build has the CUDA backend and a device of compute capability 9.0 is present.
bool cuda_available();

// Writes out (and lse when given). Throws attnkit::Error before touching any data when the
// arguments do not fit together.
void forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
             const AttentionParams& params = {}, const TensorView& lse = {});

// Gradients of sum(out · dout) with respect to q, k and v, from the forward's out and lse.
void backward(const TensorView& q, const TensorView& k, const TensorView& v,
              const TensorView& out, const TensorView& dout, const TensorView& lse,
              const TensorView& dq, const TensorView& dk, const TensorView& dv,
              const AttentionParams& params = {});

// Worker threads used by the CPU kernels; 0 restores the default (all hardware threads).
void set_num_threads(int n);
int num_threads();

}  // namespace attnkit
