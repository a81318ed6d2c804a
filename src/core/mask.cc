// Mask parts: element predicate, tile fill and block classification of each (see mask.h).
//
// Every part answers three questions about one call (batch b, head h, nq queries, nk keys):
//   keep(i, j)                 the element predicate, the definition the others must match;
//   fill(tile)                 the same predicate over a keys × queries tile, in loops that
//                              compilers vectorize (the kernels call it on partial tiles);
//   classify(i_lo..i_hi, j_lo..j_hi)  empty / partial / full over a rectangle. It may answer
//                              partial for a rectangle that is in fact empty or full (the kernel
//                              then does useless but correct work); empty and full must be exact.
//   band(rectangle)            the band of offsets the part equals over a rectangle, if it can
//                              tell from classify() alone (exact when given; nullopt is safe).
#include "attnkit/mask.h"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "attnkit/error.h"

namespace attnkit {

struct Call {
  int64_t b, h, nq, nk;
  int64_t diag() const { return nk - nq; }  // query i sits at position i + diag
};

struct Rect {
  int64_t i_lo, i_hi, j_lo, j_hi;  // [i_lo, i_hi) × [j_lo, j_hi), non-empty
};

struct Mask::Node {
  virtual ~Node() = default;
  virtual bool keep(const Call& c, int64_t i, int64_t j) const = 0;
  // out[r · ld + col] for key k0 + r, query q0 + col.
  virtual void fill(const Call& c, int64_t q0, int64_t k0, int64_t rows, int64_t cols, uint8_t* out,
                    int64_t ld) const = 0;
  virtual BlockKind classify(const Call& c, const Rect& r) const = 0;
  // By default, a rectangle the part keeps whole is an unbounded band.
  virtual std::optional<MaskBand> band(const Call& c, const Rect& r) const {
    if (cheap_classify() && classify(c, r) == BlockKind::full) return MaskBand{};
    return std::nullopt;
  }
  // classify() of every key block of one row of blocks: out[kb] for the rectangles
  // [i_lo, i_hi) × [kb · block_k, min(nk, (kb + 1) · block_k)). Parts whose classification has a
  // per-row cost (random blocks draw their sets) override it to pay that cost once per row.
  virtual void classify_row(const Call& c, int64_t i_lo, int64_t i_hi, int64_t block_k, BlockKind* out) const {
    const int64_t kblocks = (c.nk + block_k - 1) / block_k;
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      out[kb] = classify(c, {i_lo, i_hi, kb * block_k, std::min(c.nk, (kb + 1) * block_k)});
    }
  }
  // Whether classify() costs little next to fill() (it evaluates no function per pair).
  virtual bool cheap_classify() const { return true; }
  virtual void validate(int64_t /*nq*/, int64_t /*nk*/, int64_t /*heads*/) const {}
  virtual bool head_dependent() const { return false; }
  virtual bool batch_dependent() const { return false; }
  virtual int64_t head_count() const { return 0; }  // heads a per-head mask is made for; 0: any
  virtual std::string str() const = 0;
};

namespace {

using Node = Mask::Node;
using NodePtr = std::shared_ptr<const Node>;

int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }
int64_t floor_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }
// Whether [lo, hi] holds a multiple of m (m > 0).
bool has_multiple(int64_t lo, int64_t hi, int64_t m) { return lo <= hi && floor_div(hi, m) * m >= lo; }

// Parts that depend only on the offset d = p − j (causal, windows, strides at block 1).
template <class Derived>
struct OffsetNode : Node {
  bool keep(const Call& c, int64_t i, int64_t j) const override {
    return static_cast<const Derived*>(this)->keep_d(i + c.diag() - j);
  }
  void fill(const Call& c, int64_t q0, int64_t k0, int64_t rows, int64_t cols, uint8_t* out,
            int64_t ld) const override {
    const auto& self = *static_cast<const Derived*>(this);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t d0 = q0 + c.diag() - (k0 + r);
      uint8_t* o = out + r * ld;
      for (int64_t col = 0; col < cols; ++col) o[col] = self.keep_d(d0 + col);
    }
  }
  // d over the rectangle spans [i_lo + diag − (j_hi − 1), i_hi − 1 + diag − j_lo].
  static std::pair<int64_t, int64_t> offsets(const Call& c, const Rect& r) {
    return {r.i_lo + c.diag() - (r.j_hi - 1), r.i_hi - 1 + c.diag() - r.j_lo};
  }
};

struct AllNode final : Node {
  bool keep(const Call&, int64_t, int64_t) const override { return true; }
  void fill(const Call&, int64_t, int64_t, int64_t rows, int64_t cols, uint8_t* out, int64_t ld) const override {
    for (int64_t r = 0; r < rows; ++r) std::fill(out + r * ld, out + r * ld + cols, uint8_t{1});
  }
  BlockKind classify(const Call&, const Rect&) const override { return BlockKind::full; }
  std::string str() const override { return "all"; }
};

