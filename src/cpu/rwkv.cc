// RWKV time-mixing entry points (include/attnkit/recurrent.h): validation, dispatch to the
// Highway kernels (rwkv_kernels.cc for WKV-4, rwkv6_kernels.cc for WKV-6) and the streaming steps.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "attnkit/error.h"
#include "attnkit/recurrent.h"
#include "cpu/linear_checks.h"
#include "cpu/rwkv_kernels.h"

namespace attnkit {
namespace {

constexpr int64_t kMaxHeadSize = 256;

const float* fp(const TensorView& t) { return static_cast<const float*>(t.data); }

// k, v : [B, T, C] (or [B, C] for a step); w, u : [C].
cpu::Wkv4Dims check_wkv4(const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
                         bool step) {
  const int nd = step ? 2 : 3;
  lin::check_f32(k, "k", nd);
  lin::check_f32(v, "v", nd);
  lin::check_f32(w, "w", 1);
  lin::check_f32(u, "u", 1);
  cpu::Wkv4Dims s{k.shape[0], step ? 1 : k.shape[1], k.shape[nd - 1]};
  if (step) {
    check_shape(v, "v", {s.batch, s.channels}, "the shape of k, [batch, channels]");
  } else {
    check_shape(v, "v", {s.batch, s.seq, s.channels}, "the shape of k, [batch, seq, channels]");
  }
  check_shape(w, "w", {s.channels}, "[channels] with channels from k");
  check_shape(u, "u", {s.channels}, "[channels] with channels from k");
  lin::check_finite(w, "w");
  lin::check_finite(u, "u");
  return s;
}

void check_out(const TensorView& out, const char* name, std::initializer_list<int64_t> shape,
               std::initializer_list<std::pair<const TensorView*, const char*>> inputs) {
  lin::check_f32(out, name, static_cast<int>(shape.size()));
  check_shape(out, name, shape, "the shape of k");
  lin::check_output(out, name, inputs);
}

// r, k, v, w : [B, T, H, K] (or [B, H, K] for a step); u : [H, K].
cpu::Wkv6Dims check_wkv6(const TensorView& r, const TensorView& k, const TensorView& v, const TensorView& w,
                         const TensorView& u, bool step) {
  const int nd = step ? 3 : 4;
  lin::check_f32(k, "k", nd);
  cpu::Wkv6Dims s{k.shape[0], step ? 1 : k.shape[1], k.shape[nd - 2], k.shape[nd - 1]};
  if (s.head_size > kMaxHeadSize) {
    throw Error(fmt::format("k: expected a head size in 1..{}, given {}", kMaxHeadSize, s.head_size));
  }
  for (auto [t, name] : {std::pair{&r, "r"}, {&v, "v"}, {&w, "w"}}) {
    lin::check_f32(*t, name, nd);
    if (step) {
      check_shape(*t, name, {s.batch, s.heads, s.head_size}, "the shape of k, [batch, heads, head_size]");
    } else {
      check_shape(*t, name, {s.batch, s.seq, s.heads, s.head_size},
                       "the shape of k, [batch, seq, heads, head_size]");
    }
  }
  lin::check_f32(u, "u", 2);
  check_shape(u, "u", {s.heads, s.head_size}, "[heads, head_size] from k");
  lin::check_finite(w, "w");
  return s;
}

}  // namespace

void wkv4_forward(const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
                  const TensorView& y) {
  const cpu::Wkv4Dims s = check_wkv4(w, u, k, v, false);
  check_out(y, "y", {s.batch, s.seq, s.channels}, {{&w, "w"}, {&u, "u"}, {&k, "k"}, {&v, "v"}});
  cpu::wkv4_fwd(s, w, u, k, v, y);
}

void wkv4_backward(const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
                   const TensorView& dy, const TensorView& dw, const TensorView& du, const TensorView& dk,
                   const TensorView& dv) {
  const cpu::Wkv4Dims s = check_wkv4(w, u, k, v, false);
  lin::check_f32(dy, "dy", 3);
  check_shape(dy, "dy", {s.batch, s.seq, s.channels}, "the shape of k");
  const std::initializer_list<std::pair<const TensorView*, const char*>> inputs = {
      {&w, "w"}, {&u, "u"}, {&k, "k"}, {&v, "v"}, {&dy, "dy"}};
  check_out(dw, "dw", {s.channels}, inputs);
  check_out(du, "du", {s.channels}, inputs);
  check_out(dk, "dk", {s.batch, s.seq, s.channels}, inputs);
  check_out(dv, "dv", {s.batch, s.seq, s.channels}, inputs);
  lin::check_output(dw, "dw", {{&du, "du"}, {&dk, "dk"}, {&dv, "dv"}});
  lin::check_output(du, "du", {{&dk, "dk"}, {&dv, "dv"}});
  lin::check_output(dk, "dk", {{&dv, "dv"}});
  cpu::wkv4_bwd(s, w, u, k, v, dy, dw, du, dk, dv);
}

Wkv4State::Wkv4State(int64_t batch, int64_t channels) : batch_(batch), channels_(channels) {
  if (batch <= 0) throw Error(fmt::format("Wkv4State: batch: expected >= 1, given {}", batch));
  if (channels <= 0) throw Error(fmt::format("Wkv4State: channels: expected >= 1, given {}", channels));
  reset();
}

void Wkv4State::reset() {
  a_.assign(batch_ * channels_, 0.0f);
  b_.assign(batch_ * channels_, 0.0f);
  p_.assign(batch_ * channels_, cpu::kWkv4EmptyExponent);
}

void wkv4_step(Wkv4State& st, const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
               const TensorView& y) {
  const cpu::Wkv4Dims s = check_wkv4(w, u, k, v, true);
  if (s.batch != st.batch_ || s.channels != st.channels_) {
    throw Error(fmt::format("k: expected [batch, channels] = [{}, {}] (the state's), given {}", st.batch_,
                            st.channels_, k.describe()));
  }
  check_out(y, "y", {s.batch, s.channels}, {{&w, "w"}, {&u, "u"}, {&k, "k"}, {&v, "v"}});
  cpu::wkv4_step(s, w, u, k, v, y, st.a_.data(), st.b_.data(), st.p_.data(), st.consts_);
}

void wkv6_forward(const TensorView& r, const TensorView& k, const TensorView& v, const TensorView& w,
                  const TensorView& u, const TensorView& y) {
  const cpu::Wkv6Dims s = check_wkv6(r, k, v, w, u, false);
  check_out(y, "y", {s.batch, s.seq, s.heads, s.head_size}, {{&r, "r"}, {&k, "k"}, {&v, "v"}, {&w, "w"}, {&u, "u"}});
  cpu::wkv6_fwd(s, r, k, v, w, u, y);
}

void wkv6_backward(const TensorView& r, const TensorView& k, const TensorView& v, const TensorView& w,
                   const TensorView& u, const TensorView& dy, const TensorView& dr, const TensorView& dk,
                   const TensorView& dv, const TensorView& dw, const TensorView& du) {
  const cpu::Wkv6Dims s = check_wkv6(r, k, v, w, u, false);
  lin::check_f32(dy, "dy", 4);
  check_shape(dy, "dy", {s.batch, s.seq, s.heads, s.head_size}, "the shape of k");
  const std::initializer_list<std::pair<const TensorView*, const char*>> inputs = {
      {&r, "r"}, {&k, "k"}, {&v, "v"}, {&w, "w"}, {&u, "u"}, {&dy, "dy"}};
  for (auto [g, name] : {std::pair{&dr, "dr"}, {&dk, "dk"}, {&dv, "dv"}, {&dw, "dw"}})
    check_out(*g, name, {s.batch, s.seq, s.heads, s.head_size}, inputs);
  check_out(du, "du", {s.heads, s.head_size}, inputs);
  lin::check_output(dr, "dr", {{&dk, "dk"}, {&dv, "dv"}, {&dw, "dw"}, {&du, "du"}});
  lin::check_output(dk, "dk", {{&dv, "dv"}, {&dw, "dw"}, {&du, "du"}});
  lin::check_output(dv, "dv", {{&dw, "dw"}, {&du, "du"}});
  lin::check_output(dw, "dw", {{&du, "du"}});
  cpu::wkv6_bwd(s, r, k, v, w, u, dy, dr, dk, dv, dw, du);
}

Wkv6State::Wkv6State(int64_t batch, int64_t heads, int64_t head_size)
    : batch_(batch), heads_(heads), head_size_(head_size) {
  if (batch <= 0) throw Error(fmt::format("Wkv6State: batch: expected >= 1, given {}", batch));
  if (heads <= 0) throw Error(fmt::format("Wkv6State: heads: expected >= 1, given {}", heads));
  if (head_size <= 0 || head_size > kMaxHeadSize) {
    throw Error(fmt::format("Wkv6State: head_size: expected 1..{}, given {}", kMaxHeadSize, head_size));
  }
  s_.assign(batch * heads * head_size * head_size, 0.0f);
}

void Wkv6State::reset() { std::fill(s_.begin(), s_.end(), 0.0f); }

void wkv6_step(Wkv6State& st, const TensorView& r, const TensorView& k, const TensorView& v, const TensorView& w,
               const TensorView& u, const TensorView& y) {
  const cpu::Wkv6Dims s = check_wkv6(r, k, v, w, u, true);
  if (s.batch != st.batch_ || s.heads != st.heads_ || s.head_size != st.head_size_) {
    throw Error(fmt::format("k: expected [batch, heads, head_size] = [{}, {}, {}] (the state's), given {}", st.batch_,
                            st.heads_, st.head_size_, k.describe()));
  }
  check_out(y, "y", {s.batch, s.heads, s.head_size}, {{&r, "r"}, {&k, "k"}, {&v, "v"}, {&w, "w"}, {&u, "u"}});
  const int64_t K = s.head_size;
  auto at = [](const TensorView& t, int64_t b, int64_t h, int64_t i) {
    return fp(t)[b * t.strides[0] + h * t.strides[1] + i * t.strides[2]];
  };
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      float* S = &st.s_[(b * s.heads + h) * K * K];
      float* yr = static_cast<float*>(y.data) + b * y.strides[0] + h * y.strides[1];
      for (int64_t j = 0; j < K; ++j) yr[j * y.strides[2]] = 0.0f;
      for (int64_t i = 0; i < K; ++i) {
        const float ri = at(r, b, h, i), ki = at(k, b, h, i);
        const float ui = fp(u)[h * u.strides[0] + i * u.strides[1]];
        const float di = std::exp(-std::exp(std::min(at(w, b, h, i), 80.0f)));
        for (int64_t j = 0; j < K; ++j) {
          const float kv = ki * at(v, b, h, j);
          yr[j * y.strides[2]] += ri * (S[i * K + j] + ui * kv);
          S[i * K + j] = di * S[i * K + j] + kv;
        }
      }
    }
  }
}

double wkv4_fwd_bytes(int64_t batch, int64_t seq, int64_t channels) {
  return 4.0 * (3.0 * static_cast<double>(batch) * static_cast<double>(seq) * static_cast<double>(channels) +
                2.0 * static_cast<double>(channels));
}

double wkv6_fwd_bytes(int64_t batch, int64_t seq, int64_t heads, int64_t head_size) {
  const double per = static_cast<double>(batch) * static_cast<double>(seq) * static_cast<double>(heads) *
                     static_cast<double>(head_size);
  return 4.0 * (5.0 * per + static_cast<double>(heads) * static_cast<double>(head_size));
}

}  // namespace attnkit
