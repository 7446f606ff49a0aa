"""The FP4 lightning indexer on sm_100a (issue 9 item 2) -- STARTED: the score tile is built, the
pipelined kernel is planned.

Status: **built and checked here** (ptxas for sm_100a, the emulator against float64 in
tests/test_indexer_sm100.py) is step 1, ``indexer_scores_sm100``: the score tile on block-scaled
``tcgen05.mma.kind::mxf4nvf4.block_scale.scale_vec::2X`` with the dsv4_fp4 scales moved to TMEM by
``tcgen05.cp.32x128b.warpx4`` from the 128x4 atom (its comment block below). **Not built**: the
pipelined kernel this module plans (TMA ring, warp roles, double-buffered accumulators: the
``tmem_plan`` / ``smem_plan`` below), the registry variant ``indexer``/``production:sm_100a``
(``fused_production`` raises ``NotImplementedError``), paged caches, and the top-k after the scores
(it would be the existing top-k stage, as on Hopper). **Nothing here has run on Blackwell
hardware.** First check on a B200: ``indexer_scores_sm100`` against the float64 oracle of the test
(layouts of the packed codes, the scale atom and the SF ids), then the pipelined kernel.

What it will compute (as ``pipelines.indexer`` / the Hopper kernel ``indexer_sm90``)::

    score[t, n] = sum_h w[t, h] * ReLU(q[t, h, :] . k[n, :])      (H = 64 heads, D = 128)

with q and k in ``dsv4_fp4`` (E2M1 codes, two per byte, + one UE8M0 scale per 32 values), then
top-k per token as on Hopper (the existing top-k stage).

Design
------
* MMA: ``tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.scale_vec::2X`` (UE8M0 scales, one per
  32 K values = the dsv4_fp4 block; binding ``tcgen05_mma_mxf4nvf4_2x_ss``), M = 128 rows = 2 tokens x
  64 heads (row r = token 2 i + r // 64, head r % 64), N = 256 keys, K = 64 per instruction: a key tile
  is D / 64 = 2 instructions. A (q) and B (k) K-major in shared memory, packed E2M1 straight from the
  cache layout (no decode: the point of block-scaled MMA), 64 B of codes per row (D = 128): ``64B``
  swizzle, one swizzle row per operand row.
* Scale factors: UE8M0 bytes re-laid out by the load warp into the 128x4 smem atom (byte
  16 (m % 32) + 4 (m // 32) + k) and moved to TMEM by ``tcgen05.cp.32x128b.warpx4`` (duplicated into
  the four lane quadrants, as the MMA requires); SFA once per CTA, SFB per key tile.
* Warp roles (as fmha_sm100): a TMA warp (k codes and scales of a key tile into a 3-deep ring; q of
  the CTA's tokens once), an MMA warp (alloc, tcgen05.cp of the scales, the 2 MMAs per tile, commit),
  and an epilogue warpgroup: thread = TMEM lane = (token, head) row, tcgen05.ld of 32 columns at a
  time, ReLU x w[t, h], then the head sum over the 64 lanes of a token (2 warps) through shared
  memory, score stored once per (token, key). The accumulator is double-buffered so the MMA of tile
  j + 1 runs under the epilogue of tile j.

Tensor Memory plan (``tmem_plan``): ACC0 / ACC1 = 256 columns each would fill all 512 columns and
leave none for the scale factors, so N = 256 comes with a single accumulator, or N = 224 with two;
the plan below takes N = 192 (two accumulators of 192 columns) + scale factors:

    ACC0  =   0..191   f32 [128 x 192]
    ACC1  = 192..383
    SFA   = 384..391   4 columns per K = 64 block x 2 blocks (M = 128 rows: column = m // 32)
    SFB0  = 392..403   N = 192 keys: 6 columns per block x 2 blocks (ring slot 0)
    SFB1  = 404..415   (slot 1)
    alloc 512

Napkin math (B200 from published peak figures, not measured: ~9 PFLOP/s dense FP4 tensor core,
8 TB/s HBM3e, 148 SMs at ~1.85 GHz -> ~32768 dense FP4 FLOP / clk / SM; ~128 f32 FMA / clk / SM)
---------------------------------------------------------------------------------------------
* Per (token, key): 2 H D = 16384 FLOP of MMA and 64 ReLU-multiply-adds of epilogue.
* Decode (T = 1, N = 65536): keys = 65536 x 68 B = 4.5 MB -> 0.56 us at 8 TB/s; 1.07 GFLOP -> 0.12
  us of MMA (with 64 of 128 rows idle): launch- and memory-bound (a few us), the top-k dominates.
* Prefill (T = 4096, N = 65536, no causal skip): 4.4 TFLOP -> 0.49 ms at the FP4 peak. Per 128-row x
  192-key tile: 2 x 128 x 192 x 128 = 6.3 MFLOP = 192 clk of MMA, but the epilogue reads 24576 TMEM
  values and does 24576 FMA + the head reduction: >= 192 clk of FMA alone, ~2-3x that with the
  reduction and loads -> epilogue-bound, expected ~30-50% of the FP4 peak (2.7-4.5 PFLOP/s,
  1-1.6 ms), unless the head sum moves into the MMA (a second MMA with w as a [1 x 64] operand
  after the ReLU -- needs the ReLU'd logits back in smem/TMEM as FP8/BF16: the next design step).
  Peers: DeepGEMM's ``fp8_fp4_mqa_logits`` is the SM100 FP4 indexer (no published B200 number in
  ../shared/reference/dsv4-facts.md).
"""
from __future__ import annotations

