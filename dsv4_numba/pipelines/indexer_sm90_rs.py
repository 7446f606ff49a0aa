"""Variants v4 and v6 of the fused sm_90a indexer: keys decoded straight into wgmma's A registers
(v4: from global memory; v6: from a shared-memory ring the TMA unit or a cp.async gather fills);
q, the only shared-memory wgmma operand, loaded once per CTA.

v2 (``indexer_sm90``) puts 64 heads of one token on wgmma's M and 128 keys on N: every key tile
goes through shared memory (decode, store, fence, barrier) and the head sum runs across rows
(a transpose-reduce of 28 shuffles and a shared-memory exchange a token). v4 swaps the roles::

    A (M = 64 keys, registers)  x  B (N = 64 heads of one token, shared memory)  ->  acc[key, head]

* **Keys never touch shared memory.** In the m64k16 A fragment (PTX ISA 9.1 §9.7.15.5.1.1) lane
  l of warp w holds rows 16w + l/4 (+ 8) and, in k-step kk, the columns {2c, 2c+1, 2c+8, 2c+9}
  (c = l % 4). The dot product is a sum over D, so any permutation of D applied to both sides
  leaves it unchanged: v4 maps D element ``32c + 4kk + i`` to fragment column ``kk*16 + 2c +
  (i & 1) + 8 (i >> 1)`` (``perm_pos``). Lane c then holds D[32c, 32c + 32) of its two rows over
  the 8 k-steps -- exactly one FP4 block (16 bytes of E2M1 codes, ONE UE8M0 scale): one
  ``ld.global.nc.v4`` and one scale byte a row, decoded in registers (``stages.fp4`` prmt
  tables, exact in bf16) into the 16 words that are the thread's A registers. bf16 keys: the
  same 32 elements are 64 contiguous bytes (4 loads).
* **q** (bf16, or FP4 decoded here) is written once per CTA into shared memory with the same
  D permutation (``put_q_token``: 4-byte stores), 128B-swizzled K-major -- the B operand.
* **The head sum is in-thread**: accumulator register i of lane l is (key 16w + l/4 + 8((i/2)%2),
  head 8(i/4) + 2c + i%2): 16 ReLU-FMAs per key row, then ``shfl.bfly`` 1 and 2 (the 4 lanes of
  a quad). No exchange, no barrier between tiles.
* A CTA (one warpgroup) owns a range of ``tpc`` 64-key tiles and a chunk of TB tokens (1, 2 or 4;
  one wgmma chain of N = 64 per token, sharing the A registers); the raw keys of the next ``pf``
  tiles are loaded while this tile's wgmmas and epilogue run; with ``split`` each token is its
  own commit group (token j's epilogue overlaps the later tokens' wgmmas).

Exactness: the same bf16 products and float32 accumulation as v2; only the summation order
differs (inside the bound gamma(D + H + 3) sum_h |w| sum_d |q k| the tests use).

v6: the keys through an mbarrier ring (``rs_kernel(..., ring=S)``, ``RING_DEFAULTS``)
-----------------------------------------------------------------------------------------
The same kernel with ``advance_keys``' register queue replaced by S shared-memory slots of one
64-key tile each (FP4: 4096 B of codes + 256 B of scales; bf16: 16 KB) and 2 S mbarriers::

    slot s:  full[s]  (TMA: 1 arrival + the tile's bytes; cp.async: 128 arrivals)
             empty[s] (128 arrivals: every thread has read its words of the tile)
    start:   tiles 0 .. S-1 -> slots 0 .. S-1            (``ring_start`` / ``ring_fill``)
    tile i:  wait full[i % S] (phase i // S), ld.shared the pair's 2 x 17 words, arrive empty
             (``ring_take``); decode, wgmmas as v4; then tile i + S - 1 -> the slot tile i - 1
             left, after its empty phase (``ring_refill``: taken a tile earlier, rarely waits)

* A contiguous cache: thread 0 issues. FP4: two ``cp.async.bulk`` copies a tile (codes, scales:
  the TMA unit's non-tensor form, no tensor map; the cache's last 1-3 scale rows past the copy's
  16-byte multiple by thread 0's own loads). bf16: one box of a 128B-swizzled tensor map
  ([N, 2, 64] uint16, box 64 x 2 x 64): lane c reads line 2r + c // 2, so unswizzled 256-B rows
  would put 16 of a warp's 32 16-byte reads on one bank group (``ring_word``).
* A paged cache: a ``cp.async`` gather -- each thread copies the 16-byte pieces of its own two rows
  it will read back (through the block table, as v4 reads them), lane 0 of a quad the row's
  scale word, then ``cp.async.mbarrier.arrive.noinc`` on the slot's full barrier (init 128).
* Words, products and order are v4's: bitwise v4's scores (tests: emulator and H100).
* Napkin math of the ring (per tile): 4.25 KB (FP4) moved by one thread's 2 bulk copies instead
  of 128 threads' 2 x 16-B loads; + 4 ld.shared.v4 (FP4; bf16 8), 1 mbarrier wait and arrive a
  thread. Shared memory: S x 4.4 KB (FP4, S = 4: 17.4 KB) or S x 16 KB (bf16, S = 3: 48 KB) on
  top of v4's. Expected: no faster than v4 where it is latency-bound (T = 1: the keys' first
  bytes come no sooner through the TMA unit), ~equal where it is issue-bound (fewer load
  instructions, the same decode and epilogue).
* Measured (H100, 2026-11-27, FP4, ``bench_indexer --quick``, totals with the top-k, v4 in the
  same process, alternating): T = 1, N = 65536: 19.5-20.4 us (9 runs, median 19.9; scores alone
  9.0-9.1) against v4's 18.8-20.1 (median 19.3; 8.8-8.9); T = 4, N = 131072: 39.3-39.5 (scores 25.8)
  against 37.3-37.4 (24.6); T = 64, N = 65536: 186.5 (158.8) against 170.2 (142.8); T = 1,
  N = 262144: 48.2 against 46.3. First builds took codes and scales through two tensor maps:
  their ``fence.proxy.tensormap`` (needed for a map written by a host copy) cost ~4 us a CTA at
  T = 1 (scores 13.7-14.2 us fenced, 10.0 unfenced), hence the bulk copies. "auto" keeps v4.

Not in v4 / v6: V3.2 FP8 keys (the e4m3 kernel of ``indexer_sm90`` runs them under every variant), the
v3 histogram. Paged caches with one block table per token run TB = 1 (a tile's keys differ per
token).

Napkin math (H = 64, D = 128, FP4; per key per token 2 H D = 16384 FLOP)
----------------------------------------------------------------------
* Bytes: keys 68 B a key from HBM once per token chunk (L2 after the first); q 4.25 KB (FP4) a
  token per CTA (L2); scores 4 B a key a token. T = 1, N = 65536: 4.5 MB of keys -> ~1.5 us at
  3 TB/s; T = 4, N = 131072: 8.9 MB (~3 us) and 8.6 GFLOP (~9 us at the 990 TFLOP/s bf16 peak);
  T = 64, N = 65536: 68.7 GFLOP (~69 us at peak), keys re-read 16 times from L2 (72 MB).
* Per tile per token: 8 wgmma m64n64k16 = 1 MFLOP (~256 tensor cycles of an SM) against ~70
  instructions a thread of epilogue (32 FMNMX + 32 FFMA, 16 LDS of w, 4 shuffles, a store) and,
  per tile, ~60 of decode: 4 warps -> ~130 issue cycles per token, under the tensor time: expected
  tensor-bound at large T (50-70 % of peak with 1-2 CTAs of one warpgroup an SM), latency-bound
  at T = 1.
* Measured (H100, FP4, CHANGELOG 0.9.0) -- the expectation did not hold at large T: scores 11.2 us
  at T = 1, N = 65536 (v2: 13.9), 32-37 us at T = 4, N = 131072 (v2: 42-43), but 242-268 us
  (256-284 TFLOP/s, ~27 % of peak) at T = 64, N = 65536 (v2: 207.6). The launch + q setup alone
  (``stop`` = 1) is 6.4 us at T = 1, 9.3 at T = 4, 13.7 at T = 64: fewer, longer CTAs win
  (``rs_geometry``). Part of the T = 64 gap was the geometry: 272 CTAs for 264 slots (a second
  wave of 8). With one wave (CHANGELOG 0.10.0): 191.5-194.3 us (354-359 TFLOP/s, ~36 % of peak)
  against v2's 205-206, and v4 beats v2 at every T timed (1-128), so "auto" runs it for FP4.
* Where it went then (ncu source pages, 2026-11-27, CHANGELOG 0.14.0): the kernel was bound by
  instructions issued, not by the tensor cores. At T = 4 the epilogue was ~47 % of the samples
  (valid_len loaded and 64-bit index compares at every store of every token of every tile), the
  key decode ~23 % (~42 instructions per 8 codes: the float32 split, 8 FMUL, 4 F2FP, a branch on
  the scale code), and "no instruction" stalls 16 % (a ~1500-instruction tile loop). At T = 1 the
  per-CTA q setup (64-bit store addresses) was a third. Fixes: ``token_limits`` (once a CTA),
  ``decode8`` as prmt tables + one mul.rn.bf16x2 a pair (~20 instructions), ``put_q_token``'s
  32-bit offsets, the timing hooks in a separate kernel. Scores: T = 1 11.2 -> 8.8-9.0 us, T = 4
  33.0 -> 25.3-25.5, T = 64 191.5 -> 147.3-149.9 (458-466 TFLOP/s, ~47 % of the bf16 peak).
* The key chain at T = 1 (CHANGELOG 0.15.0): the first tiles' key addresses waited for the
  valid_len and table loads (ncu: ~6 % of the samples); a contiguous cache now loads them up to N
  at once (``RS_DEFAULTS["early_keys"]``), and the T = 1 kernel is PDL-launched. Scores, H100,
  2026-11-27: T = 1 7.7-7.9 us, T = 4 25.2, T = 64 144.4 (476 TFLOP/s).
* The key chain's depth (CHANGELOG 0.16.0): at T = 1 a CTA's 4 tiles, 2 in flight, cost two key
  round trips after the first (``stop`` hooks, H100: launch + q setup 3.7 us, + keys and decode
  6.4, + wgmmas and epilogue 7.8). TB = 1 now keeps 3 tiles in flight (``RS_DEFAULTS["pf"]``)
  and a CTA takes 3 tiles (``RESIDENT[1]`` = 3): every key load of a CTA is issued at its start.
  Indexer totals, H100, 2026-11-27: T = 1, N = 65536 20.7 -> 19.2 us (medians), N = 131072
  28.1 -> 25.5, N = 262144 54.6 -> 48.3.
* Shared memory: 16 KB of q + 256 B of w a token (+1 KB alignment slack): TB = 4 takes 66.3 KB
  (dynamic shared memory); registers (~32 A + 32 TB accumulators + 10 prefetched) bound the
  residency at TB = 4 to ~2 CTAs an SM.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, int32, int64, uint32, uint64

from ..hw import ops
from ..hw.bits import bits_f32, f32_bits
from ..hw.portable import relu_f32                           # used by the generated head sum
from ..hw.portable import warp_shfl_xor as shfl_xor_f32
from ..runtime import detect_gpu, device, kernel, mode
from .indexer_sm90 import (D_FUSED, DESC_SW128, FMT_BF16, FMT_FP4, H_FUSED, decode8, fetch_q8,
                           key_row)

BM = 64                       # keys per tile: wgmma M (one warpgroup)
THREADS = 128
TB_CHOICES = (1, 2, 4)        # tokens per CTA chunk (one m64n64 wgmma chain each)
PF_CHOICES = (1, 2, 3, 4)     # tiles of raw keys in flight (FP4: 10 registers a tile; bf16: 32)
Q_TOKEN_BYTES = H_FUSED * D_FUSED * 2       # 16384: one token's q tile (2 K-chunks of 8 KB)
W_TOKEN_BYTES = H_FUSED * 4                 # 256: its weights
RING_CHOICES = (0, 2, 3, 4)   # ring slots of key tiles (0: v4's register queue, no ring)
RING_DEFAULTS = {FMT_FP4: 4, FMT_BF16: 3}   # v6's slots (FP4 17.4 KB, bf16 48 KB of smem)
CODE_TILE = BM * 64                         # FP4 slot: 4096 B of E2M1 codes (64 rows x 64 B) ...
SCALE_TILE = BM * 4                         # ... then 256 B of UE8M0 scales (4 a row)
BF16_TILE = BM * D_FUSED * 2                # bf16 slot: 16384 B, 128B-swizzled (``ring_word``)
ALIGN = 1024                                # 128B swizzle: tiles 1024-aligned
KSTEPS = D_FUSED // 16                      # 8 wgmma k16 steps
RESIDENT = {1: 3, 2: 3, 4: 2}               # CTAs an SM assumed by the default tiles-per-CTA
# (TB = 1: 3, not the 4 that fit. H100, 2026-11-27, T = 1, N = 65536, indexer total (scores + top-k,
# 5 runs alternating in one process, median): 3 tiles a CTA (342 CTAs) with pf 3 (every tile in
# flight from the start) 19.2 us; 4 tiles (RESIDENT 2) pf 3 20.0, pf 2 20.8, pf 4 20.4; 5 tiles
# pf 3 19.4; 6 pf 3 20.4; 2 pf 2 20.6. 0.15.0 (RESIDENT 2, pf 2): 4 tiles 8.7 / 20.4 us scores /
# total against 8.8 / 21.1 with 2; 1 tile 10.9 / 23.1, 8 tiles 10.1 / 22.2. The score kernel
# timed alone, back to back, ranks them otherwise (3 tiles pf 3: 8.9 us, 4 tiles pf 2: 7.7): what
# counts is the pair with the top-k, which is launched with PDL.)
RS_DEFAULTS = {"pf": {FMT_FP4: {1: 3, 2: 2, 4: 2},    # rs_kernel's prefetch depth (by key
                      FMT_BF16: {1: 2, 2: 2, 4: 2}},   # format and TB) and commit groups;
               "split": 1,
               "pdl_max_t": 1,              # PDL launches up to this many tokens (see below);
               "early_keys": True}          # contiguous caches: first keys before valid_len
# pf: FP4 at TB = 1 loads 3 tiles ahead (124 registers, no spill; pf 2: 95), so that at T = 1 a
# CTA's 3 tiles are all in flight at once; TB = 2 / 4 keep 2 (pf and split measured the same at
# T = 4 in 0.10.0: 32.0-33.7 us across all four). bf16 keys keep 2: a tile in flight is 32
# registers there, and pf 3 (184 registers, ptxas sm_90a) would leave 2 CTAs an SM, not the 3
# of RESIDENT[1] (pf 2: 156).
# pdl_max_t: PDL for the score kernel made T = 4 / 64 slower (H100, 2026-11-27, 0.13.0 kernel:
# indexer totals 53.7 / 234.2 us against 48.2 / 222.2 with PDL for the top-k alone), a cause not
# found. At T = 1 (H100, 2026-11-27, 0.15.0 kernel, one process, bench_indexer --quick): the
# score kernel alone, back to back, 8.7-9.0 -> 8.0 us with PDL, 8.5 with early_keys, 7.7-7.8 with
# both; the indexer total (+ top-k) 21.2, 20.7 -> 20.4-21.2 (8 runs), the run-to-run spread: there
# the top-k after the scores sets the pace. early_keys False: max_pages 1 as for a one-page
# cache (the A/B switch).


def slot_bytes(kfmt: int) -> int:
    """Bytes of one ring slot (one 64-key tile) for key format ``kfmt``."""
    return CODE_TILE + SCALE_TILE if kfmt == FMT_FP4 else BF16_TILE


def dyn_smem_bytes(tb: int, kfmt: int = FMT_FP4, ring: int = 0) -> int:
    """Dynamic shared memory of a TB-token kernel: alignment slack + q tiles + (v6) the ring's
    slots + weights + (v6) the ring's 2 x ``ring`` mbarriers."""
    return ALIGN + tb * (Q_TOKEN_BYTES + W_TOKEN_BYTES) + ring * (slot_bytes(kfmt) + 16)


