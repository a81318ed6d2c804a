// Shared pieces of the attnkit subcommands: the variant registry, model options, memory checks,
// output folders, the progress bar, and the call into the plotting script.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "attnkit/cost.h"

namespace attnkit::tools {

// One line per token mixer. `measured` variants run in `attnkit bench` (they exist in this
// build); the others are priced by the cost model only. Adding a variant is one entry here and
// one in cost.h; a measured one also needs a runner in bench.cc.
struct VariantEntry {
  std::string name;
  cost::Variant variant;
  bool measured;
  std::string summary;
  std::string accuracy;  // what its output is, next to exact attention
};
const std::vector<VariantEntry>& variant_registry();
// Throws attnkit::Error listing the known names when name is unknown.
const VariantEntry& find_variant(const std::string& name);
std::string variant_names(bool measured_only);

// A model: a preset, or explicit dimensions overriding it.
struct ModelOptions {
  std::string preset = "gpt2";
  int64_t layers = 0, d_model = 0, heads = 0, kv_heads = 0, head_dim = 0, d_ff = 0, window = -1;
  std::string mlp, causal;  // "" keeps the preset's
  void add_to(CLI::App* cmd);
  cost::ModelShape resolve() const;
};

// A CLI11 check with a short message: "expected a positive number, given '0'".
CLI::Validator positive();

int64_t dtype_bytes(const std::string& dtype);  // f32, bf16, f16

// Memory this machine can still hand out (MemAvailable), and the refusal before allocating.
double available_memory_bytes();
void check_fits(double bytes, const std::string& what);

// Creates dir (and parents) and proves it writable; throws attnkit::Error otherwise.
std::filesystem::path prepare_out_dir(const std::string& dir);
void write_text(const std::filesystem::path& path, const std::string& text);

// Runs tools/plot.py (installed next to the binary as attnkit_plot.py) with Debian's python3:
// kind (bench, profile, cost), the JSON it reads, and the path prefix of the .png/.svg it writes.
void plot(const std::string& kind, const std::filesystem::path& json, const std::filesystem::path& prefix);

// The roofline device: this machine's measured sgemm and memcpy, or the given numbers.
cost::DeviceSpec this_machine(double gflops = 0, double gbps = 0);

std::string human_bytes(double bytes);

// A one-line progress bar on stderr: [#####-----] 3/7 label.
class Progress {
 public:
  Progress(std::string what, int total) : what_(std::move(what)), total_(total) {}
  void step(const std::string& label);
  void done();
  // Ends a bar left open by an error, so the error message starts its own line.
  static void interrupt();

 private:
  static inline bool open_ = false;
  std::string what_;
  int total_, n_ = 0;
};

}  // namespace attnkit::tools
