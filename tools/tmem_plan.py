"""Check and draw a Tensor Memory column plan (sm_100a, 128 lanes x 512 columns of 32 bits per CTA).

    python tools/tmem_plan.py O=0:128 S=128:128 P=128:64@S [--M 128] [--alloc 256]

Each region is NAME=FIRST_COLUMN:NCOLS, optionally @OTHER when it deliberately aliases OTHER (FA4's P
written over S once S is read). The tool checks: the allocation is a power of 2 in [32, 512] covering
every region; regions overlap only where declared (@); an alias lies inside the region it aliases. It
prints one line per 32-column allocation unit, and the ``emu.tmem_regions(...)`` call that makes the
emulator check every write against the plan (aliases are dropped there: the emulator infers them).

Reminders (ptx-facts §4.1, §2.6): an M x N f32 or f16 accumulator takes N columns (D is never packed);
bf16 P for a TS MMA takes K/2 columns (two per 32-bit column); block scale factors of M=128 rows take
4 columns per MMA K-block.
"""
from __future__ import annotations

import argparse
import sys


def parse(specs):
    regions = {}
    for s in specs:
        name, _, rest = s.partition("=")
        rng, _, alias = rest.partition("@")
        c0, _, n = rng.partition(":")
        if not name or not c0 or not n:
            raise ValueError(f"{s!r}: expected NAME=FIRST:NCOLS[@ALIASED]")
        regions[name] = (int(c0), int(n), alias or None)
    return regions


def check(regions, alloc=None):
    """Problems (strings) of a plan; empty when it is consistent."""
    errs = []
    top = max((c + n for c, n, _ in regions.values()), default=0)
    need = 32
    while need < top:
        need *= 2
    alloc = alloc or need
    if alloc < 32 or alloc > 512 or alloc & (alloc - 1):
        errs.append(f"allocation {alloc} columns: must be a power of 2 in [32, 512]")
    if top > alloc:
        errs.append(f"regions reach column {top - 1}, beyond the {alloc}-column allocation")
    names = list(regions)
    for i, a in enumerate(names):
        ca, na, al = regions[a]
        if al is not None:
            if al not in regions:
                errs.append(f"{a} aliases unknown region {al}")
            else:
                cb, nb, _ = regions[al]
                if not (cb <= ca and ca + na <= cb + nb):
                    errs.append(f"{a} (columns {ca}..{ca + na - 1}) is declared to alias {al} but leaves it "
                                f"(columns {cb}..{cb + nb - 1})")
        for b in names[i + 1:]:
            cb, nb, bl = regions[b]
            if ca < cb + nb and cb < ca + na and al != b and bl != a:
                errs.append(f"{a} (columns {ca}..{ca + na - 1}) overlaps {b} (columns {cb}..{cb + nb - 1}) "
                            f"without a declared alias")
    return errs, alloc


def picture(regions, alloc):
    lines = []
    for u in range(0, alloc, 32):
        owners = [f"{n}[{max(c, u) - c}..{min(c + w, u + 32) - 1 - c}]" for n, (c, w, _) in regions.items()
                  if c < u + 32 and u < c + w]
        lines.append(f"  columns {u:3d}..{u + 31:3d}: {', '.join(owners) or '(free)'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("regions", nargs="+", help="NAME=FIRST:NCOLS[@ALIASED]")
    ap.add_argument("--alloc", type=int, default=None, help="columns allocated (default: smallest power of 2)")
    args = ap.parse_args(argv)
    try:
        regions = parse(args.regions)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    errs, alloc = check(regions, args.alloc)
    print(f"TMEM plan, {alloc} columns allocated (tcgen05_alloc nCols={alloc}):")
    print(picture(regions, alloc))
    plain = {n: (c, w) for n, (c, w, al) in regions.items() if al is None}
    print("emulator: with emu.tmem_regions(" + ", ".join(f"{n}=({c}, {w})" for n, (c, w) in plain.items()) + "): ...")
    for e in errs:
        print(f"ERROR: {e}")
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
