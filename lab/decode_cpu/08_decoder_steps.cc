// Lab 08: the 'small' decoder at a 32768-token context, per-token forward, variants switched by
// an environment variable that src read at run time while the experiment ran (AK_FAR: L2
// requests for the decode kernel's block n ahead; AK_GPF: gemv requests n four-row groups
// ahead; both switches since removed), rounds interleaved; and a plain two-thread read of the
// same bytes (KV + weights) timed in alternation with the decoder.
// Standalone: g++ -O2 -std=c++20 -Iinclude lab/decode_cpu/08_decoder_steps.cc build/release/libattnkit.a \
//   -lfmt -lhwy -lopenblas -pthread -mavx2 -o /tmp/lab08
#include <fmt/format.h>
#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "attnkit/attnkit.h"
using namespace attnkit;
using clk = std::chrono::steady_clock;
static double med(std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; }
volatile float sink[16];
static void readpart(const float* p, size_t n, int t) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i)); a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16)); a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
  }
  float o[8];
  _mm256_storeu_ps(o, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (int x = 0; x < 8; ++x) sink[t * 8 + x] = o[x];
}
int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 20;
  const model::Decoder m = model::Decoder::random(model::preset("small"), 9);
  const int64_t ctx = 32768, ps = 64;
  KVCache cache(m.cache_config(ctx / ps + 2, ps));
  const SeqId s = m.add_sequence(cache);
  {
    const KVCacheConfig& c = cache.config();
    std::mt19937 rng(11);
    std::normal_distribution<float> g;
    const int64_t step = 512;
    std::vector<float> k(c.num_layers * step * c.heads_kv * c.head_dim), v(k.size());
    for (int64_t t = 0; t < ctx - 1; t += step) {
      const int64_t mm = std::min(step, ctx - 1 - t);
      for (float& x : k) x = g(rng);
      for (float& x : v) x = g(rng);
      const int64_t s0 = step * c.heads_kv * c.head_dim, s1 = c.heads_kv * c.head_dim, s2 = c.head_dim;
      cache.append(s, TensorView(k.data(), DType::f32, {c.num_layers, mm, c.heads_kv, c.head_dim}, {s0, s1, s2, 1}),
                   TensorView(v.data(), DType::f32, {c.num_layers, mm, c.heads_kv, c.head_dim}, {s0, s1, s2, 1}));
    }
  }
  const DecodeCost cost = model::decode_cost(m, ctx);
  const size_t bytes = static_cast<size_t>(cost.kv_bytes + cost.weight_bytes) / 64 * 64, n = bytes / 4;
  float* buf = static_cast<float*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  madvise(buf, bytes, MADV_HUGEPAGE);
  std::memset(buf, 1, bytes);
  const SeqId ids[] = {s};
  const int32_t tok[] = {17};
  std::vector<double> td, tr;
  const char* vars[] = {"0", "e", "0", "e"};
  std::vector<double> tv[4];
  for (int r = 0; r < rounds; ++r) {
    for (int v = 0; v < 4; ++v) {
      if (vars[v][0] != '0') setenv("AK_EXP2", vars[v], 1); else unsetenv("AK_EXP2");
      for (int rep = 0; rep < 3; ++rep) {
        auto a0 = clk::now();
        m.forward(cache, ids, tok);
        cache.truncate(s, ctx - 1);
        if (r >= 1) tv[v].push_back(std::chrono::duration<double>(clk::now() - a0).count());
      }
    }
    unsetenv("AK_EXP2");
    auto t0 = clk::now();
    { std::thread t1(readpart, buf, n / 2, 0); readpart(buf + n / 2, n / 2, 1); t1.join(); }
    auto t1 = clk::now();
    m.forward(cache, ids, tok);
    cache.truncate(s, ctx - 1);
    auto t2 = clk::now();
    if (r >= 2) {
      tr.push_back(std::chrono::duration<double>(t1 - t0).count());
      td.push_back(std::chrono::duration<double>(t2 - t1).count());
    }
  }
  for (int v = 0; v < 4; ++v) fmt::print("variant {}: decoder median {:.2f} ms, min {:.2f}\n", vars[v], med(tv[v]) * 1e3, *std::min_element(tv[v].begin(), tv[v].end()) * 1e3);
  fmt::print("{:.0f} MB per step: decoder {:.2f} ms ({:.1f} GB/s), plain read {:.2f} ms ({:.1f} GB/s), ratio {:.2f}\n",
             bytes / 1e6, med(td) * 1e3, bytes / med(td) * 1e-9, med(tr) * 1e3, bytes / med(tr) * 1e-9, med(td) / med(tr));
}
