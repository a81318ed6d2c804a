// attnkit report: cost, bench, profile and advise for a default configuration, written to a
// folder as a self-contained HTML page (no outside resources), the plots as PNG and SVG, and
// the JSON behind them.
//   attnkit report [--out attnkit-report] [--quick]
// The default configuration finishes in a few minutes on a 2-core laptop-class CPU; --quick
// shrinks every sweep to seconds (for tests).
#include <fmt/format.h>

#include <chrono>
#include <cmath>

#include "attnkit/attnkit.h"
#include "core/measure.h"
#include "tools/commands.h"

namespace attnkit::tools {
namespace {

namespace fs = std::filesystem;

std::string esc(const std::string& s) {
  std::string r;
  for (char c : s) {
    if (c == '<') r += "&lt;";
    else if (c == '>') r += "&gt;";
    else if (c == '&') r += "&amp;";
    else r += c;
  }
  return r;
}

std::string num(const nlohmann::json& v, const char* fmtspec = "{:.3g}") {
  if (v.is_null()) return "-";
  return fmt::format(fmt::runtime(fmtspec), v.get<double>());
}

std::string figure(const std::string& stem, const std::string& caption) {
  return fmt::format("<figure><img src=\"{0}.png\" alt=\"{1}\"><figcaption>{1} (<a href=\"{0}.svg\">SVG</a>)"
                     "</figcaption></figure>\n",
                     stem, esc(caption));
}

}  // namespace

void run_report(const std::string& out, bool quick) {
  const auto start = std::chrono::steady_clock::now();
  const fs::path dir = prepare_out_dir(out);
  fmt::print("attnkit report -> {}{}\n\n", dir.string(), quick ? " (quick)" : "");

  CostOptions co;
  co.model.preset = "gpt2";
  co.ns = quick ? std::vector<int64_t>{256, 1024, 4096} : std::vector<int64_t>{512, 1024, 2048, 4096, 8192, 16384, 32768, 131072};
  co.json = (dir / "cost.json").string();
  const nlohmann::json cost = run_cost(co);
  plot("cost", co.json, dir / "cost");

  fmt::print("\n");
  BenchOptions bo;
  bo.ns = quick ? std::vector<int64_t>{128, 256} : std::vector<int64_t>{256, 512, 1024, 2048, 4096};
  bo.min_seconds = quick ? 0.01 : 0.2;
  bo.json = (dir / "bench.json").string();
  bo.csv = (dir / "bench.csv").string();
  bo.plot = (dir / "bench").string();
  const nlohmann::json bench = run_bench(bo);

  fmt::print("\n");
  ProfileOptions po;
  po.model.preset = "gpt2";
  po.ns = quick ? std::vector<int64_t>{64, 128} : std::vector<int64_t>{512, 1024, 2048, 4096, 8192};
  po.layers = 1;
  po.runs = quick ? 1 : 3;
  po.json = (dir / "profile.json").string();
  po.plot = (dir / "profile").string();
  const nlohmann::json prof = run_profile(po);

  fmt::print("\n");
  AdviseOptions a1{.seq = quick ? 256 : 2048, .latency_ms = 60000, .memory_gb = 4, .task = "chat", .preset = "",
                   .measure = !quick, .json = (dir / "advise_chat.json").string()};
  const nlohmann::json adv1 = run_advise(a1);
  fmt::print("\n");
  AdviseOptions a2{.seq = 16384, .latency_ms = 600000, .memory_gb = 2, .task = "document", .preset = "",
                   .measure = false, .json = (dir / "advise_document.json").string()};
  const nlohmann::json adv2 = run_advise(a2);

  // The page.
  std::string h;
  h += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>attnkit report</title>\n<style>"
       "body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;font-size:0.85em;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
       "text-align:right}th{background:#eee}figure{margin:1em 0}img{max-width:100%}"
       "figcaption{font-size:0.85em;color:#555}.note{color:#555;font-size:0.9em}</style></head><body>\n";
  h += "<h1>attnkit report: where attention's cost comes from on this machine</h1>\n";
  h += fmt::format("<p class=\"note\">CPU: {}, {} threads, BLAS core {}. Times are medians; other processes on the "
                   "machine add noise. Data: <a href=\"cost.json\">cost.json</a>, <a href=\"bench.json\">bench.json</a>"
                   " (<a href=\"bench.csv\">CSV</a>), <a href=\"profile.json\">profile.json</a>, "
                   "<a href=\"advise_chat.json\">advise_chat.json</a>, "
                   "<a href=\"advise_document.json\">advise_document.json</a>.</p>\n",
                   esc(measure::cpu_name()), num_threads(), esc(measure::blas_core()));

  h += "<h2>1. The cost model</h2>\n";
  h += fmt::format("<p>{} ({}), {} {}. Naive attention's score matrices ({} heads, f32) stop fitting this machine's "
                   "{:.1f} GB of free memory at <b>N = {}</b>; by FLOPs on a roofline, attention overtakes the MLP at "
                   "N ≈ {:.0f}.</p>\n",
                   esc(cost["model"]["name"].get<std::string>()), esc(cost["model"]["note"].get<std::string>()),
                   cost["mode"].get<std::string>(), cost["dtype"].get<std::string>(),
                   cost["model"]["heads_q"].get<int64_t>(), cost["memory_bytes"].get<double>() * 1e-9,
                   cost["scores_stop_fitting_n"].get<int64_t>(), cost["mixer_mlp_crossover_n"].get<double>());
  h += figure("cost", "token-mixer FLOPs per layer against N, every variant, with the MLP for scale");
  h += figure("cost_memory", "token-mixer peak memory per layer against N");
  h += "<table><tr><th>variant</th><th>N</th><th>mixer GFLOP/layer</th><th>mixer peak</th><th>model peak</th>"
       "<th>model roofline ms</th><th>mixer share of layer FLOPs</th></tr>\n";
  for (const auto& r : cost["rows"])
    h += fmt::format("<tr><td>{}</td><td>{}</td><td>{:.3f}</td><td>{}</td><td>{}</td><td>{:.1f}</td><td>{:.1f}%</td></tr>\n",
                     r["variant"].get<std::string>(), r["n"].get<int64_t>(), r["mixer_flops"].get<double>() * 1e-9,
                     human_bytes(r["mixer_peak_bytes"].get<double>()), human_bytes(r["model_peak_bytes"].get<double>()),
                     r["roofline_ms"].get<double>(), 100 * r["mixer_flop_share"].get<double>());
  h += "</table>\n";

  h += "<h2>2. Measured: exact attention over N</h2>\n";
  h += figure("bench", "median time against N (log–log) with O(N²) and O(N) guide lines");
  h += "<table><tr><th>variant</th><th>pass</th><th>N</th><th>median ms</th><th>GFLOP/s</th><th>peak MiB "
       "(measured)</th><th>peak MiB (model)</th><th>rel. error vs float64</th></tr>\n";
  for (const auto& p : bench["points"])
    h += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2f}</td><td>{:.1f}</td><td>{:.1f}</td><td>{:.1f}</td>"
                     "<td>{}</td></tr>\n",
                     p["variant"].get<std::string>(), p["pass"].get<std::string>(), p["n"].get<int64_t>(),
                     p["median_ms"].get<double>(), p["gflops"].get<double>(), p["peak_bytes"].get<double>() / 1048576,
                     p["model_peak_bytes"].get<double>() / 1048576, num(p["rel_err"], "{:.1e}"));
  h += "</table>\n";

  h += "<h2>3. Profile: a GPT-2 layer, op by op</h2>\n";
  h += fmt::format("<p>Attention overtakes the MLP at <b>N ≈ {}</b> measured; the cost model predicts N ≈ {:.0f} "
                   "(roofline on the sgemm measured in this run, {:.0f} GFLOP/s).</p>\n",
                   num(prof["crossover_measured_n"], "{:.0f}"), prof["crossover_predicted_n"].get<double>(),
                   prof["device"]["sgemm_gflops"].get<double>());
  h += figure("profile", "share of layer time per op at each N");
  h += figure("profile_crossover", "attention and MLP time against N, with the measured and predicted crossover");
  h += "<table><tr><th>N</th>";
  for (const auto& op : prof["points"][0]["ops"]) h += fmt::format("<th>{} ms</th>", op["name"].get<std::string>());
  h += "<th>attention / MLP</th><th>model ratio</th></tr>\n";
  for (const auto& p : prof["points"]) {
    h += fmt::format("<tr><td>{}</td>", p["n"].get<int64_t>());
    for (const auto& op : p["ops"]) h += fmt::format("<td>{:.2f}</td>", op["ms"].get<double>());
    h += fmt::format("<td>{:.2f}</td><td>{:.2f}</td></tr>\n", p["ratio"].get<double>(), p["model_ratio"].get<double>());
  }
  h += "</table>\n";

  h += "<h2>4. Advice</h2>\n";
  for (const nlohmann::json* adv : {&adv1, &adv2}) {
    const auto& a = *adv;
    h += fmt::format("<h3>{}: N = {}, ≤ {} ms, ≤ {} GB ({})</h3>\n<p><b>{}</b></p>\n", a["task"].get<std::string>(),
                     a["seq"].get<int64_t>(), a["latency_ms"].get<double>(), a["memory_gb"].get<double>(),
                     a["model"].get<std::string>(), esc(a["verdict"].get<std::string>()));
    h += "<table><tr><th>rank</th><th>variant</th><th>fits</th><th>model ms</th><th>measured ms</th><th>peak</th>"
         "<th>in this build</th><th style=\"text-align:left\">reason</th></tr>\n";
    for (const auto& r : a["ranking"])
      h += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1f}</td><td>{}</td><td>{}</td><td>{}</td>"
                       "<td style=\"text-align:left\">{}</td></tr>\n",
                       r["rank"].get<int>(), r["variant"].get<std::string>(), r["fits"].get<bool>() ? "yes" : "no",
                       r["model_ms"].get<double>(), num(r["measured_ms"], "{:.1f}"),
                       human_bytes(r["peak_bytes"].get<double>()), r["in_this_build"].get<bool>() ? "yes" : "model only",
                       esc(r["reason"].get<std::string>()));
    h += "</table>\n";
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  h += fmt::format("<p class=\"note\">Generated by <code>attnkit report</code> in {:.0f} s. The cost model's math: "
                   "docs/cost_model.md in the attnkit repository.</p>\n</body></html>\n", secs);
  write_text(dir / "index.html", h);
  fmt::print("\nreport written in {:.0f} s: {}\n", secs, fs::absolute(dir / "index.html").string());
}

void register_report(CLI::App& app) {
  auto out = std::make_shared<std::string>("attnkit-report");
  auto quick = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("report", "run cost, bench, profile and advise; write an HTML page with plots");
  cmd->add_option("--out", *out, "output folder");
  cmd->add_flag("--quick", *quick, "tiny sweeps (seconds), for tests");
  cmd->callback([out, quick] { run_report(*out, *quick); });
}

}  // namespace attnkit::tools
