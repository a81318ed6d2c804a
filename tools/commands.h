// The attnkit command-line program: one file per subcommand, each registering itself here.
// Each subcommand's work is also a function from its options to the JSON it produced, so that
// `attnkit report` runs them in-process.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tools/common.h"

namespace attnkit::tools {

struct CostOptions {
  ModelOptions model;
  std::vector<int64_t> ns = {512, 1024, 2048, 4096, 8192, 16384, 32768};
  std::vector<std::string> variants = {"naive", "flash", "sparse", "linear", "scan", "rwkv", "decode"};
  std::string mode = "inference", dtype = "f32", json;
  int64_t batch = 1;
  double memory_gb = 0;  // 0: this machine's available memory
  double peak_gflops = 145, bandwidth_gbs = 20;
};
nlohmann::json run_cost(const CostOptions& o);

struct BenchOptions {
  std::vector<std::string> variants = {"naive", "flash"};
  std::vector<int64_t> ns = {256, 512, 1024, 2048, 4096};
  int64_t d = 64, heads = 8;
  bool causal = false, check = true;
  std::string pass = "fwd";
  std::string json, csv, plot;  // plot: path prefix of the .png/.svg
  double min_seconds = 0.3;
};
nlohmann::json run_bench(const BenchOptions& o);

struct ProfileOptions {
  ModelOptions model;
  std::vector<int64_t> ns = {512, 1024, 2048, 4096, 8192};
  int64_t layers = 2;  // layers of the measured stack
  int runs = 3;
  std::string variant = "flash";
  std::string json, plot;
};
nlohmann::json run_profile(const ProfileOptions& o);

struct AdviseOptions {
  int64_t seq = 0;
  double latency_ms = 0, memory_gb = 0;
  std::string task = "chat";
  std::string preset;  // default by task
  bool measure = false;
  std::string json;
};
nlohmann::json run_advise(const AdviseOptions& o);

void register_cost(CLI::App& app);
void register_bench(CLI::App& app);
void register_profile(CLI::App& app);
void register_advise(CLI::App& app);
void register_report(CLI::App& app);
void register_generate(CLI::App& app);
void register_serve_bench(CLI::App& app);

}  // namespace attnkit::tools
