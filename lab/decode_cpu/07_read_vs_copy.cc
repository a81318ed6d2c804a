// Lab 07: a plain two-thread read of a 256 MiB buffer (AVX2 loads summed, every lane kept)
// against a two-thread memcpy of the same size, alternating in one process: what this VM's
// memory gives a read-only stream, next to the memcpy figure that bench_decode compares with.
// Standalone (not built by CMake): g++ -O2 -mavx2 -pthread 07_read_vs_copy.cc
// 2026-11-22, idle VM, three runs: read 29.6 / 36.2 / 34.8 GB/s (median of 10; max 37–40),
// memcpy read + write 23.7 / 25.7 / 31.1 GB/s.
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>
#include <algorithm>
#include <sys/mman.h>
using clk = std::chrono::steady_clock;
volatile float sink[16];
void readpart(const float* p, size_t n, int t) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i)); a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16)); a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
  }
  float o[8]; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))); for (int x = 0; x < 8; ++x) sink[t * 8 + x] = o[x];
}
int main() {
  const size_t bytes = 256u << 20, n = bytes / 4;
  auto alloc = [&]() { void* p = mmap(nullptr, bytes, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0); madvise(p, bytes, MADV_HUGEPAGE); memset(p, 1, bytes); return (float*)p; };
  float *a = alloc(), *b = alloc();
  std::vector<double> rd, cp;
  for (int r = 0; r < 12; ++r) {
    auto t0 = clk::now();
    { std::thread t1(readpart, a, n / 2, 0); readpart(a + n / 2, n / 2, 1); t1.join(); }
    auto t1c = clk::now();
    { std::thread t1([&]{ memcpy(b, a, bytes / 2); }); memcpy((char*)b + bytes / 2, (char*)a + bytes / 2, bytes / 2); t1.join(); }
    auto t2 = clk::now();
    if (r >= 2) { rd.push_back(bytes / std::chrono::duration<double>(t1c - t0).count() * 1e-9); cp.push_back(2.0 * bytes / std::chrono::duration<double>(t2 - t1c).count() * 1e-9); }
  }
  std::sort(rd.begin(), rd.end()); std::sort(cp.begin(), cp.end());
  printf("read %.1f GB/s (min %.1f max %.1f), memcpy r+w %.1f GB/s (min %.1f max %.1f)\n", rd[5], rd[0], rd[9], cp[5], cp[0], cp[9]);
}
