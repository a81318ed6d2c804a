// Flash attention backward on the CPU (FlashAttention-2, Dao 2023, Algorithm 2): probabilities
// are recomputed tile by tile from the forward's LSE, so no Nq×Nk matrix is ever stored.
//
// Per sequence, the inputs are first packed to f32 with padded rows (Dp = D rounded up to 32):
//   qt, dot : [Hq][Dp][Nqp]   transposed (qt also multiplied by scale · log2e: base-2 logits)
//   qp, dop : [Hq][Nq][Dp]    kp, vp : [Hkv][Nk][Dp]
//   lse, delta : [Hq][Nqp]    lse in base 2; delta_i = do_i · o_i
// Work items are (KV head, key tile of kBk). An item owns its dK, dV tile and walks the query
// tiles of every query head in its group that see it (all; those past the diagonal when causal;
// a sparse mask's BlockLayout, by key block), masking partial tiles as the forward does:
//   st  = K_t · qtᵀ          P = 2^(st − lse)              (keys × queries)
//   dpt = V_t · dotᵀ         dS = P ∘ (dpt − delta) · scale
//   dV_t += P · dO_tile      dK_t += dS · Q_tile           dQ_tile += dSᵀ · K_t
// dQ is summed in one f32 buffer per thread and reduced at the end, so no two threads ever
// write the same memory. Extra memory: O(N · H · D).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/flash_bwd.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "core/mask_plan.h"
#include "core/thread_pool.h"
#include "cpu/gemm_tile-inl.h"
#include "cpu/kernels.h"
#include "cpu/pack-inl.h"
#include "cpu/softmax-inl.h"
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace {

constexpr int64_t kBq = 64;
constexpr int64_t kBk = 64;
constexpr float kInf = std::numeric_limits<float>::infinity();

using Buffer = hwy::AlignedFreeUniquePtr<float[]>;
Buffer Allocate(int64_t n) { return hwy::AllocateAligned<float>(static_cast<size_t>(std::max<int64_t>(n, 1))); }

// One sequence's inputs in the packed layouts above.
struct Packed {
  int64_t nq, nk, nqp, Dp;
  Buffer qt, dot, qp, dop, kp, vp, lse, delta;
};

Packed Pack(const Problem& pr, const Sequence& sq, const TensorView& q, const TensorView& k, const TensorView& v,
            const TensorView& out, const TensorView& dout, const TensorView& lse) {
  const int64_t D = pr.head_dim, Dp = pad_cols(D), Hq = pr.heads_q, Hk = pr.heads_kv;
  Packed p;
  p.nq = sq.nq;
  p.nk = sq.nk;
  p.nqp = (sq.nq + kBq - 1) / kBq * kBq;
  p.Dp = Dp;
  const int64_t nqp = p.nqp;
  p.qt = Allocate(Hq * Dp * nqp);
  p.dot = Allocate(Hq * Dp * nqp);
  p.qp = Allocate(Hq * nqp * Dp);
  p.dop = Allocate(Hq * nqp * Dp);
  p.kp = Allocate(Hk * sq.nk * Dp);
  p.vp = Allocate(Hk * sq.nk * Dp);
  p.lse = Allocate(Hq * nqp);
  p.delta = Allocate(Hq * nqp);
  ThreadPool& tp = pool();
  tp.parallel_for(Hq, [&](int64_t h, int) {
    float* qt = p.qt.get() + h * Dp * nqp;
    float* dot = p.dot.get() + h * Dp * nqp;
    float* qp = p.qp.get() + h * nqp * Dp;
    float* dop = p.dop.get() + h * nqp * Dp;
    std::vector<float> orow(Dp);
    for (int64_t i = 0; i < nqp; ++i) {
      float* qi = qp + i * Dp;
      float* di = dop + i * Dp;
      float delta = 0, row_lse = kInf;  // padded queries: P = exp(s − inf) = 0
      if (i < sq.nq) {
        const int64_t row = sq.q0 + i;
        LoadRowF32(q, offset4(q, sq.batch, row, h, 0), q.strides[3], D, Dp, qi);
        LoadRowF32(dout, offset4(dout, sq.batch, row, h, 0), dout.strides[3], D, Dp, di);
        LoadRowF32(out, offset4(out, sq.batch, row, h, 0), out.strides[3], D, Dp, orow.data());
        for (int64_t d = 0; d < D; ++d) delta += orow[d] * di[d];
        const float l = static_cast<const float*>(lse.data)[offset3(lse, sq.batch, h, row)];
        row_lse = l == -kInf ? kInf : l * kLog2e;  // a fully masked row has P = 0 everywhere
      } else {
        std::fill(qi, qi + Dp, 0.0f);
        std::fill(di, di + Dp, 0.0f);
      }
      p.lse[h * nqp + i] = row_lse;
      p.delta[h * nqp + i] = delta;
      for (int64_t d = 0; d < Dp; ++d) {
        qt[d * nqp + i] = pr.scale * kLog2e * qi[d];
        dot[d * nqp + i] = di[d];
      }
    }
  });
  tp.parallel_for(Hk, [&](int64_t hk, int) {
    for (int64_t j = 0; j < sq.nk; ++j) {
      const int64_t row = sq.k0 + j;
      LoadRowF32(k, offset4(k, sq.batch, row, hk, 0), k.strides[3], D, Dp, p.kp.get() + (hk * sq.nk + j) * Dp);
      LoadRowF32(v, offset4(v, sq.batch, row, hk, 0), v.strides[3], D, Dp, p.vp.get() + (hk * sq.nk + j) * Dp);
    }
  });
  return p;
}

struct BwdScratch {
  Buffer mem;
  hwy::AlignedFreeUniquePtr<uint8_t[]> keep_mem;
  float *st, *dpt, *dk, *dv;
  uint8_t* keep;  // [kBk][kBq] element mask of a partial tile
  explicit BwdScratch(int64_t Dp)
      : mem(hwy::AllocateAligned<float>(2 * kBk * kBq + 2 * kBk * Dp)), keep_mem(hwy::AllocateAligned<uint8_t>(kBk * kBq)) {
    st = mem.get();        // [kBk][kBq]
    dpt = st + kBk * kBq;  // [kBk][kBq]
    dk = dpt + kBk * kBq;  // [kBk][Dp]
    dv = dk + kBk * Dp;    // [kBk][Dp]
    keep = keep_mem.get();
  }
};

// How a (key tile, query tile) pair is masked; see flash_fwd.cc.
enum class TileKind : uint8_t { full, causal, masked };

// P = 2^(st − lse) and dS = P ∘ (dpt − delta) ∘ ∂softcap · scale, in place (st ← P, dpt ← dS).
// softcap arrives in base-2 units, so st / softcap is the tanh of the capped logit.
HWY_INLINE void ProbsAndGrads(float* HWY_RESTRICT st, float* HWY_RESTRICT dpt, int64_t rows, const float* lse,
                              const float* delta, float scale, float softcap) {
  const hn::ScalableTag<float> df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  const auto vscale = hn::Set(df, scale);
  const auto inv_cap = hn::Set(df, softcap > 0 ? 1.0f / softcap : 0.0f);
  const auto one = hn::Set(df, 1.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < kBq; c += L) {
      float* s = st + r * kBq + c;
      float* g = dpt + r * kBq + c;
      const auto logit = hn::LoadU(df, s);
      const auto p = Exp2(df, hn::Sub(logit, hn::LoadU(df, lse + c)));
      auto ds = hn::Mul(hn::Mul(p, hn::Sub(hn::LoadU(df, g), hn::LoadU(df, delta + c))), vscale);
      if (softcap > 0) {
        const auto t = hn::Mul(logit, inv_cap);  // tanh of the raw logit
        ds = hn::Mul(ds, hn::NegMulAdd(t, t, one));
        ds = hn::IfThenZeroElse(hn::Eq(p, hn::Zero(df)), ds);  // masked: −inf logits, 0 · inf
      }
      hn::StoreU(p, df, s);
      hn::StoreU(ds, df, g);
    }
  }
}

}  // namespace

