// Shared test helpers: owned host tensors in several layouts, fresh seeded random fills,
// NaN poisoning, and comparison against float64 references with the first mismatches printed.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "attnkit/attnkit.h"

namespace attnkit::test {

enum class Layout {
  contiguous,  // BSHD row-major
  padded,      // BSHD with gaps between rows and heads (a view into a larger buffer)
  bhsd,        // stored heads-major, viewed as BSHD through strides
  strided_d,   // every other element along head_dim
};

struct HostTensor {
  std::vector<uint8_t> mem;
  TensorView view;

  HostTensor() = default;
  HostTensor(DType t, std::vector<int64_t> shape, Layout layout = Layout::contiguous);
  HostTensor(const HostTensor&) = delete;
  HostTensor& operator=(const HostTensor&) = delete;
  HostTensor(HostTensor&&) = default;
  HostTensor& operator=(HostTensor&&) = default;

  int64_t numel() const { return view.numel(); }
  float get(int64_t linear) const;  // element `linear` in logical row-major order
  void set(int64_t linear, float x);
  void fill_random(std::mt19937_64& rng, float scale = 1.0f, float outlier_rate = 0.0f);
  void poison();  // NaN in every element (and in the gaps between them)
};

// A fresh seed per test run unless ATTNKIT_TEST_SEED is set; printed so a failure reproduces.
uint64_t test_seed();

struct Errors {
  double rel = 0;      // ‖x − ref‖ / ‖ref‖
  double max_abs = 0;  // max |x − ref|
  int64_t nonfinite = 0;
  int64_t compared = 0;
};
// Compares t against ref (dense, t's logical order); ref NaN marks elements not to compare.
Errors compare(const HostTensor& t, const std::vector<double>& ref, const std::string& what, int show = 5);

// Expects rel < tol and no non-finite element.
void expect_close(const HostTensor& t, const std::vector<double>& ref, double tol, const std::string& what);
// For sums whose terms may cancel: the error's norm against tol × the norm of terms[i] = Σ |term|
// of element i (>= |ref[i]|), the size that f32 rounding of the sum scales with.
void expect_close_to_sum(const HostTensor& t, const std::vector<double>& ref, const std::vector<double>& terms,
                         double tol, const std::string& what);

double tolerance(DType t, bool backward);

}  // namespace attnkit::test
