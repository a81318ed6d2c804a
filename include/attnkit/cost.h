// The analytic cost model: the one source of FLOP and byte counts for the program, the
// benchmarks and the tests.
//
// Convention (as in the FlashAttention papers): a multiply-accumulate (MAC) is 2 FLOPs; the
// forward pass of exact attention is QKᵀ plus PV, 4·Nq·Nk·D FLOPs per head, halved when causal;
// the backward pass is 2.5× the forward (five matrix products to the forward's two). Softmax,
// norms and activations are counted as bytes moved, not as FLOPs: on every machine attnkit runs
// on they are bound by memory, not by arithmetic.
//
// Three levels: one head (AttentionShape with heads = 1), one layer (the token mixer plus the
// projections and the MLP of a LayerShape), and a whole model (layers × layer, plus the KV
// cache and the activations kept for the backward pass). The math is written out in
// docs/cost_model.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace attnkit::cost {

struct AttentionShape {
  int64_t batch = 1;
  int64_t seq_q = 0, seq_k = 0;
  int64_t heads_q = 1, heads_kv = 1;
  int64_t head_dim = 64;
  bool causal = false;
};

inline constexpr double kBackwardFactor = 2.5;

// Query–key pairs the kernel must compute, per head (exact count, bottom-right causal).
double visible_pairs(const AttentionShape& s);
// FLOPs of the forward pass by the convention above, all heads and batch.
double attention_fwd_flops(const AttentionShape& s);
double attention_bwd_flops(const AttentionShape& s);
// Bytes of the materialized f32 score matrices that naive attention holds for one head.
double score_matrix_bytes(const AttentionShape& s, int64_t bytes_per_element = 4);

// ---------------------------------------------------------------------------------------------
// Variants: every token mixer attnkit implements or models. Adding one is an enum value, a
// name in variant_names(), and a case in mixer_cost().
enum class Variant : uint8_t {
  naive,   // exact, materializes the Nq×Nk scores
  flash,   // exact, tiled online softmax
  sparse,  // exact on the kept (query, key) pairs: sliding window plus global tokens
  linear,  // kernelized linear attention φ(Q)(φ(K)ᵀV), feature dimension F
  scan,    // Mamba's selective state-space scan, state size per channel
  rwkv,    // RWKV time mixing with a matrix-valued state per head (RWKV-5/6)
  decode,  // exact attention of new tokens against a KV cache of length kv_len
};
const char* to_string(Variant v);
// Throws attnkit::Error naming the known variants when s is not one of them.
Variant parse_variant(const std::string& s);
const std::vector<Variant>& all_variants();

enum class Mode : uint8_t { inference, training };
const char* to_string(Mode m);

// Parameters that only some variants read.
struct VariantParams {
  int64_t window = 512;      // sparse: keys each query sees to its left (and right if not causal)
  int64_t global_tokens = 0; // sparse: tokens that attend to and are attended by all
  int64_t feature_dim = 0;   // linear: φ's dimension F; 0 = head_dim
  int64_t chunk = 64;        // linear, causal: the chunk of the chunked form
  int64_t state_dim = 16;    // scan: state size per channel (Mamba's N)
  int64_t kv_len = 0;        // decode: cached tokens; seq_q new tokens attend to kv_len + seq_q keys
};

// The cost of one operation. Bytes are in the storage dtype given to the function.
struct Cost {
  double macs = 0;         // multiply-accumulates
  double flops = 0;        // 2·macs for matrix products (the convention above)
  double bytes_moved = 0;  // bytes that must move through main memory at least once
  double io_bytes = 0;     // inputs and outputs the operation reads and writes (Q, K, V, O, LSE)
  double workspace_bytes = 0;  // extra memory held at the operation's peak, beyond io_bytes
  double saved_bytes = 0;      // training: what the forward keeps for the backward pass
  double state_bytes = 0;      // inference: KV cache or recurrent state carried between calls

  double peak_bytes() const { return io_bytes + workspace_bytes + saved_bytes + state_bytes; }
  double intensity() const { return bytes_moved > 0 ? flops / bytes_moved : 0; }
  Cost& operator+=(const Cost& o);
};
Cost operator+(Cost a, const Cost& b);
Cost operator*(Cost a, double k);

// How an implementation holds the score matrices, which sets naive's peak memory:
// scores_in_flight = 0 means every (batch, head) at once, as a framework's eager
// softmax(QKᵀ)V does; attnkit's CPU naive kernel holds one head at a time (1).
struct Implementation {
  int64_t scores_in_flight = 0;
  int threads = 1;           // per-thread scratch of the tiled kernels
  int64_t tile_q = 64, tile_k = 64;
  bool attnkit_cpu = false;  // add the CPU kernels' gathers and packed copies
};
// The attnkit CPU kernels (src/cpu/naive.cc, flash_fwd.cc, flash_bwd.cc) with `threads`.
Implementation attnkit_cpu(int threads);

