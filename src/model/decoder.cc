// Llama-style decoder: weights, forward over the paged KV cache, generation (see model.h).
//
// Buffers of one forward over S sequences × n tokens (T = S·n rows, sequence-major):
//   x, h : [T][dim]    q : [T][Hq·D]    k, v : [T][Hkv·D]    a : [T][Hq·D]    g, u : [T][ffn]
#include "attnkit/model.h"

#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <random>
#include <utility>
#include <vector>

#include "attnkit/error.h"
#include "attnkit/linear.h"
#include "cpu/gemv.h"
#include "model/linear_int8.h"
#include "model/safetensors.h"

namespace attnkit::model {

const char* to_string(Mixer m) {
  switch (m) {
    case Mixer::exact: return "exact";
    case Mixer::sliding_window: return "sliding_window";
    case Mixer::linear: return "linear";
  }
  return "?";
}

DecoderConfig preset(const std::string& name) {
  if (name == "tiny") {
    return {.vocab = 97, .dim = 32, .layers = 2, .heads_q = 4, .heads_kv = 2, .head_dim = 8, .ffn_dim = 64};
  }
  if (name == "small" || name == "small-window" || name == "small-linear") {
    DecoderConfig c{.vocab = 4096, .dim = 512, .layers = 4, .heads_q = 8, .heads_kv = 2, .head_dim = 64, .ffn_dim = 1536};
    if (name == "small-window") {
      c.mixer = Mixer::sliding_window;
      c.window = 1024;
    }
    if (name == "small-linear") c.mixer = Mixer::linear;
    return c;
  }
  throw Error(fmt::format("preset: expected tiny, small, small-window or small-linear, given '{}'", name));
}

void validate(const DecoderConfig& c) {
  auto in = [](int64_t x, int64_t lo, int64_t hi, const char* name) {
    if (x < lo || x > hi) throw Error(fmt::format("config.{}: expected {}..{}, given {}", name, lo, hi, x));
  };
  in(c.vocab, 1, int64_t{1} << 24, "vocab");
  in(c.dim, 1, 1 << 16, "dim");
  in(c.layers, 1, 1024, "layers");
  in(c.heads_kv, 1, 1024, "heads_kv");
  in(c.heads_q, c.heads_kv, 4096, "heads_q");
  in(c.head_dim, 2, 256, "head_dim");
  in(c.ffn_dim, 1, 1 << 18, "ffn_dim");
  if (c.heads_q % c.heads_kv != 0) {
    throw Error(fmt::format("config.heads_kv: expected a divisor of heads_q = {}, given {}", c.heads_q, c.heads_kv));
  }
  if (c.head_dim % 2 != 0) throw Error(fmt::format("config.head_dim: expected an even number (RoPE pairs), given {}", c.head_dim));
  if (!(c.rope_theta > 1.0f) || !std::isfinite(c.rope_theta)) {
    throw Error(fmt::format("config.rope_theta: expected a finite number > 1, given {}", c.rope_theta));
  }
  if (!(c.norm_eps > 0.0f) || !std::isfinite(c.norm_eps)) {
    throw Error(fmt::format("config.norm_eps: expected a finite number > 0, given {}", c.norm_eps));
  }
  if (c.mixer > Mixer::linear) {
    throw Error(fmt::format("config.mixer: expected exact, sliding_window or linear, given value {}",
                            static_cast<int>(c.mixer)));
  }
  if ((c.mixer == Mixer::sliding_window) != (c.window > 0) || c.window < 0) {
    throw Error(fmt::format("config.window: expected > 0 with the sliding_window mixer and 0 otherwise, given {} with {}",
                            c.window, to_string(c.mixer)));
  }
}

int64_t parameter_count(const DecoderConfig& c) {
  const int64_t attn = c.dim * (c.heads_q + 2 * c.heads_kv) * c.head_dim + c.heads_q * c.head_dim * c.dim;
  const int64_t mlp = 3 * c.dim * c.ffn_dim;
  return c.vocab * c.dim * (c.tie_embeddings ? 1 : 2) + c.layers * (attn + mlp + 2 * c.dim) + c.dim;
}

namespace {

struct Linear {
  int64_t out = 0, in = 0;
  std::vector<float> w;      // [out][in] f32; empty once quantized
  std::vector<int8_t> q;     // [out][in]
  std::vector<float> scale;  // [out]

