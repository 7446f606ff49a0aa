"""The FP4 lightning indexer on sm_100a (issue 9 item 2): block-scaled tcgen05.mma into Tensor Memory.

Status
------
**Built**: ``indexer_fused_sm100``, the pipelined score kernel (TMA ring of key codes, UE8M0 scales
moved to TMEM by ``tcgen05.cp``, one MMA thread issuing
``tcgen05.mma.kind::mxf4nvf4.block_scale.scale_vec::2X`` into double-buffered TMEM accumulators, an
epilogue warpgroup doing ReLU x w[t, h], the 64-head sum, valid_len masking and one store per
score), followed by the registered top-k stage (``fused_indexer``), and the arch dispatch:
``pipelines.indexer.indexer(..., impls="fused")`` runs this kernel on an sm_100a GPU,
``impls="fused:sm_100a"`` asks for it explicitly (``ImplUnavailable`` before any launch where it
cannot run, e.g. without a GPU). Also still here: step 1, ``indexer_scores_sm100`` (one warpgroup,
one tile, no ring), which pinned the layouts first.

**Checked here** (tests/test_indexer_sm100.py): ptxas for sm_100a (no spills, no local memory; the
tcgen05 mma block_scale / cp / ld / alloc / dealloc / commit in the PTX and UTCOMMA / UTCCP / LDTM /
UTCBAR / UTMALDG / 7 SHFL.BFLY in the SASS; ~90 registers), and the kernel itself under the CUDA
simulator with the semantic emulator (``dsv4_numba.emu``: TMA, mbarriers, tcgen05 alloc / cp / mma
block-scaled / ld / commit, the TMEM column plan declared as regions) against the float64 oracle:
several CTAs, two tokens per CTA and a token pair with one token, valid_len < N and = 0, a key tail
(N not a multiple of BN), tiles skipped past valid_len, NaN-poisoned scores; then top-k against the
oracle's selection with the tie rule of tests/test_indexer.py; the known-wrong integer E2M1 decode
fails that check, scale factors not duplicated into the four lane quadrants, a missing
fence.proxy.async and a TMEM plan the kernel does not follow are reported by the emulator; the GPU
body of the head-sum shuffles is run by the simulator on one warp (the emulator runs its NumPy
twin).

**Paged caches** (the ``Paging`` / ``block_table`` contract of the sm_90a path), pages of a multiple
of 8 rows: the load warp issues one TMA box of gcd(page_size, 192) rows per run of a page (a box past
the CTA's valid keys starts at a negative row: zero-filled, no page read) and reads the scales
through the table. One table for all tokens (``[1, max_pages]``): two tokens per CTA as above.
Per-token tables (``[T, max_pages]``): one token per CTA (``TP = 1``; MMA rows 64-127 are computed
and discarded, twice the MMA and epilogue work per token). Paged and contiguous caches give bitwise
identical scores (tested, both table kinds).

**NOT run on Blackwell hardware** (no sm_100a GPU is lent). **Not built**: bfloat16 / FP8 inputs
on sm_100a, M = 64 tiles (T = 1 and per-token tables leave half of the 128 MMA rows idle), 2-CTA
MMA, a running top-k threshold in the epilogue, setmaxnreg per role, a registry stage entry (the
dispatch is ``pick_fused``, called by ``pipelines.indexer.indexer``).

What it computes (as ``pipelines.indexer`` and the Hopper kernel ``indexer_sm90``)::

    score[t, n] = sum_h w[t, h] * ReLU(q[t, h, :] . k[n, :])   for n < valid_len[t], else -inf
    (H = 64 heads, D = 128), then out[t] = top-k of score[t, :valid_len[t]] (stages.topk)

with q and k in ``dsv4_fp4`` (or ``mxfp4``: E2M1 codes, two per byte, + one UE8M0 scale per 32).

Where the FP4 scales enter: the MMA itself applies them. With 32-element blocks b,
``q . k = sum_b 2^(a_b + c_b) sum_{d in b} e(q_d) e(k_d)``; scale_vec::2X gives each row two scale
factors per K = 64 instruction (the two 32-blocks it covers), read from the TMEM word of the row at
half-word ``sf_id`` (0 for d < 64, 2 for d >= 64). No decode pass: the packed cache bytes are the
MMA operand.

Work decomposition
------------------
One CTA = a token pair (M = 128 MMA rows: row r = token 2 p + r // 64, head r % 64) x a chunk of
``tiles_per_cta`` consecutive key tiles of BN = 192 keys. Grid (key chunks, ceil(T / 2)) (per-token
block tables: one token per CTA, ceil(T / 1)); ``launch_config`` fills the 148 SMs of a B200 in one
wave (decode: T = 1, N = 65536 -> 342 tiles in 114 chunks of 3; T = 64: 4 chunks of 86 per pair;
T = 4096: one chunk of all tiles per pair). Tiles at or past the larger valid_len of the pair are
not loaded or multiplied; their scores are written as -inf.

Warp roles (192 threads; the epilogue touches all 128 TMEM lanes, so it is a full warpgroup)
----------------------------------------------------------------------------------------------
* warp 5 -- **load** (all 32 lanes): the q scales of the pair once, then per key tile j into ring
  slot j % STAGES (after ``empty[slot]``): the key scales re-laid out into 128x4 atoms (lane l
  writes the 16 bytes of atom row l: keys l, l + 32, l + 64, l + 96 -- one st.shared.v4),
  fence.proxy.async, a one-warp named barrier (``bar.sync 2, 32``: __syncwarp's ordering, and the
  simulator, whose threads are not in lockstep, honours it), then lane 0 arrives with expect_tx and
  TMA-loads the key codes (2D box 192 rows x 64 B, 64B swizzle; rows past N are zero-filled; paged:
  192 / R boxes of R = gcd(page_size, 192) rows through the block table). q codes: one TMA box (128
  rows x 64 B) on ``bar_q``. The scales are not TMA-loaded: the atom interleaves rows with a 4-byte
  stride (16 B at least).
* warp 4 -- **MMA**: the whole warp allocates TMEM (512 columns), relinquishes the permit and frees
  it at the end; lane 0 moves SFA to TMEM once (``tcgen05.cp.32x128b.warpx4``), then per tile:
  wait ``full[slot]`` and (j >= 2) ``acc_empty[j % 2]``; cp of the tile's SFB (two atoms: 8
  columns); 2 MMAs (K = 64 each, A / B descriptors advanced by 32 bytes inside the 64B swizzle
  row, sf_id 0 / 2), first one overwrites; commit ``acc_full[j % 2]`` and ``empty[slot]``.
* warps 0-3 -- **epilogue** (warp w = TMEM lanes 32 w.. = token w // 2, heads 32 (w % 2)..): wait
  ``acc_full``; per 32-column chunk two ``tcgen05.ld.16x256b.x4`` (lanes +0 / +16 of the quadrant:
  each thread gets 4 rows x 8 columns), ReLU x w[t, h] summed over the thread's 4 rows in
  registers (``partial8``), then over the 8 lanes that share lane % 4 by a transpose-reduce of
  4 + 2 + 1 ``shfl.bfly`` (``head_sum8``: lane l ends with column ``epilogue_column(l)``); the two
  warps of a token add their halves through 1 KB of shared memory (double-buffered by chunk: one
  named barrier, id 1 x 128 threads, per chunk) and the even warp stores 32 scores (one 128-byte
  segment). ``acc_empty`` is arrived after the tile's last TMEM load, so the MMA of tile j + 2
  overlaps the reduction of tile j.

Tensor Memory plan (``tmem_plan``; 128 lanes, 32-bit columns; declared to the emulator)
--------------------------------------------------------------------------------------
    ACC0 =   0..191   f32 [128 x 192] accumulator of even tiles
    ACC1 = 192..383   odd tiles
    SFA  = 384..387   q scales: row m in lane m % 32 of every quadrant, column m // 32, bytes k = 0..3
    SFB0 = 392..399   key scales of even tiles: key n at column n // 32 (6 used, 2 atoms = 8 copied)
    SFB1 = 400..407   odd tiles
    alloc 512 (the power of two >= 408)
Nothing overlaps live data: ACC_b and SFB_b are written (cp, MMA of tile j) only after
``acc_empty[b]`` of tile j - 2 -- the epilogue's last TMEM read of ACC_b, and that MMA (the last
reader of SFB_b) had completed before ``acc_full`` let the epilogue read; SFA is written once,
before any MMA. cp and MMA issue from the same thread and execute in order.

Shared memory (dynamic, 1024-aligned; ``smem_plan``): q codes 8 KB (64B swizzle, 512-aligned), the
q scale atom 512 B, STAGES = 4 slots of key codes (12 KB each) and key-scale atoms (1 KB each) =
~61 KB, + 1 KB static head-sum exchange and the mbarriers.

Napkin math (B200 from published peak figures, not measured: ~9 PFLOP/s dense FP4 tensor core (18
with sparsity), 8 TB/s HBM3e, 148 SMs at ~1.85 GHz -> ~32768 dense FP4 FLOP / clk / SM; 128 B / clk
of shared memory per SM)
-------------------------------------------------------------------------------------------------
* Per (token, key): 2 H D = 16384 FLOP of MMA; per key 68 B of cache (64 B codes + 4 B scales),
  read once per token pair chunk; 4 B of score written per (token, key).
* Per tile (128 rows x 192 keys): 2 x 128 x 192 x 128 = 6.3 MFLOP = ~192 clk of MMA. The epilogue,
  per 32-key chunk and thread (from the SASS: 32 FMNMX, 16 FMUL + 16 FFMA + 16 FADD, 7 SHFL, ~14
  SEL, 2 LDTM, 1 STS + bar, the even warps 2 LDS + 1 STG): ~110-130 issue slots; 6 chunks = ~700-800
  per warp per tile, the 4 epilogue warps on the 4 SM sub-partitions in parallel. **The epilogue
  bounds this kernel at ~800-900 clk per tile: ~21-24% of the FP4 peak (~1.9-2.2 PFLOP/s).** (The
  first version summed the heads through shared memory: 2 x 96 KB per tile at 128 B / clk = ~1536
  clk, ~12% of peak.)
* Decode (T = 1, N = 65536): 4.5 MB of keys -> 0.56 us at 8 TB/s; 342 tiles over 114 CTAs = 3
  tiles per CTA ~ 3 x 900 clk = ~1.5 us + ring fill (TMA latency) + launch and TMEM alloc:
  **~3-4 us for the scores**, then the top-k (FlashInfer's B200 top-k is ~34 us at N = 65536, k =
  2048, dsv4-facts; the production top-k stage is registered for sm_90a only, so on a B200 ``auto``
  runs the reference top-k, with a ``ProductionUnavailableWarning``). Half the MMA rows are idle
  at T = 1 (M = 64 tiles would halve the epilogue).
* Prefill-like T = 64, N = 65536: 32 token pairs x 4 chunks = 128 CTAs (one wave on 148 SMs; TMEM
  512 columns = one CTA per SM) x 86 tiles x ~900 clk = ~42 us (68.7 GFLOP -> ~1.6 PFLOP/s
  effective; the issue-6 H100 target for this shape is 200 us). T = 4096, N = 65536: 4.4 TFLOP,
  ~700K tiles / 148 SMs x ~900 clk = ~2.3 ms (~1.9 PFLOP/s; 0.49 ms at the FP4 peak). Key traffic
  at T = 4096: 2048 pairs x 4.5 MB = 9.2 GB, mostly L2 hits -- ~0.5 ms at L2 rates, hidden under
  the epilogue bound, but the next reason to take more tokens per CTA (2-CTA MMA, M = 256).
* What lifts the bound further: the FMNMX + FMUL/FFMA per accumulator value is the floor of this
  epilogue (64 of the ~120 slots per chunk); packed f16x2 / bf16x2 ReLU-FMA (HMNMX2 + HFMA2) would
  halve it at a documented precision cost; the head sum as a second MMA (ReLU'd logits as FP8 back
  to TMEM, times w as a [64 x 1] B operand) would make the kernel MMA-bound. Peers: DeepGEMM's
  ``fp8_fp4_mqa_logits`` is the SM100 FP4 indexer (no published B200 figure in
  ../shared/reference/dsv4-facts.md); TensorRT-LLM's fused MXFP4 indexer scan + top-k (PR #18844)
  reports only speed-ups (1.36-3.21x).

What to check first on a B200
-----------------------------
1. ``pytest tests/gpu/test_indexer_sm100_gpu.py`` (skips off sm_100a): the step-1 tile kernel, then
   ``fused_scores_sm100`` against the float64 oracle at the emulator shapes -- it isolates the
   layouts: the packed-E2M1 K-major operand with 64B swizzle and the +32-byte K advance inside the
   swizzle row, the SF TMEM layout for N = 192 (key n at lane n % 32, column n // 32 -- inferred from
   CUTLASS, ptx-facts 2.6), sf_id 0 / 2 for the two K halves, the idesc N = 192 field.
2. The epilogue's register layout: ``tcgen05.ld.16x256b`` (the m16n8 C-fragment pattern, from
   CUTLASS; the emulator implements the same map) and the column each lane holds after the
   shuffles (``epilogue_column``; the shuffle code itself is checked under the simulator).
3. The TMEM address arithmetic: the column ``tcgen05.alloc`` returns (0 expected: one CTA per SM
   can hold 512 columns; a second co-resident CTA waits in alloc) and the lane field
   ``(32 * warp) << 16`` of the epilogue loads.
4. Paged caches: the R-row boxes land 512-byte aligned in the swizzled tile (the swizzle is a
   function of the shared-memory address, as the emulator models it), and a box at a negative row
   is zero-filled on sm_100a as on the H100 (``hw/tma.py``).
5. Races the emulator cannot see (it completes async work at issue): the load warp's generic-proxy
   scale stores -> fence.proxy.async -> bar.sync 2, 32 -> arrive; ``acc_empty`` before the next MMA
   into the same accumulator; ``empty[slot]`` committed after the MMAs that read the slot.
6. Then throughput, ``python tools/bench_indexer_sm100.py``: scores-only time at T = 1 / 4 / 64 x
   N = 65536 / 131072 against the estimates above, end-to-end ``indexer(..., impls="fused")``, and
   the torch path in the same run.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda  # noqa: F401
from numba.types import float32, int32, int64, uint8, uint32, uint64  # noqa: F401

from ..hw import ops
from ..hw.bits import bits_f32
from ..hw.descriptors import umma_idesc_block_scaled, umma_smem_desc
from ..hw.portable import warp_shfl_xor  # noqa: F401  (head_sum8)
from ..runtime import ArrayIO, device, kernel
from .fmha_sm100 import syncwarp  # bar.warp.sync with a simulator twin
from .fmha_sm90 import NEG_INF  # noqa: F401

H = 64                  # index heads
D = 128                 # index head dim
ROWS = 128              # MMA M: 2 tokens x 64 heads
TOKENS_PER_TILE = ROWS // H
BN = 192                # keys per tile (MMA N)
K_MMA = 64              # K per kind::mxf4nvf4 instruction
SF_BLOCK = 32           # UE8M0 scale block (dsv4_fp4), scale_vec::2X
STAGES = 4              # key ring depth
TMEM_COLS = 512
THREADS = 192           # epilogue warpgroup (warps 0-3), MMA warp 4, load warp 5
MMA_WARP, LOAD_WARP = 4, 5
NCH = BN // 32          # 32-column chunks per accumulator
SF_ATOMS_B = -(-BN // 128)                 # 128x4 scale atoms per key tile
ROW_BYTES = D // 2                         # 64 B of packed codes per row
Q_BYTES = ROWS * ROW_BYTES                 # 8 KB
K_BYTES = BN * ROW_BYTES                   # 12 KB
PART_WORDS = 2 * ROWS                       # per-warp head sums, double-buffered by chunk

# TMEM columns (module docstring)
ACC0, ACC1 = 0, BN
SFA_COL = 2 * BN
SFB0_COL = SFA_COL + 8
SFB_COLS = 4 * SF_ATOMS_B                  # one warpx4 cp = 4 columns per atom
SFB1_COL = SFB0_COL + SFB_COLS

# shared memory (bytes from the 1024-aligned base)
Q_OFF = 0
SFA_OFF = Q_OFF + Q_BYTES
K_OFF = SFA_OFF + 512
SFB_OFF = K_OFF + STAGES * K_BYTES
SFB_SLOT = 512 * SF_ATOMS_B
DYN_SMEM = 1024 + SFB_OFF + STAGES * SFB_SLOT
assert K_OFF % 512 == 0 and K_BYTES % 512 == 0     # 64B swizzle: the pattern repeats every 512 B

# named barriers: 1 = the epilogue warpgroup, 2 = the load warp (a one-warp bar.sync: __syncwarp with
# memory ordering, and one the simulator honours -- its threads are not in lockstep). bar.sync is
# .aligned: each is preceded by a __syncwarp (bar.warp.sync) that reconverges the warp after the
# per-lane mbarrier spin loops and divergent stores.
EPI_BAR, LOAD_BAR = 1, 2

# mbarriers
BAR_Q = 0
FULL0 = 1
EMPTY0 = FULL0 + STAGES
ACCF0 = EMPTY0 + STAGES
ACCE0 = ACCF0 + 2
NBARS = ACCE0 + 2

# descriptors: packed E2M1 rows of 64 B, K-major, 64B swizzle (8-row groups 512 B apart; LBO unused)
DESC_SW64 = umma_smem_desc(0, 16, 8 * ROW_BYTES, "64B")
# a 32-row x 16-byte quarter of a 128x4 scale atom (tcgen05.cp source: rows 16 B apart, 8-row groups 128 B)
DESC_SF = umma_smem_desc(0, 128, 128, "none")
IDESC_K0, IDESC_K1 = (umma_idesc_block_scaled("mxf4nvf4", "e2m1", "e2m1", "ue8m0", ROWS, BN,
                                              a_sf_id=2 * kb, b_sf_id=2 * kb) for kb in range(D // K_MMA))


def tmem_plan() -> dict:
    """name -> (first column, columns) of the kernel's TMEM layout (module docstring); the tests
    declare it to the emulator (``emu.tmem_regions(**tmem_plan())``)."""
    return {"ACC0": (ACC0, BN), "ACC1": (ACC1, BN), "SFA": (SFA_COL, 4),
            "SFB0": (SFB0_COL, SFB_COLS), "SFB1": (SFB1_COL, SFB_COLS)}


def smem_plan() -> dict:
    """Bytes of the shared-memory plan (module docstring)."""
    red = PART_WORDS * 4
    return {"q": Q_BYTES, "sfa": 512, "k_slot": K_BYTES, "sfb_slot": SFB_SLOT, "stages": STAGES,
            "dynamic": DYN_SMEM, "reduce": red, "total": DYN_SMEM + red + 8 * NBARS + 4}


def _check_plans():
    p = tmem_plan()
    items = sorted(p.values())
    for (c0, n0), (c1, _n1) in zip(items, items[1:]):
        assert c0 + n0 <= c1, p
    assert max(c + n for c, n in p.values()) <= TMEM_COLS
    assert smem_plan()["total"] <= 227 * 1024


_check_plans()


# ----------------------------------------------------------------------------------------------
# The pipelined kernel (module docstring: roles, barriers, TMEM and smem plans, napkin math)
# ----------------------------------------------------------------------------------------------
# Epilogue helpers. One warp reads its 32 rows (heads) x 32 columns (keys) of the accumulator with two
# tcgen05.ld.16x256b.x4 (lanes +0 and +16 of its quadrant): register j of thread t holds row
# t//4 + 8 ((j % 4) // 2) (+ 16 for the second load), column 8 (j // 4) + 2 (t % 4) + j % 2 (the
# mma.sync m16n8 C-fragment pattern, ptx-facts 1.3). So a thread holds 4 rows x 8 columns: ``partial8``
# sums its 4 rows (ReLU x w of each row's head) per column in registers, ``head_sum8`` finishes the
# 32-row sum over the 8 lanes that share t % 4 with a 3-step transpose-reduce (4 + 2 + 1
# shfl.bfly), leaving lane t with column ``epilogue_column(t)``. On the simulator each has a NumPy
# twin (``head_sum8``: one warp rendezvous instead of 7 shuffles).
def _partial8_source():
    L = ["def partial8(a, c, w0, w1, w2, w3):",
         '    """Per column k of the thread (8): sum over its 4 rows of ReLU(acc) x w_row (float32)."""']
    for k in range(8):
        b, e = divmod(k, 2)
        i0, i1 = 4 * b + e, 4 * b + 2 + e
        L.append(f"    p{k} = (relu_f(a[{i0}]) * w0 + relu_f(a[{i1}]) * w1) + (relu_f(c[{i0}]) * w2 + "
                 f"relu_f(c[{i1}]) * w3)")
    L.append("    return " + ", ".join(f"p{k}" for k in range(8)))
    return "\n".join(L) + "\n"


def _relu_f(u):
    x = bits_f32(u)
    return x if x > float32(0) else float32(0)


relu_f = device(_relu_f)


def _partial8_sim(a, c, w0, w1, w2, w3):
    A = np.array([int(x) & 0xFFFFFFFF for x in a], np.uint32).view(np.float32)
    C = np.array([int(x) & 0xFFFFFFFF for x in c], np.uint32).view(np.float32)
    A, C = np.maximum(A, np.float32(0)), np.maximum(C, np.float32(0))
    k = np.arange(8)
    i0, i1 = 4 * (k // 2) + k % 2, 4 * (k // 2) + 2 + k % 2
    p = (A[i0] * np.float32(w0) + A[i1] * np.float32(w1)) + (C[i0] * np.float32(w2) + C[i1] * np.float32(w3))
    return tuple(np.float32(x) for x in p)


_ns: dict = {"relu_f": relu_f}
exec(compile(_partial8_source(), "<indexer_sm100.partial8>", "exec"), _ns)     # noqa: S102
partial8 = device(_ns["partial8"], sim=_partial8_sim)


def _head_sum8_gpu(lane, p0, p1, p2, p3, p4, p5, p6, p7):
    """Sum over the 8 lanes sharing lane % 4 of the partial of column k(lane) = 4 b4 + 2 b3 + b2
    (b_i = bit i of the lane): keep one half, send the other, add (xor 16, 8, 4)."""
    up = (lane >> 4) & 1
    q0 = (p4 if up else p0) + warp_shfl_xor(p0 if up else p4, 16)
    q1 = (p5 if up else p1) + warp_shfl_xor(p1 if up else p5, 16)
    q2 = (p6 if up else p2) + warp_shfl_xor(p2 if up else p6, 16)
    q3 = (p7 if up else p3) + warp_shfl_xor(p3 if up else p7, 16)
    up = (lane >> 3) & 1
    r0 = (q2 if up else q0) + warp_shfl_xor(q0 if up else q2, 8)
    r1 = (q3 if up else q1) + warp_shfl_xor(q1 if up else q3, 8)
    up = (lane >> 2) & 1
    return (r1 if up else r0) + warp_shfl_xor(r0 if up else r1, 4)


def _head_sum8_sim(lane, *p):
    from ..emu import ops as eops
    st, me = eops._enter()
    warp = me.thread_id // 32

    def compute(_key, got):
        out = []
        for ln in range(32):
            k = 4 * ((ln >> 4) & 1) + 2 * ((ln >> 3) & 1) + ((ln >> 2) & 1)
            acc = np.float32(0)
            for src in range(ln % 4, 32, 4):
                acc = np.float32(acc + np.float32(got[src][k]))
            out.append(acc)
        return out
    return eops._collective(st, me, ("head_sum8", warp), 32, int(lane), 0, tuple(p), compute,
                            "head_sum8", f"warp {warp}")


head_sum8 = device(_head_sum8_gpu, sim=_head_sum8_sim)


@device
def key_scale_word(ka, table, toff, P, n, lim):
    """The 4 UE8M0 scales (one word) of logical key n: through the block table (row at toff) when
    P > 0; 0 for n >= lim (the larger valid_len of the CTA's tokens: pages past it may not exist)."""
    if n >= lim:
        return uint32(0)
    row = int64(n)
    if P > 0:
        row = int64(table[toff + n // P]) * P + n % P
    return ops.ld_global_nc_u32(ka + uint64(4 * row))


def epilogue_column(lane: int) -> int:
    """The accumulator column (of 32) whose 32-row sum ``head_sum8`` leaves in ``lane``."""
    k = 4 * ((lane >> 4) & 1) + 2 * ((lane >> 3) & 1) + ((lane >> 2) & 1)
    return 8 * (k // 2) + 2 * (lane % 4) + k % 2


def _indexer_fused_sm100(tmq, tmk, qs, ks, w, vl, scores, T, N, tiles_per_cta, table, P, R, TP, tstride):
    """scores[t * N + n] (float32) for the CTA's token pair and key chunk. tmq / tmk: tensor maps of
    the packed codes (q [T * 64, 64] and the cache's physical rows [rows, 64] uint8, box R rows);
    qs / ks: UE8M0 scales uint8 [T * 64 * 4] / [rows * 4]; w float32 [T * 64]; vl int32 [T].
    Contiguous cache: P = 0, R = BN (one box per tile); paged: P = page_size, logical key n at row
    table[toff + n // P] * P + n % P, R = gcd(P, BN) rows per box. TP: tokens per CTA (2; 1 with
    per-token block tables, whose row toff = tok0 * tstride the CTA's one token reads; tstride = 0:
    one shared table)."""
    dyn = cuda.shared.array(0, uint8)
    bars = cuda.shared.array(NBARS, uint64)
    slot = cuda.shared.array(1, uint32)
    part = cuda.shared.array(PART_WORDS, float32)
    t = cuda.threadIdx.x
    warp = t // 32
    lane = t % 32
    tok0 = cuda.blockIdx.y * TP
    toff = tok0 * tstride
    ntiles = (N + BN - 1) // BN
    kt0 = cuda.blockIdx.x * tiles_per_cta
    nt_all = max(min(kt0 + tiles_per_cta, ntiles) - kt0, 0)
    vmax = 0
    for i in range(2):
        if i < TP and tok0 + i < T:
            vmax = max(vmax, min(max(int(vl[tok0 + i]), 0), N))
    nt = min(max((vmax + BN - 1) // BN - kt0, 0), nt_all)     # tiles that hold a valid key
    bar0 = ops.shared_address(bars)
    sb = (ops.shared_address(dyn) + uint32(1023)) & uint32(0xFFFFFC00)
    if t == 0:
        ops.mbarrier_init(bar0, uint32(1))
        for i in range(STAGES):
            ops.mbarrier_init(bar0 + uint32(8 * (FULL0 + i)), uint32(1))
            ops.mbarrier_init(bar0 + uint32(8 * (EMPTY0 + i)), uint32(1))
        for i in range(2):
            ops.mbarrier_init(bar0 + uint32(8 * (ACCF0 + i)), uint32(1))
            ops.mbarrier_init(bar0 + uint32(8 * (ACCE0 + i)), uint32(ROWS))
        ops.fence_mbarrier_init()
    if warp == MMA_WARP:
        ops.tcgen05_alloc(ops.shared_address(slot), uint32(TMEM_COLS))
        ops.tcgen05_relinquish_alloc_permit()
    ops.tcgen05_fence_before_thread_sync()
    cuda.syncthreads()
    ops.tcgen05_fence_after_thread_sync()
    taddr = slot[0]
    # ------------------------------------------------------------------ load warp (all lanes)
    if warp == LOAD_WARP and nt > 0:
        qa = ops.array_address(qs)
        ka = ops.array_address(ks)
        # q scales: atom row `lane` = (token, head) rows lane, lane + 32, lane + 64, lane + 96
        r0 = tok0 * H + lane
        s0 = ops.ld_global_nc_u32(qa + uint64(4 * r0)) if r0 < T * H else uint32(0)
        s1 = ops.ld_global_nc_u32(qa + uint64(4 * (r0 + 32))) if r0 + 32 < T * H else uint32(0)
        s2 = ops.ld_global_nc_u32(qa + uint64(4 * (r0 + 64))) if r0 + 64 < T * H else uint32(0)
        s3 = ops.ld_global_nc_u32(qa + uint64(4 * (r0 + 96))) if r0 + 96 < T * H else uint32(0)
        ops.st_shared_v4_b32(sb + uint32(SFA_OFF + 16 * lane), s0, s1, s2, s3)
        ops.fence_proxy_async_shared_cta()
        syncwarp()                                   # reconverge for the .aligned bar.sync
        ops.named_barrier_sync(LOAD_BAR, 32)         # every lane's scales before lane 0 arrives
        if lane == 0:
            aq = ops.array_address(tmq)
            ak = ops.array_address(tmk)
            ops.fence_proxy_tensormap_acquire_sys(aq)
            ops.fence_proxy_tensormap_acquire_sys(ak)
            ops.mbarrier_arrive_expect_tx(bar0, uint32(Q_BYTES))
            ops.tma_load_2d(sb + uint32(Q_OFF), aq, int32(0), int32(tok0 * H), bar0)
        for j in range(nt):
            st = j % STAGES
            ops.mbarrier_wait_parity(bar0 + uint32(8 * (EMPTY0 + st)), uint32(((j // STAGES) & 1) ^ 1))
            n0 = (kt0 + j) * BN
            sfb = sb + uint32(SFB_OFF + st * SFB_SLOT)
            for a in range(SF_ATOMS_B):
                i0 = 128 * a + lane                   # key of the tile in atom row `lane`, + 32 i
                k0 = n0 + i0
                s0 = key_scale_word(ka, table, toff, P, k0, vmax) if i0 < BN else uint32(0)
                s1 = key_scale_word(ka, table, toff, P, k0 + 32, vmax) if i0 + 32 < BN else uint32(0)
                s2 = key_scale_word(ka, table, toff, P, k0 + 64, vmax) if i0 + 64 < BN else uint32(0)
                s3 = key_scale_word(ka, table, toff, P, k0 + 96, vmax) if i0 + 96 < BN else uint32(0)
                ops.st_shared_v4_b32(sfb + uint32(512 * a + 16 * lane), s0, s1, s2, s3)
            ops.fence_proxy_async_shared_cta()
            syncwarp()
            ops.named_barrier_sync(LOAD_BAR, 32)
            if lane == 0:
                full = bar0 + uint32(8 * (FULL0 + st))
                ops.mbarrier_arrive_expect_tx(full, uint32(K_BYTES))
                for r in range(BN // R):              # contiguous: one box; paged: one per run of R rows
                    n = n0 + r * R
                    row = int64(n)
                    if P > 0:                         # past the pair's valid keys: a zero-filled box
                        row = int64(table[toff + n // P]) * P + n % P if n < vmax else int64(-R)
                    ops.tma_load_2d(sb + uint32(K_OFF + st * K_BYTES + r * R * ROW_BYTES),
                                    ops.array_address(tmk), int32(0), int32(row), full)
    # ------------------------------------------------------------------ MMA warp (lane 0 issues)
    if warp == MMA_WARP and lane == 0 and nt > 0:
        ops.mbarrier_wait_parity(bar0, uint32(0))
        ops.tcgen05_fence_after_thread_sync()
        ops.tcgen05_cp_32x128b_warpx4(taddr + uint32(SFA_COL),
                                      uint64(DESC_SF) | uint64(((sb + uint32(SFA_OFF)) >> 4) & 0x3FFF))
        qdesc = uint64(DESC_SW64) | uint64(((sb + uint32(Q_OFF)) >> 4) & 0x3FFF)
        for j in range(nt):
            st = j % STAGES
            b = j % 2
            ops.mbarrier_wait_parity(bar0 + uint32(8 * (FULL0 + st)), uint32((j // STAGES) & 1))
            if j >= 2:
                ops.mbarrier_wait_parity(bar0 + uint32(8 * (ACCE0 + b)), uint32(((j // 2) - 1) & 1))
            ops.tcgen05_fence_after_thread_sync()
            sft = taddr + uint32(SFB0_COL + SFB_COLS * b)
            sfs = sb + uint32(SFB_OFF + st * SFB_SLOT)
            for a in range(SF_ATOMS_B):
                ops.tcgen05_cp_32x128b_warpx4(sft + uint32(4 * a),
                                              uint64(DESC_SF) | uint64(((sfs + uint32(512 * a)) >> 4) & 0x3FFF))
            kdesc = uint64(DESC_SW64) | uint64(((sb + uint32(K_OFF + st * K_BYTES)) >> 4) & 0x3FFF)
            acc = taddr + uint32(ACC0 + BN * b)
            # K = 0..63 then 64..127: +32 bytes (= 2 in the >> 4 address field) inside the 64-byte row
            ops.tcgen05_mma_mxf4nvf4_2x_ss(acc, qdesc, kdesc, uint32(IDESC_K0), taddr + uint32(SFA_COL),
                                           sft, uint32(0))
            ops.tcgen05_mma_mxf4nvf4_2x_ss(acc, qdesc + uint64(2), kdesc + uint64(2), uint32(IDESC_K1),
                                           taddr + uint32(SFA_COL), sft, uint32(1))
            ops.tcgen05_commit(bar0 + uint32(8 * (ACCF0 + b)))
            ops.tcgen05_commit(bar0 + uint32(8 * (EMPTY0 + st)))
    # ------------------------------------------------------------------ epilogue warpgroup
    if warp < 4:
        tok = tok0 + warp // 2                       # warp w: token w // 2, heads 32 (w % 2) + 0..31
        hb = tok * H + 32 * (warp % 2) + lane // 4
        w0 = float32(0)
        w1 = float32(0)
        w2 = float32(0)
        w3 = float32(0)
        tvl = 0
        tokv = warp // 2 < TP and tok < T           # TP = 1: warps 2-3 hold no token of this CTA
        if tokv:
            w0 = w[hb]
            w1 = w[hb + 8]
            w2 = w[hb + 16]
            w3 = w[hb + 24]
            tvl = min(max(int(vl[tok]), 0), N)
        kk = 4 * ((lane >> 4) & 1) + 2 * ((lane >> 3) & 1) + ((lane >> 2) & 1)
        col = 8 * (kk // 2) + 2 * (lane % 4) + kk % 2      # epilogue_column(lane)
        lrow = uint32((32 * warp) << 16)
        for j in range(nt_all):
            n0 = (kt0 + j) * BN
            if j < nt:
                b = j % 2
                ops.mbarrier_wait_parity(bar0 + uint32(8 * (ACCF0 + b)), uint32((j // 2) & 1))
                ops.tcgen05_fence_after_thread_sync()
                for ch in range(NCH):
                    c0 = uint32(ACC0 + BN * b + 32 * ch)
                    a = ops.tcgen05_ld_16x256b_x4(taddr + lrow + c0)
                    c = ops.tcgen05_ld_16x256b_x4(taddr + lrow + uint32(16 << 16) + c0)
                    ops.tcgen05_wait_ld()
                    if ch == NCH - 1:                # the accumulator is free for tile j + 2
                        ops.tcgen05_fence_before_thread_sync()
                        ops.mbarrier_arrive(bar0 + uint32(8 * (ACCE0 + b)))
                    p0, p1, p2, p3, p4, p5, p6, p7 = partial8(a, c, w0, w1, w2, w3)
                    hs = head_sum8(lane, p0, p1, p2, p3, p4, p5, p6, p7)
                    pb = (ch % 2) * ROWS                 # double-buffered: one barrier per chunk
                    part[pb + t] = hs
                    syncwarp()
                    ops.named_barrier_sync(EPI_BAR, ROWS)
                    if warp % 2 == 0:                    # heads 0-31 + heads 32-63 of the token
                        n = n0 + 32 * ch + col
                        if tokv and n < N:
                            scores[tok * N + n] = (part[pb + t] + part[pb + t + 32]) if n < tvl else NEG_INF
            else:                                    # past both tokens' valid_len: no MMA
                for i in range(t, 2 * BN, ROWS):
                    n = n0 + i % BN
                    if i // BN < TP and tok0 + i // BN < T and n < N:
                        scores[(tok0 + i // BN) * N + n] = NEG_INF
    # ------------------------------------------------------------------ teardown
    syncwarp()
    ops.tcgen05_fence_before_thread_sync()
    cuda.syncthreads()
    if warp == MMA_WARP:
        ops.tcgen05_fence_after_thread_sync()
        ops.tcgen05_dealloc(taddr, uint32(TMEM_COLS))


indexer_fused_sm100 = kernel(_indexer_fused_sm100, launch_bounds=(THREADS, 1))


def fused_signature():
    from numba import types as ty
    return (ty.uint64[::1], ty.uint64[::1], ty.uint8[::1], ty.uint8[::1], ty.float32[::1], ty.int32[::1],
            ty.float32[::1], ty.int64, ty.int64, ty.int64, ty.int32[::1], ty.int64, ty.int64, ty.int64,
            ty.int64)


def production_kernels():
    """(Kernel, signature) pairs for compile-only checks (``python -m dsv4_numba info``, tests)."""
    return [(indexer_fused_sm100, fused_signature())]


SMS = 148            # B200


def launch_config(T: int, N: int, tiles_per_cta: int | None = None, sms: int = SMS,
                  tokens_per_cta: int = TOKENS_PER_TILE) -> dict:
    """CTAs of a call: a token pair x a chunk of ``tiles_per_cta`` key tiles; by default the key
    tiles are split so that the pairs x chunks fill the SMs in one wave (at most ``sms`` CTAs: with
    512 TMEM columns one CTA runs per SM, and a second wave of a few CTAs would double the time)."""
    ntiles = -(-N // BN)
    pairs = -(-T // tokens_per_cta)
    if tiles_per_cta is None:
        chunks = max(1, min(ntiles, sms // max(pairs, 1)))
        tiles_per_cta = -(-ntiles // chunks)
    tiles_per_cta = max(1, int(tiles_per_cta))
    return {"grid": (max(1, -(-ntiles // tiles_per_cta)), pairs), "tiles_per_cta": tiles_per_cta,
            "ntiles": ntiles, "threads": THREADS, "dyn_smem": DYN_SMEM, "tokens_per_cta": tokens_per_cta}


# ----------------------------------------------------------------------------------------------
# Step 1 of the kernel (built): the score tile on block-scaled tcgen05.mma, one warpgroup, no ring.
# One CTA = 2 tokens x 64 heads (M = 128) x V1_BN = 128 keys: codes and scales are copied into
# shared memory by the 128 threads (K-major, no swizzle: 8-row x 16-byte core matrices, LBO = 128,
# SBO = 512), the scales into the 128x4 atoms, fence.proxy.async; thread 0 moves the scales to TMEM
# (tcgen05.cp.32x128b.warpx4) and issues the 2 MMAs (K blocks 0 / 1 = scale-factor half words 0 / 2),
# commit; every thread (= row = (token, head)) reads its 128 logits in 32-column chunks, ReLU x w,
# and the 64 heads of a token are summed through shared memory in a fixed order.
# Napkin math of this step: per CTA 2 x 128 x 128 x 128 = 4.2 MFLOP (128 clk of FP4 MMA) against
# 8 KB + 8 KB of codes copied by ordinary loads/stores and a 16K-FMA epilogue: load- and
# epilogue-bound by an order of magnitude; it exists to pin the layouts (codes, scale atoms, SF ids)
# under the emulator before the pipelined kernel of the plan above is written.
# ----------------------------------------------------------------------------------------------
V1_BN = 128
V1_TMEM = 256                                     # ACC 0..127, SFA 128..131, SFB 132..135
V1_ACC, V1_SFA, V1_SFB = 0, 128, 132
CHUNKS = ROW_BYTES // 16                          # 16-byte chunks per row
TILE_BYTES = ROWS * ROW_BYTES                     # 8 KB (q tile, and the key tile: V1_BN = 128)
DESC_CODES = umma_smem_desc(0, 128, 128 * CHUNKS, "none")     # LBO next chunk, SBO next 8 rows
DESC_SF = umma_smem_desc(0, 128, 128, "none")                  # a 32-row x 16-byte atom quarter
# K block kb reads scale-factor half word 2 kb of each TMEM word (its two UE8M0 bytes)
IDESC0, IDESC1 = (umma_idesc_block_scaled("mxf4nvf4", "e2m1", "e2m1", "ue8m0", ROWS, V1_BN, a_sf_id=2 * kb,
                                          b_sf_id=2 * kb) for kb in range(D // K_MMA))
V1_DYN = 1024 + 2 * TILE_BYTES + 2 * 512          # codes q, k; scale atoms q, k


@kernel
def indexer_scores_sm100(qw, qs, kw, ks, w, scores, T, N):
    """scores[t, n] = sum_h w[t, h] ReLU(q[t, h] . k[n]) for 2 tokens x 128 keys per CTA (see above).
    qw: uint32 [T * H * 16] packed codes; qs: uint8 [T * H * 4] UE8M0; kw: uint32 [N * 16]; ks: uint8
    [N * 4]; w: float32 [T * H]; scores: float32 [T * N]."""
    dyn = cuda.shared.array(0, uint32)
    red = cuda.shared.array(128 * 33, float32)
    bars = cuda.shared.array(1, uint64)
    slot = cuda.shared.array(1, uint32)
    t = cuda.threadIdx.x
    warp = t // 32
    tok0 = cuda.blockIdx.x * 2
    n0 = cuda.blockIdx.y * 128
    base = ops.shared_address(dyn)
    sb = (base + uint32(1023)) & uint32(0xFFFFFC00)
    o = (sb - base) // 4                            # word index of the aligned start
    qa, ka = sb, sb + uint32(8192)
    sfa, sfb = sb + uint32(16384), sb + uint32(16896)
    # codes: row r, 16-byte chunk h -> core matrix (r // 8, h) at (r // 8) * 512 + h * 128 + (r % 8) * 16
    for i in range(t, 128 * 16, 128):               # 128 rows x 16 words, both operands
        r = i // 16
        wd = i % 16
        off = ((r // 8) * 512 + (wd // 4) * 128 + (r % 8) * 16 + (wd % 4) * 4) // 4
        tq = tok0 + r // 64
        dyn[o + off] = qw[(tq * 64 + r % 64) * 16 + wd] if tq < T else uint32(0)
        dyn[o + 2048 + off] = kw[(n0 + r) * 16 + wd] if n0 + r < N else uint32(0)
    # scales: the 128x4 atom, byte 16 (m % 32) + 4 (m // 32) + k, one word per row m
    for m in range(t, 128, 128):
        tq = tok0 + m // 64
        wq = uint32(0)
        wk = uint32(0)
        for k in range(4):
            if tq < T:
                wq |= uint32(qs[(tq * 64 + m % 64) * 4 + k]) << uint32(8 * k)
            if n0 + m < N:
                wk |= uint32(ks[(n0 + m) * 4 + k]) << uint32(8 * k)
        dyn[o + 4096 + (16 * (m % 32) + 4 * (m // 32)) // 4] = wq
        dyn[o + 4224 + (16 * (m % 32) + 4 * (m // 32)) // 4] = wk
    ops.fence_proxy_async_shared_cta()
    bar = ops.shared_address(bars)
    if t == 0:
        ops.mbarrier_init(bar, uint32(1))
        ops.fence_mbarrier_init()
    if warp == 0:
        ops.tcgen05_alloc(ops.shared_address(slot), uint32(V1_TMEM))
        ops.tcgen05_relinquish_alloc_permit()
    ops.tcgen05_fence_before_thread_sync()
    cuda.syncthreads()
    ops.tcgen05_fence_after_thread_sync()
    taddr = slot[0]
    if t == 0:
        ops.tcgen05_cp_32x128b_warpx4(taddr + uint32(V1_SFA), uint64(DESC_SF) | uint64(sfa >> 4))
        ops.tcgen05_cp_32x128b_warpx4(taddr + uint32(V1_SFB), uint64(DESC_SF) | uint64(sfb >> 4))
        for kb in range(2):                         # K = 64 codes = 32 bytes = 2 chunks per block
            ops.tcgen05_mma_mxf4nvf4_2x_ss(taddr + uint32(V1_ACC),
                                           uint64(DESC_CODES) | uint64((qa + uint32(256 * kb)) >> 4),
                                           uint64(DESC_CODES) | uint64((ka + uint32(256 * kb)) >> 4),
                                           uint32(IDESC0) if kb == 0 else uint32(IDESC1),
                                           taddr + uint32(V1_SFA), taddr + uint32(V1_SFB), uint32(kb))
        ops.tcgen05_commit(bar)
    ops.mbarrier_wait_parity(bar, uint32(0))
    ops.tcgen05_fence_after_thread_sync()
    tq = tok0 + t // 64
    wt = float32(0)
    if tq < T:
        wt = w[tq * 64 + t % 64]
    ra = taddr + uint32((32 * (warp % 4)) << 16) + uint32(V1_ACC)
    for ch in range(4):
        v = ops.tcgen05_ld_32x32b_x32(ra + uint32(32 * ch))
        ops.tcgen05_wait_ld()
        for j in range(32):
            x = bits_f32(v[j])
            red[t * 33 + j] = (x if x > float32(0) else float32(0)) * wt
        cuda.syncthreads()
        if t < 64:
            tl = t // 32
            j = t % 32
            acc = float32(0)
            for h in range(64):
                acc += red[(tl * 64 + h) * 33 + j]
            n = n0 + 32 * ch + j
            if tok0 + tl < T and n < N:
                scores[(tok0 + tl) * N + n] = acc
        cuda.syncthreads()
    ops.tcgen05_fence_before_thread_sync()
    cuda.syncthreads()
    if warp == 0:
        ops.tcgen05_fence_after_thread_sync()
        ops.tcgen05_dealloc(taddr, uint32(V1_TMEM))


def scores_signature():
    from numba import types as ty
    return (ty.uint32[::1], ty.uint8[::1], ty.uint32[::1], ty.uint8[::1], ty.float32[::1],
            ty.float32[::1], ty.int64, ty.int64)


def scores_launch(q, k, w):
    """(grid, block, args, dyn smem) for ``indexer_scores_sm100`` from dsv4_fp4 ``QuantizedFP4`` q
    [T, 64, 128] and k [N, 128] (NumPy) and weights w [T, 64]; scores come back in ``args[5]``."""
    T, N = q.shape[0], k.shape[0]
    if q.fmt != "dsv4_fp4" or k.fmt != "dsv4_fp4" or q.shape[1:] != (H, D) or k.shape[1:] != (D,):
        raise ValueError(f"expected dsv4_fp4 q [T, {H}, {D}] and k [N, {D}], got {q.fmt} {q.shape}, "
                         f"{k.fmt} {k.shape}")
    args = (np.ascontiguousarray(q.data).view(np.uint32).reshape(-1), np.ascontiguousarray(q.scales).reshape(-1),
            np.ascontiguousarray(k.data).view(np.uint32).reshape(-1), np.ascontiguousarray(k.scales).reshape(-1),
            np.ascontiguousarray(w, np.float32).reshape(-1), np.full(T * N, np.nan, np.float32), T, N)
    return (-(-T // 2), -(-N // V1_BN)), 128, args, V1_DYN



# ----------------------------------------------------------------------------------------------
# Host side: checks, placement, launch, top-k
# ----------------------------------------------------------------------------------------------
ARCH = "sm_100a"
STAGED_HINT = ("use the staged pipeline (indexer(..., impls=None) / 'reference' / a {stage: choice} "
               "dict), or the sm_90a fused kernel (impls='fused:sm_90a')")


def check_fusable(c, q, k_cache, weights):
    """Raise (before any launch) for calls this kernel does not take, naming what to use instead:
    the sm_90a kernel's checks (FP8, H / D, 32-bit positions, FP4 formats with UE8M0 per 32, device
    bf16 weights), plus: FP4 only (no bfloat16 path here); paged caches with pages of a multiple of 8
    rows (each TMA box of a run starts 512-byte aligned in the 64B-swizzled tile) and < 2^31 rows."""
    from .indexer_sm90 import check_fusable as _common
    _common(c, q, k_cache, weights)
    if c.fam != "fp4":
        raise NotImplementedError("the sm_100a fused indexer takes FP4 (dsv4_fp4 / mxfp4) q and keys "
                                  "only (block-scaled tcgen05.mma); bfloat16 inputs: " + STAGED_HINT)
    if len(k_cache.shape) == 3:
        if c.page_size % 8:
            raise NotImplementedError(f"the sm_100a fused indexer loads pages in TMA boxes of gcd(page_size, "
                                      f"{BN}) rows, which must be a multiple of 8 (512-byte aligned in the "
                                      f"64B-swizzled tile); page_size = {c.page_size}: " + STAGED_HINT)
        if c.num_pages * c.page_size >= 2 ** 31:
            raise ValueError(f"the sm_100a fused indexer addresses cache rows with 32-bit TMA coordinates: "
                             f"num_pages * page_size = {c.num_pages * c.page_size} must be < 2^31")


class Plan:
    """A prepared call (validated ``pipelines.indexer`` call ``c``, FP4 inputs): arrays placed,
    tensor maps encoded (driver on a GPU, ``emu.tensor_map`` under the simulator); ``run()``
    launches. ``out``: a kernel-side float32 [T * N] to write (tests poison it with NaN)."""

    def __init__(self, c, q, k_cache, weights, tiles_per_cta=None, out=None):
        T, N = c.T, c.N
        io = ArrayIO(weights, q.data, q.scales, k_cache.data, k_cache.scales)
        self.io, self.T, self.N = io, T, N
        paged = len(k_cache.shape) == 3
        rows = c.num_pages * c.page_size if paged else N
        self.P = c.page_size if paged else 0
        self.R = math.gcd(self.P, BN) if paged else BN
        per_token = paged and c.table_rows > 1
        self.TP = 1 if per_token else TOKENS_PER_TILE      # per-token tables: one token per CTA
        self.tstride = c.max_pages if per_token else 0
        table = c.table if paged else np.zeros(1, np.int32)
        table = io.to_kernel(np.ascontiguousarray(table, np.int32) if isinstance(table, np.ndarray) else table)
        qd = io.to_kernel(q.data).reshape(T * H, ROW_BYTES)
        kd = io.to_kernel(k_cache.data).reshape(rows, ROW_BYTES)
        qs = io.to_kernel(q.scales).reshape(-1)
        ks = io.to_kernel(k_cache.scales).reshape(-1)
        for name, a in (("q.scales", qs), ("k_cache.scales", ks)):      # read 4 scales per 32-bit load
            ptr = a.__cuda_array_interface__["data"][0] if io.gpu else a.ctypes.data
            if ptr % 4:
                raise ValueError(f"{name} starts at an address that is not 4-byte aligned ({ptr:#x}): the "
                                 f"kernel loads a row's 4 UE8M0 scales as one 32-bit word; pass a fresh array")
        if isinstance(weights, np.ndarray):
            w = io.to_kernel(np.ascontiguousarray(weights, dtype=np.float32).reshape(-1))
        else:
            w = io.to_kernel(weights).reshape(-1)
        vl = c.valid_len
        self.vl = io.to_kernel(np.array(vl, np.int32) if isinstance(vl, np.ndarray) else vl).reshape(-1)
        self.scores = io.empty(T * N, np.float32) if out is None else out
        self.cfg = launch_config(T, N, tiles_per_cta, tokens_per_cta=self.TP)
        self.args = None
        if T and N:
            if io.gpu:
                from ..hw.tma import tensor_map_on_device as tmap
            else:
                from ..emu import tensor_map as tmap
            maps = (tmap(qd, (ROWS, ROW_BYTES), "64B"), tmap(kd, (self.R, ROW_BYTES), "64B"))
            self.keep = (qd, kd)
            self.args = (maps[0], maps[1], qs, ks, w, self.vl, self.scores, T, N,
                         self.cfg["tiles_per_cta"], table.reshape(-1), self.P, self.R, self.TP, self.tstride)
            if io.gpu:
                indexer_fused_sm100.reserve_dynamic_shared(self.args, DYN_SMEM)

    def run(self):
        if self.args is not None:
            indexer_fused_sm100.launch(self.cfg["grid"], THREADS, *self.args, shared_bytes=DYN_SMEM)
        return self


def unavailable() -> str | None:
    """None when the kernel can run here (an sm_100a GPU), else why not."""
    from ..runtime import device_arch, mode
    if mode() != "gpu":
        return f"the fused indexer for {ARCH} needs a GPU of arch {ARCH}, but the run mode is 'sim'"
    if device_arch() != ARCH:
        return f"the fused indexer for {ARCH} is built for {ARCH}, but this device is {device_arch()}"
    return None


def fused_scores_sm100(c, q, k_cache, weights, tiles_per_cta=None, out=None):
    """Scores [T * N] float32 (kernel-side) of a validated, fusable call (no availability check:
    under the simulator this runs on the emulator -- the tests' entry)."""
    check_fusable(c, q, k_cache, weights)
    return Plan(c, q, k_cache, weights, tiles_per_cta, out).run()


def fused_indexer(c, q, k_cache, weights, topk_impl=None, return_intermediates=False, emulate=False,
                  tiles_per_cta=None, out=None):
    """The sm_100a fused path of ``pipelines.indexer.indexer``: scores [T, N] from
    ``indexer_fused_sm100``, then the registered top-k stage (``stages.topk.topk``, ``topk_impl``).
    Raises ``ImplUnavailable`` before any launch off an sm_100a GPU unless ``emulate`` (the tests:
    the kernel under the simulator + emulator; ``out``: a NaN-poisoned kernel-side scores buffer)."""
    from ..registry import ImplUnavailable
    from .indexer_sm90 import topk_of_scores
    check_fusable(c, q, k_cache, weights)
    why = unavailable()
    if why is not None and not (emulate and why.endswith("'sim'")):
        raise ImplUnavailable(f"indexer fused:{ARCH}: {why}; {STAGED_HINT}")
    p = Plan(c, q, k_cache, weights, tiles_per_cta, out).run()
    return topk_of_scores(p.io, p.scores, p.vl, c.T, c.N, c.k, topk_impl, return_intermediates)


FUSED_ARCHS = ("sm_90a", ARCH)


def pick_fused(impls: str):
    """``impls`` = ``"fused"`` [``":sm_90a"`` | ``":sm_100a"``] [``":<top-k choice>"``] -> (the fused
    path to call, top-k choice). Without an arch: this device's (sm_100a GPU -> this kernel; anything
    else -> the sm_90a kernel, which runs on Hopper and under the simulator as before). An explicit
    ``sm_100a`` that cannot run raises ``ImplUnavailable`` here, before any launch."""
    from ..registry import ImplUnavailable
    from ..runtime import device_arch
    from .indexer_sm90 import fused_indexer as sm90
    rest = impls.split(":", 1)[1] if ":" in impls else ""
    arch = None
    if rest.startswith("sm_"):
        arch, _, rest = rest.partition(":")
        if arch not in FUSED_ARCHS:
            raise ImplUnavailable(f"impls={impls!r}: no fused indexer for {arch} (only "
                                  f"{', '.join(FUSED_ARCHS)}); {STAGED_HINT}")
    topk_impl = rest or None
    if arch is None:
        arch = ARCH if device_arch() == ARCH else "sm_90a"
    elif arch == ARCH:
        why = unavailable()
        if why is not None:
            raise ImplUnavailable(f"impls={impls!r}: {why}; {STAGED_HINT}")
    return (fused_indexer if arch == ARCH else sm90), topk_impl


__all__ = ["tmem_plan", "smem_plan", "indexer_fused_sm100", "fused_signature", "production_kernels",
           "launch_config", "Plan", "check_fusable", "unavailable", "fused_scores_sm100", "fused_indexer",
           "pick_fused", "indexer_scores_sm100", "scores_launch", "scores_signature", "H", "D", "BN", "ROWS"]