def perm_pos(d):
    """Fragment column (0..127, k-step = column // 16) of D element d (host side: docs and tests).
    Lane c of a quad holds D[32c, 32c + 32): element 32c + 4kk + i sits in k-step kk at column
    2c + (i & 1) + 8 (i >> 1) -- the A fragment's four columns of lane c."""
    d = np.asarray(d)
    c, e = d // 32, d % 32
    kk, i = e // 4, e % 4
    return kk * 16 + 2 * c + (i & 1) + 8 * (i >> 1)


# ---------------------------------------------------------------------------------- keys -> A
@device
def fetch_key_row(ksrc, ksc, kfmt, pg0, table, table_rows, max_pages, page_size, t, n, c, ok):
    """Raw D block c of key n (through token t's table) as 17 words: FP4 -> its 4 code words, 12
    zeros and the UE8M0 code; bf16 -> its 16 words (64 bytes) and 0. ``ok`` False: zeros, no
    read (rows past the valid length or N). ``max_pages`` 0: a contiguous cache, key n is row n
    (no table); 1: one page, ``pg0`` (the table's entry for the token's first page, loaded once by
    the caller); else through the table (``key_row``)."""
    z = uint32(0)
    if not ok:
        return (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
    if max_pages == 0:
        row = int64(n)
    elif max_pages == 1:
        row = int64(pg0) * page_size + n
    else:
        row = key_row(table, table_rows, max_pages, page_size, t, n)
    base = ops.array_address(ksrc)
    if kfmt == FMT_FP4:
        a0, a1, a2, a3 = ops.ld_global_nc_v4_u32(base + uint64(row * 64 + c * 16))
        return (a0, a1, a2, a3, z, z, z, z, z, z, z, z, z, z, z, z, uint32(ksc[row * 4 + c]))
    p = base + uint64(row * 256 + c * 64)
    a0, a1, a2, a3 = ops.ld_global_nc_v4_u32(p)
    b0, b1, b2, b3 = ops.ld_global_nc_v4_u32(p + uint64(16))
    c0, c1, c2, c3 = ops.ld_global_nc_v4_u32(p + uint64(32))
    d0, d1, d2, d3 = ops.ld_global_nc_v4_u32(p + uint64(48))
    return (a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3, z)


@device
def fetch_key_pair(ksrc, ksc, kfmt, pg0, table, table_rows, max_pages, page_size, t, n, c, lim,
                   more):
    """``fetch_key_row`` of this thread's two rows of a tile, keys n and n + 8 (none if not
    ``more``: past the CTA's last tile)."""
    a = fetch_key_row(ksrc, ksc, kfmt, pg0, table, table_rows, max_pages, page_size, t, n, c,
                      more and n < lim)
    b = fetch_key_row(ksrc, ksc, kfmt, pg0, table, table_rows, max_pages, page_size, t, n + 8, c,
                      more and n + 8 < lim)
    return a, b


@device
def advance_keys(pf, a1, a2, a3, ksrc, ksc, kfmt, pg0, table, table_rows, max_pages, page_size, t,
                 m, c, lim, more):
    """The raw-key queue one tile on: ``a1 .. a3`` the pairs (``fetch_key_pair``) of the next
    tiles, pf - 1 of them in use; the loads of tile ``m`` (= this tile + pf) join at the back.
    Returns (the next tile's pair, the new a1, a2, a3); unused slots pass through unchanged."""
    new = fetch_key_pair(ksrc, ksc, kfmt, pg0, table, table_rows, max_pages, page_size, t, m, c,
                         lim, more)
    if pf == 4:
        return a1, a2, a3, new
    if pf == 3:
        return a1, a2, new, a3
    if pf == 2:
        return a1, new, a2, a3
    return new, a1, a2, a3


@device
def decode_key_row(raw, kfmt):
    """17 raw words -> the 16 bf16x2 words of D[32c, 32c + 32) in element order: word 2kk holds
    elements 4kk, 4kk + 1 (A columns 2c, 2c + 1 of k-step kk), word 2kk + 1 elements 4kk + 2,
    4kk + 3 (columns 2c + 8, 2c + 9). FP4: byte b of the codes is elements 2b, 2b + 1."""
    if kfmt == FMT_FP4:
        s = raw[16]
        p0, p1, p2, p3 = decode8(raw[0], s)
        q0, q1, q2, q3 = decode8(raw[1], s)
        r0, r1, r2, r3 = decode8(raw[2], s)
        s0, s1, s2, s3 = decode8(raw[3], s)
        return (p0, p1, p2, p3, q0, q1, q2, q3, r0, r1, r2, r3, s0, s1, s2, s3)
    return (raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7], raw[8], raw[9],
            raw[10], raw[11], raw[12], raw[13], raw[14], raw[15])


