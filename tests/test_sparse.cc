// Sparse attention (flash and naive, forward and backward) against the float64 reference with
// the same element mask applied explicitly, through ref::KeepFn built from Mask::keep. Sizes
// are not multiples of the kernels' tiles; outputs are poisoned with NaN before each call.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "attnkit/mask.h"
#include "core/problem.h"
#include "cpu/kernels.h"
#include "reference/attention_ref.h"
#include "test_util.h"

namespace attnkit::test {
namespace {

struct Case {
  std::string name;
  Mask mask;
  int64_t Nq = 150, Nk = 150, Hq = 2, Hkv = 2, D = 32;
  bool causal = false;
  DType dtype = DType::f32;
  float softcap = 0;
  std::vector<int32_t> cu_q, cu_k;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<uint8_t> random_bits(int64_t n, uint64_t seed, double density) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution keep(density);
  std::vector<uint8_t> bits(n);
  for (auto& b : bits) b = keep(rng);
  return bits;
}

std::vector<Case> cases() {
  std::vector<Case> cs;
  auto add = [&](Case c) { cs.push_back(std::move(c)); };
  add({.name = "window", .mask = Mask::window(20, 5)});
  add({.name = "sliding_window", .mask = sliding_window(33), .Nq = 201, .Nk = 201});
  add({.name = "sliding_window_cross", .mask = sliding_window(40), .Nq = 70, .Nk = 190});
  add({.name = "window_causal_flag", .mask = Mask::window(30, 30), .causal = true});
  add({.name = "dilated", .mask = Mask::dilated_window(10, 3, 3)});
  add({.name = "strided_element", .mask = Mask::strided(7)});
  add({.name = "strided_blocks", .mask = Mask::strided(3, 16), .Nq = 180, .Nk = 180});
  add({.name = "fixed", .mask = Mask::causal() & Mask::fixed(16, 4)});
  add({.name = "global", .mask = Mask::global({0, 5, 77, 149})});
  add({.name = "random_blocks", .mask = Mask::random_blocks(2, 16, 42)});
  add({.name = "bitmap", .mask = Mask::block_bitmap(32, 24, 5, 7, random_bits(35, 7, 0.4)), .Nq = 150, .Nk = 161});
  add({.name = "predicate", .mask = Mask::predicate([](int64_t, int64_t h, int64_t i, int64_t j) {
         return (i * 7 + j * 3 + h) % 5 < 2;
       })});
  add({.name = "per_head", .mask = Mask::per_head({sliding_window(17), Mask::global({3}) | Mask::strided(5)})});
  add({.name = "longformer", .mask = longformer(40, {0, 3})});
  add({.name = "bigbird", .mask = bigbird(30, {1}, 2, 9), .Nq = 200, .Nk = 200});
  add({.name = "sparse_transformer", .mask = sparse_transformer_strided(32, 16)});
  add({.name = "sparse_transformer_element", .mask = sparse_transformer_strided(8, 1), .Nq = 100, .Nk = 100});
  add({.name = "gqa", .mask = longformer(24, {10}), .Nq = 90, .Nk = 130, .Hq = 6, .Hkv = 2});
  add({.name = "softcap", .mask = sliding_window(50), .softcap = 4.0f});
  add({.name = "bf16", .mask = bigbird(20, {0}, 1, 3), .Nq = 130, .Nk = 130, .D = 64, .dtype = DType::bf16});
  // Rows i % 4 == 0 keep nothing (and, past the causal diagonal, the first rows neither).
  add({.name = "empty_rows", .mask = Mask::predicate([](int64_t, int64_t, int64_t i, int64_t j) {
         return i % 4 != 0 && (i + j) % 3 != 0;
       }),
       .Nq = 100, .Nk = 60, .causal = true});
  add({.name = "varlen", .mask = sliding_window(10) | Mask::global({2}), .Nq = 140, .Nk = 140, .Hq = 4, .Hkv = 2,
       .cu_q = {0, 5, 5, 100, 140}, .cu_k = {0, 9, 30, 100, 140}});
  add({.name = "varlen_random", .mask = Mask::random_blocks(1, 8, 5), .Nq = 120, .Nk = 120,
       .cu_q = {0, 50, 120}, .cu_k = {0, 70, 120}});
  return cs;
}

struct Inputs {
  HostTensor q, k, v, dout;
  AttentionParams params;
  Problem pr;
  Mask mask;
};

Inputs make_inputs(const Case& c, std::mt19937_64& rng) {
  Inputs in;
  const int64_t B = 1;
  in.q = HostTensor(c.dtype, {B, c.Nq, c.Hq, c.D});
  in.k = HostTensor(c.dtype, {B, c.Nk, c.Hkv, c.D});
  in.v = HostTensor(c.dtype, {B, c.Nk, c.Hkv, c.D});
  in.dout = HostTensor(c.dtype, {B, c.Nq, c.Hq, c.D});
  in.q.fill_random(rng, 1.0f, 0.01f);
  in.k.fill_random(rng, 1.0f, 0.01f);
  in.v.fill_random(rng);
  in.dout.fill_random(rng);
  in.mask = c.mask;
  in.params.causal = c.causal;
  in.params.softcap = c.softcap;
  in.params.cu_seqlens_q = c.cu_q;
  in.params.cu_seqlens_k = c.cu_k;
  HostTensor out(c.dtype, {B, c.Nq, c.Hq, c.D});
  in.pr = validate_forward(in.q.view, in.k.view, in.v.view, out.view, in.params, {});
  return in;
}

// The mask as an explicit element predicate for the reference (which applies causal itself).
ref::KeepFn keep_of(const Inputs& in) {
  return [&in](int64_t si, int64_t h, int64_t i, int64_t j) {
    const Sequence& sq = in.pr.seqs[si];
    return in.mask.keep(si, h, i, j, sq.nq, sq.nk);
  };
}

class Sparse : public ::testing::TestWithParam<std::tuple<Case, Algorithm>> {};

TEST_P(Sparse, ForwardMatchesMaskedReference) {
  const auto& [c, algo] = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name));
  Inputs in = make_inputs(c, rng);
  in.params.mask = &in.mask;
  in.params.algorithm = algo;
  HostTensor out(c.dtype, {1, c.Nq, c.Hq, c.D}), lse(DType::f32, {1, c.Hq, c.Nq});
  out.poison();
  lse.poison();
  forward(in.q.view, in.k.view, in.v.view, out.view, in.params, lse.view);
  const ref::ForwardResult r = ref::forward(in.pr, in.q.view, in.k.view, in.v.view, keep_of(in));
  expect_close(out, r.out, tolerance(c.dtype, false), c.name + " out");
  // Rows that keep nothing: LSE −inf in both (compare() skips equal infinities).
  for (size_t i = 0; i < r.lse.size(); ++i) {
    if (std::isinf(r.lse[i])) {
      ASSERT_EQ(lse.get(static_cast<int64_t>(i)), -std::numeric_limits<float>::infinity()) << i;
    }
  }
  std::vector<double> finite_lse = r.lse;
  for (double& x : finite_lse) x = std::isinf(x) ? std::numeric_limits<double>::quiet_NaN() : x;
  expect_close(lse, finite_lse, tolerance(DType::f32, false) * 10, c.name + " lse");
}

