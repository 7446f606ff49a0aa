"""Top-k stage: the k largest scores of every row, sorted, with their int32 indices.

What it computes (the contract; ``topk`` below states the constraints)
-----------------------------------------------------------------------
For row r with valid length ``L_r`` (``lengths[r]``, else N) and ``K_r = min(k, L_r)``:

* ``indices[r, :K_r]``: the positions of the K_r largest of ``scores[r, :L_r]``, ordered by value
  descending, ties by LOWER index first -- a total order, so the result is deterministic and
  bitwise repeatable. ``values[r, i] = scores[r, indices[r, i]]`` bit for bit (same dtype).
* ``indices[r, K_r:] = -1`` and ``values[r, K_r:] = -inf``: the slots a short row cannot fill (the
  index is the authority: a real -inf score has a real index).
* Order: -0.0 and +0.0 are equal (ties by index); -inf ranks last among real values.
* NaN: NumPy inputs are checked before launch (``ValueError`` naming the first NaN's position;
  NaN beyond a row's length is never read). Device inputs are not scanned (that would cost a
  synchronisation): there NaN ranks above +inf -- torch.topk's order -- all NaNs equal.

How values are ordered on the device: the order-preserving key of a float's bits
---------------------------------------------------------------------------------
    key(u) = u ^ 0x80000000  if the sign bit is clear      (positive: above every negative)
           = ~u              if it is set                  (negative: larger magnitude -> smaller)
    with -0.0 mapped to +0.0 and every NaN to 0xFFFFFFFF (float32 on the GPU: one add.rn.f32 of
    +0 does both, ``key_f32_bits``); bfloat16 uses the same map on 16 bits, shifted to the top
    of a 32-bit key. Unsigned key order == float order.
    composite C = key * 2^32 + (2^32 - 1 - index): distinct for distinct indices; larger C = earlier
    in the output. The top-k is exactly the k largest composites.

Implementations (stage registry name ``topk``)
----------------------------------------------
* ``reference`` -- one block per row: radix select of the K-th largest composite, 8 bits a pass
  from the top (a shared-memory histogram per pass, stopping once the chosen bucket is taken
  whole), collect everything at or above it into shared memory, order by counting (each selected
  composite's position = how many selected are larger). Runs under the CUDA simulator.
* ``production:sm_90a`` -- six variants, chosen by ``PRODUCTION_VARIANT`` (what
  impl="production" runs: "auto" = "cluster" for at most 4 rows of at most 131072 scores or 8 of
  at most 65536 (GPU), else "split" below 32 rows (any length); from 32 rows "rowblock" for
  rows of up to 262144 scores, "fused" for longer ones; ``DSV4_TOPK_VARIANT``,
  ``TopkPlan(variant=)`` / ``topk_production(variant=)`` pick one; tools/bench_softmax_topk.py
  times all).
  ``rowblock`` (round 3; H100: 62.6 / 45.7 / 33.5 us on the three target shapes, see
    ``PRODUCTION_VARIANT``; round 4, with a sampled threshold since taken out again: 45.9 /
    32.1 / 27.1 us -- the landed round-4 kernel is untimed, CHANGELOG 0.4.0): ONE launch, one CTA
    of 1024 threads per row, nothing global but the row and the outputs: a 4096-bin shared
    histogram of the top 12 key bits (pass 1, HBM), a block scan for the threshold bin, the
    scores at or above it appended to a shared list (pass 2, L2; a float compare a score, one
    shared atomic per thread with a selected score), 8-bit radix refinement, a counting sort
    (``counting_sort_desc``; the bitonic network for clustered keys) in shared memory, scores
    written from their keys. No global atomics, fences or tickets. Napkin math above
    ``rowblock_kernel``: ~27 / ~15 / ~11 us (ncu found it issue-bound, not memory-bound).
  ``split`` (round 5; "auto" below 16 rows since 0.6.0, 32 since 0.7.0; H100: 71.6 / 27.7 /
    21.9 us on the three target shapes, see ``PRODUCTION_VARIANT``): ONE launch of S CTAs a
    row (rows x S <= SMs, all resident), each scanning a slice of ~N / S scores; they meet at
    per-row barriers in global memory (an atomic arrival counter, acquire polling): the row's
    histogram is the sum of the CTAs' (4096 bins, read back from L2), each CTA sorts the scores
    of its slice at or above the threshold bucket and publishes that run to the row's list, and
    each ranks its own run against the others (binary search) and writes its items to their
    output slots. Under the simulator (one CTA at a time: no barrier could ever be met) it runs
    as replay launches, one per barrier, with the same device code. Napkin math and
    measurements above ``split_kernel``.
    (A "bins" ending without the publish barrier was tried in 0.6.0 and taken out in 0.7.0: 2.5x
    slower on the H100; the note above ``split_kernel`` says why.)
  ``cluster`` (0.8.0; "auto" for <= 4 rows of <= 131072 scores, <= 8 of <= 65536 and, since
    0.14.0, 33-64 rows of 65537-131072 (``CL_AUTO_BANDS``); H100, 0.13.0: 12.8 / 11.9 us on the
    second and third target shapes (1 x 65536, k = 2048 and 4 x 65536, k = 512: both within
    target), 11.8 at (1, 65536, 512), 13.4 at (4, 131072, 1024), 15.9 at (8, 65536, 2048);
    0.14.0: 41.2-42.3 at (64, 131072, 2048) with S = 2, against rowblock's 45.4-46.3; 0.18.0,
    512 threads a CTA instead of 1024 there (``SP_CLUSTER_THREADS``): 38.3-40.7 against
    41.4-42.4 in the same runs; 0.19.0, the stash and a leaner ending: 33.4-33.6, 35.7-35.8 with
    the stash off in the same run; 0.20.0, pass 1 pipelined, a cheaper stashed pass 2, the
    pair ending and its one-exchange rounds: 29.4-29.5 (bfloat16 29.2, 44.5 before its sort
    stopped falling back); 0.23.0, the pair's joint sort, a fused round 0 and a three-instruction
    float32 key: 26.1-26.3 (bfloat16 25.8), the merge ending 28.2 in the same run; 0.24.0, the
    pair's ending split by slot: 25.6 (bfloat16 25.1; a build holding both endings timed 25.9
    against 26.4 for the joint sort); 0.24.1, re-timed with 0.24.0's build in the same run:
    25.8-25.9 against 25.8, and 12.3 / 11.0 on the second and third target shapes; the target is
    25):
    split's passes with each row ONE thread-block cluster of S = 2-16 CTAs (16 by default for
    <= 4 rows), co-scheduled by the hardware (no residency limit), exchanging through distributed
    shared memory instead of global memory: each histogram round is a reduce-scatter pushed with
    st.async on mbarriers (CTA s receives and sums its slice of bins from every CTA) and an
    all-gather of the sums pushed the same way, with no cluster barrier. Its own ending: the
    row's last histogram cuts the selected composites into S contiguous ranges of ~equal count,
    CTA r owns range r; after pass 2 each CTA pushes each item to its owner (counts, then items,
    st.async on mbarriers), and each owner ranks its items by counting and writes them after the
    owners above it -- no global atomic, list or fence, no released cluster barrier (of split's
    workspace only an empty row's done flag is written). A pair (S = 2) has no ranges: round 0's
    histogram places both lists' items in slots of one counting sort, CTA 0 ranks the first half
    of the slots and CTA 1 the rest, each pushing the other the items that are its (one
    exchange: ``pair_split_ending``); where a level round ran, each CTA sorts its own list, the
    two swap their sorted lists and each writes half of the merge (``cluster_pair_ending``).
    Where a slice takes several trips (64 x 131072: 65536 scores a CTA), pass 1 also keeps each
    score's top 16 key bits in shared memory (the stash, ``SP_STASH``) and pass 2 filters those
    (``stash_select``), loading only the ~1 K listed scores back instead of the slice
    (``TopkPlan(stash=)``; split has it on request).
    sm_90+ GPUs only (the simulator has no clusters: tests there cover split, whose passes it
    shares).
  The other three split a row over S blocks of 512 threads (S x rows ~ 4 blocks per SM). The workspace (histograms, counters, tickets) is zeroed once when
  allocated and left zero by every run (the row's finishing block cleans it).
    1. histogram (both variants): each block reads its slice once (16-byte loads), counts the top
       12 key bits in a 4096-bin shared histogram, adds it to the row's global histogram; the
       last block of the row (threadfence + ticket) finds the bin b1 holding the K-th largest
       and the count above it;
  ``three_pass``:
    2. filter: each block re-reads its slice; keys in bins above b1 go to the row's "sure" list
       (< K of them), keys in b1 to its candidate list (warp-aggregated atomics, one per warp);
    3. finish, one block of 1024 per row: radix-select the missing ``K - sure`` among the
       candidates (8-bit passes over the global list), collect the K into shared memory (one
       64-bit shared atomic per item: a CAS spin loop in SASS, ATOMS.CAST.SPIN.64), bitonic-sort
       them one stage per barrier (66 barriers for K = 2048), write values and indices.
  ``fused`` (one launch fewer, a cheaper finish):
    2. select: the filter of (2), then fence + a second ticket; the row's LAST block finishes it
       in the same launch: up to 8 candidates a thread (4096 a row) are held in registers, the
       8-bit radix passes run on them with a 256-bin shared histogram (3 barriers a pass, no
       global traffic), the sure list and the selected candidates go to shared memory with
       coalesced copies and warp-aggregated 32-bit shared atomics, and a bitonic sort doing
       three stages per barrier in registers (26 barriers for K = 2048, swizzled slots against
       bank conflicts) orders them. More than 4096 candidates: the three-pass finish routine.
  ``staged`` (round 2, not yet measured on hardware): ``fused`` with the select's appends staged
    in shared memory (one shared atomic per warp and list, then ONE global atomic per block and
    list to reserve its range, coalesced copies) instead of one global atomic per warp on the
    row's two counters; both launches sized to one wave (3 histogram / 2 select blocks per SM).
    See the napkin math above ``stage_slice`` for why.
  All: a row whose b1 bin holds more than ``capacity`` candidates (> N/8, at least 16384: e.g.
  one value repeated over most of the row) is done by the reference routine inside the same
  kernel: correct, but it reads the row ~5 more times with one block.

Napkin math (H100: ~3.0 TB/s HBM, 50 MB L2, 132 SMs, ~1.7 GHz; fused variant)
------------------------------------------------------------------------------
(64, 131072) fp32, k=2048: 33.5 MB of scores. Histogram: read once, ~11.5 us at 2.9 TB/s; shared
atomics ~8.4 M / 132 SMs = 64 K per SM, <= 4-way address conflicts on normal data (~8 K cycles,
~4.5 us, hidden under the loads). Select: re-reads them (the set is below L2 size: mostly L2
hits, ~5-8 us), appends ~k + |b1| ~ 3 K composites per row (~1.5 MB). Finish (per row, one SM,
overlapping other rows' select blocks): 3 refine passes x 3 barriers; sort of P = 2048:
26 barrier passes x ~200 cycles ~ 5 K cycles ~ 3 us; gather 2048 scores from L2 ~1 us.
Expect ~20-25 us (target 25; torch.topk ~208).
(1, 65536) fp32, k=2048: 256 KB, 32 blocks: everything is latency. Histogram launch ~3-4 us
(load, atomics, ticket, last block's 4096-bin scan), select ~2 us + finish ~5-6 us (refine
~1 us, sort ~3 us, write ~1 us), plus the gap between the two launches: ~11-14 us (target 15;
the three-pass variant measured 84 us).
(4, 65536) fp32, k=512: as above with P = 512 (sort 18 passes, ~1.5 us): ~8-10 us (target 12).
The three-pass variant's finish adds a third launch, global-latency-bound refine passes and
~3 K contended 64-bit shared CAS loops (the measured 84 us for B=1 suggests those dominate).
Measured on the H100 (2026-11-25): fused 153.4 / 40.4 / 32.5 us, three_pass 152.5 / 83.1 / 44.6
at the three shapes above. The estimate above missed the appends: one global atomic per warp
and list on the row's two counters, ~2.8 K a row, serialised in L2 -- the ``staged`` variant
stages them in shared memory (its napkin math is above ``stage_slice``: ~30 / ~19 / ~14 us).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import ml_dtypes
import numpy as np
from numba import cuda, float32, int32, int64, uint16, uint32, uint64
from numba.cuda import libdevice

from .. import registry
from ..hw.bits import bits_f32, f32_bits
from ..hw.portable import (address_of, async_wait, ballot, f32_to_list, gaddr, ld_acquire_u64,
                           ld_cg_v4_i32, ldg_v4, nanosleep, shfl_idx, shfl_up, shfl_xor)
from ..runtime import BF16, F32, ArrayIO, detect_gpu, device, is_device_array, kernel, mode
from ..runtime.arrays import check_lengths
from ..runtime.arrays import float_kind as _input_kind
from ..runtime.arrays import is_contiguous as _is_contiguous
from ..runtime.arrays import typestr as _typestr

try:  # the PTX bindings; absent only when numba itself runs as the simulator
    from ..hw import ops
except ImportError:  # pragma: no cover
    ops = None

K_MAX = 4096
EMPTY_F32 = np.float32(-np.inf)
EMPTY_BF16_BITS = 0xFF80          # bfloat16 -inf


# ----------------------------------------------------------------------------------------------
# The oracle (NumPy, independent of the key trick) and the tie-aware checker
# ----------------------------------------------------------------------------------------------
def topk_oracle(scores, k, lengths=None):
    """(values, indices) by NumPy sorting: value descending (NaN first, -0 == +0), index ascending.
    """
    x = np.asarray(scores)
    lead, n = x.shape[:-1], x.shape[-1]
    rows = x.reshape(-1, n)
    R = rows.shape[0]
    L = np.full(R, n) if lengths is None else np.clip(np.asarray(lengths).reshape(-1), 0, n)
    vals = np.empty((R, k), x.dtype)
    vals[...] = np.array(-np.inf, x.dtype)
    idx = np.full((R, k), -1, np.int32)
    for r in range(R):
        v = rows[r, :L[r]].astype(np.float64)
        nan = np.isnan(v)
        order = np.lexsort((np.arange(v.size), -np.where(nan, 0.0, v), ~nan))[:k]
        idx[r, :order.size] = order
        vals[r, :order.size] = rows[r, order]
    return vals.reshape(lead + (k,)), idx.reshape(lead + (k,))


def assert_topk(values, indices, scores, k, lengths=None, name="topk"):
    """Check a top-k result against ``topk_oracle``; raises AssertionError saying what is wrong.

    In order: shapes and dtypes; per row, the selected value multiset equals the oracle's (values
    compared as numbers: -0 == +0, NaN == NaN); the indices equal the oracle's exactly (the tie rule
    makes them unique); each value is the score at its index, bit for bit; empty slots are -1/-inf.
    """
    def host(a):
        return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)
    v, i, x = host(values), host(indices), np.asarray(scores)
    if v.dtype == np.uint16 and x.dtype == np.dtype(ml_dtypes.bfloat16):
        v = v.view(ml_dtypes.bfloat16)
    ev, ei = topk_oracle(x, k, lengths)
    if v.shape != ev.shape or i.shape != ei.shape:
        raise AssertionError(f"{name}: shapes {v.shape}/{i.shape}, expected {ev.shape}")
    if v.dtype != x.dtype or i.dtype != np.int32:
        raise AssertionError(f"{name}: dtypes {v.dtype}/{i.dtype}, expected {x.dtype}/int32")
    n = x.shape[-1]
    v2, i2, ev2, ei2 = (a.reshape(-1, k) for a in (v, i, ev, ei))
    x2 = x.reshape(-1, n)
    for r in range(v2.shape[0]):
        got = np.sort(np.nan_to_num(v2[r].astype(np.float64), nan=np.inf, posinf=1e300))
        exp = np.sort(np.nan_to_num(ev2[r].astype(np.float64), nan=np.inf, posinf=1e300))
        if not np.array_equal(got, exp):
            bad = np.flatnonzero(got != exp)[:4]
            raise AssertionError(f"{name}: row {r}: the selected values differ from the true "
                                 f"top-{k} (sorted, at {list(bad)}: got {got[bad]}, "
                                 f"expected {exp[bad]})")
        if not np.array_equal(i2[r], ei2[r]):
            bad = np.flatnonzero(i2[r] != ei2[r])[:4]
            raise AssertionError(f"{name}: row {r}: indices differ at slots {list(bad)}: got "
                                 f"{i2[r, bad]}, expected {ei2[r, bad]} (values {ev2[r, bad]}); "
                                 f"ties must go to the lower index, order by value descending")
        real = i2[r] >= 0
        if not np.array_equal(v2[r, real].view(np.uint8), x2[r, i2[r, real]].view(np.uint8)):
            raise AssertionError(f"{name}: row {r}: values are not the scores at their indices")
        if not np.all(np.isneginf(v2[r, ~real].astype(np.float64))):
            raise AssertionError(f"{name}: row {r}: empty slots (index -1) must hold -inf")


def order_keys(scores) -> np.ndarray:
    """The uint32 order-preserving keys of NumPy scores (float32 or bfloat16): the spec of the
    device functions key_f32_bits / key_bf16_bits below, in NumPy."""
    x = np.asarray(scores)
    if x.dtype == np.dtype(ml_dtypes.bfloat16):
        u = x.view(np.uint16).astype(np.uint32) << 16
    else:
        u = x.astype(np.float32).view(np.uint32)
    u = np.where(u == 0x80000000, np.uint32(0), u)                       # -0 -> +0
    key = np.where(u & 0x80000000, ~u, u ^ np.uint32(0x80000000)).astype(np.uint32)
    nan = np.isnan(x.astype(np.float32))
    return np.where(nan, np.uint32(0xFFFFFFFF if x.dtype == np.float32 else 0xFFFF0000), key)


# ----------------------------------------------------------------------------------------------
# Keys and composites (shared by every implementation)
# ----------------------------------------------------------------------------------------------
def _key_f32_bits_sim(u):
    u = uint32(u)
    u = uint32(0) if u == uint32(0x80000000) else u
    k = u ^ (((u >> uint32(31)) * uint32(0x7FFFFFFF)) | uint32(0x80000000))
    return uint32(0xFFFFFFFF) if (u & uint32(0x7FFFFFFF)) > uint32(0x7F800000) else k


@device(sim=_key_f32_bits_sim)
def key_f32_bits(u):
    """Order-preserving uint32 key of float32 bits u (NaN -> top, -0 -> +0): positive -> u ^
    0x80000000, negative -> ~u. On the GPU both rules come from one ``add.rn.f32`` of +0 (no
    FTZ): -0 + 0 = +0 (IEEE 754), and the GPU's float arithmetic returns the canonical NaN
    0x7FFFFFFF for any NaN input, whose key is 0xFFFFFFFF -- three instructions a key (FADD,
    SHF, LOP3) where the compares and selects took seven, in every pass-1 score (H100 check:
    ``test_topk_nan_payloads_on_device``, negative and payload NaNs). The simulator (NumPy
    keeps NaN payloads and signs) runs the explicit form."""
    v = f32_bits(libdevice.fadd_rn(bits_f32(uint32(u)), float32(0.0)))
    return v ^ (uint32(int32(v) >> 31) | uint32(0x80000000))


@device
def key_bf16_bits(h):
    """The same order on 16-bit bfloat16 bits, in the top half of a uint32 key."""
    h = uint32(h) & uint32(0xFFFF)
    h = uint32(0) if h == uint32(0x8000) else h
    k = (h ^ (((h >> uint32(15)) * uint32(0x7FFF)) | uint32(0x8000))) << uint32(16)
    return uint32(0xFFFF0000) if (h & uint32(0x7FFF)) > uint32(0x7F80) else k


@device
def score_key(x, i, kind):
    """Key of element i of a float32 or bfloat16-bits array."""
    if kind == BF16:
        return key_bf16_bits(x[i])
    return key_f32_bits(f32_bits(x[i]))


@device
def composite(key, j):
    """key * 2^32 + (2^32 - 1 - j): larger = earlier in the output (ties: lower index first)."""
    return (uint64(key) << uint64(32)) | uint64(uint32(0xFFFFFFFF) - uint32(j))


@device
def item_composite(r, kind):
    """The composite of a list item r = (score bits << 32) | column (the passes' lists)."""
    return composite(raw_key(uint32(r >> uint64(32)), kind), uint32(r & uint64(0xFFFFFFFF)))


@device
def composite_index(c):
    return int32(uint32(0xFFFFFFFF) - uint32(c & uint64(0xFFFFFFFF)))


@device
def row_length(row, n, lengths, has_len):
    if has_len:
        return min(max(int64(lengths[row]), int64(0)), int64(n))
    return int64(n)


@device
def write_empty(vals, idx, o, kind):
    idx[o] = -1
    if kind == BF16:
        vals[o] = EMPTY_BF16_BITS
    else:
        vals[o] = EMPTY_F32


# ----------------------------------------------------------------------------------------------
# Reference: one block per row
# ----------------------------------------------------------------------------------------------
@device
def count_larger(buf, src, m, c):
    """How many of buf[src:src + m] are larger than c: the rank of c among distinct composites
    (the reference's ordering, ``rank_sort_desc``)."""
    r = 0
    for j in range(m):
        if buf[src + j] > c:
            r += 1
    return r


@device
def topk_row_reference(x, base, L, k, kind, vals, idx, obase, hist, buf, st):
    """Top-k of row x[base : base + L] into vals/idx[obase : obase + k], by the whole block.

    Shared memory (the caller's): hist int32[256], buf uint64[4096], st int64[4].
    1. radix select: find the K-th largest composite 8 bits at a time, most significant first.
       A pass histograms the composites that share the bits chosen so far; walking the buckets from
       the top finds the one holding the K-th; if that whole bucket is wanted, stop.
    2. collect every composite at or above the chosen prefix: exactly K of them.
    3. order by counting: each one's output position = number of selected composites above it.
    Reads the row (passes + 1) times; O(K^2 / threads) to order. Readable, not fast.
    """
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    K = min(int64(k), L)
    prefix = uint64(0)
    want = K
    shift = 64
    done = K == 0
    while not done:
        shift -= 8
        for b in range(tid, 256, nt):
            hist[b] = 0
        cuda.syncthreads()
        for j in range(tid, L, nt):
            c = composite(score_key(x, base + j, kind), j)
            if shift == 56 or (c >> uint64(shift + 8)) == (prefix >> uint64(shift + 8)):
                cuda.atomic.add(hist, int32((c >> uint64(shift)) & uint64(255)), 1)
        cuda.syncthreads()
        if tid == 0:
            above = 0
            d = 255
            while above + hist[d] < want:
                above += hist[d]
                d -= 1
            st[0] = d
            st[1] = above
        cuda.syncthreads()
        d = st[0]
        want -= st[1]
        prefix |= uint64(d) << uint64(shift)
        done = hist[d] == want
        cuda.syncthreads()
    if tid == 0:
        st[2] = 0
    cuda.syncthreads()
    if K > 0:
        for j in range(tid, L, nt):
            c = composite(score_key(x, base + j, kind), j)
            if (c >> uint64(shift)) >= (prefix >> uint64(shift)):
                buf[cuda.atomic.add(st, 2, 1)] = c
    cuda.syncthreads()
    for s in range(tid, K, nt):
        c = buf[s]
        pos = count_larger(buf, 0, K, c)
        j = composite_index(c)
        idx[obase + pos] = j
        vals[obase + pos] = x[base + j]
    for s in range(K + tid, k, nt):
        write_empty(vals, idx, obase + s, kind)
    cuda.syncthreads()


@kernel(launch_bounds=(1024,))
def topk_ref_kernel(x, n, k, lengths, has_len, kind, vals, idx):
    """One block per row (blockDim.x threads, any count up to 1024)."""
    row = cuda.blockIdx.x
    hist = cuda.shared.array(256, int32)
    buf = cuda.shared.array(K_MAX, uint64)
    st = cuda.shared.array(4, int64)
    L = row_length(row, n, lengths, has_len)
    topk_row_reference(x, int64(row) * n, L, k, kind, vals, idx, int64(row) * k, hist, buf, st)


# ----------------------------------------------------------------------------------------------
# Production (sm_90a)
# ----------------------------------------------------------------------------------------------
HBITS = 12                      # first-level histogram: top 12 key bits (sign, exponent, 3 mantissa)
NBINS = 1 << HBITS
HSHIFT = 32 - HBITS
SCAN_THREADS = 512              # histogram / filter blocks
FINISH_THREADS = 1024
VARIANTS = ("three_pass", "fused", "staged", "rowblock", "split", "cluster")
# what impl="production" runs (DSV4_TOPK_VARIANT overrides it); the bench times every variant.
# "auto" (``resolve_variant``): "cluster" on the GPU for the (rows, length) bands of CL_AUTO_BANDS
# (0.8.0 / 0.11.0 / 0.14.0, CHANGELOG: faster than split / rowblock there; slower for more or
# longer rows, with its <= 16 CTAs a row against split's ~SMs / rows); else "split" below
# RB_AUTO_MIN_ROWS rows, whatever their length; from RB_AUTO_MIN_ROWS rows, "rowblock" for rows
# of at most RB_AUTO_MAX_N scores, "fused" beyond.
# H100, 2026-11-26, fp32 us (fused / rowblock / split; torch; CHANGELOG 0.6.0, 0.7.0):
# (64, 131072, 2048) 150.5 / 51.0 / 71.6 (195); (1, 65536, 2048) 40.8 / 34.6 / 27.7 (80);
# (4, 65536, 512) 32.2 / 28.1 / 21.9 (83); k = 2048: (1, 262144) 43.0 / 65.0 / 31.6 (100);
# (8, 262144) 91.3 / 68.7 / 39.2 (119); (1, 1048576) 51.4 / 173.4 / 27.0 (147); (8, 1048576)
# 107.7 / 184.6 / 59.3 (197); rowblock / split: (16, 131072, 2048) 47.6 / 42.1, (16, 262144,
# 2048) 68.1 / 47.9, (16, 65536, 512) 28.1 / 23.5, (32, 131072, 2048) 47.8 / 52.2: one CTA a row
# wins once the rows fill the SMs, one row over several SMs wins below ~32 rows, at every length
# timed (24 rows: not timed).
PRODUCTION_VARIANT = os.environ.get("DSV4_TOPK_VARIANT", "auto")
# "staged" geometry: blocks resident per SM (ptxas: histogram <= 40 regs x 512 threads -> 3;
# select capped at 64 regs by launch_bounds(512, 2) -> 2), so that each launch is one full wave
HIST_BLOCKS_PER_SM = 3
SELECT_BLOCKS_PER_SM = 2
SCAP = K_MAX // 2               # "staged": per-block shared staging slots of each list
FUSED_THREADS = SCAN_THREADS              # the fused variant's select + finish blocks
CPT = K_MAX // FUSED_THREADS    # candidates a fused-finish thread holds in registers (8)
# per-row ints: [b1, count above b1, sure count, candidate count, select ticket (fused), 3 spare]
META = 8


@device
def warp_inclusive_scan(v, lane):
    v = int32(v)                  # counts: 32-bit shuffles (Numba would widen the sum to int64)
    d = 1
    while d < 32:
        t = shfl_up(v, d)
        if lane >= d:
            v = int32(v + t)
        d *= 2
    return v


@device
def scan_bin(top, i, rot, m):
    """Bin i (0 .. per - 1; m = per - 1) of a thread's range in the block scans' rotated order:
    the lane starts at top - rot and wraps to top (``block_scan_from_top``, ``block_scan_desc``)."""
    return uint32(top - (uint32(i + rot) & m))


@device
def block_scan_from_top(h, nbins, wsum, rb=0, two=False):
    """The block scan both bucket searches share: thread t takes the nbins / blockDim bins counted
    down from the top (h[top], h[top - 1], .., h[top - per + 1]) and gets (top, per, s, incl):
    s = its bins' sum, incl = the items in its bins and every higher one (warp shuffles + one
    shared word per warp, two barriers; every warp scans the per-warp sums, so it also runs
    under the simulator at any block size). Needs nbins % blockDim.x == 0, blockDim.x % 32 == 0,
    nbins / blockDim.x a power of two. Each lane sums its bins in a rotated order (lane l starts
    at bin (l x per / 32) mod per of its range): the 32 lanes of a load hit 32 banks, where the
    plain order put lanes per words apart -- a 16-way conflict at 16 bins a thread (H100,
    2026-11-26: ~1 us a 4096-bin scan at 256 threads). Also returns rot (this lane's start) and
    tf, the sum of its first per - rot bins in that order (h[top - rot] .. h[top - per + 1]):
    ``block_scan_desc`` writes in the same rotated order from them. ``two`` (compile-time): scan
    h[b] + h[rb + b], two histograms summed as they are read (``pair_scan_bucket``)."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    lane = tid & 31
    # 32-bit loop arithmetic: the int64 form cost ~25 SASS instructions a bin, and on the
    # H100 each first-run instruction costs fetch time (ncu: "no instruction" stalls)
    per = uint32(uint32(nbins) // uint32(nt))
    top = uint32(uint32(nbins - 1) - uint32(tid) * per)
    rot = uint32((uint32(lane) * per) >> uint32(5))
    m = uint32(per - uint32(1))
    cut = uint32(per - rot)
    s = int32(0)
    tf = int32(0)
    i = uint32(0)
    while i < per:
        if i == cut:
            tf = s
        b = scan_bin(top, i, rot, m)
        s = int32(s + h[b] + h[uint32(rb) + b]) if two else int32(s + h[b])
        i = uint32(i + uint32(1))
    if rot == uint32(0):
        tf = s
    return top, per, s, block_inclusive_scan(s, wsum), rot, tf


@device
def block_inclusive_scan(v, wsum):
    """The sum of v (int32) over this thread and every lower one of the block (thread order),
    by warp shuffles and one shared word a warp (wsum), two barriers: ``block_scan_from_top``'s
    and ``stash_select``'s. Every warp scans the per-warp sums (no warp-0-only shuffles: the
    simulator's shuffle twins need the whole block). Needs blockDim.x % 32 == 0, <= 1024."""
    tid = cuda.threadIdx.x
    lane = tid & 31
    warp = tid >> 5
    incl = warp_inclusive_scan(v, lane)
    if lane == 31:
        wsum[warp] = incl
    cuda.syncthreads()
    w = wsum[lane] if lane < (cuda.blockDim.x >> 5) else 0
    wi = warp_inclusive_scan(w, lane)
    excl_w = shfl_idx(int32(wi - w), warp)
    cuda.syncthreads()                            # wsum is free again on return
    return int32(incl + excl_w)


@device
def block_find_bucket(h, nbins, want, st, wsum):
    """With h[0:nbins] a histogram (shared), find the bucket holding the want-th largest item.

    st[0] = that bucket, st[1] = items in higher buckets. A block scan of the bins counted from
    the top (``block_scan_from_top``) gives each thread the running counts of its range; the
    thread whose range crosses ``want`` walks its bins.
    Needs nbins % blockDim.x == 0, blockDim.x % 32 == 0, 1 <= want <= total.
    """
    top, per, s, incl, rot, tf = block_scan_from_top(h, nbins, wsum)
    excl = int32(incl - s)
    w32 = int32(want)
    if excl < w32 and incl >= w32:
        acc = excl
        b = top
        while int32(acc + h[b]) < w32:
            acc = int32(acc + h[b])
            b = uint32(b - uint32(1))
        st[0] = int32(b)
        st[1] = acc
    cuda.syncthreads()


@device
def warp_push(pred, counters, ci):
    """Warp-aggregated append: one atomicAdd per warp on counters[ci]; each predicated lane gets
    its own slot (or -1). All 32 lanes must call it together (converged)."""
    lane = cuda.threadIdx.x & 31
    m = ballot(pred)
    slot = -1
    if m != 0:
        leader = cuda.ffs(m) - 1
        base = 0
        if lane == leader:
            base = cuda.atomic.add(counters, ci, cuda.popc(m))
        base = shfl_idx(base, leader)
        if pred:
            slot = base + cuda.popc(m & ((uint32(1) << uint32(lane)) - uint32(1)))
    return slot


def _vec(kind, vectorized):
    return (8 if kind == BF16 else 4) if vectorized else 1


@device
def load_keys(x, src, i, keys, kind, VEC):
    """keys[0:VEC] = the keys of elements i.. (one 16-byte ld.global.nc.v4 when VEC > 1)."""
    if VEC == 1:
        keys[0] = score_key(x, i, kind)
    else:
        w0, w1, w2, w3 = ldg_v4(x, src, i, 2 if kind == BF16 else 4)
        if VEC == 4:
            keys[0] = key_f32_bits(w0)
            keys[1] = key_f32_bits(w1)
            keys[2] = key_f32_bits(w2)
            keys[3] = key_f32_bits(w3)
        else:
            keys[0] = key_bf16_bits(w0)
            keys[1] = key_bf16_bits(w0 >> uint32(16))
            keys[2] = key_bf16_bits(w1)
            keys[3] = key_bf16_bits(w1 >> uint32(16))
            keys[4] = key_bf16_bits(w2)
            keys[5] = key_bf16_bits(w2 >> uint32(16))
            keys[6] = key_bf16_bits(w3)
            keys[7] = key_bf16_bits(w3 >> uint32(16))


_PROD: dict = {}


def hist_kernel(kind, vectorized):
    """Pass 2: per-slice 4096-bin histogram of the top 12 key bits; the row's last block finds b1.

    Block b: row b // S, columns [s * chunk, (s + 1) * chunk) of the valid prefix. Reads each score
    once (16-byte loads), one shared atomic per score, one global atomic per non-empty bin.
    """
    key = ("hist", kind, vectorized)
    if key in _PROD:
        return _PROD[key]
    VEC = _vec(kind, vectorized)

    def topk_hist(x, n, k, lengths, has_len, S, chunk, ghist, meta, tickets):
        b = cuda.blockIdx.x
        row = b // S
        s = b - row * S
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        h = cuda.shared.array(NBINS, int32)
        wsum = cuda.shared.array(32, int32)
        st = cuda.shared.array(4, int32)
        for i in range(tid, NBINS, nt):
            h[i] = 0
        cuda.syncthreads()
        L = row_length(row, n, lengths, has_len)
        lo = int64(s) * chunk
        hi = min(lo + chunk, L)
        base = int64(row) * n
        src = address_of(x, VEC)
        keys = cuda.local.array(VEC, uint32)
        for c in range(lo + tid * VEC, hi, nt * VEC):
            load_keys(x, src, base + c, keys, kind, VEC)
            for q in range(VEC):
                if c + q < hi:
                    cuda.atomic.add(h, keys[q] >> uint32(HSHIFT), 1)
        cuda.syncthreads()
        gb = int64(row) * NBINS
        for i in range(tid, NBINS, nt):
            v = h[i]
            if v != 0:
                cuda.atomic.add(ghist, gb + i, v)
        # the last block of the row to finish sees the whole row histogram: every thread's adds
        # are made visible (fence) and complete (barrier) before the block takes its ticket
        cuda.threadfence()
        cuda.syncthreads()
        if tid == 0:
            st[0] = cuda.atomic.add(tickets, row, 1)
        cuda.syncthreads()
        if st[0] != S - 1:
            return
        for i in range(tid, NBINS, nt):
            h[i] = cuda.atomic.add(ghist, gb + i, 0)      # read through L2 (atomics are coherent)
        cuda.syncthreads()
        K = min(int64(k), L)
        if K > 0:
            block_find_bucket(h, NBINS, K, st, wsum)
            if tid == 0:
                meta[row * META + 0] = st[0]
                meta[row * META + 1] = st[1]
        elif tid == 0:
            meta[row * META + 0] = -1
            meta[row * META + 1] = 0

    topk_hist.__name__ = topk_hist.__qualname__ = \
        f"topk_hist_{'bf16' if kind == BF16 else 'f32'}_v{VEC}"
    k_ = _PROD[key] = kernel(topk_hist, launch_bounds=(SCAN_THREADS,))
    return k_


@device
def filter_slice(x, src, base, lo, hi, bin1, row, meta, sure, cand, capacity, keys, kind, VEC):
    """Columns [lo, hi) of row ``row`` (scores at x[base + column]): keys in bins above bin1 are
    appended to the row's sure list, keys in bin1 to its candidate list (counters meta[row, 2]
    and meta[row, 3]; warp-aggregated: one global atomic per warp and list). The trip count is
    the same for all lanes so the ballots see converged warps. Candidates past ``capacity`` are
    counted, not stored. ``keys``: the caller's local uint32[VEC]."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    step = int64(nt * VEC)
    trips = (hi - lo + step - 1) // step if hi > lo else 0
    for t in range(trips):
        c = lo + t * step + tid * VEC
        if c < hi:
            load_keys(x, src, base + c, keys, kind, VEC)
        for q in range(VEC):
            ok = c + q < hi
            kq = keys[q] if ok else uint32(0)
            bq = kq >> uint32(HSHIFT)
            slot = warp_push(ok and bq > bin1, meta, row * META + 2)
            if slot >= 0:
                sure[int64(row) * K_MAX + slot] = composite(kq, c + q)
            slot = warp_push(ok and bq == bin1, meta, row * META + 3)
            if slot >= 0 and slot < capacity:
                cand[int64(row) * capacity + slot] = composite(kq, c + q)


def filter_kernel(kind, vectorized):
    """Pass 3: re-read the slice; keys above bin b1 -> the row's sure list, in b1 -> candidates.

    Appends are warp-aggregated (one global atomic per warp and list). The loop trip count is the
    same for all lanes so the ballots see converged warps. Candidates past ``capacity`` are counted
    but not stored (the finish pass then takes the row's fallback).
    """
    key = ("filter", kind, vectorized)
    if key in _PROD:
        return _PROD[key]
    VEC = _vec(kind, vectorized)

    def topk_filter(x, n, lengths, has_len, S, chunk, meta, sure, cand, capacity):
        b = cuda.blockIdx.x
        row = b // S
        s = b - row * S
        b1 = meta[row * META + 0]
        if b1 < 0:
            return
        L = row_length(row, n, lengths, has_len)
        keys = cuda.local.array(VEC, uint32)
        filter_slice(x, address_of(x, VEC), int64(row) * n, int64(s) * chunk,
                     min(int64(s) * chunk + chunk, L), uint32(b1), row, meta, sure, cand,
                     capacity, keys, kind, VEC)

    topk_filter.__name__ = topk_filter.__qualname__ = \
        f"topk_filter_{'bf16' if kind == BF16 else 'f32'}_v{VEC}"
    k_ = _PROD[key] = kernel(topk_filter, launch_bounds=(SCAN_THREADS,))
    return k_


@device
def bitonic_sort_desc(buf, P):
    """Sort buf[0:P] (P a power of two, shared) descending: the whole block, ~log2(P)^2 / 2
    barriers."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    size = 2
    while size <= P:
        stride = size // 2
        while stride > 0:
            for i in range(tid, P // 2, nt):
                lo = 2 * i - (i & (stride - 1))
                hi = lo + stride
                a = buf[lo]
                c = buf[hi]
                if (a < c) == ((lo & size) == 0):
                    buf[lo] = c
                    buf[hi] = a
            cuda.syncthreads()
            stride //= 2
        size *= 2


@device
def warp_find_bucket(hist, nb, want, st32):
    """Called by one warp: with hist[0:nb] a shared histogram (nb a multiple of 32) and 1 <= want
    <= its total, st32[0] = the bucket holding the want-th largest item, st32[1] = the items in
    higher buckets, st32[2] = that bucket's count. nb / 32 buckets a lane from the top, one warp
    scan."""
    lane = cuda.threadIdx.x & 31
    per = nb // 32
    sacc = 0
    for q in range(per):
        sacc += hist[nb - 1 - per * lane - q]
    incl = warp_inclusive_scan(sacc, lane)
    excl = incl - sacc
    if excl < want and incl >= want:
        acc = excl
        d = nb - 1 - per * lane
        while acc + hist[d] < want:
            acc += hist[d]
            d -= 1
        st32[0] = d
        st32[1] = acc
        st32[2] = hist[d]


@device
def clean_row(row, ghist, meta, tickets):
    """Zero the row's histogram, meta and hist ticket: the workspace is clean for the next call
    (no zeroing launch). Callers read what they need from meta before a barrier, then call this."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for i in range(tid, NBINS, nt):
        ghist[int64(row) * NBINS + i] = 0
    if tid < META:
        meta[row * META + tid] = 0
    if tid == 0:
        tickets[row] = 0


@device
def swz(p):
    """Shared-memory slot of sort position p in the fused finish: bits 0-3 ^= bits 4-7, a
    bijection on every aligned power-of-two range [0, P). It spreads a warp's 8-apart 64-bit
    accesses (the sort's last passes) over all 16 bank pairs instead of 2 (16-way conflicts
    -> 2 wavefronts); consecutive positions stay conflict-free."""
    return p ^ ((p >> 4) & 15)


@device
def buf_slot(p, swizzled):
    return swz(p) if swizzled else p


@device
def bits_of_key(key, kind):
    """The score bits with order key ``key`` (the inverse of key_f32_bits / key_bf16_bits), and
    whether they are unique: the keys of +-0 (one key for both) and of NaN (all NaNs) are not."""
    if kind == BF16:
        h = key >> uint32(16)
        u = (h ^ uint32(0x8000)) if h & uint32(0x8000) else (~h & uint32(0xFFFF))
        return u, h != uint32(0x8000) and h != uint32(0xFFFF)
    u = (key ^ uint32(0x80000000)) if key & uint32(0x80000000) else ~key
    return u, key != uint32(0x80000000) and key != uint32(0xFFFFFFFF)


@device
def write_sorted(buf, K, k, x, base, obase, kind, vals, idx, swizzled, from_key=False):
    """buf[0:K] sorted composites -> indices and the scores gathered at them; -1/-inf after K.
    ``from_key``: the score bits come from the composite's key where that is unique (all but
    +-0 and NaN, which are gathered): no dependent global load a score (rowblock: ~5 us of
    gathers from L2/HBM at 64 x 131072, k = 2048)."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for s in range(tid, K, nt):
        write_at(buf[buf_slot(s, swizzled)], obase + s, x, base, kind, vals, idx, from_key)
    for s in range(K + tid, k, nt):
        write_empty(vals, idx, obase + s, kind)


@device
def write_at(c, o, x, base, kind, vals, idx, from_key):
    """Output slot o <- composite c: its index, and its score (from the key when ``from_key``
    and the key is unique, else gathered from the row at x[base:])."""
    j = composite_index(c)
    idx[o] = j
    unique = False
    if from_key:
        u, unique = bits_of_key(uint32(c >> uint64(32)), kind)
        if unique:
            if kind == BF16:
                vals[o] = u
            else:
                vals[o] = bits_f32(u)
    if not unique:
        vals[o] = x[base + j]


@device
def pad_pow2(buf, K, swizzled):
    """buf[K:P] = 0 (below every real composite: keys are >= 0x007F0000), P the power of two
    >= K; returns P."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    P = 1
    while P < K:
        P *= 2
    for i in range(K + tid, P, nt):
        buf[buf_slot(i, swizzled)] = uint64(0)
    return P


@device
def cas_pair(e, a, b, desc):
    """Compare-exchange e[a], e[b] (a < b, constant after unrolling: registers): the larger
    first when ``desc``, else the smaller."""
    x = e[a]
    y = e[b]
    if (x < y) == desc:
        e[a] = y
        e[b] = x


@device
def bitonic_smem_stages(buf, P, size, jhi, jlo, e):
    """Stages j = jhi, jhi / 2, .., jlo of the bitonic merge of ``size`` on the P composites at
    swizzled slots buf[swz(0:P)], by the whole block, up to three stages per barrier: a thread
    loads a group of 8 elements (offsets 0, s, .., 7s, s the pass's smallest stride) into
    registers (``e``: the caller's local uint64[8]), runs the stages 4s, 2s, s on them (12
    compare-exchanges), stores them back; a pass with 2 or 1 stages left does 4 or 2 elements."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    j = jhi
    while j >= jlo:
        ns = 3 if j >= 4 * jlo else (2 if j == 2 * jlo else 1)
        s = j >> (ns - 1)
        ls = 0
        while (1 << ls) < s:
            ls += 1
        for g in range(tid, P >> ns, nt):
            base = ((g >> ls) << (ls + ns)) | (g & (s - 1))
            desc = (base & size) == 0            # size > the group's offsets: one direction
            if ns == 3:
                for a in range(8):
                    e[a] = buf[swz(base + a * s)]
                for a in range(4):
                    cas_pair(e, a, a + 4, desc)
                for a in range(2):
                    cas_pair(e, a, a + 2, desc)
                    cas_pair(e, a + 4, a + 6, desc)
                for a in range(4):
                    cas_pair(e, 2 * a, 2 * a + 1, desc)
                for a in range(8):
                    buf[swz(base + a * s)] = e[a]
            elif ns == 2:
                for a in range(4):
                    e[a] = buf[swz(base + a * s)]
                cas_pair(e, 0, 2, desc)
                cas_pair(e, 1, 3, desc)
                cas_pair(e, 0, 1, desc)
                cas_pair(e, 2, 3, desc)
                for a in range(4):
                    buf[swz(base + a * s)] = e[a]
            else:
                e[0] = buf[swz(base)]
                e[1] = buf[swz(base + s)]
                cas_pair(e, 0, 1, desc)
                buf[swz(base)] = e[0]
                buf[swz(base + s)] = e[1]
        cuda.syncthreads()
        j = s >> 1


@device
def bitonic_sort_desc_fast(buf, P, e):
    """Sort the P (a power of two) composites at swizzled slots buf[swz(0:P)] descending, by the
    whole block, three bitonic stages per barrier (``bitonic_smem_stages``). Barriers: sum over
    merge sizes 2^m of ceil(m / 3): 26 for P = 2048 (vs 66 for one stage a barrier)."""
    size = 2
    while size <= P:
        bitonic_smem_stages(buf, P, size, size // 2, 1, e)
        size *= 2


@device
def warp_cx(v, j, take_max):
    """Bitonic compare-exchange of v with lane (lane ^ j)'s v (j < 32; shfl.sync.bfly): the
    larger of the two when ``take_max``, else the smaller. All 32 lanes call it."""
    o = uint64(shfl_xor(int64(v), j))        # (same bits; shfl takes signed/float words)
    big = v if v > o else o
    small = o if v > o else v
    return big if take_max else small


@device
def warp_merge64(a, b, p0, size, jtop):
    """Stages j = jtop .. 1 (jtop <= 32) of the descending bitonic merge of ``size`` on a warp's
    64 elements: sort position p0 (= 64 chunk + lane) holds a, p0 + 32 holds b. Stage 32 is
    inside the thread, stages 16 .. 1 are lane shuffles. Returns (a, b)."""
    lane = cuda.threadIdx.x & 31
    j = jtop
    while j > 0:
        if j == 32:
            if (a < b) == ((p0 & size) == 0):
                a, b = b, a
        else:
            lower = (lane & j) == 0
            a = warp_cx(a, j, lower == ((p0 & size) == 0))
            b = warp_cx(b, j, lower == (((p0 + 32) & size) == 0))
        j >>= 1
    return a, b


@device
def warp_chunks_merge(buf, P, size, jtop):
    """Every warp takes 64-element chunks of buf[swz(0:P)] (P >= 64) into registers (2 a lane)
    and runs stages jtop .. 1 of the merge of ``size`` on them (``warp_merge64``: for size <= 64
    the merges 2 .. size in turn when jtop = 0 is passed); trip counts are uniform across the
    block (the simulator's shuffle needs every thread)."""
    tid = cuda.threadIdx.x
    lane = tid & 31
    warp = tid >> 5
    nw = cuda.blockDim.x >> 5
    nch = P >> 6
    for t in range((nch + nw - 1) // nw):
        ch = t * nw + warp
        p0 = ch * 64 + lane
        a = uint64(0)
        b = uint64(0)
        if ch < nch:
            a = buf[swz(p0)]
            b = buf[swz(p0 + 32)]
        if jtop == 0:
            sz = 2
            while sz <= 64:
                a, b = warp_merge64(a, b, p0, sz, sz >> 1)
                sz *= 2
        else:
            a, b = warp_merge64(a, b, p0, size, jtop)
        if ch < nch:
            buf[swz(p0)] = a
            buf[swz(p0 + 32)] = b
    cuda.syncthreads()


@device
def bitonic_sort_desc_warp(buf, P, e):
    """``bitonic_sort_desc_fast`` with the stages of stride < 64 done by warps in registers:
    each warp sorts 64-element chunks with shuffles (merges 2 .. 64, no barrier), then each
    merge of size >= 128 runs its strides >= 64 in shared memory (three a barrier) and its
    strides 32 .. 1 in registers. Barriers for P = 2048: 1 + 7 + 5 = 13 (vs 26), and all 32
    warps of a 1024-thread block work in the register phases. P < 64:
    ``bitonic_sort_desc_fast``. Napkin math (P = 2048, 1024 threads): the register phases ~21 + 5
    x 6 stages of 4 shuffles + 2 selects on 2 values (~12 instructions) ~ 620 a thread -> ~5 K
    warp-instructions a scheduler... ~3 K cycles with the 7 shared passes (~300 cycles each):
    ~3 us vs ~5 us for 26 shared passes."""
    if P < 64:
        bitonic_sort_desc_fast(buf, P, e)
        return
    warp_chunks_merge(buf, P, 64, 0)
    size = 128
    while size <= P:
        bitonic_smem_stages(buf, P, size, size >> 1, 64, e)
        warp_chunks_merge(buf, P, size, 32)
        size *= 2


RB_BMAX = 64          # largest 12-bit bucket counting_sort_desc ranks by comparison (else bitonic)


@device
def block_scan_desc(h, nbins, out, wsum):
    """out[b] = h[b + 1] + .. + h[nbins - 1] (the items in higher bins) for every bin, by the
    whole block (``block_scan_from_top``); returns the largest h[b] this thread read. No barrier
    at the end: out is complete after the caller's next one. Each lane reads and writes its bins
    in the scan's rotated order (bin top - rot first, wrapping to top): its first per - rot bins
    start at the prefix of the per-thread bins above them (s - tf), the rest at 0. In the plain
    order the 32 lanes of a store were per words apart: ncu (H100, 2026-11-26, (1, 65536, 2048)
    at S = 16, 256 threads) counted 65536 shared wavefronts for 4096 ideal in this loop, ~2 us
    of the cluster kernel's owner ranges."""
    top, per, s, incl, rot, tf = block_scan_from_top(h, nbins, wsum)
    acc = int32(incl - tf)                        # excl + (s - tf): the bins top .. top - rot + 1
    mx = int32(0)
    m = uint32(per - uint32(1))
    cut = uint32(per - rot)
    i = uint32(0)
    while i < per:
        if i == cut:
            acc = int32(incl - s)                 # bin top: the items of the higher threads
        b = scan_bin(top, i, rot, m)
        v = h[b]
        out[b] = acc
        acc = int32(acc + v)
        mx = max(mx, v)
        i = uint32(i + uint32(1))
    return mx


@device
def sort_bin(c, cmin, shift):
    return int32((c - cmin) >> uint64(shift))


@device
def index_bits(L):
    """Bits of the column indices 0 .. L - 1 (at least 1): ``compact``'s jb for a row of L."""
    return int32(32 - cuda.clz(int32(max(L - 1, 1))))


@device
def compact(c, jb, ks):
    """Composite c = key * 2^32 + (2^32 - 1 - j) with j < 2^jb and key's low ks bits zero ->
    (key >> ks) * 2^jb + (2^jb - 1 - j): the same order, without the bits every item shares.
    ``counting_sort_desc`` bins these: bfloat16 keys (ks = 16) take ~100 values over a top-k
    (8 mantissa bits), and binned as composites each key's items shared one bin (the index only
    in bits below the bin's): up to ~60 a bin at (64, 131072, 2048) -- past RB_BMAX, the
    bitonic fallback ran (H100, 2026-11-27: the pair's own sort 20.7 us in bfloat16, 5 in
    float32); as compact values ~14 (NumPy model of one row)."""
    return ((c >> uint64(32 + ks)) << uint64(jb)) | (c & ((uint64(1) << uint64(jb)) - uint64(1)))


@device
def key_shift(kind):
    """``compact``'s ks: the low key bits every key of the kind has zero."""
    return 16 if kind == BF16 else 0


@device
def counting_sort_desc(buf, K, tmp, cnt, cur, bmax, st, wsum, e, jb, ks):
    """Sort the K distinct composites at swizzled slots buf[swz(0:K)] descending, in place, by
    the whole block, in ~7 barriers and a few dozen instructions an item (their indices < 2^jb,
    keys' low ks bits zero: bins are taken on ``compact`` values):
      1. their range: bin = (c - min) >> shift, shift such that max - min fits 12 bits
         (sort_bin: monotone, so bin order is the composites' order; linear in key space, so
         a range crossing an exponent boundary still spreads the items -- a bit window did
         not: 1 x 65536 normal scores, k = 2048, put ~270 items in a bin, H100);
      2. a 4096-bin histogram of the window (cnt), a descending block scan -> each bin's first
         output position (cur);
      3. scatter: each item to tmp[cur[bin]++] (unordered inside its bin);
      4. rank: an item's position = its bin's start + the number of larger items in its bin
         (a loop over the bin: composites are distinct, so positions are too).
    A bin of more than ``bmax`` items (clustered keys: the loop would cost bin^2) sends the whole
    sort to ``bitonic_sort_desc_warp`` instead (buf untouched until then). Scratch: tmp (K >= 64
    uint64; its first 64 hold the per-warp max/min first: no 64-bit shared atomics, which are
    CAS loops in SASS), cnt and cur (NBINS int32 each), st[3].
    Napkin math (K = 2048, 1024 threads, ~random keys: bins of ~1-5): ~150 instructions a
    thread -> ~5 K warp-instructions, vs ~98 K measured (ncu, H100) for the bitonic network of
    64-bit composites: 19 us of the 62.6 us (64 x 131072, k = 2048). Its loops are uint32
    while loops: a ``range(tid, K, nt)`` loop computes its trip count with a 64-bit division,
    and with those the sort issued ~3.5 K instructions a warp (ncu, H100, the cluster owners'
    ~1.1 K items at 512 threads, 2026-11-27: 6.9 us)."""
    tid = cuda.threadIdx.x
    nt = uint32(cuda.blockDim.x)
    lane = tid & 31
    Ku = uint32(K)
    if tid == 0:
        st[3] = 0
    i = uint32(tid)
    while i < uint32(NBINS):
        cnt[i] = 0
        i += nt
    hi_c = uint64(0)
    lo_c = ~uint64(0)
    i = uint32(tid)
    while i < Ku:
        c = compact(buf[swz(i)], jb, ks)
        hi_c = max(hi_c, c)
        lo_c = min(lo_c, c)
        i += nt
    for d in (16, 8, 4, 2, 1):
        hi_c = max(hi_c, uint64(shfl_xor(int64(hi_c), d)))
        lo_c = min(lo_c, uint64(shfl_xor(int64(lo_c), d)))
    if lane == 0:                                 # per-warp results -> tmp[0:64] (scratch; no
        tmp[tid >> 5] = hi_c                      # 64-bit shared atomics: CAS loops in SASS)
        tmp[32 + (tid >> 5)] = lo_c
    cuda.syncthreads()
    nw = nt >> 5                                  # every warp reduces the per-warp results
    hi_c = tmp[lane] if lane < nw else uint64(0)
    lo_c = tmp[32 + lane] if lane < nw else ~uint64(0)
    for d in (16, 8, 4, 2, 1):
        hi_c = max(hi_c, uint64(shfl_xor(int64(hi_c), d)))
        lo_c = min(lo_c, uint64(shfl_xor(int64(lo_c), d)))
    cmin = lo_c
    diff = hi_c - cmin
    if diff == 0:                                 # K == 1: sorted
        return
    shift = max(64 - int32(cuda.clz(diff)) - HBITS, 0)
    i = uint32(tid)
    while i < Ku:
        cuda.atomic.add(cnt, sort_bin(compact(buf[swz(i)], jb, ks), cmin, shift), 1)
        i += nt
    cuda.syncthreads()
    mx = block_scan_desc(cnt, NBINS, cur, wsum)
    if mx > bmax:
        st[3] = 1
    cuda.syncthreads()
    if st[3] != 0:                                # block-uniform: clustered keys
        P = pad_pow2(buf, K, True)
        cuda.syncthreads()
        bitonic_sort_desc_warp(buf, P, e)
        return
    i = uint32(tid)
    while i < Ku:
        c = buf[swz(i)]
        tmp[uint32(cuda.atomic.add(cur, sort_bin(compact(c, jb, ks), cmin, shift), 1))] = c
        i += nt
    cuda.syncthreads()
    i = uint32(tid)
    while i < Ku:
        c = tmp[i]
        b = sort_bin(compact(c, jb, ks), cmin, shift)
        end = uint32(cur[b])
        j = uint32(end - uint32(cnt[b]))
        r = j
        while j < end:
            if tmp[j] > c:
                r += uint32(1)
            j += uint32(1)
        buf[swz(r)] = c
        i += nt
    cuda.syncthreads()


@device
def finish_from_lists(x, base, obase, K, k, kind, b1, n_sure, n_cand, sure, sb, cand, cb,
                      vals, idx, hist, buf, st, st32, counter32):
    """The three-pass variant's finish for one row, by the whole block: radix passes (8 bits)
    over the candidates' composites in global memory below the 12 known key bits, stopping when
    the chosen bucket is wanted whole; collect sure + selected (= K composites) into buf (one
    shared atomic per item: 64-bit, a CAS loop in SASS, as measured for the three-pass variant;
    32-bit and warp-aggregated by the compiler with ``counter32``); bitonic sort; write."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    prefix = uint64(0)
    shift = 56
    if K > 0:
        prefix = uint64(b1) << uint64(64 - HBITS)
    want = K - n_sure
    done = K == 0
    while not done:
        shift -= 8
        for i in range(tid, 256, nt):
            hist[i] = 0
        cuda.syncthreads()
        for i in range(tid, n_cand, nt):
            c = cand[cb + i]
            if (c >> uint64(shift + 8)) == (prefix >> uint64(shift + 8)):
                cuda.atomic.add(hist, int32((c >> uint64(shift)) & uint64(255)), 1)
        cuda.syncthreads()
        if tid < 32:
            warp_find_bucket(hist, 256, want, st32)
        cuda.syncthreads()
        d = st32[0]
        want -= st32[1]
        prefix |= uint64(d) << uint64(shift)
        done = st32[2] == want
        cuda.syncthreads()
    if tid == 0:
        st[2] = 0
        st32[3] = 0
    cuda.syncthreads()
    for i in range(tid, n_sure, nt):
        pos = int64(cuda.atomic.add(st32, 3, 1)) if counter32 else cuda.atomic.add(st, 2, 1)
        buf[pos] = sure[sb + i]
    if K > 0:
        for i in range(tid, n_cand, nt):
            c = cand[cb + i]
            if (c >> uint64(shift)) >= (prefix >> uint64(shift)):
                pos = int64(cuda.atomic.add(st32, 3, 1)) if counter32 else cuda.atomic.add(st, 2, 1)
                buf[pos] = c
    P = pad_pow2(buf, K, False)
    cuda.syncthreads()
    bitonic_sort_desc(buf, P)
    write_sorted(buf, K, k, x, base, obase, kind, vals, idx, False)


@kernel(launch_bounds=(FINISH_THREADS,))
def topk_finish_kernel(x, n, k, lengths, has_len, kind, ghist, meta, tickets, sure, cand,
                       capacity, vals, idx):
    """Three-pass variant, pass 4, one block per row: select the missing ones among the
    candidates, sort, write (``finish_from_lists``), after cleaning the row's workspace. A row
    with more than ``capacity`` candidates takes the reference routine."""
    row = cuda.blockIdx.x
    hist = cuda.shared.array(256, int32)
    buf = cuda.shared.array(K_MAX, uint64)
    st = cuda.shared.array(4, int64)
    st32 = cuda.shared.array(4, int32)
    L = row_length(row, n, lengths, has_len)
    base = int64(row) * n
    obase = int64(row) * k
    K = min(int64(k), L)
    b1 = meta[row * META + 0]
    n_sure = int64(meta[row * META + 1])
    n_cand = int64(meta[row * META + 3])
    cuda.syncthreads()                       # every thread has its meta before it is zeroed
    clean_row(row, ghist, meta, tickets)
    if K > 0 and n_cand > capacity:          # too many candidates were stored: reference routine
        topk_row_reference(x, base, L, k, kind, vals, idx, obase, hist, buf, st)
        return
    finish_from_lists(x, base, obase, K, k, kind, b1, n_sure, n_cand, sure, int64(row) * K_MAX,
                      cand, int64(row) * capacity, vals, idx, hist, buf, st, st32, False)


# ----------------------------------------------------------------------------------------------
# The fused variant: histogram launch + one select launch whose last block per row finishes it
# ----------------------------------------------------------------------------------------------
@device
def finish_fused(x, L, base, obase, k, kind, row, ghist, meta, tickets, sure, cand, capacity,
                 vals, idx, hist, buf, st, st32):
    """The last select block of a row finishes it (every block's appends are fenced and counted
    before this runs; the counters are read by atomics, coherent in L2).

    Fast path (<= CPT * blockDim candidates, i.e. 4096 with 512 threads): each thread keeps up to
    CPT candidate composites in registers; radix passes of 8 bits below the 12 known key bits
    run on those registers with a 256-bin shared histogram (3 barriers a pass, no global
    traffic), stopping when the chosen bucket is wanted whole; the sure list is copied to
    buf[0:n_sure] and the selected candidates appended behind it by warp-aggregated 32-bit shared
    atomics; bitonic sort of the K in shared memory; write. More candidates: the three-pass
    finish (``finish_from_lists``, global passes); more than ``capacity``: the reference routine.
    """
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    K = min(int64(k), L)
    b1 = meta[row * META + 0]
    n_sure = int64(cuda.atomic.add(meta, row * META + 2, 0))
    n_cand = int64(cuda.atomic.add(meta, row * META + 3, 0))
    cuda.syncthreads()                       # every thread has its meta before it is zeroed
    clean_row(row, ghist, meta, tickets)
    sb = int64(row) * K_MAX
    cb = int64(row) * capacity
    if K == 0:
        write_sorted(buf, K, k, x, base, obase, kind, vals, idx, False)
        return
    if n_cand > capacity:
        topk_row_reference(x, base, L, k, kind, vals, idx, obase, hist, buf, st)
        return
    if n_cand > CPT * nt:
        finish_from_lists(x, base, obase, K, k, kind, b1, n_sure, n_cand, sure, sb, cand, cb,
                          vals, idx, hist, buf, st, st32, True)
        return
    cr = cuda.local.array(CPT, uint64)
    for q in range(CPT):
        i = tid + q * nt
        cr[q] = cand[cb + i] if i < n_cand else uint64(0)       # 0: no candidate
    for i in range(tid, n_sure, nt):
        buf[swz(i)] = sure[sb + i]
    if tid == 0:
        st32[3] = 0
    want = K - n_sure                        # >= 1: bin b1 holds the K-th largest
    prefix = uint64(b1) << uint64(64 - HBITS)
    hi_sh = 64 - HBITS                       # composite bits >= hi_sh are resolved
    done = False
    while not done:
        lo_sh = max(hi_sh - 8, 0)            # digit: bits [lo_sh, lo_sh + 8); those >= hi_sh
        for i in range(tid, 256, nt):        # are equal for every counted composite
            hist[i] = 0
        cuda.syncthreads()
        for q in range(CPT):
            c = cr[q]
            if c != 0 and (c >> uint64(hi_sh)) == (prefix >> uint64(hi_sh)):
                cuda.atomic.add(hist, int32((c >> uint64(lo_sh)) & uint64(255)), 1)
        cuda.syncthreads()
        if tid < 32:
            warp_find_bucket(hist, 256, want, st32)
        cuda.syncthreads()
        want -= st32[1]
        prefix |= uint64(st32[0]) << uint64(lo_sh)
        done = st32[2] == want or lo_sh == 0  # composites are distinct: lo_sh == 0 ends it
        hi_sh = lo_sh
    for q in range(CPT):
        c = cr[q]
        pos = warp_push(c != 0 and (c >> uint64(hi_sh)) >= (prefix >> uint64(hi_sh)), st32, 3)
        if pos >= 0:
            buf[swz(n_sure + pos)] = c
    P = pad_pow2(buf, K, True)
    cuda.syncthreads()
    e = cuda.local.array(8, uint64)          # the sort's registers (cr's are dead by now)
    bitonic_sort_desc_fast(buf, P, e)
    write_sorted(buf, K, k, x, base, obase, kind, vals, idx, True)


# ----------------------------------------------------------------------------------------------
# The staged variant: the fused one with block-staged appends and one-wave grids
# ----------------------------------------------------------------------------------------------
# Why (H100, 2026-11-25): the fused select took ~147 us at (64, 131072, k=2048) and ~35 us at
# (1, 65536, 2048) where its napkin math said ~15 and ~8. filter_slice appends with one global
# atomic per warp and list: on normal scores ~40% of a warp's 32-key groups hold a sure key and
# ~30% a candidate, so a row takes ~2.8 K atomics-with-return on the SAME two counters (and four
# rows' counters share a 128-byte line): they serialise in L2 (~10-30 ns each when contended) and
# each one's round trip stalls its warp (~3 per trip, 8 trips a block, 3 waves). Staging the
# appends in shared memory (one shared atomic per warp and list, ~100 cycles) and reserving the
# block's global range with ONE atomic per list cuts that to 2 x S global atomics a row.
# Napkin math, (64, 131072) fp32 k=2048, H100: histogram one wave of 384 blocks (6 a row), 33.5 MB
# from HBM ~12 us; select one wave of 256 blocks (4 a row, ~400 sure + ~350 candidates staged per
# block), re-read partly from L2 ~8-10 us; finish tail (64 rows in parallel, one block each:
# refine ~2 us, sort of 2048 ~26 x 400 cycles ~6 us, gather ~1 us) ~10 us: ~30 us (target 25).
# (1, 65536, 2048): histogram ~5.6 us (measured) + launch gap ~2 + select 32 blocks ~2 + finish
# ~10: ~19 us (target 15: the single-block sort is what remains). (4, 65536, 512): ~14 us.
@device
def stage_slice(x, src, base, lo, hi, bin1, row, meta, sure, cand, capacity, keys, nxt, kind,
                VEC, buf, scap, st32):
    """filter_slice with the appends staged in shared memory: sure keys to buf[0:scap], candidates
    to buf[scap:2 scap], slots from the block's counters st32[5] / st32[6] (warp-aggregated
    shared atomics; the caller zeroes them before a barrier). A key past its list's ``scap``
    staged slots takes a global slot directly (one atomic on the row counter: a rare path,
    counted the same way). ``stage_flush`` then moves the staged lists to the row's lists.
    The next trip's 16 bytes are loaded (into ``nxt``) before this trip's keys are appended:
    two loads in flight per thread (one wave of 2 x 512-thread blocks per SM needs them)."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    step = int64(nt * VEC)
    trips = (hi - lo + step - 1) // step if hi > lo else 0
    if trips > 0 and lo + tid * VEC < hi:
        load_keys(x, src, base + lo + tid * VEC, nxt, kind, VEC)
    for t in range(trips):
        c = lo + t * step + tid * VEC
        for q in range(VEC):
            keys[q] = nxt[q]
        if t + 1 < trips and c + step < hi:
            load_keys(x, src, base + c + step, nxt, kind, VEC)
        for q in range(VEC):
            ok = c + q < hi
            kq = keys[q] if ok else uint32(0)
            bq = kq >> uint32(HSHIFT)
            slot = warp_push(ok and bq > bin1, st32, 5)
            if slot >= 0:
                if slot < scap:
                    buf[slot] = composite(kq, c + q)
                else:
                    g = cuda.atomic.add(meta, row * META + 2, 1)
                    sure[int64(row) * K_MAX + g] = composite(kq, c + q)
            slot = warp_push(ok and bq == bin1, st32, 6)
            if slot >= 0:
                if slot < scap:
                    buf[scap + slot] = composite(kq, c + q)
                else:
                    g = cuda.atomic.add(meta, row * META + 3, 1)
                    if g < capacity:
                        cand[int64(row) * capacity + g] = composite(kq, c + q)


@device
def stage_flush(row, meta, sure, cand, capacity, buf, scap, st32):
    """After ``stage_slice``: one global atomic per list reserves the block's range in the row's
    list (meta[row, 2] / [row, 3] count every key, stored or not), then coalesced copies.
    Candidates past ``capacity`` are counted, not stored (the finish then takes the fallback)."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    cuda.syncthreads()                        # every staged append is in buf
    if tid == 0:
        ns = min(st32[5], scap)
        nc = min(st32[6], scap)
        st32[0] = cuda.atomic.add(meta, row * META + 2, ns) if ns > 0 else 0
        st32[1] = cuda.atomic.add(meta, row * META + 3, nc) if nc > 0 else 0
        st32[2] = ns
        st32[3] = nc
    cuda.syncthreads()
    gs = int64(st32[0])
    gc = int64(st32[1])
    for i in range(tid, st32[2], nt):
        sure[int64(row) * K_MAX + gs + i] = buf[i]
    for i in range(tid, st32[3], nt):
        if gc + i < capacity:
            cand[int64(row) * capacity + gc + i] = buf[scap + i]


@device
def select_slice(x, n, L, b1, row, s, S, chunk, meta, sure, cand, capacity, keys, nxt, kind, VEC,
                 STAGED, buf, scap, st32):
    """The select launch's block work (``select_kernel``, and the indexer's
    ``select_hist_kernel``): the slice s of the row's valid prefix L at or above bin b1 (-1: the
    row is empty) -> the row's sure / candidate lists (``filter_slice``; ``STAGED``, compile-time:
    staged in shared memory, ``stage_slice`` + ``stage_flush``), then a fence and the row's ticket.
    Returns whether this block took the row's last ticket (it runs the finish)."""
    tid = cuda.threadIdx.x
    if STAGED:
        if tid == 0:
            st32[5] = 0
            st32[6] = 0
        cuda.syncthreads()
        if b1 >= 0:                               # block-uniform: the barriers inside are safe
            stage_slice(x, address_of(x, VEC), int64(row) * n, int64(s) * chunk,
                        min(int64(s) * chunk + chunk, L), uint32(b1), row, meta, sure, cand,
                        capacity, keys, nxt, kind, VEC, buf, scap, st32)
            stage_flush(row, meta, sure, cand, capacity, buf, scap, st32)
    elif b1 >= 0:
        filter_slice(x, address_of(x, VEC), int64(row) * n, int64(s) * chunk,
                     min(int64(s) * chunk + chunk, L), uint32(b1), row, meta, sure, cand,
                     capacity, keys, kind, VEC)
    cuda.threadfence()                            # this block's appends, before its ticket
    cuda.syncthreads()
    if tid == 0:
        st32[4] = cuda.atomic.add(meta, row * META + 4, 1)
    cuda.syncthreads()
    return st32[4] == S - 1


def select_kernel(kind, vectorized, staged=False):
    """The fused variant's second (last) launch: filter_slice on each block's slice (re-read,
    mostly from L2), then fence + ticket; the row's last block runs ``finish_fused``.
    ``staged``: the staged variant's form (``stage_slice`` + ``stage_flush`` instead of
    filter_slice; at most 64 registers so that two blocks fit an SM)."""
    key = ("select", kind, vectorized, staged)
    if key in _PROD:
        return _PROD[key]
    VEC = _vec(kind, vectorized)
    STAGED = staged

    def topk_select(x, n, k, lengths, has_len, S, chunk, ghist, meta, tickets, sure, cand,
                    capacity, vals, idx, scap):
        b = cuda.blockIdx.x
        row = b // S
        s = b - row * S
        hist = cuda.shared.array(256, int32)
        buf = cuda.shared.array(K_MAX, uint64)
        st = cuda.shared.array(4, int64)
        st32 = cuda.shared.array(8, int32)
        keys = cuda.local.array(VEC, uint32)
        nxt = cuda.local.array(VEC, uint32)
        L = row_length(row, n, lengths, has_len)
        b1 = meta[row * META + 0]                 # written by the histogram launch
        if not select_slice(x, n, L, b1, row, s, S, chunk, meta, sure, cand, capacity, keys, nxt,
                            kind, VEC, STAGED, buf, scap, st32):
            return
        finish_fused(x, L, int64(row) * n, int64(row) * k, k, kind, row, ghist, meta, tickets,
                     sure, cand, capacity, vals, idx, hist, buf, st, st32)

    topk_select.__name__ = topk_select.__qualname__ = \
        f"topk_select{'_staged' if staged else ''}_{'bf16' if kind == BF16 else 'f32'}_v{VEC}"
    bounds = (FUSED_THREADS, SELECT_BLOCKS_PER_SM) if staged else (FUSED_THREADS,)
    k_ = _PROD[key] = kernel(topk_select, launch_bounds=bounds)
    return k_


# ----------------------------------------------------------------------------------------------
# The rowblock variant: one CTA per row, one launch, no global atomics, fences or tickets
# ----------------------------------------------------------------------------------------------
# Why (H100, 2026-11-25): the multi-block variants pay, per row, cross-block traffic on the
# critical path -- the histogram's global bin adds + fence + ticket, the select's appends on the
# row's counters (~2.8 K global atomics-with-return a row in ``fused``, each stalling its warp:
# ~8 round trips a trip, ~64 a block at B=64), a second fence + ticket and a second launch -- and
# measured 153 / 40 / 33 us at the three target shapes where their napkin math said ~20 / 12 / 9.
# Here a row never leaves its CTA: the histogram, the threshold, the appends and the finish are
# shared-memory operations separated by barriers (~0.1 us each), the row is read twice (HBM, then
# L2), and the launch count is one.
# Napkin math (H100, 1024 threads a CTA, 1 CTA per SM; ~1.7 GHz):
#  * issue: pass 1 ~8 instructions a score (key, shift, shared atomic), pass 2 ~10 (key, compare,
#    ballot): 65536 scores = 2048 warp-items x ~9 / 4 schedulers ~ 4.6 K cycles ~ 2.7 us a pass.
#  * memory: 4 x 16-byte loads in flight a thread (64 KB a CTA): ~64-90 GB/s a CTA from HBM,
#    ~2x that from L2; 64 CTAs together exceed HBM, so B=64 x 131072 fp32 (33.5 MB) is
#    HBM-bound: ~12 us for pass 1, ~6-8 us for pass 2 (L2 hits).
#  * finish: refine <= ~3 K composites in shared memory (1-2 passes, ~0.5 us), sort P composites
#    (``bitonic_sort_desc_fast``: 26 barrier passes for P = 2048, ~400 cycles each ~6 us; 18 for
#    P = 512 ~2.5 us), gather the K scores from L2 (~1 us).
#  => (64, 131072, 2048): ~12 + 7 + 8 ~ 27 us (target 25); (1, 65536, 2048): launch ~2 + 3 + 2.5
#     + 8 ~ 15 us (target 15); (4, 65536, 512): ~2 + 3 + 2.5 + 4 ~ 11 us (target 12). One SM per
#     row caps long rows: (1, 1048576) reads 4 MB through one SM (~50-60 us per pass): there the
#     multi-block variants are the better choice (``resolve_variant``).
ROW_THREADS = 1024
RB_LEVEL_BITS = 12                  # radix digit of the passes over the row (4096-bin histogram)
RB_CCAP = 4096                      # composites of the threshold bucket kept in shared memory
RB_LIST = K_MAX + RB_CCAP           # list slots: < K above the bucket + <= RB_CCAP in it
RB_SMEM = 8 * (K_MAX + RB_LIST)     # dynamic shared bytes: sort buffer (histogram aliased) + list
# from RB_AUTO_MIN_ROWS rows, rows at most this long go to "rowblock" when impl="production" runs
# "auto" (2 passes through one SM: 4 MB rows took ~180 us there; the multi-block "fused" is better)
RB_AUTO_MAX_N = 262144
RB_AUTO_MIN_ROWS = 32           # fewer rows: "split", any length (PRODUCTION_VARIANT's figures)
RB_PIPE_THREADS = 512           # CTAs of at most this many threads (>= 128 registers a thread)
# load the next trip while they use the current one (``rb_pass``: modes 0 and 2)
NO_STASH = -(1 << 62)           # ``rb_trip``'s sidx: no stash (any real one is > -2^40)


@device
def raw_bits(x, i, kind):
    """The bits of element i: float32 bits, or bfloat16 bits in the low half."""
    if kind == BF16:
        return uint32(x[i])
    return f32_bits(x[i])


@device
def raw_key(r, kind):
    return key_bf16_bits(r) if kind == BF16 else key_f32_bits(r)


@device
def raw_f32(r, kind):
    return bits_f32(r << uint32(16)) if kind == BF16 else bits_f32(r)


@device
def load_words_at(x, src, i, w, o, kind, VEC):
    """w[o:o + 4] = the 16 bytes at element i (one ld.global.nc.v4); VEC == 1: w[o] = the bits
    of element i (scalar load)."""
    if VEC == 1:
        w[o] = raw_bits(x, i, kind)
    else:
        w0, w1, w2, w3 = ldg_v4(x, src, i, 2 if kind == BF16 else 4)
        w[o] = w0
        w[o + 1] = w1
        w[o + 2] = w2
        w[o + 3] = w3


@device
def word_raw(w, o, q, kind, VEC):
    """The bits (``raw_bits``) of element q of the vector loaded by ``load_words_at`` at w[o]."""
    if VEC == 1:
        return w[o]
    if VEC == 4:
        return w[o + q]
    return (w[o + (q >> 1)] >> uint32(16 * (q & 1))) & uint32(0xFFFF)


@device
def above_prefix(key, j, hi, pfx):
    """composite(key, j) >> hi >= pfx >> hi, on the key alone while hi >= 32."""
    if hi >= 32:
        return (key >> uint32(hi - 32)) >= uint32(pfx >> uint64(hi))
    return (composite(key, j) >> uint64(hi)) >= (pfx >> uint64(hi))


@device
def rb_threshold_f32(tkey):
    """The float32 f with key(f) == tkey for a level-1 threshold key (low 20 bits zero): then
    for every score x (bf16 as float32), key(x) >= tkey  <=>  x >= f or x is NaN. Below the
    key of -inf every score is selected: f = -inf; above +inf's, only NaNs (f is a NaN)."""
    t = max(tkey, uint32(0x007FFFFF))
    u = t ^ uint32(0x80000000) if t & uint32(0x80000000) else ~t
    return bits_f32(u)


@device
def rb_append(msk, w, c0, vstep, kind, VEC, U, dyn64, st, lcap):
    """Append the thread's selected scores (bit u * VEC + q of ``msk``: element q of vector u of
    the trip) to the list dyn64[K_MAX:] as (bits << 32 | index): one shared atomic on st[4]
    per thread with a selected score (the list's order is free: it is a set), 32-bit unsigned
    slot arithmetic (no 64-bit wrap-around checks: ncu showed ~20 instructions a stored score
    and a 5-step warp scan per trip in the earlier form). Slots at or past ``lcap`` are
    counted, not stored (defensive: the exact passes bound the list by K - 1 + ccap)."""
    if msk != 0:
        pos = int32(cuda.atomic.add(st, 4, int32(cuda.popc(msk))))
        lc = int32(lcap)
        c32 = uint32(c0)                          # (32-bit: columns < 2^31)
        v32 = uint32(vstep)
        for u in range(U):
            for q in range(VEC):
                if msk & (uint32(1) << uint32(u * VEC + q)):
                    if pos < lc:
                        dyn64[uint32(K_MAX + pos)] = \
                            (uint64(word_raw(w, 4 * u, q, kind, VEC)) << uint64(32)) \
                            | uint64(uint32(c32 + uint32(u) * v32 + uint32(q)))
                    pos = int32(pos + int32(1))


@device
def stash_hits(pk, T):
    """The 4 slots of stash word pk (4 x 16 key bits, slot q in bits 16 q ..) at or above T (the
    prefix in a high half): bit q set."""
    lo = uint32(pk)
    hi = uint32(pk >> uint64(32))
    return uint32(uint32(uint32(lo << uint32(16)) >= T)
                  | uint32(uint32(lo >= T) << uint32(1))
                  | uint32(uint32(uint32(hi << uint32(16)) >= T) << uint32(2))
                  | uint32(uint32(hi >= T) << uint32(3)))


@device
def stash_select(dyn64, n, pfx, c_lo, st, lcap, wsum, x, base, kind, NT):
    """A stashed pass 2 (level 1): the columns c_lo + p (p < n, the slice) whose stashed top 16 key
    bits (``rb_trip``: slot p) are at or above pfx's -> the list dyn64[K_MAX:] as (score bits <<
    32) | column, the scores loaded from x[base + column]; st[4] = their count. key >> 16 >= pfx
    >> 48 is pass 2's level-1 test (pfx's low 52 bits are zero). No atomics: each thread tests
    its stash words (word j: slots 4j .. 4j + 3; thread t takes j = t, t + NT, ..: 8-byte loads,
    conflict-free; NT = blockDim, compile-time, so that a step's 8 loads take immediate offsets)
    into bit masks (``stash_hits``), 8 words a loop step, branch-free so that their loads are in
    flight together: a compare and a select a slot (only the last step checks the slice's end).
    Mask g (words 8 g .. 8 g + 7 of the thread's) lives in shared memory at dyn32[SP_HS + g NT +
    tid], the 16 KB before the stash ("cluster"'s histogram slice, dead from the last round to
    the ending; round 0's scan at SP_RS stays for the pair's ``pair_split_ending``; a local
    array would live in local memory, which the production kernels keep out; at most ~chunk / 32
    + NT <= 3 K words for a slice of at most SP_STASH_MAX). A block scan of the hit counts
    (``block_inclusive_scan``) gives the thread's first list slot; it writes one column a set
    bit and gathers the score: float32 by cp.async straight into the slot's high word
    (``f32_to_list``: no register waits on the load, one memory latency for all of them),
    bfloat16 (2 bytes, below cp.async's 4) by ``stash_fetch``'s loads afterwards.
    Measured forms (64 x 131072, k = 2048, S = 2 x 512, H100, 2026-11-27; the pass-2 stage with
    the loads): pass 2's trips over the stash with rb_append's atomics 6.2 us; this
    with every loop unrolled (masks in registers) 7.0, ~3.4 K SASS instructions run once a
    warp, stalled on instruction fetch; with the second step testing every word again 13.2 (it
    is the 98 % of words without a hit that cost); with a branch per word 7.2; with the masks in a
    local array 6.7-7.0 (ncu: about a third of it waits on the loads of the listed scores); with
    every word checked against the slice's end and the float32 scores loaded by ``stash_fetch``
    6.6-6.7 (ncu, 2026-11-27: ~28 instructions a stash word); this form (~13 a word, the
    float32 gather by cp.async) 3.8-3.9."""
    tid = cuda.threadIdx.x
    nt = uint32(NT)
    masks = cuda.shared.array(0, uint32)          # (dynamic: aliases dyn64; from SP_HS)
    T = uint32(uint32(pfx >> uint64(48)) << uint32(16))   # the prefix in a high half
    nu = uint32(n)
    nw = uint32((nu + uint32(3)) >> uint32(2))
    G = uint32((nw + uint32(8) * nt - uint32(1)) // (uint32(8) * nt))
    Gf = uint32((nu >> uint32(2)) // (uint32(8) * nt))     # steps of complete words only
    cnt = int32(0)
    g = uint32(0)
    while g < G:
        m = uint32(0)
        w0 = uint32(uint32(SP_STASH // 8) + uint32(tid) + uint32(8) * g * nt)
        if g < Gf:                                # (uniform)
            for e in range(8):
                m = uint32(m | uint32(stash_hits(dyn64[uint32(w0 + uint32(e) * nt)], T)
                                      << uint32(4 * e)))
        else:
            for e in range(8):
                j = uint32(uint32(tid) + (uint32(8) * g + uint32(e)) * nt)
                inside = j < nw
                b4 = stash_hits(dyn64[uint32(uint32(SP_STASH // 8)
                                             + (j if inside else uint32(0)))], T)
                left = min(uint32(nu - uint32(4) * (j if inside else uint32(0))), uint32(4))
                b4 = uint32(b4 & uint32(uint32(0xF) >> uint32(uint32(4) - left)))  # its slots
                m = uint32(m | (uint32(b4 << uint32(4 * e)) if inside else uint32(0)))
        masks[uint32(uint32(SP_HS) + g * nt + uint32(tid))] = m
        cnt = int32(cnt + int32(cuda.popc(m)))
        g = uint32(g + uint32(1))
    incl = block_inclusive_scan(cnt, wsum)        # this thread's hits and every lower one's
    pos = uint32(incl - cnt)
    if uint32(tid) == uint32(nt - uint32(1)):
        st[4] = incl                              # (the last thread's: the total)
    lc = uint32(lcap)
    c32 = uint32(c_lo)                            # (32-bit: columns < 2^31)
    first = pos
    g = uint32(0)
    while g < G:
        m = masks[uint32(uint32(SP_HS) + g * nt + uint32(tid))]
        while m != uint32(0):
            b = uint32(cuda.ffs(m) - 1)           # lowest set bit: word 8 g + b // 4, slot b % 4
            m = uint32(m & uint32(m - uint32(1)))
            j = uint32(uint32(tid) + (uint32(8) * g + (b >> uint32(2))) * nt)
            if pos < lc:
                col = uint32(c32 + uint32(4) * j + (b & uint32(3)))
                slot = uint32(uint32(K_MAX) + pos)
                if kind == BF16:
                    dyn64[slot] = uint64(col)
                else:
                    masks[uint32(2) * slot] = col     # the low word; the score to the high one
                    f32_to_list(dyn64, slot, x, base + int64(col))
            pos = uint32(pos + uint32(1))
        g = uint32(g + uint32(1))
    if kind == BF16:
        stash_fetch(x, base, dyn64, first, min(pos, lc), kind)
    else:
        async_wait()


@device
def stash_fetch(x, base, dyn64, i, end, kind):
    """dyn64[K_MAX + i .. K_MAX + end] (one thread's items of a stashed pass 2, ``stash_select``)
    = (score bits << 32) | column, the score loaded from x[base + column]: 4 items a step, their
    loads in flight together (~1 K scattered 4-byte loads a CTA at (64, 131072, 2048), ~2 a
    thread: one memory latency; no barrier before it, each thread fetching the items it wrote).
    (Issuing the first 4 hits' loads before the block scan's barrier instead, to overlap them
    with it, made the pass-2 stage 6.8 -> 7.9 us: H100, 2026-11-27.)"""
    while i < end:
        i1 = uint32(i + uint32(1))
        i2 = uint32(i + uint32(2))
        i3 = uint32(i + uint32(3))
        j0 = uint32(dyn64[uint32(K_MAX) + i] & uint64(0xFFFFFFFF))
        j1 = uint32(dyn64[uint32(K_MAX) + i1] & uint64(0xFFFFFFFF)) if i1 < end else uint32(0)
        j2 = uint32(dyn64[uint32(K_MAX) + i2] & uint64(0xFFFFFFFF)) if i2 < end else uint32(0)
        j3 = uint32(dyn64[uint32(K_MAX) + i3] & uint64(0xFFFFFFFF)) if i3 < end else uint32(0)
        b0 = raw_bits(x, base + j0, kind)
        b1 = raw_bits(x, base + j1, kind)
        b2 = raw_bits(x, base + j2, kind)
        b3 = raw_bits(x, base + j3, kind)
        dyn64[uint32(K_MAX) + i] = (uint64(b0) << uint64(32)) | uint64(j0)
        if i1 < end:
            dyn64[uint32(K_MAX) + i1] = (uint64(b1) << uint64(32)) | uint64(j1)
        if i2 < end:
            dyn64[uint32(K_MAX) + i2] = (uint64(b2) << uint64(32)) | uint64(j2)
        if i3 < end:
            dyn64[uint32(K_MAX) + i3] = (uint64(b3) << uint64(32)) | uint64(j3)
        i = uint32(i + uint32(4))


@device
def rb_load(x, src, base, c0, Lv, vstep, checked, kind, VEC, U, w, o):
    """w[o + 4 u: o + 4 u + 4] = the U vectors of a trip (``rb_trip``); ``checked``: only those
    before Lv."""
    for u in range(U):
        if (not checked) or c0 + u * vstep < Lv:
            load_words_at(x, src, base + c0 + u * vstep, w, o + 4 * u, kind, VEC)


@device
def rb_trip(x, src, base, c0, Lv, vstep, checked, kind, VEC, U, mode, hi, pfx, lo, mask, fT,
            dyn32, dyn64, st, w, lcap, sidx, loaded=False):
    """One trip of ``rb_pass``: U vectors of VEC scores at c0 + u * vstep (all loaded before any
    is used; ``loaded``: w already holds them); ``checked``: some may lie at or past Lv. mode 0:
    dyn32[key >> 20] += 1; mode 1: the composites sharing pfx's bits >= hi count their digit
    (c >> lo) & mask in dyn32; mode 2: scores with x >= fT or NaN (the level-1 threshold,
    ``rb_threshold_f32``) are appended (``rb_append``); mode 3: those whose composite is at or
    above pfx in its bits >= hi. ``sidx`` (mode 0; not NO_STASH: the stash is on): also store
    each score's top 16 key bits at the uint16 slot sidx + column of dynamic shared memory (4
    scores as one 8-byte store, in 32-bit arithmetic: Numba widens integer operations to 64 bits
    unless each result is cast), for ``stash_select``."""
    stash = mode == 0 and sidx > NO_STASH
    d16 = cuda.shared.array(0, uint16)            # (aliases dyn32 / dyn64)
    if not loaded:
        rb_load(x, src, base, c0, Lv, vstep, checked, kind, VEC, U, w, 0)
    sw = uint32((sidx + c0) >> 2) if stash else uint32(0)   # the trip's first stash word pair
    msk = uint32(0)
    for u in range(U):
        c = c0 + u * vstep
        ok = (not checked) or c < Lv
        swu = uint32(sw + uint32(u * (vstep >> 2)))        # (VEC > 1: 4 | vstep)
        slo = uint32(0)                           # the stash word pair of 4 scores
        shi = uint32(0)
        for q in range(VEC):
            r = word_raw(w, 4 * u, q, kind, VEC)
            if mode == 0:
                key = raw_key(r, kind)
                if ok:
                    cuda.atomic.add(dyn32, key >> uint32(HSHIFT), 1)
                if stash and ok:
                    if VEC == 1:
                        d16[sidx + c] = uint16(key >> uint32(16))
                    elif q & 3 == 0:
                        slo = uint32(key >> uint32(16))
                    elif q & 3 == 1:
                        slo = uint32(slo | (key & uint32(0xFFFF0000)))
                    elif q & 3 == 2:
                        shi = uint32(key >> uint32(16))
                    else:                         # 4 scores -> one 8-byte store
                        shi = uint32(shi | (key & uint32(0xFFFF0000)))
                        dyn64[uint32(swu + uint32(q >> 2))] = uint64(slo) | (uint64(shi)
                                                                             << uint64(32))
            elif mode == 1:
                if ok:
                    cc = composite(raw_key(r, kind), c + q)
                    if (cc >> uint64(hi)) == (pfx >> uint64(hi)):
                        cuda.atomic.add(dyn32, int32((cc >> uint64(lo)) & uint64(mask)), 1)
            else:
                if mode == 2:
                    f = raw_f32(r, kind)
                    sel = f >= fT or f != f
                else:
                    sel = above_prefix(raw_key(r, kind), c + q, hi, pfx)
                if ok and sel:
                    msk |= uint32(1) << uint32(u * VEC + q)
    if mode >= 2:
        rb_append(msk, w, c0, vstep, kind, VEC, U, dyn64, st, lcap)


@device
def rb_pass(x, src, base, c_lo, L, kind, VEC, NT, mode, hi, pfx, lo, mask, fT, dyn32, dyn64, st,
            lcap, w, reuse, sidx):
    """One pass of the whole CTA (NT threads: a compile-time constant, so that the trips'
    offsets are immediates) over the columns [c_lo, L) of the row at x[base:] (``rb_trip``s;
    c_lo a multiple of VEC: 0 for rowblock, the CTA's slice for split): full trips without
    bounds checks, one checked trip, the < VEC scores past the last vector as one scalar trip.
    Every thread runs the same trips. ``w``: the trips' words (the caller's local uint32[32]).
    ``reuse`` (mode 2): where the slice is one vector trip and no tail, w still holds it from
    pass 1 (mode 0: the same trip), so nothing is loaded again -- the caller kept w alive
    (``split_kernel``'s KEEP). ``sidx``: pass 1 fills the stash (``rb_trip``), NO_STASH for
    none. Modes 0 and 2 at NT <= RB_PIPE_THREADS load the next full trip into w[16:] before
    using the current one (w[0:16]; 16 more registers: 127 a thread in "cluster" at 512
    threads): each thread keeps a trip's loads in flight while it counts. H100, 2026-11-27,
    (64, 131072, 2048) at S = 2 x 512: pass 1 15.5 -> 14.8 us (with the launch), where plain
    read kernels of the same 33.5 MB in 128 CTAs took 13.5-13.9 us (dev measurement: 4 or 8
    vectors a thread a trip, pipelined or not, 256-1024 threads)."""
    tid = cuda.threadIdx.x
    nt = NT
    U = (4 if VEC != 8 else 2) >> (1 if mode % 2 == 1 else 0)   # modes 1, 3 (rare): composites
    Lv = L - (L - c_lo) % VEC                     # vector part; the < VEC rest is the tail
    vstep = int64(nt * VEC)
    step = vstep * U
    full = (Lv - c_lo) // step
    if reuse and Lv == L and Lv - c_lo <= step:   # one trip (full or checked), no tail
        if c_lo < Lv:
            rb_trip(x, src, base, c_lo + tid * VEC, Lv, vstep, True, kind, VEC, U, mode, hi,
                    pfx, lo, mask, fT, dyn32, dyn64, st, w, lcap, sidx, True)
        return
    if NT <= RB_PIPE_THREADS and mode % 2 == 0:   # the next trip's loads in flight meanwhile
        c0 = c_lo + tid * VEC
        if full > 0:
            rb_load(x, src, base, c0, Lv, vstep, False, kind, VEC, U, w, 0)
        for t in range(full):
            nxt = t + 1 < full
            if nxt:
                rb_load(x, src, base, c0 + step, Lv, vstep, False, kind, VEC, U, w, 16)
            rb_trip(x, src, base, c0, Lv, vstep, False, kind, VEC, U, mode, hi, pfx, lo, mask,
                    fT, dyn32, dyn64, st, w, lcap, sidx, True)
            if nxt:                               # (the last trip's words stay: ``reuse``)
                for i in range(4 * U):
                    w[i] = w[16 + i]
            c0 += step
    else:
        for t in range(full):
            rb_trip(x, src, base, c_lo + t * step + tid * VEC, Lv, vstep, False, kind, VEC, U,
                    mode, hi, pfx, lo, mask, fT, dyn32, dyn64, st, w, lcap, sidx)
    if c_lo + full * step < Lv:
        rb_trip(x, src, base, c_lo + full * step + tid * VEC, Lv, vstep, True, kind, VEC, U,
                mode, hi, pfx, lo, mask, fT, dyn32, dyn64, st, w, lcap, sidx)
    if VEC > 1 and Lv < L:
        rb_trip(x, src, base, Lv + tid, L, int64(nt), True, kind, 1, 1, mode, hi, pfx, lo,
                mask, fT, dyn32, dyn64, st, w, lcap, sidx)


@device
def find_bucket_round(dyn32, want, seg, split, CL, ghist, hrow, gbar, row, S, s, phase, nbuf, st,
                      wsum, mb):
    """The bucket holding the want-th largest of this round's histogram dyn32[0:NBINS] (this
    CTA's counts): "cluster" (CL, compile-time) sums the row's through distributed shared
    memory (``cluster_push_bucket``); split through global memory, buffer seg % nbuf
    (``split_hist_round``, barrier ``seg``), then ``block_find_bucket``; rowblock searches its
    own. Returns (bucket, the row's items above it, the bucket's count, halted: a replay launch
    ends here), all int32 but the flag."""
    if CL:
        d, above, cnt = cluster_push_bucket(dyn32, mb, want, CL, s, seg, st, wsum)
        return int32(d), int32(above), int32(cnt), False
    if split:
        if split_hist_round(dyn32, ghist, hrow + int64(seg % nbuf) * NBINS, gbar, row, S, s, seg,
                            phase, hrow, nbuf):
            return int32(0), int32(0), int32(0), True
    else:
        cuda.syncthreads()
    block_find_bucket(dyn32, NBINS, want, st, wsum)
    return int32(st[0]), int32(st[1]), int32(dyn32[st[0]]), False


@device
def rb_threshold_bucket(x, src, base, c_lo, c_hi, kind, VEC, NT, K, ccap, dyn32, dyn64, st, wsum,
                        lcap, stop, split, ghist, hrow, gbar, row, S, s, phase, nbuf, CL, mb, w,
                        sidx):
    """The bucket holding the K-th largest of the row, by the whole CTA (rowblock: the row;
    split / cluster: its slice [c_lo, c_hi), the histograms summed over the row's CTAs by
    ``find_bucket_round``): pass 1 counts the top 12 key bits (dyn32), a block scan finds the
    bucket d and ``want`` (how many of K it must give); while d holds more than ``ccap`` scores,
    a level pass (L2) counts the next 12 bits of the composites in d. Returns (want, pfx, hi,
    cnt, seg, halted): the composites sharing pfx's bits >= hi are the bucket, cnt of them;
    seg: split's barriers passed; halted: a replay launch or the ``stop`` 1 / 5 timing hook ended
    here (the caller returns). ``split``: a compile-time constant of the caller. ``w``: the
    passes' words (``rb_pass``; pass 1's are left there). ``sidx``: pass 1 fills the stash
    (``rb_trip``; NO_STASH: none)."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    rb_pass(x, src, base, c_lo, c_hi, kind, VEC, NT, 0, 64, uint64(0), 0, 0, float32(0), dyn32,
            dyn64, st, lcap, w, False, sidx)
    seg = 0
    if stop == 5:                                 # (timing hook: pass 1 alone)
        if CL:                                    # (the arrive of the kernel's start)
            ops.cluster_wait_acquire()
        return int64(0), uint64(0), 0, int32(0), seg, True
    d, above, cnt, halted = find_bucket_round(dyn32, K, seg, split, CL, ghist, hrow, gbar, row, S,
                                              s, phase, nbuf, st, wsum, mb)
    if halted:
        return int64(0), uint64(0), 0, int32(0), seg, True
    want = K - above
    pfx = uint64(d) << uint64(64 - RB_LEVEL_BITS)
    hi = 64 - RB_LEVEL_BITS                       # composite bits >= hi are resolved
    if stop == 1:                                 # (timing hook: CTA- / row-uniform)
        if CL:                                    # no CTA leaves while its slice may be read
            ops.cluster_arrive_relaxed()
            ops.cluster_wait_acquire()
        return want, pfx, hi, cnt, seg, True
    while cnt > ccap:                             # uniform (rare: dense or tied data)
        lo = max(hi - RB_LEVEL_BITS, 0)
        cuda.syncthreads()                        # every thread has read cnt and st
        for i in range(tid, NBINS, nt):
            dyn32[i] = 0
        cuda.syncthreads()
        rb_pass(x, src, base, c_lo, c_hi, kind, VEC, NT, 1, hi, pfx, lo, (1 << (hi - lo)) - 1,
                float32(0), dyn32, dyn64, st, lcap, w, False, NO_STASH)
        if split:
            seg += 1
        d, above, cnt, halted = find_bucket_round(dyn32, want, seg, split, CL, ghist, hrow, gbar,
                                                  row, S, s, phase, nbuf, st, wsum, mb)
        if halted:                                # (the caller reads nothing else)
            return want, pfx, hi, cnt, seg, True
        want -= above
        pfx |= uint64(d) << uint64(lo)
        hi = lo
    return want, pfx, hi, cnt, seg, False


def rowblock_kernel(kind, vectorized, threads=ROW_THREADS):
    """The rowblock variant's only launch: CTA r does row r (``ROW_THREADS`` threads; dynamic
    shared memory ``RB_SMEM``: dyn64[0:K_MAX] the sort buffer, whose first 16 KB hold the
    4096-bin histogram while the row is scanned, dyn64[K_MAX:] the list).
    1. pass 1 (HBM): histogram of the top 12 key bits; block scan -> the bucket d holding the
       K-th largest, ``want`` = how many of K it must give. While d holds more than ``ccap``
       scores (RB_CCAP; smaller: a test hook; e.g. uniform data, or a value repeated over the
       row), one more pass (L2) histograms the next 12 bits of the composites in d
       (composites are distinct: it ends).
    2. pass 2 (L2): every composite at or above d's prefix -> the list (< K above + <= ccap).
    3. in shared memory: 8-bit radix passes over the list until the chosen bucket is wanted
       whole, the K selected -> the sort buffer (swizzled), ``counting_sort_desc`` (scratch: the
       dead list; bins of more than ``bmax`` items: the bitonic sort, strides < 64 in registers,
       ``bitonic_sort_desc_warp``), write indices and the scores (from their keys, ``bits_of_key``).
    ``stop`` (timing hook, 0 in use): 1-4 end the kernel after pass 1 / pass 2 / the refine /
    the sort (outputs unwritten): tools/bench_softmax_topk.py --breakdown times each prefix.
    ``bmax`` (``TopkPlan.rb_bmax``, default ``RB_BMAX``; a test hook): the counting sort's
    largest bin. The list slots are bounded by K + ccap (``lcap``; RB_LIST).
    """
    key = ("rowblock", kind, vectorized, threads)
    if key in _PROD:
        return _PROD[key]
    VEC = _vec(kind, vectorized)
    NT = threads

    def topk_rowblock(x, n, k, lengths, has_len, vals, idx, ccap, stop, bmax):
        ops.griddepcontrol_wait()                 # PDL: the scores' writer has finished
        ops.griddepcontrol_launch_dependents()    # (the next kernel waits for our end itself)
        row = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nt = NT
        dyn64 = cuda.shared.array(0, uint64)
        dyn32 = cuda.shared.array(0, int32)       # aliases dyn64[0:NBINS // 2]
        h256 = cuda.shared.array(256, int32)
        wsum = cuda.shared.array(32, int32)
        st = cuda.shared.array(8, int32)
        e = cuda.local.array(8, uint64)
        w = cuda.local.array(32, uint32)          # the passes' words (``rb_pass``)
        L = row_length(row, n, lengths, has_len)
        base = int64(row) * n
        K = min(int64(k), L)
        if K == 0:                                # block-uniform
            write_sorted(dyn64, K, k, x, base, int64(row) * k, kind, vals, idx, False)
            return
        src = address_of(x, VEC)
        lcap = K + ccap                           # list slots (<= RB_LIST)
        for i in range(tid, NBINS, nt):
            dyn32[i] = 0
        if tid == 0:
            st[4] = 0
            st[5] = 0
        cuda.syncthreads()
        # 1. level passes: 12 bits of the composite each, from the top
        want, pfx, hi, cnt, _, halted = rb_threshold_bucket(
            x, src, base, int64(0), L, kind, VEC, NT, K, ccap, dyn32, dyn64, st, wsum, lcap, stop,
            False, dyn32, 0, dyn64, row, 1, 0, -1, 1, 0, dyn64, w, NO_STASH)
        if halted:                                # (timing hook: stop after this stage)
            return
        # 2. the list: every composite above the bucket, and the bucket's
        done = cnt == want                        # the bucket is wanted whole
        if tid == 0:                              # kept in shared memory over the pass
            st[6] = want                          # (fewer registers live: no spill)
            st[7] = K
        if hi == 64 - RB_LEVEL_BITS:              # level 1: a float compare a score
            rb_pass(x, src, base, int64(0), L, kind, VEC, NT, 2, hi, pfx, 0, 0,
                    rb_threshold_f32(uint32(pfx >> uint64(32))), dyn32, dyn64, st, lcap, w,
                    False, NO_STASH)
        else:
            rb_pass(x, src, base, int64(0), L, kind, VEC, NT, 3, hi, pfx, 0, 0, float32(0), dyn32,
                    dyn64, st, lcap, w, False, NO_STASH)
        cuda.syncthreads()
        n_list = st[4]
        for i in range(tid, n_list, nt):          # (bits, index) -> composite
            r = dyn64[K_MAX + i]
            dyn64[K_MAX + i] = item_composite(r, kind)
        cuda.syncthreads()
        want = int64(st[6])
        K = int64(st[7])
        if stop == 2:
            return
        # 3. refine the bucket in shared memory, 8 bits a pass
        while not done:
            lo = max(hi - 8, 0)
            for i in range(tid, 256, nt):
                h256[i] = 0
            cuda.syncthreads()
            for i in range(tid, n_list, nt):
                c = dyn64[K_MAX + i]
                if (c >> uint64(hi)) == (pfx >> uint64(hi)):
                    cuda.atomic.add(h256, int32((c >> uint64(lo)) & uint64(255)), 1)
            cuda.syncthreads()
            if tid < 32:
                warp_find_bucket(h256, 256, want, st)
            cuda.syncthreads()
            want -= st[1]
            pfx |= uint64(st[0]) << uint64(lo)
            done = st[2] == want or lo == 0      # composites are distinct: lo == 0 ends it
            hi = lo                               # (warp 0 rewrites st two barriers later)
        # the K selected -> the sort buffer (the histogram there is dead), sort, write
        trips = (n_list + nt - 1) // nt
        for t in range(trips):
            i = t * nt + tid
            c = dyn64[K_MAX + i] if i < n_list else uint64(0)
            slot = warp_push(i < n_list and (c >> uint64(hi)) >= (pfx >> uint64(hi)), st, 5)
            if slot >= 0:
                dyn64[swz(slot)] = c
        cuda.syncthreads()
        if stop == 3:
            return
        counting_sort_desc(dyn64, K, dyn64[K_MAX:2 * K_MAX], dyn32[4 * K_MAX:4 * K_MAX + NBINS],
                           dyn32[4 * K_MAX + NBINS:4 * K_MAX + 2 * NBINS], bmax, st, wsum, e,
                           index_bits(L), key_shift(kind))
        if stop == 4:
            return
        write_sorted(dyn64, K, k, x, base, int64(row) * k, kind, vals, idx, True, True)

    topk_rowblock.__name__ = topk_rowblock.__qualname__ = \
        f"topk_rowblock_{'bf16' if kind == BF16 else 'f32'}_v{VEC}_t{NT}"
    k_ = _PROD[key] = kernel(topk_rowblock, launch_bounds=(NT,), pdl=True)
    return k_


# ----------------------------------------------------------------------------------------------
# The split variant: S CTAs a row in ONE launch, joined by per-row barriers in global memory
# ----------------------------------------------------------------------------------------------
# Why (H100, 2026-11-26): one CTA a row is latency-bound on small batches. rowblock measured
# 33.8 us at (1, 65536, k = 2048): pass 1 + threshold 9.9 (64 scores a thread through one SM),
# pass 2 9.3, refine 3.6, sort 9.0, write 2.0 -- with 131 of 132 SMs idle; the multi-block
# "fused" (40.8 us) pays two launches, ~2.8 K contended global appends a row and a one-block
# finish. Here S CTAs share a row (rows x S <= SMs: all resident at once), each scans a slice of
# ~N / S scores (one or two 16-byte loads a thread), and they meet at barriers in global memory:
#   round 0 (and one more per level pass: a bucket over ``ccap``, rare): each CTA adds its
#     nonzero histogram bins to the row's global histogram; barrier; each reads the 4096 bins
#     back (ld.global.cg, 16 bytes: never a stale L1 line) and finds the bucket holding the K-th
#     largest;
#   publish: each CTA sorts its composites at or above that bucket's prefix (< K above it +
#     the bucket: <= K - 1 + ccap <= K_MAX a row, ccap capped so) -- a sorted run -- and appends
#     it to the row's list in global memory (one atomic for its offset); barrier;
#   rank: each CTA loads the row's list into shared memory; an own item's rank = its position in
#     its run + the items larger than it in each other run (a binary search a run); those ranked
#     below K go to their output slots. No refine passes, no single-CTA tail.
# Napkin math (H100, 1 x 65536 fp32, k = 2048; S = 64 CTAs of 256 threads, 1024 scores each):
# load ~1 us, histogram + ~600 global adds a CTA ~0.5 us, barrier ~1 us, read back 16 KB + scan
# ~1 us, pass 2 (L2) ~0.7 us; the list is K + the bucket (~2.7 K for normal scores: the bucket
# [1.75, 1.875) holds ~1 % of them), ~41 items a CTA: sort (one warp) ~0.5 us, publish + barrier
# ~1.5 us, list load ~1 us, rank 41 x 63 binary searches of ~6 steps / 256 threads ~0.3 us,
# write ~0.5 us: ~9 us + launch (target 15). (4, 65536, k = 512): S = 33, ~8 us (target 12).
# Measured (H100, 2026-11-26, tools/bench_softmax_topk.py --breakdown; cumulative us): with the
# rank by counting against the whole list (its first form), (1, 65536, 2048) 39.8: round 0 9.4,
# publish 12.6, rank 38.6 (a dependent load a step: latency, not work); with the sorted runs
# and binary search: 27.8 (round 0 9.7, publish 16.3, list load + rank 27.7), (4, 65536, 512)
# 22.5 (9.8 / 17.8 / 21.8), (64, 131072, 2048) 69.4 at S = 2 (rowblock 50.6: two CTAs a row
# halve the passes but add a 1 K-item sort and a barrier). Each stage is still ~3-10x its napkin
# figure: the loops of a global load then its shared store wait a full L2 round trip per item;
# the histogram read-back and the list load now issue 4 loads before their stores. The landed
# form (0.6.0, after the load-snippet fix): 27.7 (9.6 / 16.5 / 27.1 cumulative), 21.9, 71.6 --
# the list load + rank stage (~10.6 us at (1, 65536)) is 3x its napkin figure. Even at napkin
# speed this design has a floor near 16 us at (1, 65536, 2048): launch + load ~3.5, two barriers
# ~2 each, read-back + scan ~1.5, publish ~1.5, list load + rank ~3.
# 0.7.0 (H100, 2026-11-26), finer stops at (1, 65536, 2048), cumulative us: launch alone 1.8,
# pass 1 3.4, round 0 9.5, publish 16.4, list load 18.1, rank 25.0, write 27.1: the rank
# loop (~42 own items x 63 runs, ~6-step searches, 8 warps) is the largest stage. Where the time
# goes (ncu, same shape, a build with a 3 us slower rank form): the top stall is "no
# instruction" (33 % of samples), then "wait" (24 %), "short scoreboard" (11 %), "barrier"
# (8 %); most samples sit on straight-line code each warp runs ONCE (~190 KB of SASS; one CTA
# of 8 warps an SM): the kernel is bound by instruction fetch and dependent latency, not by
# memory or issue. Two rank forms that search several pairs a thread at once with fixed step
# counts (more independent loads in flight) were SLOWER (rank 10.7 / 12.1 us vs 8.4), so the
# next step is a smaller executed path (loops for the unrolled trips and sort networks), not
# more ILP.
# "cluster" (0.8.0): the same kernel, each row one thread-block cluster (CL = S <= 16 CTAs, the
# hardware co-schedules them: no residency limit, no workspace use but an empty row's done
# flag), exchanging through distributed shared memory. A barrier.cluster round costs ~445 ns on
# the H100 with a released arrive (ptxas puts a MEMBAR.ALL.GPU before it, global writes or not)
# and ~30 ns with a relaxed one (tools/probe_cluster_sync.py, 2026-11-26), so since 0.11.0 the
# histogram rounds use no cluster barrier: each CTA pushes bin slice r of its histogram to CTA
# r with st.async, completing bytes on r's mbarrier; CTA r sums its slice and pushes the sums
# to every CTA, which finds the bucket itself (``cluster_push_bucket``). Until 0.11.0 the
# ending was split's (each CTA sorted its run; the runs' lengths by a released barrier; every
# CTA copied every run through DSMEM and ranked its items by binary searches): at (1, 65536,
# 2048), S = 16 x 256 threads, H100, cumulative us: launch 1.8, pass 1 3.6, round 0 7.0, pass 2
# + sort + publish 13.0, list 15.7, rank 22.6, write 23.0. Since 0.12.0 the ending has owners
# instead (``cluster_splitters``, ``cluster_owner_ending``): the row's last histogram, which
# every CTA holds, cuts the listed composites into S ranges of ~n_all / S (interpolating inside
# a bin); each CTA sends each of its pass-2 items to the range's owner (counts first, then the
# items, both st.async on mbarriers), and each owner ranks only its own ~n_all / S items by
# counting, the owners before it giving the offset: no sort of the own run, no gather, no
# binary search, no released cluster barrier. Same shape, 2026-11-26, final code: launch 1.9,
# pass 1 3.8, round 0 6.6, owner ranges + pass 2 + counts exchanged 13.7, items exchanged 14.0,
# rank and write 16.3. The owner ranges alone measured ~4.9 us (stop 8); in 0.13.0 ncu found a
# bank conflict and int64 loops in the block scans behind that (``cluster_splitters``), and
# with those mended: launch 2.0, pass 1 3.9, round 0 5.9, owner ranges 8.0, pass 2 9.1, owners
# 9.5, total 13.0 (H100, 2026-11-27).
# Tried in 0.11.0, correct (the cluster GPU tests) and slower, taken out: an ending by regular
# sampling (each CTA's sorted run gives S - 1 samples to every CTA, all pick the same splitters,
# each CTA receives one contiguous range of the row's order through DSMEM atomics and stores,
# sorts it and writes it: no gather, no rank): 29.1 vs 24.3 us at (1, 65536, 2048), 25.8 vs 18.2
# at (4, 65536, 512); ranking the 240 samples alone took ~5.6 us (64-bit index arithmetic and
# dependent shared loads in a loop Numba does not unroll).
# Slower and not kept: 512 / 1024 threads a CTA (23.2 / 28.3 us vs 24.2: the rank gains, the
# sort and passes lose); a rank merging chunks of own items with each run (a walk then a
# search: 9.5 vs 5.7 us, the lanes' walks diverge); 16 CTAs for 8 rows (two waves: 44.9 us vs
# 24.8 at S = 8).
# Tried and taken out (0.6.0 -> 0.7.0): a "bins" ending without the publish barrier -- the
# level-1 histogram gave each bin at or above the threshold its region of the row's list, each CTA
# claimed room in the bins its run touched and counted its items done, and the CTA completing a
# bin sorted and wrote it. Correct (simulator and H100 tests) but 2.5x slower on the H100
# (2026-11-26: 68.9 vs 27.0 us at (1, 65536, 2048), 48.6 vs 21.8 at (4, 65536, 512)): the CTA
# arriving last completes nearly every bin and sorts them one after another (~2.7 K items for
# k = 2048), which the publish ending spreads over all CTAs. The code is in git (70aa5d9).
# Barriers: a per-row uint64 counter, only ever incremented. Every CTA of a row arrives at the
# same barriers, so between barriers the counter is a multiple of S: the arrival that read ``old``
# waits for (old // S + 1) * S. Histograms: SP_NBUF = 3 rotating buffers a row; after barrier j
# each CTA zeroes its share of buffer (j + 2) % 3, whose last reads came before barrier j and
# whose next adds come after barrier j + 1: the workspace is zero again when the launch ends.
# All rows x S CTAs must be resident together (one an SM, checked at plan time): a kernel holding
# SMs on another stream only delays them; a grid larger than the GPU would never meet.
# Replay (the CUDA simulator runs one CTA at a time, so no barrier could be met there; on the GPU
# a debug mode): launch p = 0, 1, .. runs every CTA up to barrier p with side effects (global adds,
# the publish, the outputs) only in its segment p (between barriers p - 1 and p), recomputing the
# rest from what earlier launches left in global memory (one histogram buffer a round, zeroed by
# the host); the host repeats until every row has flagged its outputs done. Same device code,
# minus the waits.
SP_NBUF = 3                     # rotating histogram buffers a row (GPU)
SP_ROUNDS = 6                   # histogram rounds a row at most: 1 + ceil((64 - 12) / 12)
SP_LMAX = K_MAX                 # composites published a row at most: K - 1 + ccap, ccap <= K_MAX + 1 - k
SP_SMEM = 16 * K_MAX            # dynamic shared bytes: sort area (histogram aliased) + the row's list
SP_HS = SP_SMEM // 4            # "cluster": dyn32[SP_HS:] holds the CTA's summed histogram slice
SP_MAX_S = 1024                 # CTAs a row at most (the run table in shared memory)
SP_LOADS = 8                    # list items a thread loads before storing them (rank stage)
SP_CLUSTERS = (2, 4, 8, 16)     # "cluster": CTAs a row = the cluster size (16: non-portable)
# "cluster" default S: the largest with rows x S <= SP_CLUSTER_CTAS (H100, 2026-11-26: 8 rows x 16
# ran in two waves, 44.9 us vs 24.8 at S = 8; 4 x 16 in one); "auto" runs "cluster" for rows x
# length within a band of CL_AUTO_BANDS ((min, max rows, min, max scores a row): the shapes timed
# faster than split / rowblock), on the GPU only (the simulator has no clusters: split there).
# H100, 2026-11-26, 0.11.0 kernels, fp32 us, cluster vs split: 8 x 65536 k 2048 23.1 vs 28.0
# (S = 8: the band's 5-8 rows share this geometry); slower: 16 x 65536 k 512 24.3 vs 20.6,
# 8 x 131072 30.5 vs 26.7, 1 x 262144 29.0 vs 26.2, 2 x 262144 29.2 vs 27.0; faster, not in a
# band (one row count timed): 16 x 131072 38.0 vs 40.7, 16 x 262144 43.5 vs 46.4 (S = 4, 1024
# threads)
SP_CLUSTER_CTAS = 64
SP_RA = 2 * K_MAX               # "cluster": dyn32[SP_RA:SP_RA + NBINS] receives the CTAs' slices
SP_RB = SP_RA + NBINS           # of a round's histograms, dyn32[SP_RB:SP_RB + NBINS] the row's sums
SP_RS = NBINS                   # dyn32[SP_RS:SP_RS + NBINS] (the sort area's second 16 KB, free
# until the ending): the last round's descending scan of those sums (``cluster_push_bucket``),
# kept through pass 2 for a pair's split ending (``joint_slot``)
SP_RSORT = 128                  # runs of at most this many composites: ordered by counting
# (``rank_sort_desc``: H100, 2026-11-26, (4, 65536, 512) at S = 16, ~45 a CTA: 18.1 -> 16.7 us;
# with the limit at 256, (1, 65536, 2048)'s ~160 a CTA went 24.2 -> 24.6: the bitonic net there)
CL_AUTO_BANDS = ((1, 4, 1, 131072), (1, 8, 1, 65536), (33, 64, 65537, 131072))
# (min rows, max rows, min length, max length). The third (0.14.0), against rowblock, H100,
# 2026-11-27, fp32, 64 x 131072 k 2048: cluster (S = 2, 1024 threads) 41.2 / 42.3 / 41.6 us vs
# rowblock 45.4 / 46.3 / 45.6 (three runs); 64 x 65536 k 512 was even (26.4 / 27.0 vs 26.6 / 27.2),
# so it stays rowblock. Only 64 rows were timed (128 CTAs: one wave on the 132-SM H100 SXM, two
# on a GPU with fewer SMs), bf16 there was not.
SP_SMEM_CLUSTER = SP_SMEM + 4 * SP_LMAX + 4 * NBINS   # + the histogram slice (<= 8 KB), later
# the items' owner slots, then (with the 16 KB after them) counting_sort_desc's counts
SP_PAIR = SP_SMEM_CLUSTER // 8  # "cluster" pairs: dyn64[SP_PAIR:] receives the peer's items
SP_U = SP_PAIR + SP_LMAX        # pairs' split ending (``pair_split_ending``): dyn64[SP_U:SP_U + M]
# this CTA's items in output order of their slots
SP_SMEM_PAIR = 8 * (SP_U + SP_LMAX)   # a pair's dynamic shared bytes without the stash (160 KB)
JOINT_Q = (NBINS - 1) << 20     # a composite's low-word bits that carry its joint slot
PAIR_MERGE = 16                  # split_kernel's ``stop`` + this: a pair merges sorted lists
# (``TopkPlan.pair_merge``: the split ending's level-round form, forced for tests and A/B timing)
SP_OSORT = 256                  # "cluster": an owner ranks up to this many items by counting
# The stash (split and cluster, 0.19.0): pass 1 keeps each score's top 16 key bits in shared
# memory, from byte SP_STASH (after "cluster"'s summed histogram slice, dyn32[SP_HS:SP_HS +
# NBINS]; its later use of [SP_STASH, SP_SMEM_CLUSTER) comes after pass 2), so that pass 2 reads
# 2 bytes a score there instead of the 4 from global memory again (33.5 MB at (64, 131072) does
# not stay in the H100's L2 between the passes). On where the slice takes more than one trip
# (the one-trip slices keep pass 1's registers: KEEP) and is at most SP_STASH_MAX scores.
SP_STASH = SP_SMEM + 4 * NBINS
SP_STASH_MAX = 65536            # 128 KB: with SP_STASH, 208 KB of the H100's 227 KB a CTA
SP_CLUSTER_THREADS = 512        # "cluster": the largest CTA (0.18.0; 1024 before). H100,
# 2026-11-27, (64, 131072, k = 2048) fp32 at S = 2, cold L2 (rotated inputs), three runs: 512
# threads 38.5 / 40.7 / 38.3-38.4 us against 1024's 41.5 / 42.4 / 41.4-41.6 (the third with the
# two alternating, twice each); stage prefixes (launch, pass 1, round 0, owner ranges, pass 2,
# owners, counts, items, total) 1.1 / 14.6 / 17.0 / 18.9 / 28.1 / 28.9 / 29.3 / 30.5 / 38.5
# against 1.0 / 17.5 / 20.3 / 22.7 / 30.3 / 31.2 / 31.8 / 33.2 / 41.5: pass 1 reads faster with
# 8 trips of 512 threads than 4 of 1024 (2.5 against 2.0 TB/s)
SP_THREADS = (256, 512, 1024)   # CTA sizes: the smallest giving <= 4 vectors a thread. ptxas,
# sm_90a, launch bounds (threads, 1): 256 -> 144 registers (the cluster form in 0.13.0: 122),
# no spill (the CI compile test; with bounds (256,) alone ptxas chose 128 and spilled); 1024 is
# capped at 64 registers and spilled ~210 B in an earlier build (not a test)


@device
def split_barrier(gbar, row, S, s, seg, phase, ghist, hrow, nbuf):
    """Barrier ``seg`` of the row's S CTAs (above); then this CTA zeroes its share of histogram
    buffer (seg + 2) % nbuf. Replay (phase >= 0): no wait; True when the launch ends here."""
    cuda.syncthreads()
    if phase >= 0:
        return seg == phase
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    if tid == 0:
        cuda.threadfence()                        # this CTA's global writes before its arrival
        old = cuda.atomic.add(gbar, row, uint64(1))
        target = (old // uint64(S) + uint64(1)) * uint64(S)
        a = gaddr(gbar)
        while ld_acquire_u64(gbar, a, row) < target:
            nanosleep(32)
        cuda.threadfence()
    cuda.syncthreads()
    zb = hrow + int64((seg + 2) % nbuf) * NBINS
    for i in range(s * nt + tid, NBINS, S * nt):
        ghist[zb + i] = 0
    return False


@device
def split_hist_round(h, ghist, hb, gbar, row, S, s, seg, phase, hrow, nbuf):
    """One histogram round: the CTA's nonzero bins of h (shared, NBINS) are added to the row's
    buffer ghist[hb:hb + NBINS], barrier ``seg``, the row's sums are read back into h.
    True: a replay launch ends here."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    cuda.syncthreads()                            # h is complete
    if phase < 0 or phase == seg:
        for i in range(tid, NBINS, nt):
            v = h[i]
            if v != 0:
                cuda.atomic.add(ghist, hb + i, v)
    if split_barrier(gbar, row, S, s, seg, phase, ghist, hrow, nbuf):
        return True
    a = gaddr(ghist)
    d = 4 * nt                                    # 16-byte L2 loads, up to 4 in flight before
    for i in range(4 * tid, NBINS, 4 * d):        # their stores (one at a time: ~4 x 1 us)
        a0, a1, a2, a3 = ld_cg_v4_i32(ghist, a, hb + i)
        b0, b1, b2, b3 = ld_cg_v4_i32(ghist, a, hb + i + d) if i + d < NBINS else (0, 0, 0, 0)
        c0, c1, c2, c3 = ld_cg_v4_i32(ghist, a, hb + i + 2 * d) if i + 2 * d < NBINS \
            else (0, 0, 0, 0)
        d0, d1, d2, d3 = ld_cg_v4_i32(ghist, a, hb + i + 3 * d) if i + 3 * d < NBINS \
            else (0, 0, 0, 0)
        h[i], h[i + 1], h[i + 2], h[i + 3] = a0, a1, a2, a3
        if i + d < NBINS:
            h[i + d], h[i + d + 1], h[i + d + 2], h[i + d + 3] = b0, b1, b2, b3
        if i + 2 * d < NBINS:
            h[i + 2 * d], h[i + 2 * d + 1], h[i + 2 * d + 2], h[i + 2 * d + 3] = c0, c1, c2, c3
        if i + 3 * d < NBINS:
            h[i + 3 * d], h[i + 3 * d + 1], h[i + 3 * d + 2], h[i + 3 * d + 3] = d0, d1, d2, d3
    cuda.syncthreads()
    return False


@device
def push4(h, o, dst, mbar, r):
    """h[o:o + 4] -> the 16 bytes at this CTA's shared address ``dst`` as mapped into CTA r, by
    one ``st.async`` completing on CTA r's copy of the mbarrier at ``mbar``."""
    ops.st_async_v4_b32(ops.mapa_shared_cluster(dst, r), uint32(h[o]), uint32(h[o + uint32(1)]),
                        uint32(h[o + uint32(2)]), uint32(h[o + uint32(3)]),
                        ops.mapa_shared_cluster(mbar, r))


@device
def pair_push_bucket(h, ha, ma, par, want, s, seg, st, wsum):
    """``cluster_push_bucket`` for a pair (CL = 2), after its barrier: this CTA's whole
    histogram h[0:NBINS] -> the peer's receive buffer (st.async, 16 bytes a store, on its
    mbarrier mb[0]), then ``pair_scan_bucket`` (h += the peer's, the scan, the bucket).
    One exchange where the reduce-scatter + all-gather of larger clusters takes two (a DSMEM
    latency and a barrier fewer). The receive buffer alternates by round, h[SP_RA:] (even seg)
    and h[SP_RB:] (odd): the peer pushes round seg + 2 only after this CTA's round seg + 1
    push, which it sends once it has read round seg's buffer. mb[1] is not used (its phase
    stays 0: ``cluster_pair_ending``)."""
    tid = cuda.threadIdx.x
    nt = uint32(cuda.blockDim.x)
    rb = uint32(SP_RA if seg % 2 == 0 else SP_RB)
    peer = uint32(1 - s)
    q = uint32(tid)
    while q < uint32(NBINS // 4):                 # bins b .. b + 3 -> the peer's rb + b
        b = q * uint32(4)
        push4(h, b, ha + uint32(4) * (rb + b), ma, peer)
        q = uint32(q + nt)
    ops.mbarrier_wait_parity_cluster(ma, par)     # the peer's histogram
    return pair_scan_bucket(h, rb, want, st, wsum)


@device
def pair_scan_bucket(h, rb, want, st, wsum):
    """``row_bucket`` of a pair, fused with the sum: h[b] = this CTA's + the peer's h[rb + b],
    their descending block scan into h[SP_RS:SP_RS + NBINS], and the bin holding the want-th
    largest, in one read loop and one write loop of ``block_scan_desc``'s rotated order (the
    separate sum loop, its barrier and the bucket's search loop and barrier of 0.22.0 are gone).
    h[b] is written only after the scan's barriers: before them another thread may still be
    pushing those bins (``pair_push_bucket``). Returns (bucket, the row's items above it, the
    bucket's count)."""
    top, per, sm, incl, rot, tf = block_scan_from_top(h, NBINS, wsum, rb, True)
    m = uint32(per - uint32(1))
    cut = uint32(per - rot)
    acc = int32(incl - tf)                        # as block_scan_desc
    w32 = int32(want)
    i = uint32(0)
    while i < per:
        if i == cut:
            acc = int32(incl - sm)
        b = scan_bin(top, i, rot, m)
        v = int32(h[b] + h[rb + b])
        h[b] = v
        h[uint32(SP_RS) + b] = acc
        if acc < w32 and int32(acc + v) >= w32:
            st[0] = int32(b)
            st[1] = acc
        acc = int32(acc + v)
        i = uint32(i + uint32(1))
    cuda.syncthreads()
    return st[0], st[1], h[st[0]]


@device
def row_bucket(h, hb, want, st, wsum):
    """The end of a "cluster" histogram round, hb[0:NBINS] the row's summed histogram (every
    CTA holds it): its descending block scan, left in h[SP_RS:SP_RS + NBINS] for
    ``cluster_splitters``, then the bin holding the want-th largest. Returns (bucket, the row's
    items above it, the bucket's count)."""
    tid = cuda.threadIdx.x
    nt = uint32(cuda.blockDim.x)
    out = h[SP_RS:SP_RS + NBINS]
    block_scan_desc(hb, NBINS, out, wsum)         # out[b]: the row's items above bin b
    cuda.syncthreads()
    w32 = int32(want)
    b = uint32(tid)
    while b < uint32(NBINS):                      # the bin holding the want-th largest
        a = out[b]
        if a < w32 and int32(a + hb[b]) >= w32:
            st[0] = int32(b)
            st[1] = a
        b = uint32(b + nt)
    cuda.syncthreads()
    return st[0], st[1], hb[st[0]]


@device
def cluster_push_bucket(h, mb, want, CL, s, seg, st, wsum):
    """The "cluster" histogram round by pushes (CL = S, compile-time; round ``seg``): no cluster
    barrier, no remote load. h[0:NBINS] is this CTA's histogram of the round. Every CTA pushes bins
    [r W, (r + 1) W) (W = NBINS / CL) to CTA r's h[SP_RA + s W:] with ``st.async`` (16 bytes a
    store, 4 a thread at 256 threads), each store completing 16 bytes on CTA r's mbarrier mb[0];
    CTA s waits there for all NBINS * 4 bytes, sums its slice into h[SP_HS:SP_HS + W], pushes the
    sums to every CTA's h[SP_RB + s W:] (mbarrier mb[1]); each CTA waits for the row's whole
    histogram and finds the bucket itself from its descending scan, which it leaves in
    h[SP_RS:SP_RS + NBINS] for ``cluster_splitters`` (a pair: ``pair_push_bucket``, one
    exchange of whole histograms; one block scan where bucket and splitters
    each ran one: at (64, 131072, 2048), H100, 2026-11-27, the owner ranges went 2.0 -> 0.9 us
    and this round ~0.8 us longer). The mbarriers (one arrival:
    thread 0's expect_tx) were initialised and made visible by the kernel's start (its relaxed
    cluster arrive, waited here in round 0). Reuse in the level rounds is safe without a barrier:
    the pushes of round seg + 1 into CTA x's buffers come after their senders received x's round
    seg pushes, which x sends only once it has read the buffer they overwrite. Returns (bucket,
    the row's items above it, the bucket's count). The receive buffers are the list area, free
    until pass 2. Napkin math (S = 16, 256 threads): 2 x (4 stores a thread + a DSMEM latency) +
    16 loads a bin + the 4096-bin block scan: ~1-1.5 us, where the barrier form had two released
    barriers (~0.44 us each on the H100: tools/probe_cluster_sync.py) and three DSMEM round
    trips. Measured (H100, (1, 65536, 2048), the stop hooks 5 -> 1): 3.4 us, 4.0 for the barrier
    form."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    W = NBINS // CL
    par = uint32(seg & 1)
    ma = ops.shared_address(mb)
    ha = ops.shared_address(h)
    if tid == 0:
        ops.mbarrier_arrive_expect_tx(ma, uint32(4 * NBINS))
        if CL > 2:
            ops.mbarrier_arrive_expect_tx(ma + uint32(8), uint32(4 * NBINS))
    if seg == 0:
        ops.cluster_wait_acquire()                # every CTA's mbarriers are initialised
    cuda.syncthreads()                            # h is complete
    if CL == 2:                                   # a pair: one exchange of whole histograms
        return pair_push_bucket(h, ha, ma, par, want, s, seg, st, wsum)
    q = uint32(tid)                               # uint32 loops: no 64-bit trip-count division
    while q < uint32(NBINS // 4):                 # bins b .. b + 3 -> CTA r (b's slice)
        b = q * uint32(4)
        r = b // uint32(W)
        push4(h, b, ha + uint32(4) * (uint32(SP_RA + s * W) + b - r * uint32(W)), ma, r)
        q += uint32(nt)
    ops.mbarrier_wait_parity_cluster(ma, par)     # every CTA's part of this CTA's slice
    j = uint32(tid)
    while j < uint32(W):
        acc = int32(0)
        for r in range(CL):
            acc += h[uint32(SP_RA + r * W) + j]
        h[uint32(SP_HS) + j] = acc
        j += uint32(nt)
    cuda.syncthreads()
    u = uint32(tid)
    while u < uint32(W // 4 * CL):                # sums c .. c + 3 of the slice -> CTA r
        r = u // uint32(W // 4)
        c = (u - r * uint32(W // 4)) * uint32(4)
        push4(h, uint32(SP_HS) + c, ha + uint32(4) * (uint32(SP_RB + s * W) + c), ma + uint32(8),
              r)
        u += uint32(nt)
    ops.mbarrier_wait_parity_cluster(ma + uint32(8), par)     # the row's whole histogram
    return row_bucket(h, h[SP_RB:SP_RB + NBINS], want, st, wsum)


@device
def split_publish_gather(dyn64, glist, goff, gcnt, gbar, ghist, st, rcnt, roff, n_own, K, want,
                         cnt, row, b, S, s, seg, phase, hrow, nbuf, stop, lv):
    """split's publish and list load: the CTA's sorted run (dyn64[swz(i)], i < n_own) goes to
    the row's list in global memory at an offset from one atomic (gcnt), its (offset, length)
    to goff; barrier ``seg``; the whole list (its length known from the histogram: the K - want
    above the bucket + the cnt in it) and the run table are loaded into dyn64[K_MAX:], rcnt and
    roff, SP_LOADS items a thread in flight before their stores. Returns (n_all, this run's
    offset); n_all = -1: a replay launch or the stop 2 hook ends here."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    live = phase < 0 or phase == seg
    if tid == 0 and live:                         # the run's place in the row's list
        off = cuda.atomic.add(gcnt, 2 * row, n_own)
        st[5] = off
        goff[2 * b] = off
        goff[2 * b + 1] = n_own
    cuda.syncthreads()
    lb = int64(row) * SP_LMAX
    if live:
        for i in range(tid, n_own, nt):
            glist[lb + st[5] + i] = dyn64[swz(i)]
    if split_barrier(gbar, row, S, s, seg, phase, ghist, hrow, nbuf):
        return int64(-1), int64(0)
    if not (phase < 0 or phase == seg + 1) or stop == 2:   # replay: this row is done
        return int64(-1), int64(0)
    off = st[5] if phase < 0 else goff[2 * b]
    n_all = min(K - want + int64(cnt), int64(SP_LMAX))
    g0 = 2 * (b - s)                              # the row's run table in goff
    ro = goff[g0 + 2 * tid] if tid < S else 0
    rc = goff[g0 + 2 * tid + 1] if tid < S else 0
    for i in range(tid, n_all, SP_LOADS * nt):
        for u in range(SP_LOADS):
            if i + u * nt < n_all:
                lv[u] = glist[lb + i + u * nt]
        for u in range(SP_LOADS):
            if i + u * nt < n_all:
                dyn64[K_MAX + i + u * nt] = lv[u]
    if tid < S:
        roff[tid] = ro
        rcnt[tid] = rc
    for r in range(tid + nt, S, nt):              # (S > nt: not with SP_THREADS and <= 132 SMs)
        roff[r] = goff[g0 + 2 * r]
        rcnt[r] = goff[g0 + 2 * r + 1]
    return int64(n_all), int64(off)


@device
def cluster_splitters(dyn32, spl, K, want, pfx, hi, cnt, CL, st, wsum):
    """The "cluster" ending's owner ranges (CL = S >= 4, compile-time), from the row's last
    histogram (dyn32[SP_RB:], every CTA's copy bitwise equal) before pass 2 overwrites it:
    spl[r] (r = 1 .. CL - 1, nonincreasing) such that CTA r owns the row's listed composites c
    with spl[r + 1] <= c < spl[r] (spl[0] = +inf, spl[CL] = 0), about n_all / CL of them each.
    The list is the A_up items above the last round's parent bin (deeper levels only; st[0] /
    st[1] still hold the last round's bucket d and its items above d: ``block_find_bucket``),
    then that histogram's bins from the top down to d (all of d: n_all = K - want + cnt).
    Boundary r lies after g = r ceil(n_all / CL) items; thread r finds its bin b by a binary
    search of the block scan the last round left (dyn32[SP_RS:], ``cluster_push_bucket``) and
    interpolates inside it as if b's items were uniform over its composite range; in the A_up
    range it is the parent's top (owner 0 takes them all: clustered data only), past the list 0.
    Any nonincreasing spl is correct; these balance the owners. (Tried, slower, taken out
    (H100, 2026-11-27): for K <= 512 no ranges, CTA 0 owning the whole list and sorting it
    with ``counting_sort_desc``: 14.1 / 14.4 us at (1 / 4, 65536, 512) against 11.1 / 11.2, and
    the T = 1 indexer 24.2 against 20.8-21.2.)
    H100, (1, 65536, 2048) at S = 16, the stop hooks 1 -> 8: ~4.9 us in 0.12.0, 3.2 once
    ``block_scan_desc`` wrote in its rotated order (ncu had counted 65536 shared wavefronts for
    4096 ideal: a 16-way conflict), 2.1 with the scans and this search in 32-bit arithmetic
    (2026-11-27). The rest is mostly instruction fetch: ncu's warp-state samples put a third of
    the kernel in "no instruction" stalls, each first-run SASS instruction costing a few cycles
    -- code size is time here."""
    tid = cuda.threadIdx.x
    hb = dyn32[SP_RB:SP_RB + NBINS]
    out = dyn32[SP_RS:SP_RS + NBINS]              # out[b]: the items in the bins above b
    if tid < CL:
        hp = hi + RB_LEVEL_BITS if hi > 0 else 64 - 5 * RB_LEVEL_BITS   # the parent's lowest bit
        d = st[0]                                 # the last round's bucket
        par = (pfx >> uint64(hp)) << uint64(hp) if hp < 64 else uint64(0)
        n_all = int32(K - want + int64(cnt))
        a_up = int32(K - want) - st[1]
        g = int32(tid) * ((n_all + int32(CL - 1)) // int32(CL))
        v = ~uint64(0)
        if tid > 0:
            if g > n_all:                         # past the list
                v = uint64(0)
            elif g <= a_up:                       # (a_up > 0: hp < 64)
                v = par + (uint64(1) << uint64(hp))
            else:
                g2 = int32(g - a_up)              # the last bin b >= d with out[b] + hb[b] >= g2
                lo = uint32(d)                    # (32-bit: each instruction costs fetch time)
                up = uint32(NBINS - 1)
                while lo < up:
                    mid = uint32(uint32(lo + up + uint32(1)) >> uint32(1))
                    if int32(out[mid] + hb[mid]) >= g2:
                        lo = mid
                    else:
                        up = uint32(mid - uint32(1))
                h = hb[lo]
                t = int32(g2 - out[lo])           # 1 .. h of bin lo's items above the boundary
                # (h - t) / h of the bin's width, to 1 / 2048, in 32-bit integers (h <= 2^20)
                fr = uint64((uint32(h - t) << uint32(11)) // uint32(h))
                off = fr << uint64(hi - 11) if hi >= 11 else fr >> uint64(11 - hi)
                v = par + (uint64(lo) << uint64(hi)) + off
        spl[tid] = v
    cuda.syncthreads()


@device
def count_above(buf, m, c):
    """How many of buf[0:m] (shared; m uint32) are larger than c: ``count_larger``'s count with 8
    independent loads a step (its one-load loop waits a shared-memory latency an item: ~5 us for
    256 items x 256 on the H100, in the cluster owners' rank)."""
    r = int32(0)
    j = uint32(0)
    while j + uint32(8) <= m:
        a0 = buf[j]
        a1 = buf[j + uint32(1)]
        a2 = buf[j + uint32(2)]
        a3 = buf[j + uint32(3)]
        a4 = buf[j + uint32(4)]
        a5 = buf[j + uint32(5)]
        a6 = buf[j + uint32(6)]
        a7 = buf[j + uint32(7)]
        r += (int32(a0 > c) + int32(a1 > c) + int32(a2 > c) + int32(a3 > c) + int32(a4 > c)
              + int32(a5 > c) + int32(a6 > c) + int32(a7 > c))
        j += uint32(8)
    while j < m:
        r += int32(buf[j] > c)
        j += uint32(1)
    return r


@device
def owner_of(c, spl, CL):
    """The CTA owning composite c: how many of spl[1:CL] lie above it."""
    o = uint32(0)
    for r in range(1, CL):
        if c < spl[r]:
            o += uint32(1)
    return o


@device
def cluster_owner_ending(x, base, obase, K, k, kind, vals, idx, dyn64, dyn32, spl, cm, ow, mb,
                         n_own, CL, s, seg, stop, st, wsum, e, gcnt, row, jb):
    """The "cluster" ending (CL = S >= 4, compile-time; ``cluster_splitters`` set the owner
    ranges; a pair has ``cluster_pair_ending``):
    CTA r receives every listed composite in its range, ranks them and writes those of rank < K.
      1. the own list (dyn64[K_MAX:K_MAX + n_own], (bits, index)) -> composites in place; each
         item's owner and its slot among this CTA's items for that owner (a shared atomic on
         ow[owner]) -> dyn32[SP_HS + i];
      2. counts: every CTA pushes its CL counts to every CTA (st.async, 4 bytes each, into
         cm[s CL:(s + 1) CL], on mbarrier mb[0]; each CTA expects 4 CL^2 bytes): now every CTA
         knows where its items go in each owner's buffer (the counts of the CTAs before it) and
         each owner's total;
      3. items: every item goes to its owner's dyn64[slot] (dyn64[swz(slot)] where the owner
         sorts, more than SP_OSORT items: ``counting_sort_desc``'s layout, no copies; st.async,
         8 bytes, on mb[1]; each owner expects 8 x its total);
      4. rank: up to SP_OSORT items by counting (each thread counts the larger ones: m broadcast
         loads an item), more by ``counting_sort_desc``; global rank = the owners before it + the
         rank; those < K are written (scores from their keys).
    No cluster barrier but the exit's, relaxed (arrived once the pushes are issued: every CTA
    waits for all its bytes before it leaves, so no CTA exits while one may still write into
    it). mbarrier reuse: phase seg + 1 of mb[0] / mb[1], after the histogram rounds' seg + 1
    phases; a CTA's counts reach x only after it has received x's last sums (x has completed mb[0]
    of the last round), its items only after x's counts (x has completed mb[1] there). Memory:
    the receive buffer is the sort area dyn64[0:K_MAX] (x's histogram, dead once x has pushed
    its last round), the counts cm (split's rcnt). stop 10 / 2 / 7: the timing hooks end after
    step 1 / 2 / 3; where step 4 sorts (more than SP_OSORT items), 12 after its sort.
    Napkin math ((1, 65536, 2048), S = 16 x 256 threads, ~147 items an owner): step 1 ~0.2 us,
    steps 2 and 3 a DSMEM latency each plus the CTAs' skew ~1 us, step 4 ~150 broadcast loads a
    thread in steps of 8 ~0.5 us, the writes ~0.3 us. Measured (H100, 2026-11-26, the stop
    hooks): 0.3, 0.8 + 0.2, rank and write 2.3 (one load a step, not 8: 4.8)."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    ph = uint32((seg + 1) & 1)
    ma = ops.shared_address(mb)
    ca = ops.shared_address(cm)
    da = ops.shared_address(dyn64)
    no = uint32(n_own)
    i = uint32(tid)
    while i < no:                                 # 1.
        r = dyn64[uint32(K_MAX) + i]
        c = item_composite(r, kind)
        o = owner_of(c, spl, CL)
        j = uint32(cuda.atomic.add(ow, o, 1))
        dyn64[uint32(K_MAX) + i] = c
        dyn32[uint32(SP_HS) + i] = int32((o << uint32(16)) | j)
        i += uint32(nt)
    if tid == 0:
        ops.mbarrier_arrive_expect_tx(ma, uint32(4 * CL * CL))
    cuda.syncthreads()
    if stop == 10:                                # (timing hook: the owners; phase left open)
        ops.cluster_arrive_relaxed()
        ops.cluster_wait_acquire()
        return
    if tid < CL * CL:                             # 2. count j of this CTA -> CTA r's cm[s CL + j]
        r = uint32(tid // CL)
        j = uint32(tid - (tid // CL) * CL)
        ops.st_async_b32(ops.mapa_shared_cluster(ca + uint32(4) * (uint32(s * CL) + j), r),
                         uint32(ow[j]), ops.mapa_shared_cluster(ma, r))
    ops.mbarrier_wait_parity_cluster(ma, ph)
    if tid < CL:                                  # this CTA's first slot at owner r, r's total
        off = int32(0)
        tot = int32(0)
        for q in range(CL):
            v = cm[q * CL + tid]
            if q < s:
                off += v
            tot += v
        ow[CL + tid] = off
        ow[2 * CL + tid] = tot
    cuda.syncthreads()
    m = ow[2 * CL + s]
    first = int32(0)                              # the items of the owners before this one
    for q in range(CL):
        if q < s:
            first += ow[2 * CL + q]
    if tid == 0:
        ops.mbarrier_arrive_expect_tx(ma + uint32(8), uint32(8 * m))
    if stop == 2:                                 # (timing hook: the counts exchanged)
        ops.cluster_arrive_relaxed()
        ops.cluster_wait_acquire()
        return
    i = uint32(tid)
    while i < no:                                 # 3.
        pk = uint32(dyn32[uint32(SP_HS) + i])
        o = pk >> uint32(16)
        slot = uint32(ow[uint32(CL) + o]) + (pk & uint32(0xFFFF))
        if ow[2 * CL + o] > SP_OSORT:             # an owner that sorts: its swizzled slot
            slot = uint32(swz(slot))
        ops.st_async_b64(ops.mapa_shared_cluster(da + uint32(8) * slot, o),
                         dyn64[uint32(K_MAX) + i], ops.mapa_shared_cluster(ma + uint32(8), o))
        i += uint32(nt)
    ops.cluster_arrive_relaxed()                  # every push of this CTA is issued
    ops.mbarrier_wait_parity_cluster(ma + uint32(8), ph)      # every item this CTA owns
    cuda.syncthreads()                            # (the own list is read: scratch from here)
    if stop == 7:                                 # (timing hook: the items exchanged)
        ops.cluster_wait_acquire()
        return
    mu = uint32(m)
    if m <= SP_OSORT:                             # 4. rank by counting
        i = uint32(tid)
        while i < mu:
            c = dyn64[i]
            rk = first + count_above(dyn64, mu, c)
            if rk < K:
                write_at(c, obase + rk, x, base, kind, vals, idx, True)
            i += uint32(nt)
    else:                                         # (large or clustered ranges: already swizzled)
        counting_sort_desc(dyn64, m, dyn64[K_MAX:], dyn32[SP_HS:SP_HS + NBINS],
                           dyn32[SP_HS + NBINS:SP_HS + 2 * NBINS], RB_BMAX, st, wsum, e, jb,
                           key_shift(kind))
        if stop == 12:                            # (timing hook: the sort)
            ops.cluster_wait_acquire()
            return
        i = uint32(tid)
        while i < mu:
            rk = first + int32(i)
            if rk < K:
                write_at(dyn64[swz(i)], obase + rk, x, base, kind, vals, idx, True)
            i += uint32(nt)
    split_tail(vals, idx, obase, K, k, kind, s, CL, gcnt, row, -1)
    ops.cluster_wait_acquire()                    # no CTA leaves while one may write into it


@device
def joint_slot(c, h, jb, ks):
    """The slot of composite c in a pair's joint counting sort of both CTAs' lists
    (``pair_split_ending``): its 12-bit bin b = c >> 52 owns the slots [G, G + n) -- G the
    row's items above b (round 0's scan, h[SP_RS + b]), n the row's count in b (h[b]) -- and c
    takes the one at its fraction of b's range from the top (the ``compact`` bits below the
    bin, their top 32 as a 0.32 fraction): larger composites never get later slots, and slot
    order is output order. An interpolation sort: where a bin's items spread evenly over its
    range, ~1 a slot (NumPy model, 16 rows of 131072 normal scores, k = 2048, both halves'
    lists: the fullest slot held 6-8 items, float32 and bfloat16 alike). Slots lie in [0, M), M
    the row's items in bins >= the bucket."""
    b = uint32(c >> uint64(52))
    nb = uint32(uint32(20 - ks) + uint32(jb))     # bits of compact(c) below the bin
    low = (uint64(1) << uint64(nb)) - uint64(1)
    inv = (compact(c, jb, ks) & low) ^ low        # the range's top minus c's place in it
    f = uint32(inv >> uint64(nb - uint32(32))) if nb >= uint32(32) \
        else uint32(inv << uint64(uint32(32) - nb))
    return uint32(uint32(h[uint32(SP_RS) + b])
                  + uint32((uint64(f) * uint64(uint32(h[b]))) >> uint64(32)))


@device
def item_slot(c, packed, h, jb, ks):
    """The ``joint_slot`` of composite c in a pair's split ending: read from bits 20-31 of its
    low word where ``packed`` (``pair_split_ending`` put it there), else computed again."""
    if packed:
        return uint32(uint32(c >> uint64(20)) & uint32(NBINS - 1))
    return joint_slot(c, h, jb, ks)


@device
def block_scan_asc(a, n, st, wsum, bmax):
    """a[0:n] (int32 counts, shared) -> their exclusive prefix sums, in place, by the whole block;
    st[5] = 1 if some a[q] > bmax (st[5] zeroed before). Thread t takes [t per, (t + 1) per),
    per the power of two >= n / blockDim (>= 1), each lane in the rotated order of
    ``block_scan_from_top`` (lane l starts at (l per / 32) mod per: the 32 lanes of a load on 32
    banks); one ``block_inclusive_scan``. Each thread writes only the slots it read: no barrier
    at the end (the caller's next one completes a)."""
    tid = cuda.threadIdx.x
    nt = uint32(cuda.blockDim.x)
    lane = tid & 31
    nu = uint32(n)
    per = uint32(1)
    while per * nt < nu:
        per = uint32(per << uint32(1))
    q0 = uint32(uint32(tid) * per)
    rot = uint32((uint32(lane) * per) >> uint32(5))
    m = uint32(per - uint32(1))
    tot = int32(0)
    low = int32(0)                                # this thread's slots before its rotated start
    mx = int32(0)
    i = uint32(0)
    while i < per:
        j = uint32(uint32(i + rot) & m)
        q = uint32(q0 + j)
        t = int32(a[q]) if q < nu else int32(0)
        if j < rot:
            low = int32(low + t)
        tot = int32(tot + t)
        mx = max(mx, t)
        i = uint32(i + uint32(1))
    excl = int32(block_inclusive_scan(tot, wsum) - tot)
    acc = int32(excl + low)
    i = uint32(0)
    while i < per:
        j = uint32(uint32(i + rot) & m)
        if j == uint32(0):
            acc = excl
        q = uint32(q0 + j)
        if q < nu:
            t = int32(a[q])
            a[q] = acc
            acc = int32(acc + t)
        i = uint32(i + uint32(1))
    if mx > bmax:
        st[5] = 1


@device
def pair_split_ending(x, base, obase, K, kind, vals, idx, dyn64, dyn32, cm, mb, n_own, s, ph, M,
                      stop, st, wsum, e, jb):
    """A pair's ending split by slot (``cluster_pair_ending`` when no level round ran: the two
    lists are exactly the row's M scores in bins >= the bucket, and round 0's histogram h =
    dyn32[0:NBINS] and descending scan G = dyn32[SP_RS:SP_RS + NBINS] describe them). Every item
    has its ``joint_slot`` in [0, M), in output order. CTA 0 ranks the items of slots [0, M / 2),
    CTA 1 those of [M / 2, M): the CTAs share one DSMEM exchange, of the items each holds for the
    other.
      1. this CTA's slot counts zeroed;
      2. once the peer is past pass 2 (mb[0] phase ``ph``: its stash area, where it receives, is
         dead), each own item is counted in its slot or pushed to the peer (st.async, 8 bytes, on
         its mb[2]; the slot packed in bits 20-31 where jb <= 20); then thread 0 pushes two
         counts (sent, kept: 4 bytes each) and adds their 8 count + 8 bytes to the peer's mb[2]
         with its one arrival (``mbarrier_arrive_expect_tx_cluster``): the receiver need not
         know in advance how much comes;
      3. the peer's items counted; the counts scanned (``block_scan_asc``, ~M / 2 slots) into
         first positions;
      4. every item of this CTA's slots to its slot's next position, dyn64[SP_U + p];
      5. rank = CTA 1's offset (CTA 0's kept items + the ones CTA 1 sent it) + its slot's first
         position + the larger items in its slot.
    Against the joint sort of 0.23.0 (both CTAs counting every slot, swapping the counts, then
    both placing every item in both CTAs' copies of the union): one exchange instead of two and
    half the slots scanned a CTA (H100, 2026-11-28, (64, 131072, 2048): 25.9 against 26.4 us in
    the same run, bfloat16 26.0 / 26.5; the final build 25.6, bfloat16 25.1). The first form
    split at the bin boundary nearest position M / 2, known to both CTAs from G: the bins near
    the threshold hold ~1 K items, so one CTA ranked up to twice the other's (26.8 us, against
    26.2 for the joint sort).
    A slot of more than RB_BMAX items (keys crowded in a bin) makes this CTA sort its items by
    ``counting_sort_desc`` instead (its own decision: the CTAs share nothing after step 2).
    Returns 0, or 2 where the stop 12 / 7 timing hook ended it after step 3's counts / step 4.
    Memory (dyn32 / dyn64 indices): counts, then cursors, at dyn32[SP_HS:SP_HS + M / 2 + 1]; the
    peer's items at dyn64[SP_PAIR:SP_PAIR + sent] (the stash area), its counts at cm[2 + peer]
    and cm[4 + peer]; this CTA's items at dyn64[SP_U:SP_U + its count]; the own list holds
    composites after step 2. Napkin math ((64, 131072, 2048), S = 2 x 512, M ~2.9-3.1 K): ~3
    items a thread in steps 2, 4 and 5 (a slot: ~20 instructions, once), ~1.5 received, 4 slots
    a thread in the scan, 5 barriers, one DSMEM round trip."""
    tid = cuda.threadIdx.x
    nt = uint32(cuda.blockDim.x)
    peer = uint32(1 - s)
    ks = key_shift(kind)
    no = uint32(n_own)
    Mu = uint32(M)
    ma = ops.shared_address(mb)
    P0 = uint32(Mu >> uint32(1))
    lo = uint32(0) if s == 0 else P0
    ns = P0 if s == 0 else uint32(Mu - P0)        # this CTA's slots [lo, lo + ns)
    i = uint32(tid)
    while i < ns:                                 # 1. (stash_select's masks lay there)
        dyn32[uint32(SP_HS) + i] = 0
        i = uint32(i + nt)
    if tid == 0:
        st[5] = 0
        st[7] = 0
    cuda.syncthreads()
    # columns of at most 20 bits leave bits 20-31 of a composite's low word all ones: the slot
    # (< NBINS = 2^12) travels there, so later steps need not compute it again; items of one
    # slot share those bits, so comparisons among them are unchanged
    packed = jb <= 20
    rxa = ops.shared_address(dyn64) + uint32(8 * SP_PAIR)
    pmb = ops.mapa_shared_cluster(ma + uint32(16), peer)
    ops.mbarrier_wait_parity_cluster(ma, ph)      # 2. the peer is past pass 2
    i = uint32(tid)
    while i < no:
        c = item_composite(dyn64[uint32(K_MAX) + i], kind)
        q = joint_slot(c, dyn32, jb, ks)
        if packed:
            c = (c & ~uint64(JOINT_Q)) | (uint64(q) << uint64(20))
        dyn64[uint32(K_MAX) + i] = c
        if uint32(q - lo) < ns:
            cuda.atomic.add(dyn32, uint32(uint32(SP_HS) + uint32(q - lo)), 1)
        else:
            p = uint32(cuda.atomic.add(st, 7, 1))
            ops.st_async_b64(ops.mapa_shared_cluster(rxa + uint32(8) * p, peer), c, pmb)
        i = uint32(i + nt)
    cuda.syncthreads()
    nsend = uint32(st[7])
    if tid == 0:                                  # every item push is issued: the counts
        ca = ops.shared_address(cm)
        ops.st_async_b32(ops.mapa_shared_cluster(ca + uint32(4 * (2 + s)), peer), nsend, pmb)
        ops.st_async_b32(ops.mapa_shared_cluster(ca + uint32(4 * (4 + s)), peer),
                         uint32(no - nsend), pmb)
        ops.mbarrier_arrive_expect_tx_cluster(pmb, uint32(8) * nsend + uint32(8))
    ops.cluster_arrive_relaxed()                  # every push of this CTA is issued
    ops.mbarrier_wait_parity_cluster(ma + uint32(16), uint32(0))    # the peer's items, counts
    nrx = uint32(cm[2 + peer])
    # CTA 1's first output position: the items CTA 0 ranks (its own kept, this CTA's sent)
    po = uint32(0) if s == 0 else uint32(uint32(cm[4 + peer]) + nsend)
    nm = uint32(no - nsend + nrx)                 # the items this CTA ranks
    i = uint32(tid)
    while i < nrx:                                # 3. the peer's items counted
        q = item_slot(dyn64[uint32(SP_PAIR) + i], packed, dyn32, jb, ks)
        cuda.atomic.add(dyn32, uint32(uint32(SP_HS) + uint32(q - lo)), 1)
        i = uint32(i + nt)
    cuda.syncthreads()
    if stop == 12:                                # (timing hook: the counts)
        ops.cluster_wait_acquire()
        return 2
    block_scan_asc(dyn32[SP_HS:], ns, st, wsum, RB_BMAX)
    cuda.syncthreads()
    i = uint32(tid)
    nall = uint32(no + nrx)
    while i < nall:                               # 4. to the slots' next positions
        c = dyn64[uint32(K_MAX) + i] if i < no else dyn64[uint32(SP_PAIR) + uint32(i - no)]
        q = item_slot(c, packed, dyn32, jb, ks)
        if uint32(q - lo) < ns:
            p = uint32(cuda.atomic.add(dyn32, uint32(uint32(SP_HS) + uint32(q - lo)), 1))
            dyn64[uint32(SP_U) + p] = c
        i = uint32(i + nt)
    cuda.syncthreads()
    if stop == 7:                                 # (timing hook: the items placed)
        ops.cluster_wait_acquire()
        return 2
    K32 = uint32(K)
    if st[5] != 0:                                # (block-uniform) a crowded slot: sort instead
        i = uint32(tid)
        while i < nm:
            c = dyn64[uint32(SP_U) + i]
            dyn64[swz(i)] = c | uint64(JOINT_Q) if packed else c
            i = uint32(i + nt)
        cuda.syncthreads()
        counting_sort_desc(dyn64, nm, dyn64[K_MAX:], dyn32[SP_HS:SP_HS + NBINS],
                           dyn32[SP_HS + NBINS:SP_HS + 2 * NBINS], RB_BMAX, st, wsum, e, jb, ks)
        kw = max(min(int64(nm), K - int64(po)), int64(0))     # those ranked below K
        write_sorted(dyn64, kw, kw, x, base, obase + int64(po), kind, vals, idx, True, True)
        return 0
    i = uint32(tid)
    while i < nm:                                 # 5. rank and write
        c = dyn64[uint32(SP_U) + i]
        q = uint32(item_slot(c, packed, dyn32, jb, ks) - lo)
        j = uint32(dyn32[uint32(SP_HS) + q - uint32(1)]) if q > uint32(0) else uint32(0)
        end = uint32(dyn32[uint32(SP_HS) + q])
        r = uint32(po + j)
        while j < end:
            if dyn64[uint32(SP_U) + j] > c:
                r = uint32(r + uint32(1))
            j = uint32(j + uint32(1))
        if r < K32:
            write_at(c | uint64(JOINT_Q) if packed else c, obase + int64(r), x, base, kind, vals,
                     idx, True)
        i = uint32(i + nt)
    return 0


@device
def cluster_pair_ending(x, base, obase, K, k, kind, vals, idx, dyn64, dyn32, cm, mb, n_own, s,
                        seg, stop, st, wsum, e, gcnt, row, jb, M):
    """The "cluster" ending of a pair (CL = 2: no owner ranges). M > 0 (no level round ran: M is
    the row's items in bins >= the bucket; 0 otherwise, or with ``TopkPlan.pair_merge``): one
    counting sort of both lists, split by slot between the CTAs (``pair_split_ending``), after
    step 1. Otherwise the merge: each CTA sorts its own list and ranks each item among both by a
    merge.
      1. this CTA's count -> the peer's cm[s] (st.async, 4 bytes, on its mbarrier mb[0]): it
         tells the peer this CTA is past pass 2;
      2. the own list (dyn64[K_MAX:K_MAX + n_own], (bits, index)) -> composites, sorted
         descending at dyn64[swz(0:n_own)] (``sort_own_list``: ``rank_sort_desc`` up to SP_RSORT
         items, else ``counting_sort_desc``), while the counts travel;
      3. once the peer's count is here (the peer is past its pass 2: its stash area is dead),
         the sorted list -> the peer's dyn64[SP_PAIR:SP_PAIR + n_own] (st.async, 8 bytes, on
         its mb[1]; it expects 8 x the count it received);
      4. both CTAs merge the two sorted lists (symmetric: composites are distinct), CTA s writing
         its half of the first min(K, n_own + n_peer) outputs: thread t the q (~2) after
         diagonal d = its first output, from a merge-path search for d (how many own items are
         among the first d) and q merge steps (scores from their keys). (A binary search of
         the peer's list for every own item instead: ~530 SASS instructions a warp, ~3 us at
         (64, 131072, 2048); H100, ncu, 2026-11-27.)
    Against ``cluster_owner_ending`` this drops the owner ranges (``cluster_splitters``), the
    owners' step and one exchange's wait: the counts cross during the sort. mbarrier phases: seg
    + 1 of mb[0], 0 of mb[1] (the pair's rounds use mb[0] only: ``pair_push_bucket``; the
    split ending: 0 of mb[2]). No cluster barrier but the exit's (arrived once the pushes are
    issued). Memory: SP_PAIR (the stash area, or SP_SMEM_PAIR bytes launched without it). stop
    12: the timing hook ends after step 2 (the split ending: after its counts), 7 after step
    3's wait (the split ending: after its items are placed). Napkin math ((64, 131072,
    2048) at S = 2 x 512, ~1.1 K items a CTA): the sort ~4 us (as the owners' was), the list's
    exchange a DSMEM latency and ~2 8-byte pushes a thread, the merge one 11-12-step search a
    thread (~0.3 us) and ~2 coalesced writes. Measured (H100, 2026-11-27, the stop hooks,
    cumulative us): pass 2 ends at 21.9 (22.6 with the owner ranges before it), own sort 26.8,
    lists exchanged 27.4, total 29.9, where the owner ending had taken 30.3 (pass 2 22.6, owners
    23.5, counts 23.9, items 25.0, sort 29.4; another run of the same kernels otherwise). ncu:
    the merge and writes (~2.5 us) issue ~300 instructions a warp, stalled mostly on
    fixed-latency dependencies and instruction fetch. The joint sort replaced this as the
    default in 0.23.0: H100, 2026-11-28, 28.2 -> 26.1 us in total (the same run; CHANGELOG),
    and the split ending that in 0.24.0."""
    tid = cuda.threadIdx.x
    nt = uint32(cuda.blockDim.x)
    peer = uint32(1 - s)
    ph = uint32((seg + 1) & 1)
    ma = ops.shared_address(mb)
    no = uint32(n_own)
    if tid == 0:                                  # 1.
        ops.mbarrier_arrive_expect_tx(ma, uint32(4))
        ops.st_async_b32(ops.mapa_shared_cluster(ops.shared_address(cm) + uint32(4 * s), peer),
                         no, ops.mapa_shared_cluster(ma, peer))
    if M > 0:                                     # split by slot (no level round ran)
        done = pair_split_ending(x, base, obase, K, kind, vals, idx, dyn64, dyn32, cm, mb,
                                 n_own, s, ph, M, stop, st, wsum, e, jb)
        if done == 2:                             # (a timing hook ended it)
            return
        split_tail(vals, idx, obase, K, k, kind, s, 2, gcnt, row, -1)
        ops.cluster_wait_acquire()                # no CTA leaves while one may write into it
        return
    sort_own_list(dyn64, dyn32, n_own, kind, True, st, wsum, e, jb)      # 2.
    if stop == 12:                                # (timing hook: the own sort)
        ops.cluster_arrive_relaxed()
        ops.cluster_wait_acquire()
        return
    ops.mbarrier_wait_parity_cluster(ma, ph)      # 3. the peer's count: it is past pass 2
    npeer = uint32(cm[peer])
    if tid == 0:
        ops.mbarrier_arrive_expect_tx(ma + uint32(8), uint32(8) * npeer)
    da = ops.shared_address(dyn64) + uint32(8 * SP_PAIR)
    i = uint32(tid)
    while i < no:
        ops.st_async_b64(ops.mapa_shared_cluster(da + uint32(8) * i, peer), dyn64[swz(i)],
                         ops.mapa_shared_cluster(ma + uint32(8), peer))
        i += nt
    ops.cluster_arrive_relaxed()                  # every push of this CTA is issued
    ops.mbarrier_wait_parity_cluster(ma + uint32(8), uint32(0))   # the peer's list
    if stop == 7:                                 # (timing hook: the lists exchanged)
        ops.cluster_wait_acquire()
        return
    # 4. outputs [d0, d1) of the merged lists, q consecutive ones a thread from diagonal d
    km = uint32(min(int64(no + npeer), K))
    half = uint32((km + uint32(1)) >> uint32(1))
    d0 = half if s == 1 else uint32(0)
    d1 = km if s == 1 else half
    q = uint32((d1 - d0 + nt - uint32(1)) // nt)
    d = uint32(d0 + uint32(tid) * q)
    if d < d1:
        lo = uint32(d - npeer) if d > npeer else uint32(0)    # own items among the first d
        up = min(d, no)
        while lo < up:
            mid = uint32((lo + up + uint32(1)) >> uint32(1))
            b = uint32(d - mid)
            if b >= npeer or dyn64[swz(mid - uint32(1))] > dyn64[uint32(SP_PAIR) + b]:
                lo = mid
            else:
                up = uint32(mid - uint32(1))
        a = lo
        b = uint32(d - a)
        end = min(uint32(d + q), d1)
        while d < end:
            ca = dyn64[swz(a)] if a < no else uint64(0)
            cb = dyn64[uint32(SP_PAIR) + b] if b < npeer else uint64(0)
            if a < no and (b >= npeer or ca > cb):
                write_at(ca, obase + int64(d), x, base, kind, vals, idx, True)
                a = uint32(a + uint32(1))
            else:
                write_at(cb, obase + int64(d), x, base, kind, vals, idx, True)
                b = uint32(b + uint32(1))
            d = uint32(d + uint32(1))
    split_tail(vals, idx, obase, K, k, kind, s, 2, gcnt, row, -1)
    ops.cluster_wait_acquire()                    # no CTA leaves while one may write into it


@device
def sort_own_list(dyn64, dyn32, n_own, kind, counting, st, wsum, e, jb):
    """This CTA's list dyn64[K_MAX:K_MAX + n_own] ((score bits << 32) | column, the split and pair
    endings' step before the runs meet) -> its composites sorted descending at dyn64[swz(0:n_own)]
    (the histogram area, dead by then), by the whole block, ending on a barrier:
    up to SP_RSORT items converted in place and ranked by ``rank_sort_desc``; more converted to
    the swizzled slots and sorted there by ``counting_sort_desc`` (``counting``, compile-time:
    the pair ending, scratch dyn64[K_MAX:] and dyn32[SP_HS:SP_HS + 2 NBINS], jb its index bits)
    or by the bitonic network (``bitonic_sort_desc_warp``, padded to a power of two: "split",
    whose lists may hold up to SP_LMAX items)."""
    tid = cuda.threadIdx.x
    nt = uint32(cuda.blockDim.x)
    no = uint32(n_own)
    small = no <= uint32(SP_RSORT)
    i = uint32(tid)
    while i < no:                                 # (bits, index) -> composite
        c = item_composite(dyn64[uint32(K_MAX) + i], kind)
        if small:
            dyn64[uint32(K_MAX) + i] = c
        else:
            dyn64[swz(i)] = c
        i += nt
    if small:
        cuda.syncthreads()
        rank_sort_desc(dyn64, K_MAX, n_own)
    elif counting:
        cuda.syncthreads()
        counting_sort_desc(dyn64, n_own, dyn64[K_MAX:], dyn32[SP_HS:SP_HS + NBINS],
                           dyn32[SP_HS + NBINS:SP_HS + 2 * NBINS], RB_BMAX, st, wsum, e, jb,
                           key_shift(kind))
    else:
        P = pad_pow2(dyn64, n_own, True)
        cuda.syncthreads()
        bitonic_sort_desc_warp(dyn64, P, e)
    cuda.syncthreads()


@device
def rank_sort_desc(buf, src, m):
    """buf[swz(r)] = the composite of rank r (0: the largest) among the m DISTINCT composites
    buf[src:src + m] (disjoint from the slots swz(0:m)), by counting: each thread takes an item
    and counts the larger ones (m broadcast loads a thread: O(m^2 / threads) work, no barrier,
    a few instructions of code where the bitonic network is ~thousands)."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for i in range(tid, m, nt):
        v = buf[src + i]
        buf[swz(count_larger(buf, src, m, v))] = v


@device
def split_tail(vals, idx, obase, K, k, kind, s, S, gcnt, row, phase):
    """Both endings of split: this CTA's share of the row's -1 / -inf slots [K, k); replay
    (phase >= 0): CTA 0 flags the row done."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for i in range(K + s * nt + tid, k, S * nt):
        write_empty(vals, idx, obase + i, kind)
    if phase >= 0 and s == 0 and tid == 0:
        gcnt[2 * row + 1] = 1


def split_kernel(kind, vectorized, threads, cluster=0):
    """The split variant's only launch: CTA b does slice s = b % S of row b // S (``threads``
    threads; dynamic shared memory SP_SMEM: dyn64[0:K_MAX] the sort area, whose first 16 KB hold
    the histogram first and the rank counts last, dyn64[K_MAX:2 K_MAX] the slice's list, then the
    row's). Arguments after the outputs: S, chunk (the slice: columns [s chunk, (s + 1) chunk)
    of the valid prefix, a multiple of the vector width), ghist (int32 [rows nbuf NBINS], zero),
    nbuf (SP_NBUF; SP_ROUNDS to replay), gbar (uint64 [rows]), gcnt (int32 [2 rows]: the publish
    counter, the replay's done flag), goff (int32 [rows S 2]: each CTA's run, offset and
    length), glist (uint64 [rows SP_LMAX]), ccap (<= K_MAX + 1 - k), phase (-1; replay: p),
    stop (timing hook, 0 in use: 6 ends the kernel at its start (the launch alone), 5 after
    pass 1's shared histogram, 1-3 after round 0 / the publish / the rank, 7 after the list
    load; "cluster": 1 and 5 alike, 8 after the owner ranges, 9 after pass 2, 10 after the
    owners, 2 / 7 after the counts' / the items' exchange, 12 (an owner of more than SP_OSORT
    items) after its sort; a pair: 12 / 7 as ``cluster_pair_ending`` says; 5 and 1 leave the
    histograms or barrier counters off their invariants: ``TopkPlan.split_reset``; + PAIR_MERGE:
    a pair ends by the sorted lists' merge, not the split sort), stash (0 / 1: pass 2 reads the
    top key bits pass 1 left in shared memory from byte SP_STASH, 2 x chunk bytes, instead of
    the scores: ``rb_trip``; the launch's dynamic shared memory must hold them).
    1. pass 1 (HBM): histogram of the slice's top 12 key bits; round 0 -> the bucket d holding
       the K-th largest and ``want``; while d holds more than ``ccap`` scores, a level pass (L2)
       and a round on the next 12 bits of the composites in d (as rowblock).
    2. pass 2 (L2; from pass 1's registers where the slice was one trip with no scalar tail, no
       level round ran and NT <= 512: KEEP; from the stash where ``stash`` is on and no level
       round ran, then the listed scores from global memory, ``stash_select``): the slice's
       composites at or above d's prefix -> shared list -> sorted (``rank_sort_desc`` /
       ``bitonic_sort_desc_warp``) -> the row's list as one run (one global atomic a CTA for
       its offset); barrier.
    3. rank each own item: its position in the run + a binary search in every other run; write
       those ranked < K (scores from their keys), and this CTA's share of the -1 / -inf tail.
    ``cluster`` > 0 (the "cluster" variant): S == cluster, each row one cluster of S CTAs
    exchanging through distributed shared memory: histogram rounds by st.async pushes on
    mbarriers (``cluster_push_bucket``, no cluster barrier; receive buffers in the list area);
    then owner ranges from the last histogram (``cluster_splitters``, before pass 2), and after
    pass 2 every item goes to its range's owner, which ranks and writes it
    (``cluster_owner_ending``); a pair (S = 2) has no owner ranges: one counting sort of both
    lists split by slot (``pair_split_ending``), or each CTA sorts its own list and merges it
    with the peer's (``cluster_pair_ending``). Steps 2's sort and 3 are not run. Dynamic shared
    memory
    SP_SMEM_CLUSTER: dyn32[SP_HS:] holds the summed histogram slice, then the items' owner
    slots, then counting_sort_desc's counts; ghist, gbar, goff and glist are not used, gcnt only
    by an empty row's done flag. sm_90+, GPU only. split's runs of at most SP_RSORT composites
    are ordered by counting (``rank_sort_desc``), longer ones by ``bitonic_sort_desc_warp``.
    """
    key = ("split", kind, vectorized, threads, cluster)
    if key in _PROD:
        return _PROD[key]
    VEC = _vec(kind, vectorized)
    NT = threads
    CL = cluster
    # pass 2 reads the slice from pass 1's registers where it was one trip (U vectors a thread:
    # 4 of float32, 2 of bfloat16) with no scalar tail and no level round ran; 16 words live
    # across round 0 and the owner ranges, so only where ptxas has the registers (launch bounds
    # (NT, 1): 1024 -> 64)
    KEEP = NT <= 512

    def topk_split(x, n, k, lengths, has_len, vals, idx, S, chunk, ghist, nbuf, gbar, gcnt, goff,
                   glist, ccap, phase, stop, stash):
        ops.griddepcontrol_wait()                 # PDL: the scores' writer has finished
        ops.griddepcontrol_launch_dependents()    # (the next kernel waits for our end itself)
        merge = (stop & PAIR_MERGE) != 0          # a pair ends by the sorted lists' merge
        stop = stop & (PAIR_MERGE - 1)
        if stop == 6:                             # (timing hook: the launch alone)
            return
        b = cuda.blockIdx.x
        row = b // S
        s = b - row * S
        tid = cuda.threadIdx.x
        nt = NT
        dyn64 = cuda.shared.array(0, uint64)
        dyn32 = cuda.shared.array(0, int32)       # aliases dyn64[0:NBINS // 2]
        wsum = cuda.shared.array(32, int32)
        st = cuda.shared.array(8, int32)
        roff = cuda.shared.array(SP_MAX_S, int32)
        rcnt = cuda.shared.array(SP_MAX_S, int32)
        mb = cuda.shared.array(3, uint64)         # "cluster": the exchanges' mbarriers
        spl = cuda.shared.array(16, uint64)       # "cluster": the owner ranges' lower ends
        ow = cuda.shared.array(48, int32)         # "cluster": counts / slots / totals an owner
        e = cuda.local.array(8, uint64)
        lv = cuda.local.array(SP_LOADS, uint64)
        w = cuda.local.array(32, uint32)          # the passes' words: pass 1's kept (KEEP)
        L = row_length(row, n, lengths, has_len)
        K = min(int64(k), L)
        obase = int64(row) * k
        if K == 0:                                # row-uniform: no barrier in this row
            if phase <= 0:
                for i in range(s * nt + tid, k, S * nt):
                    write_empty(vals, idx, obase + i, kind)
                if s == 0 and tid == 0:
                    gcnt[2 * row + 1] = 1
            return
        base = int64(row) * n
        c_lo = min(int64(s) * chunk, L)
        c_hi = min(c_lo + chunk, L)
        src = address_of(x, VEC)
        lcap = min(K + ccap, int64(SP_LMAX))
        hrow = int64(row) * nbuf * NBINS
        # the stash: column c's top key bits at uint16 slot sidx + c (SP_STASH on)
        sidx = int64(SP_STASH // 2) - c_lo if stash else int64(NO_STASH)
        for i in range(tid, NBINS, nt):
            dyn32[i] = 0
        if CL and tid == 0:
            # the histogram rounds' mbarriers (one arrival each): every CTA's are initialised
            # before any remote store reaches them (the relaxed arrive below, waited in round 0)
            ops.mbarrier_init(ops.shared_address(mb), uint32(1))
            ops.mbarrier_init(ops.shared_address(mb) + uint32(8), uint32(1))
            if CL == 2:                           # the pair's split ending
                ops.mbarrier_init(ops.shared_address(mb) + uint32(16), uint32(1))
            ops.fence_mbarrier_init()
        if CL and tid < CL:
            ow[tid] = 0                           # this CTA's items an owner
        if tid == 0:
            st[4] = 0                             # the slice's list length
            if s == 0 and phase <= 0:
                gcnt[2 * row] = 0                 # the publish offsets of the previous launch
        cuda.syncthreads()
        if CL:
            ops.cluster_arrive_relaxed()
        # 1. pass 1 and the rounds: 12 bits of the composite each, from the top
        want, pfx, hi, cnt, seg, halted = rb_threshold_bucket(
            x, src, base, c_lo, c_hi, kind, VEC, NT, K, ccap, dyn32, dyn64, st, wsum, lcap, stop,
            True, ghist, hrow, gbar, row, S, s, phase, nbuf, CL, mb, w, sidx)
        if halted:                                # a replay launch or the stop == 1 hook
            return
        if CL > 2:                                # (from the histogram pass 2 overwrites)
            cluster_splitters(dyn32, spl, K, want, pfx, hi, cnt, CL, st, wsum)
            if stop == 8:                         # (timing hook: the owner ranges)
                ops.cluster_arrive_relaxed()
                ops.cluster_wait_acquire()
                return
        # 2. pass 2: the slice's composites at or above the bucket's prefix -> dyn64[K_MAX:]
        lv1 = hi == 64 - RB_LEVEL_BITS
        if lv1 and stash:                         # level 1 from the stash
            stash_select(dyn64, c_hi - c_lo, pfx, c_lo, st, lcap, wsum, x, base, kind, NT)
        elif lv1:                                 # level 1: a float compare a score
            rb_pass(x, src, base, c_lo, c_hi, kind, VEC, NT, 2, hi, pfx, 0, 0,
                    rb_threshold_f32(uint32(pfx >> uint64(32))), dyn32, dyn64, st, lcap, w, KEEP,
                    NO_STASH)
        else:
            rb_pass(x, src, base, c_lo, c_hi, kind, VEC, NT, 3, hi, pfx, 0, 0, float32(0),
                    dyn32, dyn64, st, lcap, w, False, NO_STASH)
        cuda.syncthreads()
        n_own = min(st[4], int32(lcap))
        if CL and stop == 9:                      # (timing hook: pass 2)
            ops.cluster_arrive_relaxed()
            ops.cluster_wait_acquire()
            return
        if CL == 2:                               # 3. a pair: sorted lists merged
            cluster_pair_ending(x, base, obase, K, k, kind, vals, idx, dyn64, dyn32, rcnt, mb,
                                n_own, s, seg, stop, st, wsum, e, gcnt, row, index_bits(L),
                                int32(K - want + cnt) if lv1 and not merge else int32(0))
            return
        if CL:                                    # 3. each item to its owner, ranked there
            cluster_owner_ending(x, base, obase, K, k, kind, vals, idx, dyn64, dyn32, spl, rcnt,
                                 ow, mb, n_own, CL, s, seg, stop, st, wsum, e, gcnt, row,
                                 index_bits(L))
            return
        # the own composites, sorted (the histogram in dyn64[0:K_MAX] is dead): a sorted run
        sort_own_list(dyn64, dyn32, n_own, kind, False, st, wsum, e, index_bits(L))
        seg += 1
        n_all, off = split_publish_gather(dyn64, glist, goff, gcnt, gbar, ghist, st, rcnt, roff,
                                          n_own, K, want, cnt, row, b, S, s, seg, phase, hrow,
                                          nbuf, stop, lv)
        if n_all < 0:                             # a replay launch or the stop 2 hook ends here
            return
        for i in range(tid, n_own, nt):
            dyn32[i] = 0                          # larger ones in the other runs
        cuda.syncthreads()
        if stop == 7:                             # (timing hook: the list load alone)
            return
        # a binary search a (own item, other run) pair, in 32-bit arithmetic: Numba widens int32
        # operations to 64 bits, and the pair's run p // n_own was a 64-bit division call in SASS
        # until 0.8.0. Slower forms (CHANGELOG 0.7.0, 0.8.0): several pairs a thread at once with
        # fixed step counts; merging chunks of own items with each run (a walk then a search:
        # the lanes of a warp diverge, each item costs the warp's longest walk plus a search)
        n_o = uint32(n_own)
        tot = uint32(n_o * uint32(S))
        s32 = uint32(s)
        p = uint32(tid)
        while p < tot:
            r = uint32(p // n_o)
            i = uint32(p - r * n_o)
            cr = rcnt[r]
            if r != s32 and cr > 0:
                c = dyn64[K_MAX + off + i]
                lo = uint32(roff[r])              # first of run r not larger than c
                r0 = lo
                hi = uint32(lo + uint32(cr))
                while lo < hi:
                    mid = uint32((lo + hi) >> uint32(1))
                    if dyn64[uint32(K_MAX) + mid] > c:
                        lo = uint32(mid + uint32(1))
                    else:
                        hi = mid
                if lo > r0:
                    cuda.atomic.add(dyn32, i, int32(lo - r0))
            p = uint32(p + uint32(nt))
        cuda.syncthreads()
        if stop == 3:
            return
        for i in range(tid, n_own, nt):
            rk = i + dyn32[i]
            if rk < K:
                write_at(dyn64[K_MAX + off + i], obase + rk, x, base, kind, vals, idx, True)
        split_tail(vals, idx, obase, K, k, kind, s, S, gcnt, row, phase)

    topk_split.__name__ = topk_split.__qualname__ = \
        f"topk_split_{'bf16' if kind == BF16 else 'f32'}_v{VEC}_t{NT}" + (f"_c{CL}" if CL else "")
    k_ = _PROD[key] = kernel(topk_split, launch_bounds=(NT, 1), cluster=CL or None, pdl=True)
    return k_


@kernel
def zero_kernel(a):
    i = cuda.grid(1)
    if i < a.size:
        a[i] = 0


def _zero(a):
    """a[:] = 0: a launch on a device array, in place on a NumPy one (the simulator's)."""
    if is_device_array(a):
        zero_kernel.launch(-(-a.size // 256), 256, a)
    else:
        a[:] = 0


def _slices(n, rows, threads, vec, S, target, round_up):
    """(S, chunk): S blocks a row (``S`` if given, else ``target`` blocks over the rows, rounded
    up or down, but no more than one 16-byte load per thread per block), chunk a multiple of the
    vector width, S * chunk >= n."""
    if S is None:
        per_row = -(-target // max(rows, 1)) if round_up else target // max(rows, 1)
        S = max(1, min(per_row, -(-n // (threads * vec))))
    chunk = max(vec, -(-(-(-n // S)) // vec) * vec)
    return max(1, -(-n // chunk)), chunk


def split_geometry(rows, n, vec, sms, S=None, cluster=False):
    """(S, chunk, threads) of the split variant: S CTAs a row (``sms // rows``, but at least
    256 x vec scores each; ``S`` if given), chunk a multiple of the vector width, threads the
    smallest of SP_THREADS giving <= 4 vectors a thread. ``cluster``: S is a cluster size
    (SP_CLUSTERS; by default the largest with rows x S <= SP_CLUSTER_CTAS, at least 2) and
    stays S even where fewer CTAs would cover the row (the trailing ones get empty slices);
    threads at most SP_CLUSTER_THREADS (slices of more than 4 vectors a thread take more trips)."""
    if cluster:
        if S is None:
            S = next((c for c in SP_CLUSTERS[::-1] if rows * c <= min(sms, SP_CLUSTER_CTAS)),
                     SP_CLUSTERS[0])
        if S not in SP_CLUSTERS:
            raise ValueError(f"cluster top-k: S must be one of {SP_CLUSTERS}, got {S}")
    elif S is None:
        S = max(1, min(sms // max(rows, 1), -(-n // (SP_THREADS[0] * vec))))
    chunk = max(vec, -(-(-(-n // S)) // vec) * vec)
    if not cluster:
        S = max(1, -(-n // chunk))
    per = -(-chunk // vec)
    top = SP_CLUSTER_THREADS if cluster else SP_THREADS[-1]
    threads = next((t for t in SP_THREADS if per <= 4 * t and t <= top), top)
    return S, chunk, threads


class TopkPlan:
    """The production top-k for one (rows, n, k, dtype): workspace and launch geometry.

    ``run(x_flat, lengths_or_None, vals, idx)`` launches the variant's passes on kernel-side
    arrays (``vals``/``idx`` flat [rows * k]); no allocation after the first run, no
    synchronisation. ``variant``: "three_pass" (histogram, filter, finish: 3 launches) or "fused"
    (histogram, select + last-block finish: 2 launches); both use the same S x ``threads`` grid.
    Workspace: int32 [rows * (4096 + 8 + 1)] (histograms, meta, tickets) and uint64
    [rows * (4096 + capacity)] (sure + candidate composites; capacity a multiple of 16, so rows'
    lists never share a 128-byte line).
    "staged" (as "fused", appends staged in shared memory; each launch sized to one wave: the
    histogram's ``S``/``chunk`` and the select's ``sel_S``/``sel_chunk`` differ).
    "rowblock": one launch of ``rows`` CTAs of ``finish_threads`` threads (the one-block-per-row
    kernels' size, 1024), no workspace; ``capacity`` (test hook) lowers its in-shared-memory
    bucket capacity RB_CCAP, ``rb_stop`` (timing hook) ends its kernel after a stage.
    "split": one launch of rows x ``S`` CTAs of ``split_threads`` threads (``split_geometry``;
    rows x S must not exceed the SMs: every CTA of a row must be resident), workspace
    ``split_workspace`` (histograms, counters, runs; zeroed once, left zero by every run);
    ``capacity`` and ``rb_stop`` as for rowblock (``split_reset`` after a stop), ``threads``
    (test hook) sets the CTA size, ``replay`` runs it as one launch per barrier (always under the
    simulator).
    "cluster": split's kernel with each row one cluster of ``S`` CTAs (SP_CLUSTERS; default:
    ``split_geometry(cluster=True)``), sm_90+ GPUs only (no replay); any number of rows. At S =
    2 the pair ends by one counting sort of both CTAs' lists, split by slot between them;
    ``pair_merge = True`` (test and timing hook) makes it merge sorted lists instead, the form a
    level round leads to.
    "auto" resolves per shape (``resolve_variant``).
    Test hooks: ``threads``/``finish_threads``/``S``/``capacity``/``stage_cap`` (the staged
    variant's per-block shared slots per list, <= SCAP) override the geometry, ``run(...,
    vectorized=False)`` takes the scalar path (no PTX: it also runs under the simulator).
    """

    def __init__(self, rows: int, n: int, k: int, kind: int, *, threads: int | None = None,
                 finish_threads: int = FINISH_THREADS, S: int | None = None,
                 capacity: int | None = None, variant: str | None = None,
                 stage_cap: int | None = None, stash: bool | None = None):
        variant = resolve_variant(variant, n, rows)
        self.variant = variant
        self.rows, self.n, self.k, self.kind = rows, n, k, kind
        self.threads, self.finish_threads = threads or SCAN_THREADS, finish_threads
        gpu = detect_gpu()
        sms = gpu.sm_count if gpu else 132
        vec = _vec(kind, True)
        if variant == "staged":     # each launch one full wave: floor(resident blocks / rows)
            self.S, self.chunk = _slices(n, rows, self.threads, vec, S, HIST_BLOCKS_PER_SM * sms,
                                         False)
            self.sel_S, self.sel_chunk = _slices(n, rows, self.threads, vec, S,
                                                 SELECT_BLOCKS_PER_SM * sms, False)
        elif variant in ("split", "cluster"):   # split: S CTAs a row, all resident (rows x S
            # <= SMs); cluster: a row is one cluster of S CTAs, co-scheduled by the hardware
            self.S, self.chunk, self.split_threads = split_geometry(rows, n, vec, sms, S,
                                                                    variant == "cluster")
            if threads is not None:         # test hook: the CTA size (the simulator: 32)
                self.split_threads = threads
            if variant == "split" and (self.S > SP_MAX_S or (self.S > 1 and rows * self.S > sms)):
                raise ValueError(f"split top-k: {rows} rows x S = {self.S} CTAs exceed the GPU's "
                                 f"{sms} SMs (every CTA of a row must be resident to meet its "
                                 f"barriers): pass a smaller S, or use variant='rowblock'")
            self.sel_S, self.sel_chunk = self.S, self.chunk
            # the stash (SP_STASH): where a slice takes more than one trip and fits (a vectorized
            # trip: 16 scores a thread, 4 float32 vectors or 2 bfloat16 ones); by default in
            # "cluster" only (split's stash is tested, not timed)
            fits = self.split_threads * 16 < self.chunk <= SP_STASH_MAX
            if stash and not fits:
                raise ValueError(f"top-k stash: a slice of {self.chunk} scores at "
                                 f"{self.split_threads} threads is not stashed (it needs more "
                                 f"than one trip of {self.split_threads * 16} and at most "
                                 f"{SP_STASH_MAX} scores): pass stash=None")
            self.stash = (fits and variant == "cluster") if stash is None else bool(stash)
        else:                       # ~4 resident 512-thread blocks per SM, rounded up
            self.S, self.chunk = _slices(n, rows, self.threads, vec, S, 4 * sms, True)
            self.sel_S, self.sel_chunk = self.S, self.chunk
        if variant not in ("split", "cluster"):
            if stash:
                raise ValueError(f"top-k stash: only the split and cluster variants have one, "
                                 f"not {variant!r}")
            self.stash = False
        cap = capacity or max(1, min(n, max(16384, n // 8)))
        self.capacity = -(-cap // 16) * 16
        self.rb_ccap = RB_CCAP if capacity is None else max(1, min(capacity, RB_CCAP))
        self.rb_stop = 0        # timing hook: rowblock 1-4, split 1-3, 5-7 end the kernel early
        self.pair_merge = False  # cluster pairs: the sorted lists' merge, not the split sort
        self.rb_bmax = RB_BMAX         # rowblock: counting sort's largest bin (else bitonic)
        self.replay = False     # split: run as replay launches (the simulator always does)
        self.stage_cap = SCAP if stage_cap is None else stage_cap
        if not 1 <= self.stage_cap <= SCAP:
            raise ValueError(f"stage_cap must be in 1..{SCAP}, got {stage_cap}")
        self._ws = None
        self._split_ws = {}

    def split_workspace(self, io_gpu: bool, nbuf: int):
        """(ghist, gcnt, goff, gbar, glist) of the split variant, zeroed once here (a GPU run
        leaves them so; replay zeroes ghist and gcnt before each call)."""
        if nbuf not in self._split_ws:
            R, S = self.rows, self.S
            alloc = cuda.device_array if io_gpu else np.empty
            nh = R * nbuf * NBINS
            ints = alloc(nh + 2 * R + 2 * R * S, np.int32)
            gbar = alloc(R, np.uint64)
            _zero(ints)
            _zero(gbar)
            glist = alloc(R * SP_LMAX, np.uint64)
            self._split_ws[nbuf] = (ints[:nh], ints[nh:nh + 2 * R], ints[nh + 2 * R:], gbar,
                                    glist)
        return self._split_ws[nbuf]

    def split_reset(self):
        """Forget the split workspace (a fresh, zeroed one is made at the next run): after
        timing with ``rb_stop``, which may end a launch before its histograms are zeroed."""
        self._split_ws = {}

    def _run_split(self, x, lk, has_len, vals, idx, vectorized, gpu):
        replay = self.replay or mode() != "gpu"
        cl = self.S if self.variant == "cluster" else 0
        if cl and replay:
            raise RuntimeError("the cluster top-k runs on an sm_90+ GPU only (no replay, no "
                               "simulator): use variant='split' there")
        nbuf = SP_ROUNDS if replay else SP_NBUF
        ghist, gcnt, goff, gbar, glist = self.split_workspace(gpu, nbuf)
        kern = split_kernel(self.kind, vectorized, self.split_threads, cl)
        ccap = min(self.rb_ccap, K_MAX + 1 - self.k)     # the row's list: <= K_MAX composites
        args = [x, self.n, self.k, lk, has_len, vals, idx, self.S, self.chunk, ghist, nbuf, gbar,
                gcnt, goff, glist, ccap, -1, self.rb_stop | (PAIR_MERGE if self.pair_merge else 0),
                int(self.stash)]
        smem = SP_SMEM_CLUSTER if cl else SP_SMEM
        if cl == 2:                              # the split ending's received items, positions
            smem = SP_SMEM_PAIR
        if self.stash:
            smem = max(smem, SP_STASH + 2 * self.chunk)
        if mode() == "gpu":                      # > 48 KB: raise the limit once
            kern.reserve_dynamic_shared(args, smem)
        grid = self.rows * self.S
        if not replay:
            kern.launch(grid, self.split_threads, *args, shared_bytes=smem)
            return
        _zero(ghist)
        _zero(gcnt)
        for p in range(SP_ROUNDS + 2):           # barriers: <= SP_ROUNDS rounds + the publish
            args[-3] = p
            kern.launch(grid, self.split_threads, *args, shared_bytes=smem)
            flags = gcnt.copy_to_host() if gpu else gcnt
            if np.all(flags[1::2] == 1):
                return
        raise RuntimeError("split top-k replay: rows still unfinished after every barrier "
                           "(a bug: please report it)")

    def workspace(self, io_gpu: bool):
        """(ints, ghist, meta, tickets, sure, cand). The int part is zeroed once here; each run
        leaves it zero again (the finish pass cleans its row)."""
        if self._ws is None:
            R = self.rows
            alloc = cuda.device_array if io_gpu else np.empty
            ints = alloc(R * (NBINS + META + 1), np.int32)
            _zero(ints)
            comps = alloc(R * (K_MAX + self.capacity), np.uint64)
            self._ws = (ints, ints[:R * NBINS], ints[R * NBINS:R * (NBINS + META)],
                        ints[R * (NBINS + META):], comps[:R * K_MAX], comps[R * K_MAX:])
        return self._ws

    def run(self, x, lengths, vals, idx, vectorized=None):
        R, n, k, kind = self.rows, self.n, self.k, self.kind
        gpu = is_device_array(x)
        vec = _vec(kind, True)
        if vectorized is None:
            vectorized = gpu and n % vec == 0 and x.__cuda_array_interface__["data"][0] % 16 == 0
        has_len = lengths is not None
        lk = lengths if has_len else (_dummy_i32() if gpu else np.zeros(1, np.int32))
        if self.variant in ("split", "cluster"):
            self._run_split(x, lk, has_len, vals, idx, vectorized, gpu)
            return
        if self.variant == "rowblock":
            kern = rowblock_kernel(kind, vectorized, self.finish_threads)
            args = (x, n, k, lk, has_len, vals, idx, self.rb_ccap, self.rb_stop, self.rb_bmax)
            if mode() == "gpu":                  # > 48 KB: raise the limit once
                kern.reserve_dynamic_shared(args, RB_SMEM)
            kern.launch(R, self.finish_threads, *args, shared_bytes=RB_SMEM)
            return
        ints, ghist, meta, tickets, sure, cand = self.workspace(gpu)
        hist_kernel(kind, vectorized).launch(R * self.S, self.threads, x, n, k, lk, has_len,
                                             self.S, self.chunk, ghist, meta, tickets)
        if self.variant in ("fused", "staged"):
            select_kernel(kind, vectorized, self.variant == "staged").launch(
                R * self.sel_S, self.threads, x, n, k, lk, has_len, self.sel_S, self.sel_chunk,
                ghist, meta, tickets, sure, cand, self.capacity, vals, idx, self.stage_cap)
            return
        filter_kernel(kind, vectorized).launch(R * self.S, self.threads, x, n, lk, has_len,
                                               self.S, self.chunk, meta, sure, cand, self.capacity)
        topk_finish_kernel.launch(R, self.finish_threads, x, n, k, lk, has_len, kind, ghist, meta,
                                  tickets, sure, cand, self.capacity, vals, idx)


_DUMMY = {}


def _dummy_i32():
    if "i32" not in _DUMMY:
        _DUMMY["i32"] = cuda.to_device(np.zeros(1, np.int32))
    return _DUMMY["i32"]


# ----------------------------------------------------------------------------------------------
# Host side: validation, launch, registration
# ----------------------------------------------------------------------------------------------
@dataclass
class TopkCall:
    """One validated top-k problem: R rows of n scores (flat kernel-side arrays)."""
    io: ArrayIO
    x: object
    kind: int
    shape: tuple
    R: int
    n: int
    k: int
    lengths: object
    host_bf16: bool


def _prepare(scores, k, lengths, check_nan: bool = True) -> TopkCall:
    if not is_device_array(scores) and not isinstance(scores, np.ndarray):
        raise TypeError(f"scores must be a NumPy array or a device array, got "
                        f"{type(scores).__name__}")
    shape = tuple(int(d) for d in scores.shape)
    if len(shape) == 0:
        raise ValueError("scores must have at least one axis (top-k runs over the last axis)")
    kind, host_bf16 = _input_kind(scores, "scores")
    if not _is_contiguous(scores):
        raise ValueError("scores must be C-contiguous; pass np.ascontiguousarray(scores)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {k!r}")
    k = int(k)
    if not 1 <= k <= K_MAX:
        raise ValueError(f"k must be in 1..{K_MAX}, got {k}")
    lead, n = shape[:-1], shape[-1]
    R = int(np.prod(lead, dtype=np.int64))
    if n >= 2 ** 31 - 1:
        raise ValueError(f"rows of {n} scores are too long: indices are int32")
    if lengths is not None:
        lengths = check_lengths(lengths, lead, n, "scores")
    if check_nan and not is_device_array(scores) and R and n:
        rows = scores.reshape(R, n)
        nan = np.isnan(rows)
        if lengths is not None and not is_device_array(lengths):
            nan &= np.arange(n)[None, :] < lengths[:, None]
        if nan.any():
            r, c = np.argwhere(nan)[0]
            pos = np.unravel_index(r, lead) + (int(c),) if lead else (int(c),)
            raise ValueError(f"scores contain NaN (first at {tuple(int(p) for p in pos)}); top-k "
                             f"of NaN is undefined here: replace them (e.g. "
                             f"np.nan_to_num(x, nan=-np.inf))")
    io = ArrayIO(scores, lengths)
    xk = io.to_kernel(scores.view(np.uint16) if host_bf16 else scores)
    if is_device_array(xk) and kind == BF16 and _typestr(xk) == np.int16:
        xk = xk.view(np.uint16)
    xk = xk.reshape(-1)
    lk = io.to_kernel(lengths) if lengths is not None else None
    if lk is not None:
        lk = lk.reshape(-1)
    return TopkCall(io, xk, kind, shape, R, n, k, lk, host_bf16)


def _outputs(c: TopkCall, vals=None, idx=None):
    if vals is None:
        vals = c.io.empty(c.R * c.k, np.uint16 if c.kind == BF16 else np.float32)
    if idx is None:
        idx = c.io.empty(c.R * c.k, np.int32)
    return vals, idx


def _finish(c: TopkCall, vals, idx):
    v = c.io.result(vals, ml_dtypes.bfloat16 if c.host_bf16 else None)
    i = c.io.result(idx)
    out = c.shape[:-1] + (c.k,)
    return v.reshape(out), i.reshape(out)


def reference_threads(n: int) -> int:
    if mode() == "sim":
        return 16 if n <= 32 else 32
    return 1024


def topk_reference(c: TopkCall, threads: int | None = None, vals=None, idx=None):
    """The reference implementation: (values, indices) in the caller's kind and shapes."""
    threads = threads or reference_threads(c.n)
    vals, idx = _outputs(c, vals, idx)
    if c.R:
        topk_ref_kernel.launch(c.R, threads, c.x, c.n, c.k,
                               c.lengths if c.lengths is not None else _ref_dummy(c.io),
                               c.lengths is not None, c.kind, vals, idx)
    return _finish(c, vals, idx)


def _ref_dummy(io):
    return _dummy_i32() if io.gpu else np.zeros(1, np.int32)


_PLANS: dict = {}


def resolve_variant(variant: str | None, n: int, rows: int = RB_AUTO_MIN_ROWS) -> str:
    """The concrete variant (one of VARIANTS) for ``rows`` rows of n scores: ``variant`` (default
    ``PRODUCTION_VARIANT``); "auto": on the GPU "cluster" for at most 4 rows of at most 131072
    scores, at most 8 rows of at most 65536, or 33-64 rows of 65537-131072 (CL_AUTO_BANDS: a
    row's CTAs exchange through distributed shared memory; timed faster than split / rowblock
    there); else "split" for fewer than RB_AUTO_MIN_ROWS rows (one row over many SMs, one launch;
    timed up to 8 x 1048576), else "rowblock" for n <= RB_AUTO_MAX_N (one SM a row reads it in a
    few us) and "fused" for longer rows (split with RB_AUTO_MIN_ROWS or more such rows has not
    been timed)."""
    variant = variant or PRODUCTION_VARIANT
    if variant == "auto":
        if mode() == "gpu" and any(r0 <= rows <= r1 and n0 <= n <= n1
                                   for r0, r1, n0, n1 in CL_AUTO_BANDS):
            return "cluster"
        if rows < RB_AUTO_MIN_ROWS:
            return "split"
        return "fused" if n > RB_AUTO_MAX_N else "rowblock"
    if variant not in VARIANTS:
        raise ValueError(f"top-k variant must be one of {VARIANTS} or 'auto', got {variant!r}")
    return variant


def plan_for(R: int, n: int, k: int, kind: int, variant: str | None = None) -> TopkPlan:
    """A cached TopkPlan per shape and variant (its workspace is reused: calls on one stream
    only)."""
    key = (R, n, k, kind, resolve_variant(variant, n, R))
    if key not in _PLANS:
        if len(_PLANS) > 16:
            _PLANS.clear()
        _PLANS[key] = TopkPlan(R, n, k, kind, variant=key[-1])
    return _PLANS[key]


def topk_production(c: TopkCall, vals=None, idx=None, *, plan: TopkPlan | None = None,
                    vectorized=None, variant: str | None = None):
    """The sm_90a implementation (module docstring). ``vals``/``idx``: optional preallocated flat
    outputs; ``plan``/``vectorized``: test hooks (see TopkPlan); ``variant``: "three_pass" |
    "fused" | "staged" | "rowblock" | "split" | "auto" (default ``PRODUCTION_VARIANT``; ignored when
    ``plan`` is given)."""
    vals, idx = _outputs(c, vals, idx)
    if c.R:
        if c.n == 0:
            topk_ref_kernel.launch(c.R, 32, c.x, c.n, c.k, _ref_dummy(c.io), False, c.kind, vals,
                                   idx)
        else:
            plan = plan or plan_for(c.R, c.n, c.k, c.kind, variant)
            plan.run(c.x, c.lengths, vals, idx, vectorized)
    return _finish(c, vals, idx)


def production_kernels():
    """(Kernel, signature) of the production kernels, for compile-only checks."""
    from numba import types as t
    sigs = []
    i32, i64, b = t.int32[::1], t.int64, t.boolean
    for kind, arr in ((F32, t.float32), (BF16, t.uint16)):
        for vectorized in (True, False):
            sigs.append((hist_kernel(kind, vectorized),
                         (arr[::1], i64, i64, i32, b, i64, i64, i32, i32, i32)))
            sigs.append((filter_kernel(kind, vectorized),
                         (arr[::1], i64, i32, b, i64, i64, i32, t.uint64[::1], t.uint64[::1], i64)))
            for staged in (False, True):
                sigs.append((select_kernel(kind, vectorized, staged),
                             (arr[::1], i64, i64, i32, b, i64, i64, i32, i32, i32, t.uint64[::1],
                              t.uint64[::1], i64, arr[::1], i32, i64)))
            sigs.append((rowblock_kernel(kind, vectorized),
                         (arr[::1], i64, i64, i32, b, arr[::1], i32, i64, i64, i64)))
            split_sig = (arr[::1], i64, i64, i32, b, arr[::1], i32, i64, i64, i32, i64,
                         t.uint64[::1], i32, i32, t.uint64[::1], i64, i64, i64, i64)
            for threads in SP_THREADS:
                sigs.append((split_kernel(kind, vectorized, threads), split_sig))
                sigs += [(split_kernel(kind, vectorized, threads, cl), split_sig)
                         for cl in SP_CLUSTERS]
        sigs.append((topk_finish_kernel, (arr[::1], i64, i64, i32, b, i64, i32, i32, i32,
                                          t.uint64[::1], t.uint64[::1], i64, arr[::1], i32)))
    return sigs


registry.register("topk", "reference")(topk_reference)
registry.register("topk", "production", arch="sm_90a", kernels=production_kernels)(topk_production)
# the same kernels on Blackwell (no sm_90a-only instruction in them): assembled for sm_100a in
# tests/test_topk.py (slow), never run on Blackwell hardware; the sm_100a indexer's top-k
registry.register("topk", "production", arch="sm_100a", kernels=production_kernels)(topk_production)


def topk(scores, k, lengths=None, impl: str | None = None):
    """The k largest scores of each row (last axis), sorted: ``(values, indices)``.

    Constraints:
      * ``scores``: float32 or bfloat16, at least 1-D, C-contiguous, rows of up to 2^31 - 2
        scores (tuned for N up to ~1M). NumPy (``ml_dtypes.bfloat16`` for bf16) -> NumPy results;
        device arrays (bfloat16 as its uint16/int16 bits) -> device results (bfloat16 as uint16).
      * ``k``: int, 1 <= k <= 4096 (512, 1024, 2048 are the DeepSeek sizes); k > N is allowed.
      * ``lengths``: per-row valid length in [0, N] (shape ``scores.shape[:-1]`` or flat); columns
        at or beyond it are never selected. Device lengths: contiguous int32, clamped not checked.
      * Output: ``values`` [..., k] of the scores' dtype, ``indices`` int32 [..., k]; sorted by
        value descending, ties by lower index; a row with fewer than k valid scores ends in
        index -1, value -inf. -0.0 == +0.0.
      * NaN: NumPy scores -> ValueError (before launch; positions beyond ``lengths`` ignored).
        Device scores are not scanned: NaN ranks above +inf (as torch.topk), NaNs tie by index.
      * production: one workspace per shape is cached and reused (do not run the same shape
        concurrently on two streams). Rows where over 1/8 of the row shares the 12-bit key prefix
        of the k-th largest (massive ties) take a slower in-kernel fallback.
      * ``impl``: "auto" | "reference" | "production" | "production:sm_90a" (see ``registry``).
    """
    call = _prepare(scores, k, lengths)
    return registry.resolve("topk", impl).fn(call)


__all__ = ["topk", "topk_oracle", "assert_topk", "order_keys", "TopkCall", "TopkPlan",
           "topk_ref_kernel",
           "topk_finish_kernel", "hist_kernel", "filter_kernel", "select_kernel",
           "rowblock_kernel", "resolve_variant", "production_kernels", "K_MAX", "VARIANTS",
           "PRODUCTION_VARIANT"]
