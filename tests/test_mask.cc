// Masks as values: element predicates of each part, tile fills and block layouts consistent
// with them, presets, describe(), reproducible random blocks, and errors for bad masks.
#include <gtest/gtest.h>

#include <optional>
#include <string>

#include "attnkit/attnkit.h"
#include "test_util.h"

namespace attnkit::test {
namespace {

struct Named {
  std::string name;
  Mask mask;
};

std::vector<Named> masks() {
  std::vector<uint8_t> bits(4 * 6);
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = (i * 5) % 3 == 0;
  return {
      {"all", Mask()},
      {"causal", Mask::causal()},
      {"window", Mask::window(9, 4)},
      {"dilated", Mask::dilated_window(5, 2, 3)},
      {"strided", Mask::strided(6)},
      {"strided_blocks", Mask::strided(2, 8)},
      {"fixed", Mask::fixed(10, 3)},
      {"global", Mask::global({0, 17, 30})},
      {"random", Mask::random_blocks(2, 8, 11)},
      {"bitmap", Mask::block_bitmap(10, 8, 4, 6, bits)},
      {"predicate", Mask::predicate([](int64_t b, int64_t h, int64_t i, int64_t j) { return (i ^ j ^ h ^ b) & 1; })},
      {"per_head", Mask::per_head({Mask::window(3, 3), Mask::strided(4)})},
      {"and_or", (Mask::causal() & Mask::window(12, 0)) | Mask::global({5})},
      {"sliding_window", sliding_window(7)},
      {"longformer", longformer(8, {2})},
      {"bigbird", bigbird(6, {0}, 1, 3)},
      {"sparse_transformer", sparse_transformer_strided(16, 8)},
  };
}

class MaskParts : public ::testing::TestWithParam<Named> {};

// Every block that the layout leaves out keeps no pair; every block marked full keeps all.
TEST_P(MaskParts, LayoutAgreesWithElementPredicate) {
  const Mask& m = GetParam().mask;
  for (auto [nq, nk, bq, bk] : {std::tuple{37, 41, 8, 8}, {33, 20, 16, 4}, {9, 45, 4, 16}}) {
    for (int64_t h = 0; h < 2; ++h) {
      const BlockLayout lay = m.compile(nq, nk, bq, bk, h);
      ASSERT_EQ(static_cast<int64_t>(lay.row_begin.size()), lay.q_blocks() + 1);
      for (int64_t qb = 0; qb < lay.q_blocks(); ++qb)
        for (int64_t kb = 0; kb < lay.k_blocks(); ++kb) {
          int64_t kept = 0, area = 0;
          for (int64_t i = qb * bq; i < std::min<int64_t>(nq, (qb + 1) * bq); ++i)
            for (int64_t j = kb * bk; j < std::min<int64_t>(nk, (kb + 1) * bk); ++j, ++area) kept += m.keep(0, h, i, j, nq, nk);
          const BlockKind kind = lay.at(qb, kb);
          const std::string where = GetParam().name + " block " + std::to_string(qb) + "," + std::to_string(kb);
          if (kind == BlockKind::empty) {
            EXPECT_EQ(kept, 0) << where;
          } else if (kind == BlockKind::full) {
            EXPECT_EQ(kept, area) << where;
          }
        }
    }
  }
}

// fill() is keep() over a tile, in the kernels' keys × queries orientation.
TEST_P(MaskParts, FillAgreesWithElementPredicate) {
  const Mask& m = GetParam().mask;
  const int64_t nq = 40, nk = 48, rows = 13, cols = 11, ld = 16;
  for (auto [q0, k0] : {std::pair{0, 0}, {29, 3}, {7, 35}}) {
    std::vector<uint8_t> tile(rows * ld, 9);
    m.fill(0, 1, nq, nk, q0, k0, rows, cols, tile.data(), ld);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < ld; ++c) {
        if (c >= cols) {
          ASSERT_EQ(tile[r * ld + c], 9) << "fill wrote outside the tile";
        } else if (k0 + r < nk && q0 + c < nq) {
          ASSERT_EQ(tile[r * ld + c], m.keep(0, 1, q0 + c, k0 + r, nq, nk)) << GetParam().name << " " << q0 + c << "," << k0 + r;
        }
      }
  }
}

// band() is exact where it answers: over the tile, keep() is the band's predicate. Every tile
// of a sweep is asked; windows (also in unions and intersections) must answer somewhere.
TEST_P(MaskParts, BandAgreesWithElementPredicate) {
  const Mask& m = GetParam().mask;
  const int64_t nq = 40, nk = 48;
  int64_t answered = 0;
  for (int64_t h = 0; h < 2; ++h)
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{8, 8}, {5, 13}, {16, 4}})
      for (int64_t q0 = 0; q0 < nq; q0 += cols)
        for (int64_t k0 = 0; k0 < nk; k0 += rows) {
          const int64_t r = std::min(rows, nk - k0), c = std::min(cols, nq - q0);
          const std::optional<MaskBand> band = m.band(0, h, nq, nk, q0, k0, r, c);
          if (!band) continue;
          ++answered;
          for (int64_t i = q0; i < q0 + c; ++i)
            for (int64_t j = k0; j < k0 + r; ++j) {
              const int64_t p = i + nk - nq;
              ASSERT_EQ(m.keep(0, h, i, j, nq, nk), j >= p - band->left && j <= p + band->right)
                  << GetParam().name << " head " << h << " tile " << q0 << "," << k0 << " pair " << i << "," << j;
            }
        }
  const std::string name = GetParam().name;
  if (name == "all" || name == "causal" || name == "window" || name == "sliding_window" || name == "and_or" ||
      name == "longformer" || name == "bigbird" || name == "per_head") {
    EXPECT_GT(answered, 0) << name << ": no tile recognized as a band";
  }
}

