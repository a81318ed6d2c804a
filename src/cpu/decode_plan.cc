// Decode attention, host side: plan_decode partitions a batch into work items once per batch
// shape (FlashInfer's plan/run split); run_decode validates the call against the plan and the
// cache, then hands it to the kernel (decode.cc).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "attnkit/attention.h"
#include "attnkit/error.h"
#include "attnkit/kv_cache.h"
#include "cpu/decode.h"

namespace attnkit {
namespace {

constexpr int64_t kItemsPerThread = 8;  // enough items that dynamic claiming balances ragged batches
constexpr int64_t kMinChunkKeys = 256;  // below this the merge costs more than the split saves
constexpr int64_t kRowsPerItem = 64;    // query rows (tokens × heads of a group) per item

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

void check_view(const TensorView& t, const char* name, std::initializer_list<int64_t> shape, const char* what) {
  if (t.data == nullptr) throw Error(fmt::format("{}: expected a non-null data pointer", name));
  if (t.device != Device::cpu) throw Error(fmt::format("{}: expected a CPU tensor, given {}", name, to_string(t.device)));
  if (t.ndim != static_cast<int>(shape.size())) {
    throw Error(fmt::format("{}: expected {} dimensions {}, given {}", name, shape.size(), what, t.describe()));
  }
  int i = 0;
  for (int64_t s : shape) {
    if (t.shape[i] != s || t.strides[i] < 0) {
      std::string want;
      for (int64_t x : shape) want += fmt::format("{}{}", want.empty() ? "" : ", ", x);
      throw Error(fmt::format("{}: expected shape [{}] {} with non-negative strides, given {}", name, want, what,
                              t.describe()));
    }
    ++i;
  }
}

std::pair<uintptr_t, uintptr_t> byte_range(const TensorView& t) {
  int64_t last = 0;
  for (int i = 0; i < t.ndim; ++i) last += (t.shape[i] - 1) * t.strides[i];
  const auto lo = reinterpret_cast<uintptr_t>(t.data);
  return {lo, lo + static_cast<uintptr_t>((last + 1) * dtype_size(t.dtype))};
}

void check_disjoint(const TensorView& a, const char* an, const TensorView& b, const char* bn) {
  const auto [alo, ahi] = byte_range(a);
  const auto [blo, bhi] = byte_range(b);
  if (alo < bhi && blo < ahi) throw Error(fmt::format("{}: expected memory disjoint from {}, but they overlap", an, bn));
}

DecodeRange range_of(const KVCache& cache, SeqId s, int64_t nq) {
  DecodeRange r;
  r.key_end = cache.length(s);
  r.window = cache.window(s);
  r.key_begin = cache.first_position(s);
  if (r.window > 0) r.key_begin = std::max(r.key_begin, r.key_end - nq - r.window + 1);
  r.key_begin = std::clamp<int64_t>(r.key_begin, 0, r.key_end);
  return r;
}

}  // namespace

DecodePlan plan_decode(std::span<const DecodeRange> ranges, int64_t nq, int64_t heads_q, int64_t heads_kv,
                       int64_t head_dim, int64_t page_size, const DecodeOptions& o) {
  if (ranges.empty()) throw Error("plan_decode: ranges: expected at least one sequence, given none");
  if (nq <= 0) throw Error(fmt::format("plan_decode: queries_per_seq: expected >= 1, given {}", nq));
  if (heads_kv <= 0 || heads_q <= 0 || heads_q % heads_kv != 0) {
    throw Error(fmt::format("plan_decode: heads_q, heads_kv: expected positive with heads_kv dividing heads_q, given {} "
                            "and {}",
                            heads_q, heads_kv));
  }
  if (head_dim <= 0 || head_dim > 256) throw Error(fmt::format("plan_decode: head_dim: expected 1..256, given {}", head_dim));
  if (page_size <= 0) throw Error(fmt::format("plan_decode: page_size: expected >= 1, given {}", page_size));
  if (o.threads < 0 || o.min_chunk < 0 || o.query_tile < 0) {
    throw Error(fmt::format("plan_decode: options: expected threads, min_chunk and query_tile >= 0 (0: automatic), "
                            "given {}, {} and {}",
                            o.threads, o.min_chunk, o.query_tile));
  }
  for (size_t s = 0; s < ranges.size(); ++s) {
    const DecodeRange& r = ranges[s];
    if (r.key_end < nq || r.key_begin < 0 || r.key_begin > r.key_end - nq || r.window < 0) {
      throw Error(fmt::format("plan_decode: ranges[{}]: expected 0 <= key_begin <= key_end − queries_per_seq (the "
                              "queries are the last {} positions) and window >= 0, given keys [{}, {}), window {}",
                              s, nq, r.key_begin, r.key_end, r.window));
    }
  }
  DecodePlan p;
  p.queries_per_seq = nq;
  p.heads_q = heads_q;
  p.heads_kv = heads_kv;
  p.head_dim = head_dim;
  p.page_size = page_size;
  p.ranges.assign(ranges.begin(), ranges.end());

  const int64_t group = heads_q / heads_kv;
  const int64_t threads = o.threads > 0 ? o.threads : num_threads();
  const int64_t qtile = std::min(nq, o.query_tile > 0 ? o.query_tile : std::max<int64_t>(1, kRowsPerItem / group));
  const int64_t qtiles = (nq + qtile - 1) / qtile;
  int64_t keys = 0;
  for (const DecodeRange& r : ranges) keys += r.key_end - r.key_begin;
  const int64_t min_chunk = round_up(o.min_chunk > 0 ? o.min_chunk : kMinChunkKeys, page_size);
  const int64_t per_item = (keys * heads_kv * qtiles + threads * kItemsPerThread - 1) / (threads * kItemsPerThread);
  const int64_t chunk = std::max(min_chunk, round_up(std::max<int64_t>(1, per_item), page_size));

  p.splits.resize(ranges.size());
  p.split_offset.resize(ranges.size());
  for (size_t s = 0; s < ranges.size(); ++s) {
    const DecodeRange& r = ranges[s];
    p.split_offset[s] = p.total_splits;
    // Cuts at page boundaries: [key_begin, c1), [c1, c2), ... [c_last, key_end).
    int32_t split = 0;
    int64_t lo = r.key_begin;
    do {
      const int64_t hi = std::min(r.key_end, round_up(lo + chunk, page_size));
      for (int64_t h = 0; h < heads_kv; ++h)
        for (int64_t t = 0; t < qtiles; ++t)
          p.items.push_back({static_cast<int32_t>(s), static_cast<int32_t>(h), split, t * qtile,
                             std::min(nq, (t + 1) * qtile), lo, hi});
      ++split;
      lo = hi;
    } while (lo < r.key_end);
    p.splits[s] = split;
    p.total_splits += split;
  }
  // Longest first, so that the last items to finish are short.
  std::stable_sort(p.items.begin(), p.items.end(), [](const DecodeItem& a, const DecodeItem& b) {
    return (a.key_end - a.key_begin) * (a.q_end - a.q_begin) > (b.key_end - b.key_begin) * (b.q_end - b.q_begin);
  });
  return p;
}

DecodePlan plan_decode(const KVCache& cache, std::span<const SeqId> seqs, int64_t nq, int64_t heads_q,
                       const DecodeOptions& o) {
  if (cache.config().num_pages == 0) {
    throw Error("plan_decode: cache: expected a cache of keys and values, given one of recurrent state only "
                "(num_pages = 0)");
  }
  std::vector<DecodeRange> ranges;
  for (SeqId s : seqs) {
    if (!cache.has_sequence(s)) throw Error(fmt::format("plan_decode: seqs: expected live sequence ids, given {}", s));
    ranges.push_back(range_of(cache, s, std::min(nq, cache.length(s))));
  }
  const KVCacheConfig& c = cache.config();
  DecodePlan p = plan_decode(ranges, nq, heads_q, c.heads_kv, c.head_dim, c.page_size, o);
  p.seq_ids.assign(seqs.begin(), seqs.end());
  return p;
}

void run_decode(const KVCache& cache, const DecodePlan& plan, int64_t layer, const TensorView& q,
                const TensorView& out, const DecodeParams& params, const TensorView& lse) {
  const KVCacheConfig& c = cache.config();
  if (plan.seq_ids.empty() || plan.seq_ids.size() != plan.ranges.size()) {
    throw Error("run_decode: plan: expected a plan made by plan_decode from this cache's sequences, given one made "
                "from ranges alone");
  }
  if (plan.heads_kv != c.heads_kv || plan.head_dim != c.head_dim || plan.page_size != c.page_size) {
    throw Error(fmt::format("run_decode: plan: expected heads_kv {}, head_dim {}, page_size {} of the cache, given a "
                            "plan for {}, {}, {}",
                            c.heads_kv, c.head_dim, c.page_size, plan.heads_kv, plan.head_dim, plan.page_size));
  }
  if (layer < 0 || layer >= c.num_layers) {
    throw Error(fmt::format("run_decode: layer: expected 0..{}, given {}", c.num_layers - 1, layer));
  }
  const int64_t S = static_cast<int64_t>(plan.seq_ids.size()), nq = plan.queries_per_seq;
  cpu::DecodeArgs a;
  for (int64_t s = 0; s < S; ++s) {
    const SeqId id = plan.seq_ids[s];
    if (!cache.has_sequence(id)) {
      throw Error(fmt::format("run_decode: plan: sequence {} was removed since the plan was made", id));
    }
    const DecodeRange now = range_of(cache, id, nq);
    const DecodeRange& was = plan.ranges[s];
    if (now.key_begin != was.key_begin || now.key_end != was.key_end || now.window != was.window) {
      throw Error(fmt::format("run_decode: plan: sequence {} now holds keys [{}, {}) but the plan was made for [{}, {}); "
                              "plan again after the cache grows",
                              id, now.key_begin, now.key_end, was.key_begin, was.key_end));
    }
    a.tables.push_back(cache.page_table(id).data());
    a.first_page.push_back(cache.first_page(id));
    a.length.push_back(now.key_end);
  }
  check_view(q, "q", {S, nq, plan.heads_q, c.head_dim}, "[num_seqs, queries_per_seq, heads_q, head_dim] of the plan");
  check_view(out, "out", {S, nq, plan.heads_q, c.head_dim}, "(the shape of q)");
  check_disjoint(out, "out", q, "q");
  if (!lse.empty()) {
    check_view(lse, "lse", {S, plan.heads_q, nq}, "[num_seqs, heads_q, queries_per_seq]");
    if (lse.dtype != DType::f32) throw Error(fmt::format("lse: expected dtype f32, given {}", to_string(lse.dtype)));
    check_disjoint(lse, "lse", q, "q");
    check_disjoint(lse, "lse", out, "out");
  }
  if (params.scale && !(std::isfinite(*params.scale) && *params.scale > 0)) {
    throw Error(fmt::format("params.scale: expected a finite positive number, given {}", *params.scale));
  }
  if (!(std::isfinite(params.softcap) && params.softcap >= 0)) {
    throw Error(fmt::format("params.softcap: expected a finite number >= 0 (0 turns it off), given {}", params.softcap));
  }
  a.cache = &cache;
  a.plan = &plan;
  a.layer = layer;
  a.q = q;
  a.out = out;
  a.lse = lse;
  a.scale = params.scale ? *params.scale : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  a.softcap = params.softcap;
  cpu::decode_run(a);
}

void decode(const KVCache& cache, std::span<const SeqId> seqs, int64_t layer, const TensorView& q,
            const TensorView& out, const DecodeParams& params, const TensorView& lse) {
  if (q.ndim != 4) throw Error(fmt::format("q: expected 4 dimensions [num_seqs, nq, heads_q, head_dim], given {}", q.describe()));
  const DecodePlan plan = plan_decode(cache, seqs, q.shape[1], q.shape[2]);
  run_decode(cache, plan, layer, q, out, params, lse);
}

}  // namespace attnkit
