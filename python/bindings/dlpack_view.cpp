#include "dlpack_view.h"

#include <nanobind/stl/string.h>

#include <string>

namespace pagedattn::python {
namespace {

// DLPack type codes (dlpack.h, DLDataTypeCode) that nanobind's dtype enum does not all name.
constexpr std::uint8_t kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4;
// DLPack 1.1 float8 codes (kDLFloat8_e3m4 .. kDLFloat8_e5m2fnuz): an fp8 cache is raw bytes to us.
constexpr std::uint8_t kDLFloat8First = 7, kDLFloat8Last = 13;
// DLPack device types.
constexpr std::int32_t kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13;

[[noreturn]] void fail(const char* name, const std::string& what) {
  throw Error(ErrorCode::kInvalidArgument, std::string(name) + ": " + what);
}

DType map_dtype(nb::dlpack::dtype t, const char* name) {
  if (t.lanes != 1) fail(name, "vector dtypes (lanes != 1) are not supported");
  const std::uint8_t code = t.code;
  if (code == kDLFloat && t.bits == 32) return DType::kFloat32;
  if (code == kDLFloat && t.bits == 16) return DType::kFloat16;
  if (code == kDLBfloat && t.bits == 16) return DType::kBFloat16;
  if (code == kDLInt && t.bits == 32) return DType::kInt32;
  if (code == kDLInt && t.bits == 64) return DType::kInt64;
  // One byte per element: uint8 (vLLM's fp8 cache), int8, or a framework fp8 dtype.
  if (t.bits == 8 && (code == kDLUInt || code == kDLInt || (code >= kDLFloat8First && code <= kDLFloat8Last)))
    return DType::kUInt8;
  fail(name, "unsupported array dtype (DLPack code " + std::to_string(code) + ", " + std::to_string(t.bits) +
                 " bits); supported: float32, float16, bfloat16, int32, int64, uint8/int8/float8 bytes");
}

Device map_device(std::int32_t type, std::int32_t id, const char* name) {
  switch (type) {
    case kDLCPU:
    case kDLCUDAHost:  // pinned host memory is host memory
      return Device{DeviceType::kCPU, 0};
    case kDLCUDA:
    case kDLCUDAManaged:
      return Device{DeviceType::kCUDA, id};
    default:
      fail(name, "unsupported device (DLPack device type " + std::to_string(type) + "); supported: cpu, cuda");
  }
}

template <typename A>
TensorView view_of(const A& a, const char* name) {
  TensorView v;
  const size_t nd = a.ndim();
  if (nd > static_cast<size_t>(TensorView::kMaxDims))
    fail(name, "has " + std::to_string(nd) + " dimensions; at most " + std::to_string(TensorView::kMaxDims) +
                   " are supported");
  v.data = const_cast<void*>(static_cast<const void*>(a.data()));
  v.dtype = map_dtype(a.dtype(), name);
  v.device = map_device(a.device_type(), a.device_id(), name);
  v.ndim = static_cast<int>(nd);
  for (size_t i = 0; i < nd; ++i) {
    v.shape[i] = static_cast<std::int64_t>(a.shape(i));
    v.strides[i] = a.stride(i);  // nanobind reports strides in elements, as TensorView wants
  }
  return v;
}

}  // namespace

TensorView to_view(const Array& a, const char* name) { return view_of(a, name); }
TensorView to_view(const ArrayRO& a, const char* name) { return view_of(a, name); }
TensorView to_view(const std::optional<ArrayRO>& a, const char* name) {
  return a ? view_of(*a, name) : TensorView{};
}

namespace {

[[noreturn]] void fail_type(const char* op, const char* name, const char* kind, nb::handle got) {
  throw nb::type_error((std::string(op) + ": " + name + " must be " + kind + "; got " + Py_TYPE(got.ptr())->tp_name)
                           .c_str());
}

template <typename T>
T cast_arg(nb::handle h, const char* op, const char* name, const char* kind) {
  T v{};
  if (!nb::try_cast<T>(h, v, /*convert=*/true)) fail_type(op, name, kind, h);
  return v;
}

}  // namespace

const ArrayRO& Imports::import(nb::handle h, const char* op, const char* name, Access access) {
  if (count_ == kMax) throw Error(ErrorCode::kBackendError, std::string(op) + ": too many array arguments");
  ArrayRO& slot = held_[count_];
  // No conversion: an argument that is not already a DLPack array (or capsule) is an error,
  // never a silent copy.
  bool ok;
  if (access == Access::kWrite) {
    Array a;
    ok = nb::try_cast<Array>(h, a, /*convert=*/false);
    if (ok) slot = ArrayRO(a);
  } else {
    ok = nb::try_cast<ArrayRO>(h, slot, /*convert=*/false);
  }
  if (!ok)
    fail_type(op, name,
              access == Access::kWrite ? "a writable DLPack array (NumPy, PyTorch, CuPy, ...)"
                                       : "a DLPack array (NumPy, PyTorch, CuPy, ...)",
              h);
  ++count_;
  return slot;
}

TensorView Imports::view(nb::handle h, const char* op, const char* name, Access access, bool optional) {
  if (optional && h.is_none()) return TensorView{};
  return view_of(import(h, op, name, access), name);
}

void* Imports::bytes(nb::handle h, const char* op, const char* name, std::size_t& nbytes) {
  const ArrayRO& a = import(h, op, name, Access::kWrite);
  nbytes = a.nbytes();
  return const_cast<void*>(static_cast<const void*>(a.data()));
}

void Imports::scale(nb::handle h, const char* op, const char* name, float& per_tensor, TensorView& per_head) {
  if (PyFloat_Check(h.ptr()) || PyLong_Check(h.ptr())) {
    per_tensor = static_cast<float>(float_arg(h, op, name));
    return;
  }
  per_head = view(h, op, name, Access::kRead);
}

int int_arg(nb::handle h, const char* op, const char* name) { return cast_arg<int>(h, op, name, "an int (32-bit)"); }
long long int64_arg(nb::handle h, const char* op, const char* name) {
  return cast_arg<long long>(h, op, name, "an int (64-bit)");
}
double float_arg(nb::handle h, const char* op, const char* name) { return cast_arg<double>(h, op, name, "a float"); }
std::string str_arg(nb::handle h, const char* op, const char* name) {
  if (!PyUnicode_Check(h.ptr())) fail_type(op, name, "a str", h);
  return nb::cast<std::string>(h);
}
bool bool_arg(nb::handle h, const char* op, const char* name) {
  const int r = PyObject_IsTrue(h.ptr());
  if (r < 0) {
    PyErr_Clear();
    fail_type(op, name, "a bool", h);
  }
  return r == 1;
}
void* stream_arg(nb::handle h, const char* op) {
  return stream_ptr(cast_arg<std::uintptr_t>(h, op, "stream", "an int (a cudaStream_t)"));
}

void register_errors(nb::module_& m) {
  // The new reference is kept for the life of the process and never released: a static
  // nb::object would be decref'd by its destructor after the interpreter has shut down.
  static PyObject* const error_type = PyErr_NewExceptionWithDoc(
      "pagedattn._C.PagedAttnError",
      "Raised for every error the pagedattn library reports (bad shapes, dtypes, devices, "
      "unsupported parameters, checked-mode data errors, backend failures). The message is the "
      "library's; `.code` is one of 'invalid_argument', 'unsupported', 'data_error', 'backend_error'.",
      PyExc_ValueError, nullptr);
  if (error_type == nullptr) throw nb::python_error();
  m.attr("PagedAttnError") = nb::handle(error_type);
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const Error& e) {
      const char* code = "invalid_argument";
      switch (e.code()) {
        case ErrorCode::kInvalidArgument: code = "invalid_argument"; break;
        case ErrorCode::kUnsupported: code = "unsupported"; break;
        case ErrorCode::kDataError: code = "data_error"; break;
        case ErrorCode::kBackendError: code = "backend_error"; break;
      }
      nb::object exc = nb::handle(error_type)(nb::str(e.what()));
      nb::setattr(exc, "code", nb::str(code));
      PyErr_SetObject(error_type, exc.ptr());
    }
  });
}

}  // namespace pagedattn::python
