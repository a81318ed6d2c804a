// 02: building-block check for the Hopper forward (no speed measured; correctness only).
// One warpgroup: TMA loads Q (64 × 128), K (128 × 128) and V (128 × 128) bf16 tiles into the
// 128-byte swizzle (swizzled column blocks, hopper_sm90.cuh), then
//   S = Q Kᵀ  by 8 × wgmma m64n128k16, A and B from shared memory (K-major);
//   O = P V   by 8 × wgmma m64n128k16, P = bf16(S) from registers, V transposed (MN-major),
// with the V descriptor's leading/stride offsets in the assumed order and swapped, and
// the swizzle itself (one loaded tile's bytes against chunk ^ (row % 8)). Compared with CPU
// products in double precision of the same bf16 inputs.
// Build: nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a -I src lab/cuda/02_wgmma_blocks.cu
#include <cuda_bf16.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cuda/hopper_sm90.cuh"
#include "cuda/tma_host_sm90.h"
#include "cuda/wgmma_ops_sm90.cuh"

using namespace attnkit::cuda;

struct Maps {
  CUtensorMap q, k, v;
};

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// out_s [64][128], out_o [64][128] f32; raw_k [128][128] bf16 (the swizzled smem bytes of K)
__global__ void __launch_bounds__(128) blocks_kernel(const __grid_constant__ Maps maps, float* out_s, float* out_o,
                                                     uint16_t* raw_k, int swap_v) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint8_t* sQ = base;              // 2 blocks × 64 rows × 128 B
  uint8_t* sK = sQ + 2 * 64 * 128;  // 2 blocks × 128 rows × 128 B
  uint8_t* sV = sK + 2 * 128 * 128;
  __shared__ __align__(8) uint64_t bar;
  const int t = threadIdx.x, warp = t / 32, lane = t % 32;
  if (t == 0) {
    mbar_init(&bar, 1);
    fence_barrier_init();
  }
  __syncthreads();
  if (t == 0) {
    mbar_arrive_expect_tx(&bar, (64 + 128 + 128) * 128 * 2);
    for (int c = 0; c < 2; ++c) {
      tma_load_4d(sQ + c * 64 * 128, &maps.q, &bar, c * 64, 0, 0, 0);
      tma_load_4d(sK + c * 128 * 128, &maps.k, &bar, c * 64, 0, 0, 0);
      tma_load_4d(sV + c * 128 * 128, &maps.v, &bar, c * 64, 0, 0, 0);
    }
  }
  mbar_wait(&bar, 0);
  for (int i = t; i < 128 * 128; i += 128) raw_k[i] = reinterpret_cast<const uint16_t*>(sK)[i];

  float s[64];
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    const uint32_t off = (kk / 4) * 0 + (kk % 4) * 32;
    const uint64_t da = make_desc(smem_u32(sQ) + (kk / 4) * 64 * 128 + off, 16, 1024);
    const uint64_t db = make_desc(smem_u32(sK) + (kk / 4) * 128 * 128 + off, 16, 1024);
    wgmma_ss<128, true>(s, da, db, kk > 0);
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs(s);
  const int r0 = warp * 16 + lane / 4, c0 = 2 * (lane % 4);
