// RWKV-4 time mixing (WKV-4) on the CPU, forward, step and backward (see include/attnkit/recurrent.h),
// Highway SIMD with runtime dispatch.
//
// WKV-4: SIMD lanes run channels (blocks of kW = 16, staged per chunk of kT steps like the
// selective scan). The stable state (a, b, p) carries the sums scaled by e^{−p}. Of the two
// exponentials e^{x − max(x, y)} and e^{y − max(x, y)} one is 1, so each merge costs a single
// exp: e = exp(−|x − y|). The forward (and the step) merge once per step: the output reuses the
// state update's factors, with the bonus as the per-channel factor e^{u−w} (Wkv4ForwardTile).
// A sequence shared by several threads is split in time: each segment from the empty state, then
// the first rows of the later ones again from their true start state (Wkv4RerunGroup).
// Backward per channel block (all batches, so dw and du need no cross-thread sums):
//   forward pass: dw, du (they need y_t and the forward sums only) and the state at chunk starts;
//   reverse pass per chunk: recompute y_t, q_t = ln of the denominator's scale and the scaled
//   denominator n_t, then walk back with G_i = Σ_{t>i} dy_t e^{−(t−1−i)w}/den_t (and H_i with
//   dy_t·y_t), kept as e^{r}·Ĝ with r the running max exponent:
//     dv_i = e^{u+k_i}dy_i/den_i + e^{k_i}G_i,  dk_i = e^{u+k_i}dy_i(v_i − y_i)/den_i + e^{k_i}(v_i G_i − H_i)
//     dw   = −Σ_t dy_t/den_t · Σ_{i<t} (t−1−i) e^{−(t−1−i)w + k_i}(v_i − y_t)   (carried a', b' sums)
//
// WKV-6 is in rwkv6_kernels.cc.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/rwkv_kernels.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/problem.h"
#include "core/thread_pool.h"
#include "cpu/rwkv_kernels.h"
#include "cpu/prefetch.h"
#include "cpu/scan_exp-inl.h"
#include "cpu/scan_stage.h"
#include "cpu/stream_store-inl.h"
#include "hwy/aligned_allocator.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace {

using DF = hn::ScalableTag<float>;
using V = hn::Vec<DF>;

constexpr int64_t kW = 16;   // WKV-4 channels per block
constexpr int64_t kT = 64;   // WKV-4 steps per chunk
// Staging buffers sit kPad floats beyond multiples of their size apart, so that the same row of
// two buffers does not share its address modulo 4 KiB (a load would wait on an unrelated store).
constexpr int64_t kPad = 16;

// Stable merge of e^{x}·A and e^{y}·B: returns m = max(x, y) and the factors ex = e^{x−m},
// ey = e^{y−m}, one of which is 1: with d = x − y, the other is e^{−|d|}, and d's sign picks.
HWY_INLINE void Merge(DF df, V x, V y, V& m, V& ex, V& ey) {
  const V d = hn::Sub(x, y);
  m = hn::Max(x, y);
  const V e = Exp2NonPositive(df, hn::Mul(hn::Abs(d), hn::Set(df, -kLog2e)));
  const V one = hn::Set(df, 1.0f);
  ex = hn::IfNegativeThenElse(d, e, one);
  ey = hn::IfNegativeThenElse(d, one, e);
}

// ---- WKV-4 ------------------------------------------------------------------------------

struct Wkv4Chunk {
  hwy::AlignedFreeUniquePtr<float[]> mem;
  float *k, *v, *y, *dy, *q, *inv, *gk, *gv;  // [kT][kW]
  Wkv4Chunk() : mem(hwy::AllocateAligned<float>(8 * (kT * kW + kPad))) {
    float* p = mem.get();
    for (float** b : {&k, &v, &y, &dy, &q, &inv, &gk, &gv}) *b = p, p += kT * kW + kPad;
  }
};

struct alignas(64) Wkv4Consts {
  float w[kW], u[kW];
};

Wkv4Consts LoadWkv4Consts(const TensorView& w, const TensorView& u, int64_t c0, int64_t nc) {
  Wkv4Consts c;
  for (int64_t j = 0; j < kW; ++j) {
    c.w[j] = j < nc ? fptr(w)[(c0 + j) * w.strides[0]] : 0.0f;
    c.u[j] = j < nc ? fptr(u)[(c0 + j) * u.strides[0]] : 0.0f;
  }
  return c;
}

// One channel vector's carried state; aw, bw are the (t−j)-weighted sums of the backward pass.
struct Wkv4Vec {
  V a, b, p, aw, bw;
};

