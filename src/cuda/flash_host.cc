// The CUDA backend's host side: checks what the kernels support (beyond what validate.cc
// checked for every backend), fills FlashParams from the views, and launches. No CUDA headers.
//
// Kernel requirements: bf16 or f16; head_dim 64, 128 or 256; head_dim contiguous (stride 1),
// every other stride a multiple of 8 elements and data 16-byte aligned (16-byte copies); no
// softcap or sparse mask yet; at most kMaxCudaVarlenSeqs packed sequences.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "attnkit/error.h"
#include "cuda/flash_params.h"
#include "cuda/kernels.h"

namespace attnkit::cuda {
static_assert(kMaxVarlenSeqs == kMaxCudaVarlenSeqs);
namespace {

void check_supported(const Problem& pr, const TensorView& q, const AttentionParams& params) {
  if (q.dtype != DType::bf16 && q.dtype != DType::f16) {
    throw Error(fmt::format("q: the CUDA backend takes bf16 or f16 tensors, given {}", to_string(q.dtype)));
  }
  if (pr.head_dim != 64 && pr.head_dim != 128 && pr.head_dim != 256) {
    throw Error(fmt::format("q: the CUDA backend takes head_dim 64, 128 or 256, given {}", pr.head_dim));
  }
  if (pr.softcap != 0.0f) throw Error("params.softcap: not supported by the CUDA backend yet; expected 0");
  if (pr.mask != nullptr) throw Error("params.mask: not supported by the CUDA backend yet; expected nullptr");
  if (!params.cu_seqlens_q.empty() && pr.seqs.size() > static_cast<size_t>(kMaxCudaVarlenSeqs)) {
    throw Error(fmt::format("params.cu_seqlens_q: the CUDA backend takes at most {} packed sequences, given {}",
                            kMaxCudaVarlenSeqs, pr.seqs.size()));
  }
  if (pr.seq_q > INT32_MAX || pr.seq_k > INT32_MAX || pr.batch > 65535) {
    throw Error(fmt::format("q: the CUDA backend takes batch <= 65535 and seq < 2^31, given {}", q.describe()));
  }
}

Strides strides_of(const TensorView& t, const char* name) {
  if (t.empty()) return {0, 0, 0};
  if (t.strides[3] != 1 && t.shape[3] > 1) {
    throw Error(fmt::format("{}: the CUDA backend needs head_dim contiguous (stride 1), given {}", name, t.describe()));
  }
  for (int i = 0; i < 3; ++i) {
    if (t.strides[i] % 8 != 0 && t.shape[i] > 1) {
      throw Error(fmt::format("{}: the CUDA backend needs strides that are multiples of 8 elements, given {}", name,
                              t.describe()));
    }
  }
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) {
    throw Error(fmt::format("{}: the CUDA backend needs 16-byte aligned data", name));
  }
  return {t.strides[0], t.strides[1], t.strides[2]};
}

FlashParams make_params(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& out, const TensorView& lse, const AttentionParams& params) {
  FlashParams p{};
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.o = out.data;
  p.lse = static_cast<float*>(lse.data);
  p.q_s = strides_of(q, "q");
  p.k_s = strides_of(k, "k");
  p.v_s = strides_of(v, "v");
  p.o_s = strides_of(out, "out");
  for (int i = 0; i < 3; ++i) p.lse_s[i] = lse.empty() ? 0 : lse.strides[i];
  p.batch = static_cast<int>(pr.batch);
  p.seq_q = static_cast<int>(pr.seq_q);
  p.seq_k = static_cast<int>(pr.seq_k);
  p.heads_q = static_cast<int>(pr.heads_q);
  p.heads_kv = static_cast<int>(pr.heads_kv);
  p.group = static_cast<int>(pr.group());
  p.varlen = !params.cu_seqlens_q.empty();
  p.num_seqs = p.varlen ? static_cast<int>(pr.seqs.size()) : p.batch;
  if (p.varlen) {
    std::copy(params.cu_seqlens_q.begin(), params.cu_seqlens_q.end(), p.cu_q);
    std::copy(params.cu_seqlens_k.begin(), params.cu_seqlens_k.end(), p.cu_k);
  }
  p.scale = pr.scale;
  p.scale_log2 = pr.scale * 1.44269504088896340736f;
  return p;
}

// Longest sequences (the grid's extent along the query and key tiles).
std::pair<int, int> max_lengths(const Problem& pr) {
  int64_t mq = 0, mk = 0;
  for (const Sequence& s : pr.seqs) {
    mq = std::max(mq, s.nq);
    mk = std::max(mk, s.nk);
  }
  return {static_cast<int>(mq), static_cast<int>(mk)};
}

// The query heads of KV heads [kv0, kv0 + n): pointers moved to the first of them, head counts
// cut to them. delta and dq_acc are laid out for the slice's heads ([B, n·group, Sq] and
// [B, Sq, n·group, D]), so every slice reuses the start of the workspace.
const void* advance(const void* p, int64_t bytes) { return static_cast<const char*>(p) + bytes; }
void* advance(void* p, int64_t bytes) { return static_cast<char*>(p) + bytes; }

FlashParams head_slice(const FlashParams& p, int64_t kv0, int64_t n, int64_t elem_bytes) {
  FlashParams g = p;
  const int64_t h0 = kv0 * p.group, eb = elem_bytes;
  g.q = advance(p.q, h0 * p.q_s.head * eb);
  g.o = advance(p.o, h0 * p.o_s.head * eb);
  g.dout = advance(p.dout, h0 * p.do_s.head * eb);
  g.dq = advance(p.dq, h0 * p.dq_s.head * eb);
  g.k = advance(p.k, kv0 * p.k_s.head * eb);
  g.v = advance(p.v, kv0 * p.v_s.head * eb);
  g.dk = advance(p.dk, kv0 * p.dk_s.head * eb);
  g.dv = advance(p.dv, kv0 * p.dv_s.head * eb);
  g.lse = p.lse + h0 * p.lse_s[1];
  g.heads_kv = static_cast<int>(n);
  g.heads_q = static_cast<int>(n * p.group);
  return g;
}

}  // namespace

