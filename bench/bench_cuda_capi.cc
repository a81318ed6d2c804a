// A C entry point to attnkit's CUDA flash kernels for bench_cuda.py (ctypes), so that ours and
// torch's SDPA backends run in one process on the same device tensors. Contiguous
// [B, S, H, D] bf16/f16 tensors; lse [B, Hq, Nq] f32. Returns 0, or 1 with the message in err.
#include <cstdio>
#include <exception>

#include "attnkit/attnkit.h"

namespace {

using attnkit::DType;
using attnkit::TensorView;

TensorView view(void* p, DType t, int64_t b, int64_t s, int64_t h, int64_t d) {
  return TensorView(p, t, {b, s, h, d}, attnkit::Device::cuda);
}

template <typename F>
int guarded(char* err, int err_len, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(err, err_len, "%s", e.what());
    return 1;
  }
}

}  // namespace

extern "C" {

long long ak_bwd_workspace_bytes(int b, int nq, int hq, int d) {
  return attnkit::backward_workspace_bytes(view(nullptr, DType::bf16, b, nq, hq, d));
}

int ak_fwd(void* q, void* k, void* v, void* o, float* lse, int b, int nq, int nk, int hq, int hkv, int d,
           int is_f16, int causal, void* stream, char* err, int err_len) {
  return guarded(err, err_len, [&] {
    const DType t = is_f16 ? DType::f16 : DType::bf16;
    attnkit::AttentionParams p;
    p.causal = causal != 0;
    p.stream = stream;
    attnkit::forward(view(q, t, b, nq, hq, d), view(k, t, b, nk, hkv, d), view(v, t, b, nk, hkv, d),
                     view(o, t, b, nq, hq, d), p, TensorView(lse, DType::f32, {b, hq, nq}, attnkit::Device::cuda));
  });
}

int ak_bwd(void* q, void* k, void* v, void* o, void* dout, float* lse, void* dq, void* dk, void* dv, int b, int nq,
           int nk, int hq, int hkv, int d, int is_f16, int causal, void* workspace, long long workspace_bytes,
           void* stream, char* err, int err_len) {
  return guarded(err, err_len, [&] {
    const DType t = is_f16 ? DType::f16 : DType::bf16;
    attnkit::AttentionParams p;
    p.causal = causal != 0;
    p.stream = stream;
    p.workspace = workspace;
    p.workspace_bytes = workspace_bytes;
    attnkit::backward(view(q, t, b, nq, hq, d), view(k, t, b, nk, hkv, d), view(v, t, b, nk, hkv, d),
                      view(o, t, b, nq, hq, d), view(dout, t, b, nq, hq, d),
                      TensorView(lse, DType::f32, {b, hq, nq}, attnkit::Device::cuda), view(dq, t, b, nq, hq, d),
                      view(dk, t, b, nk, hkv, d), view(dv, t, b, nk, hkv, d), p);
  });
}

}  // extern "C"
