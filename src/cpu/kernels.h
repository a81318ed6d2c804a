// CPU attention kernels, called by the dispatcher (src/core/attention.cc) after validation.
#pragma once

#include <cstdint>

#include "core/problem.h"

namespace attnkit::cpu {

// Query and key tile sizes of the flash kernels; columns are padded to kColAlign floats.
inline constexpr int64_t kColAlign = 32;
inline int64_t pad_cols(int64_t n) { return (n + kColAlign - 1) / kColAlign * kColAlign; }

// How the flash forward splits its work, how many packed key tiles a thread may hold and from
// which size it streams its output; the defaults suit every call, and tests shrink them to
// reach chunking, the over-budget path and streaming stores at small sizes.
struct FlashFwdTuning {
  int64_t pack_budget_bytes = int64_t{8} << 20;  // packed key tiles per thread
  int64_t chunks_per_thread = 8;                 // at least this many chunks per thread in all
  int64_t stream_out_bytes = int64_t{8} << 20;   // outputs this large: streaming (non-temporal) stores
};
FlashFwdTuning& flash_fwd_tuning();

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