  // y[T][out] = x[T][in] · wᵀ
  void apply(const float* x, int64_t T, float* y) const {
    if (!q.empty()) return linear_int8(x, T, in, q.data(), scale.data(), out, y);
    if (T == 1) {  // one token (decode): a matrix-vector product streams w once; sgemm would pack it
      const cpu::GemvPart part{.w = w.data(), .rows = out, .y = y};
      return cpu::gemv({&part, 1}, x, in);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(T), static_cast<int>(out),
                static_cast<int>(in), 1.0f, x, static_cast<int>(in), w.data(), static_cast<int>(in), 0.0f, y,
                static_cast<int>(out));
  }
  void quantize() {
    q.resize(w.size());
    scale.resize(out);
    for (int64_t o = 0; o < out; ++o) {
      float amax = 0;
      for (int64_t i = 0; i < in; ++i) amax = std::max(amax, std::fabs(w[o * in + i]));
      scale[o] = amax > 0 ? amax / 127.0f : 1.0f;
      for (int64_t i = 0; i < in; ++i) q[o * in + i] = static_cast<int8_t>(std::lrint(w[o * in + i] / scale[o]));
    }
    w.clear();
    w.shrink_to_fit();
  }
  int64_t bytes() const { return q.empty() ? 4 * out * in : out * in + 4 * out; }
};

// Linear layers that read the same input x[T][in]. One token goes through cpu::gemv in one pass
// of the thread pool over all their rows (q, k and v; gate and up): on attnkit's own threads,
// with no BLAS threads left spinning beside the decode kernel's.
void apply_all(std::initializer_list<std::pair<const Linear*, float*>> layers, const float* x, int64_t T) {
  const bool f32 = std::all_of(layers.begin(), layers.end(), [](const auto& l) { return l.first->q.empty(); });
  if (T != 1 || !f32) {
    for (const auto& [l, y] : layers) l->apply(x, T, y);
    return;
  }
  std::vector<cpu::GemvPart> parts;
  for (const auto& [l, y] : layers) parts.push_back({.w = l->w.data(), .rows = l->out, .y = y});
  cpu::gemv(parts, x, layers.begin()->first->in);
}

struct Layer {
  std::vector<float> attn_norm, ffn_norm;  // [dim]
  Linear wq, wk, wv, wo, gate, up, down;
};

// x[t] ← x[t] · w / sqrt(mean(x[t]²) + eps), out of place.
void rms_norm(const float* x, int64_t T, int64_t dim, const std::vector<float>& w, float eps, float* y) {
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x[t * dim + i]) * x[t * dim + i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / dim) + eps);
    for (int64_t i = 0; i < dim; ++i) y[t * dim + i] = x[t * dim + i] * inv * w[i];
  }
}

// Rotary embedding (rotate-half pairing) of `heads` vectors of D at position pos.
void rope(float* v, int64_t heads, int64_t D, int64_t pos, float theta) {
  const int64_t half = D / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double angle = static_cast<double>(pos) * std::pow(static_cast<double>(theta), -2.0 * i / D);
    const float c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
    for (int64_t h = 0; h < heads; ++h) {
      float* p = v + h * D;
      const float a = p[i], b = p[i + half];
      p[i] = a * c - b * s;
      p[i + half] = b * c + a * s;
    }
  }
}

std::string layer_name(int64_t i, const char* what) { return fmt::format("model.layers.{}.{}.weight", i, what); }

}  // namespace

struct Decoder::Impl {
  DecoderConfig c;
  std::vector<float> embed;  // [vocab][dim]
  std::vector<float> final_norm;
  Linear lm_head;            // [vocab][dim] (a copy of embed when tied)
  std::vector<Layer> layers;