struct WindowNode final : OffsetNode<WindowNode> {
  int64_t left, right;  // keep −right <= d <= left
  WindowNode(int64_t l, int64_t r) : left(l), right(r) {}
  bool keep_d(int64_t d) const { return d >= -right && d <= left; }
  // Row r keeps the queries c with −right <= d0 + c <= left: one run of ones per row.
  void fill(const Call& c, int64_t q0, int64_t k0, int64_t rows, int64_t cols, uint8_t* out,
            int64_t ld) const override {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t d0 = q0 + c.diag() - (k0 + r);
      const int64_t lo = std::clamp<int64_t>(-right - d0, 0, cols), hi = std::clamp<int64_t>(left - d0 + 1, lo, cols);
      uint8_t* o = out + r * ld;
      std::fill(o, o + lo, uint8_t{0});
      std::fill(o + lo, o + hi, uint8_t{1});
      std::fill(o + hi, o + cols, uint8_t{0});
    }
  }
  BlockKind classify(const Call& c, const Rect& r) const override {
    const auto [lo, hi] = offsets(c, r);
    if (hi < -right || lo > left) return BlockKind::empty;
    return lo >= -right && hi <= left ? BlockKind::full : BlockKind::partial;
  }
  std::optional<MaskBand> band(const Call&, const Rect&) const override { return MaskBand{left, right}; }
  void classify_row(const Call& c, int64_t i_lo, int64_t i_hi, int64_t block_k, BlockKind* out) const override {
    const int64_t kblocks = (c.nk + block_k - 1) / block_k;
    for (int64_t kb = 0; kb < kblocks; ++kb) {  // classify() of a final class: no virtual calls
      out[kb] = WindowNode::classify(c, {i_lo, i_hi, kb * block_k, std::min(c.nk, (kb + 1) * block_k)});
    }
  }
  std::string str() const override {
    if (left == kOpen && right == 0) return "causal";
    return fmt::format("window({}, {})", left == kOpen ? -1 : left, right);
  }
  static constexpr int64_t kOpen = MaskBand::kUnbounded;  // an unbounded side
};

struct DilatedNode final : OffsetNode<DilatedNode> {
  int64_t left, right, dilation;
  DilatedNode(int64_t l, int64_t r, int64_t dl) : left(l), right(r), dilation(dl) {}
  bool keep_d(int64_t d) const {
    return d >= -right * dilation && d <= left * dilation && floor_mod(d, dilation) == 0;
  }
  BlockKind classify(const Call& c, const Rect& r) const override {
    const auto [lo, hi] = offsets(c, r);
    const int64_t a = std::max(lo, -right * dilation), b = std::min(hi, left * dilation);
    if (!has_multiple(a, b, dilation)) return BlockKind::empty;
    return dilation == 1 && a == lo && b == hi ? BlockKind::full : BlockKind::partial;
  }
  std::string str() const override { return fmt::format("dilated_window({}, {}, {})", left, right, dilation); }
};

struct StridedNode final : Node {
  int64_t stride, block;  // keep (⌊p / block⌋ − ⌊j / block⌋) mod stride == 0
  StridedNode(int64_t s, int64_t b) : stride(s), block(b) {}
  bool keep_pj(int64_t p, int64_t j) const { return floor_mod(floor_div(p, block) - floor_div(j, block), stride) == 0; }
  bool keep(const Call& c, int64_t i, int64_t j) const override { return keep_pj(i + c.diag(), j); }
  void fill(const Call& c, int64_t q0, int64_t k0, int64_t rows, int64_t cols, uint8_t* out,
            int64_t ld) const override {
    if (block == 1) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t d0 = floor_mod(q0 + c.diag() - (k0 + r), stride);
        uint8_t* o = out + r * ld;
        for (int64_t col = 0, d = d0; col < cols; ++col, d = d + 1 == stride ? 0 : d + 1) o[col] = d == 0;
      }
      return;
    }
    // Residues of the query blocks once per column, then a compare per pair.
    std::vector<int64_t> col_res(static_cast<size_t>(cols));
    for (int64_t col = 0; col < cols; ++col) col_res[col] = floor_mod(floor_div(q0 + col + c.diag(), block), stride);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t res = floor_mod(floor_div(k0 + r, block), stride);
      uint8_t* o = out + r * ld;
      for (int64_t col = 0; col < cols; ++col) o[col] = col_res[col] == res;
    }
  }
  BlockKind classify(const Call& c, const Rect& r) const override {
    // Block differences over the rectangle: P − J spans [P_lo − J_hi, P_hi − J_lo].
    const int64_t p_lo = floor_div(r.i_lo + c.diag(), block), p_hi = floor_div(r.i_hi - 1 + c.diag(), block);
    const int64_t j_lo = floor_div(r.j_lo, block), j_hi = floor_div(r.j_hi - 1, block);
    const int64_t lo = p_lo - j_hi, hi = p_hi - j_lo;
    if (!has_multiple(lo, hi, stride)) return BlockKind::empty;
    return lo == hi ? BlockKind::full : BlockKind::partial;
  }
  std::string str() const override { return fmt::format("strided({}, block {})", stride, block); }
};

