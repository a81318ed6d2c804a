// attnkit profile: a stack of pre-norm transformer layers with random weights, timed op by op.
//   x = x + Wo · attention(split(Wqkv · norm(x)))        (LayerNorm, fused QKV projection)
//   x = x + W2 · act(W1 · norm(x))                        (GELU; SwiGLU: W2 · (silu(Wg·h) ∘ Wu·h))
// Shapes: x, h : [N, d]; qkv : [N, (Hq + 2·Hkv)·D] viewed as Q, K, V in BSHD without a copy;
// attn : [N, Hq·D]; hidden : [N, d_ff]. GEMMs are OpenBLAS cblas_sgemm; attention is attnkit's.
// Per N it reports each op's median time and share, the memory each op holds, and across the
// sweep the N at which attention overtakes the MLP, measured and predicted by the cost model.
//   attnkit profile [--preset gpt2 | --d-model ...] [--n 512,...,8192] [--layers 2] [--runs 3]
//                   [--variant flash|naive] [--json file] [--plot prefix]
#include <cblas.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <random>

#include "attnkit/attnkit.h"
#include "core/measure.h"
#include "core/thread_pool.h"
#include "tools/commands.h"

namespace attnkit::tools {
namespace {

using Clock = std::chrono::steady_clock;

struct Op {
  const char* name;
  const char* group;  // norms, qkv, attention, out_proj, mlp
};
constexpr Op kOps[] = {{"norm1", "norms"},     {"qkv_proj", "qkv"},   {"attention", "attention"},
                       {"out_proj", "out_proj"}, {"norm2", "norms"}, {"mlp_up", "mlp"},
                       {"mlp_act", "mlp"},      {"mlp_down", "mlp"}};
constexpr int kNumOps = sizeof(kOps) / sizeof(kOps[0]);

std::vector<float> random_weights(size_t n, float scale, unsigned seed) {
  std::vector<float> w(n);
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, scale);
  for (float& x : w) x = g(rng);
  return w;
}

struct Layer {
  std::vector<float> wqkv, wo, w1, wg, w2;  // [d][3·H·D], [H·D][d], [d][f] (x2 for SwiGLU), [f][d]
};

// y[N][cols] = x[N][k] · w[k][cols] (+ y when accumulate: the residual add)
void gemm(const float* x, const float* w, float* y, int64_t n, int64_t k, int64_t cols, bool accumulate) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, cols, k, 1.0f, x, k, w, cols, accumulate ? 1.0f : 0.0f, y,
              cols);
}

void layer_norm(const float* x, float* y, int64_t n, int64_t d) {
  pool().parallel_for(n, [&](int64_t i, int) {
    const float* r = x + i * d;
    double mean = 0, var = 0;
    for (int64_t j = 0; j < d; ++j) mean += r[j];
    mean /= d;
    for (int64_t j = 0; j < d; ++j) var += (r[j] - mean) * (r[j] - mean);
    const float inv = static_cast<float>(1.0 / std::sqrt(var / d + 1e-5));
    for (int64_t j = 0; j < d; ++j) y[i * d + j] = static_cast<float>(r[j] - mean) * inv;
  });
}

void activation(float* h, const float* gate, int64_t n, int64_t f, bool swiglu) {
  pool().parallel_for(n, [&](int64_t i, int) {
    float* r = h + i * f;
    if (swiglu) {
      const float* g = gate + i * f;
      for (int64_t j = 0; j < f; ++j) r[j] *= g[j] / (1.0f + std::exp(-g[j]));
    } else {
      for (int64_t j = 0; j < f; ++j) {
        const float x = r[j];
        r[j] = 0.5f * x * (1.0f + std::tanh(0.7978845608f * (x + 0.044715f * x * x * x)));
      }
    }
  });
}

struct PointResult {
  int64_t n;
  std::array<double, kNumOps> ms;    // median over runs, summed over layers
  std::array<double, kNumOps> bytes; // memory each op holds: weights, its output, workspace
  double attention_ms, mlp_ms, total_ms;
};

