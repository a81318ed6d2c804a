// Warp-level tile vocabulary for the mma.sync (sm_80 class) flash kernels: 16-byte cp.async
// loads into padded shared-memory tiles, ldmatrix, and m16n8k16 tensor-core products with f32
// accumulators. Compiled for sm_90a; the Hopper-native path (wgmma, TMA) replaces these.
//
// Fragment layout of one m16n8 f32 accumulator (PTX ISA, "mma.m16n8k16"), lane = threadIdx % 32:
//   c[0], c[1] : row lane/4,     columns 2·(lane%4) + {0, 1}
//   c[2], c[3] : row lane/4 + 8, the same columns
// Shared tiles are row-major [rows][cols + kPad] 16-bit elements; the 16-byte pad puts the 8
// rows that one ldmatrix reads into 8 distinct bank groups.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace attnkit::cuda {

constexpr int kPad = 8;  // elements of padding per shared-memory row

template <bool kBf16>
using Elem = std::conditional_t<kBf16, __nv_bfloat16, __half>;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global → shared; rows past the valid range are zero-filled (no global read).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Loads rows [0, kRows) × [0, kCols) of a row-major global tile (row stride `ld` elements) into
// shared memory; rows >= valid_rows become zero.
template <int kRows, int kCols, int kThreads, typename T>
__device__ __forceinline__ void load_tile(T* smem, const T* gmem, int64_t ld, int valid_rows) {
  constexpr int kChunks = kCols / 8;  // 16-byte chunks per row
  for (int i = threadIdx.x; i < kRows * kChunks; i += kThreads) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    const bool valid = r < valid_rows;
    cp_async16(smem + r * (kCols + kPad) + c, valid ? gmem + r * ld + c : gmem, valid);
  }
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

template <bool kBf16>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats → one register of two 16-bit values, the first in the low half.
template <bool kBf16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (kBf16) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    r = *reinterpret_cast<uint32_t*>(&h);
  } else {
    __half2 h = __floats2half2_rn(lo, hi);
    r = *reinterpret_cast<uint32_t*>(&h);
  }
  return r;
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// acc(16 × kN) += A(16 × kK) · Bᵀ, where A is 16 rows of a shared tile [.][kK + kPad] and B is
// a shared tile [kN][kK + kPad] (both with k contiguous): S = Q Kᵀ, dP = dO Vᵀ.
template <int kK, int kN, bool kBf16, typename T>
__device__ __forceinline__ void gemm_nt(float (&acc)[kN / 8][4], const T* sA, const T* sB, int lane) {
  constexpr int ld = kK + kPad;
  const int i = lane / 8, r = lane % 8;
#pragma unroll
  for (int k0 = 0; k0 < kK; k0 += 16) {
    uint32_t a[4];
    ldsm_x4(a, sA + (lane % 16) * ld + k0 + (lane / 16) * 8);
#pragma unroll
    for (int n0 = 0; n0 < kN; n0 += 16) {
      uint32_t b[4];
      ldsm_x4(b, sB + (n0 + r + (i / 2) * 8) * ld + k0 + (i % 2) * 8);
      mma16816<kBf16>(acc[n0 / 8], a, b[0], b[1]);
      mma16816<kBf16>(acc[n0 / 8 + 1], a, b[2], b[3]);
    }
  }
}

// The accumulators of a 16 × kK product as A operands (16-bit) of the next product.
template <int kK, bool kBf16>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[kK / 16][4], const float (&s)[kK / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    a[kk][0] = pack2<kBf16>(s[2 * kk][0], s[2 * kk][1]);
    a[kk][1] = pack2<kBf16>(s[2 * kk][2], s[2 * kk][3]);
    a[kk][2] = pack2<kBf16>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[kk][3] = pack2<kBf16>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
}

// acc(16 × kN) += A(16 × kK, registers) · B, B a shared tile [kK][ldb] (n contiguous), columns
// [n_off, n_off + kN): O += P V, dQ += dS K, dV += Pᵀ dO, dK += dSᵀ Q.
template <int kK, int kN, int kLdb, bool kBf16, typename T>
__device__ __forceinline__ void gemm_rn(float (&acc)[kN / 8][4], const uint32_t (&a)[kK / 16][4], const T* sB,
                                        int n_off, int lane) {
  const int i = lane / 8, r = lane % 8;
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
#pragma unroll
    for (int n0 = 0; n0 < kN; n0 += 16) {
      uint32_t b[4];
      ldsm_x4_trans(b, sB + (kk * 16 + r + (i % 2) * 8) * kLdb + n_off + n0 + (i / 2) * 8);
      mma16816<kBf16>(acc[n0 / 8], a[kk], b[0], b[1]);
      mma16816<kBf16>(acc[n0 / 8 + 1], a[kk], b[2], b[3]);
    }
  }
}

// Writes a warp's 16 × kN f32 accumulators as 16-bit values into rows of a shared tile.
template <int kN, int kLd, bool kBf16, typename T>
__device__ __forceinline__ void store_acc_smem(T* s, const float (&acc)[kN / 8][4], int lane) {
  const int r = lane / 4, c = 2 * (lane % 4);
#pragma unroll
  for (int n = 0; n < kN / 8; ++n) {
    *reinterpret_cast<uint32_t*>(s + r * kLd + n * 8 + c) = pack2<kBf16>(acc[n][0], acc[n][1]);
    *reinterpret_cast<uint32_t*>(s + (r + 8) * kLd + n * 8 + c) = pack2<kBf16>(acc[n][2], acc[n][3]);
  }
}

// Copies a warp's 16 rows × kCols from shared memory to global with 16-byte stores.
template <int kCols, int kLd, typename T>
__device__ __forceinline__ void store_rows_global(T* g, int64_t ld, const T* s, int valid_rows, int lane) {
  constexpr int kChunks = kCols / 8;
  for (int i = lane; i < 16 * kChunks; i += 32) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    if (r < valid_rows) *reinterpret_cast<uint4*>(g + r * ld + c) = *reinterpret_cast<const uint4*>(s + r * kLd + c);
  }
}

// Max and sum over the 4 lanes that share a row of an accumulator fragment.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Where one sequence of the batch lies.
struct SeqInfo {
  int batch, q0, nq, k0, nk;
};
template <typename P>
__device__ __forceinline__ SeqInfo seq_info(const P& p, int s) {
  if (p.varlen) return {0, p.cu_q[s], p.cu_q[s + 1] - p.cu_q[s], p.cu_k[s], p.cu_k[s + 1] - p.cu_k[s]};
  return {s, 0, p.seq_q, 0, p.seq_k};
}

}  // namespace attnkit::cuda
