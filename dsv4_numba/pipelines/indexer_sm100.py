"""The FP4 lightning indexer on sm_100a (issue 9 item 2) -- DESIGN AND PLAN ONLY, no kernel yet.

Status: this module fixes the shapes, the Tensor Memory and shared-memory plans and the napkin math
of the block-scaled tcgen05 indexer so that the kernel can be written against them; the kernel itself
is **not written** (``fused_production`` raises ``NotImplementedError``), nothing here is registered
in the stage registry, and nothing has run anywhere. tests/test_indexer_sm100.py checks the plans.

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

H = 64                  # index heads
D = 128                 # index head dim
ROWS = 128              # MMA M: 2 tokens x 64 heads
TOKENS_PER_TILE = ROWS // H
BN = 192                # keys per tile (MMA N)
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


def fused_production(*_a, **_k):
    raise NotImplementedError("the sm_100a FP4 indexer kernel is not written yet (design and plans only: "
                              "dsv4_numba.pipelines.indexer_sm100); use the staged indexer or the sm_90a "
                              "fused one")


__all__ = ["tmem_plan", "smem_plan", "fused_production", "H", "D", "BN", "ROWS"]
