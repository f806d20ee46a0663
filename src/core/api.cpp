// Public entry points: validate once, then hand the call to the backend of the tensors' device.
#include "core/backend.h"
#include "core/check.h"

namespace pagedattn {
namespace {

using detail::AttentionShape;

bool on_cuda(const AttentionShape& s) { return s.device.type == DeviceType::kCUDA; }

void check_data(const PagedAttentionParams& p, const AttentionShape& s) {
  if (!p.checked) return;
  if (!on_cuda(s)) return detail::check_attention_data_host(p, s);
#ifdef PAGEDATTN_WITH_CUDA
  detail::cuda::check_attention_data(p, s);
#endif
}

}  // namespace

void paged_attention_v1(const PagedAttentionParams& p) {
  const AttentionShape s = detail::validate_attention(p, "paged_attention_v1");
  detail::reject_variants(p, "paged_attention_v1");
  if (s.num_seqs == 0) return;
  if (on_cuda(s)) {
#ifdef PAGEDATTN_WITH_CUDA
    check_data(p, s);
    return detail::cuda::attention_v1(p, s);
#else
    detail::fail_no_cuda("paged_attention_v1");
#endif
  }
  check_data(p, s);
  detail::cpu::attention_v1(p, s);
}

void paged_attention_v2(const PagedAttentionParams& p, const V2Workspace& ws) {
  const AttentionShape s = detail::validate_attention(p, "paged_attention_v2");
  detail::reject_variants(p, "paged_attention_v2");
  detail::validate_v2_workspace(p, s, ws);
  if (s.num_seqs == 0) return;
  if (on_cuda(s)) {
#ifdef PAGEDATTN_WITH_CUDA
    check_data(p, s);
    return detail::cuda::attention_v2(p, s, ws);
#else
    detail::fail_no_cuda("paged_attention_v2");
#endif
  }
  check_data(p, s);
  detail::cpu::attention_v2(p, s, ws);
}

std::size_t paged_attention_workspace_size(const PagedAttentionParams& p) {
  const AttentionShape s = detail::validate_attention(p, "paged_attention_workspace_size");
  if (on_cuda(s)) {
#ifdef PAGEDATTN_WITH_CUDA
    return detail::cuda::auto_workspace_size(p, s);
#else
    detail::fail_no_cuda("paged_attention_workspace_size");
#endif
  }
  return 0;  // the CPU backend's auto path is V1, which needs no workspace
}

void paged_attention(const PagedAttentionParams& p, void* workspace, std::size_t workspace_bytes) {
  const AttentionShape s = detail::validate_attention(p, "paged_attention");
  if (on_cuda(s)) {
#ifdef PAGEDATTN_WITH_CUDA
    // plans once: checks the workspace against the plan, then launches
    if (s.num_seqs > 0) check_data(p, s);
    return detail::cuda::attention_auto(p, s, workspace, workspace_bytes);
#else
    detail::fail_no_cuda("paged_attention");
#endif
  }
  (void)workspace;
  (void)workspace_bytes;
  if (s.num_seqs == 0) return;
  check_data(p, s);
  detail::cpu::attention_v1(p, s);
}

Support is_supported(const PagedAttentionParams& p) {
  Support r;
  try {
    const AttentionShape s = detail::validate_attention(p, "paged_attention");
    if (on_cuda(s)) {
#ifdef PAGEDATTN_WITH_CUDA
      detail::cuda::check_supported(p, s);
#else
      detail::fail_no_cuda("paged_attention");
#endif
    }
  } catch (const Error& e) {
    r.ok = false;
    r.reason = e.what();
  } catch (const std::exception& e) {
    r.ok = false;
    r.reason = std::string("paged_attention: ") + e.what();
  }
  return r;
}

void merge_attention_states(const MergeStatesParams& p) {
  const detail::MergeShape s = detail::validate_merge_states(p);
  if (s.rows == 0) return;
  if (s.device.type == DeviceType::kCUDA) {
#ifdef PAGEDATTN_WITH_CUDA
    return detail::cuda::merge_states(p, s);
#else
    detail::fail_no_cuda("merge_attention_states");
#endif
  }
  detail::cpu::merge_states(p, s);
}

}  // namespace pagedattn
