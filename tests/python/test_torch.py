"""PyTorch: the framework-neutral functions on torch tensors and torch.ops.pagedattn.*.

CPU parts run wherever torch imports; CUDA parts need a CUDA device and skip visibly otherwise.
The CUDA reference is pure PyTorch in float64, written here from SPEC §3.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pagedattn  # noqa: E402
import pagedattn.torch_ops  # noqa: E402,F401
from _reference import Case, attention, fp8_decode_tables, merge, tolerance  # noqa: E402

ops = torch.ops.pagedattn
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def torch_reference(query, key_cache, value_cache, block_tables, seq_lens, scale, block_size, alibi=None):
    """float64 PyTorch reference (device-agnostic)."""
    q = query.double()
    num_seqs, num_heads, hs = q.shape
    kc, vc = key_cache.double(), value_cache.double()
    group = num_heads // kc.shape[1]
    out = torch.zeros(num_seqs, num_heads, hs, dtype=torch.float64, device=q.device)
    for i in range(num_seqs):
        L = int(seq_lens[i])
        if L == 0:
            continue
        nblk = math.ceil(L / block_size)
        blocks = block_tables[i, :nblk].long()
        for h in range(num_heads):
            g = h // group
            k = kc[blocks, g].permute(0, 2, 1, 3).reshape(nblk * block_size, hs)[:L]
            v = vc[blocks, g].permute(0, 2, 1).reshape(nblk * block_size, hs)[:L]
            s = scale * (k @ q[i, h])
            if alibi is not None:
                s = s + alibi[h].double() * (torch.arange(L, device=q.device, dtype=torch.float64) - L + 1)
            out[i, h] = torch.softmax(s, 0) @ v
    return out


TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_case(seq_lens, dtype_name, device, seed=0, **kw):
    """A Case built in float32 NumPy, moved to torch in `dtype_name` (bf16 has no NumPy dtype)."""
    rng = np.random.default_rng(seed)
    dt = TORCH_DTYPES[dtype_name]
    c = Case(rng, seq_lens, dtype=np.float32, **kw)
    if dt is not torch.float32:  # the cache layout's x depends on the element size: rebuild
        c = Case(np.random.default_rng(seed), seq_lens, dtype=np.float16, **kw)
    t = lambda a, d=None: None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=d)
    return dict(
        query=t(c.query, dt), key_cache=t(c.key_cache, dt), value_cache=t(c.value_cache, dt),
        num_kv_heads=c.num_kv_heads, scale=c.scale, block_tables=t(c.block_tables), seq_lens=t(c.seq_lens),
        block_size=c.block_size, max_seq_len=c.max_seq_len, alibi_slopes=t(c.alibi),
    ), c


def args_of(d, k_scale=1.0, v_scale=1.0):
    return (d["query"], d["key_cache"], d["value_cache"], d["num_kv_heads"], d["scale"], d["block_tables"],
            d["seq_lens"], d["block_size"], d["max_seq_len"], d["alibi_slopes"], "auto", k_scale, v_scale)


def ref_of(d):
    return torch_reference(d["query"], d["key_cache"], d["value_cache"], d["block_tables"], d["seq_lens"],
                           d["scale"], d["block_size"], d["alibi_slopes"])


def v2_buffers(d, num_heads, head_size):
    n = d["query"].shape[0]
    p = pagedattn._C.v2_max_num_partitions(d["max_seq_len"])
    dev, dt = d["query"].device, d["query"].dtype
    return (torch.empty(n, num_heads, p, dtype=torch.float32, device=dev),
            torch.empty(n, num_heads, p, dtype=torch.float32, device=dev),
            torch.empty(n, num_heads, p, head_size, dtype=dt, device=dev))


def check_close(out, ref, dtype_name):
    atol, rtol = tolerance(dtype_name)
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)


# ------------------------------------------------------------------------------- CPU (torch)


@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
def test_cpu_torch_tensors_all_dtypes(dtype_name):
    d, c = torch_case([3, 40, 17], dtype_name, "cpu", alibi=True)
    out = torch.empty(3, c.num_heads, c.head_size, dtype=TORCH_DTYPES[dtype_name])
    ptr = out.data_ptr()
    pagedattn.paged_attention_v1(out, *args_of(d))
    assert out.data_ptr() == ptr
    check_close(out, ref_of(d), dtype_name)


@pytest.mark.parametrize("overload", ["default", "float_scale"])
def test_cpu_torch_ops_v1_v2(overload):
    d, c = torch_case([600, 5], "bfloat16", "cpu")
    scales = (torch.ones(1), torch.ones(1)) if overload == "default" else (1.0, 1.0)
    out1 = torch.empty(2, c.num_heads, c.head_size, dtype=torch.bfloat16)
    getattr(ops.paged_attention_v1, overload)(out1, *args_of(d, *scales))
    out2 = torch.empty_like(out1)
    getattr(ops.paged_attention_v2, overload)(out2, *v2_buffers(d, c.num_heads, c.head_size), *args_of(d, *scales),
                                              0, 0, 0, 64, 0)
    ref = ref_of(d)
    check_close(out1, ref, "bfloat16")
    check_close(out2, ref, "bfloat16")


def test_packet_picks_overload_from_scale_types():
    d, c = torch_case([9], "float32", "cpu")
    a = torch.empty(1, c.num_heads, c.head_size)
    b = torch.empty_like(a)
    ops.paged_attention_v1(a, *args_of(d, 1.0, 1.0))  # floats -> .float_scale
    ops.paged_attention_v1(b, *args_of(d, torch.tensor([1.0]), torch.tensor([1.0])))  # tensors -> .default
    torch.testing.assert_close(a, b)


def test_schema_marks_outputs_mutated():
    s = str(ops.paged_attention_v2.default._schema)
    assert s.startswith("pagedattn::paged_attention_v2(Tensor(a!) out, Tensor(b!) exp_sums, Tensor(c!) max_logits, "
                        "Tensor(d!) tmp_out, Tensor query, Tensor key_cache, Tensor value_cache, int num_kv_heads")
    assert "Tensor(a!)[] key_caches" in str(ops.copy_blocks.default._schema)


def test_cpu_error_through_torch_ops():
    d, c = torch_case([9], "float32", "cpu")
    bad = torch.empty(1, c.num_heads, c.head_size, dtype=torch.float16)
    with pytest.raises(pagedattn.PagedAttnError, match="out"):
        ops.paged_attention_v1(bad, *args_of(d))


def _opcheck_inputs(device, dtype_name="float16"):
    d, c = torch_case([20, 600], dtype_name, device)
    out = torch.zeros(2, c.num_heads, c.head_size, dtype=TORCH_DTYPES[dtype_name], device=device)
    return d, c, out


@pytest.mark.parametrize("overload", ["default", "float_scale"])
def test_cpu_opcheck(overload):
    d, c, out = _opcheck_inputs("cpu")
    scales = (torch.ones(1), torch.ones(1)) if overload == "default" else (1.0, 1.0)
    torch.library.opcheck(getattr(ops.paged_attention_v1, overload), (out, *args_of(d, *scales), 0, 0, 0, 64, 0))
    torch.library.opcheck(getattr(ops.paged_attention_v2, overload),
                          (out, *v2_buffers(d, c.num_heads, c.head_size), *args_of(d, *scales), 0, 0, 0, 64, 0))


def test_cpu_torch_compile_traces_the_op():
    d, c, out = _opcheck_inputs("cpu", "float32")

    @torch.compile(backend="aot_eager", fullgraph=True)
    def step(out, q):
        ops.paged_attention_v1(out, q * 1.0, *args_of(d)[1:])
        return out + 0

    got = step(out, d["query"])
    check_close(got, ref_of(d), "float32")


def test_cpu_cache_ops_through_torch_ops():
    key = torch.randn(3, 2, 64)
    kc = torch.zeros(4, 2, 16, 16, 4)
    vc = torch.zeros(4, 2, 64, 16)
    ops.reshape_and_cache(key, key, kc, vc, torch.tensor([1, -1, 33]), "auto", 1.0, 1.0)
    torch.testing.assert_close(vc[0, :, :, 1], key[0])
    torch.testing.assert_close(vc[2, :, :, 1], key[2])
    ops.copy_blocks([kc], [vc], torch.tensor([[2, 3]]))
    torch.testing.assert_close(vc[3], vc[2])
    dst = torch.zeros_like(vc)
    ops.swap_blocks(vc, dst, torch.tensor([[3, 0]]))
    torch.testing.assert_close(dst[0], vc[3])


# ------------------------------------------------------------------------------- the auto op and merge


def np64(t):
    """A tensor's values as float64 NumPy (bf16 has no NumPy dtype)."""
    return t.detach().to("cpu", torch.float64).numpy() if t.is_floating_point() else t.detach().cpu().numpy()


