// Linear-time alternatives against dense flash attention on the CPU: one command reproduces
// every number of docs/benchmarks.md's "Linear-time alternatives" section and docs/linear.md's
// approximation study.
//
//   bench_linear            everything below, in this order
//   bench_linear --ceilings the machine's sgemm GFLOP/s and memcpy bandwidth
//   bench_linear --bars     causal linear attention GFLOP/s at D=64, B·H=8, N=16384; scan and
//                           WKV bandwidth; growth ratios t(131072)/t(8192)
//   bench_linear --sweep    time against N = 1024 … 262144 for every method next to flash
//   bench_linear --steps    10,000 streaming steps per family in a fresh process: peak RSS
//   bench_linear --study    FAVOR+ relative error against exact softmax attention
//
// OpenBLAS reads OPENBLAS_CORETYPE when it loads, so the program re-executes itself without
// it: the sgemm ceiling is then the best kernel OpenBLAS has for this CPU. Timings are the
// median of several runs after a warm-up; FLOPs and bytes come from the library's own counts
// (linear_attention_fwd_flops, *_fwd_bytes, cost::attention_fwd_flops).
#include <cblas.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "attnkit/attnkit.h"
#include "aligned_vector.h"

namespace {

using attnkit::DType;
using attnkit::TensorView;
using Clock = std::chrono::steady_clock;

using attnkit_bench::FVec;
using attnkit_bench::HugeVec;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Median seconds of `runs` calls after one warm-up.
double median_time(const std::function<void()>& fn, int runs) {
  fn();
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = Clock::now();
    fn();
    t.push_back(seconds_since(t0));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Medians of a and b timed alternately (a, b, a, b, ...) after a warm-up of each: when other
// processes share the cores, both see the same contention and their ratio stays meaningful.
// settle_ms: an untimed pause after each a (OpenBLAS's threads spin for about 0.1 s after a
// call; without the pause they share the cores with b).
std::pair<double, double> paired_times(const std::function<void()>& a, const std::function<void()>& b, int runs,
                                       int settle_ms = 0) {
  auto settle = [&] {
    if (settle_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(settle_ms));
  };
  a();
  settle();
  b();
  std::vector<double> ta, tb;
  for (int i = 0; i < runs; ++i) {
    auto t0 = Clock::now();
    a();
    ta.push_back(seconds_since(t0));
    settle();
    t0 = Clock::now();
    b();
    tb.push_back(seconds_since(t0));
  }
  std::sort(ta.begin(), ta.end());
  std::sort(tb.begin(), tb.end());
  return {ta[ta.size() / 2], tb[tb.size() / 2]};
}

int runs_for(int64_t n) { return n <= 16384 ? 7 : n <= 65536 ? 5 : 3; }

template <class Vec = FVec>
Vec randn(int64_t n, float scale, uint64_t seed) {
  Vec v(n);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> nd(0.0f, scale);
  // A short random table repeated with a stride pattern: fast to fill for gigabyte buffers.
  std::vector<float> table(65537);
  for (float& x : table) x = nd(rng);
  for (int64_t i = 0; i < n; ++i) v[i] = table[(i * 7919) % 65537];
  return v;
}

template <class Vec = FVec>
Vec uniform(int64_t n, float lo, float hi, uint64_t seed) {
  Vec v(n);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> table(65537);
  for (float& x : table) x = u(rng);
  for (int64_t i = 0; i < n; ++i) v[i] = table[(i * 7919) % 65537];
  return v;
}

// A callable that runs one forward pass (or one ceiling operation) on buffers it owns.
using Runner = std::function<void()>;

// ---- ceilings -------------------------------------------------------------------------------

struct Ceilings {
  double sgemm_gflops = 0, memcpy_gbs = 0;
};

constexpr int kGemmN = 2048;
constexpr int64_t kCopyBytes = int64_t{512} << 20;

Runner sgemm_runner() {
  const int n = kGemmN;
  auto a = std::make_shared<FVec>(randn(n * n, 1, 1)), b = std::make_shared<FVec>(randn(n * n, 1, 2)),
       c = std::make_shared<FVec>(n * n);
  return [=] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a->data(), n, b->data(), n, 0.0f, c->data(), n);
  };
}