  // Every weight with its name and shape, for loading and saving.
  template <class F>
  void each(F&& f) {
    const int64_t d = c.dim, qd = c.heads_q * c.head_dim, kd = c.heads_kv * c.head_dim;
    f("model.embed_tokens.weight", std::vector<int64_t>{c.vocab, d}, embed);
    for (int64_t i = 0; i < c.layers; ++i) {
      Layer& L = layers[i];
      f(layer_name(i, "input_layernorm"), std::vector<int64_t>{d}, L.attn_norm);
      f(layer_name(i, "post_attention_layernorm"), std::vector<int64_t>{d}, L.ffn_norm);
      f(layer_name(i, "self_attn.q_proj"), std::vector<int64_t>{qd, d}, L.wq.w);
      f(layer_name(i, "self_attn.k_proj"), std::vector<int64_t>{kd, d}, L.wk.w);
      f(layer_name(i, "self_attn.v_proj"), std::vector<int64_t>{kd, d}, L.wv.w);
      f(layer_name(i, "self_attn.o_proj"), std::vector<int64_t>{d, qd}, L.wo.w);
      f(layer_name(i, "mlp.gate_proj"), std::vector<int64_t>{c.ffn_dim, d}, L.gate.w);
      f(layer_name(i, "mlp.up_proj"), std::vector<int64_t>{c.ffn_dim, d}, L.up.w);
      f(layer_name(i, "mlp.down_proj"), std::vector<int64_t>{d, c.ffn_dim}, L.down.w);
    }
    f("model.norm.weight", std::vector<int64_t>{d}, final_norm);
    if (!c.tie_embeddings) f("lm_head.weight", std::vector<int64_t>{c.vocab, d}, lm_head.w);
  }

  void set_shapes() {
    const int64_t d = c.dim, qd = c.heads_q * c.head_dim, kd = c.heads_kv * c.head_dim;
    layers.resize(c.layers);
    for (Layer& L : layers) {
      L.wq.out = qd, L.wq.in = d;
      L.wk.out = kd, L.wk.in = d;
      L.wv.out = kd, L.wv.in = d;
      L.wo.out = d, L.wo.in = qd;
      L.gate.out = c.ffn_dim, L.gate.in = d;
      L.up.out = c.ffn_dim, L.up.in = d;
      L.down.out = d, L.down.in = c.ffn_dim;
    }
    lm_head.out = c.vocab;
    lm_head.in = d;
  }

  std::vector<Linear*> linears() {
    std::vector<Linear*> r;
    for (Layer& L : layers)
      for (Linear* l : {&L.wq, &L.wk, &L.wv, &L.wo, &L.gate, &L.up, &L.down}) r.push_back(l);
    r.push_back(&lm_head);
    return r;
  }
};

Decoder::Decoder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Decoder::Decoder(Decoder&&) noexcept = default;
Decoder& Decoder::operator=(Decoder&&) noexcept = default;
Decoder::~Decoder() = default;
const DecoderConfig& Decoder::config() const { return impl_->c; }
bool Decoder::quantized() const { return !impl_->lm_head.q.empty(); }

Decoder Decoder::random(const DecoderConfig& config, uint64_t seed) {
  validate(config);
  auto m = std::make_unique<Impl>();
  m->c = config;
  m->set_shapes();
  std::mt19937_64 rng(seed);
  m->each([&](const std::string& name, const std::vector<int64_t>& shape, std::vector<float>& w) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    w.resize(n);
    if (shape.size() == 1) {
      std::fill(w.begin(), w.end(), 1.0f);  // norms
      return;
    }
    const bool embedding = name == "model.embed_tokens.weight";
    std::normal_distribution<float> g(0.0f, embedding ? 1.0f : 1.0f / std::sqrt(static_cast<float>(shape[1])));
    for (float& x : w) x = g(rng);
  });
  if (config.tie_embeddings) m->lm_head.w = m->embed;
  return Decoder(std::move(m));
}

