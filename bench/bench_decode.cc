// Inference benchmarks and the bars of issue 7, in one run (this machine is shared; medians,
// fresh data larger than the caches). The bars that compare with memcpy bandwidth time their
// subject in rounds interleaved with one 256 MiB memcpy each (measure::time_against_copy) and
// compare the two medians, so that both are measured at the same moments:
//   1. CPU decode attention: f32 cache, GQA 32 query / 8 KV heads, D = 128, one sequence of
//      32768 tokens: the bandwidth at which the kernel reads the cache, against memcpy.
//   2. Sliding-window decoder: KV-cache bytes against context length (flat beyond the window).
//   3. Exact decoder at a 32768-token context: per-token latency against the decode cost model
//      (KV bytes + weight bytes) / measured bandwidth.
//   4. Linear-attention decoder: per-token latency at contexts up to 32768 (flat: constant state).
//
//   bench_decode [--ctx 32768] [--page-size 64] [--json out.json] [--skip-model]
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
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
nlohmann::json decode_kernel(const Options& o, measure::CopyProbe& probe) {
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
  const measure::AgainstCopy r = measure::time_against_copy([&] { run_decode(cache, plan, 0, Q, O); }, probe, 2, 20, 2.0);
  const measure::Timing& t = r.fn;
  const double memcpy_gbps = r.copy_gbps;
  const double bytes = decode_kv_bytes(1, N, Hkv, D, KVDType::f32);
  const double gbps = bytes / t.median_s * 1e-9;
  fmt::print("[bar] decode f32 GQA 32/8 D=128 N={} page={}: median {:.3f} ms (min {:.3f}), reads {:.1f} GB/s = {:.0f}% "
             "of memcpy {:.1f} GB/s interleaved (bar: >= 60%)  items {}  chunks {}\n",
             N, o.page_size, t.median_s * 1e3, t.min_s * 1e3, gbps, 100 * gbps / memcpy_gbps, memcpy_gbps,
             plan.items.size(), plan.total_splits);
  return {{"ctx", N}, {"page_size", o.page_size}, {"median_ms", t.median_s * 1e3}, {"min_ms", t.min_s * 1e3},
          {"kv_bytes", bytes}, {"read_gbps", gbps}, {"memcpy_gbps", memcpy_gbps}, {"fraction_of_memcpy", gbps / memcpy_gbps},
          {"pass", gbps >= 0.6 * memcpy_gbps}};
}

// Fills seq with n positions of random keys and values in every layer (a synthetic context:
// decode cost does not depend on the values).
void fill_cache(KVCache& cache, SeqId seq, int64_t n) {
  const KVCacheConfig& c = cache.config();
  std::mt19937 rng(11);
  std::normal_distribution<float> g;
  const int64_t step = 512;
  std::vector<float> k(c.num_layers * step * c.heads_kv * c.head_dim), v(k.size());
  for (int64_t t = 0; t < n; t += step) {
    const int64_t m = std::min(step, n - t);
    for (float& x : k) x = g(rng);
    for (float& x : v) x = g(rng);
    cache.append(seq, TensorView(k.data(), DType::f32, {c.num_layers, m, c.heads_kv, c.head_dim}, 
                                 {step * c.heads_kv * c.head_dim, c.heads_kv * c.head_dim, c.head_dim, 1}),
                 TensorView(v.data(), DType::f32, {c.num_layers, m, c.heads_kv, c.head_dim},
                            {step * c.heads_kv * c.head_dim, c.heads_kv * c.head_dim, c.head_dim, 1}));
  }
}

