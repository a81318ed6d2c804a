// attnkit cost: the analytic model's table for a preset or an explicit shape over sequence
// lengths and variants, per layer and per model, with the N at which naive's score matrices
// stop fitting a given memory.
//   attnkit cost [--preset gpt2 | --d-model ... --heads ...] [--n 512,1024,...]
//                [--variants naive,flash,...] [--mode inference|training] [--dtype f32|bf16|f16]
//                [--memory-gb M] [--peak-gflops G --bandwidth-gbs W] [--json file]
#include <fmt/format.h>

#include <fstream>

#include "attnkit/error.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace attnkit::tools {

nlohmann::json run_cost(const CostOptions& o) {
  const cost::ModelShape m = o.model.resolve();
  const int64_t e = dtype_bytes(o.dtype);
  if (o.ns.empty()) throw Error("--n: expected at least one sequence length");
  for (int64_t n : o.ns)
    if (n <= 0) throw Error(fmt::format("--n: expected positive sequence lengths, given {}", n));
  std::vector<const VariantEntry*> vs;
  for (const std::string& name : o.variants) vs.push_back(&find_variant(name));
  const cost::Mode mode = o.mode == "training" ? cost::Mode::training : cost::Mode::inference;
  if (o.mode != "training" && o.mode != "inference")
    throw Error(fmt::format("--mode: expected inference or training, given '{}'", o.mode));
  if (o.memory_gb < 0) throw Error(fmt::format("--memory-gb: expected a positive size, given {}", o.memory_gb));
  const double memory = o.memory_gb > 0 ? o.memory_gb * 1e9 : available_memory_bytes();
  cost::DeviceSpec dev{.name = "nominal", .peak_flops = o.peak_gflops * 1e9, .bandwidth = o.bandwidth_gbs * 1e9,
                       .memory_bytes = memory};

  fmt::print("attnkit cost  model: {}  ({})\n", m.name, m.note);
  fmt::print("layers {}, d_model {}, heads {}/{} (q/kv) of {}, d_ff {} ({}), {}{}; {} {}, batch {}\n", m.layers,
             m.d_model, m.heads_q, m.heads_kv, m.head_dim, m.d_ff, m.mlp == cost::MlpKind::swiglu ? "SwiGLU" : "GELU",
             m.causal ? "causal" : "bidirectional", m.window > 0 ? fmt::format(", window {}", m.window) : "",
             cost::to_string(mode), o.dtype, o.batch);
  fmt::print("roofline device: {:.0f} GFLOP/s, {:.0f} GB/s\n\n", o.peak_gflops, o.bandwidth_gbs);
  fmt::print("{:>7} {:>8} {:>12} {:>12} {:>12} {:>12} {:>12} {:>11} {:>8}\n", "variant", "N", "layer GFLOP",
             "mixer GFLOP", "mixer bytes", "mixer peak", "model peak", "model ms", "mixer %");
  nlohmann::json j;
  j["model"] = {{"name", m.name}, {"note", m.note}, {"layers", m.layers}, {"d_model", m.d_model},
                {"heads_q", m.heads_q}, {"heads_kv", m.heads_kv}, {"head_dim", m.head_dim}, {"d_ff", m.d_ff},
                {"causal", m.causal}, {"window", m.window}, {"published_seq", m.seq}};
  j["mode"] = cost::to_string(mode);
  j["dtype"] = o.dtype;
  j["batch"] = o.batch;
  j["device"] = {{"peak_gflops", o.peak_gflops}, {"bandwidth_gbs", o.bandwidth_gbs}};
  for (const VariantEntry* v : vs) {
    for (int64_t n : o.ns) {
      if (v->variant == cost::Variant::decode && mode == cost::Mode::training) continue;
      cost::VariantParams vp;
      if (v->variant == cost::Variant::sparse && m.window > 0) vp.window = m.window;
      const cost::ModelCost mc = cost::model_cost(m, n, v->variant, mode, e, o.batch, vp);
      const cost::LayerCost& L = mc.layer;
      const double layer_flops = L.total().flops;
      const double t = cost::roofline_seconds(mc.total, dev);
      const double mixer_share = layer_flops > 0 ? L.mixer.flops / layer_flops : 0;
      fmt::print("{:>7} {:>8} {:>12.3f} {:>12.3f} {:>12} {:>12} {:>12} {:>11.2f} {:>7.1f}%\n", v->name, n,
                 layer_flops * 1e-9, L.mixer.flops * 1e-9, human_bytes(L.mixer.bytes_moved),
                 human_bytes(L.mixer.peak_bytes()), human_bytes(mc.peak_bytes), t * 1e3, 100 * mixer_share);
      j["rows"].push_back({{"variant", v->name}, {"n", n}, {"layer_flops", layer_flops},
                           {"mixer_macs", L.mixer.macs}, {"mixer_flops", L.mixer.flops},
                           {"mixer_bytes_moved", L.mixer.bytes_moved}, {"mixer_peak_bytes", L.mixer.peak_bytes()},
                           {"mixer_workspace_bytes", L.mixer.workspace_bytes},
                           {"mlp_flops", L.mlp.flops}, {"qkv_flops", L.qkv.flops},
                           {"out_proj_flops", L.out_proj.flops},
                           {"model_flops", mc.total.flops}, {"model_peak_bytes", mc.peak_bytes},
                           {"weight_bytes", mc.weight_bytes}, {"kv_cache_bytes", mc.kv_cache_bytes},
                           {"activation_bytes", mc.activation_bytes}, {"roofline_ms", t * 1e3},
                           {"mixer_flop_share", mixer_share}});
    }
  }
  const cost::AttentionShape one = cost::layer_attention_shape(m, 1, o.batch);
  const int64_t stop = cost::scores_stop_fitting(one, memory, e);
  const double cross = cost::mixer_mlp_crossover(m, cost::Variant::flash, dev);
  fmt::print("\nnaive's score matrices ({} heads × B={}, {}) stop fitting {} at N = {}\n", m.heads_q, o.batch, o.dtype,
             human_bytes(memory), stop);
  fmt::print("attention overtakes the MLP in a layer (roofline, flash) at N = {:.0f}\n", cross);
  j["memory_bytes"] = memory;
  j["scores_stop_fitting_n"] = stop;
  j["mixer_mlp_crossover_n"] = cross;
  if (!o.json.empty()) {
    write_text(o.json, j.dump(2) + "\n");
    fmt::print("wrote {}\n", o.json);
  }
  return j;
}

void register_cost(CLI::App& app) {
  auto o = std::make_shared<CostOptions>();
  CLI::App* cmd = app.add_subcommand("cost", "the cost model's FLOPs, bytes and memory per layer and model");
  o->model.add_to(cmd);
  cmd->add_option("--n", o->ns, "sequence lengths")->delimiter(',');
  cmd->add_option("--variants", o->variants, variant_names(false))->delimiter(',');
  cmd->add_option("--mode", o->mode, "inference or training");
  cmd->add_option("--dtype", o->dtype, "f32, bf16 or f16");
  cmd->add_option("--batch", o->batch, "batch size")->check(positive());
  cmd->add_option("--memory-gb", o->memory_gb, "memory for the score-matrix limit (default: this machine's free)");
  cmd->add_option("--peak-gflops", o->peak_gflops, "roofline peak FLOP/s in GFLOP/s")->check(positive());
  cmd->add_option("--bandwidth-gbs", o->bandwidth_gbs, "roofline bandwidth in GB/s")->check(positive());
  cmd->add_option("--json", o->json, "write the table as JSON");
  cmd->callback([o] { run_cost(*o); });
}

}  // namespace attnkit::tools
