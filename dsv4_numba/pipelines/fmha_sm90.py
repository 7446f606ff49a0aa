"""Fused multi-head attention for sm_90a (H100): TMA ring + wgmma + online softmax in registers.

Registered as the ``production`` (arch sm_90a) implementation of the registry stage ``attn_fused``
(its ``reference`` is the staged pipeline of ``pipelines.fmha``). ``dsv4_numba.fmha`` picks it by
``impls="production"``, ``impls={"attn_fused": "production"}``, or ``auto`` when it can run here
(an sm_90a GPU, bfloat16 or float16 q/k/v (``DTYPES``), D in ``SUPPORTED_D`` = 16, 64, 128, 256,
no ``return_intermediates``). It computes exactly the function of ``pipelines.fmha`` (see its
docstring for every rule); the one difference is in the rounding: P is rounded to q's 16-bit type
before the PV GEMM (the row sum uses the float32 P), as every fused attention kernel does --
tests/gpu/test_fmha_gpu.py derives the bound. One NaN rule differs:
a NaN / inf in a v row that is causally hidden from query i but loaded in the same key tile (it is
visible to a later query) reaches row i's output (P = 0 times NaN); v rows past the key length never
do (they are zeroed).

Work decomposition (``launch_config``)
-------------------------------------
A CTA owns NC x 64 query rows of one batch and one KV head. With GQA / MQA the G = Hq / Hkv query
heads of that KV head are packed into the rows when G divides 64 (row r = query position
t0 + r // G, head hq0 + r % G; one TMA box ``(1, 64 // G, G, 64)`` of q [B, Tq, Hq, D] loads
exactly that order), so each K/V tile serves G heads and a decode step (Tq = 1..4) fills G * Tq
rows instead of Tq: the decode benchmark (G = 8, Tq = 1) runs B * Hkv = 512 CTAs that each read
their K/V once. Otherwise (G = 1) a CTA owns one query head. NC = 1 when a (batch, KV head) has at
most 64 rows (decode), else 2. Grid: (ceil(Tq / (64 NC / G)), Hq / G, B).

Warp roles (one CTA = 1 producer warpgroup + NC consumer warpgroups, ``128 * (NC + 1)`` threads)
---------------------------------------------------------------------------------------------
* warpgroup 0, thread 0 -- the producer: TMA-loads the CTA's Q rows once (NC x 64 rows), then for
  every key tile kt (BN keys) waits ``empty[s]`` and TMA-loads K and V of the tile into ring slot
  ``s = kt % STAGES``, each on its own ``full`` mbarrier with ``arrive.expect_tx`` of its bytes (so
  the S GEMM starts before V has landed). The other 127 threads of warpgroup 0 exit at once.
* warpgroups 1..NC -- consumers, 64 query rows each: per key tile
    S = Q K^T                 wgmma m64n{BN}k16 SS (Q and K tiles from shared memory), D/16 steps
    mask, online softmax      in registers: x = S * scale*log2(e); m = max; p = exp2(x - m); the
                              running O and l are rescaled by exp2(m_old - m_new)
    P -> 16-bit A fragments   (q's type) the S accumulator fragment of columns 16j..16j+15 IS
                              the m64k16 A-operand fragment (same thread/row/column pattern), so
                              P never touches shared memory: 4 cvt.rn.{bf16|f16}x2 per 16 keys
    O += P V                  wgmma m64n{D}k16 RS with imm-trans-b = 1 (V is MN-major in shared
                              memory, see below), BN/16 steps; the first PV of a row block
                              overwrites (scale-d = 0)
  and then every consumer thread arrives on ``empty[s]`` (count 128 * NC). Causal: the key tiles
  past the CTA's last visible key (its last row's diagonal, or the key length) are never loaded or
  computed; tiles every row of a thread sees in full skip the mask, so only diagonal and
  length-edge tiles are masked. V rows past the key length inside the last tile are zeroed in
  shared memory before the PV GEMM (a cache may hold NaN there, and 0 * NaN = NaN). Epilogue: the row sum is
  reduced over the 4 lanes of a quad, the sink joins the denominator, O is normalised, rounded to
  q's type (RNE) and stored straight from registers (a quad writes 16 contiguous bytes per row);
  lse (natural log, float32) by lane 0 of each quad.

Why the epilogue has no TMA store (the issue: "TMA store where it pays"): it does not pay here. O
is written once per row block -- B*T*H*D*2 B = 67 MB for the D = 128 prefill benchmark (~1 ms of
kernel: ~67 GB/s, 2% of HBM) and 1 MB against 2.15 GB of K/V for decode -- and each quad's
16-B register stores of a row fill whole 32-B sectors in L2 pairwise, so the stores neither cost
bandwidth nor stall (they retire into L2 while the CTA exits). A TMA store would stage O in smem
(the warpgroup's own Q tile is free after its last S GEMM: 16 KB at D = 128), then need a
fence.proxy.async, a warpgroup barrier and a bulk-group wait before exit, for no measurable
gain. Not built; the numbers above are the reason (not measured on a GPU).

V's layout for the B operand (the choice the issue asks to document): V is TMA-loaded exactly like
K (128B-swizzled boxes of BN keys x 64 columns, D contiguous) and described to wgmma as an
**MN-major** operand (imm-trans-b = 1, allowed for 16-bit types): LBO = the byte distance between
the 64-column boxes (next 64 N-elements), SBO = 1024 (next 8 keys), CUTLASS's canonical
``Swizzle<3,4,3> o ((T,8,m),(8,k)) : ((1,T,LBO),(8T,SBO))``. No transpose pass through shared memory.
The binding is ``hw.ops.wgmma_m64n{D}k16_f32_bf16_rs_tb`` (imm-trans-b = 1); the same descriptor
constants (LBO 8192 = one 64-key box, SBO 1024) are what ``hw.microkernels``' MN-major wgmma check
verifies on the H100.

Head dims and dtypes (``SUPPORTED_D``, ``DTYPES``; one generated kernel per (D, nc, schedule, dtype))
----------------------------------------------------------------------------------------------
* float16: the same kernel with ``wgmma ... .f32.f16.f16`` (f32 accumulation, the same fragment
  layouts and descriptors as bf16) and ``cvt.rn.f16x2.f32`` (PTX ISA 9.1 §9.7.9.21, sm_80+) for P
  and the output; tensor maps of type FLOAT16. float16 has 3 more mantissa bits than bf16 and a
  range of 65504: P <= 1 and the normalised output (a convex combination of v rows) cannot
  overflow where v does not; P below 2^-14 is subnormal (absolute error <= 2^-25: the extra term
  of the tests' bound).
* D = 16 -- the choice the issue leaves open: the **64-wide box** plan, not a 32B-swizzle plan.
  Q / K / V are TMA-loaded with the same 64-element (128 B) boxes as D = 64 over the 16-element
  rows; the tensor engine zero-fills columns 16..63 (out of bounds in the innermost dimension),
  so every descriptor, swizzle and the MN-major V operand stay those of D = 64 (H100-verified).
  S = Q K^T issues ONE k16 step (columns 0..15: exact, no wasted MMA); O += P V runs N = 64
  (the zero columns make O[:, 16:] = 0, never stored): 4x the PV tensor work and 4x the shared
  memory per tile of a 16-wide plan, but no extra HBM bytes (the engine reads 32 B a row). Cost
  in time: none at the bound -- D = 16 is exp-bound on the MUFU (napkin math below). A 32B-swizzle
  plan (32-B rows, SBO = 256) would cut the smem to a quarter and the PV to N = 16, at the price
  of new, unverified descriptor constants for the MN-major V -- not worth it for an exp-bound case.
* D = 256: O is 64 x 256 float32 per consumer warpgroup = 128 registers a thread. Prefill runs
  schedule v2's frame (setmaxnreg 24 / 240, two consumer warpgroups) with **64-key tiles** (S 32
  floats, P 16 words; FlashAttention-3 also narrows the key tile for hdim 256) and the serial
  per-tile body of v1 (S GEMM, softmax, P V, release): the overlapped v2 body keeps P(kt-1) live
  beside S(kt) and O (176 registers of state) and ptxas spilled 16 B there; the serial body
  compiles with 0 spills. No ping-pong either (its barriers pay off when one warpgroup's softmax
  hides the other's GEMMs; at D = 256 the GEMMs are 4x the exp time). v1 with two consumers
  (168 registers a thread, no setmaxnreg) cannot hold O + S: ``geometry`` / ``schedule_for``
  refuse it with a ValueError, and DSV4_FMHA_SCHEDULE=v1 still runs v2 at D = 256. Decode
  (nc = 1, 256 threads, up to 255 registers) runs v1 as for the other D.

Shared-memory plan (dynamic, aligned up to 1024 B in the kernel; all tiles 128B-swizzled)
----------------------------------------------------------------------------------------
  Q   : NC x (D/64) boxes of 64 rows x 128 B = NC * D * 128 B   (D=128, NC=2: 32 KB)
  K, V: STAGES slots each (v1: 2 with NC = 2, 4 with NC = 1; v2: 3 at D=128, 4 at D=64), (D/64)
        boxes of BN rows x 128 B = BN * D * 2 B per slot (v1 16 KB, v2 32 KB at D=128)
  total D=128, BN=64, STAGES=2, NC=2: 32 + 64 = 96 KB (+1 KB alignment slack); NC=1 (decode):
  16 + 128 = 144 KB; v2 D=128: 32 + 3 x 64 = 224 KB; mbarriers static (1 + 3 STAGES of 8 B).
  D = 16 takes exactly D = 64's plan (the boxes are 64 wide; ``padded_d``). D = 256, v2: Q 2 x 4
  boxes = 64 KB + 2 stages x (K 32 KB + V 32 KB) = 192 KB (3 stages would be 256 KB); decode
  (nc = 1): Q 32 KB + 3 stages x 64 KB = 224 KB.
  Every box starts on a 1024-B boundary (the 128B swizzle repeat), so descriptor base offsets are 0.

Register budget
  v1 (no setmaxnreg: 384 threads x 168 regs fit the 64K file): O D/2 + S BN/2 + P BN/4 floats /
  words = 64 + 32 + 16 = 112 at D=128, plus addressing and softmax state.
  v2: the producer warpgroup drops to 24 registers (``setmaxnreg.dec``, all 4 warps, before its
  127 idle threads exit) and the consumers rise to 240 (``setmaxnreg.inc``): 24*128 + 240*256 =
  64512 <= 65536, exactly what 384 x 168 (the entry count ptxas gives under the launch bounds)
  frees and takes. Consumer: O 64 + S 64 + P 32 = 160 at D=128 with 128-key tiles; D = 256
  (64-key tiles, serial body): O 128 + S 32 (P 16 replaces S) = 160 + addressing; D = 16: O is
  32 floats (64 columns, 48 of them zero). ``compile`` reports 0 spill bytes for every one of the
  22 kernels (2 dtypes x (3 variants at D = 16, 64, 128 + 2 at D = 256); tests, slow), plus the
  D = 64 bfloat16 default v3f.

Schedules (``schedule=`` / ``DSV4_FMHA_SCHEDULE``; ``SCHEDULES``, ``DEFAULT_SCHEDULE``,
``DEFAULT_SCHEDULE_OF``)
--------------------------------------------------------------------------------------
* ``v1`` (round 1, H100-verified; decode always runs it): per 64-key tile and warpgroup, serially,
  S GEMM -> wait -> softmax -> PV GEMM -> wait -> release the ring slot (the sections above).
* ``v2`` (prefill, NC = 2; FlashAttention-3's schedule): 128-key tiles (S = 64 floats, wgmma
  m64n128k16 for S), a ring as deep as shared memory allows (``geometry``: 3 stages at D=128 =
  225 KB, 4 at D=64), setmaxnreg as above, and per consumer warpgroup::

      tile 0:   S = Q K0^T; wait; softmax -> m, l, c; P = bf16(S)
      tile kt:  [ping-pong sync]  S = Q Kkt^T (async); O *= c; O += P V(kt-1) (async)
                [ping-pong arrive]  wait_group 1 (S done, PV in flight) -> softmax of S -> m, l,
                c; wait_group 0 -> release slot kt-1; P = bf16(S)
      tail:     zero V past the key length if needed; O *= c; O += P V(nt-1); wait; release

  so the exp2s of tile kt run while the tensor cores do P V of tile kt-1 (intra-warpgroup
  overlap). Ping-pong: named barrier ``PP_BAR + cw`` gates warpgroup cw's GEMM issue; after
  issuing, it arrives on the other's barrier (count 256 = both warpgroups), and warpgroup 0 opens
  by arriving on its own barrier (one extra sync at the end balances it). So the two warpgroups
  issue their GEMMs in turn and one's softmax overlaps the other's GEMMs. Named barrier 1 (the V
  zeroing) is only used in the tail, outside the ping-pong section (no cross-wait cycle). The
  emulator runs v2 (tests/test_fmha_fused.py). On an H200 (sm_90a: the H100's SM with more
  memory bandwidth), 2026-11-25, tests/gpu/test_fmha_gpu.py -k v2 passed (28 tests) and v2 ran
  563 / 474 TFLOP/s on B=4,H=16,S=4096,D=128 non-causal / causal = 0.83x / 0.82x the SDPA of the
  same run (v1: 0.61x / 0.62x), so ``DEFAULT_SCHEDULE`` is "v2". Not re-timed on an H100.

* D = 64 candidates (issue 7: v2 ran B=4, H=32, S=4096, D=64 at 365.8 TFLOP/s = 0.75x SDPA on
  the H100, the one prefill target missed), selectable by ``schedule=`` / DSV4_FMHA_SCHEDULE /
  ``bench_fmha --schedules`` (``CANDIDATE_D``: the head dims each has; named by the environment at
  another D they run v2, by ``schedule=`` they are a ValueError). Measured on the H100
  (2026-11-26, same run, SDPA 485.6 TFLOP/s): v2 361.1 (0.74x), v2f 399.5 (0.82x), **v3f 442.4
  (0.91x)**; the candidates passed their 70 GPU tests (bfloat16). So D = 64 bfloat16 prefill
  now runs v3f by default (``DEFAULT_SCHEDULE_OF``); float16 keeps v2 until tested:

  - ``v3``: FlashAttention-3's hdim-64 split -- THREE consumer warpgroups (192 rows a CTA, 512
    threads, ``launch_config(nc_prefill=3)``), setmaxnreg 24 / 160 (24*128 + 160*384 = 64512),
    128-key tiles, a 4-stage ring (Q 24 KB + 4 x 32 KB = 152 KB), and v1's serial per-tile body
    (branchless softmax): the overlapped v2 body keeps P(kt-1) beside S(kt) and O (32 + 64 + 32
    registers) and spilled 60 B at 160 registers; serial compiles with 0 spills. The overlap is
    between warpgroups only (while one runs its softmax the other two keep the tensor cores fed),
    no ping-pong barriers (v2's pair of barriers would need a round-robin of three, untried).
  - ``v2w``: v2 with 192-key tiles (S 96 floats, P 48 words, O 32: fits 240): a third fewer
    iterations, barriers, max / sum shuffles and O rescales per key; 4-stage ring of 48 KB.
  - ``v2f`` / ``v3f`` / ``v2wf``: v2 / v3 / v2w with the short softmax (``_softmax_fast``): the
    row max over the RAW scores (scale > 0) by a tree of FMNMX, m = max * scale*log2(e), then
    p = ex2.approx.ftz(s * scale_log2 - m) -- one FFMA and one MUFU.EX2 per score, where v2 issues
    FMUL (scale), FADD (- m), and libdevice exp2f's subnormal fix-up (FSETP + 2 predicated FMULs)
    around the MUFU -- and the tile's row sum by a tree of FADDs. SASS of the whole kernel (sm_90a,
    D = 64, bf16; predicated forms included): v2 634 FMUL / 166 FSETP / 402 FADD, v2f 118 / 24 /
    274 (the same 136 MUFU.EX2); v3 342 / 94 / 208, v3f 84 / 22 / 144.
    ex2.approx.ftz flushes p < 2^-126 to 0 (below every bound of the tests). v2f also exists for
    D = 128 (0 spills).

  Why the softmax form matters at D = 64: per 128-row x 128-key tile a CTA does 4*128*128*64 =
  4.2 MFLOP = ~1024 clk of wgmma (~4096 dense FLOP/clk/SM) and 16384 exp2 = 1024 clk of MUFU
  (16/clk/SM) -- and v2 issues ~8 warp instructions per score (FMUL, FMNMX, FADD, FSETP, 2 FMUL,
  MUFU, FADD, 1/2 F2FP) = 16384 * 8 / 128 per clk = ~1024 clk of issue slots on the 4 schedulers,
  shared with the wgmma / barrier / shuffle issue: the issue slots bind before the MUFU or the
  tensor cores. The short form issues ~4.5 per score (~580 clk). At D = 128 the tensor time per
  tile doubles and the same softmax hides (v2 0.83x there). v2f at D = 128, v3, v2w, v2wf: GPU
  tests passed, not timed.

Napkin math (B=4, H=16, S=4096, D=128, bf16, non-causal)
  FLOPs 4*B*H*S*S*D = 550 GFLOP; per CTA tile (128 rows x 64 keys): 4*128*64*128 = 4.2 MFLOP for
  2 * 16 KB of K/V smem traffic -> 128 FLOP/B of smem, compute-bound on the tensor cores; HBM
  traffic is Q+K+V+O = 4 x 67 MB (K/V re-read per q tile, from L2). Bound: wgmma issue + softmax
  (exp2 of 128*64 elements per tile on the MUFU, 16/clk/SM: 512 clk vs 1024 clk of wgmma at
  D=128; v1 serialises them per warpgroup: the measured 421 TFLOP/s = 0.62x SDPA). v2 overlaps
  them (above) and halves the per-tile fixed costs (barrier waits, max / sum shuffles) with
  128-key tiles; its S GEMM (m64n128k16 SS) reads 6 KB of smem per 64 clk of tensor work, where
  v1's m64n64k16 read 4 KB per 32 clk, at the 128 B/clk smem limit. Target >= 540 TFLOP/s.
  D = 16 (B=4, H=64, S=4096: 275 GFLOP of attention): per 128 x 128 tile (v2) the MUFU does
  128*128 exp2 = 1024 clk at 16/clk/SM while the tensor cores do S (2*128*128*16) + the padded
  P V (2*128*128*64) = 2.6 MFLOP = 640 clk at ~4096 dense FLOP/clk/SM: exp-bound, useful rate
  1.05 MFLOP per 1024 clk = 1/4 of the tensor peak at best (~250 TFLOP/s on an H100); the padding
  is hidden under the exps. HBM: 32 B per K / V row.
  D = 256 (B=4, H=8, S=4096: the same 550 GFLOP as D = 128, H = 16): per 128-row x 64-key tile
  4*128*64*256 = 8.4 MFLOP = 2048 clk of wgmma vs 512 clk of exp2 -- tensor-bound; the serial
  body leaves a warpgroup's softmax exposed (~25% of its GEMM time) unless the other warpgroup's
  GEMMs fill it (the scheduler interleaves the two; no barrier orders them). The S GEMM
  (m64n64k16 SS) reads 4 KB of smem per 32 clk of tensor work: the 128 B/clk limit, as v1.
  Not measured on a GPU yet.
  Decode (B=64, Tq=1, Hq=64, Hkv=8, Tk=8192, D=128): K/V = 2 * 64*8192*8*128 * 2 B = 2.15 GB ->
  ~640 us at 3.35 TB/s, each byte read once (the 8 q heads of a group are packed into one CTA's
  rows). Compute: 512 CTAs x 4*64*8192*128 = 275 GFLOP (56 of 64 rows are padding) -> ~0.4 ms at
  the tensor-core rate with GEMM and softmax serialised per warpgroup: close to the memory time,
  so this first version is expected below the 70%-of-copy target; the split-K decode (several
  CTAs per KV head over Tk, then a combine) is the known fix.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda  # noqa: F401  (the generated kernel source uses these names)
from numba.types import float32, int32, uint8, uint32, uint64  # noqa: F401

from ..hw import ops
from ..hw.descriptors import wgmma_smem_desc
from ..hw.portable import pack_bf16x2  # noqa: F401  (cvt.rn.bf16x2.f32, with a simulator twin)
from ..hw.portable import warp_shfl_xor as shfl_xor_f32  # noqa: F401  (used by generated source)
from ..hw.snippets import Snippet
from ..runtime import device, kernel

SUPPORTED_D = (16, 64, 128, 256)
#: q/k/v element types of the fused kernel (wgmma .bf16 / .f16 inputs, float32 accumulation)
DTYPES = ("bf16", "f16")
BM = 64            # query rows per consumer warpgroup (the wgmma M)
BN = 64            # keys per tile (schedule v1)
NC = 2             # consumer warpgroups per CTA
STAGES = {2: 2, 1: 4}   # v1's K/V ring depth by NC (decode, NC = 1, streams K/V: a deeper ring)
#: the consumer schedules (module docstring): "v1" serial per tile, H100-verified (round 1);
#: "v2" setmaxnreg + 128-key tiles + S(kt) issued before P V(kt-1) + ping-pong warpgroups + a
#: ring as deep as shared memory allows. v2 exists for NC = 2 (prefill); decode (NC = 1) runs v1.
SCHEDULES = ("v1", "v2", "v3", "v3f", "v2w", "v2wf", "v2f")
#: the schedule prefill calls run unless asked otherwise (``DSV4_FMHA_SCHEDULE`` or ``schedule=``):
#: v2 since it passed tests/gpu/test_fmha_gpu.py -k v2 (28 tests) on an H200 (sm_90a, the H100's SM)
#: on 2026-11-25 and ran 0.83x / 0.82x SDPA there (v1: 0.61x); v1 stays selectable
DEFAULT_SCHEDULE = "v2"
#: per (D, dtype) defaults that beat DEFAULT_SCHEDULE on the H100 (2026-11-26, tools/bench_fmha.py,
#: SDPA in the same run, B4 H32 S4096 D64 bf16): v2 361.1 TFLOP/s = 0.74x, v2f 399.5 = 0.82x,
#: v3f 442.4 = 0.91x; all D = 64 candidates passed their 70 GPU tests there (bfloat16; float16 at
#: D = 64 keeps v2 until its candidates are tested on a GPU)
DEFAULT_SCHEDULE_OF = {(64, "bf16"): "v3f"}
BN_OF = {"v1": 64, "v2": 128, "v3": 128, "v3f": 128, "v2w": 192, "v2wf": 192, "v2f": 128}  # keys per tile (``block_n``)
REGS = (24, 240)   # v2: setmaxnreg of the producer / consumer warpgroups (24*128 + 240*256 <= 64K)
#: consumer warpgroups of a prefill CTA per schedule (decode, nc = 1, always runs v1)
NC_OF = {"v1": 2, "v2": 2, "v3": 3, "v3f": 3, "v2w": 2, "v2wf": 2, "v2f": 2}
#: setmaxnreg (producer, consumers) per overlapped schedule: 2 consumers 24*128 + 240*256 = 64512,
#: 3 consumers 24*128 + 160*384 = 64512 (FlashAttention-3's hdim-64 split) <= 65536
REGS_OF = {"v2": REGS, "v2w": REGS, "v2wf": REGS, "v2f": REGS, "v3": (24, 160), "v3f": (24, 160)}
#: the D = 64 candidates (issue 7: D = 64 at 0.75x SDPA with v2) and the head dims each exists
#: for: D = 64 (v3 / v3f: 160 registers a thread with 3 consumers; v2w / v2wf: S of 192 keys),
#: v2f (v2 with the short softmax, the same registers as v2) also D = 128 (0 spills). D = 16
#: would take D = 64's plan but is not tested with them: not offered.
CANDIDATE_D = {"v3": (64,), "v3f": (64,), "v2w": (64,), "v2wf": (64,), "v2f": (64, 128)}
SMALL_D_SCHEDULES = tuple(CANDIDATE_D)
#: schedules whose softmax takes the short form (``_softmax(fast=True)``): max over the raw scores,
#: one FFMA (scale, minus the max) per score before the exp2, tree reductions for max and sum
FAST_SOFTMAX = ("v3f", "v2wf", "v2f")
PP_BAR = 2         # v2: named barriers PP_BAR + cw order the consumers' GEMM issue (1: V zeroing)
SMEM_LIMIT = 227 * 1024        # opt-in dynamic shared memory per block on sm_90
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
NEG_INF = float32(-math.inf)
POS_INF = float32(math.inf)


def _slots(stages: int):
    """mbarrier slots: 0 = Q full, then full_k[stages], full_v[stages], empty[stages]."""
    return 1, 1 + stages, 1 + 2 * stages, 1 + 3 * stages      # FULLK0, FULLV0, EMPTY0, NBARS


#: K-major 128B-swizzled tile (Q as A, K as B): rows of 128 B, 8-row groups 1024 B apart (SBO);
#: LBO unused for swizzled K-major (16 by convention). Start address ORed in by the kernel.
DESC_KMAJOR = wgmma_smem_desc(0, 16, 1024, "128B")


def desc_v(bn: int) -> int:
    """V as an MN-major B operand: LBO = next 64-column box (bn rows x 128 B), SBO = next 8 keys."""
    return wgmma_smem_desc(0, bn * 128, 1024, "128B")


DESC_V = desc_v(BN)

# Two instructions the candidates need that hw.ops does not bind, bound here with simulator twins
# (``runtime.device(sim=)``, as hw.portable does), so the emulator runs the kernels unchanged:
#   ex2.approx.ftz.f32      PTX ISA 9.1 §9.7.4.10 (ex2), sm_20+ (.ftz); one MUFU.EX2, where
#                           math.exp2 (libdevice exp2f, no ftz) adds a range test and two
#                           predicated FMULs around it for subnormal results
#   setmaxnreg.inc 160      PTX ISA 9.1 §9.7.19.5 (setmaxnreg), sm_90a; the three-consumer split
_EX2_FTZ = ops.bind(Snippet(
    name="ex2_approx_ftz_f32", file="<dsv4_numba.pipelines.fmha_sm90>",
    instruction="ex2.approx.ftz.f32", ptx_isa="PTX ISA 9.1 §9.7.4.10 (ex2)", min_arch="sm_20",
    signature="float32(float32)", constraints="=f,f", side_effect=False,
    layout="2^x, max relative error 2^-22.5 (x in normal range); subnormal results flush to 0 "
           "(2^x < 2^-126: P that small is 0 in every 16-bit P anyway but bf16 subnormals)",
    body="ex2.approx.ftz.f32 $0, $1;"))
_SETMAXNREG_INC_160 = ops.bind(Snippet(
    name="setmaxnreg_inc_160", file="<dsv4_numba.pipelines.fmha_sm90>",
    instruction="setmaxnreg.inc.sync.aligned.u32 160", ptx_isa="PTX ISA 9.1 §9.7.19.5 (setmaxnreg)",
    min_arch="sm_90a", signature="void()", constraints="~{memory}", side_effect=True,
    layout="raise this warp's register limit to 160 (every warp of the warpgroup executes it)",
    body="setmaxnreg.inc.sync.aligned.u32 160;"))


def _ex2_gpu(x):
    return _EX2_FTZ(x)


def _ex2_sim(x):
    r = np.float32(2.0 ** float(x)) if x == x else np.float32(x)
    return np.float32(0) if abs(r) < np.float32(2.0 ** -126) else r


def _smr160_gpu():
    _SETMAXNREG_INC_160()


def _smr160_sim():
    return None


ex2_ftz = device(_ex2_gpu, sim=_ex2_sim)
setmaxnreg_inc_160 = device(_smr160_gpu, sim=_smr160_sim)

# The float16 wgmmas this kernel issues (hw.ops binds only bf16 / e4m3 at import): bound here, at
# import of this module (``dsv4_numba`` imports it), so that they exist before ``dsv4_numba.emu.ops``
# -- imported lazily, on the first emulated launch -- copies hw.ops' wgmma table.
for _n in (64, 128):
    ops.wgmma_binding(_n, "f16", "smem")                 # S = Q K^T (SS), N = keys per tile
for _n in (64, 128, 256):
    ops.wgmma_binding(_n, "f16", "regs", True)           # O += P V (RS, MN-major V), N = padded D
for _dt in DTYPES:
    ops.wgmma_binding(192, _dt, "smem")                  # S = Q K^T of schedule v2w (192-key tiles)






def geometry(D: int, nc: int = NC, schedule: str = "v1") -> dict:
    """Bytes and counts of the shared-memory plan for head dim D, ``nc`` consumer warpgroups and
    the consumer ``schedule`` (see the module docstring)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
    if schedule != "v1" and nc != NC_OF[schedule]:
        raise ValueError(f"schedule {schedule} (ping-pong consumers) needs nc = {NC_OF[schedule]} "
                         f"consumer warpgroups")
    if schedule in CANDIDATE_D and D not in CANDIDATE_D[schedule]:
        raise ValueError(f"schedule {schedule} is a D = 64 candidate: D in "
                         f"{CANDIDATE_D[schedule]}, not {D}")
    if D not in SUPPORTED_D:
        raise ValueError(f"the fused sm_90a kernel supports D in {SUPPORTED_D}, not {D}")
    if schedule == "v1" and nc == 2 and D == 256:
        raise ValueError("schedule v1 with nc = 2 does not fit D = 256 (O alone is 128 registers "
                         "of the 168 a thread gets without setmaxnreg): use schedule v2")
    bn = block_n(D, schedule)
    dp = padded_d(D)
    nbox = dp // 64
    g = {"nbox": nbox, "boxq": BM * 128, "boxk": bn * 128, "qbytes": nc * nbox * BM * 128,
         "kbytes": nbox * bn * 128, "nc": nc, "bn": bn, "schedule": schedule, "dp": dp}
    fit = (SMEM_LIMIT - 1024 - 128 - g["qbytes"]) // (2 * g["kbytes"])
    if schedule == "v1":
        g["stages"] = min(STAGES[nc], fit)
    else:                          # as deep as shared memory allows (mbarriers are static), <= 4
        g["stages"] = min(4, fit)
    g["dyn_smem"] = 1024 + g["qbytes"] + 2 * g["stages"] * g["kbytes"]
    g["threads"] = 128 * (nc + 1)
    return g