Decoder Decoder::load(const std::string& path, const DecoderConfig& config) {
  validate(config);
  const SafetensorsFile file(path);
  auto m = std::make_unique<Impl>();
  m->c = config;
  m->set_shapes();
  m->each([&](const std::string& name, const std::vector<int64_t>& shape, std::vector<float>& w) {
    w = file.read_f32(name, shape);
  });
  if (config.tie_embeddings) m->lm_head.w = m->embed;
  return Decoder(std::move(m));
}

void Decoder::save(const std::string& path) const {
  if (quantized()) throw Error("Decoder::save: the decoder is int8-quantized; save it before quantize_int8()");
  std::vector<NamedTensor> ts;
  impl_->each([&](const std::string& name, const std::vector<int64_t>& shape, std::vector<float>& w) {
    ts.push_back({name, shape, w.data()});
  });
  write_safetensors(path, ts);
}

void Decoder::quantize_int8() {
  if (quantized()) return;
  for (Linear* l : impl_->linears()) l->quantize();
}

int64_t Decoder::weight_bytes_per_token() const {
  int64_t b = 4 * impl_->c.dim * (2 * impl_->c.layers + 2);  // norms and one embedding row
  for (Linear* l : impl_->linears()) b += l->bytes();
  return b;
}

KVCacheConfig Decoder::cache_config(int64_t num_pages, int64_t page_size, KVDType dtype) const {
  const DecoderConfig& c = impl_->c;
  if (c.mixer == Mixer::linear) {
    return {.num_layers = c.layers, .heads_kv = c.heads_kv, .head_dim = c.head_dim, .page_size = page_size,
            .num_pages = 0, .dtype = dtype, .state_floats = linear_state_floats(1, c.heads_kv, c.head_dim, {})};
  }
  return {.num_layers = c.layers, .heads_kv = c.heads_kv, .head_dim = c.head_dim, .page_size = page_size,
          .num_pages = num_pages, .dtype = dtype};
}

SeqId Decoder::add_sequence(KVCache& cache) const { return cache.add_sequence(impl_->c.window); }

