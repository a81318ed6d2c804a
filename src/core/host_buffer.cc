#include "attnkit/host_buffer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <utility>

#include "attnkit/error.h"
#include "core/big_alloc.h"

namespace attnkit {

HostBuffer::HostBuffer(int64_t bytes) {
  if (bytes < 0) throw Error(fmt::format("HostBuffer: bytes must be >= 0, given {}", bytes));
  data_ = detail::allocate_zeroed(static_cast<size_t>(bytes));
  if (data_ == nullptr) {
    throw Error(fmt::format("HostBuffer: could not allocate {} bytes ({:.1f} GiB) of host memory", bytes,
                            static_cast<double>(bytes) / (1 << 30)));
  }
  bytes_ = bytes;
}

HostBuffer::~HostBuffer() { release(); }

HostBuffer::HostBuffer(HostBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

HostBuffer& HostBuffer::operator=(HostBuffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void HostBuffer::release() {
  detail::free_zeroed(data_, static_cast<size_t>(bytes_));
  data_ = nullptr;
  bytes_ = 0;
}

bool HostBuffer::huge_pages() const {
  return data_ != nullptr && detail::is_huge_advised(static_cast<size_t>(bytes_));
}

TensorView HostBuffer::view(DType dtype, std::initializer_list<int64_t> dims) const {
  if (dims.size() == 0 || dims.size() > TensorView::kMaxDims) {
    throw Error(fmt::format("HostBuffer::view: 1 to {} dimensions expected, given {}", TensorView::kMaxDims,
                            dims.size()));
  }
  for (int64_t d : dims) {
    if (d < 0) throw Error(fmt::format("HostBuffer::view: dimensions must be >= 0, given [{}]", fmt::join(dims, ", ")));
  }
  if (std::find(dims.begin(), dims.end(), 0) == dims.end()) {  // an empty view needs no bytes
    int64_t need = dtype_size(dtype);
    for (int64_t d : dims) {
      if (need > bytes_ / d) {  // need · d > bytes_, found without overflow
        throw Error(fmt::format("HostBuffer::view: [{}] {} needs more than the buffer's {} bytes",
                                fmt::join(dims, ", "), to_string(dtype), bytes_));
      }
      need *= d;
    }
  }
  return TensorView(data_, dtype, dims);
}

}  // namespace attnkit
