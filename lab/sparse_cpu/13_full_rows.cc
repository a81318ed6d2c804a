// Lab 13: src/cpu/flash_fwd.cc where query rows that keep every key (global query rows) are
// computed apart, in one pass over K and V that reads every head's rows of a key tile in
// address order, and the key blocks that only those rows keep are dropped from the layout.
// Flash attention forward on the CPU: tiled online softmax (FlashAttention-2, Dao 2023,
// Algorithm 1), Highway SIMD with runtime dispatch.
//
// A query tile of kBq = 128 queries of one head streams over a list of key tiles of kBk = 64
// (all of them; those up to the diagonal when causal; under a sparse mask, the merged rows of
// its two 64-query halves in a layout compiled at 64 × 64):
//   st = K_tile · (scale · log2e · Q_tile)ᵀ   st : [kBk][kBq]   (keys × queries, base-2 logits)
//   m, l, alpha  online softmax per query      st becomes P = 2^(st − m)
//   o  = alpha ∘ o + Pᵀ V_tile                o  : [kBq][Dp]
// and finally out = o / l, lse = (m + log2 l) · ln2. A key tile that only one half keeps is
// computed over that half's 64 columns; a partial tile strip by strip of 16 query columns, each
// over its own kept key rows, so that a window's triangles, global rows and global columns cost
// about the pairs they keep. Where the mask is a band over the tile (a window's edges, also in
// unions with globals or random blocks that keep nothing there: Mask::band), a strip's rows
// come from the band and its logits are masked arithmetically; elsewhere the mask's element
// predicate fills a byte mask that is scanned for the rows and applied.
//
// Threads take chunks: a run of query tiles of one sequence and KV head, for every query head
// of the KV group. K and V rows lie H·D apart (read in place they fall into the same L1 sets),
// so a key tile is first packed to contiguous f32 rows; within a chunk it is packed once, on its
// first visit, and its slot is freed after the chunk's last visit of it: a window's tile is
// reused by the next query tiles, a random layout's and dense attention's by every query tile
// and head of the chunk; a tile visited once is packed into a transient tile. Packed slots per
// thread are capped (FlashFwdTuning, 8 MiB); past the cap a tile is packed for one visit. The
// slots and tiles are a per-thread workspace kept between calls, sized once per call to the
// chunk with the most live tiles. Extra memory: O(1) in N (that workspace and the mask's
// layout). Outputs of 8 MiB or more are written with streaming stores.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "lab/sparse_cpu/13_full_rows.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "core/mask_plan.h"
#include "lab/sparse_cpu/full_rows.h"
#include "core/thread_pool.h"
#include "cpu/gemm_tile-inl.h"
#include "cpu/kernels.h"
#include "cpu/pack-inl.h"
#include "cpu/prefetch.h"
#include "cpu/softmax-inl.h"
#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::lab13::HWY_NAMESPACE {
using namespace attnkit::cpu::HWY_NAMESPACE;
namespace hn = hwy::HWY_NAMESPACE;
namespace {

constexpr int64_t kBq = 128;   // queries per tile (columns of st: a multiple of kColAlign)
constexpr int64_t kBk = 64;    // keys per tile
constexpr int64_t kHalf = 64;  // queries per block of a mask's layout: a tile is two halves

// How a visited key tile's logits are masked.
enum class TileKind : uint8_t {
  full,    // every pair of the computed columns kept: no element masking
  causal,  // straddles the causal diagonal: the vectorized causal mask
  masked,  // partial tile of a sparse mask: the mask's element predicate
};

// One key tile of a query tile's list: key block kb against the query columns [c0, c1)
// (whole halves). A masked tile says which halves are partial (bit 0: first, bit 1: second);
// its other half, if computed, keeps every pair.
struct Visit {
  int32_t kb;
  int16_t c0, c1;
  TileKind kind;
  uint8_t partial;
};

// Packed key tiles of one thread, in slots of one arena. A slot holds one key block's K rows,
// then its V rows, [2][kBk][Dp], rows past the sequence's end zero.
struct KvCache {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  int64_t tile_floats = 0, max_slots = 0, capacity = 0;
  std::unique_ptr<float[], Free> arena;  // [capacity][tile_floats]
  std::vector<int32_t> free_slots;
  std::vector<int32_t> slot_of;    // [key blocks] slot, −1 when not packed
  std::vector<int32_t> uses;       // [key blocks] visits in the chunk
  std::vector<int32_t> first_use;  // [key blocks] first and last query tile of the chunk visiting it
  std::vector<int32_t> last_use;
  std::vector<int32_t> live;       // [query tiles of the chunk + 1] blocks that become live − die
  hwy::AlignedFreeUniquePtr<float[]> transient;  // a tile packed for one visit
  uint64_t call = 0;  // the FlashForward call this thread last worked for

