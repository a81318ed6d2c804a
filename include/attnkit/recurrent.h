// Linear-time recurrences: Mamba's selective scan (S6) and RWKV's time mixing (WKV), forward,
// backward and streaming. All tensors are f32, strides free (in elements), sequence-major like
// the attention layouts.
//
// Selective scan (Gu & Dao 2023, "Mamba", Algorithm 2 with the zero-order-hold discretization
// Ā = exp(ΔA), B̄x ≈ ΔBx as in the paper's implementation). Per batch b, channel d, state n:
//   h_t[d, n] = exp(Δ_t[d] A[d, n]) h_{t−1}[d, n] + Δ_t[d] B_t[n] x_t[d]
//   y_t[d]    = Σ_n C_t[n] h_t[d, n] + D[d] x_t[d]          (D optional)
//   out_t[d]  = y_t[d] · silu(z_t[d])                      (gate z optional)
// Layouts: x, delta, z, out : [B, L, Dch];  A : [Dch, N];  Bm, Cm : [B, L, N];  D : [Dch].
// Δ must be >= 0 (apply softplus and any bias before the call, as Mamba's projection does).
//
// RWKV-4 WKV (Peng et al. 2023, eq. 14–16), per batch b and channel c, decay w, bonus u:
//   y_t = (Σ_{i<t} e^{−(t−1−i)w + k_i} v_i + e^{u + k_t} v_t) / (Σ_{i<t} e^{−(t−1−i)w + k_i} + e^{u + k_t})
// computed in the numerically stable form that carries (a, b, p): the sums scaled by e^{−p},
// p the running maximum exponent, so no exp ever overflows.
// Layouts: k, v, y : [B, T, C];  w, u : [C].
//
// RWKV-6 WKV (Peng et al. 2024, "Eagle and Finch", §4), per batch b and head h, a K × K state
// with a data-dependent decay d_t = exp(−exp(w_t)) in (0, 1):
//   y_t[j] = Σ_i r_t[i] (S_{t−1}[i][j] + u[i] k_t[i] v_t[j])
//   S_t    = diag(d_t) S_{t−1} + k_tᵀ v_t
// Layouts: r, k, v, w, y : [B, T, H, K];  u : [H, K].
//
// Streaming: each family's state (ScanState, Wkv4State, Wkv6State) holds what one step needs
// and nothing that grows with the tokens seen; a step's output equals the full-sequence
// output at that position. Every entry point throws attnkit::Error before touching data when
// the arguments do not fit.
#pragma once

#include <cstdint>
#include <vector>

#include "attnkit/tensor.h"

namespace attnkit {

// ---- Mamba selective scan -------------------------------------------------------------------

struct ScanInputs {
  TensorView x, delta, A, B, C;
  TensorView D;  // optional skip term; a default TensorView leaves it out
  TensorView z;  // optional gate
};
struct ScanGrads {  // same shapes as the inputs; dD / dz required exactly when D / z are given
  TensorView dx, ddelta, dA, dB, dC, dD, dz;
};

void selective_scan_forward(const ScanInputs& in, const TensorView& out);
// Gradients of sum(out · dout); dA, dB, dC, dD are overwritten (not accumulated into).
void selective_scan_backward(const ScanInputs& in, const TensorView& dout, const ScanGrads& grads);

// h : [B, Dch, N], zero at construction and reset.
class ScanState {
 public:
  ScanState(int64_t batch, int64_t channels, int64_t state_dim);
  void reset();
  int64_t batch() const { return batch_; }
  int64_t channels() const { return channels_; }
  int64_t state_dim() const { return state_dim_; }
  const std::vector<float>& h() const { return h_; }

 private:
  friend void selective_scan_step(ScanState&, const ScanInputs&, const TensorView&);
  int64_t batch_, channels_, state_dim_;
  std::vector<float> h_;
};

// One token: x, delta, z, out : [B, Dch];  A : [Dch, N];  B, C : [B, N];  D : [Dch].
void selective_scan_step(ScanState& state, const ScanInputs& in, const TensorView& out);

// ---- RWKV-4 WKV -----------------------------------------------------------------------------

void wkv4_forward(const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
                  const TensorView& y);
// Gradients of sum(y · dy); dw and du ([C], summed over batch and time) are overwritten.
void wkv4_backward(const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
                   const TensorView& dy, const TensorView& dw, const TensorView& du, const TensorView& dk,
                   const TensorView& dv);

// (a, b, p) per [B, C]: the numerator and denominator sums scaled by e^{−p}.
class Wkv4State {
 public:
  Wkv4State(int64_t batch, int64_t channels);
  void reset();
  int64_t batch() const { return batch_; }
  int64_t channels() const { return channels_; }

 private:
  friend void wkv4_step(Wkv4State&, const TensorView&, const TensorView&, const TensorView&, const TensorView&,
                        const TensorView&);
  int64_t batch_, channels_;
  std::vector<float> a_, b_, p_;
  std::vector<float> consts_;  // derived from the last step's w and u, reused while they are unchanged
};

// One token: k, v, y : [B, C];  w, u : [C].
void wkv4_step(Wkv4State& state, const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
               const TensorView& y);

// ---- RWKV-6 WKV -----------------------------------------------------------------------------

void wkv6_forward(const TensorView& r, const TensorView& k, const TensorView& v, const TensorView& w,
                  const TensorView& u, const TensorView& y);
// Gradients of sum(y · dy); du ([H, K], summed over batch and time) is overwritten.
void wkv6_backward(const TensorView& r, const TensorView& k, const TensorView& v, const TensorView& w,
                   const TensorView& u, const TensorView& dy, const TensorView& dr, const TensorView& dk,
                   const TensorView& dv, const TensorView& dw, const TensorView& du);

// S : [B, H, K, K].
class Wkv6State {
 public:
  Wkv6State(int64_t batch, int64_t heads, int64_t head_size);
  void reset();
  int64_t batch() const { return batch_; }
  int64_t heads() const { return heads_; }
  int64_t head_size() const { return head_size_; }

 private:
  friend void wkv6_step(Wkv6State&, const TensorView&, const TensorView&, const TensorView&, const TensorView&,
                        const TensorView&, const TensorView&);
  int64_t batch_, heads_, head_size_;
  std::vector<float> s_;
};

// One token: r, k, v, w, y : [B, H, K];  u : [H, K].
void wkv6_step(Wkv6State& state, const TensorView& r, const TensorView& k, const TensorView& v, const TensorView& w,
               const TensorView& u, const TensorView& y);

// Bytes a forward pass must move (inputs read once, outputs written once), for bandwidth.
double selective_scan_fwd_bytes(int64_t batch, int64_t seq, int64_t channels, int64_t state_dim, bool has_d,
                                bool has_z);
double wkv4_fwd_bytes(int64_t batch, int64_t seq, int64_t channels);
double wkv6_fwd_bytes(int64_t batch, int64_t seq, int64_t heads, int64_t head_size);

}  // namespace attnkit