def variant_case(device, dtype_name="float32", seed=3, seq_lens=(37, 1, 130, 64), q_lens=(3, 1, 7, 4), **kw):
    """torch_case plus the variants' tensors: query_start_loc, an lse buffer, and the NumPy
    float64 reference of the case (from the tensors' own values, so bf16 rounding is included)."""
    d, c = torch_case(list(seq_lens), dtype_name, device, seed=seed, q_lens=list(q_lens), **kw)
    d["query_start_loc"] = torch.from_numpy(c.query_start_loc).to(device)
    d["max_query_len"] = c.max_query_len

    def reference(**variants):
        return attention(np64(d["query"]), np64(d["key_cache"]), np64(d["value_cache"]), c.block_tables,
                         c.seq_lens, c.scale, c.block_size, None if d["alibi_slopes"] is None else c.alibi,
                         query_start_loc=c.query_start_loc, with_lse=True, **variants)

    return d, c, reference


def new_outputs(d, c):
    out = torch.full((c.rows, c.num_heads, c.head_size), float("nan"), dtype=d["query"].dtype,
                     device=d["query"].device)
    lse = torch.full((c.rows, c.num_heads), float("nan"), dtype=torch.float32, device=d["query"].device)
    return out, lse


def check_variant(out, lse, ref, dtype_name):
    check_close(out, torch.from_numpy(ref[0]).to(out.device), dtype_name)
    torch.testing.assert_close(lse.double(), torch.from_numpy(ref[1]).to(lse.device), atol=1e-4, rtol=1e-5)


