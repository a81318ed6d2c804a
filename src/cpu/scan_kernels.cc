// Mamba selective scan on the CPU, forward and backward (see include/attnkit/recurrent.h),
// Highway SIMD with runtime dispatch.
//
// The recurrence is sequential in time but independent across channels, so the SIMD lanes run
// channels: a block of kW = 16 channels (one 64-byte line of each [B, L, Dch] row) keeps its
// state h : [N][kW] in L1 and walks time in chunks of kT steps. Each chunk is staged into
// contiguous buffers (any strides, a partial last block padded), so the inner loop is
//   a = exp(Δ·A[n]),  h[n] = a·h[n] + (Δ·x)·B[n],  y += C[n]·h[n]
// on full vectors. Threads take (batch, group of up to 16 blocks); a group stages each chunk's
// rows as whole contiguous segments, which the hardware prefetchers stream.
//
// Backward per channel block (all batches, so dA and dD need no cross-thread sums): a forward
// pass keeps h at every chunk start (O(L/kT · N · kW) floats); then chunks are revisited last to
// first, h recomputed inside the chunk, and the adjoint g_t = C_t dy_t + a_{t+1} g_{t+1} walked
// backward:
//   dΔ += g·h_{t−1}·a·A + g·B·x,  dA += g·h_{t−1}·a·Δ,  dx += g·Δ·B + dy·D,
//   dB_t += Σ_d g·Δ·x,  dC_t += Σ_d dy·h_t      (sums over channels: per-thread buffers)
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/scan_kernels.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/problem.h"
#include "core/thread_pool.h"
#include "cpu/scan_exp-inl.h"
#include "cpu/scan_kernels.h"
#include "cpu/prefetch.h"
#include "cpu/scan_stage.h"
#include "cpu/stream_store-inl.h"
#include "hwy/aligned_allocator.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnkit::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace {

constexpr int64_t kW = 16;  // channels per block
constexpr int64_t kT = 64;  // time steps per chunk
constexpr int64_t kGroupBlocks = 16;  // blocks per forward group: [kT][256] staging buffers
// Staging buffers sit kPad floats beyond multiples of their size apart, so that the same row of
// two buffers does not share its address modulo 4 KiB (a load would wait on an unrelated store).
constexpr int64_t kPad = 16;

void Stage(const TensorView& src, int64_t b, int64_t t0, int64_t nt, int64_t c0, int64_t nc, float* HWY_RESTRICT dst) {
  stage_rows(src, b, t0, nt, c0, nc, kW, dst);
}
void Unstage(const float* HWY_RESTRICT src, const TensorView& dst, int64_t b, int64_t t0, int64_t nt, int64_t c0,
             int64_t nc) {
  unstage_rows(src, kW, dst, b, t0, nt, c0, nc);
}

// Per-block constants: At[n][0..kW) = A[c0 + j, n]·log2 e (so that exp(ΔA) = 2^{Δ·At}),
// Dv[j] = D[c0 + j] (zero padded). Returns whether every A of the block is <= 0 (decays, the
// usual case), which lets the scan skip the exponential's upper clamp.
bool LoadBlockConstants(const ScanDims& s, const ScanInputs& in, int64_t c0, int64_t nc, float* HWY_RESTRICT at,
                        float* HWY_RESTRICT dv) {
  bool nonpositive = true;
  for (int64_t n = 0; n < s.state; ++n)
    for (int64_t j = 0; j < kW; ++j) {
      at[n * kW + j] = j < nc ? kLog2e * fptr(in.A)[(c0 + j) * in.A.strides[0] + n * in.A.strides[1]] : 0.0f;
      nonpositive &= at[n * kW + j] <= 0.0f;
    }
  for (int64_t j = 0; j < kW; ++j) dv[j] = s.has_d && j < nc ? fptr(in.D)[(c0 + j) * in.D.strides[0]] : 0.0f;
  return nonpositive;
}