// classify() over rectangles (tiles, whole key rows of one query, single pairs): whatever it
// calls empty or full agrees with the element predicate (partial may be conservative).
TEST_P(MaskParts, ClassifyAgreesWithElementPredicate) {
  const Mask& m = GetParam().mask;
  const int64_t nq = 40, nk = 48;
  int64_t decided = 0;
  for (int64_t h = 0; h < 2; ++h)
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{8, 8}, {5, 13}, {nk, 1}, {1, 1}})
      for (int64_t q0 = 0; q0 < nq; q0 += cols)
        for (int64_t k0 = 0; k0 < nk; k0 += rows) {
          const int64_t r = std::min(rows, nk - k0), c = std::min(cols, nq - q0);
          const BlockKind kind = m.classify(0, h, nq, nk, q0, k0, r, c);
          int64_t kept = 0;
          for (int64_t i = q0; i < q0 + c; ++i)
            for (int64_t j = k0; j < k0 + r; ++j) kept += m.keep(0, h, i, j, nq, nk);
          const std::string where = GetParam().name + " head " + std::to_string(h) + " tile " + std::to_string(q0) +
                                    "," + std::to_string(k0) + " " + std::to_string(c) + "x" + std::to_string(r);
          if (kind == BlockKind::empty) {
            EXPECT_EQ(kept, 0) << where;
          }
          if (kind == BlockKind::full) {
            EXPECT_EQ(kept, r * c) << where;
          }
          decided += kind != BlockKind::partial;
        }
  EXPECT_GT(decided, 0) << GetParam().name;
  EXPECT_EQ(m.classify(0, 0, nq, nk, 0, 0, 0, 4), BlockKind::empty);
}

// describe() counts the kept pairs exactly (bench_sparse's kept ratios and GFLOP/s rest on it).
TEST_P(MaskParts, DescribeCountsKeptPairs) {
  const Mask& m = GetParam().mask;
  for (auto [nq, nk, block] : {std::tuple{40, 48, 16}, {33, 45, 64}}) {
    for (int64_t h = 0; h < 2; ++h) {
      int64_t pairs = 0;
      for (int64_t i = 0; i < nq; ++i)
        for (int64_t j = 0; j < nk; ++j) pairs += m.keep(0, h, i, j, nq, nk);
      EXPECT_EQ(describe(m, nq, nk, h, block).kept_pairs, pairs) << GetParam().name << " head " << h;
    }
  }
}

// The same for bench_sparse's presets, at a length where each has full, partial and empty blocks.
TEST(Mask, DescribeCountsKeptPairsOfBenchPresets) {
  const int64_t n = 700;
  const Mask presets[] = {sliding_window(512), Mask::random_blocks(2, 64, 2026), longformer(512, {0, 1, 2, 3, 4, 5, 6, 7}),
                          bigbird(512, {0, 1, 2, 3, 4, 5, 6, 7}, 3, 2026), sparse_transformer_strided(128, 64)};
  for (const Mask& m : presets) {
    for (int64_t h = 0; h < 2; ++h) {
      int64_t pairs = 0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) pairs += m.keep(0, h, i, j, n, n);
      EXPECT_EQ(describe(m, n, n, h).kept_pairs, pairs) << m.to_string() << " head " << h;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, MaskParts, ::testing::ValuesIn(masks()),
                         [](const auto& info) { return info.param.name; });

TEST(Mask, PartsMeanWhatTheySay) {
  const int64_t n = 50;
  auto keep = [&](const Mask& m, int64_t i, int64_t j) { return m.keep(0, 0, i, j, n, n); };
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      EXPECT_EQ(keep(Mask::causal(), i, j), j <= i);
      EXPECT_EQ(keep(sliding_window(4), i, j), j <= i && j > i - 4);
      EXPECT_EQ(keep(Mask::window(2, 1), i, j), j >= i - 2 && j <= i + 1);
      EXPECT_EQ(keep(Mask::dilated_window(2, 0, 3), i, j), j == i || j == i - 3 || j == i - 6);
      EXPECT_EQ(keep(Mask::strided(5), i, j), (i - j) % 5 == 0);
      EXPECT_EQ(keep(Mask::fixed(8, 2), i, j), i / 8 == j / 8 || j % 8 >= 6);
      EXPECT_EQ(keep(Mask::global({3}), i, j), i == 3 || j == 3);
      EXPECT_EQ(keep(longformer(4, {0}), i, j), (j >= i - 2 && j <= i + 2) || i == 0 || j == 0);
    }
  // Cross attention: query i sits at position i + nk − nq.
  EXPECT_TRUE(Mask::causal().keep(0, 0, 0, 10, 5, 15));
  EXPECT_FALSE(Mask::causal().keep(0, 0, 0, 11, 5, 15));
}

