// A call's mask compiled at a kernel's tile sizes: the BlockLayouts the sparse path of the
// flash kernels walks. One layout per (sequence, head) where the mask depends on them, else
// one shared by all.
#pragma once

#include <cstdint>
#include <vector>

#include "attnkit/mask.h"
#include "core/problem.h"

namespace attnkit {

struct MaskPlan {
  Mask mask;  // params.mask, and causal when params.causal is set
  int64_t block_q = 0, block_k = 0;
  bool per_seq = false, per_head = false;
  int64_t heads = 1;
  std::vector<BlockLayout> layouts;  // [sequences or 1][heads or 1]

  size_t slot(int64_t seq, int64_t h) const {
    return static_cast<size_t>((per_seq ? seq : 0) * (per_head ? heads : 1) + (per_head ? h : 0));
  }
  const BlockLayout& layout(int64_t seq, int64_t h) const { return layouts[slot(seq, h)]; }
};

// Compiles pr.mask (which must be set) for every sequence and head of the call, in parallel.
MaskPlan plan_mask(const Problem& pr, int64_t block_q, int64_t block_k);

// The same blocks listed by key block: query blocks [col_begin[kb], col_begin[kb + 1]) of
// q_block, ascending, with their partial flags. The backward pass walks a layout this way.
struct KeyMajorLayout {
  std::vector<int64_t> col_begin;
  std::vector<int32_t> q_block;
  std::vector<uint8_t> partial;
};
KeyMajorLayout key_major(const BlockLayout& lay);

}  // namespace attnkit
