// Flash attention forward on the CPU: tiled online softmax (FlashAttention-2, Dao 2023,
// Algorithm 1), Highway SIMD with runtime dispatch, threads over (sequence, head, query tile).
//
// Per work item, kBq queries of one head stream over the visible keys in tiles of kBk:
//   st = K_tile · (scale · log2e · Q_tile)ᵀ   st : [kBk][kBq]   (keys × queries, base-2 logits)
//   m, l, alpha  online softmax per query      st becomes P = 2^(st − m)
//   o  = alpha ∘ o + Pᵀ V_tile                o  : [kBq][Dp]
// and finally out = o / l, lse = (m + log2 l) · ln2. Extra memory is a few tiles per thread:
// O(1) in N. K and V tiles are copied (and converted to f32) into contiguous rows first: read in
// place, rows H·D floats apart fall into the same L1 sets and evict each other.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/flash_fwd.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

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

constexpr int64_t kBq = 128;  // queries per tile (columns of st: a multiple of kColAlign)
constexpr int64_t kBk = 64;  // keys per tile

struct FwdScratch {
  hwy::AlignedFreeUniquePtr<float[]> mem;
  float *qt, *st, *o, *kp, *vp, *m, *l, *alpha;

  explicit FwdScratch(int64_t Dp)
      : mem(hwy::AllocateAligned<float>(Dp * kBq * 2 + kBk * kBq + 2 * kBk * Dp + 3 * kBq)) {
    qt = mem.get();          // [Dp][kBq]
    st = qt + Dp * kBq;      // [kBk][kBq]
    o = st + kBk * kBq;      // [kBq][Dp]
    kp = o + kBq * Dp;       // [kBk][Dp]
    vp = kp + kBk * Dp;      // [kBk][Dp]
    m = vp + kBk * Dp;       // [kBq]
    l = m + kBq;             // [kBq]
    alpha = l + kBq;         // [kBq]
  }
};

struct Item {
  int32_t seq, head;
  int64_t q_first;
};

void ForwardTile(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                 const TensorView& out, const TensorView& lse, const Item& it, FwdScratch& s) {
  const Sequence& sq = pr.seqs[it.seq];
  const int64_t D = pr.head_dim, Dp = pad_cols(D);
  const int64_t h = it.head, hk = h / pr.group(), i0 = it.q_first;
  const int64_t nq = std::min(kBq, sq.nq - i0);
  const int64_t diag = sq.nk - sq.nq;

  // qt[d][i] = scale · log2e · q[i][d], zero-padded to Dp × kBq.
  const float qscale = pr.scale * kLog2e;
  std::fill(s.qt, s.qt + Dp * kBq, 0.0f);
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t base = offset4(q, sq.batch, sq.q0 + i0 + i, h, 0);
    for (int64_t d = 0; d < D; ++d) s.qt[d * kBq + i] = qscale * load_f32(q, base + d * q.strides[3]);
  }
  std::fill(s.o, s.o + kBq * Dp, 0.0f);
  std::fill(s.m, s.m + kBq, -std::numeric_limits<float>::infinity());
  std::fill(s.l, s.l + kBq, 0.0f);

  // Keys visible to some query of the tile: [0, k_end); to every query: [0, k_full).
  int64_t k_end = sq.nk, k_full = sq.nk;
  if (pr.causal) {
    k_end = std::clamp<int64_t>(Problem::causal_end(i0 + nq - 1, sq.nq, sq.nk), 0, sq.nk);
    k_full = std::clamp<int64_t>(Problem::causal_end(i0, sq.nq, sq.nk), 0, sq.nk);
  }

  for (int64_t j0 = 0; j0 < k_end; j0 += kBk) {
    const int64_t nk = std::min(kBk, k_end - j0);
    const int64_t kbase = offset4(k, sq.batch, sq.k0 + j0, hk, 0);
    const int64_t vbase = offset4(v, sq.batch, sq.k0 + j0, hk, 0);
    for (int64_t j = 0; j < nk; ++j) {
      LoadRowF32(k, kbase + j * k.strides[1], k.strides[3], D, Dp, s.kp + j * Dp);
      LoadRowF32(v, vbase + j * v.strides[1], v.strides[3], D, Dp, s.vp + j * Dp);
    }
    // st[j][i] = Σ_d k[j][d] · qt[d][i]
    TileProduct<Accum::overwrite>(nk, kBq, {s.kp, Dp, 1}, s.qt, kBq, D, s.st, kBq);
    TileLogits shape;
    shape.softcap = pr.softcap * kLog2e;
    shape.causal_partial = pr.causal && j0 + nk > k_full;
    shape.q_first = i0;
    shape.k_first = j0;
    shape.diag = diag;
    ShapeLogits(s.st, kBq, nk, kBq, shape);
    OnlineSoftmaxStep(s.st, kBq, nk, kBq, s.m, s.l, s.alpha);

    // o[i][:] = alpha[i] · o[i][:] + Σ_j st[j][i] · v[j][:]
    TileProduct<Accum::scale_add>(nq, Dp, {s.st, 1, kBq}, s.vp, Dp, nk, s.o, Dp, s.alpha);
  }

  for (int64_t i = 0; i < nq; ++i) {
    const float li = s.l[i];
    const float inv = li > 0 ? 1.0f / li : 0.0f;
    const int64_t base = offset4(out, sq.batch, sq.q0 + i0 + i, h, 0);
    for (int64_t d = 0; d < D; ++d) store_f32(out, base + d * out.strides[3], s.o[i * Dp + d] * inv);
    if (!lse.empty()) {
      static_cast<float*>(lse.data)[offset3(lse, sq.batch, h, sq.q0 + i0 + i)] =
          li > 0 ? (s.m[i] + std::log2(li)) * kLn2 : -std::numeric_limits<float>::infinity();
    }
  }
}

}  // namespace

void FlashForward(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& out, const TensorView& lse) {
  std::vector<Item> items;
  for (size_t si = 0; si < pr.seqs.size(); ++si) {
    // Causal tiles near the end of a sequence see the most keys: hand them out first.
    const int64_t tiles = (pr.seqs[si].nq + kBq - 1) / kBq;
    for (int64_t t = tiles - 1; t >= 0; --t)
      for (int64_t h = 0; h < pr.heads_q; ++h) items.push_back({static_cast<int32_t>(si), static_cast<int32_t>(h), t * kBq});
  }
  ThreadPool& tp = pool();
  std::vector<FwdScratch> scratch;
  scratch.reserve(tp.size());
  for (int t = 0; t < tp.size(); ++t) scratch.emplace_back(pad_cols(pr.head_dim));
  tp.parallel_for(static_cast<int64_t>(items.size()), [&](int64_t i, int thread) {
    ForwardTile(pr, q, k, v, out, lse, items[i], scratch[thread]);
  });
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {
HWY_EXPORT(FlashForward);
void flash_fwd(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& lse) {
  HWY_DYNAMIC_DISPATCH(FlashForward)(pr, q, k, v, out, lse);
}
}  // namespace attnkit::cpu
#endif
