// Exact attention on the CPU: naive, flash, and plain OpenBLAS attention written the way a
// user would (sgemm on the BSHD buffers, a scalar softmax), over sequence length, head dim,
// causal or not, forward and backward. Prints a table and writes JSON; measures the machine's
// sgemm GFLOP/s at 2048³ in the same run as the ceiling. B·H = 8 (B = 1, H = 8).
//
//   bench_exact [--quick] [--n 512,1024,...] [--d 64,128] [--json out.json]
// --quick runs only the points the foundation bars are judged on.
#include <cblas.h>
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "attnkit/attnkit.h"
#include "core/measure.h"

namespace {

using attnkit::DType;
using attnkit::TensorView;
namespace measure = attnkit::measure;

constexpr int64_t kHeads = 8;

struct Buffers {
  int64_t n, d;
  std::vector<float> q, k, v, out, dout, dq, dk, dv, lse;
  Buffers(int64_t n_, int64_t d_) : n(n_), d(d_) {
    const size_t e = n * kHeads * d;
    std::mt19937 rng(static_cast<unsigned>(n * 131 + d));
    std::normal_distribution<float> g;
    for (auto* x : {&q, &k, &v, &dout}) {
      x->resize(e);
      for (float& f : *x) f = g(rng);
    }
    out.resize(e);
    dq.resize(e);
    dk.resize(e);
    dv.resize(e);
    lse.resize(kHeads * n);
  }
  TensorView view(std::vector<float>& x) { return TensorView(x.data(), DType::f32, {1, n, kHeads, d}); }
  TensorView lse_view() { return TensorView(lse.data(), DType::f32, {1, kHeads, n}); }
};

// Plain attention as a user writes it with OpenBLAS: per head, sgemm straight on the BSHD
// buffers (leading dimension H·D), then a row softmax with std::exp.
void plain_forward(Buffers& b, bool causal) {
  const int64_t n = b.n, d = b.d, ld = kHeads * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<float> s(n * n);
  for (int64_t h = 0; h < kHeads; ++h) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, scale, b.q.data() + h * d, ld, b.k.data() + h * d,
                ld, 0.0f, s.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      float* row = s.data() + i * n;
      const int64_t end = causal ? i + 1 : n;
      float m = -INFINITY, sum = 0;
      for (int64_t j = 0; j < end; ++j) m = std::max(m, row[j]);
      for (int64_t j = 0; j < end; ++j) sum += row[j] = std::exp(row[j] - m);
      for (int64_t j = 0; j < end; ++j) row[j] /= sum;
      for (int64_t j = end; j < n; ++j) row[j] = 0;
      b.lse[h * n + i] = m + std::log(sum);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, 1.0f, s.data(), n, b.v.data() + h * d, ld, 0.0f,
                b.out.data() + h * d, ld);
  }
}

void plain_backward(Buffers& b, bool causal) {
  const int64_t n = b.n, d = b.d, ld = kHeads * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<float> p(n * n), dp(n * n);
  for (int64_t h = 0; h < kHeads; ++h) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, scale, b.q.data() + h * d, ld, b.k.data() + h * d,
                ld, 0.0f, p.data(), n);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, 1.0f, b.dout.data() + h * d, ld, b.v.data() + h * d,
                ld, 0.0f, dp.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      float delta = 0;
      for (int64_t x = 0; x < d; ++x) delta += b.dout[i * ld + h * d + x] * b.out[i * ld + h * d + x];
      const int64_t end = causal ? i + 1 : n;
      for (int64_t j = 0; j < n; ++j) {
        const float pij = j < end ? std::exp(p[i * n + j] - b.lse[h * n + i]) : 0.0f;
        p[i * n + j] = pij;
        dp[i * n + j] = pij * (dp[i * n + j] - delta) * scale;
      }
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, n, 1.0f, p.data(), n, b.dout.data() + h * d, ld, 0.0f,
                b.dv.data() + h * d, ld);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, 1.0f, dp.data(), n, b.k.data() + h * d, ld, 0.0f,
                b.dq.data() + h * d, ld);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, n, 1.0f, dp.data(), n, b.q.data() + h * d, ld, 0.0f,
                b.dk.data() + h * d, ld);
  }
}

struct Point {
  std::string variant, pass;
  int64_t n, d;
  bool causal;
  double median_ms, gflops, extra_mib;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string removed = measure::ensure_fastest_blas(argc, argv);
  measure::configure_allocator();
  CLI::App app{"attnkit exact-attention CPU benchmark"};
  bool quick = false;
  std::vector<int64_t> ns = {512, 1024, 2048, 4096, 8192, 16384}, ds = {64, 128};
  std::vector<std::string> variants = {"naive", "flash", "plain"};
  std::string json_path = "bench_exact.json";
  double min_seconds = 0.5;
  app.add_flag("--quick", quick, "only the points the foundation bars are judged on");
  app.add_option("--n", ns, "sequence lengths")->delimiter(',');
  app.add_option("--d", ds, "head dims")->delimiter(',');
  app.add_option("--variants", variants, "naive, flash, plain")->delimiter(',');
  app.add_option("--json", json_path, "where to write the results");
  app.add_option("--min-seconds", min_seconds, "minimum timing time per point");
  CLI11_PARSE(app, argc, argv);

  const double sgemm = measure::sgemm_gflops(2048);
  fmt::print("attnkit bench_exact  cpu: {}  threads: {}\n", measure::cpu_name(), attnkit::num_threads());
  fmt::print("BLAS core: {}{}  sgemm 2048³: {:.1f} GFLOP/s (ceiling)\n", measure::blas_core(),
             removed.empty() ? "" : fmt::format(" (OPENBLAS_CORETYPE={} removed)", removed), sgemm);

