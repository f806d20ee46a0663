"""The attention computation of a Hugging Face model, replaced by pagedattn over a paged KV cache.

:func:`paged_attention_forward` is registered in transformers' attention-interface registry
(``AttentionInterface``) under the name ``"pagedattn"``; a model switched to it with
``model.set_attn_implementation("pagedattn")`` keeps every other computation of its own code
(projections, RoPE, norms, MLP, final soft-cap) and hands each layer's query, key and value here.

The engine runs the model on one flattened batch (``input_ids`` of shape ``[1, T]``: the new
tokens of every scheduled sequence, one after another, with their absolute ``position_ids``) and
publishes the batch layout in a :class:`StepContext` for the duration of the forward. Each layer
then

1. writes its new keys and values into its paged cache with ``reshape_and_cache`` (token ``i`` at
   ``slot_mapping[i]``; -1 skips a token whose K/V already sit in a prefix-cached block);
2. attends with the auto path ``paged_attention``: a step of decode tokens only (one query row per
   sequence) is the plain decode call, a step holding prefill chunks passes ``query_start_loc``
   (several causal query rows per sequence); the model's own sliding window, scale and attention
   logit soft-cap become ``window_left``, ``scale`` and ``logits_soft_cap``.

Nothing is masked or padded by transformers: with a custom implementation name it builds no mask.
"""

from __future__ import annotations

import dataclasses
import threading

import torch

import pagedattn

IMPLEMENTATION = "pagedattn"


def _window_left_of(sliding_window: int) -> int:
    """``window_left`` for a Hugging Face ``sliding_window`` W, read from transformers' own mask.

    transformers' sliding-window overlay says whether key ``kv_idx`` is visible from query
    ``q_idx``; the window reaches back to the smallest visible ``kv_idx``. In the transformers 5
    releases read for this module the rule is ``kv_idx > q_idx - W``, i.e. ``window_left = W - 1``;
    asking the overlay keeps the engine right should a release change the convention.
    """
    try:
        from transformers.masking_utils import sliding_window_overlay
    except ImportError:  # no overlay to ask: the documented convention
        return sliding_window - 1
    visible = sliding_window_overlay(sliding_window)
    q = 4 * sliding_window + 8
    first = next(kv for kv in range(q + 1) if bool(visible(0, 0, q, kv)))
    return q - first


_WINDOWS: dict[int, int] = {}


def window_left_of(sliding_window) -> int:
    if sliding_window is None or sliding_window <= 0:
        return -1
    w = _WINDOWS.get(sliding_window)
    if w is None:
        w = _WINDOWS[sliding_window] = _window_left_of(int(sliding_window))
    return w


@dataclasses.dataclass
class StepContext:
    """The layout of one engine step, shared by every layer of one forward."""

    key_caches: list          # per layer: [num_blocks, num_kv_heads, head_size // x, block_size, x]
    value_caches: list        # per layer: [num_blocks, num_kv_heads, head_size, block_size]
    block_size: int
    slot_mapping: torch.Tensor       # int64 [T], on the device
    block_tables: torch.Tensor       # int32 [num_seqs, max_blocks], on the device
    seq_lens: torch.Tensor           # int32 [num_seqs]: tokens in the cache after this step's writes
    max_seq_len: int
    total_tokens: int                # sum of seq_lens (planner hint)
    query_start_loc: torch.Tensor | None  # int32 [num_seqs + 1]; None for a decode-only step
    max_query_len: int
    workspace: "WorkspacePool | None" = None  # the auto path's workspace on a GPU (None on the CPU)
    calls: int = 0


class WorkspacePool:
    """One byte buffer on the device, grown to the largest ``workspace_size`` asked for so far
    (256-byte aligned: a fresh torch allocation is), reused by every layer of every step."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.buffer = torch.empty(0, dtype=torch.uint8, device=self.device)

    def get(self, nbytes: int) -> torch.Tensor:
        if nbytes > self.buffer.numel():
            self.buffer = torch.empty(max(nbytes, 2 * self.buffer.numel()), dtype=torch.uint8, device=self.device)
        return self.buffer


_state = threading.local()


class active_step:
    """``with active_step(ctx): model(...)``: publishes the step layout to the attention function."""

    def __init__(self, ctx: StepContext):
        self.ctx = ctx

    def __enter__(self):
        self.prev = getattr(_state, "ctx", None)
        _state.ctx = self.ctx
        return self.ctx

    def __exit__(self, *exc):
        _state.ctx = self.prev
        return False


def _attention_args(ctx: StepContext, layer: int, q, num_kv_heads: int, scale: float):
    return (q, ctx.key_caches[layer], ctx.value_caches[layer], num_kv_heads, scale, ctx.block_tables,
            ctx.seq_lens, ctx.block_size, ctx.max_seq_len)


def attention_kwargs(ctx: StepContext, sliding_window, softcap):
    kw = dict(window_left=window_left_of(sliding_window), logits_soft_cap=float(softcap or 0.0),
              total_tokens=ctx.total_tokens)
    if ctx.query_start_loc is not None:
        kw.update(query_start_loc=ctx.query_start_loc, max_query_len=ctx.max_query_len)
    return kw


def paged_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            sliding_window=None, softcap=None, **kwargs):
    """transformers attention-interface signature: ``query`` ``[1, H, T, D]``, ``key``/``value``
    ``[1, KVH, T, D]`` (after RoPE) -> (``[1, T, H, D]``, None)."""
    ctx: StepContext | None = getattr(_state, "ctx", None)
    if ctx is None:
        raise RuntimeError("pagedattn attention called outside an engine step (use pagedattn.serving.Engine, "
                           "or switch the model back to another attn_implementation)")
    if query.shape[0] != 1:
        raise ValueError(f"pagedattn attention expects one flattened batch (batch dimension 1), got {query.shape[0]}")
    if dropout:
        raise ValueError("pagedattn attention is inference only (dropout must be 0)")
    layer = module.layer_idx
    q = query[0].transpose(0, 1).contiguous()   # [T, H, D]
    k = key[0].transpose(0, 1).contiguous()     # [T, KVH, D]
    v = value[0].transpose(0, 1).contiguous()
    num_kv_heads, head_size = k.shape[1], k.shape[2]
    if scaling is None:
        scaling = head_size ** -0.5
    pagedattn.reshape_and_cache(k, v, ctx.key_caches[layer], ctx.value_caches[layer], ctx.slot_mapping)
    out = torch.empty_like(q)
    args = _attention_args(ctx, layer, q, num_kv_heads, float(scaling))
    kw = attention_kwargs(ctx, sliding_window, softcap)
    if ctx.workspace is not None:  # GPU: the size depends on shapes and variants, not on data
        need = pagedattn.workspace_size(out, *args, **kw)
        if need:
            kw["workspace"] = ctx.workspace.get(need)
    pagedattn.paged_attention(out, *args, **kw)
    ctx.calls += 1
    return out.unsqueeze(0), None


def register() -> str:
    """Registers :func:`paged_attention_forward` with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, paged_attention_forward)
    return IMPLEMENTATION