TEST_P(Sparse, BackwardMatchesMaskedReference) {
  const auto& [c, algo] = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name) ^ 1);
  Inputs in = make_inputs(c, rng);
  in.params.mask = &in.mask;
  in.params.algorithm = algo;
  HostTensor out(c.dtype, {1, c.Nq, c.Hq, c.D}), lse(DType::f32, {1, c.Hq, c.Nq});
  forward(in.q.view, in.k.view, in.v.view, out.view, in.params, lse.view);
  HostTensor dq(c.dtype, {1, c.Nq, c.Hq, c.D}), dk(c.dtype, {1, c.Nk, c.Hkv, c.D}), dv(c.dtype, {1, c.Nk, c.Hkv, c.D});
  dq.poison();
  dk.poison();
  dv.poison();
  backward(in.q.view, in.k.view, in.v.view, out.view, in.dout.view, lse.view, dq.view, dk.view, dv.view, in.params);
  const ref::BackwardResult r = ref::backward(in.pr, in.q.view, in.k.view, in.v.view, in.dout.view, keep_of(in));
  const double tol = tolerance(c.dtype, true);
  expect_close(dq, r.dq, tol, c.name + " dq");
  expect_close(dk, r.dk, tol, c.name + " dk");
  expect_close(dv, r.dv, tol, c.name + " dv");
}

INSTANTIATE_TEST_SUITE_P(Masks, Sparse,
                         ::testing::Combine(::testing::ValuesIn(cases()),
                                            ::testing::Values(Algorithm::flash, Algorithm::naive,
                                                              Algorithm::reference)),
                         [](const auto& info) {
                           return std::get<0>(info.param).name + "_" + to_string(std::get<1>(info.param));
                         });