// Steps [0, nt) of a staged chunk for the vectors of a block. Writes y; with q / inv also the
// log-scale q_t and 1/n_t of each denominator den_t = e^{q_t}·n_t; with grads, accumulates
// dw and du from dy (the forward-direction part of the backward pass).
template <bool kBackward>
HWY_INLINE void Wkv4Chunk_(DF df, const Wkv4Consts& c, int64_t nt, Wkv4Chunk& ch, Wkv4Vec* st, V* dw, V* du) {
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  for (int64_t o = 0; o < kW; o += L) {
    Wkv4Vec s = st[o / L];
    const V w = hn::Load(df, c.w + o), u = hn::Load(df, c.u + o);
    V gw = kBackward ? dw[o / L] : hn::Zero(df), gu = kBackward ? du[o / L] : hn::Zero(df);
    for (int64_t t = 0; t < nt; ++t) {
      const V k = hn::Load(df, ch.k + t * kW + o), v = hn::Load(df, ch.v + t * kW + o);
      V q, e1, e2;
      Merge(df, s.p, hn::Add(u, k), q, e1, e2);
      const V den = hn::MulAdd(e1, s.b, e2);
      const V inv = hn::Div(hn::Set(df, 1.0f), den);
      const V y = hn::Mul(hn::MulAdd(e1, s.a, hn::Mul(e2, v)), inv);
      hn::Store(y, df, ch.y + t * kW + o);
      if constexpr (kBackward) {
        hn::Store(q, df, ch.q + t * kW + o);
        hn::Store(inv, df, ch.inv + t * kW + o);
        const V g = hn::Mul(hn::Load(df, ch.dy + t * kW + o), inv);
        gu = hn::MulAdd(hn::Mul(g, e2), hn::Sub(v, y), gu);
        // dw −= dy_t/den_t · e^{p}(aw − y_t·bw)
        gw = hn::NegMulAdd(hn::Mul(g, e1), hn::NegMulAdd(y, s.bw, s.aw), gw);
      }
      V p2, f1, f2;
      Merge(df, hn::Sub(s.p, w), k, p2, f1, f2);
      if constexpr (kBackward) {
        s.aw = hn::Mul(f1, hn::Add(s.aw, s.a));
        s.bw = hn::Mul(f1, hn::Add(s.bw, s.b));
      }
      s.a = hn::MulAdd(f1, s.a, hn::Mul(f2, v));
      s.b = hn::MulAdd(f1, s.b, f2);
      s.p = p2;
    }
    st[o / L] = s;
    if constexpr (kBackward) {
      dw[o / L] = gw;
      du[o / L] = gu;
    }
  }
}

void Wkv4EmptyState(DF df, Wkv4Vec* st) {
  for (int64_t i = 0; i < kW / static_cast<int64_t>(hn::Lanes(df)); ++i)
    st[i] = {hn::Zero(df), hn::Zero(df), hn::Set(df, kWkv4EmptyExponent), hn::Zero(df), hn::Zero(df)};
}

// Rows of a [B, T, C] tensor or of a staging buffer: row t at p + t·ld.
struct Rows {
  const float* p;
  int64_t ld;
};

Rows TensorRows(const TensorView& t, int64_t b, int64_t t0, int64_t c0) {
  return {fptr(t) + b * t.strides[0] + t0 * t.strides[1] + c0 * t.strides[2], t.strides[1]};
}

// The forward walks a thread's channels (a contiguous segment of each row) in tiles of kTile
// rows: each channel vector takes kTile steps with its state in registers, then the next vector
// takes the same rows; so k and v stream in as kTile contiguous row segments, y goes out the same
// way, and the state of all the thread's channels (6·width floats with the constants) stays in
// L1 between tiles. The next tile's lines are prefetched while a tile computes.
constexpr int64_t kTile = 8;

// The bonus as a factor: with p' = max(p − w, k) and the state update's factors f1 = e^{(p−w)−p'},
// f2 = e^{k−p'}, the output's weights e^{p} and e^{u+k}, divided by e^{p'+w}, are f1 and g·f2
// with the per-channel constant g = e^{u−w}; so one exponential per step serves both the output
// and the update (lab/linear_cpu/02, v4: 22 → 14 cycles per vector-step). Used for a block of
// channels whose |u − w| are all at most this bound: g·f2·v then stays far from overflow, and the
// clamp of f1 at 2^−125 stays negligible against g·f2 (≥ e^{−30} whenever f1 is that small);
// other blocks weigh the output with its own exponential of p − (u + k).
constexpr double kBonusFactorBound = 30.0;

