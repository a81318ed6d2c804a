// A C entry point to attnkit's GPU decode (PagedKVView) for bench_cuda_decode.py (ctypes), so
// that ours, torch's SDPA backends and a device copy run in one process on device memory that
// torch allocates. A handle holds the view, the plan and the launch shape (0 = automatic), as a
// serving loop would between steps. Functions returning int give 0, or 1 with the message in err.
#include <cstdio>
#include <exception>
#include <memory>
#include <vector>

#include "attnkit/attnkit.h"
#include "core/decode_device.h"

namespace {

struct Handle {
  attnkit::PagedKVView kv;
  attnkit::DecodePlan plan;
  attnkit::CudaDecodeTuning tuning;
  attnkit::DType dtype;
};

template <typename F>
int guarded(char* err, int err_len, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(err, err_len, "%s", e.what());
    return 1;
  }
}

}  // namespace

extern "C" {

// pages [num_pages][layers][2][hkv][ps][d], table [num_seqs][stride] int32 (device); key ranges
// of each sequence on the host; nq queries per sequence, hq query heads.
void* ak_decode_new(const void* pages, const int32_t* table, long long stride, long long num_pages, int layers,
                    int hkv, int d, int ps, int is_f16, int num_seqs, const long long* key_begin,
                    const long long* key_end, int nq, int hq, int warps, int stages, long long chunk_keys, int l2_prefetch,
                    int head_warps, int ctas_per_sm, int early_refill, char* err, int err_len) {
  auto h = std::make_unique<Handle>();
  const int rc = guarded(err, err_len, [&] {
    attnkit::KVCacheConfig c{.num_layers = layers, .heads_kv = hkv, .head_dim = d, .page_size = ps,
                             .num_pages = num_pages,
                             .dtype = is_f16 ? attnkit::KVDType::f16 : attnkit::KVDType::bf16};
    h->kv = {pages, table, stride, c};
    std::vector<attnkit::DecodeRange> ranges;
    for (int s = 0; s < num_seqs; ++s) ranges.push_back({key_begin[s], key_end[s], 0});
    h->plan = attnkit::plan_decode(ranges, nq, hq, hkv, d, ps);
    h->tuning = {warps, stages, chunk_keys, l2_prefetch, head_warps, ctas_per_sm, early_refill};
    h->dtype = is_f16 ? attnkit::DType::f16 : attnkit::DType::bf16;
    attnkit::cuda_decode_shape(h->kv, h->plan, h->tuning);  // checks the tuning once
  });
  return rc == 0 ? h.release() : nullptr;
}

void ak_decode_free(void* handle) { delete static_cast<Handle*>(handle); }

// Workspace bytes (-1 on error); shape[0..10] = warps, stages, rows per item, row tiles, chunk blocks,
// max splits, chunk groups (grid y), CTAs, L2 prefetch bytes, head warps, early refill.
long long ak_decode_shape(void* handle, long long* shape) {
  auto* h = static_cast<Handle*>(handle);
  try {
    const attnkit::CudaDecodeShape s = attnkit::cuda_decode_shape(h->kv, h->plan, h->tuning);
    const long long v[11] = {s.warps,        s.stages, s.rows_per_item, s.row_tiles,  s.chunk_blocks, s.max_splits,
                             s.chunk_groups, s.ctas,   s.l2_prefetch,   s.head_warps, s.early_refill};
    for (int i = 0; i < 11; ++i) shape[i] = v[i];
    return s.workspace_bytes;
  } catch (const std::exception&) {
    return -1;
  }
}

// q, out contiguous [num_seqs, nq, hq, d]; lse [num_seqs, hq, nq] f32 or null.
int ak_decode_run(void* handle, int layer, void* q, void* out, float* lse, void* workspace, long long workspace_bytes,
                  void* stream, char* err, int err_len) {
  auto* h = static_cast<Handle*>(handle);
  return guarded(err, err_len, [&] {
    const int64_t S = static_cast<int64_t>(h->plan.ranges.size()), nq = h->plan.queries_per_seq;
    const int64_t hq = h->plan.heads_q, d = h->plan.head_dim;
    const attnkit::TensorView Q(q, h->dtype, {S, nq, hq, d}, attnkit::Device::cuda);
    const attnkit::TensorView O(out, h->dtype, {S, nq, hq, d}, attnkit::Device::cuda);
    const attnkit::TensorView L =
        lse ? attnkit::TensorView(lse, attnkit::DType::f32, {S, hq, nq}, attnkit::Device::cuda) : attnkit::TensorView();
    attnkit::DecodeParams p;
    p.stream = stream;
    p.workspace = workspace;
    p.workspace_bytes = workspace_bytes;
    attnkit::run_decode_cuda(h->kv, h->plan, layer, Q, O, p, L, h->tuning);
  });
}

}  // extern "C"
