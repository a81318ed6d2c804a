// Sparse attention masks: small composable values compiled into block layouts.
//
// A Mask says which (query, key) pairs of one attention call are kept. It is built from parts
// combined with & (both keep the pair) and | (either keeps it):
//   causal, window(left, right), dilated_window, strided, fixed (Sparse Transformer),
//   global tokens (Longformer), random_blocks (BigBird), block_bitmap, predicate, per_head.
// Positions: in a sequence of nq queries and nk keys, query i sits at position p = i + nk − nq
// (aligned to the bottom-right corner, as params.causal is) and key j at position j; the
// position-based parts (causal, windows, strides, globals, random blocks) compare p with j.
// block_bitmap and predicate see the raw indices i and j.
//
// For a kernel, a mask compiles for (nq, nk, block_q, block_k) into a BlockLayout: for each
// query block, the ascending list of key blocks that hold at least one kept pair, each marked
// full (every pair kept: no element masking) or partial (the element mask applies). Kernels
// visit only the listed blocks, so their cost follows the kept pairs.
//
// Masks are cheap to copy (a shared immutable tree) and safe to use from several threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace attnkit {

// keep(b, h, i, j): b the batch index (the sequence index in a variable-length batch), h the
// query head, i and j the query and key indices within the sequence.
using MaskPredicate = std::function<bool(int64_t b, int64_t h, int64_t i, int64_t j)>;

enum class BlockKind : uint8_t { empty, partial, full };

// A band of offsets: query position p keeps key j when p − left <= j <= p + right; a side of
// kUnbounded has no limit.
struct MaskBand {
  static constexpr int64_t kUnbounded = int64_t{1} << 60;
  int64_t left = kUnbounded, right = kUnbounded;
};

// Compressed rows: the key blocks of query block r are entries [row_begin[r], row_begin[r + 1]).
struct BlockLayout {
  int64_t seq_q = 0, seq_k = 0, block_q = 0, block_k = 0;
  std::vector<int64_t> row_begin;  // [q_blocks() + 1]
  std::vector<int32_t> key_block;  // [kept_blocks()] ascending within each row
  std::vector<uint8_t> partial;    // [kept_blocks()] 1: partial, 0: full

  int64_t q_blocks() const { return (seq_q + block_q - 1) / block_q; }
  int64_t k_blocks() const { return (seq_k + block_k - 1) / block_k; }
  int64_t kept_blocks() const { return static_cast<int64_t>(key_block.size()); }
  int64_t partial_blocks() const;
  BlockKind at(int64_t q_block, int64_t k_block) const;
};

class Mask {
 public:
  struct Node;  // the parts (src/core/mask.cc)

  Mask();  // keeps every pair
  // Query position p keeps key j <= p.
  static Mask causal();
  // p − left <= j <= p + right; left, right >= 0. window(w − 1, 0) is a causal window of w keys.
  static Mask window(int64_t left, int64_t right);
  // Keys p − t·dilation for t in [0, left] and p + t·dilation for t in [0, right].
  static Mask dilated_window(int64_t left, int64_t right, int64_t dilation);
  // Sparse Transformer "strided": with P = ⌊p / block⌋, J = ⌊j / block⌋, keep when P − J is a
  // multiple of stride (stride counted in blocks; block = 1 is the paper's element pattern).
  static Mask strided(int64_t stride, int64_t block = 1);
  // Sparse Transformer "fixed": same stride-long segment (⌊p / stride⌋ = ⌊j / stride⌋), or j
  // among the last `summary` positions of its segment (j mod stride >= stride − summary).
  static Mask fixed(int64_t stride, int64_t summary);
  // Longformer global tokens: a global position attends to every key and every query attends
  // to it. Positions must be >= 0 and below nk (checked when the mask meets a call).
  static Mask global(std::vector<int64_t> positions);
  // BigBird random attention: each query block (of `block` positions) keeps `per_row` distinct
  // key blocks drawn from seed, the query block and the head: the same seed gives the same
  // layout, and heads draw different blocks.
  static Mask random_blocks(int64_t per_row, int64_t block, uint64_t seed);
  // A user block layout: bits[r · cols + c] keeps query block r (rows of block_q queries) and
  // key block c. rows × cols must equal ⌈nq / block_q⌉ × ⌈nk / block_k⌉ of the call.
  static Mask block_bitmap(int64_t block_q, int64_t block_k, int64_t rows, int64_t cols, std::vector<uint8_t> bits);
  // Any callable. Compiling it evaluates it on every pair, so it costs O(nq · nk) per head.
  static Mask predicate(MaskPredicate keep);
  // Head h uses heads[h]; the call must have exactly heads.size() query heads.
  static Mask per_head(std::vector<Mask> heads);

