"""Fused multi-head attention for sm_100a (B200): TMA ring + tcgen05.mma with S, P and O in Tensor Memory.

**This path has not run on Blackwell hardware here** (no sm_100a GPU is lent). What is verified:
ptxas assembles it for sm_100a with no local-memory spills and the tcgen05 instructions in the SASS,
and the kernel runs unchanged under the CUDA simulator with the semantic emulator ``dsv4_numba.emu``
(tcgen05 alloc / mma SS and TS / ld / st / commit, TMA, mbarriers, the declared TMEM column plan)
against the float64 oracle for every head dim, causal and not (tests/test_fmha_sm100.py). The
emulator completes every asynchronous operation at issue, so it checks the data flow, the layouts,
the descriptors and the synchronisation *protocol* (every TMEM read after the commit that made it
readable was waited on), not the races a real machine could still expose.

It computes exactly the function of ``pipelines.fmha`` (every rule: causal aligned to the end, GQA /
MQA, sink in the scaled-logit domain, per-batch key lengths, empty rows, lse natural log) with the
conventions of the Hopper kernel ``pipelines.fmha_sm90`` (same host API, ``unsupported`` reasons,
output as bf16 pairs in uint32, lse float32 [B, Hq, Tq]; P rounded to bfloat16 before the PV GEMM,
the row sum from the float32 P).

Work decomposition (``launch_config``)
-------------------------------------
One CTA owns 128 query rows (the tcgen05 M = 128: one TMEM lane per row) of one batch and one KV
head. GQA / MQA heads are packed into the rows as on Hopper when G = Hq / Hkv divides 128 (row r =
position t0 + r // G, head hq0 + r % G; one TMA box ``(1, 128 // G, G, W)`` of q [B, Tq, Hq, D]).
Grid: (ceil(Tq / (128 / G)), Hq / G, B).

Warp roles (320 threads = 10 warps; the lane quadrant rule makes a role that touches all 128
TMEM lanes a full warpgroup)
----------------------------------------------------------------------------------------------
* warp 9, lane 0 -- **load**: TMA-loads the Q tile once (``bar_q``), then per key tile kt K and V
  into ring slot ``kt % STAGES`` on separate ``full_k`` / ``full_v`` mbarriers (S = Q K^T starts
  before V lands), after waiting ``empty[slot]``.
* warp 8 -- **MMA**: the whole warp allocates TMEM (512 columns, ``tcgen05.alloc``), relinquishes
  the alloc permit, and deallocates at the end; lane 0 issues every tcgen05.mma:
    QK_kt : S_{kt%2} = Q K_kt^T, D/16 x ``kind::f16`` SS (M=128, N=BN, K=16), commit ``s_full``
    PV_kt : O (+)= P_kt V_kt, BN/16 x ``kind::f16`` TS (A = P from TMEM, B = V MN-major in smem)
            per N-subtile of <= 128 columns (D = 256: two), first PV overwrites (accumulate 0),
            commit ``o_done`` and ``empty[slot]`` (K and V of the slot are free).
  Order: QK_0, then per kt: QK_{kt+1} (if any) before PV_kt, so the next S is computed while the
  softmax works on this one (S is double-buffered).
* warps 0-3 -- **softmax** (thread = row): wait ``s_full``, read its S row with
  tcgen05.ld.32x32b.x32 in 32-column chunks (twice: a max pass, then an exp pass), mask + scale
  (log2 domain), running max m, correction factor c = 2^(m_old - m_new) to shared
  memory ``corr[kt%2][row]``, p = 2^(x - m), running sum l = l c + sum p, P packed to bf16 pairs
  and tcgen05.st (.x16 per chunk) over the first BN/2 columns of the same S buffer (S is dead once read: the FA4
  aliasing), zero the V rows past the key length in the last tile, then arrive ``p_full``. At the
  end m and l go to shared memory (``l_ready``).
* warps 4-7 -- **correction / epilogue** (thread = row): for kt >= 1 wait ``p_full`` (c of tile kt)
  and ``o_done`` (PV_{kt-1} finished), rescale its O row in TMEM in 32-column chunks (ld, x c, st),
  arrive ``o_ready`` (the MMA warp waits on it before PV_kt). Epilogue: wait the last ``o_done``
  and ``l_ready``, fold in the sink, O / l rounded to bf16 (RNE) and stored from registers, lse.

The per-row work of the softmax, correction and epilogue runs over 32-column TMEM chunks
(tcgen05.ld/st.32x32b.x32 / .x16) through small inlined helpers (``chunk_max``, ``chunk_exp``,
``rescale``, ``normalize``, 16 words each) with NumPy simulator twins: unrolling a 128-column row into
named scalars in the kernel body (the sm_90a style) cost minutes of Numba compile time (its
liveness analysis is quadratic in blocks x variables) and made the emulator run slow.

mbarriers (all in shared memory): bar_q; full_k[S], full_v[S], empty[S]; s_full[2], p_full[2]
(count 128); o_done; o_ready (count 128); l_ready (count 128). Every wait is on a phase that can be
at most one phase behind (the protocol above keeps each producer within one phase of its waiter),
so parity waits are exact.

Tensor Memory column plan (``tmem_plan``; 128 lanes = 128 rows, 32-bit columns)
------------------------------------------------------------------------------
    S0 = [0, BN)          f32 S of even key tiles;  P0 = [0, BN/2) bf16 pairs over it
    S1 = [BN, 2 BN)       f32 S of odd key tiles;   P1 = [BN, BN + BN/2)
    O  = [2 BN, 2 BN + D) f32 accumulator (D = 256: two N = 128 subtiles)
    allocation 512 columns (the power of 2 >= 2 BN + D for every supported D)

    D    BN   S0       S1        O          alloc
    16   128  0..127   128..255  256..271   512
    64   128  0..127   128..255  256..319   512
    128  128  0..127   128..255  256..383   512
    256   64  0..63     64..127  128..383   512

Why it never overlaps live data: S_b is written by QK_kt (kt % 2 = b) only after PV_{kt-2} --
the last reader of P_b -- was issued by the same thread (tcgen05.mma from one thread execute in
order), and after the softmax of kt-2 arrived ``p_full`` (it had read S_b); P_b lies inside S_b and
is written by the softmax warps only after they read S_b; O is written only by PV (MMA warp) and by
the correction warps between ``o_done`` of PV_{kt-1} and ``o_ready`` (the MMA warp waits for it
before PV_kt). Two Q tiles in flight (the CUTLASS / FA4 plan ``tmem_plan_two_q``: S0@0, S1@128,
O0@256, O1@384 with P_i inside S_i) fit only D <= 128 and are not built: this kernel has one Q
tile and double-buffers S instead; that plan is checked over the FA4 schedule by
``tools/tmem_walkthrough.py --qtiles 2`` (not by the emulator: no kernel runs it). The tests declare the regions to the emulator (``emu.tmem_regions(**tmem_regions(D))``),
which checks every MMA / tcgen05.st write against them; ``tools/tmem_walkthrough.py`` draws it.

Shared-memory plan (dynamic, aligned to 1024 B; TMA boxes W = min(D, 64) columns, swizzle 2W bytes:
32B for D = 16, 128B otherwise)
    Q     : 128 rows x D bf16               = 256 D bytes         (D=128: 32 KB)
    K, V  : STAGES slots, BN rows x D each  = 2 BN D bytes / slot  (D=128: 64 KB)
    D=128: 32 + 2 x 64 = 160 KB; D=256 (BN=64): 64 + 2 x 64 = 192 KB; + 1 KB alignment slack.
V is loaded like K (D contiguous) and described to tcgen05.mma as an MN-major B operand: LBO = the
bytes between W-column boxes (BN x 2W), SBO = 8 keys x 2W; no transpose pass.

Napkin math (B200 from published peak figures, not measured here: ~2.25 PFLOP/s dense BF16 tensor
core, 8 TB/s HBM3e, 148 SMs at ~1.85 GHz -> ~8192 dense BF16 FLOP / clk / SM, i.e. one
128x256x16 MMA per 128 clk; MUFU ex2 16 / clk / SM as the FA4 paper states)
---------------------------------------------------------------------------------------------------
* Prefill B=4, H=16, S=4096, D=128, non-causal: 4 B H S^2 D = 550 GFLOP -> 0.24 ms at peak
  (causal: half). Per 128-row x 128-key tile: 2 GEMMs x 2*128*128*128 = 8.4 MFLOP = 1024 clk of
  MMA, and 128*128 = 16384 exp2 = 1024 clk of MUFU: exp and MMA are equal at D = 128 (the FA4
  observation; FA4 moves part of the exp2 to FMA polynomials and keeps two Q tiles in flight).
  Here: one Q tile, S double-buffered so QK_{j+1} runs under softmax_j, the correction warpgroup
  beside it; the softmax warpgroup also does the max pass, the masks, two TMEM reads of S and the
  bf16 packing, ~1.5-2x its MUFU time. Expected bound ~1500-2000 clk per tile -> 50-70% of peak,
  ~1.1-1.5 PFLOP/s, if the TMA ring (32 KB of K+V per tile, from L2) keeps up; a first version on
  hardware will likely be lower. Peers' published B200 forward numbers
  (../shared/reference/dsv4-facts.md): FlashAttention-4 1613 TFLOP/s BF16 (71% of peak),
  FlashMLA dense MHA prefill 1460 TFLOP/s.
* D = 256 (BN = 64): a tile is 8.4 MFLOP = 1024 clk of MMA for 8192 exp2 = 512 clk: MMA-bound,
  ceiling ~70-80% of peak; one CTA per SM (192 KB smem, 512 TMEM columns) and a 2-deep ring are
  the risk (FA4 uses 2-CTA MMA for hd256).
* D = 16 / 64: exp-bound (16384 exp2 per tile against 128 / 512 clk of MMA): <= 1024 clk per tile
  -> at most ~13% / 50% of the tensor-core peak; such head dims are memory- or MUFU-bound anywhere.
* Decode (B=64, Tq=1, Hq=64, Hkv=8, Tk=8192, D=128): K/V 2.15 GB -> 0.27 ms at 8 TB/s; the 8
  packed heads fill 8 of 128 rows (275 GFLOP of dense MMA, ~0.12 ms): memory-bound on paper, but
  512 CTAs with a 2-deep ring each will not reach copy speed -- split-K over Tk and M = 64 tiles
  are the known fixes (not built).

What to check first on a B200
-----------------------------
1. ``pytest tests/gpu/test_fmha_sm100_gpu.py`` (skipped off sm_100): this kernel against the
   float64 oracle at the emulator test shapes (one or two CTAs per head dim): it isolates layouts (idesc M/N fields, smem descriptor LBO/SBO for the
   MN-major V with 32B swizzle at D = 16 and 128B otherwise, the descriptor version bits) from
   races.
2. The TMEM address arithmetic: the column returned by ``tcgen05.alloc`` (expected 0 with one CTA
   per SM) and the lane field ``(32 * (warp % 4)) << 16`` of every ld / st.
3. The P layout for the TS MMA: bf16 pairs, lower key in the low half, 8 columns per k16 step
   (``ptx-facts`` §2.5 marks the TMEM packing of A as inferred from CUTLASS).
4. Races the emulator cannot see (it completes asynchronous work at issue): tcgen05.wait::st +
   fence::before_thread_sync before every arrive that hands TMEM to the MMA warp, the commit ->
   wait -> fence::after_thread_sync chain before every tcgen05.ld, and the ring's empty barriers.
5. Then throughput (tools/bench_fmha.py-style, with cudnn / FA4 measured in the same run).

Not built yet: two Q tiles in flight, one TMEM pass over S (the softmax reads S twice: max,
then exp), the conditional (skipped) rescale, exp2 emulation on the FMA
pipe, setmaxnreg per role, 2-CTA (cta_group::2) for D = 256, a TMA-store epilogue, M = 64 tiles for
decode, split-K decode, float16 inputs.
"""
from __future__ import annotations

