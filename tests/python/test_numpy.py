"""The framework-neutral API on the CPU through NumPy arrays (no torch needed)."""

from __future__ import annotations

import numpy as np
import pytest

import pagedattn
from _reference import Case, fp8_decode_tables, tolerance

RNG_SEED = 1234


@pytest.fixture
def rng():
    return np.random.default_rng(RNG_SEED)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("head_size,num_heads,num_kv_heads,alibi", [(64, 4, 2, False), (80, 4, 4, True),
                                                                     (128, 8, 1, False)])
def test_v1_matches_reference(rng, dtype, block_size, head_size, num_heads, num_kv_heads, alibi):
    c = Case(rng, [1, 17, 40, 0, 33], num_heads, num_kv_heads, head_size, block_size, dtype, alibi)
    out = c.out()
    pagedattn.paged_attention_v1(out, *c.args(), checked=True)
    atol, rtol = tolerance(dtype)
    np.testing.assert_allclose(out.astype(np.float64), c.reference(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_v2_matches_reference(rng, dtype):
    c = Case(rng, [1300, 7, 513, 1024], num_heads=4, num_kv_heads=2, head_size=64, block_size=16, dtype=dtype)
    es_shape, ml_shape, tmp_shape = pagedattn.v2_workspace_shapes(c.num_seqs, c.num_heads, c.head_size,
                                                                  c.max_seq_len)
    assert es_shape == (4, 4, 3) and tmp_shape == (4, 4, 3, 64)
    exp_sums = np.empty(es_shape, np.float32)
    max_logits = np.empty(ml_shape, np.float32)
    tmp_out = np.empty(tmp_shape, dtype)
    out = c.out()
    pagedattn.paged_attention_v2(out, exp_sums, max_logits, tmp_out, *c.args(), checked=True)
    atol, rtol = tolerance(dtype)
    np.testing.assert_allclose(out.astype(np.float64), c.reference(), atol=atol, rtol=rtol)


def test_auto_with_and_without_workspace(rng):
    c = Case(rng, [5, 600], head_size=96)
    assert pagedattn.workspace_size(c.out(), *c.args()) == 0  # the CPU backend needs none
    out = c.out()
    pagedattn.paged_attention(out, *c.args())
    np.testing.assert_allclose(out, c.reference(), atol=2e-5, rtol=1e-4)
    out2 = c.out()
    pagedattn.paged_attention(out2, *c.args(), workspace=np.empty(256, np.uint8))
    np.testing.assert_array_equal(out2, out)


def test_auto_on_cpu_takes_the_planner_hint_and_batch_invariant_mode_and_ignores_them(rng):
    """`total_tokens` and `batch_invariant` steer the CUDA split planner; on the CPU the auto path
    is V1 whatever they say (test_torch.py checks batch_invariant's promise on a GPU). What the CPU
    can show: both keywords reach the library (a bad hint is rejected, by name), they change no bit
    of the output, and a sequence's output does not depend on its batch-mates."""
    c = Case(rng, [5, 600, 1300], head_size=64)
    base = c.out()
    pagedattn.paged_attention(base, *c.args())
    np.testing.assert_allclose(base, c.reference(), atol=2e-5, rtol=1e-4)
    v1 = c.out()
    pagedattn.paged_attention_v1(v1, *c.args())
    np.testing.assert_array_equal(v1, base)  # auto is V1 on the CPU
    total = int(sum(c.seq_lens))
    for kwargs in ({"total_tokens": total}, {"batch_invariant": True}, {"total_tokens": total, "batch_invariant": True}):
        out = c.out()
        pagedattn.paged_attention(out, *c.args(), **kwargs)
        np.testing.assert_array_equal(out, base)
    # the same sequence alone: the same bits as in the batch
    for i in range(c.num_seqs):
        one = c.out()[i:i + 1]
        args = list(c.args())
        args[0] = c.query[i:i + 1]
        args[5] = c.block_tables[i:i + 1]
        args[6] = c.seq_lens[i:i + 1]
        pagedattn.paged_attention(one, *args, batch_invariant=True)
        np.testing.assert_array_equal(one[0], base[i])
    # the hint is validated: at most num_seqs * max_seq_len, never negative
    for bad in (-1, c.num_seqs * c.max_seq_len + 1):
        with pytest.raises(pagedattn.PagedAttnError, match=f"total_tokens is {bad}"):
            pagedattn.paged_attention(c.out(), *c.args(), total_tokens=bad)


# (local_blocks, vert_stride, sparse block_size, head_sliding_step, tp_rank); local_blocks >= 1
# keeps every row's own sparse block, so no row is left with nothing to attend.
BLOCK_SPARSE = [(1, 2, 16, 1, 0), (2, 3, 32, -1, 1), (1, 4, 16, 2, 1), (3, 2, 64, 0, 0)]


@pytest.mark.parametrize("local_blocks,vert_stride,sparse_block,step,tp_rank", BLOCK_SPARSE)
@pytest.mark.parametrize("version", ["v1", "v2", "auto"])
def test_block_sparse_keyword_arguments_match_the_reference(rng, version, local_blocks, vert_stride, sparse_block,
                                                            step, tp_rank):
    c = Case(rng, [70, 3, 700, 129], num_heads=4, num_kv_heads=2, block_size=16)
    sparse = (local_blocks, vert_stride, sparse_block, step)
    ref = c.reference(blocksparse=sparse, tp_rank=tp_rank)
    # the pattern must mask something here, or this would test the dense path again
    assert not np.allclose(ref, c.reference(), atol=1e-3)
    kw = dict(tp_rank=tp_rank, blocksparse_local_blocks=local_blocks, blocksparse_vert_stride=vert_stride,
              blocksparse_block_size=sparse_block, blocksparse_head_sliding_step=step, checked=True)
    out = c.out()
    if version == "v1":
        pagedattn.paged_attention_v1(out, *c.args(), **kw)
    elif version == "v2":
        shapes = pagedattn.v2_workspace_shapes(c.num_seqs, c.num_heads, c.head_size, c.max_seq_len)
        ws = (np.empty(shapes[0], np.float32), np.empty(shapes[1], np.float32), np.empty(shapes[2], np.float32))
        pagedattn.paged_attention_v2(out, *ws, *c.args(), **kw)
    else:
        pagedattn.paged_attention(out, *c.args(), **kw)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kv_cache_dtype,which", [("fp8", 0), ("fp8_e4m3", 0), ("fp8_e5m2", 1)])
def test_fp8_cache_with_array_scales(rng, kv_cache_dtype, which):
    c = Case(rng, [20, 45], head_size=64, block_size=16, cache_bytes=True)
    decode = fp8_decode_tables()[which]
    k_scale, v_scale = 0.05, 0.5
    out = c.out()
    # vLLM passes the scales as one-element tensors: a one-element array works the same.
    pagedattn.paged_attention_v1(out, *c.args(kv_cache_dtype, np.array([k_scale], np.float32),
                                               np.float32(v_scale)))
    ref = c.reference(decode, np.float32(k_scale), np.float32(v_scale))
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_zero_copy_out_is_written_in_place(rng):
    c = Case(rng, [9, 31])
    big = np.full((c.num_seqs + 2, c.num_heads, c.head_size), -7.0, np.float32)
    out = big[1:-1]  # a view into a larger buffer: results must land in `big` itself
    before = out.__array_interface__["data"][0]
    pagedattn.paged_attention_v1(out, *c.args())
    assert out.__array_interface__["data"][0] == before
    np.testing.assert_allclose(big[1:-1], c.reference(), atol=2e-5, rtol=1e-4)
    assert (big[0] == -7.0).all() and (big[-1] == -7.0).all()


def test_strided_query_slice_of_fused_qkv(rng):
    c = Case(rng, [12, 50, 3], num_heads=4, num_kv_heads=2)
    hs, nh, nkv = c.head_size, c.num_heads, c.num_kv_heads
    qkv = rng.standard_normal((c.num_seqs, (nh + 2 * nkv), hs)).astype(np.float32)
    q = qkv[:, :nh, :]  # dim 0 stride = (nh + 2 nkv) * hs, dims 1-2 contiguous
    assert not q.flags.c_contiguous
    out = c.out()
    pagedattn.paged_attention_v1(out, q, *c.args()[1:])
    np.testing.assert_allclose(out, c.reference(query=q), atol=2e-5, rtol=1e-4)


def test_read_only_inputs_are_accepted(rng):
    c = Case(rng, [10])
    for a in (c.query, c.key_cache, c.value_cache, c.block_tables, c.seq_lens):
        a.setflags(write=False)
    out = c.out()
    pagedattn.paged_attention_v1(out, *c.args())
    np.testing.assert_allclose(out, c.reference(), atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Errors: the library's message arrives as pagedattn.PagedAttnError (a ValueError).


def _expect_error(fn, *fragments, code=None):
    with pytest.raises(pagedattn.PagedAttnError) as info:
        fn()
    msg = str(info.value)
    for f in fragments:
        assert f in msg, msg
    assert isinstance(info.value, ValueError)
    if code is not None:
        assert info.value.code == code
    return msg


def test_error_unsupported_head_size(rng):
    c = Case(rng, [5], head_size=64)
    q = np.zeros((1, c.num_heads, 100), np.float32)
    out = np.zeros_like(q)
    kc = np.zeros((4, c.num_kv_heads, 25, c.block_size, 4), np.float32)
    vc = np.zeros((4, c.num_kv_heads, 100, c.block_size), np.float32)
    args = list(c.args())
    args[0:3] = [q, kc, vc]
    _expect_error(lambda: pagedattn.paged_attention_v1(out, *args), "head_size", "100", "256", code="unsupported")


def test_error_dtype_mismatch_leaves_out_untouched(rng):
    c = Case(rng, [5])
    out = np.full((c.num_seqs, c.num_heads, c.head_size), 3.0, np.float16)
    _expect_error(lambda: pagedattn.paged_attention_v1(out, *c.args()), "out", "float16", "float32")
    assert (out == 3.0).all()


def test_error_bad_kv_cache_dtype(rng):
    c = Case(rng, [5])
    _expect_error(lambda: pagedattn.paged_attention_v1(c.out(), *c.args("int4")), "kv_cache_dtype", "int4")


def test_error_checked_mode_reports_bad_block_id(rng):
    c = Case(rng, [5, 20])
    c.block_tables[1, 1] = c.num_blocks + 5
    out = c.out()
    msg = _expect_error(lambda: pagedattn.paged_attention_v1(out, *c.args(), checked=True), code="data_error")
    assert str(c.num_blocks + 5) in msg


def test_error_seq_len_over_max(rng):
    c = Case(rng, [5, 20])
    args = list(c.args())
    args[8] = 10  # max_seq_len below seq_lens[1]
    _expect_error(lambda: pagedattn.paged_attention_v1(c.out(), *args, checked=True), "20", code="data_error")


def test_error_unsupported_array_dtype(rng):
    c = Case(rng, [5])
    out = np.zeros((c.num_seqs, c.num_heads, c.head_size), np.float64)
    _expect_error(lambda: pagedattn.paged_attention_v1(out, *c.args()), "out")


def test_non_array_argument_is_a_type_error(rng):
    c = Case(rng, [5])
    with pytest.raises(TypeError):
        pagedattn.paged_attention_v1([[0.0]], *c.args())


# ---------------------------------------------------------------------------------------------
# Cache operations and the block manager.


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_reshape_and_cache_places_tokens(rng, dtype):
    nkv, hs, bs, nb = 2, 64, 16, 6
    x = 16 // np.dtype(dtype).itemsize
    key = rng.standard_normal((5, nkv, hs)).astype(dtype)
    value = rng.standard_normal((5, nkv, hs)).astype(dtype)
    kc = np.zeros((nb, nkv, hs // x, bs, x), dtype)
    vc = np.zeros((nb, nkv, hs, bs), dtype)
    slots = np.array([0, 17, -1, 95, 40], np.int64)  # -1: padding, skipped
    pagedattn.reshape_and_cache(key, value, kc, vc, slots, "auto", 1.0, 1.0, checked=True)
    for t, s in enumerate(slots):
        if s < 0:
            continue
        b, o = divmod(int(s), bs)
        np.testing.assert_array_equal(kc[b, :, :, o, :].reshape(nkv, hs), key[t])
        np.testing.assert_array_equal(vc[b, :, :, o], value[t])


def test_copy_blocks_every_layer(rng):
    layers = [(rng.standard_normal((5, 2, 16, 8, 4)).astype(np.float32),
               rng.standard_normal((5, 2, 64, 8)).astype(np.float32)) for _ in range(3)]
    before = [(k.copy(), v.copy()) for k, v in layers]
    mapping = np.array([[0, 3], [2, 4]], np.int64)
    pagedattn.copy_blocks([k for k, _ in layers], [v for _, v in layers], mapping)
    for (k, v), (k0, v0) in zip(layers, before):
        for src, dst in mapping:
            np.testing.assert_array_equal(k[dst], k0[src])
            np.testing.assert_array_equal(v[dst], v0[src])
        np.testing.assert_array_equal(k[[0, 1, 2]], k0[[0, 1, 2]])


def test_swap_blocks_host_to_host(rng):
    src = rng.standard_normal((4, 2, 64, 16)).astype(np.float16)
    dst = np.zeros((6, 2, 64, 16), np.float16)
    pagedattn.swap_blocks(src, dst, np.array([[1, 5], [3, 0]], np.int64))
    np.testing.assert_array_equal(dst[5], src[1])
    np.testing.assert_array_equal(dst[0], src[3])
    assert not dst[[1, 2, 3, 4]].any()


def test_block_manager_fork_and_copy_on_write():
    bm = pagedattn.BlockManager(num_blocks=8, block_size=4)
    slots = bm.allocate(1, 6)
    assert len(slots) == 6 and bm.num_free_blocks == 6 and 1 in bm
    bm.fork(1, 2)
    table = bm.block_table(1)
    assert bm.block_table(2) == table and all(bm.ref_count(b) == 2 for b in table)
    slot, copy = bm.append_slot(2)  # last block shared: copy-on-write
    assert copy is not None and copy[0] == table[-1] and copy[1] != table[-1]
    assert slot // 4 == copy[1] and slot % 4 == 2
    tables, lens = bm.block_tables([1, 2])
    assert tables.dtype == np.int32 and tables.shape == (2, 2) and list(lens) == [6, 7]
    bt = np.full((2, 3), -1, np.int32)
    sl = np.zeros(2, np.int32)
    bm.fill_block_tables([1, 2], bt, sl, pad=-9)
    assert list(bt[:, 2]) == [-9, -9] and list(sl) == [6, 7]
    bm.free(1)
    bm.free(2)
    assert bm.num_free_blocks == 8 and bm.num_sequences == 0


def test_block_manager_errors_are_exceptions():
    bm = pagedattn.BlockManager(2, 16)
    with pytest.raises(pagedattn.PagedAttnError):
        bm.allocate(1, 100)  # needs 7 blocks
    assert bm.num_free_blocks == 2
    with pytest.raises(pagedattn.PagedAttnError):
        bm.free(42)
    bm.allocate(1, 20)
    with pytest.raises(pagedattn.PagedAttnError, match="max_blocks_per_seq is -1"):
        bm.block_tables([1], -1)


def test_overhead_tool_runs():
    import runpy
    import pathlib

    tool = pathlib.Path(__file__).resolve().parents[2] / "python" / "tools" / "overhead.py"
    mod = runpy.run_path(str(tool))
    res = mod["measure"](iters=200, repeats=1)
    timed = {"cpp_us", "native_binding_us", "python_us"}
    assert timed <= set(res["max_abs_err"])
    # every timed path really made the call: each left the exact output (1.0 everywhere) in a
    # buffer zeroed before it ran
    assert all(err == 0.0 for err in res["max_abs_err"].values()), res["max_abs_err"]
    assert all(0 < res[k] < 1e5 for k in timed), res


def test_build_info_describes_this_build():
    info = pagedattn.build_info()
    assert set(info) == {"version", "cuda", "cuda_architectures"}
    assert info["version"] == pagedattn.__version__
    assert info["cuda"] is pagedattn.built_with_cuda()
    # a CUDA build names its architectures (CMake's list, e.g. "90" or "80-real 90-real ... 120");
    # a CPU-only build names none
    archs = info["cuda_architectures"]
    assert isinstance(archs, str)
    assert (archs != "") == info["cuda"], archs
    for a in archs.split():
        assert a == "native" or a.split("-")[0].isdigit(), archs
