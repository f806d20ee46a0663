#!/usr/bin/env python3
"""Plot pagedattn-bench JSON: % of copy bandwidth against sequence length.

One line per configuration (algo, timing mode and the shape key without the sequence
length), log-scaled x axis, one PNG. Usage:

    pagedattn-bench --sweep issue3 --json run.json
    python3 bench/plot.py run.json --out run.png [--algo auto,vllm] [--group gqa] [--mode eager]
"""
import argparse
import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="file written by pagedattn-bench --json")
    ap.add_argument("--out", default="bench.png", help="PNG to write (default: bench.png)")
    ap.add_argument("--algo", help="comma list of algos to draw (default: all in the file)")
    ap.add_argument("--group", help="comma list of sweep groups to draw (default: all)")
    ap.add_argument("--mode", choices=["eager", "graph"], help="eager or graph (default: both)")
    ap.add_argument("--metric", default="pct_copy", choices=["pct_copy", "gbps", "median_us"],
                    help="y axis (default: pct_copy)")
    ap.add_argument("--title", help="plot title (default: device and copy bandwidth)")
    return ap.parse_args(argv)


def load_lines(run, args):
    algos = set(args.algo.split(",")) if args.algo else None
    groups = set(args.group.split(",")) if args.group else None
    lines = defaultdict(list)
    for r in run["results"]:
        if r.get("error") or not r.get("iters"):
            continue
        if algos and r["algo"] not in algos:
            continue
        if groups and r["group"] not in groups:
            continue
        if args.mode and r["mode"] != args.mode:
            continue
        label = r["algo"] if r["algo"] != "vllm" else "vllm-rule"
        if r["mode"] != "eager":
            label += " (graph)"
        lines[(label, r["config"])].append((r["seq_len"], r[args.metric]))
    return {k: sorted(v) for k, v in lines.items()}


# The algorithm picks the line style, the configuration the colour.
STYLES = {"auto": "-", "v1": "--", "v2": ":", "vllm-rule": "-."}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with open(args.json) as f:
        run = json.load(f)
    lines = load_lines(run, args)
    if not lines:
        print("plot.py: no timed rows match the filters", file=sys.stderr)
        return 1

    fig, ax = plt.subplots(figsize=(12, 7))
    configs = sorted({cfg for _, cfg in lines})
    cmap = plt.get_cmap("tab20")
    colour = {cfg: cmap(i % 20) for i, cfg in enumerate(configs)}
    for (label, cfg), pts in sorted(lines.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, color=colour[cfg],
                linestyle=STYLES.get(label.split(" ")[0], "-"), label=f"{label}  {cfg}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (tokens; max for mixed-length batches)")
    ylabels = {"pct_copy": "% of device-to-device copy bandwidth", "gbps": "GB/s", "median_us": "median time per call (us)"}
    ax.set_ylabel(ylabels[args.metric])
    if args.metric == "pct_copy":
        ax.axhline(100.0, color="black", linewidth=0.8, linestyle="--")
    dev = run["device"]
    copy = run["copy_bandwidth"]
    ax.set_title(args.title or f"pagedattn {run['version']} on {dev['name']} ({dev['backend']}), "
                 f"copy bandwidth {copy['gbps']:.0f} GB/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 if len(lines) <= 40 else 2)
    fig.tight_layout()
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out} ({len(lines)} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