struct FixedNode final : Node {
  int64_t stride, summary;
  FixedNode(int64_t s, int64_t c) : stride(s), summary(c) {}
  bool keep_pj(int64_t p, int64_t j) const {
    return floor_div(p, stride) == floor_div(j, stride) || floor_mod(j, stride) >= stride - summary;
  }
  bool keep(const Call& c, int64_t i, int64_t j) const override { return keep_pj(i + c.diag(), j); }
  void fill(const Call& c, int64_t q0, int64_t k0, int64_t rows, int64_t cols, uint8_t* out,
            int64_t ld) const override {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t col = 0; col < cols; ++col) out[r * ld + col] = keep_pj(q0 + col + c.diag(), k0 + r);
  }
  BlockKind classify(const Call& c, const Rect& r) const override {
    const int64_t pa = floor_div(r.i_lo + c.diag(), stride), pb = floor_div(r.i_hi - 1 + c.diag(), stride);
    const int64_t ja = floor_div(r.j_lo, stride), jb = floor_div(r.j_hi - 1, stride);
    const bool same_full = pa == pb && ja == jb && pa == ja;
    const bool same_empty = pb < ja || pa > jb;
    // Summary columns: j mod stride in [stride − summary, stride).
    int64_t summary_keys = 0;  // how many keys of [j_lo, j_hi) are summary positions
    const int64_t n = r.j_hi - r.j_lo;
    if (n >= 2 * stride) {
      summary_keys = summary;  // at least one, not all (summary < stride) or all
      if (summary == stride) summary_keys = n;
    } else {
      for (int64_t j = r.j_lo; j < r.j_hi; ++j) summary_keys += floor_mod(j, stride) >= stride - summary;
    }
    if (same_full || summary_keys == n) return BlockKind::full;
    if (same_empty && summary_keys == 0) return BlockKind::empty;
    return BlockKind::partial;
  }
  std::string str() const override { return fmt::format("fixed({}, {})", stride, summary); }
};

struct GlobalNode final : Node {
  std::vector<int64_t> pos;  // sorted, unique
  explicit GlobalNode(std::vector<int64_t> p) : pos(std::move(p)) {}
  bool is_global(int64_t x) const { return std::binary_search(pos.begin(), pos.end(), x); }
  int64_t count(int64_t lo, int64_t hi) const {  // globals in [lo, hi)
    return std::lower_bound(pos.begin(), pos.end(), hi) - std::lower_bound(pos.begin(), pos.end(), lo);
  }
  bool keep(const Call& c, int64_t i, int64_t j) const override { return is_global(i + c.diag()) || is_global(j); }
  void fill(const Call& c, int64_t q0, int64_t k0, int64_t rows, int64_t cols, uint8_t* out,
            int64_t ld) const override {
    // Rows of non-global keys keep only the global queries' columns: zeros, then a 1 at each
    // global position among the tile's queries.
    const int64_t p0 = q0 + c.diag();
    const auto first = std::lower_bound(pos.begin(), pos.end(), p0), last = std::lower_bound(first, pos.end(), p0 + cols);
    auto k_global = std::lower_bound(pos.begin(), pos.end(), k0);
    for (int64_t r = 0; r < rows; ++r) {
      uint8_t* o = out + r * ld;
      while (k_global != pos.end() && *k_global < k0 + r) ++k_global;
      if (k_global != pos.end() && *k_global == k0 + r) {
        std::fill(o, o + cols, uint8_t{1});
      } else {
        std::fill(o, o + cols, uint8_t{0});
        for (auto g = first; g != last; ++g) o[*g - p0] = 1;
      }
    }
  }
  BlockKind classify(const Call& c, const Rect& r) const override {
    const int64_t rows = count(r.i_lo + c.diag(), r.i_hi + c.diag()), keys = count(r.j_lo, r.j_hi);
    if (rows == r.i_hi - r.i_lo || keys == r.j_hi - r.j_lo) return BlockKind::full;
    return rows == 0 && keys == 0 ? BlockKind::empty : BlockKind::partial;
  }
  void classify_row(const Call& c, int64_t i_lo, int64_t i_hi, int64_t block_k, BlockKind* out) const override {
    const int64_t kblocks = (c.nk + block_k - 1) / block_k;
    const int64_t rows = count(i_lo + c.diag(), i_hi + c.diag());
    auto g = pos.begin();  // the first global position at or past the key block
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      const int64_t j_lo = kb * block_k, j_hi = std::min(c.nk, j_lo + block_k);
      while (g != pos.end() && *g < j_lo) ++g;
      auto e = g;
      while (e != pos.end() && *e < j_hi) ++e;
      const int64_t keys = e - g;
      out[kb] = rows == i_hi - i_lo || keys == j_hi - j_lo ? BlockKind::full
                : rows == 0 && keys == 0                  ? BlockKind::empty
                                                          : BlockKind::partial;
    }
  }
  void validate(int64_t, int64_t nk, int64_t) const override {
    if (!pos.empty() && pos.back() >= nk) {
      throw Error(fmt::format("params.mask: global token position {} is out of range: expected positions below the "
                              "key length {}", pos.back(), nk));
    }
  }
  std::string str() const override { return fmt::format("global[{}]", pos.size()); }
};

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

struct RandomBlocksNode final : Node {
  int64_t per_row, block;
  uint64_t seed;
  RandomBlocksNode(int64_t r, int64_t b, uint64_t s) : per_row(r), block(b), seed(s) {}