TEST(Mask, RandomBlocksAreReproducibleAndDifferPerHeadAndSeed) {
  const Mask a = Mask::random_blocks(3, 16, 1234), b = Mask::random_blocks(3, 16, 1234), c = Mask::random_blocks(3, 16, 99);
  const BlockLayout la = a.compile(256, 256, 16, 16, 0), lb = b.compile(256, 256, 16, 16, 0);
  EXPECT_EQ(la.key_block, lb.key_block);
  EXPECT_NE(la.key_block, c.compile(256, 256, 16, 16, 0).key_block);
  EXPECT_NE(la.key_block, a.compile(256, 256, 16, 16, 1).key_block);
  for (int64_t qb = 0; qb < 16; ++qb) {
    EXPECT_EQ(la.row_begin[qb + 1] - la.row_begin[qb], 3) << "exactly 3 distinct key blocks per query block";
  }
  EXPECT_EQ(la.partial_blocks(), 0);
  EXPECT_EQ(Mask::random_blocks(40, 16, 1).compile(100, 100, 16, 16).kept_blocks(), 7 * 7);  // more than exist: all
}

TEST(Mask, DescribeCountsPairsAndDrawsTheLayout) {
  const MaskDescription d = describe(sliding_window(64), 256, 256, 0, 64);
  int64_t pairs = 0;
  for (int64_t i = 0; i < 256; ++i) pairs += std::min<int64_t>(i + 1, 64);
  EXPECT_EQ(d.kept_pairs, pairs);
  EXPECT_EQ(d.total_pairs, 256 * 256);
  EXPECT_DOUBLE_EQ(d.density, static_cast<double>(pairs) / (256 * 256));
  EXPECT_EQ(d.kept_blocks, 4 + 3);
  EXPECT_EQ(d.partial_blocks, 7);
  EXPECT_EQ(d.text, "+...\n++..\n.++.\n..++\n");
  const MaskDescription dense = describe(Mask(), 300, 200, 0, 64);
  EXPECT_EQ(dense.kept_pairs, 300 * 200);
  EXPECT_EQ(dense.text, "####\n####\n####\n####\n####\n");
  // Wide layouts merge blocks into cells.
  EXPECT_EQ(describe(Mask::causal(), 64 * 8, 64 * 8, 0, 64, 4).text, "+...\n#+..\n##+.\n###+\n");
}

TEST(Mask, ToStringNamesTheParts) {
  EXPECT_EQ(sliding_window(512).to_string(), "(causal & window(511, 0))");
  EXPECT_EQ(longformer(4, {1, 2}).to_string(), "(window(2, 2) | global[2])");
}

// Bad masks are rejected when built (sizes checked against the call in test_sparse.cc).
TEST(MaskErrors, BadParts) {
  auto expect_error = [](auto make, const char* what) {
    try {
      make();
      ADD_FAILURE() << "accepted " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("params.mask"), std::string::npos) << e.what();
    }
  };
  expect_error([] { return Mask::window(-1, 0); }, "window left < 0");
  expect_error([] { return Mask::window(3, -2); }, "window right < 0");
  expect_error([] { return sliding_window(0); }, "sliding window 0");
  expect_error([] { return Mask::dilated_window(3, 0, 0); }, "dilation 0");
  expect_error([] { return Mask::strided(0); }, "stride 0");
  expect_error([] { return sparse_transformer_strided(0); }, "stride 0 preset");
  expect_error([] { return sparse_transformer_strided(100, 64); }, "stride not a multiple of block");
  expect_error([] { return Mask::fixed(8, 0); }, "fixed summary 0");
  expect_error([] { return Mask::global({-1}); }, "global index < 0");
  expect_error([] { return Mask::random_blocks(-1, 64, 0); }, "random blocks < 0");
  expect_error([] { return Mask::block_bitmap(64, 64, 2, 2, {1, 0, 1}); }, "bitmap of the wrong size");
  expect_error([] { return Mask::predicate({}); }, "empty predicate");
  expect_error([] { return Mask::per_head({}); }, "no heads");
  // Sizes that depend on the call.
  expect_error([] { Mask::global({10}).validate(8, 10, 1); }, "global index >= N");
  expect_error([] { Mask::block_bitmap(64, 64, 2, 2, {1, 0, 1, 1}).validate(100, 200, 1); }, "bitmap not fitting");
  expect_error([] { Mask::per_head({Mask(), Mask()}).validate(10, 10, 4); }, "per-head count");
  EXPECT_NO_THROW(Mask::global({9}).validate(8, 10, 1));
  EXPECT_NO_THROW(Mask::block_bitmap(64, 64, 2, 4, std::vector<uint8_t>(8)).validate(100, 200, 1));
}

}  // namespace
}  // namespace attnkit::test
