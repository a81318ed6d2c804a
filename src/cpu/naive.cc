// Naive attention on the CPU: the quadratic-memory baseline. Per (sequence, head) it
// materializes the whole score matrix with BLAS GEMMs, so that the O(N²) story is told against
// a fast implementation, not a slow one.
//   forward : S = Q Kᵀ (sgemm)  →  P = softmax(scale · S) row by row  →  O = P V (sgemm)
// A sparse mask is applied to each row of S as an element mask (dropped pairs become −inf).
//   backward: dP = dO Vᵀ, dS = P ∘ (dP − δ) · scale, dV += Pᵀ dO, dQ = dS K, dK += dSᵀ Q
// Buffers per (sequence, head): S, P : [nq][nk] f32, two of them in the backward pass.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/naive.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attnkit/mask.h"
#include "core/thread_pool.h"
#include "cpu/kernels.h"
#include "cpu/pack-inl.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Logits of row i in place: scale, softcap, causal mask. Returns the row's visible key count.
int64_t RowLogits(float* HWY_RESTRICT s, int64_t nk, int64_t visible, float scale, float softcap) {
  const hn::ScalableTag<float> df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  const auto vs = hn::Set(df, scale);
  int64_t j = 0;
  for (; j + L <= visible; j += L) {
    auto x = hn::Mul(hn::LoadU(df, s + j), vs);
    if (softcap > 0) x = hn::Mul(hn::Set(df, softcap), hn::Tanh(df, hn::Mul(x, hn::Set(df, 1.0f / softcap))));
    hn::StoreU(x, df, s + j);
  }
  for (; j < visible; ++j) s[j] = softcap > 0 ? softcap * std::tanh(s[j] * scale / softcap) : s[j] * scale;
  for (; j < nk; ++j) s[j] = kNegInf;
  return visible;
}

// Row softmax of logits in place; returns the log-sum-exp (−inf for an empty row, which is 0).
float RowSoftmax(float* HWY_RESTRICT s, int64_t visible, int64_t nk) {
  if (visible == 0) {
    std::fill(s, s + nk, 0.0f);
    return kNegInf;
  }
  const hn::ScalableTag<float> df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  float m = kNegInf;
  for (int64_t j = 0; j < visible; ++j) m = std::max(m, s[j]);
  if (m == kNegInf) {  // every visible key dropped by a sparse mask
    std::fill(s, s + nk, 0.0f);
    return kNegInf;
  }
  const auto vm = hn::Set(df, m);
  auto acc = hn::Zero(df);
  int64_t j = 0;
  for (; j + L <= visible; j += L) {
    const auto e = hn::Exp(df, hn::Sub(hn::LoadU(df, s + j), vm));
    hn::StoreU(e, df, s + j);
    acc = hn::Add(acc, e);
  }
  float sum = hn::GetLane(hn::SumOfLanes(df, acc));
  for (; j < visible; ++j) sum += s[j] = std::exp(s[j] - m);
  const float inv = 1.0f / sum;
  for (j = 0; j < visible; ++j) s[j] *= inv;
  std::fill(s + visible, s + nk, 0.0f);
  return m + std::log(sum);
}

// Copies rows [0, n) of head h of a BSHD view into dst : [n][D] f32.
void Gather(const TensorView& t, const Sequence& sq, int64_t row0, int64_t n, int64_t h, int64_t D, float* dst) {
  for (int64_t r = 0; r < n; ++r) LoadRowF32(t, offset4(t, sq.batch, row0 + r, h, 0), t.strides[3], D, D, dst + r * D);
}

void Scatter(const float* src, int64_t n, int64_t D, const TensorView& t, const Sequence& sq, int64_t row0, int64_t h) {
  for (int64_t r = 0; r < n; ++r)
    for (int64_t d = 0; d < D; ++d) store_f32(t, offset4(t, sq.batch, row0 + r, h, d), src[r * D + d]);
}

int64_t Visible(const Problem& pr, const Sequence& sq, int64_t i) {
  return pr.causal ? std::clamp<int64_t>(Problem::causal_end(i, sq.nq, sq.nk), 0, sq.nk) : sq.nk;
}

// A sparse mask on logits row i of head h: dropped keys among the first `visible` become −inf.
void MaskRow(const Problem& pr, int64_t si, const Sequence& sq, int64_t h, int64_t i, int64_t visible, float* row) {
  if (pr.mask == nullptr || visible == 0) return;
  std::vector<uint8_t> keep(static_cast<size_t>(visible));
  pr.mask->fill(si, h, sq.nq, sq.nk, i, 0, visible, 1, keep.data(), 1);
  for (int64_t j = 0; j < visible; ++j)
    if (!keep[j]) row[j] = kNegInf;
}

}  // namespace

