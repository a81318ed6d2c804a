// Lab cuda_decode 09: how fast can the decode bar's paged pool be read at all, by load method?
// Standalone (not built by CMake):
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a lab/cuda_decode/09_read_patterns.cu -o read_patterns
//
// The pool of the bar's first shape: 32 sequences × 8192 keys, 8 KV heads, head_dim 128, bf16,
// 16-token pages laid out [page][K, V][head][16 tokens][128] (64 KiB a page, 1 GiB in all), the
// page table in physical order or a random permutation. Each kernel reads every K and V block
// once in the decode kernel's work split (a CTA of 4 warps per (sequence, KV head), warp w
// streaming blocks [128 w, 128 w + 128) of its sequence) and does nothing with the bytes but fold
// one word per block into a checksum:
//   cpasync  16-byte cp.async per lane into a per-warp ring of `stages` 8 KiB stages (the
//            decode kernel's loads);
//   bulk     two 4 KiB cp.async.bulk copies per block issued by one lane, completion on an
//            mbarrier per stage;
//   ldg      16 × 16-byte loads per lane straight into registers, the next block's issued before
//            the current one is folded.
// The first also with a 12 KiB parameter block. Beside them: a contiguous read of the same GiB (uint4 loads, grid-stride), and a 1 GiB
// device-to-device copy. Median of 20 timings each, in one process.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#define CK(x)                                                                   \
  do {                                                                          \
    cudaError_t e = (x);                                                        \
    if (e != cudaSuccess) {                                                     \
      std::printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e));     \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)

constexpr int S = 32, N = 8192, H = 8, D = 128, PS = 16;
constexpr int kPagesPerSeq = N / PS;                 // 512
constexpr int kBlockElems = PS * D;                  // 2048 (4 KiB)
constexpr int64_t kPageElems = 2LL * H * kBlockElems;  // 32768 (64 KiB)
constexpr int kWarps = 4, kBlocksPerWarp = kPagesPerSeq / kWarps;  // 128

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ const uint16_t* block_ptr(const uint16_t* pool, const int* table, int s, int hk, int b,
                                                     int kv) {
  const int phys = __ldg(table + s * kPagesPerSeq + b);
  return pool + phys * kPageElems + kv * H * kBlockElems + hk * kBlockElems;
}

// The kernel's pointers, as its one parameter; BigParams adds 12 KiB to the parameter block (as
// DecodeKernelParams' three 1024-entry per-sequence arrays did), unused by the kernel.
struct Params {
  const uint16_t* pool;
  const int* table;
  uint32_t* sink;
};
struct BigParams : Params {
  int pad[3 * 1024];
};

template <int kStages, class P>
__global__ void __launch_bounds__(128) read_cpasync(const __grid_constant__ P p) {
  extern __shared__ __align__(16) uint16_t smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int hk = blockIdx.x, s = blockIdx.z;
  uint16_t* ring = smem + warp * kStages * 2 * kBlockElems;
  const int b0 = warp * kBlocksPerWarp;
  auto issue = [&](int i) {
    if (i < kBlocksPerWarp) {
      uint16_t* st = ring + (i % kStages) * 2 * kBlockElems;
      for (int kv = 0; kv < 2; ++kv) {
        const uint16_t* g = block_ptr(p.pool, p.table, s, hk, b0 + i, kv);
#pragma unroll
        for (int x = 0; x < 8; ++x) {
          const int off = (lane + 32 * x) * 8;
          asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(st + kv * kBlockElems + off)),
                       "l"(g + off)
                       : "memory");
        }
      }
    }
    asm volatile("cp.async.commit_group;\n" ::: "memory");
  };
  for (int i = 0; i < kStages - 1; ++i) issue(i);
  uint32_t acc = 0;
  for (int i = 0; i < kBlocksPerWarp; ++i) {
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

template <int kStages>
__global__ void __launch_bounds__(128) read_bulk(const uint16_t* pool, const int* table, uint32_t* sink) {
  extern __shared__ __align__(16) uint16_t smem[];
  __shared__ __align__(8) uint64_t bars[kWarps][kStages];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int hk = blockIdx.x, s = blockIdx.z;
  uint16_t* ring = smem + warp * kStages * 2 * kBlockElems;
  const int b0 = warp * kBlocksPerWarp;
  if (lane == 0) {
    for (int i = 0; i < kStages; ++i)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_addr(&bars[warp][i])));
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncwarp();
  auto issue = [&](int i) {
    if (lane != 0 || i >= kBlocksPerWarp) return;
    uint64_t* bar = &bars[warp][i % kStages];
    uint16_t* st = ring + (i % kStages) * 2 * kBlockElems;
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(8192)
                 : "memory");
    for (int kv = 0; kv < 2; ++kv) {
      const uint16_t* g = block_ptr(pool, table, s, hk, b0 + i, kv);
      asm volatile(
          "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
              smem_addr(st + kv * kBlockElems)),
          "l"(g), "r"(4096), "r"(smem_addr(bar))
          : "memory");
    }
  };
  for (int i = 0; i < kStages; ++i) issue(i);
  uint32_t acc = 0;
  for (int i = 0; i < kBlocksPerWarp; ++i) {
    const uint32_t parity = (i / kStages) & 1;
    const uint32_t bar = smem_addr(&bars[warp][i % kStages]);
    asm volatile(
        "{\n.reg .pred p;\nW: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n@!p bra W;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
    const uint16_t* st = ring + (i % kStages) * 2 * kBlockElems;
    acc ^= reinterpret_cast<const uint32_t*>(st)[lane] ^ reinterpret_cast<const uint32_t*>(st + kBlockElems)[lane];
    __syncwarp();
    issue(i + kStages);
  }
  if (acc == 0x12345678u) sink[0] = acc;
}