std::vector<float> Decoder::forward(KVCache& cache, std::span<const SeqId> seqs, std::span<const int32_t> tokens,
                                    bool all_logits) const {
  const DecoderConfig& c = impl_->c;
  const KVCacheConfig& cc = cache.config();
  if (cc.num_layers != c.layers || cc.heads_kv != c.heads_kv || cc.head_dim != c.head_dim) {
    throw Error(fmt::format("Decoder::forward: cache: expected layers {}, heads_kv {}, head_dim {} of the decoder, given "
                            "a cache of {}, {}, {} (use Decoder::cache_config)",
                            c.layers, c.heads_kv, c.head_dim, cc.num_layers, cc.heads_kv, cc.head_dim));
  }
  const int64_t S = static_cast<int64_t>(seqs.size());
  if (S == 0 || tokens.empty() || static_cast<int64_t>(tokens.size()) % S != 0) {
    throw Error(fmt::format("Decoder::forward: tokens: expected the same number (>= 1) for each of the {} sequences, "
                            "given {} tokens",
                            S, tokens.size()));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab) {
      throw Error(fmt::format("Decoder::forward: tokens[{}]: expected a token id in 0..{}, given {}", i, c.vocab - 1,
                              tokens[i]));
    }
  }
  for (SeqId s : seqs) {
    if (!cache.has_sequence(s)) throw Error(fmt::format("Decoder::forward: seqs: expected live sequence ids, given {}", s));
    if (cache.window(s) != c.window) {
      throw Error(fmt::format("Decoder::forward: seqs: sequence {} has window {} but the decoder attends with window {} "
                              "(create it with Decoder::add_sequence)",
                              s, cache.window(s), c.window));
    }
  }
  const int64_t n = static_cast<int64_t>(tokens.size()) / S, T = S * n;
  std::vector<int64_t> pos0(S);
  for (int64_t s = 0; s < S; ++s) {  // all sequences grow, or none
    try {
      pos0[s] = cache.grow(seqs[s], n);
    } catch (const Error&) {
      for (int64_t r = 0; r < s; ++r) cache.truncate(seqs[r], pos0[r]);
      throw;
    }
  }
  const bool linear = c.mixer == Mixer::linear;
  if (linear != (cc.num_pages == 0) || (linear && cc.state_floats != linear_state_floats(1, c.heads_kv, c.head_dim, {}))) {
    throw Error(fmt::format("Decoder::forward: cache: the {} mixer needs {} (use Decoder::cache_config)",
                            to_string(c.mixer), linear ? "a cache of recurrent state only" : "a cache with pages"));
  }
  const DecodePlan plan = linear ? DecodePlan{} : plan_decode(cache, seqs, n, c.heads_q);

  const int64_t d = c.dim, D = c.head_dim, qd = c.heads_q * D, kd = c.heads_kv * D;
  std::vector<float> x(T * d), h(T * d), q(T * qd), k(T * kd), v(T * kd), a(T * qd), g(T * c.ffn_dim),
      u(T * c.ffn_dim);
  for (int64_t t = 0; t < T; ++t) std::copy_n(impl_->embed.begin() + tokens[t] * d, d, x.begin() + t * d);
  for (int64_t l = 0; l < c.layers; ++l) {
    const Layer& L = impl_->layers[l];
    rms_norm(x.data(), T, d, L.attn_norm, c.norm_eps, h.data());
    apply_all({{&L.wq, q.data()}, {&L.wk, k.data()}, {&L.wv, v.data()}}, h.data(), T);
    // The one place a layer's sequence mixer is chosen (see Mixer in model.h): exact and
    // sliding-window attention both read the cache (the window lives in the sequence); linear
    // attention advances each sequence's recurrent state token by token.
    if (linear) {
      for (int64_t s = 0; s < S; ++s) {
        const std::span<float> state = cache.state(seqs[s], l);
        for (int64_t i = 0; i < n; ++i) {
          const int64_t t = s * n + i;
          linear_step(state, {}, TensorView(q.data() + t * qd, DType::f32, {1, c.heads_q, D}),
                      TensorView(k.data() + t * kd, DType::f32, {1, c.heads_kv, D}),
                      TensorView(v.data() + t * kd, DType::f32, {1, c.heads_kv, D}),
                      TensorView(a.data() + t * qd, DType::f32, {1, c.heads_q, D}));
        }
      }
    } else {
      for (int64_t s = 0; s < S; ++s) {
        for (int64_t i = 0; i < n; ++i) {
          rope(q.data() + (s * n + i) * qd, c.heads_q, D, pos0[s] + i, c.rope_theta);
          rope(k.data() + (s * n + i) * kd, c.heads_kv, D, pos0[s] + i, c.rope_theta);
        }
        cache.write(seqs[s], l, pos0[s], TensorView(k.data() + s * n * kd, DType::f32, {n, c.heads_kv, D}),
                    TensorView(v.data() + s * n * kd, DType::f32, {n, c.heads_kv, D}));
      }
      run_decode(cache, plan, l, TensorView(q.data(), DType::f32, {S, n, c.heads_q, D}),
                 TensorView(a.data(), DType::f32, {S, n, c.heads_q, D}));
    }
    L.wo.apply(a.data(), T, h.data());
    for (int64_t i = 0; i < T * d; ++i) x[i] += h[i];
    rms_norm(x.data(), T, d, L.ffn_norm, c.norm_eps, h.data());
    apply_all({{&L.gate, g.data()}, {&L.up, u.data()}}, h.data(), T);
    for (int64_t i = 0; i < T * c.ffn_dim; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    L.down.apply(g.data(), T, h.data());
    for (int64_t i = 0; i < T * d; ++i) x[i] += h[i];
  }
  // Rows whose logits are returned: every token, or each sequence's last.
  const int64_t R = all_logits ? T : S;
  std::vector<float> last(R * d), logits(R * c.vocab);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = all_logits ? r : r * n + n - 1;
    std::copy_n(x.begin() + t * d, d, last.begin() + r * d);
  }
  rms_norm(last.data(), R, d, impl_->final_norm, c.norm_eps, h.data());
  impl_->lm_head.apply(h.data(), R, logits.data());
  return logits;
}

