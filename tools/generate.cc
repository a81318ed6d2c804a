// attnkit generate: run the decoder on token ids, streaming each generated token.
//   attnkit generate [--preset tiny|small|small-window] [--weights model.safetensors]
//                    [--prompt 1,2,3] [--max-new 32] [--temperature 0] [--top-k 0] [--seed 0]
//                    [--int8] [--kv-dtype f32|bf16|f16|int8] [--page-size 16] [--prefill-chunk 0]
// Without --weights the preset's weights are random (seeded). Prints the tokens as they come,
// then time to first token and decode tokens per second.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <vector>

#include "attnkit/attnkit.h"
#include "tools/commands.h"

namespace attnkit::tools {
namespace {

struct GenerateOptions {
  std::string preset = "tiny", weights, kv_dtype = "f32";
  std::vector<int32_t> prompt = {1, 2, 3, 4};
  int64_t max_new = 32, top_k = 0, page_size = 16, prefill_chunk = 0;
  float temperature = 0.0f;
  uint64_t seed = 0;
  bool int8 = false;
};

KVDType parse_kv_dtype(const std::string& s) {
  for (KVDType t : {KVDType::f32, KVDType::bf16, KVDType::f16, KVDType::int8})
    if (s == to_string(t)) return t;
  throw Error(fmt::format("--kv-dtype: expected f32, bf16, f16 or int8, given '{}'", s));
}

void run_generate(const GenerateOptions& o) {
  const model::DecoderConfig cfg = model::preset(o.preset);
  model::Decoder m = o.weights.empty() ? model::Decoder::random(cfg, o.seed) : model::Decoder::load(o.weights, cfg);
  if (o.int8) m.quantize_int8();
  if (o.page_size <= 0) throw Error(fmt::format("--page-size: expected >= 1, given {}", o.page_size));
  const int64_t tokens = static_cast<int64_t>(o.prompt.size()) + o.max_new;
  KVCache cache(m.cache_config(tokens / o.page_size + 2, o.page_size, parse_kv_dtype(o.kv_dtype)));
  const SeqId seq = m.add_sequence(cache);
  fmt::print("decoder {} ({} mixer, {:.2f}M parameters{}), {} prompt tokens\n", o.preset, to_string(cfg.mixer),
             model::parameter_count(cfg) / 1e6, o.int8 ? ", int8 weights" : "", o.prompt.size());
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  auto t_first = t0;
  const std::vector<int32_t> out = m.generate(
      cache, seq, o.prompt,
      {.max_new_tokens = o.max_new, .temperature = o.temperature, .top_k = o.top_k, .seed = o.seed,
       .prefill_chunk = o.prefill_chunk},
      [&](int32_t tok, int64_t i) {
        if (i == 0) t_first = clock::now();
        std::printf("%s%d", i ? " " : "", tok);
        std::fflush(stdout);
        return true;
      });
  const double total = std::chrono::duration<double>(clock::now() - t0).count();
  const double ttft = std::chrono::duration<double>(t_first - t0).count();
  fmt::print("\ntime to first token {:.2f} ms; {} tokens; decode {:.1f} tokens/s; KV cache {} bytes\n", ttft * 1e3,
             out.size(), out.size() > 1 ? (out.size() - 1) / (total - ttft) : 0.0, cache.bytes_in_use());
}

}  // namespace

void register_generate(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "generate tokens with the decoder (random or safetensors weights)");
  cmd->add_option("--preset", o->preset, "tiny, small or small-window (the shapes of --weights)");
  cmd->add_option("--weights", o->weights, "a safetensors file with Llama-named weights");
  cmd->add_option("--prompt", o->prompt, "prompt token ids")->delimiter(',');
  cmd->add_option("--max-new", o->max_new, "tokens to generate")->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--temperature", o->temperature, "0: greedy");
  cmd->add_option("--top-k", o->top_k, "sample among the k most likely (0: all)");
  cmd->add_option("--seed", o->seed, "sampling and random-weight seed");
  cmd->add_flag("--int8", o->int8, "int8 weight-only quantization of the linear layers");
  cmd->add_option("--kv-dtype", o->kv_dtype, "KV-cache storage: f32, bf16, f16, int8");
  cmd->add_option("--page-size", o->page_size, "KV-cache page size in tokens");
  cmd->add_option("--prefill-chunk", o->prefill_chunk, "prefill the prompt in chunks of this many tokens");
  cmd->callback([o] { run_generate(*o); });
}

}  // namespace attnkit::tools
