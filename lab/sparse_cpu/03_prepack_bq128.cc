// Lab 03: lab 02 (all K/V prepacked) with 128-query tiles under a mask too (layouts compiled at
// 128 × 64): prices the tile height alone, K/V reads being equal.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "lab/sparse_cpu/03_prepack_bq128.cc"
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
#include "hwy/cache_control.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::lab03::HWY_NAMESPACE {
using namespace attnkit::cpu::HWY_NAMESPACE;
namespace hn = hwy::HWY_NAMESPACE;
namespace {

constexpr int64_t kBq = 128;  // queries per tile (columns of st: a multiple of kColAlign)
constexpr int64_t kBk = 64;  // keys per tile
// Queries per tile under a sparse mask: layouts of 64 × 64 blocks. Half the dense tile, so that
// a sliding window's tile list overshoots the window by one 64-key tile per row instead of
// two; measured in bench_sparse (docs/sparse.md).
constexpr int64_t kBqMasked = 128;

// One key tile of a query tile's list, and how its logits are masked.
enum class TileKind : uint8_t {
  full,    // every pair kept: no element masking
  causal,  // straddles the causal diagonal: the vectorized causal mask
  masked,  // partial tile of a sparse mask: the mask's element predicate
};
struct KeyTile {
  int64_t k_first;
  TileKind kind;
};

struct FwdScratch {
  hwy::AlignedFreeUniquePtr<float[]> mem;
  hwy::AlignedFreeUniquePtr<uint8_t[]> keep_mem;
  float *qt, *st, *o, *kp, *vp, *m, *l, *alpha;
  uint8_t* keep;  // [kBk][kBq]
  std::vector<KeyTile> tiles;

  explicit FwdScratch(int64_t Dp)
      : mem(hwy::AllocateAligned<float>(Dp * kBq * 2 + kBk * kBq + 2 * kBk * Dp + 3 * kBq)),
        keep_mem(hwy::AllocateAligned<uint8_t>(kBk * kBq)) {
    qt = mem.get();          // [Dp][bq]
    st = qt + Dp * kBq;      // [kBk][bq]
    o = st + kBk * kBq;      // [bq][Dp]
    kp = o + kBq * Dp;       // [kBk][Dp]
    vp = kp + kBk * Dp;      // [kBk][Dp]
    m = vp + kBk * Dp;       // [bq]
    l = m + kBq;             // [bq]
    alpha = l + kBq;         // [bq]
    keep = keep_mem.get();
  }
};

struct Item {
  int32_t seq, head;
  int64_t q_first;
};

// The key tiles that the query tile [i0, i0 + nq) visits, into s.tiles. Dense: all of them,
// full; causal: those up to the diagonal, the ones it crosses marked causal; sparse: the
// layout's row, partial blocks marked masked.
void ListKeyTiles(const Problem& pr, const MaskPlan* plan, const Item& it, int64_t nq, std::vector<KeyTile>& tiles) {
  const Sequence& sq = pr.seqs[it.seq];
  tiles.clear();
  if (plan != nullptr) {
    const BlockLayout& lay = plan->layout(it.seq, it.head);
    const int64_t qb = it.q_first / plan->block_q;
    for (int64_t e = lay.row_begin[qb]; e < lay.row_begin[qb + 1]; ++e) {
      tiles.push_back({lay.key_block[e] * kBk, lay.partial[e] ? TileKind::masked : TileKind::full});
    }
    return;
  }
  // Keys visible to some query of the tile: [0, k_end); to every query: [0, k_full).
  int64_t k_end = sq.nk, k_full = sq.nk;
  if (pr.causal) {
    k_end = std::clamp<int64_t>(Problem::causal_end(it.q_first + nq - 1, sq.nq, sq.nk), 0, sq.nk);
    k_full = std::clamp<int64_t>(Problem::causal_end(it.q_first, sq.nq, sq.nk), 0, sq.nk);
  }
  for (int64_t j0 = 0; j0 < k_end; j0 += kBk) {
    tiles.push_back({j0, pr.causal && std::min(j0 + kBk, k_end) > k_full ? TileKind::causal : TileKind::full});
  }
}

// Rows and columns of the element mask keep[0..rows)[0..cols) (stride ld) holding a kept pair:
// [r0, r1) × [c0, c1); r0 == r1 when none.
void KeptSpan(const uint8_t* keep, int64_t ld, int64_t rows, int64_t cols, int64_t& r0, int64_t& r1, int64_t& c0,
              int64_t& c1) {
  uint8_t any_col[kBq] = {};
  r0 = rows, r1 = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* k = keep + r * ld;
    uint8_t any = 0;
    for (int64_t c = 0; c < cols; ++c) {  // OR reductions: vectorized
      any_col[c] |= k[c];
      any |= k[c];
    }
    if (any) r0 = std::min(r0, r), r1 = r + 1;
  }
  if (r0 >= r1) {
    r0 = r1 = c0 = c1 = 0;
    return;
  }
  c0 = 0, c1 = cols;
  while (any_col[c0] == 0) ++c0;
  while (any_col[c1 - 1] == 0) --c1;
}

