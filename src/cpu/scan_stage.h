// Staging of [B, T, C] f32 rows into contiguous [rows][kWidth] blocks and back, shared by the
// recurrent kernels (selective scan, RWKV-4): any strides in, full SIMD vectors inside.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "attnkit/tensor.h"

namespace attnkit::cpu {

// dst[t][0..width) = src[b, t0 + t, c0 .. c0 + nc) for t < nt, zero padded to width.
inline void stage_rows(const TensorView& src, int64_t b, int64_t t0, int64_t nt, int64_t c0, int64_t nc,
                       int64_t width, float* dst) {
  const float* p = static_cast<const float*>(src.data) + b * src.strides[0] + c0 * src.strides[2];
  for (int64_t t = 0; t < nt; ++t) {
    const float* row = p + (t0 + t) * src.strides[1];
    float* d = dst + t * width;
    if (src.strides[2] == 1) {
      std::memcpy(d, row, nc * sizeof(float));
    } else {
      for (int64_t c = 0; c < nc; ++c) d[c] = row[c * src.strides[2]];
    }
    std::fill(d + nc, d + width, 0.0f);
  }
}

// dst[b, t0 + t, c0 .. c0 + nc) = src[t][0..nc) for t < nt.
inline void unstage_rows(const float* src, int64_t width, const TensorView& dst, int64_t b, int64_t t0, int64_t nt,
                         int64_t c0, int64_t nc) {
  float* p = static_cast<float*>(dst.data) + b * dst.strides[0] + c0 * dst.strides[2];
  for (int64_t t = 0; t < nt; ++t) {
    float* row = p + (t0 + t) * dst.strides[1];
    const float* s = src + t * width;
    if (dst.strides[2] == 1) {
      std::memcpy(row, s, nc * sizeof(float));
    } else {
      for (int64_t c = 0; c < nc; ++c) row[c * dst.strides[2]] = s[c];
    }
  }
}

}  // namespace attnkit::cpu
