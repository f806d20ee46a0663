// Attention entry points. Every one takes the same `call`: a tuple with one entry per field of
// PAGEDATTN_CALL_FIELDS, in that order, packed by the package (pagedattn/_call.py:
// attention_call, whose parameters are these names in this order; the package checks that at
// import against ATTENTION_FIELDS). Each field is named once, in the list below, and converted
// once, in AttentionCall's constructor.
#include <nanobind/stl/string.h>

#include <chrono>
#include <string>

#include "bindings.h"
#include "dlpack_view.h"
#include "pagedattn/attention.h"

namespace pagedattn::python {
namespace {

// SPEC §5 order (vLLM), then the package's keywords: checked, stream, the auto path's
// workspace, the SPEC §3b variants and the auto path's planner hints.
#define PAGEDATTN_CALL_FIELDS(X)                                                                                \
  X(out) X(query) X(key_cache) X(value_cache) X(num_kv_heads) X(scale) X(block_tables) X(seq_lens) X(block_size) \
  X(max_seq_len) X(alibi_slopes) X(kv_cache_dtype) X(k_scale) X(v_scale) X(tp_rank) X(blocksparse_local_blocks)   \
  X(blocksparse_vert_stride) X(blocksparse_block_size) X(blocksparse_head_sliding_step) X(checked) X(stream)     \
  X(workspace) X(query_start_loc) X(max_query_len) X(window_left) X(logits_soft_cap) X(lse) X(total_tokens)     \
  X(batch_invariant)

enum Field : int {
#define PAGEDATTN_FIELD_ENUM(name) f_##name,
  PAGEDATTN_CALL_FIELDS(PAGEDATTN_FIELD_ENUM)
#undef PAGEDATTN_FIELD_ENUM
  kNumFields
};

constexpr const char* kFieldNames[kNumFields] = {
#define PAGEDATTN_FIELD_NAME(name) #name,
    PAGEDATTN_CALL_FIELDS(PAGEDATTN_FIELD_NAME)
#undef PAGEDATTN_FIELD_NAME
};

// One call's parameters, converted from the package's tuple. Holds the DLPack imports, so it
// must outlive the library call.
struct AttentionCall {
  PagedAttentionParams p;
  void* workspace = nullptr;  ///< the auto path's workspace; nullptr when the caller gave none
  std::size_t workspace_bytes = 0;
  bool has_workspace = false;
  Imports imports;

  AttentionCall(nb::handle call, const char* op) {
    PyObject* t = call.ptr();
    if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != kNumFields)
      throw nb::type_error((std::string(op) + ": expected the argument tuple of pagedattn._call.attention_call (" +
                            std::to_string(kNumFields) + " fields)")
                               .c_str());
    auto at = [t](Field f) { return nb::handle(PyTuple_GET_ITEM(t, f)); };
    auto name = [](Field f) { return kFieldNames[f]; };
    auto array = [&](Field f, Access access = Access::kRead, bool optional = false) {
      return imports.view(at(f), op, name(f), access, optional);
    };
    auto i32 = [&](Field f) { return int_arg(at(f), op, name(f)); };

    p.out = array(f_out, Access::kWrite);
    p.query = array(f_query);
    p.key_cache = array(f_key_cache);
    p.value_cache = array(f_value_cache);
    p.num_kv_heads = i32(f_num_kv_heads);
    p.scale = static_cast<float>(float_arg(at(f_scale), op, name(f_scale)));
    p.block_tables = array(f_block_tables);
    p.seq_lens = array(f_seq_lens);
    p.block_size = i32(f_block_size);
    p.max_seq_len = i32(f_max_seq_len);
    p.alibi_slopes = array(f_alibi_slopes, Access::kRead, /*optional=*/true);
    p.kv_cache_dtype = parse_cache_dtype(str_arg(at(f_kv_cache_dtype), op, name(f_kv_cache_dtype)));
    imports.scale(at(f_k_scale), op, name(f_k_scale), p.k_scale, p.k_scales);
    imports.scale(at(f_v_scale), op, name(f_v_scale), p.v_scale, p.v_scales);
    p.tp_rank = i32(f_tp_rank);
    p.blocksparse.local_blocks = i32(f_blocksparse_local_blocks);
    p.blocksparse.vert_stride = i32(f_blocksparse_vert_stride);
    p.blocksparse.block_size = i32(f_blocksparse_block_size);
    p.blocksparse.head_sliding_step = i32(f_blocksparse_head_sliding_step);
    p.checked = bool_arg(at(f_checked), op, name(f_checked));
    p.stream = stream_arg(at(f_stream), op);
    if (!at(f_workspace).is_none()) {
      has_workspace = true;
      workspace = imports.bytes(at(f_workspace), op, name(f_workspace), workspace_bytes);
    }
    p.query_start_loc = array(f_query_start_loc, Access::kRead, /*optional=*/true);
    p.max_query_len = i32(f_max_query_len);
    p.window_left = i32(f_window_left);
    p.logits_soft_cap = static_cast<float>(float_arg(at(f_logits_soft_cap), op, name(f_logits_soft_cap)));
    p.lse = array(f_lse, Access::kWrite, /*optional=*/true);
    p.total_tokens = int64_arg(at(f_total_tokens), op, name(f_total_tokens));
    p.batch_invariant = bool_arg(at(f_batch_invariant), op, name(f_batch_invariant));
  }

