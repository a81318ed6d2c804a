// The CUDA flash kernels (forward and backward) against the float64 CPU reference on fresh
// random inputs, with every device output poisoned (NaN) before the call. Sizes that are not
// tile multiples, GQA / MQA, cross attention, causal with Nq != Nk (rows that see no key),
// variable-length packed batches, strided views. Skipped where no Hopper GPU is present.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "core/problem.h"
#include "reference/attention_ref.h"
#include "test_util.h"

namespace attnkit::test {
namespace {

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x

#define SKIP_WITHOUT_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device of compute capability 9.x here: CUDA test skipped"

// A device copy of a host tensor, with the same strides (gaps included).
struct DeviceTensor {
  void* mem = nullptr;
  size_t bytes = 0;
  TensorView view;
  explicit DeviceTensor(const HostTensor& h) {
    bytes = h.mem.size();
    if (cudaMalloc(&mem, bytes) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
    view = h.view;
    view.data = static_cast<uint8_t*>(mem) + (static_cast<const uint8_t*>(h.view.data) - h.mem.data());
    view.device = Device::cuda;
    upload(h);
  }
  ~DeviceTensor() { cudaFree(mem); }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  void upload(const HostTensor& h) { cudaMemcpy(mem, h.mem.data(), bytes, cudaMemcpyHostToDevice); }
  void download(HostTensor& h) const { cudaMemcpy(h.mem.data(), mem, bytes, cudaMemcpyDeviceToHost); }
  void poison() { cudaMemset(mem, 0xff, bytes); }  // 0xffff is NaN in bf16, f16 and f32
};

struct Case {
  std::string name;
  int64_t B = 1, Nq = 16, Nk = 16, Hq = 2, Hkv = 2, D = 64;
  bool causal = false;
  DType dtype = DType::bf16;
  Layout layout = Layout::contiguous;
  std::vector<int32_t> cu_q, cu_k;
  bool deterministic = false;  // the backward's no-atomics path (also taken at D = 256)
  // Backward workspace: −1 is backward_workspace_bytes; n ≥ 0 is delta plus the dQ accumulator
  // of n KV heads' query heads, so the backward runs over groups of n KV heads (0: the
  // deterministic pass, which needs delta only).
  int64_t ws_kv_heads = -1;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> cases() {
  std::vector<Case> cs;
  for (DType t : {DType::bf16, DType::f16}) {
    const std::string s = t == DType::bf16 ? "_bf16" : "_f16";
    cs.push_back({.name = "d64_odd" + s, .B = 2, .Nq = 200, .Nk = 200, .D = 64, .dtype = t});
    cs.push_back({.name = "d64_causal" + s, .B = 2, .Nq = 257, .Nk = 257, .D = 64, .causal = true, .dtype = t});
    cs.push_back({.name = "d128_gqa_causal_q_lt_k" + s, .Nq = 130, .Nk = 300, .Hq = 4, .Hkv = 2, .D = 128,
                  .causal = true, .dtype = t});
    cs.push_back({.name = "d128_mqa_cross" + s, .Nq = 65, .Nk = 129, .Hq = 4, .Hkv = 1, .D = 128, .dtype = t});
    cs.push_back({.name = "d256_causal_q_gt_k" + s, .Nq = 300, .Nk = 100, .Hq = 2, .Hkv = 1, .D = 256,
                  .causal = true, .dtype = t});
    cs.push_back({.name = "d256_odd" + s, .Nq = 77, .Nk = 190, .Hq = 1, .Hkv = 1, .D = 256, .dtype = t});
    cs.push_back({.name = "d64_bhsd_view" + s, .Nq = 96, .Nk = 160, .D = 64, .causal = true, .dtype = t,
                  .layout = Layout::bhsd});
    cs.push_back({.name = "d128_varlen_causal" + s, .Nq = 141, .Nk = 260, .Hq = 4, .Hkv = 2, .D = 128,
                  .causal = true, .dtype = t, .cu_q = {0, 5, 5, 140, 141, 141}, .cu_k = {0, 7, 30, 200, 200, 260}});
    cs.push_back({.name = "d64_varlen" + s, .Nq = 300, .Nk = 300, .Hq = 2, .Hkv = 2, .D = 64, .dtype = t,
                  .cu_q = {0, 100, 163, 300}, .cu_k = {0, 100, 163, 300}});
  }
  // Many short packed sequences: far more (query tile, head, sequence) units than
  // multiprocessors, so that a persistent CTA runs several units of unequal length (the rings'
  // barrier phases carry over) and skips the units past a sequence's end.
  auto packed = [](int n, int mul, int mod) {
    std::vector<int32_t> cu{0};
    for (int i = 0; i < n; ++i) cu.push_back(cu.back() + 1 + (i * mul) % mod);
    return cu;
  };
  const std::vector<int32_t> cu_a = packed(150, 53, 190), cu_b = packed(100, 71, 250), cu_c = packed(100, 53, 190);
  cs.push_back({.name = "d64_varlen_many_causal_bf16", .Nq = cu_a.back(), .Nk = cu_a.back(), .Hq = 2, .Hkv = 2,
                .D = 64, .causal = true, .cu_q = cu_a, .cu_k = cu_a});
  cs.push_back({.name = "d128_varlen_many_causal_cross_bf16", .Nq = cu_c.back(), .Nk = cu_b.back(), .Hq = 2,
                .Hkv = 1, .D = 128, .causal = true, .cu_q = cu_c, .cu_k = cu_b});
  cs.push_back({.name = "d128_gqa_causal_q_lt_k_deterministic_bf16", .Nq = 130, .Nk = 300, .Hq = 4, .Hkv = 2,
                .D = 128, .causal = true, .deterministic = true});
  cs.push_back({.name = "d64_varlen_deterministic_f16", .Nq = 300, .Nk = 300, .Hq = 2, .Hkv = 2, .D = 64,
                .dtype = DType::f16, .cu_q = {0, 100, 163, 300}, .cu_k = {0, 100, 163, 300}, .deterministic = true});
  // Backward over groups of heads (a workspace smaller than all heads' dQ accumulator), with an
  // uneven last group, head-major views, and a delta-only workspace.
  cs.push_back({.name = "d128_gqa_causal_grouped_bwd_bf16", .B = 2, .Nq = 130, .Nk = 200, .Hq = 8, .Hkv = 4,
                .D = 128, .causal = true, .ws_kv_heads = 1});
  cs.push_back({.name = "d64_bhsd_grouped_bwd_f16", .Nq = 96, .Nk = 160, .Hq = 6, .Hkv = 3, .D = 64,
                .dtype = DType::f16, .layout = Layout::bhsd, .ws_kv_heads = 2});
  cs.push_back({.name = "d128_varlen_grouped_bwd_bf16", .Nq = 141, .Nk = 260, .Hq = 4, .Hkv = 4, .D = 128,
                .causal = true, .cu_q = {0, 5, 5, 140, 141, 141}, .cu_k = {0, 7, 30, 200, 200, 260},
                .ws_kv_heads = 3});
  cs.push_back({.name = "d128_delta_only_workspace_bf16", .Nq = 130, .Nk = 300, .Hq = 4, .Hkv = 2, .D = 128,
                .causal = true, .ws_kv_heads = 0});
  return cs;
}

class CudaAttention : public ::testing::TestWithParam<Case> {};

TEST_P(CudaAttention, ForwardAndBackwardMatchReference) {
  SKIP_WITHOUT_GPU();
  const Case& c = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name));
  HostTensor q(c.dtype, {c.B, c.Nq, c.Hq, c.D}, c.layout), k(c.dtype, {c.B, c.Nk, c.Hkv, c.D}, c.layout),
      v(c.dtype, {c.B, c.Nk, c.Hkv, c.D}, c.layout), dout(c.dtype, {c.B, c.Nq, c.Hq, c.D}, c.layout);
  q.fill_random(rng, 1.0f, 0.01f);
  k.fill_random(rng, 1.0f, 0.01f);
  v.fill_random(rng);
  dout.fill_random(rng);
  HostTensor out(c.dtype, {c.B, c.Nq, c.Hq, c.D}, c.layout), lse(DType::f32, {c.B, c.Hq, c.Nq});
  HostTensor dq(c.dtype, {c.B, c.Nq, c.Hq, c.D}, c.layout), dk(c.dtype, {c.B, c.Nk, c.Hkv, c.D}, c.layout),
      dv(c.dtype, {c.B, c.Nk, c.Hkv, c.D}, c.layout);
  AttentionParams params;
  params.causal = c.causal;
  params.deterministic = c.deterministic;
  params.cu_seqlens_q = c.cu_q;
  params.cu_seqlens_k = c.cu_k;
  const Problem pr = validate_forward(q.view, k.view, v.view, out.view, params, {});

