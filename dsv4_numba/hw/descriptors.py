"""Matrix and instruction descriptors for wgmma (sm_90a) and tcgen05.mma (sm_100a), and their inverse.

Every builder here is plain Python on ``int``: call it on the host, or at module level next to a
kernel so Numba freezes the result as a compile-time constant. Each one validates its fields against
the PTX ISA and raises ``ValueError`` naming the field and what to change. ``explain(value, kind)``
decodes a 32- or 64-bit value back into the builder's keyword arguments (``build(**e.fields) ==
value``) and rejects what no builder could produce: reserved bits, a missing sm_100 version field,
an invalid swizzle code, an M/N that the kind does not support.

Sources: PTX ISA 9.1 (sec. 9.7.15.5.1.2.2 wgmma matrix descriptor; sec. 9.7.16.4.1 Table 40
tcgen05 shared-memory descriptor; sec. 9.7.16.4.2 Tables 42-44 instruction descriptors; sec.
9.7.16.2.1 Table 39 shapes; sec. 9.7.16.10.1 Tables 49-50 transpose/negate; sec. 9.7.16.3.1.2 the
absolute-LBO mode) and ``/work/shared/reference/ptx-facts.md``. ``tests/test_descriptors.py``
cross-checks the encodings against NVIDIA CUTLASS's own unions (``cute/arch/mma_sm90_desc.hpp``,
``cute/arch/mma_sm100_desc.hpp``) when the ``nvidia-cutlass`` headers and g++ are present.

sm_90 wgmma shared-memory descriptor (64 bit)  -- ``wgmma_smem_desc``
-------------------------------------------------------------------
::

    63 62 61      53 52 51  49 48  46 45              32 31 30 29              16 15 14 13               0
   +-----+----------+--+------+------+------------------+-----+------------------+-----+------------------+
   | swz |    0     |0 | base | 000  |    SBO >> 4      | 00  |    LBO >> 4      | 00  | start_addr >> 4  |
   +-----+----------+--+------+------+------------------+-----+------------------+-----+------------------+
   swz (62-63): 0 none (or interleave), 1 128B, 2 64B, 3 32B.   base (49-51): base offset, swizzled only.

sm_100 tcgen05 shared-memory descriptor (64 bit)  -- ``umma_smem_desc``
----------------------------------------------------------------------
::

    63   61 60      53 52 51  49 48  46 45              32 31 30 29              16 15 14 13               0
   +-------+----------+--+------+------+------------------+-----+------------------+-----+------------------+
   |  swz  |    0     |LM| base | 001  |    SBO >> 4      | 00  |    LBO >> 4      | 00  | start_addr >> 4  |
   +-------+----------+--+------+------+------------------+-----+------------------+-----+------------------+
   swz (61-63): 0 none, 1 128B with 32B atomicity ("128B_base32B"), 2 128B, 4 64B, 6 32B; 3/5/7 invalid.
   46-48: the fixed constant 0b001 (CUTLASS: ``version_ = 1``, "the version for Blackwell").
   LM (52): LBO mode, 0 relative byte offset, 1 absolute address (48-B K tiles, 128B swizzle only).

   The sm_90 swizzle codes 1/2/3 at bit 62 are the sm_100 codes 2/4/6 at bit 61, so an sm_90
   descriptor reads as a valid sm_100 one except for bit 46. ``explain(.., "umma-smem")`` says so.

   Start address, LBO and SBO are byte values, multiples of 16, below 2**18 (PTX:
   matrix-descriptor-encode(x) = (x & 0x3FFFF) >> 4). In a kernel the start address is known only at
   run time: build with ``start_addr=0`` and OR in ``(smem_addr >> 4) & 0x3FFF``; a K step inside a
   swizzle atom adds ``bytes >> 4`` to the low word (CUTLASS's DescriptorIterator does the same).

tcgen05 instruction descriptor, kind::f16 / tf32 / f8f6f4 / i8 (32 bit)  -- ``umma_idesc``
------------------------------------------------------------------------------------------
::

    31 30 29 28      24 23 22        17 16 15 14 13 12   10 9     7  6 5   4  3  2  1   0
   +-----+--+----------+--+------------+--+--+--+--+-------+--------+--+-----+--+--+-----+
   |shift|0 |  M >> 4  |0 |   N >> 3   |tB|tA|nB|nA| btype | atype  |0 |dtype|sa|sp| sel |
   +-----+--+----------+--+------------+--+--+--+--+-------+--------+--+-----+--+--+-----+
   dtype: F16 0, F32 1, S32 2.  a/btype: f16 0, bf16 1 | tf32 2 | e4m3 0, e5m2 1, e2m3 3, e3m2 4,
   e2m1 5 | u8 0, s8 1.  tA/tB: 1 = MN-major.  nA/nB: negate.  sa: saturate (i8).  sp: sparse,
   sel: sparsity selector.  shift (30-31): .ws B-reuse max shift 0/8/16/32 -> 0..3.

tcgen05 instruction descriptor, kind::mxf8f6f4 / mxf4 / mxf4nvf4 (32 bit)  -- ``umma_idesc_block_scaled``
-------------------------------------------------------------------------------------------------------
::

    31 30  29 28 27 26  24 23 22        17 16 15 14 13 12   10 9     7  6 5   4  3  2  1   0
   +---+------+-----+-----+--+------------+--+--+--+--+-------+--------+--+-----+--+--+-----+
   |K96|SFA id|M>>7 |  0  |sc|   N >> 3   |tB|tA|nB|nA| btype | atype  |0 |SFB  |0 |sp|  0  |
   +---+------+-----+-----+--+------------+--+--+--+--+-------+--------+--+-----+--+--+-----+
   sc (23): scale type, UE4M3 0 / UE8M0 1.  a/btype: mxf8f6f4 as f8f6f4 above; mxf4/mxf4nvf4 E2M1 = 1
   (btype is 2 bits there, bit 12 reserved).  SF ids: 0-3 (mxf8f6f4), 0 or 2 (mxf4, mxf4nvf4).
   K96 (31): mxf4/mxf4nvf4 dense K=96 (sm_103a, cta_group::2, M=256); reserved for mxf8f6f4.
   No D-type field: D is always f32.

Worked values (ptx-facts.md sec. 2.3/2.4/3.2; checked in the tests and against CUTLASS):
``umma_idesc("f16", "bf16", "bf16", "f32", 128, 64) == 0x08100490``;
``umma_idesc_block_scaled("mxf4nvf4", "e2m1", "e2m1", "ue4m3", 128, 128) == 0x08200480``.

CLI: ``explain_desc_main(argv)`` implements ``python -m dsv4_numba explain-desc VALUE --kind K``.
"""
from __future__ import annotations

