// Matrix-vector products for one token (the decoder's linear layers at decode time), threaded on
// attnkit's pool: at T = 1 a linear layer streams its weights once and is bound by memory.
#pragma once

#include <cstdint>
#include <span>

namespace attnkit::cpu {

// One matrix of a gemv call: y[o] = Σ_i w[o·in + i] · x[i] for o in [0, rows).
struct GemvPart {
  const float* w = nullptr;  // [rows][in] f32, row-major
  int64_t rows = 0;
  float* y = nullptr;  // [rows]
};

// Every part against the same x[in], in one pass of the pool over blocks of rows (so that the
// query, key and value projections, or gate and up, cost one dispatch).
void gemv(std::span<const GemvPart> parts, const float* x, int64_t in);

}  // namespace attnkit::cpu
