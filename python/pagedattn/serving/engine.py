"""A continuous-batching generation loop over pagedattn's paged KV cache and BlockManager.

One :meth:`Engine.step` is one forward of the model over a flattened batch:

* **Scheduling** (every step, under a token budget ``max_num_batched_tokens`` and a sequence limit
  ``max_num_seqs``): first one token for every running sequence in decode (its last sampled token),
  then the next chunk of every running sequence still in prefill (chunked prefill: a long prompt
  is spread over several steps), then new requests, first come first served, while the budget,
  the sequence limit and the free blocks allow. Requests of any prompt and output length enter and
  leave between steps.
* **Blocks**: a request is admitted with ``BlockManager.allocate`` (with its token ids when prefix
  caching is on: the longest cached prefix of whole blocks is reused and not computed again); a
  decode token gets its slot from ``append_slot``; a sequence that finishes is freed at once
  (``free``), its cached blocks staying reusable until evicted. When a decode token finds no free
  block, the most recently admitted sequence is preempted (freed, and recomputed from its tokens
  when it is admitted again).
* **Parallel sampling** (``SamplingParams.n > 1``): the prompt is computed once; when its first
  token is sampled the sequence is forked (``BlockManager.fork``: the children share every block),
  and the first append into a shared partial block is copied on write (``copy_blocks`` over every
  layer's caches before the step's forward).
* **Attention**: :mod:`pagedattn.serving.attention` (``reshape_and_cache`` then the auto path
  ``paged_attention``, with ``query_start_loc`` when the step holds prefill chunks).

Prefix-cache hits on blocks still being computed: ``allocate`` registers a request's full blocks
when it is admitted, before their keys and values are written, so a later request may reuse a
block whose writer has not reached it yet. The engine tracks, per block, whether its last token has
been scheduled for writing (``ready``) and which sequence writes it: a sequence whose reused blocks
are not ready waits for their writer (within a step, every layer writes before it attends, so a
block written in the same step may be read in it); if the writer was preempted, the waiting
sequence computes those tokens itself.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math

import numpy as np
import torch

import pagedattn

from . import attention as _attn


@dataclasses.dataclass
class SamplingParams:
    """How to sample one request. ``temperature == 0`` is greedy (argmax)."""

    max_tokens: int = 64
    n: int = 1                       # parallel samples sharing the prompt's blocks (fork + copy-on-write)
    temperature: float = 0.0
    seed: int | None = None          # per-request generator for temperature sampling
    eos_token_id: int | None = None  # stop at this token (None: run to max_tokens)


@dataclasses.dataclass
class RequestOutput:
    request_id: int
    prompt: list
    outputs: list                 # n token-id lists
    logits: list | None = None    # with record_logits: n float32 CPU tensors [len(outputs[i]), vocab]
    arrival_step: int = 0
    finish_step: int = 0


class _Request:
    def __init__(self, rid, prompt, params, step):
        self.id = rid
        self.prompt = list(prompt)
        self.params = params
        self.seqs: list[_Seq] = []
        self.forked = params.n == 1
        self.unfinished = params.n
        self.arrival_step = step
        self.generator = None
        if params.temperature > 0:
            self.generator = torch.Generator().manual_seed(params.seed if params.seed is not None else rid)


class _Seq:
    def __init__(self, req, index, tokens):
        self.req = req
        self.index = index              # which of the request's n samples
        self.tokens = tokens            # prompt + generated so far
        self.num_output = len(tokens) - len(req.prompt)
        self.bm_id = None               # id in the BlockManager while allocated
        self.slots: list = []           # slot of every allocated token (for writing it)
        self.num_computed = 0           # tokens whose K/V are in the cache or scheduled this step
        self.num_cached = 0             # leading tokens in reused prefix-cache blocks: never written
        self.num_hit_blocks = 0         # reused blocks still to be checked for readiness
        self.logits: list = []
        self.finished = False


class Engine:
    """Continuous batching of a Hugging Face ``*ForCausalLM`` on pagedattn (CPU or CUDA tensors).

    The model is switched to the ``"pagedattn"`` attention implementation (its weights, dtype and
    device are used as they are); its KV cache is one key and one value cache per layer in vLLM's
    layout, ``num_blocks`` blocks of ``block_size`` tokens.
    """

    def __init__(self, model, *, num_blocks: int | None = None, block_size: int = 16, max_num_seqs: int = 32,
                 max_num_batched_tokens: int = 512, max_model_len: int = 2048, enable_prefix_caching: bool = True,
                 watermark: float = 0.01, record_logits: bool = False):
        cfg = model.config
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.num_layers = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.num_heads
        self.head_size = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.prefix_caching = enable_prefix_caching
        self.record_logits = record_logits
        if num_blocks is None:
            num_blocks = max_num_seqs * math.ceil(max_model_len / block_size)
        self.num_blocks = num_blocks
        self.bm = pagedattn.BlockManager(num_blocks, block_size)
        self.bm.set_watermark(watermark)

        x = 16 // torch.empty((), dtype=self.dtype).element_size()
        kshape = (num_blocks, self.num_kv_heads, self.head_size // x, block_size, x)
        vshape = (num_blocks, self.num_kv_heads, self.head_size, block_size)
        self.key_caches = [torch.zeros(kshape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
        self.value_caches = [torch.zeros(vshape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
        self.block_bytes = 2 * self.num_layers * self.num_kv_heads * self.head_size * block_size * \
            torch.empty((), dtype=self.dtype).element_size()
        self.workspace = _attn.WorkspacePool(self.device) if self.device.type == "cuda" else None

        model.set_attn_implementation(_attn.register())
        if model.config._attn_implementation != _attn.IMPLEMENTATION:
            raise RuntimeError(f"{type(model).__name__} did not switch to the pagedattn attention implementation")

        self.ready = np.zeros(num_blocks, dtype=bool)   # last token of the block scheduled for writing
        self.writer = np.full(num_blocks, -1, dtype=np.int64)  # bm id of the sequence that writes it
        self.waiting: collections.deque[_Seq] = collections.deque()
        self.running: list[_Seq] = []
        self.live: dict[int, _Seq] = {}                  # bm id -> allocated sequence
        self._ids = itertools.count()
        self._requests: dict[int, _Request] = {}
        self._bm_ids = itertools.count()
        self.step_count = 0
        self.stats = collections.Counter()
        self.peak_blocks_used = 0

    # ------------------------------------------------------------------ requests
    def add_request(self, prompt, params: SamplingParams | None = None) -> int:
        params = params or SamplingParams()
        if len(prompt) == 0:
            raise ValueError("empty prompt")
        if len(prompt) + params.max_tokens > self.max_model_len:
            raise ValueError(f"prompt ({len(prompt)}) + max_tokens ({params.max_tokens}) exceeds max_model_len "
                             f"{self.max_model_len}")
        if self.bm.blocks_for_tokens(len(prompt) + params.max_tokens) > self.num_blocks - self.bm.watermark_blocks:
            raise ValueError("request does not fit in the KV cache even alone")
        req = _Request(next(self._ids), prompt, params, self.step_count)
        seq = _Seq(req, 0, list(req.prompt))
        req.seqs.append(seq)
        self.waiting.append(seq)
        self._requests[req.id] = req
        return req.id

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def generate(self, prompts, params) -> list[RequestOutput]:
        """Runs `prompts` (token-id lists) to completion; `params`: one SamplingParams or one per prompt.
        Returns one output per prompt, in order."""
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, params)]
        done = {}
        while self.has_unfinished():
            for out in self.step():
                done[out.request_id] = out
        return [done[i] for i in ids]

    # ------------------------------------------------------------------ blocks
    def _blocks_used(self) -> int:
        return self.num_blocks - self.bm.num_free_blocks

    def _mark_new_blocks(self, seq, first_block: int):
        table = self.bm.block_table(seq.bm_id)
        for b in table[first_block:]:
            self.ready[b] = False
            self.writer[b] = seq.bm_id

    def _allocate(self, seq) -> bool:
        n = len(seq.tokens)
        if self.prefix_caching:
            if not self.bm.can_allocate(seq.tokens):
                return False
        elif not self.bm.can_allocate(n):
            return False
        seq.bm_id = next(self._bm_ids)
        if self.prefix_caching:
            seq.slots, cached = self.bm.allocate(seq.bm_id, seq.tokens)
        else:
            seq.slots, cached = self.bm.allocate(seq.bm_id, n), 0
        seq.num_cached = cached
        seq.num_hit_blocks = cached // self.block_size
        # a fully cached prompt still computes its last token (for its logits), without writing it
        seq.num_computed = min(cached, n - 1)
        self._mark_new_blocks(seq, seq.num_hit_blocks)
        self.live[seq.bm_id] = seq
        self.stats["prefix_hit_tokens"] += cached
        return True

    def _free(self, seq):
        self.bm.free(seq.bm_id)
        del self.live[seq.bm_id]
        seq.bm_id = None
        seq.slots = []

    def _preempt(self, seq):
        """Frees `seq` and puts it back at the head of the queue; it is recomputed from its tokens."""
        self.running.remove(seq)
        self._free(seq)
        seq.num_computed = seq.num_cached = seq.num_hit_blocks = 0
        self.waiting.appendleft(seq)
        self.stats["preemptions"] += 1

    def _hits_ready(self, seq) -> bool:
        """False while a reused prefix-cache block is not ready and its writer is alive; a block
        whose writer is gone is taken over (this sequence computes it from there on)."""
        if seq.num_hit_blocks == 0:
            return True
        table = self.bm.block_table(seq.bm_id)
        for j in range(seq.num_hit_blocks):
            b = table[j]
            if self.ready[b]:
                continue
            if int(self.writer[b]) in self.live:
                return False
            start = j * self.block_size
            seq.num_cached = start
            seq.num_computed = min(seq.num_computed, start)
            for jj in range(j, seq.num_hit_blocks):
                self.writer[table[jj]] = seq.bm_id
            self.stats["prefix_takeovers"] += 1
            break
        seq.num_hit_blocks = 0
        return True

    def _append_slot(self, seq, copies) -> bool:
        """Gives `seq`'s last (sampled) token a slot, preempting later sequences if the pool is
        empty; False if `seq` itself had to be preempted."""
        while not self.bm.can_append(seq.bm_id, 1):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        before = len(self.bm.block_table(seq.bm_id))
        if self.prefix_caching:
            slot, copy = self.bm.append_slot(seq.bm_id, seq.tokens[-1])
        else:
            slot, copy = self.bm.append_slot(seq.bm_id)
        seq.slots.append(slot)
        table = self.bm.block_table(seq.bm_id)
        if copy is not None:
            copies.append(copy)
            self.stats["cow_copies"] += 1
            self.ready[copy[1]] = False
            self.writer[copy[1]] = seq.bm_id
        if len(table) > before:
            self._mark_new_blocks(seq, before)
        return True

    # ------------------------------------------------------------------ one step
    def _take(self, chunks, seq, start, end) -> int:
        """Schedules tokens [start, end) of `seq`; returns their count. Blocks whose last token is
        written in this step (or already cached) become readable now: every layer writes the
        whole step's K/V before it attends, so a later chunk of the same step may read them."""
        chunks.append((seq, start, end))
        bs = self.block_size
        if end // bs > start // bs:
            table = self.bm.block_table(seq.bm_id)
            for j in range(start // bs, end // bs):
                self.ready[table[j]] = True
        return end - start

    def _schedule(self):
        budget = self.max_num_batched_tokens
        chunks = []   # (seq, start, end)
        copies = []
        # 1. decode tokens of running sequences (oldest first; preemption takes the newest)
        for seq in list(self.running):
            if seq.bm_id is None or budget == 0:
                continue
            if self.bm.seq_len(seq.bm_id) == len(seq.tokens) - 1:  # its last token has no slot yet
                if not self._append_slot(seq, copies):
                    continue
                budget -= self._take(chunks, seq, len(seq.tokens) - 1, len(seq.tokens))
        # 2. prefill chunks of running sequences
        decoding = {id(c[0]) for c in chunks}
        for seq in self.running:
            if budget == 0:
                break
            if seq.bm_id is None or id(seq) in decoding:
                continue
            if seq.num_computed >= len(seq.tokens) or not self._hits_ready(seq):
                continue
            budget -= self._take(chunks, seq, seq.num_computed, min(len(seq.tokens), seq.num_computed + budget))
        # 3. new requests
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self._allocate(seq):
                if not self.running and not chunks:
                    raise RuntimeError("the KV cache cannot hold the next request even with nothing running")
                break
            self.waiting.popleft()
            self.running.append(seq)
            if not self._hits_ready(seq):
                continue
            budget -= self._take(chunks, seq, seq.num_computed, min(len(seq.tokens), seq.num_computed + budget))
        # drop chunks of sequences preempted after they were scheduled
        return [c for c in chunks if c[0].bm_id is not None], copies

    def step(self) -> list[RequestOutput]:
        """Schedules, runs one forward, samples; returns the requests that finished in this step."""
        chunks, copies = self._schedule()
        self.step_count += 1
        if not chunks:
            return []
        bs = self.block_size
        ids, pos, slots, q_lens, seq_lens, keep = [], [], [], [], [], []
        for seq, s, e in chunks:
            ids.extend(seq.tokens[s:e])
            pos.extend(range(s, e))
            sl = seq.slots[s:e]
            if s < seq.num_cached:  # tokens sitting in reused cached blocks are not written again
                sl = [-1 if s + i < seq.num_cached else v for i, v in enumerate(sl)]
            slots.extend(sl)
            q_lens.append(e - s)
            seq_lens.append(e)
            if e == len(seq.tokens):
                keep.append(len(ids) - 1)
            seq.num_computed = e
        n_tok = len(ids)
        self.stats["steps"] += 1
        self.stats["tokens"] += n_tok
        self.stats["decode_tokens"] += sum(1 for sq, s, e in chunks if s >= len(sq.req.prompt) and e - s == 1)
        dev = self.device
        if copies:
            mapping = torch.tensor(copies, dtype=torch.int64, device=dev)
            pagedattn.copy_blocks(self.key_caches, self.value_caches, mapping)
        block_tables, _ = self.bm.block_tables([c[0].bm_id for c in chunks])
        decode_only = max(q_lens) == 1
        qsl = None
        if not decode_only:
            qsl = torch.tensor([0, *itertools.accumulate(q_lens)], dtype=torch.int32, device=dev)
        ctx = _attn.StepContext(
            key_caches=self.key_caches, value_caches=self.value_caches, block_size=bs,
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            block_tables=torch.from_numpy(block_tables).to(dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            max_seq_len=max(seq_lens), total_tokens=sum(seq_lens), query_start_loc=qsl,
            max_query_len=max(q_lens), workspace=self.workspace)
        input_ids = torch.tensor([ids], dtype=torch.int64, device=dev)
        position_ids = torch.tensor([pos], dtype=torch.int64, device=dev)
        keep_t = torch.tensor(keep if keep else [n_tok - 1], dtype=torch.int64, device=dev)
        with torch.inference_mode(), _attn.active_step(ctx):
            logits = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                                logits_to_keep=keep_t).logits[0]
        self.peak_blocks_used = max(self.peak_blocks_used, self._blocks_used())
        if not keep:
            return []
        return self._sample([c[0] for c in chunks if c[2] == len(c[0].tokens)], logits)

    # ------------------------------------------------------------------ sampling
    def _sample(self, seqs, logits) -> list[RequestOutput]:
        greedy = logits.argmax(dim=-1).tolist()
        rows = logits.float().cpu() if (self.record_logits or any(s.req.generator for s in seqs)) else None
        finished = []
        for i, seq in enumerate(seqs):
            req = seq.req
            draws = 1 if req.forked else req.params.n
            toks = []
            for _ in range(draws):
                if req.generator is None:
                    toks.append(greedy[i])
                else:
                    p = torch.softmax(rows[i] / req.params.temperature, dim=-1)
                    toks.append(int(torch.multinomial(p, 1, generator=req.generator)))
            if not req.forked:
                self._fork(seq, toks[1:], rows[i] if rows is not None else None, finished)
                req.forked = True
            self._emit(seq, toks[0], rows[i] if self.record_logits else None, finished)
        return finished

    def _fork(self, parent, tokens, row, finished):
        """Parallel sampling: children share every block of the parent (copy-on-write later)."""
        at = self.running.index(parent) + 1
        for k, tok in enumerate(tokens, start=1):
            child = _Seq(parent.req, k, list(parent.tokens))
            child.bm_id = next(self._bm_ids)
            self.bm.fork(parent.bm_id, child.bm_id)
            self.live[child.bm_id] = child
            child.slots = list(parent.slots)
            child.num_computed = parent.num_computed
            child.num_cached = parent.num_cached
            parent.req.seqs.append(child)
            self.running.insert(at, child)
            at += 1
            self.stats["forks"] += 1
            self._emit(child, tok, row if self.record_logits else None, finished)

    def _emit(self, seq, token, row, finished):
        req = seq.req
        seq.tokens.append(token)
        seq.num_output += 1
        if row is not None:
            seq.logits.append(row)
        p = req.params
        if seq.num_output >= p.max_tokens or (p.eos_token_id is not None and token == p.eos_token_id):
            seq.finished = True
            self.running.remove(seq)
            self._free(seq)
            req.unfinished -= 1
            if req.unfinished == 0:
                finished.append(self._output(req))

    def _output(self, req) -> RequestOutput:
        seqs = sorted(req.seqs, key=lambda s: s.index)
        n0 = len(req.prompt)
        self._requests.pop(req.id, None)
        return RequestOutput(
            request_id=req.id, prompt=req.prompt, outputs=[s.tokens[n0:] for s in seqs],
            logits=[torch.stack(s.logits) if s.logits else None for s in seqs] if self.record_logits else None,
            arrival_step=req.arrival_step, finish_step=self.step_count)

    # ------------------------------------------------------------------ numbers
    def memory_report(self) -> dict:
        return dict(num_blocks=self.num_blocks, block_size=self.block_size, block_bytes=self.block_bytes,
                    kv_pool_bytes=self.num_blocks * self.block_bytes,
                    peak_blocks_used=self.peak_blocks_used, peak_kv_bytes_used=self.peak_blocks_used * self.block_bytes)