  DeviceTensor dQ(q), dK(k), dV(v), dO(out), dL(lse), ddO(dout), ddQ(dq), ddK(dk), ddV(dv);
  dO.poison();
  dL.poison();
  forward(dQ.view, dK.view, dV.view, dO.view, params, dL.view);
  CUDA_OK(cudaDeviceSynchronize());
  dO.download(out);
  dL.download(lse);
  const ref::ForwardResult rf = ref::forward(pr, q.view, k.view, v.view);
  expect_close(out, rf.out, tolerance(c.dtype, false), c.name + " out");
  expect_close(lse, rf.lse, 1e-4, c.name + " lse");

  void* ws = nullptr;
  const int64_t ws_bytes = c.ws_kv_heads < 0 ? backward_workspace_bytes(dQ.view)
                                              : (c.B * c.Nq * c.Hq * 4 + 255) / 256 * 256 +
                                                    c.ws_kv_heads * (c.Hq / c.Hkv) * c.B * c.Nq * c.D * 4;
  CUDA_OK(cudaMalloc(&ws, ws_bytes));
  params.workspace = ws;
  params.workspace_bytes = ws_bytes;
  ddQ.poison();
  ddK.poison();
  ddV.poison();
  backward(dQ.view, dK.view, dV.view, dO.view, ddO.view, dL.view, ddQ.view, ddK.view, ddV.view, params);
  CUDA_OK(cudaDeviceSynchronize());
  cudaFree(ws);
  ddQ.download(dq);
  ddK.download(dk);
  ddV.download(dv);
  const ref::BackwardResult rb = ref::backward(pr, q.view, k.view, v.view, dout.view);
  expect_close(dq, rb.dq, tolerance(c.dtype, true), c.name + " dq");
  expect_close(dk, rb.dk, tolerance(c.dtype, true), c.name + " dk");
  expect_close(dv, rb.dv, tolerance(c.dtype, true), c.name + " dv");
}

INSTANTIATE_TEST_SUITE_P(Flash, CudaAttention, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

// Causal with Nq > Nk: the first Nq − Nk rows see no key: output exactly 0, LSE −inf, dQ 0.
TEST(CudaAttentionEdge, FullyMaskedRowsAreZero) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(test_seed());
  const int64_t Nq = 150, Nk = 20, H = 2, D = 128;
  HostTensor q(DType::bf16, {1, Nq, H, D}), k(DType::bf16, {1, Nk, H, D}), v(DType::bf16, {1, Nk, H, D});
  HostTensor out(DType::bf16, {1, Nq, H, D}), lse(DType::f32, {1, H, Nq}), dq(DType::bf16, {1, Nq, H, D});
  q.fill_random(rng);
  k.fill_random(rng);
  v.fill_random(rng);
  DeviceTensor dQ(q), dK(k), dV(v), dO(out), dL(lse), ddO(q), ddQ(dq), ddK(k), ddV(v);
  AttentionParams params;
  params.causal = true;
  dO.poison();
  dL.poison();
  forward(dQ.view, dK.view, dV.view, dO.view, params, dL.view);
  void* ws = nullptr;
  CUDA_OK(cudaMalloc(&ws, backward_workspace_bytes(dQ.view)));
  params.workspace = ws;
  params.workspace_bytes = backward_workspace_bytes(dQ.view);
  ddQ.poison();
  backward(dQ.view, dK.view, dV.view, dO.view, ddO.view, dL.view, ddQ.view, ddK.view, ddV.view, params);
  CUDA_OK(cudaDeviceSynchronize());
  cudaFree(ws);
  dO.download(out);
  dL.download(lse);
  ddQ.download(dq);
  for (int64_t i = 0; i < Nq - Nk; ++i)
    for (int64_t h = 0; h < H; ++h) {
      ASSERT_EQ(lse.get(h * Nq + i), -std::numeric_limits<float>::infinity()) << "row " << i;
      for (int64_t d = 0; d < D; ++d) {
        ASSERT_EQ(out.get((i * H + h) * D + d), 0.0f) << "row " << i;
        ASSERT_EQ(dq.get((i * H + h) * D + d), 0.0f) << "row " << i;
      }
    }
  for (int64_t i = 0; i < out.numel(); ++i) ASSERT_TRUE(std::isfinite(out.get(i)));
  for (int64_t i = 0; i < dq.numel(); ++i) ASSERT_TRUE(std::isfinite(dq.get(i)));
}

// Unsupported calls are rejected before any device memory is touched: runs without a GPU.
TEST(CudaAttentionArgs, UnsupportedCallsThrow) {
  auto cuda_view = [](DType t, std::initializer_list<int64_t> dims) {
    return TensorView(reinterpret_cast<void*>(uintptr_t{1} << 20), t, dims, Device::cuda);
  };
  const TensorView q = cuda_view(DType::bf16, {1, 64, 2, 64});
  const TensorView q32 = cuda_view(DType::f32, {1, 64, 2, 64});
  const TensorView q48 = cuda_view(DType::bf16, {1, 64, 2, 48});
  const TensorView host(nullptr, DType::bf16, {1, 64, 2, 64});
  EXPECT_THROW(forward(q32, q32, q32, q32), Error);  // f32 on CUDA
  EXPECT_THROW(forward(q48, q48, q48, q48), Error);  // head_dim 48
  HostTensor h(DType::bf16, {1, 64, 2, 64});
  EXPECT_THROW(forward(q, q, h.view, q), Error);  // mixed devices
  AttentionParams p;
  p.algorithm = Algorithm::naive;
  EXPECT_THROW(forward(q, q, q, q, p), Error);
  // Backward without a workspace (distinct fake addresses, so only the workspace is wrong).
  auto at = [](int i, DType t, std::initializer_list<int64_t> dims) {
    return TensorView(reinterpret_cast<void*>(uintptr_t{1} << 30 | uintptr_t(i) << 20), t, dims, Device::cuda);
  };
  const std::initializer_list<int64_t> s{1, 64, 2, 64};
  try {
    backward(at(0, DType::bf16, s), at(1, DType::bf16, s), at(2, DType::bf16, s), at(3, DType::bf16, s),
             at(4, DType::bf16, s), at(5, DType::f32, {1, 2, 64}), at(6, DType::bf16, s), at(7, DType::bf16, s),
             at(8, DType::bf16, s));
    ADD_FAILURE() << "backward without a workspace did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("workspace"), std::string::npos) << e.what();
  }
  (void)host;
}

// The workspace holds delta and the dQ accumulator for all heads, or for as many heads as fit in
// kBackwardDqAccBytes: N = 131072, H = 16, D = 128 needs 64 MiB per head, so 4 heads.
TEST(CudaAttentionArgs, WorkspaceIsCappedForLongSequences) {
  auto cuda_view = [](std::initializer_list<int64_t> dims) {
    return TensorView(reinterpret_cast<void*>(uintptr_t{1} << 20), DType::bf16, dims, Device::cuda);
  };
  const int64_t delta_long = 131072 * 16 * 4;
  EXPECT_EQ(backward_workspace_bytes(cuda_view({1, 131072, 16, 128})), delta_long + 4 * (int64_t{64} << 20));
  EXPECT_LT(backward_workspace_bytes(cuda_view({1, 131072, 16, 128})), int64_t{300} << 20);
  // B·N = 32768, H·D = 2048: all heads fit (256 MiB).
  EXPECT_EQ(backward_workspace_bytes(cuda_view({8, 4096, 16, 128})), 8 * 4096 * 16 * 4 + 8 * 4096 * 16 * 128 * 4);
  // One head larger than the cap still gets its accumulator.
  EXPECT_EQ(backward_workspace_bytes(cuda_view({1, 1 << 20, 2, 128})),
            (1 << 20) * 2 * 4 + (int64_t{1} << 20) * 128 * 4);
  EXPECT_EQ(backward_workspace_bytes(TensorView(nullptr, DType::bf16, {1, 64, 2, 64})), 0);  // CPU
}

}  // namespace
}  // namespace attnkit::test
