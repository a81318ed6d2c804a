// Selective scan entry points (include/attnkit/recurrent.h): validation, dispatch to the
// Highway kernels (scan_kernels.cc) and the streaming step.
#include <fmt/format.h>

#include <cmath>

#include "attnkit/error.h"
#include "attnkit/recurrent.h"
#include "cpu/linear_checks.h"
#include "cpu/scan_kernels.h"

namespace attnkit {
namespace {

constexpr int64_t kMaxState = 1024;

// Shapes of one call: seq_dims is {B, L} for the full sequence and {B} for a step.
cpu::ScanDims check_inputs(const ScanInputs& in, bool step) {
  const int nd = step ? 2 : 3;
  lin::check_f32(in.x, "x", nd);
  lin::check_f32(in.delta, "delta", nd);
  lin::check_f32(in.A, "A", 2);
  lin::check_f32(in.B, "B", nd);
  lin::check_f32(in.C, "C", nd);
  cpu::ScanDims s;
  s.batch = in.x.shape[0];
  s.seq = step ? 1 : in.x.shape[1];
  s.channels = in.x.shape[nd - 1];
  s.state = in.A.shape[1];
  if (s.state > kMaxState) throw Error(fmt::format("A: expected a state size N in 1..{}, given {}", kMaxState, s.state));
  const char* xs = step ? "the shape of x, [batch, channels]" : "the shape of x, [batch, seq, channels]";
  if (step) {
    check_shape(in.delta, "delta", {s.batch, s.channels}, xs);
    check_shape(in.B, "B", {s.batch, s.state}, "[batch, N] with N from A");
    check_shape(in.C, "C", {s.batch, s.state}, "[batch, N] with N from A");
  } else {
    check_shape(in.delta, "delta", {s.batch, s.seq, s.channels}, xs);
    check_shape(in.B, "B", {s.batch, s.seq, s.state}, "[batch, seq, N] with N from A");
    check_shape(in.C, "C", {s.batch, s.seq, s.state}, "[batch, seq, N] with N from A");
  }
  check_shape(in.A, "A", {s.channels, s.state}, "[channels, N] with channels from x");
  s.has_d = lin::given(in.D);
  s.has_z = lin::given(in.z);
  if (s.has_d) {
    lin::check_f32(in.D, "D", 1);
    check_shape(in.D, "D", {s.channels}, "[channels]");
  }
  if (s.has_z) {
    lin::check_f32(in.z, "z", nd);
    if (step) {
      check_shape(in.z, "z", {s.batch, s.channels}, xs);
    } else {
      check_shape(in.z, "z", {s.batch, s.seq, s.channels}, xs);
    }
  }
  lin::check_finite(in.A, "A");
  lin::check_nonnegative(in.delta, "delta");
  return s;
}

void check_out(const TensorView& out, const char* name, const ScanInputs& in, const cpu::ScanDims& s, bool step) {
  lin::check_f32(out, name, step ? 2 : 3);
  if (step) {
    check_shape(out, name, {s.batch, s.channels}, "the shape of x");
  } else {
    check_shape(out, name, {s.batch, s.seq, s.channels}, "the shape of x");
  }
  lin::check_output(out, name, {{&in.x, "x"}, {&in.delta, "delta"}, {&in.A, "A"}, {&in.B, "B"}, {&in.C, "C"},
                                {&in.D, "D"}, {&in.z, "z"}});
}

}  // namespace

void selective_scan_forward(const ScanInputs& in, const TensorView& out) {
  const cpu::ScanDims s = check_inputs(in, false);
  check_out(out, "out", in, s, false);
  cpu::scan_fwd(s, in, out);
}

void selective_scan_backward(const ScanInputs& in, const TensorView& dout, const ScanGrads& g) {
  const cpu::ScanDims s = check_inputs(in, false);
  lin::check_f32(dout, "dout", 3);
  check_shape(dout, "dout", {s.batch, s.seq, s.channels}, "the shape of x");
  const std::pair<const TensorView*, const char*> shaped[] = {{&g.dx, "dx"}, {&g.ddelta, "ddelta"}};
  for (auto [t, name] : shaped) check_out(*t, name, in, s, false);
  lin::check_f32(g.dA, "dA", 2);
  check_shape(g.dA, "dA", {s.channels, s.state}, "the shape of A");
  lin::check_f32(g.dB, "dB", 3);
  check_shape(g.dB, "dB", {s.batch, s.seq, s.state}, "the shape of B");
  lin::check_f32(g.dC, "dC", 3);
  check_shape(g.dC, "dC", {s.batch, s.seq, s.state}, "the shape of C");
  if (s.has_d != lin::given(g.dD)) {
    throw Error(fmt::format("dD: expected {} (D was {}given)", s.has_d ? "a gradient view" : "no view",
                            s.has_d ? "" : "not "));
  }
  if (s.has_z != lin::given(g.dz)) {
    throw Error(fmt::format("dz: expected {} (z was {}given)", s.has_z ? "a gradient view" : "no view",
                            s.has_z ? "" : "not "));
  }
  if (s.has_d) {
    lin::check_f32(g.dD, "dD", 1);
    check_shape(g.dD, "dD", {s.channels}, "the shape of D");
  }
  if (s.has_z) check_out(g.dz, "dz", in, s, false);
  const TensorView* grads[] = {&g.dx, &g.ddelta, &g.dA, &g.dB, &g.dC, &g.dD, &g.dz};
  const char* names[] = {"dx", "ddelta", "dA", "dB", "dC", "dD", "dz"};
  for (int i = 0; i < 7; ++i) {
    if (!lin::given(*grads[i])) continue;
    lin::check_output(*grads[i], names[i], {{&in.x, "x"}, {&in.delta, "delta"}, {&in.A, "A"}, {&in.B, "B"},
                                            {&in.C, "C"}, {&in.D, "D"}, {&in.z, "z"}, {&dout, "dout"}});
    for (int j = 0; j < i; ++j) {
      if (lin::given(*grads[j])) lin::check_output(*grads[i], names[i], {{grads[j], names[j]}});
    }
  }
  cpu::scan_bwd(s, in, dout, g);
}

ScanState::ScanState(int64_t batch, int64_t channels, int64_t state_dim)
    : batch_(batch), channels_(channels), state_dim_(state_dim) {
  if (batch <= 0) throw Error(fmt::format("ScanState: batch: expected >= 1, given {}", batch));
  if (channels <= 0) throw Error(fmt::format("ScanState: channels: expected >= 1, given {}", channels));
  if (state_dim <= 0 || state_dim > kMaxState) {
    throw Error(fmt::format("ScanState: state_dim: expected 1..{}, given {}", kMaxState, state_dim));
  }
  h_.assign(batch * channels * state_dim, 0.0f);
}

void ScanState::reset() { std::fill(h_.begin(), h_.end(), 0.0f); }

void selective_scan_step(ScanState& st, const ScanInputs& in, const TensorView& out) {
  const cpu::ScanDims s = check_inputs(in, true);
  if (s.batch != st.batch_ || s.channels != st.channels_ || s.state != st.state_dim_) {
    throw Error(fmt::format("x, A: expected batch {}, channels {} and N {} (the state's), given {}, {} and {}",
                            st.batch_, st.channels_, st.state_dim_, s.batch, s.channels, s.state));
  }
  check_out(out, "out", in, s, true);
  cpu::scan_step(s, in, out, st.h_.data());
}

double selective_scan_fwd_bytes(int64_t batch, int64_t seq, int64_t channels, int64_t state_dim, bool has_d,
                                bool has_z) {
  const double tokens = static_cast<double>(batch) * static_cast<double>(seq);
  const double per_token = static_cast<double>(channels) * (3 + (has_z ? 1 : 0)) + 2.0 * state_dim;  // x Δ out [z] B C
  const double params = static_cast<double>(channels) * (state_dim + (has_d ? 1 : 0));
  return 4.0 * (tokens * per_token + params);
}

}  // namespace attnkit