void NaiveForward(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& out, const TensorView& lse) {
  const int64_t D = pr.head_dim;
  ThreadPool& tp = pool();
  for (size_t si = 0; si < pr.seqs.size(); ++si) {
    const Sequence& sq = pr.seqs[si];
    if (sq.nq == 0) continue;
    std::vector<float> qh(sq.nq * D), kh(sq.nk * D), vh(sq.nk * D), oh(sq.nq * D), s(sq.nq * sq.nk);
    std::vector<float> row_lse(sq.nq);
    for (int64_t h = 0; h < pr.heads_q; ++h) {
      const int64_t hk = h / pr.group();
      Gather(q, sq, sq.q0, sq.nq, h, D, qh.data());
      Gather(k, sq, sq.k0, sq.nk, hk, D, kh.data());
      Gather(v, sq, sq.k0, sq.nk, hk, D, vh.data());
      if (sq.nk > 0) {  // S = Q Kᵀ : [nq][nk]
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, sq.nq, sq.nk, D, 1.0f, qh.data(), D, kh.data(), D, 0.0f,
                    s.data(), sq.nk);
      }
      tp.parallel_for(sq.nq, [&](int64_t i, int) {
        float* row = s.data() + i * sq.nk;
        const int64_t vis = RowLogits(row, sq.nk, Visible(pr, sq, i), pr.scale, pr.softcap);
        MaskRow(pr, static_cast<int64_t>(si), sq, h, i, vis, row);
        row_lse[i] = RowSoftmax(row, vis, sq.nk);
      });
      if (sq.nk > 0) {  // O = P V : [nq][D]
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, sq.nq, D, sq.nk, 1.0f, s.data(), sq.nk, vh.data(), D,
                    0.0f, oh.data(), D);
      } else {
        std::fill(oh.begin(), oh.end(), 0.0f);
      }
      Scatter(oh.data(), sq.nq, D, out, sq, sq.q0, h);
      if (!lse.empty()) {
        for (int64_t i = 0; i < sq.nq; ++i) static_cast<float*>(lse.data)[offset3(lse, sq.batch, h, sq.q0 + i)] = row_lse[i];
      }
    }
  }
}

void NaiveBackward(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                   const TensorView& out, const TensorView& dout, const TensorView& lse, const TensorView& dq,
                   const TensorView& dk, const TensorView& dv) {
  const int64_t D = pr.head_dim;
  ThreadPool& tp = pool();
  for (size_t si = 0; si < pr.seqs.size(); ++si) {
    const Sequence& sq = pr.seqs[si];
    const int64_t nq = sq.nq, nk = sq.nk;
    std::vector<float> qh(nq * D), kh(nk * D), vh(nk * D), oh(nq * D), doh(nq * D), dqh(nq * D);
    std::vector<float> dkh(nk * D), dvh(nk * D), p(nq * nk), dp(nq * nk);
    for (int64_t hk = 0; hk < pr.heads_kv; ++hk) {
      Gather(k, sq, sq.k0, nk, hk, D, kh.data());
      Gather(v, sq, sq.k0, nk, hk, D, vh.data());
      std::fill(dkh.begin(), dkh.end(), 0.0f);
      std::fill(dvh.begin(), dvh.end(), 0.0f);
      for (int64_t h = hk * pr.group(); h < (hk + 1) * pr.group(); ++h) {
        if (nq == 0) continue;
        Gather(q, sq, sq.q0, nq, h, D, qh.data());
        Gather(out, sq, sq.q0, nq, h, D, oh.data());
        Gather(dout, sq, sq.q0, nq, h, D, doh.data());
        std::fill(dqh.begin(), dqh.end(), 0.0f);
        if (nk > 0) {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, D, 1.0f, qh.data(), D, kh.data(), D, 0.0f,
                      p.data(), nk);
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, D, 1.0f, doh.data(), D, vh.data(), D, 0.0f,
                      dp.data(), nk);
          // P = exp(logits − lse);  dS = P ∘ (dP − δ) ∘ ∂softcap · scale, into dp.
          tp.parallel_for(nq, [&](int64_t i, int) {
            float* pr_row = p.data() + i * nk;
            float* dp_row = dp.data() + i * nk;
            const int64_t vis = RowLogits(pr_row, nk, Visible(pr, sq, i), pr.scale, pr.softcap);
            MaskRow(pr, static_cast<int64_t>(si), sq, h, i, vis, pr_row);
            const float row_lse = static_cast<const float*>(lse.data)[offset3(lse, sq.batch, h, sq.q0 + i)];
            float delta = 0;
            for (int64_t d = 0; d < D; ++d) delta += oh[i * D + d] * doh[i * D + d];
            for (int64_t j = 0; j < nk; ++j) {
              const float pij = j < vis && row_lse > kNegInf ? std::exp(pr_row[j] - row_lse) : 0.0f;
              const float g = pr.softcap > 0 ? 1.0f - (pr_row[j] / pr.softcap) * (pr_row[j] / pr.softcap) : 1.0f;
              dp_row[j] = j < vis && pij != 0.0f ? pij * (dp_row[j] - delta) * g * pr.scale : 0.0f;
              pr_row[j] = pij;
            }
          });
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, D, nq, 1.0f, p.data(), nk, doh.data(), D, 1.0f,
                      dvh.data(), D);
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, D, nk, 1.0f, dp.data(), nk, kh.data(), D, 0.0f,
                      dqh.data(), D);
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, D, nq, 1.0f, dp.data(), nk, qh.data(), D, 1.0f,
                      dkh.data(), D);
        }
        Scatter(dqh.data(), nq, D, dq, sq, sq.q0, h);
      }
      Scatter(dkh.data(), nk, D, dk, sq, sq.k0, hk);
      Scatter(dvh.data(), nk, D, dv, sq, sq.k0, hk);
    }
  }
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {
HWY_EXPORT(NaiveForward);
HWY_EXPORT(NaiveBackward);
void naive_fwd(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& lse) {
  HWY_DYNAMIC_DISPATCH(NaiveForward)(pr, q, k, v, out, lse);
}
void naive_bwd(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& dout, const TensorView& lse, const TensorView& dq,
               const TensorView& dk, const TensorView& dv) {
  HWY_DYNAMIC_DISPATCH(NaiveBackward)(pr, q, k, v, out, dout, lse, dq, dk, dv);
}
}  // namespace attnkit::cpu
#endif