# ---------------------------------------------------------------------------------- keys: v6's ring
@device
def ring_word(kfmt, r, c, j):
    """Byte offset in a ring slot of the 16 bytes that ``fetch_key_row`` loads as its vector j
    (FP4: j = 0 only) for row r, lane c. FP4: the codes as in global memory, 64 B a row (a warp's
    8 rows x 4 lanes read 512 contiguous bytes: 4 wavefronts, no bank conflict). bf16: the 256-B
    row as two 128-B lines (2r, 2r + 1), 16-B chunk x of line L at x ^ (L % 8) -- the TMA 128B
    swizzle of a 1024-aligned slot; lane c reads line 2r + c // 2, chunks 4 (c % 2) + j, so a
    warp's 32 reads of one j fall 4 on each 16-B bank group (unswizzled, rows 256 B apart, 16)."""
    if kfmt == FMT_FP4:
        return uint32(r) * uint32(64) + uint32(c) * uint32(16)
    line = uint32(2) * uint32(r) + (uint32(c) >> uint32(1))
    x = (uint32(c) & uint32(1)) * uint32(4) + uint32(j)
    return line * uint32(128) + ((x ^ (line & uint32(7))) << uint32(4))


@device
def ring_tma(kfmt, slot, full, ksrc, ksc, tmk, n0, N):
    """Thread 0: keys n0 .. n0 + 63 of a contiguous cache into the slot, by the TMA unit, on
    mbarrier ``full``. FP4: two bulk copies (``cp.async.bulk``, no tensor map): the rows' codes
    (64 B a row) and their scales (4 B a row) -- a bulk copy moves multiples of 16 bytes, so at
    the cache's end the last 1-3 rows' scale words are loaded and stored by this thread, before
    its arrive (release: the consumers' wait sees them); rows past N are not loaded (never
    written). bf16: one tensor-map box of 64 x 2 x 128 B, 128B-swizzled (``ring_word``; rows
    past N zero-filled)."""
    if kfmt == FMT_FP4:
        rows = min(int64(BM), int64(N) - n0)
        nb = (rows * 4) & ~int64(15)              # scale bytes the bulk copy takes
        sa = ops.array_address(ksc) + uint64(n0 * 4)
        if rows * 4 > nb:                         # the cache's last tile: 1-3 rows' scales
            rest = (rows * 4 - nb) >> 2
            w0 = ops.ld_global_nc_u32(sa + uint64(nb))
            w1 = ops.ld_global_nc_u32(sa + uint64(nb + 4)) if rest > 1 else uint32(0)
            w2 = ops.ld_global_nc_u32(sa + uint64(nb + 8)) if rest > 2 else uint32(0)
            ops.st_shared_v4_b32(slot + uint32(CODE_TILE + nb), w0, w1, w2, uint32(0))
        ops.mbarrier_arrive_expect_tx(full, uint32(rows * 64 + nb))
        ops.bulk_load(slot, ops.array_address(ksrc) + uint64(n0 * 64), uint32(rows * 64), full)
        if nb > 0:
            ops.bulk_load(slot + uint32(CODE_TILE), sa, uint32(nb), full)
    else:
        ops.mbarrier_arrive_expect_tx(full, uint32(BF16_TILE))
        ops.tma_load_3d(slot, ops.array_address(tmk), int32(0), int32(0), int32(n0), full)