void flash_fwd(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& lse, const AttentionParams& params) {
  check_supported(pr, q, params);
  const FlashParams p = make_params(pr, q, k, v, out, lse, params);
  const auto [mq, mk] = max_lengths(pr);
  (void)mk;
  if (p.num_seqs == 0 || mq == 0) return;
  const bool bf16 = q.dtype == DType::bf16;
  const int d = static_cast<int>(pr.head_dim);
  // Hopper wgmma kernel for head_dim 64 and 128; the mma.sync kernel for the rest (256).
  if (launch_flash_fwd_sm90(p, bf16, d, pr.causal, mq, params.stream)) return;
  launch_flash_fwd(p, bf16, d, pr.causal, mq, params.stream);
}

void flash_bwd(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& dout, const TensorView& lse, const TensorView& dq,
               const TensorView& dk, const TensorView& dv, const AttentionParams& params) {
  check_supported(pr, q, params);
  // delta is the least the backward runs with (the deterministic pass); backward_workspace_bytes
  // adds the dQ accumulator of the faster pass.
  const int64_t delta_bytes = backward_delta_bytes(pr.batch, pr.seq_q, pr.heads_q);
  if (params.workspace == nullptr || params.workspace_bytes < delta_bytes) {
    throw Error(fmt::format("params.workspace: CUDA backward needs {} bytes of device workspace "
                            "(backward_workspace_bytes(q) = {} for the fastest pass), given {} bytes at {}",
                            delta_bytes, backward_workspace_bytes(q), params.workspace_bytes, params.workspace));
  }
  FlashParams p = make_params(pr, q, k, v, out, lse, params);
  p.dout = dout.data;
  p.dq = dq.data;
  p.dk = dk.data;
  p.dv = dv.data;
  p.delta = static_cast<float*>(params.workspace);
  p.do_s = strides_of(dout, "dout");
  p.dq_s = strides_of(dq, "dq");
  p.dk_s = strides_of(dk, "dk");
  p.dv_s = strides_of(dv, "dv");
  const auto [mq, mk] = max_lengths(pr);
  if (p.num_seqs == 0 || (mq == 0 && mk == 0)) return;
  const bool bf16 = q.dtype == DType::bf16;
  const int d = static_cast<int>(pr.head_dim);
  // The workspace's layout is backward_workspace_bytes's: delta, then the f32 dQ accumulator
  // (TMA reduce-adds and float4 atomics) for as many query heads as it holds.
  const int64_t per_head = std::max<int64_t>(pr.batch * pr.seq_q * pr.head_dim * 4, 1);
  const int64_t acc_heads = (params.workspace_bytes - delta_bytes) / per_head;
  const int64_t kv_per_launch = std::min(pr.heads_kv, acc_heads / pr.group());
  if (!params.deterministic && kv_per_launch >= 1) {
    if (reinterpret_cast<uintptr_t>(params.workspace) % 16 != 0) {
      throw Error(fmt::format("params.workspace: the CUDA backward needs 16-byte aligned workspace, given {}",
                              params.workspace));
    }
    p.dq_acc = reinterpret_cast<float*>(static_cast<char*>(params.workspace) + delta_bytes);
    // Groups of whole KV heads with their query heads, one launch each, so that the accumulator
    // holds one group: the same kernels over head-offset pointers and fewer heads.
    // Hopper wgmma kernel for head_dim 64 and 128, the mma.sync one-pass kernel otherwise; when
    // neither takes the head_dim (the first slice tells), the deterministic kernel runs instead.
    bool launched = true;
    for (int64_t kv0 = 0; kv0 < pr.heads_kv && launched; kv0 += kv_per_launch) {
      const FlashParams g = head_slice(p, kv0, std::min(kv_per_launch, pr.heads_kv - kv0), dtype_size(q.dtype));
      launched = launch_flash_bwd_sm90(g, bf16, d, pr.causal, std::max(mk, 1), params.stream) ||
                 launch_flash_bwd_atomic(g, bf16, d, pr.causal, std::max(mk, 1), params.stream);
    }
    if (launched) return;
    p.dq_acc = nullptr;
  }
  launch_flash_bwd(p, bf16, d, pr.causal, std::max(mq, 1), std::max(mk, 1), params.stream);
}

}  // namespace attnkit::cuda
