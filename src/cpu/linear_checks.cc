// Argument checks shared by the linear-time families (see linear_checks.h).
#include "cpu/linear_checks.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "attnkit/error.h"

namespace attnkit::lin {
namespace {

constexpr int64_t kMaxElements = int64_t{1} << 40;

struct ByteRange {
  uintptr_t lo, hi;  // [lo, hi)
};
ByteRange byte_range(const TensorView& t) {
  int64_t last = 0;
  for (int i = 0; i < t.ndim; ++i) last += (t.shape[i] - 1) * t.strides[i];
  const auto lo = reinterpret_cast<uintptr_t>(t.data);
  return {lo, lo + static_cast<uintptr_t>((last + 1) * dtype_size(t.dtype))};
}

// Calls row(offset of the row's first element, outer index) for every row along the last dim.
template <class Fn>
void for_each_row(const TensorView& t, Fn row) {
  std::array<int64_t, TensorView::kMaxDims> idx{};
  const int64_t rows = t.numel() / t.shape[t.ndim - 1];
  for (int64_t r = 0; r < rows; ++r) {
    int64_t off = 0;
    for (int i = 0; i + 1 < t.ndim; ++i) off += idx[i] * t.strides[i];
    row(off, idx);
    for (int i = t.ndim - 2; i >= 0; --i) {
      if (++idx[i] < t.shape[i]) break;
      idx[i] = 0;
    }
  }
}

// Throws the first element of t for which bad(x) holds; `expect` says what was expected.
template <class Bad>
void check_elements(const TensorView& t, const char* name, const char* expect, Bad bad) {
  const auto* p = static_cast<const float*>(t.data);
  const int64_t n = t.shape[t.ndim - 1], s = t.strides[t.ndim - 1];
  for_each_row(t, [&](int64_t off, auto idx) {
    bool any = false;
    for (int64_t j = 0; j < n; ++j) any |= bad(p[off + j * s]);
    if (!any) return;
    for (int64_t j = 0; j < n; ++j) {
      if (!bad(p[off + j * s])) continue;
      idx[t.ndim - 1] = j;
      std::string at;
      for (int i = 0; i < t.ndim; ++i) at += fmt::format("{}{}", i ? ", " : "", idx[i]);
      throw Error(fmt::format("{}: expected {}, given {} at [{}]", name, expect, p[off + j * s], at));
    }
  });
}

}  // namespace

void check_view(const TensorView& t, const char* name, int ndim) {
  if (t.data == nullptr) throw Error(fmt::format("{}: expected a non-null data pointer", name));
  if (t.device != Device::cpu) {
    throw Error(fmt::format("{}: expected a CPU tensor, given a {} tensor", name, to_string(t.device)));
  }
  if (t.ndim != ndim) {
    throw Error(fmt::format("{}: expected {} dimensions, given {} ({})", name, ndim, t.ndim, t.describe()));
  }
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) {
    if (t.shape[i] <= 0) {
      throw Error(fmt::format("{}: expected every size to be positive, given size {} in dim {} ({})", name,
                              t.shape[i], i, t.describe()));
    }
    if (t.strides[i] < 0) {
      throw Error(fmt::format("{}: expected non-negative strides, given {} in dim {} ({})", name, t.strides[i], i,
                              t.describe()));
    }
    if (n > kMaxElements / t.shape[i]) {
      throw Error(fmt::format("{}: size {} is beyond what attnkit addresses (2^40 elements)", name, t.describe()));
    }
    n *= t.shape[i];
  }
}

void check_dtype(const TensorView& t, const char* name, DType want, const char* why) {
  if (t.dtype != want) {
    throw Error(fmt::format("{}: expected dtype {} ({}), given {}", name, to_string(want), why, to_string(t.dtype)));
  }
}

void check_f32(const TensorView& t, const char* name, int ndim) {
  check_view(t, name, ndim);
  check_dtype(t, name, DType::f32, "the recurrent kernels read and write f32");
}

void check_shape(const TensorView& t, const char* name, std::initializer_list<int64_t> want, const char* what) {
  int i = 0;
  for (int64_t w : want) {
    if (t.shape[i] != w) {
      std::string ws;
      int j = 0;
      for (int64_t x : want) ws += fmt::format("{}{}", j++ ? ", " : "", x);
      throw Error(fmt::format("{}: expected shape [{}] ({}), given {}", name, ws, what, t.describe()));
    }
    ++i;
  }
}

void check_output(const TensorView& out, const char* name,
                  std::initializer_list<std::pair<const TensorView*, const char*>> inputs) {
  std::array<int, TensorView::kMaxDims> order{0, 1, 2, 3};
  for (int i = 1; i < out.ndim; ++i)
    for (int j = i; j > 0 && out.strides[order[j]] < out.strides[order[j - 1]]; --j) std::swap(order[j], order[j - 1]);
  int64_t extent = 1;
  for (int i = 0; i < out.ndim; ++i) {
    const int d = order[i];
    if (out.shape[d] == 1) continue;
    if (out.strides[d] < extent) {
      throw Error(fmt::format("{}: strides overlap: dim {} has stride {} but the dims inside it span {} elements "
                              "({}); an output needs distinct elements",
                              name, d, out.strides[d], extent, out.describe()));
    }
    extent = out.strides[d] * out.shape[d];
  }
  const ByteRange a = byte_range(out);
  for (auto [t, tname] : inputs) {
    if (t == nullptr || t->data == nullptr) continue;
    const ByteRange b = byte_range(*t);
    if (a.lo < b.hi && b.lo < a.hi) {
      throw Error(fmt::format("{}: expected memory disjoint from {}, but the two views overlap", name, tname));
    }
  }
}

void check_nonnegative(const TensorView& t, const char* name) {
  check_elements(t, name, "every element >= 0", [](float x) { return !(x >= 0.0f); });
}

void check_finite(const TensorView& t, const char* name) {
  check_elements(t, name, "finite elements", [](float x) { return !std::isfinite(x); });
}

}  // namespace attnkit::lin
