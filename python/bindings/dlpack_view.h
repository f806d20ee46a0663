// DLPack arrays (nanobind's nb::ndarray) -> pagedattn::TensorView, and the exception type.
// The module never copies: a view points at the caller's memory for the duration of one call.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "pagedattn/types.h"

namespace pagedattn::python {

namespace nb = nanobind;

/// Any DLPack-capable array, any dtype, any device, writable (outputs, caches).
using Array = nb::ndarray<>;
/// Same, read-only access is enough (inputs; lets read-only NumPy arrays through).
using ArrayRO = nb::ndarray<nb::ro>;

/// Describes `a` without copying. `name` is the parameter name for error messages.
/// Throws pagedattn::Error for a dtype or device the library has no mapping for.
TensorView to_view(const Array& a, const char* name);
TensorView to_view(const ArrayRO& a, const char* name);
/// An absent optional array becomes an undefined view (data == nullptr, ndim == 0).
TensorView to_view(const std::optional<ArrayRO>& a, const char* name);

/// Whether an imported array is only read or also written by the call.
enum class Access { kRead, kWrite };

/// The DLPack imports of one call. Every array argument of a binding goes through `view`, which
/// names the argument in its errors; the imports stay alive until the library call has
/// returned (a torch capsule's memory is owned by its import).
class Imports {
 public:
  /// `h` as a view. A non-array (or a read-only array where `access` is kWrite) raises
  /// TypeError "op: name must be ...". With `optional`, None gives an undefined view.
  TensorView view(nb::handle h, const char* op, const char* name, Access access, bool optional = false);
  /// A writable array as raw bytes (the auto path's workspace): its data pointer and size.
  void* bytes(nb::handle h, const char* op, const char* name, std::size_t& nbytes);
  /// k_scale / v_scale as the package passes them: a Python float or int is the per-tensor
  /// scale (`per_tensor`; `per_head` stays undefined), an array is the per-kv-head scales
  /// (`per_head`, the library's k_scales / v_scales; `per_tensor` stays 1.0).
  void scale(nb::handle h, const char* op, const char* name, float& per_tensor, TensorView& per_head);

 private:
  const ArrayRO& import(nb::handle h, const char* op, const char* name, Access access);
  static constexpr int kMax = 16;
  ArrayRO held_[kMax];
  int count_ = 0;
};

/// A scalar argument converted as Python would (ints through __index__, floats through
/// __float__); anything else raises TypeError "op: name must be <kind>; got <type>".
int int_arg(nb::handle h, const char* op, const char* name);
long long int64_arg(nb::handle h, const char* op, const char* name);
double float_arg(nb::handle h, const char* op, const char* name);
/// Truth value, as Python's bool(h).
bool bool_arg(nb::handle h, const char* op, const char* name);
std::string str_arg(nb::handle h, const char* op, const char* name);
/// The stream argument: the integer value of a cudaStream_t (0 = legacy default stream).
void* stream_arg(nb::handle h, const char* op);

/// Registers pagedattn.PagedAttnError (a ValueError subclass) and the translator that turns
/// pagedattn::Error into it, keeping the library's message and its ErrorCode as `.code`.
void register_errors(nb::module_& m);

/// Stream argument of every binding: the integer value of a cudaStream_t (0 = legacy default).
inline void* stream_ptr(std::uintptr_t s) { return reinterpret_cast<void*>(s); }

}  // namespace pagedattn::python