@device
def ring_fill(kfmt, slot, full, tid, ksrc, ksc, tmk, pg0, table, table_rows, max_pages,
              page_size, t, n0, rg, c, lim, N):
    """Keys n0 .. n0 + 63 (through token t's table) into the ring slot at .shared address
    ``slot``, completing on mbarrier ``full``. A contiguous cache (``max_pages`` 0): thread 0,
    ``ring_tma``. Paged: every thread cp.asyncs the 16-B pieces of its two rows rg, rg + 8 that
    ``ring_take`` reads back (lane 0 of the quad also the row's 4 scale bytes; rows >= ``lim``
    are skipped), then cp.async.mbarrier.arrive.noinc: ``full`` completes when all 128 threads'
    copies have landed."""
    if max_pages == 0:
        if tid == 0:
            ring_tma(kfmt, slot, full, ksrc, ksc, tmk, n0, N)
        return
    base = ops.array_address(ksrc)
    for h in range(2):
        r = rg + 8 * h
        n = n0 + r
        if n < lim:
            if max_pages == 1:
                row = int64(pg0) * page_size + n
            else:
                row = key_row(table, table_rows, max_pages, page_size, t, n)
            if kfmt == FMT_FP4:
                ops.cp_async_cg_16(slot + ring_word(kfmt, r, c, 0),
                                   base + uint64(row * 64 + c * 16))
                if c == 0:
                    ops.cp_async_ca_4(slot + uint32(CODE_TILE + 4 * r),
                                      ops.array_address(ksc) + uint64(row * 4))
            else:
                for j in range(4):
                    ops.cp_async_cg_16(slot + ring_word(kfmt, r, c, j),
                                       base + uint64(row * 256 + c * 64 + j * 16))
    ops.cp_async_mbarrier_arrive_noinc(full)


@device
def ring_take_row(kfmt, slot, r, c):
    """``fetch_key_row``'s 17 raw words of row r, lane c, read back from the ring slot."""
    z = uint32(0)
    if kfmt == FMT_FP4:
        a0, a1, a2, a3 = ops.ld_shared_v4_u32(slot + ring_word(kfmt, r, c, 0))
        s0, s1, s2, s3 = ops.ld_shared_v4_u32(slot + uint32(CODE_TILE) + ((uint32(r) >> uint32(2))
                                                                           << uint32(4)))
        sw = s0
        if (r & 3) == 1:
            sw = s1
        elif (r & 3) == 2:
            sw = s2
        elif (r & 3) == 3:
            sw = s3
        return (a0, a1, a2, a3, z, z, z, z, z, z, z, z, z, z, z, z,
                (sw >> uint32(8 * c)) & uint32(0xFF))
    a0, a1, a2, a3 = ops.ld_shared_v4_u32(slot + ring_word(kfmt, r, c, 0))
    b0, b1, b2, b3 = ops.ld_shared_v4_u32(slot + ring_word(kfmt, r, c, 1))
    c0, c1, c2, c3 = ops.ld_shared_v4_u32(slot + ring_word(kfmt, r, c, 2))
    d0, d1, d2, d3 = ops.ld_shared_v4_u32(slot + ring_word(kfmt, r, c, 3))
    return (a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3, z)


@device
def ring_take(kfmt, slot, full, empty, parity, rg, c):
    """This thread's pair (rows rg, rg + 8) of the tile in a slot: wait for ``full``'s phase of
    ``parity``, read the 2 x 17 words, then arrive on ``empty`` (the slot may be refilled once all
    128 threads have)."""
    ops.mbarrier_wait_parity(full, uint32(parity))
    a = ring_take_row(kfmt, slot, rg, c)
    b = ring_take_row(kfmt, slot, rg + 8, c)
    ops.mbarrier_arrive(empty)
    return a, b


