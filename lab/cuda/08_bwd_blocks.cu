// 08: building-block check for the Hopper backward (correctness only), the pieces that the
// forward (02) did not exercise:
//   dQ = dS K with both operands transposed (MN-major) in shared memory: dSᵀ [128 keys][64
//     queries] written from accumulator-shaped fragments with the kernel's swizzled 32-bit
//     stores, K [128 keys][128] loaded by TMA; N = 64 at column blocks 0 and 1 (kD = 128) and
//     N = 32 at column offsets 0, 32, 64, 96 (kD = 64 takes 0 and 32: half a swizzled row);
//   the f32 staging tile and the TMA reduce-add into a [1][100][2][128] f32 tensor at rows
//     40.. (rows past 100 must be skipped), issued twice (the adds accumulate).
// Compared with CPU products in double precision of the same bf16 inputs.
// Build: nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a -I src lab/cuda/08_bwd_blocks.cu
#include <cuda_bf16.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/hopper_sm90.cuh"
#include "cuda/tma_host_sm90.h"
#include "cuda/wgmma_ops_sm90.cuh"

using namespace attnkit::cuda;

struct Maps {
  CUtensorMap k, acc;
};

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// ds_t [128][64] f32 (values exactly bf16); out64 [2][64][128]: dQ columns from N = 64 products
// at offsets 0 and 64; out32 [4][64][128]: from N = 32 products at offsets 0, 32, 64, 96 (each
// run writes its own columns only).
__global__ void __launch_bounds__(128)
    blocks_kernel(const __grid_constant__ Maps maps, const float* ds_t, float* out64, float* out32) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint8_t* sK = base;                 // 2 blocks × 128 rows × 128 B
  uint8_t* sdS = sK + 2 * 128 * 128;  // 1 block × 128 rows × 128 B
  uint8_t* sdQ = sdS + 128 * 128;     // 2 blocks of 32 f32 columns × 64 rows × 128 B
  __shared__ __align__(8) uint64_t bar;
  const int t = threadIdx.x, warp = t / 32, lane = t % 32;
  if (t == 0) {
    mbar_init(&bar, 1);
    fence_barrier_init();
  }
  __syncthreads();
  if (t == 0) {
    mbar_arrive_expect_tx(&bar, 128 * 128 * 2);
    for (int c = 0; c < 2; ++c) tma_load_4d(sK + c * 128 * 128, &maps.k, &bar, c * 64, 0, 0, 0);
  }
  // dSᵀ rows of two "warpgroups" (keys 0-63 and 64-127), the kernel's fragment order and stores.
  const uint32_t ds_addr = smem_u32(sdS);
  for (int wg = 0; wg < 2; ++wg) {
    const int r = wg * 64 + warp * 16 + lane / 4;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        const int row = r + 8 * (f & 1), col = 16 * kk + 8 * (f >> 1) + 2 * (lane % 4);
        const uint32_t v = pack_bf16(ds_t[row * 64 + col], ds_t[row * 64 + col + 1]);
        const int chunk = (2 * kk + (f >> 1)) % 8, blk = (16 * kk) / 64;
        st_shared_b32(ds_addr + blk * 128 * 128 + row * 128 + ((chunk ^ (lane / 4)) * 16) + 4 * (lane % 4), v);
      }
  }
  fence_proxy_async();
  __syncthreads();
  mbar_wait(&bar, 0);
  const uint32_t k_addr = smem_u32(sK);
  const int r0 = warp * 16 + lane / 4, c0 = 2 * (lane % 4);
  for (int blk = 0; blk < 2; ++blk) {
    float d[32];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      const uint64_t da = make_desc(ds_addr + kk * 16 * 128, 128 * 128, 1024);
      const uint64_t db = make_desc(k_addr + blk * 128 * 128 + kk * 16 * 128, 128 * 128, 1024);
      wgmma_ss<64, true, true, true>(d, da, db, kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(d);
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        out64[blk * 64 * 128 + (r0 + 8 * (e / 2)) * 128 + blk * 64 + 8 * i + c0 + e % 2] = d[4 * i + e];
    if (blk == 0) {  // stage this tile (columns 0-63) for the reduce-add, the kernel's formula
      const uint32_t stage_addr = smem_u32(sdQ);
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int r2 = 0; r2 < 2; ++r2) {
          const int row = warp * 16 + lane / 4 + 8 * r2, chunk = 2 * (i % 4) + (lane % 4) / 2;
          st_shared_v2_f32(stage_addr + (i / 4) * 64 * 128 + row * 128 + ((chunk ^ (lane / 4)) * 16) + 8 * (lane % 2),
                           d[4 * i + 2 * r2], d[4 * i + 2 * r2 + 1]);
        }
    }
  }
  for (int q = 0; q < 4; ++q) {
    const int off = 32 * q;
    float d[16];
    const uint32_t kb_addr = k_addr + (off / 64) * 128 * 128 + (off % 64) * 2;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      const uint64_t da = make_desc(ds_addr + kk * 16 * 128, 128 * 128, 1024);
      const uint64_t db = make_desc(kb_addr + kk * 16 * 128, 128 * 128, 1024);
      wgmma_ss<32, true, true, true>(d, da, db, kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(d);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        out32[q * 64 * 128 + (r0 + 8 * (e / 2)) * 128 + off + 8 * i + c0 + e % 2] = d[4 * i + e];
  }
  fence_proxy_async();
  __syncthreads();
  if (t == 0) {
    for (int rep = 0; rep < 2; ++rep) {
      for (int j = 0; j < 2; ++j) tma_reduce_add_4d(&maps.acc, sdQ + j * 64 * 128, 32 * j, 40, 1, 0);
      bulk_commit();
    }
    bulk_wait<0>();
  }
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

#define CK(x)                                                      \
  do {                                                             \
    cudaError_t e_ = (x);                                          \
    if (e_ != cudaSuccess) {                                       \
      printf("CUDA error %s at %s\n", cudaGetErrorString(e_), #x); \
      return 1;                                                    \
    }                                                              \
  } while (0)

int main() {
  std::mt19937 rng(4321);
  std::normal_distribution<float> nd;
  std::vector<uint16_t> hk(128 * 128);
  std::vector<float> hds(128 * 64);
  for (auto& x : hk) x = to_bf(nd(rng));
  for (auto& x : hds) x = bf(to_bf(nd(rng)));
  void* dk;
  float *dds, *d64, *d32, *dacc;
  const int acc_rows = 100, acc_heads = 2;
  const size_t acc_n = size_t{acc_rows} * acc_heads * 128;
  CK(cudaMalloc(&dk, hk.size() * 2));
  CK(cudaMalloc(&dds, hds.size() * 4));
  CK(cudaMalloc(&d64, 2 * 64 * 128 * 4));
  CK(cudaMalloc(&d32, 4 * 64 * 128 * 4));
  CK(cudaMalloc(&dacc, acc_n * 4));
  CK(cudaMemcpy(dk, hk.data(), hk.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dds, hds.data(), hds.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemset(d64, 0xff, 2 * 64 * 128 * 4));
  CK(cudaMemset(d32, 0xff, 4 * 64 * 128 * 4));
  CK(cudaMemset(dacc, 0, acc_n * 4));
  Maps maps;
  maps.k = make_tile_map(dk, true, 128, 128, 1, 1, 128, 128 * 128, 128 * 128, 128);
  maps.acc = make_f32_tile_map(dacc, 128, acc_rows, acc_heads, 1, 64);
  const int smem = 1024 + (2 * 128 * 128 + 128 * 128) + 2 * 64 * 128;
  CK(cudaFuncSetAttribute(blocks_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  blocks_kernel<<<1, 128, smem>>>(maps, dds, d64, d32);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  std::vector<float> g64(2 * 64 * 128), g32(4 * 64 * 128), gacc(acc_n);
  CK(cudaMemcpy(g64.data(), d64, g64.size() * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(g32.data(), d32, g32.size() * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(gacc.data(), dacc, gacc.size() * 4, cudaMemcpyDeviceToHost));

  // dQ[q][d] = Σ_k dSᵀ[k][q] K[k][d]
  std::vector<double> ref(64 * 128, 0.0);
  double nref = 0;
  for (int q = 0; q < 64; ++q)
    for (int d = 0; d < 128; ++d) {
      double a = 0;
      for (int k = 0; k < 128; ++k) a += double(hds[k * 64 + q]) * bf(hk[k * 128 + d]);
      ref[q * 128 + d] = a;
      nref = fmax(nref, fabs(a));
    }
  const double tol = 1e-5 * nref * 128;
  double e64 = 0, e32 = 0, eacc = 0;
  for (int blk = 0; blk < 2; ++blk)
    for (int q = 0; q < 64; ++q)
      for (int d = blk * 64; d < blk * 64 + 64; ++d)
        e64 = fmax(e64, fabs(g64[blk * 64 * 128 + q * 128 + d] - ref[q * 128 + d]));
  for (int j = 0; j < 4; ++j)
    for (int q = 0; q < 64; ++q)
      for (int d = 32 * j; d < 32 * j + 32; ++d)
        e32 = fmax(e32, fabs(g32[j * 64 * 128 + q * 128 + d] - ref[q * 128 + d]));
  // acc [row][head][col]: head 1, rows 40..99, columns 0..63 hold 2 × dQ rows 0..59; all else 0.
  int acc_bad = 0;
  for (int r = 0; r < acc_rows; ++r)
    for (int h = 0; h < acc_heads; ++h)
      for (int d = 0; d < 128; ++d) {
        const bool in = h == 1 && r >= 40 && d < 64;
        const double want = in ? 2 * ref[(r - 40) * 128 + d] : 0.0;
        const double got = gacc[(static_cast<size_t>(r) * acc_heads + h) * 128 + d];
        const double e = fabs(got - want);
        if (in) eacc = fmax(eacc, e);
        if (e > tol || std::isnan(got)) ++acc_bad;
      }
  const bool ok64 = e64 <= tol, ok32 = e32 <= tol, okacc = acc_bad == 0;
  printf("blocks08: dQ = dS K (A, B transposed), N=64 blocks 0/1: max err %.3g (max |dQ| %.3g) %s\n", e64, nref,
         ok64 ? "OK" : "FAIL");
  printf("blocks08: N=32 at column offsets 0/32/64/96: max err %.3g %s\n", e32, ok32 ? "OK" : "FAIL");
  printf("blocks08: TMA reduce-add x2 (rows past the tensor skipped): max err %.3g, bad elements %d %s\n", eacc,
         acc_bad, okacc ? "OK" : "FAIL");
  const bool pass = ok64 && ok32 && okacc;
  printf("blocks08: %s\n", pass ? "PASS" : "FAIL");
  return pass ? 0 : 1;
}