import math  # noqa: F401  (math.exp2 / log2 in the generated kernel source)

import numpy as np
from numba import cuda  # noqa: F401  (the generated kernel source uses these names)
from numba.types import float32, int32, uint8, uint32, uint64  # noqa: F401

from ..hw import ops  # noqa: F401  (the generated kernel source)
from ..hw.bits import bits_f32  # noqa: F401  (tcgen05.ld returns b32 words)
from ..hw.bits import f32_bits as ops_bits  # noqa: F401  (float32 -> b32 words for tcgen05.st)
from ..hw.descriptors import umma_idesc, umma_smem_desc
from ..hw.portable import pack_bf16x2  # noqa: F401  (cvt.rn.bf16x2.f32, with a simulator twin)
from ..runtime import device, kernel  # noqa: F401
from .fmha_sm90 import LN2, LOG2E, NEG_INF  # noqa: F401  (one set of constants for both archs)
from .fmha_sm90 import Plan as _Sm90Plan
from .fmha_sm90 import kernel_args as _kernel_args
from .fmha_sm90 import signature  # noqa: F401  (the same argument list as the sm_90a kernel)
from .fmha_sm90 import unsupported_by

SUPPORTED_D = (16, 64, 128, 256)
BM = 128                  # query rows per CTA = tcgen05 M = TMEM lanes
STAGES = 2                # K/V ring depth
THREADS = 320             # softmax WG (warps 0-3), correction WG (4-7), MMA warp 8, load warp 9
SOFTMAX_WARP0, CORR_WARP0, MMA_WARP, LOAD_WARP = 0, 4, 8, 9
TMEM_COLS = 512
PV_N = 128                # PV MMA N-subtile (D = 256: two)

