#pragma once
#define PAGEDATTN_VERSION_MAJOR 0
#define PAGEDATTN_VERSION_MINOR 1
#define PAGEDATTN_VERSION_PATCH 0
namespace pagedattn {
/// "0.1.0"
const char* version();
/// True when this build of the library contains the CUDA backend.
bool built_with_cuda();
}  // namespace pagedattn