// A mask that keeps everything gives dense attention; causal as a mask gives params.causal.
TEST(SparseEdge, TrivialMasksEqualDense) {
  std::mt19937_64 rng(test_seed());
  const Case c{.name = "trivial", .mask = Mask(), .Nq = 140, .Nk = 150};
  Inputs in = make_inputs(c, rng);
  for (bool causal : {false, true}) {
    HostTensor dense(DType::f32, {1, 140, 2, 32}), sparse(DType::f32, {1, 140, 2, 32});
    AttentionParams p;
    p.causal = causal;
    forward(in.q.view, in.k.view, in.v.view, dense.view, p);
    const Mask m = causal ? Mask::causal() : Mask();
    AttentionParams ps;
    ps.mask = &m;
    forward(in.q.view, in.k.view, in.v.view, sparse.view, ps);
    std::vector<double> ref(dense.numel());
    for (int64_t i = 0; i < dense.numel(); ++i) ref[i] = dense.get(i);
    expect_close(sparse, ref, 1e-6, causal ? "causal mask" : "all mask");
  }
}

// A mask that keeps nothing: output 0, LSE −inf, gradients 0, never NaN.
TEST(SparseEdge, EmptyMaskGivesZeros) {
  std::mt19937_64 rng(test_seed());
  const Mask none = Mask::predicate([](int64_t, int64_t, int64_t, int64_t) { return false; });
  const Case c{.name = "none", .mask = none, .Nq = 70, .Nk = 90};
  Inputs in = make_inputs(c, rng);
  in.params.mask = &in.mask;
  for (Algorithm algo : {Algorithm::flash, Algorithm::naive}) {
    in.params.algorithm = algo;
    HostTensor out(DType::f32, {1, 70, 2, 32}), lse(DType::f32, {1, 2, 70});
    out.poison();
    lse.poison();
    forward(in.q.view, in.k.view, in.v.view, out.view, in.params, lse.view);
    for (int64_t i = 0; i < out.numel(); ++i) ASSERT_EQ(out.get(i), 0.0f) << to_string(algo);
    for (int64_t i = 0; i < lse.numel(); ++i) ASSERT_EQ(lse.get(i), -std::numeric_limits<float>::infinity());
    HostTensor dq(DType::f32, {1, 70, 2, 32}), dk(DType::f32, {1, 90, 2, 32}), dv(DType::f32, {1, 90, 2, 32});
    dq.poison();
    dk.poison();
    dv.poison();
    backward(in.q.view, in.k.view, in.v.view, out.view, in.dout.view, lse.view, dq.view, dk.view, dv.view, in.params);
    for (const HostTensor* g : {&dq, &dk, &dv})
      for (int64_t i = 0; i < g->numel(); ++i) ASSERT_EQ(g->get(i), 0.0f) << to_string(algo);
  }
}