struct Chunk {  // staged [kT][kW] rows of one chunk
  hwy::AlignedFreeUniquePtr<float[]> mem;
  float *x, *dt, *z, *y, *dy, *gx, *gdt, *gz;
  Chunk() : mem(hwy::AllocateAligned<float>(8 * (kT * kW + kPad))) {
    float* p = mem.get();
    for (float** b : {&x, &dt, &z, &y, &dy, &gx, &gdt, &gz}) *b = p, p += kT * kW + kPad;
  }
};

// Rows of kW floats: row t at p + t·ld (a staged buffer, ld = kW, or the tensor itself).
struct Rows {
  const float* p;
  int64_t ld;
};

// silu(z) = z·σ(z) and its derivative σ(z)·(1 + z·(1 − σ(z))).
HWY_INLINE hn::Vec<hn::ScalableTag<float>> Sigmoid(hn::Vec<hn::ScalableTag<float>> z) {
  const hn::ScalableTag<float> df;
  return hn::Div(hn::Set(df, 1.0f), hn::Add(hn::Set(df, 1.0f), FastExp(df, hn::Neg(z))));
}

// What one chunk of one block reads and writes besides its state.
struct ChunkIO {
  Rows x, delta;
  Rows z{nullptr, 0};       // the gate: y·silu(z) is written when z.p != nullptr, else y
  float* y = nullptr;       // rows of kW at y + t·ldy, or nullptr
  int64_t ldy = kW;
  RowStore store = RowStore::normal;  // how y is written (stream_store-inl.h)
  float* hs = nullptr;      // every h_t ([nt][N][kW]) when != nullptr
  Rows next[3] = {};        // rows another chunk will read next: prefetched, one line per row
};

// Advances h over steps [0, nt) of a chunk (see ChunkIO for the outputs). kNonPositive: every A
// of the block is <= 0, so Δ·A <= 0 (Δ >= 0) and the exponential needs no upper clamp.
template <bool kNonPositive>
HWY_INLINE void ScanChunk(const ScanDims& s, const ScanInputs& in, int64_t b, int64_t t0, int64_t nt,
                          const float* HWY_RESTRICT at, const float* HWY_RESTRICT dvec, const ChunkIO& io,
                          float* HWY_RESTRICT h) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  constexpr int64_t L = static_cast<int64_t>(hn::MaxLanes(df));
  constexpr int64_t nv = kW / L;  // compile-time, so the per-vector values stay in registers
  const int64_t N = s.state, bs = in.B.strides[2], cs = in.C.strides[2];
  const float* bp = fptr(in.B) + b * in.B.strides[0] + t0 * in.B.strides[1];
  const float* cp = fptr(in.C) + b * in.C.strides[0] + t0 * in.C.strides[1];
  for (int64_t t = 0; t < nt; ++t) {
    for (const Rows& r : io.next)
      if (r.p) prefetch_l2(r.p + t * r.ld);  // into L2: L1 holds the current block
    V dt[nv], dtx[nv], acc[nv];
    for (int64_t v = 0; v < nv; ++v) {
      const V xv = hn::LoadU(df, io.x.p + t * io.x.ld + v * L);
      dt[v] = hn::LoadU(df, io.delta.p + t * io.delta.ld + v * L);
      dtx[v] = hn::Mul(dt[v], xv);
      acc[v] = hn::Mul(hn::Load(df, dvec + v * L), xv);
    }
    const float* bt = bp + t * in.B.strides[1];
    const float* ct = cp + t * in.C.strides[1];
    for (int64_t n = 0; n < N; ++n) {
      const V bn = hn::Set(df, bt[n * bs]);
      const V cn = hn::Set(df, ct[n * cs]);
      float* hn_ = h + n * kW;
      for (int64_t v = 0; v < nv; ++v) {
        const V arg = hn::Mul(dt[v], hn::Load(df, at + n * kW + v * L));
        const V a = kNonPositive ? Exp2NonPositive(df, arg) : FastExp2(df, arg);
        const V hv = hn::MulAdd(a, hn::Load(df, hn_ + v * L), hn::Mul(dtx[v], bn));
        hn::Store(hv, df, hn_ + v * L);
        acc[v] = hn::MulAdd(cn, hv, acc[v]);
      }
    }
    if (io.hs) std::memcpy(io.hs + t * N * kW, h, N * kW * sizeof(float));
    if (io.y) {
      for (int64_t v = 0; v < nv; ++v) {
        V yv = acc[v];
        if (io.z.p) {
          const V zv = hn::LoadU(df, io.z.p + t * io.z.ld + v * L);
          yv = hn::Mul(yv, hn::Mul(zv, Sigmoid(zv)));
        }
        float* yp = io.y + t * io.ldy + v * L;
        switch (io.store) {  // one well-predicted branch per row and vector
          case RowStore::stream: StoreRow<RowStore::stream>(yv, yp); break;
          case RowStore::stream_halves: StoreRow<RowStore::stream_halves>(yv, yp); break;
          case RowStore::normal: StoreRow<RowStore::normal>(yv, yp); break;
        }
      }
    }
  }
}

