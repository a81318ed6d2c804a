// HostBuffer: an owning, zeroed host allocation for large tensors, on transparent huge pages
// where Linux offers them.
//
// The linear-time kernels, decode and the flash forward stream their inputs once. On 4 KiB
// pages such a stream crosses a TLB entry, and stops the hardware prefetchers, every 4 KiB; on a
// 2 MiB huge page every 2 MiB. A system whose transparent huge pages are "madvise" (a common
// default) gives an ordinary allocation 4 KiB pages; a HostBuffer of 4 MiB or more starts on a
// 2 MiB boundary and is advised with MADV_HUGEPAGE (WKV-4 at C = 512, T = 65536: 10-25 % faster
// on the development machine, docs/linear.md). Smaller ones come from aligned_alloc. Either way the
// memory is zeroed and 64-byte aligned; pages become resident when first touched.
//
//   attnkit::HostBuffer kbuf(T * C * 4);
//   attnkit::TensorView k = kbuf.view(attnkit::DType::f32, {1, T, C});
#pragma once

#include <cstdint>
#include <initializer_list>

#include "attnkit/tensor.h"

namespace attnkit {

class HostBuffer {
 public:
  HostBuffer() = default;
  // `bytes` zeroed bytes. Throws Error when bytes < 0 or the memory cannot be had.
  explicit HostBuffer(int64_t bytes);
  ~HostBuffer();
  HostBuffer(HostBuffer&& other) noexcept;
  HostBuffer& operator=(HostBuffer&& other) noexcept;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  void* data() const { return data_; }
  int64_t bytes() const { return bytes_; }
  // True when the buffer was advised as huge pages (it is 4 MiB or more, on Linux); whether the
  // kernel grants them is its choice (AnonHugePages in /proc/self/smaps tells).
  bool huge_pages() const;

  // A contiguous view of the buffer's start as `dims` of `dtype`. Throws Error when the view
  // needs more bytes than the buffer holds or a dimension is negative.
  TensorView view(DType dtype, std::initializer_list<int64_t> dims) const;

 private:
  void release();

  void* data_ = nullptr;
  int64_t bytes_ = 0;
};

}  // namespace attnkit
