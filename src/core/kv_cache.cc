// Paged KV cache: page pool, per-sequence page tables, copy on write, sliding-window release.
// See include/attnkit/kv_cache.h for the layout. Every public call validates its arguments and
// the pool's capacity before it changes anything.
#include "attnkit/kv_cache.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>

#include "attnkit/error.h"
#include "core/big_alloc.h"
#include "core/problem.h"

namespace attnkit {

const char* to_string(KVDType t) {
  switch (t) {
    case KVDType::f32: return "f32";
    case KVDType::bf16: return "bf16";
    case KVDType::f16: return "f16";
    case KVDType::int8: return "int8";
  }
  return "?";
}

int64_t kv_dtype_size(KVDType t) {
  switch (t) {
    case KVDType::f32: return 4;
    case KVDType::bf16:
    case KVDType::f16: return 2;
    case KVDType::int8: return 1;
  }
  return 0;
}

double decode_kv_bytes(int64_t layers, int64_t ctx, int64_t heads_kv, int64_t head_dim, KVDType dtype) {
  return 2.0 * static_cast<double>(layers) * static_cast<double>(ctx) * static_cast<double>(heads_kv) *
         static_cast<double>(head_dim) * static_cast<double>(kv_dtype_size(dtype));
}

struct KVCache::Seq {
  int64_t window = 0;
  int64_t length = 0;
  int64_t first_page = 0;      // logical index of pages[0]
  std::vector<int32_t> pages;  // physical pages of logical pages first_page, first_page + 1, ...
  std::vector<float> state;    // [layers][state_floats], recurrent mixers only
};

namespace {

void check_config(const KVCacheConfig& c) {
  auto positive = [](int64_t x, const char* name, int64_t max) {
    if (x <= 0 || x > max) throw Error(fmt::format("config.{}: expected 1..{}, given {}", name, max, x));
  };
  positive(c.num_layers, "num_layers", 4096);
  positive(c.heads_kv, "heads_kv", 4096);
  positive(c.head_dim, "head_dim", 256);
  positive(c.page_size, "page_size", 1 << 16);
  if (c.state_floats < 0 || c.state_floats > (int64_t{1} << 30)) {
    throw Error(fmt::format("config.state_floats: expected 0..{}, given {}", int64_t{1} << 30, c.state_floats));
  }
  if (c.num_pages != 0 || c.state_floats == 0) {  // a state-only cache has no pages
    positive(c.num_pages, "num_pages", int64_t{1} << 30);
  }
  if (c.dtype > KVDType::int8) {
    throw Error(fmt::format("config.dtype: expected f32, bf16, f16 or int8, given value {}", static_cast<int>(c.dtype)));
  }
  const double bytes = static_cast<double>(c.num_layers) * 2 * static_cast<double>(c.heads_kv) *
                       static_cast<double>(c.page_size) * static_cast<double>(c.head_dim) *
                       static_cast<double>(kv_dtype_size(c.dtype)) * static_cast<double>(c.num_pages);
  if (bytes > static_cast<double>(int64_t{1} << 46)) {
    throw Error(fmt::format("config: a pool of {} pages needs {:.3g} bytes, beyond what attnkit addresses (64 TiB)",
                            c.num_pages, bytes));
  }
}

// write, read and append need the pages that a state-only cache does not have.
void require_pages(const KVCacheConfig& c, const char* fn) {
  if (c.num_pages == 0) {
    throw Error(fmt::format("{}: this cache holds recurrent state only (num_pages = 0), no keys or values", fn));
  }
}

// k or v of write/read: [n, heads_kv, head_dim] on the CPU.
void check_rows(const TensorView& t, const char* name, int64_t heads, int64_t dim, int ndim) {
  if (t.data == nullptr) throw Error(fmt::format("{}: expected a non-null data pointer", name));
  if (t.device != Device::cpu) throw Error(fmt::format("{}: expected a CPU tensor, given {}", name, to_string(t.device)));
  if (t.ndim != ndim) throw Error(fmt::format("{}: expected {} dimensions, given {} ({})", name, ndim, t.ndim, t.describe()));
  for (int i = 0; i < ndim; ++i) {
    if (t.shape[i] <= 0 || t.strides[i] < 0) {
      throw Error(fmt::format("{}: expected positive sizes and non-negative strides, given {}", name, t.describe()));
    }
  }
  if (t.shape[ndim - 2] != heads || t.shape[ndim - 1] != dim) {
    throw Error(fmt::format("{}: expected the last two sizes to be [heads_kv = {}, head_dim = {}], given {}", name,
                            heads, dim, t.describe()));
  }
}

// The view of t with its first dimension fixed at i.
TensorView drop_first(const TensorView& t, int64_t i) {
  TensorView r;
  r.data = static_cast<uint8_t*>(t.data) + i * t.strides[0] * dtype_size(t.dtype);
  r.dtype = t.dtype;
  r.device = t.device;
  r.ndim = t.ndim - 1;
  for (int d = 1; d < t.ndim; ++d) {
    r.shape[d - 1] = t.shape[d];
    r.strides[d - 1] = t.strides[d];
  }
  return r;
}

}  // namespace

void KVCache::PoolFree::operator()(uint8_t* p) const { detail::free_zeroed(p, bytes); }

KVCache::KVCache(const KVCacheConfig& config) : config_(config), pool_(nullptr, PoolFree{}) {
  check_config(config_);
  block_elems_ = config_.page_size * config_.head_dim;
  const int64_t blocks = config_.num_layers * 2 * config_.heads_kv;
  page_bytes_ = blocks * block_elems_ * kv_dtype_size(config_.dtype);
  // Zeroed, on huge pages where the OS offers them; only the pages written become resident.
  // num_pages · page_bytes cannot overflow: check_config bounds the pool's size.
  const size_t pool_bytes = static_cast<size_t>(config_.num_pages) * static_cast<size_t>(page_bytes_);
  pool_ = std::unique_ptr<uint8_t[], PoolFree>(static_cast<uint8_t*>(detail::allocate_zeroed(pool_bytes)),
                                               PoolFree{pool_bytes});
  if (!pool_) {
    throw Error(fmt::format("config.num_pages: could not allocate {} pages of {} bytes", config_.num_pages, page_bytes_));
  }
  if (config_.dtype == KVDType::int8) scales_.assign(static_cast<size_t>(config_.num_pages * blocks), 0.0f);
  refs_.assign(static_cast<size_t>(config_.num_pages), 0);
  // Ascending order is already a heap under std::greater: page 0 is taken first.
  free_.resize(static_cast<size_t>(config_.num_pages));
  std::iota(free_.begin(), free_.end(), 0);
}

KVCache::~KVCache() = default;

KVCache::Seq& KVCache::seq_ref(SeqId seq, const char* fn) {
  return const_cast<Seq&>(static_cast<const KVCache*>(this)->seq_ref(seq, fn));
}

const KVCache::Seq& KVCache::seq_ref(SeqId seq, const char* fn) const {
  if (seq < 0 || seq >= static_cast<SeqId>(seqs_.size()) || !seqs_[seq]) {
    throw Error(fmt::format("{}: seq: expected a live sequence id, given {}", fn, seq));
  }
  return *seqs_[seq];
}

bool KVCache::has_sequence(SeqId seq) const {
  return seq >= 0 && seq < static_cast<SeqId>(seqs_.size()) && seqs_[seq] != nullptr;
}
int64_t KVCache::length(SeqId seq) const { return seq_ref(seq, "KVCache::length").length; }
int64_t KVCache::window(SeqId seq) const { return seq_ref(seq, "KVCache::window").window; }
int64_t KVCache::first_page(SeqId seq) const { return seq_ref(seq, "KVCache::first_page").first_page; }
int64_t KVCache::first_position(SeqId seq) const {
  const Seq& s = seq_ref(seq, "KVCache::first_position");
  return std::min(s.length, s.first_page * config_.page_size);
}
std::span<const int32_t> KVCache::page_table(SeqId seq) const { return seq_ref(seq, "KVCache::page_table").pages; }
int64_t KVCache::sequence_pages(SeqId seq) const {
  return static_cast<int64_t>(seq_ref(seq, "KVCache::sequence_pages").pages.size());
}
int64_t KVCache::free_pages() const { return static_cast<int64_t>(free_.size()); }
int64_t KVCache::bytes_in_use() const {
  int64_t live = 0;
  for (const auto& s : seqs_) live += s != nullptr;
  return used_pages() * page_bytes_ + live * config_.num_layers * config_.state_floats * int64_t{4};
}

std::span<float> KVCache::state(SeqId seq, int64_t layer) {
  const std::span<const float> s = static_cast<const KVCache*>(this)->state(seq, layer);
  return {const_cast<float*>(s.data()), s.size()};
}

std::span<const float> KVCache::state(SeqId seq, int64_t layer) const {
  const Seq& s = seq_ref(seq, "KVCache::state");
  if (config_.state_floats == 0) {
    throw Error("KVCache::state: this cache carries no recurrent state (create it with config.state_floats > 0)");
  }
  if (layer < 0 || layer >= config_.num_layers) {
    throw Error(fmt::format("KVCache::state: layer: expected 0..{}, given {}", config_.num_layers - 1, layer));
  }
  return std::span<const float>(s.state).subspan(static_cast<size_t>(layer * config_.state_floats),
                                                 static_cast<size_t>(config_.state_floats));
}
int32_t KVCache::page_refs(int32_t page) const {
  if (page < 0 || page >= config_.num_pages) {
    throw Error(fmt::format("KVCache::page_refs: page: expected 0..{}, given {}", config_.num_pages - 1, page));
  }
  return refs_[page];
}

SeqId KVCache::add_sequence(int64_t window) {
  if (window < 0) throw Error(fmt::format("KVCache::add_sequence: window: expected >= 0 (0 keeps all), given {}", window));
  auto s = std::make_unique<Seq>();
  s->window = window;
  s->state.assign(static_cast<size_t>(config_.num_layers * config_.state_floats), 0.0f);
  seqs_.push_back(std::move(s));
  return static_cast<SeqId>(seqs_.size() - 1);
}

SeqId KVCache::fork(SeqId parent, int64_t prefix_len) {
  const Seq& p = seq_ref(parent, "KVCache::fork");
  if (prefix_len == -1) prefix_len = p.length;
  const int64_t lo = std::min(p.length, p.first_page * config_.page_size);
  if (prefix_len < lo || prefix_len > p.length) {
    throw Error(fmt::format("KVCache::fork: prefix_len: expected -1 or {}..{} (the positions sequence {} holds), given {}",
                            lo, p.length, parent, prefix_len));
  }
  if (config_.state_floats > 0 && prefix_len != p.length) {
    throw Error(fmt::format("KVCache::fork: prefix_len: a sequence with recurrent state forks at its full length {} "
                            "only (the state of an earlier position is not kept), given {}",
                            p.length, prefix_len));
  }
  auto s = std::make_unique<Seq>();
  s->window = p.window;
  s->length = prefix_len;
  s->state = p.state;
  s->first_page = p.first_page;
  const int64_t end_page = (prefix_len + config_.page_size - 1) / config_.page_size;
  const int64_t n = std::clamp<int64_t>(end_page - p.first_page, 0, static_cast<int64_t>(p.pages.size()));
  s->pages.assign(p.pages.begin(), p.pages.begin() + n);
  for (int32_t pg : s->pages) ++refs_[pg];
  seqs_.push_back(std::move(s));
  return static_cast<SeqId>(seqs_.size() - 1);
}

void KVCache::release_page(int32_t page) {
  if (--refs_[page] != 0) return;
  free_.push_back(page);
  std::push_heap(free_.begin(), free_.end(), std::greater<>());
}

// The lowest free page, so that a sequence's pages ascend in the pool even after other
// sequences came and went: a decode kernel that streams them then walks up through memory and
// touches few address-translation pages at a time (a stack would hand pages back in the order
// they were freed, scattered over the pool; lab/cuda_decode/NOTES.md, 06 and 21).
int32_t KVCache::take_page() {
  std::pop_heap(free_.begin(), free_.end(), std::greater<>());
  const int32_t p = free_.back();
  free_.pop_back();
  refs_[p] = 1;
  if (config_.dtype == KVDType::int8) {
    const int64_t blocks = config_.num_layers * 2 * config_.heads_kv;
    std::fill_n(scales_.begin() + p * blocks, blocks, 0.0f);
  }
  return p;
}

void KVCache::copy_page(int32_t from, int32_t to) {
  std::memcpy(pool_.get() + to * page_bytes_, pool_.get() + from * page_bytes_, static_cast<size_t>(page_bytes_));
  if (config_.dtype == KVDType::int8) {
    const int64_t blocks = config_.num_layers * 2 * config_.heads_kv;
    std::copy_n(scales_.begin() + from * blocks, blocks, scales_.begin() + to * blocks);
  }
}

void KVCache::remove_sequence(SeqId seq) {
  Seq& s = seq_ref(seq, "KVCache::remove_sequence");
  for (int32_t p : s.pages) release_page(p);
  seqs_[seq].reset();
}

void KVCache::truncate(SeqId seq, int64_t len) {
  Seq& s = seq_ref(seq, "KVCache::truncate");
  const int64_t lo = std::min(s.length, s.first_page * config_.page_size);
  if (len < lo || len > s.length) {
    throw Error(fmt::format("KVCache::truncate: len: expected {}..{} (the positions sequence {} holds), given {}", lo,
                            s.length, seq, len));
  }
  if (config_.state_floats > 0 && len != s.length) {
    if (len != 0) {
      throw Error(fmt::format("KVCache::truncate: len: a sequence with recurrent state truncates to its length {} or "
                              "to 0 only (the state of an earlier position is not kept), given {}",
                              s.length, len));
    }
    std::fill(s.state.begin(), s.state.end(), 0.0f);
  }
  const int64_t keep = std::max<int64_t>(0, (len + config_.page_size - 1) / config_.page_size - s.first_page);
  while (static_cast<int64_t>(s.pages.size()) > keep) {
    release_page(s.pages.back());
    s.pages.pop_back();
  }
  s.length = len;
}

int64_t KVCache::grow(SeqId seq, int64_t n) {
  Seq& s = seq_ref(seq, "KVCache::grow");
  if (n < 0) throw Error(fmt::format("KVCache::grow: n: expected >= 0, given {}", n));
  const int64_t ps = config_.page_size;
  const int64_t len = s.length, new_len = len + n;
  if (n == 0) return len;
  if (config_.num_pages == 0) {  // state only: positions are counted, nothing is stored
    s.length = new_len;
    return len;
  }
  const int64_t cur_end = s.first_page + static_cast<int64_t>(s.pages.size());
  const int64_t new_end = (new_len + ps - 1) / ps;
  // Window: the first new query (position len) sees keys > len − window.
  int64_t evict = 0;  // pages at the front that no query can see any more
  if (s.window > 0) {
    const int64_t keep_from = std::max<int64_t>(0, len - s.window + 1);
    evict = std::clamp<int64_t>(keep_from / ps - s.first_page, 0, static_cast<int64_t>(s.pages.size()));
  }
  int64_t freed = 0;
  for (int64_t i = 0; i < evict; ++i) freed += refs_[s.pages[i]] == 1;
  // Copy on write: the partly filled last page receives new rows.
  const bool cow = len % ps != 0 && len / ps >= s.first_page + evict && len / ps < cur_end &&
                   refs_[s.pages[len / ps - s.first_page]] > 1;
  const int64_t need = std::max<int64_t>(0, new_end - std::max(cur_end, s.first_page + evict)) + (cow ? 1 : 0);
  if (need > free_pages() + freed) {
    throw Error(fmt::format("KVCache::grow: the page pool is exhausted: sequence {} needs {} more pages of {} tokens "
                            "to grow from {} to {} positions, {} of {} pages are free; remove or truncate "
                            "sequences, or create the cache with more pages",
                            seq, need, ps, len, new_len, free_pages() + freed, config_.num_pages));
  }
  for (int64_t i = 0; i < evict; ++i) release_page(s.pages[i]);
  s.pages.erase(s.pages.begin(), s.pages.begin() + evict);
  s.first_page += evict;
  if (s.pages.empty()) s.first_page = std::max(s.first_page, len / ps);
  if (cow) {
    int32_t& slot = s.pages[len / ps - s.first_page];
    const int32_t fresh = take_page();
    copy_page(slot, fresh);
    release_page(slot);
    slot = fresh;
  }
  while (s.first_page + static_cast<int64_t>(s.pages.size()) < new_end) s.pages.push_back(take_page());
  s.length = new_len;
  return len;
}

void* KVCache::block_mut(int32_t page, int64_t layer, int kv, int64_t head) {
  return const_cast<void*>(block(page, layer, kv, head));
}

const void* KVCache::block(int32_t page, int64_t layer, int kv, int64_t head) const {
  const int64_t index = (layer * 2 + kv) * config_.heads_kv + head;
  return pool_.get() + page * page_bytes_ + index * block_elems_ * kv_dtype_size(config_.dtype);
}

float KVCache::block_scale(int32_t page, int64_t layer, int kv, int64_t head) const {
  if (config_.dtype != KVDType::int8) return 1.0f;
  return scales_[((page * config_.num_layers + layer) * 2 + kv) * config_.heads_kv + head];
}

float* KVCache::scale_mut(int32_t page, int64_t layer, int kv, int64_t head) {
  return &scales_[((page * config_.num_layers + layer) * 2 + kv) * config_.heads_kv + head];
}

void KVCache::store_row(int32_t page, int64_t layer, int kv, int64_t head, int64_t slot, const float* x) {
  const int64_t D = config_.head_dim;
  void* blk = block_mut(page, layer, kv, head);
  switch (config_.dtype) {
    case KVDType::f32: std::memcpy(static_cast<float*>(blk) + slot * D, x, D * sizeof(float)); return;
    case KVDType::bf16:
      for (int64_t d = 0; d < D; ++d) static_cast<bf16*>(blk)[slot * D + d] = to_bf16(x[d]);
      return;
    case KVDType::f16:
      for (int64_t d = 0; d < D; ++d) static_cast<f16*>(blk)[slot * D + d] = to_f16(x[d]);
      return;
    case KVDType::int8: {
      auto* q = static_cast<int8_t*>(blk);
      float& scale = *scale_mut(page, layer, kv, head);
      float amax = 0.0f;
      for (int64_t d = 0; d < D; ++d) amax = std::max(amax, std::fabs(x[d]));
      if (amax > scale * 127.0f) {  // raise the block's scale and requantize the rows it holds
        const float next = amax / 127.0f;
        if (scale > 0) {
          const float ratio = scale / next;
          for (int64_t e = 0; e < block_elems_; ++e) q[e] = static_cast<int8_t>(std::lrint(q[e] * ratio));
        }
        scale = next;
      }
      const float inv = scale > 0 ? 1.0f / scale : 0.0f;
      for (int64_t d = 0; d < D; ++d) {
        q[slot * D + d] = static_cast<int8_t>(std::clamp<long>(std::lrint(x[d] * inv), -127, 127));
      }
      return;
    }
  }
}

void KVCache::load_row(int32_t page, int64_t layer, int kv, int64_t head, int64_t slot, float* x) const {
  const int64_t D = config_.head_dim;
  const void* blk = block(page, layer, kv, head);
  switch (config_.dtype) {
    case KVDType::f32: std::memcpy(x, static_cast<const float*>(blk) + slot * D, D * sizeof(float)); return;
    case KVDType::bf16:
      for (int64_t d = 0; d < D; ++d) x[d] = to_float(static_cast<const bf16*>(blk)[slot * D + d]);
      return;
    case KVDType::f16:
      for (int64_t d = 0; d < D; ++d) x[d] = to_float(static_cast<const f16*>(blk)[slot * D + d]);
      return;
    case KVDType::int8: {
      const float scale = block_scale(page, layer, kv, head);
      for (int64_t d = 0; d < D; ++d) x[d] = static_cast<const int8_t*>(blk)[slot * D + d] * scale;
      return;
    }
  }
}

void KVCache::write(SeqId seq, int64_t layer, int64_t pos, const TensorView& k, const TensorView& v) {
  const Seq& s = seq_ref(seq, "KVCache::write");
  require_pages(config_, "KVCache::write");
  const int64_t H = config_.heads_kv, D = config_.head_dim, ps = config_.page_size;
  if (layer < 0 || layer >= config_.num_layers) {
    throw Error(fmt::format("KVCache::write: layer: expected 0..{}, given {}", config_.num_layers - 1, layer));
  }
  check_rows(k, "k", H, D, 3);
  check_rows(v, "v", H, D, 3);
  const int64_t n = k.shape[0];
  if (v.shape[0] != n) throw Error(fmt::format("v: expected {} rows like k, given {}", n, v.describe()));
  const int64_t lo = std::min(s.length, s.first_page * ps);
  if (pos < lo || pos + n > s.length) {
    throw Error(fmt::format("KVCache::write: pos: expected positions [pos, pos + {}) inside [{}, {}) that sequence {} "
                            "holds (grow it first), given pos {}",
                            n, lo, s.length, seq, pos));
  }
  for (int64_t pg = pos / ps; pg <= (pos + n - 1) / ps; ++pg) {
    if (refs_[s.pages[pg - s.first_page]] > 1) {
      throw Error(fmt::format("KVCache::write: pos: position range [{}, {}) reaches page {} that sequence {} shares "
                              "with another sequence; only positions returned by grow() may be written",
                              pos, pos + n, pg, seq));
    }
  }
  std::vector<float> row(static_cast<size_t>(D));
  for (int kv = 0; kv < 2; ++kv) {
    const TensorView& t = kv == 0 ? k : v;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t p = pos + i;
      const int32_t page = s.pages[p / ps - s.first_page];
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t d = 0; d < D; ++d) row[d] = load_f32(t, i * t.strides[0] + h * t.strides[1] + d * t.strides[2]);
        store_row(page, layer, kv, h, p % ps, row.data());
      }
    }
  }
}

