// CPU attention kernels, called by the dispatcher (src/core/attention.cc) after validation.
#pragma once

#include "core/problem.h"

namespace attnkit::cpu {

// Query and key tile sizes of the flash kernels; columns are padded to kColAlign floats.
inline constexpr int64_t kColAlign = 32;
inline int64_t pad_cols(int64_t n) { return (n + kColAlign - 1) / kColAlign * kColAlign; }

void flash_fwd(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& lse);
void flash_bwd(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& dout, const TensorView& lse, const TensorView& dq,
               const TensorView& dk, const TensorView& dv);

void naive_fwd(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& lse);
void naive_bwd(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& dout, const TensorView& lse, const TensorView& dq,
               const TensorView& dk, const TensorView& dv);

}  // namespace attnkit::cpu
