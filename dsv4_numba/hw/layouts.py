"""Who holds which accumulator element: the wgmma register fragment (sm_90a) and the tcgen05
accumulator placement in Tensor Memory (sm_100a) — the layouts that cost days when guessed.

Sources: PTX ISA 9.1 §9.7.15.5.1.1 (wgmma D fragments, given there as figures) with the exact
mapping of CUTLASS ``CLayout_64xN = ((4,8,4),(2,2,N/8)) : ((128,1,16),(64,8,512))``; PTX ISA
§9.7.16.10.4 / 9.7.16.8 for TMEM data-path layouts D (M=128) and F (M=64) and the per-warp lane
quadrants; CUTLASS ``copy_traits_sm100.hpp`` for the tcgen05.ld thread/register mapping. These are
functions of the documents above, checked here for internal consistency (bijections, quadrants).
The two wgmma maps below are verified on hardware: tests/gpu/test_ptx_gpu.py (the ``hw.microkernels``
wgmma tiles, bf16/e4m3, A from shared memory and from registers, N = 8..256) matched the float64
oracle bit for bit on an H100 on 2026-11-25 — the accumulator through ``wgmma_acc_coord``, the
register-A fragment through the same map as ``wgmma_a_coord`` (tests/test_microkernels_emu.py
checks that the microkernel's fragment loads are this function). The TMEM ones are checked by
nothing but the documents yet (no Blackwell GPU is lent).

wgmma m64nNk*, f32 accumulators (N/2 registers per thread, 128 threads = 4 warps)::

    thread t = 32*w + l, register i:
      row = 16*w + l//4 + 8*((i//2) % 2)
      col = 8*(i//4) + 2*(l % 4) + (i % 2)

    rows 0-15 belong to warp 0, 16-31 to warp 1, ...; in every 8-column group a quad of lanes
    (l//4 fixed) holds two adjacent columns in two rows 8 apart — the mma.sync C-fragment pattern.

wgmma A from registers (RS), one instruction = K of 32 bytes: k16 for bf16/f16, k32 for e4m3/e5m2;
4 x 32-bit registers per thread, 32/bits elements per register (lowest bits = lowest k)::

    thread t = 32*w + l, register r, element e:
      row = 16*w + l//4 + 8*(r % 2)
      k   = (K/2)*(r//2) + (32/bits)*(l % 4) + e

    the mma.sync A pattern per warp: registers 0/1 cover k < K/2 (rows l//4 and +8), 2/3 the upper
    half; a quad of lanes holds one row's K/2 contiguous elements of each half.

tcgen05 accumulator D[m][n] (32-bit TMEM cells: 128 lanes x 512 columns, address = lane<<16 | col)::

    M=128, cta_group::1 (layout D):   lane = m,                            column = base + n
    M=64,  cta_group::1 (layout F):   lane = (m % 16) + 32*(m // 16) [+16], column = base + n
                                      (only the low — or, aligned at 16, the high — 16 lanes of
                                       each 32-lane quadrant are used)
    warp w of a warpgroup may tcgen05.ld/st only lanes 32*(w%4) .. 32*(w%4)+31.
"""
from __future__ import annotations


