#include "core/big_alloc.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace attnkit::detail {
namespace {

constexpr size_t kHuge = size_t{2} << 20;        // one x86-64 huge page
constexpr size_t kMapAtLeast = size_t{4} << 20;  // smaller buffers come from aligned_alloc
constexpr size_t kSmallPage = 4096;

size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

// calloc aligns to 16 bytes only; a vector's aligned loads want 64.
void* small_zeroed(size_t bytes) {
  const size_t n = round_up(bytes == 0 ? 1 : bytes, 64);
  void* p = std::aligned_alloc(64, n);
  if (p != nullptr) std::memset(p, 0, n);
  return p;
}

}  // namespace

#if defined(__linux__)

void* allocate_zeroed(size_t bytes) {
  if (bytes < kMapAtLeast) return small_zeroed(bytes);
  // Map a huge page more than needed, then trim both ends so the buffer starts on a huge page.
  const size_t want = round_up(bytes, kSmallPage), span = want + kHuge;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = round_up(base, kHuge);
  if (start > base) munmap(raw, start - base);
  const uintptr_t end = start + want, span_end = base + span;
  if (span_end > end) munmap(reinterpret_cast<void*>(end), span_end - end);
  void* p = reinterpret_cast<void*>(start);
  madvise(p, want, MADV_HUGEPAGE);  // advice only: without it the buffer still works
  return p;
}

void free_zeroed(void* p, size_t bytes) {
  if (p == nullptr) return;
  if (bytes < kMapAtLeast) return std::free(p);
  munmap(p, round_up(bytes, kSmallPage));
}

bool is_huge_advised(size_t bytes) { return bytes >= kMapAtLeast; }

#else

bool is_huge_advised(size_t) { return false; }
void* allocate_zeroed(size_t bytes) { return small_zeroed(bytes); }
void free_zeroed(void* p, size_t) { std::free(p); }

#endif

}  // namespace attnkit::detail
