// HostBuffer: alignment, zeroed contents, views, moves, and errors on bad sizes.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "attnkit/error.h"
#include "attnkit/host_buffer.h"

namespace attnkit {
namespace {

bool all_zero(const HostBuffer& b) {
  const auto* p = static_cast<const unsigned char*>(b.data());
  for (int64_t i = 0; i < b.bytes(); ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}

TEST(HostBuffer, SmallIsZeroedAndAligned) {
  for (int64_t bytes : {int64_t{0}, int64_t{1}, int64_t{100}, int64_t{4096 + 3}, (int64_t{4} << 20) - 1}) {
    HostBuffer b(bytes);
    ASSERT_NE(b.data(), nullptr) << bytes;
    EXPECT_EQ(b.bytes(), bytes);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 64, 0u) << bytes;
    EXPECT_FALSE(b.huge_pages()) << bytes;
    EXPECT_TRUE(all_zero(b)) << bytes;
    if (bytes > 0) std::memset(b.data(), 0x5a, static_cast<size_t>(bytes));  // all of it is writable
  }
}

TEST(HostBuffer, LargeStartsOnAHugePage) {
  const int64_t bytes = (int64_t{6} << 20) + 12345;
  HostBuffer b(bytes);
  ASSERT_NE(b.data(), nullptr);
  EXPECT_TRUE(all_zero(b));
  std::memset(b.data(), 0x5a, static_cast<size_t>(bytes));
  EXPECT_EQ(static_cast<unsigned char*>(b.data())[bytes - 1], 0x5a);
#if defined(__linux__)
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % (uintptr_t{2} << 20), 0u);
  EXPECT_TRUE(b.huge_pages());
#endif
}

TEST(HostBuffer, ViewCoversTheBuffer) {
  HostBuffer b(2 * 3 * 5 * 7 * 4);
  const TensorView v = b.view(DType::f32, {2, 3, 5, 7});
  EXPECT_EQ(v.data, b.data());
  EXPECT_EQ(v.dtype, DType::f32);
  EXPECT_EQ(v.ndim, 4);
  EXPECT_EQ(v.shape[3], 7);
  EXPECT_EQ(v.strides[0], 105);
  EXPECT_TRUE(v.is_contiguous());
  const TensorView half = b.view(DType::bf16, {420});
  EXPECT_EQ(half.numel(), 420);
  EXPECT_EQ(b.view(DType::f32, {0, 1 << 30}).numel(), 0);  // empty: needs no bytes
}

TEST(HostBuffer, MovesOwnership) {
  HostBuffer a(1000);
  void* p = a.data();
  HostBuffer b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(b.bytes(), 1000);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): the moved-from state is specified
  EXPECT_EQ(a.bytes(), 0);
  HostBuffer c(int64_t{5} << 20);
  c = std::move(b);  // c's large mapping is released, b's buffer taken over
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(c.bytes(), 1000);
  EXPECT_FALSE(c.huge_pages());
  HostBuffer empty;
  EXPECT_EQ(empty.data(), nullptr);
  EXPECT_FALSE(empty.huge_pages());
}

TEST(HostBuffer, BadSizesThrow) {
  EXPECT_THROW(HostBuffer(-1), Error);
  try {
    HostBuffer absurd(int64_t{1} << 60);
    FAIL() << "an exabyte was allocated";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("could not allocate"), std::string::npos) << e.what();
  }
  HostBuffer b(64);
  EXPECT_THROW(b.view(DType::f32, {17}), Error);  // 68 bytes > 64
  EXPECT_NO_THROW(b.view(DType::f32, {16}));
  EXPECT_THROW(b.view(DType::f32, {-1, 4}), Error);
  EXPECT_THROW(b.view(DType::f32, {}), Error);
  EXPECT_THROW(b.view(DType::f32, {1, 1, 1, 1, 1}), Error);
  EXPECT_THROW(b.view(DType::f16, {int64_t{1} << 40, int64_t{1} << 40}), Error);  // the product overflows int64
  try {
    b.view(DType::bf16, {8, 5});
    FAIL() << "a view of 80 bytes over 64 was given";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[8, 5] bf16"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace attnkit
