// attnkit::Error: the one exception type every entry point throws on bad input.
// Its message names the argument, what was expected and what was given.
#pragma once

#include <stdexcept>
#include <string>

namespace attnkit {

class Error : public std::invalid_argument {
 public:
  explicit Error(const std::string& what) : std::invalid_argument("attnkit: " + what) {}
};

}  // namespace attnkit