// Rows [0, nt) of a tile for the kW channels at o (nv vectors, interleaved: each step's
// exponentials of every vector are independent work, and the vectors of a 64-byte line are
// stored one after the other); st holds rows a, b, p, w, u, g of width floats. Per step:
//   d2 = (p − w) − k, f = e^{−|d2|}, (f1, f2) = d2 < 0 ? (f, 1) : (1, f)
//   kBonusFactor:  y = (f1·a + g·f2·v) / (f1·b + g·f2)
//   otherwise:     d1 = p − (u + k), e = e^{−|d1|}, (e1, e2) = d1 < 0 ? (e, 1) : (1, e),
//                  y = (e1·a + e2·v) / (e1·b + e2)
//   a = f1·a + f2·v, b = f1·b + f2, p = max(p − w, k)
// The exponents stay in natural units and each difference is scaled by log2 e just before its
// 2^x, so the scaling's rounding is relative to the difference (small where the weight matters),
// not to |k| or |p|. kStore: how y is written (stream_store-inl.h). kOutput = false runs the
// state update alone, for the rows before a thread's time segment (see Wkv4Forward): no
// division, no y.
template <RowStore kStore, bool kOutput = true, bool kBonusFactor = false>
HWY_INLINE void Wkv4ForwardTile(Rows k, Rows v, float* HWY_RESTRICT y, int64_t ldy, int64_t nt,
                                float* HWY_RESTRICT st, int64_t width, int64_t o) {
  const DF df;
  constexpr int64_t L = static_cast<int64_t>(hn::MaxLanes(df));
  constexpr int64_t nv = kW / L;
  const V one = hn::Set(df, 1.0f), neg_log2e = hn::Set(df, -kLog2e);
  float* sa = st + o;
  float* sb = sa + width;
  float* sp = sb + width;
  constexpr bool kOwnExp = kOutput && !kBonusFactor;  // the output's own exponential
  V a[nv], b[nv], p[nv], w[nv], u[nv], g[nv];
  for (int64_t j = 0; j < nv; ++j) {
    a[j] = hn::Load(df, sa + j * L);
    b[j] = hn::Load(df, sb + j * L);
    p[j] = hn::Load(df, sp + j * L);
    w[j] = hn::Load(df, sp + width + j * L);
    if constexpr (kOwnExp) u[j] = hn::Load(df, sp + 2 * width + j * L);
    if constexpr (kBonusFactor) g[j] = hn::Load(df, sp + 3 * width + j * L);
  }
  for (int64_t t = 0; t < nt; ++t) {
    V kt[nv], vt[nv], d1[nv], d2[nv], e[nv], f[nv];
    for (int64_t j = 0; j < nv; ++j) {
      kt[j] = hn::LoadU(df, k.p + t * k.ld + o + j * L);
      vt[j] = hn::LoadU(df, v.p + t * v.ld + o + j * L);
      if constexpr (kOwnExp) {
        d1[j] = hn::Sub(p[j], hn::Add(u[j], kt[j]));
        e[j] = Exp2NonPositive(df, hn::Mul(hn::Abs(d1[j]), neg_log2e));
      }
      const V pw = hn::Sub(p[j], w[j]);
      d2[j] = hn::Sub(pw, kt[j]);
      p[j] = hn::Max(pw, kt[j]);
      f[j] = Exp2NonPositive(df, hn::Mul(hn::Abs(d2[j]), neg_log2e));
    }
    for (int64_t j = 0; j < nv; ++j) {
      const V f1 = hn::IfNegativeThenElse(d2[j], f[j], one), f2 = hn::IfNegativeThenElse(d2[j], one, f[j]);
      if constexpr (kBonusFactor) {
        const V f1a = hn::Mul(f1, a[j]), f1b = hn::Mul(f1, b[j]), gf2 = hn::Mul(g[j], f2);
        StoreRow<kStore>(hn::Div(hn::MulAdd(gf2, vt[j], f1a), hn::Add(f1b, gf2)), y + t * ldy + o + j * L);
        a[j] = hn::MulAdd(f2, vt[j], f1a);
        b[j] = hn::Add(f1b, f2);
      } else {
        if constexpr (kOwnExp) {
          const V e1 = hn::IfNegativeThenElse(d1[j], e[j], one), e2 = hn::IfNegativeThenElse(d1[j], one, e[j]);
          const V yv = hn::Div(hn::MulAdd(e1, a[j], hn::Mul(e2, vt[j])), hn::MulAdd(e1, b[j], e2));
          StoreRow<kStore>(yv, y + t * ldy + o + j * L);
        }
        a[j] = hn::MulAdd(f1, a[j], hn::Mul(f2, vt[j]));
        b[j] = hn::MulAdd(f1, b[j], f2);
      }
    }
  }
  for (int64_t j = 0; j < nv; ++j) {
    hn::Store(a[j], df, sa + j * L);
    hn::Store(b[j], df, sb + j * L);
    hn::Store(p[j], df, sp + j * L);
  }
}

// Wkv4ForwardTile with y, its output weighed through g where the block allows it.
template <RowStore kStore>
HWY_INLINE void Wkv4OutputTile(bool factor, Rows k, Rows v, float* HWY_RESTRICT y, int64_t ldy, int64_t nt,
                               float* HWY_RESTRICT st, int64_t width, int64_t o) {
  if (factor) {
    Wkv4ForwardTile<kStore, true, true>(k, v, y, ldy, nt, st, width, o);
  } else {
    Wkv4ForwardTile<kStore, true, false>(k, v, y, ldy, nt, st, width, o);
  }
}

struct Wkv4Tile {  // one staged tile of k, v and y: [kTile][width], padded to whole blocks
  hwy::AlignedFreeUniquePtr<float[]> mem;
  float *k, *v, *y;
  explicit Wkv4Tile(int64_t width) : mem(hwy::AllocateAligned<float>(3 * (kTile * width + kPad))) {
    k = mem.get();
    v = k + kTile * width + kPad;
    y = v + kTile * width + kPad;
  }
};

// Rows per tile where the forward reads k and v and writes y in place, from the row strides (in
// floats): at most the distance at which rows repeat modulo 4 KiB, and 2 to kTile. The tile's
// rows then never share their address bits 0-11, which the CPU compares to decide whether a load
// depends on an earlier store; when k, v and y themselves lie a multiple of 4 KiB apart (large
// arrays allocated page by page), tiles of 8 rows of 1 KiB cost 15-20 % more time and tiles of 8
// rows of 2 or 4 KiB 20-45 % more (lab/linear_cpu/NOTES.md, 03).
int64_t DirectTileRows(int64_t ldk, int64_t ldv, int64_t ldy) {
  constexpr int64_t kPage = 4096;
  const int64_t g = std::gcd(std::gcd(ldk * 4, ldv * 4), std::gcd(ldy * 4, kPage));
  return std::clamp(kPage / g, int64_t{2}, kTile);
}

