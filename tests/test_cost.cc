// The cost model: the textbook numbers hold exactly, and the variants, layers, models and the
// roofline agree with each other and with the hand-written formulas in docs/cost_model.md.
#include <gtest/gtest.h>

#include "attnkit/cost.h"
#include "attnkit/error.h"

namespace attnkit::cost {
namespace {

AttentionShape square(int64_t n, int64_t heads = 1, int64_t d = 64, bool causal = false) {
  return {.batch = 1, .seq_q = n, .seq_k = n, .heads_q = heads, .heads_kv = heads, .head_dim = d, .causal = causal};
}

TEST(CostTextbook, ScoreMatrixOfAThousandTokens) {
  // 1,000 tokens in f32: 1000 · 1000 · 4 bytes per head; 12 heads hold 48,000,000.
  EXPECT_EQ(score_matrix_bytes(square(1000)), 4'000'000.0);
  const Cost c = mixer_cost(Variant::naive, square(1000, 12), Mode::inference, 4);
  EXPECT_EQ(c.workspace_bytes, 48'000'000.0);
}

TEST(CostTextbook, QKtIsNSquaredDMacs) {
  for (int64_t n : {1, 7, 1000, 4096})
    for (int64_t d : {32, 64, 128}) {
      // QKᵀ and PV are N²·D MACs each: 2·N²·D MACs, 4·N²·D FLOPs per head.
      const Cost c = mixer_cost(Variant::naive, square(n, 1, d), Mode::inference);
      EXPECT_EQ(c.macs, 2.0 * n * n * d);
      EXPECT_EQ(c.flops, 4.0 * n * n * d);
      EXPECT_EQ(c.flops, attention_fwd_flops(square(n, 1, d)));
    }
}

TEST(CostTextbook, TenThousandTokensCost25TimesTwoThousand) {
  for (Variant v : {Variant::naive, Variant::flash}) {
    const double a = mixer_cost(v, square(10'000, 12), Mode::inference).flops;
    const double b = mixer_cost(v, square(2'000, 12), Mode::inference).flops;
    EXPECT_EQ(a / b, 25.0);
  }
}

TEST(CostTextbook, BackwardIsTwoAndAHalfTimesForward) {
  const AttentionShape s = square(2048, 8, 128, true);
  EXPECT_EQ(attention_bwd_flops(s), 2.5 * attention_fwd_flops(s));
  const Cost inf = mixer_cost(Variant::flash, s, Mode::inference), train = mixer_cost(Variant::flash, s, Mode::training);
  EXPECT_EQ(train.flops, 3.5 * inf.flops);  // forward + 2.5 × forward
}

TEST(Cost, CausalHalvesAndVisiblePairsAreExact) {
  EXPECT_EQ(attention_fwd_flops(square(1024, 1, 64, true)), 0.5 * attention_fwd_flops(square(1024)));
  EXPECT_EQ(visible_pairs(square(4, 1, 64, true)), 10.0);  // 1 + 2 + 3 + 4
  AttentionShape cross = square(2, 1, 64, true);
  cross.seq_k = 5;  // bottom-right: rows see 4 and 5 keys
  EXPECT_EQ(visible_pairs(cross), 9.0);
}

TEST(Cost, FlashKeepsNoScoresNaiveDoes) {
  const AttentionShape s = square(8192, 8);
  const Cost naive = mixer_cost(Variant::naive, s, Mode::inference);
  const Cost flash = mixer_cost(Variant::flash, s, Mode::inference);
  EXPECT_EQ(naive.flops, flash.flops);
  EXPECT_EQ(naive.workspace_bytes, 8.0 * 8192 * 8192 * 4);
  EXPECT_LT(flash.workspace_bytes, 1e6);
  EXPECT_GT(naive.bytes_moved, 10 * flash.bytes_moved / 10);
  // Training keeps P for every head.
  EXPECT_EQ(mixer_cost(Variant::naive, s, Mode::training).saved_bytes, 8.0 * 8192 * 8192 * 4);
  EXPECT_EQ(mixer_cost(Variant::flash, s, Mode::training).saved_bytes, 0.0);
}

TEST(Cost, AttnkitCpuNaiveHoldsOneHeadAtATime) {
  const AttentionShape s = square(8192, 8, 64);
  const Cost c = kernel_call_cost(Variant::naive, s, false, 2);
  EXPECT_EQ(c.workspace_bytes, 4.0 * (8192.0 * 8192 + 4 * 8192 * 64 + 8192));
  EXPECT_EQ(c.io_bytes, 4.0 * 4 * 8192 * 8 * 64 + 4.0 * 8 * 8192);
}

TEST(Cost, SparseLinearScanRwkvDecode) {
  const AttentionShape s = square(8192, 8, 64, true);
  VariantParams vp;
  vp.window = 512;
  const Cost sp = mixer_cost(Variant::sparse, s, Mode::inference, 4, vp);
  // Causal window w over N: w·N − w(w−1)/2 pairs per head.
  EXPECT_EQ(sp.macs, 2.0 * 8 * (512.0 * 8192 - 512.0 * 511 / 2) * 64);
  // Linear, non-causal, F = D: (Nq + Nk)·F·(D + 1) MACs per head: linear in N.
  const Cost l1 = mixer_cost(Variant::linear, square(1000, 1), Mode::inference);
  const Cost l2 = mixer_cost(Variant::linear, square(2000, 1), Mode::inference);
  EXPECT_EQ(l1.macs, 2000.0 * 64 * 65);
  EXPECT_EQ(l2.macs / l1.macs, 2.0);
  EXPECT_EQ(mixer_cost(Variant::scan, square(1000, 1, 64), Mode::inference).macs, 3.0 * 1000 * 64 * 16);
  EXPECT_EQ(mixer_cost(Variant::rwkv, square(1000, 1, 64), Mode::inference).macs, 1000.0 * (2 * 64 * 64 + 64));
  vp.kv_len = 4095;
  const Cost dec = mixer_cost(Variant::decode, {.seq_q = 1, .seq_k = 1, .heads_q = 32, .heads_kv = 8, .head_dim = 128},
                              Mode::inference, 2, vp);
  EXPECT_EQ(dec.macs, 2.0 * 32 * 4096 * 128);
  EXPECT_EQ(dec.state_bytes, 2.0 * 8 * 4096 * 128 * 2);  // K and V, 8 KV heads, bf16
  EXPECT_THROW(mixer_cost(Variant::decode, s, Mode::training), Error);
}

TEST(Cost, PresetsHaveTheirPublishedShapes) {
  EXPECT_EQ(preset("bert-base").seq, 512);
  EXPECT_EQ(preset("gpt3-175b").d_model, 12288);
  EXPECT_EQ(preset("gpt3-175b").seq, 2048);
  EXPECT_EQ(preset("llama-3-8b").heads_kv, 8);
  EXPECT_EQ(preset("mistral-7b").window, 4096);
  EXPECT_EQ(preset("vit-b/16").seq, 197);
  EXPECT_EQ(preset("whisper-large").seq, 1500);
  EXPECT_THROW(preset("gpt5"), Error);
  EXPECT_THROW(parse_variant("quantum"), Error);
  // GPT-3's parameter count from its shape: 12·L·d² = 173.9 B, + 0.6 B token embeddings
  // (biases, norms and position embeddings, 0.6 B more in the published 175 B, are left out).
  const ModelCost m = model_cost(preset("gpt3-175b"), 2048, Variant::flash, Mode::inference, 2);
  EXPECT_NEAR(m.weight_bytes / 2 / 1e9, 174.56, 0.01);
  // Llama 3 8B: 7.5 B counted here; the published 8.0 B adds the untied LM head (0.5 B).
  // KV cache 128 KiB per token in bf16.
  EXPECT_NEAR(model_cost(preset("llama-3-8b"), 1, Variant::flash, Mode::inference, 2).weight_bytes / 2 / 1e9, 7.5, 0.1);
  EXPECT_EQ(kv_cache_bytes(preset("llama-3-8b"), 1), 131072.0);
}

TEST(Cost, LayerMacsAndCrossover) {
  const ModelShape& g = preset("gpt2");
  const LayerCost L = layer_cost(g, 1024, Variant::flash, Mode::inference);
  EXPECT_EQ(L.qkv.macs, 1024.0 * 768 * 3 * 768);
  EXPECT_EQ(L.out_proj.macs, 1024.0 * 768 * 768);
  EXPECT_EQ(L.mlp.macs, 2 * 1024.0 * 768 * 3072);
  // Compute-bound on both sides, causal attention 2·N²·d FLOPs overtakes the MLP's 16·N·d²
  // at N = 8·d = 6144.
  const DeviceSpec cpu{.name = "cpu", .peak_flops = 145e9, .bandwidth = 20e9, .memory_bytes = 24e9};
  EXPECT_NEAR(mixer_mlp_crossover(g, Variant::flash, cpu), 6144, 2);
  const Cost c{.flops = 2e9, .bytes_moved = 1e9};
  EXPECT_EQ(roofline_seconds(c, cpu), 1e9 / 20e9);
}

TEST(Cost, ScoresStopFitting) {
  // 12 heads of f32 scores in 48,000,000 bytes: N = 1000 fits exactly, 1001 does not.
  EXPECT_EQ(scores_stop_fitting(square(1, 12), 48'000'000.0), 1001);
  EXPECT_EQ(scores_stop_fitting(square(1, 12), 1e300), 0);
}

TEST(Cost, TrainingKeepsActivationsInferenceKeepsKvCache) {
  const ModelShape& g = preset("gpt2");
  const ModelCost inf = model_cost(g, 1024, Variant::flash, Mode::inference);
  EXPECT_EQ(inf.kv_cache_bytes, 2.0 * 12 * 12 * 64 * 4 * 1024);
  EXPECT_EQ(inf.activation_bytes, 0.0);
  const ModelCost tr = model_cost(g, 1024, Variant::naive, Mode::training);
  EXPECT_GT(tr.activation_bytes, 12.0 * 12 * 1024 * 1024 * 4);  // at least every layer's P
  EXPECT_GT(tr.peak_bytes, inf.peak_bytes);
}

}  // namespace
}  // namespace attnkit::cost
