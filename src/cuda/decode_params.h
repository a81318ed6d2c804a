// DecodeParamsT: the one flat POD argument of the GPU decode kernels (decode_sm90.cuh),
// passed by value as a __grid_constant__ parameter, and the host-side partition that sizes the
// launch. C++17 and free of the public headers, for nvcc.
//
// Partition (flash-decoding, split-KV): a sequence's key range is cut into 16-key blocks
// (one m16n8k16 k-step of P·V; a block never crosses a page because page_size % 16 == 0). A
// work item is (sequence, KV head, row tile, chunk of chunk_blocks blocks) and is one warp;
// a CTA holds `warps` consecutive chunks of one (sequence, KV head, row tile), or (head_warps)
// one chunk of `warps` consecutive KV heads:
//   grid = (units = heads_kv · row_tiles, ceil(max_splits / warps), num_seqs)
//   head_warps: (ceil(heads_kv / warps) · row_tiles, max_splits, num_seqs)
// Rows of an item are (query token, query head of the KV head) pairs, 8 or 16 of them (one or
// two n8 tiles of the P·V product). A sequence of at most `warps` chunks is merged inside its
// CTA; a longer one writes partial results
//   part_o   : [num_seqs][max_splits][nq][heads_q][head_dim] f32 (normalized by its own sum)
//   part_lse : [num_seqs][max_splits][nq][heads_q] f32 (natural log)
// that the combine kernel merges by log-sum-exp.
#pragma once

#include <algorithm>
#include <cstdint>

namespace attnkit::cuda {

// Equals attnkit::kMaxCudaDecodeSeqs (checked in decode_device.cc).
constexpr int kMaxDecodeSeqs = 1024;
constexpr int kSmallDecodeSeqs = 64;
constexpr int kDecodeBlockKeys = 16;
constexpr int64_t kDecodeMinChunkBlocks = 16;  // 256 keys: shorter chunks cost more to merge than they gain

// Everything but the per-sequence ranges.
struct DecodeCommonParams {
  const void* pages;
  const int32_t* table;
  int64_t table_stride;
  int64_t page_elems;  // elements of one page
  int64_t head_off;    // elements from a page's start to the K block of (layer, head 0)
  int64_t kv_off;      // elements from a K block to the V block of the same head
  const void* q;
  void* out;
  float* lse;  // may be null
  int64_t q_s[4], o_s[4], lse_s[3];
  float* part_o;
  float* part_lse;
  int num_pages, page_size;
  int num_seqs, nq, heads_q, heads_kv, group;
  int rows, row_tiles;  // rows = nq · group; row_tiles = ceil(rows / rows per item)
  int chunk_blocks, max_splits, warps, stages;
  int prefetch;    // L2 fetch size hint of the cp.async loads: 0 none, 1 128 bytes, 2 256 bytes
  int head_warps;  // 1: a CTA's warps are KV heads of one chunk; 0: chunks of one KV head
  int early_refill;  // 1: a step refills its own stage once read; 0: the previous step's, after waiting
  float scale, scale_log2, softcap;  // softcap 0: off
};

// The kernels' argument: the common part and the key ranges of up to kSeqs sequences. Launches
// of at most kSmallDecodeSeqs sequences pass the small form (0.9 KiB instead of 12 KiB): a large
// parameter block costs device time at a launch that is not hidden behind the kernel before it
// (lab/cuda_decode 09: 12 KiB added 4–5 µs to a 350 µs read of the pool).
template <int kSeqs>
struct DecodeParamsT : DecodeCommonParams {
  int key_begin[kSeqs], key_end[kSeqs], window[kSeqs];
};
using DecodeKernelParams = DecodeParamsT<kMaxDecodeSeqs>;

// 16-key blocks that hold keys [key_begin, key_end) (key_end > key_begin >= 0).
inline int64_t decode_blocks(int64_t key_begin, int64_t key_end) {
  return (key_end - 1) / kDecodeBlockKeys - key_begin / kDecodeBlockKeys + 1;
}

// CTAs of a launch with chunks of `chunk` blocks: per sequence, `units` (CTA rows: KV heads or
// KV-head groups, × row tiles) times its chunks in CTAs of `per_cta` chunks.
inline int64_t decode_ctas(const int64_t* blocks, int n, int64_t units, int64_t chunk, int per_cta) {
  int64_t ctas = 0;
  for (int i = 0; i < n; ++i) ctas += units * (((blocks[i] + chunk - 1) / chunk + per_cta - 1) / per_cta);
  return ctas;
}

// Chunk length in blocks for a batch whose sequences span blocks[0..n) each: the shortest
// chunk (at least kDecodeMinChunkBlocks) for which every CTA is resident at once (at most
// cta_slots), so that all warps stream from start to end in one wave; evened out so that the
// longest sequence's chunks are equal. When even one chunk per sequence needs more CTAs than
// fit, one chunk per sequence. `forced` > 0 overrides (benchmarks, tests).
inline int64_t decode_chunk_blocks(const int64_t* blocks, int n, int64_t units, int64_t cta_slots, int per_cta,
                                   int64_t forced) {
  int64_t longest = 1;
  for (int i = 0; i < n; ++i) longest = std::max(longest, blocks[i]);
  if (forced > 0) return std::min(forced, longest);
  int64_t lo = std::min(kDecodeMinChunkBlocks, longest), hi = longest;
  if (decode_ctas(blocks, n, units, hi, per_cta) > cta_slots) return hi;
  while (lo < hi) {  // the fewest blocks per chunk whose launch fits in one wave
    const int64_t mid = (lo + hi) / 2;
    if (decode_ctas(blocks, n, units, mid, per_cta) <= cta_slots) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  const int64_t splits = (longest + lo - 1) / lo, even = (longest + splits - 1) / splits;
  return decode_ctas(blocks, n, units, even, per_cta) <= cta_slots ? even : lo;
}

// Launchers (decode_sm90.cu). is_bf16 false means f16; row_tile_rows 8 or 16; combine: launch
// the combine kernel after the decode kernel.
void launch_decode(const DecodeKernelParams& p, bool is_bf16, int head_dim, int row_tile_rows, int units,
                   int chunk_groups, bool combine, void* stream);
// CTAs of the decode kernel that fit on one multiprocessor, and the multiprocessors of the
// current device (both cached per device).
int decode_ctas_per_sm(bool is_bf16, int head_dim, int row_tile_rows, int warps, int stages);
int current_device_sms();
// Where a pointer lives, for the checks: 1 device (or managed) memory of the current device,
// 0 host memory, -1 device memory of another device, -2 no usable CUDA device.
int pointer_location(const void* p);

}  // namespace attnkit::cuda
