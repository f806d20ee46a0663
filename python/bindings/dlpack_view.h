// DLPack arrays (nanobind's nb::ndarray) -> pagedattn::TensorView, and the exception type.
// The module never copies: a view points at the caller's memory for the duration of one call.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <optional>

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

/// Registers pagedattn.PagedAttnError (a ValueError subclass) and the translator that turns
/// pagedattn::Error into it, keeping the library's message and its ErrorCode as `.code`.
void register_errors(nb::module_& m);

/// Stream argument of every binding: the integer value of a cudaStream_t (0 = legacy default).
inline void* stream_ptr(std::uintptr_t s) { return reinterpret_cast<void*>(s); }

}  // namespace pagedattn::python
