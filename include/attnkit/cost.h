// The analytic cost model: the one source of FLOP and byte counts for the program, the
// benchmarks and the tests.
//
// Convention (as in the FlashAttention papers): a multiply-accumulate is 2 FLOPs; the forward
// pass of exact attention is QKᵀ plus PV, 4·Nq·Nk·D FLOPs per head, halved when causal; the
// backward pass is 2.5× the forward (five matrix products to the forward's two).
#pragma once

#include <cstdint>

namespace attnkit::cost {

struct AttentionShape {
  int64_t batch = 1;
  int64_t seq_q = 0, seq_k = 0;
  int64_t heads_q = 1, heads_kv = 1;
  int64_t head_dim = 64;
  bool causal = false;
};

inline constexpr double kBackwardFactor = 2.5;

// Query–key pairs the kernel must compute, per head (exact count, bottom-right causal).
double visible_pairs(const AttentionShape& s);
// FLOPs of the forward pass by the convention above, all heads and batch.
double attention_fwd_flops(const AttentionShape& s);
double attention_bwd_flops(const AttentionShape& s);
// Bytes of the materialized f32 score matrices that naive attention holds for one head.
double score_matrix_bytes(const AttentionShape& s, int64_t bytes_per_element = 4);

}  // namespace attnkit::cost