  // The key blocks of query block qb, as a membership vector over ⌈nk / block⌉ blocks: Floyd's
  // sampling of per_row distinct blocks, from a stream seeded by (seed, head, qb).
  void chosen(const Call& c, int64_t qb, std::vector<uint8_t>& in) const {
    const int64_t n = (c.nk + block - 1) / block;
    in.assign(static_cast<size_t>(n), 0);
    if (per_row >= n) {
      std::fill(in.begin(), in.end(), uint8_t{1});
      return;
    }
    uint64_t s = seed;
    s = splitmix64(s) ^ static_cast<uint64_t>(c.h) * 0x632be59bd9b4e019ull;
    s = splitmix64(s) ^ static_cast<uint64_t>(qb) * 0x8cb92ba72f3d8dd7ull;
    for (int64_t t = n - per_row; t < n; ++t) {
      const int64_t x = static_cast<int64_t>(splitmix64(s) % static_cast<uint64_t>(t + 1));
      in[in[x] ? t : x] = 1;
    }
  }
  // A per-thread buffer for chosen(): fills run inside the kernels, once per partial tile.
  static std::vector<uint8_t>& buffer() {
    thread_local std::vector<uint8_t> in;
    return in;
  }
  bool keep(const Call& c, int64_t i, int64_t j) const override {
    std::vector<uint8_t>& in = buffer();
    chosen(c, floor_div(i + c.diag(), block), in);
    return in[j / block] != 0;
  }
  void fill(const Call& c, int64_t q0, int64_t k0, int64_t rows, int64_t cols, uint8_t* out,
            int64_t ld) const override {
    // Columns in runs of one query block; within a run, each row is all kept or all dropped.
    std::vector<uint8_t>& in = buffer();
    for (int64_t a = 0; a < cols;) {
      const int64_t qb = floor_div(q0 + a + c.diag(), block);
      const int64_t e = std::min(cols, (qb + 1) * block - c.diag() - q0);  // first column of the next block
      chosen(c, qb, in);
      for (int64_t r = 0; r < rows; ++r) std::fill(out + r * ld + a, out + r * ld + e, in[(k0 + r) / block]);
      a = e;
    }
  }
  // kept / total random blocks over a rectangle's query blocks and the random blocks its keys
  // touch: empty at 0, full when all.
  BlockKind classify(const Call& c, const Rect& r) const override {
    int64_t kept = 0, total = 0;
    std::vector<uint8_t>& in = buffer();
    for (int64_t qb = floor_div(r.i_lo + c.diag(), block); qb <= floor_div(r.i_hi - 1 + c.diag(), block); ++qb) {
      chosen(c, qb, in);
      for (int64_t kb = r.j_lo / block; kb <= (r.j_hi - 1) / block; ++kb, ++total) kept += in[kb];
    }
    return kept == 0 ? BlockKind::empty : kept == total ? BlockKind::full : BlockKind::partial;
  }
  void classify_row(const Call& c, int64_t i_lo, int64_t i_hi, int64_t block_k, BlockKind* out) const override {
    const int64_t kblocks = (c.nk + block_k - 1) / block_k;
    std::vector<int32_t> kept(static_cast<size_t>(kblocks), 0);
    int64_t qbs = 0;
    std::vector<uint8_t>& in = buffer();
    for (int64_t qb = floor_div(i_lo + c.diag(), block); qb <= floor_div(i_hi - 1 + c.diag(), block); ++qb, ++qbs) {
      chosen(c, qb, in);
      for (int64_t kb = 0; kb < kblocks; ++kb) {
        const int64_t j_lo = kb * block_k, j_hi = std::min(c.nk, j_lo + block_k);
        for (int64_t b = j_lo / block; b <= (j_hi - 1) / block; ++b) kept[kb] += in[b];
      }
    }
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      const int64_t j_lo = kb * block_k, j_hi = std::min(c.nk, j_lo + block_k);
      const int64_t total = qbs * ((j_hi - 1) / block - j_lo / block + 1);
      out[kb] = kept[kb] == 0 ? BlockKind::empty : kept[kb] == total ? BlockKind::full : BlockKind::partial;
    }
  }
  bool head_dependent() const override { return per_row > 0; }
  std::string str() const override { return fmt::format("random_blocks({}, block {}, seed {})", per_row, block, seed); }
};

struct BitmapNode final : Node {
  int64_t bq, bk, rows, cols;
  std::vector<uint8_t> bits;
  BitmapNode(int64_t q, int64_t k, int64_t r, int64_t c, std::vector<uint8_t> b)
      : bq(q), bk(k), rows(r), cols(c), bits(std::move(b)) {}
  bool bit(int64_t i, int64_t j) const { return bits[(i / bq) * cols + j / bk] != 0; }
  bool keep(const Call&, int64_t i, int64_t j) const override { return bit(i, j); }
  void fill(const Call&, int64_t q0, int64_t k0, int64_t nr, int64_t nc, uint8_t* out, int64_t ld) const override {
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t col = 0; col < nc; ++col) out[r * ld + col] = bit(q0 + col, k0 + r);
  }
  BlockKind classify(const Call&, const Rect& r) const override {
    int64_t kept = 0, total = 0;
    for (int64_t a = r.i_lo / bq; a <= (r.i_hi - 1) / bq; ++a)
      for (int64_t b = r.j_lo / bk; b <= (r.j_hi - 1) / bk; ++b, ++total) kept += bits[a * cols + b] != 0;
    return kept == 0 ? BlockKind::empty : kept == total ? BlockKind::full : BlockKind::partial;
  }
  void validate(int64_t nq, int64_t nk, int64_t) const override {
    const int64_t want_r = (nq + bq - 1) / bq, want_c = (nk + bk - 1) / bk;
    if (rows != want_r || cols != want_c) {
      throw Error(fmt::format("params.mask: block bitmap of {} × {} blocks does not fit the call: expected {} × {} "
                              "(⌈{} / {}⌉ query blocks × ⌈{} / {}⌉ key blocks)",
                              rows, cols, want_r, want_c, nq, bq, nk, bk));
    }
  }
  std::string str() const override { return fmt::format("block_bitmap({}x{} blocks of {}x{})", rows, cols, bq, bk); }
};

