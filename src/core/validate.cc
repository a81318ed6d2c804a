// Argument validation for every attention entry point. Nothing here reads tensor data: a bad
// call is rejected with an attnkit::Error naming the argument, the expectation and the value.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "attnkit/error.h"
#include "attnkit/mask.h"
#include "core/checks.h"
#include "core/problem.h"

namespace attnkit {
namespace {

constexpr int64_t kMaxHeadDim = 256;
#ifdef ATTNKIT_HAS_CUDA
constexpr bool kCpuOnly = false;  // device tensors go to the CUDA backend
#else
constexpr bool kCpuOnly = true;
#endif

void check_view(const TensorView& t, const char* name, int ndim) { attnkit::check_view(t, name, ndim, kCpuOnly); }
// One call runs on one backend: every tensor lives where q does.
void check_device(const TensorView& t, const char* name, Device want) {
  if (t.device != want) {
    throw Error(fmt::format("q: a {} tensor, but {} is a {} tensor: expected every tensor of the call on q's "
                            "device",
                            to_string(want), name, to_string(t.device)));
  }
}

std::vector<Sequence> make_sequences(const Problem& pr, const AttentionParams& p) {
  std::vector<Sequence> seqs;
  const bool has_q = !p.cu_seqlens_q.empty(), has_k = !p.cu_seqlens_k.empty();
  if (!has_q && !has_k) {
    for (int64_t b = 0; b < pr.batch; ++b) seqs.push_back({b, 0, pr.seq_q, 0, pr.seq_k});
    return seqs;
  }
  if (has_q != has_k) {
    throw Error(fmt::format("params.cu_seqlens_{}: expected both cu_seqlens_q and cu_seqlens_k for a "
                            "variable-length batch, given only cu_seqlens_{}",
                            has_q ? "k" : "q", has_q ? "q" : "k"));
  }
  if (p.cu_seqlens_q.size() != p.cu_seqlens_k.size() || p.cu_seqlens_q.size() < 2) {
    throw Error(fmt::format("params.cu_seqlens: expected cu_seqlens_q and cu_seqlens_k of the same length >= 2 "
                            "(num_seqs + 1), given {} and {}",
                            p.cu_seqlens_q.size(), p.cu_seqlens_k.size()));
  }
  if (pr.batch != 1) {
    throw Error(fmt::format("q: a variable-length batch is packed along seq with batch size 1, given batch {}",
                            pr.batch));
  }
  auto check = [](std::span<const int32_t> cu, const char* name, int64_t total) {
    if (cu[0] != 0) throw Error(fmt::format("params.{}: expected the first offset to be 0, given {}", name, cu[0]));
    for (size_t i = 1; i < cu.size(); ++i) {
      if (cu[i] < cu[i - 1]) {
        throw Error(fmt::format("params.{}: expected non-decreasing offsets, given {} after {} at index {}", name,
                                cu[i], cu[i - 1], i));
      }
    }
    if (cu.back() > total) {
      throw Error(fmt::format("params.{}: the last offset {} exceeds the packed sequence length {}", name,
                              cu.back(), total));
    }
  };
  check(p.cu_seqlens_q, "cu_seqlens_q", pr.seq_q);
  check(p.cu_seqlens_k, "cu_seqlens_k", pr.seq_k);
  for (size_t s = 0; s + 1 < p.cu_seqlens_q.size(); ++s) {
    seqs.push_back({0, p.cu_seqlens_q[s], p.cu_seqlens_q[s + 1] - p.cu_seqlens_q[s], p.cu_seqlens_k[s],
                    p.cu_seqlens_k[s + 1] - p.cu_seqlens_k[s]});
  }
  return seqs;
}

Problem common(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
               const AttentionParams& p) {
  check_view(q, "q", 4);
  check_view(k, "k", 4);
  check_view(v, "v", 4);
  check_view(out, "out", 4);
  check_dtype(k, "k", q.dtype, "the dtype of q");
  check_dtype(v, "v", q.dtype, "the dtype of q");
  check_dtype(out, "out", q.dtype, "the dtype of q");
  for (auto [t, name] : {std::pair{&k, "k"}, {&v, "v"}, {&out, "out"}}) check_device(*t, name, q.device);

  Problem pr;
  pr.batch = q.shape[0];
  pr.seq_q = q.shape[1];
  pr.heads_q = q.shape[2];
  pr.head_dim = q.shape[3];
  pr.seq_k = k.shape[1];
  pr.heads_kv = k.shape[2];
  if (pr.head_dim > kMaxHeadDim) {
    throw Error(fmt::format("q: expected head_dim in 1..{}, given {}", kMaxHeadDim, pr.head_dim));
  }
  check_shape(k, "k", {pr.batch, k.shape[1], k.shape[2], pr.head_dim}, "batch and head_dim of q");
  check_shape(v, "v", {pr.batch, pr.seq_k, pr.heads_kv, pr.head_dim}, "the shape of k");
  check_shape(out, "out", {pr.batch, pr.seq_q, pr.heads_q, pr.head_dim}, "the shape of q");
  if (pr.heads_q % pr.heads_kv != 0) {
    throw Error(fmt::format("k: expected a number of heads that divides q's {} heads (grouped-query attention), "
                            "given {}",
                            pr.heads_q, pr.heads_kv));
  }
  if (p.scale && !(std::isfinite(*p.scale) && *p.scale > 0)) {
    throw Error(fmt::format("params.scale: expected a finite positive number, given {}", *p.scale));
  }
  if (!(std::isfinite(p.softcap) && p.softcap >= 0)) {
    throw Error(fmt::format("params.softcap: expected a finite number >= 0 (0 turns it off), given {}", p.softcap));
  }
  if (p.algorithm > Algorithm::flash) {
    throw Error(fmt::format("params.algorithm: expected auto, reference, naive or flash, given value {}",
                            static_cast<int>(p.algorithm)));
  }
  pr.device = q.device;
  pr.scale = p.scale ? *p.scale : 1.0f / std::sqrt(static_cast<float>(pr.head_dim));
  pr.softcap = p.softcap;
  pr.causal = p.causal;
  pr.mask = p.mask;
  pr.seqs = make_sequences(pr, p);
  if (pr.mask != nullptr) {  // sizes of the longest sequence: a varlen batch shares one mask
    int64_t nq = 0, nk = 0;
    for (const Sequence& s : pr.seqs) nq = std::max(nq, s.nq), nk = std::max(nk, s.nk);
    pr.mask->validate(nq, nk, pr.heads_q);
  }

  check_no_self_overlap(out, "out");
  for (auto [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}}) check_disjoint(out, "out", *t, name);
  return pr;
}

void check_lse(const TensorView& lse, const Problem& pr, const char* name) {
  check_view(lse, name, 3);
  check_device(lse, name, pr.device);
  check_dtype(lse, name, DType::f32, "log-sum-exp is kept in f32");
  check_shape(lse, name, {pr.batch, pr.heads_q, pr.seq_q}, "[batch, heads_q, seq_q]");
}

}  // namespace

