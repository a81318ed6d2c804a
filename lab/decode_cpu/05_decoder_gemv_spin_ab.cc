#include <fmt/format.h>
#include <chrono>
#include <cstdlib>
#include <random>
#include <vector>
#include <algorithm>
#include "attnkit/attnkit.h"
using namespace attnkit;
using clk = std::chrono::steady_clock;
static double med(std::vector<double> v){ std::sort(v.begin(), v.end()); return v[v.size()/2]; }
int main() {
  const model::Decoder m = model::Decoder::random(model::preset("small"), 9);
  const int64_t ctx = 32768, ps = 64;
  KVCache cache(m.cache_config(ctx / ps + 2, ps));
  const SeqId s = m.add_sequence(cache);
  { const KVCacheConfig& c = cache.config(); std::mt19937 rng(11); std::normal_distribution<float> g;
    const int64_t step = 512; std::vector<float> k(c.num_layers * step * c.heads_kv * c.head_dim), v(k.size());
    for (int64_t t = 0; t < ctx - 1; t += step) { const int64_t mm = std::min(step, ctx - 1 - t);
      for (float& x : k) x = g(rng); for (float& x : v) x = g(rng);
      cache.append(s, TensorView(k.data(), DType::f32, {c.num_layers, mm, c.heads_kv, c.head_dim}, {step * c.heads_kv * c.head_dim, c.heads_kv * c.head_dim, c.head_dim, 1}),
                      TensorView(v.data(), DType::f32, {c.num_layers, mm, c.heads_kv, c.head_dim}, {step * c.heads_kv * c.head_dim, c.heads_kv * c.head_dim, c.head_dim, 1})); } }
  const SeqId ids[] = {s}; const int32_t tok[] = {17};
  const char* names[4] = {"blas nospin (old)", "gemv spin", "gemv nospin", "blas spin"};
  std::vector<double> t[4];
  for (int round = 0; round < 15; ++round) for (int c = 0; c < 4; ++c) {
    if (c == 0 || c == 3) setenv("AK_BLAS", "1", 1); else unsetenv("AK_BLAS");
    if (c == 0 || c == 2) setenv("AK_NOSPIN", "1", 1); else unsetenv("AK_NOSPIN");
    for (int r = 0; r < 12; ++r) { auto t0 = clk::now(); m.forward(cache, ids, tok); cache.truncate(s, ctx - 1);
      if (r >= 2) t[c].push_back(std::chrono::duration<double>(clk::now() - t0).count()); }
  }
  for (int c = 0; c < 4; ++c) fmt::print("{:20} median {:.2f} ms  p25 {:.2f}  min {:.2f}\n", names[c], med(t[c]) * 1e3,
    [&]{ auto v = t[c]; std::sort(v.begin(), v.end()); return v[v.size()/4]; }() * 1e3, *std::min_element(t[c].begin(), t[c].end()) * 1e3);
}
