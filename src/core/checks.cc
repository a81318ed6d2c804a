// View checks shared by every validator (see checks.h).
#include "core/checks.h"

#include <fmt/format.h>

#include <array>
#include <string>
#include <utility>

#include "attnkit/error.h"

namespace attnkit {
namespace {

constexpr int64_t kMaxElements = int64_t{1} << 40;  // 4 TiB of f32: beyond any real tensor

struct ByteRange {
  uintptr_t lo, hi;  // [lo, hi)
};
ByteRange byte_range(const TensorView& t) {
  int64_t last = 0;
  for (int i = 0; i < t.ndim; ++i) last += (t.shape[i] - 1) * t.strides[i];
  const auto lo = reinterpret_cast<uintptr_t>(t.data);
  return {lo, lo + static_cast<uintptr_t>((last + 1) * dtype_size(t.dtype))};
}

}  // namespace

void check_view(const TensorView& t, const char* name, int ndim, bool require_cpu) {
  if (t.data == nullptr) throw Error(fmt::format("{}: expected a non-null data pointer", name));
  if (require_cpu && t.device != Device::cpu) {
#ifdef ATTNKIT_HAS_CUDA
    throw Error(fmt::format("{}: expected a CPU tensor, given a {} tensor", name, to_string(t.device)));
#else
    throw Error(fmt::format("{}: expected a CPU tensor, given a {} tensor (this build has no {} backend)", name,
                            to_string(t.device), to_string(t.device)));
#endif
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
      throw Error(fmt::format("{}: expected non-negative strides, given {} in dim {} ({})", name, t.strides[i],
                              i, t.describe()));
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

// Ordered by stride, each dim must step past the whole extent of the dims below it.
void check_no_self_overlap(const TensorView& t, const char* name) {
  std::array<int, TensorView::kMaxDims> order{0, 1, 2, 3};
  for (int i = 1; i < t.ndim; ++i)  // insertion sort by stride
    for (int j = i; j > 0 && t.strides[order[j]] < t.strides[order[j - 1]]; --j) std::swap(order[j], order[j - 1]);
  int64_t extent = 1;
  for (int i = 0; i < t.ndim; ++i) {
    const int d = order[i];
    if (t.shape[d] == 1) continue;
    if (t.strides[d] < extent) {
      throw Error(fmt::format("{}: strides overlap: dim {} has stride {} but the dims inside it span {} elements "
                              "({}); an output needs distinct elements",
                              name, d, t.strides[d], extent, t.describe()));
    }
    extent = t.strides[d] * t.shape[d];
  }
}

void check_disjoint(const TensorView& out, const char* out_name, const TensorView& other, const char* other_name) {
  if (out.empty() || other.empty()) return;
  const ByteRange a = byte_range(out), b = byte_range(other);
  if (a.lo < b.hi && b.lo < a.hi) {
    throw Error(fmt::format("{}: expected memory disjoint from {}, but the two views overlap", out_name, other_name));
  }
}

}  // namespace attnkit