  /// V1 and V2 keep vLLM's contract: the auto path's own arguments are errors there (the
  /// library itself rejects the SPEC §3b variants by name).
  void reject_auto_only(const char* op) const {
    const char* field = has_workspace ? "workspace"
                        : p.total_tokens != 0 ? "total_tokens"
                        : p.batch_invariant   ? "batch_invariant"
                                              : nullptr;
    if (field != nullptr)
      throw Error(ErrorCode::kInvalidArgument, std::string(op) + ": " + field +
                                                   " is an argument of paged_attention (the auto entry point) only");
  }
};

// is_supported: the library's answer, plus the workspace when one is given.
nb::tuple supported(nb::handle call) {
  std::string reason;
  try {
    const AttentionCall c(call, "paged_attention");
    const Support s = is_supported(c.p);
    if (!s.ok) {
      reason = s.reason;
    } else if (c.has_workspace) {
      const std::size_t need = paged_attention_workspace_size(c.p);
      if (c.workspace_bytes < need)
        reason = "paged_attention: workspace has " + std::to_string(c.workspace_bytes) + " bytes; this call needs " +
                 std::to_string(need) + " (workspace_size())";
    }
  } catch (const std::exception& e) {  // conversion errors (TypeError), library errors
    reason = e.what();
    if (reason.empty()) reason = "paged_attention: unsupported arguments";
  }
  return nb::make_tuple(reason.empty(), reason);
}

}  // namespace

void bind_attention(nb::module_& m) {
  {
    nb::list names;
    for (const char* n : kFieldNames) names.append(n);
    m.attr("ATTENTION_FIELDS") = nb::tuple(names);
  }

  // Each binding converts while holding the GIL, then releases it around the library call.
  m.def(
      "paged_attention_v1",
      [](nb::handle call) {
        const AttentionCall c(call, "paged_attention_v1");
        c.reject_auto_only("paged_attention_v1");
        nb::gil_scoped_release release;
        paged_attention_v1(c.p);
      },
      nb::arg("call"), "V1 paged attention; writes `out` in place.");

  m.def(
      "paged_attention_v2",
      [](nb::handle call, nb::handle exp_sums, nb::handle max_logits, nb::handle tmp_out) {
        const char* op = "paged_attention_v2";
        AttentionCall c(call, op);
        c.reject_auto_only(op);
        V2Workspace ws;
        ws.exp_sums = c.imports.view(exp_sums, op, "exp_sums", Access::kWrite);
        ws.max_logits = c.imports.view(max_logits, op, "max_logits", Access::kWrite);
        ws.tmp_out = c.imports.view(tmp_out, op, "tmp_out", Access::kWrite);
        nb::gil_scoped_release release;
        paged_attention_v2(c.p, ws);
      },
      nb::arg("call"), nb::arg("exp_sums"), nb::arg("max_logits"), nb::arg("tmp_out"),
      "V2 (partitioned) paged attention; writes `out` and the workspaces.");

  m.def(
      "paged_attention_workspace_size",
      [](nb::handle call) {
        const AttentionCall c(call, "paged_attention_workspace_size");
        return paged_attention_workspace_size(c.p);
      },
      nb::arg("call"), "Bytes of workspace paged_attention (auto) needs for this call's shapes (0 on the CPU).");

  m.def(
      "paged_attention",
      [](nb::handle call) {
        const AttentionCall c(call, "paged_attention");
        nb::gil_scoped_release release;
        paged_attention(c.p, c.workspace, c.workspace_bytes);
      },
      nb::arg("call"), "Auto (V1/V2/split) paged attention with the SPEC §3b variants; writes `out` in place.");

  m.def("is_supported", &supported, nb::arg("call"),
        "(ok, reason): whether paged_attention accepts this call; never raises.");

  m.def(
      "merge_attention_states",
      [](nb::handle out_a, nb::handle lse_a, nb::handle out_b, nb::handle lse_b, nb::handle out, nb::handle lse,
         nb::handle stream) {
        const char* op = "merge_attention_states";
        Imports im;
        MergeStatesParams p;
        p.out_a = im.view(out_a, op, "out_a", Access::kRead);
        p.lse_a = im.view(lse_a, op, "lse_a", Access::kRead);
        p.out_b = im.view(out_b, op, "out_b", Access::kRead);
        p.lse_b = im.view(lse_b, op, "lse_b", Access::kRead);
        p.out = im.view(out, op, "out", Access::kWrite);
        p.lse = im.view(lse, op, "lse", Access::kWrite, /*optional=*/true);
        p.stream = stream_arg(stream, op);
        nb::gil_scoped_release release;
        merge_attention_states(p);
      },
      nb::arg("out_a"), nb::arg("lse_a"), nb::arg("out_b"), nb::arg("lse_b"), nb::arg("out"), nb::arg("lse").none(),
      nb::arg("stream"), "Merges two partial attentions by their log-sum-exp; writes `out` (and `lse`).");

  m.def("v2_max_num_partitions", &v2_max_num_partitions, nb::arg("max_seq_len"),
        "ceil(max_seq_len / 512), at least 1.");
  m.def("vllm_rule_prefers_v1", &vllm_rule_prefers_v1, nb::arg("num_seqs"), nb::arg("num_heads"),
        nb::arg("max_seq_len"), "vLLM's V1/V2 choice (SPEC §4).");

  // Host-overhead baseline: the same V1 call made `iters` times from C++ with the arguments
  // converted once. Returns seconds per call. python/tools/overhead.py compares it with the
  // Python path.
  m.def(
      "_bench_cpp_paged_attention_v1",
      [](nb::handle call, int iters) {
        const AttentionCall c(call, "paged_attention_v1");
        nb::gil_scoped_release release;
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < iters; ++i) paged_attention_v1(c.p);
        const auto t1 = std::chrono::steady_clock::now();
        return std::chrono::duration<double>(t1 - t0).count() / (iters > 0 ? iters : 1);
      },
      nb::arg("call"), nb::arg("iters"), "Seconds per call of the C++ API, called in a C++ loop.");
}

}  // namespace pagedattn::python
