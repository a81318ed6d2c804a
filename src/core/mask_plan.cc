// Compiling a call's mask into block layouts (see mask_plan.h).
#include "core/mask_plan.h"

#include "core/thread_pool.h"

namespace attnkit {

MaskPlan plan_mask(const Problem& pr, int64_t block_q, int64_t block_k) {
  MaskPlan plan;
  plan.mask = pr.causal ? Mask::causal() & *pr.mask : *pr.mask;
  plan.block_q = block_q;
  plan.block_k = block_k;
  plan.heads = pr.heads_q;
  plan.per_head = plan.mask.head_dependent();
  plan.per_seq = plan.mask.batch_dependent();
  for (const Sequence& s : pr.seqs) {
    plan.per_seq = plan.per_seq || s.nq != pr.seqs.front().nq || s.nk != pr.seqs.front().nk;
  }
  const int64_t seqs = plan.per_seq ? static_cast<int64_t>(pr.seqs.size()) : 1;
  const int64_t heads = plan.per_head ? pr.heads_q : 1;
  plan.layouts.resize(static_cast<size_t>(seqs * heads));
  pool().parallel_for(seqs * heads, [&](int64_t slot, int) {
    const int64_t si = slot / heads, h = slot % heads;
    const Sequence& s = pr.seqs[static_cast<size_t>(si)];
    plan.layouts[static_cast<size_t>(slot)] = plan.mask.compile(s.nq, s.nk, block_q, block_k, h, si);
  });
  return plan;
}

KeyMajorLayout key_major(const BlockLayout& lay) {
  KeyMajorLayout t;
  const int64_t kb_count = lay.k_blocks();
  t.col_begin.assign(static_cast<size_t>(kb_count + 1), 0);
  for (int32_t kb : lay.key_block) ++t.col_begin[static_cast<size_t>(kb + 1)];
  for (int64_t kb = 0; kb < kb_count; ++kb) t.col_begin[kb + 1] += t.col_begin[kb];
  t.q_block.resize(lay.key_block.size());
  t.partial.resize(lay.key_block.size());
  std::vector<int64_t> next(t.col_begin.begin(), t.col_begin.end() - 1);
  for (int64_t qb = 0; qb < lay.q_blocks(); ++qb) {  // ascending qb keeps each column sorted
    for (int64_t e = lay.row_begin[qb]; e < lay.row_begin[qb + 1]; ++e) {
      const int64_t at = next[static_cast<size_t>(lay.key_block[e])]++;
      t.q_block[at] = static_cast<int32_t>(qb);
      t.partial[at] = lay.partial[e];
    }
  }
  return t;
}

}  // namespace attnkit
