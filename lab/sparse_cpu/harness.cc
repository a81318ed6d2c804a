// Lab harness for the sparse CPU flash forward: each kernel variant (00 = src/cpu/flash_fwd.cc,
// the others lab/sparse_cpu/NN_*.cc) runs every preset, interleaved with dense flash (src) in
// the same rounds; prints medians, t/(kept·d) and GFLOP/s on kept pairs, and checks every
// variant's output against variant 00 (max abs difference).
//   lab_sparse_cpu [--n 4096] [--threads 1] [--rounds 3] [--variants 00,01] [--presets a,b]
//                  [--only] (skip dense: for profiling one variant) [--wall] (wall clock)
//                  [--chunks 8] (FlashFwdTuning::chunks_per_thread, for dense and every variant)
// f32, D = 64, B·H = 8, as bench_sparse.
#include <fmt/format.h>

#include <algorithm>
#include <ctime>
#include <span>
#include <sys/mman.h>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "attnkit/attnkit.h"
#include "core/problem.h"
#include "cpu/kernels.h"
#include "lab/sparse_cpu/variants.h"

namespace {

using attnkit::DType;
using attnkit::Mask;
using attnkit::TensorView;
using Fwd = void (*)(const attnkit::Problem&, const TensorView&, const TensorView&, const TensorView&,
                     const TensorView&, const TensorView&);

std::vector<int64_t> first_tokens(int64_t n) {
  std::vector<int64_t> g(n);
  for (int64_t i = 0; i < n; ++i) g[i] = i;
  return g;
}

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x[x.size() / 2];
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t a = 0;
  while (a <= s.size()) {
    size_t b = s.find(',', a);
    if (b == std::string::npos) b = s.size();
    if (b > a) out.push_back(s.substr(a, b - a));
    a = b + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t n = 4096;
  int threads = 1, rounds = 3;
  bool wall = false;  // --wall: wall-clock time (load balance between threads shows) instead of CPU time
  bool only = false, huge = false;
  std::string variants = "00", preset_names = "window,random,longformer,bigbird,strided,all";
  for (int a = 1; a < argc; ++a) {
    const std::string s = argv[a];
    auto next = [&] { return std::string(argv[++a]); };
    if (s == "--n") n = std::stoll(next());
    else if (s == "--threads") threads = std::stoi(next());
    else if (s == "--rounds") rounds = std::stoi(next());
    else if (s == "--variants") variants = next();
    else if (s == "--presets") preset_names = next();
    else if (s == "--wall") wall = true;
    else if (s == "--only") only = true;
    else if (s == "--chunks") attnkit::cpu::flash_fwd_tuning().chunks_per_thread = std::stoi(next());
    else if (s == "--huge") huge = true;
    else if (s == "--chunks") attnkit::cpu::flash_fwd_tuning().chunks_per_thread = std::stoll(next());
  }
  attnkit::set_num_threads(threads);
  const int64_t H = 8, D = 64;
  const std::map<std::string, Mask> all_presets = {
      {"window", attnkit::sliding_window(512)},
      {"random", Mask::random_blocks((n / 64 + 9) / 10, 64, 2026)},
      {"longformer", attnkit::longformer(512, first_tokens(8))},
      {"bigbird", attnkit::bigbird(512, first_tokens(8), 3, 2026)},
      {"strided", attnkit::sparse_transformer_strided(128, 64)},
      {"all", Mask()},
      {"window_sym", Mask::window(256, 256)},
      // longformer's parts apart: its global key columns only, its global query rows only
      {"win_gcols", Mask::window(256, 256) | (Mask::global(first_tokens(8)) & Mask::causal())},
      {"win_grows", Mask::window(256, 256) | (Mask::global(first_tokens(8)) & Mask::window(0, int64_t{1} << 40))},
      {"window128", attnkit::sliding_window(128)},
      {"window2k", attnkit::sliding_window(2048)},  // longformer without its global tokens
      {"global_rows", Mask::window(256, 256) | Mask::predicate([](int64_t, int64_t, int64_t i, int64_t) { return i < 8; })},
      {"global_cols", Mask::window(256, 256) | Mask::predicate([](int64_t, int64_t, int64_t, int64_t j) { return j < 8; })},
      {"dense", Mask()},  // no mask at all: the variant's dense path
  };
  const std::map<std::string, Fwd> all_variants = attnkit::lab::variants();
  std::vector<std::pair<std::string, Mask>> ps;
  for (const auto& p : split(preset_names)) ps.push_back({p, all_presets.at(p)});
  std::vector<std::pair<std::string, Fwd>> vs;
  for (const auto& v : split(variants)) vs.push_back({v, all_variants.at(v)});

  const size_t e = n * H * D;
  // --huge: q, k, v on 2 MiB pages (madvise), to see what the TLB costs the K/V row loads.
  auto buffer = [&](size_t count) {
    const size_t bytes = (count * sizeof(float) + (2u << 20) - 1) / (2u << 20) * (2u << 20);
    float* p = static_cast<float*>(std::aligned_alloc(2u << 20, bytes));
    if (huge) madvise(p, bytes, MADV_HUGEPAGE);
    std::fill(p, p + count, 0.0f);
    return std::span<float>(p, count);
  };
  std::span<float> q = buffer(e), k = buffer(e), v = buffer(e);
  std::vector<float> lse(H * n);
  std::mt19937 rng(7);
  std::normal_distribution<float> g;
  for (auto* x : {&q, &k, &v})
    for (float& f : *x) f = g(rng);
  auto view = [&](auto& x) { return TensorView(x.data(), DType::f32, {1, n, H, D}); };
  const TensorView L(lse.data(), DType::f32, {1, H, n});
  std::vector<std::vector<float>> outs(vs.size(), std::vector<float>(e));

  std::vector<double> kept(ps.size());
  for (size_t p = 0; p < ps.size(); ++p) {
    const int64_t heads = ps[p].second.head_dependent() ? H : 1;
    for (int64_t h = 0; h < heads; ++h) kept[p] += attnkit::describe(ps[p].second, n, n, h).kept_pairs;
    kept[p] /= static_cast<double>(n) * n * heads;
  }
  // Process CPU seconds (all threads): the machine is shared, and this counts what the call
  // did rather than how long it waited for a core.
  auto cpu_now = [&] {
    timespec ts;
    clock_gettime(wall ? CLOCK_MONOTONIC : CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  };
  auto time = [&](const std::function<void()>& fn) {
    const double t0 = cpu_now();
    fn();
    return cpu_now() - t0;
  };
  std::vector<double> dense;
  std::vector<std::vector<std::vector<double>>> t(ps.size(), std::vector<std::vector<double>>(vs.size()));
  std::vector<std::vector<double>> maxdiff(ps.size(), std::vector<double>(vs.size(), 0));
  std::vector<float> dense_out(e);
  for (int r = 0; r <= rounds; ++r) {
    if (!only) dense.push_back(time([&] { attnkit::forward(view(q), view(k), view(v), view(dense_out), {}, L); }));
    for (size_t p = 0; p < ps.size(); ++p) {
      attnkit::AttentionParams params;
      if (ps[p].first != "dense") params.mask = &ps[p].second;
      for (size_t vi = 0; vi < vs.size(); ++vi) {
        std::fill(outs[vi].begin(), outs[vi].end(), std::nanf(""));
        const TensorView O = view(outs[vi]);
        const attnkit::Problem pr = attnkit::validate_forward(view(q), view(k), view(v), O, params, L);
        t[p][vi].push_back(time([&] { vs[vi].second(pr, view(q), view(k), view(v), O, L); }));
        if (r == 0)
          for (size_t i = 0; i < e; ++i)
            maxdiff[p][vi] = std::max<double>(maxdiff[p][vi], std::isnan(outs[vi][i]) ? INFINITY
                                                                  : std::fabs(outs[vi][i] - outs[0][i]));
      }
    }
    if (r == 0 && rounds > 0) {
      dense.clear();
      for (auto& x : t)
        for (auto& y : x) y.clear();
    }
  }
  const double pairs = static_cast<double>(n) * n, fpp = 4.0 * D * H;
  const double dt = only ? NAN : median(dense);
  fmt::print("N = {}, {} threads: dense {:.3f} s, {:.1f} GFLOP/s\n", n, threads, dt, fpp * pairs / dt / 1e9);
  // Against the variant's own dense line when there is one (--presets dense,...), else src's.
  fmt::print("  {:<11} {:>7} {:>4} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9}\n", "preset", "kept", "var", "time", "t/(kept·d)",
             "GFLOP/s", "best", "vs dense", "maxdiff");
  for (size_t p = 0; p < ps.size(); ++p)
    for (size_t vi = 0; vi < vs.size(); ++vi) {
      const double tm = median(t[p][vi]), best = *std::min_element(t[p][vi].begin(), t[p][vi].end());
      const double gf = fpp * pairs * kept[p] / tm / 1e9, gbest = fpp * pairs * kept[p] / best / 1e9;
      double own = NAN;  // GFLOP/s ÷ the same variant's dense GFLOP/s (medians)
      if (ps[0].first == "dense") own = gf / (fpp * pairs / median(t[0][vi]) / 1e9);
      fmt::print("  {:<11} {:>6.2f}% {:>4} {:>7.3f}s {:>10.3f} {:>9.1f} {:>9.1f} {:>9.3f} {:>9.2g}\n", ps[p].first,
                 100 * kept[p], vs[vi].first, tm, tm / dt / kept[p], gf, gbest, own, maxdiff[p][vi]);
    }
}
