// The attnkit program, run as a user runs it: bad input gives one line on stderr and a non-zero
// exit (never a crash), the cost table carries the textbook numbers, and the quick report
// writes every plot (naming its axes) and an HTML page that references only files that exist.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

namespace {

namespace fs = std::filesystem;

struct Result {
  int rc;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// This process's scratch folder, removed when the process exits (ctest runs each test in a
// process of its own).
class Scratch {
 public:
  Scratch() : dir_(fs::temp_directory_path() / ("attnkit_cli_test_" + std::to_string(::getpid()))) {
    fs::create_directories(dir_);
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  const fs::path& dir() const { return dir_; }

 private:
  fs::path dir_;
};

fs::path scratch() {
  static const Scratch s;
  return s.dir();
}

Result run(const std::string& args) {
  const fs::path out = scratch() / "stdout.txt", err = scratch() / "stderr.txt";
  const std::string cmd = std::string(ATTNKIT_CLI) + " " + args + " >" + out.string() + " 2>" + err.string();
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), slurp(out), slurp(err)};
}

// A refusal: non-zero exit, not a crash (a signal or sanitizer abort), and one line on stderr
// that mentions `what`.
void expect_refused(const std::string& args, const std::string& what) {
  SCOPED_TRACE(args);
  const Result r = run(args);
  EXPECT_NE(r.rc, 0);
  EXPECT_LT(r.rc, 100 + 28) << "crashed? stderr: " << r.err;
  std::string err = r.err;
  while (!err.empty() && err.back() == '\n') err.pop_back();
  EXPECT_EQ(err.find('\n'), std::string::npos) << "expected one line, got: " << r.err;
  EXPECT_NE(err.find(what), std::string::npos) << "expected '" << what << "' in: " << r.err;
}

TEST(Cli, UnknownPresetAndVariant) {
  expect_refused("cost --preset gpt5", "gpt5");
  expect_refused("cost --variants naive,quantum", "quantum");
  expect_refused("bench --variants magic --n 64", "magic");
  expect_refused("bench --variants linear --n 64", "no kernel in this build");
  expect_refused("profile --preset nope --n 64", "nope");
  expect_refused("advise --seq 1024 --latency-ms 10 --memory-gb 1 --task poetry", "poetry");
}

TEST(Cli, NonPositiveAndNonNumericSizes) {
  expect_refused("bench --n 0", "--n");
  expect_refused("bench --n 64,-5", "--n");
  expect_refused("bench --n abc", "--n");
  expect_refused("cost --n 1e", "--n");
  expect_refused("cost --d-model -768", "--d-model");
  expect_refused("profile --n 64 --heads 0", "--heads");
  expect_refused("advise --seq 0 --latency-ms 10 --memory-gb 1", "--seq");
  expect_refused("advise --seq 100 --latency-ms -1 --memory-gb 1", "--latency-ms");
  expect_refused("advise --seq 100 --latency-ms 10 --memory-gb zero", "--memory-gb");
}

TEST(Cli, TooLargeForThisMachineIsRefusedBeforeAllocating) {
  // 4·10⁷² bytes of scores: refused with the bytes it would need, at once.
  const auto t0 = std::chrono::steady_clock::now();
  expect_refused("bench --variants naive --n 10000000", "needs");
  expect_refused("bench --variants flash --n 2000000000", "bytes");
  expect_refused("profile --n 100000000", "needs");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30.0);
}

TEST(Cli, UnwritableOutputFolder) {
  const fs::path file = scratch() / "a_file";
  std::ofstream(file) << "x";
  expect_refused("report --quick --out " + (file / "sub").string(), "--out");
  expect_refused("report --quick --out /proc/attnkit_report", "--out");
  expect_refused("cost --n 64 --json /proc/attnkit.json", "cannot write");
}