int64_t KVCache::append(SeqId seq, const TensorView& k, const TensorView& v) {
  seq_ref(seq, "KVCache::append");
  require_pages(config_, "KVCache::append");
  check_rows(k, "k", config_.heads_kv, config_.head_dim, 4);
  check_rows(v, "v", config_.heads_kv, config_.head_dim, 4);
  if (k.shape[0] != config_.num_layers || v.shape[0] != config_.num_layers || v.shape[1] != k.shape[1]) {
    throw Error(fmt::format("KVCache::append: k, v: expected [num_layers = {}, n, {}, {}] each, given {} and {}",
                            config_.num_layers, config_.heads_kv, config_.head_dim, k.describe(), v.describe()));
  }
  const int64_t pos = grow(seq, k.shape[1]);
  for (int64_t l = 0; l < config_.num_layers; ++l) write(seq, l, pos, drop_first(k, l), drop_first(v, l));
  return pos;
}

void KVCache::read(SeqId seq, int64_t layer, int64_t pos, const TensorView& k, const TensorView& v) const {
  const Seq& s = seq_ref(seq, "KVCache::read");
  require_pages(config_, "KVCache::read");
  const int64_t H = config_.heads_kv, D = config_.head_dim, ps = config_.page_size;
  if (layer < 0 || layer >= config_.num_layers) {
    throw Error(fmt::format("KVCache::read: layer: expected 0..{}, given {}", config_.num_layers - 1, layer));
  }
  check_rows(k, "k", H, D, 3);
  check_rows(v, "v", H, D, 3);
  const int64_t n = k.shape[0];
  if (v.shape[0] != n) throw Error(fmt::format("v: expected {} rows like k, given {}", n, v.describe()));
  const int64_t lo = std::min(s.length, s.first_page * ps);
  if (pos < lo || pos + n > s.length) {
    throw Error(fmt::format("KVCache::read: pos: expected positions [pos, pos + {}) inside [{}, {}) that sequence {} "
                            "holds, given pos {}",
                            n, lo, s.length, seq, pos));
  }
  std::vector<float> row(static_cast<size_t>(D));
  for (int kv = 0; kv < 2; ++kv) {
    const TensorView& t = kv == 0 ? k : v;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t p = pos + i;
      for (int64_t h = 0; h < H; ++h) {
        load_row(s.pages[p / ps - s.first_page], layer, kv, h, p % ps, row.data());
        for (int64_t d = 0; d < D; ++d) store_f32(t, i * t.strides[0] + h * t.strides[1] + d * t.strides[2], row[d]);
      }
    }
  }
}

}  // namespace attnkit