Runner memcpy_runner() {
  auto src = std::make_shared<std::vector<char>>(kCopyBytes, 1), dst = std::make_shared<std::vector<char>>(kCopyBytes, 0);
  const int threads = attnkit::num_threads();
  return [=] {
    std::vector<std::thread> ts;
    const int64_t part = kCopyBytes / threads;
    for (int i = 0; i < threads; ++i)
      ts.emplace_back([&, i] { std::memcpy(dst->data() + i * part, src->data() + i * part, part); });
    for (auto& th : ts) th.join();
  };
}

double sgemm_gflops(double secs) { return 2.0 * kGemmN * kGemmN * double(kGemmN) / secs / 1e9; }
double memcpy_gbs(double secs) { return 2.0 * kCopyBytes / secs / 1e9; }

Ceilings measure_ceilings() {
  Ceilings c;
  const int n = kGemmN;
  FVec a = randn(n * n, 1, 1), b = randn(n * n, 1, 2), cm(n * n);
  const double t = median_time(
      [&] { cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, cm.data(), n); },
      7);
  c.sgemm_gflops = 2.0 * n * n * n / t / 1e9;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // let OpenBLAS's threads stop spinning
  // memcpy of 512 MiB split over the cores, counting bytes read plus bytes written.
  const int64_t bytes = int64_t{512} << 20;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  const int threads = attnkit::num_threads();
  const double tm = median_time(
      [&] {
        std::vector<std::thread> ts;
        const int64_t part = bytes / threads;
        for (int i = 0; i < threads; ++i)
          ts.emplace_back([&, i] { std::memcpy(dst.data() + i * part, src.data() + i * part, part); });
        for (auto& th : ts) th.join();
      },
      5);
  c.memcpy_gbs = 2.0 * bytes / tm / 1e9;
  std::printf("## Machine ceilings\n\nOpenBLAS core: %s, threads: %d\n\n", openblas_get_corename(), threads);
  std::printf("| ceiling | measured |\n|---|---|\n| sgemm 2048³ (OpenBLAS) | %.1f GFLOP/s |\n", c.sgemm_gflops);
  std::printf("| memcpy 512 MiB, %d threads (read + write bytes) | %.1f GB/s |\n\n", threads, c.memcpy_gbs);
  return c;
}

// ---- the methods, at one sequence length ------------------------------------------------------

struct Shape {
  int64_t heads = 4, head_dim = 64;  // attention; the recurrences use the same width H·D
  int64_t scan_state = 16;
};

struct Method {
  std::string name;
  std::function<double(int64_t)> time;  // seconds for sequence length N
};

double time_flash(const Shape& s, int64_t N) {
  const int64_t n = N * s.heads * s.head_dim;
  FVec q = randn(n, 1, 3), k = randn(n, 1, 4), v = randn(n, 1, 5), o(n);
  auto view = [&](FVec& x) { return TensorView(x.data(), DType::f32, {1, N, s.heads, s.head_dim}); };
  attnkit::AttentionParams p;
  p.causal = true;
  p.algorithm = attnkit::Algorithm::flash;
  return median_time([&] { attnkit::forward(view(q), view(k), view(v), view(o), p); }, N >= 16384 ? 3 : 5);
}

Runner linear_runner(int64_t B, int64_t H, int64_t D, int64_t N, attnkit::FeatureMap map, int64_t m) {
  const int64_t n = B * N * H * D;
  auto q = std::make_shared<FVec>(randn(n, 0.5f, 6)), k = std::make_shared<FVec>(randn(n, 0.5f, 7)),
       v = std::make_shared<FVec>(randn(n, 1, 8)), o = std::make_shared<FVec>(n);
  auto rf = std::make_shared<attnkit::RandomFeatures>(D, std::max<int64_t>(m, 1), 42);
  return [=] {
    auto view = [&](FVec& x) { return TensorView(x.data(), DType::f32, {B, N, H, D}); };
    attnkit::LinearAttentionParams p;
    p.feature_map = map;
    p.features = rf.get();
    p.causal = true;
    attnkit::linear_forward(view(*q), view(*k), view(*v), view(*o), p);
  };
}