__global__ void __launch_bounds__(128) read_ldg(const uint16_t* pool, const int* table, uint32_t* sink) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int hk = blockIdx.x, s = blockIdx.z;
  const int b0 = warp * kBlocksPerWarp;
  uint4 cur[16], nxt[16];
  auto load = [&](int i, uint4 (&r)[16]) {
    for (int kv = 0; kv < 2; ++kv) {
      const uint4* g = reinterpret_cast<const uint4*>(block_ptr(pool, table, s, hk, b0 + i, kv));
#pragma unroll
      for (int x = 0; x < 8; ++x) r[kv * 8 + x] = __ldg(g + lane + 32 * x);
    }
  };
  load(0, cur);
  uint32_t acc = 0;
  for (int i = 0; i < kBlocksPerWarp; ++i) {
    if (i + 1 < kBlocksPerWarp) load(i + 1, nxt);
#pragma unroll
    for (int x = 0; x < 16; ++x) acc ^= cur[x].x ^ cur[x].w;
#pragma unroll
    for (int x = 0; x < 16; ++x) cur[x] = nxt[x];
  }
  if (acc == 0x12345678u) sink[0] = acc;
}

__global__ void __launch_bounds__(256) read_contiguous(const uint4* p, int64_t n, uint32_t* sink) {
  uint32_t acc = 0;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = __ldg(p + i), b = __ldg(p + i + stride), c = __ldg(p + i + 2 * stride), d = __ldg(p + i + 3 * stride);
    acc ^= a.x ^ b.y ^ c.z ^ d.w;
  }
  for (; i < n; i += stride) acc ^= __ldg(p + i).x;
  if (acc == 0x12345678u) sink[0] = acc;
}

template <class F>
float median_us(F&& f, int reps = 20) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();
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
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main() {
  const int64_t pages = int64_t{S} * kPagesPerSeq, elems = pages * kPageElems;
  const double bytes = static_cast<double>(elems) * 2;
  uint16_t* pool;
  uint16_t* dst;
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
  const dim3 grid(H, 1, S);
  std::printf("# lab cuda_decode 09: read patterns of the decode bar's pool (%.3f GB), %d SMs; µs and GB/s (read only,"
              " except copy: read + write)\n",
              bytes / 1e9, sms);
  const float copy = median_us([&] { CK(cudaMemcpyAsync(dst, pool, elems * 2, cudaMemcpyDeviceToDevice)); });
  std::printf("copy                 %8.1f µs  %7.0f GB/s\n", copy, 2 * bytes / copy / 1e3);
  const float contig = median_us([&] { read_contiguous<<<sms * 8, 256>>>(reinterpret_cast<const uint4*>(pool), elems / 8, sink); });
  std::printf("contiguous ldg       %8.1f µs  %7.0f GB/s\n", contig, bytes / contig / 1e3);
  for (int which = 0; which < 2; ++which) {
    CK(cudaMemcpy(table, (which ? random : order).data(), pages * sizeof(int), cudaMemcpyHostToDevice));
    const char* name = which ? "random" : "in order";
    auto report = [&](const char* what, float us) {
      std::printf("%-9s %-10s %8.1f µs  %7.0f GB/s\n", name, what, us, bytes / us / 1e3);
    };
    const size_t smem2 = kWarps * 2 * 2 * kBlockElems * 2, smem3 = smem2 / 2 * 3, smem4 = smem2 * 2;
    const Params pp{pool, table, sink};
    static BigParams bp{};
    static_cast<Params&>(bp) = pp;
    CK(cudaFuncSetAttribute(read_cpasync<2, Params>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem2));
    CK(cudaFuncSetAttribute(read_cpasync<3, Params>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem3));
    CK(cudaFuncSetAttribute(read_cpasync<4, Params>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem4));
    CK(cudaFuncSetAttribute(read_cpasync<2, BigParams>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem2));
    CK(cudaFuncSetAttribute(read_bulk<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem2));
    CK(cudaFuncSetAttribute(read_bulk<3>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem3));
    CK(cudaFuncSetAttribute(read_bulk<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem4));
    report("cpasync2", median_us([&] { read_cpasync<2><<<grid, 128, smem2>>>(pp); }));
    report("cpasync2 12 KiB params", median_us([&] { read_cpasync<2><<<grid, 128, smem2>>>(bp); }));
    report("cpasync2 again", median_us([&] { read_cpasync<2><<<grid, 128, smem2>>>(pp); }));
    report("12 KiB params again", median_us([&] { read_cpasync<2><<<grid, 128, smem2>>>(bp); }));
    report("cpasync3", median_us([&] { read_cpasync<3><<<grid, 128, smem3>>>(pp); }));
    report("cpasync4", median_us([&] { read_cpasync<4><<<grid, 128, smem4>>>(pp); }));
    report("bulk2", median_us([&] { read_bulk<2><<<grid, 128, smem2>>>(pool, table, sink); }));
    report("bulk3", median_us([&] { read_bulk<3><<<grid, 128, smem3>>>(pool, table, sink); }));
    report("bulk4", median_us([&] { read_bulk<4><<<grid, 128, smem4>>>(pool, table, sink); }));
    report("ldg", median_us([&] { read_ldg<<<grid, 128>>>(pool, table, sink); }));
  }
  const float copy2 = median_us([&] { CK(cudaMemcpyAsync(dst, pool, elems * 2, cudaMemcpyDeviceToDevice)); });
  std::printf("copy again           %8.1f µs  %7.0f GB/s\n", copy2, 2 * bytes / copy2 / 1e3);
  return 0;
}
