// The decoder: cached generation against recomputation at every step (exact and sliding
// window), chunked prefill, shared prefixes, streaming and seeded sampling, safetensors loading
// of a model the test writes (and its errors), int8 weights against f32, and a full pool.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attnkit/attnkit.h"
#include "cpu/gemv.h"
#include "model/safetensors.h"
#include "test_util.h"

namespace attnkit::test {
namespace {

using model::Decoder;
using model::DecoderConfig;

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - static_cast<double>(b[i])) * (a[i] - static_cast<double>(b[i]));
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

int32_t argmax(const std::vector<float>& x) {
  return static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin());
}

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, std::mt19937_64& rng) {
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

DecoderConfig window_config() {
  DecoderConfig c = model::preset("tiny");
  c.mixer = model::Mixer::sliding_window;
  c.window = 6;
  return c;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / fmt::format("attnkit_{}_{}.safetensors", name, test_seed())).string();
}

// fp32 logits of the same math in a different order (a step against a whole-sequence pass):
// relative error a few times eps · √(depth), far below this bound.
constexpr double kRecomputeTol = 1e-4;

class CachedVsRecompute : public ::testing::TestWithParam<bool> {};

TEST_P(CachedVsRecompute, SameTokensAndLogitsAtEveryStep) {
  const DecoderConfig cfg = GetParam() ? window_config() : model::preset("tiny");
  std::mt19937_64 rng(test_seed());
  const Decoder m = Decoder::random(cfg, rng());
  KVCache cache(m.cache_config(64, 4));
  const SeqId s = m.add_sequence(cache);
  std::vector<int32_t> tokens = random_tokens(7, cfg.vocab, rng);
  const SeqId ids[] = {s};
  std::vector<float> logits = m.forward(cache, ids, tokens);
  for (int step = 0; step < 14; ++step) {
    // Recompute: a fresh sequence, the whole history in one pass.
    KVCache fresh(m.cache_config(64, 4));
    const SeqId f[] = {m.add_sequence(fresh)};
    const std::vector<float> full = m.forward(fresh, f, tokens);
    ASSERT_LT(rel_diff(logits, full), kRecomputeTol) << "step " << step;
    ASSERT_EQ(argmax(logits), argmax(full)) << "step " << step;
    const int32_t next[] = {argmax(logits)};
    tokens.push_back(next[0]);
    logits = m.forward(cache, ids, next);
  }
  if (cfg.window > 0) {
    EXPECT_GT(cache.first_position(s), 0);  // old pages were returned
  }
}

INSTANTIATE_TEST_SUITE_P(Mixers, CachedVsRecompute, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "sliding_window" : "exact"; });

// The one-token linear layers (cpu::gemv): several matrices against one x, row counts that are
// not multiples of the 4-row step or the thread blocks, widths with a tail past whole vectors,
// against float64 sums; outputs poisoned so that an unwritten row fails.
TEST(Gemv, MatchesFloat64OnRaggedShapes) {
  std::mt19937_64 rng(test_seed());
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (const int64_t in : {1, 7, 64, 133, 512}) {
    const std::vector<int64_t> rows = {1, 3, 65, 130, static_cast<int64_t>(rng() % 300 + 1)};
    std::vector<float> x(in);
    for (float& e : x) e = u(rng);
    std::vector<std::vector<float>> w(rows.size()), y(rows.size());
    std::vector<cpu::GemvPart> parts;
    for (size_t p = 0; p < rows.size(); ++p) {
      w[p].resize(rows[p] * in);
      for (float& e : w[p]) e = u(rng);
      y[p].assign(rows[p], std::numeric_limits<float>::quiet_NaN());
      parts.push_back({.w = w[p].data(), .rows = rows[p], .y = y[p].data()});
    }
    cpu::gemv(parts, x.data(), in);
    for (size_t p = 0; p < rows.size(); ++p) {
      for (int64_t r = 0; r < rows[p]; ++r) {
        double ref = 0, mag = 0;
        for (int64_t i = 0; i < in; ++i) {
          ref += static_cast<double>(w[p][r * in + i]) * x[i];
          mag += std::abs(static_cast<double>(w[p][r * in + i]) * x[i]);
        }
        ASSERT_NEAR(y[p][r], ref, 1e-6 * mag + 1e-30) << "in " << in << " part " << p << " row " << r;
      }
    }
  }
}