  float* slot(int64_t s) const { return arena.get() + s * tile_floats; }
  // At least `slots` slots (existing contents are dropped: called between chunks). A call asks
  // every chunk for the same number; the first chunk of a call shrinks an arena more than twice
  // as large, so that a large call's arena does not stay with small calls after it. An arena
  // of 2 MiB or more asks for transparent huge pages: its first touch then costs a few page
  // faults instead of one per 4 KiB.
  void reserve(int64_t slots, bool first_of_call) {
    if (slots <= capacity && !(first_of_call && capacity > 2 * slots + 16)) return;
    if (slots == 0) {
      arena.reset();
      capacity = 0;
      return;
    }
    constexpr size_t kHuge = size_t{2} << 20;
    const size_t bytes = static_cast<size_t>(slots * tile_floats) * sizeof(float);
    const size_t align = bytes >= kHuge ? kHuge : 64;
    const size_t rounded = (bytes + align - 1) / align * align;
    arena.reset(static_cast<float*>(std::aligned_alloc(align, rounded)));
    if (arena == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (align == kHuge) madvise(arena.get(), rounded, MADV_HUGEPAGE);
#endif
    capacity = slots;
  }
};

struct FwdScratch {
  int64_t Dp;
  hwy::AlignedFreeUniquePtr<float[]> mem;
  hwy::AlignedFreeUniquePtr<uint8_t[]> keep_mem;
  float *qt, *st, *o, *m, *l, *alpha;
  uint8_t* keep;  // [kBk][kBq] element mask of a partial tile
  std::vector<Visit> visits;
  KvCache cache;

