// View checks shared by every validator (attention, linear-time families, ...). Each failure is
// an attnkit::Error naming the argument, what was expected and what was given. Nothing here
// reads tensor data.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "attnkit/tensor.h"

namespace attnkit {

// Non-null data, ndim dimensions, every size positive, strides non-negative, size addressable;
// with require_cpu, also a CPU tensor.
void check_view(const TensorView& t, const char* name, int ndim, bool require_cpu);
void check_dtype(const TensorView& t, const char* name, DType want, const char* why);
// Exact shape; `what` says where the expectation comes from ("the shape of q").
void check_shape(const TensorView& t, const char* name, std::initializer_list<int64_t> want, const char* what);
// An output must not write one element twice.
void check_no_self_overlap(const TensorView& t, const char* name);
// An output shares no memory with `other` (an absent view is skipped).
void check_disjoint(const TensorView& out, const char* out_name, const TensorView& other, const char* other_name);

}  // namespace attnkit
