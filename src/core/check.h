// Building error messages: every message names the parameter, the value and what is allowed.
#pragma once

#include <sstream>
#include <string>
#include <utility>

#include "pagedattn/types.h"

namespace pagedattn::detail {

template <typename... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(ErrorCode code, Args&&... args) {
  throw Error(code, cat(std::forward<Args>(args)...));
}

/// "[2, 32, 128]"
std::string shape_str(const TensorView& t);

}  // namespace pagedattn::detail
