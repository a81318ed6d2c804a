// GPU decode attention against a paged cache in device memory (PagedKVView), against the float64
// CPU reference on fresh random inputs. The device pool is a copy of a KVCache's pool whose
// unwritten slots and free pages are then poisoned (NaN), and whose page tables interleave the
// sequences' pages; outputs and workspace are poisoned before each call. Ragged batches, page
// boundaries, one and several query tokens (rows beyond one 16-row item), GQA groups 1 to 16,
// bf16 and f16, head_dim 64/128/256, page sizes 16/32/64, windows, softcap, forced splits and
// launch shapes. Argument checks run everywhere; the rest skips where no Hopper GPU is present.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/decode_device.h"
#include "core/problem.h"
#include "cuda/decode_params.h"
#include "reference/attention_ref.h"
#include "test_util.h"

namespace attnkit::test {
namespace {

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x

#define SKIP_WITHOUT_GPU() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device of compute capability 9.x here: CUDA test skipped"

struct DeviceBuffer {
  void* p = nullptr;
  size_t bytes = 0;
  explicit DeviceBuffer(size_t n) : bytes(n) {
    if (n > 0 && cudaMalloc(&p, n) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
    poison();
  }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void poison() {
    if (p) cudaMemset(p, 0xff, bytes);  // 0xffff: NaN in bf16 and f16, 0xffffffff: NaN in f32
  }
};

std::vector<float> randn(int64_t n, std::mt19937_64& rng, float scale) {
  std::vector<float> x(n);
  std::normal_distribution<float> g(0.0f, scale);
  for (float& f : x) f = g(rng);
  return x;
}

// A KVCache filled round-robin (so that the sequences' pages interleave in the pool) and its
// device mirror: pool copied, unwritten slots and free pages NaN, page table [S][stride] with
// -1 wherever a sequence holds no page.
struct Mirror {
  KVCache cache;
  std::vector<SeqId> seqs;
  std::unique_ptr<DeviceBuffer> pool, table;
  int64_t stride = 0;

  Mirror(const KVCacheConfig& cfg, const std::vector<int64_t>& lengths, int64_t window, std::mt19937_64& rng)
      : cache(cfg) {
    const int64_t L = cfg.num_layers, H = cfg.heads_kv, D = cfg.head_dim, ps = cfg.page_size;
    for (size_t i = 0; i < lengths.size(); ++i) seqs.push_back(cache.add_sequence(window));
    std::vector<int64_t> done(lengths.size(), 0);
    for (int64_t piece = 7;; piece = piece % 41 + 13) {  // uneven pieces: writes cross pages mid-page
      bool any = false;
      for (size_t i = 0; i < lengths.size(); ++i) {
        const int64_t n = std::min(piece, lengths[i] - done[i]);
        if (n <= 0) continue;
        any = true;
        std::vector<float> k = randn(L * n * H * D, rng, 1.5f), v = randn(L * n * H * D, rng, 1.0f);
        cache.append(seqs[i], TensorView(k.data(), DType::f32, {L, n, H, D}),
                     TensorView(v.data(), DType::f32, {L, n, H, D}));
        done[i] += n;
      }
      if (!any) break;
    }
    const int64_t page_bytes = cache.page_bytes(), esz = kv_dtype_size(cfg.dtype);
    pool = std::make_unique<DeviceBuffer>(static_cast<size_t>(cfg.num_pages * page_bytes));
    auto* base = static_cast<uint8_t*>(pool->p);
    cudaMemcpy(base, cache.block(0, 0, 0, 0), pool->bytes, cudaMemcpyHostToDevice);
    for (int32_t pg = 0; pg < cfg.num_pages; ++pg)
      if (cache.page_refs(pg) == 0) cudaMemset(base + pg * page_bytes, 0xff, page_bytes);
    for (SeqId s : seqs) {  // slots past the length in the last page
      const int64_t len = cache.length(s);
      if (len % ps == 0) continue;
      const int32_t last = cache.page_table(s).back();
      for (int64_t l = 0; l < L; ++l)
        for (int kv = 0; kv < 2; ++kv)
          for (int64_t h = 0; h < H; ++h) {
            const auto* blk = static_cast<const uint8_t*>(cache.block(last, l, kv, h));
            const int64_t off = blk - static_cast<const uint8_t*>(cache.block(0, 0, 0, 0)) + (len % ps) * D * esz;
            cudaMemset(base + off, 0xff, (ps - len % ps) * D * esz);
          }
    }
    for (SeqId s : seqs) stride = std::max<int64_t>(stride, cache.first_page(s) + cache.sequence_pages(s));
    stride += 3;
    std::vector<int32_t> t(seqs.size() * stride, -1);
    for (size_t i = 0; i < seqs.size(); ++i) {
      const auto pages = cache.page_table(seqs[i]);
      std::copy(pages.begin(), pages.end(), t.begin() + i * stride + cache.first_page(seqs[i]));
    }
    table = std::make_unique<DeviceBuffer>(t.size() * 4);
    cudaMemcpy(table->p, t.data(), t.size() * 4, cudaMemcpyHostToDevice);
  }

