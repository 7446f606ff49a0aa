"""Follow one 128-row Q tile of the sm_100a attention kernel through Tensor Memory.

    python tools/tmem_walkthrough.py [--D 128] [--tiles 3] [--qtiles 1|2] [--svg out.svg]

Draws, step by step, which TMEM columns hold what while one CTA's Q tile (128 query rows = 128
TMEM lanes; every row of the picture below is the same for all 128 lanes) meets ``--tiles`` key
tiles: S = Q K^T written by the MMA warp, P written over S by the softmax warps, O accumulated by
the PV MMA and rescaled by the correction warps, and finally read by the epilogue. The column plan
is imported from ``dsv4_numba.pipelines.fmha_sm100`` (``tmem_plan``, ``block_n``, ``TMEM_COLS``):
the picture is the kernel's plan, not a copy of it. The schedule is the kernel's issue order (the
MMA warp issues QK_{j+1} before PV_j, so S is double-buffered). ``--qtiles 2`` replays the FA4
schedule of the planned (not built) two-Q-tile variant over ``tmem_plan_two_q`` instead.

While drawing, the tool tracks what each column holds and fails (exit 1) if a step writes over a
column whose data a later step still needs -- the same property the emulator checks during the
tests (``emu.tmem_regions``), here stated over the whole schedule.

Legend (one character = ``--scale`` columns, default 8):
    S P O  written by this step: f32 logits S, bf16 P (two per column), f32 accumulator O
    s p o  live (written earlier, still needed)
    -      dead (read for the last time: may be overwritten)      .  allocated, unused
"""
from __future__ import annotations

import argparse
import pathlib
import sys

try:
    from dsv4_numba.pipelines import fmha_sm100 as F
except ImportError:                                   # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from dsv4_numba.pipelines import fmha_sm100 as F