struct PredicateNode final : Node {
  MaskPredicate fn;
  explicit PredicateNode(MaskPredicate f) : fn(std::move(f)) {}
  bool keep(const Call& c, int64_t i, int64_t j) const override { return fn(c.b, c.h, i, j); }
  void fill(const Call& c, int64_t q0, int64_t k0, int64_t rows, int64_t cols, uint8_t* out,
            int64_t ld) const override {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t col = 0; col < cols; ++col) out[r * ld + col] = fn(c.b, c.h, q0 + col, k0 + r);
  }
  BlockKind classify(const Call& c, const Rect& r) const override {
    int64_t kept = 0;
    for (int64_t i = r.i_lo; i < r.i_hi; ++i)
      for (int64_t j = r.j_lo; j < r.j_hi; ++j) kept += fn(c.b, c.h, i, j);
    return kept == 0 ? BlockKind::empty
                     : kept == (r.i_hi - r.i_lo) * (r.j_hi - r.j_lo) ? BlockKind::full : BlockKind::partial;
  }
  bool cheap_classify() const override { return false; }
  bool head_dependent() const override { return true; }
  bool batch_dependent() const override { return true; }
  std::string str() const override { return "predicate"; }
};

struct PerHeadNode final : Node {
  std::vector<NodePtr> heads;
  explicit PerHeadNode(std::vector<NodePtr> h) : heads(std::move(h)) {}
  const Node& at(const Call& c) const { return *heads[static_cast<size_t>(c.h)]; }
  bool keep(const Call& c, int64_t i, int64_t j) const override { return at(c).keep(c, i, j); }
  void fill(const Call& c, int64_t q0, int64_t k0, int64_t rows, int64_t cols, uint8_t* out,
            int64_t ld) const override {
    at(c).fill(c, q0, k0, rows, cols, out, ld);
  }
  BlockKind classify(const Call& c, const Rect& r) const override { return at(c).classify(c, r); }
  std::optional<MaskBand> band(const Call& c, const Rect& r) const override { return at(c).band(c, r); }
  void classify_row(const Call& c, int64_t i_lo, int64_t i_hi, int64_t block_k, BlockKind* out) const override {
    at(c).classify_row(c, i_lo, i_hi, block_k, out);
  }
  int64_t head_count() const override { return static_cast<int64_t>(heads.size()); }
  bool cheap_classify() const override {
    return std::all_of(heads.begin(), heads.end(), [](const NodePtr& n) { return n->cheap_classify(); });
  }
  void validate(int64_t nq, int64_t nk, int64_t h) const override {
    if (h > 0 && static_cast<int64_t>(heads.size()) != h) {
      throw Error(fmt::format("params.mask: per-head mask holds {} masks, expected one per query head ({})",
                              heads.size(), h));
    }
    for (const NodePtr& n : heads) n->validate(nq, nk, h);
  }
  bool head_dependent() const override { return true; }
  bool batch_dependent() const override {
    return std::any_of(heads.begin(), heads.end(), [](const NodePtr& n) { return n->batch_dependent(); });
  }
  std::string str() const override { return fmt::format("per_head[{}]", heads.size()); }
};