import numpy as np
from numba import cuda  # noqa: F401
from numba.types import float32, int32, uint32, uint64  # noqa: F401

from ..hw import ops
from ..hw.bits import bits_f32
from ..hw.descriptors import umma_idesc_block_scaled, umma_smem_desc
from ..runtime import kernel

H = 64                  # index heads
D = 128                 # index head dim
ROWS = 128              # MMA M: 2 tokens x 64 heads
TOKENS_PER_TILE = ROWS // H
BN = 192                # keys per tile (MMA N) of the planned pipelined kernel
K_MMA = 64              # K per kind::mxf4nvf4 instruction
SF_BLOCK = 32           # UE8M0 scale block (dsv4_fp4), scale_vec::2X
STAGES = 3              # key ring depth
TMEM_COLS = 512


def tmem_plan() -> dict:
    """name -> (first column, columns) of the planned TMEM layout (module docstring)."""
    kblocks = D // K_MMA
    sfa = (ROWS // 32) * kblocks                  # one column per 32 rows per K block
    sfb = (BN // 32) * kblocks
    plan = {"ACC0": (0, BN), "ACC1": (BN, BN)}
    c = 2 * BN
    plan["SFA"] = (c, sfa)
    c += sfa
    for s in range(2):
        plan[f"SFB{s}"] = (c, sfb)
        c += sfb
    return plan


def smem_plan() -> dict:
    """Bytes of the planned shared-memory tiles: packed E2M1 codes (D / 2 bytes per row) and the
    128x4 scale atoms (512 B per 128 rows x 4 scales)."""
    row = D // 2
    sf_per_row = D // SF_BLOCK
    q = ROWS * row
    k = BN * row
    sfa = -(-ROWS // 128) * 512 * (sf_per_row // 4)
    sfb = -(-BN // 128) * 512 * (sf_per_row // 4)
    reduce = TOKENS_PER_TILE * 8 * BN * 4          # head-sum partials: 8 per token per key (f32)
    total = q + sfa + STAGES * (k + sfb) + reduce
    return {"q": q, "k_slot": k, "sfa": sfa, "sfb_slot": sfb, "reduce": reduce, "total": total}


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
ROW_BYTES = D // 2                                # 64 B of codes per row
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


def fused_production(*_a, **_k):
    raise NotImplementedError("the sm_100a FP4 indexer is not wired into the stage registry yet: only the "
                              "score tile kernel (indexer_scores_sm100) is built; use the staged indexer "
                              "or the sm_90a fused one")


__all__ = ["tmem_plan", "smem_plan", "fused_production", "indexer_scores_sm100", "scores_launch",
           "scores_signature", "H", "D", "BN", "ROWS"]
