// float64 reference for linear attention (see linear_ref.h).
#include "reference/linear_ref.h"

#include <cmath>

#include "core/problem.h"

namespace attnkit::ref {
namespace {

struct Shape {
  int64_t B, Nq, Nk, Hq, Hkv, D;
};
Shape shape_of(const TensorView& q, const TensorView& k) {
  return {q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3]};
}

double xscale_of(const LinearAttentionParams& p, int64_t D) {
  return std::sqrt(p.scale ? static_cast<double>(*p.scale) : 1.0 / std::sqrt(static_cast<double>(D)));
}

std::vector<double> row(const TensorView& t, int64_t b, int64_t s, int64_t h) {
  std::vector<double> x(t.shape[3]);
  for (int64_t d = 0; d < t.shape[3]; ++d) x[d] = load_f32(t, offset4(t, b, s, h, d));
  return x;
}

// dx from dφ for one row.
std::vector<double> feature_grad(const LinearAttentionParams& p, const std::vector<double>& x,
                                 const std::vector<double>& dphi) {
  const int64_t D = static_cast<int64_t>(x.size());
  std::vector<double> dx(D, 0.0);
  if (p.feature_map == FeatureMap::favor_plus) {
    const std::vector<double> phi = linear_features(p, x);
    const double c = xscale_of(p, D);
    const std::vector<float>& w = p.features->matrix();
    for (size_t f = 0; f < phi.size(); ++f) {
      const double g = dphi[f] * phi[f];
      for (int64_t d = 0; d < D; ++d) dx[d] += g * (w[f * D + d] - c * x[d]) * c;
    }
    return dx;
  }
  for (int64_t d = 0; d < D; ++d) {
    const double deriv = x[d] > 0 ? 1.0 : (p.feature_map == FeatureMap::relu ? 0.0 : std::exp(x[d]));
    dx[d] = dphi[d] * deriv;
  }
  return dx;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

std::vector<double> linear_features(const LinearAttentionParams& p, const std::vector<double>& x) {
  const int64_t D = static_cast<int64_t>(x.size());
  if (p.feature_map == FeatureMap::elu_plus_one) {
    std::vector<double> phi(D);
    for (int64_t d = 0; d < D; ++d) phi[d] = x[d] > 0 ? x[d] + 1.0 : std::exp(x[d]);
    return phi;
  }
  if (p.feature_map == FeatureMap::relu) {
    std::vector<double> phi(D);
    for (int64_t d = 0; d < D; ++d) phi[d] = x[d] > 0 ? x[d] : 0.0;
    return phi;
  }
  const int64_t m = p.features->num_features();
  const std::vector<float>& w = p.features->matrix();
  const double c = xscale_of(p, D);
  double sq = 0;
  for (int64_t d = 0; d < D; ++d) sq += c * x[d] * c * x[d];
  std::vector<double> phi(m);
  for (int64_t f = 0; f < m; ++f) {
    double proj = 0;
    for (int64_t d = 0; d < D; ++d) proj += static_cast<double>(w[f * D + d]) * c * x[d];
    phi[f] = std::exp(proj - 0.5 * sq) / std::sqrt(static_cast<double>(m));
  }
  return phi;
}

std::vector<double> linear_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                                   const LinearAttentionParams& p) {
  const Shape s = shape_of(q, k);
  const int64_t G = s.Hq / s.Hkv;
  std::vector<double> out(s.B * s.Nq * s.Hq * s.D);
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t h = 0; h < s.Hq; ++h) {
      std::vector<std::vector<double>> phk(s.Nk), vs(s.Nk);
      for (int64_t j = 0; j < s.Nk; ++j) {
        phk[j] = linear_features(p, row(k, b, j, h / G));
        vs[j] = row(v, b, j, h / G);
      }
      for (int64_t i = 0; i < s.Nq; ++i) {
        const std::vector<double> phq = linear_features(p, row(q, b, i, h));
        const int64_t end = p.causal ? i + 1 : s.Nk;
        std::vector<double> num(s.D, 0.0);
        double den = p.eps;
        for (int64_t j = 0; j < end; ++j) {
          const double a = dot(phq, phk[j]);
          den += a;
          for (int64_t d = 0; d < s.D; ++d) num[d] += a * vs[j][d];
        }
        for (int64_t d = 0; d < s.D; ++d) out[((b * s.Nq + i) * s.Hq + h) * s.D + d] = num[d] / den;
      }
    }
  }
  return out;
}

LinearGrads linear_backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
                            const LinearAttentionParams& p) {
  const Shape s = shape_of(q, k);
  const int64_t G = s.Hq / s.Hkv;
  LinearGrads g;
  g.dq.assign(s.B * s.Nq * s.Hq * s.D, 0.0);
  g.dk.assign(s.B * s.Nk * s.Hkv * s.D, 0.0);
  g.dv.assign(s.B * s.Nk * s.Hkv * s.D, 0.0);
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t h = 0; h < s.Hq; ++h) {
      const int64_t hk = h / G;
      std::vector<std::vector<double>> xk(s.Nk), phk(s.Nk), vs(s.Nk), dphk(s.Nk);
      for (int64_t j = 0; j < s.Nk; ++j) {
        xk[j] = row(k, b, j, hk);
        phk[j] = linear_features(p, xk[j]);
        vs[j] = row(v, b, j, hk);
        dphk[j].assign(phk[j].size(), 0.0);
      }
      for (int64_t i = 0; i < s.Nq; ++i) {
        const std::vector<double> xq = row(q, b, i, h), phq = linear_features(p, xq), go = row(dout, b, i, h);
        const int64_t end = p.causal ? i + 1 : s.Nk;
        std::vector<double> num(s.D, 0.0), a(end);
        double den = p.eps;
        for (int64_t j = 0; j < end; ++j) {
          a[j] = dot(phq, phk[j]);
          den += a[j];
          for (int64_t d = 0; d < s.D; ++d) num[d] += a[j] * vs[j][d];
        }
        // out = num / den:  d num = dout / den,  d den = −dout·num / den²
        const double dden = -dot(go, num) / (den * den);
        std::vector<double> dphq(phq.size(), 0.0);
        for (int64_t j = 0; j < end; ++j) {
          const double da = dot(go, vs[j]) / den + dden;
          for (size_t f = 0; f < phq.size(); ++f) {
            dphq[f] += da * phk[j][f];
            dphk[j][f] += da * phq[f];
          }
          for (int64_t d = 0; d < s.D; ++d) g.dv[((b * s.Nk + j) * s.Hkv + hk) * s.D + d] += a[j] * go[d] / den;
        }
        const std::vector<double> dx = feature_grad(p, xq, dphq);
        for (int64_t d = 0; d < s.D; ++d) g.dq[((b * s.Nq + i) * s.Hq + h) * s.D + d] = dx[d];
      }
      for (int64_t j = 0; j < s.Nk; ++j) {
        const std::vector<double> dx = feature_grad(p, xk[j], dphk[j]);
        for (int64_t d = 0; d < s.D; ++d) g.dk[((b * s.Nk + j) * s.Hkv + hk) * s.D + d] += dx[d];
      }
    }
  }
  return g;
}

}  // namespace attnkit::ref