// ScanChunk with the variant chosen by the block's A (see LoadBlockConstants).
HWY_INLINE void ScanChunkAny(bool nonpositive, const ScanDims& s, const ScanInputs& in, int64_t b, int64_t t0,
                             int64_t nt, const float* HWY_RESTRICT at, const float* HWY_RESTRICT dvec,
                             const ChunkIO& io, float* HWY_RESTRICT h) {
  if (nonpositive) {
    ScanChunk<true>(s, in, b, t0, nt, at, dvec, io, h);
  } else {
    ScanChunk<false>(s, in, b, t0, nt, at, dvec, io, h);
  }
}

// Row t0 of channel c0 of a [B, T, C] tensor; its rows are strides[1] apart.
Rows TensorRows(const TensorView& t, int64_t b, int64_t t0, int64_t c0) {
  return {fptr(t) + b * t.strides[0] + t0 * t.strides[1] + c0 * t.strides[2], t.strides[1]};
}

// Channel blocks [blk0, blk0 + nblk) of batch b, in chunks of kT steps; within a chunk the
// blocks walk their columns one after the other, each state (N·kW floats) in L1. Where the
// channels are contiguous and the block is full, the kernel reads x, Δ, z and writes out in
// place (one 64-byte line per row and tensor; out with non-temporal stores where its rows are
// aligned) and prefetches the next block's lines while it computes; otherwise the block's rows
// are staged into [kT][kW] buffers and back.
void ForwardGroup(const ScanDims& s, const ScanInputs& in, const TensorView& out, int64_t b, int64_t blk0,
                  int64_t nblk, Chunk& ch, float* HWY_RESTRICT consts, float* HWY_RESTRICT hstate) {
  const int64_t NW = s.state * kW, CW = NW + kW;  // per block: At [N][kW] and D [kW]
  bool nonpositive[kGroupBlocks];
  for (int64_t i = 0; i < nblk; ++i) {
    const int64_t c0 = (blk0 + i) * kW;
    nonpositive[i] =
        LoadBlockConstants(s, in, c0, std::min(kW, s.channels - c0), consts + i * CW, consts + i * CW + NW);
  }
  std::fill(hstate, hstate + nblk * NW, 0.0f);
  const bool unit = in.x.strides[2] == 1 && in.delta.strides[2] == 1 && out.strides[2] == 1 &&
                    (!s.has_z || in.z.strides[2] == 1);
  auto direct = [&](int64_t c0) { return unit && c0 + kW <= s.channels; };
  bool streamed = false;
  for (int64_t t0 = 0; t0 < s.seq; t0 += kT) {
    const int64_t nt = std::min(kT, s.seq - t0);
    for (int64_t i = 0; i < nblk; ++i) {
      const int64_t c0 = (blk0 + i) * kW, nc = std::min(kW, s.channels - c0);
      ChunkIO io;
      if (direct(c0)) {
        io.x = TensorRows(in.x, b, t0, c0);
        io.delta = TensorRows(in.delta, b, t0, c0);
        if (s.has_z) io.z = TensorRows(in.z, b, t0, c0);
        const Rows o = TensorRows(out, b, t0, c0);
        io.y = const_cast<float*>(o.p);
        io.ldy = o.ld;
        io.store = ChooseRowStore(io.y, io.ldy);
        streamed |= io.store != RowStore::normal;
      } else {
        Stage(in.x, b, t0, nt, c0, nc, ch.x);
        Stage(in.delta, b, t0, nt, c0, nc, ch.dt);
        io.x = {ch.x, kW};
        io.delta = {ch.dt, kW};
        if (s.has_z) {
          Stage(in.z, b, t0, nt, c0, nc, ch.z);
          io.z = {ch.z, kW};
        }
        io.y = ch.y;
      }
      // The block after this one: the next in the group, or the group's first at the next chunk.
      const int64_t nb0 = i + 1 < nblk ? c0 + kW : blk0 * kW, nt0 = i + 1 < nblk ? t0 : t0 + kT;
      if (nt0 < s.seq && direct(nb0)) {
        io.next[0] = TensorRows(in.x, b, nt0, nb0);
        io.next[1] = TensorRows(in.delta, b, nt0, nb0);
        if (s.has_z) io.next[2] = TensorRows(in.z, b, nt0, nb0);
      }
      ScanChunkAny(nonpositive[i], s, in, b, t0, nt, consts + i * CW, consts + i * CW + NW, io, hstate + i * NW);
      if (!direct(c0)) Unstage(ch.y, out, b, t0, nt, c0, nc);
    }
  }
  if (streamed) hwy::FlushStream();
}