  friend Mask operator&(const Mask& a, const Mask& b);
  friend Mask operator|(const Mask& a, const Mask& b);

  // Throws attnkit::Error, naming params.mask, when the mask does not fit a call whose longest
  // sequence has nq queries and nk keys, with `heads` query heads (0: the head count is not checked).
  void validate(int64_t nq, int64_t nk, int64_t heads) const;
  // Whether the pair (i, j) of batch b, head h is kept, in a sequence of nq queries, nk keys.
  bool keep(int64_t b, int64_t h, int64_t i, int64_t j, int64_t nq, int64_t nk) const;
  // The element mask of one tile in the kernels' orientation (keys × queries):
  // out[r · ld + c] = keep(b, h, q0 + c, k0 + r) for r < rows, c < cols, as 0 or 1.
  void fill(int64_t b, int64_t h, int64_t nq, int64_t nk, int64_t q0, int64_t k0, int64_t rows, int64_t cols,
            uint8_t* out, int64_t ld) const;
  // The band that the mask equals over the tile of queries [q0, q0 + cols) and keys
  // [k0, k0 + rows), when it can tell without evaluating pairs: a window's edge tile, also
  // inside unions with globals or random blocks that keep nothing there. Kernels then mask
  // the tile arithmetically instead of filling it. nullopt: not a band, or not known cheaply.
  std::optional<MaskBand> band(int64_t b, int64_t h, int64_t nq, int64_t nk, int64_t q0, int64_t k0, int64_t rows,
                               int64_t cols) const;
  // How the mask covers the tile of queries [q0, q0 + cols) and keys [k0, k0 + rows): empty and
  // full are exact; partial may also be the answer for a tile that is in fact empty or full.
  BlockKind classify(int64_t b, int64_t h, int64_t nq, int64_t nk, int64_t q0, int64_t k0, int64_t rows,
                     int64_t cols) const;
  // Classifies every block of the call; see BlockLayout.
  BlockLayout compile(int64_t nq, int64_t nk, int64_t block_q, int64_t block_k, int64_t h = 0,
                      int64_t b = 0) const;
  // Whether the kept pairs depend on the head or on the batch index (layouts must then be
  // compiled per head or per sequence).
  bool head_dependent() const;
  bool batch_dependent() const;
  // The number of heads a per-head mask is made for; 0 when any number fits.
  int64_t head_count() const;
  // "causal & (window(511, 0) | global[3])"
  std::string to_string() const;

 private:
  explicit Mask(std::shared_ptr<const Node> n) : node_(std::move(n)) {}
  std::shared_ptr<const Node> node_;
};

// Named patterns from the literature.
// Mistral: each query sees itself and the w − 1 keys before it (causal window of w keys).
Mask sliding_window(int64_t w);
// Longformer: a window of `window` keys centred on the query (window / 2 on each side) and
// global tokens.
Mask longformer(int64_t window, std::vector<int64_t> globals);
// BigBird (ITC): longformer's window and globals, plus random_blocks key blocks of 64 per query block.
Mask bigbird(int64_t window, std::vector<int64_t> globals, int64_t random_blocks, uint64_t seed);
// Sparse Transformer strided, causal: the previous `stride` positions, plus the key blocks
// whose distance from the query's block is a multiple of stride / block. stride must be a
// multiple of block; block = 1 is the paper's element-level pattern, 64 its block-sparse form.
Mask sparse_transformer_strided(int64_t stride, int64_t block = 64);

// What a mask keeps for one head of an nq × nk call.
struct MaskDescription {
  int64_t seq_q = 0, seq_k = 0, block = 0;
  int64_t kept_pairs = 0, total_pairs = 0;
  int64_t kept_blocks = 0, partial_blocks = 0, total_blocks = 0;  // at block × block
  double density = 0;  // kept_pairs / total_pairs
  // One character per cell of blocks: '#' all full, '+' some kept, '.' nothing kept; at most
  // max_cols cells per line (cells merge several blocks when the layout is wider).
  std::string text;
};
MaskDescription describe(const Mask& mask, int64_t nq, int64_t nk, int64_t head = 0, int64_t block = 64,
                         int64_t max_cols = 64);

}  // namespace attnkit