def block_n(D: int, schedule: str) -> int:
    """Keys per tile: 64 (v1), 128 (v2, v3, v3f, v2f), 192 (v2w, v2wf), but 64 for v2 at D = 256 (O is 128
    registers there; S of 128 keys would be 64 more, past the consumers' 240 -- FlashAttention-3
    also narrows hdim 256)."""
    return 64 if D == 256 else BN_OF[schedule]


def padded_d(D: int) -> int:
    """The head dim the shared-memory tiles and O hold: D, but 64 for D = 16 (TMA boxes 64 wide over
    the 16-wide rows: the engine zero-fills columns 16..63; module docstring, "D = 16")."""
    return max(D, 64)


def kernel_name(D: int, nc: int, schedule: str = "v1", dtype: str = "bf16") -> str:
    return (f"fmha_fwd_d{D}_c{nc}" + ("" if schedule == "v1" else f"_{schedule}")
            + ("" if dtype == "bf16" else f"_{dtype}"))


# ---------------------------------------------------------------------------- kernel source
# The consumer's state is NC statically named scalars (s0.. for S, o0.. for O, p0.. for P): the
# kernel body is generated as Python source so that every register is a separate local variable
# (Numba keeps them in registers; a loop over a local array would need LLVM to unroll it fully).

def _regs(prefix, n):
    return ", ".join(f"{prefix}{i}" for i in range(n))


