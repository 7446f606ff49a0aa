"""Pure functions the emulated tcgen05 / wgmma ops use: number formats, the canonical shared-memory
operand layouts, the TMEM data-path layouts, the tcgen05.ld/st thread/register maps, the wgmma A
register fragment, and user-declared TMEM regions. No simulator state here, so every map can be
tested on its own against the tables of ``ptx-facts.md``.

Sources: PTX ISA 9.1 §9.7.15.5.1 (wgmma fragments and descriptors), §9.7.16.3 (canonical layouts,
identical for wgmma and tcgen05), §9.7.16.8.3 (tcgen05.ld shapes; the per-element maps read off
CUTLASS ``copy_traits_sm100.hpp``), §9.7.16.10.5 (data-path layouts D and F); ptx-facts.md §1.3, §3.3,
§4.1, §5.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np


# ------------------------------------------------------------------------------ number formats
def _minifloat_lut(ebits: int, mbits: int, bias: int, special: str) -> np.ndarray:
    """float64 value of every code of a 1-sign / ebits / mbits format. special: 'fn' (e4m3: only
    S.1111.111 is NaN), 'ieee' (e5m2: top exponent is inf/NaN), 'none' (e2m3, e3m2, e2m1: all finite)."""
    n = 1 << (1 + ebits + mbits)
    codes = np.arange(n)
    s = np.where(codes >> (ebits + mbits) & 1, -1.0, 1.0)
    e = (codes >> mbits) & ((1 << ebits) - 1)
    m = codes & ((1 << mbits) - 1)
    val = np.where(e == 0, m / (1 << mbits) * 2.0 ** (1 - bias),
                   (1 + m / (1 << mbits)) * 2.0 ** (e - bias))
    val = s * val
    top = (1 << ebits) - 1
    if special == "fn":
        val[(e == top) & (m == (1 << mbits) - 1)] = np.nan
    elif special == "ieee":
        val[(e == top) & (m == 0)] = s[(e == top) & (m == 0)] * np.inf
        val[(e == top) & (m != 0)] = np.nan
    return val


LUT = {"e4m3": _minifloat_lut(4, 3, 7, "fn"), "e5m2": _minifloat_lut(5, 2, 15, "ieee"),
       "e2m3": _minifloat_lut(2, 3, 1, "none"), "e3m2": _minifloat_lut(3, 2, 3, "none"),
       "e2m1": _minifloat_lut(2, 1, 1, "none")}
ELEM_BITS = {"bf16": 16, "f16": 16, "e4m3": 8, "e5m2": 8, "u8": 8, "e2m1": 4}


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values of raw codes (integers holding the element's bits) of ``dtype``."""
    raw = np.asarray(raw)
    if dtype == "bf16":
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if dtype == "f16":
        return raw.astype(np.uint16).view(np.float16).astype(np.float64)
    if dtype in LUT:
        return LUT[dtype][raw.astype(np.int64) & (len(LUT[dtype]) - 1)]
    raise ValueError(f"element type {dtype!r} is not emulated")


def ue8m0(raw) -> np.ndarray:
    """UE8M0 scale factors: 2**(code - 127); 0xFF is NaN."""
    raw = np.asarray(raw).astype(np.int64)
    return np.where(raw == 255, np.nan, np.exp2(raw.astype(np.float64) - 127))


def ue4m3(raw) -> np.ndarray:
    """UE4M3 scale factors: e4m3 without the sign bit."""
    return LUT["e4m3"][np.asarray(raw).astype(np.int64) & 0x7F]


# ------------------------------------------------------------------------------ smem operand layouts
SPAN = {"none": 0, "32B": 32, "64B": 64, "128B": 128}
_SWZ_MASK = {0: 0, 32: 1, 64: 3, 128: 7}


def swizzle(addr: np.ndarray, span: int) -> np.ndarray:
    """Swizzle<B,4,3> on absolute .shared byte addresses: 16-byte chunk bits 4..(3+B) XOR bits
    7..(6+B) (B = 1, 2, 3 for 32B, 64B, 128B); repeats every 256 / 512 / 1024 bytes."""
    return addr ^ (((addr >> 7) & _SWZ_MASK[span]) << 4)


