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
  pagedattn::python::register_errors(m);
  pagedattn::python::bind_attention(m);
  pagedattn::python::bind_cache_ops(m);
  pagedattn::python::bind_block_manager(m);
}