import argparse
import json
import operator
import sys
from dataclasses import dataclass, field

__all__ = [
    "wgmma_smem_desc", "umma_smem_desc", "umma_idesc", "umma_idesc_block_scaled",
    "explain", "Explained", "explain_desc_main", "swizzle_base_offset",
    "EXPLAIN_KINDS", "WGMMA_SWIZZLE", "UMMA_SWIZZLE",
]

# ------------------------------------------------------------------------------------------------
# shared-memory descriptors
# ------------------------------------------------------------------------------------------------

#: sm_90 wgmma swizzle / layout-type codes (bits 62-63).
WGMMA_SWIZZLE = {"none": 0, "128B": 1, "64B": 2, "32B": 3}
#: sm_100 tcgen05 swizzle / layout-type codes (bits 61-63); 3, 5 and 7 are invalid.
UMMA_SWIZZLE = {"none": 0, "128B_base32B": 1, "128B": 2, "64B": 4, "32B": 6}
#: bytes after which each swizzle pattern repeats (PTX Table 41); base_offset is 0 on these boundaries
SWIZZLE_REPEAT_BYTES = {"128B": 1024, "128B_base32B": 1024, "64B": 512, "32B": 256}

_SMEM_LIMIT = 1 << 18          # matrix-descriptor-encode keeps address bits 4..17
_UMMA_VERSION = 0b001          # bits 46-48 of every sm_100 shared-memory descriptor
_LBO_MODES = {"relative": 0, "absolute": 1}


def _as_int(name: str, x) -> int:
    if isinstance(x, bool):
        raise ValueError(f"{name}={x!r}: expected an integer, not a bool")
    try:
        return operator.index(x)
    except TypeError:
        raise ValueError(f"{name}={x!r}: expected an integer") from None


def _as_bool(name: str, x) -> bool:
    if isinstance(x, bool) or x in (0, 1):
        return bool(x)
    raise ValueError(f"{name}={x!r}: expected a bool (or 0/1)")


def _norm_name(name: str, x, table, what: str) -> str:
    """Case-insensitive lookup of ``x`` among the keys of ``table``; returns the canonical key."""
    if isinstance(x, str):
        for k in table:
            if k.lower() == x.lower():
                return k
    raise ValueError(f"{name}={x!r}: not a valid {what}; valid: {', '.join(table)}")


def _smem_bytes(name: str, x, *, what: str = "byte offset") -> int:
    x = _as_int(name, x)
    if not 0 <= x < _SMEM_LIMIT:
        raise ValueError(f"{name}={x:#x}: the {what} must lie in [0, 0x40000) - the descriptor keeps "
                         f"address bits 4..17 only (matrix-descriptor-encode)")
    if x % 16:
        raise ValueError(f"{name}={x:#x}: the {what} must be a multiple of 16 bytes "
                         f"(the descriptor stores it >> 4)")
    return x


def _base_offset(base_offset, swizzle: str) -> int:
    b = _as_int("base_offset", base_offset)
    if not 0 <= b <= 7:
        raise ValueError(f"base_offset={b}: must be in 0..7 (3-bit field, bits 49-51)")
    if swizzle == "none" and b:
        raise ValueError(f"base_offset={b}: the base offset applies to swizzled layouts only; "
                         f"pass 0 with swizzle='none'")
    return b


def swizzle_base_offset(pattern_start_addr: int, swizzle: str) -> int:
    """The base-offset field for a swizzle pattern that starts at ``pattern_start_addr`` (PTX sec.
    9.7.15.5.1.2.2 / 9.7.16.4.1): 0 on the pattern's repeat boundary (1024/512/256 B for 128B/64B/32B),
    else ``(addr >> 7) & 7``. Aligning swizzled tiles to the repeat size keeps it 0, as CUTLASS does."""
    swizzle = _norm_name("swizzle", swizzle, UMMA_SWIZZLE, "swizzle")
    addr = _as_int("pattern_start_addr", pattern_start_addr)
    if swizzle == "none" or addr % SWIZZLE_REPEAT_BYTES[swizzle] == 0:
        return 0
    return (addr >> 7) & 7


def wgmma_smem_desc(start_addr: int, lbo: int, sbo: int, swizzle: str, base_offset: int = 0) -> int:
    """The 64-bit sm_90 ``wgmma.mma_async`` shared-memory matrix descriptor (PTX sec. 9.7.15.5.1.2.2).

    ``start_addr``, ``lbo`` (leading-dimension byte offset) and ``sbo`` (stride-dimension byte
    offset) are in bytes: multiples of 16 below 2**18. ``swizzle`` is "none", "32B", "64B" or "128B"
    (there is no 128B/32B-atom mode on sm_90). For K-major swizzled layouts LBO is unused (CUTLASS
    writes 16 B, i.e. encoded 1). ``base_offset`` (0..7) is for swizzle patterns that do not start
    on their repeat boundary, see ``swizzle_base_offset``; it must be 0 without swizzle.
    """
    swizzle = _norm_name("swizzle", swizzle, WGMMA_SWIZZLE, "sm_90 wgmma swizzle")
    start = _smem_bytes("start_addr", start_addr, what="start address")
    lbo = _smem_bytes("lbo", lbo)
    sbo = _smem_bytes("sbo", sbo)
    base = _base_offset(base_offset, swizzle)
    return ((start >> 4) | (lbo >> 4) << 16 | (sbo >> 4) << 32 | base << 49
            | WGMMA_SWIZZLE[swizzle] << 62)


