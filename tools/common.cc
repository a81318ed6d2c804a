#include "tools/common.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <system_error>

#include "attnkit/error.h"
#include "core/measure.h"

namespace attnkit::tools {

namespace fs = std::filesystem;
using cost::Variant;

const std::vector<VariantEntry>& variant_registry() {
  static const std::vector<VariantEntry> r = {
      {"naive", Variant::naive, true, "exact; materializes the N×N scores (O(N²) memory), BLAS GEMMs",
       "exact (fp32 rounding, ~1e-7 relative)"},
      {"flash", Variant::flash, true, "exact; tiled online softmax, O(N) extra memory",
       "exact (fp32 rounding, ~1e-7 relative)"},
      {"sparse", Variant::sparse, false, "exact on kept pairs: sliding window + global tokens; cost ∝ kept pairs",
       "drops every pair outside the window: long-range lookups beyond the window are lost"},
      {"linear", Variant::linear, false, "kernelized φ(Q)(φ(K)ᵀV), O(N·F·D), constant state",
       "approximates softmax: known to lose precise retrieval and copying"},
      {"scan", Variant::scan, false, "Mamba selective state-space scan, O(N), constant state",
       "a different model (must be trained as such), not a drop-in for softmax attention"},
      {"rwkv", Variant::rwkv, false, "RWKV time mixing, matrix state per head, O(N·D²)",
       "a different model (must be trained as such), not a drop-in for softmax attention"},
      {"decode", Variant::decode, false, "one new token against a KV cache of length L (generation)",
       "exact; memory-bound on reading the cache"},
  };
  return r;
}

std::string variant_names(bool measured_only) {
  std::string s;
  for (const VariantEntry& v : variant_registry())
    if (!measured_only || v.measured) s += (s.empty() ? "" : ", ") + v.name;
  return s;
}

const VariantEntry& find_variant(const std::string& name) {
  for (const VariantEntry& v : variant_registry())
    if (v.name == name) return v;
  throw Error(fmt::format("--variants: expected one of {}, given '{}'", variant_names(false), name));
}

CLI::Validator positive() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (end == s.c_str() || *end != '\0' || !(v > 0)) return fmt::format("expected a positive number, given '{}'", s);
        return {};
      },
      "POSITIVE");
}

void ModelOptions::add_to(CLI::App* cmd) {
  cmd->add_option("--preset", preset, "model preset: bert-base, gpt2, gpt3-175b, llama-3-8b, mistral-7b, vit-b/16, "
                                      "whisper-large");
  cmd->add_option("--layers", layers, "layers (overrides the preset)")->check(positive());
  cmd->add_option("--d-model", d_model, "model width")->check(positive());
  cmd->add_option("--heads", heads, "query heads")->check(positive());
  cmd->add_option("--kv-heads", kv_heads, "key/value heads (GQA)")->check(positive());
  cmd->add_option("--head-dim", head_dim, "head dimension")->check(positive());
  cmd->add_option("--d-ff", d_ff, "MLP hidden width")->check(positive());
  cmd->add_option("--window", window, "sliding window (0: none)")->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  cmd->add_option("--mlp", mlp, "gelu or swiglu")->check(CLI::IsMember({"gelu", "swiglu"}));
  cmd->add_option("--causal", causal, "yes or no")->check(CLI::IsMember({"yes", "no"}));
}

cost::ModelShape ModelOptions::resolve() const {
  cost::ModelShape m = cost::preset(preset);
  const bool explicit_shape = layers || d_model || heads || kv_heads || head_dim || d_ff;
  if (layers) m.layers = layers;
  if (d_model) m.d_model = d_model;
  if (heads) {
    m.heads_q = heads;
    if (!kv_heads) m.heads_kv = heads;
  }
  if (kv_heads) m.heads_kv = kv_heads;
  if (head_dim) m.head_dim = head_dim;
  else if (d_model || heads) m.head_dim = m.d_model / m.heads_q;
  if (m.head_dim <= 0) throw Error(fmt::format("--head-dim: d_model {} over {} heads leaves no head dimension", m.d_model, m.heads_q));
  if (d_ff) m.d_ff = d_ff;
  else if (d_model) m.d_ff = 4 * m.d_model;
  if (window >= 0) m.window = window;
  if (!mlp.empty()) m.mlp = mlp == "swiglu" ? cost::MlpKind::swiglu : cost::MlpKind::gelu;
  if (!causal.empty()) m.causal = causal == "yes";
  if (m.heads_q % m.heads_kv != 0)
    throw Error(fmt::format("--kv-heads: expected a divisor of the {} query heads, given {}", m.heads_q, m.heads_kv));
  if (explicit_shape) {
    m.name += "(custom)";
    m.note = "explicit shape";
  }
  return m;
}

