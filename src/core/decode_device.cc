// Decode attention against a GPU cache (PagedKVView, kv_cache.h), host side: every argument
// check before any device work, the partition of the plan's keys into warp work items
// (cuda/decode_params.h), the kernel parameters, and the launch. Compiled in every build;
// without the CUDA backend the entry points throw attnkit::Error.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "attnkit/attention.h"
#include "attnkit/error.h"
#include "attnkit/kv_cache.h"
#include "core/checks.h"
#include "core/decode_device.h"
#ifdef ATTNKIT_HAS_CUDA
#include "cuda/decode_params.h"
#include "cuda/flash_params.h"
#endif

namespace attnkit {
namespace {

constexpr int64_t kMaxPosition = (int64_t{1} << 31) - 64;  // key positions travel as int32
// Below this many bytes of K and V a call is bound by the latency of its warps' fetches, not by
// bandwidth (an H100 reads 48 MB in about 16 µs): see shape_of.
constexpr double kSmallDecodeBytes = 48e6;

DType dtype_of(KVDType t) { return t == KVDType::f16 ? DType::f16 : DType::bf16; }

// The view's geometry and the plan, against each other: pure host checks.
void check_geometry(const PagedKVView& kv, const DecodePlan& plan, const char* fn) {
  const KVCacheConfig& c = kv.config;
  if (c.dtype != KVDType::bf16 && c.dtype != KVDType::f16) {
    throw Error(fmt::format("{}: kv.config.dtype: GPU decode takes bf16 or f16 pages, given {}", fn, to_string(c.dtype)));
  }
  if (c.head_dim != 64 && c.head_dim != 128 && c.head_dim != 256) {
    throw Error(fmt::format("{}: kv.config.head_dim: GPU decode takes 64, 128 or 256, given {}", fn, c.head_dim));
  }
  if (c.page_size <= 0 || c.page_size % 16 != 0) {
    throw Error(fmt::format("{}: kv.config.page_size: GPU decode reads 16 keys at a time from one page, so it takes "
                            "a positive multiple of 16, given {}",
                            fn, c.page_size));
  }
  if (c.num_layers <= 0 || c.heads_kv <= 0 || c.num_pages <= 0 || c.num_pages > INT32_MAX || c.heads_kv > 4096) {
    throw Error(fmt::format("{}: kv.config: expected num_layers >= 1, 1 <= heads_kv <= 4096 and 1 <= num_pages < 2^31, "
                            "given {}, {} and {}",
                            fn, c.num_layers, c.heads_kv, c.num_pages));
  }
  if (kv.pages == nullptr || kv.page_table == nullptr) {
    throw Error(fmt::format("{}: kv.pages, kv.page_table: expected non-null device pointers", fn));
  }
  if (reinterpret_cast<uintptr_t>(kv.pages) % 16 != 0) {
    throw Error(fmt::format("{}: kv.pages: expected 16-byte aligned device memory (16-byte copies), given {}", fn,
                            kv.pages));
  }
  const int64_t S = static_cast<int64_t>(plan.ranges.size()), nq = plan.queries_per_seq;
  if (S == 0 || S > kMaxCudaDecodeSeqs) {
    throw Error(fmt::format("{}: plan: expected 1..{} sequences, given {}", fn, kMaxCudaDecodeSeqs, S));
  }
  if (plan.heads_kv != c.heads_kv || plan.head_dim != c.head_dim || plan.page_size != c.page_size) {
    throw Error(fmt::format("{}: plan: expected heads_kv {}, head_dim {}, page_size {} of kv.config, given a plan for "
                            "{}, {}, {}",
                            fn, c.heads_kv, c.head_dim, c.page_size, plan.heads_kv, plan.head_dim, plan.page_size));
  }
  if (nq <= 0 || plan.heads_q <= 0 || plan.heads_q % plan.heads_kv != 0 || plan.heads_q > 65536) {
    throw Error(fmt::format("{}: plan: expected queries_per_seq >= 1 and heads_q a multiple of heads_kv {}, given {} "
                            "and {}",
                            fn, c.heads_kv, nq, plan.heads_q));
  }
  int64_t pages_needed = 0;
  for (int64_t s = 0; s < S; ++s) {
    const DecodeRange& r = plan.ranges[s];
    if (r.key_end < nq || r.key_end > kMaxPosition || r.key_begin < 0 || r.key_begin > r.key_end - nq ||
        r.window < 0 || r.window > kMaxPosition) {
      throw Error(fmt::format("{}: plan.ranges[{}]: expected 0 <= key_begin <= key_end − queries_per_seq ({}), "
                              "key_end < 2^31 and window >= 0, given keys [{}, {}), window {}",
                              fn, s, nq, r.key_begin, r.key_end, r.window));
    }
    pages_needed = std::max(pages_needed, (r.key_end - 1) / c.page_size + 1);
  }
  if (kv.table_stride < pages_needed) {
    throw Error(fmt::format("{}: kv.table_stride: the plan's longest range reaches logical page {}, so a page-table "
                            "row needs at least {} entries, given {}",
                            fn, pages_needed - 1, pages_needed, kv.table_stride));
  }
}

void check_tuning(const CudaDecodeTuning& t) {
  if (t.warps < 0 || t.warps > 8 || (t.stages != 0 && (t.stages < 2 || t.stages > 4)) || t.chunk_keys < 0 ||
      t.chunk_keys % 16 != 0 || (t.l2_prefetch != -1 && t.l2_prefetch != 0 && t.l2_prefetch != 128 &&
                                 t.l2_prefetch != 256) || t.head_warps < -1 || t.head_warps > 1 || t.ctas_per_sm < 0 ||
      t.early_refill < -1 || t.early_refill > 1) {
    throw Error(fmt::format("tuning: expected warps 0..8, stages 0 or 2..4, chunk_keys a multiple of 16 (0: "
                            "automatic), l2_prefetch -1, 0, 128 or 256, head_warps -1..1, ctas_per_sm >= 0 and "
                            "early_refill -1..1, given {}, {}, {}, {}, {}, {} and {}",
                            t.warps, t.stages, t.chunk_keys, t.l2_prefetch, t.head_warps, t.ctas_per_sm,
                            t.early_refill));
  }
}

#ifdef ATTNKIT_HAS_CUDA
void check_device_present(const char* fn) {
  if (!cuda::device_available()) {
    throw Error(fmt::format("{}: a PagedKVView needs a CUDA device of compute capability 9.x, and none is present", fn));
  }
}

void check_on_device(const void* p, const char* name) {
  if (p == nullptr) return;
  switch (cuda::pointer_location(p)) {
    case 1: return;
    case -1: throw Error(fmt::format("{}: expected memory of the current CUDA device, given another device's", name));
    case -2: throw Error(fmt::format("{}: no usable CUDA device to check the pointer against", name));
    default:
      throw Error(fmt::format("{}: expected device memory (cudaMalloc or managed), given host memory or an address "
                              "CUDA does not know ({})",
                              name, p));
  }
}

// The launch for a plan. Automatic choices, from measurements on an H100 (docs/benchmarks.md):
// 4 warps a CTA (fewer when the longest sequence has fewer chunks, so that no CTA holds idle
// warps' shared memory), 2 pipeline stages, and the shortest chunks whose CTAs are all resident
// at once, each warp refilling a stage after its next block has arrived. When that still
// spreads a sequence over several CTAs (few long sequences), a merge kernel follows, and one CTA
// per multiprocessor with a 256-byte L2 prefetch measured faster than two or three CTAs with
// more, smaller chunks; with one warp per scheduler there, 2 stages refilled as soon as read
// beat 3 refilled late (lab/cuda_decode 32: 4 × 65536 keys 357 → 352 µs in physical order).
CudaDecodeShape shape_of(const PagedKVView& kv, const DecodePlan& plan, const CudaDecodeTuning& tuning) {
  const KVCacheConfig& c = kv.config;
  const int64_t S = static_cast<int64_t>(plan.ranges.size()), nq = plan.queries_per_seq;
  const int64_t G = plan.heads_q / plan.heads_kv, R = nq * G;
  std::vector<int64_t> blocks(static_cast<size_t>(S));
  int64_t longest = 1;
  for (int64_t s = 0; s < S; ++s) {
    blocks[s] = cuda::decode_blocks(plan.ranges[s].key_begin, plan.ranges[s].key_end);
    longest = std::max(longest, blocks[s]);
  }
  const bool bf16 = c.dtype == KVDType::bf16;
  CudaDecodeShape sh;
  sh.rows_per_item = R <= 8 || c.head_dim == 256 ? 8 : 16;
  sh.row_tiles = static_cast<int>((R + sh.rows_per_item - 1) / sh.rows_per_item);
  sh.head_warps = tuning.head_warps >= 0 ? tuning.head_warps : 0;
  int per_cta = 1;  // chunks per CTA
  // Partition with `stages` and at most `cap` CTAs per multiprocessor (0: as many as fit).
  auto partition = [&](int stages, int cap) {
    sh.stages = stages;
    for (int warps : {4, 2, 1}) {
      sh.warps = tuning.warps > 0 ? tuning.warps : warps;
      sh.units = (sh.head_warps ? (c.heads_kv + sh.warps - 1) / sh.warps : c.heads_kv) * sh.row_tiles;
      per_cta = sh.head_warps ? 1 : sh.warps;
      int per_sm = cuda::decode_ctas_per_sm(bf16, static_cast<int>(c.head_dim), sh.rows_per_item, sh.warps, stages);
      if (per_sm <= 0) {
        throw Error(fmt::format("tuning: {} warps × {} stages of head_dim {} do not fit in one multiprocessor's "
                                "shared memory",
                                sh.warps, stages, c.head_dim));
      }
      if (cap > 0) per_sm = std::min(per_sm, cap);
      const int64_t cta_slots = int64_t{cuda::current_device_sms()} * per_sm;
      sh.chunk_blocks = cuda::decode_chunk_blocks(blocks.data(), static_cast<int>(S), sh.units, cta_slots, per_cta,
                                                  tuning.chunk_keys / 16);
      sh.max_splits = (longest + sh.chunk_blocks - 1) / sh.chunk_blocks;
      if (tuning.warps > 0 || sh.head_warps || sh.max_splits >= sh.warps) break;
    }
  };
  sh.l2_prefetch = tuning.l2_prefetch >= 0 ? tuning.l2_prefetch : 0;
  sh.early_refill = tuning.early_refill > 0 ? 1 : 0;
  partition(tuning.stages > 0 ? tuning.stages : 2, tuning.ctas_per_sm);
  // Every choice automatic but (maybe) the chunk length; all of them.
  const bool free_launch = tuning.warps == 0 && tuning.stages == 0 && tuning.l2_prefetch < 0 && tuning.head_warps <= 0 &&
                           tuning.ctas_per_sm == 0 && tuning.early_refill < 0;
  const bool automatic = free_launch && tuning.chunk_keys == 0;
  if (sh.max_splits > per_cta && free_launch) {
    // Few long sequences: one CTA per multiprocessor, if that still gives every CTA 4 chunks.
    const CudaDecodeShape two = sh;
    const int two_per_cta = per_cta;
    partition(2, 1);
    sh.l2_prefetch = 256;
    sh.early_refill = 1;
    if (sh.warps != 4 || sh.max_splits < 4 ||
        cuda::decode_ctas(blocks.data(), static_cast<int>(S), sh.units, sh.chunk_blocks, per_cta) >
            cuda::current_device_sms()) {
      sh = two;
      per_cta = two_per_cta;
    }
  }
  // Small batches of short contexts (lab/cuda_decode 11): the chunks above are at least 256
  // keys, so a warp streams 16 blocks one after another and the call takes the latency of 16
  // dependent fetches (27 µs for one sequence of 256 keys) while most of the GPU idles. Below
  // kSmallDecodeBytes of K and V, chunks of 128, 64 or 32 keys are taken instead, the shortest
  // that keeps every warp of the call resident (8 a multiprocessor), at most 64 chunks a
  // sequence and every CTA of 4 warps × 2 stages resident: 2.6× faster at 1 × 256 keys, 1.5–2×
  // at 1 × 4096 and 32 × 256.
  int64_t total_blocks = 0;
  for (int64_t b : blocks) total_blocks += b;
  const double kv_bytes = 2.0 * static_cast<double>(total_blocks) * 16 * c.heads_kv * c.head_dim * 2;  // bf16/f16
  if (automatic && !sh.head_warps && sh.chunk_blocks <= cuda::kDecodeMinChunkBlocks && kv_bytes < kSmallDecodeBytes) {
    const int64_t sms = cuda::current_device_sms();
    const int per_sm = cuda::decode_ctas_per_sm(bf16, static_cast<int>(c.head_dim), sh.rows_per_item, 4, 2);
    for (int64_t chunk : {2, 4, 8}) {
      if (chunk >= sh.chunk_blocks) break;
      int64_t warps_total = 0;
      for (int64_t b : blocks) warps_total += sh.units * ((b + chunk - 1) / chunk);
      const int64_t splits = (longest + chunk - 1) / chunk;
      if (per_sm <= 0 || splits > 64 || warps_total > 8 * sms ||
          cuda::decode_ctas(blocks.data(), static_cast<int>(S), sh.units, chunk, 4) > per_sm * sms) {
        continue;
      }
      sh.warps = 4;
      sh.stages = 2;
      sh.l2_prefetch = 0;
      sh.early_refill = 0;
      sh.chunk_blocks = chunk;
      sh.max_splits = splits;
      per_cta = 4;
      break;
    }
  }
  sh.chunk_groups = (sh.max_splits + per_cta - 1) / per_cta;
  if (sh.chunk_groups > 65535) {
    throw Error(fmt::format("tuning: chunks of {} keys cut the longest range into {} CTAs per head, beyond the grid's "
                            "65535",
                            sh.chunk_blocks * 16, sh.chunk_groups));
  }
  sh.ctas = cuda::decode_ctas(blocks.data(), static_cast<int>(S), sh.units, sh.chunk_blocks, per_cta);
  if (sh.max_splits > per_cta) {  // some sequence spans several CTAs: partial results
    const int64_t rows = S * sh.max_splits * nq * plan.heads_q;
    sh.workspace_bytes = (rows * c.head_dim * 4 + 255) / 256 * 256 + rows * 4;
  }
  return sh;
}
#endif

}  // namespace

CudaDecodeShape cuda_decode_shape(const PagedKVView& kv, const DecodePlan& plan, const CudaDecodeTuning& tuning) {
  check_geometry(kv, plan, "decode_workspace_bytes");
  check_tuning(tuning);
#ifdef ATTNKIT_HAS_CUDA
  check_device_present("decode_workspace_bytes");
  return shape_of(kv, plan, tuning);
#else
  throw Error("decode_workspace_bytes: a PagedKVView needs a build with the CUDA backend");
#endif
}

int64_t decode_workspace_bytes(const PagedKVView& kv, const DecodePlan& plan) {
  return cuda_decode_shape(kv, plan, {}).workspace_bytes;
}

void run_decode_cuda(const PagedKVView& kv, const DecodePlan& plan, int64_t layer, const TensorView& q,
                     const TensorView& out, const DecodeParams& params, const TensorView& lse,
                     const CudaDecodeTuning& tuning) {
  check_geometry(kv, plan, "run_decode");
  check_tuning(tuning);
  const KVCacheConfig& c = kv.config;
  if (layer < 0 || layer >= c.num_layers) {
    throw Error(fmt::format("run_decode: layer: expected 0..{}, given {}", c.num_layers - 1, layer));
  }
  const int64_t S = static_cast<int64_t>(plan.ranges.size()), nq = plan.queries_per_seq, Hq = plan.heads_q;
  const DType dt = dtype_of(c.dtype);
  for (auto [t, name] : {std::pair{&q, "q"}, std::pair{&out, "out"}}) {
    check_view(*t, name, 4, false);
    if (t->device != Device::cuda) {
      throw Error(fmt::format("{}: expected a CUDA tensor (the cache is a PagedKVView in device memory), given a {} "
                              "tensor",
                              name, to_string(t->device)));
    }
    check_dtype(*t, name, dt, "the dtype of the pages");
    check_shape(*t, name, {S, nq, Hq, c.head_dim}, "[num_seqs, queries_per_seq, heads_q, head_dim] of the plan");
  }
  check_no_self_overlap(out, "out");
  check_disjoint(out, "out", q, "q");
  if (!lse.empty()) {
    check_view(lse, "lse", 3, false);
    if (lse.device != Device::cuda) {
      throw Error(fmt::format("lse: expected a CUDA tensor, given a {} tensor", to_string(lse.device)));
    }
    check_dtype(lse, "lse", DType::f32, "log-sum-exp");
    check_shape(lse, "lse", {S, Hq, nq}, "[num_seqs, heads_q, queries_per_seq]");
    check_no_self_overlap(lse, "lse");
    check_disjoint(lse, "lse", q, "q");
    check_disjoint(lse, "lse", out, "out");
  }
  if (params.scale && !(std::isfinite(*params.scale) && *params.scale > 0)) {
    throw Error(fmt::format("params.scale: expected a finite positive number, given {}", *params.scale));
  }
  if (!(std::isfinite(params.softcap) && params.softcap >= 0)) {
    throw Error(fmt::format("params.softcap: expected a finite number >= 0 (0 turns it off), given {}", params.softcap));
  }
#ifdef ATTNKIT_HAS_CUDA
  check_device_present("run_decode");
  const CudaDecodeShape sh = shape_of(kv, plan, tuning);
  if (sh.workspace_bytes > 0) {
    if (params.workspace == nullptr || params.workspace_bytes < sh.workspace_bytes) {
      throw Error(fmt::format("params.workspace: this plan splits sequences and needs {} bytes of device workspace "
                              "(decode_workspace_bytes(kv, plan)), given {} bytes at {}",
                              sh.workspace_bytes, params.workspace_bytes, params.workspace));
    }
    if (reinterpret_cast<uintptr_t>(params.workspace) % 16 != 0) {
      throw Error(fmt::format("params.workspace: expected 16-byte aligned device memory, given {}", params.workspace));
    }
  }
  check_on_device(kv.pages, "kv.pages");
  check_on_device(kv.page_table, "kv.page_table");
  check_on_device(q.data, "q");
  check_on_device(out.data, "out");
  check_on_device(lse.data, "lse");
  if (sh.workspace_bytes > 0) check_on_device(params.workspace, "params.workspace");

  static_assert(cuda::kMaxDecodeSeqs == kMaxCudaDecodeSeqs);
  cuda::DecodeKernelParams p{};
  p.pages = kv.pages;
  p.table = kv.page_table;
  p.table_stride = kv.table_stride;
  const int64_t block = c.page_size * c.head_dim;  // elements of one (layer, K/V, head) block
  p.page_elems = c.num_layers * 2 * c.heads_kv * block;
  p.head_off = layer * 2 * c.heads_kv * block;
  p.kv_off = c.heads_kv * block;
  p.num_pages = static_cast<int>(c.num_pages);
  p.page_size = static_cast<int>(c.page_size);
  p.q = q.data;
  p.out = out.data;
  p.lse = static_cast<float*>(lse.data);
  for (int i = 0; i < 4; ++i) {
    p.q_s[i] = q.strides[i];
    p.o_s[i] = out.strides[i];
  }
  for (int i = 0; i < 3; ++i) p.lse_s[i] = lse.empty() ? 0 : lse.strides[i];
  if (sh.workspace_bytes > 0) {
    const int64_t rows = S * sh.max_splits * nq * Hq;
    p.part_o = static_cast<float*>(params.workspace);
    p.part_lse = reinterpret_cast<float*>(static_cast<char*>(params.workspace) + (rows * c.head_dim * 4 + 255) / 256 * 256);
  }
  p.num_seqs = static_cast<int>(S);
  p.nq = static_cast<int>(nq);
  p.heads_q = static_cast<int>(Hq);
  p.heads_kv = static_cast<int>(c.heads_kv);
  p.group = static_cast<int>(Hq / c.heads_kv);
  p.rows = static_cast<int>(nq * p.group);
  p.row_tiles = sh.row_tiles;
  p.chunk_blocks = static_cast<int>(sh.chunk_blocks);
  p.max_splits = static_cast<int>(sh.max_splits);
  p.warps = sh.warps;
  p.stages = sh.stages;
  p.prefetch = sh.l2_prefetch / 128;
  p.head_warps = sh.head_warps;
  p.early_refill = sh.early_refill;
  p.scale = params.scale ? *params.scale : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  p.scale_log2 = p.scale * 1.44269504088896340736f;
  p.softcap = params.softcap;
  for (int64_t s = 0; s < S; ++s) {
    p.key_begin[s] = static_cast<int>(plan.ranges[s].key_begin);
    p.key_end[s] = static_cast<int>(plan.ranges[s].key_end);
    p.window[s] = static_cast<int>(plan.ranges[s].window);
  }
  cuda::launch_decode(p, c.dtype == KVDType::bf16, static_cast<int>(c.head_dim), sh.rows_per_item,
                      static_cast<int>(sh.units), static_cast<int>(sh.chunk_groups), sh.workspace_bytes > 0,
                      params.stream);
#else
  throw Error("run_decode: a PagedKVView needs a build with the CUDA backend");
#endif
}

void run_decode(const PagedKVView& kv, const DecodePlan& plan, int64_t layer, const TensorView& q,
                const TensorView& out, const DecodeParams& params, const TensorView& lse) {
  run_decode_cuda(kv, plan, layer, q, out, params, lse, {});
}

}  // namespace attnkit