def operand_addresses(start: int, lbo: int, sbo: int, swz: str, rows: int, kdim: int, elem_bytes: int,
                      major: str) -> np.ndarray:
    """Byte address of element (row, k) of a rows x kdim operand (A: M x K, B: N x K) described by a
    shared-memory descriptor, per the canonical layouts (PTX §9.7.16.3 / ptx-facts §3.3), with
    T = 16 / element bytes elements per 16-byte unit and S the swizzle span in bytes::

        K-major  none : row%8 * 16   + row//8 * SBO + k%T * eb + k//T * LBO
                 S    : row%8 * S    + row//8 * SBO + k * eb                (k * eb < S; LBO unused)
        MN-major none : row%T * eb   + row//T * SBO + k%8 * 16 + k//8 * LBO
                 S    : row%(S/eb) * eb + row//(S/eb) * LBO + k%8 * S + k//8 * SBO

    then the swizzle of the span on the absolute address."""
    if swz not in SPAN:
        raise ValueError(f"swizzle {swz!r} is not emulated (none, 32B, 64B, 128B)")
    span = SPAN[swz]
    eb = elem_bytes
    t = 16 // eb
    r = np.arange(rows, dtype=np.int64)[:, None]
    k = np.arange(kdim, dtype=np.int64)[None, :]
    if major == "K":
        if span == 0:
            addr = start + (r % 8) * 16 + (r // 8) * sbo + (k % t) * eb + (k // t) * lbo
        else:
            if kdim * eb > span:
                raise ValueError(f"K extent {kdim} x {eb} B exceeds the {swz} swizzle row")
            addr = start + (r % 8) * span + (r // 8) * sbo + k * eb
    elif major == "MN":
        if span == 0:
            addr = start + (r % t) * eb + (r // t) * sbo + (k % 8) * 16 + (k // 8) * lbo
        else:
            per = span // eb
            addr = start + (r % per) * eb + (r // per) * lbo + (k % 8) * span + (k // 8) * sbo
    else:
        raise ValueError(f"major {major!r}: K or MN")
    return swizzle(addr, span) if span else addr


# ------------------------------------------------------------------------------ wgmma A fragment
@functools.lru_cache(maxsize=None)
def wgmma_a_map(kdim: int, elem_bits: int):
    """(rows, ks) int arrays [128, 4, 32 // elem_bits]: element e of A register r of thread t is
    A[rows][ks] (PTX §9.7.15.5.1.1, the mma.sync m16nNk* A pattern per warp): warp w, lane l,
    g = l // 4, c = l % 4, epr = 32 / bits elements per register, lowest bits = lowest k::

        row = 16 w + g + 8 (r % 2)        k = (K / 2) (r // 2) + epr c + e
    """
    epr = 32 // elem_bits
    t = np.arange(128)[:, None, None]
    r = np.arange(4)[None, :, None]
    e = np.arange(epr)[None, None, :]
    w, lane = t // 32, t % 32
    rows = 16 * w + lane // 4 + 8 * (r % 2) + 0 * e
    ks = (kdim // 2) * (r // 2) + epr * (lane % 4) + e
    return rows, ks


# ------------------------------------------------------------------------------ TMEM layouts
def datapath_lanes(M: int, lane_base: int) -> np.ndarray:
    """TMEM lane of each accumulator row m (cta_group::1, not .ws; ptx-facts §4.1):
    M=128 layout D: lane = m (base lane must be 0); M=64 layout F: lane = m%16 + 32 (m//16) + base
    (base 0 or 16: the low or high half of each 32-lane quadrant)."""
    m = np.arange(M)
    if M == 128:
        if lane_base:
            raise ValueError(f"M=128 (layout D) uses all 128 lanes: the TMEM address's lane field must be 0, "
                             f"got {lane_base}")
        return m
    if M == 64:
        if lane_base not in (0, 16):
            raise ValueError(f"M=64 (layout F): the TMEM address's lane field must be 0 or 16, got {lane_base}")
        return m % 16 + 32 * (m // 16) + lane_base
    raise ValueError(f"M={M}: only 64 and 128 are valid for cta_group::1")


LD_SHAPES = {"32x32b": (32, 1), "16x64b": (16, 1), "16x128b": (16, 2), "16x256b": (16, 4)}


@functools.lru_cache(maxsize=None)
def ld_map(shape: str, num: int):
    """(lane offset, column offset) int arrays [32, regs]: register j of thread t of a
    tcgen05.ld/st.<shape>.x<num> reaches TMEM (base lane + lane, base column + col) (ptx-facts §1.3,
    from CUTLASS copy_traits_sm100)::

        32x32b  : lane t,                     col j
        16x64b  : lane t//4 + 8 (t%2),        col 2 (j) + (t//2)%2
        16x128b : lane t//4 + 8 (j%2),        col 4 (j//2) + t%4
        16x256b : lane t//4 + 8 ((j%4)//2),   col 8 (j//4) + 2 (t%4) + j%2
    """
    if shape not in LD_SHAPES:
        raise ValueError(f"tcgen05.ld/st shape {shape!r} is not emulated ({', '.join(LD_SHAPES)})")
    per = LD_SHAPES[shape][1]
    regs = per * num
    t = np.arange(32)[:, None]
    j = np.arange(regs)[None, :]
    if shape == "32x32b":
        lane, col = t + 0 * j, 0 * t + j
    elif shape == "16x64b":
        lane, col = t // 4 + 8 * (t % 2) + 0 * j, 2 * j + (t // 2) % 2
    elif shape == "16x128b":
        lane, col = t // 4 + 8 * (j % 2), 4 * (j // 2) + t % 4
    else:
        lane, col = t // 4 + 8 * ((j % 4) // 2), 8 * (j // 4) + 2 * (t % 4) + j % 2
    return lane, col


def shape_lanes(shape: str) -> int:
    return LD_SHAPES[shape][0]


# ------------------------------------------------------------------------------ declared regions
REGIONS: dict = {}       # name -> (col0, ncols): columns relative to the CTA's first allocation


def tmem_region(name: str, col0: int, ncols: int):
    """Declare a named TMEM column region [col0, col0 + ncols) (relative to the base address of the
    CTA's first tcgen05_alloc) for the next launches. Every tcgen05.st / tcgen05.mma write must then
    lie inside one declared region (a write straddling two is reported), and diagnostics name the
    regions involved. Regions may not overlap each other; clear them with ``tmem_regions_clear``."""
    col0, ncols = int(col0), int(ncols)
    if ncols <= 0 or col0 < 0 or col0 + ncols > 512:
        raise ValueError(f"tmem_region {name!r}: columns {col0}..{col0 + ncols - 1} outside 0..511")
    for other, (c, n) in REGIONS.items():
        if other != name and c < col0 + ncols and col0 < c + n:
            raise ValueError(f"tmem_region {name!r} (columns {col0}..{col0 + ncols - 1}) overlaps region "
                             f"{other!r} (columns {c}..{c + n - 1}): two live regions may not share columns")
    REGIONS[name] = (col0, ncols)


def tmem_regions_clear():
    REGIONS.clear()


@contextlib.contextmanager
def tmem_regions(**regions):
    """``with emu.tmem_regions(O=(0, 128), S=(128, 128)): kernel.launch(...)`` declares regions for
    the launches inside the block and clears them after."""
    saved = dict(REGIONS)
    REGIONS.clear()
    try:
        for name, (c, n) in regions.items():
            tmem_region(name, c, n)
        yield
    finally:
        REGIONS.clear()
        REGIONS.update(saved)


def region_of(c0: int, c1: int, base: int, op: str) -> str:
    """The declared region holding absolute columns [c0, c1) ('' if none declared); error on a
    write that straddles regions or leaves all of them."""
    if not REGIONS:
        return ""
    hit = [(n, c, w) for n, (c, w) in REGIONS.items() if c + base < c1 and c0 < c + base + w]
    inside = [n for n, c, w in hit if c + base <= c0 and c1 <= c + base + w]
    if inside:
        return inside[0]
    plan = ", ".join(f"{n}: {c + base}..{c + base + w - 1}" for n, (c, w) in REGIONS.items())
    raise ValueError(f"{op} writes TMEM columns {c0}..{c1 - 1}, which "
                     + (f"straddle regions {', '.join(h[0] for h in hit)}" if hit else "lie in no declared region")
                     + f" (plan: {plan}). Check the column offsets of this write against the plan")