// Rows w, u and g = e^{u−w} of st (rows 3-5 of width floats) for channels [c0, c0 + nc), zero
// past nc; g = 0 marks a channel beyond kBonusFactorBound (a bounded g is at least e^{−30}).
void Wkv4Constants(const TensorView& w, const TensorView& u, int64_t c0, int64_t nc, int64_t width,
                   float* HWY_RESTRICT st) {
  for (int64_t j = 0; j < width; ++j) {
    const double wj = j < nc ? fptr(w)[(c0 + j) * w.strides[0]] : 0.0;
    const double uj = j < nc ? fptr(u)[(c0 + j) * u.strides[0]] : 0.0;
    st[3 * width + j] = static_cast<float>(wj);
    st[4 * width + j] = static_cast<float>(uj);
    st[5 * width + j] = std::abs(uj - wj) <= kBonusFactorBound ? static_cast<float>(std::exp(uj - wj)) : 0.0f;
  }
}

// Per block of kW channels: whether it weighs the output through g (every g of the block > 0).
std::vector<char> BonusFactorBlocks(const float* g, int64_t width) {
  std::vector<char> factor(width / kW);
  for (int64_t i = 0; i < width / kW; ++i) {
    factor[i] = std::all_of(g + i * kW, g + (i + 1) * kW, [](float x) { return x > 0.0f; });
  }
  return factor;
}

// One tile of rows [0, nt) of kr, vr, yr for the block of channels at o, read and written in
// place (out = false: the state alone, no y); first the block's lines of the next `ahead` rows
// are prefetched, so that they arrive while this tile computes.
HWY_INLINE void Wkv4InPlaceTile(RowStore store, bool out, bool factor, Rows kr, Rows vr, Rows yr, int64_t nt,
                                int64_t ahead, float* HWY_RESTRICT st, int64_t width, int64_t o) {
  for (int64_t r = nt; r < nt + ahead; ++r) {
    prefetch_l2(kr.p + r * kr.ld + o);
    prefetch_l2(vr.p + r * vr.ld + o);
  }
  float* yp = const_cast<float*>(yr.p);
  if (!out) {
    Wkv4ForwardTile<RowStore::normal, false>(kr, vr, nullptr, 0, nt, st, width, o);
  } else if (store == RowStore::stream) {
    Wkv4OutputTile<RowStore::stream>(factor, kr, vr, yp, yr.ld, nt, st, width, o);
  } else if (store == RowStore::stream_halves) {
    Wkv4OutputTile<RowStore::stream_halves>(factor, kr, vr, yp, yr.ld, nt, st, width, o);
  } else {
    Wkv4OutputTile<RowStore::normal>(factor, kr, vr, yp, yr.ld, nt, st, width, o);
  }
}

// Forward for channels [c0, c0 + nc) of batch b (width: nc rounded up to whole blocks of kW)
// over rows [t_begin, t_end), from the empty state at row t_state (≤ t_begin), running the state
// alone over rows [t_state, t_begin). Where the channels are contiguous and nc is a multiple of
// kW, the tiles are read and written in place; otherwise each tile is staged into padded buffers
// and back. end_state (if given) receives the state after row t_end − 1: rows a, b, p of width.
void Wkv4ForwardGroup(const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
                      const TensorView& y, int64_t b, int64_t c0, int64_t nc, int64_t width, int64_t t_state,
                      int64_t t_begin, int64_t t_end, Wkv4Tile& tile, float* HWY_RESTRICT st,
                      float* HWY_RESTRICT end_state) {
  Wkv4Constants(w, u, c0, nc, width, st);
  const std::vector<char> factor = BonusFactorBlocks(st + 5 * width, width);
  for (int64_t j = 0; j < width; ++j) {
    st[j] = st[width + j] = 0.0f;
    st[2 * width + j] = kWkv4EmptyExponent;
  }
  const bool direct = k.strides[2] == 1 && v.strides[2] == 1 && y.strides[2] == 1 && nc % kW == 0;
  const Rows y0 = TensorRows(y, b, 0, c0);
  const RowStore store = direct ? ChooseRowStore(y0.p, y0.ld) : RowStore::normal;
  const int64_t rows = direct ? DirectTileRows(k.strides[1], v.strides[1], y.strides[1]) : kTile;
  for (int64_t t0 = t_state; t0 < t_end; t0 += rows) {
    const int64_t nt = std::min({rows, t_end - t0, t0 < t_begin ? t_begin - t0 : rows});
    const bool out = t0 >= t_begin;
    if (direct) {
      const Rows kr = TensorRows(k, b, t0, c0), vr = TensorRows(v, b, t0, c0), yr = TensorRows(y, b, t0, c0);
      const int64_t ahead = std::min(rows, t_end - t0 - nt);  // rows of the next tile
      for (int64_t o = 0; o < nc; o += kW) Wkv4InPlaceTile(store, out, factor[o / kW], kr, vr, yr, nt, ahead, st, width, o);
    } else {
      stage_rows(k, b, t0, nt, c0, nc, width, tile.k);
      stage_rows(v, b, t0, nt, c0, nc, width, tile.v);
      for (int64_t o = 0; o < width; o += kW) {
        if (out) {
          Wkv4OutputTile<RowStore::normal>(factor[o / kW], {tile.k, width}, {tile.v, width}, tile.y, width, nt, st,
                                           width, o);
        } else {
          Wkv4ForwardTile<RowStore::normal, false>({tile.k, width}, {tile.v, width}, nullptr, 0, nt, st, width, o);
        }
      }
      if (out) unstage_rows(tile.y, width, y, b, t0, nt, c0, nc);
    }
  }
  if (store != RowStore::normal) hwy::FlushStream();
  if (end_state != nullptr) std::copy(st, st + 3 * width, end_state);
}

