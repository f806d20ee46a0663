"""SPEC §3b variants through the Python API on the CPU backend (NumPy arrays, no torch needed):
multi-token causal rows, sliding window, logits soft-cap, ALiBi relative to the row's position,
the log-sum-exp output, per-kv-head fp8 scales, merge_attention_states, NaN propagation,
is_supported and the errors that name the new arguments. Every result is checked against the
float64 reference of tests/python/_reference.py.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import pagedattn
from _reference import Case, attention, fp8_decode_tables, merge, tolerance

# Sequences with an empty one (0 tokens) and a one-token one; q_lens[i] <= seq_lens[i], one
# sequence has no query rows at all.
SEQ_LENS = [37, 1, 0, 130, 64, 18]
Q_LENS = [3, 1, 0, 7, 4, 0]
LSE_TOL = dict(atol=1e-4, rtol=1e-5)


@pytest.fixture
def rng():
    return np.random.default_rng(31337)


def auto(c, *, kv_cache_dtype="auto", k_scale=1.0, v_scale=1.0, with_lse=True, **kw):
    """Runs the auto path on case `c` (its query_start_loc, if any); returns (out, lse)."""
    out = c.out()
    lse = kw.pop("lse") if "lse" in kw else (c.lse() if with_lse else None)
    if c.query_start_loc is not None:
        kw.setdefault("query_start_loc", c.query_start_loc)
        kw.setdefault("max_query_len", c.max_query_len)
    pagedattn.paged_attention(out, *c.args(kv_cache_dtype, k_scale, v_scale), lse=lse, checked=True, **kw)
    return out, lse


def check(c, got, ref, dtype=None):
    out, lse = got
    ref_out, ref_lse = ref
    atol, rtol = tolerance(dtype or c.dtype)
    np.testing.assert_allclose(out.astype(np.float64), ref_out, atol=atol, rtol=rtol)
    if lse is not None:
        np.testing.assert_allclose(lse, ref_lse, **LSE_TOL)


# ------------------------------------------------------------------ each variant vs the reference


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (8, 2)])
def test_multi_token_rows_are_causal(rng, dtype, block_size, num_heads, num_kv_heads):
    c = Case(rng, SEQ_LENS, num_heads, num_kv_heads, 64, block_size, dtype, q_lens=Q_LENS)
    check(c, auto(c), c.reference(with_lse=True))


@pytest.mark.parametrize("variant", [{}, {"window_left": 16}, {"logits_soft_cap": 2.0}, {"alibi": True},
                                     {"blocksparse_vert_stride": 3, "blocksparse_local_blocks": 1,
                                      "blocksparse_block_size": 16}])
def test_each_row_equals_a_one_token_call_on_the_sequence_cut_at_its_position(rng, variant):
    # The library against itself, no reference involved: the row at position p of a multi-token
    # call is the one-token call on the sequence's first p + 1 tokens (SPEC §3b: causal mask,
    # window, ALiBi and block-sparse all take p). Only float32 rounding may differ.
    variant = dict(variant)
    c = Case(rng, [37, 130, 9], num_heads=4, num_kv_heads=2, alibi=variant.pop("alibi", False), q_lens=[3, 7, 9])
    out, lse = auto(c, **variant)
    for i in range(c.num_seqs):
        first, q_len, L = c.query_start_loc[i], c.query_start_loc[i + 1] - c.query_start_loc[i], c.seq_lens[i]
        for j in range(q_len):
            r = first + j
            one, one_lse = np.empty((1, c.num_heads, c.head_size), np.float32), np.empty((1, c.num_heads), np.float32)
            args = list(c.args())
            args[0], args[5], args[6] = c.query[r:r + 1], c.block_tables[i:i + 1], np.array([L - q_len + j + 1],
                                                                                         np.int32)
            pagedattn.paged_attention(one, *args, lse=one_lse, **variant)
            np.testing.assert_allclose(out[r], one[0], atol=2e-6, rtol=1e-5, err_msg=f"sequence {i} row {j}")
            np.testing.assert_allclose(lse[r], one_lse[0], **LSE_TOL)


def test_max_query_len_is_only_a_hint(rng):
    c = Case(rng, SEQ_LENS, q_lens=Q_LENS)
    exact = auto(c)
    unknown = auto(c, max_query_len=0)
    np.testing.assert_array_equal(unknown[0], exact[0])
    np.testing.assert_array_equal(unknown[1], exact[1])


@pytest.mark.parametrize("multi_token", [False, True])
@pytest.mark.parametrize("window_left", [0, 1, 16, 100, 10_000])
def test_sliding_window(rng, multi_token, window_left):
    c = Case(rng, SEQ_LENS, q_lens=Q_LENS if multi_token else None)
    check(c, auto(c, window_left=window_left), c.reference(window_left=window_left, with_lse=True))


@pytest.mark.parametrize("multi_token", [False, True])
@pytest.mark.parametrize("cap", [1.0, 5.0, 50.0])
def test_logits_soft_cap(rng, multi_token, cap):
    c = Case(rng, SEQ_LENS, q_lens=Q_LENS if multi_token else None)
    c.scale = 1.0  # logits of spread ~8: a cap of 1 or 5 bends most of them
    ref = c.reference(logits_soft_cap=cap, with_lse=True)
    assert not np.allclose(ref[0], c.reference(), atol=1e-3)  # the cap matters here
    check(c, auto(c, logits_soft_cap=cap), ref)


@pytest.mark.parametrize("multi_token", [False, True])
def test_alibi_is_relative_to_the_row_position(rng, multi_token):
    # s += slope * (t - p): each row of a sequence has its own p
    c = Case(rng, SEQ_LENS, num_heads=4, num_kv_heads=2, alibi=True, q_lens=Q_LENS if multi_token else None)
    check(c, auto(c), c.reference(with_lse=True))


def test_lse_single_token_and_empty_sequence(rng):
    c = Case(rng, [1, 0, 300, 17])
    out, lse = auto(c)
    ref_out, ref_lse = c.reference(with_lse=True)
    check(c, (out, lse), (ref_out, ref_lse))
    assert np.all(lse[1] == -np.inf) and np.all(out[1] == 0.0)  # attends nothing: -inf and zeros
    # a one-token row: lse is that token's logit
    k = c.key_cache[c.block_tables[0, 0], :, :, 0, :].reshape(c.num_kv_heads, c.head_size).astype(np.float64)
    group = c.num_heads // c.num_kv_heads
    s = [c.scale * float(k[h // group] @ c.query[0, h].astype(np.float64)) for h in range(c.num_heads)]
    np.testing.assert_allclose(lse[0], s, **LSE_TOL)


@pytest.mark.parametrize("kv_cache_dtype,which", [("fp8_e4m3", 0), ("fp8_e5m2", 1)])
@pytest.mark.parametrize("multi_token", [False, True])
def test_per_head_fp8_scales(rng, kv_cache_dtype, which, multi_token):
    c = Case(rng, SEQ_LENS, num_heads=8, num_kv_heads=4, cache_bytes=True, q_lens=Q_LENS if multi_token else None)
    decode = fp8_decode_tables()[which]
    k_scales = np.array([0.05, 0.5, 0.01, 0.2], np.float32)
    v_scales = np.array([0.15, 0.025, 0.075, 0.01], np.float32)
    got = auto(c, kv_cache_dtype=kv_cache_dtype, k_scale=k_scales, v_scale=v_scales)
    ref = c.reference(decode, k_scales, v_scales, with_lse=True)
    np.testing.assert_allclose(got[0], ref[0], atol=5e-4, rtol=1e-4)
    np.testing.assert_allclose(got[1], ref[1], **LSE_TOL)


def test_reshape_and_cache_with_per_head_scales():
    # per-head scales store head g exactly as a per-tensor call with scale k_scales[g] does
    rng = np.random.default_rng(5)
    nkv, hs, bs, nb = 3, 64, 16, 4
    key = (rng.standard_normal((6, nkv, hs)) * 4).astype(np.float32)
    value = (rng.standard_normal((6, nkv, hs)) * 4).astype(np.float32)
    slots = np.array([0, 17, -1, 40, 63, 5], np.int64)
    k_scales = np.array([0.5, 0.02, 3.0], np.float32)
    v_scales = np.array([0.1, 1.0, 0.007], np.float32)

    def empty():
        return np.zeros((nb, nkv, hs // 16, bs, 16), np.uint8), np.zeros((nb, nkv, hs, bs), np.uint8)

    kc, vc = empty()
    pagedattn.reshape_and_cache(key, value, kc, vc, slots, "fp8_e4m3", k_scales, v_scales, checked=True)
    for g in range(nkv):
        kg, vg = empty()
        pagedattn.reshape_and_cache(key, value, kg, vg, slots, "fp8_e4m3", float(k_scales[g]), float(v_scales[g]))
        np.testing.assert_array_equal(kc[:, g], kg[:, g])
        np.testing.assert_array_equal(vc[:, g], vg[:, g])
    assert kc.any() and vc.any()


def test_every_variant_at_once(rng):
    c = Case(rng, SEQ_LENS, num_heads=8, num_kv_heads=2, block_size=16, alibi=True, cache_bytes=True, q_lens=Q_LENS)
    decode = fp8_decode_tables()[0]
    k_scales = np.array([0.05, 0.5], np.float32)
    v_scales = np.array([0.3, 0.9], np.float32)
    sparse = (1, 2, 32, 1)
    got = auto(c, kv_cache_dtype="fp8", k_scale=k_scales, v_scale=v_scales, window_left=40, logits_soft_cap=3.0,
               tp_rank=1, blocksparse_local_blocks=sparse[0], blocksparse_vert_stride=sparse[1],
               blocksparse_block_size=sparse[2], blocksparse_head_sliding_step=sparse[3])
    ref = c.reference(decode, k_scales, v_scales, window_left=40, logits_soft_cap=3.0, blocksparse=sparse, tp_rank=1,
                      with_lse=True)
    np.testing.assert_allclose(got[0], ref[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got[1], ref[1], **LSE_TOL)


# ------------------------------------------------------------------ NaN propagation (SPEC §3)


def _run(version, c, **kw):
    out = c.out()
    if version == "v1":
        pagedattn.paged_attention_v1(out, *c.args(), **kw)
    elif version == "v2":
        shapes = pagedattn.v2_workspace_shapes(c.num_seqs, c.num_heads, c.head_size, c.max_seq_len)
        ws = (np.empty(shapes[0], np.float32), np.empty(shapes[1], np.float32), np.empty(shapes[2], c.dtype))
        pagedattn.paged_attention_v2(out, *ws, *c.args(), **kw)
    else:
        return auto(c, **kw)
    return out, None


@pytest.mark.parametrize("version,multi_token", [("v1", False), ("v2", False), ("auto", False), ("auto", True)])
def test_nan_in_one_query_element_reaches_exactly_its_row(rng, version, multi_token):
    c = Case(rng, [20, 600, 45], q_lens=[2, 5, 1] if multi_token else None)
    row, head = 3 if multi_token else 1, 2
    c.query[row, head, 7] = np.nan
    out, lse = _run(version, c)
    assert np.isnan(out[row, head]).all()
    if lse is not None:
        assert np.isnan(lse[row, head])
    others = np.ones(out.shape[:2], bool)
    others[row, head] = False
    assert np.isfinite(out[others]).all()
    ref = c.reference()
    np.testing.assert_allclose(out[others], ref[others], atol=2e-5, rtol=1e-4)


def test_nan_in_a_cached_value_reaches_the_rows_that_attend_it(rng):
    # With a window, only some rows of the sequence attend token t: those rows (every head of
    # the kv head's group) turn NaN, the others stay exact.
    c = Case(rng, [50, 90], num_heads=4, num_kv_heads=2, block_size=16, q_lens=[4, 6])
    seq, t, g, window = 1, 80, 1, 6
    blk, off = c.block_tables[seq, t // c.block_size], t % c.block_size
    c.value_cache[blk, g, 3, off] = np.nan
    out, lse = auto(c, window_left=window)
    ref_out, ref_lse = c.reference(window_left=window, with_lse=True)
    nan_rows = np.isnan(ref_out).any(axis=2)
    assert 0 < nan_rows.sum() < nan_rows.size - 8  # some rows attend t, most do not
    np.testing.assert_array_equal(np.isnan(out).any(axis=2), nan_rows)
    np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=1e-4)  # NaN where the reference has NaN
    np.testing.assert_allclose(lse, ref_lse, **LSE_TOL)


# ------------------------------------------------------------------ merge_attention_states


def _states(rng, rows=7, heads=4, hs=64, dtype=np.float32):
    out_a = rng.standard_normal((rows, heads, hs)).astype(dtype)
    out_b = rng.standard_normal((rows, heads, hs)).astype(dtype)
    lse_a = (rng.standard_normal((rows, heads)) * 3).astype(np.float32)
    lse_b = (rng.standard_normal((rows, heads)) * 3).astype(np.float32)
    lse_a[0, 0] = -np.inf  # a empty: b alone
    lse_b[1, 1] = -np.inf  # b empty: a alone
    lse_a[2, 2] = lse_b[2, 2] = -np.inf  # both empty: zeros, -inf
    out_a[0, 0] = np.nan  # an empty state's output must not be read into the result
    out_b[2, 2] = np.nan
    lse_b[3, 3] = lse_a[3, 3] + 40.0  # one state dominates
    return out_a, lse_a, out_b, lse_b


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_merge_matches_the_reference(rng, dtype):
    out_a, lse_a, out_b, lse_b = _states(rng, dtype=dtype)
    out = np.full_like(out_a, np.nan)
    lse = np.full_like(lse_a, np.nan)
    pagedattn.merge_attention_states(out_a, lse_a, out_b, lse_b, out, lse)
    ref_out, ref_lse = merge(out_a, lse_a, out_b, lse_b)
    atol, rtol = tolerance(dtype)
    np.testing.assert_allclose(out.astype(np.float64), ref_out, atol=atol, rtol=rtol)
    np.testing.assert_allclose(lse, ref_lse, **LSE_TOL)
    assert np.all(out[2, 2] == 0.0) and lse[2, 2] == -np.inf
    np.testing.assert_array_equal(out[0, 0], out_b[0, 0])
    np.testing.assert_array_equal(out[1, 1], out_a[1, 1])


def test_merge_in_place_and_without_lse(rng):
    out_a, lse_a, out_b, lse_b = _states(rng)
    ref_out, ref_lse = merge(out_a, lse_a, out_b, lse_b)
    a, la = out_a.copy(), lse_a.copy()
    pagedattn.merge_attention_states(a, la, out_b, lse_b, a, la)  # out is out_a, lse is lse_a
    np.testing.assert_allclose(a, ref_out, atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(la, ref_lse, **LSE_TOL)
    out = np.empty_like(out_a)
    pagedattn.merge_attention_states(out_a, lse_a, out_b, lse_b, out)
    np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("multi_token", [False, True])
@pytest.mark.parametrize("cap", [0.0, 4.0])
def test_merge_of_a_split_equals_the_whole(rng, multi_token, cap):
    # A row at p attends [0, p]. Part B: a window of W tokens back, [p - W, p]; part A: the same
    # sequences cut W + 1 tokens shorter, so each row sits at p - W - 1 and attends
    # [0, p - W - 1]. Disjoint, together the whole (no ALiBi: its bias depends on p).
    W = 20
    c = Case(rng, [40, 300, 23, 129], q_lens=[2, 5, 1, 3] if multi_token else None)
    whole = auto(c, logits_soft_cap=cap)
    part_b = auto(c, logits_soft_cap=cap, window_left=W)
    full_lens = c.seq_lens
    c.seq_lens = (full_lens - W - 1).astype(np.int32)
    part_a = auto(c, logits_soft_cap=cap)
    c.seq_lens = full_lens
    out, lse = c.out(), c.lse()
    pagedattn.merge_attention_states(part_a[0], part_a[1], part_b[0], part_b[1], out, lse)
    np.testing.assert_allclose(out, whole[0], atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(lse, whole[1], **LSE_TOL)
    check(c, (out, lse), c.reference(logits_soft_cap=cap, with_lse=True))


# ------------------------------------------------------------------ is_supported


def _variant_call(c):
    return (c.out(), *c.args()), dict(query_start_loc=c.query_start_loc, max_query_len=c.max_query_len,
                                      window_left=4, logits_soft_cap=30.0, lse=c.lse())


def test_is_supported_accepts_good_calls(rng):
    c = Case(rng, [5, 40], q_lens=[2, 3])
    args, kw = _variant_call(c)
    assert pagedattn.is_supported(*args, **kw) == (True, "")
    single = Case(rng, [5, 40])
    assert pagedattn.is_supported(single.out(), *single.args()) == (True, "")
    assert pagedattn.is_supported(single.out(), *single.args(), workspace=np.empty(0, np.uint8)) == (True, "")
    # data are not checked (that is checked=True's job): a bad block id is still "supported"
    single.block_tables[1, 0] = 10_000
    assert pagedattn.is_supported(single.out(), *single.args(), checked=True)[0]


def _bad_calls(c):
    """(description, fragment the reason must contain, args, kwargs), each a call paged_attention
    rejects before computing."""
    args, kw = _variant_call(c)
    a = list(args)
    bad_q = np.zeros((c.rows, c.num_heads, 100), np.float32)
    yield "head_size", "head_size 100", [np.zeros_like(bad_q), bad_q] + a[2:], kw
    yield "window_left", "window_left is -2", a, {**kw, "window_left": -2}
    yield "logits_soft_cap", "logits_soft_cap", a, {**kw, "logits_soft_cap": -1.0}
    yield "lse dtype", "lse has dtype float16", a, {**kw, "lse": np.zeros((c.rows, c.num_heads), np.float16)}
    yield "lse shape", "lse dimension 0", a, {**kw, "lse": np.zeros((c.rows + 1, c.num_heads), np.float32)}
    yield "query_start_loc dtype", "query_start_loc has dtype int64", a, {
        **kw, "query_start_loc": c.query_start_loc.astype(np.int64)}
    yield "query_start_loc length", "query_start_loc", a, {**kw, "query_start_loc": c.query_start_loc[:-1]}
    yield "max_query_len alone", "max_query_len is 2 without query_start_loc", a, {
        **kw, "query_start_loc": None, "max_query_len": 2}
    yield "per-head scales, auto cache", "kv_cache_dtype is auto", a[:11] + ["auto", np.ones(2, np.float32),
                                                                             np.ones(2, np.float32)], kw
    yield "k_scale type", "k_scale", a[:12] + ["x", 1.0], kw
    yield "window_left type", "window_left", a, {**kw, "window_left": "3"}
    yield "lse not an array", "lse", a, {**kw, "lse": [[0.0]]}
    yield "out not an array", "out", [[[0.0]]] + a[1:], kw
    yield "unknown keyword", "window_right", a, {**kw, "window_right": 3}


def test_is_supported_reports_what_the_call_raises(rng):
    c = Case(rng, [5, 40], q_lens=[2, 3])
    for what, fragment, args, kw in _bad_calls(c):
        ok, reason = pagedattn.is_supported(*args, **kw)
        assert not ok and fragment in reason, (what, reason)
        with pytest.raises((pagedattn.PagedAttnError, TypeError)) as info:
            pagedattn.paged_attention(*args, **kw)
        assert fragment in str(info.value), (what, str(info.value))
        if isinstance(info.value, pagedattn.PagedAttnError):
            assert reason == str(info.value), what  # the library's own message, word for word


def test_is_supported_never_raises():
    for args in ((), (None,), (1, 2, 3), ("out",) * 10, (object(),) * 12):
        ok, reason = pagedattn.is_supported(*args)
        assert ok is False and reason, args


def test_is_supported_and_paged_attention_share_a_signature():
    auto_params = inspect.signature(pagedattn.paged_attention).parameters
    assert list(inspect.signature(pagedattn.is_supported).parameters) == list(auto_params)
    for name in ("workspace", "query_start_loc", "max_query_len", "window_left", "logits_soft_cap", "lse",
                 "total_tokens", "batch_invariant", "checked", "stream"):
        assert auto_params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert list(auto_params)[:19] == ["out", "query", "key_cache", "value_cache", "num_kv_heads", "scale",
                                      "block_tables", "seq_lens", "block_size", "max_seq_len", "alibi_slopes",
                                      "kv_cache_dtype", "k_scale", "v_scale", "tp_rank",
                                      "blocksparse_local_blocks", "blocksparse_vert_stride",
                                      "blocksparse_block_size", "blocksparse_head_sliding_step"]


def test_attention_call_packs_fields_in_the_native_order():
    # One tuple, one entry per native field, in the native module's order: arrays and scalars
    # pass through untouched (sentinels), scales become floats, stream stays as given.
    from pagedattn._call import attention_call

    names = pagedattn._C.ATTENTION_FIELDS
    values = {n: object() for n in names}
    values.update(k_scale=0.25, v_scale=0.5, stream=7)
    positional = [values[n] for n in names[:19]]
    keywords = {n: values[n] for n in names[19:]}
    call = attention_call(*positional, **keywords)
    assert len(call) == len(names)
    for name, got in zip(names, call):
        assert got is values[name] or got == values[name], name


# ------------------------------------------------------------------ errors naming the new arguments


def _expect(fn, *fragments, exc=pagedattn.PagedAttnError):
    with pytest.raises(exc) as info:
        fn()
    for f in fragments:
        assert f in str(info.value), str(info.value)
    return info.value


def test_v1_and_v2_reject_the_variants_by_name(rng):
    c = Case(rng, [5, 40])
    shapes = pagedattn.v2_workspace_shapes(c.num_seqs, c.num_heads, c.head_size, c.max_seq_len)
    ws = (np.empty(shapes[0], np.float32), np.empty(shapes[1], np.float32), np.empty(shapes[2], np.float32))
    for name, value in (("window_left", 3), ("logits_soft_cap", 5.0), ("lse", c.lse()),
                        ("query_start_loc", np.arange(3, dtype=np.int32))):
        _expect(lambda: pagedattn.paged_attention_v1(c.out(), *c.args(), **{name: value}), name,
                "use paged_attention")
        _expect(lambda: pagedattn.paged_attention_v2(c.out(), *ws, *c.args(), **{name: value}), name,
                "use paged_attention")
    for name, value in (("workspace", np.empty(256, np.uint8)), ("total_tokens", 10), ("batch_invariant", True)):
        _expect(lambda: pagedattn.paged_attention_v1(c.out(), *c.args(), **{name: value}), name,
                "paged_attention (the auto entry point) only")


def test_checked_mode_reports_bad_query_start_loc(rng):
    c = Case(rng, [5, 40, 9], q_lens=[2, 3, 1])
    qsl = c.query_start_loc
    for bad, fragments in ((np.array([1, 2, 5, 6], np.int32), ("query_start_loc[0] = 1",)),
                           (np.array([0, 3, 2, 6], np.int32), ("non-decreasing",)),
                           (np.array([0, 2, 5, 5], np.int32), ("query_start_loc[3] = 5", "6 rows")),
                           (np.array([0, 6, 6, 6], np.int32), ("q_len 6", "seq_lens[0] = 5"))):
        e = _expect(lambda: auto(c, query_start_loc=bad), *fragments)
        assert e.code == "data_error"
    e = _expect(lambda: auto(c, query_start_loc=qsl, max_query_len=2), "max_query_len is 2")
    assert e.code == "data_error"


def test_bad_scale_arrays_are_named(rng):
    c = Case(rng, [5, 40], num_heads=4, num_kv_heads=2, cache_bytes=True)
    two = np.ones(2, np.float32)
    _expect(lambda: auto(c, kv_cache_dtype="fp8", k_scale=np.ones(3, np.float32), v_scale=np.ones(3, np.float32)),
            "k_scales dimension 0 is 3", "num_kv_heads")
    _expect(lambda: auto(c, kv_cache_dtype="fp8", k_scale=two, v_scale=0.5), "k_scales is given without v_scales")
    _expect(lambda: auto(c, kv_cache_dtype="fp8", k_scale=two.astype(np.float16), v_scale=two), "k_scales",
            "float32")
    _expect(lambda: auto(c, kv_cache_dtype="fp8", k_scale="big", v_scale=two), "k_scale", exc=TypeError)
    key = np.zeros((1, 2, 64), np.float32)
    kc, vc = np.zeros((2, 2, 4, 16, 16), np.uint8), np.zeros((2, 2, 64, 16), np.uint8)
    _expect(lambda: pagedattn.reshape_and_cache(key, key, kc, vc, np.zeros(1, np.int64), "fp8", np.ones(3, np.float32),
                                                np.ones(3, np.float32)), "k_scales dimension 0 is 3")
    kc32, vc32 = np.zeros((2, 2, 16, 16, 4), np.float32), np.zeros((2, 2, 64, 16), np.float32)
    _expect(lambda: pagedattn.reshape_and_cache(key, key, kc32, vc32, np.zeros(1, np.int64), "auto", two, two),
            "kv_cache_dtype is auto")


def test_wrong_types_of_the_new_arguments_are_type_errors_naming_them(rng):
    c = Case(rng, [5, 40], q_lens=[1, 2])
    for name, value in (("window_left", 2.5), ("max_query_len", "1"), ("logits_soft_cap", "soft"),
                        ("total_tokens", None), ("lse", [0.0]), ("query_start_loc", (0, 1, 3)),
                        ("workspace", "16 bytes")):
        _expect(lambda: auto(c, with_lse=False, **{name: value}), name, exc=TypeError)
    ro = c.lse()
    ro.setflags(write=False)
    _expect(lambda: pagedattn.paged_attention(c.out(), *c.args(), query_start_loc=c.query_start_loc, lse=ro),
            "lse must be a writable", exc=TypeError)


def test_merge_errors_name_the_argument(rng):
    out_a, lse_a, out_b, lse_b = _states(rng)
    out = np.empty_like(out_a)
    _expect(lambda: pagedattn.merge_attention_states(out_a, lse_a.astype(np.float16), out_b, lse_b, out), "lse_a",
            "float32")
    _expect(lambda: pagedattn.merge_attention_states(out_a, lse_a, out_b.astype(np.float16), lse_b, out), "out_b")
    _expect(lambda: pagedattn.merge_attention_states(out_a, lse_a, out_b, lse_b, out[:3]), "out dimension 0")
    _expect(lambda: pagedattn.merge_attention_states(out_a, lse_a, out_b, lse_b[:, :2], out), "lse_b")
    _expect(lambda: pagedattn.merge_attention_states(out_a, lse_a, out_b, lse_b, out, lse_a[:2]), "lse")
    _expect(lambda: pagedattn.merge_attention_states(out_a, lse_a, out_b, lse_b, "out"), "out", exc=TypeError)


def test_reference_sanity():
    # The reference itself: a window of 0 leaves one token per row, so out = that token's value
    # and lse = its logit, whatever the scale and cap.
    rng = np.random.default_rng(0)
    c = Case(rng, [9, 33], num_heads=2, num_kv_heads=2, q_lens=[2, 3])
    out, lse = attention(c.query, c.key_cache, c.value_cache, c.block_tables, c.seq_lens, c.scale, c.block_size,
                         query_start_loc=c.query_start_loc, window_left=0, with_lse=True)
    for i, (L, first, q_len) in enumerate(zip(c.seq_lens, c.query_start_loc[:-1], np.diff(c.query_start_loc))):
        for j in range(q_len):
            p = L - q_len + j
            blk, off = c.block_tables[i, p // c.block_size], p % c.block_size
            for h in range(2):
                v = c.value_cache[blk, h, :, off].astype(np.float64)
                k = c.key_cache[blk, h, :, off, :].reshape(-1).astype(np.float64)
                np.testing.assert_allclose(out[first + j, h], v, rtol=1e-12)
                np.testing.assert_allclose(lse[first + j, h], c.scale * (k @ c.query[first + j, h]), rtol=1e-12)