def umma_smem_desc(start_addr: int, lbo: int, sbo: int, swizzle: str, base_offset: int = 0,
                   lbo_mode: str = "relative") -> int:
    """The 64-bit sm_100 ``tcgen05`` shared-memory descriptor (PTX sec. 9.7.16.4.1, Table 40).

    Fields as for ``wgmma_smem_desc``, plus: ``swizzle`` may also be "128B_base32B" (128-byte
    swizzle with 32-byte atomicity: MN-major only; the only mode in which kind::tf32 may transpose);
    the fixed bits 46-48 = 0b001 are always set; ``lbo_mode="absolute"`` (bit 52) makes the LBO field
    an absolute shared address, for 48-byte K tiles (sm_103a), and PTX sec. 9.7.16.3.1.2.1 allows it
    only with the 128B swizzle and base offset 0 (and K-major operands, a property of the
    instruction descriptor).
    """
    swizzle = _norm_name("swizzle", swizzle, UMMA_SWIZZLE, "sm_100 tcgen05 swizzle")
    mode = _norm_name("lbo_mode", lbo_mode, _LBO_MODES, "LBO mode")
    start = _smem_bytes("start_addr", start_addr, what="start address")
    lbo = _smem_bytes("lbo", lbo, what="byte offset" if mode == "relative" else "absolute address")
    sbo = _smem_bytes("sbo", sbo)
    base = _base_offset(base_offset, swizzle)
    if mode == "absolute" and (swizzle != "128B" or base):
        raise ValueError(f"lbo_mode='absolute' needs swizzle='128B' and base_offset=0 "
                         f"(PTX sec. 9.7.16.3.1.2.1); got swizzle={swizzle!r}, base_offset={base}")
    return ((start >> 4) | (lbo >> 4) << 16 | (sbo >> 4) << 32 | _UMMA_VERSION << 46 | base << 49
            | _LBO_MODES[mode] << 52 | UMMA_SWIZZLE[swizzle] << 61)


# ------------------------------------------------------------------------------------------------
# instruction descriptors
# ------------------------------------------------------------------------------------------------

_F8F6F4 = {"e4m3": 0, "e5m2": 1, "e2m3": 3, "e3m2": 4, "e2m1": 5}
#: A/B type codes (bits 7-9 / 10-12) per kind (PTX Tables 42-44)
IDESC_TYPES = {
    "f16": {"f16": 0, "bf16": 1},
    "tf32": {"tf32": 2},
    "f8f6f4": _F8F6F4,
    "i8": {"u8": 0, "s8": 1},
    "mxf8f6f4": _F8F6F4,
    "mxf4": {"e2m1": 1},
    "mxf4nvf4": {"e2m1": 1},
}
#: D type codes (bits 4-5), dense kinds only
D_TYPES = {"f16": 0, "f32": 1, "s32": 2}
_KIND_DTYPES = {"f16": ("f16", "f32"), "tf32": ("f32",), "f8f6f4": ("f16", "f32"), "i8": ("s32",)}
#: scale-factor type codes (bit 23), block-scaled kinds only
SCALE_TYPES = {"ue4m3": 0, "ue8m0": 1}
_KIND_SCALES = {"mxf8f6f4": ("ue8m0",), "mxf4": ("ue8m0",), "mxf4nvf4": ("ue8m0", "ue4m3")}
_MAJORS = {"K": 0, "MN": 1}
_MAX_SHIFT = {0: 0, 8: 1, 16: 2, 32: 3}
DENSE_KINDS = ("f16", "tf32", "f8f6f4", "i8")
BLOCK_SCALED_KINDS = ("mxf8f6f4", "mxf4", "mxf4nvf4")
_EIGHT_BIT = ("e4m3", "e5m2", "u8", "s8")
_SUB_BYTE = ("e2m3", "e3m2", "e2m1")


def _n_values(start: int, step: int, stop: int = 256) -> tuple:
    return tuple(range(start, stop + 1, step))


def _valid_mn(kind: str, cta_group: int, ws: bool, sparse: bool, k96: bool = False):
    """(valid M values, valid N values) for one variant (PTX Table 39)."""
    if kind in BLOCK_SCALED_KINDS:
        if cta_group == 1:
            return (128,), _n_values(8, 8)
        if k96 or sparse:  # 256xNxK1 (K=96) and the sparse ::2 shapes exist only with M=256
            return (256,), _n_values(16, 16)
        return (128, 256), _n_values(16, 16)
    if ws:
        return (32, 64, 128), ((64, 128) if sparse else (64, 128, 256))
    if cta_group == 1:
        ns = (8, 16, 24, 32) + _n_values(48, 16) if kind == "i8" else _n_values(8, 8)
        return (64, 128), ns
    return (128, 256), (_n_values(32, 32) if kind == "i8" else _n_values(16, 16))


def _span(vals) -> str:
    vals = list(vals)
    if len(vals) > 4:
        steps = {b - a for a, b in zip(vals, vals[1:])}
        if len(steps) == 1:
            return f"{vals[0]}..{vals[-1]} step {steps.pop()}"
        return f"{{{', '.join(map(str, vals[:4]))}, then {vals[4]}..{vals[-1]} step {vals[-1] - vals[-2]}}}"
    return "{" + ", ".join(map(str, vals)) + "}"


def _variant(kind, cta_group, ws=False, sparse=False, k96=False) -> str:
    return (f"kind::{kind} cta_group::{cta_group}" + (" .ws" if ws else "") + (" sparse" if sparse else "")
            + (" K=96" if k96 else ""))


