// Lab 04: 128-query tiles under masks too, and K/V packed once per chunk of query tiles.
//
// - Masks compile at 64 × 64; a query tile of 128 is two 64-query halves whose layout rows are
//   merged: a key block both halves keep is one 128-wide tile, one only a half keeps is computed
//   over that half's columns only (so 64-granular patterns cost what they did at 64-row tiles).
// - Work items are chunks: (sequence, KV head, a run of query tiles), every query head of the
//   KV group. A key tile is packed (f32, contiguous rows) on its first visit in the chunk into a
//   per-thread slot and kept until the chunk's last visit of it, so that consecutive query tiles
//   of a window, every tile of a random layout or of dense attention, and the heads of a GQA
//   group all read it packed. Live slots are capped by a byte budget; past it, tiles are packed
//   into a transient slot per visit (the old behaviour).
// - Prefetches of the next tile's source rows are inlined (GCC 12 drops calls to a function
//   holding only prefetches, hwy::Prefetch's fate in the lambda of the source kernel).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "lab/sparse_cpu/04_chunks.cc"
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
namespace attnkit::cpu::lab04::HWY_NAMESPACE {
using namespace attnkit::cpu::HWY_NAMESPACE;
namespace hn = hwy::HWY_NAMESPACE;
namespace {

constexpr int64_t kBq = 128;  // queries per tile
constexpr int64_t kBk = 64;   // keys per tile
constexpr int64_t kHalf = 64;  // queries per layout block: a tile is two
constexpr int64_t kPackBudget = int64_t{8} << 20;  // bytes of packed K/V tiles per thread

enum class TileKind : uint8_t { full, causal, masked };

// One key tile of a query tile's list: the query columns [c0, c1) that see it (whole halves),
// and how it is masked; masked tiles say which halves are partial (bit 0: first, bit 1: second).
struct Visit {
  int32_t kb;
  int16_t c0, c1;
  TileKind kind;
  uint8_t partial;
};

// Per-thread packed key tiles: slot s holds K rows then V rows of one key block, [2][kBk][Dp].
struct KvCache {
  int64_t tile_floats = 0, max_slots = 0;
  std::vector<hwy::AlignedFreeUniquePtr<float[]>> slots;
  std::vector<int32_t> free_slots;
  std::vector<int32_t> slot_of;   // [key blocks] slot, −1 when not packed
  std::vector<int32_t> last_use;  // [key blocks] last query tile of the chunk that visits it
  hwy::AlignedFreeUniquePtr<float[]> transient;
};

struct FwdScratch {
  hwy::AlignedFreeUniquePtr<float[]> mem;
  hwy::AlignedFreeUniquePtr<uint8_t[]> keep_mem;
  float *qt, *st, *o, *m, *l, *alpha;
  uint8_t* keep;  // [kBk][kBq]
  std::vector<Visit> visits;
  KvCache cache;

