// Decode attention against the paged cache: the plan's partition, the kernel against the
// float64 reference (ragged batches, page boundaries, GQA, windows, every storage dtype, split
// and unsplit), chunked prefill against one pass, shared prefixes against unshared ones, and
// validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attnkit/attnkit.h"
#include "core/problem.h"
#include "reference/attention_ref.h"
#include "test_util.h"

namespace attnkit::test {
namespace {

// ---- plan ---------------------------------------------------------------------------------

TEST(DecodePlan, ChunksCoverEachRangeOnceAtPageBoundaries) {
  const std::vector<DecodeRange> ranges = {{0, 1000}, {0, 17}, {37, 600, 500}, {0, 1}};
  const int64_t ps = 16, Hkv = 2, nq = 1;
  const DecodePlan p = plan_decode(ranges, nq, 8, Hkv, 64, ps, {.threads = 2, .min_chunk = 64});
  ASSERT_EQ(p.splits.size(), ranges.size());
  EXPECT_GT(p.splits[0], 1);  // the long sequence is split
  EXPECT_EQ(p.splits[1], 1);
  EXPECT_EQ(p.splits[3], 1);
  int64_t total = 0;
  for (size_t s = 0; s < ranges.size(); ++s) {
    EXPECT_EQ(p.split_offset[s], total);
    total += p.splits[s];
    for (int64_t h = 0; h < Hkv; ++h) {
      std::vector<DecodeItem> mine;
      for (const DecodeItem& it : p.items)
        if (it.seq == static_cast<int32_t>(s) && it.head_kv == h) mine.push_back(it);
      std::sort(mine.begin(), mine.end(), [](auto& a, auto& b) { return a.key_begin < b.key_begin; });
      ASSERT_EQ(static_cast<int64_t>(mine.size()), p.splits[s]);
      int64_t at = ranges[s].key_begin;
      for (size_t i = 0; i < mine.size(); ++i) {
        EXPECT_EQ(mine[i].key_begin, at);
        EXPECT_EQ(mine[i].split, static_cast<int32_t>(i));
        EXPECT_GT(mine[i].key_end, mine[i].key_begin);
        if (mine[i].key_end != ranges[s].key_end) {
          EXPECT_EQ(mine[i].key_end % ps, 0);
        }
        at = mine[i].key_end;
      }
      EXPECT_EQ(at, ranges[s].key_end);
    }
  }
  EXPECT_EQ(p.total_splits, total);
  for (size_t i = 1; i < p.items.size(); ++i) {  // longest first
    EXPECT_GE(p.items[i - 1].key_end - p.items[i - 1].key_begin, p.items[i].key_end - p.items[i].key_begin);
  }
}

TEST(DecodePlan, TilesLongQueriesAndKeepsEveryThreadBusy) {
  const std::vector<DecodeRange> one = {{0, 32768}};
  const DecodePlan d = plan_decode(one, 1, 32, 8, 128, 64, {.threads = 2});
  EXPECT_GE(static_cast<int64_t>(d.items.size()), 2 * 8);  // enough items for 2 threads
  const DecodePlan pf = plan_decode(std::vector<DecodeRange>{{0, 300}}, 200, 4, 1, 64, 16, {.threads = 1, .query_tile = 64});
  std::vector<int64_t> covered(200, 0);
  for (const DecodeItem& it : pf.items)
    for (int64_t t = it.q_begin; t < it.q_end; ++t) ++covered[t];
  for (int64_t c : covered) EXPECT_EQ(c, pf.splits[0]);
}

TEST(DecodePlan, ValidatesArguments) {
  const std::vector<DecodeRange> ok = {{0, 10}};
  EXPECT_THROW(plan_decode(std::vector<DecodeRange>{}, 1, 4, 2, 64, 16), Error);
  EXPECT_THROW(plan_decode(ok, 0, 4, 2, 64, 16), Error);
  EXPECT_THROW(plan_decode(ok, 1, 5, 2, 64, 16), Error);
  EXPECT_THROW(plan_decode(ok, 1, 4, 2, 0, 16), Error);
  EXPECT_THROW(plan_decode(ok, 1, 4, 2, 64, 0), Error);
  EXPECT_THROW(plan_decode(ok, 11, 4, 2, 64, 16), Error);  // more queries than positions
  EXPECT_THROW(plan_decode(std::vector<DecodeRange>{{10, 10}}, 1, 4, 2, 64, 16), Error);
  EXPECT_THROW(plan_decode(ok, 1, 4, 2, 64, 16, {.threads = -1}), Error);
}

// ---- kernel against the float64 reference -------------------------------------------------

struct Case {
  std::string name;
  std::vector<int64_t> lengths;
  int64_t nq = 1, Hq = 4, Hkv = 2, D = 64, page_size = 16;
  KVDType dtype = KVDType::f32;
  int64_t window = 0;
  int64_t min_chunk = 0;  // small values force several chunks per sequence
  float softcap = 0;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<float> randn(int64_t n, std::mt19937_64& rng, float scale = 1.0f) {
  std::vector<float> x(n);
  std::normal_distribution<float> g(0.0f, scale);
  for (float& f : x) f = g(rng);
  return x;
}

class DecodeVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(DecodeVsReference, Matches) {
  const Case& c = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name));
  int64_t pages = 0;
  for (int64_t n : c.lengths) pages += (n + c.page_size - 1) / c.page_size + 1;
  KVCache cache({.num_layers = 2, .heads_kv = c.Hkv, .head_dim = c.D, .page_size = c.page_size,
                 .num_pages = pages, .dtype = c.dtype});
  const int64_t S = static_cast<int64_t>(c.lengths.size());
  std::vector<SeqId> seqs;
  for (int64_t n : c.lengths) {
    const SeqId s = cache.add_sequence(c.window);
    // Appended in two uneven pieces so that a write crosses a page boundary mid-page.
    const int64_t first = n / 3;
    for (auto [pos, m] : {std::pair{int64_t{0}, first}, {first, n - first}}) {
      if (m == 0) continue;
      std::vector<float> k = randn(2 * m * c.Hkv * c.D, rng, 1.5f), v = randn(2 * m * c.Hkv * c.D, rng);
      EXPECT_EQ(cache.append(s, TensorView(k.data(), DType::f32, {2, m, c.Hkv, c.D}),
                             TensorView(v.data(), DType::f32, {2, m, c.Hkv, c.D})),
                pos);
    }
    seqs.push_back(s);
  }
  std::vector<float> q = randn(S * c.nq * c.Hq * c.D, rng, 1.5f);
  std::vector<float> out(q.size(), std::numeric_limits<float>::quiet_NaN());
  std::vector<float> lse(S * c.Hq * c.nq, std::numeric_limits<float>::quiet_NaN());
  const TensorView Q(q.data(), DType::f32, {S, c.nq, c.Hq, c.D}), O(out.data(), DType::f32, {S, c.nq, c.Hq, c.D}),
      LSE(lse.data(), DType::f32, {S, c.Hq, c.nq});
  const DecodePlan plan = plan_decode(cache, seqs, c.nq, c.Hq, {.threads = 2, .min_chunk = c.min_chunk});
  if (c.min_chunk > 0) {
    int32_t most = 0;
    for (int32_t n : plan.splits) most = std::max(most, n);
    EXPECT_GT(most, 1) << "the case should exercise the merge of several chunks";
  }
  const int64_t layer = 1;
  run_decode(cache, plan, layer, Q, O, {.softcap = c.softcap}, LSE);

