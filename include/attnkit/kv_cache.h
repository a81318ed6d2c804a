// Paged KV cache and decode attention against it (the inference path).
//
// Cache (vLLM's PagedAttention, Kwon et al. 2023): a pool of fixed-size pages, each holding
// page_size tokens of every layer's keys and values; a page table per sequence maps logical
// page i (positions [i·page_size, (i+1)·page_size)) to a physical page. Pages are reference
// counted, so sequences that share a prompt share its pages (fork); a sequence that appends
// into a shared page first copies it (copy on write). A sliding-window sequence returns the
// pages that fell out of its window, so its memory stays bounded by the window. A later turn of
// a conversation appends to the same sequence and reuses the earlier turns' pages. A new page
// is the lowest free one, so that each sequence's pages ascend in the pool however others came
// and went: reading them in order then walks up through memory (on a GPU, a pool whose pages a
// sequence visits in random order reads 2-3 % slower: address translation).
//
// Page layout (one physical page, storage dtype T):
//   data  : [layers][2 (K, V)][heads_kv][page_size][head_dim]   a head's rows are contiguous
//   scale : [layers][2][heads_kv] f32, int8 storage only: value = int8 · scale (absmax / 127,
//           raised and the page requantized when a larger row arrives)
//
// Decode (flash-decoding, Dao et al. 2023; FlashInfer's plan/run split): nq query tokens per
// sequence, the last nq positions already appended to the cache. plan_decode() partitions the
// batch once on the host into items (sequence, KV head, query tile, key chunk); run_decode()
// computes each item with all query heads of its KV head in one pass over the chunk's pages
// (GQA), in parallel, and merges the chunks of a row by their log-sum-exp. Query token i of a
// sequence of length L sits at position p = L − nq + i and sees keys j with j <= p and, for a
// window W, j > p − W.
//   q, out : [num_seqs, nq, heads_q, head_dim]     lse : [num_seqs, heads_q, nq] f32
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "attnkit/tensor.h"

namespace attnkit {

enum class KVDType : uint8_t { f32, bf16, f16, int8 };
const char* to_string(KVDType t);
int64_t kv_dtype_size(KVDType t);

struct KVCacheConfig {
  int64_t num_layers = 1;
  int64_t heads_kv = 1;
  int64_t head_dim = 64;
  int64_t page_size = 16;  // tokens per page
  int64_t num_pages = 0;   // pages in the pool, allocated once
  KVDType dtype = KVDType::f32;
  // Recurrent mixers (a linear-attention decoder): floats of constant-size state that every
  // sequence carries per layer, zero for an empty sequence (state()). With num_pages = 0 the
  // cache holds such state only: grow() then just counts positions and no keys or values are
  // stored.
  int64_t state_floats = 0;
};

using SeqId = int64_t;

class KVCache {
 public:
  explicit KVCache(const KVCacheConfig& config);
  ~KVCache();
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;

  const KVCacheConfig& config() const { return config_; }

  // A new empty sequence; window > 0 keeps only the keys a query can still see (the last
  // `window` positions), 0 keeps everything.
  SeqId add_sequence(int64_t window = 0);
  // A new sequence holding the first prefix_len tokens of parent (all of them when -1), sharing
  // its pages; either side copies a shared page before writing into it.
  SeqId fork(SeqId parent, int64_t prefix_len = -1);
  void remove_sequence(SeqId seq);
  // Drops the positions >= len (len <= length), returning pages no one else holds.
  void truncate(SeqId seq, int64_t len);

  bool has_sequence(SeqId seq) const;
  int64_t length(SeqId seq) const;          // positions appended so far
  int64_t first_position(SeqId seq) const;  // oldest position still held (> 0 only with a window)
  int64_t window(SeqId seq) const;

  // Extends seq by n positions and returns the first of them. Allocates the pages they need
  // (and copies a shared last page); with a window, first returns the pages the new queries can
  // no longer see. Throws attnkit::Error when the pool cannot supply the pages, changing nothing.
  int64_t grow(SeqId seq, int64_t n);
  // Stores keys and values of one layer at positions [pos, pos + n): k, v are [n, heads_kv,
  // head_dim] of any dtype. The positions must be held by seq and not shared with another
  // sequence (positions that grow() returned are never shared).
  void write(SeqId seq, int64_t layer, int64_t pos, const TensorView& k, const TensorView& v);
  // grow(n) and write every layer: k, v are [num_layers, n, heads_kv, head_dim].
  int64_t append(SeqId seq, const TensorView& k, const TensorView& v);
  // Copies positions [pos, pos + n) of one layer into k, v ([n, heads_kv, head_dim], any dtype).
  void read(SeqId seq, int64_t layer, int64_t pos, const TensorView& k, const TensorView& v) const;

