"""torch.ops.pagedattn.*: vLLM's schemas, backed by the native module through DLPack.

Importing this module (``import pagedattn`` does it when torch is installed) registers

* ``paged_attention_v1`` / ``paged_attention_v2``: SPEC §5 argument order; ``out`` (and V2's
  ``exp_sums``, ``max_logits``, ``tmp_out``) are declared mutated (``Tensor(a!)``).
* ``paged_attention``: the auto path, v1's arguments then the keyword-only ``workspace``,
  ``query_start_loc``, ``max_query_len``, ``window_left``, ``logits_soft_cap``, ``lse``,
  ``total_tokens`` and ``batch_invariant`` (SPEC §3b); ``workspace`` and ``lse`` are declared
  mutated.
* ``merge_attention_states`` (SPEC §3b).
* ``reshape_and_cache``, ``copy_blocks``, ``swap_blocks`` (SPEC §6).

The ops with scales have two overloads. The default one takes ``k_scale``/``v_scale`` as
``Tensor``, as vLLM passes them: a one-element tensor is the per-tensor scale, read on the host
(for a CUDA tensor that synchronises and is not allowed under CUDA graph capture); a
``[num_kv_heads]`` float32 tensor is the per-kv-head scales (fp8 caches; read by the kernel, graph
safe; ``paged_attention`` and ``reshape_and_cache`` only). The ``.float_scale`` overload takes
Python floats and never syncs or allocates. Calling the packet, e.g.
``torch.ops.pagedattn.paged_attention_v1(..., 1.0, 1.0, ...)``, picks the overload from the
argument types.

Every op has CPU and CUDA kernels (the framework-neutral functions of :mod:`pagedattn.ops`, which
take the schema's argument names) and a fake (meta) kernel, so ``torch.compile(fullgraph=True)``
traces them and ``torch.library.opcheck`` passes.
"""

from __future__ import annotations

import torch

from . import ops

NAMESPACE = "pagedattn"

# vLLM's arguments after `out` (and V2's workspaces); {scale_t} is Tensor or float by overload.
_VLLM_ARGS = (
    "Tensor query, Tensor key_cache, Tensor value_cache, int num_kv_heads, float scale, "
    "Tensor block_tables, Tensor seq_lens, int block_size, int max_seq_len, Tensor? alibi_slopes, "
    "str kv_cache_dtype, {scale_t} k_scale, {scale_t} v_scale, int tp_rank=0, "
    "int blocksparse_local_blocks=0, int blocksparse_vert_stride=0, int blocksparse_block_size=64, "
    "int blocksparse_head_sliding_step=0"
)
# The auto path's keywords, named as pagedattn._call.attention_call names them.
_AUTO_KEYWORDS = (
    "*, Tensor(b!)? workspace=None, Tensor? query_start_loc=None, int max_query_len=0, int window_left=-1, "
    "float logits_soft_cap=0.0, Tensor(c!)? lse=None, int total_tokens=0, bool batch_invariant=False"
)

# name -> schema with {scale_t} where the scale type goes (two overloads each)
_SCALED_SCHEMAS = {
    "paged_attention_v1": "(Tensor(a!) out, " + _VLLM_ARGS + ") -> ()",
    "paged_attention_v2": "(Tensor(a!) out, Tensor(b!) exp_sums, Tensor(c!) max_logits, Tensor(d!) tmp_out, "
    + _VLLM_ARGS + ") -> ()",
    "paged_attention": "(Tensor(a!) out, " + _VLLM_ARGS + ", " + _AUTO_KEYWORDS + ") -> ()",
    "reshape_and_cache": "(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
    "Tensor slot_mapping, str kv_cache_dtype, {scale_t} k_scale, {scale_t} v_scale) -> ()",
}
_PLAIN_SCHEMAS = {
    "merge_attention_states": "(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b, Tensor(a!) out, "
    "Tensor(b!)? lse=None) -> ()",
    "copy_blocks": "(Tensor(a!)[] key_caches, Tensor(b!)[] value_caches, Tensor block_mapping) -> ()",
    "swap_blocks": "(Tensor src, Tensor(a!) dst, Tensor block_mapping) -> ()",
}

_IMPLS = {
    "paged_attention_v1": ops.paged_attention_v1,
    "paged_attention_v2": ops.paged_attention_v2,
    "paged_attention": ops.paged_attention,
    "reshape_and_cache": ops.reshape_and_cache,
    "merge_attention_states": ops.merge_attention_states,
    "copy_blocks": ops.copy_blocks,
    "swap_blocks": ops.swap_blocks,
}


def _fake(*args, **kwargs):
    # Every op writes into tensors it was given and returns nothing: no shapes to infer.
    return None


def _register() -> torch.library.Library:
    lib = torch.library.Library(NAMESPACE, "DEF")
    overloads = []
    for name, schema in _SCALED_SCHEMAS.items():
        lib.define(name + schema.format(scale_t="Tensor"))
        lib.define(name + ".float_scale" + schema.format(scale_t="float"))
        overloads += [name, name + ".float_scale"]
    for name, schema in _PLAIN_SCHEMAS.items():
        lib.define(name + schema)
        overloads.append(name)

    for local in overloads:
        impl = _IMPLS[local.split(".")[0]]  # ops.* read Tensor or float scales alike (_arrays.scale_arg)
        for key in ("CPU", "CUDA"):
            lib.impl(local, impl, key)
        torch.library.register_fake(f"{NAMESPACE}::{local}", _fake, lib=lib)
    return lib


_lib = _register()
