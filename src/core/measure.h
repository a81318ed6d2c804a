// Measurement helpers shared by the benchmarks and the command-line program: medians of
// repeated timings, the process's peak resident memory, and the BLAS that the baseline uses.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace attnkit::measure {

struct Timing {
  double median_s = 0;
  double min_s = 0;
  int runs = 0;
};

// Runs fn `warmup` times, then at least min_runs times and until min_seconds have passed
// (at most max_runs); returns the median.
Timing time_median(const std::function<void()>& fn, int warmup = 1, int min_runs = 5, double min_seconds = 0.5,
                   int max_runs = 1000);

// Peak resident memory of the process since the last reset_peak_rss(), in bytes. Large
// allocations are returned to the system on free (see configure_allocator), so the peak over
// a call minus the resident size before it is the call's extra memory.
void reset_peak_rss();
int64_t peak_rss_bytes();
int64_t current_rss_bytes();
// Makes every allocation of 64 KiB or more its own mapping, returned to the system on free,
// so that peak RSS measures what a call allocates rather than what the heap kept.
void configure_allocator();

// Extra memory of one call of fn: peak RSS during it minus RSS before it.
int64_t extra_memory_bytes(const std::function<void()>& fn);

// The BLAS core in use ("Haswell", "Zen", "SkylakeX", ...).
std::string blas_core();
// OpenBLAS reads OPENBLAS_CORETYPE when it loads. A BLAS baseline or ceiling must use the
// fastest kernel the CPU runs, so when the variable is set this re-executes the program
// without it (once) and returns only in the re-executed process. Returns the value that was
// removed, or "" when none was set.
std::string ensure_fastest_blas(int argc, char** argv);

// sgemm GFLOP/s for an n×n×n product on all cores (median of several runs).
double sgemm_gflops(int64_t n = 2048);
// memcpy bandwidth in GB/s counting bytes read plus bytes written, on all cores.
double memcpy_gbps(int64_t bytes = int64_t{256} << 20);

// Two buffers of `bytes` (the KV-cache pool's kind of memory) kept for repeated memcpy
// timings, so that a bandwidth reference can be sampled between the timings it is compared
// with: on a shared machine, one sample at the start of a run may catch another moment.
class CopyProbe {
 public:
  explicit CopyProbe(int64_t bytes = int64_t{256} << 20);
  ~CopyProbe();
  CopyProbe(const CopyProbe&) = delete;
  CopyProbe& operator=(const CopyProbe&) = delete;
  // One copy on all cores.
  void copy();
  // One timed copy: bytes read plus written per second, in GB/s.
  double once_gbps();

 private:
  int64_t bytes_;
  char *src_, *dst_;
};

// fn timed in rounds interleaved with one copy of probe each (copy, then fn): `warmup` rounds,
// then at least min_rounds and until min_seconds have passed. Medians of both.
struct AgainstCopy {
  Timing fn;
  double copy_gbps = 0;  // median of the rounds' copies
};
AgainstCopy time_against_copy(const std::function<void()>& fn, CopyProbe& probe, int warmup = 2, int min_rounds = 10,
                              double min_seconds = 2.0);

std::string cpu_name();

}  // namespace attnkit::measure
