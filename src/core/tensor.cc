// TensorView helpers and the scalar f16 conversions.
#include "attnkit/tensor.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>

#include "attnkit/attention.h"
#include "attnkit/error.h"

namespace attnkit {

const char* to_string(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
  }
  return "?";
}

const char* to_string(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

const char* to_string(Algorithm a) {
  switch (a) {
    case Algorithm::automatic: return "auto";
    case Algorithm::reference: return "reference";
    case Algorithm::naive: return "naive";
    case Algorithm::flash: return "flash";
  }
  return "?";
}

float to_float(f16 x) {
  const uint32_t sign = uint32_t{x.bits & 0x8000u} << 16;
  const uint32_t exp = (x.bits >> 10) & 0x1f;
  const uint32_t man = x.bits & 0x3ff;
  if (exp == 0) {  // zero or subnormal: man · 2^-24
    const float mag = static_cast<float>(man) * 0x1p-24f;
    return sign ? -mag : mag;
  }
  const uint32_t bits = exp == 31 ? sign | 0x7f800000u | (man << 13)
                                  : sign | ((exp + 112) << 23) | (man << 13);
  return std::bit_cast<float>(bits);
}

f16 to_f16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return f16{static_cast<uint16_t>(sign | 0x7e00)};  // NaN
  if (abs >= 0x477ff000u) return f16{static_cast<uint16_t>(sign | 0x7c00)};  // rounds to inf
  if (abs < 0x38800000u) {  // below the smallest normal: subnormal, rounded to nearest even
    const float mag = std::bit_cast<float>(abs);
    const float scaled = mag * 0x1p24f;  // exact in f32 range
    uint32_t m = static_cast<uint32_t>(scaled);
    const float rem = scaled - static_cast<float>(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1))) ++m;
    return f16{static_cast<uint16_t>(sign | m)};
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);
  return f16{static_cast<uint16_t>(sign | (r >> 13))};
}

TensorView::TensorView(void* p, DType t, std::initializer_list<int64_t> dims, Device dev)
    : data(p), dtype(t), device(dev), ndim(static_cast<int>(dims.size())) {
  if (ndim > kMaxDims) throw Error(fmt::format("TensorView: at most {} dims, given {}", kMaxDims, ndim));
  std::copy(dims.begin(), dims.end(), shape.begin());
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    strides[i] = s;
    s *= shape[i];
  }
}

TensorView::TensorView(void* p, DType t, std::initializer_list<int64_t> dims,
                       std::initializer_list<int64_t> elem_strides, Device dev)
    : data(p), dtype(t), device(dev), ndim(static_cast<int>(dims.size())) {
  if (ndim > kMaxDims || elem_strides.size() != dims.size()) {
    throw Error(fmt::format("TensorView: expected as many strides as dims (at most {}), given {} dims and {} strides",
                            kMaxDims, dims.size(), elem_strides.size()));
  }
  std::copy(dims.begin(), dims.end(), shape.begin());
  std::copy(elem_strides.begin(), elem_strides.end(), strides.begin());
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

bool TensorView::is_contiguous() const {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    if (shape[i] != 1 && strides[i] != s) return false;
    s *= shape[i];
  }
  return true;
}

std::string TensorView::describe() const {
  std::string dims, str;
  for (int i = 0; i < ndim; ++i) {
    dims += fmt::format("{}{}", i ? ", " : "", shape[i]);
    str += fmt::format("{}{}", i ? ", " : "", strides[i]);
  }
  return fmt::format("[{}] {} strides [{}]", dims, to_string(dtype), str);
}

}  // namespace attnkit
