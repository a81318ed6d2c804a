// The analytic cost model (see include/attnkit/cost.h).
#include "attnkit/cost.h"

#include <algorithm>

namespace attnkit::cost {

double visible_pairs(const AttentionShape& s) {
  if (!s.causal) return static_cast<double>(s.seq_q) * static_cast<double>(s.seq_k);
  double pairs = 0;
  const int64_t diag = s.seq_k - s.seq_q;  // query i sees keys j <= i + diag
  for (int64_t i = 0; i < s.seq_q; ++i) pairs += static_cast<double>(std::clamp<int64_t>(i + 1 + diag, 0, s.seq_k));
  return pairs;
}

double attention_fwd_flops(const AttentionShape& s) {
  const double per_head = 4.0 * static_cast<double>(s.seq_q) * static_cast<double>(s.seq_k) * s.head_dim;
  return per_head * static_cast<double>(s.batch * s.heads_q) * (s.causal ? 0.5 : 1.0);
}

double attention_bwd_flops(const AttentionShape& s) { return kBackwardFactor * attention_fwd_flops(s); }

double score_matrix_bytes(const AttentionShape& s, int64_t bytes_per_element) {
  return static_cast<double>(s.seq_q) * static_cast<double>(s.seq_k) * static_cast<double>(bytes_per_element);
}

}  // namespace attnkit::cost
