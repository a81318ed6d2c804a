// float64 reference attention, forward and backward: the ground truth for tests and --check.
//
// Written for clarity, not speed: one (sequence, head, query row) at a time, every score kept.
// Results are dense and contiguous:
//   out, dq : [B, Sq, Hq, D]     lse : [B, Hq, Sq]     dk, dv : [B, Sk, Hkv, D]
// Rows outside every sequence of a variable-length batch stay NaN.
#pragma once

#include <functional>
#include <vector>

#include "core/problem.h"

namespace attnkit::ref {

// keep(seq, head, i, j): whether query i may attend key j of sequence seq (positions counted
// within the sequence), applied on top of the problem's causal mask. Empty keeps everything.
using KeepFn = std::function<bool(int64_t, int64_t, int64_t, int64_t)>;

struct ForwardResult {
  std::vector<double> out;  // [B, Sq, Hq, D]
  std::vector<double> lse;  // [B, Hq, Sq]
};
struct BackwardResult {
  std::vector<double> dq;  // [B, Sq, Hq, D]
  std::vector<double> dk;  // [B, Sk, Hkv, D]
  std::vector<double> dv;  // [B, Sk, Hkv, D]
};

ForwardResult forward(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                      const KeepFn& keep = {});
BackwardResult backward(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& dout, const KeepFn& keep = {});

// Writes a dense float64 result into a strided view of any dtype (used by Algorithm::reference).
void store(const std::vector<double>& src, const TensorView& dst);

}  // namespace attnkit::ref