  struct Job {
    int64_t n, d;
    bool causal, memory;
  };
  std::vector<Job> jobs;
  if (quick) {
    jobs = {{4096, 128, false, false}, {16384, 128, false, true}};
  } else {
    for (int64_t d : ds)
      for (bool causal : {false, true})
        for (int64_t n : ns) jobs.push_back({n, d, causal, n == ns.back()});
  }

  std::vector<Point> points;
  fmt::print("\n{:>7} {:>5} {:>4} {:>7} {:>5} {:>11} {:>9} {:>8} {:>10}\n", "variant", "pass", "D", "N", "causal",
             "median ms", "GFLOP/s", "% sgemm", "extra MiB");
  for (const Job& job : jobs) {
    Buffers b(job.n, job.d);
    const attnkit::cost::AttentionShape shape{
        .batch = 1, .seq_q = job.n, .seq_k = job.n, .heads_q = kHeads, .heads_kv = kHeads, .head_dim = job.d,
        .causal = job.causal};
    for (const std::string& variant : variants) {
      for (const std::string pass : {"fwd", "bwd"}) {
        if (quick && job.memory && pass == "bwd") continue;
        attnkit::AttentionParams p;
        p.causal = job.causal;
        p.algorithm = variant == "naive" ? attnkit::Algorithm::naive : attnkit::Algorithm::flash;
        std::function<void()> fn;
        if (variant == "plain") {
          fn = pass == "fwd" ? std::function<void()>([&] { plain_forward(b, job.causal); })
                             : std::function<void()>([&] { plain_backward(b, job.causal); });
        } else if (pass == "fwd") {
          fn = [&] { attnkit::forward(b.view(b.q), b.view(b.k), b.view(b.v), b.view(b.out), p, b.lse_view()); };
        } else {
          attnkit::forward(b.view(b.q), b.view(b.k), b.view(b.v), b.view(b.out), p, b.lse_view());
          fn = [&] {
            attnkit::backward(b.view(b.q), b.view(b.k), b.view(b.v), b.view(b.out), b.view(b.dout), b.lse_view(),
                              b.view(b.dq), b.view(b.dk), b.view(b.dv), p);
          };
        }
        const double flops =
            pass == "fwd" ? attnkit::cost::attention_fwd_flops(shape) : attnkit::cost::attention_bwd_flops(shape);
        const bool big = flops > 2e11;
        const measure::Timing t = measure::time_median(fn, big ? 0 : 1, big ? 3 : 5, min_seconds);
        const double extra = job.memory ? measure::extra_memory_bytes(fn) / 1048576.0 : NAN;
        const Point pt{variant, pass, job.n, job.d, job.causal, t.median_s * 1e3, flops / t.median_s * 1e-9, extra};
        points.push_back(pt);
        fmt::print("{:>7} {:>5} {:>4} {:>7} {:>5} {:>11.2f} {:>9.1f} {:>7.0f}% {:>10}\n", pt.variant, pt.pass, pt.d, pt.n,
                   pt.causal ? "yes" : "no", pt.median_ms, pt.gflops, 100 * pt.gflops / sgemm,
                   std::isnan(extra) ? std::string("-") : fmt::format("{:.1f}", extra));
        std::fflush(stdout);
      }
    }
  }

  // The foundation bars, from the points above.
  auto find = [&](const std::string& v, const std::string& pass, int64_t n, int64_t d) -> const Point* {
    for (const Point& p : points)
      if (p.variant == v && p.pass == pass && p.n == n && p.d == d && !p.causal) return &p;
    return nullptr;
  };
  fmt::print("\nbars (B·H = 8, D = 128, non-causal, f32):\n");
  if (auto* f = find("flash", "fwd", 4096, 128)) {
    fmt::print("  flash fwd N=4096: {:.1f} GFLOP/s = {:.0f}% of sgemm (bar >= 60%)\n", f->gflops, 100 * f->gflops / sgemm);
    if (auto* pl = find("plain", "fwd", 4096, 128))
      fmt::print("  flash fwd vs plain OpenBLAS attention: {:.2f}x (bar >= 1.5x)\n", pl->median_ms / f->median_ms);
  }
  if (auto* f = find("flash", "bwd", 4096, 128))
    fmt::print("  flash bwd N=4096: {:.1f} GFLOP/s = {:.0f}% of sgemm (bar >= 40%)\n", f->gflops, 100 * f->gflops / sgemm);
  if (auto *f = find("flash", "fwd", 16384, 128), *nv = find("naive", "fwd", 16384, 128); f && nv)
    fmt::print("  N=16384 extra memory: flash {:.1f} MiB, naive {:.1f} MiB: {:.2f}% (bar < 2%)\n", f->extra_mib,
               nv->extra_mib, 100 * f->extra_mib / nv->extra_mib);

  nlohmann::json j;
  j["cpu"] = measure::cpu_name();
  j["threads"] = attnkit::num_threads();
  j["blas_core"] = measure::blas_core();
  j["sgemm_gflops"] = sgemm;
  for (const Point& p : points) {
    j["points"].push_back({{"variant", p.variant}, {"pass", p.pass}, {"n", p.n}, {"d", p.d}, {"causal", p.causal},
                           {"median_ms", p.median_ms}, {"gflops", p.gflops},
                           {"extra_mib", std::isnan(p.extra_mib) ? nlohmann::json() : nlohmann::json(p.extra_mib)}});
  }
  std::ofstream(json_path) << j.dump(2) << "\n";
  fmt::print("wrote {}\n", json_path);
}