def _check_mn(kind, M, N, cta_group, ws, sparse, k96=False):
    M = _as_int("M", M)
    N = _as_int("N", N)
    ms, ns = _valid_mn(kind, cta_group, ws, sparse, k96)
    v = _variant(kind, cta_group, ws, sparse, k96)
    if M not in ms:
        raise ValueError(f"M={M} is not valid for {v}: M must be one of {_span(ms)} (PTX Table 39)")
    if N not in ns:
        raise ValueError(f"N={N} is not valid for {v}: N must be in {_span(ns)} (PTX Table 39)")
    return M, N


def _check_common(kind, a_type, b_type, a_major, b_major, negate_a, negate_b, sparse, cta_group):
    types = IDESC_TYPES[kind]
    a_type = _norm_name("a_type", a_type, types, f"A type for kind::{kind}")
    b_type = _norm_name("b_type", b_type, types, f"B type for kind::{kind}")
    a_major = _norm_name("a_major", a_major, _MAJORS, "major-ness")
    b_major = _norm_name("b_major", b_major, _MAJORS, "major-ness")
    negate_a = _as_bool("negate_a", negate_a)
    negate_b = _as_bool("negate_b", negate_b)
    sparse = _as_bool("sparse", sparse)
    cta_group = _as_int("cta_group", cta_group)
    if cta_group not in (1, 2):
        raise ValueError(f"cta_group={cta_group}: must be 1 or 2")
    if kind in ("mxf4", "mxf4nvf4"):
        for nm, mj in (("a_major", a_major), ("b_major", b_major)):
            if mj != "K":
                raise ValueError(f"{nm}={mj!r}: kind::{kind} supports no transpose, both operands "
                                 f"must be K-major (PTX Table 49)")
    for nm, t, mj in (("a_major", a_type, a_major), ("b_major", b_type, b_major)):
        if mj == "MN" and t in _SUB_BYTE:
            raise ValueError(f"{nm}='MN' with {t}: 4- and 6-bit operands must be K-major (CUTLASS "
                             f"InstrDescriptor: MN-major is valid only for 8-bit and wider types)")
    return a_type, b_type, a_major, b_major, negate_a, negate_b, sparse, cta_group


def _check_transpose_b_n(b_type, b_major, N, cta_group):
    # PTX Table 50: 8-bit B transposed (MN-major) needs N step 16 (cta_group::1) / 32 (::2)
    step = 16 if cta_group == 1 else 32
    if b_major == "MN" and b_type in _EIGHT_BIT and N % step:
        raise ValueError(f"N={N}: an MN-major 8-bit B ({b_type}) needs N to be a multiple of {step} "
                         f"with cta_group::{cta_group} (PTX Table 50)")


def umma_idesc(kind: str, a_type: str, b_type: str, d_type: str, M: int, N: int,
               a_major: str = "K", b_major: str = "K", negate_a: bool = False, negate_b: bool = False,
               sparse: bool = False, sparse_id: int = 0, saturate: bool = False, max_shift: int = 0,
               cta_group: int = 1, ws: bool = False) -> int:
    """The 32-bit tcgen05.mma instruction descriptor for kind::f16, tf32, f8f6f4 and i8 (PTX Table 42).

    Types: kind f16: a/b "f16" or "bf16" (the same), d "f32" (or "f16" with f16 inputs); tf32:
    "tf32" -> "f32"; f8f6f4: a/b any of e4m3, e5m2, e2m3, e3m2, e2m1, d "f16"/"f32"; i8: a/b "s8"/"u8",
    d "s32". ``a_major``/``b_major``: "K" or "MN" (the transpose bits). ``negate_*``: not for i8.
    ``saturate``: i8 only. ``sparse``/``sparse_id`` (0-3, the sparsity selector). ``max_shift``:
    0, 8, 16 or 32, only for the ``.ws`` variants (``ws=True``). ``cta_group`` 1 or 2 picks the
    shape table; M/N must be a shape of PTX Table 39 for the variant.
    """
    kind = _norm_name("kind", kind, {k: 0 for k in DENSE_KINDS}, "dense MMA kind (block-scaled kinds "
                      "use umma_idesc_block_scaled)")
    (a_type, b_type, a_major, b_major, negate_a, negate_b, sparse,
     cta_group) = _check_common(kind, a_type, b_type, a_major, b_major, negate_a, negate_b, sparse,
                                cta_group)
    d_type = _norm_name("d_type", d_type, {k: 0 for k in _KIND_DTYPES[kind]}, f"D type for kind::{kind}")
    ws = _as_bool("ws", ws)
    saturate = _as_bool("saturate", saturate)
    sparse_id = _as_int("sparse_id", sparse_id)
    max_shift = _as_int("max_shift", max_shift)
    if kind == "f16" and a_type != b_type:
        raise ValueError(f"a_type={a_type!r}, b_type={b_type!r}: kind::f16 needs A and B of the same "
                         f"type (PTX Table 39)")
    if kind == "f16" and d_type == "f16" and a_type != "f16":
        raise ValueError(f"d_type='f16' with {a_type} inputs: an f16 accumulator needs f16 inputs; "
                         f"use d_type='f32' (PTX Table 39)")
    if kind == "i8" and (negate_a or negate_b):
        raise ValueError("negate_a/negate_b: kind::i8 supports no negate (PTX Table 49)")
    if saturate and kind != "i8":
        raise ValueError(f"saturate=True: only kind::i8 saturates (PTX Table 42); kind is {kind}")
    if not 0 <= sparse_id <= 3:
        raise ValueError(f"sparse_id={sparse_id}: the sparsity selector is 0..3")
    if sparse_id and not sparse:
        raise ValueError(f"sparse_id={sparse_id}: the sparsity selector needs sparse=True")
    if max_shift not in _MAX_SHIFT:
        raise ValueError(f"max_shift={max_shift}: must be 0, 8, 16 or 32")
    if max_shift and not ws:
        raise ValueError(f"max_shift={max_shift}: the B-reuse shift exists only for the .ws variants "
                         f"(pass ws=True)")
    if ws and cta_group != 1:
        raise ValueError("ws=True with cta_group=2: the .ws variants exist only for cta_group::1 "
                         "(PTX Table 39)")
    M, N = _check_mn(kind, M, N, cta_group, ws, sparse)
    _check_transpose_b_n(b_type, b_major, N, cta_group)
    types = IDESC_TYPES[kind]
    return (sparse_id | int(sparse) << 2 | int(saturate) << 3 | D_TYPES[d_type] << 4
            | types[a_type] << 7 | types[b_type] << 10 | int(negate_a) << 13 | int(negate_b) << 14
            | _MAJORS[a_major] << 15 | _MAJORS[b_major] << 16 | (N >> 3) << 17 | (M >> 4) << 24
            | _MAX_SHIFT[max_shift] << 30)


