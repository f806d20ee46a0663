"""The one place an attention call's arguments are converted for the native module.

:func:`attention_call` takes every argument of every attention entry point (vLLM's order, SPEC §5,
then keyword-only extras) and returns the tuple the native module reads: one entry per name of
``_C.ATTENTION_FIELDS``, in that order. The public functions (:mod:`pagedattn.ops`) forward their
arguments here; the native side (python/bindings/attention.cpp) converts each entry once, naming
it in its errors, into ``pagedattn::PagedAttentionParams``.
"""

from __future__ import annotations

from . import _C
from ._arrays import default_stream, dl, scale_arg


def attention_call(out, query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens, block_size,
                   max_seq_len, alibi_slopes=None, kv_cache_dtype="auto", k_scale=1.0, v_scale=1.0, tp_rank=0,
                   blocksparse_local_blocks=0, blocksparse_vert_stride=0, blocksparse_block_size=64,
                   blocksparse_head_sliding_step=0, *, checked=False, stream=None, workspace=None,
                   query_start_loc=None, max_query_len=0, window_left=-1, logits_soft_cap=0.0, lse=None,
                   total_tokens=0, batch_invariant=False):
    """The native module's argument tuple for one attention call (see the module docstring).

    Arrays become what DLPack import needs (:func:`pagedattn._arrays.dl`), the scales a float or a
    per-kv-head array (:func:`pagedattn._arrays.scale_arg`), ``stream=None`` the current stream of
    ``out``'s framework. Everything else is passed as given and checked by the native side.
    """
    # (float scales, the common case, skip the call: this function is on every call's path)
    return (dl(out), dl(query), dl(key_cache), dl(value_cache), num_kv_heads, scale, dl(block_tables),
            dl(seq_lens), block_size, max_seq_len, dl(alibi_slopes), kv_cache_dtype,
            k_scale if type(k_scale) is float else scale_arg(k_scale, "k_scale"),
            v_scale if type(v_scale) is float else scale_arg(v_scale, "v_scale"), tp_rank,
            blocksparse_local_blocks, blocksparse_vert_stride,
            blocksparse_block_size, blocksparse_head_sliding_step, checked,
            default_stream(out) if stream is None else stream, dl(workspace), dl(query_start_loc), max_query_len,
            window_left, logits_soft_cap, dl(lse), total_tokens, batch_invariant)


def _parameter_names(fn):
    code = fn.__code__
    return code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]


# The tuple's order is the parameter order above; the native module reads it in its own field
# order. A package built against another native module would misread every argument: refuse.
if _parameter_names(attention_call) != _C.ATTENTION_FIELDS:
    raise ImportError("pagedattn: attention_call's parameters do not match the native module's ATTENTION_FIELDS "
                      f"({_parameter_names(attention_call)} vs {_C.ATTENTION_FIELDS}); reinstall the package")