struct BinaryNode final : Node {
  NodePtr a, b;
  bool is_and;
  NodePtr window;  // set when the node is the intersection of two windows: that one window
  bool cheap;      // both operands classify cheaply: fill() asks them first
  BinaryNode(NodePtr x, NodePtr y, bool conj)
      : a(std::move(x)), b(std::move(y)), is_and(conj), cheap(a->cheap_classify() && b->cheap_classify()) {
    // causal & window(w − 1, 0), the sliding window, is one window: one fill pass, not three.
    const auto* wa = dynamic_cast<const WindowNode*>(a.get());
    const auto* wb = dynamic_cast<const WindowNode*>(b.get());
    if (is_and && wa != nullptr && wb != nullptr) {
      window = std::make_shared<WindowNode>(std::min(wa->left, wb->left), std::min(wa->right, wb->right));
    }
  }
  bool keep(const Call& c, int64_t i, int64_t j) const override {
    return is_and ? a->keep(c, i, j) && b->keep(c, i, j) : a->keep(c, i, j) || b->keep(c, i, j);
  }
  void fill(const Call& c, int64_t q0, int64_t k0, int64_t rows, int64_t cols, uint8_t* out,
            int64_t ld) const override {
    if (window != nullptr) return window->fill(c, q0, k0, rows, cols, out, ld);
    // An operand that is empty or full over the tile decides it, or leaves it to the other one:
    // a window's edge tile then costs one fill, not one per part (globals, random blocks).
    if (cheap && rows > 0 && cols > 0 && q0 >= 0 && k0 >= 0 && q0 + cols <= c.nq && k0 + rows <= c.nk) {
      const Rect r{q0, q0 + cols, k0, k0 + rows};
      const BlockKind x = a->classify(c, r);
      const BlockKind decides = is_and ? BlockKind::empty : BlockKind::full;
      const BlockKind defers = is_and ? BlockKind::full : BlockKind::empty;
      const BlockKind y = x == decides ? x : b->classify(c, r);
      if (x == decides || y == decides) {
        for (int64_t row = 0; row < rows; ++row) std::fill(out + row * ld, out + row * ld + cols, uint8_t{!is_and});
        return;
      }
      if (x == defers) return b->fill(c, q0, k0, rows, cols, out, ld);
      if (y == defers) return a->fill(c, q0, k0, rows, cols, out, ld);
    }
    a->fill(c, q0, k0, rows, cols, out, ld);
    // The second operand in a stack buffer for kernel tiles, on the heap for larger ones.
    constexpr int64_t kStack = 64 * 128;
    uint8_t stack[kStack];
    std::vector<uint8_t> heap(rows * cols > kStack ? static_cast<size_t>(rows * cols) : 0);
    uint8_t* other = rows * cols > kStack ? heap.data() : stack;
    b->fill(c, q0, k0, rows, cols, other, cols);
    for (int64_t r = 0; r < rows; ++r) {
      uint8_t* o = out + r * ld;
      const uint8_t* x = other + r * cols;
      if (is_and) {
        for (int64_t col = 0; col < cols; ++col) o[col] &= x[col];
      } else {
        for (int64_t col = 0; col < cols; ++col) o[col] |= x[col];
      }
    }
  }
  // An operand that decides the rectangle (and: empty, or: full) leaves no band but the whole
  // one; an operand that defers to the other (and: full, or: empty) leaves the other's band;
  // two bands intersect into one.
  std::optional<MaskBand> band(const Call& c, const Rect& r) const override {
    if (window != nullptr) return window->band(c, r);
    if (!cheap) return std::nullopt;
    const BlockKind decides = is_and ? BlockKind::empty : BlockKind::full;
    const BlockKind defers = is_and ? BlockKind::full : BlockKind::empty;
    const BlockKind x = a->classify(c, r);
    if (x == defers) return b->band(c, r);
    const BlockKind y = x == decides ? x : b->classify(c, r);
    if (x == decides || y == decides) return is_and ? std::nullopt : std::optional<MaskBand>(MaskBand{});
    if (y == defers) return a->band(c, r);
    if (!is_and) return std::nullopt;
    const std::optional<MaskBand> ba = a->band(c, r), bb = b->band(c, r);
    if (!ba || !bb) return std::nullopt;
    return MaskBand{std::min(ba->left, bb->left), std::min(ba->right, bb->right)};
  }
  BlockKind classify(const Call& c, const Rect& r) const override {
    const BlockKind x = a->classify(c, r);
    if (is_and && x == BlockKind::empty) return x;
    if (!is_and && x == BlockKind::full) return x;
    return combine(x, b->classify(c, r));
  }
  void classify_row(const Call& c, int64_t i_lo, int64_t i_hi, int64_t block_k, BlockKind* out) const override {
    if (window != nullptr) return window->classify_row(c, i_lo, i_hi, block_k, out);
    const int64_t kblocks = (c.nk + block_k - 1) / block_k;
    a->classify_row(c, i_lo, i_hi, block_k, out);
    std::vector<BlockKind> y(static_cast<size_t>(kblocks));
    b->classify_row(c, i_lo, i_hi, block_k, y.data());
    for (int64_t kb = 0; kb < kblocks; ++kb) out[kb] = combine(out[kb], y[kb]);
  }
  BlockKind combine(BlockKind x, BlockKind y) const {
    if (is_and) {
      if (x == BlockKind::empty || y == BlockKind::empty) return BlockKind::empty;
      return x == BlockKind::full ? y : BlockKind::partial;
    }
    if (x == BlockKind::full || y == BlockKind::full) return BlockKind::full;
    return x == BlockKind::empty ? y : BlockKind::partial;
  }
  void validate(int64_t nq, int64_t nk, int64_t h) const override {
    a->validate(nq, nk, h);
    b->validate(nq, nk, h);
  }
  int64_t head_count() const override { return std::max(a->head_count(), b->head_count()); }
  bool cheap_classify() const override { return cheap; }
  bool head_dependent() const override { return a->head_dependent() || b->head_dependent(); }
  bool batch_dependent() const override { return a->batch_dependent() || b->batch_dependent(); }
  std::string str() const override { return fmt::format("({} {} {})", a->str(), is_and ? "&" : "|", b->str()); }
};

void check_positive(int64_t x, const char* what) {
  if (x <= 0) throw Error(fmt::format("params.mask: {} must be positive, given {}", what, x));
}
void check_non_negative(int64_t x, const char* what) {
  if (x < 0) throw Error(fmt::format("params.mask: {} must be >= 0, given {}", what, x));
}

}  // namespace