  // Reference per sequence on the cache's stored keys and values (dequantized), over the
  // positions the cache holds: causal bottom-right, plus the window.
  for (int64_t s = 0; s < S; ++s) {
    const int64_t lo = cache.first_position(seqs[s]), nk = c.lengths[s] - lo;
    std::vector<float> k(nk * c.Hkv * c.D), v(k.size());
    cache.read(seqs[s], layer, lo, TensorView(k.data(), DType::f32, {nk, c.Hkv, c.D}),
               TensorView(v.data(), DType::f32, {nk, c.Hkv, c.D}));
    const TensorView qs(q.data() + s * c.nq * c.Hq * c.D, DType::f32, {1, c.nq, c.Hq, c.D});
    const TensorView ks(k.data(), DType::f32, {1, nk, c.Hkv, c.D}), vs(v.data(), DType::f32, {1, nk, c.Hkv, c.D});
    std::vector<float> dummy(q.size());
    AttentionParams ap;
    ap.causal = true;
    ap.softcap = c.softcap;
    const Problem pr = validate_forward(qs, ks, vs, TensorView(dummy.data(), DType::f32, {1, c.nq, c.Hq, c.D}), ap, {});
    ref::KeepFn keep;
    if (c.window > 0) {
      keep = [&](int64_t, int64_t, int64_t i, int64_t j) { return j > i + (nk - c.nq) - c.window; };
    }
    const ref::ForwardResult r = ref::forward(pr, qs, ks, vs, keep);
    HostTensor got(DType::f32, {1, c.nq, c.Hq, c.D}), got_lse(DType::f32, {1, c.Hq, c.nq});
    for (int64_t i = 0; i < got.numel(); ++i) got.set(i, out[s * c.nq * c.Hq * c.D + i]);
    for (int64_t i = 0; i < got_lse.numel(); ++i) got_lse.set(i, lse[s * c.Hq * c.nq + i]);
    expect_close(got, r.out, 1e-5, c.name + " out, sequence " + std::to_string(s));
    expect_close(got_lse, r.lse, 1e-5, c.name + " lse, sequence " + std::to_string(s));
  }
}

std::vector<Case> cases() {
  return {
      {.name = "single_token_single_page", .lengths = {1}},
      {.name = "ragged_batch", .lengths = {1, 15, 16, 17, 100, 257}, .Hq = 8, .Hkv = 2},
      {.name = "ragged_split", .lengths = {700, 33, 1025}, .Hq = 4, .Hkv = 1, .D = 128, .min_chunk = 64},
      {.name = "few_queries", .lengths = {40, 90}, .nq = 3, .Hq = 6, .Hkv = 3, .D = 32, .page_size = 8},
      {.name = "gqa_32_8_d128", .lengths = {300}, .Hq = 32, .Hkv = 8, .D = 128, .min_chunk = 128},
      {.name = "odd_head_dim", .lengths = {50, 51}, .nq = 2, .Hq = 2, .Hkv = 1, .D = 24, .page_size = 5},
      {.name = "page_size_1", .lengths = {9, 3}, .Hq = 2, .Hkv = 2, .D = 16, .page_size = 1},
      {.name = "window", .lengths = {200, 37}, .nq = 2, .Hq = 4, .Hkv = 2, .D = 32, .page_size = 8, .window = 24},
      {.name = "window_split", .lengths = {1000}, .Hq = 4, .Hkv = 2, .D = 64, .window = 300, .min_chunk = 32},
      {.name = "bf16", .lengths = {70, 130}, .Hq = 4, .Hkv = 2, .dtype = KVDType::bf16, .min_chunk = 32},
      {.name = "f16", .lengths = {45, 66}, .nq = 2, .Hq = 4, .Hkv = 1, .dtype = KVDType::f16},
      {.name = "int8", .lengths = {100, 5}, .Hq = 4, .Hkv = 2, .D = 128, .dtype = KVDType::int8, .min_chunk = 32},
      {.name = "softcap", .lengths = {80}, .Hq = 2, .Hkv = 1, .D = 32, .softcap = 3.0f},
      {.name = "prefill_chunk", .lengths = {150}, .nq = 150, .Hq = 4, .Hkv = 2, .D = 64, .min_chunk = 32},
  };
}

INSTANTIATE_TEST_SUITE_P(Cases, DecodeVsReference, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

// ---- chunked prefill, shared prefixes ----------------------------------------------------

struct Filled {
  std::vector<float> k, v, q;  // k, v: [1, N, Hkv, D] (one layer); q: [N, Hq, D]
};

constexpr int64_t kHq = 4, kHkv = 2, kD = 32;

Filled random_prompt(int64_t N, std::mt19937_64& rng) {
  return {randn(N * kHkv * kD, rng), randn(N * kHkv * kD, rng), randn(N * kHq * kD, rng)};
}

KVCache small_cache(int64_t pages = 64) {
  return KVCache({.num_layers = 1, .heads_kv = kHkv, .head_dim = kD, .page_size = 8, .num_pages = pages});
}

// Appends tokens [t0, t0 + n) and attends their queries: out rows [t0, t0 + n).
void prefill_chunk(KVCache& c, SeqId s, Filled& f, int64_t t0, int64_t n, std::vector<float>& out) {
  const int64_t row = kHkv * kD;
  c.append(s, TensorView(f.k.data() + t0 * row, DType::f32, {1, n, kHkv, kD}),
           TensorView(f.v.data() + t0 * row, DType::f32, {1, n, kHkv, kD}));
  const SeqId ids[] = {s};
  decode(c, ids, 0, TensorView(f.q.data() + t0 * kHq * kD, DType::f32, {1, n, kHq, kD}),
         TensorView(out.data() + t0 * kHq * kD, DType::f32, {1, n, kHq, kD}));
}

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * static_cast<double>(a[i] - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

TEST(ChunkedPrefill, EqualsOnePass) {
  std::mt19937_64 rng(test_seed());
  const int64_t N = 203;
  Filled f = random_prompt(N, rng);
  KVCache c = small_cache();
  std::vector<float> one(N * kHq * kD), chunked(N * kHq * kD);
  prefill_chunk(c, c.add_sequence(), f, 0, N, one);
  const SeqId s = c.add_sequence();
  int64_t t = 0;
  for (int64_t n : {1, 16, 37, 64, 85}) {
    prefill_chunk(c, s, f, t, n, chunked);
    t += n;
  }
  ASSERT_EQ(t, N);
  EXPECT_LT(rel_diff(chunked, one), 1e-6);
}

TEST(SharedPrefix, EqualsUnshared) {
  std::mt19937_64 rng(test_seed());
  const int64_t P = 21, T = 13;  // the prompt ends mid-page: the continuations copy on write
  Filled a = random_prompt(P + T, rng), b = random_prompt(P + T, rng);
  std::copy_n(a.k.begin(), P * kHkv * kD, b.k.begin());  // the same prompt, different turns
  std::copy_n(a.v.begin(), P * kHkv * kD, b.v.begin());
  std::copy_n(a.q.begin(), P * kHq * kD, b.q.begin());

  KVCache shared = small_cache(), alone = small_cache();
  std::vector<float> sa(a.q.size()), sb(b.q.size()), ua(a.q.size()), ub(b.q.size());
  const SeqId prompt = shared.add_sequence();
  prefill_chunk(shared, prompt, a, 0, P, sa);
  std::copy_n(sa.begin(), P * kHq * kD, sb.begin());
  const SeqId fa = shared.fork(prompt), fb = shared.fork(prompt);
  for (int64_t t = P; t < P + T; ++t) {  // token by token, interleaved
    prefill_chunk(shared, fa, a, t, 1, sa);
    prefill_chunk(shared, fb, b, t, 1, sb);
  }
  prefill_chunk(alone, alone.add_sequence(), a, 0, P + T, ua);
  prefill_chunk(alone, alone.add_sequence(), b, 0, P + T, ub);
  EXPECT_LT(rel_diff(sa, ua), 1e-6);
  EXPECT_LT(rel_diff(sb, ub), 1e-6);
  EXPECT_LT(shared.used_pages(), alone.used_pages());
  // A later turn reuses the cache: the prompt's pages are still the ones written first.
  EXPECT_EQ(shared.page_table(fa)[0], shared.page_table(prompt)[0]);
}

// ---- validation ---------------------------------------------------------------------------

TEST(Decode, ValidatesArguments) {
  std::mt19937_64 rng(test_seed());
  KVCache c = small_cache();
  const SeqId s = c.add_sequence();
  Filled f = random_prompt(10, rng);
  std::vector<float> out(10 * kHq * kD);
  prefill_chunk(c, s, f, 0, 10, out);
  const SeqId ids[] = {s};
  const DecodePlan plan = plan_decode(c, ids, 1, kHq);
  std::vector<float> q(kHq * kD), o(kHq * kD), lse(kHq);
  const TensorView Q(q.data(), DType::f32, {1, 1, kHq, kD}), O(o.data(), DType::f32, {1, 1, kHq, kD});
  EXPECT_NO_THROW(run_decode(c, plan, 0, Q, O));
  EXPECT_THROW(run_decode(c, plan, 1, Q, O), Error);                                               // layer
  EXPECT_THROW(run_decode(c, plan, 0, TensorView(q.data(), DType::f32, {1, 1, kHq, kD / 2}), O), Error);  // q shape
  EXPECT_THROW(run_decode(c, plan, 0, Q, Q), Error);                                               // out overlaps q
  EXPECT_THROW(run_decode(c, plan, 0, Q, O, {.scale = -1.0f}), Error);
  EXPECT_THROW(run_decode(c, plan, 0, Q, O, {}, TensorView(lse.data(), DType::f32, {1, kHq, 2})), Error);
  const SeqId none[] = {s + 7};
  EXPECT_THROW(plan_decode(c, none, 1, kHq), Error);
  EXPECT_THROW(plan_decode(c, ids, 11, kHq), Error);  // more queries than positions
  c.grow(s, 1);                                       // the plan is now stale
  try {
    run_decode(c, plan, 0, Q, O);
    FAIL() << "expected attnkit::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("plan"), std::string::npos) << e.what();
  }
  const DecodePlan from_ranges = plan_decode(std::vector<DecodeRange>{{0, 11}}, 1, kHq, kHkv, kD, 8);
  EXPECT_THROW(run_decode(c, from_ranges, 0, Q, O), Error);
}

}  // namespace
}  // namespace attnkit::test