struct BwdBuffers {
  hwy::AlignedFreeUniquePtr<float[]> mem;
  float *at, *dvec, *h, *carry, *dA, *dD, *hs;
  std::vector<float> ckpt;  // [chunks][N][kW]
  std::vector<float> dB, dC;  // this thread's share: [B][L][N]
  BwdBuffers(const ScanDims& s)
      : mem(hwy::AllocateAligned<float>(5 * s.state * kW + 2 * kW + (kT + 1) * s.state * kW)) {
    const int64_t NW = s.state * kW;
    at = mem.get();
    h = at + NW;
    carry = h + NW;
    dA = carry + NW;
    dvec = dA + NW;
    dD = dvec + kW;
    hs = dD + kW + NW;  // [kT + 1][N][kW]: hs[0] is h before the chunk
    ckpt.resize(((s.seq + kT - 1) / kT) * NW);
    dB.assign(s.batch * s.seq * s.state, 0.0f);
    dC.assign(s.batch * s.seq * s.state, 0.0f);
  }
};

void BackwardBlock(const ScanDims& s, const ScanInputs& in, const TensorView& dout, const ScanGrads& g, int64_t c0,
                   Chunk& ch, BwdBuffers& bb) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  constexpr int64_t L = static_cast<int64_t>(hn::MaxLanes(df));
  constexpr int64_t nv = kW / L;
  const int64_t N = s.state, NW = N * kW;
  const int64_t nc = std::min(kW, s.channels - c0);
  const int64_t chunks = (s.seq + kT - 1) / kT;
  const bool nonpositive = LoadBlockConstants(s, in, c0, nc, bb.at, bb.dvec);
  std::fill(bb.dA, bb.dA + NW, 0.0f);
  std::fill(bb.dD, bb.dD + kW, 0.0f);
  for (int64_t b = 0; b < s.batch; ++b) {
    std::fill(bb.h, bb.h + NW, 0.0f);
    for (int64_t ci = 0; ci < chunks; ++ci) {
      const int64_t t0 = ci * kT, nt = std::min(kT, s.seq - t0);
      std::memcpy(&bb.ckpt[ci * NW], bb.h, NW * sizeof(float));
      Stage(in.x, b, t0, nt, c0, nc, ch.x);
      Stage(in.delta, b, t0, nt, c0, nc, ch.dt);
      ChunkIO io;
      io.x = {ch.x, kW};
      io.delta = {ch.dt, kW};
      ScanChunkAny(nonpositive, s, in, b, t0, nt, bb.at, bb.dvec, io, bb.h);
    }
    std::fill(bb.carry, bb.carry + NW, 0.0f);
    float* dBb = bb.dB.data() + b * s.seq * N;
    float* dCb = bb.dC.data() + b * s.seq * N;
    for (int64_t ci = chunks - 1; ci >= 0; --ci) {
      const int64_t t0 = ci * kT, nt = std::min(kT, s.seq - t0);
      Stage(in.x, b, t0, nt, c0, nc, ch.x);
      Stage(in.delta, b, t0, nt, c0, nc, ch.dt);
      Stage(dout, b, t0, nt, c0, nc, ch.dy);
      std::memcpy(bb.hs, &bb.ckpt[ci * NW], NW * sizeof(float));
      std::memcpy(bb.h, bb.hs, NW * sizeof(float));
      ChunkIO io;
      io.x = {ch.x, kW};
      io.delta = {ch.dt, kW};
      io.y = ch.y;  // before the gate
      io.hs = bb.hs + NW;
      ScanChunkAny(nonpositive, s, in, b, t0, nt, bb.at, bb.dvec, io, bb.h);
      if (s.has_z) {  // dz = dout·y·silu'(z), dy = dout·silu(z)
        Stage(in.z, b, t0, nt, c0, nc, ch.z);
        for (int64_t i = 0; i < nt * kW; i += L) {
          const V zv = hn::Load(df, ch.z + i), sg = Sigmoid(zv), go = hn::Load(df, ch.dy + i);
          const V dsilu = hn::Mul(sg, hn::MulAdd(zv, hn::Sub(hn::Set(df, 1.0f), sg), hn::Set(df, 1.0f)));
          hn::Store(hn::Mul(hn::Mul(go, hn::Load(df, ch.y + i)), dsilu), df, ch.gz + i);
          hn::Store(hn::Mul(go, hn::Mul(zv, sg)), df, ch.dy + i);
        }
      }
      const float* bp = fptr(in.B) + b * in.B.strides[0];
      const float* cp = fptr(in.C) + b * in.C.strides[0];
      for (int64_t t = nt - 1; t >= 0; --t) {
        const int64_t tt = t0 + t;
        const float* bt = bp + tt * in.B.strides[1];
        const float* ct = cp + tt * in.C.strides[1];
        const float* h_now = bb.hs + (t + 1) * NW;
        const float* h_prev = bb.hs + t * NW;
        V dt[nv], xv[nv], dy[nv], gx[nv], gdt[nv];
        for (int64_t v = 0; v < nv; ++v) {
          dt[v] = hn::Load(df, ch.dt + t * kW + v * L);
          xv[v] = hn::Load(df, ch.x + t * kW + v * L);
          dy[v] = hn::Load(df, ch.dy + t * kW + v * L);
          gx[v] = hn::Mul(dy[v], hn::Load(df, bb.dvec + v * L));
          gdt[v] = hn::Zero(df);
          hn::Store(hn::MulAdd(dy[v], xv[v], hn::Load(df, bb.dD + v * L)), df, bb.dD + v * L);
        }
        for (int64_t n = 0; n < N; ++n) {
          const float bn_s = bt[n * in.B.strides[2]];
          const V bn = hn::Set(df, bn_s), cn = hn::Set(df, ct[n * in.C.strides[2]]);
          V db = hn::Zero(df), dc = hn::Zero(df);
          for (int64_t v = 0; v < nv; ++v) {
            const int64_t o = n * kW + v * L;
            const V an2 = hn::Load(df, bb.at + o);
            const V arg = hn::Mul(dt[v], an2);
            const V a = nonpositive ? Exp2NonPositive(df, arg) : FastExp2(df, arg);
            const V an = hn::Mul(an2, hn::Set(df, 0.69314718055994531f));  // A
            const V gv = hn::MulAdd(cn, dy[v], hn::Load(df, bb.carry + o));
            dc = hn::MulAdd(dy[v], hn::Load(df, h_now + o), dc);
            const V ga = hn::Mul(hn::Mul(gv, hn::Load(df, h_prev + o)), a);  // ∂/∂(ΔA)
            gdt[v] = hn::MulAdd(ga, an, hn::MulAdd(hn::Mul(gv, bn), xv[v], gdt[v]));
            hn::Store(hn::MulAdd(ga, dt[v], hn::Load(df, bb.dA + o)), df, bb.dA + o);
            const V gdx = hn::Mul(gv, dt[v]);
            gx[v] = hn::MulAdd(gdx, bn, gx[v]);
            db = hn::MulAdd(gdx, xv[v], db);
            hn::Store(hn::Mul(a, gv), df, bb.carry + o);
          }
          dBb[tt * N + n] += hn::GetLane(hn::SumOfLanes(df, db));
          dCb[tt * N + n] += hn::GetLane(hn::SumOfLanes(df, dc));
        }
        for (int64_t v = 0; v < nv; ++v) {
          hn::Store(gx[v], df, ch.gx + t * kW + v * L);
          hn::Store(gdt[v], df, ch.gdt + t * kW + v * L);
        }
      }
      Unstage(ch.gx, g.dx, b, t0, nt, c0, nc);
      Unstage(ch.gdt, g.ddelta, b, t0, nt, c0, nc);
      if (s.has_z) Unstage(ch.gz, g.dz, b, t0, nt, c0, nc);
    }
  }
  for (int64_t j = 0; j < nc; ++j) {
    for (int64_t n = 0; n < N; ++n) fptr_mut(g.dA)[(c0 + j) * g.dA.strides[0] + n * g.dA.strides[1]] = bb.dA[n * kW + j];
    if (s.has_d) fptr_mut(g.dD)[(c0 + j) * g.dD.strides[0]] = bb.dD[j];
  }
}

}  // namespace