  explicit FwdScratch(int64_t Dp)
      : mem(hwy::AllocateAligned<float>(Dp * kBq * 2 + kBk * kBq + 3 * kBq)),
        keep_mem(hwy::AllocateAligned<uint8_t>(kBk * kBq)) {
    qt = mem.get();      // [Dp][kBq]
    st = qt + Dp * kBq;  // [kBk][kBq]
    o = st + kBk * kBq;  // [kBq][Dp]
    m = o + kBq * Dp;    // [kBq]
    l = m + kBq;         // [kBq]
    alpha = l + kBq;     // [kBq]
    keep = keep_mem.get();
    cache.tile_floats = 2 * kBk * Dp;
    cache.max_slots = std::max<int64_t>(1, kPackBudget / (cache.tile_floats * static_cast<int64_t>(sizeof(float))));
    cache.transient = hwy::AllocateAligned<float>(cache.tile_floats);
  }
};

// A run of query tiles [t0, t1) of one sequence, for every query head of KV head hk.
struct Chunk {
  int32_t seq, hk;
  int64_t t0, t1;
};

// The key tiles that query tile [i0, i0 + nq) of head h visits, ascending.
void ListKeyTiles(const Problem& pr, const MaskPlan* plan, int64_t seq, int64_t h, int64_t i0, int64_t nq,
                  std::vector<Visit>& out) {
  const Sequence& sq = pr.seqs[seq];
  out.clear();
  if (plan != nullptr) {
    const BlockLayout& lay = plan->layout(seq, h);
    const int64_t qa = i0 / kHalf;
    const bool two = nq > kHalf;
    int64_t a = lay.row_begin[qa], a_end = lay.row_begin[qa + 1];
    int64_t b = two ? lay.row_begin[qa + 1] : 0, b_end = two ? lay.row_begin[qa + 2] : 0;
    constexpr int32_t kNone = std::numeric_limits<int32_t>::max();
    while (a < a_end || b < b_end) {
      const int32_t ka = a < a_end ? lay.key_block[a] : kNone, kb = b < b_end ? lay.key_block[b] : kNone;
      const int32_t k = std::min(ka, kb);
      const bool in_a = ka == k, in_b = kb == k;
      const uint8_t partial = static_cast<uint8_t>((in_a && lay.partial[a]) | ((in_b && lay.partial[b]) << 1));
      out.push_back({k, static_cast<int16_t>(in_a ? 0 : kHalf), static_cast<int16_t>(in_b ? kBq : kHalf),
                     partial ? TileKind::masked : TileKind::full, partial});
      a += in_a;
      b += in_b;
    }
    return;
  }
  // Keys visible to some query of the tile: [0, k_end); to every query: [0, k_full).
  int64_t k_end = sq.nk, k_full = sq.nk;
  if (pr.causal) {
    k_end = std::clamp<int64_t>(Problem::causal_end(i0 + nq - 1, sq.nq, sq.nk), 0, sq.nk);
    k_full = std::clamp<int64_t>(Problem::causal_end(i0, sq.nq, sq.nk), 0, sq.nk);
  }
  for (int64_t j0 = 0; j0 < k_end; j0 += kBk) {
    out.push_back({static_cast<int32_t>(j0 / kBk), 0, static_cast<int16_t>(kBq),
                   pr.causal && std::min(j0 + kBk, k_end) > k_full ? TileKind::causal : TileKind::full, 0});
  }
}

// Rows [r0, r1) and columns [c0, c1) of keep (stride ld) within rows [0, rows) × columns
// [cb, ce) holding a kept pair; r0 == r1 when none.
void KeptSpan(const uint8_t* keep, int64_t ld, int64_t rows, int64_t cb, int64_t ce, int64_t& r0, int64_t& r1,
              int64_t& c0, int64_t& c1) {
  uint8_t any_col[kBq] = {};
  r0 = rows, r1 = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* k = keep + r * ld;
    uint8_t any = 0;
    for (int64_t c = cb; c < ce; ++c) {  // OR reductions: vectorized
      any_col[c] |= k[c];
      any |= k[c];
    }
    if (any) r0 = std::min(r0, r), r1 = r + 1;
  }
  if (r0 >= r1) {
    r0 = r1 = c0 = c1 = 0;
    return;
  }
  c0 = cb, c1 = ce;
  while (any_col[c0] == 0) ++c0;
  while (any_col[c1 - 1] == 0) --c1;
}

// Requests key tile j0's rows of K and V. Inlined on purpose (see the file header).
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

// The packed K and V rows of key block kb ([kBk][Dp] each, rows past nk zero), packing it on
// its first visit of the chunk.
const float* PackedTile(const TensorView& k, const TensorView& v, const Sequence& sq, int64_t hk, int64_t D,
                        int64_t Dp, int64_t kb, KvCache& c) {
  int32_t slot = c.slot_of[kb];
  if (slot >= 0) return c.slots[slot].get();
  float* dst;
  if (!c.free_slots.empty()) {
    slot = c.free_slots.back();
    c.free_slots.pop_back();
    c.slot_of[kb] = slot;
    dst = c.slots[slot].get();
  } else if (static_cast<int64_t>(c.slots.size()) < c.max_slots) {
    slot = static_cast<int32_t>(c.slots.size());
    c.slots.push_back(hwy::AllocateAligned<float>(c.tile_floats));
    c.slot_of[kb] = slot;
    dst = c.slots[slot].get();
  } else {
    dst = c.transient.get();  // over the budget: packed for this visit only
  }
  const int64_t j0 = kb * kBk, n = std::min(kBk, sq.nk - j0);
  const int64_t kbase = offset4(k, sq.batch, sq.k0 + j0, hk, 0), vbase = offset4(v, sq.batch, sq.k0 + j0, hk, 0);
  float* kd = dst;
  float* vd = dst + kBk * Dp;
  for (int64_t j = 0; j < n; ++j) {
    LoadRowF32(k, kbase + j * k.strides[1], k.strides[3], D, Dp, kd + j * Dp);
    LoadRowF32(v, vbase + j * v.strides[1], v.strides[3], D, Dp, vd + j * Dp);
  }
  std::fill(kd + n * Dp, kd + kBk * Dp, 0.0f);
  std::fill(vd + n * Dp, vd + kBk * Dp, 0.0f);
  return dst;
}

// One query tile [i0, i0 + nq) of head h against its key tile list (already in s.visits).
void ForwardTile(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                 const TensorView& out, const TensorView& lse, const MaskPlan* plan, int64_t seq, int64_t h,
                 int64_t i0, FwdScratch& s) {
  const hn::ScalableTag<float> df;
  const int64_t W = 2 * static_cast<int64_t>(hn::Lanes(df));  // TileProduct's column step
  const Sequence& sq = pr.seqs[seq];
  const int64_t D = pr.head_dim, Dp = pad_cols(D);
  const int64_t hk = h / pr.group();
  const int64_t nq = std::min(kBq, sq.nq - i0);
  const int64_t diag = sq.nk - sq.nq;
  const bool can_prefetch = k.strides[3] == 1 && v.strides[3] == 1;

  // qt[d][i] = scale · log2e · q[i][d], zero-padded to Dp × kBq (rows staged in o first).
  const float qscale = pr.scale * kLog2e;
  for (int64_t i = 0; i < nq; ++i) {
    LoadRowF32(q, offset4(q, sq.batch, sq.q0 + i0 + i, h, 0), q.strides[3], D, Dp, s.o + i * Dp);
  }
  std::fill(s.o + nq * Dp, s.o + kBq * Dp, 0.0f);
  for (int64_t d = 0; d < Dp; ++d)
    for (int64_t i = 0; i < kBq; ++i) s.qt[d * kBq + i] = qscale * s.o[i * Dp + d];
  std::fill(s.o, s.o + kBq * Dp, 0.0f);
  std::fill(s.m, s.m + kBq, -std::numeric_limits<float>::infinity());
  std::fill(s.l, s.l + kBq, 0.0f);

  KvCache& c = s.cache;
  for (size_t vi = 0; vi < s.visits.size(); ++vi) {
    const Visit& t = s.visits[vi];
    if (vi + 1 < s.visits.size() && can_prefetch && c.slot_of[s.visits[vi + 1].kb] < 0) {
      PrefetchTile(k, v, sq, hk, D, s.visits[vi + 1].kb * kBk);
    }
    const int64_t j0 = t.kb * kBk, nk = std::min(kBk, sq.nk - j0);
    // The part of the tile that is computed: key rows [r0, r1) × query columns [c0, c1).
    int64_t r0 = 0, r1 = nk, c0 = t.c0, c1 = std::min<int64_t>(t.c1, nq);
    if (c0 >= c1) continue;
    if (t.kind == TileKind::masked) {
      for (int64_t half = c0 / kHalf; half * kHalf < c1; ++half) {
        const int64_t hb = half * kHalf, he = std::min(c1, hb + kHalf);
        if (t.partial & (1 << half)) {
          plan->mask.fill(seq, h, sq.nq, sq.nk, i0 + hb, j0, nk, he - hb, s.keep + hb, kBq);
        } else {
          for (int64_t r = 0; r < nk; ++r) std::fill(s.keep + r * kBq + hb, s.keep + r * kBq + he, uint8_t{1});
        }
      }
      KeptSpan(s.keep, kBq, nk, c0, c1, r0, r1, c0, c1);
      if (r0 == r1) continue;
      // Whole column steps; columns past nq are kept out by keep = 0.
      for (int64_t r = r0; r < r1; ++r) std::fill(s.keep + r * kBq + nq, s.keep + (r + 1) * kBq, uint8_t{0});
    }
    c0 = c0 / W * W;
    c1 = std::min(kBq, (c1 + W - 1) / W * W);
    const int64_t rows = r1 - r0, cols = c1 - c0;
    const float* kp = PackedTile(k, v, sq, hk, D, Dp, t.kb, c);
    const float* vp = kp + kBk * Dp;
    float* st = s.st + r0 * kBq + c0;
    // st[j][i] = Σ_d k[j][d] · qt[d][i]
    TileProduct<Accum::overwrite>(rows, cols, {kp + r0 * Dp, Dp, 1}, s.qt + c0, kBq, D, st, kBq);
    TileLogits shape;
    shape.softcap = pr.softcap * kLog2e;
    if (t.kind == TileKind::causal) shape.band = MaskBand{MaskBand::kUnbounded, 0};
    shape.q_first = i0 + c0;
    shape.k_first = j0 + r0;
    shape.diag = diag;
    if (t.kind == TileKind::masked) {
      shape.keep = s.keep + r0 * kBq + c0;
      shape.keep_ld = kBq;
    }
    ShapeLogits(st, kBq, rows, cols, shape);
    OnlineSoftmaxStep(st, kBq, rows, cols, s.m + c0, s.l + c0, s.alpha + c0);
    // o[i][:] = alpha[i] · o[i][:] + Σ_j st[j][i] · v[j][:]
    TileProduct<Accum::scale_add>(std::min(cols, nq - c0), Dp, {st, 1, kBq}, vp + r0 * Dp, Dp, rows,
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

// Runs one chunk: every query tile of the run, for every query head of the KV group, with
// each key tile packed once and released after the chunk's last visit of it.
void ForwardChunk(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& out, const TensorView& lse, const MaskPlan* plan, const Chunk& ch,
                  FwdScratch& s) {
  const Sequence& sq = pr.seqs[ch.seq];
  const int64_t G = pr.group(), kblocks = (sq.nk + kBk - 1) / kBk;
  KvCache& c = s.cache;
  c.slot_of.assign(kblocks, -1);
  c.last_use.assign(kblocks, -1);
  c.free_slots.clear();
  for (int32_t i = static_cast<int32_t>(c.slots.size()) - 1; i >= 0; --i) c.free_slots.push_back(i);
  for (int64_t t = ch.t0; t < ch.t1; ++t) {
    const int64_t i0 = t * kBq, nq = std::min(kBq, sq.nq - i0);
    for (int64_t h = ch.hk * G; h < (ch.hk + 1) * G; ++h) {
      ListKeyTiles(pr, plan, ch.seq, h, i0, nq, s.visits);
      for (const Visit& x : s.visits) c.last_use[x.kb] = static_cast<int32_t>(t);
    }
  }
  for (int64_t t = ch.t0; t < ch.t1; ++t) {
    const int64_t i0 = t * kBq, nq = std::min(kBq, sq.nq - i0);
    for (int64_t h = ch.hk * G; h < (ch.hk + 1) * G; ++h) {
      ListKeyTiles(pr, plan, ch.seq, h, i0, nq, s.visits);
      ForwardTile(pr, q, k, v, out, lse, plan, ch.seq, h, i0, s);
    }
    // Slots whose block no later tile of the chunk visits are free again (s.visits holds the
    // last head's list; a group's other heads are listed again).
    for (int64_t h = ch.hk * G; h < (ch.hk + 1) * G; ++h) {
      if (h + 1 < (ch.hk + 1) * G) ListKeyTiles(pr, plan, ch.seq, h, i0, nq, s.visits);
      for (const Visit& x : s.visits) {
        if (c.last_use[x.kb] == t && c.slot_of[x.kb] >= 0) {
          c.free_slots.push_back(c.slot_of[x.kb]);
          c.slot_of[x.kb] = -1;
        }
      }
    }
  }
}

}  // namespace

void FlashForward(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& out, const TensorView& lse) {
  std::optional<MaskPlan> plan;
  if (pr.mask != nullptr) plan = plan_mask(pr, kHalf, kBk);
  ThreadPool& tp = pool();
  // Chunks: runs of query tiles per (sequence, KV head), at least 8 per thread in all, so that
  // the last ones balance the threads; latest tiles first (causal: the most keys).
  int64_t total_tiles = 0;
  for (const Sequence& sq : pr.seqs) total_tiles += (sq.nq + kBq - 1) / kBq * pr.heads_kv;
  const int64_t run = std::max<int64_t>(1, total_tiles / (8 * static_cast<int64_t>(tp.size())));
  std::vector<Chunk> chunks;
  for (size_t si = 0; si < pr.seqs.size(); ++si) {
    const int64_t tiles = (pr.seqs[si].nq + kBq - 1) / kBq;
    for (int64_t t1 = tiles; t1 > 0; t1 -= run)
      for (int64_t hk = 0; hk < pr.heads_kv; ++hk)
        chunks.push_back({static_cast<int32_t>(si), static_cast<int32_t>(hk), std::max<int64_t>(0, t1 - run), t1});
  }
  std::vector<FwdScratch> scratch;
  scratch.reserve(tp.size());
  for (int t = 0; t < tp.size(); ++t) scratch.emplace_back(pad_cols(pr.head_dim));
  tp.parallel_for(static_cast<int64_t>(chunks.size()), [&](int64_t i, int thread) {
    ForwardChunk(pr, q, k, v, out, lse, plan ? &*plan : nullptr, chunks[i], scratch[thread]);
  });
}

}  // namespace attnkit::cpu::lab04::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu::lab04 {
HWY_EXPORT(FlashForward);
void flash_fwd(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& lse) {
  HWY_DYNAMIC_DISPATCH(FlashForward)(pr, q, k, v, out, lse);
}
}  // namespace attnkit::cpu::lab04
#endif
