// Attention entry points: argument order of SPEC §5 (vLLM), then the binding-only extras
// `checked` and `stream` (an integer cudaStream_t; ignored on the CPU).
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <chrono>
#include <tuple>
#include <string>

#include "bindings.h"
#include "dlpack_view.h"
#include "pagedattn/attention.h"

namespace pagedattn::python {
namespace {

// The shared tail of every attention call, in SPEC §5 order after `value_cache`.
struct AttentionArgs {
  ArrayRO query, key_cache, value_cache;
  int num_kv_heads;
  double scale;
  ArrayRO block_tables, seq_lens;
  int block_size, max_seq_len;
  std::optional<ArrayRO> alibi_slopes;
  std::string kv_cache_dtype;
  double k_scale, v_scale;
  int tp_rank, bs_local_blocks, bs_vert_stride, bs_block_size, bs_head_sliding_step;
  bool checked;
  std::uintptr_t stream;
};

PagedAttentionParams make_params(const Array& out, const AttentionArgs& a) {
  PagedAttentionParams p;
  p.out = to_view(out, "out");
  p.query = to_view(a.query, "query");
  p.key_cache = to_view(a.key_cache, "key_cache");
  p.value_cache = to_view(a.value_cache, "value_cache");
  p.block_tables = to_view(a.block_tables, "block_tables");
  p.seq_lens = to_view(a.seq_lens, "seq_lens");
  p.alibi_slopes = to_view(a.alibi_slopes, "alibi_slopes");
  p.num_kv_heads = a.num_kv_heads;
  p.scale = static_cast<float>(a.scale);
  p.block_size = a.block_size;
  p.max_seq_len = a.max_seq_len;
  p.kv_cache_dtype = parse_cache_dtype(a.kv_cache_dtype);
  p.k_scale = static_cast<float>(a.k_scale);
  p.v_scale = static_cast<float>(a.v_scale);
  p.tp_rank = a.tp_rank;
  p.blocksparse.local_blocks = a.bs_local_blocks;
  p.blocksparse.vert_stride = a.bs_vert_stride;
  p.blocksparse.block_size = a.bs_block_size;
  p.blocksparse.head_sliding_step = a.bs_head_sliding_step;
  p.checked = a.checked;
  p.stream = stream_ptr(a.stream);
  return p;
}

// Every binding spells the same argument list; this macro-free helper keeps one copy of it.
// Names follow SPEC §5; nanobind uses them for keyword calls and for error messages.
template <typename... Extra>
auto attention_args(Extra... head) {
  return std::make_tuple(head..., nb::arg("query"), nb::arg("key_cache"), nb::arg("value_cache"),
                         nb::arg("num_kv_heads"), nb::arg("scale"), nb::arg("block_tables"), nb::arg("seq_lens"),
                         nb::arg("block_size"), nb::arg("max_seq_len"), nb::arg("alibi_slopes").none(),
                         nb::arg("kv_cache_dtype"), nb::arg("k_scale"), nb::arg("v_scale"), nb::arg("tp_rank"),
                         nb::arg("blocksparse_local_blocks"), nb::arg("blocksparse_vert_stride"),
                         nb::arg("blocksparse_block_size"), nb::arg("blocksparse_head_sliding_step"),
                         nb::arg("checked"), nb::arg("stream"));
}

template <typename F, typename Tuple, typename... Tail>
void def_with(nb::module_& m, const char* name, F&& f, const char* doc, Tuple&& args, Tail... tail) {
  std::apply([&](auto... a) { m.def(name, std::forward<F>(f), a..., tail..., doc); }, args);
}

}  // namespace

void bind_attention(nb::module_& m) {
  // Each lambda takes the arguments positionally (nanobind vectorcall, no kwargs parsing on the
  // fast path) and releases the GIL around the library call.
  auto v1 = [](Array out, ArrayRO q, ArrayRO kc, ArrayRO vc, int nkv, double scale, ArrayRO bt, ArrayRO sl, int bs,
               int msl, std::optional<ArrayRO> alibi, std::string kvd, double ks, double vs, int tp, int bsl, int bsv,
               int bsb, int bss, bool checked, std::uintptr_t stream) {
    const PagedAttentionParams p = make_params(
        out, {q, kc, vc, nkv, scale, bt, sl, bs, msl, alibi, kvd, ks, vs, tp, bsl, bsv, bsb, bss, checked, stream});
    nb::gil_scoped_release release;
    paged_attention_v1(p);
  };
  def_with(m, "paged_attention_v1", v1, "V1 paged attention; writes `out` in place.",
           attention_args(nb::arg("out")));

  auto v2 = [](Array out, Array exp_sums, Array max_logits, Array tmp_out, ArrayRO q, ArrayRO kc, ArrayRO vc, int nkv,
               double scale, ArrayRO bt, ArrayRO sl, int bs, int msl, std::optional<ArrayRO> alibi, std::string kvd,
               double ks, double vs, int tp, int bsl, int bsv, int bsb, int bss, bool checked, std::uintptr_t stream) {
    const PagedAttentionParams p = make_params(
        out, {q, kc, vc, nkv, scale, bt, sl, bs, msl, alibi, kvd, ks, vs, tp, bsl, bsv, bsb, bss, checked, stream});
    V2Workspace ws;
    ws.exp_sums = to_view(exp_sums, "exp_sums");
    ws.max_logits = to_view(max_logits, "max_logits");
    ws.tmp_out = to_view(tmp_out, "tmp_out");
    nb::gil_scoped_release release;
    paged_attention_v2(p, ws);
  };
  def_with(m, "paged_attention_v2", v2, "V2 (partitioned) paged attention; writes `out` and the workspaces.",
           attention_args(nb::arg("out"), nb::arg("exp_sums"), nb::arg("max_logits"), nb::arg("tmp_out")));

  auto ws_size = [](Array out, ArrayRO q, ArrayRO kc, ArrayRO vc, int nkv, double scale, ArrayRO bt, ArrayRO sl,
                    int bs, int msl, std::optional<ArrayRO> alibi, std::string kvd, double ks, double vs, int tp,
                    int bsl, int bsv, int bsb, int bss, bool checked, std::uintptr_t stream) {
    const PagedAttentionParams p = make_params(
        out, {q, kc, vc, nkv, scale, bt, sl, bs, msl, alibi, kvd, ks, vs, tp, bsl, bsv, bsb, bss, checked, stream});
    return paged_attention_workspace_size(p);
  };
  def_with(m, "paged_attention_workspace_size", ws_size,
           "Bytes of workspace paged_attention (auto) needs for this call's shapes (0 on the CPU).",
           attention_args(nb::arg("out")));

  auto auto_ = [](Array out, ArrayRO q, ArrayRO kc, ArrayRO vc, int nkv, double scale, ArrayRO bt, ArrayRO sl, int bs,
                  int msl, std::optional<ArrayRO> alibi, std::string kvd, double ks, double vs, int tp, int bsl,
                  int bsv, int bsb, int bss, bool checked, std::uintptr_t stream, std::optional<Array> workspace,
                  long long total_tokens, bool batch_invariant) {
    PagedAttentionParams p = make_params(
        out, {q, kc, vc, nkv, scale, bt, sl, bs, msl, alibi, kvd, ks, vs, tp, bsl, bsv, bsb, bss, checked, stream});
    p.total_tokens = total_tokens;
    p.batch_invariant = batch_invariant;
    void* ws = nullptr;
    std::size_t ws_bytes = 0;
    if (workspace) {
      ws = workspace->data();
      ws_bytes = workspace->nbytes();
    }
    nb::gil_scoped_release release;
    paged_attention(p, ws, ws_bytes);
  };
  def_with(m, "paged_attention", auto_, "Auto (V1/V2/split) paged attention; writes `out` in place.",
           attention_args(nb::arg("out")), nb::arg("workspace").none(), nb::arg("total_tokens"),
           nb::arg("batch_invariant"));

  m.def("v2_max_num_partitions", &v2_max_num_partitions, nb::arg("max_seq_len"),
        "ceil(max_seq_len / 512), at least 1.");
  m.def("vllm_rule_prefers_v1", &vllm_rule_prefers_v1, nb::arg("num_seqs"), nb::arg("num_heads"),
        nb::arg("max_seq_len"), "vLLM's V1/V2 choice (SPEC §4).");

  // Host-overhead baseline: the same call made `iters` times from C++ with the arguments
  // converted once. Returns seconds per call. python/tools/overhead.py compares it with the
  // Python path.
  auto bench = [](Array out, ArrayRO q, ArrayRO kc, ArrayRO vc, int nkv, double scale, ArrayRO bt, ArrayRO sl, int bs,
                  int msl, std::optional<ArrayRO> alibi, std::string kvd, double ks, double vs, int tp, int bsl,
                  int bsv, int bsb, int bss, bool checked, std::uintptr_t stream, int iters) {
    const PagedAttentionParams p = make_params(
        out, {q, kc, vc, nkv, scale, bt, sl, bs, msl, alibi, kvd, ks, vs, tp, bsl, bsv, bsb, bss, checked, stream});
    nb::gil_scoped_release release;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) paged_attention_v1(p);
    const auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double>(t1 - t0).count() / (iters > 0 ? iters : 1);
  };
  def_with(m, "_bench_cpp_paged_attention_v1", bench, "Seconds per call of the C++ API, called in a C++ loop.",
           attention_args(nb::arg("out")), nb::arg("iters"));
}

}  // namespace pagedattn::python