@device
def ring_init(ring, bars, full_count):
    """Thread 0: the ring's barriers -- full[s] expecting ``full_count`` arrivals (TMA: thread 0's
    expect_tx; cp.async: all 128 threads), empty[s] all 128 threads -- and their init fence."""
    for s in range(ring):
        ops.mbarrier_init(bars + uint32(8 * s), uint32(full_count))
        ops.mbarrier_init(bars + uint32(8 * (ring + s)), uint32(THREADS))
    ops.fence_mbarrier_init()


@device
def ring_start(kfmt, ring, slot_size, rb, bars, tile0, tile1, ksrc, ksc, tmk, N):
    """Thread 0 of a CTA reading a contiguous cache: the ring's barriers (full: one arrival,
    thread 0's expect_tx; empty: all 128 threads), then the loads of the first ``ring`` tiles
    (``ring_tma``). No barrier for the other threads here: they first wait on a full barrier
    after the CTA's q barrier (``syncthreads``), which orders the initialisation before them.
    bf16 first fences its tensor map (written by a host copy, i.e. the generic proxy, and read
    through the tensormap proxy; ``hw.tma``). FP4's bulk copies need no map: H100, 2026-11-27,
    scores at T = 1, N = 65536 with its codes and scales through two tensor maps, fenced: 13.7-14.2
    us, 10.0 without the fences (not a legal kernel; the measurement that chose bulk copies)."""
    ring_init(ring, bars, 1)
    if kfmt != FMT_FP4:
        ops.fence_proxy_tensormap_acquire_sys(ops.array_address(tmk))
    for j in range(ring):
        if tile0 + j < tile1:
            ring_tma(kfmt, rb + uint32(j * slot_size), bars + uint32(8 * j), ksrc, ksc, tmk,
                     (tile0 + j) * BM, N)


