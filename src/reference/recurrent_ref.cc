// float64 references for the selective scan and RWKV time mixing (see recurrent_ref.h).
#include "reference/recurrent_ref.h"

#include <algorithm>
#include <cmath>

namespace attnkit::ref {
namespace {

double at(const TensorView& t, std::initializer_list<int64_t> idx) {
  int64_t off = 0, i = 0;
  for (int64_t x : idx) off += x * t.strides[i++];
  return static_cast<const float*>(t.data)[off];
}
bool given(const TensorView& t) { return t.data != nullptr; }
double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

}  // namespace

std::vector<double> scan_forward(const ScanInputs& in) {
  const int64_t B = in.x.shape[0], L = in.x.shape[1], Dc = in.x.shape[2], N = in.A.shape[1];
  std::vector<double> out(B * L * Dc);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t d = 0; d < Dc; ++d) {
      std::vector<double> h(N, 0.0);
      for (int64_t t = 0; t < L; ++t) {
        const double dt = at(in.delta, {b, t, d}), x = at(in.x, {b, t, d});
        double y = given(in.D) ? at(in.D, {d}) * x : 0.0;
        for (int64_t n = 0; n < N; ++n) {
          h[n] = std::exp(dt * at(in.A, {d, n})) * h[n] + dt * at(in.B, {b, t, n}) * x;
          y += at(in.C, {b, t, n}) * h[n];
        }
        if (given(in.z)) {
          const double z = at(in.z, {b, t, d});
          y *= z * sigmoid(z);
        }
        out[(b * L + t) * Dc + d] = y;
      }
    }
  }
  return out;
}

ScanGradsRef scan_backward(const ScanInputs& in, const TensorView& dout) {
  const int64_t B = in.x.shape[0], L = in.x.shape[1], Dc = in.x.shape[2], N = in.A.shape[1];
  ScanGradsRef g;
  g.dx.assign(B * L * Dc, 0.0);
  g.ddelta.assign(B * L * Dc, 0.0);
  g.dz.assign(B * L * Dc, 0.0);
  g.dA.assign(Dc * N, 0.0);
  g.dB.assign(B * L * N, 0.0);
  g.dC.assign(B * L * N, 0.0);
  g.dD.assign(Dc, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t d = 0; d < Dc; ++d) {
      std::vector<double> hs((L + 1) * N, 0.0);  // hs[t + 1] = h_t
      for (int64_t t = 0; t < L; ++t) {
        const double dt = at(in.delta, {b, t, d}), x = at(in.x, {b, t, d});
        for (int64_t n = 0; n < N; ++n)
          hs[(t + 1) * N + n] = std::exp(dt * at(in.A, {d, n})) * hs[t * N + n] + dt * at(in.B, {b, t, n}) * x;
      }
      std::vector<double> gh(N, 0.0);  // ∂L/∂h_t from later steps
      for (int64_t t = L - 1; t >= 0; --t) {
        const double dt = at(in.delta, {b, t, d}), x = at(in.x, {b, t, d});
        const int64_t o = (b * L + t) * Dc + d;
        double gy = at(dout, {b, t, d});
        if (given(in.z)) {
          double y = given(in.D) ? at(in.D, {d}) * x : 0.0;
          for (int64_t n = 0; n < N; ++n) y += at(in.C, {b, t, n}) * hs[(t + 1) * N + n];
          const double z = at(in.z, {b, t, d}), s = sigmoid(z);
          g.dz[o] = gy * y * s * (1 + z * (1 - s));
          gy *= z * s;
        }
        if (given(in.D)) {
          g.dD[d] += gy * x;
          g.dx[o] += gy * at(in.D, {d});
        }
        for (int64_t n = 0; n < N; ++n) {
          const double a_n = at(in.A, {d, n}), da = std::exp(dt * a_n);
          gh[n] += gy * at(in.C, {b, t, n});
          g.dC[(b * L + t) * N + n] += gy * hs[(t + 1) * N + n];
          // h_t = exp(Δ A) h_{t−1} + Δ B x
          const double hp = hs[t * N + n];
          g.ddelta[o] += gh[n] * (da * a_n * hp + at(in.B, {b, t, n}) * x);
          g.dA[d * N + n] += gh[n] * da * dt * hp;
          g.dB[(b * L + t) * N + n] += gh[n] * dt * x;
          g.dx[o] += gh[n] * dt * at(in.B, {b, t, n});
          gh[n] *= da;
        }
      }
    }
  }
  return g;
}

std::vector<double> wkv4_forward(const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v) {
  const int64_t B = k.shape[0], T = k.shape[1], C = k.shape[2];
  std::vector<double> y(B * T * C);
  std::vector<double> e(T);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      const double wc = at(w, {c}), uc = at(u, {c});
      for (int64_t t = 0; t < T; ++t) {
        // exponents of the terms: −(t−1−i)w + k_i for i < t, u + k_t for i = t
        double m = -INFINITY;
        for (int64_t i = 0; i <= t; ++i) {
          e[i] = i < t ? -(t - 1 - i) * wc + at(k, {b, i, c}) : uc + at(k, {b, t, c});
          m = std::max(m, e[i]);
        }
        double num = 0, den = 0;
        for (int64_t i = 0; i <= t; ++i) {
          const double a = std::exp(e[i] - m);
          num += a * at(v, {b, i, c});
          den += a;
        }
        y[(b * T + t) * C + c] = num / den;
      }
    }
  }
  return y;
}