def umma_idesc_block_scaled(kind: str, a_type: str, b_type: str, scale_type: str, M: int, N: int,
                            a_sf_id: int = 0, b_sf_id: int = 0, a_major: str = "K", b_major: str = "K",
                            negate_a: bool = False, negate_b: bool = False, sparse: bool = False,
                            cta_group: int = 1, k96: bool = False) -> int:
    """The 32-bit tcgen05.mma instruction descriptor for the block-scaled kinds (PTX Tables 43, 44).

    ``kind``: "mxf8f6f4" (a/b e4m3, e5m2, e2m3, e3m2, e2m1; scale "ue8m0"), "mxf4" (e2m1, "ue8m0") or
    "mxf4nvf4" (e2m1, "ue8m0" or "ue4m3"; NVFP4 is e2m1 x ue4m3). ``a_sf_id``/``b_sf_id`` pick the
    scale-factor slot in the TMEM word: 0-3 for mxf8f6f4 (scale_vec::1X, byte), 0 or 2 for
    mxf4/mxf4nvf4 (2X, half word), and 0 with ue4m3 (4X uses the whole word). D is always f32.
    mxf4/mxf4nvf4 allow no transpose. ``k96``: dense K=96 (sm_103a), cta_group::2 with M=256 only.
    """
    kind = _norm_name("kind", kind, {k: 0 for k in BLOCK_SCALED_KINDS}, "block-scaled MMA kind")
    (a_type, b_type, a_major, b_major, negate_a, negate_b, sparse,
     cta_group) = _check_common(kind, a_type, b_type, a_major, b_major, negate_a, negate_b, sparse,
                                cta_group)
    scale_type = _norm_name("scale_type", scale_type, {k: 0 for k in _KIND_SCALES[kind]},
                            f"scale type for kind::{kind}")
    k96 = _as_bool("k96", k96)
    ids = (0, 1, 2, 3) if kind == "mxf8f6f4" else ((0,) if scale_type == "ue4m3" else (0, 2))
    why = {(0, 1, 2, 3): "scale_vec::1X picks a byte", (0, 2): "scale_vec::2X picks a half word",
           (0,): "ue4m3 means scale_vec::4X, which uses the whole word"}[ids]
    out = []
    for nm, v in (("a_sf_id", a_sf_id), ("b_sf_id", b_sf_id)):
        v = _as_int(nm, v)
        if v not in ids:
            raise ValueError(f"{nm}={v}: kind::{kind} with {scale_type} allows scale-factor ids "
                             f"{_span(ids)} ({why}; PTX sec. 9.7.16.10.7)")
        out.append(v)
    a_sf_id, b_sf_id = out
    if k96:
        if kind == "mxf8f6f4":
            raise ValueError("k96=True: K=96 exists only for kind::mxf4 and kind::mxf4nvf4")
        if cta_group != 2 or sparse:
            raise ValueError("k96=True: K=96 is a dense cta_group::2 shape (256xNx96, sm_103a); "
                             "pass cta_group=2, sparse=False (PTX Table 39)")
    M, N = _check_mn(kind, M, N, cta_group, False, sparse, k96)
    _check_transpose_b_n(b_type, b_major, N, cta_group)
    types = IDESC_TYPES[kind]
    return (int(sparse) << 2 | b_sf_id << 4 | types[a_type] << 7 | types[b_type] << 10
            | int(negate_a) << 13 | int(negate_b) << 14 | _MAJORS[a_major] << 15 | _MAJORS[b_major] << 16
            | (N >> 3) << 17 | SCALE_TYPES[scale_type] << 23 | (M >> 7) << 27 | a_sf_id << 29
            | int(k96) << 31)


# ------------------------------------------------------------------------------------------------
# explain: the inverse
# ------------------------------------------------------------------------------------------------

EXPLAIN_KINDS = ("wgmma-smem", "umma-smem", "umma-idesc", "umma-idesc-bs")


def _bits(value: int, lo: int, width: int) -> int:
    return (value >> lo) & ((1 << width) - 1)