#pragma unroll
  for (int i = 0; i < 16; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) out_s[(r0 + 8 * (e / 2)) * 128 + 8 * i + c0 + e % 2] = s[4 * i + e];

  uint32_t pa[8][4];
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    pa[kk][0] = pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
    pa[kk][1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
    pa[kk][2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
    pa[kk][3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
  }
  float o[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.0f;
  const uint32_t lbo = swap_v ? 1024 : 128 * 128, sbo = swap_v ? 128 * 128 : 1024;
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    const uint64_t db = make_desc(smem_u32(sV) + kk * 16 * 128, lbo, sbo);
    wgmma_rs<128, true, true>(o, pa[kk], db, 1);
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs(o);
#pragma unroll
  for (int i = 0; i < 16; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) out_o[(r0 + 8 * (e / 2)) * 128 + 8 * i + c0 + e % 2] = o[4 * i + e];
}

static float bf(uint16_t x) {
  uint32_t u = static_cast<uint32_t>(x) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static uint16_t to_bf(float f) {
  __nv_bfloat16 h = __float2bfloat16_rn(f);
  return *reinterpret_cast<uint16_t*>(&h);
}

#define CK(x)                                                                  \
  do {                                                                         \
    cudaError_t e_ = (x);                                                      \
    if (e_ != cudaSuccess) {                                                   \
      printf("CUDA error %s at %s\n", cudaGetErrorString(e_), #x);             \
      return 1;                                                                \
    }                                                                          \
  } while (0)

int main() {
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd;
  std::vector<uint16_t> hq(64 * 128), hk(128 * 128), hv(128 * 128);
  for (auto& x : hq) x = to_bf(nd(rng));
  for (auto& x : hk) x = to_bf(nd(rng));
  for (auto& x : hv) x = to_bf(nd(rng));
  void *dq, *dk, *dv;
  float *ds, *dout;
  uint16_t* draw;
  CK(cudaMalloc(&dq, hq.size() * 2));
  CK(cudaMalloc(&dk, hk.size() * 2));
  CK(cudaMalloc(&dv, hv.size() * 2));
  CK(cudaMalloc(&ds, 64 * 128 * 4));
  CK(cudaMalloc(&dout, 64 * 128 * 4));
  CK(cudaMalloc(&draw, 128 * 128 * 2));
  CK(cudaMemcpy(dq, hq.data(), hq.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dk, hk.data(), hk.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dv, hv.data(), hv.size() * 2, cudaMemcpyHostToDevice));
  Maps maps;
  maps.q = make_tile_map(dq, true, 128, 64, 1, 1, 128, 64 * 128, 64 * 128, 64);
  maps.k = make_tile_map(dk, true, 128, 128, 1, 1, 128, 128 * 128, 128 * 128, 128);
  maps.v = make_tile_map(dv, true, 128, 128, 1, 1, 128, 128 * 128, 128 * 128, 128);
  const int smem = 1024 + (64 + 256) * 128 * 2;
  CK(cudaFuncSetAttribute(blocks_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));

  // CPU: S in double, P = bf16(S), O = P V in double
  std::vector<double> s(64 * 128), o(64 * 128, 0.0);
  for (int i = 0; i < 64; ++i)
    for (int j = 0; j < 128; ++j) {
      double a = 0;
      for (int d = 0; d < 128; ++d) a += double(bf(hq[i * 128 + d])) * bf(hk[j * 128 + d]);
      s[i * 128 + j] = a;
    }
  int fails = 0;
  for (int swap = 0; swap < 2; ++swap) {
    blocks_kernel<<<1, 128, smem>>>(maps, ds, dout, draw, swap);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<float> gs(64 * 128), go(64 * 128);
    std::vector<uint16_t> raw(128 * 128);
    CK(cudaMemcpy(gs.data(), ds, gs.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(go.data(), dout, go.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(raw.data(), draw, raw.size() * 2, cudaMemcpyDeviceToHost));
    double es = 0, ns = 0;
    for (int i = 0; i < 64 * 128; ++i) {
      es = fmax(es, fabs(gs[i] - s[i]));
      ns = fmax(ns, fabs(s[i]));
    }
    // O reference from the GPU's own S rounded to bf16 (isolates the second product)
    double eo = 0, no = 0;
    for (int i = 0; i < 64; ++i)
      for (int d = 0; d < 128; ++d) {
        double a = 0;
        for (int j = 0; j < 128; ++j) a += double(bf(to_bf(gs[i * 128 + j]))) * bf(hv[j * 128 + d]);
        eo = fmax(eo, fabs(go[i * 128 + d] - a));
        no = fmax(no, fabs(a));
      }
    // swizzle: K block c, row r, chunk x holds global columns c*64 + 8·(x ^ (r % 8)) ...
    int bad_swz = 0;
    for (int c = 0; c < 2; ++c)
      for (int r = 0; r < 128; ++r)
        for (int x = 0; x < 8; ++x)
          for (int e = 0; e < 8; ++e) {
            const uint16_t got = raw[c * 128 * 64 + r * 64 + x * 8 + e];
            const uint16_t want = hk[r * 128 + c * 64 + 8 * (x ^ (r % 8)) + e];
            bad_swz += got != want;
          }
    const bool ok_s = es <= 1e-5 * ns * 128, ok_o = eo <= 1e-5 * no * 128;
    printf("blocks: v-desc %s: S=QK^T max err %.3g (max |S| %.3g) %s; O=PV max err %.3g (max |O| %.3g) %s; "
           "swizzle mismatches %d\n",
           swap ? "lbo/sbo swapped" : "lbo=16384 sbo=1024", es, ns, ok_s ? "OK" : "FAIL", eo, no,
           ok_o ? "OK" : "FAIL", bad_swz);
    if (!swap) fails += !ok_s + !ok_o + (bad_swz != 0);
  }
  printf("blocks: %s\n", fails ? "FAIL" : "PASS");
  return fails ? 1 : 0;
}
