// attnkit bench: time the exact CPU kernels over a sweep of sequence lengths.
//   attnkit bench [--variants naive,flash] [--n 512,1024,...] [--d 64] [--heads 8] [--causal]
//                 [--pass fwd|bwd|both] [--json file]
// Per point: median time, GFLOP/s by the cost model's count, extra memory of one call.
#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "attnkit/attnkit.h"
#include "core/measure.h"
#include "tools/commands.h"

namespace attnkit::tools {
namespace {

struct BenchOptions {
  std::vector<std::string> variants = {"naive", "flash"};
  std::vector<int64_t> ns = {256, 512, 1024, 2048, 4096};
  int64_t d = 64, heads = 8;
  bool causal = false;
  std::string pass = "both";
  std::string json;
  double min_seconds = 0.3;
};

Algorithm parse_algorithm(const std::string& s) {
  if (s == "naive") return Algorithm::naive;
  if (s == "flash") return Algorithm::flash;
  if (s == "reference") return Algorithm::reference;
  throw Error(fmt::format("--variants: expected naive, flash or reference, given '{}'", s));
}

void run_bench(const BenchOptions& o) {
  if (o.ns.empty()) throw Error("--n: expected at least one sequence length");
  for (int64_t n : o.ns)
    if (n <= 0 || n > (int64_t{1} << 24)) throw Error(fmt::format("--n: expected lengths in 1..16777216, given {}", n));
  if (o.pass != "fwd" && o.pass != "bwd" && o.pass != "both")
    throw Error(fmt::format("--pass: expected fwd, bwd or both, given '{}'", o.pass));
  for (const auto& v : o.variants) parse_algorithm(v);

  fmt::print("attnkit bench  cpu: {}  threads: {}  BLAS: {}\n", measure::cpu_name(), num_threads(), measure::blas_core());
  fmt::print("B = 1, H = {}, D = {}, {}, f32\n\n", o.heads, o.d, o.causal ? "causal" : "non-causal");
  fmt::print("{:>9} {:>4} {:>7} {:>11} {:>9} {:>11}\n", "variant", "pass", "N", "median ms", "GFLOP/s", "extra MiB");
  nlohmann::json j;
  j["cpu"] = measure::cpu_name();
  j["threads"] = num_threads();
  for (int64_t n : o.ns) {
    const size_t e = n * o.heads * o.d;
    std::vector<float> q(e), k(e), v(e), out(e), dout(e), dq(e), dk(e), dv(e), lse(o.heads * n);
    std::mt19937 rng(static_cast<unsigned>(n));
    std::normal_distribution<float> g;
    for (auto* x : {&q, &k, &v, &dout})
      for (float& f : *x) f = g(rng);
    auto view = [&](std::vector<float>& x) { return TensorView(x.data(), DType::f32, {1, n, o.heads, o.d}); };
    const TensorView L(lse.data(), DType::f32, {1, o.heads, n});
    const cost::AttentionShape shape{.batch = 1, .seq_q = n, .seq_k = n, .heads_q = o.heads, .heads_kv = o.heads,
                                     .head_dim = o.d, .causal = o.causal};
    for (const auto& variant : o.variants) {
      AttentionParams p;
      p.causal = o.causal;
      p.algorithm = parse_algorithm(variant);
      for (const std::string pass : {"fwd", "bwd"}) {
        if (o.pass != "both" && o.pass != pass) continue;
        std::function<void()> fn = [&] { forward(view(q), view(k), view(v), view(out), p, L); };
        if (pass == "bwd") {
          fn();
          fn = [&] { backward(view(q), view(k), view(v), view(out), view(dout), L, view(dq), view(dk), view(dv), p); };
        }
        const measure::Timing t = measure::time_median(fn, 1, 3, o.min_seconds);
        const double extra = measure::extra_memory_bytes(fn) / 1048576.0;
        const double flops = pass == "fwd" ? cost::attention_fwd_flops(shape) : cost::attention_bwd_flops(shape);
        fmt::print("{:>9} {:>4} {:>7} {:>11.3f} {:>9.1f} {:>11.1f}\n", variant, pass, n, t.median_s * 1e3,
                   flops / t.median_s * 1e-9, extra);
        std::fflush(stdout);
        j["points"].push_back({{"variant", variant}, {"pass", pass}, {"n", n}, {"d", o.d}, {"heads", o.heads},
                               {"causal", o.causal}, {"median_ms", t.median_s * 1e3},
                               {"gflops", flops / t.median_s * 1e-9}, {"extra_mib", extra}});
      }
    }
  }
  if (!o.json.empty()) {
    std::ofstream f(o.json);
    if (!f) throw Error(fmt::format("--json: cannot write '{}'", o.json));
    f << j.dump(2) << "\n";
    fmt::print("\nwrote {}\n", o.json);
  }
}

}  // namespace

void register_bench(CLI::App& app) {
  auto opts = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "time attention variants over a sweep of sequence lengths");
  cmd->add_option("--variants", opts->variants, "naive, flash, reference")->delimiter(',');
  cmd->add_option("--n", opts->ns, "sequence lengths")->delimiter(',');
  cmd->add_option("--d", opts->d, "head dim")->check(CLI::Range(1, 256));
  cmd->add_option("--heads", opts->heads, "heads")->check(CLI::Range(1, 1024));
  cmd->add_flag("--causal", opts->causal, "causal masking");
  cmd->add_option("--pass", opts->pass, "fwd, bwd or both");
  cmd->add_option("--json", opts->json, "write the results as JSON");
  cmd->add_option("--min-seconds", opts->min_seconds, "minimum timing time per point");
  cmd->callback([opts] { run_bench(*opts); });
}

}  // namespace attnkit::tools
