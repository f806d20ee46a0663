"""Framework-neutral entry points: any DLPack array (NumPy, PyTorch, CuPy, ...), any device.

The attention functions share one signature, :func:`pagedattn._call.attention_call`: vLLM's
argument order (SPEC §5), then keyword-only extras (``checked``, ``stream``, the auto path's
``workspace``, the SPEC §3b variants and the planner hints). They forward their arguments there, so
each argument is converted in one place; ``inspect.signature`` and ``help`` show that signature.
Outputs are written in place; nothing is copied. Library errors raise :class:`PagedAttnError`
naming the parameter; an argument of the wrong Python type raises ``TypeError``.
"""

from __future__ import annotations

from . import _C
from ._arrays import default_stream, dl, empty_bytes_like, on_host, scale_arg
from ._call import attention_call

__all__ = [
    "paged_attention_v1",
    "paged_attention_v2",
    "paged_attention",
    "workspace_size",
    "is_supported",
    "merge_attention_states",
    "v2_workspace_shapes",
    "reshape_and_cache",
    "copy_blocks",
    "swap_blocks",
]


def _shares_signature(fn):
    # inspect.signature / help() follow __wrapped__: they show attention_call's parameters.
    fn.__wrapped__ = attention_call
    return fn


@_shares_signature
def paged_attention_v1(*args, **kwargs):
    """V1 paged attention: ``out[i, h] = softmax(scale * q . K + alibi) V`` over the paged cache.

    vLLM's contract: one query per sequence and none of the SPEC §3b variants (passing one, or the
    auto path's ``workspace`` / ``total_tokens`` / ``batch_invariant``, raises PagedAttnError).
    ``k_scale``/``v_scale``: floats (fast path) or one-element arrays (read on the host; a CUDA
    tensor costs a sync). ``stream``: a cudaStream_t as int; default = the current stream of
    ``out``'s framework (torch, CuPy), else 0. ``checked``: also validate seq_lens and block ids.
    """
    _C.paged_attention_v1(attention_call(*args, **kwargs))


def paged_attention_v2(out, exp_sums, max_logits, tmp_out, *args, **kwargs):
    """V2 (512-token partitions + reduce): ``paged_attention_v2(out, exp_sums, max_logits, tmp_out,
    query, ...)``, the rest as :func:`paged_attention_v1`. ``exp_sums``/``max_logits``: float32
    ``[num_seqs, num_heads, P]``, ``tmp_out``: ``[num_seqs, num_heads, P, head_size]`` of the query
    dtype, ``P >= ceil(max_seq_len / 512)`` (see :func:`v2_workspace_shapes`)."""
    _C.paged_attention_v2(attention_call(out, *args, **kwargs), dl(exp_sums), dl(max_logits), dl(tmp_out))


@_shares_signature
def workspace_size(*args, **kwargs) -> int:
    """Bytes of workspace :func:`paged_attention` needs for this call (0 on the CPU).

    Depends on shapes, ``max_seq_len`` and the device only, never on the data: allocate once per
    shape and reuse, e.g. across CUDA graph replays."""
    return _C.paged_attention_workspace_size(attention_call(*args, **kwargs))


@_shares_signature
def paged_attention(*args, **kwargs):
    """Auto: the library picks V1, V2 or its split path for the shape, and takes the variants.

    ``workspace``: a 1-D byte buffer on ``out``'s device of at least :func:`workspace_size` bytes,
    256-byte aligned. When omitted it is allocated per call with ``out``'s framework (torch, CuPy,
    NumPy); pass one under CUDA graph capture or in a hot loop. ``total_tokens``: optional sum of
    ``seq_lens`` known on the host; lets the split planner balance a mixed-length batch (0 =
    unknown; never changes the result or the workspace size). ``batch_invariant``: fixed
    512-token splits, so a sequence's output bits do not depend on its batch-mates.

    Variants (SPEC §3b): ``query_start_loc`` (int32 ``[num_seqs + 1]``, several query rows per
    sequence, causal) with the optional host hint ``max_query_len``; ``window_left`` (sliding
    window, -1 = off); ``logits_soft_cap`` (0 = off); ``lse`` (float32 ``[num_query_rows,
    num_heads]`` output); ``k_scale``/``v_scale`` as float32 ``[num_kv_heads]`` arrays (fp8 caches).
    """
    if kwargs.get("workspace") is None:
        out = args[0] if args else kwargs.get("out")
        if out is not None and not on_host(out):  # the CPU backend needs no workspace
            # A call tuple is single-use (torch capsules are consumed): size from a fresh one.
            need = _C.paged_attention_workspace_size(attention_call(*args, **kwargs))
            if need > 0:
                kwargs["workspace"] = empty_bytes_like(out, need)
    _C.paged_attention(attention_call(*args, **kwargs))