// Bar 2: KV-cache bytes of a sliding-window decoder against context length, next to the exact
// one, running the real prefill (chunks of 256) through a small decoder.
nlohmann::json window_memory() {
  model::DecoderConfig exact{.vocab = 512, .dim = 128, .layers = 2, .heads_q = 4, .heads_kv = 2, .head_dim = 32,
                             .ffn_dim = 256};
  model::DecoderConfig window = exact;
  window.mixer = model::Mixer::sliding_window;
  window.window = 512;
  nlohmann::json rows = nlohmann::json::array();
  fmt::print("\n[bar] sliding-window decoder KV memory (window 512, page 64) against the exact decoder\n");
  fmt::print("{:>8} {:>14} {:>14}\n", "context", "window KiB", "exact KiB");
  const std::vector<int64_t> ctxs = {256, 512, 1024, 2048, 4096, 8192};
  std::vector<int64_t> wbytes, ebytes;
  for (const model::DecoderConfig& cfg : {window, exact}) {
    const model::Decoder m = model::Decoder::random(cfg, 5);
    KVCache cache(m.cache_config(8192 / 64 + 2, 64));
    const SeqId ids[] = {m.add_sequence(cache)};
    std::mt19937 rng(3);
    int64_t at = 0;
    for (int64_t ctx : ctxs) {
      std::vector<int32_t> toks;
      for (; at < ctx; ++at) toks.push_back(static_cast<int32_t>(rng() % cfg.vocab));
      for (size_t t = 0; t < toks.size(); t += 256)
        m.forward(cache, ids, std::span(toks).subspan(t, std::min<size_t>(256, toks.size() - t)));
      (cfg.window > 0 ? wbytes : ebytes).push_back(cache.bytes_in_use());
    }
  }
  for (size_t i = 0; i < ctxs.size(); ++i) {
    fmt::print("{:>8} {:>14.0f} {:>14.0f}\n", ctxs[i], wbytes[i] / 1024.0, ebytes[i] / 1024.0);
    rows.push_back({{"context", ctxs[i]}, {"window_kv_bytes", wbytes[i]}, {"exact_kv_bytes", ebytes[i]}});
  }
  const bool flat = wbytes[2] == wbytes.back();  // from 2× the window to 16×
  fmt::print("window decoder KV bytes at 1024 and 8192 tokens: {} and {} ({})\n", wbytes[2], wbytes.back(),
             flat ? "flat: pass" : "not flat: FAIL");
  return {{"window", 512}, {"page_size", 64}, {"rows", rows}, {"pass", flat}};
}

// Bar 3: per-token latency of the exact decoder ("small" preset) at a long context against the
// decode cost model (kv_cache.h, DecodeCost): (KV bytes + weight bytes) / bandwidth.
nlohmann::json decoder_latency(const Options& o, measure::CopyProbe& probe) {
  const model::Decoder m = model::Decoder::random(model::preset("small"), 9);
  const int64_t ctx = o.ctx;
  KVCache cache(m.cache_config(ctx / o.page_size + 2, o.page_size));
  const SeqId s = m.add_sequence(cache);
  fill_cache(cache, s, ctx - 1);
  const SeqId ids[] = {s};
  const int32_t tok[] = {17};
  const measure::AgainstCopy r = measure::time_against_copy(
      [&] {
        m.forward(cache, ids, tok);
        cache.truncate(s, ctx - 1);  // every step decodes at the same context
      },
      probe, 2, 10, 2.0);
  const measure::Timing& t = r.fn;
  const double memcpy_gbps = r.copy_gbps;
  const DecodeCost cost = model::decode_cost(m, ctx);
  const double predicted = cost.seconds(memcpy_gbps * 1e9);
  const double ratio = t.median_s / predicted;
  fmt::print("\n[bar] exact decoder 'small' ({} layers, GQA {}/{}, D {}, {:.1f}M parameters) at context {}: "
             "{:.2f} ms/token (min {:.2f}); cost model (KV {:.0f} MB + weights {:.0f} MB) / {:.1f} GB/s (memcpy interleaved) = {:.2f} ms; "
             "measured / predicted = {:.2f} (bar: <= 1.5)\n",
             m.config().layers, m.config().heads_q, m.config().heads_kv, m.config().head_dim,
             model::parameter_count(m.config()) / 1e6, ctx, t.median_s * 1e3, t.min_s * 1e3, cost.kv_bytes / 1e6,
             cost.weight_bytes / 1e6, memcpy_gbps, predicted * 1e3, ratio);
  return {{"ctx", ctx}, {"median_ms", t.median_s * 1e3}, {"min_ms", t.min_s * 1e3}, {"kv_bytes", cost.kv_bytes},
          {"weight_bytes", cost.weight_bytes}, {"memcpy_gbps", memcpy_gbps}, {"predicted_ms", predicted * 1e3}, {"ratio", ratio},
          {"pass", ratio <= 1.5}};
}

