// attnkit serve-bench: serving latency and memory of the decoder per attention variant.
//   attnkit serve-bench [--preset small] [--variants exact,window,linear] [--window 1024]
//                       [--ctx 512,2048,8192] [--new 32] [--page-size 64] [--prefill-chunk 512]
//                       [--kv-dtype f32] [--int8] [--json out.json] [--csv out.csv] [--plot prefix]
// Per (variant, context): a random prompt of ctx tokens is prefilled in chunks, then --new
// tokens are generated greedily. Reports time to first token (prefill + first sample), per-token
// latency median and p99, decode tokens/s, KV-cache bytes, and the decode cost model's
// prediction (kv_cache.h) from the memcpy bandwidth measured at the start. --plot draws latency
// and KV bytes against context per variant (tools/plot.py serve) from the --json file.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "attnkit/attnkit.h"
#include "core/measure.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace attnkit::tools {
namespace {

struct ServeOptions {
  std::string preset = "small", kv_dtype = "f32", json, csv, plot;
  std::vector<std::string> variants = {"exact", "window", "linear"};
  std::vector<int64_t> ctxs = {512, 2048, 8192};
  int64_t window = 1024, new_tokens = 32, page_size = 64, prefill_chunk = 512;
  bool int8 = false;
};

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(std::min<double>(v.size() - 1, std::ceil(p * v.size()) - 1))];
}

