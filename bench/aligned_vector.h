// FVec: a std::vector<float> on 64-byte aligned storage, as tensor libraries allocate it
// (PyTorch's CPU allocator aligns to 64 bytes; malloc's large blocks are only 16-byte aligned,
// which splits every 64-byte vector block of a row over two cache lines). For the benchmarks
// and the labs, whose inputs should look like a user's tensors.
#pragma once

#include <cstddef>
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

}  // namespace attnkit_bench