double time_linear(int64_t B, int64_t H, int64_t D, int64_t N, attnkit::FeatureMap map, int64_t m) {
  return median_time(linear_runner(B, H, D, N, map, m), runs_for(N));
}

// Vec: FVec (a user's tensors) or HugeVec (the same on transparent huge pages).
template <class Vec = FVec>
Runner scan_runner(int64_t Dch, int64_t Ns, int64_t N) {
  struct Bufs {
    Vec x, dt, z, out, A, Bm, Cm, D;
  };
  auto b = std::make_shared<Bufs>();
  Vec x = randn<Vec>(N * Dch, 1, 9), dt = uniform<Vec>(N * Dch, 0.001f, 0.1f, 10), z = randn<Vec>(N * Dch, 1, 11),
      out(N * Dch), A = uniform<Vec>(Dch * Ns, -2.0f, -0.1f, 12), Bm = randn<Vec>(N * Ns, 1, 13),
      Cm = randn<Vec>(N * Ns, 1, 14), D = randn<Vec>(Dch, 1, 15);
  b->x = std::move(x), b->dt = std::move(dt), b->z = std::move(z), b->out = std::move(out), b->A = std::move(A);
  b->Bm = std::move(Bm), b->Cm = std::move(Cm), b->D = std::move(D);
  return [=] {
    const attnkit::ScanInputs in2{TensorView(b->x.data(), DType::f32, {1, N, Dch}), TensorView(b->dt.data(), DType::f32, {1, N, Dch}),
                                  TensorView(b->A.data(), DType::f32, {Dch, Ns}), TensorView(b->Bm.data(), DType::f32, {1, N, Ns}),
                                  TensorView(b->Cm.data(), DType::f32, {1, N, Ns}), TensorView(b->D.data(), DType::f32, {Dch}),
                                  TensorView(b->z.data(), DType::f32, {1, N, Dch})};
    attnkit::selective_scan_forward(in2, TensorView(b->out.data(), DType::f32, {1, N, Dch}));
  };
}

double time_scan(int64_t Dch, int64_t Ns, int64_t N) { return median_time(scan_runner(Dch, Ns, N), runs_for(N)); }

template <class Vec = FVec>
Runner wkv4_runner(int64_t C, int64_t N) {
  auto w = std::make_shared<Vec>(uniform<Vec>(C, 0.01f, 3.0f, 16)), u = std::make_shared<Vec>(randn<Vec>(C, 1, 17)),
       k = std::make_shared<Vec>(randn<Vec>(N * C, 1, 18)), v = std::make_shared<Vec>(randn<Vec>(N * C, 1, 19)),
       y = std::make_shared<Vec>(N * C);
  return [=] {
    auto v3 = [&](Vec& x) { return TensorView(x.data(), DType::f32, {1, N, C}); };
    attnkit::wkv4_forward(TensorView(w->data(), DType::f32, {C}), TensorView(u->data(), DType::f32, {C}), v3(*k), v3(*v), v3(*y));
  };
}

double time_wkv4(int64_t C, int64_t N) { return median_time(wkv4_runner(C, N), runs_for(N)); }

Runner wkv6_runner(int64_t H, int64_t K, int64_t N) {
  const int64_t n = N * H * K;
  auto r = std::make_shared<FVec>(randn(n, 1, 20)), k = std::make_shared<FVec>(randn(n, 1, 21)),
       v = std::make_shared<FVec>(randn(n, 1, 22)), w = std::make_shared<FVec>(randn(n, 1, 23)),
       u = std::make_shared<FVec>(randn(H * K, 1, 24)), y = std::make_shared<FVec>(n);
  return [=] {
    auto v4 = [&](FVec& x) { return TensorView(x.data(), DType::f32, {1, N, H, K}); };
    attnkit::wkv6_forward(v4(*r), v4(*k), v4(*v), v4(*w), TensorView(u->data(), DType::f32, {H, K}), v4(*y));
  };
}

