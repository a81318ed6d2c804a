// Lab harness for the CPU flash forward: single-threaded flash vs single-threaded sgemm,
// interleaved, best of several runs (robust to other load on the machine).
//   harness N D [reps]     (B·H = 8, non-causal, f32)
#include <cblas.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "attnkit/attnkit.h"

extern "C" void openblas_set_num_threads(int);

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 4096, d = argc > 2 ? std::atoll(argv[2]) : 128, H = 8;
  const int reps = argc > 3 ? std::atoi(argv[3]) : 5;
  attnkit::set_num_threads(1);
  openblas_set_num_threads(1);
  std::vector<float> q(n * H * d), k(q.size()), v(q.size()), o(q.size()), lse(H * n);
  std::mt19937 rng(1);
  std::normal_distribution<float> g;
  for (auto* x : {&q, &k, &v})
    for (float& f : *x) f = g(rng);
  using attnkit::DType;
  attnkit::TensorView Q(q.data(), DType::f32, {1, n, H, d}), K(k.data(), DType::f32, {1, n, H, d}),
      V(v.data(), DType::f32, {1, n, H, d}), O(o.data(), DType::f32, {1, n, H, d}), L(lse.data(), DType::f32, {1, H, n});
  const int64_t m = 1024;
  std::vector<float> a(m * m, 1), b(m * m, 1), c(m * m);
  double best_flash = 1e9, best_gemm = 1e9;
  auto now = [] { return std::chrono::steady_clock::now(); };
  for (int r = 0; r < reps; ++r) {
    auto t0 = now();
    attnkit::forward(Q, K, V, O, {}, L);
    auto t1 = now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, m, m, 1, a.data(), m, b.data(), m, 0, c.data(), m);
    auto t2 = now();
    best_flash = std::min(best_flash, std::chrono::duration<double>(t1 - t0).count());
    best_gemm = std::min(best_gemm, std::chrono::duration<double>(t2 - t1).count());
  }
  const double flash = 4.0 * n * n * d * H / best_flash * 1e-9, gemm = 2.0 * m * m * m / best_gemm * 1e-9;
  std::printf("N=%lld D=%lld 1 thread: flash fwd %.1f GFLOP/s, sgemm %.1f GFLOP/s, ratio %.2f\n", (long long)n,
              (long long)d, flash, gemm, flash / gemm);
}
