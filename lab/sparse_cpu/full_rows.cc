// Lab helper: see full_rows.h.
#include "lab/sparse_cpu/full_rows.h"

#include <algorithm>
#include <utility>

namespace attnkit::lab {

FullRows SplitFullRows(const Problem& pr, MaskPlan& plan, int64_t cap) {
  constexpr int64_t kMinBlocks = 16;  // a half visiting fewer key blocks is left as it is
  FullRows fr;
  fr.rows.resize(plan.layouts.size());
  const int64_t heads = plan.per_head ? plan.heads : 1;
  for (size_t slot = 0; slot < plan.layouts.size(); ++slot) {
    BlockLayout& lay = plan.layouts[slot];
    const int64_t si = plan.per_seq ? static_cast<int64_t>(slot) / heads : 0, h = static_cast<int64_t>(slot) % heads;
    const Sequence& sq = pr.seqs[static_cast<size_t>(si)];
    const int64_t b = sq.batch, nq = sq.nq, nk = sq.nk;
    const Mask& mk = plan.mask;
    std::vector<uint8_t> drop(lay.key_block.size(), 0);
    bool dropped = false;
    for (int64_t qb = 0; qb < lay.q_blocks(); ++qb) {
      const int64_t e0 = lay.row_begin[qb], e1 = lay.row_begin[qb + 1];
      if (e1 - e0 < kMinBlocks) continue;
      const int64_t q_lo = qb * lay.block_q, q_hi = std::min(nq, q_lo + lay.block_q);
      if (mk.classify(b, h, nq, nk, q_lo, 0, nk, q_hi - q_lo) != BlockKind::partial) continue;
      std::vector<int32_t> full;
      for (int64_t r = q_lo; r < q_hi && static_cast<int64_t>(full.size()) <= cap; ++r) {
        if (mk.classify(b, h, nq, nk, r, 0, nk, 1) == BlockKind::full) full.push_back(static_cast<int32_t>(r));
      }
      if (full.empty() || static_cast<int64_t>(full.size()) > cap) continue;
      // The other rows, as runs [a, e).
      std::vector<std::pair<int64_t, int64_t>> runs;
      for (int64_t r = q_lo, f = 0; r < q_hi;) {
        if (f < static_cast<int64_t>(full.size()) && full[f] == r) {
          ++f, ++r;
          continue;
        }
        const int64_t e = f < static_cast<int64_t>(full.size()) ? full[f] : q_hi;
        runs.push_back({r, e});
        r = e;
      }
      int64_t n_drop = 0;
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t j0 = int64_t{lay.key_block[e]} * lay.block_k, nj = std::min(lay.block_k, nk - j0);
        bool empty = true;
        for (const auto& [a, z] : runs) empty = empty && mk.classify(b, h, nq, nk, a, j0, nj, z - a) == BlockKind::empty;
        drop[e] = empty;
        n_drop += empty;
      }
      if (n_drop * 2 < e1 - e0) {
        std::fill(drop.begin() + e0, drop.begin() + e1, uint8_t{0});
        continue;
      }
      dropped = true;
      fr.rows[slot].insert(fr.rows[slot].end(), full.begin(), full.end());
    }
    if (!dropped) continue;
    fr.any = true;
    std::vector<int64_t> row_begin{0};
    std::vector<int32_t> key_block;
    std::vector<uint8_t> partial;
    for (int64_t qb = 0; qb < lay.q_blocks(); ++qb) {
      for (int64_t e = lay.row_begin[qb]; e < lay.row_begin[qb + 1]; ++e) {
        if (drop[e]) continue;
        key_block.push_back(lay.key_block[e]);
        partial.push_back(lay.partial[e]);
      }
      row_begin.push_back(static_cast<int64_t>(key_block.size()));
    }
    lay.row_begin = std::move(row_begin);
    lay.key_block = std::move(key_block);
    lay.partial = std::move(partial);
  }
  return fr;
}

}  // namespace attnkit::lab
