// Lab harness for the recurrent kernels: times the library's selective scan and WKV-4 forward
// against a 2-thread memcpy, interleaved (a, memcpy, b, memcpy, ...), medians of each.
//   lab_linear_cpu [what] [L] [threads] [reps]    what = scan | wkv4 | wkv4bwd | wkv6 | touch | linear | all
// linear: causal elu+1 linear attention at B = 1, H = 8, D = 64, N = L, timed against an OpenBLAS
// sgemm 2048³ instead of the memcpy (GFLOP/s from linear_attention_fwd_flops).
// With LAB_NOCOPY set, the memcpy is skipped (for profiling the kernels alone); LAB_W sets the
// width (default 512); LAB_FLUSH streams 256 MiB through the caches before every timed run;
// LAB_SPLIT (rerun | state_pass | automatic) sets the WKV-4 forward's split in time.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cblas.h>
#include <time.h>

#include "attnkit/attnkit.h"
#include "cpu/rwkv_kernels.h"
#include "../../bench/aligned_vector.h"

namespace {

using attnkit::DType;
using attnkit::TensorView;
using Clock = std::chrono::steady_clock;

using attnkit_bench::FVec;

FVec fill(int64_t n, float lo, float hi, uint32_t seed) {
  FVec v(n);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> table(65537);
  for (float& x : table) x = u(rng);
  for (int64_t i = 0; i < n; ++i) v[i] = table[(i * 7919) % 65537];
  return v;
}

double process_cpu() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

double median(std::vector<double> t) {
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "all";
  const int64_t L = argc > 2 ? std::atoll(argv[2]) : 65536;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 2;
  const int reps = argc > 4 ? std::atoi(argv[4]) : 7;
  attnkit::set_num_threads(threads);
  const int64_t W = std::getenv("LAB_W") ? std::atoll(std::getenv("LAB_W")) : 512, N = 16;
  // memcpy of 512 MiB over `threads` threads: bytes read + written
  const int64_t cb = int64_t{512} << 20;
  std::vector<char> src(cb, 1), dst(cb, 0);
  const bool nocopy = std::getenv("LAB_NOCOPY") != nullptr;
  if (const char* split = std::getenv("LAB_SPLIT")) {  // the WKV-4 forward's split in time: rerun | state_pass
    attnkit::cpu::wkv4_fwd_tuning().time_split = std::string(split) == "rerun" ? attnkit::cpu::Wkv4TimeSplit::rerun
                                                 : std::string(split) == "state_pass"
                                                     ? attnkit::cpu::Wkv4TimeSplit::state_pass
                                                     : attnkit::cpu::Wkv4TimeSplit::automatic;
  }
  FVec q8, k8, v8, o8, ga, gb, gc;  // linear attention and its sgemm ceiling
  auto copy = [&] {
    if (nocopy) return;
    if (!gc.empty()) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2048, 2048, 2048, 1.0f, ga.data(), 2048, gb.data(), 2048,
                  0.0f, gc.data(), 2048);
      return;
    }
    std::vector<std::thread> ts;
    for (int i = 0; i < threads; ++i)
      ts.emplace_back([&, i] { std::memcpy(dst.data() + i * (cb / threads), src.data() + i * (cb / threads), cb / threads); });
    for (auto& t : ts) t.join();
  };
  FVec x = fill(L * W, -2, 2, 1), dt = fill(L * W, 0.001f, 0.1f, 2), z = fill(L * W, -2, 2, 3),
                     out(L * W), A = fill(W * N, -2, -0.1f, 4), Bm = fill(L * N, -1, 1, 5), Cm = fill(L * N, -1, 1, 6),
                     D = fill(W, -1, 1, 7), w = fill(W, 0.01f, 3, 8), u = fill(W, -1, 1, 9);
  FVec r6, w6;
  struct Item {
    const char* name;
    std::function<void()> run;
    double bytes;
  };
  std::vector<Item> items;
  if (what == "scan" || what == "all") {
    items.push_back({"scan", [&] {
                       const attnkit::ScanInputs in{TensorView(x.data(), DType::f32, {1, L, W}),
                                                    TensorView(dt.data(), DType::f32, {1, L, W}),
                                                    TensorView(A.data(), DType::f32, {W, N}),
                                                    TensorView(Bm.data(), DType::f32, {1, L, N}),
                                                    TensorView(Cm.data(), DType::f32, {1, L, N}),
                                                    TensorView(D.data(), DType::f32, {W}),
                                                    TensorView(z.data(), DType::f32, {1, L, W})};
                       attnkit::selective_scan_forward(in, TensorView(out.data(), DType::f32, {1, L, W}));
                     },
                     attnkit::selective_scan_fwd_bytes(1, L, W, N, true, true)});
  }
  if (what == "wkv4" || what == "all") {
    items.push_back({"wkv4", [&] {
                       auto v3 = [&](FVec& a) { return TensorView(a.data(), DType::f32, {1, L, W}); };
                       attnkit::wkv4_forward(TensorView(w.data(), DType::f32, {W}), TensorView(u.data(), DType::f32, {W}),
                                             v3(x), v3(z), v3(out));
                     },
                     attnkit::wkv4_fwd_bytes(1, L, W)});
  }
  FVec dk4, dv4, dw4, du4;
  if (what == "wkv4bwd") {  // the backward (dy = Δ's buffer): bytes of k, v, dy read and dk, dv written
    dk4.resize(L * W), dv4.resize(L * W), dw4.resize(W), du4.resize(W);
    items.push_back({"wkv4bwd", [&] {
                       auto v3 = [&](FVec& a) { return TensorView(a.data(), DType::f32, {1, L, W}); };
                       auto v1 = [&](FVec& a) { return TensorView(a.data(), DType::f32, {W}); };
                       attnkit::wkv4_backward(v1(w), v1(u), v3(x), v3(z), v3(dt), v1(dw4), v1(du4), v3(dk4), v3(dv4));
                     },
                     5.0 * 4.0 * static_cast<double>(L) * static_cast<double>(W)});
  }
  if (what == "touch") {  // the WKV-4 forward's memory traffic alone: y = k + v, row by row per thread
    items.push_back({"touch", [&] {
                       std::vector<std::thread> ts;
                       for (int i = 0; i < threads; ++i)
                         ts.emplace_back([&, i] {
                           const bool by_rows = std::getenv("LAB_BYROWS") != nullptr;
                           const int64_t c0 = by_rows ? 0 : W * i / threads, c1 = by_rows ? W : W * (i + 1) / threads;
                           const int64_t r0 = by_rows ? L * i / threads : 0, r1 = by_rows ? L * (i + 1) / threads : L;
                           const int64_t ahead = std::getenv("LAB_AHEAD") ? std::atoll(std::getenv("LAB_AHEAD")) : 0;
                           const bool phase = std::getenv("LAB_PHASE") != nullptr;
                           for (int64_t tt = r0; tt < r1; ++tt) {
                             const int64_t t = phase ? (tt + i * L / threads) % L : tt;
                             const float* kr = x.data() + t * W;
                             const float* vr = z.data() + t * W;
                             float* yr = out.data() + t * W;
                             if (ahead > 0 && t + ahead < L)
                               for (int64_t c = c0; c < c1; c += 16) {
                                 __builtin_prefetch(kr + ahead * W + c, 0, 2);
                                 __builtin_prefetch(vr + ahead * W + c, 0, 2);
                               }
                             if (std::getenv("LAB_READONLY")) {
                               float acc = 0;
                               for (int64_t c = c0; c < c1; ++c) acc += kr[c] * vr[c];
                               if (acc == 12345.0f) yr[c0] = acc;
                             } else {
                               for (int64_t c = c0; c < c1; ++c) yr[c] = kr[c] + vr[c];
                             }
                           }
                         });
                       for (auto& t : ts) t.join();
                     },
                     attnkit::wkv4_fwd_bytes(1, L, W)});
  }
  if (what == "linear") {
    const int64_t n = L * 8 * 64;
    q8 = fill(n, -1, 1, 12), k8 = fill(n, -1, 1, 13), v8 = fill(n, -1, 1, 14), o8.resize(n);
    items.push_back({"linear", [&] {
                       auto view = [&](FVec& a) { return TensorView(a.data(), DType::f32, {1, L, 8, 64}); };
                       attnkit::LinearAttentionParams p;
                       p.causal = true;
                       attnkit::linear_forward(view(q8), view(k8), view(v8), view(o8), p);
                     },
                     attnkit::linear_attention_fwd_flops(1, L, 8, 64, 64, true)});
    ga = fill(2048 * 2048, -1, 1, 15), gb = fill(2048 * 2048, -1, 1, 16), gc.resize(2048 * 2048);
  }
  if (what == "wkv6" || what == "all") {
    r6 = fill(L * W, -1, 1, 10);
    w6 = fill(L * W, -3, 1, 11);
    items.push_back({"wkv6", [&] {
                       auto v4 = [&](FVec& a) { return TensorView(a.data(), DType::f32, {1, L, W / 64, 64}); };
                       attnkit::wkv6_forward(v4(r6), v4(x), v4(z), v4(w6), TensorView(u.data(), DType::f32, {W / 64, 64}),
                                             v4(out));
                     },
                     attnkit::wkv6_fwd_bytes(1, L, W / 64, 64)});
  }
  const bool flush = std::getenv("LAB_FLUSH") != nullptr;  // LAB_FLUSH: every run starts with cold caches
  std::vector<float> flushbuf(flush ? (size_t{256} << 20) / sizeof(float) : 0, 0.0f);
  copy();
  for (auto& it : items) it.run();
  std::vector<double> tc;
  std::vector<std::vector<double>> ti(items.size()), tcpu(items.size());
  for (int r = 0; r < reps; ++r) {
    for (size_t i = 0; i < items.size(); ++i) {
      auto t0 = Clock::now();
      copy();
      tc.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      if (flush) {  // evict the inputs from L3: stream 256 MiB through the caches
        for (size_t j = 0; j < flushbuf.size(); j += 16) flushbuf[j] += 1.0f;
      }
      t0 = Clock::now();
      const double c0 = process_cpu();
      items[i].run();
      tcpu[i].push_back(process_cpu() - c0);
      ti[i].push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
  }
  const double mc = gc.empty() ? 2.0 * cb / median(tc) / 1e9 : 2.0 * 2048.0 * 2048.0 * 2048.0 / median(tc) / 1e9;
  std::printf(gc.empty() ? "memcpy %d threads: %.1f GB/s\n" : "sgemm (%d threads): %.1f GFLOP/s\n", threads, mc);
  for (size_t i = 0; i < items.size(); ++i) {
    const double t = median(ti[i]), g = items[i].bytes / t / 1e9;
    std::printf("%-5s L=%lld: %8.2f ms  %5.2f G/s  = %4.1f%% of the ceiling   (CPU time %.2f ms over all threads)\n",
                items[i].name, static_cast<long long>(L), t * 1e3, g, 100 * g / mc, median(tcpu[i]) * 1e3);
  }
  return 0;
}
