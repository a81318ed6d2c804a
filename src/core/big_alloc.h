// Large zeroed buffers (the KV-cache pool, bandwidth probes) backed by transparent huge pages
// where Linux offers them: a streaming reader then crosses a TLB entry every 2 MiB instead of
// every 4 KiB, and the hardware prefetchers are not stopped at each 4 KiB boundary.
#pragma once

#include <cstddef>

namespace attnkit::detail {

// Zeroed memory of `bytes` bytes, 64-byte aligned (2 MiB from 4 MiB on, on Linux); nullptr when
// it cannot be had. Pages of the large ones become resident when first touched.
void* allocate_zeroed(size_t bytes);
// Frees what allocate_zeroed(bytes) returned (the same bytes).
void free_zeroed(void* p, size_t bytes);
// Whether allocate_zeroed(bytes) maps the buffer on huge-page boundaries and advises it.
bool is_huge_advised(size_t bytes);

}  // namespace attnkit::detail
