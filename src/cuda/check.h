#pragma once

#include <cstdint>

namespace pagedattn::detail::cuda {

/// Checked mode for int64 index arrays on the device: the first i whose values[i * stride]
/// is outside [lo, hi) (negative values skipped when allow_negative), or -1. Synchronises
/// the stream. `bad_value` receives the offending value.
std::int64_t first_out_of_range(const void* values, std::int64_t n, std::int64_t stride, std::int64_t lo,
                                std::int64_t hi, bool allow_negative, int device, void* stream,
                                std::int64_t* bad_value);

}  // namespace pagedattn::detail::cuda