  PagedKVView view() const { return {pool->p, static_cast<const int32_t*>(table->p), stride, cache.config()}; }
};

struct Case {
  std::string name;
  std::vector<int64_t> lengths;
  int64_t nq = 1, Hq = 8, Hkv = 2, D = 128, page_size = 16;
  KVDType dtype = KVDType::bf16;
  int64_t window = 0;
  float softcap = 0;
  CudaDecodeTuning tuning{};
  bool padded_q = false;          // q and out as views with gaps
  int expect_early_refill = -1;   // the automatic shape's refill, where the case checks it
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class CudaDecode : public ::testing::TestWithParam<Case> {};

TEST_P(CudaDecode, MatchesReference) {
  SKIP_WITHOUT_GPU();
  const Case& c = GetParam();
  std::mt19937_64 rng(test_seed() ^ std::hash<std::string>{}(c.name));
  int64_t pages = 4;
  for (int64_t n : c.lengths) pages += (n + c.page_size - 1) / c.page_size + 1;
  const KVCacheConfig cfg{.num_layers = 2, .heads_kv = c.Hkv, .head_dim = c.D, .page_size = c.page_size,
                          .num_pages = pages, .dtype = c.dtype};
  Mirror m(cfg, c.lengths, c.window, rng);
  const int64_t S = static_cast<int64_t>(c.lengths.size());
  const DType dt = c.dtype == KVDType::bf16 ? DType::bf16 : DType::f16;
  const Layout lay = c.padded_q ? Layout::padded : Layout::contiguous;
  HostTensor q(dt, {S, c.nq, c.Hq, c.D}, lay), out(dt, {S, c.nq, c.Hq, c.D}, lay), lse(DType::f32, {S, c.Hq, c.nq});
  q.fill_random(rng, 1.0f, 0.01f);
  DeviceBuffer dq(q.mem.size()), dout(out.mem.size()), dlse(lse.mem.size());
  cudaMemcpy(dq.p, q.mem.data(), q.mem.size(), cudaMemcpyHostToDevice);
  auto on_device = [](const HostTensor& h, void* p) {
    TensorView v = h.view;
    v.data = static_cast<uint8_t*>(p) + (static_cast<const uint8_t*>(h.view.data) - h.mem.data());
    v.device = Device::cuda;
    return v;
  };
  const DecodePlan plan = plan_decode(m.cache, m.seqs, c.nq, c.Hq);
  const CudaDecodeShape shape = cuda_decode_shape(m.view(), plan, c.tuning);
  DeviceBuffer ws(static_cast<size_t>(shape.workspace_bytes));
  DecodeParams params{.softcap = c.softcap, .workspace = ws.p, .workspace_bytes = shape.workspace_bytes};
  const int64_t layer = 1;
  run_decode_cuda(m.view(), plan, layer, on_device(q, dq.p), on_device(out, dout.p), params,
                  on_device(lse, dlse.p), c.tuning);
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaGetLastError());
  cudaMemcpy(out.mem.data(), dout.p, out.mem.size(), cudaMemcpyDeviceToHost);
  cudaMemcpy(lse.mem.data(), dlse.p, lse.mem.size(), cudaMemcpyDeviceToHost);
  if (c.tuning.chunk_keys > 0) {
    EXPECT_GT(shape.max_splits, 1) << "the case should exercise the combine";
  }
  if (c.expect_early_refill >= 0) {
    EXPECT_EQ(shape.early_refill, c.expect_early_refill);
  }