def wgmma_acc_coord(thread: int, i: int, n: int) -> tuple[int, int]:
    """(row, col) of f32 accumulator register ``i`` of ``thread`` (0..127) in an m64nN tile."""
    if not (0 <= thread < 128 and 0 <= i < n // 2 and n % 8 == 0 and 8 <= n <= 256):
        raise ValueError(f"thread {thread}, register {i} out of range for m64n{n} (N in 8..256 step 8)")
    w, lane = divmod(thread, 32)
    return 16 * w + lane // 4 + 8 * ((i // 2) % 2), 8 * (i // 4) + 2 * (lane % 4) + (i % 2)


def wgmma_acc_owner(row: int, col: int, n: int) -> tuple[int, int]:
    """Inverse of ``wgmma_acc_coord``: (thread, register) holding D[row][col] of an m64nN tile."""
    if not (0 <= row < 64 and 0 <= col < n):
        raise ValueError(f"({row}, {col}) is outside a 64 x {n} tile")
    w, r = divmod(row, 16)
    half, quad = divmod(r, 8)
    lane = 4 * quad + (col % 8) // 2
    return 32 * w + lane, 4 * (col // 8) + 2 * half + (col % 2)


def _a_geometry(bits: int) -> tuple[int, int]:
    if bits not in (8, 16):
        raise ValueError(f"{bits}-bit A: wgmma takes A from registers for 16-bit (bf16/f16, k16) and "
                         "8-bit (e4m3/e5m2, k32) types here")
    return 256 // bits, 32 // bits          # K of one instruction, elements per 32-bit register


def wgmma_a_coord(thread: int, r: int, e: int, bits: int) -> tuple[int, int]:
    """(row, k) of element ``e`` of A register ``r`` (0..3) of ``thread`` (0..127) for a register-A
    wgmma m64nNk{256/bits} — ``bits`` 16 (bf16/f16) or 8 (e4m3/e5m2); k is within the instruction."""
    kdim, epr = _a_geometry(bits)
    if not (0 <= thread < 128 and 0 <= r < 4 and 0 <= e < epr):
        raise ValueError(f"thread {thread}, register {r}, element {e} out of range for {bits}-bit A "
                         f"(128 threads, 4 registers, {epr} elements each)")
    w, lane = divmod(thread, 32)
    return 16 * w + lane // 4 + 8 * (r % 2), (kdim // 2) * (r // 2) + epr * (lane % 4) + e


def wgmma_a_owner(row: int, k: int, bits: int) -> tuple[int, int, int]:
    """Inverse of ``wgmma_a_coord``: (thread, register, element) holding A[row][k] of one instruction."""
    kdim, epr = _a_geometry(bits)
    if not (0 <= row < 64 and 0 <= k < kdim):
        raise ValueError(f"({row}, {k}) is outside a 64 x {kdim} A operand")
    w, rr = divmod(row, 16)
    half, g = divmod(rr, 8)
    khalf, kk = divmod(k, kdim // 2)
    c, e = divmod(kk, epr)
    return 32 * w + 4 * g + c, 2 * khalf + half, e


def tmem_d_coord(m: int, n: int, M: int, lane_align: int = 0) -> tuple[int, int]:
    """(TMEM lane, column offset) of accumulator D[m][n] for a cta_group::1 tcgen05.mma of M rows
    (128: layout D; 64: layout F, ``lane_align`` 0 or 16)."""
    if M == 128:
        if not 0 <= m < 128:
            raise ValueError(f"row {m} outside M=128")
        return m, n
    if M == 64:
        if not 0 <= m < 64 or lane_align not in (0, 16):
            raise ValueError(f"row {m} outside M=64, or lane alignment {lane_align} not 0/16")
        return (m % 16) + 32 * (m // 16) + lane_align, n
    raise ValueError(f"M={M}: only 64 and 128 (cta_group::1, no .ws) are described here")


def tmem_warp_may_access(warp: int, lane: int) -> bool:
    """The tcgen05.ld/st lane restriction: warp ``warp`` reaches lanes 32*(warp%4) .. +31."""
    return 32 * (warp % 4) <= lane < 32 * (warp % 4) + 32


def tcgen05_ld_32x32b(thread_in_warp: int, j: int, warp: int, col0: int = 0) -> tuple[int, int]:
    """(TMEM lane, column) delivered to register ``j`` of a thread by tcgen05.ld.32x32b.xN issued
    by ``warp`` at column ``col0``: thread t reads lane 32*(warp%4)+t, register j column col0+j."""
    return 32 * (warp % 4) + thread_in_warp, col0 + j


def wgmma_picture(n: int = 16) -> str:
    """Text picture of an m64nN accumulator: each cell is 'thread.register'."""
    rows = []
    for r in range(64):
        rows.append(" ".join(f"{t:3d}.{i:<2d}" for t, i in (wgmma_acc_owner(r, c, n)
                                                              for c in range(n))))
    head = "      " + " ".join(f"c{c:<5d}" for c in range(n))
    return head + "\n" + "\n".join(f"r{r:<4d} {line}" for r, line in enumerate(rows))


def tmem_picture(M: int, lane_align: int = 0) -> str:
    """Text picture of which TMEM lanes hold which accumulator rows (32-lane quadrants marked)."""
    owner = {tmem_d_coord(m, 0, M, lane_align)[0]: m for m in range(M)}
    out = []
    for q in range(4):
        cells = " ".join(f"{owner[l]:3d}" if l in owner else "  ." for l in range(32 * q, 32 * q + 32))
        out.append(f"warp {q} lanes {32 * q:3d}-{32 * q + 31:3d}: {cells}")
    return f"M={M} accumulator rows by TMEM lane (lane alignment {lane_align}):\n" + "\n".join(out)