// Requests the rows of key tile [j0, j0 + kBk) of K and V. Always inlined, and never in a
// lambda: GCC 12 finds a separate function holding only prefetches "const" and deletes its
// calls, which is what became of the lambda (and of hwy::Prefetch) before.
HWY_INLINE void PrefetchTile(const TensorView& k, const TensorView& v, const Sequence& sq, int64_t hk, int64_t D,
                             int64_t j0) {
  const int64_t n = std::min(kBk, sq.nk - j0), esize = dtype_size(k.dtype), bytes = D * esize;
  const char* kb = static_cast<const char*>(k.data) + offset4(k, sq.batch, sq.k0 + j0, hk, 0) * esize;
  const char* vb = static_cast<const char*>(v.data) + offset4(v, sq.batch, sq.k0 + j0, hk, 0) * esize;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t x = 0; x < bytes; x += 64) {
      __builtin_prefetch(kb + j * k.strides[1] * esize + x);
      __builtin_prefetch(vb + j * v.strides[1] * esize + x);
    }
}

void ForwardTile(const Problem& pr, const TensorView& q, const TensorView& /*k*/, const TensorView& /*v*/,
                 const TensorView& out, const TensorView& lse, const MaskPlan* plan, const Item& it, int64_t bq,
                 FwdScratch& s, const float* kpack, const float* vpack) {
  const hn::ScalableTag<float> df;
  const int64_t W = 2 * static_cast<int64_t>(hn::Lanes(df));  // TileProduct's column step
  const Sequence& sq = pr.seqs[it.seq];
  const int64_t D = pr.head_dim, Dp = pad_cols(D);
  const int64_t h = it.head, hk = h / pr.group(), i0 = it.q_first;
  const int64_t nq = std::min(bq, sq.nq - i0);
  const int64_t diag = sq.nk - sq.nq;

  // qt[d][i] = scale · log2e · q[i][d], zero-padded to Dp × bq.
  const float qscale = pr.scale * kLog2e;
  // Rows are converted into o (free until the first product) and transposed from there:
  // cheap enough to matter when a sparse query tile visits only a few key tiles.
  for (int64_t i = 0; i < nq; ++i) {
    LoadRowF32(q, offset4(q, sq.batch, sq.q0 + i0 + i, h, 0), q.strides[3], D, Dp, s.o + i * Dp);
  }
  std::fill(s.o + nq * Dp, s.o + bq * Dp, 0.0f);
  for (int64_t d = 0; d < Dp; ++d)
    for (int64_t i = 0; i < bq; ++i) s.qt[d * bq + i] = qscale * s.o[i * Dp + d];
  std::fill(s.o, s.o + bq * Dp, 0.0f);
  std::fill(s.m, s.m + bq, -std::numeric_limits<float>::infinity());
  std::fill(s.l, s.l + bq, 0.0f);

  ListKeyTiles(pr, plan, it, nq, s.tiles);
  // K and V rows lie H·D apart, two or so per page: the hardware prefetcher does not follow
  // them across pages, so the next tile's rows are requested while this one is computed.
  for (size_t ti = 0; ti < s.tiles.size(); ++ti) {
    const KeyTile& t = s.tiles[ti];
    const int64_t j0 = t.k_first, nk = std::min(kBk, sq.nk - j0);
    // The part of the tile that is computed: key rows [r0, r1) × query columns [c0, c1).
    int64_t r0 = 0, r1 = nk, c0 = 0, c1 = bq;
    if (t.kind == TileKind::masked) {
      plan->mask.fill(it.seq, h, sq.nq, sq.nk, i0, j0, nk, nq, s.keep, bq);
      for (int64_t r = 0; r < nk; ++r) std::fill(s.keep + r * bq + nq, s.keep + (r + 1) * bq, uint8_t{0});
      KeptSpan(s.keep, bq, nk, nq, r0, r1, c0, c1);
      if (r0 == r1) continue;
      c0 = c0 / W * W;  // whole column steps: global rows or columns shrink to a sliver
      c1 = std::min(bq, (c1 + W - 1) / W * W);
    }
    const int64_t rows = r1 - r0, cols = c1 - c0;
    const float* kp = kpack + (hk * sq.nk + j0) * Dp;  // this tile's packed rows
    const float* vp = vpack + (hk * sq.nk + j0) * Dp;
    float* st = s.st + r0 * bq + c0;
    // st[j][i] = Σ_d k[j][d] · qt[d][i]
    TileProduct<Accum::overwrite>(rows, cols, {kp + r0 * Dp, Dp, 1}, s.qt + c0, bq, D, st, bq);
    TileLogits shape;
    shape.softcap = pr.softcap * kLog2e;
    if (t.kind == TileKind::causal) shape.band = MaskBand{MaskBand::kUnbounded, 0};
    shape.q_first = i0 + c0;
    shape.k_first = j0 + r0;
    shape.diag = diag;
    if (t.kind == TileKind::masked) {
      shape.keep = s.keep + r0 * bq + c0;
      shape.keep_ld = bq;
    }
    ShapeLogits(st, bq, rows, cols, shape);
    OnlineSoftmaxStep(st, bq, rows, cols, s.m + c0, s.l + c0, s.alpha + c0);

    // o[i][:] = alpha[i] · o[i][:] + Σ_j st[j][i] · v[j][:]
    TileProduct<Accum::scale_add>(std::min(cols, nq - c0), Dp, {st, 1, bq}, vp + r0 * Dp, Dp, rows,
                                  s.o + c0 * Dp, Dp, s.alpha + c0);
  }

  for (int64_t i = 0; i < nq; ++i) {
    const float li = s.l[i];
    const float inv = li > 0 ? 1.0f / li : 0.0f;
    const int64_t base = offset4(out, sq.batch, sq.q0 + i0 + i, h, 0);
    const float* oi = s.o + i * Dp;
    if (out.dtype == DType::f32 && out.strides[3] == 1) {
      float* dst = static_cast<float*>(out.data) + base;
      for (int64_t d = 0; d < D; ++d) dst[d] = oi[d] * inv;
    } else {
      for (int64_t d = 0; d < D; ++d) store_f32(out, base + d * out.strides[3], oi[d] * inv);
    }
    if (!lse.empty()) {
      static_cast<float*>(lse.data)[offset3(lse, sq.batch, h, sq.q0 + i0 + i)] =
          li > 0 ? (s.m[i] + std::log2(li)) * kLn2 : -std::numeric_limits<float>::infinity();
    }
  }
}

}  // namespace

