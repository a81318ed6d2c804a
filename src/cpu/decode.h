// Decode attention against the paged KV cache: the CPU kernel's arguments (validated and
// resolved by run_decode in decode_plan.cc) and its entry point (decode.cc, Highway).
#pragma once

#include <vector>

#include "attnkit/kv_cache.h"

namespace attnkit::cpu {

struct DecodeArgs {
  const KVCache* cache = nullptr;
  const DecodePlan* plan = nullptr;
  int64_t layer = 0;
  TensorView q, out, lse;  // lse may be empty
  float scale = 1.0f, softcap = 0.0f;
  std::vector<const int32_t*> tables;  // per sequence: its page table
  std::vector<int64_t> first_page;     // per sequence: logical index of tables[s][0]
  std::vector<int64_t> length;         // per sequence: positions held
};

// Computes every item of the plan into partial results ([total_splits][nq][heads_q][head_dim]
// and [total_splits][nq][heads_q]), then merges each row's chunks by their log-sum-exp.
void decode_run(const DecodeArgs& args);

}  // namespace attnkit::cpu
