// attnkit bench: time the variants that exist in this build over a sweep of sequence lengths.
//   attnkit bench [--variants naive,flash] [--n 512,1024,...] [--d 64] [--heads 8] [--causal]
//                 [--pass fwd|bwd|both] [--json file] [--csv file] [--plot prefix]
// Per point: the median time, GFLOP/s by the cost model's count, the peak memory of the call
// (its tensors plus the kernel's workspace, measured as peak RSS) next to the model's, and the
// relative error of the output against the float64 reference on the last 64 query rows.
#include <fmt/format.h>
#include <malloc.h>

#include <cmath>
#include <random>
#include <vector>

#include "attnkit/attnkit.h"
#include "core/measure.h"
#include "tools/commands.h"

namespace attnkit::tools {
namespace {

constexpr int64_t kCheckRows = 64;

Algorithm algorithm_of(const VariantEntry& v) {
  switch (v.variant) {
    case cost::Variant::naive: return Algorithm::naive;
    case cost::Variant::flash: return Algorithm::flash;
    default:
      throw Error(fmt::format("--variants: '{}' has no kernel in this build (it is priced by `attnkit cost`); "
                              "measured variants: {}",
                              v.name, variant_names(true)));
  }
}

std::vector<float> random_vector(size_t n, unsigned seed) {
  std::vector<float> x(n);
  std::mt19937 rng(seed);
  std::normal_distribution<float> g;
  for (float& f : x) f = g(rng);
  return x;
}

// ‖out − ref‖ / ‖ref‖ over the last kCheckRows query rows. With bottom-right causal alignment
// those rows are a cross-attention problem of their own (Nq = rows, Nk = N), so the float64
// reference prices them at rows·N·D instead of N²·D.
double check_error(const BenchOptions& o, int64_t n, std::vector<float>& q, std::vector<float>& k,
                   std::vector<float>& v, const std::vector<float>& out) {
  const int64_t rows = std::min(kCheckRows, n), row0 = n - rows, H = o.heads, D = o.d;
  std::vector<float> ref(rows * H * D);
  AttentionParams p;
  p.causal = o.causal;
  p.algorithm = Algorithm::reference;
  forward(TensorView(q.data() + row0 * H * D, DType::f32, {1, rows, H, D}),
          TensorView(k.data(), DType::f32, {1, n, H, D}), TensorView(v.data(), DType::f32, {1, n, H, D}),
          TensorView(ref.data(), DType::f32, {1, rows, H, D}), p);
  double num = 0, den = 0;
  for (int64_t i = 0; i < rows * H * D; ++i) {
    const double diff = static_cast<double>(out[row0 * H * D + i]) - ref[i];
    num += diff * diff;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace

nlohmann::json run_bench(const BenchOptions& o) {
  if (o.ns.empty()) throw Error("--n: expected at least one sequence length");
  for (int64_t n : o.ns)
    if (n <= 0) throw Error(fmt::format("--n: expected positive sequence lengths, given {}", n));
  if (o.pass != "fwd" && o.pass != "bwd" && o.pass != "both")
    throw Error(fmt::format("--pass: expected fwd, bwd or both, given '{}'", o.pass));
  if (o.min_seconds < 0) throw Error(fmt::format("--min-seconds: expected >= 0, given {}", o.min_seconds));
  std::vector<const VariantEntry*> variants;
  for (const std::string& name : o.variants) {
    variants.push_back(&find_variant(name));
    algorithm_of(*variants.back());
  }
  std::vector<std::string> passes;
  for (const char* p : {"fwd", "bwd"})
    if (o.pass == "both" || o.pass == p) passes.push_back(p);
  const int threads = num_threads();
  // Refuse before allocating anything: the largest point's tensors plus workspace.
  for (int64_t n : o.ns) {
    const cost::AttentionShape s{.batch = 1, .seq_q = n, .seq_k = n, .heads_q = o.heads, .heads_kv = o.heads,
                                 .head_dim = o.d, .causal = o.causal};
    for (const VariantEntry* v : variants)
      for (const std::string& pass : passes)
        check_fits(cost::kernel_call_cost(v->variant, s, pass == "bwd", threads).peak_bytes(),
                   fmt::format("bench: {} {} at N={} (H={}, D={})", v->name, pass, n, o.heads, o.d));
  }

  fmt::print("attnkit bench  cpu: {}  threads: {}  BLAS: {}\n", measure::cpu_name(), threads, measure::blas_core());
  fmt::print("B = 1, H = {}, D = {}, {}, f32; times are medians (other work on this machine shows up as noise)\n\n",
             o.heads, o.d, o.causal ? "causal" : "non-causal");
  fmt::print("{:>7} {:>4} {:>7} {:>11} {:>9} {:>11} {:>11} {:>9}\n", "variant", "pass", "N", "median ms", "GFLOP/s",
             "peak MiB", "model MiB", "rel err");
  nlohmann::json j;
  j["cpu"] = measure::cpu_name();
  j["threads"] = threads;
  j["heads"] = o.heads;
  j["d"] = o.d;
  j["causal"] = o.causal;
  j["points"] = nlohmann::json::array();
  std::string csv = "variant,pass,n,d,heads,causal,median_ms,min_ms,runs,gflops,model_flops,peak_bytes,"
                    "model_peak_bytes,extra_bytes,model_workspace_bytes,rel_err\n";
  Progress bar("bench", static_cast<int>(o.ns.size() * variants.size() * passes.size()));
  for (int64_t n : o.ns) {
    const cost::AttentionShape shape{.batch = 1, .seq_q = n, .seq_k = n, .heads_q = o.heads, .heads_kv = o.heads,
                                     .head_dim = o.d, .causal = o.causal};
    for (const VariantEntry* variant : variants) {
      AttentionParams p;
      p.causal = o.causal;
      p.algorithm = algorithm_of(*variant);
      // Fresh buffers per variant; RSS before them is the baseline the peak is measured from.
      malloc_trim(0);
      const int64_t base = measure::current_rss_bytes();
      const size_t e = n * o.heads * o.d;
      std::vector<float> q = random_vector(e, 1 + n), k = random_vector(e, 2 + n), v = random_vector(e, 3 + n);
      std::vector<float> out(e), lse(o.heads * n), dout, dq, dk, dv;
      auto view = [&](std::vector<float>& x) { return TensorView(x.data(), DType::f32, {1, n, o.heads, o.d}); };
      const TensorView L(lse.data(), DType::f32, {1, o.heads, n});
      for (const std::string& pass : passes) {
        bar.step(fmt::format("{} {} N={}", variant->name, pass, n));
        std::function<void()> fn = [&] { forward(view(q), view(k), view(v), view(out), p, L); };
        if (pass == "bwd") {
          fn();
          dout = random_vector(e, 4 + n);
          dq.resize(e);
          dk.resize(e);
          dv.resize(e);
          fn = [&] { backward(view(q), view(k), view(v), view(out), view(dout), L, view(dq), view(dk), view(dv), p); };
        }
        const double flops = pass == "fwd" ? cost::attention_fwd_flops(shape) : cost::attention_bwd_flops(shape);
        const bool big = flops > 1e11;
        const measure::Timing t = measure::time_median(fn, big ? 0 : 1, big ? 3 : 5, o.min_seconds);
        // Peak of the call, tensors included: baseline RSS before the buffers to peak during it.
        const int64_t held = measure::current_rss_bytes() - base;
        measure::reset_peak_rss();
        fn();
        const double peak = static_cast<double>(std::max<int64_t>(0, measure::peak_rss_bytes() - base));
        const cost::Cost model = cost::kernel_call_cost(variant->variant, shape, pass == "bwd", threads);
        const double err = pass == "fwd" && o.check ? check_error(o, n, q, k, v, out) : NAN;
        const double gflops = flops / t.median_s * 1e-9;
        bar.done();
        fmt::print("{:>7} {:>4} {:>7} {:>11.3f} {:>9.1f} {:>11.1f} {:>11.1f} {:>9}\n", variant->name, pass, n,
                   t.median_s * 1e3, gflops, peak / 1048576.0, model.peak_bytes() / 1048576.0,
                   std::isnan(err) ? std::string("-") : fmt::format("{:.1e}", err));
        std::fflush(stdout);
        j["points"].push_back({{"variant", variant->name}, {"pass", pass}, {"n", n}, {"d", o.d}, {"heads", o.heads},
                               {"causal", o.causal}, {"median_ms", t.median_s * 1e3}, {"min_ms", t.min_s * 1e3},
                               {"runs", t.runs}, {"gflops", gflops}, {"model_flops", flops},
                               {"peak_bytes", peak}, {"model_peak_bytes", model.peak_bytes()},
                               {"extra_bytes", std::max(0.0, peak - static_cast<double>(held))},
                               {"model_workspace_bytes", model.workspace_bytes},
                               {"rel_err", std::isnan(err) ? nlohmann::json() : nlohmann::json(err)}});
        csv += fmt::format("{},{},{},{},{},{},{:.4f},{:.4f},{},{:.2f},{:.6g},{:.0f},{:.0f},{:.0f},{:.0f},{}\n",
                           variant->name, pass, n, o.d, o.heads, o.causal ? 1 : 0, t.median_s * 1e3, t.min_s * 1e3,
                           t.runs, gflops, flops, peak, model.peak_bytes(),
                           std::max(0.0, peak - static_cast<double>(held)), model.workspace_bytes,
                           std::isnan(err) ? std::string() : fmt::format("{:.3e}", err));
      }
    }
  }
  bar.done();
  if (!o.json.empty()) {
    write_text(o.json, j.dump(2) + "\n");
    fmt::print("wrote {}\n", o.json);
  }
  if (!o.csv.empty()) {
    write_text(o.csv, csv);
    fmt::print("wrote {}\n", o.csv);
  }
  if (!o.plot.empty()) {
    if (o.json.empty()) throw Error("--plot: needs --json (the plot is drawn from it)");
    plot("bench", o.json, o.plot);
    fmt::print("wrote {}.png and {}.svg\n", o.plot, o.plot);
  }
  return j;
}

void register_bench(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "time attention variants over a sweep of sequence lengths");
  cmd->add_option("--variants", o->variants, "measured variants: " + variant_names(true))->delimiter(',');
  cmd->add_option("--n", o->ns, "sequence lengths")->delimiter(',');
  cmd->add_option("--d", o->d, "head dim")->check(CLI::Range(1, 256));
  cmd->add_option("--heads", o->heads, "heads")->check(CLI::Range(1, 1024));
  cmd->add_flag("--causal", o->causal, "causal masking");
  cmd->add_option("--pass", o->pass, "fwd, bwd or both");
  cmd->add_option("--json", o->json, "write the results as JSON");
  cmd->add_option("--csv", o->csv, "write the results as CSV");
  cmd->add_option("--plot", o->plot, "path prefix of a log-log plot of time against N (.png and .svg)");
  cmd->add_option("--min-seconds", o->min_seconds, "minimum timing time per point");
  cmd->add_flag("!--no-check", o->check, "skip the error check against the float64 reference");
  cmd->callback([o] { run_bench(*o); });
}

}  // namespace attnkit::tools
