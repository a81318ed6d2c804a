// float64 references for the recurrences of recurrent.h, written from the definitions:
// sequential loops over time (selective scan, RWKV-6) and the explicit O(T²) sums of RWKV-4
// (each output's exponents shifted by their maximum, which changes nothing but the rounding).
// Gradients are reverse-mode passes over the same loops, all intermediates kept.
// Results are dense and contiguous in the layouts of the inputs they belong to.
#pragma once

#include <vector>

#include "attnkit/recurrent.h"

namespace attnkit::ref {

std::vector<double> scan_forward(const ScanInputs& in);  // out : [B, L, Dch]
struct ScanGradsRef {
  std::vector<double> dx, ddelta, dA, dB, dC, dD, dz;
};
ScanGradsRef scan_backward(const ScanInputs& in, const TensorView& dout);

std::vector<double> wkv4_forward(const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v);
struct Wkv4GradsRef {
  std::vector<double> dw, du, dk, dv;
  // Σ |term| of each channel's dw and du sums: where the terms cancel, f32 rounding is bounded
  // by these rather than by the sums.
  std::vector<double> dw_terms, du_terms;
};
Wkv4GradsRef wkv4_backward(const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
                           const TensorView& dy);

std::vector<double> wkv6_forward(const TensorView& r, const TensorView& k, const TensorView& v, const TensorView& w,
                                 const TensorView& u);
struct Wkv6GradsRef {
  std::vector<double> dr, dk, dv, dw, du;
};
Wkv6GradsRef wkv6_backward(const TensorView& r, const TensorView& k, const TensorView& v, const TensorView& w,
                           const TensorView& u, const TensorView& dy);

}  // namespace attnkit::ref