int64_t BlockLayout::partial_blocks() const { return std::accumulate(partial.begin(), partial.end(), int64_t{0}); }

BlockKind BlockLayout::at(int64_t q_block, int64_t k_block) const {
  const auto first = key_block.begin() + row_begin[q_block], last = key_block.begin() + row_begin[q_block + 1];
  const auto it = std::lower_bound(first, last, static_cast<int32_t>(k_block));
  if (it == last || *it != k_block) return BlockKind::empty;
  return partial[it - key_block.begin()] ? BlockKind::partial : BlockKind::full;
}

Mask::Mask() : node_(std::make_shared<AllNode>()) {}

Mask Mask::causal() { return Mask(std::make_shared<WindowNode>(WindowNode::kOpen, 0)); }

Mask Mask::window(int64_t left, int64_t right) {
  check_non_negative(left, "window left extent");
  check_non_negative(right, "window right extent");
  return Mask(std::make_shared<WindowNode>(left, right));
}

Mask Mask::dilated_window(int64_t left, int64_t right, int64_t dilation) {
  check_non_negative(left, "dilated window left extent");
  check_non_negative(right, "dilated window right extent");
  check_positive(dilation, "dilation");
  return Mask(std::make_shared<DilatedNode>(left, right, dilation));
}

Mask Mask::strided(int64_t stride, int64_t block) {
  check_positive(stride, "stride");
  check_positive(block, "strided block size");
  return Mask(std::make_shared<StridedNode>(stride, block));
}

Mask Mask::fixed(int64_t stride, int64_t summary) {
  check_positive(stride, "stride");
  if (summary < 1 || summary > stride) {
    throw Error(fmt::format("params.mask: fixed pattern summary must be in 1..stride ({}), given {}", stride, summary));
  }
  return Mask(std::make_shared<FixedNode>(stride, summary));
}

Mask Mask::global(std::vector<int64_t> positions) {
  for (int64_t p : positions) {
    if (p < 0) throw Error(fmt::format("params.mask: global token position must be >= 0, given {}", p));
  }
  std::sort(positions.begin(), positions.end());
  positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
  return Mask(std::make_shared<GlobalNode>(std::move(positions)));
}

Mask Mask::random_blocks(int64_t per_row, int64_t block, uint64_t seed) {
  check_non_negative(per_row, "random blocks per query block");
  check_positive(block, "random block size");
  return Mask(std::make_shared<RandomBlocksNode>(per_row, block, seed));
}

Mask Mask::block_bitmap(int64_t block_q, int64_t block_k, int64_t rows, int64_t cols, std::vector<uint8_t> bits) {
  check_positive(block_q, "bitmap query block size");
  check_positive(block_k, "bitmap key block size");
  check_positive(rows, "bitmap rows");
  check_positive(cols, "bitmap columns");
  if (static_cast<int64_t>(bits.size()) != rows * cols) {
    throw Error(fmt::format("params.mask: block bitmap holds {} entries, expected rows × cols = {} × {} = {}",
                            bits.size(), rows, cols, rows * cols));
  }
  return Mask(std::make_shared<BitmapNode>(block_q, block_k, rows, cols, std::move(bits)));
}

Mask Mask::predicate(MaskPredicate keep) {
  if (!keep) throw Error("params.mask: predicate must be a callable, given an empty function");
  return Mask(std::make_shared<PredicateNode>(std::move(keep)));
}

Mask Mask::per_head(std::vector<Mask> heads) {
  if (heads.empty()) throw Error("params.mask: per_head needs one mask per query head, given none");
  std::vector<NodePtr> nodes;
  for (const Mask& m : heads) nodes.push_back(m.node_);
  return Mask(std::make_shared<PerHeadNode>(std::move(nodes)));
}

Mask operator&(const Mask& a, const Mask& b) { return Mask(std::make_shared<BinaryNode>(a.node_, b.node_, true)); }
Mask operator|(const Mask& a, const Mask& b) { return Mask(std::make_shared<BinaryNode>(a.node_, b.node_, false)); }

void Mask::validate(int64_t nq, int64_t nk, int64_t heads) const { node_->validate(nq, nk, heads); }

bool Mask::keep(int64_t b, int64_t h, int64_t i, int64_t j, int64_t nq, int64_t nk) const {
  return node_->keep({b, h, nq, nk}, i, j);
}

void Mask::fill(int64_t b, int64_t h, int64_t nq, int64_t nk, int64_t q0, int64_t k0, int64_t rows, int64_t cols,
                uint8_t* out, int64_t ld) const {
  node_->fill({b, h, nq, nk}, q0, k0, rows, cols, out, ld);
}

std::optional<MaskBand> Mask::band(int64_t b, int64_t h, int64_t nq, int64_t nk, int64_t q0, int64_t k0, int64_t rows,
                                   int64_t cols) const {
  if (rows <= 0 || cols <= 0) return std::nullopt;
  return node_->band({b, h, nq, nk}, {q0, q0 + cols, k0, k0 + rows});
}

BlockKind Mask::classify(int64_t b, int64_t h, int64_t nq, int64_t nk, int64_t q0, int64_t k0, int64_t rows,
                         int64_t cols) const {
  if (rows <= 0 || cols <= 0) return BlockKind::empty;
  return node_->classify({b, h, nq, nk}, {q0, q0 + cols, k0, k0 + rows});
}

