// Lab helper (variants 13 and 15): query rows that keep every key, taken out of a sparse
// forward's layout so that they can be computed apart (see NOTES.md, 13 and 15).
#pragma once

#include <cstdint>
#include <vector>

#include "core/mask_plan.h"
#include "core/problem.h"

namespace attnkit::lab {

// Query rows that keep every key (a union's global query rows), per layout slot of the plan,
// ascending: computed apart (lab 13: in a pass over K and V shared by every head; lab 15: inside
// the tiled pass, on the key tiles each chunk owns),
// instead of making their 64-query half visit every key tile for a few rows.
struct FullRows {
  std::vector<std::vector<int32_t>> rows;  // [plan.layouts.size()]
  bool any = false;
};

// In each half of the layout (64 queries) that visits many key blocks: the rows that keep every
// key, when there are at most `cap` of them and not every row is one; the key blocks that no
// other row of the half keeps are dropped from the layout (their pairs are the full rows'), when
// that drops at least half of the row's blocks.
FullRows SplitFullRows(const Problem& pr, MaskPlan& plan, int64_t cap);

}  // namespace attnkit::lab