// The rerun of a time split. A segment computed from the empty state is exact once its true
// start state S (at row t_begin) no longer weighs: after j rows S contributes e^{p_S − j·w}·(a_S,
// b_S) to the true sums (a, b), and its share s = e^{p_S − j·w − p}·b_S / b of the denominator
// only falls (both parts decay by e^{−w} per row, and the segment's own part also grows by
// e^{k}). The output computed without S differs from the true one by at most s·(|a_S / b_S| +
// |y|), a multiple of the outputs' own scale: below e^{−kRerunExponent} ≈ 1.5e-8 that is under
// f32's rounding of the sums themselves.
constexpr double kRerunExponent = 18.0;
constexpr int64_t kRerunCheckRows = 32;  // how often the rerun tests its blocks for convergence

// Rows [t_begin, t_end) of the blocks [blk0, blk1) of the group at c0 (width channels, read in
// place) computed again from the true start state (rows a, b, p of `start`), overwriting y; a
// block stops once every channel's share s of S has fallen below e^{−kRerunExponent}.
void Wkv4RerunGroup(const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
                    const TensorView& y, int64_t b, int64_t c0, int64_t width, int64_t t_begin, int64_t t_end,
                    int64_t blk0, int64_t blk1, const float* HWY_RESTRICT start, float* HWY_RESTRICT st) {
  Wkv4Constants(w, u, c0, width, width, st);
  const std::vector<char> factor = BonusFactorBlocks(st + 5 * width, width);
  std::copy(start, start + 3 * width, st);
  std::vector<double> lead(width);  // p_S + ln b_S: the exponent of S's denominator at t_begin
  for (int64_t j = 0; j < width; ++j) {
    lead[j] = start[width + j] > 0.0f ? double{start[2 * width + j]} + std::log(double{start[width + j]})
                                      : -HUGE_VAL;
  }
  std::vector<int64_t> active;
  for (int64_t i = blk0; i < blk1; ++i) active.push_back(i);
  const Rows y0 = TensorRows(y, b, 0, c0);
  const RowStore store = ChooseRowStore(y0.p, y0.ld);
  const int64_t rows = DirectTileRows(k.strides[1], v.strides[1], y.strides[1]);
  for (int64_t t0 = t_begin; t0 < t_end && !active.empty(); t0 += rows) {
    const int64_t nt = std::min(rows, t_end - t0), ahead = std::min(rows, t_end - t0 - nt);
    const Rows kr = TensorRows(k, b, t0, c0), vr = TensorRows(v, b, t0, c0), yr = TensorRows(y, b, t0, c0);
    for (const int64_t i : active) Wkv4InPlaceTile(store, true, factor[i], kr, vr, yr, nt, ahead, st, width, i * kW);
    const int64_t done = t0 + nt - t_begin;
    if (done % kRerunCheckRows != 0) continue;
    const auto converged = [&](int64_t i) {
      for (int64_t j = i * kW; j < (i + 1) * kW; ++j) {
        // ln s + kRerunExponent = x − ln b, with b ≥ 1 (the largest term of the sums has weight 1)
        const double x = lead[j] - double(done) * st[3 * width + j] - st[2 * width + j] + kRerunExponent;
        if (!(x <= 0.0 || (x < 80.0 && std::exp(x) < st[width + j]))) return false;
      }
      return true;
    };
    active.erase(std::remove_if(active.begin(), active.end(), converged), active.end());
  }
  if (store != RowStore::normal) hwy::FlushStream();
}

