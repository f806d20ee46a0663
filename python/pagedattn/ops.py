"""Framework-neutral entry points: any DLPack array (NumPy, PyTorch, CuPy, ...), any device.

Argument order is vLLM's (SPEC §5); the extras ``checked`` and ``stream`` are keyword-only.
Outputs are written in place; nothing is copied. Errors raise :class:`PagedAttnError`.
"""

from __future__ import annotations

from . import _C
from ._arrays import default_stream, dl, empty_bytes_like, on_host, scalar

__all__ = [
    "paged_attention_v1",
    "paged_attention_v2",
    "paged_attention",
    "workspace_size",
    "v2_workspace_shapes",
    "reshape_and_cache",
    "copy_blocks",
    "swap_blocks",
]


def paged_attention_v1(out, query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens,
                       block_size, max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale, tp_rank=0,
                       blocksparse_local_blocks=0, blocksparse_vert_stride=0, blocksparse_block_size=64,
                       blocksparse_head_sliding_step=0, *, checked=False, stream=None):
    """V1 paged attention: ``out[i, h] = softmax(scale * q . K + alibi) V`` over the paged cache.

    ``k_scale``/``v_scale``: floats (fast path) or one-element arrays (read on the host; a CUDA
    tensor costs a sync). ``stream``: a cudaStream_t as int; default = the current stream of
    ``out``'s framework (torch, CuPy), else 0. ``checked``: also validate seq_lens and block ids.
    """
    _C.paged_attention_v1(
        dl(out), dl(query), dl(key_cache), dl(value_cache), num_kv_heads, scale, dl(block_tables), dl(seq_lens),
        block_size, max_seq_len, dl(alibi_slopes), kv_cache_dtype, scalar(k_scale), scalar(v_scale), tp_rank,
        blocksparse_local_blocks, blocksparse_vert_stride, blocksparse_block_size, blocksparse_head_sliding_step,
        checked, default_stream(out) if stream is None else stream)


def paged_attention_v2(out, exp_sums, max_logits, tmp_out, query, key_cache, value_cache, num_kv_heads, scale,
                       block_tables, seq_lens, block_size, max_seq_len, alibi_slopes, kv_cache_dtype, k_scale,
                       v_scale, tp_rank=0, blocksparse_local_blocks=0, blocksparse_vert_stride=0,
                       blocksparse_block_size=64, blocksparse_head_sliding_step=0, *, checked=False, stream=None):
    """V2 (512-token partitions + reduce). ``exp_sums``/``max_logits``: float32
    ``[num_seqs, num_heads, P]``, ``tmp_out``: ``[num_seqs, num_heads, P, head_size]`` of the query
    dtype, ``P >= ceil(max_seq_len / 512)`` (see :func:`v2_workspace_shapes`)."""
    _C.paged_attention_v2(
        dl(out), dl(exp_sums), dl(max_logits), dl(tmp_out), dl(query), dl(key_cache), dl(value_cache),
        num_kv_heads, scale, dl(block_tables), dl(seq_lens), block_size, max_seq_len, dl(alibi_slopes),
        kv_cache_dtype, scalar(k_scale), scalar(v_scale), tp_rank, blocksparse_local_blocks,
        blocksparse_vert_stride, blocksparse_block_size, blocksparse_head_sliding_step, checked,
        default_stream(out) if stream is None else stream)


def workspace_size(out, query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens, block_size,
                   max_seq_len, alibi_slopes, kv_cache_dtype, k_scale=1.0, v_scale=1.0, tp_rank=0,
                   blocksparse_local_blocks=0, blocksparse_vert_stride=0, blocksparse_block_size=64,
                   blocksparse_head_sliding_step=0) -> int:
    """Bytes of workspace :func:`paged_attention` needs for these shapes (0 on the CPU).

    Depends on shapes, ``max_seq_len`` and the device only, never on the data: allocate once per
    shape and reuse, e.g. across CUDA graph replays."""
    return _C.paged_attention_workspace_size(
        dl(out), dl(query), dl(key_cache), dl(value_cache), num_kv_heads, scale, dl(block_tables), dl(seq_lens),
        block_size, max_seq_len, dl(alibi_slopes), kv_cache_dtype, scalar(k_scale), scalar(v_scale), tp_rank,
        blocksparse_local_blocks, blocksparse_vert_stride, blocksparse_block_size, blocksparse_head_sliding_step,
        False, 0)


def paged_attention(out, query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens, block_size,
                    max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale, tp_rank=0,
                    blocksparse_local_blocks=0, blocksparse_vert_stride=0, blocksparse_block_size=64,
                    blocksparse_head_sliding_step=0, *, workspace=None, checked=False, stream=None,
                    total_tokens=0, batch_invariant=False):
    """Auto: the library picks V1, V2 or its split path for the shape.

    ``workspace``: a 1-D byte buffer on ``out``'s device of at least :func:`workspace_size` bytes,
    256-byte aligned. When omitted it is allocated per call with ``out``'s framework (torch, CuPy,
    NumPy); pass one under CUDA graph capture or in a hot loop. ``total_tokens``: optional sum of
    ``seq_lens`` known on the host; lets the split planner balance a mixed-length batch (0 =
    unknown; never changes the result or the workspace size). ``batch_invariant``: fixed
    512-token splits, so a sequence's output bits do not depend on its batch-mates."""
    args = (dl(out), dl(query), dl(key_cache), dl(value_cache), num_kv_heads, scale, dl(block_tables),
            dl(seq_lens), block_size, max_seq_len, dl(alibi_slopes), kv_cache_dtype, scalar(k_scale),
            scalar(v_scale), tp_rank, blocksparse_local_blocks, blocksparse_vert_stride, blocksparse_block_size,
            blocksparse_head_sliding_step, checked, default_stream(out) if stream is None else stream)
    if workspace is None and not on_host(out):  # the CPU backend needs no workspace
        # Views from dl() are single-use DLPack capsules for torch: size from fresh ones.
        need = workspace_size(out, query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens,
                              block_size, max_seq_len, alibi_slopes, kv_cache_dtype, 1.0, 1.0, tp_rank,
                              blocksparse_local_blocks, blocksparse_vert_stride, blocksparse_block_size,
                              blocksparse_head_sliding_step)
        if need > 0:
            workspace = empty_bytes_like(out, need)
    _C.paged_attention(*args, dl(workspace), int(total_tokens), bool(batch_invariant))


def v2_workspace_shapes(num_seqs, num_heads, head_size, max_seq_len):
    """Shapes of (exp_sums, max_logits, tmp_out) for :func:`paged_attention_v2`."""
    p = _C.v2_max_num_partitions(max_seq_len)
    return (num_seqs, num_heads, p), (num_seqs, num_heads, p), (num_seqs, num_heads, p, head_size)


def reshape_and_cache(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype, k_scale, v_scale, *,
                      checked=False, stream=None):
    """Stores ``key``/``value`` ``[num_tokens, num_kv_heads, head_size]`` into the paged caches at
    ``slot_mapping`` (int64, ``block_id * block_size + offset``; negative = padding, skipped)."""
    _C.reshape_and_cache(dl(key), dl(value), dl(key_cache), dl(value_cache), dl(slot_mapping), kv_cache_dtype,
                         scalar(k_scale), scalar(v_scale), checked,
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