// Bar 4: per-token latency of the linear-attention decoder ("small-linear") as the context grows
// to 32768 tokens: its state has a constant size, so the latency should stay flat.
nlohmann::json linear_latency(const Options& o) {
  const model::Decoder m = model::Decoder::random(model::preset("small-linear"), 9);
  KVCache cache(m.cache_config(0, o.page_size));
  std::mt19937 rng(5);
  const std::vector<int64_t> ctxs = {1024, 4096, 16384, o.ctx};
  nlohmann::json rows = nlohmann::json::array();
  fmt::print("\n[bar] linear-attention decoder 'small-linear' per-token latency against context\n");
  fmt::print("{:>8} {:>10} {:>10} {:>12}\n", "context", "p50 ms", "min ms", "state KiB");
  // One sequence per context, prefilled to it; then the contexts' steps are timed in alternation
  // (a round steps each once), so that a burst of machine noise lands on all of them alike.
  std::vector<SeqId> seqs;
  for (int64_t ctx : ctxs) {
    seqs.push_back(m.add_sequence(cache));
    const SeqId ids[] = {seqs.back()};
    std::vector<int32_t> toks;
    for (int64_t at = 0; at < ctx - 1; ++at) toks.push_back(static_cast<int32_t>(rng() % 4096));
    for (size_t t = 0; t < toks.size(); t += 2048)
      m.forward(cache, ids, std::span(toks).subspan(t, std::min<size_t>(2048, toks.size() - t)));
  }
  std::vector<std::vector<double>> lat(ctxs.size());
  for (int round = 0; round < 31; ++round) {  // each step decodes at ctx, ctx + 1, ...: the state does not care
    for (size_t c = 0; c < ctxs.size(); ++c) {
      const SeqId ids[] = {seqs[c]};
      const int32_t tok[] = {static_cast<int32_t>(rng() % 4096)};
      const double t = measure::time_median([&] { m.forward(cache, ids, tok); }, 0, 1, 0.0).median_s;
      if (round > 0) lat[c].push_back(t);  // round 0 warms the sequence's state up
    }
  }
  std::vector<double> p50;
  const int64_t state = cache.bytes_in_use() / static_cast<int64_t>(ctxs.size());  // per sequence
  for (size_t c = 0; c < ctxs.size(); ++c) {
    std::sort(lat[c].begin(), lat[c].end());
    p50.push_back(lat[c][lat[c].size() / 2]);
    fmt::print("{:>8} {:>10.3f} {:>10.3f} {:>12.1f}\n", ctxs[c], p50.back() * 1e3, lat[c].front() * 1e3, state / 1024.0);
    rows.push_back({{"context", ctxs[c]}, {"p50_ms", p50.back() * 1e3}, {"min_ms", lat[c].front() * 1e3},
                    {"state_bytes", state}});
  }
  const double growth = p50.back() / p50.front();
  const bool flat = growth <= 1.25;
  fmt::print("per-token latency at {} over at 1024 tokens: {:.2f} (flat within 25%: {})\n", ctxs.back(), growth,
             flat ? "pass" : "FAIL");
  return {{"rows", rows}, {"growth", growth}, {"pass", flat}};
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
    measure::CopyProbe probe;
    const double bw = measure::memcpy_gbps();
    fmt::print("memcpy bandwidth at the start (read + write; the bars use the copies interleaved with their "
               "timings): {:.1f} GB/s\n", bw);
    nlohmann::json j;
    j["cpu"] = measure::cpu_name();
    j["threads"] = num_threads();
    j["memcpy_gbps"] = bw;
    j["decode_kernel"] = decode_kernel(o, probe);
    if (!o.skip_model) {
      j["window_memory"] = window_memory();
      j["decoder_latency"] = decoder_latency(o, probe);
      j["linear_latency"] = linear_latency(o);
    }
    j["memcpy_gbps_after"] = measure::memcpy_gbps();
    fmt::print("memcpy bandwidth again at the end: {:.1f} GB/s\n", j["memcpy_gbps_after"].get<double>());
    if (!o.json.empty()) std::ofstream(o.json) << j.dump(2) << "\n";
  } catch (const Error& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 2;
  }
  return 0;
}
