"""torch.ops.pagedattn.*: vLLM's schemas, backed by the native module through DLPack.

Importing this module (``import pagedattn`` does it when torch is installed) registers

* ``paged_attention_v1`` / ``paged_attention_v2``: SPEC §5 argument order; ``out`` (and V2's
  ``exp_sums``, ``max_logits``, ``tmp_out``) are declared mutated (``Tensor(a!)``).
* ``reshape_and_cache``, ``copy_blocks``, ``swap_blocks`` (SPEC §6).

Each op has two overloads. The default one takes ``k_scale``/``v_scale`` as ``Tensor`` as
vLLM passes them; reading them is a host read, which for a CUDA tensor synchronises and is
not allowed under CUDA graph capture. The ``.float_scale`` overload takes Python floats and
never syncs or allocates: use it (or CPU scale tensors) inside captured graphs. Calling the
packet, e.g. ``torch.ops.pagedattn.paged_attention_v1(..., 1.0, 1.0, ...)``, picks the overload
from the argument types.

Every op has CPU and CUDA kernels and a fake (meta) kernel, so ``torch.compile`` traces them
and ``torch.library.opcheck`` passes.
"""

from __future__ import annotations

import torch

from . import ops

NAMESPACE = "pagedattn"

_ATTN_TAIL = (
    "Tensor query, Tensor key_cache, Tensor value_cache, int num_kv_heads, float scale, "
    "Tensor block_tables, Tensor seq_lens, int block_size, int max_seq_len, Tensor? alibi_slopes, "
    "str kv_cache_dtype, {scale_t} k_scale, {scale_t} v_scale, int tp_rank=0, "
    "int blocksparse_local_blocks=0, int blocksparse_vert_stride=0, int blocksparse_block_size=64, "
    "int blocksparse_head_sliding_step=0) -> ()"
)

# name -> (schema with {scale_t} where the scale type goes, python implementation)
_SCHEMAS = {
    "paged_attention_v1": "(Tensor(a!) out, " + _ATTN_TAIL,
    "paged_attention_v2": "(Tensor(a!) out, Tensor(b!) exp_sums, Tensor(c!) max_logits, Tensor(d!) tmp_out, "
    + _ATTN_TAIL,
    "reshape_and_cache": "(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
    "Tensor slot_mapping, str kv_cache_dtype, {scale_t} k_scale, {scale_t} v_scale) -> ()",
}
_PLAIN_SCHEMAS = {
    "copy_blocks": "(Tensor(a!)[] key_caches, Tensor(b!)[] value_caches, Tensor block_mapping) -> ()",
    "swap_blocks": "(Tensor src, Tensor(a!) dst, Tensor block_mapping) -> ()",
}

_IMPLS = {
    "paged_attention_v1": ops.paged_attention_v1,
    "paged_attention_v2": ops.paged_attention_v2,
    "reshape_and_cache": ops.reshape_and_cache,
    "copy_blocks": ops.copy_blocks,
    "swap_blocks": ops.swap_blocks,
}


def _fake(*args, **kwargs):
    # Every op writes into tensors it was given and returns nothing: no shapes to infer.
    return None


def _register() -> torch.library.Library:
    lib = torch.library.Library(NAMESPACE, "DEF")
    for name, tail in _SCHEMAS.items():
        lib.define(name + tail.format(scale_t="Tensor"))
        lib.define(name + ".float_scale" + tail.format(scale_t="float"))
    for name, schema in _PLAIN_SCHEMAS.items():
        lib.define(name + schema)

    overloads = [(n, "default") for n in _SCHEMAS] + [(n, "float_scale") for n in _SCHEMAS]
    overloads += [(n, "default") for n in _PLAIN_SCHEMAS]
    for name, overload in overloads:
        local = name if overload == "default" else f"{name}.{overload}"
        impl = _IMPLS[name]  # ops.* read Tensor or float scales alike (pagedattn._arrays.scalar)
        for key in ("CPU", "CUDA"):
            lib.impl(local, impl, key)
        torch.library.register_fake(f"{NAMESPACE}::{local}", _fake, lib=lib)
    return lib


_lib = _register()
