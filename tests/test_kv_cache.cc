// Paged KV cache: storage round trips per dtype, page accounting, prefix sharing with copy on
// write, sliding-window release, pool exhaustion (an error that changes nothing), validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "attnkit/attnkit.h"
#include "test_util.h"

namespace attnkit::test {
namespace {

constexpr int64_t kH = 2, kD = 8;

struct Rows {
  std::vector<float> k, v;
  int64_t n;
  Rows(int64_t n_, std::mt19937_64& rng, float scale = 1.0f) : k(n_ * kH * kD), v(n_ * kH * kD), n(n_) {
    std::normal_distribution<float> g(0.0f, scale);
    for (float& x : k) x = g(rng);
    for (float& x : v) x = g(rng);
  }
  TensorView kv(int which) { return TensorView(which ? v.data() : k.data(), DType::f32, {n, kH, kD}); }
};

KVCacheConfig config(int64_t pages, int64_t page_size = 4, KVDType t = KVDType::f32, int64_t layers = 1) {
  return {.num_layers = layers, .heads_kv = kH, .head_dim = kD, .page_size = page_size, .num_pages = pages, .dtype = t};
}

// Appends rows to layer 0 of a one-layer cache.
int64_t put(KVCache& c, SeqId s, Rows& r) {
  const int64_t pos = c.grow(s, r.n);
  c.write(s, 0, pos, r.kv(0), r.kv(1));
  return pos;
}

std::vector<float> get(const KVCache& c, SeqId s, int64_t pos, int64_t n, int which) {
  std::vector<float> k(n * kH * kD), v(n * kH * kD);
  c.read(s, 0, pos, TensorView(k.data(), DType::f32, {n, kH, kD}), TensorView(v.data(), DType::f32, {n, kH, kD}));
  return which ? v : k;
}

TEST(KVCache, RoundTripPerDtype) {
  std::mt19937_64 rng(test_seed());
  for (KVDType t : {KVDType::f32, KVDType::bf16, KVDType::f16, KVDType::int8}) {
    KVCache c(config(8, 4, t));
    const SeqId s = c.add_sequence();
    Rows a(3, rng), b(6, rng, 4.0f);  // the second batch is larger: int8 pages requantize
    put(c, s, a);
    put(c, s, b);
    EXPECT_EQ(c.length(s), 9);
    EXPECT_EQ(c.sequence_pages(s), 3);
    for (int which = 0; which < 2; ++which) {
      std::vector<float> want(a.k.size() + b.k.size());
      std::copy((which ? a.v : a.k).begin(), (which ? a.v : a.k).end(), want.begin());
      std::copy((which ? b.v : b.k).begin(), (which ? b.v : b.k).end(), want.begin() + a.k.size());
      const std::vector<float> got = get(c, s, 0, 9, which);
      double amax = 0;
      for (float x : want) amax = std::max(amax, std::fabs(static_cast<double>(x)));
      for (size_t i = 0; i < want.size(); ++i) {
        // f32 exact; 16-bit types to half an ulp; int8: half a step when a row is quantized,
        // and half a step more each time a later row of its page raises the page's scale and
        // requantizes it (rows arrive one by one: up to page_size − 1 = 3 times), every step
        // at most amax / 127.
        const double tol = t == KVDType::f32    ? 0
                           : t == KVDType::bf16 ? std::fabs(want[i]) * 0x1p-8
                           : t == KVDType::f16  ? std::fabs(want[i]) * 0x1p-11 + 1e-7
                                                : amax / 127.0 * 0.5 * (1 + 3) * 1.01;
        ASSERT_LE(std::fabs(got[i] - want[i]), tol) << to_string(t) << " element " << i;
      }
    }
  }
}

TEST(KVCache, ForkSharesPagesAndCopiesOnWrite) {
  std::mt19937_64 rng(test_seed());
  KVCache c(config(16));
  const SeqId a = c.add_sequence();
  Rows prompt(6, rng);  // pages 0 (4 tokens) and 1 (2 tokens, partly filled)
  put(c, a, prompt);
  const SeqId b = c.fork(a);
  EXPECT_EQ(c.used_pages(), 2);
  EXPECT_EQ(c.page_refs(c.page_table(a)[0]), 2);
  EXPECT_EQ(c.page_refs(c.page_table(a)[1]), 2);
  Rows ta(1, rng), tb(3, rng);
  put(c, b, tb);  // b writes into the shared partial page: it gets its own copy
  EXPECT_EQ(c.page_table(a)[0], c.page_table(b)[0]);
  EXPECT_NE(c.page_table(a)[1], c.page_table(b)[1]);
  put(c, a, ta);
  EXPECT_EQ(c.used_pages(), 4);  // shared page 0; a's page 1; b's copy of page 1 and its page 2
  EXPECT_EQ(get(c, a, 0, 6, 0), get(c, b, 0, 6, 0));  // the prompt is intact on both sides
  EXPECT_EQ(get(c, a, 6, 1, 1), ta.v);
  EXPECT_EQ(get(c, b, 6, 3, 1), tb.v);
  // A fork of a prefix shorter than the parent.
  const SeqId p = c.fork(a, 4);
  EXPECT_EQ(c.length(p), 4);
  EXPECT_EQ(c.sequence_pages(p), 1);
  c.remove_sequence(a);
  c.remove_sequence(b);
  EXPECT_EQ(c.used_pages(), 1);  // p still holds page 0
  c.remove_sequence(p);
  EXPECT_EQ(c.used_pages(), 0);
}

TEST(KVCache, WritesIntoSharedPagesAreRefused) {
  std::mt19937_64 rng(test_seed());
  KVCache c(config(8));
  const SeqId a = c.add_sequence();
  Rows r(5, rng);
  put(c, a, r);
  c.fork(a);
  Rows one(1, rng);
  EXPECT_THROW(c.write(a, 0, 0, one.kv(0), one.kv(1)), Error);
  EXPECT_EQ(get(c, a, 0, 5, 0), r.k);
}

TEST(KVCache, SlidingWindowMemoryIsBounded) {
  std::mt19937_64 rng(test_seed());
  const int64_t window = 10, ps = 4;
  KVCache c(config(6, ps));  // 6 pages = 24 tokens: far less than the 200 appended
  const SeqId s = c.add_sequence(window);
  std::vector<Rows> all;
  for (int64_t i = 0; i < 200; ++i) {
    all.emplace_back(1, rng);
    put(c, s, all.back());
    // The window plus the partly filled pages at either end.
    ASSERT_LE(c.sequence_pages(s), (window + ps - 1) / ps + 1);
    ASSERT_LE(c.first_position(s), std::max<int64_t>(0, c.length(s) - window));
  }
  const int64_t first = c.first_position(s);
  EXPECT_GT(first, 150);
  EXPECT_EQ(get(c, s, first, 1, 0), all[first].k);
  EXPECT_EQ(get(c, s, 199, 1, 1), all[199].v);
  std::vector<float> k(kH * kD), v(kH * kD);
  EXPECT_THROW(c.read(s, 0, first - 1, TensorView(k.data(), DType::f32, {1, kH, kD}),
                      TensorView(v.data(), DType::f32, {1, kH, kD})),
               Error);
}

TEST(KVCache, PoolExhaustionThrowsAndChangesNothing) {
  std::mt19937_64 rng(test_seed());
  KVCache c(config(3));
  const SeqId a = c.add_sequence();
  Rows r(10, rng);
  put(c, a, r);  // 3 pages, the last one half full
  const SeqId b = c.fork(a);
  const int64_t free_before = c.free_pages();
  try {
    c.grow(b, 1);  // needs a copy of the shared last page: no page is free
    FAIL() << "expected attnkit::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("exhausted"), std::string::npos) << e.what();
  }
  EXPECT_THROW(c.grow(a, 3), Error);
  EXPECT_EQ(c.length(a), 10);
  EXPECT_EQ(c.length(b), 10);
  EXPECT_EQ(c.free_pages(), free_before);
  EXPECT_EQ(get(c, a, 0, 10, 0), r.k);
  EXPECT_EQ(get(c, b, 0, 10, 1), r.v);
  // Freeing the fork makes room again.
  c.remove_sequence(b);
  EXPECT_EQ(c.grow(a, 2), 10);
}

// Pages come from the pool lowest first, whatever order others freed them in: sequences that
// grow after random churn get ascending pages (what the GPU decode reads fastest), and their
// rows survive the reuse.
TEST(KVCache, PagesAreTakenLowestFirst) {
  std::mt19937_64 rng(test_seed());
  constexpr int64_t kPages = 64, kPs = 4;
  KVCache c(config(kPages, kPs));
  std::vector<SeqId> others;
  for (int i = 0; i < 16; ++i) {
    others.push_back(c.add_sequence());
    Rows r(4 * kPs, rng);
    put(c, others.back(), r);
  }
  ASSERT_EQ(c.free_pages(), 0);
  // Free a random half of the sequences, in random order, and a tail page of some others.
  std::shuffle(others.begin(), others.end(), rng);
  std::vector<int32_t> freed;
  for (int i = 0; i < 8; ++i) {
    for (int32_t p : c.page_table(others[i])) freed.push_back(p);
    c.remove_sequence(others[i]);
  }
  for (int i = 8; i < 12; ++i) {
    freed.push_back(c.page_table(others[i]).back());
    c.truncate(others[i], 3 * kPs);
  }
  std::sort(freed.begin(), freed.end());
  ASSERT_EQ(c.free_pages(), static_cast<int64_t>(freed.size()));
  // Four sequences growing together, a page each in turn, take the freed pages in address order.
  std::vector<SeqId> grown;
  std::vector<Rows> rows;
  for (int i = 0; i < 4; ++i) grown.push_back(c.add_sequence());
  const int64_t per_seq = static_cast<int64_t>(freed.size()) / 4;
  for (int64_t j = 0; j < per_seq; ++j) {
    for (int i = 0; i < 4; ++i) {
      rows.emplace_back(kPs, rng);
      put(c, grown[i], rows.back());
    }
  }
  for (int i = 0; i < 4; ++i) {
    const auto table = c.page_table(grown[i]);
    ASSERT_EQ(static_cast<int64_t>(table.size()), per_seq);
    for (int64_t j = 0; j < per_seq; ++j) EXPECT_EQ(table[j], freed[j * 4 + i]) << "sequence " << i << ", page " << j;
    for (int64_t j = 0; j < per_seq; ++j) EXPECT_EQ(get(c, grown[i], j * kPs, kPs, 1), rows[j * 4 + i].v);
  }
}

TEST(KVCache, TruncateAndAppendAllLayers) {
  std::mt19937_64 rng(test_seed());
  KVCache c(config(8, 4, KVDType::f32, 2));
  const SeqId s = c.add_sequence();
  std::vector<float> k(2 * 7 * kH * kD), v(k.size());
  std::normal_distribution<float> g;
  for (float& x : k) x = g(rng);
  for (float& x : v) x = g(rng);
  EXPECT_EQ(c.append(s, TensorView(k.data(), DType::f32, {2, 7, kH, kD}), TensorView(v.data(), DType::f32, {2, 7, kH, kD})), 0);
  std::vector<float> k1(7 * kH * kD), v1(k1.size());
  c.read(s, 1, 0, TensorView(k1.data(), DType::f32, {7, kH, kD}), TensorView(v1.data(), DType::f32, {7, kH, kD}));
  EXPECT_TRUE(std::equal(k1.begin(), k1.end(), k.begin() + k1.size()));
  c.truncate(s, 3);
  EXPECT_EQ(c.length(s), 3);
  EXPECT_EQ(c.used_pages(), 1);
}

TEST(KVCache, RecurrentStateOnlyCache) {
  KVCacheConfig cfg{.num_layers = 2, .heads_kv = 2, .head_dim = kD, .page_size = 4, .num_pages = 0,
                    .state_floats = 5};
  KVCache c(cfg);
  const SeqId s = c.add_sequence();
  EXPECT_EQ(c.bytes_in_use(), 2 * 5 * 4);
  for (float x : c.state(s, 1)) EXPECT_EQ(x, 0.0f);
  c.state(s, 1)[3] = 2.5f;
  EXPECT_EQ(c.grow(s, 1000), 0);  // positions are counted, no pages are taken
  EXPECT_EQ(c.length(s), 1000);
  EXPECT_EQ(c.bytes_in_use(), 2 * 5 * 4);
  const SeqId f = c.fork(s);  // the state is copied with the sequence
  EXPECT_EQ(c.state(f, 1)[3], 2.5f);
  c.state(f, 1)[3] = 1.0f;
  EXPECT_EQ(c.state(s, 1)[3], 2.5f);
  EXPECT_EQ(c.bytes_in_use(), 2 * 2 * 5 * 4);
  EXPECT_THROW(c.fork(s, 10), Error);      // an earlier position's state is not kept
  EXPECT_THROW(c.truncate(s, 10), Error);  // likewise
  c.truncate(s, 1000);                     // to its own length: nothing changes
  EXPECT_EQ(c.state(s, 1)[3], 2.5f);
  c.truncate(s, 0);  // back to empty: the state is zero again
  EXPECT_EQ(c.state(s, 1)[3], 0.0f);
  EXPECT_THROW(c.state(s, 2), Error);
  std::mt19937_64 rng(test_seed());
  Rows r(1, rng);
  c.grow(s, 1);
  EXPECT_THROW(c.write(s, 0, 0, r.kv(0), r.kv(1)), Error);  // no keys or values in this cache
  const SeqId ids[] = {s};
  EXPECT_THROW(plan_decode(c, ids, 1, 2), Error);
  KVCache paged(config(4));
  EXPECT_THROW(paged.state(paged.add_sequence(), 0), Error);  // no state in a cache without state_floats
  cfg.state_floats = -1;
  EXPECT_THROW(KVCache{cfg}, Error);
}

TEST(KVCache, ValidatesArguments) {
  std::mt19937_64 rng(test_seed());
  auto bad = [](KVCacheConfig cfg) { EXPECT_THROW(KVCache{cfg}, Error); };
  KVCacheConfig cfg = config(4);
  cfg.num_pages = 0;
  bad(cfg);
  cfg = config(4);
  cfg.page_size = 0;
  bad(cfg);
  cfg = config(4);
  cfg.head_dim = 300;
  bad(cfg);
  cfg = config(4);
  cfg.dtype = static_cast<KVDType>(9);
  bad(cfg);

  KVCache c(config(4));
  const SeqId s = c.add_sequence();
  Rows r(2, rng);
  EXPECT_THROW(c.add_sequence(-1), Error);
  EXPECT_THROW(c.grow(s, -1), Error);
  EXPECT_THROW(c.grow(99, 1), Error);
  EXPECT_THROW(c.write(s, 0, 0, r.kv(0), r.kv(1)), Error);  // not grown yet
  c.grow(s, 2);
  EXPECT_THROW(c.write(s, 1, 0, r.kv(0), r.kv(1)), Error);  // no layer 1
  std::vector<float> wrong(2 * 3 * kD);
  EXPECT_THROW(c.write(s, 0, 0, TensorView(wrong.data(), DType::f32, {2, 3, kD}), r.kv(1)), Error);
  EXPECT_THROW(c.write(s, 0, 1, r.kv(0), r.kv(1)), Error);  // runs past the length
  EXPECT_THROW(c.truncate(s, 3), Error);
  EXPECT_THROW(c.fork(s, 5), Error);
  EXPECT_THROW(c.page_refs(17), Error);
  c.remove_sequence(s);
  EXPECT_THROW(c.length(s), Error);
  try {
    c.grow(s, 1);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("seq"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace attnkit::test