TEST(Decoder, ChunkedPrefillEqualsOnePass) {
  std::mt19937_64 rng(test_seed());
  const Decoder m = Decoder::random(model::preset("tiny"), rng());
  const std::vector<int32_t> prompt = random_tokens(23, m.config().vocab, rng);
  KVCache cache(m.cache_config(64, 4));
  const SeqId a[] = {m.add_sequence(cache)}, b[] = {m.add_sequence(cache)};
  const std::vector<float> one = m.forward(cache, a, prompt, true);
  std::vector<float> chunked;
  for (size_t t = 0; t < prompt.size(); t += 5) {
    const std::vector<float> part =
        m.forward(cache, b, std::span(prompt).subspan(t, std::min<size_t>(5, prompt.size() - t)), true);
    chunked.insert(chunked.end(), part.begin(), part.end());
  }
  EXPECT_LT(rel_diff(chunked, one), kRecomputeTol);
}

TEST(Decoder, SharedPrefixEqualsUnshared) {
  std::mt19937_64 rng(test_seed());
  const Decoder m = Decoder::random(model::preset("tiny"), rng());
  const std::vector<int32_t> prompt = random_tokens(10, m.config().vocab, rng);
  const std::vector<int32_t> turn = random_tokens(3, m.config().vocab, rng);
  KVCache cache(m.cache_config(64, 4));
  const SeqId p = m.add_sequence(cache);
  const SeqId pid[] = {p};
  m.forward(cache, pid, prompt);
  const SeqId c1[] = {cache.fork(p)}, c2[] = {cache.fork(p)};
  const std::vector<float> shared = m.forward(cache, c1, turn);
  m.forward(cache, c2, random_tokens(4, m.config().vocab, rng));  // a sibling writes too
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), turn.begin(), turn.end());
  KVCache alone(m.cache_config(64, 4));
  const SeqId u[] = {m.add_sequence(alone)};
  EXPECT_LT(rel_diff(shared, m.forward(alone, u, all)), kRecomputeTol);
  // Batched decode over the ragged pair of forks equals each alone.
  const int32_t next[] = {5, 9};
  const SeqId both[] = {c1[0], c2[0]};
  const std::vector<float> batched = m.forward(cache, both, next);
  all.push_back(5);
  KVCache again(m.cache_config(64, 4));
  const SeqId w[] = {m.add_sequence(again)};
  const std::vector<float> first(batched.begin(), batched.begin() + m.config().vocab);
  EXPECT_LT(rel_diff(first, m.forward(again, w, all)), kRecomputeTol);
}

TEST(Decoder, GenerateStreamsGreedyAndSeededSampling) {
  std::mt19937_64 rng(test_seed());
  const Decoder m = Decoder::random(model::preset("tiny"), rng());
  const std::vector<int32_t> prompt = random_tokens(5, m.config().vocab, rng);
  KVCache cache(m.cache_config(128, 8));
  std::vector<int32_t> streamed;
  const std::vector<int32_t> greedy = m.generate(cache, m.add_sequence(cache), prompt, {.max_new_tokens = 9, .prefill_chunk = 2},
                                                 [&](int32_t t, int64_t i) {
                                                   EXPECT_EQ(i, static_cast<int64_t>(streamed.size()));
                                                   streamed.push_back(t);
                                                   return true;
                                                 });
  EXPECT_EQ(greedy.size(), 9u);
  EXPECT_EQ(streamed, greedy);
  // The same by hand: argmax of the recomputed logits.
  std::vector<int32_t> all = prompt;
  for (int32_t t : greedy) {
    KVCache fresh(m.cache_config(64, 8));
    const SeqId f[] = {m.add_sequence(fresh)};
    EXPECT_EQ(argmax(m.forward(fresh, f, all)), t);
    all.push_back(t);
  }
  const model::SamplingOptions sampled{.max_new_tokens = 12, .temperature = 1.5f, .top_k = 20, .seed = 42};
  const auto s1 = m.generate(cache, m.add_sequence(cache), prompt, sampled);
  const auto s2 = m.generate(cache, m.add_sequence(cache), prompt, sampled);
  EXPECT_EQ(s1, s2);
  model::SamplingOptions other = sampled;
  other.seed = 43;
  EXPECT_NE(s1, m.generate(cache, m.add_sequence(cache), prompt, other));
  // The callback stops generation.
  const auto stopped = m.generate(cache, m.add_sequence(cache), prompt, sampled, [](int32_t, int64_t i) { return i < 2; });
  EXPECT_EQ(stopped.size(), 3u);
}

