// attnkit::forward / attnkit::backward: validate, then hand the call to one algorithm.
#include <fmt/format.h>

#include "attnkit/attention.h"
#include "attnkit/error.h"
#include "core/problem.h"
#include "cpu/kernels.h"
#include "reference/attention_ref.h"

namespace attnkit {

void forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
             const AttentionParams& params, const TensorView& lse) {
  const Problem pr = validate_forward(q, k, v, out, params, lse);
  switch (params.algorithm) {
    case Algorithm::reference: {
      const ref::ForwardResult r = ref::forward(pr, q, k, v);
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
  switch (params.algorithm) {
    case Algorithm::reference: {
      const ref::BackwardResult r = ref::backward(pr, q, k, v, dout);
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