void ScanForward(const ScanDims& s, const ScanInputs& in, const TensorView& out) {
  const int64_t blocks = (s.channels + kW - 1) / kW;
  ThreadPool& tp = pool();
  // Groups of at most kGroupBlocks blocks, at least one per thread over the whole batch.
  const int64_t want = std::max<int64_t>(1, tp.size() / std::max<int64_t>(1, s.batch));
  const int64_t per = std::min(kGroupBlocks, (blocks + std::min(want, blocks) - 1) / std::min(want, blocks));
  const int64_t groups = (blocks + per - 1) / per;
  std::vector<Chunk> chunks(tp.size());
  std::vector<hwy::AlignedFreeUniquePtr<float[]>> consts, states;
  for (int t = 0; t < tp.size(); ++t) {
    consts.push_back(hwy::AllocateAligned<float>(per * (s.state * kW + kW)));
    states.push_back(hwy::AllocateAligned<float>(per * s.state * kW));
  }
  tp.parallel_for(s.batch * groups, [&](int64_t item, int thread) {
    const int64_t g = item % groups, blk0 = g * per;
    ForwardGroup(s, in, out, item / groups, blk0, std::min(per, blocks - blk0), chunks[thread], consts[thread].get(),
                 states[thread].get());
  });
}

// One token: x, Δ, z, out [B, Dch]; A [Dch, N]; B, C [B, N]; h [B][Dch][N], updated in place.
// The lanes run the states of one channel (h's own layout, A's rows), full vectors first and the
// rest one lane at a time with the same arithmetic as the forward's per lane: a = 2^{Δ·(A log2 e)},
// h = a·h + (Δ·x)·B; then y = Σ_n C·h + D·x and the gate.
void ScanStep(const ScanDims& s, const ScanInputs& in, const TensorView& out, float* HWY_RESTRICT h_all) {
  const hn::ScalableTag<float> df;
  const hn::CappedTag<float, 1> d1;
  const int64_t N = s.state, L = static_cast<int64_t>(hn::Lanes(df)), Nv = N / L * L;
  auto at = [](const TensorView& t, int64_t i, int64_t j) { return fptr(t)[i * t.strides[0] + j * t.strides[1]]; };
  std::vector<float> bc(3 * N);  // B and C of the sequence, and A's row where its states are strided
  float *bb = bc.data(), *cc = bb + N, *arow = cc + N;
  // One vector (or one lane) of states [n, n + lanes) of a channel; returns C·h over them.
  const auto states = [&](auto d, int64_t n, const float* ar, float* h, float dt, float dtx) {
    const auto a = FastExp2(d, hn::Mul(hn::Set(d, dt), hn::Mul(hn::Set(d, kLog2e), hn::LoadU(d, ar + n))));
    const auto hv = hn::MulAdd(a, hn::LoadU(d, h + n), hn::Mul(hn::Set(d, dtx), hn::LoadU(d, bb + n)));
    hn::StoreU(hv, d, h + n);
    return hn::Mul(hn::LoadU(d, cc + n), hv);
  };
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t n = 0; n < N; ++n) bb[n] = at(in.B, b, n), cc[n] = at(in.C, b, n);
    for (int64_t c = 0; c < s.channels; ++c) {
      const float dt = at(in.delta, b, c), x = at(in.x, b, c), dtx = dt * x;
      const float* ar = fptr(in.A) + c * in.A.strides[0];
      if (in.A.strides[1] != 1) {
        for (int64_t n = 0; n < N; ++n) arow[n] = ar[n * in.A.strides[1]];
        ar = arow;
      }
      float* h = h_all + (b * s.channels + c) * N;
      auto acc = hn::Zero(df);
      for (int64_t n = 0; n < Nv; n += L) acc = hn::Add(acc, states(df, n, ar, h, dt, dtx));
      float y = hn::GetLane(hn::SumOfLanes(df, acc));
      for (int64_t n = Nv; n < N; ++n) y += hn::GetLane(states(d1, n, ar, h, dt, dtx));
      if (s.has_d) y += fptr(in.D)[c * in.D.strides[0]] * x;
      if (s.has_z) {
        const float z = at(in.z, b, c);
        y *= z / (1.0f + std::exp(-z));
      }
      fptr_mut(out)[b * out.strides[0] + c * out.strides[1]] = y;
    }
  }
}