PointResult profile_point(const cost::ModelShape& m, int64_t n, int64_t layers, int runs, Algorithm algo) {
  const int64_t d = m.d_model, H = m.heads_q, Hk = m.heads_kv, D = m.head_dim, f = m.d_ff;
  const int64_t W = (H + 2 * Hk) * D;
  const bool swiglu = m.mlp == cost::MlpKind::swiglu;
  std::vector<Layer> stack(layers);
  for (int64_t l = 0; l < layers; ++l) {
    const unsigned s = static_cast<unsigned>(l * 7);
    stack[l].wqkv = random_weights(d * W, 1.0f / std::sqrt(static_cast<float>(d)), s + 1);
    stack[l].wo = random_weights(H * D * d, 1.0f / std::sqrt(static_cast<float>(H * D)), s + 2);
    stack[l].w1 = random_weights(d * f, 1.0f / std::sqrt(static_cast<float>(d)), s + 3);
    if (swiglu) stack[l].wg = random_weights(d * f, 1.0f / std::sqrt(static_cast<float>(d)), s + 4);
    stack[l].w2 = random_weights(f * d, 1.0f / std::sqrt(static_cast<float>(f)), s + 5);
  }
  std::vector<float> x = random_weights(n * d, 1.0f, 99), h(n * d), qkv(n * W), attn(n * H * D), hid(n * f), gate;
  if (swiglu) gate.resize(n * f);
  std::vector<float> lse(H * n);
  AttentionParams p;
  p.causal = m.causal;
  p.algorithm = algo;
  const TensorView Q(qkv.data(), DType::f32, {1, n, H, D}, {n * W, W, D, 1});
  const TensorView K(qkv.data() + H * D, DType::f32, {1, n, Hk, D}, {n * W, W, D, 1});
  const TensorView V(qkv.data() + (H + Hk) * D, DType::f32, {1, n, Hk, D}, {n * W, W, D, 1});
  const TensorView O(attn.data(), DType::f32, {1, n, H, D});
  const TensorView L(lse.data(), DType::f32, {1, H, n});

  std::array<std::vector<double>, kNumOps> samples;
  const bool warm = n < 2048;
  for (int r = 0; r < runs + (warm ? 1 : 0); ++r) {
    std::array<double, kNumOps> t{};
    for (const Layer& w : stack) {
      auto time = [&](int op, auto&& fn) {
        const auto t0 = Clock::now();
        fn();
        t[op] += std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      };
      time(0, [&] { layer_norm(x.data(), h.data(), n, d); });
      time(1, [&] { gemm(h.data(), w.wqkv.data(), qkv.data(), n, d, W, false); });
      time(2, [&] { forward(Q, K, V, O, p, L); });
      time(3, [&] { gemm(attn.data(), w.wo.data(), x.data(), n, H * D, d, true); });
      time(4, [&] { layer_norm(x.data(), h.data(), n, d); });
      time(5, [&] {
        gemm(h.data(), w.w1.data(), hid.data(), n, d, f, false);
        if (swiglu) gemm(h.data(), w.wg.data(), gate.data(), n, d, f, false);
      });
      time(6, [&] { activation(hid.data(), gate.data(), n, f, swiglu); });
      time(7, [&] { gemm(hid.data(), w.w2.data(), x.data(), n, f, d, true); });
    }
    if (warm && r == 0) continue;
    for (int op = 0; op < kNumOps; ++op) samples[op].push_back(t[op]);
  }
  PointResult res{};
  res.n = n;
  for (int op = 0; op < kNumOps; ++op) {
    std::sort(samples[op].begin(), samples[op].end());
    const size_t k = samples[op].size();
    res.ms[op] = k % 2 ? samples[op][k / 2] : 0.5 * (samples[op][k / 2 - 1] + samples[op][k / 2]);
  }
  const double e = 4, Ld = static_cast<double>(layers), nd = static_cast<double>(n);
  const cost::Cost attn_cost = cost::kernel_call_cost(algo == Algorithm::naive ? cost::Variant::naive : cost::Variant::flash,
                                                      cost::layer_attention_shape(m, n), false, num_threads());
  res.bytes = {nd * d * e,                                              // norm1 output
               Ld * d * W * e + nd * W * e,                             // Wqkv + qkv
               nd * H * D * e + H * nd * 4 + attn_cost.workspace_bytes, // attn out, lse, workspace
               Ld * H * D * d * e + nd * d * e,                         // Wo + residual
               0,                                                       // norm2 reuses h
               Ld * d * f * e * (swiglu ? 2 : 1) + nd * f * e * (swiglu ? 2 : 1),
               0,                                                       // in place
               Ld * f * d * e};
  res.attention_ms = res.ms[2];
  res.mlp_ms = res.ms[5] + res.ms[6] + res.ms[7];
  res.total_ms = 0;
  for (double t : res.ms) res.total_ms += t;
  return res;
}

