// lab/linear_cpu 03: the WKV-4 forward's time against where k, v and y lie relative to each other.
//   lab_linear_layout L width threads rounds  vOff:yOff[:NAME=VALUE]  [...]
// One anonymous mapping holds the three arrays: k at 0, v at vOff bytes, y at yOff bytes (each
// offset a multiple of 64). The layouts are timed in rotation (one run of each per round) and
// the median of each is printed, so that they see the same machine. LAB_BASE = b starts all three
// b bytes into the mapping (16: malloc's alignment); LAB_THP asks for 2 MiB pages.
//
// Finding (2026-11-22, idle VM, one thread, L = 32768 unless said): arrays allocated page by
// page lie a multiple of 4 KiB apart, so row t of k, v and y share address bits 0-11. With tiles
// of 8 rows that cost, in ms (aliased = offsets ≡ 0 mod 4 KiB, apart = v and y moved by 64, 128 B):
//
//   width (row bytes)   tile rows   aliased   apart
//   256 (1 KiB)         8           12.84     10.83     (kTile before)
//                       4           11.01     10.76     (the rule now)
//                       2           10.93     10.91
//                       16          15.06     13.19
//   512 (2 KiB)         8           25.63     21.48
//                       4           26.05     22.17
//                       2           21.60     22.84     (the rule now)
//   512, L = 16384      8           14.10     11.81
//                       2           11.16     11.28
//   1024 (4 KiB), 16384 8           34.53     28.31
//                       2           23.57     23.79     (the rule now)
//                       1           24.84     24.72
//
// (tile rows set through a temporary WKV_TILE override of the library, not kept). Staging a
// tile's y in an L1 buffer and streaming it out after the tile was no better (12.8-16.6 ms at
// width 256, tile 8). Prefetching 8-64 rows ahead instead of the next tile, into L1 or L2: noise.
// 2 MiB pages (LAB_THP): 32.3 against 32.8 ms at L = 131072, 2 threads: noise.
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "attnkit/attnkit.h"

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: %s L width threads rounds vOff:yOff ...\n", argv[0]);
    return 2;
  }
  const int64_t L = std::atoll(argv[1]), W = std::atoll(argv[2]), rounds = std::atoll(argv[4]);
  attnkit::set_num_threads(std::atoi(argv[3]));
  struct Layout {
    int64_t v, y;
    std::string env;  // NAME=VALUE set for this layout's runs (a temporary override in the library)
    std::vector<double> t;
  };
  std::vector<Layout> lay;
  int64_t span = 0;
  const int64_t bytes = L * W * 4;
  for (int i = 5; i < argc; ++i) {
    const std::string a = argv[i];
    const auto c = a.find(':'), c2 = a.find(':', c + 1);
    Layout l{std::atoll(a.substr(0, c).c_str()), std::atoll(a.substr(c + 1).c_str()),
             c2 == std::string::npos ? "" : a.substr(c2 + 1), {}};
    span = std::max({span, l.v + bytes, l.y + bytes, bytes});
    lay.push_back(l);
  }
  // LAB_BASE = b bytes: all three arrays start b bytes into the mapping (16: malloc's alignment)
  const int64_t shift = std::getenv("LAB_BASE") ? std::atoll(std::getenv("LAB_BASE")) : 0;
  char* map = static_cast<char*>(mmap(nullptr, span + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (map == MAP_FAILED) return 1;
  char* base = map + shift;
  if (std::getenv("LAB_THP")) madvise(map, span + 4096, MADV_HUGEPAGE);  // LAB_THP: 2 MiB pages where the kernel has them
  std::vector<float> w(W), u(W);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> U(-2, 2);
  for (int64_t i = 0; i < W; ++i) w[i] = 0.01f + (U(rng) + 2) * 0.75f, u[i] = U(rng) / 2;
  std::vector<float> kv(2 * 65537);
  for (float& x : kv) x = U(rng);
  auto fill = [&](float* p, int64_t salt) {
    for (int64_t i = 0; i < L * W; ++i) p[i] = kv[(i * 7919 + salt) % 65537];
  };
  for (auto& l : lay) {  // the regions may overlap between layouts, not within one
    fill(reinterpret_cast<float*>(base), 0);
    fill(reinterpret_cast<float*>(base + l.v), 1);
  }
  if (std::getenv("LAB_THP")) {  // how much of the mapping the kernel backed with 2 MiB pages
    FILE* f = std::fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    while (f && std::fgets(line, sizeof line, f))
      if (std::string(line).rfind("AnonHugePages", 0) == 0) std::printf("%s", line);
    if (f) std::fclose(f);
  }
  for (int64_t r = 0; r <= rounds; ++r) {
    for (auto& l : lay) {
      float* k = reinterpret_cast<float*>(base);
      float* v = reinterpret_cast<float*>(base + l.v);
      float* y = reinterpret_cast<float*>(base + l.y);
      using attnkit::DType, attnkit::TensorView;
      if (!l.env.empty()) putenv(const_cast<char*>(l.env.c_str()));
      const auto t0 = std::chrono::steady_clock::now();
      attnkit::wkv4_forward(TensorView(w.data(), DType::f32, {W}), TensorView(u.data(), DType::f32, {W}),
                            TensorView(k, DType::f32, {1, L, W}), TensorView(v, DType::f32, {1, L, W}),
                            TensorView(y, DType::f32, {1, L, W}));
      if (r > 0) l.t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  for (auto& l : lay) {
    std::sort(l.t.begin(), l.t.end());
    std::printf("%-16s v %+12lld (mod 4K %5lld, mod 64K %6lld)  y %+12lld (mod 4K %5lld)  %8.2f ms\n",
                l.env.c_str(), static_cast<long long>(l.v), static_cast<long long>(l.v % 4096), static_cast<long long>(l.v % 65536),
                static_cast<long long>(l.y), static_cast<long long>(l.y % 4096), l.t[l.t.size() / 2] * 1e3);
  }
  return 0;
}