void Wkv4BackwardBlock(const Wkv4Dims& s, const TensorView& w, const TensorView& u, const TensorView& k,
                       const TensorView& v, const TensorView& dy, const TensorView& dw, const TensorView& du,
                       const TensorView& dk, const TensorView& dv, int64_t c0, Wkv4Chunk& ch,
                       std::vector<Wkv4Vec>& ckpt) {
  const DF df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df)), nv = kW / L;
  const int64_t nc = std::min(kW, s.channels - c0);
  const int64_t chunks = (s.seq + kT - 1) / kT;
  const Wkv4Consts c = LoadWkv4Consts(w, u, c0, nc);
  V gw[kW], gu[kW];
  for (int64_t i = 0; i < nv; ++i) gw[i] = gu[i] = hn::Zero(df);
  for (int64_t b = 0; b < s.batch; ++b) {
    Wkv4Vec st[kW];
    Wkv4EmptyState(df, st);
    for (int64_t ci = 0; ci < chunks; ++ci) {
      const int64_t t0 = ci * kT, nt = std::min(kT, s.seq - t0);
      std::copy(st, st + nv, ckpt.begin() + ci * nv);
      stage_rows(k, b, t0, nt, c0, nc, kW, ch.k);
      stage_rows(v, b, t0, nt, c0, nc, kW, ch.v);
      stage_rows(dy, b, t0, nt, c0, nc, kW, ch.dy);
      Wkv4Chunk_<true>(df, c, nt, ch, st, gw, gu);
    }
    // Reverse accumulators per vector: G = e^{r}·Ĝ, H = e^{r}·Ĥ.
    V G[kW], H[kW], R[kW];
    for (int64_t i = 0; i < nv; ++i) {
      G[i] = H[i] = hn::Zero(df);
      R[i] = hn::Set(df, kWkv4EmptyExponent);
    }
    for (int64_t ci = chunks - 1; ci >= 0; --ci) {
      const int64_t t0 = ci * kT, nt = std::min(kT, s.seq - t0);
      std::copy(ckpt.begin() + ci * nv, ckpt.begin() + (ci + 1) * nv, st);
      stage_rows(k, b, t0, nt, c0, nc, kW, ch.k);
      stage_rows(v, b, t0, nt, c0, nc, kW, ch.v);
      stage_rows(dy, b, t0, nt, c0, nc, kW, ch.dy);
      V scratch_w[kW], scratch_u[kW];  // the forward-direction sums were taken in the first pass
      for (int64_t i = 0; i < nv; ++i) scratch_w[i] = scratch_u[i] = hn::Zero(df);
      Wkv4Chunk_<true>(df, c, nt, ch, st, scratch_w, scratch_u);
      for (int64_t o = 0; o < kW; o += L) {
        const int64_t i = o / L;
        const V wv = hn::Load(df, c.w + o), uv = hn::Load(df, c.u + o);
        for (int64_t t = nt - 1; t >= 0; --t) {
          const int64_t at = t * kW + o;
          const V kt = hn::Load(df, ch.k + at), vt = hn::Load(df, ch.v + at), yt = hn::Load(df, ch.y + at);
          const V q = hn::Load(df, ch.q + at), g = hn::Mul(hn::Load(df, ch.dy + at), hn::Load(df, ch.inv + at));
          // bonus term: e^{u+k−q} dy / n
          const V eb = hn::Mul(FastExp(df, hn::Sub(hn::Add(uv, kt), q)), g);
          const V ek = FastExp(df, hn::Add(kt, R[i]));
          hn::Store(hn::MulAdd(ek, G[i], eb), df, ch.gv + at);
          hn::Store(hn::MulAdd(eb, hn::Sub(vt, yt), hn::Mul(ek, hn::MulSub(vt, G[i], H[i]))),
                    df, ch.gk + at);
          // G ← dy_t/den_t + e^{−w} G, with den_t = e^{q}·n_t
          V r2, f_old, f_new;
          Merge(df, hn::Sub(R[i], wv), hn::Neg(q), r2, f_old, f_new);
          G[i] = hn::MulAdd(f_old, G[i], hn::Mul(f_new, g));
          H[i] = hn::MulAdd(f_old, H[i], hn::Mul(f_new, hn::Mul(g, yt)));
          R[i] = r2;
        }
      }
      unstage_rows(ch.gk, kW, dk, b, t0, nt, c0, nc);
      unstage_rows(ch.gv, kW, dv, b, t0, nt, c0, nc);
    }
  }
  float wbuf[kW], ubuf[kW];
  for (int64_t i = 0; i < nv; ++i) {
    hn::StoreU(gw[i], df, wbuf + i * L);
    hn::StoreU(gu[i], df, ubuf + i * L);
  }
  for (int64_t j = 0; j < nc; ++j) {
    fptr_mut(dw)[(c0 + j) * dw.strides[0]] = wbuf[j];
    fptr_mut(du)[(c0 + j) * du.strides[0]] = ubuf[j];
  }
}

// Time segments [bounds[i], bounds[i + 1]) of a sequence of T steps for n threads: thread i
// first runs the state alone over the rows before its segment (kStateCost of a full step's
// time), so the segments shrink as they start later, to end together:
//   len_0 = X,  len_i = X − kStateCost·start_i,  Σ len_i = T.
// Boundaries fall on whole tiles; segments that would be shorter than a few tiles are dropped.
// The state update alone against a full step: measured at width 128, T = 131072, 2 threads, 0.5
// and 0.65 gave the same time (the passes stream the same k and v); 0.8 leaves one segment.
constexpr double kStateCost = 0.5;
constexpr int64_t kMaxGroupChannels = 1024;
constexpr int64_t kMinGroupChannels = 128;  // rows read in segments of at least 512 bytes

std::vector<int64_t> Wkv4Segments(int64_t T, int64_t n) {
  std::vector<double> len;
  double start = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double l = 1.0 - kStateCost * start;
    if (l < 0.25) break;
    len.push_back(l);
    start += l;
  }
  std::vector<int64_t> bounds = {0};
  double acc = 0;
  for (size_t i = 0; i + 1 < len.size(); ++i) {
    acc += len[i];
    const int64_t at = static_cast<int64_t>(acc / start * static_cast<double>(T)) / kTile * kTile;
    if (at - bounds.back() >= 4 * kTile && T - at >= 4 * kTile) bounds.push_back(at);
  }
  bounds.push_back(T);
  return bounds;
}

}  // namespace

