"""Summarise an Nsight Compute source page by stretches of SASS: where a kernel's time went.

On the device (ncu is there, not here)::

    ncu --set full --warp-sampling-interval 0 -k regex:topk_split --launch-skip 3 \\
        --launch-count 1 -o prof python3 my_run.py
    ncu -i prof.ncu-rep --page source --csv --print-source sass > src.csv

then, anywhere::

    python tools/ncu_source_summary.py src.csv            # totals + 100-line windows
    python tools/ncu_source_summary.py src.csv --window 50 --hot 20

Printed: the warp-state samples by stall reason; shared-memory wavefronts against their ideal
(the excess is bank conflicts); SASS lines and how many ran at all; then one row per window of
SASS lines that holds >= 0.5 % of the samples: its share, warp-instructions executed, distinct
instructions run, the three largest stall reasons, shared wavefronts / ideal and the landmark
opcodes (barriers, mbarriers, DSMEM stores, global loads, atomics) that say which stage it is.
``--hot N`` lists the N instructions with the most samples.

What it found (H100, 2026-11-27, the cluster top-k at (1, 65536, 2048), CHANGELOG 0.13.0): a
16-way bank conflict in one scan loop (65536 wavefronts for 4096), int64 loop arithmetic in the
block scans, and a third of all samples as "no instruction" stalls at the first run of each stretch
of code -- a one-shot kernel pays for its size.
"""
from __future__ import annotations

import argparse
import csv
import sys

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"
WAVES, IDEAL = "L1 Wavefronts Shared", "L1 Wavefronts Shared Ideal"
LANDMARKS = ("BAR", "SYNCS", "STAS", "UCGABAR", "LDG", "STG", "ATOMS", "ATOMG", "MEMBAR", "HGMMA",
             "EXIT")


def read(path: str):
    """(kernel name, rows as dicts) of an ``ncu --page source --csv`` file: a kernel-name line,
    the header, one row per SASS instruction."""
    with open(path, newline="") as fh:
        lines = list(csv.reader(fh))
    if len(lines) < 2:
        raise ValueError(f"{path}: not an ncu source page (expected a kernel line and a header)")
    name = lines[0][1] if len(lines[0]) > 1 else lines[0][0]
    hdr = lines[1]
    if "Source" not in hdr or SAMPLES not in hdr:
        raise ValueError(f"{path}: no 'Source' / '{SAMPLES}' columns: export with "
                         "--page source --csv --print-source sass")
    return name, [dict(zip(hdr, r)) for r in lines[2:] if len(r) == len(hdr)]


def num(row, key) -> float:
    try:
        return float(row.get(key, 0) or 0)
    except ValueError:
        return 0.0


def opcode(row) -> str:
    """The instruction's base opcode (predicate and modifiers dropped): 'LDS', 'BAR', ..."""
    t = row.get("Source", "").split()
    if not t:
        return ""
    op = t[1] if t[0].startswith("@") and len(t) > 1 else t[0]
    return op.split(".")[0]


def stall_keys(rows):
    return [k for k in (rows[0] if rows else {}) if k.startswith("stall_")
            and "Not Issued" not in k]


def totals(rows) -> dict:
    """Figures of a stretch of SASS lines (the whole kernel, or a window): samples, by-reason
    samples, warp-instructions executed, wavefronts, SASS lines and how many ran."""
    keys = stall_keys(rows)
    return {"samples": sum(num(r, SAMPLES) for r in rows),
            "stalls": {k: sum(num(r, k) for r in rows) for k in keys},
            "executed": sum(num(r, EXECUTED) for r in rows),
            "waves": sum(num(r, WAVES) for r in rows), "ideal": sum(num(r, IDEAL) for r in rows),
            "lines": len(rows), "ran": sum(1 for r in rows if num(r, EXECUTED) > 0)}


def windows(rows, size: int, floor: float = 0.005):
    """One dict per window of ``size`` SASS lines holding >= ``floor`` of the samples: its
    ``totals``, its start and share, the three largest stall reasons and its landmark opcodes."""
    total = sum(num(r, SAMPLES) for r in rows) or 1.0
    out = []
    for s in range(0, len(rows), size):
        seg = rows[s:s + size]
        w = totals(seg)
        if w["samples"] < floor * total:
            continue
        by = sorted(((v, k) for k, v in w["stalls"].items()), reverse=True)[:3]
        marks = {}
        for r in seg:
            op = opcode(r)
            if num(r, EXECUTED) > 0 and op in LANDMARKS:
                marks[op] = marks.get(op, 0) + 1
        w.update(start=s, share=w["samples"] / total, marks=marks,
                 top=[(k[len("stall_"):], v) for v, k in by if v > 0])
        out.append(w)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", help="ncu --page source --csv --print-source sass output")
    ap.add_argument("--window", type=int, default=100, help="SASS lines a row (default 100)")
    ap.add_argument("--hot", type=int, default=0, help="also list the N most-sampled lines")
    args = ap.parse_args(argv)
    name, rows = read(args.csv)
    t = totals(rows)
    S = t["samples"] or 1.0
    print(f"# {name[:100]}")
    print(f"SASS lines {t['lines']}, run at least once {t['ran']}; samples {t['samples']:.0f}; "
          f"shared wavefronts {t['waves']:.0f} (ideal {t['ideal']:.0f})")
    for k, v in sorted(t["stalls"].items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {k[len('stall_'):]:20s} {v:8.0f} {100 * v / S:5.1f}%")
    print(f"\n{'line':>6} {'share':>6} {'executed':>9} {'ran':>4}  {'shared wf / ideal':>17}  "
          "top stalls | landmarks")
    for w in windows(rows, args.window):
        top = ", ".join(f"{k}={v:.0f}" for k, v in w["top"])
        marks = " ".join(f"{k}{v}" for k, v in w["marks"].items())
        print(f"{w['start']:6d} {100 * w['share']:5.1f}% {w['executed']:9.0f} {w['ran']:4d}  "
              f"{w['waves']:8.0f}/{w['ideal']:8.0f}  {top} | {marks}")
    if args.hot:
        print(f"\nthe {args.hot} most-sampled instructions:")
        keys = stall_keys(rows)
        for i, r in sorted(enumerate(rows), key=lambda ir: -num(ir[1], SAMPLES))[:args.hot]:
            why = max(keys, key=lambda k: num(r, k)) if keys else ""
            print(f"{i:6d} {num(r, SAMPLES):6.0f} {why[len('stall_'):]:14s} "
                  f"{r.get('Source', '').strip()[:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