@_shares_signature
def is_supported(*args, **kwargs):
    """``(ok, reason)``: whether :func:`paged_attention` accepts exactly these arguments.

    Runs every check the call makes before computing (shapes, dtypes, devices, the dispatch matrix
    and what this build holds; a given ``workspace`` must be large enough), not the data checks of
    ``checked=True``. Never raises: ``reason`` is empty when ok, else the message the call would
    raise (a wrong argument type or count included)."""
    try:
        return _C.is_supported(attention_call(*args, **kwargs))
    except Exception as e:  # noqa: BLE001 - the contract is to report, never to raise
        return False, f"paged_attention: {e}"


def merge_attention_states(out_a, lse_a, out_b, lse_b, out, lse=None, *, stream=None):
    """Merges two partial attentions over disjoint key sets by their log-sum-exp (SPEC §3b).

    ``out_*``: ``[rows, num_heads, head_size]`` (float32/float16/bfloat16), ``lse_*``: float32
    ``[rows, num_heads]`` as :func:`paged_attention` writes them. Writes ``out`` (may be ``out_a``
    or ``out_b`` itself) and, when given, ``lse`` (may be ``lse_a`` or ``lse_b``). A ``-inf`` state
    contributes nothing; two give zeros and ``-inf``."""
    _C.merge_attention_states(dl(out_a), dl(lse_a), dl(out_b), dl(lse_b), dl(out), dl(lse),
                              default_stream(out) if stream is None else stream)


def v2_workspace_shapes(num_seqs, num_heads, head_size, max_seq_len):
    """Shapes of (exp_sums, max_logits, tmp_out) for :func:`paged_attention_v2`."""
    p = _C.v2_max_num_partitions(max_seq_len)
    return (num_seqs, num_heads, p), (num_seqs, num_heads, p), (num_seqs, num_heads, p, head_size)


def reshape_and_cache(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype="auto", k_scale=1.0,
                      v_scale=1.0, *, checked=False, stream=None):
    """Stores ``key``/``value`` ``[num_tokens, num_kv_heads, head_size]`` into the paged caches at
    ``slot_mapping`` (int64, ``block_id * block_size + offset``; negative = padding, skipped).
    ``k_scale``/``v_scale``: as for attention, a float (per tensor) or a float32 ``[num_kv_heads]``
    array (per kv head); an fp8 cache stores ``encode(x / scale)``."""
    _C.reshape_and_cache(dl(key), dl(value), dl(key_cache), dl(value_cache), dl(slot_mapping), kv_cache_dtype,
                         scale_arg(k_scale, "k_scale"), scale_arg(v_scale, "v_scale"), checked,
                         default_stream(key_cache) if stream is None else stream)


def copy_blocks(key_caches, value_caches, block_mapping, *, checked=False, stream=None):
    """For each ``[src, dst]`` row of ``block_mapping`` (int64 ``[n, 2]``) copies block src to dst in
    every layer's key and value cache (lists, one entry per layer)."""
    key_caches = list(key_caches)
    if stream is None:
        stream = default_stream(key_caches[0]) if key_caches else 0
    _C.copy_blocks([dl(k) for k in key_caches], [dl(v) for v in value_caches], dl(block_mapping), checked, stream)


def swap_blocks(src, dst, block_mapping, *, stream=None):
    """Copies blocks ``src[m[i, 0]] -> dst[m[i, 1]]`` between a host and a device cache;
    ``block_mapping`` is an int64 ``[n, 2]`` host array. The stream defaults to the current
    stream of whichever side is on the GPU."""
    if stream is None:
        stream = default_stream(dst) or default_stream(src)
    _C.swap_blocks(dl(src), dl(dst), dl(block_mapping), stream)
