// Lab cuda_decode 11: where the host time of one GPU run_decode call goes, from C++ (no Python).
// Standalone (not built by CMake), against a release build with the CUDA backend:
//   g++ -O2 -std=c++20 -Iinclude -Isrc -I/usr/local/cuda/include lab/cuda_decode/11_host_time.cc
//       build/release/libattnkit.a -L/usr/local/cuda/lib64 -lcudart_static -ldl -lrt -lfmt -lhwy
//       -lopenblas -pthread -o host_time
// A pool of 4096 pages (8 KV heads, D 128, bf16, 16-token pages), batches of 1 to 32 sequences of
// 256 to 4096 keys, 32 query heads; host time per call on the host clock over 256 calls from an
// idle device (median of 50 loops); device time per call with events around 256 calls back to
// back, for the automatic launch shape and forced ones (CudaDecodeTuning).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "attnkit/attnkit.h"
#include "core/decode_device.h"

using namespace attnkit;

// Host µs per call over n calls (each loop starts on an idle device; n = 256 stays below the
// launch queue's depth, so that the host is never held back by the device).
template <class F>
double us_per_call(F&& f, int n = 256, int rounds = 50) {
  std::vector<double> t;
  for (int r = 0; r < rounds; ++r) {
    cudaDeviceSynchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) f();
    const auto t1 = std::chrono::steady_clock::now();
    t.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() / n);
  }
  cudaDeviceSynchronize();
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Device µs per call: events around n back-to-back calls.
template <class F>
double device_us_per_call(F&& f, int n = 256) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<double> t;
  for (int r = 0; r < 20; ++r) {
    cudaDeviceSynchronize();
    cudaEventRecord(a);
    for (int i = 0; i < n; ++i) f();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms * 1e3 / n);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main(int argc, char** argv) {
  // `host_time S N`: that shape only, the automatic launch 20 times (for a profiler).
  const bool one = argc == 3;
  const int64_t Hkv = 8, Hq = 32, D = 128, ps = 16;
  // 4096 pages: enough for every shape below.
  const KVCacheConfig cfg{.num_layers = 1, .heads_kv = Hkv, .head_dim = D, .page_size = ps, .num_pages = 4096,
                          .dtype = KVDType::bf16};
  const size_t page_bytes = 2 * Hkv * ps * D * 2;
  void* pool = nullptr;
  int32_t* table = nullptr;
  void *q = nullptr, *out = nullptr, *lse = nullptr, *ws = nullptr;
  cudaMalloc(&pool, cfg.num_pages * page_bytes);
  cudaMemset(pool, 0, cfg.num_pages * page_bytes);
  cudaMalloc(&table, 32 * 4096 * sizeof(int32_t));
  cudaMalloc(&q, 32 * Hq * D * 2);
  cudaMalloc(&out, 32 * Hq * D * 2);
  cudaMalloc(&lse, 32 * Hq * 4);
  cudaMalloc(&ws, size_t{64} << 20);
  cudaMemset(q, 0, 32 * Hq * D * 2);
  std::printf("# lab cuda_decode 11: GPU decode at small batches and short contexts, bf16 GQA 32/8 D 128: host µs "
              "per call (C++) and device µs per call back to back, by launch shape\n");
  struct Shape {
    int64_t S, N;
  };
  std::vector<Shape> shapes{{1, 256}, {1, 4096}, {8, 2048}, {32, 256}, {32, 1024}};
  if (one) shapes = {{std::atoll(argv[1]), std::atoll(argv[2])}};
  for (const Shape sh_in : shapes) {
    const int64_t S = sh_in.S, N = sh_in.N, per_seq = N / ps;
    std::vector<int32_t> host_table(static_cast<size_t>(S * per_seq));
    for (int64_t i = 0; i < S * per_seq; ++i) host_table[i] = static_cast<int32_t>(i % cfg.num_pages);
    cudaMemcpy(table, host_table.data(), host_table.size() * sizeof(int32_t), cudaMemcpyHostToDevice);
    const PagedKVView kv{.pages = pool, .page_table = table, .table_stride = per_seq, .config = cfg};
    std::vector<DecodeRange> ranges(static_cast<size_t>(S));
    for (int64_t s = 0; s < S; ++s) ranges[s] = {.key_begin = 0, .key_end = N, .window = 0};
    const DecodePlan plan = plan_decode(ranges, 1, Hq, Hkv, D, ps);
    const TensorView tq(q, DType::bf16, {S, 1, Hq, D}, Device::cuda), to(out, DType::bf16, {S, 1, Hq, D}, Device::cuda);
    const TensorView tl(lse, DType::f32, {S, Hq, 1}, Device::cuda);
    DecodeParams params{.workspace = ws, .workspace_bytes = int64_t{64} << 20};
    if (one) {
      for (int i = 0; i < 20; ++i) run_decode(kv, plan, 0, tq, to, params, tl);
      cudaDeviceSynchronize();
      continue;
    }
    const double host = us_per_call([&] { run_decode(kv, plan, 0, tq, to, params, tl); });
    const double bytes = 2.0 * S * N * Hkv * D * 2;
    std::printf("\nS = %lld, N = %lld (%.1f MB of K and V): host %.2f µs per run_decode; plan_decode %.2f µs\n",
                static_cast<long long>(S), static_cast<long long>(N), bytes / 1e6, host,
                us_per_call([&] { (void)plan_decode(ranges, 1, Hq, Hkv, D, ps); }));
    {  // the automatic launch, 16 calls captured in a CUDA graph (no launch gaps), as lab 12 times torch
      cudaStream_t st;
      cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
      DecodeParams gp = params;
      gp.stream = st;
      cudaGraph_t g;
      cudaGraphExec_t ge;
      cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed);
      for (int i = 0; i < 16; ++i) run_decode(kv, plan, 0, tq, to, gp, tl);
      const cudaError_t ce = cudaStreamEndCapture(st, &g);
      if (ce == cudaSuccess && cudaGraphInstantiate(&ge, g, 0) == cudaSuccess) {
        cudaEvent_t a, b;
        cudaEventCreate(&a);
        cudaEventCreate(&b);
        std::vector<double> t;
        for (int r = 0; r < 30; ++r) {
          cudaEventRecord(a, st);
          cudaGraphLaunch(ge, st);
          cudaEventRecord(b, st);
          cudaEventSynchronize(b);
          float ms = 0;
          cudaEventElapsedTime(&ms, a, b);
          t.push_back(ms * 1e3 / 16);
        }
        std::sort(t.begin(), t.end());
        std::printf("automatic launch in a CUDA graph of 16 calls: %.2f µs per call\n", t[t.size() / 2]);
      } else {
        std::printf("graph capture failed: %s\n", cudaGetErrorString(ce));
        cudaGetLastError();
      }
      cudaStreamDestroy(st);
    }
    std::printf("| warps | stages | chunk keys | → warps | stages | chunk blocks | splits | CTAs | device µs | GB/s |\n");
    for (const CudaDecodeTuning& t :
         {CudaDecodeTuning{}, CudaDecodeTuning{.warps = 4, .stages = 4}, CudaDecodeTuning{.warps = 4, .stages = 4, .chunk_keys = 128},
          CudaDecodeTuning{.warps = 4, .stages = 4, .chunk_keys = 64}, CudaDecodeTuning{.warps = 4, .stages = 2, .chunk_keys = 64},
          CudaDecodeTuning{.warps = 8, .stages = 3, .chunk_keys = 64}, CudaDecodeTuning{.warps = 4, .stages = 4, .chunk_keys = 32},
          CudaDecodeTuning{.warps = 8, .stages = 3, .chunk_keys = 32}, CudaDecodeTuning{.warps = 4, .stages = 3, .chunk_keys = 64},
          CudaDecodeTuning{.warps = 4, .stages = 3, .chunk_keys = 32}, CudaDecodeTuning{.warps = 2, .stages = 4, .chunk_keys = 64}}) {
      const CudaDecodeShape sh = cuda_decode_shape(kv, plan, t);
      const double d = device_us_per_call([&] { run_decode_cuda(kv, plan, 0, tq, to, params, tl, t); });
      std::printf("| %d | %d | %lld | %d | %d | %lld | %lld | %lld | %.2f | %.0f |\n", t.warps, t.stages,
                  static_cast<long long>(t.chunk_keys), sh.warps, sh.stages, static_cast<long long>(sh.chunk_blocks),
                  static_cast<long long>(sh.max_splits), static_cast<long long>(sh.ctas), d, bytes / d / 1e3);
    }
  }
  const cudaError_t e = cudaGetLastError();
  std::printf("%s\n", cudaGetErrorString(e));
  return 0;
}
