// A Llama-style decoder-only transformer for inference: token embedding, then per layer
//   x += Wo · Attn(RoPE(Wq · RMSNorm(x)), RoPE(Wk · RMSNorm(x)), Wv · RMSNorm(x))     (GQA)
//   x += Wdown · (SiLU(Wgate · RMSNorm(x)) ∘ Wup · RMSNorm(x))                         (SwiGLU)
// then a final RMSNorm and the LM head. RoPE uses the rotate-half pairing (d, d + D/2) of the
// Hugging Face Llama code, so real checkpoints load unchanged. Attention keys and values live
// in the paged KV cache (kv_cache.h); prefill runs in chunks through the same decode kernel.
//
// Weights use the Hugging Face Llama names and [out, in] layouts, in safetensors files:
//   model.embed_tokens.weight [vocab, dim]      model.norm.weight [dim]    lm_head.weight [vocab, dim]
//   model.layers.{i}.input_layernorm.weight [dim]   post_attention_layernorm.weight [dim]
//   model.layers.{i}.self_attn.{q,k,v,o}_proj.weight   [Hq·D, dim] [Hkv·D, dim] [Hkv·D, dim] [dim, Hq·D]
//   model.layers.{i}.mlp.{gate,up,down}_proj.weight    [ffn, dim] [ffn, dim] [dim, ffn]
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "attnkit/kv_cache.h"

namespace attnkit::model {

// How a layer mixes information across positions. Every kind here supports causal decoding
// with per-sequence state: exact and sliding-window attention keep keys and values in the KV
// cache's pages; linear attention (elu + 1 features, linear.h) keeps a constant-size recurrent
// state per sequence and layer (KVCache::state), so its per-token cost and memory do not grow
// with the context. Linear layers apply no rotary embedding: order reaches them through the
// causal recurrence. Decoder::forward (src/model/decoder.cc) is the one place that dispatches
// on the mixer; the selective scan and RWKV would be further kinds of the same recurrent shape.
enum class Mixer : uint8_t { exact, sliding_window, linear };
const char* to_string(Mixer m);

struct DecoderConfig {
  int64_t vocab = 256;
  int64_t dim = 64;
  int64_t layers = 2;
  int64_t heads_q = 4, heads_kv = 2, head_dim = 16;
  int64_t ffn_dim = 128;
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  Mixer mixer = Mixer::exact;
  int64_t window = 0;           // sliding_window: positions a query sees (itself included)
  bool tie_embeddings = false;  // the LM head reuses the embedding (no lm_head.weight)
};

// Named configurations: "tiny" (tests), "small" (about 16M parameters, the benchmarks'
// decoder), "small-window" (the same with a 1024-token sliding window), "small-linear" (the
// same with linear attention).
DecoderConfig preset(const std::string& name);
void validate(const DecoderConfig& c);
// Parameters of the decoder's linear layers, embedding and norms.
int64_t parameter_count(const DecoderConfig& c);

struct SamplingOptions {
  int64_t max_new_tokens = 16;
  float temperature = 0.0f;   // 0: greedy (argmax)
  int64_t top_k = 0;          // > 0: sample among the k most likely tokens
  uint64_t seed = 0;          // sampling is reproducible for a seed
  int32_t stop_token = -1;    // >= 0: stop after producing it
  int64_t prefill_chunk = 0;  // > 0: the prompt is prefilled in chunks of this many tokens
};

// Called with each generated token as soon as it is produced and its index; return false to stop.
using TokenCallback = std::function<bool(int32_t token, int64_t index)>;

class Decoder {
 public:
  // Weights drawn from N(0, 1/fan_in) with norms at 1, reproducible for a seed.
  static Decoder random(const DecoderConfig& config, uint64_t seed);
  // Loads a safetensors file; throws attnkit::Error naming the tensor that is missing or
  // mis-shaped, or what is wrong with the file.
  static Decoder load(const std::string& safetensors_path, const DecoderConfig& config);
  // Writes the weights (f32) in the safetensors format under the names above.
  void save(const std::string& safetensors_path) const;

  Decoder(Decoder&&) noexcept;
  Decoder& operator=(Decoder&&) noexcept;
  ~Decoder();

  const DecoderConfig& config() const;
  // Weight-only int8 quantization of every linear layer (symmetric, one scale per output row).
  void quantize_int8();
  bool quantized() const;
  // Bytes of weights one decode step reads (linear layers, norms, one embedding row).
  int64_t weight_bytes_per_token() const;

  // A cache that fits this decoder, and a sequence in it with the decoder's window. With the
  // linear mixer the cache holds recurrent state only (num_pages 0, whatever is asked).
  KVCacheConfig cache_config(int64_t num_pages, int64_t page_size = 16, KVDType dtype = KVDType::f32) const;
  SeqId add_sequence(KVCache& cache) const;

  // Appends n tokens to each sequence (the same n for all) and returns the logits of each
  // sequence's last token, [seqs][vocab] (or of every token, [seqs][n][vocab], when all_logits).
  // On a full pool it throws attnkit::Error and leaves every sequence as it was.
  std::vector<float> forward(KVCache& cache, std::span<const SeqId> seqs, std::span<const int32_t> tokens,
                             bool all_logits = false) const;
  // Prefills the prompt (in chunks when options.prefill_chunk > 0), then samples up to
  // max_new_tokens tokens, streaming each to on_token. Returns the generated tokens.
  std::vector<int32_t> generate(KVCache& cache, SeqId seq, std::span<const int32_t> prompt,
                                const SamplingOptions& options, const TokenCallback& on_token = {}) const;
  // Picks the next token from logits (greedy, or sampled with rng state advanced per call).
  static int32_t sample(std::span<const float> logits, const SamplingOptions& options, uint64_t step);

 private:
  struct Impl;
  explicit Decoder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The decode cost model for this decoder (see DecodeCost in kv_cache.h): bytes one decode step
// reads at context length ctx.
DecodeCost decode_cost(const Decoder& d, int64_t ctx, KVDType cache_dtype = KVDType::f32);

}  // namespace attnkit::model
