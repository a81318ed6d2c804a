// Every bad argument to forward / backward is an attnkit::Error that names the argument and
// says what was expected, and no output element is touched.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "test_util.h"

namespace attnkit::test {
namespace {

struct Fixture {
  HostTensor q{DType::f32, {1, 8, 4, 16}}, k{DType::f32, {1, 8, 2, 16}}, v{DType::f32, {1, 8, 2, 16}};
  HostTensor out{DType::f32, {1, 8, 4, 16}}, lse{DType::f32, {1, 4, 8}}, dout{DType::f32, {1, 8, 4, 16}};
  HostTensor dq{DType::f32, {1, 8, 4, 16}}, dk{DType::f32, {1, 8, 2, 16}}, dv{DType::f32, {1, 8, 2, 16}};
  AttentionParams params;
  Fixture() {
    std::mt19937_64 rng(test_seed());
    for (HostTensor* t : {&q, &k, &v, &dout}) t->fill_random(rng);
    out.poison();
  }
  void fwd() { forward(q.view, k.view, v.view, out.view, params, lse.view); }
  void bwd() { backward(q.view, k.view, v.view, out.view, dout.view, lse.view, dq.view, dk.view, dv.view, params); }
};

// Runs the call, expects an attnkit::Error whose message contains every fragment, and checks
// that no output byte was written.
template <class Mutate>
void expect_error(Mutate mutate, std::initializer_list<const char*> fragments, bool backward_pass = false) {
  Fixture f;
  mutate(f);
  const std::vector<uint8_t> before[] = {f.out.mem, f.lse.mem, f.dq.mem, f.dk.mem, f.dv.mem};
  try {
    backward_pass ? f.bwd() : f.fwd();
    ADD_FAILURE() << "expected an attnkit::Error containing '" << *fragments.begin() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* frag : fragments) EXPECT_NE(msg.find(frag), std::string::npos) << "message: " << msg;
  }
  const std::vector<uint8_t>* after[] = {&f.out.mem, &f.lse.mem, &f.dq.mem, &f.dk.mem, &f.dv.mem};
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(before[i] == *after[i]) << "an output was written before the error";
}

TEST(Errors, NullPointers) {
  expect_error([](Fixture& f) { f.q.view.data = nullptr; }, {"q:", "non-null"});
  expect_error([](Fixture& f) { f.v.view.data = nullptr; }, {"v:", "non-null"});
  expect_error([](Fixture& f) { f.out.view.data = nullptr; }, {"out:", "non-null"});
  expect_error([](Fixture& f) { f.lse.view.data = nullptr; }, {"lse:", "non-null"});
  expect_error([](Fixture& f) { f.dq.view.data = nullptr; }, {"dq:", "non-null"}, true);
}

TEST(Errors, ShapeMismatches) {
  expect_error([](Fixture& f) { f.k.view.shape[3] = 8; }, {"k:", "head_dim", "[1, 8, 2, 8]"});
  expect_error([](Fixture& f) { f.v.view.shape[1] = 7; }, {"v:", "expected shape [1, 8, 2, 16]"});
  expect_error([](Fixture& f) { f.out.view.shape[2] = 2; }, {"out:", "the shape of q"});
  expect_error([](Fixture& f) { f.k.view.shape[0] = 2; }, {"k:", "batch"});
  expect_error([](Fixture& f) { f.lse.view.shape[2] = 9; }, {"lse:", "[batch, heads_q, seq_q]"});
  expect_error([](Fixture& f) { f.q.view.ndim = 3; }, {"q:", "expected 4 dimensions, given 3"});
  expect_error([](Fixture& f) { f.dk.view.shape[1] = 3; }, {"dk:", "the shape of k"}, true);
  expect_error([](Fixture& f) { f.dout.view.shape[3] = 4; }, {"dout:", "the shape of out"}, true);
}

TEST(Errors, DTypeMismatches) {
  expect_error([](Fixture& f) { f.k.view.dtype = DType::bf16; }, {"k:", "expected dtype f32", "given bf16"});
  expect_error([](Fixture& f) { f.out.view.dtype = DType::f16; }, {"out:", "expected dtype f32"});
  expect_error([](Fixture& f) { f.lse.view.dtype = DType::bf16; }, {"lse:", "f32"});
  expect_error([](Fixture& f) { f.dv.view.dtype = DType::bf16; }, {"dv:", "expected dtype f32"}, true);
}

TEST(Errors, GroupedQueryHeadsMustDivide) {
  expect_error(
      [](Fixture& f) {
        f.k.view.shape[2] = 3;
        f.v.view.shape[2] = 3;
      },
      {"k:", "divides q's 4 heads", "given 3"});
}

TEST(Errors, HeadDimRange) {
  Fixture f;
  HostTensor q(DType::f32, {1, 2, 1, 257}), k(DType::f32, {1, 2, 1, 257}), out(DType::f32, {1, 2, 1, 257});
  try {
    forward(q.view, k.view, k.view, out.view);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim in 1..256, given 257"), std::string::npos) << e.what();
  }
}

TEST(Errors, NonPositiveSizes) {
  expect_error([](Fixture& f) { f.q.view.shape[1] = 0; }, {"q:", "positive", "size 0"});
  expect_error([](Fixture& f) { f.k.view.shape[1] = -4; }, {"k:", "positive", "size -4"});
  expect_error([](Fixture& f) { f.q.view.shape[0] = int64_t{1} << 41; }, {"q:", "beyond"});
}

TEST(Errors, NegativeStrides) {
  expect_error([](Fixture& f) { f.q.view.strides[1] = -64; }, {"q:", "non-negative strides"});
}

TEST(Errors, OverlappingOutputs) {
  // Two sequence rows of out write the same memory.
  expect_error([](Fixture& f) { f.out.view.strides[1] = 16; }, {"out:", "strides overlap"});
  expect_error([](Fixture& f) { f.out.view.strides[3] = 0; }, {"out:", "strides overlap"});
  // out aliases an input.
  expect_error([](Fixture& f) { f.out.view.data = f.q.view.data; }, {"out:", "disjoint from q"});
  expect_error([](Fixture& f) { f.dk.view.data = f.dv.view.data; }, {"dk:", "disjoint from dv"}, true);
  expect_error([](Fixture& f) { f.dq.view.data = f.dout.view.data; }, {"dq:", "disjoint from dout"}, true);
}

TEST(Errors, ScaleAndSoftcap) {
  expect_error([](Fixture& f) { f.params.scale = std::numeric_limits<float>::quiet_NaN(); }, {"params.scale", "finite"});
  expect_error([](Fixture& f) { f.params.scale = -1.0f; }, {"params.scale"});
  expect_error([](Fixture& f) { f.params.softcap = -2.0f; }, {"params.softcap", ">= 0"});
  expect_error([](Fixture& f) { f.params.softcap = std::numeric_limits<float>::infinity(); }, {"params.softcap"});
  expect_error([](Fixture& f) { f.params.algorithm = static_cast<Algorithm>(9); }, {"params.algorithm"});
}

TEST(Errors, CuSeqlens) {
  static const std::vector<int32_t> ok = {0, 3, 8}, decreasing = {0, 5, 3}, too_long = {0, 4, 9},
                                    not_zero = {1, 4, 8}, short_one = {0};
  expect_error([](Fixture& f) { f.params.cu_seqlens_q = ok; }, {"cu_seqlens_k", "both"});
  expect_error(
      [](Fixture& f) {
        f.params.cu_seqlens_q = decreasing;
        f.params.cu_seqlens_k = ok;
      },
      {"cu_seqlens_q", "non-decreasing", "given 3 after 5"});
  expect_error(
      [](Fixture& f) {
        f.params.cu_seqlens_q = ok;
        f.params.cu_seqlens_k = too_long;
      },
      {"cu_seqlens_k", "last offset 9 exceeds", "8"});
  expect_error(
      [](Fixture& f) {
        f.params.cu_seqlens_q = not_zero;
        f.params.cu_seqlens_k = ok;
      },
      {"cu_seqlens_q", "first offset to be 0"});
  expect_error(
      [](Fixture& f) {
        f.params.cu_seqlens_q = short_one;
        f.params.cu_seqlens_k = short_one;
      },
      {"cu_seqlens", ">= 2"});
}

TEST(Errors, VarlenNeedsBatchOne) {
  static const std::vector<int32_t> cu = {0, 4, 8};
  Fixture f;
  HostTensor q(DType::f32, {2, 8, 1, 16}), out(DType::f32, {2, 8, 1, 16});
  AttentionParams p;
  p.cu_seqlens_q = cu;
  p.cu_seqlens_k = cu;
  EXPECT_THROW(forward(q.view, q.view, q.view, out.view, p), Error);
}

TEST(Errors, DeviceTensorsWithoutBackend) {
  expect_error([](Fixture& f) { f.q.view.device = Device::cuda; }, {"q:", "cuda"});
}

TEST(Errors, TensorViewTooManyDims) {
  float x = 0;
  EXPECT_THROW(TensorView(&x, DType::f32, {1, 1, 1, 1, 1}), Error);
  EXPECT_THROW(TensorView(&x, DType::f32, {1, 1}, {1}), Error);
}

TEST(Errors, ThreadCount) {
  EXPECT_THROW(set_num_threads(-1), Error);
  set_num_threads(1);
  EXPECT_EQ(num_threads(), 1);
  set_num_threads(0);
  EXPECT_GE(num_threads(), 1);
}

}  // namespace
}  // namespace attnkit::test
