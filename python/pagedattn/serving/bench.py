"""Numbers for the serving loop: throughput against transformers' own ``generate``, KV memory
against a contiguous max-length allocation, and the prefix-cache hit rate on a workload whose
requests share a system prompt. ``python -m pagedattn.serving --bench`` runs it (``--json``
writes the result)."""

from __future__ import annotations

import platform
import time

import torch

import pagedattn

from .engine import Engine, SamplingParams
from .models import PRESETS, build_model


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _lengths(spec: tuple[int, int], count: int, gen: torch.Generator) -> list[int]:
    lo, hi = spec
    return torch.randint(lo, hi + 1, (count,), generator=gen).tolist()


def workload(num_requests, prompt_len, output_len, vocab_size, seed=0, system_prompt_len=0):
    """Seeded requests: (prompts, output lengths). With `system_prompt_len`, every prompt starts with
    the same system prompt of that many tokens, followed by its own `prompt_len` tokens."""
    gen = torch.Generator().manual_seed(seed)
    plens = _lengths(prompt_len, num_requests, gen)
    olens = _lengths(output_len, num_requests, gen)
    system = torch.randint(0, vocab_size, (system_prompt_len,), generator=gen).tolist()
    prompts = [system + torch.randint(0, vocab_size, (n,), generator=gen).tolist() for n in plens]
    return prompts, olens


def _engine_run(engine: Engine, prompts, olens) -> dict:
    params = [SamplingParams(max_tokens=m) for m in olens]
    engine.bm.reset_prefix_cache_stats()
    engine.stats.clear()
    engine.peak_blocks_used = 0
    _sync(engine.device)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    _sync(engine.device)
    dt = time.perf_counter() - t0
    gen_tokens = sum(len(o.outputs[0]) for o in outs)
    pcs = engine.bm.prefix_cache_stats
    return dict(
        time_s=dt, output_tokens=gen_tokens, output_tokens_per_s=gen_tokens / dt,
        prompt_tokens=sum(map(len, prompts)), steps=engine.stats["steps"],
        computed_tokens=engine.stats["tokens"], preemptions=engine.stats["preemptions"],
        peak_blocks_used=engine.peak_blocks_used, peak_kv_bytes_used=engine.peak_blocks_used * engine.block_bytes,
        prefix_cache=dict(pcs, hit_rate=(pcs["hit_tokens"] / pcs["query_tokens"]) if pcs["query_tokens"] else 0.0),
    ), outs


