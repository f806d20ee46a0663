#!/usr/bin/env python3
"""Summarises a SASS source page written by scripts/gpu_profile.sh (ncu --page source --csv
--print-source sass): the kernel's warp-stall samples by reason, then the instructions with the
most samples, each with its main stall reasons and a few instructions of context.

    python3 scripts/profile_top.py prof1.sass.csv [--top 25] [--context 0]
"""
import argparse
import csv
import collections


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--context", type=int, default=0, help="instructions shown before each hot one")
    a = ap.parse_args()
    with open(a.csv, newline="") as f:
        rows = list(csv.reader(f))
    # the first row names the kernel; the header repeats; data rows follow
    hdr_i = next(i for i, r in enumerate(rows) if r and r[0] == "Address")
    hdr = rows[hdr_i]
    data = [r for r in rows[hdr_i + 1:] if r and r[0].startswith("0x")]
    col = {h: i for i, h in enumerate(hdr)}
    stall_cols = [h for h in hdr if h.startswith("stall_") and "(Not Issued)" not in h]

    def num(r, h):
        try:
            return float(r[col[h]])
        except (ValueError, KeyError):
            return 0.0

    total = sum(num(r, "Warp Stall Sampling (All Samples)") for r in data)
    by_reason = collections.Counter()
    for r in data:
        for h in stall_cols:
            by_reason[h] += num(r, h)
    print(f"{rows[0][1][:160]}\n{len(data)} instructions, {total:.0f} samples")
    for h, v in by_reason.most_common(12):
        print(f"  {h:28s} {v:8.0f} {100 * v / max(total, 1):5.1f}%")
    order = sorted(range(len(data)), key=lambda i: -num(data[i], "Warp Stall Sampling (All Samples)"))
    print(f"\ntop {a.top} instructions (index, samples, % of all, executed, top reasons, shared N-way conflicts)")
    for i in order[:a.top]:
        r = data[i]
        s = num(r, "Warp Stall Sampling (All Samples)")
        reasons = sorted(((num(r, h), h[6:]) for h in stall_cols), reverse=True)[:3]
        rs = " ".join(f"{n}:{v:.0f}" for v, n in reasons if v > 0)
        for j in range(max(0, i - a.context), i):
            print(f"        {j:5d} {data[j][1].strip()}")
        print(f"  {i:5d} {s:6.0f} {100 * s / max(total, 1):5.1f}% {num(r, 'Instructions Executed'):9.0f}  "
              f"{r[1].strip()[:60]:60s} {rs}  nway={r[col['L1 Conflicts Shared N-Way']]}")


if __name__ == "__main__":
    main()
