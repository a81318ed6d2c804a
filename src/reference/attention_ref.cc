// float64 reference attention (see attention_ref.h).
//
//   s_ij  = scale · q_i · k_j            (softcap c > 0: s_ij = c · tanh(s_ij / c))
//   lse_i = log Σ_j exp(s_ij)            over the kept keys j
//   o_i   = Σ_j exp(s_ij − lse_i) v_j
// Backward, with P_ij = exp(s_ij − lse_i) and δ_i = Σ_j P_ij (do_i · v_j):
//   dv_j += P_ij do_i
//   ds_ij = P_ij (do_i · v_j − δ_i) · ∂s/∂(q·k)
//   dq_i += ds_ij k_j,   dk_j += ds_ij q_i
#include "reference/attention_ref.h"

#include <cmath>
#include <limits>

namespace attnkit::ref {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// One sequence and query head: the kept keys of row i and their scores.
struct RowScores {
  std::vector<int64_t> keys;
  std::vector<double> s;      // final logits
  std::vector<double> dsraw;  // d s / d (scale · q·k): 1, or 1 − tanh² with softcap
};

double at(const TensorView& t, int64_t b, int64_t s, int64_t h, int64_t d) {
  return load_f32(t, offset4(t, b, s, h, d));
}

RowScores row_scores(const Problem& pr, const Sequence& sq, int64_t si, int64_t h, int64_t i, const TensorView& q,
                     const TensorView& k, const KeepFn& keep) {
  RowScores r;
  const int64_t hk = h / pr.group();
  for (int64_t j = 0; j < sq.nk; ++j) {
    if (pr.causal && j >= Problem::causal_end(i, sq.nq, sq.nk)) continue;
    if (keep && !keep(si, h, i, j)) continue;
    double dot = 0;
    for (int64_t d = 0; d < pr.head_dim; ++d) {
      dot += at(q, sq.batch, sq.q0 + i, h, d) * at(k, sq.batch, sq.k0 + j, hk, d);
    }
    double s = pr.scale * dot, g = 1.0;
    if (pr.softcap > 0) {
      const double t = std::tanh(s / pr.softcap);
      s = pr.softcap * t;
      g = 1.0 - t * t;
    }
    r.keys.push_back(j);
    r.s.push_back(s);
    r.dsraw.push_back(g);
  }
  return r;
}

double log_sum_exp(const std::vector<double>& s) {
  if (s.empty()) return -kInf;
  double m = -kInf;
  for (double x : s) m = std::max(m, x);
  double sum = 0;
  for (double x : s) sum += std::exp(x - m);
  return m + std::log(sum);
}

}  // namespace

ForwardResult forward(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                      const KeepFn& keep) {
  const int64_t D = pr.head_dim, H = pr.heads_q;
  ForwardResult r;
  r.out.assign(pr.batch * pr.seq_q * H * D, kNaN);
  r.lse.assign(pr.batch * H * pr.seq_q, kNaN);
  for (size_t si = 0; si < pr.seqs.size(); ++si) {
    const Sequence& sq = pr.seqs[si];
    for (int64_t h = 0; h < H; ++h) {
      const int64_t hk = h / pr.group();
      for (int64_t i = 0; i < sq.nq; ++i) {
        const RowScores rs = row_scores(pr, sq, si, h, i, q, k, keep);
        const double lse = log_sum_exp(rs.s);
        double* o = &r.out[((sq.batch * pr.seq_q + sq.q0 + i) * H + h) * D];
        for (int64_t d = 0; d < D; ++d) o[d] = 0;
        for (size_t t = 0; t < rs.keys.size(); ++t) {
          const double p = std::exp(rs.s[t] - lse);
          for (int64_t d = 0; d < D; ++d) o[d] += p * at(v, sq.batch, sq.k0 + rs.keys[t], hk, d);
        }
        r.lse[(sq.batch * H + h) * pr.seq_q + sq.q0 + i] = lse;
      }
    }
  }
  return r;
}

BackwardResult backward(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& dout, const KeepFn& keep) {
  const int64_t D = pr.head_dim, H = pr.heads_q, Hk = pr.heads_kv;
  BackwardResult r;
  r.dq.assign(pr.batch * pr.seq_q * H * D, kNaN);
  r.dk.assign(pr.batch * pr.seq_k * Hk * D, kNaN);
  r.dv.assign(pr.batch * pr.seq_k * Hk * D, kNaN);
  // Rows that belong to a sequence start at zero; the rest stay NaN.
  for (const Sequence& sq : pr.seqs) {
    for (int64_t i = 0; i < sq.nq; ++i)
      for (int64_t x = 0; x < H * D; ++x) r.dq[(sq.batch * pr.seq_q + sq.q0 + i) * H * D + x] = 0;
    for (int64_t j = 0; j < sq.nk; ++j)
      for (int64_t x = 0; x < Hk * D; ++x) {
        r.dk[(sq.batch * pr.seq_k + sq.k0 + j) * Hk * D + x] = 0;
        r.dv[(sq.batch * pr.seq_k + sq.k0 + j) * Hk * D + x] = 0;
      }
  }
  for (size_t si = 0; si < pr.seqs.size(); ++si) {
    const Sequence& sq = pr.seqs[si];
    for (int64_t h = 0; h < H; ++h) {
      const int64_t hk = h / pr.group();
      for (int64_t i = 0; i < sq.nq; ++i) {
        const RowScores rs = row_scores(pr, sq, si, h, i, q, k, keep);
        const double lse = log_sum_exp(rs.s);
        const int64_t n = static_cast<int64_t>(rs.keys.size());
        std::vector<double> p(n), dp(n);
        double delta = 0;
        for (int64_t t = 0; t < n; ++t) {
          p[t] = std::exp(rs.s[t] - lse);
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) {
            dot += at(dout, sq.batch, sq.q0 + i, h, d) * at(v, sq.batch, sq.k0 + rs.keys[t], hk, d);
          }
          dp[t] = dot;
          delta += p[t] * dot;
        }
        double* dq = &r.dq[((sq.batch * pr.seq_q + sq.q0 + i) * H + h) * D];
        for (int64_t t = 0; t < n; ++t) {
          const int64_t j = sq.k0 + rs.keys[t];
          double* dk = &r.dk[((sq.batch * pr.seq_k + j) * Hk + hk) * D];
          double* dv = &r.dv[((sq.batch * pr.seq_k + j) * Hk + hk) * D];
          const double ds = p[t] * (dp[t] - delta) * rs.dsraw[t] * pr.scale;
          for (int64_t d = 0; d < D; ++d) {
            dv[d] += p[t] * at(dout, sq.batch, sq.q0 + i, h, d);
            dq[d] += ds * at(k, sq.batch, j, hk, d);
            dk[d] += ds * at(q, sq.batch, sq.q0 + i, h, d);
          }
        }
      }
    }
  }
  return r;
}

void store(const std::vector<double>& src, const TensorView& dst) {
  // src is dense in dst's logical shape; rows left NaN (outside every sequence) are skipped.
  std::array<int64_t, TensorView::kMaxDims> idx{};
  for (size_t n = 0; n < src.size(); ++n) {
    int64_t off = 0;
    for (int i = 0; i < dst.ndim; ++i) off += idx[i] * dst.strides[i];
    if (!std::isnan(src[n])) store_f32(dst, off, static_cast<float>(src[n]));
    for (int i = dst.ndim - 1; i >= 0; --i) {
      if (++idx[i] < dst.shape[i]) break;
      idx[i] = 0;
    }
  }
}

}  // namespace attnkit::ref