@dataclass
class Explained:
    """A decoded descriptor. ``fields`` are the builder's keyword arguments (``build(**fields) ==
    value``); ``rows`` are (bit range, field, raw value, meaning) for the table ``str()`` prints;
    ``alternatives`` are the other variants the same bits are valid for (an idesc does not encode its
    kind or cta_group; e.g. bf16 x bf16 and e5m2 x e5m2 share their codes)."""
    kind: str
    value: int
    width: int
    fields: dict
    rows: list
    variant: str = ""
    alternatives: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": f"{self.value:#0{self.width // 4 + 2}x}", "variant": self.variant,
                "fields": dict(self.fields), "alternatives": list(self.alternatives),
                "notes": list(self.notes)}

    def __str__(self) -> str:
        head = f"{self.kind} {self.value:#0{self.width // 4 + 2}x}" + (f"  ({self.variant})" if self.variant else "")
        w = max(len(r[1]) for r in self.rows)
        lines = [head, f"  {'bits':<6} {'field':<{w}} {'raw':>6}  meaning"]
        for bits, name, raw, meaning in self.rows:
            lines.append(f"  {bits:<6} {name:<{w}} {raw:>6}  {meaning}")
        same, other = [], []
        for a in self.alternatives:
            af = a["fields"]
            diff = {k: v for k, v in af.items()
                    if self.fields.get(k) != v and k not in ("kind", "cta_group", "ws")}
            if af.get("kind") == self.fields.get("kind") and not diff:
                same.append(a["variant"].split(" ", 1)[1])
            else:
                desc = f"kind::{af['kind']}" + (": " + ", ".join(f"{k}={v}" for k, v in diff.items())
                                               if diff else "")
                if desc not in other:
                    other.append(desc)
        if same:
            lines.append("  the same fields are also valid for: " + ", ".join(same))
        for o in other:
            lines.append(f"  the same bits also decode as {o}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _check_width(value, width: int, kind: str) -> int:
    value = _as_int("value", value)
    if not 0 <= value < 1 << width:
        raise ValueError(f"value={value:#x}: a {kind} descriptor is a {width}-bit unsigned value")
    return value


def _reserved(value: int, spans, what: str):
    for lo, width in spans:
        if _bits(value, lo, width):
            rng = f"{lo}" if width == 1 else f"{lo}-{lo + width - 1}"
            raise ValueError(f"{what} {value:#x}: reserved bits {rng} are set "
                             f"({_bits(value, lo, width):#b}); they must be 0")


def _explain_smem(value: int, sm100: bool) -> Explained:
    kind = "umma-smem" if sm100 else "wgmma-smem"
    value = _check_width(value, 64, kind)
    if sm100:
        version = _bits(value, 46, 3)
        if version != _UMMA_VERSION:
            hint = ""
            if version == 0 and _bits(value, 61, 1) == 0:
                hint = " - this looks like an sm_90 wgmma descriptor (explain it with kind 'wgmma-smem')"
            raise ValueError(f"{kind} {value:#x}: version bits 46-48 are {version:#05b}, every sm_100 "
                             f"descriptor needs the fixed constant 0b001 (bit 46 set){hint}")
        _reserved(value, ((14, 2), (30, 2), (53, 8)), kind)
        code = _bits(value, 61, 3)
        names = {v: k for k, v in UMMA_SWIZZLE.items()}
        if code not in names:
            raise ValueError(f"{kind} {value:#x}: swizzle (bits 61-63) code {code} is invalid; valid: "
                             + ", ".join(f"{v} {k}" for k, v in UMMA_SWIZZLE.items()) + " (PTX Table 40)")
    else:
        if _bits(value, 46, 1) and not _bits(value, 47, 2):
            raise ValueError(f"{kind} {value:#x}: bit 46 is set - this looks like an sm_100 tcgen05 "
                             f"descriptor (explain it with kind 'umma-smem'); bits 46-48 are unused on sm_90")
        _reserved(value, ((14, 2), (30, 2), (46, 3), (52, 10)), kind)
        code = _bits(value, 62, 2)
        names = {v: k for k, v in WGMMA_SWIZZLE.items()}
    f = {"start_addr": _bits(value, 0, 14) << 4, "lbo": _bits(value, 16, 14) << 4,
         "sbo": _bits(value, 32, 14) << 4, "swizzle": names[code], "base_offset": _bits(value, 49, 3)}
    if sm100:
        f["lbo_mode"] = "absolute" if _bits(value, 52, 1) else "relative"
    try:
        rebuilt = (umma_smem_desc if sm100 else wgmma_smem_desc)(**f)
    except ValueError as e:
        raise ValueError(f"{kind} {value:#x}: {e}") from None
    assert rebuilt == value, (hex(rebuilt), hex(value))
    lbo_what = "LBO absolute address" if f.get("lbo_mode") == "absolute" else "LBO, leading-dim byte offset"
    rows = [("0-13", "start_addr", _bits(value, 0, 14), f"{f['start_addr']:#x} bytes (raw << 4)"),
            ("16-29", "lbo", _bits(value, 16, 14), f"{f['lbo']} bytes: {lbo_what}"),
            ("32-45", "sbo", _bits(value, 32, 14), f"{f['sbo']} bytes: SBO, stride-dim byte offset")]
    if sm100:
        rows.append(("46-48", "version", _bits(value, 46, 3), "0b001, fixed for sm_100 (ok)"))
    rows.append(("49-51", "base_offset", f["base_offset"],
                 "0: pattern starts on its repeat boundary" if f["base_offset"] == 0
                 else "swizzle pattern starts off its repeat boundary"))
    if sm100:
        rows.append(("52", "lbo_mode", _bits(value, 52, 1), f["lbo_mode"]))
        rows.append(("61-63", "swizzle", code, f["swizzle"]))
    else:
        rows.append(("62-63", "swizzle", code, f["swizzle"]))
    notes = []
    if f["swizzle"] != "none" and f["base_offset"] == 0 and f["start_addr"] % SWIZZLE_REPEAT_BYTES[f["swizzle"]]:
        notes.append(f"start_addr is not {SWIZZLE_REPEAT_BYTES[f['swizzle']]}-B aligned: base_offset 0 is "
                     f"right only if the swizzle pattern itself starts on that boundary (a K step inside "
                     f"an atom is fine)")
    return Explained(kind, value, 64, f, rows, "sm_100 tcgen05" if sm100 else "sm_90 wgmma", notes=notes)


def _names(table) -> dict:
    return {v: k for k, v in table.items()}


def _decode_types(value: int, kind: str) -> dict:
    """{"kind", "a_type", "b_type"} of an instruction descriptor (bits 7-9, 10-12) for ``kind``."""
    types = _names(IDESC_TYPES[kind])
    d = {"kind": kind}
    for nm, code in (("a_type", _bits(value, 7, 3)), ("b_type", _bits(value, 10, 3))):
        if code not in types:
            raise ValueError(f"{nm} code {code} is not a kind::{kind} type (valid: "
                             + ", ".join(f"{v} {k}" for k, v in IDESC_TYPES[kind].items()) + ")")
        d[nm] = types[code]
    return d


def _decode_dense(value: int, kind: str, cta_group: int, ws: bool) -> dict:
    d = _decode_types(value, kind)
    dcode = _bits(value, 4, 2)
    dn = _names(D_TYPES).get(dcode)
    if dn not in _KIND_DTYPES[kind]:
        raise ValueError(f"d_type code {dcode} is not valid for kind::{kind} (valid: "
                         + ", ".join(f"{D_TYPES[t]} {t}" for t in _KIND_DTYPES[kind]) + ")")
    d["d_type"] = dn
    m_raw = _bits(value, 24, 5)
    d.update(M=m_raw << 4, N=_bits(value, 17, 6) << 3,
             a_major="MN" if _bits(value, 15, 1) else "K", b_major="MN" if _bits(value, 16, 1) else "K",
             negate_a=bool(_bits(value, 13, 1)), negate_b=bool(_bits(value, 14, 1)),
             sparse=bool(_bits(value, 2, 1)), sparse_id=_bits(value, 0, 2),
             saturate=bool(_bits(value, 3, 1)), max_shift=(0, 8, 16, 32)[_bits(value, 30, 2)],
             cta_group=cta_group, ws=ws)
    return d


def _decode_bs(value: int, kind: str, cta_group: int) -> dict:
    d = _decode_types(value, kind)
    scale = _names(SCALE_TYPES)[_bits(value, 23, 1)]
    if scale not in _KIND_SCALES[kind]:
        raise ValueError(f"scale_type {scale} (bit 23 = {_bits(value, 23, 1)}) is not valid for kind::{kind}"
                         f" (valid: {', '.join(_KIND_SCALES[kind])})")
    d.update(scale_type=scale, M=_bits(value, 27, 2) << 7,
             N=_bits(value, 17, 6) << 3, a_sf_id=_bits(value, 29, 2), b_sf_id=_bits(value, 4, 2),
             a_major="MN" if _bits(value, 15, 1) else "K", b_major="MN" if _bits(value, 16, 1) else "K",
             negate_a=bool(_bits(value, 13, 1)), negate_b=bool(_bits(value, 14, 1)),
             sparse=bool(_bits(value, 2, 1)), cta_group=cta_group, k96=bool(_bits(value, 31, 1)))
    return d


def _idesc_rows(value: int, f: dict, bs: bool) -> list:
    t = lambda nm: f"{f[nm]}"  # noqa: E731
    if bs:
        rows = [("2", "sparse", _bits(value, 2, 1), "sparse" if f["sparse"] else "dense"),
                ("4-5", "b_sf_id", f["b_sf_id"], "B scale-factor id"),
                ("7-9", "a_type", _bits(value, 7, 3), t("a_type")),
                ("10-12", "b_type", _bits(value, 10, 3), t("b_type"))]
    else:
        rows = [("0-1", "sparse_id", f["sparse_id"], "sparsity selector" if f["sparse"] else "-"),
                ("2", "sparse", _bits(value, 2, 1), "sparse" if f["sparse"] else "dense"),
                ("3", "saturate", _bits(value, 3, 1), "saturate" if f["saturate"] else "no"),
                ("4-5", "d_type", _bits(value, 4, 2), t("d_type")),
                ("7-9", "a_type", _bits(value, 7, 3), t("a_type")),
                ("10-12", "b_type", _bits(value, 10, 3), t("b_type"))]
    rows += [("13", "negate_a", _bits(value, 13, 1), "negate" if f["negate_a"] else "no"),
             ("14", "negate_b", _bits(value, 14, 1), "negate" if f["negate_b"] else "no"),
             ("15", "a_major", _bits(value, 15, 1), f"{f['a_major']}-major"),
             ("16", "b_major", _bits(value, 16, 1), f"{f['b_major']}-major"),
             ("17-22", "N", _bits(value, 17, 6), f"N = {f['N']} (raw << 3)")]
    if bs:
        rows += [("23", "scale_type", _bits(value, 23, 1), f["scale_type"]),
                 ("27-28", "M", _bits(value, 27, 2), f"M = {f['M']} (raw << 7)"),
                 ("29-30", "a_sf_id", f["a_sf_id"], "A scale-factor id"),
                 ("31", "k96", _bits(value, 31, 1), "K=96 (sm_103a)" if f["k96"] else "K=64/32 (dense)")]
    else:
        rows += [("24-28", "M", _bits(value, 24, 5), f"M = {f['M']} (raw << 4)"),
                 ("30-31", "max_shift", _bits(value, 30, 2),
                  f"{f['max_shift']}" if f["max_shift"] else "no shift")]
    return rows


def _explain_idesc(value: int, bs: bool, mma_kind=None, cta_group=None, ws=None) -> Explained:
    kind = "umma-idesc-bs" if bs else "umma-idesc"
    value = _check_width(value, 32, kind)
    all_kinds = BLOCK_SCALED_KINDS if bs else DENSE_KINDS
    if mma_kind is not None:
        mma_kind = _norm_name("mma_kind", mma_kind, {k: 0 for k in all_kinds},
                              f"MMA kind for {kind}")
    if bs:
        # PTX Tables 43/44. (CUTLASS's InstrDescriptorBlockScaled keeps a sparse_id2 field in bits
        # 0-1; the PTX ISA lists those bits as reserved, and the ISA is the authority here.)
        _reserved(value, ((0, 2), (3, 1), (6, 1), (24, 3)), kind)
    else:
        _reserved(value, ((6, 1), (23, 1), (29, 1)), kind)
    kinds = [mma_kind] if mma_kind else list(all_kinds)
    if bs:
        # mxf4 first: with ue8m0 and E2M1 codes it is the plain MXFP4 reading
        kinds.sort(key=("mxf4", "mxf4nvf4", "mxf8f6f4").index)
    groups = [_as_int("cta_group", cta_group)] if cta_group is not None else [1, 2]
    wss = [bool(ws)] if ws is not None else ([False] if bs else [False, True])
    good, errors = [], []
    for k in kinds:
        for g in groups:
            for w in wss:
                try:
                    f = _decode_bs(value, k, g) if bs else _decode_dense(value, k, g, w)
                except ValueError as e:
                    errors.append((0, k, g, w, str(e)))
                    continue
                try:
                    rebuilt = umma_idesc_block_scaled(**f) if bs else umma_idesc(**f)
                except ValueError as e:
                    errors.append((1, k, g, w, str(e)))
                    continue
                if rebuilt != value:  # a bit no field of this kind owns (bit 12 / 31 for some kinds)
                    extra = rebuilt ^ value
                    errors.append((1, k, g, w, f"bits {extra:#x} are reserved for kind::{k}"))
                    continue
                good.append(f)
    if not good:
        # report the variant that got furthest (types decoded), preferring the first one tried
        stage, k, g, w, msg = max(errors, key=lambda e: e[0])
        others = sorted({f"kind::{e[1]}" for e in errors if e[1] != k})
        also = f" (not valid for {', '.join(others)} either)" if others else ""
        raise ValueError(f"{kind} {value:#010x}: {msg}{also}")
    f = good[0]
    variant = _variant(f["kind"], f["cta_group"], f.get("ws", False), False, f.get("k96", False))
    alts = []
    for a in good[1:]:
        diff = {key: v for key, v in a.items() if f.get(key) != v and key not in ("kind", "cta_group", "ws")}
        alts.append({"variant": _variant(a["kind"], a["cta_group"], a.get("ws", False))
                     + (" (" + ", ".join(f"{key}={v}" for key, v in diff.items()) + ")" if diff else ""),
                     "fields": a})
    notes = []
    if not bs and f["kind"] == "tf32" and "MN" in (f["a_major"], f["b_major"]):
        notes.append("kind::tf32 transposes only with the 128B_base32B swizzle (PTX sec. 9.7.16.10.1)")
    if bs and f["kind"] == "mxf4nvf4" and f["scale_type"] == "ue8m0":
        notes.append("ue8m0 with mxf4nvf4: the instruction's .scale_vec (2X or 4X) is not in the descriptor;"
                     " 4X needs both scale-factor ids 0")
    return Explained(kind, value, 32, f, _idesc_rows(value, f, bs), variant, alts, notes)


def explain(value: int, kind: str, *, mma_kind: str | None = None, cta_group: int | None = None,
            ws: bool | None = None) -> Explained:
    """Decode ``value`` as a descriptor of ``kind`` ("wgmma-smem", "umma-smem", "umma-idesc",
    "umma-idesc-bs") into an ``Explained`` (``.fields``, ``str()`` for a table); ``ValueError`` names
    the offending field when no builder could have produced the value.

    An instruction descriptor does not carry its MMA kind, cta_group or .ws-ness; pass them to pin
    the reading, else every variant is tried (cta_group::1 and non-.ws first, kinds in the order
    f16, tf32, f8f6f4, i8 / mxf4, mxf4nvf4, mxf8f6f4) and the rest show up in ``.alternatives``.
    """
    kind = _norm_name("kind", kind, {k: 0 for k in EXPLAIN_KINDS}, "descriptor kind")
    if kind in ("wgmma-smem", "umma-smem"):
        if mma_kind is not None or cta_group is not None or ws is not None:
            raise ValueError(f"mma_kind/cta_group/ws apply to instruction descriptors, not {kind}")
        return _explain_smem(value, kind == "umma-smem")
    if kind == "umma-idesc-bs" and ws:
        raise ValueError("ws=True: the block-scaled kinds have no .ws variants")
    return _explain_idesc(value, kind == "umma-idesc-bs", mma_kind, cta_group, ws)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

def explain_desc_main(argv=None) -> int:
    """``python -m dsv4_numba explain-desc VALUE --kind KIND [--mma-kind K] [--cta-group N] [--ws]
    [--json]``: print the decoded table (0) or the error (2)."""
    p = argparse.ArgumentParser(
        prog="python -m dsv4_numba explain-desc",
        description="Decode a wgmma/tcgen05 descriptor into named fields; invalid values exit 2.")
    p.add_argument("value", help="the descriptor, hex (0x...) or decimal")
    p.add_argument("--kind", required=True, choices=EXPLAIN_KINDS,
                   help="wgmma-smem (sm_90 64-bit), umma-smem (sm_100 64-bit), umma-idesc "
                        "(kind::f16/tf32/f8f6f4/i8), umma-idesc-bs (kind::mxf8f6f4/mxf4/mxf4nvf4)")
    p.add_argument("--mma-kind", choices=DENSE_KINDS + BLOCK_SCALED_KINDS,
                   help="pin the MMA kind of an instruction descriptor (the bits do not say)")
    p.add_argument("--cta-group", type=int, choices=(1, 2), help="pin cta_group (default: try 1, then 2)")
    p.add_argument("--ws", action=argparse.BooleanOptionalAction, default=None,
                   help="pin the .ws variant (default: try both)")
    p.add_argument("--json", action="store_true", help="print the fields as JSON instead of a table")
    args = p.parse_args(argv)
    try:
        text = args.value.strip().replace("_", "")
        value = int(text, 0)
    except ValueError:
        print(f"error: {args.value!r} is not a hex (0x...) or decimal integer", file=sys.stderr)
        return 2
    try:
        e = explain(value, args.kind, mma_kind=args.mma_kind, cta_group=args.cta_group, ws=args.ws)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(e.to_dict(), indent=2) if args.json else e)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(explain_desc_main())
