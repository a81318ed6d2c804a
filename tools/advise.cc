// attnkit advise: which token mixer fits a sequence length, a latency and a memory budget.
//   attnkit advise --seq N --latency-ms L --memory-gb M --task chat|document|code|vision
//                  [--preset name] [--measure] [--json file]
// Every variant is priced by the cost model for a whole forward pass of the model at N tokens
// on this machine (roofline on the sgemm and memcpy measured now); --measure also times the
// exact kernels that exist in this build. Exact attention is recommended whenever it fits:
// the alternatives trade accuracy (or a retrained model) for time and memory.
#include <fmt/format.h>

#include <random>

#include "attnkit/attnkit.h"
#include "core/measure.h"
#include "tools/commands.h"

namespace attnkit::tools {
namespace {

// Order of preference among approximations for a task (smaller is better), with the reason.
std::pair<int, std::string> task_fit(cost::Variant v, const std::string& task) {
  using cost::Variant;
  const bool retrieval = task == "document" || task == "code" || task == "chat";
  switch (v) {
    case Variant::naive:
    case Variant::flash: return {0, "exact softmax attention"};
    case Variant::sparse:
      return {1, retrieval ? "local window + global tokens keeps nearby context exact; facts beyond the window are lost"
                           : "local windows suit images (neighbouring patches) but drop global context"};
    case Variant::linear:
      return {task == "vision" ? 1 : 2, retrieval ? "approximates softmax; weak at exact recall and copying"
                                                 : "approximates softmax; tolerable for smooth image features"};
    case Variant::scan:
    case Variant::rwkv: return {3, "a different architecture: needs a model trained with it"};
    case Variant::decode: return {9, ""};
  }
  return {9, ""};
}

double measure_attention_ms(const cost::ModelShape& m, int64_t n, Algorithm algo, double* peak_bytes) {
  const cost::AttentionShape s = cost::layer_attention_shape(m, n);
  const size_t eq = n * m.heads_q * m.head_dim, ek = n * m.heads_kv * m.head_dim;
  std::vector<float> q(eq), k(ek), v(ek), out(eq), lse(m.heads_q * n);
  std::mt19937 rng(7);
  std::normal_distribution<float> g;
  for (auto* x : {&q, &k, &v})
    for (float& f : *x) f = g(rng);
  AttentionParams p;
  p.causal = s.causal;
  p.algorithm = algo;
  auto fn = [&] {
    forward(TensorView(q.data(), DType::f32, {1, n, m.heads_q, m.head_dim}),
            TensorView(k.data(), DType::f32, {1, n, m.heads_kv, m.head_dim}),
            TensorView(v.data(), DType::f32, {1, n, m.heads_kv, m.head_dim}),
            TensorView(out.data(), DType::f32, {1, n, m.heads_q, m.head_dim}), p,
            TensorView(lse.data(), DType::f32, {1, m.heads_q, n}));
  };
  const measure::Timing t = measure::time_median(fn, 1, 3, 0.2);
  *peak_bytes = static_cast<double>(measure::extra_memory_bytes(fn));
  return t.median_s * 1e3;
}

}  // namespace

nlohmann::json run_advise(const AdviseOptions& o) {
  if (o.seq <= 0) throw Error(fmt::format("--seq: expected a positive sequence length, given {}", o.seq));
  if (!(o.latency_ms > 0)) throw Error(fmt::format("--latency-ms: expected a positive time, given {}", o.latency_ms));
  if (!(o.memory_gb > 0)) throw Error(fmt::format("--memory-gb: expected a positive size, given {}", o.memory_gb));
  if (o.task != "chat" && o.task != "document" && o.task != "code" && o.task != "vision")
    throw Error(fmt::format("--task: expected chat, document, code or vision, given '{}'", o.task));
  const std::string preset_name = !o.preset.empty() ? o.preset : o.task == "vision" ? "vit-b/16" : "gpt2";
  const cost::ModelShape& m = cost::preset(preset_name);
  const int64_t n = o.seq;
  const double budget = o.memory_gb * 1e9;
  const cost::DeviceSpec dev = this_machine();
  const int threads = num_threads();

  fmt::print("attnkit advise  task: {}, N = {}, latency <= {} ms, memory <= {} GB\n", o.task, n, o.latency_ms,
             o.memory_gb);
  fmt::print("model: {} ({}), f32 forward pass of all {} layers at N tokens\n", m.name, m.note, m.layers);
  fmt::print("device: {}, sgemm {:.0f} GFLOP/s, memcpy {:.1f} GB/s (measured now)\n\n", dev.name,
             dev.peak_flops * 1e-9, dev.bandwidth * 1e-9);

  struct Row {
    const VariantEntry* v = nullptr;
    double ms = 0, peak = 0, measured_ms = NAN, measured_peak = NAN;
    bool fits = false;
    int pref = 0;
    std::string why;
  };
  std::vector<Row> rows;
  for (const VariantEntry& v : variant_registry()) {
    if (v.variant == cost::Variant::decode) continue;
    cost::VariantParams vp;
    if (m.window > 0) vp.window = m.window;
    const cost::Implementation impl = v.measured ? cost::attnkit_cpu(threads) : cost::Implementation{.threads = threads};
    const cost::ModelCost mc = cost::model_cost(m, n, v.variant, cost::Mode::inference, 4, 1, vp, impl);
    Row r;
    r.v = &v;
    r.ms = cost::roofline_seconds(mc.total, dev) * 1e3;
    r.peak = mc.peak_bytes;
    if (o.measure && v.measured) {
      const cost::LayerCost lc = cost::layer_cost(m, n, v.variant, cost::Mode::inference, 4, 1, vp, impl);
      if (lc.mixer.peak_bytes() < 0.5 * available_memory_bytes()) {
        double peak = 0;
        const double layer_ms =
            measure_attention_ms(m, n, v.variant == cost::Variant::naive ? Algorithm::naive : Algorithm::flash, &peak);
        // Measured attention for every layer, the rest of the model from the roofline.
        r.measured_ms = layer_ms * m.layers + (r.ms - cost::roofline_seconds(lc.mixer, dev) * 1e3 * m.layers);
        r.measured_peak = mc.peak_bytes - lc.mixer.workspace_bytes + peak;
      }
    }
    const double ms = std::isnan(r.measured_ms) ? r.ms : r.measured_ms;
    r.fits = ms <= o.latency_ms && r.peak <= budget;
    std::tie(r.pref, r.why) = task_fit(v.variant, o.task);
    rows.push_back(r);
  }
  // Fitting variants by preference for the task, then time and memory; the rest by how far
  // they overshoot the tighter of the two budgets.
  auto overshoot = [&](const Row& r) {
    return std::max((std::isnan(r.measured_ms) ? r.ms : r.measured_ms) / o.latency_ms, r.peak / budget);
  };
  std::stable_sort(rows.begin(), rows.end(), [&](const Row& a, const Row& b) {
    if (a.fits != b.fits) return a.fits;
    if (!a.fits) return overshoot(a) < overshoot(b);
    if (a.pref != b.pref) return a.pref < b.pref;
    if (a.ms != b.ms) return a.ms < b.ms;
    return a.peak < b.peak;
  });
  nlohmann::json j;
  j["task"] = o.task;
  j["seq"] = n;
  j["latency_ms"] = o.latency_ms;
  j["memory_gb"] = o.memory_gb;
  j["model"] = m.name;
  fmt::print("{:>4} {:>7} {:>5} {:>12} {:>12} {:>12} {:>12}  {}\n", "rank", "variant", "fits", "model ms", "measured ms",
             "peak memory", "measured mem", "why");
  int rank = 0;
  for (const Row& r : rows) {
    ++rank;
    std::string reason = fmt::format("{:.1f} ms {} {:.0f} ms limit; {} {} {:.1f} GB limit; {}", std::isnan(r.measured_ms) ? r.ms : r.measured_ms,
                                     (std::isnan(r.measured_ms) ? r.ms : r.measured_ms) <= o.latency_ms ? "within" : "over",
                                     o.latency_ms, human_bytes(r.peak), r.peak <= budget ? "within" : "over", o.memory_gb, r.why);
    fmt::print("{:>4} {:>7} {:>5} {:>12.1f} {:>12} {:>12} {:>12}  {}\n", rank, r.v->name, r.fits ? "yes" : "no", r.ms,
               std::isnan(r.measured_ms) ? std::string("-") : fmt::format("{:.1f}", r.measured_ms),
               human_bytes(r.peak), std::isnan(r.measured_peak) ? std::string("-") : human_bytes(r.measured_peak),
               r.why);
    j["ranking"].push_back({{"rank", rank}, {"variant", r.v->name}, {"fits", r.fits}, {"model_ms", r.ms},
                            {"measured_ms", std::isnan(r.measured_ms) ? nlohmann::json() : nlohmann::json(r.measured_ms)},
                            {"peak_bytes", r.peak},
                            {"measured_peak_bytes", std::isnan(r.measured_peak) ? nlohmann::json() : nlohmann::json(r.measured_peak)},
                            {"in_this_build", r.v->measured}, {"accuracy", r.v->accuracy}, {"reason", reason}});
  }
  const Row& best = rows.front();
  std::string verdict;
  const bool exact = best.fits && best.pref == 0;
  if (exact) {
    verdict = fmt::format("Exact attention is the right answer: {} fits ({:.1f} ms, {}) with no approximation error; "
                          "an approximation would only trade accuracy for time you do not need.",
                          best.v->name, std::isnan(best.measured_ms) ? best.ms : best.measured_ms, human_bytes(best.peak));
  } else if (best.fits) {
    verdict = fmt::format("Exact attention does not fit; {} does ({:.1f} ms, {}). Its cost: {}.", best.v->name, best.ms,
                          human_bytes(best.peak), best.v->accuracy);
  } else {
    verdict = fmt::format("Nothing fits {} ms and {} GB at N = {} on this machine; the closest is {} ({:.1f} ms, {}): "
                          "shorten the input, batch less, or use a faster device.",
                          o.latency_ms, o.memory_gb, n, best.v->name, best.ms, human_bytes(best.peak));
  }
  fmt::print("\n{}\n", verdict);
  j["verdict"] = verdict;
  j["exact_is_right"] = exact;
  if (o.task == "chat") {
    const cost::ModelCost dc = cost::model_cost(m, n, cost::Variant::decode, cost::Mode::inference, 4);
    const double ms = cost::roofline_seconds(dc.total, dev) * 1e3;
    fmt::print("chat: after the prompt, each new token takes about {:.2f} ms (model), reading a {} KV cache of {} "
               "tokens.\n", ms, human_bytes(dc.kv_cache_bytes), n);
    j["decode_ms_per_token"] = ms;
    j["kv_cache_bytes"] = dc.kv_cache_bytes;
  }
  if (!o.json.empty()) {
    write_text(o.json, j.dump(2) + "\n");
    fmt::print("wrote {}\n", o.json);
  }
  return j;
}

void register_advise(CLI::App& app) {
  auto o = std::make_shared<AdviseOptions>();
  CLI::App* cmd = app.add_subcommand("advise", "rank the variants that fit a length, latency and memory budget");
  cmd->add_option("--seq", o->seq, "sequence length")->required();
  cmd->add_option("--latency-ms", o->latency_ms, "latency budget of one forward pass, ms")->required();
  cmd->add_option("--memory-gb", o->memory_gb, "memory budget, GB")->required();
  cmd->add_option("--task", o->task, "chat, document, code or vision");
  cmd->add_option("--preset", o->preset, "model (default: gpt2; vit-b/16 for vision)");
  cmd->add_flag("--measure", o->measure, "also time the exact kernels of this build");
  cmd->add_option("--json", o->json, "write the ranking as JSON");
  cmd->callback([o] { run_advise(*o); });
}

}  // namespace attnkit::tools