# mbarrier slots
BAR_Q = 0
FULLK0 = 1
FULLV0 = FULLK0 + STAGES
EMPTY0 = FULLV0 + STAGES
SFULL0 = EMPTY0 + STAGES          # 2
PFULL0 = SFULL0 + 2               # 2
ODONE = PFULL0 + 2
OREADY = ODONE + 1
LREADY = OREADY + 1
NBARS = LREADY + 1


def block_n(D: int) -> int:
    """Keys per tile: 128, except D = 256 (64, so that two ring slots fit shared memory)."""
    return 64 if D == 256 else 128


def tmem_plan(D: int) -> dict:
    """The TMEM column plan for head dim D: name -> (first column, columns), relative to the
    allocation's base. ``P0`` / ``P1`` alias the first half of ``S0`` / ``S1`` (declared aliases).
    The single source of the column constants (the kernel, the tests and tools/tmem_walkthrough.py
    read them from here)."""
    bn = block_n(D)
    return {"S0": (0, bn), "S1": (bn, bn), "O": (2 * bn, D),
            "P0": (0, bn // 2), "P1": (bn, bn // 2)}


#: aliases of the plan: P_b is written over S_b once the softmax warps have read S_b
TMEM_ALIASES = {"P0": "S0", "P1": "S1"}


def tmem_plan_two_q(D: int) -> dict:
    """The column plan of the NOT BUILT two-Q-tiles-in-flight variant (CUTLASS / FA4, D <= 128):
    Q tile i owns S_i (128 keys, P_i over its first 64 columns) and O_i. Checked over the FA4
    schedule by ``tools/tmem_walkthrough.py --qtiles 2``; no kernel uses it yet."""
    if D > 128:
        raise ValueError(f"two Q tiles in flight need 2 x (128 + D) <= 512 TMEM columns: D <= 128, not {D}")
    return {"S0": (0, 128), "S1": (128, 128), "O0": (256, D), "O1": (384, D), "P0": (0, 64), "P1": (128, 64)}


def tmem_regions(D: int) -> dict:
    """The plan's non-aliased regions, as ``emu.tmem_regions(**tmem_regions(D))`` takes them."""
    return {k: v for k, v in tmem_plan(D).items() if k not in TMEM_ALIASES}


def _check_plan(D):
    p = tmem_plan(D)
    top = max(c + n for c, n in p.values())
    assert top <= TMEM_COLS, (D, top)
    live = [(k, v) for k, v in p.items() if k not in TMEM_ALIASES]
    for i, (a, (ca, na)) in enumerate(live):
        for b, (cb, nb) in live[i + 1:]:
            assert ca + na <= cb or cb + nb <= ca, (D, a, b)
    for a, s in TMEM_ALIASES.items():
        (ca, na), (cs, ns) = p[a], p[s]
        assert cs <= ca and ca + na <= cs + ns, (D, a, s)


for _d in SUPPORTED_D:
    _check_plan(_d)


def geometry(D: int) -> dict:
    """Bytes and counts of the shared-memory plan (module docstring)."""
    bn = block_n(D)
    W = min(D, 64)
    span = 2 * W
    nbox = D // W
    g = {"BN": bn, "W": W, "span": span, "swizzle": f"{span}B", "nbox": nbox,
         "boxq": BM * span, "boxk": bn * span, "qbytes": BM * D * 2, "kbytes": bn * D * 2,
         "threads": THREADS}
    g["dyn_smem"] = 1024 + g["qbytes"] + 2 * STAGES * g["kbytes"]
    return g


def descriptors(D: int) -> dict:
    """The tcgen05 shared-memory descriptors (start address ORed in by the kernel) and instruction
    descriptors for head dim D."""
    g = geometry(D)
    bn, span = g["BN"], g["span"]
    return {
        # Q (A) and K (B): K-major, rows of `span` bytes, 8-row groups 8*span apart (SBO); LBO unused
        "kmajor": umma_smem_desc(0, 16, 8 * span, g["swizzle"]),
        # V (B of PV): MN-major, LBO = next W-column box, SBO = next 8 keys
        "v": umma_smem_desc(0, bn * span, 8 * span, g["swizzle"]),
        "idesc_s": umma_idesc("f16", "bf16", "bf16", "f32", BM, bn),
        "idesc_o": umma_idesc("f16", "bf16", "bf16", "f32", BM, min(D, PV_N), b_major="MN"),
    }


# Per-chunk helpers of the softmax / correction / epilogue (32 TMEM columns of one row at a time).
# On the GPU each is inlined into the kernel (``runtime.device``: Numba-level inline); under the
# simulator each has a NumPy twin computing the same float32 function on the whole chunk at once
# (calling 32 scalar helpers per chunk from 256 simulated threads is what made the emulator run slow).
CHUNK = 16        # words per helper call: a call of more than 30 arguments is a *args call in
                  # CPython 3.11 bytecode, which Numba's inliner rejects


def _ws(n):
    return ", ".join(f"w{i}" for i in range(n))


def _f32s(ws):
    return np.array([int(w) & 0xFFFFFFFF for w in ws], np.uint32).view(np.float32)


def _bf16_pairs(v):
    """float32 array (even length) -> b32 words of bf16 pairs, RNE, NaN kept, lower index low."""
    u = np.ascontiguousarray(v, np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = np.where(nan, (u >> 16) | 0x40, r) & 0xFFFF
    return tuple(np.uint32(x) for x in (r[0::2] | (r[1::2] << 16)))


def _masked(scale, jc, lim, ws):
    v = _f32s(ws) * np.float32(scale)
    v[jc + np.arange(len(ws)) >= lim] = -np.inf
    return v


def _chunk_max_sim(x, scale, jc, lim, *ws):
    v = _masked(scale, jc, lim, ws)
    v = v[~np.isnan(v)]                      # the GPU chain (b if b > a else a) never picks a NaN
    return np.float32(max(float(x), float(v.max()))) if v.size else np.float32(x)


def _chunk_exp_sim(l, scale, jc, lim, u, *ws):
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp2(_masked(scale, jc, lim, ws) - np.float32(u)).astype(np.float32)
    return (np.float32(np.float32(l) + p.sum(dtype=np.float32)),) + _bf16_pairs(p)


def _rescale_sim(cf, *ws):
    with np.errstate(invalid="ignore", over="ignore"):
        return tuple(np.uint32(x) for x in (_f32s(ws) * np.float32(cf)).view(np.uint32))


def _normalize_sim(wt, *ws):
    with np.errstate(invalid="ignore", over="ignore"):
        return _bf16_pairs(_f32s(ws) * np.float32(wt))


def _gen_helpers():
    """The GPU bodies (explicit arity: Numba device functions take no *args)."""
    n = CHUNK
    src = [f"def chunk_max(x, scale, jc, lim, {_ws(n)}):",
           '    """Running max of the masked scaled logits of 16 S columns."""']
    for i in range(n):
        src.append(f"    s = bits_f32(w{i}) * scale if jc + {i} < lim else NEG_INF")
        src.append("    x = s if s > x else x")
    src.append("    return x")
    src += [f"def chunk_exp(l, scale, jc, lim, u, {_ws(n)}):",
            '    """p = 2^(x - u) of 16 S columns: (l + sum p, 8 words of bf16 pairs of p)."""']
    for i in range(n):
        src.append(f"    p{i} = math.exp2((bits_f32(w{i}) * scale if jc + {i} < lim else NEG_INF) - u)")
        src.append(f"    l += p{i}")
    src.append("    return (l, " + ", ".join(f"pack_bf16x2(p{2 * i + 1}, p{2 * i})" for i in range(n // 2)) + ")")
    src += [f"def rescale(cf, {_ws(n)}):", '    """16 O columns times the correction factor."""',
            "    return (" + ", ".join(f"ops_bits(bits_f32(w{i}) * cf)" for i in range(n)) + ")"]
    src += [f"def normalize(wt, {_ws(n)}):", '    """16 O columns times 1/l, as 8 words of bf16 pairs."""',
            "    return (" + ", ".join(f"pack_bf16x2(bits_f32(w{2 * i + 1}) * wt, bits_f32(w{2 * i}) * wt)"
                                     for i in range(n // 2)) + ")"]
    ns = globals()
    exec(compile("\n".join(src) + "\n", "<fmha_sm100 chunk helpers>", "exec"), ns)   # noqa: S102
    twins = {"chunk_max": _chunk_max_sim, "chunk_exp": _chunk_exp_sim, "rescale": _rescale_sim,
             "normalize": _normalize_sim}
    for name, twin in twins.items():
        ns[name] = device(ns[name], sim=twin)


_gen_helpers()


def _syncwarp_gpu():
    cuda.syncwarp(0xFFFFFFFF)


def _syncwarp_sim():
    return None                   # the simulator runs every thread to the next barrier anyway


syncwarp = device(_syncwarp_gpu, sim=_syncwarp_sim)       # bar.warp.sync


# ---------------------------------------------------------------------------- kernel source
# Generated as Python source (as fmha_sm90): every S / O value of a thread is a named scalar, so
# Numba keeps them in registers; tcgen05.ld returns them as a tuple of b32 words.

def _names(prefix, n, start=0):
    return ", ".join(f"{prefix}{i}" for i in range(start, start + n))


def _source(D: int) -> str:
    g = geometry(D)
    d = descriptors(D)
    plan = tmem_plan(D)
    BN, span, nbox, W = g["BN"], g["span"], g["nbox"], g["W"]
    S0, S1, OC = plan["S0"][0], plan["S1"][0], plan["O"][0]
    CH = min(32, D)                       # O chunk (columns) of the correction / epilogue
    L = []
    a = L.append
    a(f"def fmha_fwd_sm100_d{D}(tmq, tmk, tmv, out, lse, lens, sink, has_sink, Tq, Tk, Hq, Hkv, G,"
      f" causal, coff, scale_log2):")
    a("    dyn = cuda.shared.array(0, uint8)")
    a(f"    bars = cuda.shared.array({NBARS}, uint64)")
    a("    slot = cuda.shared.array(1, uint32)")
    a(f"    corr = cuda.shared.array({2 * BM}, float32)")
    a(f"    statm = cuda.shared.array({BM}, float32)")
    a(f"    statl = cuda.shared.array({BM}, float32)")
    a("    t = cuda.threadIdx.x")
    a("    warp = t // 32")
    a("    lane = t % 32")
    a("    hq0 = cuda.blockIdx.y * G")
    a("    b = cuda.blockIdx.z")
    a(f"    tpc = {BM} // G")
    a("    t0 = cuda.blockIdx.x * tpc")
    a("    hkv = hq0 // (Hq // Hkv)")
    a("    bar0 = ops.shared_address(bars)")
    a("    sbase = (ops.shared_address(dyn) + uint32(1023)) & uint32(0xFFFFFC00)")
    a("    q_sm = sbase")
    a(f"    k_sm = sbase + uint32({g['qbytes']})")
    a(f"    v_sm = k_sm + uint32({STAGES * g['kbytes']})")
    a("    kvlen = min(max(int32(lens[b]), int32(0)), int32(Tk))")
    a("    hi = kvlen")
    a("    if causal:")
    a("        q_last = min(t0 + tpc, Tq) - 1")
    a("        hi = min(kvlen, max(q_last + coff + 1, 0))")
    a(f"    nt = (hi + {BN - 1}) // {BN}")
    a("    if t == 0:")
    a("        ops.mbarrier_init(bar0, uint32(1))")
    a(f"        for i in range({STAGES}):")
    a(f"            ops.mbarrier_init(bar0 + uint32(8 * ({FULLK0} + i)), uint32(1))")
    a(f"            ops.mbarrier_init(bar0 + uint32(8 * ({FULLV0} + i)), uint32(1))")
    a(f"            ops.mbarrier_init(bar0 + uint32(8 * ({EMPTY0} + i)), uint32(1))")
    a("        for i in range(2):")
    a(f"            ops.mbarrier_init(bar0 + uint32(8 * ({SFULL0} + i)), uint32(1))")
    a(f"            ops.mbarrier_init(bar0 + uint32(8 * ({PFULL0} + i)), uint32({BM}))")
    a(f"        ops.mbarrier_init(bar0 + uint32({8 * ODONE}), uint32(1))")
    a(f"        ops.mbarrier_init(bar0 + uint32({8 * OREADY}), uint32({BM}))")
    a(f"        ops.mbarrier_init(bar0 + uint32({8 * LREADY}), uint32({BM}))")
    a("        ops.fence_mbarrier_init()")
    a(f"    if warp == {MMA_WARP}:")
    a(f"        ops.tcgen05_alloc(ops.shared_address(slot), uint32({TMEM_COLS}))")
    a("        ops.tcgen05_relinquish_alloc_permit()")
    a("    ops.tcgen05_fence_before_thread_sync()")
    a("    cuda.syncthreads()")
    a("    ops.tcgen05_fence_after_thread_sync()")
    a("    taddr = slot[0]")
    a("    lrow = uint32((32 * (warp % 4)) << 16)")
    a("    row = t % 128")
    a("    pos = t0 + row // G")
    a("    head = hq0 + row % G")
    # ---------------------------------------------------------------- load warp
    a(f"    if warp == {LOAD_WARP} and lane == 0:")
    a("        aq = ops.array_address(tmq)")
    a("        ak = ops.array_address(tmk)")
    a("        av = ops.array_address(tmv)")
    a("        ops.fence_proxy_tensormap_acquire_sys(aq)")
    a("        ops.fence_proxy_tensormap_acquire_sys(ak)")
    a("        ops.fence_proxy_tensormap_acquire_sys(av)")
    a("        if nt > 0:")
    a(f"            ops.mbarrier_arrive_expect_tx(bar0, uint32({g['qbytes']}))")
    a(f"            for c in range({nbox}):")
    a(f"                ops.tma_load_4d(q_sm + uint32(c * {g['boxq']}), aq, int32(c * {W}), int32(hq0),"
      f" int32(t0), int32(b), bar0)")
    a("        for kt in range(nt):")
    a(f"            st = kt % {STAGES}")
    a(f"            ph = uint32((kt // {STAGES}) & 1)")
    a(f"            ops.mbarrier_wait_parity(bar0 + uint32(8 * ({EMPTY0} + st)), ph ^ uint32(1))")
    a(f"            fk = bar0 + uint32(8 * ({FULLK0} + st))")
    a(f"            fv = bar0 + uint32(8 * ({FULLV0} + st))")
    a(f"            ops.mbarrier_arrive_expect_tx(fk, uint32({g['kbytes']}))")
    a(f"            for c in range({nbox}):")
    a(f"                ops.tma_load_4d(k_sm + uint32(st * {g['kbytes']} + c * {g['boxk']}), ak,"
      f" int32(c * {W}), int32(hkv), int32(kt * {BN}), int32(b), fk)")
    a(f"            ops.mbarrier_arrive_expect_tx(fv, uint32({g['kbytes']}))")
    a(f"            for c in range({nbox}):")
    a(f"                ops.tma_load_4d(v_sm + uint32(st * {g['kbytes']} + c * {g['boxk']}), av,"
      f" int32(c * {W}), int32(hkv), int32(kt * {BN}), int32(b), fv)")
    # ---------------------------------------------------------------- MMA warp (lane 0 issues)
    a(f"    if warp == {MMA_WARP} and lane == 0:")
    a(f"        qdesc = uint64({d['kmajor']}) | uint64((q_sm >> 4) & 0x3FFF)")
    a("        if nt > 0:")
    a("            ops.mbarrier_wait_parity(bar0, uint32(0))")
    a("        for j in range(nt + 1):")
    a("            # QK_j (issued one tile ahead of PV_{j-1})")
    a("            if j < nt:")
    a(f"                sj = j % {STAGES}")
    a(f"                ops.mbarrier_wait_parity(bar0 + uint32(8 * ({FULLK0} + sj)),"
      f" uint32((j // {STAGES}) & 1))")
    a("                ops.tcgen05_fence_after_thread_sync()")
    a(f"                kdesc = uint64({d['kmajor']}) | uint64(((k_sm + uint32(sj * {g['kbytes']})) >> 4)"
      f" & 0x3FFF)")
    a(f"                dS = taddr + uint32({S0}) + uint32({S1 - S0} * (j % 2))")
    for kk in range(D // 16):
        c, w = divmod(16 * kk, W)
        off = (c * g["boxq"] + 2 * w) >> 4
        offk = (c * g["boxk"] + 2 * w) >> 4
        a(f"                ops.tcgen05_mma_f16_ss(dS, qdesc + uint64({off}), kdesc + uint64({offk}),"
          f" uint32({d['idesc_s']}), uint32({1 if kk else 0}))")
    a(f"                ops.tcgen05_commit(bar0 + uint32(8 * ({SFULL0} + j % 2)))")
    a("            # PV_{j-1}")
    a("            if j > 0:")
    a("                kt = j - 1")
    a(f"                st = kt % {STAGES}")
    a(f"                ops.mbarrier_wait_parity(bar0 + uint32(8 * ({PFULL0} + kt % 2)), uint32((kt // 2) & 1))")
    a("                if kt > 0:")
    a(f"                    ops.mbarrier_wait_parity(bar0 + uint32({8 * OREADY}), uint32((kt - 1) & 1))")
    a(f"                ops.mbarrier_wait_parity(bar0 + uint32(8 * ({FULLV0} + st)),"
      f" uint32((kt // {STAGES}) & 1))")
    a("                ops.tcgen05_fence_after_thread_sync()")
    a(f"                vdesc = uint64({d['v']}) | uint64(((v_sm + uint32(st * {g['kbytes']})) >> 4)"
      f" & 0x3FFF)")
    a(f"                aP = taddr + uint32({S0}) + uint32({S1 - S0} * (kt % 2))")
    a("                acc = uint32(1 if kt > 0 else 0)")
    npv = max(1, D // PV_N)
    for n in range(npv):
        boxoff = n * (PV_N // W) * g["boxk"] if npv > 1 else 0
        for s in range(BN // 16):
            voff = (boxoff + s * 16 * span) >> 4
            a(f"                ops.tcgen05_mma_f16_ts(taddr + uint32({OC + n * PV_N}), aP + uint32({8 * s}),"
              f" vdesc + uint64({voff}), uint32({d['idesc_o']}), {'acc' if s == 0 else 'uint32(1)'})")
    a(f"                ops.tcgen05_commit(bar0 + uint32({8 * ODONE}))")
    a(f"                ops.tcgen05_commit(bar0 + uint32(8 * ({EMPTY0} + st)))")
    # ---------------------------------------------------------------- softmax warpgroup
    a(f"    if warp < {CORR_WARP0}:")
    a("        Lr = kvlen")
    a("        if causal:")
    a("            Lr = min(kvlen, max(pos + coff + 1, 0))")
    a("        m = NEG_INF")
    a("        l = float32(0)")
    a("        for kt in range(nt):")
    a("            bb = kt % 2")
    a(f"            ops.mbarrier_wait_parity(bar0 + uint32(8 * ({SFULL0} + bb)), uint32((kt // 2) & 1))")
    a("            ops.tcgen05_fence_after_thread_sync()")
    a(f"            sa = taddr + lrow + uint32({S0}) + uint32({S1 - S0}) * uint32(bb)")
    # pass 1: row max over 32-column chunks of S; pass 2: re-read each chunk (TMEM reads are
    # cheap), p = 2^(x - m), row sum, P chunk (16 columns of bf16 pairs) stored over S columns
    # this thread has already read (P chunk ch lies in S chunk ch // 2 <= ch)
    a(f"            j0 = kt * {BN}")
    a("            x = NEG_INF")
    a(f"            for ch in range({BN // 32}):")
    a(f"                {_names('w', 32)} = ops.tcgen05_ld_32x32b_x32(sa + uint32(32 * ch))")
    a("                ops.tcgen05_wait_ld()")
    a(f"                x = chunk_max(x, scale_log2, j0 + 32 * ch, Lr, {_names('w', 16)})")
    a(f"                x = chunk_max(x, scale_log2, j0 + 32 * ch + 16, Lr, {_names('w', 16, 16)})")
    a("            n = x if x > m else m")
    a("            u = float32(0) if n == NEG_INF else n")
    a("            cf = math.exp2(m - u)")
    a("            m = n")
    a(f"            corr[bb * {BM} + row] = cf")
    a("            l = l * cf")
    a(f"            for ch in range({BN // 32}):")
    a(f"                {_names('w', 32)} = ops.tcgen05_ld_32x32b_x32(sa + uint32(32 * ch))")
    a("                ops.tcgen05_wait_ld()")
    a(f"                l, {_names('w', 8)} = chunk_exp(l, scale_log2, j0 + 32 * ch, Lr, u, {_names('w', 16)})")
    a(f"                l, {_names('w', 8, 8)} = chunk_exp(l, scale_log2, j0 + 32 * ch + 16, Lr, u,"
      f" {_names('w', 16, 16)})")
    a(f"                ops.tcgen05_st_32x32b_x16(sa + uint32(16 * ch), {_names('w', 16)})")
    # V rows at keys >= kvlen (< Tk) of the last tile hold whatever the cache holds: zero them
    # (P is 0 there, but 0 * NaN = NaN in the PV MMA)
    a(f"            z0 = kvlen - kt * {BN}")
    a(f"            z1 = min({BN}, Tk - kt * {BN})")
    a("            if z0 < z1:")
    a(f"                st = kt % {STAGES}")
    a(f"                ops.mbarrier_wait_parity(bar0 + uint32(8 * ({FULLV0} + st)),"
      f" uint32((kt // {STAGES}) & 1))")
    a(f"                vbase = v_sm + uint32(st * {g['kbytes']})")
    a(f"                for idx in range(t, (z1 - z0) * {nbox * span // 16}, {BM}):")
    a(f"                    zr = idx // {span // 16}")
    a(f"                    zb = zr % {nbox}")
    a(f"                    zk = zr // {nbox}")
    a(f"                    ops.st_shared_v4_b32(vbase + uint32(zb * {g['boxk']} + (z0 + zk) * {span}"
      f" + (idx % {span // 16}) * 16), uint32(0), uint32(0), uint32(0), uint32(0))")
    a("                ops.fence_proxy_async_shared_cta()")
    a("            ops.tcgen05_wait_st()")
    a("            ops.tcgen05_fence_before_thread_sync()")
    a(f"            ops.mbarrier_arrive(bar0 + uint32(8 * ({PFULL0} + bb)))")
    a("        statm[row] = m")
    a("        statl[row] = l")
    a(f"        ops.mbarrier_arrive(bar0 + uint32({8 * LREADY}))")
    # ---------------------------------------------------------------- correction / epilogue
    a(f"    if warp >= {CORR_WARP0} and warp < {MMA_WARP}:")
    a(f"        oa = taddr + lrow + uint32({OC})")
    a("        for kt in range(1, nt):")
    a("            bb = kt % 2")
    a(f"            ops.mbarrier_wait_parity(bar0 + uint32(8 * ({PFULL0} + bb)), uint32((kt // 2) & 1))")
    a(f"            ops.mbarrier_wait_parity(bar0 + uint32({8 * ODONE}), uint32((kt - 1) & 1))")
    a("            ops.tcgen05_fence_after_thread_sync()")
    a(f"            cf = corr[bb * {BM} + row]")
    a(f"            for ch in range({D // CH}):")
    a(f"                {_names('w', CH)} = ops.tcgen05_ld_32x32b_x{CH}(oa + uint32({CH} * ch))")
    a("                ops.tcgen05_wait_ld()")
    for h in range(CH // 16):
        a(f"                {_names('w', 16, 16 * h)} = rescale(cf, {_names('w', 16, 16 * h)})")
    a(f"                ops.tcgen05_st_32x32b_x{CH}(oa + uint32({CH} * ch), {_names('w', CH)})")
    a("            ops.tcgen05_wait_st()")
    a("            ops.tcgen05_fence_before_thread_sync()")
    a(f"            ops.mbarrier_arrive(bar0 + uint32({8 * OREADY}))")
    # epilogue
    a(f"        ops.mbarrier_wait_parity(bar0 + uint32({8 * LREADY}), uint32(0))")
    a("        m = statm[row]")
    a("        l = statl[row]")
    a("        sk = NEG_INF")
    a("        if has_sink:")
    a("            sk = float32(sink[head]) * float32(LOG2E)")
    a("        f = sk if sk > m else m")
    a("        gg = float32(0) if f == NEG_INF else f")
    a("        e = math.exp2(m - gg)")
    a("        l = l * e + math.exp2(sk - gg)")
    a("        wt = float32(0) if l == float32(0) else e / l")
    a("        if nt > 0:")
    a(f"            ops.mbarrier_wait_parity(bar0 + uint32({8 * ODONE}), uint32((nt - 1) & 1))")
    a("            ops.tcgen05_fence_after_thread_sync()")
    a(f"        ob = ((b * Tq + pos) * Hq + head) * {D // 2}")
    a(f"        for ch in range({D // CH}):")
    for i in range(CH):
        a(f"            w{i} = uint32(0)")
    a("            if nt > 0:")
    a(f"                {_names('w', CH)} = ops.tcgen05_ld_32x32b_x{CH}(oa + uint32({CH} * ch))")
    a("                ops.tcgen05_wait_ld()")
    a("            if pos < Tq:")
    for h in range(CH // 16):
        a(f"                {_names('w', 8, 8 * h)} = normalize(wt, {_names('w', 16, 16 * h)})")
    for i in range(CH // 2):
        a(f"                out[ob + {CH // 2} * ch + {i}] = w{i}")
    a("        if pos < Tq:")
    a("            lse[(b * Hq + head) * Tq + pos] = NEG_INF if l == float32(0) else "
      "(gg + math.log2(l)) * float32(LN2)")
    # ---------------------------------------------------------------- teardown
    # lanes 1-31 of the load / MMA warps reach here long before lane 0: reconverge every warp
    # before the (.aligned) bar.sync
    a("    syncwarp()")
    a("    ops.tcgen05_fence_before_thread_sync()")
    a("    cuda.syncthreads()")
    a(f"    if warp == {MMA_WARP}:")
    a("        ops.tcgen05_fence_after_thread_sync()")
    a(f"        ops.tcgen05_dealloc(taddr, uint32({TMEM_COLS}))")
    return "\n".join(L) + "\n"


_KERNELS: dict = {}


def fused_kernel(D: int):
    """The ``runtime.Kernel`` for head dim D (generated once)."""
    if D not in SUPPORTED_D:
        raise ValueError(f"the fused sm_100a kernel supports D in {SUPPORTED_D}, not {D}")
    if D not in _KERNELS:
        ns = globals()
        code = compile(_source(D), f"<fmha_sm100 generated D={D}>", "exec")
        exec(code, ns)                                   # noqa: S102 (our own generated source)
        fn = ns.pop(f"fmha_fwd_sm100_d{D}")
        _KERNELS[D] = kernel(fn, launch_bounds=(THREADS, 1))
    return _KERNELS[D]


def production_kernels():
    return [(fused_kernel(D), signature()) for D in SUPPORTED_D]


def launch_config(B: int, Tq: int, Hq: int, Hkv: int, D: int = 128) -> dict:
    """How a call maps onto CTAs: 128 rows per CTA, the G = Hq / Hkv query heads of a KV head packed
    into the rows when G divides 128 (as fmha_sm90.launch_config does with 64)."""
    grp = Hq // Hkv
    G = grp if grp > 1 and BM % grp == 0 else 1
    tpc = BM // G
    return {"G": G, "grid": (-(-Tq // tpc), Hq // G, B), "qbox": (1, tpc, G, min(D, 64)),
            "kbox": (1, block_n(D), 1, min(D, 64))}


def unsupported(c, return_intermediates: bool) -> str | None:
    """Why the fused sm_100a kernel cannot run this (validated) call, or None."""
    return unsupported_by(c, return_intermediates, SUPPORTED_D, "sm_100a ", "TMEM")


def kernel_args(c, maps, out, lse, lens, sink, G):
    """The kernel's argument tuple (``fmha_sm90.kernel_args``; shared by Plan and the tests)."""
    return _kernel_args(c, maps, out, lse, lens, sink, G, c.sink is not None)


class Plan:
    """A prepared fused call (as ``fmha_sm90.Plan``): ``launch()`` only launches."""

    def __init__(self, c, qd, kd, vd, lens, sink):
        from numba import cuda  # noqa: F811

        from ..hw.tma import tensor_map_on_device
        B, Tq, Tk, Hq, Hkv, D = c.B, c.Tq, c.Tk, c.Hq, c.Hkv, c.D
        cfg = launch_config(B, Tq, Hq, Hkv, D)
        g = geometry(D)
        q4, k4, v4 = (x.reshape(B, T, H, D) for x, T, H in ((qd, Tq, Hq), (kd, Tk, Hkv), (vd, Tk, Hkv)))
        maps = (tensor_map_on_device(q4, cfg["qbox"], g["swizzle"], dtype="bfloat16"),
                tensor_map_on_device(k4, cfg["kbox"], g["swizzle"], dtype="bfloat16"),
                tensor_map_on_device(v4, cfg["kbox"], g["swizzle"], dtype="bfloat16"))
        self.keep = (q4, k4, v4)
        self.out = cuda.device_array(B * Tq * Hq * D // 2, np.uint32)
        self.lse = cuda.device_array(B * Hq * Tq, np.float32)
        sk = sink if sink is not None else cuda.to_device(np.zeros(1, np.float32))
        self.args = kernel_args(c, maps, self.out, self.lse, lens, sk, cfg["G"])
        self.grid = cfg["grid"]
        self.k = fused_kernel(D)
        self.smem = g["dyn_smem"]
        self.k.reserve_dynamic_shared(self.args, self.smem)

    def launch(self):
        self.k.launch(self.grid, THREADS, *self.args, shared_bytes=self.smem)

    #: wait at most ``timeout_s`` for the queued work (an event polled, where ``cuda.synchronize``
    #: would hang on a deadlocked kernel): True when it finished. Shared with fmha_sm90.Plan.
    wait = _Sm90Plan.wait


def fused_production(c, qd, kd, vd, lens, sink):
    """Run the fused sm_100a kernel: (out uint32 device [B*Tq*Hq*D/2], lse float32 device [B*Hq*Tq])."""
    p = Plan(c, qd, kd, vd, lens, sink)
    p.launch()
    return p.out, p.lse


__all__ = ["SUPPORTED_D", "fused_kernel", "signature", "geometry", "tmem_plan", "tmem_regions",
           "descriptors", "launch_config", "tmem_plan_two_q", "Plan", "fused_production", "unsupported",
           "production_kernels", "block_n"]