// One token of every sequence: k, v, y [B, C]; the state (a, b, p) [B][C] is read and written.
// The same tile step as the forward over one row, so a run of steps gives the forward's outputs.
// consts keeps rows w, u, g and the blocks' flags between steps: g costs an exponential per
// channel, as much as the step itself, and w and u rarely change from token to token.
void Wkv4Step(const Wkv4Dims& s, const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
              const TensorView& y, float* sa, float* sb, float* sp, std::vector<float>& consts) {
  const int64_t C = s.channels, width = (C + kW - 1) / kW * kW, blocks = width / kW;
  const auto st = hwy::AllocateAligned<float>(6 * width);
  const auto kv = hwy::AllocateAligned<float>(3 * width);
  float *kr = kv.get(), *vr = kr + width, *yr = vr + width;
  bool same = static_cast<int64_t>(consts.size()) == 3 * width + blocks;
  for (int64_t j = 0; same && j < C; ++j) {
    same = consts[j] == fptr(w)[j * w.strides[0]] && consts[width + j] == fptr(u)[j * u.strides[0]];
  }
  if (!same) {  // rows w, u, g, then the blocks' flags
    Wkv4Constants(w, u, 0, C, width, st.get());
    consts.assign(st.get() + 3 * width, st.get() + 6 * width);
    for (const char f : BonusFactorBlocks(st.get() + 5 * width, width)) consts.push_back(f);
  }
  std::copy(consts.begin(), consts.begin() + 3 * width, st.get() + 3 * width);
  const float* factor = consts.data() + 3 * width;
  for (int64_t bi = 0; bi < s.batch; ++bi) {
    for (int64_t j = 0; j < width; ++j) {
      const bool in = j < C;
      st[j] = in ? sa[bi * C + j] : 0.0f;
      st[width + j] = in ? sb[bi * C + j] : 0.0f;
      st[2 * width + j] = in ? sp[bi * C + j] : kWkv4EmptyExponent;
      kr[j] = in ? fptr(k)[bi * k.strides[0] + j * k.strides[1]] : 0.0f;
      vr[j] = in ? fptr(v)[bi * v.strides[0] + j * v.strides[1]] : 0.0f;
    }
    for (int64_t o = 0; o < width; o += kW) {
      Wkv4OutputTile<RowStore::normal>(factor[o / kW] != 0.0f, {kr, width}, {vr, width}, yr, width, 1, st.get(), width,
                                       o);
    }
    for (int64_t j = 0; j < C; ++j) {
      fptr_mut(y)[bi * y.strides[0] + j * y.strides[1]] = yr[j];
      sa[bi * C + j] = st[j];
      sb[bi * C + j] = st[width + j];
      sp[bi * C + j] = st[2 * width + j];
    }
  }
}

// Equal time segments of T steps for n threads on whole tiles, each at least 4 tiles long (fewer
// segments where T is short).
std::vector<int64_t> EqualSegments(int64_t T, int64_t n) {
  n = std::clamp<int64_t>(T / (4 * kTile), 1, n);
  std::vector<int64_t> bounds = {0};
  for (int64_t i = 1; i < n; ++i) bounds.push_back(T * i / n / kTile * kTile);
  bounds.push_back(T);
  return bounds;
}

// The rerun's expected length as a share of a segment of len rows, averaged over the blocks: S's
// share of a channel's denominator starts near 1 and falls by e^{−w} per row, so a block takes
// about (kRerunExponent + 6) / w rows for its slowest channel (the 6 e-folds for the segment's
// own sums still growing), at most the whole segment (w ≤ 0: S never fades).
double RerunShare(const TensorView& w, int64_t C, int64_t len) {
  double rows = 0;
  int64_t blocks = 0;
  for (int64_t c0 = 0; c0 < C; c0 += kW, ++blocks) {
    double lo = HUGE_VAL;
    for (int64_t j = c0; j < std::min(C, c0 + kW); ++j) lo = std::min(lo, double{fptr(w)[j * w.strides[0]]});
    rows += lo > 0.0 ? std::min(double(len), (kRerunExponent + 6.0) / lo) : double(len);
  }
  return rows / double(blocks) / double(len);
}
constexpr double kMaxRerunShare = 0.25;