Problem validate_forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                         const AttentionParams& p, const TensorView& lse) {
  Problem pr = common(q, k, v, out, p);
  if (!lse.empty() || lse.ndim != 0) {
    check_lse(lse, pr, "lse");
    check_no_self_overlap(lse, "lse");
    for (auto [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}, {&out, "out"}}) {
      check_disjoint(lse, "lse", *t, name);
    }
  }
  return pr;
}

Problem validate_backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                          const TensorView& dout, const TensorView& lse, const TensorView& dq,
                          const TensorView& dk, const TensorView& dv, const AttentionParams& p) {
  // out is an input here; the overlap rule for it is checked against the gradients below.
  Problem pr = common(q, k, v, out, p);
  check_view(dout, "dout", 4);
  check_device(dout, "dout", pr.device);
  check_dtype(dout, "dout", q.dtype, "the dtype of q");
  check_shape(dout, "dout", {pr.batch, pr.seq_q, pr.heads_q, pr.head_dim}, "the shape of out");
  check_lse(lse, pr, "lse");
  const std::pair<const TensorView*, const char*> grads[] = {{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}};
  const std::pair<const TensorView*, const char*> inputs[] = {
      {&q, "q"}, {&k, "k"}, {&v, "v"}, {&out, "out"}, {&dout, "dout"}, {&lse, "lse"}};
  for (auto [g, name] : grads) {
    check_view(*g, name, 4);
    check_device(*g, name, pr.device);
    check_dtype(*g, name, q.dtype, "the dtype of q");
  }
  check_shape(dq, "dq", {pr.batch, pr.seq_q, pr.heads_q, pr.head_dim}, "the shape of q");
  check_shape(dk, "dk", {pr.batch, pr.seq_k, pr.heads_kv, pr.head_dim}, "the shape of k");
  check_shape(dv, "dv", {pr.batch, pr.seq_k, pr.heads_kv, pr.head_dim}, "the shape of v");
  for (auto [g, name] : grads) {
    check_no_self_overlap(*g, name);
    for (auto [t, tname] : inputs) check_disjoint(*g, name, *t, tname);
  }
  check_disjoint(dq, "dq", dk, "dk");
  check_disjoint(dq, "dq", dv, "dv");
  check_disjoint(dk, "dk", dv, "dv");
  return pr;
}

float load_f32(const TensorView& t, int64_t offset) {
  switch (t.dtype) {
    case DType::f32: return static_cast<const float*>(t.data)[offset];
    case DType::bf16: return to_float(static_cast<const bf16*>(t.data)[offset]);
    case DType::f16: return to_float(static_cast<const f16*>(t.data)[offset]);
  }
  return 0.0f;
}

void store_f32(const TensorView& t, int64_t offset, float x) {
  switch (t.dtype) {
    case DType::f32: static_cast<float*>(t.data)[offset] = x; break;
    case DType::bf16: static_cast<bf16*>(t.data)[offset] = to_bf16(x); break;
    case DType::f16: static_cast<f16*>(t.data)[offset] = to_f16(x); break;
  }
}

}  // namespace attnkit
