// Argument checks shared by the linear-time families (linear attention, selective scan, RWKV).
// Nothing here reads tensor data except check_nonnegative / check_finite, which read the values
// a definition requires (Δ ≥ 0, finite decays) before any output is written. Every failure is an
// attnkit::Error naming the argument, what was expected and what was given.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "attnkit/tensor.h"
#include "core/checks.h"  // check_dtype, check_shape, overlap checks

namespace attnkit::lin {

// A CPU view of ndim dimensions, every size positive, strides non-negative.
void check_view(const TensorView& t, const char* name, int ndim);
// check_view plus dtype f32 (the recurrent kernels compute and store in f32).
void check_f32(const TensorView& t, const char* name, int ndim);
// An output writes each element once and shares no memory with any of `inputs`.
void check_output(const TensorView& out, const char* name,
                  std::initializer_list<std::pair<const TensorView*, const char*>> inputs);
// Every element >= 0 and not NaN (f32 views only).
void check_nonnegative(const TensorView& t, const char* name);
// Every element finite (f32 views only).
void check_finite(const TensorView& t, const char* name);
// Whether a view was given (a default-constructed TensorView means "absent").
inline bool given(const TensorView& t) { return !(t.data == nullptr && t.ndim == 0); }

}  // namespace attnkit::lin