  FwdScratch(int64_t Dp_, int64_t pack_budget)
      : Dp(Dp_),
        mem(hwy::AllocateAligned<float>(Dp * kBq * 2 + kBk * kBq + 3 * kBq)),
        keep_mem(hwy::AllocateAligned<uint8_t>(kBk * kBq)) {
    qt = mem.get();      // [Dp][kBq]
    st = qt + Dp * kBq;  // [kBk][kBq]
    o = st + kBk * kBq;  // [kBq][Dp]
    m = o + kBq * Dp;    // [kBq]
    l = m + kBq;         // [kBq]
    alpha = l + kBq;     // [kBq]
    keep = keep_mem.get();
    cache.tile_floats = 2 * kBk * Dp;
    cache.max_slots = pack_budget / (cache.tile_floats * static_cast<int64_t>(sizeof(float)));
    cache.transient = hwy::AllocateAligned<float>(cache.tile_floats);
  }
};

// The calling thread's workspace, kept between calls so that its pages (and a packed-tile
// arena of up to the budget) are not faulted in again by every call.
FwdScratch& ThreadScratch(int64_t Dp, int64_t pack_budget) {
  thread_local std::unique_ptr<FwdScratch> s;
  if (s == nullptr || s->Dp != Dp) s = std::make_unique<FwdScratch>(Dp, pack_budget);
  s->cache.max_slots = pack_budget / (s->cache.tile_floats * static_cast<int64_t>(sizeof(float)));
  return *s;
}

// Query tiles [t0, t1) of one sequence, for every query head of KV head hk.
struct Chunk {
  int32_t seq, hk;
  int64_t t0, t1;
};

// The key tiles that query tile [i0, i0 + nq) of head h visits, ascending, into out.
void ListKeyTiles(const Problem& pr, const MaskPlan* plan, int64_t seq, int64_t h, int64_t i0, int64_t nq,
                  std::vector<Visit>& out) {
  const Sequence& sq = pr.seqs[seq];
  out.clear();
  if (plan != nullptr) {  // merge the layout rows of the two halves
    const BlockLayout& lay = plan->layout(seq, h);
    const int64_t qa = i0 / kHalf;
    const bool two = nq > kHalf;
    int64_t a = lay.row_begin[qa], a_end = lay.row_begin[qa + 1];
    int64_t b = two ? lay.row_begin[qa + 1] : 0, b_end = two ? lay.row_begin[qa + 2] : 0;
    constexpr int32_t kNone = std::numeric_limits<int32_t>::max();
    while (a < a_end || b < b_end) {
      const int32_t ka = a < a_end ? lay.key_block[a] : kNone, kb = b < b_end ? lay.key_block[b] : kNone;
      const int32_t kmin = std::min(ka, kb);
      const bool in_a = ka == kmin, in_b = kb == kmin;
      const uint8_t partial = static_cast<uint8_t>((in_a && lay.partial[a]) | ((in_b && lay.partial[b]) << 1));
      out.push_back({kmin, static_cast<int16_t>(in_a ? 0 : kHalf), static_cast<int16_t>(in_b ? kBq : kHalf),
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
    const bool crosses = pr.causal && std::min(j0 + kBk, k_end) > k_full;
    out.push_back({static_cast<int32_t>(j0 / kBk), 0, static_cast<int16_t>(kBq),
                   crosses ? TileKind::causal : TileKind::full, 0});
  }
}

// Requests the rows of key tile j0 of K and V (prefetch.h: hwy::Prefetch called from a lambda
// here used to compile to nothing).
HWY_INLINE void PrefetchTile(const TensorView& k, const TensorView& v, const Sequence& sq, int64_t hk, int64_t D,
                             int64_t j0) {
  const int64_t n = std::min(kBk, sq.nk - j0), esize = dtype_size(k.dtype), bytes = D * esize;
  const char* kb = static_cast<const char*>(k.data) + offset4(k, sq.batch, sq.k0 + j0, hk, 0) * esize;
  const char* vb = static_cast<const char*>(v.data) + offset4(v, sq.batch, sq.k0 + j0, hk, 0) * esize;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t x = 0; x < bytes; x += 64) {
      prefetch_l1(kb + j * k.strides[1] * esize + x);
      prefetch_l1(vb + j * v.strides[1] * esize + x);
    }
}

// The packed rows of key block kb, K then V ([2][kBk][Dp]): on its first visit of the chunk
// packed into a slot that stays until its last visit, or, for a block visited once or past the
// budget, into the transient tile.
const float* PackedTile(const TensorView& k, const TensorView& v, const Sequence& sq, int64_t hk, int64_t D,
                        int64_t Dp, int64_t kb, KvCache& c) {
  int32_t slot = c.slot_of[kb];
  if (slot >= 0) return c.slot(slot);
  if (c.uses[kb] > 1 && !c.free_slots.empty()) {
    slot = c.free_slots.back();
    c.free_slots.pop_back();
    c.slot_of[kb] = slot;
  }
  float* dst = slot >= 0 ? c.slot(slot) : c.transient.get();
  const int64_t j0 = kb * kBk, n = std::min(kBk, sq.nk - j0);
  const int64_t kbase = offset4(k, sq.batch, sq.k0 + j0, hk, 0), vbase = offset4(v, sq.batch, sq.k0 + j0, hk, 0);
  float* kd = dst;             // [kBk][Dp]
  float* vd = dst + kBk * Dp;  // [kBk][Dp]
  // K rows, then V rows, each loop's reads a constant stride apart, requesting the rows a few
  // ahead (in case the prefetch one visit ahead was late or there was none).
  const int64_t ke = dtype_size(k.dtype), ve = dtype_size(v.dtype);
  const char* kb0 = static_cast<const char*>(k.data) + kbase * ke;
  const char* vb0 = static_cast<const char*>(v.data) + vbase * ve;
  constexpr int64_t kAhead = 8;
  for (int64_t j = 0; j < n; ++j) {
    if (j + kAhead < n) prefetch_l1(kb0 + (j + kAhead) * k.strides[1] * ke);
    LoadRowF32(k, kbase + j * k.strides[1], k.strides[3], D, Dp, kd + j * Dp);
  }
  for (int64_t j = 0; j < n; ++j) {
    if (j + kAhead < n) prefetch_l1(vb0 + (j + kAhead) * v.strides[1] * ve);
    LoadRowF32(v, vbase + j * v.strides[1], v.strides[3], D, Dp, vd + j * Dp);
  }
  std::fill(kd + n * Dp, kd + kBk * Dp, 0.0f);
  std::fill(vd + n * Dp, vd + kBk * Dp, 0.0f);
  return dst;
}

// Key rows [r0, r1) of a packed tile against query columns [c0, c1) (a multiple of the
// column step) of the query tile: logits, shaping, one online-softmax step and P·V.
void ComputeBlock(const float* kp, const float* vp, int64_t D, int64_t Dp, int64_t nq, int64_t r0, int64_t r1,
                  int64_t c0, int64_t c1, TileLogits shape, FwdScratch& s) {
  const int64_t rows = r1 - r0, cols = c1 - c0;
  float* st = s.st + r0 * kBq + c0;
  // st[j][i] = Σ_d k[j][d] · qt[d][i]
  TileProduct<Accum::overwrite>(rows, cols, {kp + r0 * Dp, Dp, 1}, s.qt + c0, kBq, D, st, kBq);
  shape.q_first += c0;
  shape.k_first += r0;
  if (shape.keep != nullptr) shape.keep += r0 * shape.keep_ld + c0;
  ShapeLogits(st, kBq, rows, cols, shape);
  OnlineSoftmaxStep(st, kBq, rows, cols, s.m + c0, s.l + c0, s.alpha + c0);
  // o[i][:] = alpha[i] · o[i][:] + Σ_j st[j][i] · v[j][:]
  TileProduct<Accum::scale_add>(std::min(cols, nq - c0), Dp, {st, 1, kBq}, vp + r0 * Dp, Dp, rows, s.o + c0 * Dp,
                                Dp, s.alpha + c0);
}

// Requests rows [r0, r1) of query tile (i0, h) of q.
HWY_INLINE void PrefetchQueryRows(const TensorView& q, const Sequence& sq, int64_t h, int64_t i0, int64_t r0,
                                  int64_t r1, int64_t D) {
  const int64_t esize = dtype_size(q.dtype), bytes = D * esize;
  const char* base = static_cast<const char*>(q.data) + offset4(q, sq.batch, sq.q0 + i0, h, 0) * esize;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t x = 0; x < bytes; x += 64) prefetch_l1(base + r * q.strides[1] * esize + x);
}

// The query tile that a thread computes after this one, whose rows are prefetched meanwhile.
struct NextTile {
  int64_t h = -1, i0 = 0, nq = 0;  // h < 0: none
};

// One query tile [i0, i0 + nq) of head h over its key tiles (s.visits).
void ForwardTile(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                 const TensorView& out, const TensorView& lse, const MaskPlan* plan, int64_t seq, int64_t h,
                 int64_t i0, const NextTile& next, bool stream_out, FwdScratch& s) {
  const hn::ScalableTag<float> df;
  const int64_t W = 2 * static_cast<int64_t>(hn::Lanes(df));  // TileProduct's column step
  const Sequence& sq = pr.seqs[seq];
  const int64_t D = pr.head_dim, Dp = pad_cols(D);
  const int64_t hk = h / pr.group();
  const int64_t nq = std::min(kBq, sq.nq - i0);
  const bool can_prefetch = k.strides[3] == 1 && v.strides[3] == 1;

  // qt[d][i] = scale · log2e · q[i][d], zero-padded to Dp × kBq. Rows are converted into o
  // (free until the first product) and transposed from there.
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
  // The next tile's query rows lie H·D apart too: a share of them before each visit.
  const int64_t q_share = s.visits.empty() ? 0 : (next.nq + static_cast<int64_t>(s.visits.size()) - 1) /
                                                     static_cast<int64_t>(s.visits.size());
  for (size_t vi = 0; vi < s.visits.size(); ++vi) {
    const Visit& t = s.visits[vi];
    if (next.h >= 0 && q.strides[3] == 1) {
      const int64_t r0 = static_cast<int64_t>(vi) * q_share;
      PrefetchQueryRows(q, sq, next.h, next.i0, r0, std::min(next.nq, r0 + q_share), D);
    }
    // Rows of a tile not packed yet lie H·D apart, two or so per page: the hardware prefetcher
    // does not follow them across pages, so they are requested one tile ahead.
    if (vi + 1 < s.visits.size() && can_prefetch && c.slot_of[s.visits[vi + 1].kb] < 0) {
      PrefetchTile(k, v, sq, hk, D, s.visits[vi + 1].kb * kBk);
    }
    const int64_t j0 = t.kb * kBk, nk = std::min(kBk, sq.nk - j0);
    const int64_t c0 = t.c0, c1 = std::min<int64_t>(t.c1, nq);
    if (c0 >= c1) continue;
    const int64_t c1w = std::min(kBq, (c1 + W - 1) / W * W);  // whole column steps
    TileLogits shape;
    shape.softcap = pr.softcap * kLog2e;
    if (t.kind == TileKind::causal) shape.band = MaskBand{MaskBand::kUnbounded, 0};
    shape.q_first = i0;
    shape.k_first = j0;
    shape.diag = sq.nk - sq.nq;
    if (t.kind != TileKind::masked) {
      const float* kp = PackedTile(k, v, sq, hk, D, Dp, t.kb, c);
      ComputeBlock(kp, kp + kBk * Dp, D, Dp, nq, 0, nk, c0, c1w, shape, s);
      continue;
    }
    // Partial halves over which the mask is a band: each strip of W columns over the key rows
    // its band reaches, masked arithmetically; a full half in one block.
    std::optional<MaskBand> bands[2];
    bool banded = true;
    for (int64_t half = c0 / kHalf; half * kHalf < c1; ++half) {
      const int64_t hb = half * kHalf, he = std::min(c1, hb + kHalf);
      if (t.partial & (1 << half)) {
        bands[half] = plan->mask.band(seq, h, sq.nq, sq.nk, i0 + hb, j0, nk, he - hb);
        banded = banded && bands[half].has_value();
      }
    }
    if (banded) {
      const float* kp = PackedTile(k, v, sq, hk, D, Dp, t.kb, c);
      for (int64_t half = c0 / kHalf; half * kHalf < c1; ++half) {
        const int64_t hb = half * kHalf, he = std::min(c1, hb + kHalf), hew = std::min(c1w, hb + kHalf);
        if (!(t.partial & (1 << half))) {
          ComputeBlock(kp, kp + kBk * Dp, D, Dp, nq, 0, nk, hb, hew, shape, s);
          continue;
        }
        TileLogits bs = shape;
        bs.band = bands[half];
        // Strip [x0, x1) of queries keeps keys [x0 + diag − left, x1 − 1 + diag + right].
        const auto rows_of = [&](int64_t x) {
          const int64_t qa = i0 + x, qb = i0 + std::min(x + W, he) - 1;
          const int64_t lo = qa + sq.nk - sq.nq - std::min(bs.band->left, sq.nk) - j0;
          const int64_t hi = qb + sq.nk - sq.nq + std::min(bs.band->right, sq.nk) - j0 + 1;
          return std::pair<int64_t, int64_t>{std::clamp<int64_t>(lo, 0, nk), std::clamp<int64_t>(hi, 0, nk)};
        };
        for (int64_t x = hb; x < he;) {
          const auto [lo, hi] = rows_of(x);
          int64_t e = x + W;
          while (e < he && rows_of(e) == std::pair<int64_t, int64_t>{lo, hi}) e += W;
          if (lo < hi) ComputeBlock(kp, kp + kBk * Dp, D, Dp, nq, lo, hi, x, std::min(e, hew), bs, s);
          x = e;
        }
      }
      continue;
    }
    // keep[r][i]: the mask's element predicate on partial halves, 1 on a full half, 0 past nq.
    for (int64_t half = c0 / kHalf; half * kHalf < c1; ++half) {
      const int64_t hb = half * kHalf, he = std::min(c1, hb + kHalf);
      if (t.partial & (1 << half)) {
        plan->mask.fill(seq, h, sq.nq, sq.nk, i0 + hb, j0, nk, he - hb, s.keep + hb, kBq);
      } else {
        for (int64_t r = 0; r < nk; ++r) std::fill(s.keep + r * kBq + hb, s.keep + r * kBq + he, uint8_t{1});
      }
    }
    for (int64_t r = 0; r < nk; ++r) std::fill(s.keep + r * kBq + c1, s.keep + r * kBq + c1w, uint8_t{0});
    shape.keep = s.keep;
    shape.keep_ld = kBq;
    // The kept key rows of each strip of W columns: [lo, hi), empty when lo >= hi.
    int64_t lo[kBq / 8], hi[kBq / 8];
    const int64_t x0 = c0 / W, x1 = c1w / W;
    for (int64_t x = x0; x < x1; ++x) lo[x] = nk, hi[x] = 0;
    for (int64_t r = 0; r < nk; ++r) {
      const uint8_t* kr = s.keep + r * kBq;
      for (int64_t x = x0; x < x1; ++x) {
        uint8_t any = 0;
        for (int64_t i = 0; i < W; ++i) any |= kr[x * W + i];  // an OR reduction: vectorized
        if (any) lo[x] = std::min(lo[x], r), hi[x] = r + 1;
      }
    }
    // Adjacent strips with the same rows are one block.
    const float* kp = nullptr;
    for (int64_t x = x0; x < x1;) {
      int64_t e = x + 1;
      while (e < x1 && lo[e] == lo[x] && hi[e] == hi[x]) ++e;
      if (lo[x] < hi[x]) {
        if (kp == nullptr) kp = PackedTile(k, v, sq, hk, D, Dp, t.kb, c);
        ComputeBlock(kp, kp + kBk * Dp, D, Dp, nq, lo[x], hi[x], x * W, e * W, shape, s);
      }
      x = e;
    }
  }

  for (int64_t i = 0; i < nq; ++i) {
    const float li = s.l[i];
    const float inv = li > 0 ? 1.0f / li : 0.0f;
    const int64_t base = offset4(out, sq.batch, sq.q0 + i0 + i, h, 0);
    const float* oi = s.o + i * Dp;
    if (out.dtype == DType::f32 && out.strides[3] == 1) {
      float* dst = static_cast<float*>(out.data) + base;
      // Streaming stores of (up to) 4 floats: 16-byte alignment is what a malloc'd buffer has.
      const hn::CappedTag<float, 4> d4;
      const int64_t L4 = static_cast<int64_t>(hn::Lanes(d4));
      if (stream_out && D % L4 == 0 && reinterpret_cast<uintptr_t>(dst) % (L4 * sizeof(float)) == 0) {
        const auto vinv = hn::Set(d4, inv);
        for (int64_t d = 0; d < D; d += L4) hn::Stream(hn::Mul(hn::LoadU(d4, oi + d), vinv), d4, dst + d);
      } else {
        for (int64_t d = 0; d < D; ++d) dst[d] = oi[d] * inv;
      }
    } else {
      for (int64_t d = 0; d < D; ++d) store_f32(out, base + d * out.strides[3], oi[d] * inv);
    }
    if (!lse.empty()) {
      static_cast<float*>(lse.data)[offset3(lse, sq.batch, h, sq.q0 + i0 + i)] =
          li > 0 ? (s.m[i] + std::log2(li)) * kLn2 : -std::numeric_limits<float>::infinity();
    }
  }
}

// The chunk's visits per key block (uses, first and last query tile) into s.cache, and the most
// blocks visited more than once that are live at one query tile: the slots the chunk can use.
int64_t ChunkUses(const Problem& pr, const MaskPlan* plan, const Chunk& ch, FwdScratch& s) {
  const Sequence& sq = pr.seqs[ch.seq];
  const int64_t h_first = ch.hk * pr.group(), h_end = h_first + pr.group();
  const int64_t kblocks = (sq.nk + kBk - 1) / kBk;
  KvCache& c = s.cache;
  c.slot_of.assign(kblocks, -1);
  c.uses.assign(kblocks, 0);
  c.first_use.assign(kblocks, -1);
  c.last_use.assign(kblocks, -1);
  for (int64_t t = ch.t0; t < ch.t1; ++t) {
    const int64_t i0 = t * kBq, nq = std::min(kBq, sq.nq - i0);
    for (int64_t h = h_first; h < h_end; ++h) {
      ListKeyTiles(pr, plan, ch.seq, h, i0, nq, s.visits);
      for (const Visit& x : s.visits) {
        if (c.uses[x.kb]++ == 0) c.first_use[x.kb] = static_cast<int32_t>(t);
        c.last_use[x.kb] = static_cast<int32_t>(t);
      }
    }
  }
  c.live.assign(static_cast<size_t>(ch.t1 - ch.t0 + 1), 0);
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    if (c.uses[kb] < 2) continue;
    ++c.live[c.first_use[kb] - ch.t0];
    --c.live[c.last_use[kb] + 1 - ch.t0];
  }
  int64_t peak = 0;
  for (int64_t t = 0, n = 0; t < ch.t1 - ch.t0; ++t) peak = std::max(peak, n += c.live[t]);
  return peak;
}

// Every query tile of the chunk, for every query head of its KV group, with `slots` packed
// slots; a key tile's slot is freed after the last query tile of the chunk that visits it.
void ForwardChunk(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& out, const TensorView& lse, const MaskPlan* plan, const Chunk& ch,
                  bool stream_out, uint64_t call, int64_t slots, FwdScratch& s) {
  const Sequence& sq = pr.seqs[ch.seq];
  const int64_t h_first = ch.hk * pr.group(), h_end = h_first + pr.group();
  KvCache& c = s.cache;
  ChunkUses(pr, plan, ch, s);
  c.reserve(std::min(slots, c.max_slots), c.call != call);
  c.call = call;
  c.free_slots.clear();
  for (int32_t i = static_cast<int32_t>(std::min(c.capacity, c.max_slots)) - 1; i >= 0; --i) c.free_slots.push_back(i);
  for (int64_t t = ch.t0; t < ch.t1; ++t) {
    const int64_t i0 = t * kBq, nq = std::min(kBq, sq.nq - i0);
    for (int64_t h = h_first; h < h_end; ++h) {
      NextTile next;
      if (h + 1 < h_end) {
        next = {h + 1, i0, nq};
      } else if (t + 1 < ch.t1) {
        next = {h_first, i0 + kBq, std::min(kBq, sq.nq - i0 - kBq)};
      }
      ListKeyTiles(pr, plan, ch.seq, h, i0, nq, s.visits);
      ForwardTile(pr, q, k, v, out, lse, plan, ch.seq, h, i0, next, stream_out, s);
    }
    for (int64_t h = h_end - 1; h >= h_first; --h) {  // s.visits holds the last head's list
      if (h + 1 < h_end) ListKeyTiles(pr, plan, ch.seq, h, i0, nq, s.visits);
      for (const Visit& x : s.visits) {
        if (c.last_use[x.kb] == t && c.slot_of[x.kb] >= 0) {
          c.free_slots.push_back(c.slot_of[x.kb]);
          c.slot_of[x.kb] = -1;
        }
      }
    }
  }
}

using attnkit::lab::FullRows;
using attnkit::lab::SplitFullRows;


// The full rows of every sequence and query head against all of the sequence's keys: a
// sequence's keys are cut into parts computed in parallel, each a sweep over its key tiles that
// packs every KV head's rows of a tile in address order (K and V rows of all heads are
// contiguous) and runs every query head's full rows over them in groups of W columns; the parts
// are merged by their log-sum-exp and written over what the tiled pass left in those rows.
void FullRowsPass(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& out, const TensorView& lse, const MaskPlan& plan, const FullRows& fr) {
  const hn::ScalableTag<float> df;
  const int64_t W = 2 * static_cast<int64_t>(hn::Lanes(df));
  const int64_t D = pr.head_dim, Dp = pad_cols(D), Hkv = pr.heads_kv;
  const float qscale = pr.scale * kLog2e;
  ThreadPool& tp = pool();
  struct Group {
    int64_t h;
    const int32_t* rows;
    int64_t n;  // <= W
  };
  const int64_t per_group = W * Dp + 2 * W;  // o [W][Dp], m [W], l [W]
  for (size_t si = 0; si < pr.seqs.size(); ++si) {
    const Sequence& sq = pr.seqs[si];
    std::vector<Group> groups;
    for (int64_t h = 0; h < pr.heads_q; ++h) {
      const std::vector<int32_t>& rows = fr.rows[plan.slot(static_cast<int64_t>(si), h)];
      for (size_t g = 0; g < rows.size(); g += static_cast<size_t>(W)) {
        groups.push_back({h, rows.data() + g, std::min<int64_t>(W, static_cast<int64_t>(rows.size() - g))});
      }
    }
    if (groups.empty() || sq.nk == 0) continue;
    const int64_t G = static_cast<int64_t>(groups.size());
    // qt[g][d][c] = scale · log2e · q[row c of group g][d], zero past the group's rows.
    hwy::AlignedFreeUniquePtr<float[]> qt = hwy::AllocateAligned<float>(G * Dp * W);
    std::vector<float> row(static_cast<size_t>(Dp));
    for (int64_t g = 0; g < G; ++g) {
      float* t = qt.get() + g * Dp * W;
      std::fill(t, t + Dp * W, 0.0f);
      for (int64_t c = 0; c < groups[g].n; ++c) {
        LoadRowF32(q, offset4(q, sq.batch, sq.q0 + groups[g].rows[c], groups[g].h, 0), q.strides[3], D, Dp, row.data());
        for (int64_t d = 0; d < D; ++d) t[d * W + c] = qscale * row[d];
      }
    }
    const int64_t tiles = (sq.nk + kBk - 1) / kBk;
    const int64_t parts = std::clamp<int64_t>(tiles / 16, 1, 2 * static_cast<int64_t>(tp.size()));
    hwy::AlignedFreeUniquePtr<float[]> state = hwy::AllocateAligned<float>(parts * G * per_group);
    tp.parallel_for(parts, [&](int64_t p, int) {
      const int64_t kb0 = tiles * p / parts, kb1 = tiles * (p + 1) / parts;
      float* st_p = state.get() + p * G * per_group;
      for (int64_t g = 0; g < G; ++g) {
        float* s = st_p + g * per_group;
        std::fill(s, s + W * Dp, 0.0f);
        std::fill(s + W * Dp, s + W * Dp + W, -std::numeric_limits<float>::infinity());
        std::fill(s + W * Dp + W, s + W * Dp + 2 * W, 0.0f);
      }
      thread_local hwy::AlignedFreeUniquePtr<float[]> buf;
      thread_local int64_t buf_floats = 0;
      const int64_t need = 2 * Hkv * kBk * Dp + kBk * W + W;
      if (buf_floats < need) {
        buf = hwy::AllocateAligned<float>(need);
        buf_floats = need;
      }
      float* kv = buf.get();  // [Hkv][2][kBk][Dp]
      float* st = kv + 2 * Hkv * kBk * Dp;
      float* alpha = st + kBk * W;
      TileLogits shape;
      shape.softcap = pr.softcap * kLog2e;
      for (int64_t kb = kb0; kb < kb1; ++kb) {
        const int64_t j0 = kb * kBk, n = std::min(kBk, sq.nk - j0);
        for (int64_t j = 0; j < n; ++j)
          for (int64_t hk = 0; hk < Hkv; ++hk) {
            LoadRowF32(k, offset4(k, sq.batch, sq.k0 + j0 + j, hk, 0), k.strides[3], D, Dp, kv + (2 * hk * kBk + j) * Dp);
          }
        for (int64_t j = 0; j < n; ++j)
          for (int64_t hk = 0; hk < Hkv; ++hk) {
            LoadRowF32(v, offset4(v, sq.batch, sq.k0 + j0 + j, hk, 0), v.strides[3], D, Dp,
                       kv + ((2 * hk + 1) * kBk + j) * Dp);
          }
        for (int64_t g = 0; g < G; ++g) {
          const int64_t hk = groups[g].h / pr.group();
          const float* kp = kv + 2 * hk * kBk * Dp;
          float* s = st_p + g * per_group;
          float *o = s, *m = s + W * Dp, *l = m + W;
          TileProduct<Accum::overwrite>(n, W, {kp, Dp, 1}, qt.get() + g * Dp * W, W, D, st, W);
          ShapeLogits(st, W, n, W, shape);
          OnlineSoftmaxStep(st, W, n, W, m, l, alpha);
          TileProduct<Accum::scale_add>(groups[g].n, Dp, {st, 1, W}, kp + kBk * Dp, Dp, n, o, Dp, alpha);
        }
      }
    });
    // Merge the parts and write the rows.
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t c = 0; c < groups[g].n; ++c) {
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t p = 0; p < parts; ++p) mx = std::max(mx, state[(p * G + g) * per_group + W * Dp + c]);
        float L = 0.0f;
        for (int64_t d = 0; d < Dp; ++d) row[d] = 0.0f;
        for (int64_t p = 0; p < parts; ++p) {
          const float* s = state.get() + (p * G + g) * per_group;
          const float mp = s[W * Dp + c];
          if (mp == -std::numeric_limits<float>::infinity()) continue;
          const float w = std::exp2(mp - mx);
          L += w * s[W * Dp + W + c];
          for (int64_t d = 0; d < D; ++d) row[d] += w * s[c * Dp + d];
        }
        const float inv = L > 0 ? 1.0f / L : 0.0f;
        const int64_t i = groups[g].rows[c], h = groups[g].h;
        const int64_t base = offset4(out, sq.batch, sq.q0 + i, h, 0);
        for (int64_t d = 0; d < D; ++d) store_f32(out, base + d * out.strides[3], row[d] * inv);
        if (!lse.empty()) {
          static_cast<float*>(lse.data)[offset3(lse, sq.batch, h, sq.q0 + i)] =
              L > 0 ? (mx + std::log2(L)) * kLn2 : -std::numeric_limits<float>::infinity();
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
  FullRows full_rows;
  if (plan) {
    const hn::ScalableTag<float> df;
    full_rows = SplitFullRows(pr, *plan, 2 * static_cast<int64_t>(hn::Lanes(df)));
  }
  ThreadPool& tp = pool();
  const FlashFwdTuning tune = flash_fwd_tuning();
  // Chunks of `run` query tiles, several per thread in all so that the last ones balance the
  // threads; the latest tiles of each sequence first (causal: they see the most keys).
  int64_t total_tiles = 0;
  for (const Sequence& sq : pr.seqs) total_tiles += (sq.nq + kBq - 1) / kBq * pr.heads_kv;
  const int64_t run =
      std::max<int64_t>(1, total_tiles / std::max<int64_t>(1, tune.chunks_per_thread * tp.size()));
  std::vector<Chunk> chunks;
  for (size_t si = 0; si < pr.seqs.size(); ++si) {
    const int64_t tiles = (pr.seqs[si].nq + kBq - 1) / kBq;
    for (int64_t t1 = tiles; t1 > 0; t1 -= run)
      for (int64_t hk = 0; hk < pr.heads_kv; ++hk)
        chunks.push_back({static_cast<int32_t>(si), static_cast<int32_t>(hk), std::max<int64_t>(0, t1 - run), t1});
  }
  // Outputs larger than the caches are written with streaming stores (no read of the lines
  // they replace); smaller ones stay in cache for whoever reads them next.
  int64_t rows = 0;
  for (const Sequence& sq : pr.seqs) rows += sq.nq;
  const bool stream_out = rows * pr.heads_q * pr.head_dim * dtype_size(out.dtype) >= tune.stream_out_bytes;
  // Every thread's arena holds the slots of the call's most demanding chunk, so that it is
  // sized once per call.
  std::vector<int64_t> peaks(chunks.size());
  tp.parallel_for(static_cast<int64_t>(chunks.size()), [&](int64_t i, int) {
    peaks[i] = ChunkUses(pr, plan ? &*plan : nullptr, chunks[i], ThreadScratch(pad_cols(pr.head_dim), tune.pack_budget_bytes));
  });
  const int64_t slots = peaks.empty() ? 0 : *std::max_element(peaks.begin(), peaks.end());
  static std::atomic<uint64_t> calls{0};
  const uint64_t call = ++calls;
  tp.parallel_for(static_cast<int64_t>(chunks.size()), [&](int64_t i, int) {
    FwdScratch& s = ThreadScratch(pad_cols(pr.head_dim), tune.pack_budget_bytes);
    ForwardChunk(pr, q, k, v, out, lse, plan ? &*plan : nullptr, chunks[i], stream_out, call, slots, s);
    if (stream_out) hwy::FlushStream();
  });
  if (full_rows.any) FullRowsPass(pr, q, k, v, out, lse, *plan, full_rows);
}

}  // namespace attnkit::cpu::lab13::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu::lab13 {
HWY_EXPORT(FlashForward);
void flash_fwd(const Problem& pr, const TensorView& q, const TensorView& k, const TensorView& v,
               const TensorView& out, const TensorView& lse) {
  HWY_DYNAMIC_DISPATCH(FlashForward)(pr, q, k, v, out, lse);
}
}  // namespace attnkit::cpu::lab13
#endif
