// FVec: a std::vector<float> on 64-byte aligned storage, as tensor libraries allocate it
// (PyTorch's CPU allocator aligns to 64 bytes; malloc's large blocks are only 16-byte aligned,
// which splits every 64-byte vector block of a row over two cache lines). For the benchmarks
// and the labs, whose inputs should look like a user's tensors.
//
// HugeVec: the same on transparent huge pages (2 MiB aligned and advised with MADV_HUGEPAGE from
// 4 MiB), as a user gets from attnkit::HostBuffer, where THP is "always", or who advises their
// own buffers; on a system whose THP is "madvise" (this one), FVec's tensors get 4 KiB pages.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <new>
#include <vector>

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

template <class T>
struct HugeAligned {
  using value_type = T;
  static constexpr size_t kHuge = size_t{2} << 20, kFrom = size_t{4} << 20;
  HugeAligned() = default;
  template <class U>
  HugeAligned(const HugeAligned<U>&) {}
  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    if (bytes < kFrom) return static_cast<T*>(::operator new(bytes, std::align_val_t(64)));
    void* p = std::aligned_alloc(kHuge, (bytes + kHuge - 1) / kHuge * kHuge);
    if (p == nullptr) throw std::bad_alloc();
    madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without THP the pages stay 4 KiB
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) {
    if (n * sizeof(T) < kFrom) {
      ::operator delete(p, std::align_val_t(64));
    } else {
      std::free(p);
    }
  }
  bool operator==(const HugeAligned&) const { return true; }
};

using HugeVec = std::vector<float, HugeAligned<float>>;

}  // namespace attnkit_bench
