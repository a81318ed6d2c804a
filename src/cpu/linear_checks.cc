// Argument checks shared by the linear-time families (see linear_checks.h).
#include "cpu/linear_checks.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "attnkit/error.h"
#include "core/checks.h"
#include "core/thread_pool.h"

namespace attnkit::lin {
namespace {

// Offset of the first element of row r (rows run along the last dimension, in row-major order
// of the others) and that row's index along each outer dimension.
int64_t row_offset(const TensorView& t, int64_t r, std::array<int64_t, TensorView::kMaxDims>& idx) {
  int64_t off = 0;
  for (int i = t.ndim - 2; i >= 0; --i) {
    idx[i] = r % t.shape[i];
    r /= t.shape[i];
    off += idx[i] * t.strides[i];
  }
  return off;
}

// Throws for the first element of t for which bad(x) holds; `expect` says what was expected.
// These checks read whole inputs (Δ of a selective scan, RWKV-6's decays) before the kernels
// run, so large tensors are split over the thread pool and contiguous rows are read by a loop
// the compiler vectorizes; a failure is then located exactly by one more pass over its row.
template <class Bad>
void check_elements(const TensorView& t, const char* name, const char* expect, Bad bad) {
  const auto* p = static_cast<const float*>(t.data);
  const int64_t n = t.shape[t.ndim - 1], s = t.strides[t.ndim - 1], rows = t.numel() / n;
  auto row_bad = [&](int64_t off) {
    int any = 0;  // an int, not a bool: the contiguous loop then vectorizes
    if (s == 1) {
      for (int64_t j = 0; j < n; ++j) any |= bad(p[off + j]) ? 1 : 0;
    } else {
      for (int64_t j = 0; j < n; ++j) any |= bad(p[off + j * s]) ? 1 : 0;
    }
    return any != 0;
  };
  // First bad row of [r0, r1), or r1.
  auto scan = [&](int64_t r0, int64_t r1) {
    std::array<int64_t, TensorView::kMaxDims> idx{};
    for (int64_t r = r0; r < r1; ++r)
      if (row_bad(row_offset(t, r, idx))) return r;
    return r1;
  };
  constexpr int64_t kParallelElements = int64_t{1} << 20;
  int64_t first = rows;
  if (t.numel() < kParallelElements) {
    first = scan(0, rows);
  } else {
    const int64_t parts = std::min<int64_t>(rows, 8 * pool().size());
    std::vector<int64_t> found(parts);
    pool().parallel_for(parts, [&](int64_t i, int) {
      const int64_t r1 = rows * (i + 1) / parts, r = scan(rows * i / parts, r1);
      found[i] = r < r1 ? r : rows;
    });
    first = *std::min_element(found.begin(), found.end());
  }
  if (first == rows) return;
  std::array<int64_t, TensorView::kMaxDims> idx{};
  const int64_t off = row_offset(t, first, idx);
  for (int64_t j = 0; j < n; ++j) {
    if (!bad(p[off + j * s])) continue;
    idx[t.ndim - 1] = j;
    std::string at;
    for (int i = 0; i < t.ndim; ++i) at += fmt::format("{}{}", i ? ", " : "", idx[i]);
    throw Error(fmt::format("{}: expected {}, given {} at [{}]", name, expect, p[off + j * s], at));
  }
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
