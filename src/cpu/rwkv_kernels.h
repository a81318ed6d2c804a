// RWKV time-mixing CPU kernels, called by src/cpu/rwkv.cc after validation.
#pragma once

#include <cstdint>
#include <vector>

#include "attnkit/tensor.h"

namespace attnkit::cpu {

struct Wkv4Dims {
  int64_t batch = 0, seq = 0, channels = 0;
};
struct Wkv6Dims {
  int64_t batch = 0, seq = 0, heads = 0, head_size = 0;
};

// The initial exponent of the stable WKV-4 state: e^{p} with p this low is exactly 0 in f32.
inline constexpr float kWkv4EmptyExponent = -1e38f;

// How the WKV-4 forward splits a sequence in time when there are fewer (batch, channel group)
// items than threads. rerun: every segment starts from the empty state, and afterwards the rows
// of a later segment where its true start state still weighs are computed again; state_pass:
// each later thread first runs the state update alone over the rows before its segment.
// automatic picks rerun where the decays w make the rerun short; tests force each.
enum class Wkv4TimeSplit { automatic, rerun, state_pass };
struct Wkv4FwdTuning {
  Wkv4TimeSplit time_split = Wkv4TimeSplit::automatic;
};
Wkv4FwdTuning& wkv4_fwd_tuning();

void wkv4_fwd(const Wkv4Dims& s, const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
              const TensorView& y);
// One token per sequence: k, v, y [B, C]; a, b, p: the state, B·C floats each, updated in place;
// consts: what the step derives from w and u, kept by the caller between steps (empty at first).
void wkv4_step(const Wkv4Dims& s, const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
               const TensorView& y, float* a, float* b, float* p, std::vector<float>& consts);
void wkv4_bwd(const Wkv4Dims& s, const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
              const TensorView& dy, const TensorView& dw, const TensorView& du, const TensorView& dk,
              const TensorView& dv);
void wkv6_fwd(const Wkv6Dims& s, const TensorView& r, const TensorView& k, const TensorView& v, const TensorView& w,
              const TensorView& u, const TensorView& y);
void wkv6_bwd(const Wkv6Dims& s, const TensorView& r, const TensorView& k, const TensorView& v, const TensorView& w,
              const TensorView& u, const TensorView& dy, const TensorView& dr, const TensorView& dk,
              const TensorView& dv, const TensorView& dw, const TensorView& du);

}  // namespace attnkit::cpu
