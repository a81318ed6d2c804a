#include "core/measure.h"

#include <cblas.h>
#include <fmt/format.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <vector>

#include "attnkit/error.h"
#include "core/big_alloc.h"
#include "core/thread_pool.h"

extern "C" char* openblas_get_corename(void);

namespace attnkit::measure {

namespace {
double median_of(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x.size() % 2 ? x[x.size() / 2] : 0.5 * (x[x.size() / 2 - 1] + x[x.size() / 2]);
}
}  // namespace

Timing time_median(const std::function<void()>& fn, int warmup, int min_runs, double min_seconds, int max_runs) {
  using clock = std::chrono::steady_clock;
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  const auto start = clock::now();
  while (static_cast<int>(t.size()) < max_runs) {
    const auto t0 = clock::now();
    fn();
    const auto t1 = clock::now();
    t.push_back(std::chrono::duration<double>(t1 - t0).count());
    if (static_cast<int>(t.size()) >= min_runs && std::chrono::duration<double>(t1 - start).count() >= min_seconds) break;
  }
  Timing r;
  r.runs = static_cast<int>(t.size());
  r.min_s = *std::min_element(t.begin(), t.end());
  r.median_s = median_of(t);
  return r;
}

namespace {
int64_t status_kib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line)) {
    if (line.compare(0, n, key) == 0) return std::atoll(line.c_str() + n);
  }
  return -1;
}
}  // namespace

void reset_peak_rss() {
  if (FILE* f = std::fopen("/proc/self/clear_refs", "w")) {
    std::fputs("5", f);
    std::fclose(f);
  }
}
int64_t peak_rss_bytes() { return status_kib("VmHWM:") * 1024; }
int64_t current_rss_bytes() { return status_kib("VmRSS:") * 1024; }

void configure_allocator() {
  mallopt(M_MMAP_THRESHOLD, 64 * 1024);  // fixed: disables the growing dynamic threshold
  mallopt(M_TRIM_THRESHOLD, 128 * 1024);
}

int64_t extra_memory_bytes(const std::function<void()>& fn) {
  malloc_trim(0);
  reset_peak_rss();
  const int64_t before = current_rss_bytes();
  fn();
  return std::max<int64_t>(0, peak_rss_bytes() - before);
}

std::string blas_core() {
  const char* name = openblas_get_corename();
  return name ? name : "unknown";
}

std::string ensure_fastest_blas(int argc, char** argv) {
  (void)argc;
  const char* set = std::getenv("OPENBLAS_CORETYPE");
  const char* removed = std::getenv("ATTNKIT_REMOVED_BLAS_CORETYPE");
  if (set && !removed) {
    const std::string value = set;
    setenv("ATTNKIT_REMOVED_BLAS_CORETYPE", value.c_str(), 1);
    unsetenv("OPENBLAS_CORETYPE");
    execv("/proc/self/exe", argv);
    // exec failed: go on with the variable removed from our own view only.
    return value;
  }
  return removed ? removed : "";
}

double sgemm_gflops(int64_t n) {
  std::vector<float> a(n * n, 1.0f), b(n * n, 0.5f), c(n * n);
  const Timing t = time_median(
      [&] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f,
                    c.data(), n);
      },
      1, 5, 1.0);
  return 2.0 * n * n * n / t.median_s * 1e-9;
}

CopyProbe::CopyProbe(int64_t bytes) : bytes_(bytes) {
  const auto n = static_cast<size_t>(bytes);
  src_ = static_cast<char*>(detail::allocate_zeroed(n));
  dst_ = static_cast<char*>(detail::allocate_zeroed(n));
  if (src_ == nullptr || dst_ == nullptr) {
    if (src_ != nullptr) detail::free_zeroed(src_, n);
    if (dst_ != nullptr) detail::free_zeroed(dst_, n);
    throw Error(fmt::format("memcpy bandwidth: could not allocate two buffers of {} bytes", bytes));
  }
  std::memset(src_, 1, n);  // both buffers touched: no page faults in the timings
  std::memset(dst_, 0, n);
}

CopyProbe::~CopyProbe() {
  detail::free_zeroed(src_, static_cast<size_t>(bytes_));
  detail::free_zeroed(dst_, static_cast<size_t>(bytes_));
}

void CopyProbe::copy() {
  ThreadPool& tp = pool();
  const int64_t parts = tp.size(), chunk = bytes_ / parts;
  tp.parallel_for(parts, [&](int64_t p, int) {
    std::memcpy(dst_ + p * chunk, src_ + p * chunk, p + 1 < parts ? chunk : bytes_ - p * chunk);
  });
}

double CopyProbe::once_gbps() {
  const auto t0 = std::chrono::steady_clock::now();
  copy();
  return 2.0 * static_cast<double>(bytes_) / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() *
         1e-9;
}

double memcpy_gbps(int64_t bytes) {
  CopyProbe probe(bytes);
  return 2.0 * static_cast<double>(bytes) / time_median([&] { probe.copy(); }, 1, 5, 0.5).median_s * 1e-9;
}

AgainstCopy time_against_copy(const std::function<void()>& fn, CopyProbe& probe, int warmup, int min_rounds,
                              double min_seconds) {
  using clock = std::chrono::steady_clock;
  for (int i = 0; i < warmup; ++i) {
    probe.once_gbps();
    fn();
  }
  std::vector<double> t, g;
  const auto start = clock::now();
  while (static_cast<int>(t.size()) < min_rounds ||
         std::chrono::duration<double>(clock::now() - start).count() < min_seconds) {
    g.push_back(probe.once_gbps());
    const auto t0 = clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(clock::now() - t0).count());
  }
  AgainstCopy r;
  r.fn.runs = static_cast<int>(t.size());
  r.fn.min_s = *std::min_element(t.begin(), t.end());
  r.fn.median_s = median_of(t);
  r.copy_gbps = median_of(g);
  return r;
}

std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown CPU";
}

}  // namespace attnkit::measure
