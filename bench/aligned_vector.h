// FVec: a std::vector<float> on 64-byte aligned storage, as tensor libraries allocate it
// (PyTorch's CPU allocator aligns to 64 bytes; malloc's large blocks are only 16-byte aligned,
// which splits every 64-byte vector block of a row over two cache lines). For the benchmarks
// and the labs, whose inputs should look like a user's tensors.
//
// HugeVec: the same on transparent huge pages, in an attnkit::HostBuffer (2 MiB aligned and
// advised with MADV_HUGEPAGE from 4 MiB), as a user gets from it, where THP is "always", or who
// advises their own buffers; on a system whose THP is "madvise" (this one), FVec's tensors get
// 4 KiB pages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#include "attnkit/host_buffer.h"

namespace attnkit_bench {

template <class T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <class U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  bool operator==(const Aligned64&) const { return true; }
};

using FVec = std::vector<float, Aligned64<float>>;

// n floats in an attnkit::HostBuffer: the few operations of a vector that the benchmarks use.
class HugeVec {
 public:
  HugeVec() = default;
  explicit HugeVec(int64_t n) : buf_(n * int64_t{sizeof(float)}) {}
  float* data() { return static_cast<float*>(buf_.data()); }
  float& operator[](int64_t i) { return data()[i]; }

 private:
  attnkit::HostBuffer buf_;
};

}  // namespace attnkit_bench
