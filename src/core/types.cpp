
#include "core/backend.h"
#include "core/check.h"
#include "pagedattn/attention.h"
#include "pagedattn/version.h"

namespace pagedattn {

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
    case DType::kUInt8: return 1;
    case DType::kInt32: return 4;
    case DType::kInt64: return 8;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kUInt8: return "uint8";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
  }
  return "?";
}

const char* cache_dtype_name(CacheDType t) {
  switch (t) {
    case CacheDType::kAuto: return "auto";
    case CacheDType::kFp8E4M3: return "fp8_e4m3";
    case CacheDType::kFp8E5M2: return "fp8_e5m2";
  }
  return "?";
}

CacheDType parse_cache_dtype(const std::string& s) {
  if (s == "auto") return CacheDType::kAuto;
  if (s == "fp8" || s == "fp8_e4m3") return CacheDType::kFp8E4M3;
  if (s == "fp8_e5m2") return CacheDType::kFp8E5M2;
  detail::fail(ErrorCode::kUnsupported, "unsupported kv_cache_dtype \"", s,
               "\"; supported: auto, fp8, fp8_e4m3, fp8_e5m2");
}

std::string device_name(const Device& d) {
  if (d.type == DeviceType::kCPU) return "cpu";
  return detail::cat("cuda:", d.index);
}

std::int64_t TensorView::numel() const {
  std::int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

bool TensorView::is_contiguous_from(int first_dim) const {
  std::int64_t expect = 1;
  for (int i = ndim - 1; i >= first_dim; --i) {
    if (shape[i] != 1 && strides[i] != expect) return false;
    expect *= shape[i];
  }
  return true;
}

TensorView TensorView::contiguous(void* data, DType dtype, std::initializer_list<std::int64_t> shape,
                                  Device device) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.ndim = static_cast<int>(shape.size());
  if (t.ndim > kMaxDims)
    detail::fail(ErrorCode::kInvalidArgument, "TensorView supports at most ", kMaxDims, " dimensions; got ", t.ndim);
  int i = 0;
  for (auto s : shape) t.shape[i++] = s;
  std::int64_t st = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    t.strides[d] = st;
    st *= t.shape[d];
  }
  return t;
}

TensorView TensorView::strided(void* data, DType dtype, std::initializer_list<std::int64_t> shape,
                               std::initializer_list<std::int64_t> strides, Device device) {
  if (shape.size() != strides.size())
    detail::fail(ErrorCode::kInvalidArgument, "TensorView::strided: ", shape.size(), " sizes but ", strides.size(),
                 " strides");
  TensorView t = contiguous(data, dtype, shape, device);
  int i = 0;
  for (auto s : strides) t.strides[i++] = s;
  return t;
}

int v2_max_num_partitions(int max_seq_len) {
  return max_seq_len <= 0 ? 1 : (max_seq_len + kPartitionSize - 1) / kPartitionSize;
}

bool vllm_rule_prefers_v1(int num_seqs, int num_heads, int max_seq_len) {
  const int parts = v2_max_num_partitions(max_seq_len);
  return max_seq_len <= 8192 && (parts == 1 || static_cast<long long>(num_seqs) * num_heads > 512);
}

const char* version() { return "0.1.0"; }

bool built_with_cuda() {
#ifdef PAGEDATTN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

namespace detail {
void fail_no_cuda(const char* op) {
  fail(ErrorCode::kBackendError, op,
       ": tensors are on a CUDA device but this build of pagedattn has no CUDA backend "
       "(configure with PAGEDATTN_ENABLE_CUDA=ON)");
}

std::string shape_str(const TensorView& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + "]";
}

std::string strides_str(const TensorView& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + std::to_string(t.strides[i]);
  return s + "]";
}
}  // namespace detail

}  // namespace pagedattn