def _hf_generate(model, prompts, olens, attn: str) -> dict:
    """transformers' generate on the same model and requests: one left-padded batch, greedy, run to
    the longest requested output (a static batch cannot stop a request early)."""
    from .attention import IMPLEMENTATION

    device = next(model.parameters()).device
    try:
        model.set_attn_implementation(attn)
    except (ValueError, ImportError) as e:  # e.g. Gemma 2 has no sdpa path
        attn = "eager"
        model.set_attn_implementation(attn)
        note = f"fell back to eager: {e}"
    else:
        note = ""
    try:
        maxp = max(map(len, prompts))
        ids = torch.zeros((len(prompts), maxp), dtype=torch.int64)
        mask = torch.zeros((len(prompts), maxp), dtype=torch.int64)
        for i, p in enumerate(prompts):
            ids[i, maxp - len(p):] = torch.tensor(p)
            mask[i, maxp - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        new = max(olens)
        kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        with torch.inference_mode():
            model.generate(ids[:1, -8:], attention_mask=mask[:1, -8:], max_new_tokens=2, do_sample=False,
                           pad_token_id=0)  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            out = model.generate(ids, attention_mask=mask, **kw)
            _sync(device)
            dt = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.empty_cache()
    finally:
        model.set_attn_implementation(IMPLEMENTATION)
    useful = sum(olens)
    produced = (out.shape[1] - maxp) * len(prompts)
    return dict(attn_implementation=attn, note=note, time_s=dt, output_tokens=useful,
                output_tokens_per_s=useful / dt, generated_tokens_incl_padding=produced,
                generated_tokens_per_s=produced / dt)


def run(args) -> dict:
    device, dtype = args.device, getattr(torch, args.dtype)
    model = build_model(args.model, device=device, dtype=dtype, seed=args.seed)
    cfg = model.config
    res = dict(
        machine=dict(platform=platform.platform(), processor=platform.processor(), python=platform.python_version(),
                     torch=torch.__version__, transformers=__import__("transformers").__version__,
                     pagedattn=pagedattn.__version__, built_with_cuda=pagedattn.built_with_cuda(),
                     device=torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu",
                     torch_threads=torch.get_num_threads()),
        model=dict(name=args.model, arch=PRESETS[args.model].arch, dtype=args.dtype,
                   parameters=sum(p.numel() for p in model.parameters()), layers=cfg.num_hidden_layers,
                   heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads),
        workload=dict(num_requests=args.num_requests, prompt_len=list(args.prompt_len),
                      output_len=list(args.output_len), seed=args.seed),
    )
    prompts, olens = workload(args.num_requests, args.prompt_len, args.output_len, cfg.vocab_size, args.seed)
    max_len = max(len(p) for p in prompts) + max(olens)

    def engine(prefix_caching, max_model_len):
        return Engine(model, num_blocks=args.num_blocks, block_size=args.block_size, max_num_seqs=args.max_num_seqs,
                      max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=max_model_len,
                      enable_prefix_caching=prefix_caching)

    eng = engine(not args.no_prefix_caching, max(args.max_model_len, max_len))
    eng.generate([prompts[0][:8]], SamplingParams(max_tokens=4))  # warm-up (allocations, first launches)
    res["engine"], _ = _engine_run(eng, prompts, olens)
    res["engine"].update(num_blocks=eng.num_blocks, block_size=eng.block_size, max_num_seqs=eng.max_num_seqs,
                         max_num_batched_tokens=eng.max_num_batched_tokens, prefix_caching=eng.prefix_caching)
    per_token = eng.block_bytes // eng.block_size
    contiguous = len(prompts) * max_len * per_token
    exact = sum(len(p) + m for p, m in zip(prompts, olens)) * per_token
    res["kv_memory"] = dict(
        bytes_per_token_all_layers=per_token,
        paged_peak_bytes=res["engine"]["peak_kv_bytes_used"],
        contiguous_max_len_bytes=contiguous,
        contiguous_definition="num_requests x (longest prompt + longest output) x bytes per token: the cache of "
                              "one static batch holding every request at the longest length",
        sum_of_request_lengths_bytes=exact,
        paged_peak_over_contiguous=res["engine"]["peak_kv_bytes_used"] / contiguous,
    )
    del eng
    if not args.skip_hf:
        res["hf_generate"] = _hf_generate(model, prompts, olens, args.hf_attn)
        res["speedup_output_tokens_per_s"] = (res["engine"]["output_tokens_per_s"]
                                              / res["hf_generate"]["output_tokens_per_s"])

    # shared-system-prompt workload: prefix caching on and off
    sp_prompts, sp_olens = workload(args.num_requests, args.prompt_len, args.output_len, cfg.vocab_size,
                                    args.seed + 1, system_prompt_len=args.system_prompt_len)
    sp_len = max(len(p) for p in sp_prompts) + max(sp_olens)
    shared = dict(system_prompt_len=args.system_prompt_len, num_requests=len(sp_prompts))
    for pc in (True, False):
        eng = engine(pc, max(args.max_model_len, sp_len))
        eng.generate([sp_prompts[0][:8]], SamplingParams(max_tokens=4))
        eng.bm.reset_prefix_cache()
        r, outs = _engine_run(eng, sp_prompts, sp_olens)
        shared["prefix_caching_on" if pc else "prefix_caching_off"] = r
        if pc:
            first = outs
        else:
            shared["same_tokens_on_and_off"] = all(a.outputs == b.outputs for a, b in zip(first, outs))
        del eng
    on, off = shared["prefix_caching_on"], shared["prefix_caching_off"]
    shared["hit_rate"] = on["prefix_cache"]["hit_rate"]
    shared["computed_tokens_saved"] = off["computed_tokens"] - on["computed_tokens"]
    shared["speedup_on_over_off"] = on["output_tokens_per_s"] / off["output_tokens_per_s"]
    res["shared_system_prompt"] = shared
    return res
