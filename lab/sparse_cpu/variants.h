// The sparse forward variants of the lab (see harness.cc), by number.
#pragma once

#include <map>
#include <string>

#include "core/problem.h"

namespace attnkit::lab {
using FwdFn = void (*)(const Problem&, const TensorView&, const TensorView&, const TensorView&, const TensorView&,
                       const TensorView&);
std::map<std::string, FwdFn> variants();
}  // namespace attnkit::lab
