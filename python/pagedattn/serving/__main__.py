"""python -m pagedattn.serving: generate with the continuous-batching loop, check it against
transformers' generate, or benchmark it.

    python -m pagedattn.serving --model llama-tiny                       # CPU backend
    python -m pagedattn.serving --model gemma2-tiny --check              # token-exact vs generate()
    python -m pagedattn.serving --model llama-1b --device cuda --dtype bfloat16 --bench --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _range(s: str) -> tuple[int, int]:
    lo, _, hi = s.partition(":")
    lo, hi = int(lo), int(hi or lo)
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"{s!r}: expected N or LO:HI with 1 <= LO <= HI")
    return lo, hi


def parser() -> argparse.ArgumentParser:
    from .models import PRESETS

    p = argparse.ArgumentParser(prog="python -m pagedattn.serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama-tiny", choices=sorted(PRESETS),
                   help="preset: a transformers architecture with seeded random weights (no download)")
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when torch sees a GPU and the "
                   "package was built with CUDA, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-requests", type=int, default=8)
    p.add_argument("--prompt-len", type=_range, default=(16, 96), help="N or LO:HI (uniform)")
    p.add_argument("--output-len", type=_range, default=(16, 64), help="N or LO:HI (uniform)")
    p.add_argument("--shared-prefix", type=int, default=0, help="generate mode: a common prefix of this many tokens before every prompt")
    p.add_argument("--n", type=int, default=1, help="parallel samples per request (fork + copy-on-write)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--block-size", type=int, default=16, choices=[8, 16, 32])
    p.add_argument("--num-blocks", type=int, default=None, help="KV-cache blocks (default: max-num-seqs x "
                   "blocks of max-model-len)")
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--max-num-batched-tokens", type=int, default=512, help="token budget of one step "
                   "(prefill chunks + decode tokens)")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--check", action="store_true", help="compare every greedy output with transformers' "
                   "generate() (eager attention), token for token")
    p.add_argument("--bench", action="store_true", help="benchmark: tokens/s vs transformers' generate, KV "
                   "memory vs a contiguous allocation, prefix-cache hit rate on a shared system prompt")
    p.add_argument("--hf-attn", default="sdpa", help="bench: transformers' attention for its generate() "
                   "(sdpa; eager where sdpa is unsupported)")
    p.add_argument("--skip-hf", action="store_true", help="bench: do not time transformers' generate")
    p.add_argument("--system-prompt-len", type=int, default=256, help="bench: shared system prompt length")
    p.add_argument("--json", default=None, help="write the result (bench or generate summary) to this file")
    return p


def _default_device():
    import torch

    import pagedattn

    return "cuda" if torch.cuda.is_available() and pagedattn.built_with_cuda() else "cpu"


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        print(f"pagedattn.serving needs torch and transformers: {e}", file=sys.stderr)
        return 2
    args.device = args.device or _default_device()
    if args.bench:
        from . import bench

        res = bench.run(args)
        text = json.dumps(res, indent=2)
        print(text)
        if args.json:
            with open(args.json, "w") as f:
                f.write(text + "\n")
        return 0
    return _generate(args)


def _generate(args) -> int:
    import torch

    from .bench import workload
    from .engine import Engine, SamplingParams
    from .models import build_model

    model = build_model(args.model, device=args.device, dtype=getattr(torch, args.dtype), seed=args.seed)
    prompts, olens = workload(args.num_requests, args.prompt_len, args.output_len, model.config.vocab_size,
                              args.seed, system_prompt_len=args.shared_prefix)
    max_len = max(map(len, prompts)) + max(olens)
    engine = Engine(model, num_blocks=args.num_blocks, block_size=args.block_size, max_num_seqs=args.max_num_seqs,
                    max_num_batched_tokens=args.max_num_batched_tokens,
                    max_model_len=max(args.max_model_len, max_len), enable_prefix_caching=not args.no_prefix_caching)
    params = [SamplingParams(max_tokens=m, n=args.n, temperature=args.temperature, seed=args.seed + i)
              for i, m in enumerate(olens)]
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    ntok = sum(len(t) for o in outs for t in o.outputs)
    print(f"{args.model} on {args.device} ({args.dtype}): {len(outs)} requests, {ntok} tokens in {dt:.3f} s "
          f"({ntok / dt:.1f} tokens/s), {engine.stats['steps']} steps")
    for o in outs:
        for k, toks in enumerate(o.outputs):
            head = " ".join(map(str, toks[:12])) + (" ..." if len(toks) > 12 else "")
            print(f"  request {o.request_id}.{k}: prompt {len(o.prompt)} -> {len(toks)} tokens "
                  f"(steps {o.arrival_step}-{o.finish_step}): {head}")
    print("  stats:", dict(engine.stats))
    print("  prefix cache:", engine.bm.prefix_cache_stats)
    mem = engine.memory_report()
    print(f"  KV cache: peak {mem['peak_blocks_used']} of {mem['num_blocks']} blocks "
          f"({mem['peak_kv_bytes_used'] / 2**20:.2f} MiB of {mem['kv_pool_bytes'] / 2**20:.2f} MiB)")
    summary = dict(model=args.model, device=args.device, dtype=args.dtype, time_s=dt, output_tokens=ntok,
                   stats=dict(engine.stats), prefix_cache=engine.bm.prefix_cache_stats, memory=mem)
    rc = 0
    if args.check:
        if args.temperature != 0:
            print("--check compares greedy outputs: use --temperature 0", file=sys.stderr)
            return 2
        model.set_attn_implementation("eager")
        bad = 0
        with torch.inference_mode():
            for p, o in zip(prompts, outs):
                ids = torch.tensor([p], device=model.device)
                # an explicit mask: without one generate() takes pad_token_id (0) in a prompt for padding
                ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(o.outputs[0]),
                                     do_sample=False)[0, len(p):].tolist()
                for k, toks in enumerate(o.outputs):
                    if toks != ref:
                        bad += 1
                        first = next(i for i, (a, b) in enumerate(zip(toks, ref)) if a != b)
                        print(f"  MISMATCH request {o.request_id}.{k}: first difference at token {first}: "
                              f"{toks[first]} vs generate() {ref[first]}")
        total = sum(len(o.outputs) for o in outs)
        print(f"  check vs transformers generate() (eager): {total - bad}/{total} outputs token-exact")
        summary["check"] = dict(outputs=total, token_exact=total - bad)
        rc = 1 if bad else 0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return rc


if __name__ == "__main__":
    sys.exit(main())