void Wkv4Forward(const Wkv4Dims& s, const TensorView& w, const TensorView& u, const TensorView& k,
                 const TensorView& v, const TensorView& y) {
  ThreadPool& tp = pool();
  const int64_t threads = tp.size();
  const Wkv4TimeSplit mode = wkv4_fwd_tuning().time_split;
  // Channel groups of at most kMaxGroupChannels, so that the rows a thread reads are whole rows or
  // segments of at least 4 KiB. With fewer (batch, group) items than threads, each sequence is
  // split in time with the rerun where the decays allow it: threads then stream whole rows, which
  // two threads on the halves of every row cannot: B = 1, C = 512, T = 65536, 2 threads, 22.8-25.0 ms
  // against 25.2-29.6 ms for two channel groups (lab/linear_cpu/NOTES.md, 05). Otherwise
  // narrower groups of at least kMinGroupChannels, and where those run out, the split in time
  // with the state pass.
  const auto group_size = [&](int64_t n) { return ((s.channels + n - 1) / n + kW - 1) / kW * kW; };
  const int64_t whole = (s.channels + kMaxGroupChannels - 1) / kMaxGroupChannels;
  const int64_t groups_r = (s.channels + group_size(whole) - 1) / group_size(whole);
  const std::vector<int64_t> even = EqualSegments(s.seq, threads / std::max<int64_t>(1, s.batch * groups_r));
  const bool in_place = k.strides[2] == 1 && v.strides[2] == 1 && y.strides[2] == 1 && s.channels % kW == 0;
  const bool rerun = mode != Wkv4TimeSplit::state_pass && even.size() > 2 && in_place &&
                     (mode == Wkv4TimeSplit::rerun || RerunShare(w, s.channels, even[1]) <= kMaxRerunShare);
  const int64_t want = (threads + s.batch - 1) / s.batch;
  const int64_t groups0 = rerun ? whole
                                : std::max(whole, std::min(want, s.channels / kMinGroupChannels));
  const int64_t gsize = group_size(groups0);
  const int64_t groups = (s.channels + gsize - 1) / gsize;
  const int64_t segs_wanted = std::max<int64_t>(1, threads / std::max<int64_t>(1, s.batch * groups));
  const std::vector<int64_t> bounds = rerun ? even : Wkv4Segments(s.seq, segs_wanted);
  const int64_t segs = static_cast<int64_t>(bounds.size()) - 1;
  std::vector<Wkv4Tile> tiles;
  std::vector<hwy::AlignedFreeUniquePtr<float[]>> states;
  for (int t = 0; t < tp.size(); ++t) {
    tiles.emplace_back(gsize);
    states.push_back(hwy::AllocateAligned<float>(6 * gsize));  // gsize: whole blocks
  }
  const int64_t items = s.batch * groups * segs;
  std::vector<float> ends(rerun ? items * 3 * gsize : 0);  // each item's state at its last row
  tp.parallel_for(items, [&](int64_t item, int thread) {
    const int64_t seg = item % segs, g = (item / segs) % groups, b = item / (segs * groups);
    const int64_t c0 = g * gsize, nc = std::min(gsize, s.channels - c0);
    Wkv4ForwardGroup(w, u, k, v, y, b, c0, nc, (nc + kW - 1) / kW * kW, rerun ? bounds[seg] : 0, bounds[seg],
                     bounds[seg + 1], tiles[thread], states[thread].get(), rerun ? &ends[item * 3 * gsize] : nullptr);
  });
  if (!rerun) return;
  // The true state at each later segment's start: the previous segment's own end state plus the
  // true state at its start, decayed over its rows, e^{−len·w} (a merge of two stable states).
  std::vector<float> starts(items * 3 * gsize);
  for (int64_t bg = 0; bg < s.batch * groups; ++bg) {
    const int64_t c0 = bg % groups * gsize, nc = std::min(gsize, s.channels - c0);
    for (int64_t j = 0; j < nc; ++j) {
      const double wj = fptr(w)[(c0 + j) * w.strides[0]];
      double a = 0, bs = 0, p = kWkv4EmptyExponent;
      for (int64_t seg = 1; seg < segs; ++seg) {
        const float* e = &ends[(bg * segs + seg - 1) * 3 * gsize];
        const double pd = p - double(bounds[seg] - bounds[seg - 1]) * wj, pe = e[2 * nc + j];
        const double m = std::max(pd, pe), fd = std::exp(pd - m), fe = std::exp(pe - m);
        a = a * fd + e[j] * fe;
        bs = bs * fd + e[nc + j] * fe;
        p = m;
        float* st = &starts[(bg * segs + seg) * 3 * gsize];  // rows a, b, p of nc (a whole number of blocks)
        st[j] = static_cast<float>(a);
        st[nc + j] = static_cast<float>(bs);
        st[2 * nc + j] = static_cast<float>(p);
      }
    }
  }
  // Each later segment's first rows again, its blocks shared out among the threads.
  const int64_t blocks = gsize / kW, parts = std::min(blocks, threads);
  const int64_t later = s.batch * groups * (segs - 1);
  tp.parallel_for(later * parts, [&](int64_t item, int thread) {
    const int64_t part = item % parts, rest = item / parts;
    const int64_t seg = 1 + rest % (segs - 1), bg = rest / (segs - 1);
    const int64_t b = bg / groups, c0 = bg % groups * gsize, width = std::min(gsize, s.channels - c0);
    const int64_t nb = width / kW;
    Wkv4RerunGroup(w, u, k, v, y, b, c0, width, bounds[seg], bounds[seg + 1], part * nb / parts,
                   (part + 1) * nb / parts, &starts[(bg * segs + seg) * 3 * gsize], states[thread].get());
  });
}

void Wkv4Backward(const Wkv4Dims& s, const TensorView& w, const TensorView& u, const TensorView& k,
                  const TensorView& v, const TensorView& dy, const TensorView& dw, const TensorView& du,
                  const TensorView& dk, const TensorView& dv) {
  const DF df;
  const int64_t blocks = (s.channels + kW - 1) / kW;
  ThreadPool& tp = pool();
  std::vector<Wkv4Chunk> chunks(tp.size());
  std::vector<std::vector<Wkv4Vec>> ckpt(tp.size());
  for (auto& c : ckpt) c.resize(((s.seq + kT - 1) / kT) * (kW / hn::Lanes(df)));
  tp.parallel_for(blocks, [&](int64_t blk, int thread) {
    Wkv4BackwardBlock(s, w, u, k, v, dy, dw, du, dk, dv, blk * kW, chunks[thread], ckpt[thread]);
  });
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {
Wkv4FwdTuning& wkv4_fwd_tuning() {
  static Wkv4FwdTuning tuning;
  return tuning;
}
HWY_EXPORT(Wkv4Forward);
HWY_EXPORT(Wkv4Step);
HWY_EXPORT(Wkv4Backward);
void wkv4_fwd(const Wkv4Dims& s, const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
              const TensorView& y) {
  HWY_DYNAMIC_DISPATCH(Wkv4Forward)(s, w, u, k, v, y);
}
void wkv4_step(const Wkv4Dims& s, const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
               const TensorView& y, float* a, float* b, float* p, std::vector<float>& consts) {
  HWY_DYNAMIC_DISPATCH(Wkv4Step)(s, w, u, k, v, y, a, b, p, consts);
}
void wkv4_bwd(const Wkv4Dims& s, const TensorView& w, const TensorView& u, const TensorView& k, const TensorView& v,
              const TensorView& dy, const TensorView& dw, const TensorView& du, const TensorView& dk,
              const TensorView& dv) {
  HWY_DYNAMIC_DISPATCH(Wkv4Backward)(s, w, u, k, v, dy, dw, du, dk, dv);
}
}  // namespace attnkit::cpu
#endif
