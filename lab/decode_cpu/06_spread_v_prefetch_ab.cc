// Interleaved A/B of decode-kernel variants (AK_V) on two shapes, 2 threads, one process.
#include <fmt/format.h>
#include <chrono>
#include <cstdlib>
#include <random>
#include <vector>
#include <algorithm>
#include "attnkit/attnkit.h"
#include "core/thread_pool.h"
#include <immintrin.h>
using namespace attnkit;
using clk = std::chrono::steady_clock;
static double med(std::vector<double> v){ std::sort(v.begin(), v.end()); return v[v.size()/2]; }
struct Shape { int64_t Hq, Hkv, D; };
int main() {
  const int64_t N = 32768, ps = 64;
  const Shape shapes[2] = {{32, 8, 128}, {8, 2, 64}};
  const int NV = 3;
  for (const Shape& sh : shapes) {
    KVCache cache(KVCacheConfig{.num_layers = 1, .heads_kv = sh.Hkv, .head_dim = sh.D, .page_size = ps, .num_pages = N / ps + 2});
    const SeqId s = cache.add_sequence();
    std::mt19937 rng(7); std::normal_distribution<float> g;
    const int64_t step = 1024; std::vector<float> k(step * sh.Hkv * sh.D), v(k.size());
    for (int64_t t = 0; t < N; t += step) { for (float& x : k) x = g(rng); for (float& x : v) x = g(rng);
      cache.append(s, TensorView(k.data(), DType::f32, {1, step, sh.Hkv, sh.D}), TensorView(v.data(), DType::f32, {1, step, sh.Hkv, sh.D})); }
    std::vector<float> q(sh.Hq * sh.D), out(sh.Hq * sh.D); for (float& x : q) x = g(rng);
    const SeqId ids[] = {s};
    const DecodePlan plan = plan_decode(cache, ids, 1, sh.Hq);
    const TensorView Q(q.data(), DType::f32, {1, 1, sh.Hq, sh.D}), O(out.data(), DType::f32, {1, 1, sh.Hq, sh.D});
    std::vector<double> t[NV];
    for (int round = 0; round < 12; ++round) for (int c = 0; c < NV; ++c) {
      setenv("AK_V", c == 0 ? "0" : c == 1 ? ":" : "9", 1);
      for (int r = 0; r < 8; ++r) { auto t0 = clk::now(); run_decode(cache, plan, 0, Q, O);
        if (r >= 1) t[c].push_back(std::chrono::duration<double>(clk::now() - t0).count()); }
    }
    const double bytes = 2.0 * N * sh.Hkv * sh.D * 4;
    { // plain 2-thread read in the decode's order: items (head, half of the pages), K block then V block per page
      auto tbl = cache.page_table(s);
      std::vector<double> tp; std::vector<float> sinks(2);
      const int64_t np = static_cast<int64_t>(tbl.size());
      for (int r = 0; r < 30; ++r) { auto t0 = clk::now();
        attnkit::ThreadPool& P = attnkit::pool();
        P.parallel_for(sh.Hkv * 2, [&](int64_t it, int th) {
          const int64_t h = it / 2, p0 = (it % 2) * np / 2, p1 = (it % 2 + 1) * np / 2;
          __m256 acc = _mm256_setzero_ps();
          for (int64_t p = p0; p < p1; ++p) for (int kv = 0; kv < 2; ++kv) {
            const float* b = static_cast<const float*>(cache.block(tbl[p], 0, kv, h));
            for (int64_t i = 0; i < ps * sh.D; i += 32) { acc = _mm256_add_ps(acc, _mm256_loadu_ps(b + i)); acc = _mm256_add_ps(acc, _mm256_loadu_ps(b + i + 8)); acc = _mm256_add_ps(acc, _mm256_loadu_ps(b + i + 16)); acc = _mm256_add_ps(acc, _mm256_loadu_ps(b + i + 24)); }
          }
          sinks[th] += acc[0]; });
        tp.push_back(std::chrono::duration<double>(clk::now() - t0).count()); }
      fmt::print("plain read, decode order: {:.2f} ms ({:.1f} GB/s)\n", med(tp) * 1e3, bytes / med(tp) * 1e-9);
    }
    fmt::print("GQA {}/{} D {}: ", sh.Hq, sh.Hkv, sh.D);
    for (int c = 0; c < NV; ++c) fmt::print(" v{} {:.2f} ms ({:.1f} GB/s)", c, med(t[c]) * 1e3, bytes / med(t[c]) * 1e-9);
    fmt::print("\n");
  }
}
