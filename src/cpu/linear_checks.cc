// Argument checks shared by the linear-time families (see linear_checks.h).
#include "cpu/linear_checks.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "attnkit/error.h"
#include "core/checks.h"

namespace attnkit::lin {
namespace {

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

void check_view(const TensorView& t, const char* name, int ndim) { attnkit::check_view(t, name, ndim, true); }

void check_f32(const TensorView& t, const char* name, int ndim) {
  check_view(t, name, ndim);
  check_dtype(t, name, DType::f32, "the recurrent kernels read and write f32");
}

void check_output(const TensorView& out, const char* name,
                  std::initializer_list<std::pair<const TensorView*, const char*>> inputs) {
  check_no_self_overlap(out, name);
  for (auto [t, tname] : inputs)
    if (t != nullptr) check_disjoint(out, name, *t, tname);
}

void check_nonnegative(const TensorView& t, const char* name) {
  check_elements(t, name, "every element >= 0", [](float x) { return !(x >= 0.0f); });
}

void check_finite(const TensorView& t, const char* name) {
  check_elements(t, name, "finite elements", [](float x) { return !std::isfinite(x); });
}

}  // namespace attnkit::lin
