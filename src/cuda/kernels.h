// The CUDA backend's entry points, called by src/core/attention.cc after validation.
// Host-only declarations: no CUDA headers, so the dispatcher compiles with the C++ compiler.
#pragma once

#include "attnkit/attention.h"
#include "core/problem.h"
#include "cuda/flash_params.h"

namespace attnkit::cuda {

// Flash attention on Hopper (sm_90a build); bf16 / f16 storage, f32 accumulation, head_dim
// 64, 128 or 256. Asynchronous on params.stream. Throws attnkit::Error for calls it does not
// support (and std::runtime_error if the CUDA runtime reports an error at launch).
void flash_fwd(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& lse, const AttentionParams& params);
void flash_bwd(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& dout, const TensorView& lse, const TensorView& dq,
               const TensorView& dk, const TensorView& dv, const AttentionParams& params);

}  // namespace attnkit::cuda