def test_auto_schema_names_match_the_python_signature():
    # The op's argument names are attention_call's (so the dispatcher's keyword arguments reach
    # pagedattn.paged_attention), minus the Python-only `checked` and `stream`; the variants and
    # hints are keyword-only, workspace and lse declared written.
    from pagedattn._call import attention_call

    py = [n for n in inspect.signature(attention_call).parameters if n not in ("checked", "stream")]
    for overload in ("default", "float_scale"):
        schema = getattr(ops.paged_attention, overload)._schema
        assert [a.name for a in schema.arguments] == py
        kw_only = {a.name for a in schema.arguments if a.kwarg_only}
        assert kw_only == {"workspace", "query_start_loc", "max_query_len", "window_left", "logits_soft_cap", "lse",
                           "total_tokens", "batch_invariant"}
        written = {a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write}
        assert written == {"out", "workspace", "lse"}
    merge_schema = ops.merge_attention_states.default._schema
    assert [a.name for a in merge_schema.arguments] == ["out_a", "lse_a", "out_b", "lse_b", "out", "lse"]
    assert {a.name for a in merge_schema.arguments if a.alias_info is not None and a.alias_info.is_write} == {
        "out", "lse"}


@pytest.mark.parametrize("overload", ["default", "float_scale"])
def test_cpu_auto_op_with_variants_equals_the_framework_neutral_call(overload):
    # The op is pagedattn.paged_attention behind the dispatcher: the same bits as the NumPy call.
    d, c, _ = variant_case("cpu", alibi=True)
    scales = (torch.ones(1), torch.ones(1)) if overload == "default" else (1.0, 1.0)
    kw = dict(query_start_loc=d["query_start_loc"], max_query_len=d["max_query_len"], logits_soft_cap=5.0,
              window_left=20)
    out, lse = new_outputs(d, c)
    getattr(ops.paged_attention, overload)(out, *args_of(d, *scales), lse=lse, **kw)
    np_out, np_lse = c.out(), c.lse()
    pagedattn.paged_attention(np_out, *c.args(), query_start_loc=c.query_start_loc, max_query_len=c.max_query_len,
                              logits_soft_cap=5.0, window_left=20, lse=np_lse)
    np.testing.assert_array_equal(out.numpy(), np_out)
    np.testing.assert_array_equal(lse.numpy(), np_lse)


