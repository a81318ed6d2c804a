// Weight-only int8 linear layer: y[t][o] = scale[o] · Σ_i x[t][i] · w[o][i], w int8 [out, in]
// (symmetric per output row), x and y f32. Highway SIMD, threads over blocks of output rows.
#pragma once

#include <cstdint>

namespace attnkit::model {

void linear_int8(const float* x, int64_t tokens, int64_t in, const int8_t* w, const float* scale, int64_t out,
                 float* y);

}  // namespace attnkit::model