TEST(Cli, CostTableCarriesTheTextbookNumbers) {
  const fs::path json = scratch() / "cost.json";
  const Result r = run("cost --preset bert-base --n 1000,2000,10000 --variants naive,flash --json " + json.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(slurp(json));
  double f2000 = 0, f10000 = 0;
  for (const auto& row : j["rows"]) {
    if (row["variant"] == "naive" && row["n"] == 1000) {
      EXPECT_EQ(row["mixer_workspace_bytes"].get<double>(), 48'000'000.0);  // 12 heads × 4,000,000
      EXPECT_EQ(row["mixer_macs"].get<double>(), 12.0 * 2 * 1000 * 1000 * 64);
    }
    if (row["variant"] == "flash" && row["n"] == 2000) f2000 = row["mixer_flops"];
    if (row["variant"] == "flash" && row["n"] == 10000) f10000 = row["mixer_flops"];
  }
  EXPECT_EQ(f10000 / f2000, 25.0);
  EXPECT_GT(j["scores_stop_fitting_n"].get<int64_t>(), 1000);
}

bool names_axes(const fs::path& stem) {
  const std::string svg = slurp(stem.string() + ".svg"), png = slurp(stem.string() + ".png");
  const bool svg_ok = svg.find("sequence length N") != std::string::npos;
  const bool png_ok = png.compare(1, 3, "PNG") == 0 && png.find("x: ") != std::string::npos &&
                      png.find("; y: ") != std::string::npos;
  return svg_ok && png_ok;
}

TEST(Cli, QuickReportWritesEveryPlotAndAConsistentPage) {
  const fs::path out = scratch() / "report";
  const Result r = run("report --quick --out " + out.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  for (const char* stem : {"bench", "profile", "profile_crossover", "cost", "cost_memory"}) {
    SCOPED_TRACE(stem);
    EXPECT_TRUE(fs::file_size(out / (std::string(stem) + ".png")) > 1000);
    EXPECT_TRUE(names_axes(out / stem));
  }
  const std::string html = slurp(out / "index.html");
  std::set<std::string> refs;  // every src="..." and href="..."
  for (const std::string attr : {"src=\"", "href=\""})
    for (size_t at = html.find(attr); at != std::string::npos; at = html.find(attr, at + 1)) {
      const size_t begin = at + attr.size(), end = html.find('"', begin);
      refs.insert(html.substr(begin, end - begin));
    }
  EXPECT_GE(refs.size(), 10u);
  for (const std::string& f : refs) {
    EXPECT_EQ(f.find("://"), std::string::npos) << "the page must be self-contained: " << f;
    EXPECT_TRUE(fs::exists(out / f)) << "the page references a missing file: " << f;
  }
  for (const char* f : {"bench.json", "bench.csv", "profile.json", "cost.json", "advise_chat.json"})
    if (!std::string(f).ends_with(".csv")) {
      EXPECT_TRUE(nlohmann::json::accept(slurp(out / f))) << f;
    }
}

TEST(Cli, BenchWritesCsvAndJsonWithErrors) {
  const fs::path json = scratch() / "b.json", csv = scratch() / "b.csv";
  const Result r = run("bench --n 64,128 --min-seconds 0 --json " + json.string() + " --csv " + csv.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(slurp(json));
  ASSERT_EQ(j["points"].size(), 4u);
  for (const auto& p : j["points"]) EXPECT_LT(p["rel_err"].get<double>(), 1e-5);
  EXPECT_NE(slurp(csv).find("variant,pass,n"), std::string::npos);
  EXPECT_NE(r.err.find("bench ["), std::string::npos);  // the progress bar
}

TEST(Cli, ServeBenchPlotsEveryVariant) {
  const fs::path json = scratch() / "serve.json", prefix = scratch() / "serve";
  const Result r = run("serve-bench --preset tiny --variants exact,window,linear --window 8 --ctx 16,64 --new 4 "
                       "--page-size 4 --prefill-chunk 16 --json " + json.string() + " --plot " + prefix.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(slurp(json));
  ASSERT_EQ(j["points"].size(), 6u);
  for (const auto& p : j["points"]) {
    EXPECT_GT(p["token_p50_ms"].get<double>(), 0.0);
    EXPECT_GT(p["kv_bytes"].get<double>(), 0.0);
  }
  for (const fs::path& stem : {prefix, fs::path(prefix.string() + "_memory")}) {
    EXPECT_TRUE(fs::file_size(stem.string() + ".png") > 1000);
    EXPECT_NE(slurp(stem.string() + ".svg").find("context length (tokens)"), std::string::npos) << stem;
  }
  expect_refused("serve-bench --variants rwkv9", "rwkv9");
}

}  // namespace