  int64_t free_pages() const;
  int64_t used_pages() const { return config_.num_pages - free_pages(); }
  int64_t page_bytes() const { return page_bytes_; }
  // Pages in use plus the recurrent state of the live sequences.
  int64_t bytes_in_use() const;
  // Pages a sequence references (shared ones included).
  int64_t sequence_pages(SeqId seq) const;
  // Reference count of a physical page: how many sequences hold it.
  int32_t page_refs(int32_t page) const;

  // The recurrent state of one layer of seq, config().state_floats floats. A sequence with
  // state can be forked only at its full length and truncated only to its length or to 0 (which
  // zeroes the state): the state of an earlier position is not kept.
  std::span<float> state(SeqId seq, int64_t layer);
  std::span<const float> state(SeqId seq, int64_t layer) const;

  // Access for the kernels. Logical page i of seq (first_page(seq) <= i < end) is physical page
  // page_table(seq)[i − first_page(seq)].
  int64_t first_page(SeqId seq) const;
  std::span<const int32_t> page_table(SeqId seq) const;
  // Rows [page_size][head_dim] of one (page, layer, K or V, head); kv = 0 keys, 1 values.
  const void* block(int32_t page, int64_t layer, int kv, int64_t head) const;
  float block_scale(int32_t page, int64_t layer, int kv, int64_t head) const;  // int8 only

 private:
  struct Seq;
  Seq& seq_ref(SeqId seq, const char* fn);
  const Seq& seq_ref(SeqId seq, const char* fn) const;
  void* block_mut(int32_t page, int64_t layer, int kv, int64_t head);
  float* scale_mut(int32_t page, int64_t layer, int kv, int64_t head);
  void release_page(int32_t page);
  int32_t take_page();
  void copy_page(int32_t from, int32_t to);
  void store_row(int32_t page, int64_t layer, int kv, int64_t head, int64_t slot, const float* x);
  void load_row(int32_t page, int64_t layer, int kv, int64_t head, int64_t slot, float* x) const;

