#include "core/measure.h"

#include <cblas.h>
#include <fmt/format.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
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
  std::sort(t.begin(), t.end());
  Timing r;
  r.runs = static_cast<int>(t.size());
  r.min_s = t.front();
  r.median_s = t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
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

double memcpy_gbps(int64_t bytes) {
  ThreadPool& tp = pool();
  const int64_t parts = tp.size();
  // The same kind of memory as the KV-cache pool (huge pages where offered), both buffers touched.
  const auto n = static_cast<size_t>(bytes);
  const std::unique_ptr<char, std::function<void(char*)>> src(static_cast<char*>(detail::allocate_zeroed(n)),
                                                              [n](char* p) { detail::free_zeroed(p, n); });
  const std::unique_ptr<char, std::function<void(char*)>> dst(static_cast<char*>(detail::allocate_zeroed(n)),
                                                              [n](char* p) { detail::free_zeroed(p, n); });
  if (!src || !dst) throw Error(fmt::format("memcpy_gbps: could not allocate two buffers of {} bytes", bytes));
  std::memset(src.get(), 1, n);
  std::memset(dst.get(), 0, n);
  const int64_t chunk = bytes / parts;
  const Timing t = time_median(
      [&] {
        tp.parallel_for(parts, [&](int64_t p, int) { std::memcpy(dst.get() + p * chunk, src.get() + p * chunk, chunk); });
      },
      1, 5, 0.5);
  return 2.0 * static_cast<double>(chunk * parts) / t.median_s * 1e-9;
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