def _rowhalf(i):
    """Accumulator register i of a thread belongs to its row A (lane/4) or row B (lane/4 + 8)."""
    return "A" if (i // 2) % 2 == 0 else "B"


def _prologue(a, D, NC, g, name):
    """Kernel header, CTA coordinates, shared-memory carve-up, key-tile count, mbarrier init."""
    FULLK0, FULLV0, EMPTY0, NBARS = _slots(g["stages"])
    bn = g["bn"]
    a(f"def {name}(tmq, tmk, tmv, out, lse, lens, sink, has_sink, Tq, Tk, Hq, Hkv, G,"
      f" causal,")
    a("                 coff, scale_log2):")
    a("    dyn = cuda.shared.array(0, uint8)")
    a(f"    bars = cuda.shared.array({NBARS}, uint64)")
    a("    t = cuda.threadIdx.x")
    a("    wg = t // 128")
    # rows of the CTA: G heads (hq0 .. hq0+G-1, one KV head) x tpc query positions from t0; local
    # row r is position t0 + r // G, head hq0 + r % G (G = 1: one head, BM*NC positions)
    a("    hq0 = cuda.blockIdx.y * G")
    a("    b = cuda.blockIdx.z")
    a(f"    tpc = {BM * NC} // G")
    a("    t0 = cuda.blockIdx.x * tpc")
    a("    hkv = hq0 // (Hq // Hkv)")
    a("    bar0 = ops.shared_address(bars)")
    a("    sbase = (ops.shared_address(dyn) + uint32(1023)) & uint32(0xFFFFFC00)")
    a("    q_sm = sbase")
    a(f"    k_sm = sbase + uint32({g['qbytes']})")
    a(f"    v_sm = k_sm + uint32({g['stages'] * g['kbytes']})")
    a("    kvlen = min(max(int32(lens[b]), int32(0)), int32(Tk))")
    a("    hi = kvlen")
    a("    if causal:")
    a("        q_last = min(t0 + tpc, Tq) - 1")
    a("        hi = min(kvlen, max(q_last + coff + 1, 0))")
    a(f"    nt = (hi + {bn - 1}) // {bn}")
    a("    if t == 0:")
    a("        ops.mbarrier_init(bar0, uint32(1))")
    a(f"        for i in range({g['stages']}):")
    a(f"            ops.mbarrier_init(bar0 + uint32(8 * ({FULLK0} + i)), uint32(1))")
    a(f"            ops.mbarrier_init(bar0 + uint32(8 * ({FULLV0} + i)), uint32(1))")
    a(f"            ops.mbarrier_init(bar0 + uint32(8 * ({EMPTY0} + i)), uint32({128 * NC}))")
    a("        ops.fence_mbarrier_init()")
    a("    cuda.syncthreads()")


def _producer(a, NC, g, regs):
    """Warpgroup 0: thread 0 loads Q once, then K and V of every key tile into the ring."""
    STAGES, bn = g["stages"], g["bn"]
    FULLK0, FULLV0, EMPTY0, _ = _slots(STAGES)
    a("    if wg == 0:")
    if regs:
        a(f"        ops.setmaxnreg_dec_{regs[0]}()")
    a("        if t == 0:")
    a("            aq = ops.array_address(tmq)")
    a("            ak = ops.array_address(tmk)")
    a("            av = ops.array_address(tmv)")
    a("            ops.fence_proxy_tensormap_acquire_sys(aq)")
    a("            ops.fence_proxy_tensormap_acquire_sys(ak)")
    a("            ops.fence_proxy_tensormap_acquire_sys(av)")
    a(f"            ops.mbarrier_arrive_expect_tx(bar0, uint32({g['qbytes']}))")
    a(f"            for w in range({NC}):")
    a(f"                for c in range({g['nbox']}):")
    a(f"                    ops.tma_load_4d(q_sm + uint32((w * {g['nbox']} + c) * {g['boxq']}), aq,"
      f" int32(c * 64), int32(hq0), int32(t0 + w * ({BM} // G)), int32(b), bar0)")
    a("            for kt in range(nt):")
    a(f"                st = kt % {STAGES}")
    a(f"                ph = uint32((kt // {STAGES}) & 1)")
    a(f"                ops.mbarrier_wait_parity(bar0 + uint32(8 * ({EMPTY0} + st)), ph ^ uint32(1))")
    a(f"                fk = bar0 + uint32(8 * ({FULLK0} + st))")
    a(f"                fv = bar0 + uint32(8 * ({FULLV0} + st))")
    a(f"                ops.mbarrier_arrive_expect_tx(fk, uint32({g['kbytes']}))")
    a(f"                for c in range({g['nbox']}):")
    a(f"                    ops.tma_load_4d(k_sm + uint32(st * {g['kbytes']} + c * {g['boxk']}), ak,"
      f" int32(c * 64), int32(hkv), int32(kt * {bn}), int32(b), fk)")
    a(f"                ops.mbarrier_arrive_expect_tx(fv, uint32({g['kbytes']}))")
    a(f"                for c in range({g['nbox']}):")
    a(f"                    ops.tma_load_4d(v_sm + uint32(st * {g['kbytes']} + c * {g['boxk']}), av,"
      f" int32(c * 64), int32(hkv), int32(kt * {bn}), int32(b), fv)")
    a("        return")
    if regs:
        a("    setmaxnreg_inc_160()" if regs[1] == 160 else f"    ops.setmaxnreg_inc_{regs[1]}()")


def _consumer_setup(a, D, g):
    """A consumer thread's rows, their visible key counts, the Q descriptor, zeroed state."""
    a("    cw = wg - 1")
    a("    lt = t - 128 * wg")
    a("    lane = lt % 32")
    a(f"    rl = cw * {BM} + 16 * (lt // 32) + lane // 4")
    a("    rA = t0 + rl // G")
    a("    hA = hq0 + rl % G")
    a("    rB = t0 + (rl + 8) // G")
    a("    hB = hq0 + (rl + 8) % G")
    a("    cq = 2 * (lane % 4)")
    a("    LA = kvlen")
    a("    LB = kvlen")
    a("    if causal:")
    a("        LA = min(kvlen, max(rA + coff + 1, 0))")
    a("        LB = min(kvlen, max(rB + coff + 1, 0))")
    a(f"    qdesc = uint64({DESC_KMAJOR}) | uint64(((q_sm + uint32(cw * {g['nbox'] * g['boxq']})) >> 4)"
      f" & 0x3FFF)")
    for i in range(g["dp"] // 2):
        a(f"    o{i} = float32(0)")
    for i in range(g["bn"] // 2):
        a(f"    s{i} = float32(0)")
    a("    mA = NEG_INF")
    a("    mB = NEG_INF")
    a("    lA = float32(0)")
    a("    lB = float32(0)")


def _qk(a, D, g, ind):
    """S = Q K^T of the tile in slot ``st``: D/16 SS wgmmas m64n{bn}k16, committed as one group."""
    bn = g["bn"]
    S = _regs("s", bn // 2)
    a(f"{ind}kdesc = uint64({DESC_KMAJOR}) | uint64(((k_sm + uint32(st * {g['kbytes']})) >> 4)"
      f" & 0x3FFF)")
    a(f"{ind}ops.wgmma_fence()")
    wg_s = f"ops.wgmma_m64n{bn}k16_f32_{g['dtype']}_ss"
    # D = 16: one k step (columns 16..63 of the 64-wide boxes are TMA zero fill: nothing to add)
    for kk in range(D // 16):
        c, j = divmod(kk, 4)
        a(f"{ind}{S} = {wg_s}({S}, qdesc + uint64({(c * g['boxq'] + 32 * j) >> 4}),"
          f" kdesc + uint64({(c * g['boxk'] + 32 * j) >> 4}), uint32({1 if kk else 0}))")
    a(f"{ind}ops.wgmma_commit_group()")


def _softmax(a, D, g, ind, rescale_o, branchless=False):
    """Mask, row max (log2 domain), p = exp2(x - m) in place of S, row sums; the correction
    factors cA / cB rescale l here and O here (``rescale_o``) or later, before O's next PV.

    ``branchless`` (v2) writes the per-element mask and max as ``min`` / ``max`` calls (one
    select each after LLVM) instead of conditional expressions: each of those is three Numba IR
    blocks, and Numba's liveness / SSA passes grow with blocks x variables -- with 128-key tiles
    and two softmax copies the conditional form took minutes to compile. Same values: ``max(x, s)``
    is ``s if s > x else x``; a masked element is ``min(lim, s)`` with lim = -inf (invisible:
    -inf whatever s is, NaN included) or +inf (visible: s; a NaN logit becomes +inf, which still
    makes the row's output and lse NaN: exp2(inf - inf))."""
    ns = g["bn"] // 2
    # mask, scale (log2 domain), row max
    a(f"{ind}j0 = kt * {g['bn']} + cq")
    a(f"{ind}xA = NEG_INF")
    a(f"{ind}xB = NEG_INF")
    # interior tiles (every key visible to both of this thread's rows) skip the mask; only tiles on
    # the causal diagonal or the key-length edge pay for it (per thread: rows differ by warp)
    a(f"{ind}if (kt + 1) * {g['bn']} <= min(LA, LB):")
    for i in range(ns):
        r = _rowhalf(i)
        a(f"{ind}    s{i} = s{i} * scale_log2")
        a(f"{ind}    x{r} = max(x{r}, s{i})" if branchless else
          f"{ind}    x{r} = s{i} if s{i} > x{r} else x{r}")
    a(f"{ind}else:")
    for i in range(ns):
        col = 8 * (i // 4) + (i % 2)
        r = _rowhalf(i)
        if branchless:
            a(f"{ind}    s{i} = min(math.copysign(POS_INF, float32(L{r} - j0 - {col}) - float32(0.5)),"
              f" s{i} * scale_log2)")
            a(f"{ind}    x{r} = max(x{r}, s{i})")
        else:
            a(f"{ind}    s{i} = s{i} * scale_log2 if j0 + {col} < L{r} else NEG_INF")
            a(f"{ind}    x{r} = s{i} if s{i} > x{r} else x{r}")
    for r in "AB":
        for sh in (1, 2):
            a(f"{ind}y = shfl_xor_f32(x{r}, {sh})")
            a(f"{ind}x{r} = y if y > x{r} else x{r}")
        a(f"{ind}n{r} = x{r} if x{r} > m{r} else m{r}")
        a(f"{ind}u{r} = float32(0) if n{r} == NEG_INF else n{r}")
        a(f"{ind}c{r} = math.exp2(m{r} - u{r})")
        a(f"{ind}m{r} = n{r}")
        a(f"{ind}l{r} = l{r} * c{r}")
    for i in range(ns):
        r = _rowhalf(i)
        a(f"{ind}s{i} = math.exp2(s{i} - u{r})")
        a(f"{ind}l{r} += s{i}")
    if rescale_o:
        _rescale_o(a, g["dp"], ind)


def _tree(a, ind, op, names, out):
    """``out`` = op-reduction of ``names`` as a balanced tree (log2 depth instead of a chain of
    len(names) dependent instructions); ``op`` "max" or "+"."""
    lvl, k = list(names), 0
    while len(lvl) > 1:
        nxt = []
        for i in range(0, len(lvl) - 1, 2):
            t = f"{out}_{k}"
            k += 1
            a(f"{ind}{t} = max({lvl[i]}, {lvl[i + 1]})" if op == "max" else
              f"{ind}{t} = {lvl[i]} + {lvl[i + 1]}")
            nxt.append(t)
        if len(lvl) % 2:
            nxt.append(lvl[-1])
        lvl = nxt
    a(f"{ind}{out} = {lvl[0]}")


def _softmax_fast(a, g, ind):
    """The softmax of the FAST_SOFTMAX schedules: the same function as ``_softmax(branchless=True)``
    in fewer instructions per score. S stays unscaled until the exp: the row max is taken over the
    raw scores (scale > 0, ``fmha._validate``, so the max commutes with the scaling) by a tree of
    FMNMX; m (log2 domain) = max * scale_log2; p = ex2.approx.ftz(s * scale_log2 - m): one FFMA and
    one MUFU.EX2 per score (v2: FMUL, FMNMX, FADD, FSETP, 2 predicated FMULs, MUFU); the tile's row
    sum is a tree of FADDs added to l * c. Masked scores are -inf raw (min with the copysign
    limit, as in ``_softmax``)."""
    ns = g["bn"] // 2
    rows = {r: [f"s{i}" for i in range(ns) if _rowhalf(i) == r] for r in "AB"}
    a(f"{ind}j0 = kt * {g['bn']} + cq")
    a(f"{ind}if (kt + 1) * {g['bn']} > min(LA, LB):")
    for i in range(ns):
        col = 8 * (i // 4) + (i % 2)
        r = _rowhalf(i)
        a(f"{ind}    s{i} = min(math.copysign(POS_INF, float32(L{r} - j0 - {col}) - float32(0.5)),"
          f" s{i})")
    for r in "AB":
        _tree(a, ind, "max", rows[r], f"x{r}")
        for sh in (1, 2):
            a(f"{ind}y = shfl_xor_f32(x{r}, {sh})")
            a(f"{ind}x{r} = max(x{r}, y)")
        a(f"{ind}n{r} = max(x{r} * scale_log2, m{r})")
        a(f"{ind}u{r} = float32(0) if n{r} == NEG_INF else n{r}")
        a(f"{ind}c{r} = ex2_ftz(m{r} - u{r})")
        a(f"{ind}m{r} = n{r}")
    for i in range(ns):
        a(f"{ind}s{i} = ex2_ftz(s{i} * scale_log2 - u{_rowhalf(i)})")
    for r in "AB":
        _tree(a, ind, "+", rows[r], f"t{r}")
        a(f"{ind}l{r} = l{r} * c{r} + t{r}")


def _rescale_o(a, D, ind):
    for i in range(D // 2):
        a(f"{ind}o{i} = o{i} * c{_rowhalf(i)}")


def _pack(dtype):
    """The f32 pair -> 16-bit pair conversion of ``dtype``: cvt.rn.bf16x2.f32 / cvt.rn.f16x2.f32
    (PTX ISA 9.1 §9.7.9.21, sm_80+; ``hw.portable.pack_bf16x2`` / ``hw.ops.pack_f16x2``)."""
    return "pack_bf16x2" if dtype == "bf16" else "ops.pack_f16x2"


def _pack_p(a, g, ind):
    # P: the S fragment of keys 16j..16j+15 as the A fragment of one k16 step (low half = lower key)
    pk = _pack(g["dtype"])
    for j in range(g["bn"] // 16):
        for q in range(4):
            a(f"{ind}p{4 * j + q} = {pk}(s{8 * j + 2 * q + 1}, s{8 * j + 2 * q})")


def _zero_v_tail(a, NC, g, ind):
    """V rows at keys >= kvlen (< Tk) of tile ``kt`` (slot base ``vbase``) hold whatever the cache
    holds: zero them (P is 0 there, but 0 * NaN would be NaN). Only the last tile can hold such
    rows; uniform over the consumers (a named barrier over the NC consumer warpgroups)."""
    bn = g["bn"]
    a(f"{ind}z0 = kvlen - kt * {bn}")
    a(f"{ind}z1 = min({bn}, Tk - kt * {bn})")
    a(f"{ind}if z0 < z1:")
    a(f"{ind}    for idx in range(lt + 128 * cw, (z1 - z0) * {8 * g['nbox']}, {128 * NC}):")
    a(f"{ind}        zr = idx // 8")
    a(f"{ind}        zb = zr % {g['nbox']}")
    a(f"{ind}        zk = zr // {g['nbox']}")
    a(f"{ind}        ops.st_shared_v4_b32(vbase + uint32(zb * {g['boxk']} + (z0 + zk) * 128"
      f" + (idx % 8) * 16), uint32(0), uint32(0), uint32(0), uint32(0))")
    a(f"{ind}    ops.fence_proxy_async_shared_cta()")
    a(f"{ind}    ops.named_barrier_sync(uint32(1), uint32({128 * NC}))")


def _pv(a, D, g, ind, first):
    """O += P V of the tile in slot base ``vbase``: bn/16 RS wgmmas m64n{D}k16, imm-trans-b = 1."""
    O = _regs("o", g["dp"] // 2)
    a(f"{ind}vdesc = uint64({desc_v(g['bn'])}) | uint64((vbase >> 4) & 0x3FFF)")
    if first:
        a(f"{ind}first = uint32(1 if kt > 0 else 0)")
    a(f"{ind}ops.wgmma_fence()")
    for kk in range(g["bn"] // 16):
        P = ", ".join(f"p{4 * kk + q}" for q in range(4))
        acc = "first" if (first and kk == 0) else "uint32(1)"
        a(f"{ind}{O} = ops.wgmma_m64n{g['dp']}k16_f32_{g['dtype']}_rs_tb({O}, {P},"
          f" vdesc + uint64({(kk * 16 * 128) >> 4}), {acc})")
    a(f"{ind}ops.wgmma_commit_group()")


def _epilogue(a, D, dtype="bf16"):
    """Sink, quad-reduced row sums, normalise, 16-bit stores straight from registers (the D real
    columns: D = 16 stores o0..o7 of the 32 it holds), lse."""
    pk = _pack(dtype)
    for r in "AB":
        a("    sk = NEG_INF")
        a("    if has_sink:")
        a(f"        sk = float32(sink[h{r}]) * float32(LOG2E)")
        for sh in (1, 2):
            a(f"    l{r} += shfl_xor_f32(l{r}, {sh})")
        a(f"    f{r} = sk if sk > m{r} else m{r}")
        a(f"    g{r} = float32(0) if f{r} == NEG_INF else f{r}")
        a(f"    e{r} = math.exp2(m{r} - g{r})")
        a(f"    l{r} = l{r} * e{r} + math.exp2(sk - g{r})")
        a(f"    w{r} = float32(0) if l{r} == float32(0) else e{r} / l{r}")
    a(f"    obA = ((b * Tq + rA) * Hq + hA) * {D // 2} + lane % 4")
    a(f"    obB = ((b * Tq + rB) * Hq + hB) * {D // 2} + lane % 4")
    a("    if rA < Tq:")
    for gi in range(D // 8):
        a(f"        out[obA + {4 * gi}] = {pk}(o{4 * gi + 1} * wA, o{4 * gi} * wA)")
    a("    if rB < Tq:")
    for gi in range(D // 8):
        a(f"        out[obB + {4 * gi}] = {pk}(o{4 * gi + 3} * wB, o{4 * gi + 2} * wB)")
    a("    if lane % 4 == 0:")
    a("        if rA < Tq:")
    a("            lse[(b * Hq + hA) * Tq + rA] = NEG_INF if lA == float32(0) else "
      "(gA + math.log2(lA)) * float32(LN2)")
    a("        if rB < Tq:")
    a("            lse[(b * Hq + hB) * Tq + rB] = NEG_INF if lB == float32(0) else "
      "(gB + math.log2(lB)) * float32(LN2)")


def _source(D: int, NC: int, schedule: str = "v1", dtype: str = "bf16") -> str:
    """The kernel source of one (D, NC, schedule, dtype); see the module docstring."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    g = dict(geometry(D, NC, schedule), dtype=dtype)
    FULLK0, FULLV0, EMPTY0, _ = _slots(g["stages"])
    STAGES = g["stages"]
    L = []
    a = L.append
    _prologue(a, D, NC, g, kernel_name(D, NC, schedule, dtype))
    _producer(a, NC, g, REGS_OF.get(schedule))
    _consumer_setup(a, D, g)
    a("    ops.mbarrier_wait_parity(bar0, uint32(0))")
    if schedule == "v1" or D == 256 or NC == 3:      # NC = 3: v3 / v3f (registers, docstring)
        # per tile, serial: S GEMM, wait, softmax, PV GEMM, wait, release the slot. v2 at D = 256
        # runs this body too (with setmaxnreg, 64-key tiles, a 2-stage ring): the overlapped body
        # keeps P(kt-1) live beside S(kt) and O -- 128 + 32 + 16 registers -- and ptxas spilled
        # (module docstring, "D = 256")
        a("    for kt in range(nt):")
        a(f"        st = kt % {STAGES}")
        a(f"        ph = uint32((kt // {STAGES}) & 1)")
        a(f"        ops.mbarrier_wait_parity(bar0 + uint32(8 * ({FULLK0} + st)), ph)")
        _qk(a, D, g, "        ")
        a("        ops.wgmma_wait_group_0()")
        if schedule in FAST_SOFTMAX:
            _softmax_fast(a, g, "        ")
            _rescale_o(a, g["dp"], "        ")
        else:   # branchless beside 128-key tiles (compile time, ``_softmax``)
            _softmax(a, D, g, "        ", rescale_o=True, branchless=schedule in SMALL_D_SCHEDULES)
        _pack_p(a, g, "        ")
        a(f"        ops.mbarrier_wait_parity(bar0 + uint32(8 * ({FULLV0} + st)), ph)")
        a(f"        vbase = v_sm + uint32(st * {g['kbytes']})")
        _zero_v_tail(a, NC, g, "        ")
        _pv(a, D, g, "        ", first=True)
        a("        ops.wgmma_wait_group_0()")
        a(f"        ops.mbarrier_arrive(bar0 + uint32(8 * ({EMPTY0} + st)))")
    else:
        # v2: S of tile kt is issued before P V of tile kt-1 and its softmax runs while that PV
        # is in flight (wait_group 1); the two consumer warpgroups take turns issuing their GEMMs
        # (named barriers 2 + cw, ping-pong), so one's softmax overlaps the other's GEMMs.
        other = f"uint32({PP_BAR} + 1 - cw)"
        fast = schedule in FAST_SOFTMAX

        def smax(ind):
            if fast:
                _softmax_fast(a, g, ind)
            else:
                _softmax(a, D, g, ind, rescale_o=False, branchless=True)
        mine = f"uint32({PP_BAR} + cw)"
        a("    if cw == 0:")
        a(f"        ops.named_barrier_arrive(uint32({PP_BAR}), uint32(256))")
        a("    if nt > 0:")
        a("        kt = 0")
        a("        st = 0")
        a(f"        ops.mbarrier_wait_parity(bar0 + uint32(8 * {FULLK0}), uint32(0))")
        a(f"        ops.named_barrier_sync({mine}, uint32(256))")
        _qk(a, D, g, "        ")
        a(f"        ops.named_barrier_arrive({other}, uint32(256))")
        a("        ops.wgmma_wait_group_0()")
        smax("        ")
        _pack_p(a, g, "        ")
        a("        for kt in range(1, nt):")
        a(f"            st = kt % {STAGES}")
        a(f"            ph = uint32((kt // {STAGES}) & 1)")
        a(f"            sp = (kt - 1) % {STAGES}")
        a(f"            php = uint32(((kt - 1) // {STAGES}) & 1)")
        a(f"            ops.mbarrier_wait_parity(bar0 + uint32(8 * ({FULLK0} + st)), ph)")
        a(f"            ops.mbarrier_wait_parity(bar0 + uint32(8 * ({FULLV0} + sp)), php)")
        a(f"            ops.named_barrier_sync({mine}, uint32(256))")
        _qk(a, D, g, "            ")
        _rescale_o(a, g["dp"], "            ")
        a(f"            vbase = v_sm + uint32(sp * {g['kbytes']})")
        _pv(a, D, g, "            ", first=False)
        a(f"            ops.named_barrier_arrive({other}, uint32(256))")
        a("            ops.wgmma_wait_group_1()")
        smax("            ")
        a("            ops.wgmma_wait_group_0()")
        a(f"            ops.mbarrier_arrive(bar0 + uint32(8 * ({EMPTY0} + sp)))")
        _pack_p(a, g, "            ")
        # the last tile's P V (the only tile that can need V rows zeroed past the key length)
        a("        kt = nt - 1")
        a(f"        st = kt % {STAGES}")
        a(f"        ops.mbarrier_wait_parity(bar0 + uint32(8 * ({FULLV0} + st)),"
          f" uint32((kt // {STAGES}) & 1))")
        a(f"        vbase = v_sm + uint32(st * {g['kbytes']})")
        _zero_v_tail(a, NC, g, "        ")
        _rescale_o(a, g["dp"], "        ")
        _pv(a, D, g, "        ", first=False)
        a("        ops.wgmma_wait_group_0()")
        a(f"        ops.mbarrier_arrive(bar0 + uint32(8 * ({EMPTY0} + st)))")
        # balance the opening arrive: warpgroup 1's last arrive on barrier PP_BAR is consumed here
        a("    if cw == 0:")
        a(f"        ops.named_barrier_sync(uint32({PP_BAR}), uint32(256))")
    _epilogue(a, D, dtype)
    return "\n".join(L) + "\n"

_KERNELS: dict = {}


def fused_kernel(D: int, nc: int = NC, schedule: str = "v1", dtype: str = "bf16"):
    """The ``runtime.Kernel`` for head dim D, ``nc`` consumer warpgroups, the consumer
    ``schedule`` and the q/k/v element type ``dtype`` ("bf16" / "f16"; generated once each)."""
    if D not in SUPPORTED_D:
        raise ValueError(f"the fused sm_90a kernel supports D in {SUPPORTED_D}, not {D}")
    if nc not in (1, 2, 3):
        raise ValueError(f"nc (consumer warpgroups) must be 1, 2 or 3, not {nc}")
    key = (D, nc, schedule, dtype)
    if key not in _KERNELS:
        g = geometry(D, nc, schedule)                    # validates the schedule
        src = _source(D, nc, schedule, dtype)
        ns = globals()
        code = compile(src, f"<fmha_sm90 generated D={D} NC={nc} {schedule} {dtype}>", "exec")
        exec(code, ns)                                   # noqa: S102 (our own generated source)
        fn = ns.pop(kernel_name(D, nc, schedule, dtype))
        # launch bounds: setmaxnreg (v2) needs them, and they cap the entry register count
        _KERNELS[key] = kernel(fn, launch_bounds=(g["threads"], 1))
    return _KERNELS[key]


def schedule_for(nc: int, schedule: str | None = None, D: int | None = None,
                 dtype: str | None = None) -> str:
    """The schedule a call with ``nc`` consumer warpgroups runs: ``schedule`` if given, else
    ``DSV4_FMHA_SCHEDULE``, else ``DEFAULT_SCHEDULE_OF[(D, dtype)]`` / ``DEFAULT_SCHEDULE``; v1
    whenever nc = 1 (v2 needs two). D = 256
    with nc = 2 runs v2 whatever the environment says (v1 does not fit its registers); asking for
    it by ``schedule="v1"`` is a ValueError. Likewise the D = 64 candidates (``SMALL_D_SCHEDULES``)
    named by the environment run v2 at D = 128 / 256 (the variable can then be set for a whole
    benchmark), and by ``schedule=`` are a ValueError there."""
    import os
    s = (schedule or os.environ.get("DSV4_FMHA_SCHEDULE")
         or DEFAULT_SCHEDULE_OF.get((D, dtype), DEFAULT_SCHEDULE))
    if s not in SCHEDULES:
        raise ValueError(f"fmha_sm90 schedule must be one of {SCHEDULES}, not {s!r} "
                         f"(DSV4_FMHA_SCHEDULE / schedule=)")
    if nc == 1:
        return "v1"
    if s in CANDIDATE_D and D is not None and D not in CANDIDATE_D[s]:
        if schedule == s:
            raise ValueError(f"fmha_sm90 schedule {s} is a D = 64 candidate (D in "
                             f"{CANDIDATE_D[s]}), not D = {D}")
        return "v2"
    if D == 256 and s == "v1":
        if schedule == "v1":
            raise ValueError("fmha_sm90 schedule v1 does not fit D = 256 with two consumer "
                             "warpgroups (registers); D = 256 prefill runs v2")
        return "v2"
    return s


#: the (nc, schedule) kernels each head dim has: decode (nc = 1, v1) and prefill (nc = 2) v1 / v2,
#: but no v1 prefill at D = 256
def variants(D: int):
    return [(nc, s) for nc, s in ((2, "v1"), (1, "v1"), (2, "v2")) if not (D == 256 and nc == 2 and s == "v1")]


def default_variants():
    """The (D, dtype, nc, schedule) kernels the defaults add to ``variants``: D = 64 bfloat16 v3f."""
    return [(D, dt, NC_OF[s], s) for (D, dt), s in DEFAULT_SCHEDULE_OF.items()]


def signature():
    """Argument types of the fused kernel (one signature for every D and nc)."""
    from numba import types as t
    return (t.uint64[::1], t.uint64[::1], t.uint64[::1], t.uint32[::1], t.float32[::1],
            t.int32[::1], t.float32[::1], t.int32, t.int64, t.int64, t.int64, t.int64, t.int64,
            t.int32, t.int64, t.float32)


def production_kernels():
    return [(fused_kernel(D, nc, s, dt), signature()) for dt in DTYPES for D in SUPPORTED_D
            for nc, s in variants(D)] + [(fused_kernel(D, nc, s, dt), signature())
                                         for D, dt, nc, s in default_variants()]


def launch_config(B: int, Tq: int, Hq: int, Hkv: int, nc_prefill: int = NC) -> dict:
    """How a call maps onto CTAs.

    GQA / MQA heads are packed into the rows of a tile (``G`` = Hq / Hkv query heads of one KV
    head per query position, when G divides 64): the CTA's K/V tiles then serve G heads, and decode
    (Tq = 1..4) fills G * Tq rows instead of Tq. The Q box (NumPy order [B, Tq, Hq, D]) is
    ``(1, 64 // G, G, 64)``: 64 rows ordered (position, head). ``nc`` = 1 consumer warpgroup when
    the call has at most 64 rows per (batch, KV head), else ``nc_prefill`` (2; 3 for the
    schedules v3 / v3f, ``NC_OF``).
    """
    grp = Hq // Hkv
    G = grp if grp > 1 and 64 % grp == 0 else 1
    nc = 1 if Tq * G <= BM else nc_prefill
    tpc = BM * nc // G
    return {"G": G, "nc": nc, "grid": (-(-Tq // tpc), Hq // G, B), "qbox": (1, BM // G, G, 64)}


def unsupported_by(c, return_intermediates: bool, supported_d, arch: str, sp_home: str,
                   d_note: str = "", with_f16: bool = False) -> str | None:
    """Why a fused attention kernel cannot run this (validated) call, or None: ``supported_d`` its
    head dims, ``arch`` how its D message names it, ``sp_home`` where it keeps S/P, ``with_f16``
    whether it takes float16 as well as bfloat16."""
    from ..runtime import BF16, F16
    if with_f16 and c.kind not in (BF16, F16):
        return "the fused kernel takes bfloat16 or float16 q/k/v (float32: staged pipeline)"
    if not with_f16 and c.kind != BF16:
        return "the fused kernel takes bfloat16 q/k/v only (float16 / float32: staged pipeline)"
    if c.D not in supported_d:
        return f"the fused {arch}kernel supports D in {supported_d}, not D = {c.D}{d_note}"
    if return_intermediates:
        return f"return_intermediates needs the staged pipeline (the fused kernel keeps S/P in {sp_home})"
    if c.Tk == 0:
        return "Tk = 0 (no keys): the staged pipeline handles it"
    return None


def unsupported(c, return_intermediates: bool) -> str | None:
    """Why the fused kernel cannot run this (validated) call, or None."""
    return unsupported_by(c, return_intermediates, SUPPORTED_D, "", "registers", with_f16=True)


def kernel_args(c, maps, out, lse, lens, sink, G, has_sink):
    """The kernel's argument tuple (both archs' kernels take the same list, ``signature()``):
    the three tensor maps, outputs, key lengths, sink (a 1-element dummy when ``has_sink`` is 0)."""
    return (*maps, out, lse, lens, sink, np.int32(has_sink), c.Tq, c.Tk, c.Hq, c.Hkv, G,
            np.int32(c.causal), int(c.Tk - c.Tq), np.float32(c.scale * LOG2E))


def dtype_of(c) -> str:
    """The kernel dtype of a validated call: "f16" for float16 q/k/v, else "bf16"."""
    from ..runtime import F16
    return "f16" if c.kind == F16 else "bf16"


class Plan:
    """A prepared fused call: device arrays, tensor maps and grid; ``launch()`` only launches
    (benchmarks time ``launch``). ``out`` is uint32 [B*Tq*Hq*D/2] (bf16 or f16 pairs, q's type),
    ``lse`` float32. q/k/v: bfloat16 as uint16 bits, or float16."""

    def __init__(self, c, qd, kd, vd, lens, sink, schedule=None):
        from numba import cuda  # noqa: F811

        from ..hw.tma import tensor_map_on_device
        B, Tq, Tk, Hq, Hkv, D = c.B, c.Tq, c.Tk, c.Hq, c.Hkv, c.D
        self.c = c
        cfg = launch_config(B, Tq, Hq, Hkv)
        self.dtype = dtype_of(c)
        self.schedule = schedule_for(cfg["nc"], schedule, D, self.dtype)
        if cfg["nc"] > 1 and NC_OF[self.schedule] != cfg["nc"]:       # v3 / v3f: 3 consumers
            cfg = launch_config(B, Tq, Hq, Hkv, NC_OF[self.schedule])
        g = geometry(D, cfg["nc"], self.schedule)
        q4, k4, v4 = (x.reshape(B, T, H, D) for x, T, H in ((qd, Tq, Hq), (kd, Tk, Hkv), (vd, Tk, Hkv)))
        # boxes 64 wide (128 B, the swizzle span) whatever D: at D = 16 the engine zero-fills 16..63
        tdt = "bfloat16" if self.dtype == "bf16" else None       # float16 arrays carry their type
        self.tq = tensor_map_on_device(q4, cfg["qbox"], "128B", dtype=tdt)
        self.tk = tensor_map_on_device(k4, (1, g["bn"], 1, 64), "128B", dtype=tdt)
        self.tv = tensor_map_on_device(v4, (1, g["bn"], 1, 64), "128B", dtype=tdt)
        self.keep = (q4, k4, v4)                           # the maps point into these
        self.out = cuda.device_array(B * Tq * Hq * D // 2, np.uint32)
        self.lse = cuda.device_array(B * Hq * Tq, np.float32)
        self.lens = lens
        self.sink = sink if sink is not None else cuda.to_device(np.zeros(1, np.float32))
        self.args = kernel_args(c, (self.tq, self.tk, self.tv), self.out, self.lse, self.lens,
                                self.sink, cfg["G"], sink is not None)
        self.grid = cfg["grid"]
        self.k = fused_kernel(D, cfg["nc"], self.schedule, self.dtype)
        self.smem = g["dyn_smem"]
        self.k.reserve_dynamic_shared(self.args, self.smem)
        self.threads = g["threads"]

    def launch(self):
        self.k.launch(self.grid, self.threads, *self.args, shared_bytes=self.smem)

    def wait(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` seconds for the work queued so far (an event polled, where
        ``cuda.synchronize`` would hang on a deadlocked kernel): True when it finished."""
        import time

        from numba import cuda  # noqa: F811
        ev = cuda.event()
        ev.record()
        end = time.monotonic() + timeout_s
        while not ev.query():
            if time.monotonic() > end:
                return False
            time.sleep(0.001)
        return True


def fused_production(c, qd, kd, vd, lens, sink):
    """Run the fused kernel: (out uint32 device [B*Tq*Hq*D/2], lse float32 device [B*Hq*Tq])."""
    p = Plan(c, qd, kd, vd, lens, sink)
    p.launch()
    return p.out, p.lse


__all__ = ["SUPPORTED_D", "DTYPES", "SCHEDULES", "block_n", "padded_d", "variants", "dtype_of", "fused_kernel", "schedule_for", "signature", "geometry", "Plan", "fused_production",
           "unsupported", "unsupported_by", "kernel_args", "production_kernels"]
