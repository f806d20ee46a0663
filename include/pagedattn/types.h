// Public value types of pagedattn: dtypes, devices, tensor views and the error type.
// No CUDA or framework types appear in the public headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace pagedattn {

/// Element type of a tensor view.
enum class DType : std::uint8_t {
  kFloat32,
  kFloat16,
  kBFloat16,
  kUInt8,  ///< raw bytes; an fp8 KV cache is stored as kUInt8
  kInt32,
  kInt64,
};

/// How the KV cache stores its elements (SPEC §3 "FP8 KV cache").
enum class CacheDType : std::uint8_t {
  kAuto,     ///< same dtype as the query
  kFp8E4M3,  ///< one byte per element, E4M3 "fn" (no infinities), scaled by k_scale/v_scale
  kFp8E5M2,  ///< one byte per element, IEEE-like E5M2, scaled by k_scale/v_scale
};

enum class DeviceType : std::uint8_t { kCPU, kCUDA };

/// Where a tensor lives.
struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;  ///< CUDA ordinal; 0 for the CPU
  bool operator==(const Device& o) const { return type == o.type && (type == DeviceType::kCPU || index == o.index); }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

/// Size in bytes of one element of `t`.
std::size_t dtype_size(DType t);
/// Lower-case name ("float16", "int32", ...), used in error messages.
const char* dtype_name(DType t);
/// "auto", "fp8_e4m3" or "fp8_e5m2".
const char* cache_dtype_name(CacheDType t);
/// Parses vLLM's kv_cache_dtype strings: "auto", "fp8" (= "fp8_e4m3"), "fp8_e4m3", "fp8_e5m2".
/// Throws pagedattn::Error naming the value and the accepted set otherwise.
CacheDType parse_cache_dtype(const std::string& s);
std::string device_name(const Device& d);

/// A non-owning view of a strided tensor: pointer, dtype, device, shape and strides
/// (strides counted in elements, as in PyTorch and DLPack). Up to 5 dimensions.
struct TensorView {
  static constexpr int kMaxDims = 5;
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  Device device{};
  int ndim = 0;
  std::int64_t shape[kMaxDims] = {0, 0, 0, 0, 0};
  std::int64_t strides[kMaxDims] = {0, 0, 0, 0, 0};

  /// True when the view refers to a tensor (an absent optional tensor has data == nullptr
  /// and ndim == 0).
  bool defined() const { return ndim > 0 || data != nullptr; }
  std::int64_t numel() const;
  std::int64_t size(int d) const { return shape[d]; }
  std::int64_t stride(int d) const { return strides[d]; }
  /// True when the trailing dimensions from `first_dim` on are packed row-major.
  bool is_contiguous_from(int first_dim) const;
  bool is_contiguous() const { return is_contiguous_from(0); }

  /// A contiguous (row-major) view of `shape`.
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<std::int64_t> shape,
                               Device device = {});
  /// A view with explicit strides (in elements).
  static TensorView strided(void* data, DType dtype, std::initializer_list<std::int64_t> shape,
                            std::initializer_list<std::int64_t> strides, Device device = {});
};

/// What went wrong, for callers that map errors to their own types.
enum class ErrorCode : std::uint8_t {
  kInvalidArgument,  ///< shapes, dtypes, devices, strides or scalar parameters disagree
  kUnsupported,      ///< a value outside the supported dispatch matrix (SPEC §4)
  kDataError,        ///< checked mode found a bad seq_len or block id in the data
  kBackendError,     ///< the backend failed (CUDA error, no backend for the device)
};

/// The one exception type the library throws. what() is a complete sentence naming the
/// parameter, the value given and what is allowed.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& msg) : std::runtime_error(msg), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace pagedattn
