// Software prefetches that the optimizer keeps.
//
// GCC treats __builtin_prefetch (and _mm_prefetch, hwy::Prefetch) as free of side effects: a
// function or loop whose only statements are prefetches is deleted at -O1 and above (GCC 12
// drops every call of `for (...) __builtin_prefetch(p + x)` in a helper, noinline or not). The
// kernels that prefetch the rows of their next unit of work do it in exactly such loops, so on
// x86 the instruction is emitted from a volatile asm statement instead.
#pragma once

namespace attnkit::cpu {

// Asks for the 64-byte line holding p to be brought into L2 (prefetcht1).
inline void prefetch_l2(const void* p) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 0, 2);
#endif
}

// The same into L1 (prefetcht0).
inline void prefetch_l1(const void* p) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 0, 3);
#endif
}

// The same with the intent to write (prefetchw): the line arrives ready to be modified.
inline void prefetch_w(const void* p) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm volatile("prefetchw %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 1, 3);
#endif
}

}  // namespace attnkit::cpu