double time_wkv6(int64_t H, int64_t K, int64_t N) { return median_time(wkv6_runner(H, K, N), runs_for(N)); }

// ---- sections -------------------------------------------------------------------------------

// Each bar is measured against its ceiling in alternation (see paired_times), so that both see
// the same contention; the table also gives the ceiling of that pairing.
void bars() {
  std::printf("## Bars\n\n| bar | measured | ceiling in the same pairing | target | met |\n|---|---|---|---|---|\n");
  {  // causal linear attention at D = 64, B·H = 8, N = 16384 (B = 1, H = 8, elu+1 features)
    const int64_t N = 16384;
    const auto [tg, t] = paired_times(sgemm_runner(), linear_runner(1, 8, 64, N, attnkit::FeatureMap::elu_plus_one, 0), 9, 200);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const double g = attnkit::linear_attention_fwd_flops(1, N, 8, 64, 64, true) / t / 1e9, cg = sgemm_gflops(tg);
    std::printf("| causal linear attention, elu+1, D=64, B·H=8, N=16384 | %.1f GFLOP/s (%.1f ms) = %.0f%% of sgemm | "
                "sgemm %.1f GFLOP/s | >= 40%% | %s |\n",
                g, t * 1e3, 100 * g / cg, cg, g >= 0.4 * cg ? "yes" : "no");
  }
  // The recurrences at width 512 (scan Dch = 512, N = 16; WKV-4 C = 512; WKV-6 H = 8, K = 64), L = 65536.
  const int64_t L = 65536, W = 512;
  struct B {
    const char* name;
    std::function<Runner()> make;  // buffers allocated for the row alone
    double bytes;
    bool bar;
  } bw[] = {
      {"selective scan, Dch=512, N=16, D and z, L=65536", [&] { return scan_runner(W, 16, L); },
       attnkit::selective_scan_fwd_bytes(1, L, W, 16, true, true), true},
      {"WKV-4, C=512, T=65536", [&] { return wkv4_runner(W, L); }, attnkit::wkv4_fwd_bytes(1, L, W), true},
      {"WKV-6, H=8, K=64, T=65536 (no bar)", [&] { return wkv6_runner(8, 64, L); }, attnkit::wkv6_fwd_bytes(1, L, 8, 64), false},
      // Not the bars (a user's tensors get 4 KiB pages on this machine, whose THP is "madvise"):
      // what inputs on transparent huge pages gain (THP "always", or MADV_HUGEPAGE).
      {"selective scan as above, inputs on huge pages (no bar)", [&] { return scan_runner<HugeVec>(W, 16, L); },
       attnkit::selective_scan_fwd_bytes(1, L, W, 16, true, true), false},
      {"WKV-4 as above, inputs on huge pages (no bar)", [&] { return wkv4_runner<HugeVec>(W, L); }, attnkit::wkv4_fwd_bytes(1, L, W), false},
  };
  for (const B& x : bw) {
    const auto [tc, t] = paired_times(memcpy_runner(), x.make(), 7);
    const double gbs = x.bytes / t / 1e9, cm = memcpy_gbs(tc);
    std::printf("| %s | %.1f GB/s (%.1f ms) = %.0f%% of memcpy | memcpy %.1f GB/s | %s | %s |\n", x.name, gbs, t * 1e3,
                100 * gbs / cm, cm, x.bar ? ">= 40%" : "-", x.bar ? (gbs >= 0.4 * cm ? "yes" : "no") : "-");
  }
  // Growth t(131072) / t(8192) at the sweep's width, the two lengths timed alternately (9 pairs:
  // a run at 8192 takes 2 ms for WKV-4, where one interruption moves a median of 5).
  const Shape s;
  const int64_t W2 = s.heads * s.head_dim;
  struct G {
    const char* name;
    std::function<Runner(int64_t)> make;
  } growth[] = {
      {"causal linear attention (elu+1)",
       [&](int64_t n) { return linear_runner(1, s.heads, s.head_dim, n, attnkit::FeatureMap::elu_plus_one, 0); }},
      {"selective scan", [&](int64_t n) { return scan_runner(W2, s.scan_state, n); }},
      {"WKV-4", [&](int64_t n) { return wkv4_runner(W2, n); }},
      {"WKV-6", [&](int64_t n) { return wkv6_runner(s.heads, s.head_dim, n); }},
  };
  for (const G& g : growth) {
    const auto [a, b] = paired_times(g.make(8192), g.make(131072), 9);
    std::printf("| growth t(131072)/t(8192), %s, width %lld | %.1f | %.2f ms → %.2f ms | <= 18 | %s |\n", g.name,
                static_cast<long long>(W2), b / a, a * 1e3, b * 1e3, b / a <= 18 ? "yes" : "no");
  }
  std::printf("\n");
}

