#include "test_util.h"

#include <cstdlib>
#include <cstring>
#include <limits>

namespace attnkit::test {

HostTensor::HostTensor(DType t, std::vector<int64_t> shape, Layout layout) {
  view.dtype = t;
  view.ndim = static_cast<int>(shape.size());
  for (int i = 0; i < view.ndim; ++i) view.shape[i] = shape[i];
  int64_t total = 1;
  if (layout == Layout::contiguous || view.ndim != 4) {
    for (int i = view.ndim - 1; i >= 0; --i) {
      view.strides[i] = total;
      total *= view.shape[i];
    }
  } else {
    const int64_t B = shape[0], S = shape[1], H = shape[2], D = shape[3];
    switch (layout) {
      case Layout::padded: {
        const int64_t hs = D + 3, ss = H * hs + 5;
        view.strides = {S * ss + 7, ss, hs, 1};
        total = B * view.strides[0];
        break;
      }
      case Layout::bhsd:
        view.strides = {H * S * D, D, S * D, 1};
        total = B * H * S * D;
        break;
      case Layout::strided_d:
        view.strides = {S * H * D * 2, H * D * 2, D * 2, 2};
        total = B * S * H * D * 2;
        break;
      case Layout::contiguous: break;
    }
  }
  mem.assign(static_cast<size_t>(total) * dtype_size(t) + 64, 0);
  view.data = mem.data();
}

namespace {
int64_t offset_of(const TensorView& v, int64_t linear) {
  int64_t off = 0;
  for (int i = v.ndim - 1; i >= 0; --i) {
    off += (linear % v.shape[i]) * v.strides[i];
    linear /= v.shape[i];
  }
  return off;
}
}  // namespace

float HostTensor::get(int64_t linear) const {
  const int64_t off = offset_of(view, linear);
  switch (view.dtype) {
    case DType::f32: return static_cast<const float*>(view.data)[off];
    case DType::bf16: return to_float(static_cast<const bf16*>(view.data)[off]);
    case DType::f16: return to_float(static_cast<const f16*>(view.data)[off]);
  }
  return 0;
}

void HostTensor::set(int64_t linear, float x) {
  const int64_t off = offset_of(view, linear);
  switch (view.dtype) {
    case DType::f32: static_cast<float*>(view.data)[off] = x; break;
    case DType::bf16: static_cast<bf16*>(view.data)[off] = to_bf16(x); break;
    case DType::f16: static_cast<f16*>(view.data)[off] = to_f16(x); break;
  }
}

void HostTensor::fill_random(std::mt19937_64& rng, float scale, float outlier_rate) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (int64_t i = 0; i < numel(); ++i) {
    float x = normal(rng);
    if (outlier_rate > 0 && u(rng) < outlier_rate) x *= 20.0f;
    set(i, x);
  }
}

void HostTensor::poison() {
  if (view.dtype == DType::f32) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (size_t i = 0; i + 4 <= mem.size(); i += 4) std::memcpy(&mem[i], &nan, 4);
  } else {
    const uint16_t nan = view.dtype == DType::bf16 ? 0x7fc0 : 0x7e00;
    for (size_t i = 0; i + 2 <= mem.size(); i += 2) std::memcpy(&mem[i], &nan, 2);
  }
}

uint64_t test_seed() {
  static const uint64_t seed = [] {
    if (const char* s = std::getenv("ATTNKIT_TEST_SEED")) return static_cast<uint64_t>(std::strtoull(s, nullptr, 10));
    const uint64_t s = (uint64_t{std::random_device{}()} << 32) | std::random_device{}();
    std::printf("[attnkit] test seed %llu (set ATTNKIT_TEST_SEED to repeat)\n", static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

Errors compare(const HostTensor& t, const std::vector<double>& ref, const std::string& what, int show) {
  Errors e;
  double num = 0, den = 0;
  int shown = 0;
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (std::isnan(ref[i])) continue;
    const double x = t.get(i);
    ++e.compared;
    if (!std::isfinite(x) && !(std::isinf(ref[i]) && x == ref[i])) {
      ++e.nonfinite;
      if (shown++ < show) ADD_FAILURE() << what << ": element " << i << " is " << x << ", expected " << ref[i];
      continue;
    }
    if (std::isinf(ref[i])) continue;  // matched -inf (an empty row's LSE)
    const double d = x - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
    e.max_abs = std::max(e.max_abs, std::abs(d));
  }
  e.rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return e;
}

void expect_close(const HostTensor& t, const std::vector<double>& ref, double tol, const std::string& what) {
  const Errors e = compare(t, ref, what);
  EXPECT_EQ(e.nonfinite, 0) << what;
  EXPECT_GT(e.compared, 0) << what;
  EXPECT_LT(e.rel, tol) << what << ": relative error " << e.rel << " (max abs " << e.max_abs << ") over "
                        << e.compared << " elements";
  if (e.rel >= tol) {  // print the first few elements that stand out
    int shown = 0;
    for (int64_t i = 0; i < t.numel() && shown < 5; ++i) {
      if (std::isnan(ref[i]) || std::isinf(ref[i])) continue;
      if (std::abs(t.get(i) - ref[i]) > tol * (std::abs(ref[i]) + 1e-3)) {
        ADD_FAILURE() << what << "[" << i << "] = " << t.get(i) << ", reference " << ref[i];
        ++shown;
      }
    }
  }
}

void expect_close_to_sum(const HostTensor& t, const std::vector<double>& ref, const std::vector<double>& terms,
                         double tol, const std::string& what) {
  const Errors e = compare(t, ref, what);
  EXPECT_EQ(e.nonfinite, 0) << what;
  EXPECT_GT(e.compared, 0) << what;
  double num = 0, den = 0;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double d = t.get(i) - ref[i];
    num += d * d;
    den += terms[i] * terms[i];
  }
  const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  EXPECT_LT(rel, tol) << what << ": error " << std::sqrt(num) << " relative to the terms' size " << std::sqrt(den)
                      << " (relative to the sums: " << e.rel << ")";
}

double tolerance(DType t, bool backward) {
  if (t == DType::f32) return backward ? 1e-4 : 1e-5;
  return 1e-2;
}

}  // namespace attnkit::test
