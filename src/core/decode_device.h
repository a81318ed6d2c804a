// GPU decode against a PagedKVView, host side: the internal entry points behind
// attnkit::run_decode(const PagedKVView&, ...) and decode_workspace_bytes, with the launch
// shape open to benchmarks and tests (0 / -1 = automatic; the automatic choices are described
// at shape_of in decode_device.cc).
#pragma once

#include <cstdint>

#include "attnkit/kv_cache.h"

namespace attnkit {

struct CudaDecodeTuning {
  int warps = 0;             // warps (work items) per CTA, 1..8; automatic 4 (fewer for short ranges)
  int stages = 0;            // cp.async pipeline depth per warp, 2..4; automatic 2
  int64_t chunk_keys = 0;    // keys per work item, a multiple of 16; automatic from the batch and device
  int l2_prefetch = -1;      // L2 fetch size hint of the loads: 0, 128 or 256 bytes; -1 automatic
  int head_warps = -1;       // 1: a CTA's warps are KV heads of one chunk, 0: chunks of one head; -1 automatic
  int ctas_per_sm = 0;       // cap on resident CTAs per multiprocessor that the partition plans for; 0: occupancy
  int early_refill = -1;     // 1: a warp refills a stage as soon as its step has read it (all stages in flight
                             // while it waits); 0: after the next block has arrived; -1 automatic
};

// What a call would launch: the partition of the plan's keys on the current device.
struct CudaDecodeShape {
  int warps = 0, stages = 0, rows_per_item = 0, row_tiles = 0, l2_prefetch = 0, head_warps = 0, early_refill = 0;
  int64_t chunk_blocks = 0, max_splits = 0, units = 0, chunk_groups = 0, ctas = 0;  // grid (units, chunk_groups, seqs)
  int64_t workspace_bytes = 0;
};

CudaDecodeShape cuda_decode_shape(const PagedKVView& kv, const DecodePlan& plan, const CudaDecodeTuning& tuning);
void run_decode_cuda(const PagedKVView& kv, const DecodePlan& plan, int64_t layer, const TensorView& q,
                     const TensorView& out, const DecodeParams& params, const TensorView& lse,
                     const CudaDecodeTuning& tuning);

}  // namespace attnkit
