// Selective scan CPU kernels, called by src/cpu/scan.cc after validation.
#pragma once

#include <cstdint>

#include "attnkit/recurrent.h"

namespace attnkit::cpu {

struct ScanDims {
  int64_t batch = 0, seq = 0, channels = 0, state = 0;  // B, L, Dch, N
  bool has_d = false, has_z = false;
};

void scan_fwd(const ScanDims& s, const ScanInputs& in, const TensorView& out);
// One token per sequence (x, Δ, z, out [B, Dch]; B, C [B, N]); h: the state [B][Dch][N], updated.
void scan_step(const ScanDims& s, const ScanInputs& in, const TensorView& out, float* h);
void scan_bwd(const ScanDims& s, const ScanInputs& in, const TensorView& dout, const ScanGrads& g);

}  // namespace attnkit::cpu