  for (int64_t s = 0; s < S; ++s) {
    const SeqId id = m.seqs[s];
    const int64_t lo = m.cache.first_position(id), nk = c.lengths[s] - lo;
    std::vector<float> k(nk * c.Hkv * c.D), v(k.size()), qs(c.nq * c.Hq * c.D);
    m.cache.read(id, layer, lo, TensorView(k.data(), DType::f32, {nk, c.Hkv, c.D}),
                 TensorView(v.data(), DType::f32, {nk, c.Hkv, c.D}));
    for (int64_t i = 0; i < static_cast<int64_t>(qs.size()); ++i) qs[i] = q.get(s * qs.size() + i);
    const TensorView Q(qs.data(), DType::f32, {1, c.nq, c.Hq, c.D});
    const TensorView K(k.data(), DType::f32, {1, nk, c.Hkv, c.D}), V(v.data(), DType::f32, {1, nk, c.Hkv, c.D});
    std::vector<float> dummy(qs.size());
    AttentionParams ap;
    ap.causal = true;
    ap.softcap = c.softcap;
    const Problem pr = validate_forward(Q, K, V, TensorView(dummy.data(), DType::f32, {1, c.nq, c.Hq, c.D}), ap, {});
    ref::KeepFn keep;
    if (c.window > 0) keep = [&](int64_t, int64_t, int64_t i, int64_t j) { return j > i + (nk - c.nq) - c.window; };
    const ref::ForwardResult r = ref::forward(pr, Q, K, V, keep);
    HostTensor got(DType::f32, {1, c.nq, c.Hq, c.D}), got_lse(DType::f32, {1, c.Hq, c.nq});
    for (int64_t i = 0; i < got.numel(); ++i) got.set(i, out.get(s * got.numel() + i));
    for (int64_t i = 0; i < got_lse.numel(); ++i) got_lse.set(i, lse.get(s * got_lse.numel() + i));
    const std::string what = c.name + ", sequence " + std::to_string(s) + " (length " + std::to_string(c.lengths[s]) + ")";
    expect_close(got, r.out, tolerance(dt, false), what + " out");
    expect_close(got_lse, r.lse, 1e-4, what + " lse");
  }
}

// n sequences of lengths 1..400 in a scattered order.
std::vector<int64_t> many_lengths(int64_t n) {
  std::vector<int64_t> l(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) l[i] = (97 * i + 13) % 400 + 1;
  return l;
}

std::vector<Case> cases() {
  using KV = KVDType;
  return {
      // 64 sequences take the kernels' small parameter form, 65 the large; with split chunks,
      // both forms of the combine kernel.
      {.name = "seqs64_small_params", .lengths = many_lengths(64), .Hq = 4, .Hkv = 1},
      {.name = "seqs65_large_params", .lengths = many_lengths(65), .Hq = 4, .Hkv = 1},
      {.name = "seqs64_combine", .lengths = many_lengths(64), .Hq = 4, .Hkv = 1,
       .tuning = {.warps = 1, .stages = 2, .chunk_keys = 32}},
      {.name = "seqs130_combine", .lengths = many_lengths(130), .Hq = 4, .Hkv = 1,
       .tuning = {.warps = 1, .stages = 2, .chunk_keys = 32}},
      {.name = "single_token", .lengths = {1}, .Hq = 4, .Hkv = 1},
      {.name = "ragged_gqa4", .lengths = {1, 15, 16, 17, 100, 257, 1000, 3001}},
      {.name = "ragged_gqa4_f16", .lengths = {2, 31, 33, 640, 2049}, .dtype = KV::f16},
      {.name = "gqa1_d64", .lengths = {33, 700}, .Hq = 2, .Hkv = 2, .D = 64},
      {.name = "gqa1_d64_f16", .lengths = {1, 129}, .Hq = 3, .Hkv = 3, .D = 64, .dtype = KV::f16},
      {.name = "gqa8", .lengths = {500, 1200}, .Hq = 16, .Hkv = 2},
      {.name = "gqa_32_8", .lengths = {2000, 777, 16}, .Hq = 32, .Hkv = 8},
      {.name = "gqa16", .lengths = {300}, .Hq = 16, .Hkv = 1, .D = 64},
      {.name = "few_queries_16_rows", .lengths = {40, 300}, .nq = 3},
      {.name = "few_queries_two_items", .lengths = {3, 300}, .nq = 3, .Hq = 16, .Hkv = 2, .dtype = KV::f16},
      {.name = "prefill_chunk_gqa1", .lengths = {100, 41}, .nq = 40, .Hq = 2, .Hkv = 2, .D = 64},
      {.name = "d256", .lengths = {300, 90}, .nq = 2, .Hq = 4, .Hkv = 2, .D = 256},
      {.name = "d256_f16_rows", .lengths = {70, 1100}, .nq = 3, .Hq = 8, .Hkv = 2, .D = 256, .dtype = KV::f16},
      {.name = "page32", .lengths = {100, 1000, 31}, .page_size = 32},
      {.name = "page64_window", .lengths = {2000, 50}, .nq = 2, .page_size = 64, .window = 300},
      {.name = "window_split", .lengths = {1500, 333}, .window = 100, .tuning = {.chunk_keys = 64}},
      {.name = "cta_merge", .lengths = {1000, 300, 5}, .tuning = {.warps = 4, .chunk_keys = 256}},
      {.name = "forced_splits", .lengths = {250, 37, 16}, .tuning = {.warps = 2, .stages = 2, .chunk_keys = 16}},
      // 94 chunks for the first sequence: the combine's 8-warp form, two batches of loads a warp.
      {.name = "many_chunks", .lengths = {1500, 40, 700}, .tuning = {.warps = 2, .stages = 2, .chunk_keys = 16}},
      {.name = "eight_warps", .lengths = {5000, 17}, .tuning = {.warps = 8, .stages = 3, .chunk_keys = 256}},
      {.name = "one_warp_four_stages", .lengths = {900}, .D = 64, .tuning = {.warps = 1, .stages = 4, .chunk_keys = 128}},
      {.name = "heads_in_cta", .lengths = {1000, 40, 3000}, .Hq = 32, .Hkv = 8, .tuning = {.head_warps = 1}},
      {.name = "heads_in_cta_ragged_group", .lengths = {700, 5}, .nq = 2, .Hq = 6, .Hkv = 3,
       .tuning = {.warps = 2, .chunk_keys = 128, .head_warps = 1}},
      {.name = "l2_prefetch", .lengths = {100, 3000, 17}, .tuning = {.l2_prefetch = 256}},
      // Early refill (each step refills its own stage once read): the automatic shape for few
      // long sequences, and forced with each stage count, both merges, a window and head warps.
      {.name = "few_long_sequences_auto", .lengths = {20000, 18000}, .Hq = 32, .Hkv = 8, .expect_early_refill = 1},
      {.name = "wide_batch_auto", .lengths = many_lengths(40), .expect_early_refill = 0},
      {.name = "early_refill_combine", .lengths = {5000, 17, 300},
       .tuning = {.warps = 4, .stages = 2, .chunk_keys = 256, .early_refill = 1}},
      {.name = "early_refill_three_stages_f16", .lengths = {1000, 33}, .dtype = KV::f16,
       .tuning = {.warps = 2, .stages = 3, .chunk_keys = 128, .early_refill = 1}},
      {.name = "early_refill_four_stages_window", .lengths = {900, 64}, .nq = 2, .D = 64, .window = 200,
       .tuning = {.warps = 1, .stages = 4, .chunk_keys = 64, .early_refill = 1}},
      {.name = "early_refill_cta_merge", .lengths = {1000, 300, 5},
       .tuning = {.warps = 4, .chunk_keys = 256, .early_refill = 1}},
      {.name = "early_refill_heads_in_cta", .lengths = {1000, 40}, .Hq = 32, .Hkv = 8,
       .tuning = {.head_warps = 1, .early_refill = 1}},
      {.name = "softcap", .lengths = {80, 600}, .Hq = 4, .Hkv = 1, .softcap = 5.0f},
      {.name = "strided_views", .lengths = {60, 400}, .nq = 2, .padded_q = true},
  };
}

INSTANTIATE_TEST_SUITE_P(Decode, CudaDecode, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

// A page-table entry outside the pool makes the rows that read it NaN and reads nothing outside.
TEST(CudaDecodeEdge, BadPageTableEntryGivesNaN) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(test_seed());
  const KVCacheConfig cfg{.num_layers = 1, .heads_kv = 1, .head_dim = 64, .page_size = 16, .num_pages = 40,
                          .dtype = KVDType::bf16};
  Mirror m(cfg, {100, 300}, 0, rng);
  const int32_t bad = 1 << 20;
  cudaMemcpy(static_cast<int32_t*>(m.table->p) + m.stride + 5, &bad, 4, cudaMemcpyHostToDevice);  // sequence 1
  const DecodePlan plan = plan_decode(m.cache, m.seqs, 1, 2);
  HostTensor q(DType::bf16, {2, 1, 2, 64}), out(DType::bf16, {2, 1, 2, 64});
  q.fill_random(rng);
  DeviceBuffer dq(q.mem.size()), dout(out.mem.size()), ws(static_cast<size_t>(decode_workspace_bytes(m.view(), plan)));
  cudaMemcpy(dq.p, q.mem.data(), q.mem.size(), cudaMemcpyHostToDevice);
  run_decode(m.view(), plan, 0, TensorView(dq.p, DType::bf16, {2, 1, 2, 64}, Device::cuda),
             TensorView(dout.p, DType::bf16, {2, 1, 2, 64}, Device::cuda),
             {.workspace = ws.p, .workspace_bytes = static_cast<int64_t>(ws.bytes)});
  CUDA_OK(cudaDeviceSynchronize());
  cudaMemcpy(out.mem.data(), dout.p, out.mem.size(), cudaMemcpyDeviceToHost);
  for (int64_t i = 0; i < 128; ++i) EXPECT_TRUE(std::isfinite(out.get(i))) << i;
  for (int64_t i = 128; i < 256; ++i) EXPECT_TRUE(std::isnan(out.get(i))) << i;
}

TEST(CudaDecodePartition, OneWaveOfEqualChunks) {
  using cuda::decode_chunk_blocks;
  using cuda::decode_ctas;
  const std::vector<int64_t> uniform(32, 512);  // batch 32 × 8192 keys, 8 KV heads, 132 SMs × 2 CTAs
  const int64_t cb = decode_chunk_blocks(uniform.data(), 32, 8, 264, 4, 0);
  EXPECT_EQ(cb, 128);  // 4 chunks = one CTA of 4 warps per (sequence, head): 256 CTAs <= 264
  EXPECT_LE(decode_ctas(uniform.data(), 32, 8, cb, 4), 264);
  EXPECT_GT(decode_ctas(uniform.data(), 32, 8, cb - 1, 4), 264);
  const std::vector<int64_t> longer(4, 4096);  // batch 4 × 65536 keys
  const int64_t cl = decode_chunk_blocks(longer.data(), 4, 8, 264, 4, 0);
  EXPECT_EQ(4096 % cl, 0) << "equal chunks";
  EXPECT_LE(decode_ctas(longer.data(), 4, 8, cl, 4), 264);
  const std::vector<int64_t> many(1000, 40);  // more sequences than one wave holds: one chunk each
  EXPECT_EQ(decode_chunk_blocks(many.data(), 1000, 8, 264, 1, 0), 40);
  const std::vector<int64_t> tiny = {1, 3};
  EXPECT_EQ(decode_chunk_blocks(tiny.data(), 2, 1, 1000, 4, 0), 3);  // one chunk each
  EXPECT_EQ(decode_chunk_blocks(tiny.data(), 2, 1, 1000, 4, 2), 2);  // forced
  const std::vector<int64_t> ragged = {100, 7, 3000, 1};
  const int64_t cr = decode_chunk_blocks(ragged.data(), 4, 2, 50, 4, 0);
  EXPECT_GE(cr, cuda::kDecodeMinChunkBlocks);
  EXPECT_LE(decode_ctas(ragged.data(), 4, 2, cr, 4), 50);
  EXPECT_EQ(cuda::decode_blocks(15, 17), 2);
  EXPECT_EQ(cuda::decode_blocks(16, 32), 1);
  EXPECT_EQ(cuda::decode_blocks(0, 1), 1);
}

// Bad calls are rejected before any device work; these run without a GPU.
TEST(CudaDecodeArgs, BadCallsThrow) {
  const KVCacheConfig cfg{.num_layers = 2, .heads_kv = 2, .head_dim = 128, .page_size = 16, .num_pages = 64,
                          .dtype = KVDType::bf16};
  auto fake = [](int i) { return reinterpret_cast<void*>(uintptr_t{1} << 32 | uintptr_t(i) << 24); };
  const PagedKVView kv{fake(1), static_cast<const int32_t*>(fake(2)), 8, cfg};
  const std::vector<DecodeRange> ranges = {{0, 100}, {0, 7}};
  const DecodePlan plan = plan_decode(ranges, 1, 8, 2, 128, 16);
  const TensorView q(fake(3), DType::bf16, {2, 1, 8, 128}, Device::cuda);
  const TensorView out(fake(4), DType::bf16, {2, 1, 8, 128}, Device::cuda);
  auto expect_error = [&](const PagedKVView& v, const DecodePlan& p, const TensorView& qq, const TensorView& oo,
                          const char* needle, const DecodeParams& params = {}, int64_t layer = 0) {
    try {
      run_decode(v, p, layer, qq, oo, params);
      ADD_FAILURE() << "expected attnkit::Error mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  for (KVDType t : {KVDType::f32, KVDType::int8}) {
    PagedKVView v = kv;
    v.config.dtype = t;
    expect_error(v, plan, q, out, "bf16 or f16 pages");
  }
  PagedKVView v = kv;
  v.config.head_dim = 96;
  expect_error(v, plan_decode(ranges, 1, 8, 2, 96, 16), q, out, "head_dim");
  v = kv;
  v.config.page_size = 8;
  expect_error(v, plan_decode(ranges, 1, 8, 2, 128, 8), q, out, "page_size");
  v = kv;
  v.table_stride = 6;  // 100 keys need 7 pages
  expect_error(v, plan, q, out, "table_stride");
  v = kv;
  v.pages = nullptr;
  expect_error(v, plan, q, out, "non-null");
  expect_error(kv, plan_decode(ranges, 1, 8, 4, 128, 16), q, out, "heads_kv");  // plan for another cache
  expect_error(kv, plan, q, out, "layer", {}, 2);
  const TensorView q16(fake(3), DType::f16, {2, 1, 8, 128}, Device::cuda);
  expect_error(kv, plan, q16, out, "dtype");
  const TensorView q_cpu(fake(3), DType::bf16, {2, 1, 8, 128});
  expect_error(kv, plan, q_cpu, out, "CUDA tensor");
  const TensorView q_short(fake(3), DType::bf16, {2, 1, 4, 128}, Device::cuda);
  expect_error(kv, plan, q_short, out, "shape");
  expect_error(kv, plan, q, q, "disjoint");
  expect_error(kv, plan, q, out, "params.scale", {.scale = -1.0f});
  DecodePlan empty = plan;  // a sequence with no key has no query to decode
  empty.ranges[1] = {0, 0, 0};
  expect_error(kv, empty, q, out, "ranges[1]");
  DecodePlan many = plan_decode(std::vector<DecodeRange>(kMaxCudaDecodeSeqs + 1, DecodeRange{0, 1}), 1, 8, 2, 128, 16);
  const TensorView qm(fake(3), DType::bf16, {kMaxCudaDecodeSeqs + 1, 1, 8, 128}, Device::cuda);
  const TensorView om(fake(5), DType::bf16, {kMaxCudaDecodeSeqs + 1, 1, 8, 128}, Device::cuda);
  expect_error(kv, many, qm, om, "sequences");
  EXPECT_THROW(plan_decode(std::vector<DecodeRange>{{0, 0}}, 1, 8, 2, 128, 16), Error);
  for (const CudaDecodeTuning& t : {CudaDecodeTuning{.stages = 5}, CudaDecodeTuning{.early_refill = 2},
                                    CudaDecodeTuning{.early_refill = -2}}) {
    try {
      cuda_decode_shape(kv, plan, t);
      ADD_FAILURE() << "expected attnkit::Error for a bad tuning";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("early_refill -1..1"), std::string::npos) << e.what();
    }
  }
}

// Host memory where device memory belongs, and a missing workspace (needs a GPU to tell).
TEST(CudaDecodeArgs, HostPointersAndWorkspaceThrow) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(test_seed());
  const KVCacheConfig cfg{.num_layers = 1, .heads_kv = 2, .head_dim = 64, .page_size = 16, .num_pages = 200,
                          .dtype = KVDType::bf16};
  Mirror m(cfg, {2000, 5}, 0, rng);
  const DecodePlan plan = plan_decode(m.cache, m.seqs, 1, 4);
  DeviceBuffer dq(2 * 4 * 64 * 2), dout(2 * 4 * 64 * 2);
  const TensorView q(dq.p, DType::bf16, {2, 1, 4, 64}, Device::cuda), out(dout.p, DType::bf16, {2, 1, 4, 64}, Device::cuda);
  const int64_t need = decode_workspace_bytes(m.view(), plan);
  ASSERT_GT(need, 0);
  DeviceBuffer ws(static_cast<size_t>(need));
  const DecodeParams ok{.workspace = ws.p, .workspace_bytes = need};
  EXPECT_NO_THROW(run_decode(m.view(), plan, 0, q, out, ok));
  CUDA_OK(cudaDeviceSynchronize());
  auto expect_error = [&](const PagedKVView& v, const TensorView& qq, const DecodeParams& p, const char* needle) {
    try {
      run_decode(v, plan, 0, qq, out, p);
      ADD_FAILURE() << "expected attnkit::Error mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(m.view(), q, {}, "workspace");
  expect_error(m.view(), q, {.workspace = ws.p, .workspace_bytes = need - 4}, "workspace");
  std::vector<uint8_t> host(1 << 20);
  PagedKVView v = m.view();
  v.pages = host.data() + (16 - reinterpret_cast<uintptr_t>(host.data()) % 16) % 16;
  expect_error(v, q, ok, "kv.pages");
  v = m.view();
  v.page_table = reinterpret_cast<const int32_t*>(host.data());
  expect_error(v, q, ok, "kv.page_table");
  expect_error(m.view(), TensorView(host.data(), DType::bf16, {2, 1, 4, 64}, Device::cuda), ok, "q");
  std::vector<uint8_t> host_ws(static_cast<size_t>(need));
  expect_error(m.view(), q, {.workspace = host_ws.data(), .workspace_bytes = need}, "params.workspace");
  CUDA_OK(cudaGetLastError());
}

}  // namespace
}  // namespace attnkit::test