@pytest.mark.parametrize("variant", [{}, {"logits_soft_cap": 3.0}, {"window_left": 9}])
def test_cpu_auto_op_against_the_reference(variant):
    d, c, reference = variant_case("cpu", alibi=True)
    out, lse = new_outputs(d, c)
    ops.paged_attention(out, *args_of(d), query_start_loc=d["query_start_loc"], lse=lse, **variant)
    check_variant(out, lse, reference(**variant), "float32")


def fp8_case(device, seed=4):
    """An fp8 (E4M3) cache case with per-kv-head scale tensors, and its float64 reference."""
    c = Case(np.random.default_rng(seed), [20, 45, 130], num_heads=8, num_kv_heads=4, cache_bytes=True)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
    k_scales = torch.tensor([0.05, 0.5, 0.01, 0.2], device=device)
    v_scales = torch.tensor([0.15, 0.025, 0.075, 0.01], device=device)
    args = (t(c.query), t(c.key_cache), t(c.value_cache), c.num_kv_heads, c.scale, t(c.block_tables), t(c.seq_lens),
            c.block_size, c.max_seq_len, None, "fp8_e4m3", k_scales, v_scales)
    ref = c.reference(fp8_decode_tables()[0], k_scales.cpu().numpy(), v_scales.cpu().numpy(), with_lse=True)
    return c, args, ref


def test_cpu_per_head_scale_tensors():
    c, args, ref = fp8_case("cpu")
    out = torch.empty(c.rows, c.num_heads, c.head_size)
    lse = torch.empty(c.rows, c.num_heads)
    ops.paged_attention(out, *args, lse=lse)  # [num_kv_heads] tensors: the .default overload, per kv head
    torch.testing.assert_close(out.double(), torch.from_numpy(ref[0]), atol=5e-4, rtol=1e-4)
    torch.testing.assert_close(lse.double(), torch.from_numpy(ref[1]), atol=1e-4, rtol=1e-5)