int32_t Decoder::sample(std::span<const float> logits, const SamplingOptions& o, uint64_t step) {
  if (logits.empty()) throw Error("Decoder::sample: logits: expected at least one value, given none");
  if (o.temperature <= 0.0f) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  std::vector<int32_t> idx(logits.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int32_t>(i);
  size_t keep = idx.size();
  if (o.top_k > 0 && static_cast<size_t>(o.top_k) < idx.size()) {
    keep = static_cast<size_t>(o.top_k);
    std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
  }
  float mx = -INFINITY;
  for (size_t i = 0; i < keep; ++i) mx = std::max(mx, logits[idx[i]]);
  std::vector<double> p(keep);
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += p[i] = std::exp((logits[idx[i]] - mx) / o.temperature);
  // One generator per (seed, step): a token does not depend on how many draws came before.
  std::mt19937_64 rng(o.seed ^ (0x9e3779b97f4a7c15ull * (step + 1)));
  double r = std::uniform_real_distribution<double>(0.0, total)(rng);
  for (size_t i = 0; i < keep; ++i) {
    if ((r -= p[i]) < 0) return idx[i];
  }
  return idx[keep - 1];
}

std::vector<int32_t> Decoder::generate(KVCache& cache, SeqId seq, std::span<const int32_t> prompt,
                                       const SamplingOptions& o, const TokenCallback& on_token) const {
  if (prompt.empty()) throw Error("Decoder::generate: prompt: expected at least one token, given none");
  if (o.max_new_tokens < 0 || o.top_k < 0 || o.prefill_chunk < 0 || !(o.temperature >= 0.0f) ||
      !std::isfinite(o.temperature)) {
    throw Error(fmt::format("Decoder::generate: options: expected max_new_tokens, top_k, prefill_chunk >= 0 and a finite "
                            "temperature >= 0, given {}, {}, {}, {}",
                            o.max_new_tokens, o.top_k, o.prefill_chunk, o.temperature));
  }
  const SeqId ids[] = {seq};
  const int64_t P = static_cast<int64_t>(prompt.size());
  const int64_t chunk = o.prefill_chunk > 0 ? o.prefill_chunk : P;
  std::vector<float> logits;
  for (int64_t t = 0; t < P; t += chunk) logits = forward(cache, ids, prompt.subspan(t, std::min(chunk, P - t)));
  std::vector<int32_t> out;
  for (int64_t i = 0; i < o.max_new_tokens; ++i) {
    const int32_t tok = sample(logits, o, static_cast<uint64_t>(i));
    out.push_back(tok);
    if (on_token && !on_token(tok, i)) break;
    if (tok == o.stop_token || i + 1 == o.max_new_tokens) break;
    const int32_t next[] = {tok};
    logits = forward(cache, ids, next);
  }
  return out;
}

DecodeCost decode_cost(const Decoder& d, int64_t ctx, KVDType cache_dtype) {
  const DecoderConfig& c = d.config();
  if (c.mixer == Mixer::linear) {  // each layer's state is read and written once per token
    const double state = 4.0 * static_cast<double>(c.layers * linear_state_floats(1, c.heads_kv, c.head_dim, {}));
    return {2.0 * state, static_cast<double>(d.weight_bytes_per_token())};
  }
  const int64_t keys = c.window > 0 ? std::min(ctx, c.window) : ctx;
  return {decode_kv_bytes(c.layers, keys, c.heads_kv, c.head_dim, cache_dtype),
          static_cast<double>(d.weight_bytes_per_token())};
}

}  // namespace attnkit::model