void ScanBackward(const ScanDims& s, const ScanInputs& in, const TensorView& dout, const ScanGrads& g) {
  const int64_t blocks = (s.channels + kW - 1) / kW;
  ThreadPool& tp = pool();
  const int threads = static_cast<int>(std::min<int64_t>(tp.size(), blocks));
  std::vector<Chunk> chunks(threads);
  std::vector<BwdBuffers> bufs;
  for (int t = 0; t < threads; ++t) bufs.emplace_back(s);
  // Blocks are dealt out statically so that each thread's dB / dC share covers its blocks.
  tp.parallel_for(threads, [&](int64_t part, int) {
    for (int64_t blk = part; blk < blocks; blk += threads) BackwardBlock(s, in, dout, g, blk * kW, chunks[part], bufs[part]);
  });
  // dB, dC = Σ over threads, written to the (strided) outputs.
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t t = 0; t < s.seq; ++t) {
      for (int64_t n = 0; n < s.state; ++n) {
        float db = 0, dc = 0;
        const int64_t i = (b * s.seq + t) * s.state + n;
        for (int p = 0; p < threads; ++p) {
          db += bufs[p].dB[i];
          dc += bufs[p].dC[i];
        }
        fptr_mut(g.dB)[b * g.dB.strides[0] + t * g.dB.strides[1] + n * g.dB.strides[2]] = db;
        fptr_mut(g.dC)[b * g.dC.strides[0] + t * g.dC.strides[1] + n * g.dC.strides[2]] = dc;
      }
    }
  }
}

}  // namespace attnkit::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnkit::cpu {
HWY_EXPORT(ScanForward);
HWY_EXPORT(ScanBackward);
HWY_EXPORT(ScanStep);
void scan_step(const ScanDims& s, const ScanInputs& in, const TensorView& out, float* h) {
  HWY_DYNAMIC_DISPATCH(ScanStep)(s, in, out, h);
}
void scan_fwd(const ScanDims& s, const ScanInputs& in, const TensorView& out) {
  HWY_DYNAMIC_DISPATCH(ScanForward)(s, in, out);
}
void scan_bwd(const ScanDims& s, const ScanInputs& in, const TensorView& dout, const ScanGrads& g) {
  HWY_DYNAMIC_DISPATCH(ScanBackward)(s, in, dout, g);
}
}  // namespace attnkit::cpu
#endif