// The token mixer of one layer (all heads, all batch) in the given mode: inference is the
// forward pass; training is forward + backward, with saved_bytes what the backward needs.
Cost mixer_cost(Variant v, const AttentionShape& s, Mode mode, int64_t bytes_per_element = 4,
                const VariantParams& vp = {}, const Implementation& impl = {});

// One forward call of an attnkit CPU kernel (naive or flash, pass "fwd" or "bwd"), f32: the
// memory it holds, for comparison with what `attnkit bench` measures.
Cost kernel_call_cost(Variant v, const AttentionShape& s, bool backward, int threads);

// ---------------------------------------------------------------------------------------------
// Layers and models.
enum class MlpKind : uint8_t { gelu, swiglu };  // 2 matrices (d→f→d) or 3 (gate, up, down)

struct ModelShape {
  std::string name;
  int64_t layers = 12;
  int64_t d_model = 768;
  int64_t heads_q = 12, heads_kv = 12, head_dim = 64;
  int64_t d_ff = 3072;
  MlpKind mlp = MlpKind::gelu;
  int64_t seq = 1024;     // the published context (or tokens per input: patches, frames)
  int64_t window = 0;     // > 0: sliding-window attention (Mistral)
  bool causal = true;
  int64_t vocab = 0;      // embedding and LM head, 0 for none
  std::string note;       // where the shape comes from
};

// Published presets: bert-base, gpt2, gpt3-175b, llama-3-8b, mistral-7b, vit-b/16,
// whisper-large (encoder).
const std::vector<ModelShape>& presets();
// Throws attnkit::Error naming the presets when name is not one of them.
const ModelShape& preset(const std::string& name);

// The attention shape of one layer of m at n tokens (batch b).
AttentionShape layer_attention_shape(const ModelShape& m, int64_t n, int64_t batch = 1);

struct LayerCost {
  Cost norms, qkv, mixer, out_proj, mlp;
  Cost total() const { return norms + qkv + mixer + out_proj + mlp; }
};
// One layer at n tokens. The mixer is `v` (mistral's window goes to VariantParams::window
// when the variant is sparse); weights count as io_bytes of the projections.
LayerCost layer_cost(const ModelShape& m, int64_t n, Variant v, Mode mode, int64_t bytes_per_element = 4,
                     int64_t batch = 1, const VariantParams& vp = {}, const Implementation& impl = {});

struct ModelCost {
  LayerCost layer;
  Cost total;               // all layers; peak memory counts the largest layer's workspace once
  double weight_bytes = 0;  // parameters (layers + embeddings)
  double kv_cache_bytes = 0;
  double activation_bytes = 0;  // training: kept for the backward pass, all layers
  double peak_bytes = 0;        // weights + KV cache or activations + one layer's workspace
};
ModelCost model_cost(const ModelShape& m, int64_t n, Variant v, Mode mode, int64_t bytes_per_element = 4,
                     int64_t batch = 1, const VariantParams& vp = {}, const Implementation& impl = {});

// Per-token KV cache of a model: 2 · layers · Hkv · D · bytes.
double kv_cache_bytes(const ModelShape& m, int64_t tokens, int64_t bytes_per_element = 2, int64_t batch = 1);

// ---------------------------------------------------------------------------------------------
// Roofline.
struct DeviceSpec {
  std::string name;
  double peak_flops = 0;      // FLOP/s
  double bandwidth = 0;       // bytes/s
  double memory_bytes = 0;
};
// max(flops / peak, bytes / bandwidth).
double roofline_seconds(const Cost& c, const DeviceSpec& dev);

// The smallest N (over [lo, hi]) at which naive's score matrices for all heads of `s`
// (seq_q = seq_k = N) exceed `memory_bytes`; 0 when even hi fits.
int64_t scores_stop_fitting(AttentionShape s, double memory_bytes, int64_t bytes_per_element = 4,
                            int64_t lo = 1, int64_t hi = int64_t{1} << 40);

// The N at which the token mixer's roofline time overtakes the MLP's in one layer of m, or 0
// when it does not within [lo, hi].
double mixer_mlp_crossover(const ModelShape& m, Variant v, const DeviceSpec& dev, int64_t lo = 16,
                           int64_t hi = int64_t{1} << 24);

}  // namespace attnkit::cost