BlockLayout Mask::compile(int64_t nq, int64_t nk, int64_t block_q, int64_t block_k, int64_t h, int64_t b) const {
  BlockLayout lay;
  lay.seq_q = nq;
  lay.seq_k = nk;
  lay.block_q = block_q;
  lay.block_k = block_k;
  const Call c{b, h, nq, nk};
  lay.row_begin.push_back(0);
  std::vector<BlockKind> kinds(static_cast<size_t>(lay.k_blocks()));
  for (int64_t qb = 0; qb < lay.q_blocks(); ++qb) {
    const int64_t i_lo = qb * block_q, i_hi = std::min(nq, i_lo + block_q);
    node_->classify_row(c, i_lo, i_hi, block_k, kinds.data());
    for (int64_t kb = 0; kb < lay.k_blocks(); ++kb) {
      const BlockKind kind = kinds[kb];
      if (kind == BlockKind::empty) continue;
      lay.key_block.push_back(static_cast<int32_t>(kb));
      lay.partial.push_back(kind == BlockKind::partial);
    }
    lay.row_begin.push_back(lay.kept_blocks());
  }
  return lay;
}

bool Mask::head_dependent() const { return node_->head_dependent(); }
int64_t Mask::head_count() const { return node_->head_count(); }
bool Mask::batch_dependent() const { return node_->batch_dependent(); }
std::string Mask::to_string() const { return node_->str(); }

Mask sliding_window(int64_t w) {
  check_positive(w, "sliding window size");
  return Mask::causal() & Mask::window(w - 1, 0);
}

Mask longformer(int64_t window, std::vector<int64_t> globals) {
  check_non_negative(window, "longformer window");
  return Mask::window(window / 2, window / 2) | Mask::global(std::move(globals));
}

Mask bigbird(int64_t window, std::vector<int64_t> globals, int64_t random_blocks, uint64_t seed) {
  return longformer(window, std::move(globals)) | Mask::random_blocks(random_blocks, 64, seed);
}

Mask sparse_transformer_strided(int64_t stride, int64_t block) {
  check_positive(stride, "stride");
  check_positive(block, "strided block size");
  if (stride % block != 0) {
    throw Error(fmt::format("params.mask: sparse_transformer_strided stride {} must be a multiple of its block {}",
                            stride, block));
  }
  return Mask::causal() & (Mask::window(stride - 1, 0) | Mask::strided(stride / block, block));
}

MaskDescription describe(const Mask& mask, int64_t nq, int64_t nk, int64_t head, int64_t block, int64_t max_cols) {
  if (nq <= 0 || nk <= 0 || block <= 0 || max_cols <= 0) {
    throw Error(fmt::format("describe: expected positive nq, nk, block and max_cols, given {}, {}, {}, {}", nq, nk,
                            block, max_cols));
  }
  mask.validate(nq, nk, 0);
  if (head < 0 || (mask.head_count() > 0 && head >= mask.head_count())) {
    throw Error(fmt::format("describe: head {} is out of range for a mask of {} heads", head, mask.head_count()));
  }
  MaskDescription d;
  d.seq_q = nq;
  d.seq_k = nk;
  d.block = block;
  d.total_pairs = nq * nk;
  const BlockLayout lay = mask.compile(nq, nk, block, block, head);
  d.total_blocks = lay.q_blocks() * lay.k_blocks();
  d.kept_blocks = lay.kept_blocks();
  d.partial_blocks = lay.partial_blocks();
  std::vector<uint8_t> tile(static_cast<size_t>(block * block));
  for (int64_t qb = 0; qb < lay.q_blocks(); ++qb) {
    const int64_t i0 = qb * block, ni = std::min(block, nq - i0);
    for (int64_t e = lay.row_begin[qb]; e < lay.row_begin[qb + 1]; ++e) {
      const int64_t j0 = lay.key_block[e] * block, nj = std::min(block, nk - j0);
      if (!lay.partial[e]) {
        d.kept_pairs += ni * nj;
        continue;
      }
      mask.fill(0, head, nq, nk, i0, j0, nj, ni, tile.data(), ni);
      d.kept_pairs += std::accumulate(tile.begin(), tile.begin() + nj * ni, int64_t{0});
    }
  }
  d.density = static_cast<double>(d.kept_pairs) / static_cast<double>(d.total_pairs);
  // Text: cells of g × g blocks, g chosen so that a line holds at most max_cols cells.
  const int64_t g = (lay.k_blocks() + max_cols - 1) / max_cols;
  for (int64_t r0 = 0; r0 < lay.q_blocks(); r0 += g) {
    for (int64_t c0 = 0; c0 < lay.k_blocks(); c0 += g) {
      int64_t full = 0, kept = 0, cells = 0;
      for (int64_t r = r0; r < std::min(r0 + g, lay.q_blocks()); ++r)
        for (int64_t c = c0; c < std::min(c0 + g, lay.k_blocks()); ++c, ++cells) {
          const BlockKind k = lay.at(r, c);
          kept += k != BlockKind::empty;
          full += k == BlockKind::full;
        }
      d.text += full == cells ? '#' : kept > 0 ? '+' : '.';
    }
    d.text += '\n';
  }
  return d;
}

}  // namespace attnkit