  KVCacheConfig config_;
  int64_t page_bytes_ = 0;
  int64_t block_elems_ = 0;  // page_size · head_dim
  struct PoolFree {
    size_t bytes = 0;
    void operator()(uint8_t* p) const;
  };
  std::unique_ptr<uint8_t[], PoolFree> pool_;
  std::vector<float> scales_;  // int8: [num_pages][layers][2][heads_kv]
  std::vector<int32_t> refs_;  // per physical page
  std::vector<int32_t> free_;  // free physical pages, a min-heap: the lowest is taken first
  std::vector<std::unique_ptr<Seq>> seqs_;  // indexed by SeqId; null once removed
};

// ---- decode attention ---------------------------------------------------------------------

// The keys one sequence's queries read: positions [key_begin, key_end) (key_end = length).
struct DecodeRange {
  int64_t key_begin = 0, key_end = 0;
  int64_t window = 0;
};

// One work item: query tokens [q_begin, q_end) of sequence seq, all query heads of KV head
// head_kv, against keys [key_begin, key_end) (page-aligned except at the range's ends); its
// partial result goes to chunk `split` of the sequence.
struct DecodeItem {
  int32_t seq = 0, head_kv = 0, split = 0;
  int64_t q_begin = 0, q_end = 0;
  int64_t key_begin = 0, key_end = 0;
};

struct DecodePlan {
  int64_t queries_per_seq = 0, heads_q = 0, heads_kv = 0, head_dim = 0, page_size = 0;
  std::vector<SeqId> seq_ids;          // empty when planned from ranges alone
  std::vector<DecodeRange> ranges;     // per sequence
  std::vector<int32_t> splits;         // key chunks per sequence
  std::vector<int64_t> split_offset;   // per sequence: index of its first chunk among all chunks
  int64_t total_splits = 0;
  std::vector<DecodeItem> items;       // longest first
};

struct DecodeOptions {
  int threads = 0;             // 0: the library's thread count
  int64_t min_chunk = 0;       // minimum keys per chunk; 0: automatic (a few pages, >= 256 keys)
  int64_t query_tile = 0;      // query tokens per item; 0: automatic (about 64 rows of scores)
};

// Partitions a batch into items: each sequence's key range is cut at page boundaries into
// chunks so that the items keep every thread busy, and long prefill queries into tiles.
DecodePlan plan_decode(std::span<const DecodeRange> ranges, int64_t queries_per_seq, int64_t heads_q,
                       int64_t heads_kv, int64_t head_dim, int64_t page_size, const DecodeOptions& options = {});
// The same for sequences of a cache, whose last queries_per_seq positions are the queries.
DecodePlan plan_decode(const KVCache& cache, std::span<const SeqId> seqs, int64_t queries_per_seq,
                       int64_t heads_q, const DecodeOptions& options = {});

struct DecodeParams {
  std::optional<float> scale;  // default 1/sqrt(head_dim)
  float softcap = 0.0f;
  // GPU caches (PagedKVView) only. The call is asynchronous on `stream` (a cudaStream_t;
  // nullptr is the legacy default stream) and allocates nothing: when the partition splits a
  // sequence's keys, the partial results go to `workspace`, device memory of at least
  // decode_workspace_bytes(kv, plan) bytes that the caller allocates once per batch shape.
  void* stream = nullptr;
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// Runs a plan made from the cache for one layer. Throws attnkit::Error before touching data
// when the views do not match the plan or the cache's sequences changed since it was planned.
void run_decode(const KVCache& cache, const DecodePlan& plan, int64_t layer, const TensorView& q,
                const TensorView& out, const DecodeParams& params = {}, const TensorView& lse = {});
// plan_decode + run_decode.
void decode(const KVCache& cache, std::span<const SeqId> seqs, int64_t layer, const TensorView& q,
            const TensorView& out, const DecodeParams& params = {}, const TensorView& lse = {});

// ---- decode attention on the GPU -----------------------------------------------------------

// A paged KV cache in CUDA device memory, owned by the caller (a serving engine's own pool, or
// a mirror of a KVCache). The pages have KVCache's layout and the page table KVCache's meaning,
// so the bookkeeping of a KVCache (grow, fork, window release) carries over as it is:
//   pages      : [num_pages][layers][2 (K, V)][heads_kv][page_size][head_dim]   bf16 | f16
//   page_table : [num_seqs][table_stride] int32; row s, entry i = the physical page of logical
//                page i of sequence s (positions [i·page_size, (i+1)·page_size)). Only the
//                entries of the pages that the plan's ranges reach are read; an entry outside
//                [0, num_pages) makes the rows that read it NaN, never a read outside the pool.
// Sequence s of the plan is row s. The kernel reads 16 keys at a time from one page, so
// page_size must be a multiple of 16 (KVCacheConfig's default is 16); head_dim 64, 128 or 256.
struct PagedKVView {
  const void* pages = nullptr;
  const int32_t* page_table = nullptr;
  int64_t table_stride = 0;  // entries per row, >= the pages of the longest range
  KVCacheConfig config;      // the pool's geometry and dtype (num_pages included)
};

// At most this many sequences per GPU decode call: their ranges travel inside the kernel's
// parameters, so a call copies nothing to the device.
inline constexpr int kMaxCudaDecodeSeqs = 1024;

// Device workspace bytes run_decode(kv, plan, ...) needs on the current device (0 when no
// sequence is split). Depends only on the plan's ranges and shape and on the device.
int64_t decode_workspace_bytes(const PagedKVView& kv, const DecodePlan& plan);
// Decode attention against a GPU cache: q, out [num_seqs, nq, heads_q, head_dim] CUDA tensors
// of the pages' dtype, lse [num_seqs, heads_q, nq] f32 (optional). Uses the plan's ranges and
// shape (the plan may come from ranges alone, or from a KVCache whose pages the view mirrors);
// the GPU partition of the keys is its own, made from the ranges and the device's size.
// Throws attnkit::Error before touching data on bad shapes, dtypes, plans, host pointers or a
// missing workspace. Asynchronous on params.stream.
void run_decode(const PagedKVView& kv, const DecodePlan& plan, int64_t layer, const TensorView& q,
                const TensorView& out, const DecodeParams& params = {}, const TensorView& lse = {});

// Decode cost model (to move into cost.h, which another branch owns now): one decode step
// reads every cached key and value once plus every weight once, so at bandwidth B its time is
//   t = (kv_bytes_read + weight_bytes) / B.
struct DecodeCost {
  double kv_bytes = 0, weight_bytes = 0;
  double bytes() const { return kv_bytes + weight_bytes; }
  double seconds(double bytes_per_second) const { return bytes() / bytes_per_second; }
};
// Bytes of K and V read by one decode step of `layers` layers at context length ctx.
double decode_kv_bytes(int64_t layers, int64_t ctx, int64_t heads_kv, int64_t head_dim, KVDType dtype);

}  // namespace attnkit
