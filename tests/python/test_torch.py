"""PyTorch: the framework-neutral functions on torch tensors and torch.ops.pagedattn.*.

CPU parts run wherever torch imports; CUDA parts need a CUDA device and skip visibly otherwise.
The CUDA reference is pure PyTorch in float64, written here from SPEC §3.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pagedattn  # noqa: E402
import pagedattn.torch_ops  # noqa: E402,F401
from _reference import Case, tolerance  # noqa: E402

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