@device
def ring_refill(kfmt, ring, slot_size, rb, bars, i, tile0, tile1, tid, ksrc, ksc, tmk, pg0,
                table, table_rows, max_pages, page_size, t, rg, c, lim, N):
    """The ring one tile on, at local tile i (taken, its wgmmas issued): local tile j = i + ring
    - 1 into slot j % ring, the one tile i - 1 left, once all 128 threads have read it (its
    ``empty`` barrier's use j // ring - 1; taken a whole tile earlier, so the wait rarely blocks).
    TMA: thread 0 waits and issues; cp.async: every thread (each fills its own rows). (Tried:
    taking tile i + 1's words here, during tile i's wgmmas: scores at T = 1 -0.9 us, at T = 64
    +13 us; H100, 2026-11-27.)"""
    j = i + ring - 1
    if i >= 1 and tile0 + j < tile1:
        sj = j % ring
        if max_pages != 0 or tid == 0:
            ops.mbarrier_wait_parity(bars + uint32(8 * (ring + sj)), uint32(((j // ring) - 1) & 1))
        ring_fill(kfmt, rb + uint32(sj * slot_size), bars + uint32(8 * sj), tid, ksrc, ksc, tmk,
                  pg0, table, table_rows, max_pages, page_size, t, (tile0 + j) * BM, rg, c, lim,
                  N)


# ---------------------------------------------------------------------------------- q -> B (smem)
@device
def put_q_token(dyn, qw, qfmt, tid, a):
    """The 8 raw vectors ``a`` thread tid fetched of one token (``indexer_sm90.fetch_q8``: vector
    j = tid % 16 of rows h = tid // 16 + 8 i) -> the token tile at dyn[qw], each vector's 4 words at
    their permuted columns (``perm_pos``) of the 128B-swizzled K-major tile (2 K-chunks of 64 rows x
    128 B). Word w of vector j (elements 8j + 2w, +1) goes to k-step kk = 2 (j % 4) + w // 2, 16-byte
    unit 2 (kk % 4) + w % 2 (xor h % 8, the swizzle) of K-chunk kk // 4, bytes 4 (j // 4) .. of it.
    h % 8 = tid // 16 for every i, so the 4 column offsets are the thread's constants and vector i
    is 256 words (8 rows) further on: unsigned word offsets, one add a store, folded into the
    stores' immediates by ptxas (ncu, 2026-11-27: the signed 64-bit index arithmetic per store had
    been a third of the T = 1 kernel's samples)."""
    j = uint32(tid) & uint32(15)
    hs = uint32(tid) >> uint32(4)                 # h0 = h % 8 of all 8 rows
    kk0 = uint32(2) * (j & uint32(3))             # k-steps kk0, kk0 + 1: one K-chunk
    r = uint32(qw) + hs * uint32(32) + (j >> uint32(2)) + (kk0 >> uint32(2)) * uint32(2048)
    u = uint32(2) * (kk0 & uint32(3))
    o0 = ((u ^ hs) << uint32(2))
    o1 = (((u + uint32(1)) ^ hs) << uint32(2))
    o2 = (((u + uint32(2)) ^ hs) << uint32(2))
    o3 = (((u + uint32(3)) ^ hs) << uint32(2))
    put_q_vec(dyn, r, o0, o1, o2, o3, qfmt, a[0])          # (constant tuple indices: a
    put_q_vec(dyn, r + uint32(256), o0, o1, o2, o3, qfmt, a[1])   # run-time one compiles to a
    put_q_vec(dyn, r + uint32(512), o0, o1, o2, o3, qfmt, a[2])   # compare-and-branch chain)
    put_q_vec(dyn, r + uint32(768), o0, o1, o2, o3, qfmt, a[3])
    put_q_vec(dyn, r + uint32(1024), o0, o1, o2, o3, qfmt, a[4])
    put_q_vec(dyn, r + uint32(1280), o0, o1, o2, o3, qfmt, a[5])
    put_q_vec(dyn, r + uint32(1536), o0, o1, o2, o3, qfmt, a[6])
    put_q_vec(dyn, r + uint32(1792), o0, o1, o2, o3, qfmt, a[7])


@device
def put_q_vec(dyn, r, o0, o1, o2, o3, qfmt, raw):
    """One raw q vector (bf16: 4 words; FP4: a code word and its scale) -> dyn[r + o0..o3]."""
    if qfmt == FMT_BF16:
        w0, w1, w2, w3 = raw
    else:
        w0, w1, w2, w3 = decode8(raw[0], raw[1])
    dyn[r + o0] = w0
    dyn[r + o1] = w1
    dyn[r + o2] = w2
    dyn[r + o3] = w3


# ---------------------------------------------------------------------------------- generated
def _mma_source() -> str:
    """``mma_token``: the 8 k-steps of one token, A registers by constant index (a run-time index
    into a tuple compiles to a compare-and-branch chain)."""
    L = ["def mma_token(acc, r0, r1, bdesc):",
         "    z = float32(0.0)"]
    for kk in range(KSTEPS):
        # A regs of k-step kk: (row g, cols 2c..) (row g+8, cols 2c..) (row g, 2c+8..) (row g+8, ..)
        regs = f"r0[{2 * kk}], r1[{2 * kk}], r0[{2 * kk + 1}], r1[{2 * kk + 1}]"
        # B descriptor: K-chunk kk // 4 (8 KB = 512 units of 16 B), 32 bytes (2 units) per k16
        off = (kk >> 2) * (H_FUSED * 128 >> 4) + (kk & 3) * 2
        L.append(f"    acc = mma_rs(acc, {regs}, bdesc + uint64({off}), uint32({min(kk, 1)}))")
    L.append("    return acc")
    return "\n".join(L) + "\n"


def _sum_source() -> str:
    """``token_sums``: w[h] ReLU(acc) over this thread's 16 heads for its two key rows, then over
    the lane quad (shfl.bfly 1, 2); w from shared words dyn[ww + head]."""
    L = ["def token_sums(acc, dyn, ww, c):",
         "    z = float32(0.0)",
         "    s0 = z",
         "    s1 = z"]
    for jj in range(8):
        for e in range(2):
            L.append(f"    wv = bits_f32(dyn[ww + {8 * jj + e} + 2 * c])")
            for r in range(2):
                L.append(f"    s{r} += wv * relu_f32(acc[{4 * jj + 2 * r + e}])")
    for m in (1, 2):
        L += [f"    s0 += shfl_xor_f32(s0, {m})", f"    s1 += shfl_xor_f32(s1, {m})"]
    L.append("    return s0, s1")
    return "\n".join(L) + "\n"


def _generated(src: str, name: str, doc: str):
    ns = dict(globals(), mma_rs=mma_rs, shfl_xor_f32=shfl_xor_f32, relu_f32=relu_f32)
    exec(compile(src, f"<indexer_sm90_rs.{name}>", "exec"), ns)  # noqa: S102 (our own source)
    fn = ns[name]
    fn.__doc__ = doc
    return device(fn)


@device
def mma_rs(acc, a0, a1, a2, a3, bdesc, accumulate):
    """One wgmma.mma_async m64n64k16 f32.bf16.bf16, A from registers (4 words), B from smem."""
    return ops.wgmma_m64n64k16_f32_bf16_rs(*acc, a0, a1, a2, a3, bdesc, accumulate)


@device
def zeros32():
    z = float32(0.0)
    return (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z,
            z, z, z, z)


mma_token = _generated(_mma_source(), "mma_token",
                       "acc (32 f32) = sum over the 8 k-steps of A (rows g: r0, g + 8: r1) x B.")
token_sums = _generated(_sum_source(), "token_sums",
                        "(row g, row g + 8) sums of w[h] ReLU(acc[key, h]) over the 64 heads.")


@device
def token_limits(valid_len, t, T, N):
    """(first score index of token t, keys it writes, keys it scores): (t N, N, valid_len[t] clamped
    to [0, N]), or nothing to write (0, 0, 0) for a token past T (a short last chunk). Loaded once per
    CTA: ``write_token`` then compares in registers (ncu, 2026-11-27: the per-tile valid_len load
    and 64-bit compares of each token's store were ~10 % of the T = 4 kernel's samples)."""
    if t < T:
        vl = max(int64(0), min(int64(valid_len[t]), N))
        return uint64(t) * uint64(N), uint32(N), uint32(vl)
    return uint64(0), uint32(0), uint32(0)


@device
def write_token(scores, lims, s0, s1, n_g, c):
    """Lane c = 0 writes key n_g's score, c = 1 key n_g + 8's (-inf past the token's valid_len);
    ``lims``: ``token_limits`` of the token (nothing past T or N is written)."""
    if c < 2:
        n = uint32(n_g) + uint32(8) * uint32(c)
        if n < lims[1]:
            s = s0 if c == 0 else s1
            scores[lims[0] + uint64(n)] = s if n < lims[2] else float32(-math.inf)


# ---------------------------------------------------------------------------------- the kernel
_KERNELS = {}


def rs_kernel(tb: int, kfmt: int, pf: int = 2, split: int = 1, hooks: bool = False,
              ring: int = 0):
    """The v4 / v6 ``runtime.Kernel`` for TB = ``tb`` tokens a chunk, key format ``kfmt`` (FMT_FP4 /
    FMT_BF16), ``pf`` tiles of raw keys loaded ahead (PF_CHOICES; v4) and ``split`` (1: one wgmma
    commit group a token, so token j's epilogue runs while tokens > j still multiply; 0: one group
    a tile) -- compile-time constants of the closure. ``ring`` > 0 (v6): the keys go through a
    shared-memory ring of that many slots instead of ``advance_keys``' registers (``ring_fill`` /
    ``ring_take``; ``pf`` is then unused). Grid (ceil(ceil(N / 64) / tpc), ceil(T / TB)), 128
    threads, ``dyn_smem_bytes(tb, kfmt, ring)`` of dynamic shared memory. ``stop`` (timing hook, 0
    in use): 1 ends after the q / w setup, 2 skips the wgmmas and the epilogue (writes a dummy
    derived from the decoded keys), 3 skips the epilogue -- compiled in only with ``hooks`` (a
    separate kernel, ``_hooks`` in its name): the hooks' branches cost the production kernel code
    and registers. ``tmk``: v6's tensor map of a contiguous bf16 cache (``ring_map``), any uint64
    array otherwise."""
    if tb not in TB_CHOICES or kfmt not in (FMT_FP4, FMT_BF16) or pf not in PF_CHOICES \
            or split not in (0, 1) or ring not in RING_CHOICES:
        raise ValueError(f"v4 kernel: tb in {TB_CHOICES}, kfmt FMT_FP4 / FMT_BF16, pf in "
                         f"{PF_CHOICES}, split 0 / 1, ring in {RING_CHOICES}; got {tb}, {kfmt}, "
                         f"{pf}, {split}, {ring}")
    split = split if tb > 1 else 0
    pf = 1 if ring else pf
    hooks = bool(hooks)
    key = (tb, kfmt, pf, split, hooks, ring)
    if key in _KERNELS:
        return _KERNELS[key]
    TB, KF, PF, SPLIT, HOOKS, RING = tb, kfmt, pf, split, hooks, ring
    SLOT = slot_bytes(kfmt)

    # Napkin math: the module docstring (per tile: 8 x TB wgmma m64n64k16 on register A).
    def indexer_rs(qsrc, qsc, ksrc, ksc, w, table, table_rows, max_pages, page_size, valid_len,
                   T, N, tpc, qfmt, scores, stop, tmk):
        ops.griddepcontrol_wait()                 # PDL: everything before us has ended (a
        # no-op unless PDL-launched: ``fused_plan`` does so up to RS_DEFAULTS["pdl_max_t"] tokens)
        ops.griddepcontrol_launch_dependents()    # the top-k may launch now (it waits for our end)
        dyn = cuda.shared.array(0, uint32)
        tid = cuda.threadIdx.x
        warp = tid >> 5
        lane = tid & 31
        c = lane & 3
        base = ops.shared_address(dyn)
        qbase = (base + uint32(ALIGN - 1)) & uint32(0xFFFFFC00)
        qw = (qbase - base) >> 2                  # word index of token 0's q tile
        rb = qbase + uint32(TB * Q_TOKEN_BYTES)   # v6: the ring's slots (1024-aligned), then
        ww = qw + (TB * Q_TOKEN_BYTES + RING * SLOT) // 4     # word index of the weights, then
        bars = rb + uint32(RING * SLOT + TB * W_TOKEN_BYTES)  # v6: full[RING], empty[RING]
        t0 = cuda.blockIdx.y * TB
        ntiles = (N + BM - 1) // BM
        tile0 = cuda.blockIdx.x * tpc
        tile1 = min(ntiles, tile0 + tpc)
        rg = 16 * warp + (lane >> 2)              # this thread's key rows: rg, rg + 8
        # q of the chunk's tokens (past T: token T - 1 again, never written) and the weights:
        # issued first (they depend on nothing), every load of every token in flight before
        # the first store; then valid_len and the table, then the keys (which depend on them)
        qa = fetch_q8(qsrc, qsc, qfmt, t0, tid)
        qb, qc, qd = qa, qa, qa
        if TB > 1:
            qb = fetch_q8(qsrc, qsc, qfmt, min(t0 + 1, T - 1), tid)
        if TB > 2:
            qc = fetch_q8(qsrc, qsc, qfmt, min(t0 + 2, T - 1), tid)
            qd = fetch_q8(qsrc, qsc, qfmt, min(t0 + 3, T - 1), tid)
        wt = w[min(t0 + (tid >> 6), T - 1) * H_FUSED + (tid & 63)]
        wt2 = wt
        if TB > 2:
            wt2 = w[min(t0 + 2 + (tid >> 6), T - 1) * H_FUSED + (tid & 63)]
        tt = t0 if table_rows > 1 else 0          # a per-token table runs TB = 1 (host)
        pg0 = table[tt * max_pages]               # loaded beside q and valid_len: one round trip
        lm0 = token_limits(valid_len, t0, T, N)
        lm1, lm2, lm3 = lm0, lm0, lm0
        if TB > 1:
            lm1 = token_limits(valid_len, t0 + 1, T, N)
        if TB > 2:
            lm2 = token_limits(valid_len, t0 + 2, T, N)
            lm3 = token_limits(valid_len, t0 + 3, T, N)
        lim = int64(max(max(lm0[2], lm1[2]), max(lm2[2], lm3[2])))    # keys any token scores
        # a contiguous cache (max_pages == 0): the first tiles' keys are loaded up to N, without
        # waiting for valid_len (rows past it are read, scored and written as -inf); paged: lim
        lim0 = int64(N) if max_pages == 0 else lim
        n = tile0 * BM + rg
        if RING and max_pages == 0:               # v6, contiguous: thread 0 sets the ring up
            if tid == 0:                          # and loads the first RING tiles (TMA unit)
                ring_start(KF, RING, SLOT, rb, bars, tile0, tile1, ksrc, ksc, tmk, N)
        if RING and max_pages != 0:               # v6, paged: every thread gathers its rows
            if tid == 0:                          # of the first RING tiles (cp.async)
                ring_init(RING, bars, THREADS)
            cuda.syncthreads()                    # every thread sees the barriers initialised
            for j in range(RING):
                if tile0 + j < tile1:
                    ring_fill(KF, rb + uint32(j * SLOT), bars + uint32(8 * j), tid, ksrc, ksc,
                              tmk, pg0, table, table_rows, max_pages, page_size, tt,
                              (tile0 + j) * BM, rg, c, lim, N)
        raw = fetch_key_pair(ksrc, ksc, KF, pg0, table, table_rows, max_pages, page_size, tt, n,
                             c, lim0, not RING)
        a1, a2, a3 = raw, raw, raw                # the next PF - 1 tiles, in flight as well
        if PF > 1:
            a1 = fetch_key_pair(ksrc, ksc, KF, pg0, table, table_rows, max_pages, page_size, tt,
                                n + BM, c, lim0, tile0 + 1 < tile1)
        if PF > 2:
            a2 = fetch_key_pair(ksrc, ksc, KF, pg0, table, table_rows, max_pages, page_size, tt,
                                n + 2 * BM, c, lim0, tile0 + 2 < tile1)
        if PF > 3:
            a3 = fetch_key_pair(ksrc, ksc, KF, pg0, table, table_rows, max_pages, page_size, tt,
                                n + 3 * BM, c, lim0, tile0 + 3 < tile1)
        put_q_token(dyn, qw, qfmt, tid, qa)
        if TB > 1:
            put_q_token(dyn, qw + Q_TOKEN_BYTES // 4, qfmt, tid, qb)
        if TB > 2:
            put_q_token(dyn, qw + 2 * (Q_TOKEN_BYTES // 4), qfmt, tid, qc)
            put_q_token(dyn, qw + 3 * (Q_TOKEN_BYTES // 4), qfmt, tid, qd)
        if tid < TB * H_FUSED:                    # weights: tokens 0, 1 (and 2, 3)
            dyn[ww + tid] = f32_bits(wt)
        if TB > 2:
            dyn[ww + 2 * H_FUSED + tid] = f32_bits(wt2)
        ops.fence_proxy_async_shared_cta()
        cuda.syncthreads()
        if HOOKS and stop == 1:                   # (timing hook: launch + the q / w setup)
            for j in range(RING):                 # v6: no CTA exits with copies in flight
                if tile0 + j < tile1:             # into its shared memory
                    ops.mbarrier_wait_parity(bars + uint32(8 * j), uint32(0))
            return
        bdesc = uint64(DESC_SW128) | uint64((qbase >> 4) & 0x3FFF)
        for tile in range(tile0, tile1):
            i = tile - tile0
            if RING:                              # v6: this tile's words from its slot
                sl = i % RING
                raw = ring_take(KF, rb + uint32(sl * SLOT), bars + uint32(8 * sl),
                                bars + uint32(8 * (RING + sl)), (i // RING) & 1, rg, c)
            r0 = decode_key_row(raw[0], KF)
            r1 = decode_key_row(raw[1], KF)
            if HOOKS and stop == 2:               # (timing hook: no wgmma, no epilogue)
                s0 = bits_f32(r0[0] ^ r0[7] ^ r1[8] ^ r1[15])
                write_token(scores, lm0, s0, s0, n, c)
                if RING:
                    ring_refill(KF, RING, SLOT, rb, bars, i, tile0, tile1, tid, ksrc, ksc, tmk,
                                pg0, table, table_rows, max_pages, page_size, tt, rg, c, lim, N)
                else:
                    raw, a1, a2, a3 = advance_keys(PF, a1, a2, a3, ksrc, ksc, KF, pg0, table,
                                                   table_rows, max_pages, page_size, tt,
                                                   n + PF * BM, c, lim, tile + PF < tile1)
                n += BM
                continue
            ops.wgmma_fence()
            acc0 = mma_token(zeros32(), r0, r1, bdesc)
            acc1 = acc0
            acc2 = acc0
            acc3 = acc0
            if TB > 1:
                if SPLIT:
                    ops.wgmma_commit_group()
                acc1 = mma_token(zeros32(), r0, r1, bdesc + uint64(Q_TOKEN_BYTES >> 4))
            if TB > 2:
                if SPLIT:
                    ops.wgmma_commit_group()
                acc2 = mma_token(zeros32(), r0, r1, bdesc + uint64(2 * (Q_TOKEN_BYTES >> 4)))
                if SPLIT:
                    ops.wgmma_commit_group()
                acc3 = mma_token(zeros32(), r0, r1, bdesc + uint64(3 * (Q_TOKEN_BYTES >> 4)))
            ops.wgmma_commit_group()
            # the raw keys PF tiles ahead (v6: the ring's next tile, ``ring_refill``), in
            # flight during the wgmmas and the epilogue
            if RING:
                ring_refill(KF, RING, SLOT, rb, bars, i, tile0, tile1, tid, ksrc, ksc, tmk, pg0,
                            table, table_rows, max_pages, page_size, tt, rg, c, lim, N)
            else:
                raw, a1, a2, a3 = advance_keys(PF, a1, a2, a3, ksrc, ksc, KF, pg0, table,
                                               table_rows, max_pages, page_size, tt, n + PF * BM,
                                               c, lim, tile + PF < tile1)
            if SPLIT and TB == 4:
                ops.wgmma_wait_group_3()
            elif SPLIT:
                ops.wgmma_wait_group_1()
            else:
                ops.wgmma_wait_group_0()
            if HOOKS and stop == 3:               # (timing hook: no epilogue)
                # every group waited before any read: a read of a pending accumulator, even on
                # this cold path, makes ptxas serialise every wgmma of the kernel (C7514 / C7517)
                ops.wgmma_wait_group_0()
                s0 = acc0[0] + acc1[3] + acc2[5] + acc3[31]
                write_token(scores, lm0, s0, s0, n, c)
                n += BM
                continue
            s0, s1 = token_sums(acc0, dyn, ww, c)
            write_token(scores, lm0, s0, s1, n, c)
            if TB > 1:
                if SPLIT and TB == 4:
                    ops.wgmma_wait_group_2()
                elif SPLIT:
                    ops.wgmma_wait_group_0()
                s0, s1 = token_sums(acc1, dyn, ww + H_FUSED, c)
                write_token(scores, lm1, s0, s1, n, c)
            if TB > 2:
                if SPLIT:
                    ops.wgmma_wait_group_1()
                s0, s1 = token_sums(acc2, dyn, ww + 2 * H_FUSED, c)
                write_token(scores, lm2, s0, s1, n, c)
                if SPLIT:
                    ops.wgmma_wait_group_0()
                s0, s1 = token_sums(acc3, dyn, ww + 3 * H_FUSED, c)
                write_token(scores, lm3, s0, s1, n, c)
            n += BM

    kname = (f"indexer_rs_tb{tb}_{'fp4' if kfmt == FMT_FP4 else 'bf16'}"
             + (f"_ring{ring}" if ring else f"_pf{pf}")
             + ("_split" if split else "") + ("_hooks" if hooks else ""))
    indexer_rs.__name__ = indexer_rs.__qualname__ = kname
    k = kernel(indexer_rs, launch_bounds=(THREADS,), pdl=True)
    k.tb, k.kfmt, k.pf, k.split, k.hooks, k.ring = tb, kfmt, pf, split, hooks, ring
    _KERNELS[key] = k
    return k


def rs_geometry(T: int, N: int, table_rows: int, tpc: int | None = None, sms: int | None = None):
    """(TB, tpc, grid) of a v4 launch: TB = 1 / 2 / 4 tokens a chunk (1 for a per-token block
    table), ``tpc`` 64-key tiles a CTA (default: at most RESIDENT[TB] CTAs an SM, one wave when
    the chunks allow; ``sms`` default: the GPU's, 132 under the simulator)."""
    if sms is None:
        gpu = detect_gpu() if mode() == "gpu" else None
        sms = gpu.sm_count if gpu else 132
    tb = 1 if (table_rows > 1 or T <= 1) else (2 if T == 2 else 4)
    chunks = -(-T // tb)
    if chunks > 65535:
        raise ValueError(f"fused indexer v4: T = {T} tokens need {chunks} CTA rows of {tb} tokens "
                         "(grid y <= 65535); use variant v2 (or 'auto')")
    ntiles = -(-N // BM)
    if tpc is None:          # CTAs a chunk so that chunks x them fill ONE wave, then their tiles
        # (rounding the total instead left T = 64, N = 65536 at 17 x 16 = 272 CTAs for 264 slots:
        # a second wave of 8)
        tpc = -(-ntiles // max(1, (sms * RESIDENT[tb]) // chunks))
    tpc = max(1, int(tpc))
    return tb, tpc, (-(-ntiles // tpc), chunks)


def resolve_options(tb: int, kfmt: int, pf: int | None = None, split: int | None = None) -> tuple:
    """(pf, split) of a TB-token kernel for key format ``kfmt``: those given, ``RS_DEFAULTS``' for
    None."""
    return (RS_DEFAULTS["pf"][kfmt][tb] if pf is None else pf,
            RS_DEFAULTS["split"] if split is None else split)


def rs_kernels(options=((None, None),)):
    """(Kernel, signature) of the v4 / v6 specialisations (every TB and key format, for each
    (pf, split) or (pf, split, ring) in ``options``, None parts by ``resolve_options``: the
    default, each TB's and format's; ring None: ``RING_DEFAULTS``, absent: 0, v4), each once, for
    compile-only checks and precompiles."""
    from numba import types as ty
    a8, f32, i32, i64, u64 = (ty.uint8[::1], ty.float32[::1], ty.int32[::1], ty.int64,
                              ty.uint64[::1])
    sig = (a8, a8, a8, a8, f32, i32, i64, i64, i64, i32, i64, i64, i64, i64, f32, i64, u64)
    out = []
    for kf in (FMT_FP4, FMT_BF16):
        for tb in TB_CHOICES:
            for opt in options:
                ring = opt[2] if len(opt) > 2 else 0
                ring = RING_DEFAULTS[kf] if ring is None else ring
                k = rs_kernel(tb, kf, *resolve_options(tb, kf, opt[0], opt[1]), ring=ring)
                if all(k is not o for o, _ in out):
                    out.append((k, sig))
    return out


def ring_map(k_bits, gpu):
    """v6's tensor map (uint64[16], kernel-side) of a contiguous bf16 cache: ``k_bits`` [N, 128]
    uint16 seen as [N, 2, 64], in boxes of 64 rows x 2 x 128 B, 128B-swizzled (``ring_word``).
    ``gpu``: the driver's encoding, else the emulator's. (FP4 caches need none: bulk copies.)"""
    if gpu:
        from ..hw.tma import tensor_map_on_device as tmap
    else:
        from ..emu import tensor_map as tmap
    n = k_bits.shape[0]
    return tmap(k_bits.reshape(n, 2, 64), (BM, 2, 64), "128B")


__all__ = ["rs_kernel", "rs_geometry", "RS_DEFAULTS", "resolve_options", "rs_kernels",
           "dyn_smem_bytes", "perm_pos", "BM", "TB_CHOICES", "PF_CHOICES", "RING_CHOICES",
           "RING_DEFAULTS", "ring_map", "slot_bytes"]