Wkv4GradsRef wkv4_backward(const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
                           const TensorView& dy) {
  const int64_t B = k.shape[0], T = k.shape[1], C = k.shape[2];
  Wkv4GradsRef g;
  g.dw.assign(C, 0.0);
  g.du.assign(C, 0.0);
  g.dw_terms.assign(C, 0.0);
  g.du_terms.assign(C, 0.0);
  g.dk.assign(B * T * C, 0.0);
  g.dv.assign(B * T * C, 0.0);
  std::vector<double> e(T), p(T);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      const double wc = at(w, {c}), uc = at(u, {c});
      for (int64_t t = 0; t < T; ++t) {
        double m = -INFINITY;
        for (int64_t i = 0; i <= t; ++i) {
          e[i] = i < t ? -(t - 1 - i) * wc + at(k, {b, i, c}) : uc + at(k, {b, t, c});
          m = std::max(m, e[i]);
        }
        double den = 0, y = 0;
        for (int64_t i = 0; i <= t; ++i) den += p[i] = std::exp(e[i] - m);
        for (int64_t i = 0; i <= t; ++i) y += (p[i] /= den) * at(v, {b, i, c});
        // y = Σ p_i v_i with p = softmax(e):  ∂y/∂v_i = p_i,  ∂y/∂e_i = p_i (v_i − y)
        const double gy = at(dy, {b, t, c});
        for (int64_t i = 0; i <= t; ++i) {
          g.dv[(b * T + i) * C + c] += gy * p[i];
          const double ge = gy * p[i] * (at(v, {b, i, c}) - y);
          g.dk[(b * T + i) * C + c] += ge;
          if (i < t) {
            g.dw[c] -= ge * (t - 1 - i);
            g.dw_terms[c] += std::abs(ge * (t - 1 - i));
          } else {
            g.du[c] += ge;
            g.du_terms[c] += std::abs(ge);
          }
        }
      }
    }
  }
  return g;
}

std::vector<double> wkv6_forward(const TensorView& r, const TensorView& k, const TensorView& v, const TensorView& w,
                                 const TensorView& u) {
  const int64_t B = k.shape[0], T = k.shape[1], H = k.shape[2], K = k.shape[3];
  std::vector<double> y(B * T * H * K, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> S(K * K, 0.0);
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t i = 0; i < K; ++i) {
          const double ri = at(r, {b, t, h, i}), ki = at(k, {b, t, h, i}), ui = at(u, {h, i});
          const double di = std::exp(-std::exp(at(w, {b, t, h, i})));
          for (int64_t j = 0; j < K; ++j) {
            const double kv = ki * at(v, {b, t, h, j});
            y[((b * T + t) * H + h) * K + j] += ri * (S[i * K + j] + ui * kv);
            S[i * K + j] = di * S[i * K + j] + kv;
          }
        }
      }
    }
  }
  return y;
}

Wkv6GradsRef wkv6_backward(const TensorView& r, const TensorView& k, const TensorView& v, const TensorView& w,
                           const TensorView& u, const TensorView& dy) {
  const int64_t B = k.shape[0], T = k.shape[1], H = k.shape[2], K = k.shape[3];
  Wkv6GradsRef g;
  for (auto* x : {&g.dr, &g.dk, &g.dv, &g.dw}) x->assign(B * T * H * K, 0.0);
  g.du.assign(H * K, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> Ss((T + 1) * K * K, 0.0);  // Ss[t + 1] = S_t
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t i = 0; i < K; ++i) {
          const double di = std::exp(-std::exp(at(w, {b, t, h, i})));
          for (int64_t j = 0; j < K; ++j)
            Ss[(t + 1) * K * K + i * K + j] =
                di * Ss[t * K * K + i * K + j] + at(k, {b, t, h, i}) * at(v, {b, t, h, j});
        }
      }
      std::vector<double> dS(K * K, 0.0);  // ∂L/∂S_t
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t o = ((b * T + t) * H + h) * K;
        const double* Sp = &Ss[t * K * K];
        for (int64_t i = 0; i < K; ++i) {
          const double ri = at(r, {b, t, h, i}), ki = at(k, {b, t, h, i}), ui = at(u, {h, i});
          const double wi = at(w, {b, t, h, i}), di = std::exp(-std::exp(wi));
          for (int64_t j = 0; j < K; ++j) {
            const double gyj = at(dy, {b, t, h, j}), vj = at(v, {b, t, h, j});
            // y_j += r_i (S_{t−1}[i][j] + u_i k_i v_j)
            g.dr[o + i] += gyj * (Sp[i * K + j] + ui * ki * vj);
            g.dk[o + i] += ri * ui * vj * gyj + dS[i * K + j] * vj;
            g.dv[o + j] += ri * ui * ki * gyj + dS[i * K + j] * ki;
            g.du[h * K + i] += ri * ki * vj * gyj;
            // S_t[i][j] = d_i S_{t−1}[i][j] + k_i v_j,  d_i = exp(−exp(w_i))
            g.dw[o + i] += dS[i * K + j] * Sp[i * K + j] * (-di * std::exp(wi));
            dS[i * K + j] = di * dS[i * K + j] + ri * gyj;
          }
        }
      }
    }
  }
  return g;
}

}  // namespace attnkit::ref
