// attnkit::forward / attnkit::backward: validate, then hand the call to one algorithm.
#include <fmt/format.h>

#include <algorithm>

#include "attnkit/attention.h"
#include "attnkit/error.h"
#include "attnkit/mask.h"
#include "core/problem.h"
#include "cpu/kernels.h"
#ifdef ATTNKIT_HAS_CUDA
#include "cuda/kernels.h"
#endif
#include "reference/attention_ref.h"

namespace attnkit {
namespace {

// CUDA tensors: only the flash algorithm exists there.
void check_cuda_algorithm(const AttentionParams& params) {
  if (params.mask != nullptr) {
    throw Error("params.mask: sparse masks run on CPU tensors only; the CUDA backend has no sparse kernels yet");
  }
  if (params.algorithm != Algorithm::automatic && params.algorithm != Algorithm::flash) {
    throw Error(fmt::format("params.algorithm: CUDA tensors support auto or flash, given {}",
                            to_string(params.algorithm)));
  }
}

void cuda_forward(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& out, const AttentionParams& params, const TensorView& lse) {
  check_cuda_algorithm(params);
#ifdef ATTNKIT_HAS_CUDA
  cuda::flash_fwd(pr, q, k, v, out, lse, params);
#else
  (void)pr, (void)q, (void)k, (void)v, (void)out, (void)lse;
  throw Error("q: CUDA tensors need a build with the CUDA backend");
#endif
}

void cuda_backward(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                   const TensorView& out, const TensorView& dout, const TensorView& lse, const TensorView& dq,
                   const TensorView& dk, const TensorView& dv, const AttentionParams& params) {
  check_cuda_algorithm(params);
#ifdef ATTNKIT_HAS_CUDA
  cuda::flash_bwd(pr, q, k, v, out, dout, lse, dq, dk, dv, params);
#else
  (void)pr, (void)q, (void)k, (void)v, (void)out, (void)dout, (void)lse, (void)dq, (void)dk, (void)dv;
  throw Error("q: CUDA tensors need a build with the CUDA backend");
#endif
}

// The mask as the reference's element predicate (positions within each sequence).
ref::KeepFn keep_fn(const Problem& pr) {
  if (pr.mask == nullptr) return {};
  return [&pr](int64_t si, int64_t h, int64_t i, int64_t j) {
    const Sequence& sq = pr.seqs[static_cast<size_t>(si)];
    return pr.mask->keep(si, h, i, j, sq.nq, sq.nk);
  };
}

}  // namespace

int64_t backward_workspace_bytes(const TensorView& q) {
  if (q.device != Device::cuda || q.ndim != 4) return 0;
  // delta, then the f32 dQ accumulator of the non-deterministic pass, [B, Sq, heads, D], for all
  // heads or as many as fit in kBackwardDqAccBytes (at least one): the backward then runs over
  // groups of heads.
  const int64_t per_head = q.shape[0] * q.shape[1] * q.shape[3] * 4;
  const int64_t heads = std::clamp<int64_t>(kBackwardDqAccBytes / std::max<int64_t>(per_head, 1), 1, q.shape[2]);
  return backward_delta_bytes(q.shape[0], q.shape[1], q.shape[2]) + heads * per_head;
}

bool cuda_available() {
#ifdef ATTNKIT_HAS_CUDA
  return cuda::device_available();
#else
  return false;
#endif
}

void forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
             const AttentionParams& params, const TensorView& lse) {
  const Problem pr = validate_forward(q, k, v, out, params, lse);
  if (pr.device == Device::cuda) return cuda_forward(pr, q, k, v, out, params, lse);
  switch (params.algorithm) {
    case Algorithm::reference: {
      const ref::ForwardResult r = ref::forward(pr, q, k, v, keep_fn(pr));
      ref::store(r.out, out);
      if (!lse.empty()) ref::store(r.lse, lse);
      return;
    }
    case Algorithm::naive: return cpu::naive_fwd(pr, q, k, v, out, lse);
    case Algorithm::automatic:
    case Algorithm::flash: return cpu::flash_fwd(pr, q, k, v, out, lse);
  }
}

void backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
              const TensorView& dout, const TensorView& lse, const TensorView& dq, const TensorView& dk,
              const TensorView& dv, const AttentionParams& params) {
  const Problem pr = validate_backward(q, k, v, out, dout, lse, dq, dk, dv, params);
  if (pr.device == Device::cuda) return cuda_backward(pr, q, k, v, out, dout, lse, dq, dk, dv, params);
  switch (params.algorithm) {
    case Algorithm::reference: {
      const ref::BackwardResult r = ref::backward(pr, q, k, v, dout, keep_fn(pr));
      ref::store(r.dq, dq);
      ref::store(r.dk, dk);
      ref::store(r.dv, dv);
      return;
    }
    case Algorithm::naive: return cpu::naive_bwd(pr, q, k, v, out, dout, lse, dq, dk, dv);
    case Algorithm::automatic:
    case Algorithm::flash: return cpu::flash_bwd(pr, q, k, v, out, dout, lse, dq, dk, dv);
  }
}

}  // namespace attnkit
