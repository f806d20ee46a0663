// One registration function per bound header; module.cpp calls them all.
#pragma once

#include <nanobind/nanobind.h>

namespace pagedattn::python {
void bind_attention(nanobind::module_& m);
void bind_cache_ops(nanobind::module_& m);
void bind_block_manager(nanobind::module_& m);
}  // namespace pagedattn::python