def schedule(D: int, tiles: int):
    """The kernel's steps for one Q tile: (actor, text, writes {region: tag}, reads [regions],
    frees [regions]). Tags: 'S' logits, 'P' probabilities, 'O' accumulator."""
    steps = [("MMA warp", "tcgen05.alloc 512 columns (whole warp)", {}, [], [])]

    def qk(j):
        b = j % 2
        return ("MMA warp", f"QK_{j}: S{b} = Q K_{j}^T ({D // 16} x SS, commit s_full[{b}])", {f"S{b}": "S"},
                [], [])

    def softmax(j):
        b = j % 2
        return ("softmax", f"ld S{b}; P{b} = exp2(S - m) bf16 -> st over S{b}", {f"P{b}": "P"}, [f"S{b}"],
                [f"S{b}"])

    def pv(j):
        b = j % 2
        first = "= (first: overwrite)" if j == 0 else "+="
        nsub = max(1, D // F.PV_N)
        how = f"{F.block_n(D) // 16} x TS" + (f" x {nsub} N-subtiles" if nsub > 1 else "")
        return ("MMA warp", f"PV_{j}: O {first} P{b} V_{j} ({how})", {"O": "O"}, [f"P{b}", "O"] if j
                else [f"P{b}"], [f"P{b}"])

    def corr(j):
        return ("correction", f"wait o_done(PV_{j - 1}); O *= 2^(m_old - m_new) (ld/st)", {"O": "O"}, ["O"], [])

    steps.append(qk(0))
    for j in range(tiles):
        steps.append(softmax(j))
        if j + 1 < tiles:
            steps.append(qk(j + 1))
        if j > 0:
            steps.append(corr(j))
        steps.append(pv(j))
    steps.append(("correction", "epilogue: ld O, / l, bf16 -> global; lse", {}, ["O"], ["O"]))
    steps.append(("MMA warp", "tcgen05.dealloc 512 columns", {}, [], []))
    return steps


def schedule_two_q(D: int, tiles: int):
    """The FA4 / CUTLASS schedule of the NOT BUILT two-Q-tile variant (plan ``tmem_plan_two_q``): per
    key tile j, S_i = Q_i K_j^T for both Q tiles, softmax i writes P_i over S_i, correction i rescales
    O_i, PV_i accumulates; QK_i of tile j + 1 is issued after PV_i of tile j (the same MMA thread)."""
    steps = [("MMA warp", "tcgen05.alloc 512 columns (whole warp)", {}, [], [])]
    for j in range(tiles):
        for i in range(2):
            steps.append(("MMA warp", f"QK: S{i} = Q{i} K_{j}^T", {f"S{i}": "S"}, [], []))
        for i in range(2):
            steps.append((f"softmax{i}", f"ld S{i}; P{i} = exp2(S - m) -> st over S{i}", {f"P{i}": "P"},
                          [f"S{i}"], [f"S{i}"]))
        for i in range(2):
            if j:
                steps.append(("correction", f"O{i} *= 2^(m_old - m_new) (Q tile {i})", {f"O{i}": "O"},
                              [f"O{i}"], []))
            steps.append(("MMA warp", f"PV: O{i} {'+=' if j else '='} P{i} V_{j}", {f"O{i}": "O"},
                          [f"P{i}", f"O{i}"] if j else [f"P{i}"], [f"P{i}"]))
    steps.append(("correction", "epilogue: ld O0, O1, / l, store", {}, ["O0", "O1"], ["O0", "O1"]))
    steps.append(("MMA warp", "tcgen05.dealloc 512 columns", {}, [], []))
    return steps


def _plan(D: int, qtiles: int) -> dict:
    return F.tmem_plan(D) if qtiles == 1 else F.tmem_plan_two_q(D)


def walk(D: int, tiles: int, qtiles: int = 1):
    """Run the schedule over the column plan: a list of (step, per-column state before drawing,
    written columns), and the list of violations (empty when the plan is sound)."""
    plan = _plan(D, qtiles)
    cols = F.TMEM_COLS
    state = ["."] * cols
    owner = [None] * cols                      # region whose live data is in the column
    rows, errs = [], []
    for step in (schedule(D, tiles) if qtiles == 1 else schedule_two_q(D, tiles)):
        actor, text, writes, reads, frees = step
        for r in reads:
            c0, n = plan[r]
            if any(owner[c] != r and not (r.startswith("P") and owner[c] == "P" + r[1:]) for c in range(c0, c0 + n)):
                errs.append(f"{text}: reads {r} (columns {c0}..{c0 + n - 1}) which does not hold it")
        written = set()
        for r, tag in writes.items():
            c0, n = plan[r]
            for c in range(c0, c0 + n):
                o = owner[c]
                live = o is not None and o != r and not (r.startswith("P") and o == "S" + r[1:]) \
                    and state[c] != "-"
                if live:
                    errs.append(f"{text}: writes {r} over column {c}, still live in {o}")
                owner[c] = r
                state[c] = tag.lower()
                written.add(c)
            if r.startswith("P"):              # the rest of S_b is dead once P is written
                s0, sn = plan["S" + r[1:]]
                for c in range(s0, s0 + sn):
                    if c not in written:
                        state[c], owner[c] = "-", None
        for r in frees:
            c0, n = plan[r]
            for c in range(c0, c0 + n):
                if owner[c] == r and c not in written:
                    state[c], owner[c] = "-", None
        if text.startswith("tcgen05.dealloc"):
            state = [" "] * cols
        rows.append((step, list(state), written))
    return rows, errs


def text_picture(D: int, tiles: int, scale: int = 8, qtiles: int = 1) -> tuple[str, list]:
    rows, errs = walk(D, tiles, qtiles)
    plan = _plan(D, qtiles)
    cols = F.TMEM_COLS
    nch = cols // scale
    what = ("One 128-row Q tile through TMEM: fmha_sm100" if qtiles == 1 else
            "Two 128-row Q tiles in flight (PLANNED variant, not built: tmem_plan_two_q)")
    out = [f"{what}, D = {D}, BN = {F.block_n(D)} keys per tile, "
           f"{tiles} key tiles; 1 char = {scale} columns (all 128 lanes alike)",
           "plan: " + ", ".join(f"{k} {c}..{c + n - 1}" + (f" (in {F.TMEM_ALIASES[k]})" if k in F.TMEM_ALIASES
                                                          else "") for k, (c, n) in plan.items()),
           "emulator: with emu.tmem_regions(" + ", ".join(f"{k}=({c}, {n})" for k, (c, n) in plan.items()
                                                         if k not in F.TMEM_ALIASES) + "): ..."]
    ruler = "".join("|" if (i * scale) % 64 == 0 else " " for i in range(nch))
    labels = "".join(f"{i * scale:<8d}" if (i * scale) % 64 == 0 else "" for i in range(nch))
    out += ["", f"{'':4}{'':11}{'':58}{labels}", f"{'':4}{'':11}{'':58}{ruler}"]
    for i, ((actor, text, _w, _r, _f), state, written) in enumerate(rows):
        cells = []
        for ch in range(nch):
            span = range(ch * scale, (ch + 1) * scale)
            st = [state[c] for c in span]
            mark = max(set(st), key=st.count)
            if any(c in written for c in span):
                mark = mark.upper()
            cells.append(mark)
        out.append(f"{i:3d} {actor:<11}{text[:57]:<58}{''.join(cells)}")
    out.append("")
    out.append("S P O: written by this step;  s p o: live;  -: dead (may be overwritten);  .: allocated, unused")
    if errs:
        out += ["", "VIOLATIONS:"] + [f"  {e}" for e in errs]
    return "\n".join(out), errs


def svg_picture(D: int, tiles: int, qtiles: int = 1) -> str:
    rows, _ = walk(D, tiles, qtiles)
    cols = F.TMEM_COLS
    colour = {"s": "#f4a261", "-": "#f1dcc9", "p": "#2a9d8f", "o": "#264653", ".": "#eeeeee", " ": "#ffffff"}
    w, h, left, top = 1.2, 18, 420, 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + cols * w + 20}" '
             f'height="{top + len(rows) * h + 40}" font-family="monospace" font-size="11">',
             f'<text x="4" y="16">fmha_sm100 D={D}: one 128-row Q tile through TMEM (columns 0..{cols - 1})</text>']
    for i, ((actor, text, _w, _r, _f), state, written) in enumerate(rows):
        y = top + i * h
        parts.append(f'<text x="4" y="{y + 12}">{i:2d} {actor}: {text[:52]}</text>')
        c = 0
        while c < cols:
            e = c
            while e < cols and state[e] == state[c] and ((e in written) == (c in written)):
                e += 1
            stroke = ' stroke="#e63946" stroke-width="1.5"' if c in written else ""
            parts.append(f'<rect x="{left + c * w:.1f}" y="{y}" width="{(e - c) * w:.1f}" height="{h - 3}" '
                         f'fill="{colour[state[c]]}"{stroke}/>')
            c = e
    parts.append("</svg>")
    return "\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--D", type=int, default=128, choices=F.SUPPORTED_D)
    ap.add_argument("--tiles", type=int, default=3)
    ap.add_argument("--scale", type=int, default=8, help="columns per character")
    ap.add_argument("--qtiles", type=int, default=1, choices=(1, 2),
                    help="2: the planned two-Q-tile variant (D <= 128; not built)")
    ap.add_argument("--svg", type=pathlib.Path, default=None, help="also write an SVG picture here")
    args = ap.parse_args(argv)
    txt, errs = text_picture(args.D, args.tiles, args.scale, args.qtiles)
    print(txt)
    if args.svg:
        args.svg.write_text(svg_picture(args.D, args.tiles, args.qtiles))
        print(f"wrote {args.svg}")
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
