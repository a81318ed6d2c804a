// TensorView: a non-owning view of a strided tensor of up to four dimensions.
//
// Attention tensors use the layout [batch, seq, heads, head_dim] ("BSHD") with free strides
// counted in elements, so Q, K and V may be views into one fused QKV buffer without a copy.
// The log-sum-exp output uses [batch, heads, seq]. Storage types are f32, bf16 and f16;
// arithmetic is always f32 or wider.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <string>

namespace attnkit {

enum class DType : uint8_t { f32, bf16, f16 };
enum class Device : uint8_t { cpu, cuda };

const char* to_string(DType t);
const char* to_string(Device d);
inline int64_t dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }

// 16-bit storage types: the raw bits, converted with the functions below.
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

inline float to_float(bf16 x) {
  const uint32_t u = uint32_t{x.bits} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest even; NaN stays NaN.
inline bf16 to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}
float to_float(f16 x);
f16 to_f16(float f);

struct TensorView {
  static constexpr int kMaxDims = 4;

  void* data = nullptr;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> strides{};  // in elements

  TensorView() = default;
  // A contiguous (row-major) view.
  TensorView(void* p, DType t, std::initializer_list<int64_t> dims, Device dev = Device::cpu);
  // A view with explicit strides (in elements).
  TensorView(void* p, DType t, std::initializer_list<int64_t> dims,
             std::initializer_list<int64_t> elem_strides, Device dev = Device::cpu);

  bool empty() const { return data == nullptr; }
  int64_t numel() const;
  int64_t size(int i) const { return shape[i]; }
  int64_t stride(int i) const { return strides[i]; }
  bool is_contiguous() const;
  // "[2, 128, 8, 64] f32 strides [65536, 512, 64, 1]"
  std::string describe() const;
};

}  // namespace attnkit