// The flash forward's chunks (runs of query tiles of a KV group sharing packed key tiles,
// released after their last visit) and its over-budget path (a tile packed for one visit),
// reached at small sizes by shrinking its tuning: masks of every kind, heads with different
// masks in one GQA group, dense and causal calls without a mask, cross attention, varlen, bf16,
// empty rows, sizes that leave a last tile of one 64-query half or less.
TEST(SparseChunks, ForwardMatchesReferenceAtEveryBudget) {
  struct Run {
    Case c;
    bool masked = true;
  };
  const std::vector<Run> runs = {
      {{.name = "sliding_window", .mask = sliding_window(100), .Nq = 600, .Nk = 600, .Hq = 1, .Hkv = 1}},
      {{.name = "random_blocks", .mask = Mask::random_blocks(3, 64, 1), .Nq = 650, .Nk = 700}},
      {{.name = "bigbird", .mask = bigbird(128, {0, 7, 300}, 2, 5), .Nq = 520, .Nk = 520}},
      {{.name = "sparse_transformer", .mask = sparse_transformer_strided(128, 64), .Nq = 600, .Nk = 600}},
      {{.name = "gqa_per_head",
        .mask = Mask::per_head({sliding_window(70), Mask::random_blocks(2, 64, 3), longformer(64, {5}),
                                Mask::strided(2, 64)}),
        .Nq = 460, .Nk = 530, .Hq = 4, .Hkv = 2}},
      {{.name = "varlen", .mask = longformer(90, {1}), .Nq = 700, .Nk = 700, .Hq = 2, .Hkv = 1,
        .cu_q = {0, 300, 300, 700}, .cu_k = {0, 250, 400, 700}}},
      {{.name = "bf16", .mask = bigbird(64, {0}, 1, 2), .Nq = 400, .Nk = 400, .D = 64, .dtype = DType::bf16}},
      {{.name = "empty_rows", .mask = Mask::predicate([](int64_t, int64_t, int64_t i, int64_t j) {
          return i % 4 != 0 && (i + j) % 3 != 0;
        }),
        .Nq = 300, .Nk = 200, .causal = true}},
      {{.name = "dense", .mask = Mask(), .Nq = 450, .Nk = 520, .Hq = 4, .Hkv = 2}, false},
      {{.name = "dense_causal", .mask = Mask(), .Nq = 380, .Nk = 600, .causal = true}, false},
  };
  cpu::FlashFwdTuning& tune = cpu::flash_fwd_tuning();
  const cpu::FlashFwdTuning saved = tune;
  struct Restore {
    cpu::FlashFwdTuning& t;
    cpu::FlashFwdTuning saved;
    ~Restore() { t = saved; }
  } restore{tune, saved};
  for (const Run& run : runs) {
    const Case& c = run.c;
    const int64_t tile_bytes = 2 * 64 * cpu::pad_cols(c.D) * 4;  // one packed key tile
    for (auto [budget, chunks] : {std::pair{int64_t{0}, int64_t{1}}, {3 * tile_bytes, 1}, {saved.pack_budget_bytes, 1},
                                  {saved.pack_budget_bytes, saved.chunks_per_thread}}) {
      tune.pack_budget_bytes = budget;
      tune.chunks_per_thread = chunks;
      tune.stream_out_bytes = chunks == 1 ? 0 : saved.stream_out_bytes;  // streaming stores in 3 of 4 runs
      std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name));
      Inputs in = make_inputs(c, rng);
      if (run.masked) in.params.mask = &in.mask;
      HostTensor out(c.dtype, {1, c.Nq, c.Hq, c.D}), lse(DType::f32, {1, c.Hq, c.Nq});
      out.poison();
      lse.poison();
      forward(in.q.view, in.k.view, in.v.view, out.view, in.params, lse.view);
      const ref::ForwardResult r =
          ref::forward(in.pr, in.q.view, in.k.view, in.v.view, run.masked ? keep_of(in) : ref::KeepFn{});
      const std::string what = c.name + " budget " + std::to_string(budget) + " chunks/thread " + std::to_string(chunks);
      expect_close(out, r.out, tolerance(c.dtype, false), what + " out");
      std::vector<double> finite_lse = r.lse;
      for (size_t i = 0; i < r.lse.size(); ++i) {
        if (std::isinf(r.lse[i])) {
          ASSERT_EQ(lse.get(static_cast<int64_t>(i)), -std::numeric_limits<float>::infinity()) << what << " " << i;
          finite_lse[i] = std::numeric_limits<double>::quiet_NaN();
        }
      }
      expect_close(lse, finite_lse, tolerance(DType::f32, false) * 10, what + " lse");
    }
  }
}

// Bad masks meet the call: errors name params.mask and leave the output untouched.
TEST(SparseEdge, MaskThatDoesNotFitTheCallIsRejected) {
  std::mt19937_64 rng(test_seed());
  const Case c{.name = "bad", .mask = Mask(), .Nq = 100, .Nk = 100, .Hq = 2, .Hkv = 1};
  Inputs in = make_inputs(c, rng);
  HostTensor out(DType::f32, {1, 100, 2, 32});
  out.poison();
  const Mask bad[] = {
      Mask::global({3, 100}),                                          // position >= Nk
      Mask::block_bitmap(64, 64, 1, 2, {1, 1}),                        // 1 × 2 blocks, expected 2 × 2
      Mask::per_head({sliding_window(4), sliding_window(8), Mask()}),  // 3 masks, 2 heads
      sliding_window(4) & Mask::global({200}),                         // inside a combination
  };
  for (const Mask& m : bad) {
    AttentionParams p;
    p.mask = &m;
    try {
      forward(in.q.view, in.k.view, in.v.view, out.view, p);
      ADD_FAILURE() << "accepted " << m.to_string();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("params.mask"), std::string::npos) << e.what();
    }
  }
  for (int64_t i = 0; i < out.numel(); ++i) ASSERT_TRUE(std::isnan(out.get(i)));
}

}  // namespace
}  // namespace attnkit::test
