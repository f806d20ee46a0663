// pagedattn._C: the native half of the Python package. The Python half (python/pagedattn/)
// turns framework arrays into DLPack, fills defaults and picks the stream.
#include "bindings.h"
#include "dlpack_view.h"
#include "pagedattn/attention.h"
#include "pagedattn/version.h"

NB_MODULE(_C, m) {
  namespace nb = nanobind;
  m.doc() = "Native bindings of the pagedattn C++ library (DLPack arrays, zero-copy).";
  m.attr("__version__") = pagedattn::version();
  m.attr("PARTITION_SIZE") = pagedattn::kPartitionSize;  // V2's partition length (SPEC)
  m.def("built_with_cuda", &pagedattn::built_with_cuda, "True when the library has its CUDA backend.");
  m.def(
      "build_info",
      [] {
        nb::dict d;
        d["version"] = pagedattn::version();
        d["cuda"] = pagedattn::built_with_cuda();
        d["cuda_architectures"] = PAGEDATTN_PY_CUDA_ARCHS;  // as given to CMake; "" without CUDA
        return d;
      },
      "What this build holds: version, cuda (bool), cuda_architectures (CMake's list, '' without CUDA).");
  pagedattn::python::register_errors(m);
  pagedattn::python::bind_attention(m);
  pagedattn::python::bind_cache_ops(m);
  pagedattn::python::bind_block_manager(m);
}