void FlashForward(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& out, const TensorView& lse) {
  const int64_t bq = pr.mask != nullptr ? kBqMasked : kBq;
  std::optional<MaskPlan> plan;
  if (pr.mask != nullptr) plan = plan_mask(pr, bq, kBk);
  std::vector<Item> items;
  for (size_t si = 0; si < pr.seqs.size(); ++si) {
    // Causal tiles near the end of a sequence see the most keys: hand them out first.
    const int64_t tiles = (pr.seqs[si].nq + bq - 1) / bq;
    for (int64_t t = tiles - 1; t >= 0; --t)
      for (int64_t h = 0; h < pr.heads_q; ++h) items.push_back({static_cast<int32_t>(si), static_cast<int32_t>(h), t * bq});
  }
  ThreadPool& tp = pool();
  std::vector<FwdScratch> scratch;
  scratch.reserve(tp.size());
  for (int t = 0; t < tp.size(); ++t) scratch.emplace_back(pad_cols(pr.head_dim));
  // Packs every sequence's K and V: [seq][Hkv][nk][Dp].
  const int64_t Dp = pad_cols(pr.head_dim);
  std::vector<hwy::AlignedFreeUniquePtr<float[]>> kpack, vpack;
  for (const Sequence& sq : pr.seqs) {
    kpack.push_back(hwy::AllocateAligned<float>(std::max<int64_t>(1, pr.heads_kv * sq.nk * Dp)));
    vpack.push_back(hwy::AllocateAligned<float>(std::max<int64_t>(1, pr.heads_kv * sq.nk * Dp)));
    float* kp = kpack.back().get();
    float* vp = vpack.back().get();
    tp.parallel_for(pr.heads_kv, [&](int64_t hk, int) {
      for (int64_t j = 0; j < sq.nk; ++j) {
        LoadRowF32(k, offset4(k, sq.batch, sq.k0 + j, hk, 0), k.strides[3], pr.head_dim, Dp, kp + (hk * sq.nk + j) * Dp);
        LoadRowF32(v, offset4(v, sq.batch, sq.k0 + j, hk, 0), v.strides[3], pr.head_dim, Dp, vp + (hk * sq.nk + j) * Dp);
      }
    });
  }
  tp.parallel_for(static_cast<int64_t>(items.size()), [&](int64_t i, int thread) {
    ForwardTile(pr, q, k, v, out, lse, plan ? &*plan : nullptr, items[i], bq, scratch[thread],
                kpack[items[i].seq].get(), vpack[items[i].seq].get());
  });
}

}  // namespace attnkit::cpu::lab03::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu::lab03 {
HWY_EXPORT(FlashForward);
void flash_fwd(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& lse) {
  HWY_DYNAMIC_DISPATCH(FlashForward)(pr, q, k, v, out, lse);
}
}  // namespace attnkit::cpu::lab03
#endif