// log-log interpolation of the first crossing of ratio = 1; NaN when none.
double crossing(const std::vector<PointResult>& pts) {
  for (size_t i = 1; i < pts.size(); ++i) {
    const double r0 = pts[i - 1].attention_ms / pts[i - 1].mlp_ms, r1 = pts[i].attention_ms / pts[i].mlp_ms;
    if (r0 < 1 && r1 >= 1) {
      const double a = std::log(r0), b = std::log(r1);
      const double ln0 = std::log(static_cast<double>(pts[i - 1].n)), ln1 = std::log(static_cast<double>(pts[i].n));
      return std::exp(ln0 + (0 - a) * (ln1 - ln0) / (b - a));
    }
  }
  if (!pts.empty() && pts.front().attention_ms >= pts.front().mlp_ms) return static_cast<double>(pts.front().n);
  return NAN;
}

}  // namespace

nlohmann::json run_profile(const ProfileOptions& o) {
  const cost::ModelShape m = o.model.resolve();
  if (o.ns.empty()) throw Error("--n: expected at least one sequence length");
  for (int64_t n : o.ns)
    if (n <= 0) throw Error(fmt::format("--n: expected positive sequence lengths, given {}", n));
  if (o.layers <= 0) throw Error(fmt::format("--layers: expected a positive count, given {}", o.layers));
  if (o.runs <= 0) throw Error(fmt::format("--runs: expected a positive count, given {}", o.runs));
  const VariantEntry& ve = find_variant(o.variant);
  if (ve.variant != cost::Variant::naive && ve.variant != cost::Variant::flash)
    throw Error(fmt::format("--variant: '{}' has no kernel in this build; measured variants: {}", o.variant,
                            variant_names(true)));
  const Algorithm algo = ve.variant == cost::Variant::naive ? Algorithm::naive : Algorithm::flash;
  const int threads = num_threads();
  for (int64_t n : o.ns) {
    const cost::LayerCost lc = cost::layer_cost(m, n, ve.variant, cost::Mode::inference, 4, 1, {},
                                                cost::attnkit_cpu(threads));
    double weights = 0;
    for (const cost::Cost* c : {&lc.qkv, &lc.out_proj, &lc.mlp}) weights += c->io_bytes;
    check_fits(weights * static_cast<double>(o.layers) + lc.mixer.peak_bytes() + lc.mlp.workspace_bytes,
               fmt::format("profile: {} layers of {} at N={}", o.layers, m.name, n));
  }
  const cost::DeviceSpec dev = this_machine();
  fmt::print("attnkit profile  model: {} ({} of {} layers, random weights), attention: {}, {}\n", m.name, o.layers,
             m.layers, ve.name, m.causal ? "causal" : "bidirectional");
  fmt::print("cpu: {}, {} threads; sgemm {:.0f} GFLOP/s, memcpy {:.1f} GB/s (measured now, the roofline's device)\n",
             dev.name, threads, dev.peak_flops * 1e-9, dev.bandwidth * 1e-9);
  fmt::print("times: medians of {} runs of the whole stack; other processes on this machine add noise\n\n", o.runs);
  std::vector<PointResult> pts;
  Progress bar("profile", static_cast<int>(o.ns.size()));
  for (int64_t n : o.ns) {
    bar.step(fmt::format("N={}", n));
    pts.push_back(profile_point(m, n, o.layers, o.runs, algo));
  }
  bar.done();

  nlohmann::json j;
  j["model"] = {{"name", m.name}, {"d_model", m.d_model}, {"heads_q", m.heads_q}, {"heads_kv", m.heads_kv},
                {"head_dim", m.head_dim}, {"d_ff", m.d_ff}, {"causal", m.causal}};
  j["layers"] = o.layers;
  j["variant"] = ve.name;
  j["device"] = {{"name", dev.name}, {"sgemm_gflops", dev.peak_flops * 1e-9}, {"memcpy_gbs", dev.bandwidth * 1e-9},
                 {"threads", threads}};
  fmt::print("{:>7}", "N");
  for (const Op& op : kOps) fmt::print(" {:>10}", op.name);
  fmt::print(" {:>10} {:>7} {:>9}\n", "total ms", "attn %", "attn/MLP");
  for (const PointResult& r : pts) {
    fmt::print("{:>7}", r.n);
    for (double t : r.ms) fmt::print(" {:>10.2f}", t);
    const double model_ratio = [&] {
      const cost::LayerCost lc = cost::layer_cost(m, r.n, ve.variant, cost::Mode::inference);
      return cost::roofline_seconds(lc.mixer, dev) / cost::roofline_seconds(lc.mlp, dev);
    }();
    fmt::print(" {:>10.2f} {:>6.1f}% {:>9.2f}\n", r.total_ms, 100 * r.attention_ms / r.total_ms,
               r.attention_ms / r.mlp_ms);
    nlohmann::json ops = nlohmann::json::array();
    double bytes_total = 0;
    for (double b : r.bytes) bytes_total += b;
    for (int op = 0; op < kNumOps; ++op)
      ops.push_back({{"name", kOps[op].name}, {"group", kOps[op].group}, {"ms", r.ms[op]},
                     {"time_share", r.ms[op] / r.total_ms}, {"bytes", r.bytes[op]},
                     {"memory_share", bytes_total > 0 ? r.bytes[op] / bytes_total : 0}});
    j["points"].push_back({{"n", r.n}, {"ops", ops}, {"attention_ms", r.attention_ms}, {"mlp_ms", r.mlp_ms},
                           {"total_ms", r.total_ms}, {"ratio", r.attention_ms / r.mlp_ms},
                           {"model_ratio", model_ratio}});
  }
  const double measured = crossing(pts);
  const double predicted = cost::mixer_mlp_crossover(m, ve.variant, dev);
  fmt::print("\nmemory held at N={} (weights of {} layers, activations, workspace):", pts.back().n, o.layers);
  double bytes_total = 0;
  for (double b : pts.back().bytes) bytes_total += b;
  for (int op = 0; op < kNumOps; ++op)
    if (pts.back().bytes[op] > 0) fmt::print(" {} {:.0f}%", kOps[op].name, 100 * pts.back().bytes[op] / bytes_total);
  fmt::print("\n\nattention overtakes the MLP at N = {} measured, N = {:.0f} predicted by the cost model "
             "(roofline on the measured sgemm; ratio {})\n",
             std::isnan(measured) ? std::string("(not within the sweep)") : fmt::format("{:.0f}", measured), predicted,
             std::isnan(measured) || predicted <= 0 ? std::string("-") : fmt::format("{:.2f}", measured / predicted));
  j["crossover_measured_n"] = std::isnan(measured) ? nlohmann::json() : nlohmann::json(measured);
  j["crossover_predicted_n"] = predicted;
  if (!o.json.empty()) {
    write_text(o.json, j.dump(2) + "\n");
    fmt::print("wrote {}\n", o.json);
  }
  if (!o.plot.empty()) {
    if (o.json.empty()) throw Error("--plot: needs --json (the plot is drawn from it)");
    plot("profile", o.json, o.plot);
    fmt::print("wrote {0}.png, {0}.svg, {0}_crossover.png and {0}_crossover.svg\n", o.plot);
  }
  return j;
}

void register_profile(CLI::App& app) {
  auto o = std::make_shared<ProfileOptions>();
  CLI::App* cmd = app.add_subcommand("profile", "time each op of a transformer layer stack; attention against the MLP");
  o->model.add_to(cmd);
  cmd->add_option("--n", o->ns, "sequence lengths")->delimiter(',');
  cmd->add_option("--stack", o->layers, "layers in the measured stack");
  cmd->add_option("--runs", o->runs, "timed runs per N (the median is reported)");
  cmd->add_option("--variant", o->variant, "attention: naive or flash");
  cmd->add_option("--json", o->json, "write the results as JSON");
  cmd->add_option("--plot", o->plot, "path prefix of the bar chart and the crossover plot (.png and .svg)");
  cmd->callback([o] { run_profile(*o); });
}

}  // namespace attnkit::tools
