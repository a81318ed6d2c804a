// The analytic cost model (see include/attnkit/cost.h and docs/cost_model.md).
#include "attnkit/cost.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "attnkit/error.h"

namespace attnkit::cost {

double visible_pairs(const AttentionShape& s) {
  if (!s.causal) return static_cast<double>(s.seq_q) * static_cast<double>(s.seq_k);
  double pairs = 0;
  const int64_t diag = s.seq_k - s.seq_q;  // query i sees keys j <= i + diag
  for (int64_t i = 0; i < s.seq_q; ++i) pairs += static_cast<double>(std::clamp<int64_t>(i + 1 + diag, 0, s.seq_k));
  return pairs;
}

double attention_fwd_flops(const AttentionShape& s) {
  const double per_head = 4.0 * static_cast<double>(s.seq_q) * static_cast<double>(s.seq_k) * s.head_dim;
  return per_head * static_cast<double>(s.batch * s.heads_q) * (s.causal ? 0.5 : 1.0);
}

double attention_bwd_flops(const AttentionShape& s) { return kBackwardFactor * attention_fwd_flops(s); }

double score_matrix_bytes(const AttentionShape& s, int64_t bytes_per_element) {
  return static_cast<double>(s.seq_q) * static_cast<double>(s.seq_k) * static_cast<double>(bytes_per_element);
}

// ---------------------------------------------------------------------------------------------
namespace {

constexpr const char* kVariantNames[] = {"naive", "flash", "sparse", "linear", "scan", "rwkv", "decode"};

double d(int64_t x) { return static_cast<double>(x); }

// Pairs by the FlashAttention convention: Nq·Nk, halved when causal (matches attention_fwd_flops).
double dense_pairs(const AttentionShape& s) { return d(s.seq_q) * d(s.seq_k) * (s.causal ? 0.5 : 1.0); }

// Pairs a sliding window of w keys (plus g global tokens) keeps, per head; at most dense.
double window_pairs(const AttentionShape& s, int64_t w, int64_t g) {
  const double n = d(s.seq_q), nk = d(s.seq_k);
  double kept;
  if (s.causal) {  // query i sees min(i + 1, w) keys
    const double wq = std::min(d(w), n);
    kept = wq * n - wq * (wq - 1) / 2;
  } else {  // keys in [i − w, i + w]
    const double wq = std::min(d(w), n);
    kept = (2 * wq + 1) * n - wq * (wq + 1);
  }
  kept += 2.0 * d(g) * nk - d(g) * d(g);
  return std::clamp(kept, 0.0, s.causal ? dense_pairs(s) + n / 2 : n * nk);
}

int64_t pad32(int64_t x) { return (x + 31) / 32 * 32; }

// Tensors a forward call reads and writes: Q, K, V, O and the f32 LSE.
double fwd_io(const AttentionShape& s, double e) {
  return d(s.batch) * (2 * d(s.seq_q) * d(s.heads_q) * d(s.head_dim) * e +
                       2 * d(s.seq_k) * d(s.heads_kv) * d(s.head_dim) * e + d(s.heads_q) * d(s.seq_q) * 4);
}
// The backward call adds dO, dQ, dK, dV.
double bwd_extra_io(const AttentionShape& s, double e) {
  return d(s.batch) * (2 * d(s.seq_q) * d(s.heads_q) * d(s.head_dim) * e +
                       2 * d(s.seq_k) * d(s.heads_kv) * d(s.head_dim) * e);
}

Cost backward_added(Cost c, const AttentionShape& s, double e) {
  // Training = forward + backward: the backward's FLOPs are kBackwardFactor × the forward's.
  c.macs *= 1 + kBackwardFactor;
  c.flops *= 1 + kBackwardFactor;
  c.bytes_moved = c.bytes_moved * 2 + bwd_extra_io(s, e);
  c.io_bytes += bwd_extra_io(s, e);
  return c;
}

}  // namespace

const char* to_string(Variant v) { return kVariantNames[static_cast<int>(v)]; }

Variant parse_variant(const std::string& s) {
  for (Variant v : all_variants())
    if (s == to_string(v)) return v;
  throw Error(fmt::format("variant: expected one of naive, flash, sparse, linear, scan, rwkv, decode, given '{}'", s));
}

const std::vector<Variant>& all_variants() {
  static const std::vector<Variant> v = {Variant::naive,  Variant::flash, Variant::sparse, Variant::linear,
                                         Variant::scan,   Variant::rwkv,  Variant::decode};
  return v;
}

const char* to_string(Mode m) { return m == Mode::inference ? "inference" : "training"; }

Cost& Cost::operator+=(const Cost& o) {
  macs += o.macs;
  flops += o.flops;
  bytes_moved += o.bytes_moved;
  io_bytes += o.io_bytes;
  workspace_bytes += o.workspace_bytes;
  saved_bytes += o.saved_bytes;
  state_bytes += o.state_bytes;
  return *this;
}
Cost operator+(Cost a, const Cost& b) { return a += b; }
Cost operator*(Cost a, double k) {
  a.macs *= k;
  a.flops *= k;
  a.bytes_moved *= k;
  a.io_bytes *= k;
  a.workspace_bytes *= k;
  a.saved_bytes *= k;
  a.state_bytes *= k;
  return a;
}

Implementation attnkit_cpu(int threads) {
  Implementation impl;
  impl.scores_in_flight = 1;
  impl.threads = threads;
  impl.attnkit_cpu = true;
  return impl;
}

Cost kernel_call_cost(Variant v, const AttentionShape& s, bool backward, int threads) {
  if (v != Variant::naive && v != Variant::flash)
    throw Error(fmt::format("kernel_call_cost: the CPU kernels are naive and flash, given '{}'", to_string(v)));
  const double nq = d(s.seq_q), nk = d(s.seq_k), D = d(s.head_dim), T = threads;
  Cost c;
  c.io_bytes = fwd_io(s, 4) + (backward ? bwd_extra_io(s, 4) : 0);
  // Tile sizes of src/cpu/flash_fwd.cc (128 × 64) and flash_bwd.cc (64 × 64).
  const double Dp = d(pad32(s.head_dim)), bq = backward ? 64 : 128, bk = 64;
  if (v == Variant::naive) {
    // src/cpu/naive.cc, per sequence: one head's S (and dP) plus gathered rows.
    c.workspace_bytes = backward ? 4 * (2 * nq * nk + 4 * nq * D + 4 * nk * D) : 4 * (nq * nk + 2 * nq * D + 2 * nk * D + nq);
  } else if (!backward) {
    c.workspace_bytes = 4 * T * (Dp * bq * 2 + bk * bq + 2 * bk * Dp + 3 * bq);  // FwdScratch per thread
  } else {
    const double nqp = std::ceil(nq / bq) * bq, hq = d(s.heads_q), hk = d(s.heads_kv);
    c.workspace_bytes = 4 * (4 * hq * nqp * Dp + 2 * hk * nk * Dp + 2 * hq * nqp  // Packed
                             + T * hq * nqp * Dp                                   // dq_acc per thread
                             + T * (2 * bk * bq + 2 * bk * Dp));                   // BwdScratch
  }
  c.flops = backward ? attention_bwd_flops(s) : attention_fwd_flops(s);
  c.macs = c.flops / 2;
  c.bytes_moved = c.io_bytes;
  return c;
}

Cost mixer_cost(Variant v, const AttentionShape& s, Mode mode, int64_t bytes_per_element, const VariantParams& vp,
                const Implementation& impl) {
  if (s.batch <= 0 || s.seq_q <= 0 || s.seq_k <= 0 || s.heads_q <= 0 || s.heads_kv <= 0 || s.head_dim <= 0)
    throw Error(fmt::format("cost: expected positive batch, sequence lengths, heads and head_dim, given B={} Nq={} "
                            "Nk={} Hq={} Hkv={} D={}",
                            s.batch, s.seq_q, s.seq_k, s.heads_q, s.heads_kv, s.head_dim));
  const double e = d(bytes_per_element), B = d(s.batch), nq = d(s.seq_q), nk = d(s.seq_k);
  const double hq = d(s.heads_q), hk = d(s.heads_kv), D = d(s.head_dim);
  const double bh = B * hq;
  const bool train = mode == Mode::training;
  Cost c;
  c.io_bytes = fwd_io(s, e);
  switch (v) {
    case Variant::naive:
    case Variant::flash: {
      c.macs = 2 * bh * dense_pairs(s) * D;
      c.flops = 2 * c.macs;
      if (v == Variant::naive) {
        const double score = nq * nk * e;  // one head's materialized S (causal too: N×N)
        c.bytes_moved = c.io_bytes + 4 * bh * score;  // write S, read+write P, read P
        const double in_flight = impl.scores_in_flight > 0 ? std::min(d(impl.scores_in_flight), bh) : bh;
        c.workspace_bytes = in_flight * score;
        if (train) {
          c = backward_added(c, s, e);
          c.bytes_moved += 6 * bh * score;  // P, dP, dS written and read
          c.saved_bytes = bh * score;       // P kept for the backward pass
        }
      } else {
        const double passes = std::ceil(nq / d(impl.tile_q));
        c.bytes_moved = c.io_bytes + (passes - 1) * B * nk * hk * D * 2 * e * (hq / hk);
        c.workspace_bytes = d(impl.threads) * (impl.tile_q * impl.tile_k + 2 * impl.tile_q * D) * 4;
        if (train) c = backward_added(c, s, e);  // LSE (in io_bytes) is all it keeps
      }
      if (impl.attnkit_cpu) {
        const Cost fwd = kernel_call_cost(v, s, false, impl.threads);
        c.workspace_bytes = train ? std::max(fwd.workspace_bytes, kernel_call_cost(v, s, true, impl.threads).workspace_bytes)
                                  : fwd.workspace_bytes;
      }
      return c;
    }
    case Variant::sparse: {
      const double kept = window_pairs(s, vp.window, vp.global_tokens);
      c.macs = 2 * bh * kept * D;
      c.flops = 2 * c.macs;
      const double passes = std::ceil(nq / d(impl.tile_q));
      const double span = std::min(nk, d(vp.window) * (s.causal ? 1 : 2) + d(impl.tile_q) + d(vp.global_tokens));
      c.bytes_moved = c.io_bytes + std::max(0.0, passes * span - nk) * B * hq * D * 2 * e;
      c.workspace_bytes = d(impl.threads) * (impl.tile_q * impl.tile_k + 2 * impl.tile_q * D) * 4;
      if (train) c = backward_added(c, s, e);
      return c;
    }
    case Variant::linear: {
      const double F = d(vp.feature_dim > 0 ? vp.feature_dim : s.head_dim);
      // φ(K)ᵀV and Σφ(K): Nk·F·(D+1); φ(Q)·state and normalizer: Nq·F·(D+1).
      c.macs = bh * (nk + nq) * F * (D + 1);
      if (s.causal) c.macs += bh * nq * d(vp.chunk) / 2 * (F + D);  // the intra-chunk quadratic part
      c.flops = 2 * c.macs;
      c.bytes_moved = c.io_bytes;
      c.workspace_bytes = bh * F * (D + 1) * 4;  // one state per head, f32
      c.state_bytes = c.workspace_bytes;         // carried between calls when streaming
      if (train) {
        c = backward_added(c, s, e);
        c.saved_bytes = s.causal ? bh * std::ceil(nq / d(vp.chunk)) * F * (D + 1) * 4 : bh * F * (D + 1) * 4;
      }
      return c;
    }
    case Variant::scan: {
      // Channels = heads · head_dim (Mamba's d_inner), state S per channel. Per token and
      // channel: Δ·B·x into the state, the decayed state update, C·h out: 3·S MACs.
      const double ch = hq * D, S = d(vp.state_dim);
      c.macs = 3 * B * nq * ch * S;
      c.flops = 2 * c.macs;
      c.io_bytes = B * nq * (3 * ch + 2 * S) * e;  // x, Δ, y per channel; B, C per state
      c.bytes_moved = c.io_bytes;
      c.workspace_bytes = B * ch * S * 4;
      c.state_bytes = B * ch * S * 4;
      if (train) c = backward_added(c, s, e);  // states are recomputed, not kept (as in Mamba)
      return c;
    }
    case Variant::rwkv: {
      // Per token and head: S ← diag(w)·S + kᵀv (D² MACs), y = r·S (D² MACs).
      c.macs = B * nq * hq * (2 * D * D + D);
      c.flops = 2 * c.macs;
      c.io_bytes = B * nq * hq * D * 5 * e;  // r, k, v, w in; y out
      c.bytes_moved = c.io_bytes;
      c.workspace_bytes = bh * D * D * 4;
      c.state_bytes = bh * D * D * 4;
      if (train) {
        c = backward_added(c, s, e);
        c.saved_bytes = bh * std::ceil(nq / d(vp.chunk)) * D * D * 4;  // state per chunk
      }
      return c;
    }
    case Variant::decode: {
      if (train) throw Error("cost: decode is inference only (a KV cache serves generation), given mode training");
      const double keys = d(vp.kv_len) + nq;  // new tokens attend to the cache and themselves
      c.macs = 2 * bh * nq * keys * D;
      c.flops = 2 * c.macs;
      const double cache = 2 * B * hk * keys * D * e;
      c.io_bytes = B * nq * hq * D * 2 * e + B * hq * nq * 4;
      c.state_bytes = cache;
      c.bytes_moved = c.io_bytes + cache;  // the whole cache is read once per step
      c.workspace_bytes = bh * nq * 16 * (D + 2) * 4;  // split-KV partial outputs (16 splits)
      return c;
    }
  }
  throw Error("cost: unknown variant");
}

// ---------------------------------------------------------------------------------------------
const std::vector<ModelShape>& presets() {
  static const std::vector<ModelShape> p = {
      {.name = "bert-base", .layers = 12, .d_model = 768, .heads_q = 12, .heads_kv = 12, .head_dim = 64,
       .d_ff = 3072, .mlp = MlpKind::gelu, .seq = 512, .window = 0, .causal = false, .vocab = 30522,
       .note = "Devlin et al. 2018, BERT-Base: 12 layers, 768 wide, 12 heads, 512 tokens"},
      {.name = "gpt2", .layers = 12, .d_model = 768, .heads_q = 12, .heads_kv = 12, .head_dim = 64, .d_ff = 3072,
       .mlp = MlpKind::gelu, .seq = 1024, .window = 0, .causal = true, .vocab = 50257,
       .note = "Radford et al. 2019, GPT-2 small (124M): 12 layers, 768 wide, 12 heads, 1024 tokens"},
      {.name = "gpt3-175b", .layers = 96, .d_model = 12288, .heads_q = 96, .heads_kv = 96, .head_dim = 128,
       .d_ff = 49152, .mlp = MlpKind::gelu, .seq = 2048, .window = 0, .causal = true, .vocab = 50257,
       .note = "Brown et al. 2020, GPT-3 175B: 96 layers, 12288 wide, 96 heads of 128, 2048 tokens"},
      {.name = "llama-3-8b", .layers = 32, .d_model = 4096, .heads_q = 32, .heads_kv = 8, .head_dim = 128,
       .d_ff = 14336, .mlp = MlpKind::swiglu, .seq = 8192, .window = 0, .causal = true, .vocab = 128256,
       .note = "Meta Llama 3 8B: 32 layers, 4096 wide, 32 query / 8 KV heads (GQA), SwiGLU 14336, 8192 tokens"},
      {.name = "mistral-7b", .layers = 32, .d_model = 4096, .heads_q = 32, .heads_kv = 8, .head_dim = 128,
       .d_ff = 14336, .mlp = MlpKind::swiglu, .seq = 8192, .window = 4096, .causal = true, .vocab = 32000,
       .note = "Jiang et al. 2023, Mistral 7B: Llama-like, GQA 32/8, sliding window 4096"},
      {.name = "vit-b/16", .layers = 12, .d_model = 768, .heads_q = 12, .heads_kv = 12, .head_dim = 64,
       .d_ff = 3072, .mlp = MlpKind::gelu, .seq = 197, .window = 0, .causal = false, .vocab = 0,
       .note = "Dosovitskiy et al. 2020, ViT-B/16 at 224x224: 14x14 patches + [CLS] = 197 tokens"},
      {.name = "whisper-large", .layers = 32, .d_model = 1280, .heads_q = 20, .heads_kv = 20, .head_dim = 64,
       .d_ff = 5120, .mlp = MlpKind::gelu, .seq = 1500, .window = 0, .causal = false, .vocab = 0,
       .note = "Radford et al. 2022, Whisper large encoder: 32 layers, 1280 wide, 20 heads, 30 s = 1500 frames"},
  };
  return p;
}

const ModelShape& preset(const std::string& name) {
  for (const ModelShape& m : presets())
    if (m.name == name) return m;
  std::string names;
  for (const ModelShape& m : presets()) names += (names.empty() ? "" : ", ") + m.name;
  throw Error(fmt::format("preset: expected one of {}, given '{}'", names, name));
}

AttentionShape layer_attention_shape(const ModelShape& m, int64_t n, int64_t batch) {
  return {.batch = batch, .seq_q = n, .seq_k = n, .heads_q = m.heads_q, .heads_kv = m.heads_kv,
          .head_dim = m.head_dim, .causal = m.causal};
}

LayerCost layer_cost(const ModelShape& m, int64_t n, Variant v, Mode mode, int64_t bytes_per_element, int64_t batch,
                     const VariantParams& vp_in, const Implementation& impl) {
  if (n <= 0 || batch <= 0) throw Error(fmt::format("cost: expected positive N and batch, given N={} B={}", n, batch));
  const double e = d(bytes_per_element), tok = d(batch) * d(n), dm = d(m.d_model), f = d(m.d_ff);
  const double qkv_w = d(m.heads_q + 2 * m.heads_kv) * d(m.head_dim), attn_w = d(m.heads_q) * d(m.head_dim);
  const bool train = mode == Mode::training;
  const double gemm_factor = train ? 3.0 : 1.0;  // backward: dX and dW, each as large as the forward
  LayerCost L;
  // Two norms, each reads and writes the residual stream.
  L.norms.bytes_moved = L.norms.io_bytes = 2 * 2 * tok * dm * e;
  if (train) L.norms.saved_bytes = 2 * tok * dm * e;
  auto gemm = [&](double rows, double k, double cols) {
    Cost c;
    c.macs = rows * k * cols * gemm_factor;
    c.flops = 2 * c.macs;
    c.io_bytes = (rows * k + k * cols + rows * cols) * e;
    c.bytes_moved = c.io_bytes * (train ? 3 : 1);
    if (train) c.saved_bytes = rows * k * e;  // the input, for dW
    return c;
  };
  L.qkv = gemm(tok, dm, qkv_w);
  L.out_proj = gemm(tok, attn_w, dm);
  const double mats = m.mlp == MlpKind::swiglu ? 3 : 2;
  L.mlp.macs = tok * dm * f * mats * gemm_factor;
  L.mlp.flops = 2 * L.mlp.macs;
  L.mlp.io_bytes = (2 * tok * dm + mats * dm * f) * e;
  L.mlp.workspace_bytes = (mats - 1) * tok * f * e;  // hidden (gelu) or gate and up (swiglu)
  L.mlp.bytes_moved = (L.mlp.io_bytes + 3 * (mats - 1) * tok * f * e) * (train ? 3 : 1);
  if (train) L.mlp.saved_bytes = tok * dm * e + (mats == 3 ? 3 : 2) * tok * f * e;
  VariantParams vp = vp_in;
  if (v == Variant::sparse && m.window > 0 && vp_in.window == VariantParams{}.window) vp.window = m.window;
  if (v == Variant::decode && vp.kv_len == 0) vp.kv_len = n;
  const AttentionShape s = v == Variant::decode ? layer_attention_shape(m, 1, batch) : layer_attention_shape(m, n, batch);
  L.mixer = mixer_cost(v, s, mode, bytes_per_element, vp, impl);
  if (v == Variant::decode) {  // one token through the projections and MLP
    L.norms = L.norms * (1.0 / d(n));
    L.qkv = gemm(d(batch), dm, qkv_w);
    L.out_proj = gemm(d(batch), attn_w, dm);
    L.mlp.macs = L.mlp.macs / d(n);
    L.mlp.flops = L.mlp.flops / d(n);
    L.mlp.io_bytes = (2 * d(batch) * dm + mats * dm * f) * e;
    L.mlp.workspace_bytes = (mats - 1) * d(batch) * f * e;
    L.mlp.bytes_moved = L.mlp.io_bytes;
  }
  return L;
}

double kv_cache_bytes(const ModelShape& m, int64_t tokens, int64_t bytes_per_element, int64_t batch) {
  return 2.0 * d(m.layers) * d(m.heads_kv) * d(m.head_dim) * d(bytes_per_element) * d(tokens) * d(batch);
}

ModelCost model_cost(const ModelShape& m, int64_t n, Variant v, Mode mode, int64_t bytes_per_element, int64_t batch,
                     const VariantParams& vp, const Implementation& impl) {
  ModelCost mc;
  mc.layer = layer_cost(m, n, v, mode, bytes_per_element, batch, vp, impl);
  mc.total = mc.layer.total() * d(m.layers);
  const double e = d(bytes_per_element), dm = d(m.d_model);
  const double per_layer_w = (dm * d(m.heads_q + 2 * m.heads_kv) * d(m.head_dim) + d(m.heads_q) * d(m.head_dim) * dm +
                              (m.mlp == MlpKind::swiglu ? 3 : 2) * dm * d(m.d_ff)) * e;
  mc.weight_bytes = per_layer_w * d(m.layers) + d(m.vocab) * dm * e;
  const bool train = mode == Mode::training;
  if (m.vocab > 0) {  // LM head over every position (one position when decoding)
    const double rows = d(batch) * (v == Variant::decode ? 1 : d(n));
    Cost head;
    head.macs = rows * dm * d(m.vocab) * (train ? 3 : 1);
    head.flops = 2 * head.macs;
    head.bytes_moved = d(m.vocab) * dm * e + rows * d(m.vocab) * 4;
    mc.total += head;
  }
  const LayerCost& L = mc.layer;
  double layer_ws = 0;
  for (const Cost* c : {&L.norms, &L.qkv, &L.mixer, &L.out_proj, &L.mlp})
    layer_ws = std::max(layer_ws, c->workspace_bytes + (c == &L.mixer ? c->io_bytes : 0));
  if (train) {
    mc.activation_bytes = L.total().saved_bytes * d(m.layers);
    mc.peak_bytes = 2 * mc.weight_bytes + mc.activation_bytes + layer_ws;  // weights + their gradients
  } else {
    mc.kv_cache_bytes = v == Variant::naive || v == Variant::flash || v == Variant::sparse || v == Variant::decode
                            ? kv_cache_bytes(m, v == Variant::sparse && m.window > 0 ? std::min(n, m.window) : n,
                                             bytes_per_element, batch)
                            : L.mixer.state_bytes * d(m.layers);
    mc.peak_bytes = mc.weight_bytes + mc.kv_cache_bytes + layer_ws;
  }
  return mc;
}

// ---------------------------------------------------------------------------------------------
double roofline_seconds(const Cost& c, const DeviceSpec& dev) {
  if (dev.peak_flops <= 0 || dev.bandwidth <= 0)
    throw Error(fmt::format("roofline: expected positive peak FLOP/s and bandwidth, given {} and {}", dev.peak_flops,
                            dev.bandwidth));
  return std::max(c.flops / dev.peak_flops, c.bytes_moved / dev.bandwidth);
}

int64_t scores_stop_fitting(AttentionShape s, double memory_bytes, int64_t bytes_per_element, int64_t lo, int64_t hi) {
  auto bytes = [&](int64_t n) { return d(s.batch) * d(s.heads_q) * d(n) * d(n) * d(bytes_per_element); };
  if (bytes(hi) <= memory_bytes) return 0;
  if (bytes(lo) > memory_bytes) return lo;
  while (hi - lo > 1) {  // bytes(lo) fits, bytes(hi) does not
    const int64_t mid = lo + (hi - lo) / 2;
    (bytes(mid) > memory_bytes ? hi : lo) = mid;
  }
  return hi;
}

double mixer_mlp_crossover(const ModelShape& m, Variant v, const DeviceSpec& dev, int64_t lo, int64_t hi) {
  auto ratio = [&](int64_t n) {
    const LayerCost L = layer_cost(m, n, v, Mode::inference);
    return roofline_seconds(L.mixer, dev) / roofline_seconds(L.mlp, dev);
  };
  if (ratio(lo) >= 1) return static_cast<double>(lo);
  if (ratio(hi) < 1) return 0;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (ratio(mid) >= 1 ? hi : lo) = mid;
  }
  return static_cast<double>(hi);
}

}  // namespace attnkit::cost