def merge_inputs(device, dtype=torch.float32, rows=5, heads=4, hs=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    out_a, out_b = (torch.randn(rows, heads, hs, generator=g).to(device, dtype) for _ in range(2))
    lse_a, lse_b = (torch.randn(rows, heads, generator=g).mul(3).to(device) for _ in range(2))
    lse_a[0, 0] = float("-inf")
    lse_a[1, 1] = lse_b[1, 1] = float("-inf")
    return out_a, lse_a, out_b, lse_b


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_cpu_merge_op(dtype_name):
    out_a, lse_a, out_b, lse_b = merge_inputs("cpu", TORCH_DTYPES[dtype_name])
    out, lse = torch.empty_like(out_a), torch.empty_like(lse_a)
    ops.merge_attention_states(out_a, lse_a, out_b, lse_b, out, lse)
    ref_out, ref_lse = merge(np64(out_a), np64(lse_a), np64(out_b), np64(lse_b))
    check_close(out, torch.from_numpy(ref_out), dtype_name)
    torch.testing.assert_close(lse.double(), torch.from_numpy(ref_lse), atol=1e-4, rtol=1e-5)


def _auto_opcheck(device, overload):
    d, c, _ = variant_case(device, "float16")
    out, lse = new_outputs(d, c)
    out.zero_()
    lse.zero_()
    dev = d["query"].device
    scales = (torch.ones(1, device=dev), torch.ones(1, device=dev)) if overload == "default" else (1.0, 1.0)
    kwargs = dict(query_start_loc=d["query_start_loc"], max_query_len=d["max_query_len"], window_left=30,
                  logits_soft_cap=20.0, lse=lse)
    torch.library.opcheck(getattr(ops.paged_attention, overload), (out, *args_of(d, *scales)), kwargs)
    torch.library.opcheck(ops.merge_attention_states.default, (*merge_inputs(dev), torch.empty(5, 4, 64, device=dev),
                                                               torch.empty(5, 4, device=dev)))


@pytest.mark.parametrize("overload", ["default", "float_scale"])
def test_cpu_opcheck_auto_and_merge(overload):
    _auto_opcheck("cpu", overload)


def _compiled_equals_eager(device, backend):
    d, c, _ = variant_case(device)
    qsl = d["query_start_loc"]

    def step(out, lse, q, qsl):
        # the op between traced tensor code, with keyword variants and a second output (lse)
        ops.paged_attention(out, q * 1.0, *args_of(d)[1:], query_start_loc=qsl, max_query_len=d["max_query_len"],
                            logits_soft_cap=8.0, lse=lse)
        return out * 2.0, lse + 0.0

    compiled = torch.compile(step, backend=backend, fullgraph=True)
    out_c, lse_c = new_outputs(d, c)
    got = compiled(out_c, lse_c, d["query"], qsl)
    out_e, lse_e = new_outputs(d, c)
    want = step(out_e, lse_e, d["query"], qsl)
    torch.testing.assert_close(got[0], want[0], atol=0, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=0, rtol=0)

    def merged(a, la, b, lb, out, lse):
        ops.merge_attention_states(a * 1.0, la, b, lb, out, lse)
        return out + 0.0, lse + 0.0

    inputs = merge_inputs(device)
    got = torch.compile(merged, backend=backend, fullgraph=True)(*inputs, torch.empty_like(inputs[0]),
                                                                 torch.empty_like(inputs[1]))
    want = merged(*inputs, torch.empty_like(inputs[0]), torch.empty_like(inputs[1]))
    torch.testing.assert_close(got[0], want[0], atol=0, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=0, rtol=0)


def test_cpu_torch_compile_holds_the_auto_op_and_merge():
    _compiled_equals_eager("cpu", "aot_eager")


# ------------------------------------------------------------------------------- CUDA


@needs_cuda
@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("version", ["v1", "v2", "auto"])
def test_cuda_against_float64_reference(dtype_name, version):
    d, c = torch_case([1, 700, 33, 1500], dtype_name, "cuda", alibi=(dtype_name == "float16"))
    out = torch.full((4, c.num_heads, c.head_size), float("nan"), dtype=TORCH_DTYPES[dtype_name], device="cuda")
    if version == "v1":
        pagedattn.paged_attention_v1(out, *args_of(d), checked=True)
    elif version == "v2":
        pagedattn.paged_attention_v2(out, *v2_buffers(d, c.num_heads, c.head_size), *args_of(d), checked=True)
    else:
        pagedattn.paged_attention(out, *args_of(d), checked=True)
    check_close(out, ref_of(d), dtype_name)


@needs_cuda
def test_cuda_runs_on_the_current_stream():
    d, c = torch_case([300, 40], "float16", "cuda")
    out = torch.zeros(2, c.num_heads, c.head_size, dtype=torch.float16, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        ops.paged_attention_v1(out, *args_of(d))
    s.synchronize()
    check_close(out, ref_of(d), "float16")


@needs_cuda
@pytest.mark.parametrize("overload", ["default", "float_scale"])
def test_cuda_opcheck(overload):
    d, c, out = _opcheck_inputs("cuda")
    scales = (torch.ones(1, device="cuda"), torch.ones(1, device="cuda")) if overload == "default" else (1.0, 1.0)
    torch.library.opcheck(getattr(ops.paged_attention_v1, overload), (out, *args_of(d, *scales), 0, 0, 0, 64, 0))
    torch.library.opcheck(getattr(ops.paged_attention_v2, overload),
                          (out, *v2_buffers(d, c.num_heads, c.head_size), *args_of(d, *scales), 0, 0, 0, 64, 0))


@needs_cuda
def test_cuda_torch_compile():
    d, c, out = _opcheck_inputs("cuda", "float16")

    @torch.compile(fullgraph=True)
    def step(out, q):
        ops.paged_attention_v1(out, q * 1.0, *args_of(d)[1:])
        return out.float() * 2.0

    got = step(out, d["query"])
    check_close(got / 2.0, ref_of(d), "float16")


@needs_cuda
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cuda_graph_capture_replay_equals_eager(version):
    d, c = torch_case([100, 1300, 7], "bfloat16", "cuda")
    shape = (3, c.num_heads, c.head_size)
    eager = torch.empty(shape, dtype=torch.bfloat16, device="cuda")
    graph_out = torch.zeros_like(eager)
    ws = v2_buffers(d, c.num_heads, c.head_size)

    def call(out):
        if version == "v1":
            ops.paged_attention_v1(out, *args_of(d))
        else:
            ops.paged_attention_v2(out, *ws, *args_of(d))

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        call(graph_out)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(s)
    graph_out.zero_()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        call(graph_out)
    # New data in the same buffers, then replay: the graph must read it.
    d["query"].copy_(torch.randn_like(d["query"]))
    g.replay()
    torch.cuda.synchronize()
    call(eager)
    torch.cuda.synchronize()
    torch.testing.assert_close(graph_out, eager, atol=0, rtol=0)
    check_close(eager, ref_of(d), "bfloat16")


@needs_cuda
@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("variant", [{}, {"window_left": 9}, {"logits_soft_cap": 3.0},
                                     {"window_left": 50, "logits_soft_cap": 10.0}])
def test_cuda_auto_op_variants_against_the_reference(dtype_name, variant):
    d, c, reference = variant_case("cuda", dtype_name, seq_lens=(37, 1, 700, 1500, 0), q_lens=(3, 1, 7, 4, 0),
                                   alibi=(dtype_name == "float16"))
    out, lse = new_outputs(d, c)
    ops.paged_attention(out, *args_of(d), query_start_loc=d["query_start_loc"], max_query_len=d["max_query_len"],
                        lse=lse, **variant)
    check_variant(out, lse, reference(**variant), dtype_name)


@needs_cuda
def test_cuda_per_head_scale_tensors():
    c, args, ref = fp8_case("cuda")
    out = torch.empty(c.rows, c.num_heads, c.head_size, device="cuda")
    lse = torch.empty(c.rows, c.num_heads, device="cuda")
    ops.paged_attention(out, *args, lse=lse)
    torch.testing.assert_close(out.double().cpu(), torch.from_numpy(ref[0]), atol=5e-4, rtol=1e-4)
    torch.testing.assert_close(lse.double().cpu(), torch.from_numpy(ref[1]), atol=1e-4, rtol=1e-5)


@needs_cuda
def test_cuda_merge_op():
    out_a, lse_a, out_b, lse_b = merge_inputs("cuda", torch.float16)
    out, lse = torch.empty_like(out_a), torch.empty_like(lse_a)
    ops.merge_attention_states(out_a, lse_a, out_b, lse_b, out, lse)
    ref_out, ref_lse = merge(np64(out_a), np64(lse_a), np64(out_b), np64(lse_b))
    check_close(out.cpu(), torch.from_numpy(ref_out), "float16")
    torch.testing.assert_close(lse.double().cpu(), torch.from_numpy(ref_lse), atol=1e-4, rtol=1e-5)


@needs_cuda
@pytest.mark.parametrize("overload", ["default", "float_scale"])
def test_cuda_opcheck_auto_and_merge(overload):
    _auto_opcheck("cuda", overload)


@needs_cuda
def test_cuda_torch_compile_holds_the_auto_op_and_merge():
    _compiled_equals_eager("cuda", "inductor")


@needs_cuda
def test_cuda_batch_invariant_output_does_not_depend_on_batch_mates():
    # batch_invariant=True: a sequence's bits are the same alone and in any batch (the default
    # planner may split it differently when batch-mates change the work per SM).
    d, c = torch_case([3000, 40, 9000, 700, 5], "bfloat16", "cuda", seed=7)
    full = torch.empty(c.num_seqs, c.num_heads, c.head_size, dtype=torch.bfloat16, device="cuda")
    ops.paged_attention(full, *args_of(d), batch_invariant=True)
    for i in range(c.num_seqs):
        one = torch.empty(1, c.num_heads, c.head_size, dtype=torch.bfloat16, device="cuda")
        a = list(args_of(d))
        a[0], a[5], a[6] = d["query"][i:i + 1], d["block_tables"][i:i + 1], d["seq_lens"][i:i + 1]
        ops.paged_attention(one, *a, batch_invariant=True)
        torch.testing.assert_close(one[0], full[i], atol=0, rtol=0)
    check_close(full, ref_of(d), "bfloat16")


@needs_cuda
def test_cuda_graph_capture_of_the_auto_op_with_variants():
    # Per-head scale tensors, query_start_loc and lse are read/written on the device and the
    # workspace is given: the captured call replays on new data exactly as an eager call.
    c, args, _ = fp8_case("cuda", seed=9)
    args = list(args)
    qsl = torch.arange(c.num_seqs + 1, dtype=torch.int32, device="cuda")
    kw = dict(query_start_loc=qsl, max_query_len=1, window_left=64, logits_soft_cap=15.0)
    ws = torch.empty(pagedattn.workspace_size(torch.empty(c.rows, c.num_heads, c.head_size, device="cuda"), *args,
                                              **kw), dtype=torch.uint8, device="cuda")
    graph_out = torch.zeros(c.rows, c.num_heads, c.head_size, device="cuda")
    graph_lse = torch.zeros(c.rows, c.num_heads, device="cuda")

    def call(out, lse):
        ops.paged_attention(out, *args, workspace=ws, lse=lse, **kw)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        call(graph_out, graph_lse)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        call(graph_out, graph_lse)
    args[0].copy_(torch.randn_like(args[0]))  # new queries
    args[11].mul_(2.0)  # new per-head key scales, read by the kernel at replay
    g.replay()
    torch.cuda.synchronize()
    eager_out, eager_lse = torch.empty_like(graph_out), torch.empty_like(graph_lse)
    call(eager_out, eager_lse)
    torch.cuda.synchronize()
    torch.testing.assert_close(graph_out, eager_out, atol=0, rtol=0)
    torch.testing.assert_close(graph_lse, eager_lse, atol=0, rtol=0)


@needs_cuda
def test_cuda_is_supported_checks_the_workspace_and_never_raises():
    d, c = torch_case([9000, 40], "float16", "cuda", seed=2)
    out = torch.empty(2, c.num_heads, c.head_size, dtype=torch.float16, device="cuda")
    need = pagedattn.workspace_size(out, *args_of(d))
    assert need > 0  # a long sequence next to a short one: the auto path splits it
    assert pagedattn.is_supported(out, *args_of(d)) == (True, "")
    ws = torch.empty(need, dtype=torch.uint8, device="cuda")
    assert pagedattn.is_supported(out, *args_of(d), workspace=ws) == (True, "")
    ok, why = pagedattn.is_supported(out, *args_of(d), workspace=ws[:need - 1])
    assert not ok and f"workspace has {need - 1} bytes" in why
    ok, why = pagedattn.is_supported(out, d["query"].cpu(), *args_of(d)[1:])  # mixed devices
    assert not ok and "query" in why
