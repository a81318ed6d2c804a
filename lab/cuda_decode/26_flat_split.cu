// Lab cuda_decode 26: does the decode bar's pool read faster when every multiprocessor gets the
// same share of it? Measured (H100, 2026-11-23): no. The decode kernel's own split read 348.0 µs
// (B = 4, in order; 3.08 TB/s), the flat split over 132 CTAs 352.0-353.2 µs. Standalone (not built by CMake):
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a lab/cuda_decode/26_flat_split.cu -o flat_split
//
// The B = 4 × 65536 launch of the decode kernel is 128 CTAs (one per multiprocessor, 4 warps, 3
// stages, 256-byte L2 prefetch) on an H100's 132 multiprocessors: 4 idle, and 1/128 of the
// pool a CTA. The B = 32 × 8192 launch is 256 CTAs of 2 stages: 124 multiprocessors hold two, 8
// hold one. This kernel reads the bar's pool (1 GiB, 16-token pages [page][K, V][head][16][128]
// bf16, physical order or a random permutation) in a flat split: the K/V blocks are listed
// pair by pair ((sequence, KV head), each `blocks_per_pair` long) and warp g of P reads the
// blocks [g·W/P, (g+1)·W/P) of the W in all, whatever pairs that range crosses. With P a
// divisor of W and of the pairs it is the decode kernel's chunk split; with P = 132 × 4 or
// 132 × 8 every multiprocessor reads 1/132.
// Each warp copies its blocks with 16-byte cp.async into a ring of `stages` 8 KiB stages (the
// decode kernel's loads, with its L2 prefetch hint as an option) and folds one word of each into
// a checksum. Medians of 25 timings of single launches between events, variants interleaved
// over 5 rounds (the median of the rounds' medians is printed).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#define CK(x)                                                               \
  do {                                                                      \
    cudaError_t e = (x);                                                    \
    if (e != cudaSuccess) {                                                 \
      std::printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); \
      std::exit(1);                                                         \
    }                                                                       \
  } while (0)

constexpr int H = 8, D = 128, PS = 16, kTotalKeys = 262144;
constexpr int kBlockElems = PS * D;                    // 2048 (4 KiB)
constexpr int64_t kPageElems = 2LL * H * kBlockElems;  // 32768 (64 KiB)

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

struct Params {
  const uint16_t* pool;
  const int* table;
  uint32_t* sink;
  int blocks_per_pair;  // = pages per sequence (one 16-key block a page and head)
  int64_t total;        // W
  int warps_total;      // P
};

template <int kStages, int kPrefetch>
__global__ void read_flat(const __grid_constant__ Params p) {
  extern __shared__ __align__(16) uint16_t smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t g = int64_t{blockIdx.x} * (blockDim.x >> 5) + warp;
  const int64_t begin = g * p.total / p.warps_total, end = (g + 1) * p.total / p.warps_total;
  const int64_t n = end - begin;
  uint16_t* ring = smem + warp * kStages * 2 * kBlockElems;
  auto issue = [&](int64_t i) {
    if (i < n) {
      const int64_t f = begin + i;
      const int pair = static_cast<int>(f / p.blocks_per_pair), b = static_cast<int>(f % p.blocks_per_pair);
      const int s = pair / H, hk = pair % H;
      const int phys = __ldg(p.table + int64_t{s} * p.blocks_per_pair + b);
      uint16_t* st = ring + (i % kStages) * 2 * kBlockElems;
      for (int kv = 0; kv < 2; ++kv) {
        const uint16_t* src = p.pool + phys * kPageElems + kv * H * kBlockElems + hk * kBlockElems;
#pragma unroll
        for (int x = 0; x < 8; ++x) {
          const int off = (lane + 32 * x) * 8;
          if constexpr (kPrefetch == 256) {
            asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(
                             smem_addr(st + kv * kBlockElems + off)),
                         "l"(src + off)
                         : "memory");
          } else {
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(st + kv * kBlockElems + off)),
                         "l"(src + off)
                         : "memory");
          }
        }
      }
    }
    asm volatile("cp.async.commit_group;\n" ::: "memory");
  };
  for (int i = 0; i < kStages - 1; ++i) issue(i);
  uint32_t acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 2) : "memory");
    __syncwarp();
    const uint16_t* st = ring + (i % kStages) * 2 * kBlockElems;
    acc ^= reinterpret_cast<const uint32_t*>(st)[lane] ^ reinterpret_cast<const uint32_t*>(st + kBlockElems)[lane];
    __syncwarp();
    issue(i + kStages - 1);
  }
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  if (acc == 0x12345678u) p.sink[0] = acc;
}

float time_us(const std::function<void()>& f, int reps) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(a));
    f();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1e3f);
  }
  CK(cudaGetLastError());
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Variant {
  std::string name;
  std::function<void()> launch;
  std::vector<float> rounds;
};

