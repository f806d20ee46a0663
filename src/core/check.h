// Building error messages: every message names the parameter, the value and what is allowed.
// Messages are built with plain string appends (no iostreams): cheap, and independent of the
// process's locale machinery, which a host application (a Python interpreter, say) owns.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>
#include <utility>

#include "pagedattn/types.h"

namespace pagedattn::detail {

inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, const char* v) { s += v ? v : "(null)"; }
inline void append(std::string& s, char v) { s += v; }
inline void append(std::string& s, bool v) { s += v ? "true" : "false"; }
inline void append(std::string& s, double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  s += buf;
}
template <typename T, typename = std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool> && !std::is_same_v<T, char>>>
void append(std::string& s, T v) {
  s += std::to_string(v);
}
inline void append(std::string& s, float v) { append(s, static_cast<double>(v)); }

/// Concatenates strings, C strings, characters, integers and floating-point values.
template <typename... Args>
std::string cat(Args&&... args) {
  std::string s;
  (append(s, std::forward<Args>(args)), ...);
  return s;
}

template <typename... Args>
[[noreturn]] void fail(ErrorCode code, Args&&... args) {
  throw Error(code, cat(std::forward<Args>(args)...));
}

/// "[2, 32, 128]"
std::string shape_str(const TensorView& t);
/// "[8192, 128, 1]"
std::string strides_str(const TensorView& t);

}  // namespace pagedattn::detail
