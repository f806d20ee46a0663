#include "bench_case.h"

#include <algorithm>
#include <cctype>
#include <sstream>
#include <stdexcept>

namespace pagedattn::bench {

const char* algo_name(Algo a) {
  switch (a) {
    case Algo::kV1: return "v1";
    case Algo::kV2: return "v2";
    case Algo::kAuto: return "auto";
    case Algo::kVllm: return "vllm";
  }
  return "?";
}

const char* mode_name(TimingMode m) { return m == TimingMode::kEager ? "eager" : "graph"; }
const char* dist_name(SeqDist d) { return d == SeqDist::kFixed ? "fixed" : "uniform"; }

const char* short_dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "fp32";
    case DType::kFloat16: return "fp16";
    case DType::kBFloat16: return "bf16";
    default: return dtype_name(t);
  }
}

std::int64_t Case::attended_tokens(int len) const {
  if (window_left < 0) return len;
  return std::min<std::int64_t>(len, std::int64_t(rows_per_seq()) + window_left);
}

std::string Case::variant_key() const {
  std::ostringstream os;
  const char* sep = "";
  auto item = [&os, &sep]() -> std::ostringstream& {
    os << sep;
    sep = ", ";
    return os;
  };
  if (window_left >= 0) item() << "window " << window_left;
  if (soft_cap > 0.0f) item() << "soft-cap " << soft_cap;
  if (q_len > 0) item() << "q_len " << q_len;
  if (lse) item() << "lse";
  if (per_head_scales) item() << "per-head scales";
  if (!kernel.empty()) item() << "kernel " << kernel;
  return os.str();
}

std::string Case::config_key() const {
  std::ostringstream os;
  os << short_dtype_name(dtype) << " kv=" << cache_dtype_name(kv_cache_dtype)
     << " h" << num_heads << "/" << num_kv_heads << " d" << head_size << " bs" << block_size << " b" << batch;
  if (dist != SeqDist::kFixed) os << " " << dist_name(dist);
  if (alibi) os << " alibi";
  if (batch_invariant) os << " batch-invariant";
  const std::string v = variant_key();
  if (!v.empty()) os << " [" << v << "]";
  return os.str();
}

std::string Case::describe() const {
  std::ostringstream os;
  os << "[" << group << "] " << short_dtype_name(dtype) << ", kv " << cache_dtype_name(kv_cache_dtype) << ", heads "
     << num_heads << "/" << num_kv_heads << ", head " << head_size << ", block " << block_size << ", batch " << batch
     << ", seq " << (dist == SeqDist::kUniform ? "<=" : "") << seq_len;
  if (dist == SeqDist::kUniform) os << " (uniform)";
  if (alibi) os << ", alibi";
  const std::string v = variant_key();
  if (!v.empty()) os << ", " << v;
  return os.str();
}

Tolerance tolerance_for(DType t) {
  // Inputs are exact in T and the reference decodes them exactly; what is left is T's rounding
  // of the output (and of the softmax weights where a kernel converts them to T), relative to
  // values of magnitude <= 1.
  switch (t) {
    case DType::kFloat32: return {2e-5, 2e-4};
    case DType::kFloat16: return {1e-3, 2e-3};
    case DType::kBFloat16: return {8e-3, 8e-3};
    default: return {0.0, 0.0};
  }
}

namespace {
std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}
std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}
}  // namespace

DType parse_dtype(const std::string& s) {
  const std::string v = lower(trim(s));
  if (v == "float32" || v == "fp32" || v == "float") return DType::kFloat32;
  if (v == "float16" || v == "fp16" || v == "half") return DType::kFloat16;
  if (v == "bfloat16" || v == "bf16") return DType::kBFloat16;
  throw std::invalid_argument("unknown --dtype \"" + s + "\"; supported: float32, float16, bfloat16");
}

CacheDType parse_kv_dtype(const std::string& s) { return parse_cache_dtype(lower(trim(s))); }

Algo parse_algo(const std::string& s) {
  const std::string v = lower(trim(s));
  if (v == "v1") return Algo::kV1;
  if (v == "v2") return Algo::kV2;
  if (v == "auto") return Algo::kAuto;
  if (v == "vllm") return Algo::kVllm;
  throw std::invalid_argument("unknown --algo \"" + s + "\"; supported: v1, v2, auto, vllm, all");
}

SeqDist parse_dist(const std::string& s) {
  const std::string v = lower(trim(s));
  if (v == "fixed") return SeqDist::kFixed;
  if (v == "uniform") return SeqDist::kUniform;
  throw std::invalid_argument("unknown --seq-len-dist \"" + s + "\"; supported: fixed, uniform");
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    item = trim(item);
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

int parse_size(const std::string& s) {
  std::string v = lower(trim(s));
  long long mult = 1;
  if (!v.empty() && v.back() == 'k') {
    mult = 1024;
    v.pop_back();
  }
  if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos)
    throw std::invalid_argument("\"" + s + "\" is not a positive integer (a k suffix means x1024)");
  const long long n = v.size() > 10 ? 0 : std::stoll(v) * mult;  // more than 10 digits is out of range anyway
  if (n <= 0 || n > (1ll << 30)) throw std::invalid_argument("\"" + s + "\" is out of range (1 .. 2^30)");
  return static_cast<int>(n);
}

std::pair<int, int> parse_heads(const std::string& s) {
  const auto slash = s.find('/');
  if (slash == std::string::npos) {
    const int h = parse_size(s);
    return {h, h};
  }
  const int q = parse_size(s.substr(0, slash));
  const int kv = parse_size(s.substr(slash + 1));
  return {q, kv};
}

std::vector<int> parse_size_list(const std::string& s) {
  std::vector<int> out;
  for (const std::string& item : split_list(s)) {
    const auto c1 = item.find(':');
    if (c1 == std::string::npos) {
      out.push_back(parse_size(item));
      continue;
    }
    const auto c2 = item.find(':', c1 + 1);
    const int lo = parse_size(item.substr(0, c1));
    const int hi = parse_size(item.substr(c1 + 1, c2 == std::string::npos ? std::string::npos : c2 - c1 - 1));
    if (hi < lo) throw std::invalid_argument("range \"" + item + "\" ends below its start");
    std::string step = c2 == std::string::npos ? "x2" : item.substr(c2 + 1);
    if (step.size() < 2 || (step[0] != 'x' && step[0] != '+'))
      throw std::invalid_argument("range step in \"" + item + "\" must be xF (geometric) or +S (linear)");
    const int k = parse_size(step.substr(1));
    if (step[0] == 'x' && k < 2) throw std::invalid_argument("geometric factor in \"" + item + "\" must be >= 2");
    for (long long v = lo; v <= hi; v = step[0] == 'x' ? v * k : v + k) out.push_back(static_cast<int>(v));
  }
  if (out.empty()) throw std::invalid_argument("empty list \"" + s + "\"");
  return out;
}

}  // namespace pagedattn::bench