void run_serve_bench(const ServeOptions& o) {
  if (o.ctxs.empty()) throw Error("--ctx: expected at least one context length");
  for (int64_t c : o.ctxs)
    if (c < 1 || c > (int64_t{1} << 22)) throw Error(fmt::format("--ctx: expected lengths in 1..4194304, given {}", c));
  if (o.new_tokens < 1) throw Error(fmt::format("--new: expected >= 1, given {}", o.new_tokens));
  if (o.page_size < 1 || o.prefill_chunk < 1 || o.window < 1) {
    throw Error(fmt::format("--page-size, --prefill-chunk, --window: expected >= 1, given {}, {}, {}", o.page_size,
                            o.prefill_chunk, o.window));
  }
  KVDType kv = KVDType::f32;
  bool found = false;
  for (KVDType t : {KVDType::f32, KVDType::bf16, KVDType::f16, KVDType::int8})
    if (o.kv_dtype == to_string(t)) kv = t, found = true;
  if (!found) throw Error(fmt::format("--kv-dtype: expected f32, bf16, f16 or int8, given '{}'", o.kv_dtype));
  for (const auto& v : o.variants)
    if (v != "exact" && v != "window" && v != "linear") {
      throw Error(fmt::format("--variants: expected exact, window or linear, given '{}'", v));
    }

  const double bw = measure::memcpy_gbps();
  fmt::print("attnkit serve-bench  cpu: {}  threads: {}  memcpy {:.1f} GB/s\n", measure::cpu_name(), num_threads(), bw);
  fmt::print("{:>7} {:>7} {:>10} {:>10} {:>10} {:>8} {:>12} {:>10}\n", "variant", "ctx", "TTFT ms", "tok p50 ms",
             "tok p99 ms", "tok/s", "KV MiB", "model ms");
  nlohmann::json j;
  j["cpu"] = measure::cpu_name();
  j["memcpy_gbps"] = bw;
  std::ofstream csv;
  if (!o.csv.empty()) {
    csv.open(o.csv);
    if (!csv) throw Error(fmt::format("--csv: cannot write '{}'", o.csv));
    csv << "variant,ctx,ttft_ms,token_p50_ms,token_p99_ms,tokens_per_s,kv_bytes,predicted_ms\n";
  }
  for (const auto& variant : o.variants) {
    model::DecoderConfig cfg = model::preset(o.preset);
    if (variant == "window") {
      cfg.mixer = model::Mixer::sliding_window;
      cfg.window = o.window;
    } else if (variant == "linear") {
      cfg.mixer = model::Mixer::linear;
      cfg.window = 0;
    } else {
      cfg.mixer = model::Mixer::exact;
      cfg.window = 0;
    }
    model::Decoder m = model::Decoder::random(cfg, 1);
    if (o.int8) m.quantize_int8();
    for (int64_t ctx : o.ctxs) {
      KVCache cache(m.cache_config((ctx + o.new_tokens) / o.page_size + 2, o.page_size, kv));
      const SeqId seq = m.add_sequence(cache);
      std::mt19937 rng(static_cast<unsigned>(ctx));
      std::vector<int32_t> prompt(ctx);
      for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % cfg.vocab);
      using clock = std::chrono::steady_clock;
      std::vector<double> lat;
      auto last = clock::now();
      const auto t0 = last;
      double ttft = 0;
      m.generate(cache, seq, prompt, {.max_new_tokens = o.new_tokens, .prefill_chunk = o.prefill_chunk},
                 [&](int32_t, int64_t i) {
                   const auto now = clock::now();
                   if (i == 0) ttft = std::chrono::duration<double>(now - t0).count();
                   else lat.push_back(std::chrono::duration<double>(now - last).count());
                   last = now;
                   return true;
                 });
      const double p50 = lat.empty() ? 0 : percentile(lat, 0.5), p99 = lat.empty() ? 0 : percentile(lat, 0.99);
      double sum = 0;
      for (double x : lat) sum += x;
      const double tps = lat.empty() ? 0 : lat.size() / sum;
      const double predicted = model::decode_cost(m, ctx, kv).seconds(bw * 1e9);
      fmt::print("{:>7} {:>7} {:>10.2f} {:>10.2f} {:>10.2f} {:>8.1f} {:>12.2f} {:>10.2f}\n", variant, ctx, ttft * 1e3,
                 p50 * 1e3, p99 * 1e3, tps, cache.bytes_in_use() / 1048576.0, predicted * 1e3);
      std::fflush(stdout);
      j["points"].push_back({{"variant", variant}, {"ctx", ctx}, {"ttft_ms", ttft * 1e3}, {"token_p50_ms", p50 * 1e3},
                             {"token_p99_ms", p99 * 1e3}, {"tokens_per_s", tps}, {"kv_bytes", cache.bytes_in_use()},
                             {"predicted_ms", predicted * 1e3}});
      if (csv.is_open()) {
        csv << fmt::format("{},{},{:.4f},{:.4f},{:.4f},{:.3f},{},{:.4f}\n", variant, ctx, ttft * 1e3, p50 * 1e3,
                           p99 * 1e3, tps, cache.bytes_in_use(), predicted * 1e3);
      }
    }
  }
  if (!o.json.empty()) {
    std::ofstream f(o.json);
    if (!f) throw Error(fmt::format("--json: cannot write '{}'", o.json));
    f << j.dump(2) << "\n";
    fmt::print("wrote {}\n", o.json);
  }
  if (!o.plot.empty()) {
    if (o.json.empty()) throw Error("--plot: needs --json (the plot is drawn from it)");
    plot("serve", o.json, o.plot);
    fmt::print("wrote {}.png, {}_memory.png and their .svg\n", o.plot, o.plot);
  }
}

}  // namespace

void register_serve_bench(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand("serve-bench", "decoder latency, throughput and KV memory against context length");
  cmd->add_option("--preset", o->preset, "tiny or small (the shapes; --variants picks the mixer)");
  cmd->add_option("--variants", o->variants, "exact, window, linear")->delimiter(',');
  cmd->add_option("--window", o->window, "window of the window variant");
  cmd->add_option("--ctx", o->ctxs, "context (prompt) lengths")->delimiter(',');
  cmd->add_option("--new", o->new_tokens, "tokens generated per point");
  cmd->add_option("--page-size", o->page_size, "KV-cache page size in tokens");
  cmd->add_option("--prefill-chunk", o->prefill_chunk, "prefill chunk in tokens");
  cmd->add_option("--kv-dtype", o->kv_dtype, "KV-cache storage: f32, bf16, f16, int8");
  cmd->add_flag("--int8", o->int8, "int8 weight-only linear layers");
  cmd->add_option("--json", o->json, "write the results as JSON");
  cmd->add_option("--csv", o->csv, "write the results as CSV");
  cmd->add_option("--plot", o->plot, "path prefix of latency and memory plots against context (.png and .svg)");
  cmd->callback([o] { run_serve_bench(*o); });
}

}  // namespace attnkit::tools