template <int kStages, int kPrefetch>
std::function<void()> launcher(Params p, int ctas, int warps) {
  const int smem = warps * kStages * 2 * kBlockElems * 2;
  cudaFuncAttributes fa{};
  CK(cudaFuncGetAttributes(&fa, read_flat<kStages, kPrefetch>));
  // The cap is per kernel, not per launch: set it to what the largest variant needs.
  if (cudaFuncSetAttribute(read_flat<kStages, kPrefetch>, cudaFuncAttributeMaxDynamicSharedMemorySize, 160 * 1024) !=
      cudaSuccess) {
    std::printf("smem %d bytes refused (static %zu, max dynamic %d)\n", smem, fa.sharedSizeBytes,
                fa.maxDynamicSharedSizeBytes);
    std::exit(1);
  }
  p.warps_total = ctas * warps;
  return [=] {
    read_flat<kStages, kPrefetch><<<ctas, warps * 32, smem>>>(p);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
      std::printf("launch of %d CTAs x %d warps, %d stages, %d bytes of shared memory: %s\n", ctas, warps, kStages,
                  smem, cudaGetErrorString(e));
      std::exit(1);
    }
  };
}

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
  const int64_t pages = kTotalKeys / PS, elems = pages * kPageElems;
  const double bytes = static_cast<double>(elems) * 2;
  uint16_t *pool, *dst;
  uint32_t* sink;
  int* table;
  CK(cudaMalloc(&pool, elems * 2));
  CK(cudaMalloc(&dst, elems * 2));
  CK(cudaMalloc(&sink, 64));
  CK(cudaMalloc(&table, pages * sizeof(int)));
  CK(cudaMemset(pool, 1, elems * 2));
  std::vector<int> order(pages), random(pages);
  std::iota(order.begin(), order.end(), 0);
  random = order;
  std::shuffle(random.begin(), random.end(), std::mt19937(2026));
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  std::printf("# lab cuda_decode 26: flat split of the decode bar's pool (%.3f GB read), %d SMs; medians over %d "
              "rounds, µs\n",
              bytes / 1e9, sms, rounds);
  for (int seqs : {4, 32}) {
    for (int which = 0; which < 2; ++which) {
      CK(cudaMemcpy(table, (which ? random : order).data(), pages * sizeof(int), cudaMemcpyHostToDevice));
      Params p{pool, table, sink, kTotalKeys / seqs / PS, int64_t{seqs} * H * (kTotalKeys / seqs / PS), 0};
      std::vector<Variant> vs;
      auto add = [&](std::string name, std::function<void()> f) { vs.push_back({std::move(name), std::move(f), {}}); };
      add("copy (read+write)", [=] { CK(cudaMemcpyAsync(dst, pool, elems * 2, cudaMemcpyDeviceToDevice)); });
      if (seqs == 4) {
        add("decode split: 128 CTAs x4w, 3 st, pf256", launcher<3, 256>(p, 128, 4));
        add("decode split: 128 CTAs x4w, 3 st", launcher<3, 0>(p, 128, 4));
        add("decode split: 256 CTAs x4w, 2 st", launcher<2, 0>(p, 256, 4));
      } else {
        add("decode split: 256 CTAs x4w, 2 st", launcher<2, 0>(p, 256, 4));
        add("decode split: 128 CTAs x4w, 3 st, pf256", launcher<3, 256>(p, 128, 4));
      }
      add("flat: 132 CTAs x4w, 3 st, pf256", launcher<3, 256>(p, sms, 4));
      add("flat: 132 CTAs x4w, 3 st", launcher<3, 0>(p, sms, 4));
      add("flat: 132 CTAs x4w, 4 st", launcher<4, 0>(p, sms, 4));
      add("flat: 264 CTAs x4w, 2 st", launcher<2, 0>(p, 2 * sms, 4));
      add("flat: 264 CTAs x4w, 2 st, pf256", launcher<2, 256>(p, 2 * sms, 4));
      add("flat: 132 CTAs x8w, 2 st", launcher<2, 0>(p, sms, 8));
      add("flat: 396 CTAs x4w, 2 st", launcher<2, 0>(p, 3 * sms, 4));
      for (auto& v : vs) time_us(v.launch, 3);  // warm
      for (int r = 0; r < rounds; ++r)
        for (auto& v : vs) v.rounds.push_back(time_us(v.launch, 25));
      for (auto& v : vs) {
        std::sort(v.rounds.begin(), v.rounds.end());
        const float med = v.rounds[v.rounds.size() / 2];
        const bool copy = v.name[0] == 'c';
        std::printf("B=%-2d %-8s %-42s %7.1f µs  %5.0f GB/s  (rounds %.1f-%.1f)\n", seqs,
                    which ? "random" : "in order", v.name.c_str(), med, (copy ? 2 : 1) * bytes / med / 1e3,
                    v.rounds.front(), v.rounds.back());
      }
    }
  }
  return 0;
}