void sweep() {
  const Shape s;
  const int64_t W = s.heads * s.head_dim;
  std::printf("## Time against N (ms, forward, f32, causal; B = 1, H = %lld, D = %lld; scan Dch = %lld, N_state = %lld; "
              "WKV-4 C = %lld; WKV-6 H = %lld, K = %lld)\n\n",
              static_cast<long long>(s.heads), static_cast<long long>(s.head_dim), static_cast<long long>(W),
              static_cast<long long>(s.scan_state), static_cast<long long>(W), static_cast<long long>(s.heads),
              static_cast<long long>(s.head_dim));
  const std::vector<Method> methods = {
      {"linear elu+1", [&](int64_t n) { return time_linear(1, s.heads, s.head_dim, n, attnkit::FeatureMap::elu_plus_one, 0); }},
      {"FAVOR+ m=64", [&](int64_t n) { return time_linear(1, s.heads, s.head_dim, n, attnkit::FeatureMap::favor_plus, 64); }},
      {"FAVOR+ m=256", [&](int64_t n) { return time_linear(1, s.heads, s.head_dim, n, attnkit::FeatureMap::favor_plus, 256); }},
      {"selective scan", [&](int64_t n) { return time_scan(W, s.scan_state, n); }},
      {"WKV-4", [&](int64_t n) { return time_wkv4(W, n); }},
      {"WKV-6", [&](int64_t n) { return time_wkv6(s.heads, s.head_dim, n); }},
  };
  constexpr int64_t kFlashMax = 16384;  // beyond: extrapolated as t ∝ N² from the last measurement
  std::vector<int64_t> ns;
  for (int64_t n = 1024; n <= 262144; n *= 2) ns.push_back(n);
  std::vector<double> flash(ns.size());
  std::vector<std::vector<double>> t(methods.size(), std::vector<double>(ns.size()));
  std::printf("| N | flash (exact) |");
  for (const Method& m : methods) std::printf(" %s |", m.name.c_str());
  std::printf("\n|---|---|");
  for (size_t i = 0; i < methods.size(); ++i) std::printf("---|");
  std::printf("\n");
  double last_flash = 0;
  int64_t last_n = 0;
  for (size_t j = 0; j < ns.size(); ++j) {
    const int64_t n = ns[j];
    bool extrapolated = n > kFlashMax;
    if (!extrapolated) {
      flash[j] = last_flash = time_flash(s, n);
      last_n = n;
    } else {
      flash[j] = last_flash * std::pow(static_cast<double>(n) / last_n, 2);
    }
    std::printf("| %lld | %s%.2f |", static_cast<long long>(n), extrapolated ? "~" : "", flash[j] * 1e3);
    for (size_t i = 0; i < methods.size(); ++i) {
      t[i][j] = methods[i].time(n);
      std::printf(" %.2f |", t[i][j] * 1e3);
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  std::printf("\n(~ = flash extrapolated as N² from N = %lld)\n\n| method | crossover N (first N of the sweep where it is faster than flash) | "
              "speed-up over flash at N = 262144 |\n|---|---|---|\n",
              static_cast<long long>(kFlashMax));
  for (size_t i = 0; i < methods.size(); ++i) {
    int64_t cross = -1;
    for (size_t j = 0; j < ns.size() && cross < 0; ++j)
      if (t[i][j] < flash[j]) cross = ns[j];
    std::printf("| %s | %s | %.0f× |\n", methods[i].name.c_str(),
                cross < 0 ? "none in the sweep" : (cross == ns[0] ? "<= 1024" : std::to_string(cross).c_str()),
                flash.back() / t[i].back());
  }
  std::printf("\n");
}

long peak_rss_kib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

void steps() {
  std::printf("## Streaming steps: peak RSS (fresh process)\n\n| family | shape | peak RSS after 100 steps | after 10,000 | "
              "growth | time per step |\n|---|---|---|---|---|---|\n");
  constexpr int kSteps = 10000;
  auto run = [&](const char* name, const char* shape, const std::function<void(int)>& step) {
    for (int i = 0; i < 100; ++i) step(i);
    const long r100 = peak_rss_kib();
    const auto t0 = Clock::now();
    for (int i = 100; i < kSteps; ++i) step(i);
    const double per = seconds_since(t0) / (kSteps - 100);
    const long r = peak_rss_kib();
    std::printf("| %s | %s | %ld KiB | %ld KiB | %ld KiB (%s 1 MiB) | %.1f µs |\n", name, shape, r100, r, r - r100,
                r - r100 < 1024 ? "<" : ">=", per * 1e6);
  };
  {  // inputs for one token are re-used: the state is what must not grow
    const int64_t H = 8, D = 64;
    FVec q = randn(H * D, 0.5f, 1), k = randn(H * D, 0.5f, 2), v = randn(H * D, 1, 3), o(H * D);
    attnkit::LinearState st(1, H, D, {});
    auto v3 = [&](FVec& x) { return TensorView(x.data(), DType::f32, {1, H, D}); };
    run("linear attention (elu+1)", "H=8, D=64", [&](int) { attnkit::linear_step(st, v3(q), v3(k), v3(v), v3(o)); });
  }
  {
    const int64_t C = 512, N = 16;
    FVec x = randn(C, 1, 4), dt = uniform(C, 0.01f, 0.1f, 5), z = randn(C, 1, 6), o(C),
                       A = uniform(C * N, -2, -0.1f, 7), Bm = randn(N, 1, 8), Cm = randn(N, 1, 9), D = randn(C, 1, 10);
    attnkit::ScanState st(1, C, N);
    const attnkit::ScanInputs in{TensorView(x.data(), DType::f32, {1, C}), TensorView(dt.data(), DType::f32, {1, C}),
                                 TensorView(A.data(), DType::f32, {C, N}), TensorView(Bm.data(), DType::f32, {1, N}),
                                 TensorView(Cm.data(), DType::f32, {1, N}), TensorView(D.data(), DType::f32, {C}),
                                 TensorView(z.data(), DType::f32, {1, C})};
    run("selective scan", "Dch=512, N=16", [&](int) { attnkit::selective_scan_step(st, in, TensorView(o.data(), DType::f32, {1, C})); });
  }
  {
    const int64_t C = 512;
    FVec w = uniform(C, 0.01f, 3, 11), u = randn(C, 1, 12), k = randn(C, 1, 13), v = randn(C, 1, 14), y(C);
    attnkit::Wkv4State st(1, C);
    auto v2 = [&](FVec& x) { return TensorView(x.data(), DType::f32, {1, C}); };
    const TensorView wv(w.data(), DType::f32, {C}), uv(u.data(), DType::f32, {C});
    run("WKV-4", "C=512", [&](int) { attnkit::wkv4_step(st, wv, uv, v2(k), v2(v), v2(y)); });
  }
  {
    const int64_t H = 8, K = 64;
    FVec r = randn(H * K, 1, 15), k = randn(H * K, 1, 16), v = randn(H * K, 1, 17), w = randn(H * K, 1, 18),
                       u = randn(H * K, 1, 19), y(H * K);
    attnkit::Wkv6State st(1, H, K);
    auto v3 = [&](FVec& x) { return TensorView(x.data(), DType::f32, {1, H, K}); };
    const TensorView uv(u.data(), DType::f32, {H, K});
    run("WKV-6", "H=8, K=64", [&](int) { attnkit::wkv6_step(st, v3(r), v3(k), v3(v), v3(w), uv, v3(y)); });
  }
  std::printf("\n");
}

void study() {
  const int64_t N = 1024, H = 4, D = 64;
  const int64_t ms[] = {16, 32, 64, 128, 256, 512, 1024};
  const float scales[] = {0.25f, 0.5f, 1.0f, 2.0f, 3.0f, 4.0f};
  constexpr int kDraws = 3;
  std::printf("## FAVOR+ approximation error (relative L2 error of the output against exact softmax attention; "
              "non-causal, N = %lld, H = %lld, D = %lld, q, k ~ N(0, s²), v ~ N(0, 1); mean of %d feature draws)\n\n",
              static_cast<long long>(N), static_cast<long long>(H), static_cast<long long>(D), kDraws);
  std::printf("| m \\ input scale s |");
  for (float s : scales) std::printf(" ×%.2g (‖x'‖² ≈ %.1f) |", s, s * s * std::sqrt(double(D)));
  std::printf("\n|---|");
  for (size_t i = 0; i < std::size(scales); ++i) std::printf("---|");
  std::printf("\n");
  const int64_t n = N * H * D;
  FVec v = randn(n, 1, 31), exact(n), approx(n);
  auto view = [&](FVec& x) { return TensorView(x.data(), DType::f32, {1, N, H, D}); };
  std::vector<std::vector<double>> err(std::size(ms), std::vector<double>(std::size(scales)));
  std::vector<double> exact_entropy(std::size(scales));
  for (size_t si = 0; si < std::size(scales); ++si) {
    // Independent draws (not the fast repeated-table fill): the study is about statistics.
    FVec q(n), k(n);
    std::mt19937 rng(1234);
    std::normal_distribution<float> nd(0.0f, scales[si]);
    for (float& x : q) x = nd(rng);
    for (float& x : k) x = nd(rng);
    attnkit::AttentionParams ap;
    attnkit::forward(view(q), view(k), view(v), view(exact), ap);
    double den = 0;
    for (float x : exact) den += double(x) * x;
    for (size_t mi = 0; mi < std::size(ms); ++mi) {
      double sum = 0;
      for (int d = 0; d < kDraws; ++d) {
        attnkit::RandomFeatures rf(D, ms[mi], 1000 + d);
        attnkit::LinearAttentionParams p;
        p.feature_map = attnkit::FeatureMap::favor_plus;
        p.features = &rf;
        attnkit::linear_forward(view(q), view(k), view(v), view(approx), p);
        double num = 0;
        for (int64_t i = 0; i < n; ++i) num += (double(approx[i]) - exact[i]) * (double(approx[i]) - exact[i]);
        sum += std::sqrt(num / den);
      }
      err[mi][si] = sum / kDraws;
    }
  }
  for (size_t mi = 0; mi < std::size(ms); ++mi) {
    std::printf("| %lld |", static_cast<long long>(ms[mi]));
    for (size_t si = 0; si < std::size(scales); ++si) std::printf(" %.3f |", err[mi][si]);
    std::printf("\n");
  }
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE")) {  // OpenBLAS reads it at load time: start again without it
    unsetenv("OPENBLAS_CORETYPE");
    execv("/proc/self/exe", argv);
    std::perror("execv");
    return 1;
  }
  const std::string mode = argc > 1 ? argv[1] : "";
  const bool all = mode.empty();
  if (!all && mode != "--ceilings" && mode != "--bars" && mode != "--sweep" && mode != "--steps" && mode != "--study") {
    std::fprintf(stderr, "usage: %s [--ceilings | --bars | --sweep | --steps | --study]\n", argv[0]);
    return 2;
  }
  if (all) {  // the step measurement needs a process whose peak RSS is its own
    const std::string cmd = std::string("\"") + "/proc/" + std::to_string(getpid()) + "/exe\" --steps";
    if (std::system(cmd.c_str()) != 0) return 1;
    std::fflush(stdout);
  }
  if (mode == "--steps") {
    steps();
    return 0;
  }
  if (all || mode == "--ceilings") measure_ceilings();
  if (all || mode == "--bars") bars();
  if (all || mode == "--sweep") sweep();
  if (all || mode == "--study") study();
  return 0;
}