TEST(Decoder, SafetensorsRoundTripAndErrors) {
  std::mt19937_64 rng(test_seed());
  const DecoderConfig cfg = model::preset("tiny");
  const Decoder m = Decoder::random(cfg, rng());
  const std::string path = temp_path("tiny");
  m.save(path);
  const Decoder loaded = Decoder::load(path, cfg);
  const std::vector<int32_t> prompt = random_tokens(6, cfg.vocab, rng);
  KVCache c1(m.cache_config(16, 8)), c2(m.cache_config(16, 8));
  const SeqId a[] = {m.add_sequence(c1)}, b[] = {loaded.add_sequence(c2)};
  EXPECT_EQ(m.forward(c1, a, prompt), loaded.forward(c2, b, prompt));

  auto expect_error = [&](const std::string& file, const DecoderConfig& c, const std::string& needle) {
    try {
      Decoder::load(file, c);
      ADD_FAILURE() << "expected attnkit::Error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  DecoderConfig wider = cfg;
  wider.ffn_dim = 65;  // the file's MLP is 64 wide
  expect_error(path, wider, "'model.layers.0.mlp.gate_proj.weight': expected shape [65, 32], given [64, 32]");
  DecoderConfig deeper = cfg;
  deeper.layers = 3;
  expect_error(path, deeper, "'model.layers.2.input_layernorm.weight' (shape [32]) is missing");
  expect_error(temp_path("does_not_exist"), cfg, "cannot open");
  // A file whose header length points past its end, and one whose header is not JSON.
  const std::string bad = temp_path("bad");
  for (const std::string& bytes : {std::string("\xff\x00\x00\x00\x00\x00\x00\x00{}", 10),
                                   std::string("\x04\x00\x00\x00\x00\x00\x00\x00{{{{", 12)}) {
    std::FILE* f = std::fopen(bad.c_str(), "wb");
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
    expect_error(bad, cfg, "safetensors");
  }
  // An entry whose offsets do not hold its shape.
  const float two[2] = {1.0f, 2.0f};
  model::write_safetensors(bad, {{"x", {2}, two}});
  std::string text;
  {
    std::FILE* f = std::fopen(bad.c_str(), "rb");
    char buf[256];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    std::fclose(f);
  }
  text.resize(text.size() - 4);  // drop the second element's bytes
  {
    std::FILE* f = std::fopen(bad.c_str(), "wb");
    std::fwrite(text.data(), 1, text.size(), f);
    std::fclose(f);
  }
  expect_error(bad, cfg, "data_offsets");
  std::filesystem::remove(path);
  std::filesystem::remove(bad);
}

// Int8 weights, one scale per output row: each weight's rounding error is at most scale/2 =
// amax/254, so a linear layer's output error relative to its size is about
// amax / (127 · √12 · rms(w)) ≈ 0.6% for Gaussian rows of 32 (amax ≈ 2.5 rms); about fifteen
// such layers in sequence compound to ≈ 2.5%. Bound: 5%.
TEST(Decoder, Int8LogitsCloseToF32) {
  std::mt19937_64 rng(test_seed());
  const Decoder f32 = Decoder::random(model::preset("tiny"), 1234);
  Decoder q8 = Decoder::random(model::preset("tiny"), 1234);
  q8.quantize_int8();
  EXPECT_TRUE(q8.quantized());
  EXPECT_LT(q8.weight_bytes_per_token(), f32.weight_bytes_per_token() / 3);
  const std::vector<int32_t> prompt = random_tokens(12, 97, rng);
  KVCache c1(f32.cache_config(16, 8)), c2(q8.cache_config(16, 8));
  const SeqId a[] = {f32.add_sequence(c1)}, b[] = {q8.add_sequence(c2)};
  const double err = rel_diff(q8.forward(c2, b, prompt, true), f32.forward(c1, a, prompt, true));
  EXPECT_LT(err, 0.05);
  EXPECT_GT(err, 0.0);
  EXPECT_THROW(q8.save(temp_path("q8")), Error);
}

TEST(Decoder, FullPoolThrowsAndLeavesSequencesUnchanged) {
  std::mt19937_64 rng(test_seed());
  const Decoder m = Decoder::random(model::preset("tiny"), rng());
  KVCache cache(m.cache_config(3, 4));
  const SeqId a = m.add_sequence(cache), b = m.add_sequence(cache);
  const SeqId ida[] = {a};
  m.forward(cache, ida, random_tokens(8, 97, rng));  // 2 of the 3 pages
  const SeqId both[] = {a, b};
  EXPECT_THROW(m.forward(cache, both, random_tokens(6, 97, rng)), Error);  // b needs 1, a 1 more
  EXPECT_EQ(cache.length(a), 8);
  EXPECT_EQ(cache.length(b), 0);
  EXPECT_EQ(cache.free_pages(), 1);
}

// Linear attention as the mixer: the recurrent state is advanced token by token and kept in the
// cache (KVCache::state), so a step's logits equal a whole-sequence pass, chunked prefill and
// forks agree, and the cache's memory does not grow with the context.
TEST(Decoder, LinearMixerCarriesConstantState) {
  std::mt19937_64 rng(test_seed());
  DecoderConfig cfg = model::preset("tiny");
  cfg.mixer = model::Mixer::linear;
  const Decoder m = Decoder::random(cfg, rng());
  const std::vector<int32_t> prompt = random_tokens(19, cfg.vocab, rng);
  KVCache cache(m.cache_config(64, 4));
  EXPECT_EQ(cache.config().num_pages, 0);
  const SeqId a[] = {m.add_sequence(cache)}, b[] = {m.add_sequence(cache)};
  const std::vector<float> one = m.forward(cache, a, prompt, true);
  const int64_t bytes_after_prompt = cache.bytes_in_use();
  std::vector<float> stepped;
  for (int32_t t : prompt) {
    const int32_t tok[] = {t};
    const std::vector<float> l = m.forward(cache, b, tok);
    stepped.insert(stepped.end(), l.begin(), l.end());
  }
  EXPECT_LT(rel_diff(stepped, one), kRecomputeTol);
  for (float x : one) ASSERT_TRUE(std::isfinite(x));
  // A fork continues exactly as the sequence it came from.
  const SeqId f[] = {cache.fork(a[0])};
  const int32_t next[] = {3};
  const std::vector<float> from_fork = m.forward(cache, f, next), from_parent = m.forward(cache, a, next);
  EXPECT_EQ(from_fork, from_parent);
  // Memory: the state of each live sequence, whatever the context.
  cache.remove_sequence(f[0]);
  for (int i = 0; i < 40; ++i) m.forward(cache, a, next);
  EXPECT_EQ(cache.bytes_in_use(), bytes_after_prompt);
  EXPECT_EQ(cache.length(a[0]), 19 + 41);
  // Mismatched caches are refused.
  KVCache paged({.num_layers = cfg.layers, .heads_kv = cfg.heads_kv, .head_dim = cfg.head_dim, .page_size = 4,
                 .num_pages = 8});
  const SeqId p[] = {paged.add_sequence()};
  EXPECT_THROW(m.forward(paged, p, next), Error);
  const Decoder exact = Decoder::random(model::preset("tiny"), 1);
  EXPECT_THROW(exact.forward(cache, a, next), Error);
  EXPECT_EQ(model::decode_cost(m, 100).kv_bytes, model::decode_cost(m, 100000).kv_bytes);
}

TEST(Decoder, ValidatesArguments) {
  std::mt19937_64 rng(test_seed());
  EXPECT_THROW(model::preset("huge"), Error);
  DecoderConfig bad = model::preset("tiny");
  bad.heads_kv = 3;
  EXPECT_THROW(Decoder::random(bad, 1), Error);
  bad = model::preset("tiny");
  bad.window = 4;  // a window needs the sliding_window mixer
  EXPECT_THROW(Decoder::random(bad, 1), Error);
  const Decoder m = Decoder::random(model::preset("tiny"), 1);
  KVCache cache(m.cache_config(8, 4));
  const SeqId s[] = {m.add_sequence(cache)};
  const int32_t out_of_vocab[] = {97};
  EXPECT_THROW(m.forward(cache, s, out_of_vocab), Error);
  EXPECT_THROW(m.forward(cache, s, std::vector<int32_t>{}), Error);
  KVCache other({.num_layers = 1, .heads_kv = 2, .head_dim = 8, .page_size = 4, .num_pages = 4});
  const SeqId o[] = {other.add_sequence()};
  EXPECT_THROW(m.forward(other, o, std::vector<int32_t>{1}), Error);
  const SeqId windowed[] = {cache.add_sequence(5)};
  EXPECT_THROW(m.forward(cache, windowed, std::vector<int32_t>{1}), Error);
  EXPECT_THROW(m.generate(cache, s[0], {}, {}), Error);
  EXPECT_THROW(m.generate(cache, s[0], std::vector<int32_t>{1}, {.temperature = -1.0f}), Error);
  EXPECT_THROW(Decoder::sample({}, {}, 0), Error);
}

}  // namespace
}  // namespace attnkit::test