void FlashBackward(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                   const TensorView& out, const TensorView& dout, const TensorView& lse, const TensorView& dq,
                   const TensorView& dk, const TensorView& dv) {
  const int64_t D = pr.head_dim, Dp = pad_cols(D), Hq = pr.heads_q, Hk = pr.heads_kv, G = pr.group();
  ThreadPool& tp = pool();
  std::vector<BwdScratch> scratch;
  for (int t = 0; t < tp.size(); ++t) scratch.emplace_back(Dp);
  // Sparse masks: the layout at this kernel's tiles, walked by key tile.
  std::optional<MaskPlan> plan;
  std::vector<KeyMajorLayout> by_key;
  if (pr.mask != nullptr) {
    plan = plan_mask(pr, kBq, kBk);
    by_key.resize(plan->layouts.size());
    tp.parallel_for(static_cast<int64_t>(by_key.size()), [&](int64_t i, int) { by_key[i] = key_major(plan->layouts[i]); });
  }

  for (size_t si = 0; si < pr.seqs.size(); ++si) {
    const Sequence& sq = pr.seqs[si];
    if (sq.nk == 0) {  // no keys: every gradient of this sequence is zero
      for (int64_t i = 0; i < sq.nq; ++i)
        for (int64_t h = 0; h < Hq; ++h)
          for (int64_t d = 0; d < D; ++d) store_f32(dq, offset4(dq, sq.batch, sq.q0 + i, h, d), 0.0f);
      continue;
    }
    const Packed p = Pack(pr, sq, q, k, v, out, dout, lse);
    const int64_t nqp = p.nqp, diag = sq.nk - sq.nq;
    std::vector<Buffer> dq_acc;  // per thread: [Hq][nqp][Dp]
    for (int t = 0; t < tp.size(); ++t) {
      dq_acc.push_back(Allocate(Hq * nqp * Dp));
      std::fill(dq_acc.back().get(), dq_acc.back().get() + Hq * nqp * Dp, 0.0f);
    }
    const int64_t ktiles = (sq.nk + kBk - 1) / kBk;
    tp.parallel_for(Hk * ktiles, [&](int64_t item, int thread) {
      BwdScratch& s = scratch[thread];
      const int64_t hk = item / ktiles, j0 = (ktiles - 1 - item % ktiles) * kBk;
      const int64_t nk = std::min(kBk, sq.nk - j0);
      const float* kt = p.kp.get() + (hk * sq.nk + j0) * Dp;
      const float* vt = p.vp.get() + (hk * sq.nk + j0) * Dp;
      std::fill(s.dk, s.dk + kBk * Dp, 0.0f);
      std::fill(s.dv, s.dv + kBk * Dp, 0.0f);
      // One (query tile, key tile) pair: recompute P, then dS, and accumulate dV, dK, dQ.
      auto visit = [&](int64_t h, int64_t i0, TileKind kind) {
        const int64_t nq = std::min(kBq, sq.nq - i0);
        TileProduct<Accum::overwrite>(nk, kBq, {kt, Dp, 1}, p.qt.get() + h * Dp * nqp + i0, nqp, D, s.st, kBq);
        TileLogits shape;
        shape.softcap = pr.softcap * kLog2e;
        if (kind == TileKind::causal) shape.band = MaskBand{MaskBand::kUnbounded, 0};
        shape.q_first = i0;
        shape.k_first = j0;
        shape.diag = diag;
        if (kind == TileKind::masked) {
          plan->mask.fill(static_cast<int64_t>(si), h, sq.nq, sq.nk, i0, j0, nk, nq, s.keep, kBq);
          for (int64_t r = 0; r < nk; ++r) std::fill(s.keep + r * kBq + nq, s.keep + (r + 1) * kBq, uint8_t{0});
          shape.keep = s.keep;
          shape.keep_ld = kBq;
        }
        ShapeLogits(s.st, kBq, nk, kBq, shape);
        TileProduct<Accum::overwrite>(nk, kBq, {vt, Dp, 1}, p.dot.get() + h * Dp * nqp + i0, nqp, D, s.dpt, kBq);
        ProbsAndGrads(s.st, s.dpt, nk, p.lse.get() + h * nqp + i0, p.delta.get() + h * nqp + i0, pr.scale,
                      pr.softcap * kLog2e);
        const float* dO = p.dop.get() + (h * nqp + i0) * Dp;
        const float* Q = p.qp.get() + (h * nqp + i0) * Dp;
        TileProduct<Accum::add>(nk, Dp, {s.st, kBq, 1}, dO, Dp, nq, s.dv, Dp);
        TileProduct<Accum::add>(nk, Dp, {s.dpt, kBq, 1}, Q, Dp, nq, s.dk, Dp);
        TileProduct<Accum::add>(nq, Dp, {s.dpt, 1, kBq}, kt, Dp, nk, dq_acc[thread].get() + (h * nqp + i0) * Dp, Dp);
      };
      for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
        if (plan) {  // the layout's query tiles of this key tile
          const KeyMajorLayout& km = by_key[plan->slot(static_cast<int64_t>(si), h)];
          const int64_t kb = j0 / kBk;
          for (int64_t e = km.col_begin[kb]; e < km.col_begin[kb + 1]; ++e) {
            visit(h, km.q_block[e] * kBq, km.partial[e] ? TileKind::masked : TileKind::full);
          }
          continue;
        }
        // Causal: query i sees key j when i >= j − diag; tiles wholly before j0 − diag see nothing.
        const int64_t i_begin = pr.causal ? std::max<int64_t>(0, (j0 - diag) / kBq * kBq) : 0;
        for (int64_t i0 = i_begin; i0 < sq.nq; i0 += kBq) {
          visit(h, i0, pr.causal && j0 + nk - 1 > i0 + diag ? TileKind::causal : TileKind::full);
        }
      }
      for (int64_t j = 0; j < nk; ++j) {
        const int64_t row = sq.k0 + j0 + j;
        for (int64_t d = 0; d < D; ++d) {
          store_f32(dk, offset4(dk, sq.batch, row, hk, d), s.dk[j * Dp + d]);
          store_f32(dv, offset4(dv, sq.batch, row, hk, d), s.dv[j * Dp + d]);
        }
      }
    });
    tp.parallel_for(Hq, [&](int64_t h, int) {
      for (int64_t i = 0; i < sq.nq; ++i) {
        for (int64_t d = 0; d < D; ++d) {
          float sum = 0;
          for (const Buffer& acc : dq_acc) sum += acc[(h * nqp + i) * Dp + d];
          store_f32(dq, offset4(dq, sq.batch, sq.q0 + i, h, d), sum);
        }
      }
    });
  }
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {
HWY_EXPORT(FlashBackward);
void flash_bwd(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& dout, const TensorView& lse, const TensorView& dq,
               const TensorView& dk, const TensorView& dv) {
  HWY_DYNAMIC_DISPATCH(FlashBackward)(pr, q, k, v, out, dout, lse, dq, dk, dv);
}
}  // namespace attnkit::cpu
#endif