int64_t dtype_bytes(const std::string& dtype) {
  if (dtype == "f32") return 4;
  if (dtype == "bf16" || dtype == "f16") return 2;
  throw Error(fmt::format("--dtype: expected f32, bf16 or f16, given '{}'", dtype));
}

double available_memory_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  double kib = 0;
  while (f >> key >> kib) {
    if (key == "MemAvailable:") return kib * 1024;
    f.ignore(256, '\n');
  }
  return 0;
}

void check_fits(double bytes, const std::string& what) {
  const double avail = available_memory_bytes();
  if (avail > 0 && bytes > 0.9 * avail)
    throw Error(fmt::format("{} needs {:.0f} bytes ({}), more than this machine can give ({} available)", what, bytes,
                            human_bytes(bytes), human_bytes(avail)));
}

fs::path prepare_out_dir(const std::string& dir) {
  if (dir.empty()) throw Error("--out: expected a folder, given ''");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) throw Error(fmt::format("--out: cannot create folder '{}': {}", dir, ec ? ec.message() : "a file is in the way"));
  const fs::path probe = fs::path(dir) / ".attnkit_write_test";
  {
    std::ofstream f(probe);
    if (!f || !(f << "ok") || !(f.flush()))
      throw Error(fmt::format("--out: cannot write into folder '{}'", dir));
  }
  fs::remove(probe, ec);
  return fs::path(dir);
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream f(path);
  if (!f || !(f << text) || !f.flush()) throw Error(fmt::format("cannot write '{}'", path.string()));
}

namespace {
fs::path plot_script() {
  if (const char* env = std::getenv("ATTNKIT_PLOT_SCRIPT")) return env;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec && fs::exists(exe.parent_path() / "attnkit_plot.py")) return exe.parent_path() / "attnkit_plot.py";
  return fs::path(ATTNKIT_SOURCE_DIR) / "tools" / "plot.py";
}
std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}
}  // namespace

void plot(const std::string& kind, const fs::path& json, const fs::path& prefix) {
  const std::string python = fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  const std::string cmd = fmt::format("{} {} {} {} {} 2>&1", python, quote(plot_script().string()), kind,
                                      quote(json.string()), quote(prefix.string()));
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw Error(fmt::format("plot: cannot start '{}'", python));
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  const int rc = pclose(p);
  if (rc != 0) {
    const size_t nl = out.find_last_of('\n', out.size() >= 2 ? out.size() - 2 : 0);
    std::string last = nl == std::string::npos ? out : out.substr(nl + 1);
    while (!last.empty() && last.back() == '\n') last.pop_back();
    throw Error(fmt::format("plot: {} failed (is python3-matplotlib installed? scripts/setup.sh installs it): {}",
                            kind, last));
  }
}

cost::DeviceSpec this_machine(double gflops, double gbps) {
  cost::DeviceSpec d;
  d.name = measure::cpu_name();
  d.peak_flops = (gflops > 0 ? gflops : measure::sgemm_gflops(1024)) * 1e9;
  d.bandwidth = (gbps > 0 ? gbps : measure::memcpy_gbps(int64_t{128} << 20)) * 1e9;
  d.memory_bytes = available_memory_bytes();
  return d;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (b >= 1024 && u < 6) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} B", b) : fmt::format("{:.1f} {}", b, units[u]);
}

void Progress::step(const std::string& label) {
  ++n_;
  const int width = 24, filled = total_ > 0 ? width * n_ / total_ : width;
  fmt::print(stderr, "\r{} [{}{}] {}/{} {:<40}", what_, std::string(filled, '#'), std::string(width - filled, '-'), n_,
             total_, label);
  std::fflush(stderr);
  open_ = true;
}

void Progress::done() {
  fmt::print(stderr, "\r{:<100}\r", "");
  std::fflush(stderr);
  open_ = false;
}

void Progress::interrupt() {
  if (open_) std::fputc('\n', stderr);
  open_ = false;
}

}  // namespace attnkit::tools
