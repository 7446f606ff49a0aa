"""Stages of the staged attention pipeline: the QK GEMM, the PV GEMM and the output epilogue.

The pipeline (``dsv4_numba.pipelines.fmha``) strings them together with the softmax stage
(``stages.softmax``)::

    q [B,Tq,Hq,D], k [B,Tk,Hkv,D]  --attn_qk-->  S [B,Hq,Tq,Tk] f32   (scale folded in, masked -inf)
    S                              --softmax-->  P [B,Hq,Tq,Tk] f32   (+ lse [B,Hq,Tq])
    P, v [B,Tk,Hkv,D]              --attn_pv-->  O [B,Tq,Hq,D]  f32   (normalised: P rows sum to
                                                                       1 minus the sink's share)
    O                              --attn_epilogue--> out [B,Tq,Hq,D] in q's dtype (one rounding)

Every intermediate lives in global memory (staged mode), so each stage can be swapped and checked on
its own. These three stages have only ``reference`` implementations (one thread per output element,
readable, they run under the CUDA simulator); asking for a production variant of one of them raises
``registry.ImplUnavailable``. The production path of attention is not a set of faster stages but the
whole attention fused into one kernel: registry stage ``attn_fused``, whose ``production`` is the
sm_90a kernel of ``pipelines.fmha_sm90`` (TMA ring, wgmma for both GEMMs, online softmax in
registers; bfloat16 / float16, D in {16, 64, 128, 256}, H100-verified) and whose ``reference`` is
this staged pipeline. ``fmha`` picks it under ``auto`` where it can run, or by
``impls="production"`` / ``impls={"attn_fused": ...}``; the staged stages run for everything else
(float32, ``return_intermediates``, Tk = 0, no sm_90a / sm_100a GPU).

Which keys a query sees (shared by every stage; the softmax stage gets the same rule through its
``lengths`` / ``causal_offset`` arguments)::

    L(b, i) = min(kv_len[b], i + coff + 1 if causal)   clipped to [0, Tk],   coff = Tk - Tq

Query i of batch b attends to keys j < L(b, i). Keys j >= L(b, i) are never read by any stage (so a
cache may hold garbage, even NaN, past its length); their S entries are -inf and P entries 0.

GQA head mapping: query head hq reads key/value head ``hq // (Hq // Hkv)`` (MHA: Hq = Hkv, MQA:
Hkv = 1) -- consecutive query heads share a KV head, as in DeepSeek / Llama / torch SDPA's
``enable_gqa``.

Element kinds: q, k, v arrive as float32, float16 or bfloat16 bits (uint16), one ``kind`` argument
(``runtime.F32`` / ``F16`` / ``BF16``) per array, read through ``hw.bits.load_as_f32``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, int64

from .. import registry
from ..hw.bits import load_as_f32, store_from_f32
from ..runtime import BF16, F16, ArrayIO, kernel, mode
from ..runtime import device as devfn

NEG_INF = float32(-math.inf)


def threads_per_block() -> int:
    """32 under the simulator (every thread is a Python thread), 256 on a GPU."""
    return 32 if mode() == "sim" else 256


@devfn
def visible_keys(b, i, Tk, kv_len, coff, has_causal):
    """L(b, i): query i of batch b sees keys j < L (module docstring). int64, in [0, Tk]."""
    L = min(max(int64(kv_len[b]), int64(0)), int64(Tk))     # device lengths are clamped here
    if has_causal:
        L = min(L, max(int64(i) + coff + 1, int64(0)))
    return L


# ----------------------------------------------------------------------------------------------
# QK GEMM (reference)
# ----------------------------------------------------------------------------------------------
# Napkin math (prefill B=4, Hq=16, T=4096, D=128; H100 ~990 TFLOP/s bf16 wgmma, ~3.35 TB/s):
# 2*B*Hq*Tq*Tk*D = 275 GFLOP -- 0.28 ms at the wgmma rate, ~5.5 ms at the ~50 TFLOP/s of float32
# FMA pipes a thread-per-score kernel could reach at best. It WRITES B*Hq*Tq*Tk float32 scores:
# 4.3 GB (~1.3 ms of HBM) -- the staged pipeline is bound by its intermediates, not by math, which
# is why the production kernel keeps S in registers. Each thread reads one q row (D values, shared
# by the Tk threads of its row: L1/L2 hits) and one k row (read by all Tq*Hq/Hkv query rows that
# share its KV head: L2 traffic, Tq*Hq/Hkv times). Decode (Tq=1, Tk=8192, Hq=64, Hkv=8, B=64):
# 8.6 GFLOP, 268 MB of K read once from HBM (~80 us) -> memory-bound even fused.
@kernel
def qk_ref_kernel(q, qkind, k, kkind, kv_len, coff, has_causal, B, Tq, Tk, Hq, Hkv, D, scale, s):
    """s[b, hq, i, j] = scale * sum_d q[b, i, hq, d] * k[b, j, hq // (Hq/Hkv), d]   (float32).

    One thread per score (flat index ((b*Hq + hq)*Tq + i)*Tk + j). The dot product accumulates in
    float32 in ascending d (FMA-contracted on a GPU), then one multiply by ``scale`` (a float32).
    Keys j >= L(b, i) are not read: their score is written as -inf.
    q, k: flat [B*Tq*Hq*D], [B*Tk*Hkv*D]; float32 / float16 arrays or bfloat16 bits (``*kind``).
    """
    t = cuda.grid(1)
    if t >= B * Hq * Tq * Tk:
        return
    j = t % Tk
    r = t // Tk
    i = r % Tq
    bh = r // Tq
    hq = bh % Hq
    b = bh // Hq
    if j >= visible_keys(b, i, Tk, kv_len, coff, has_causal):
        s[t] = NEG_INF
        return
    hk = hq // (Hq // Hkv)
    qb = ((int64(b) * Tq + i) * Hq + hq) * D
    kb = ((int64(b) * Tk + j) * Hkv + hk) * D
    acc = float32(0.0)
    for d in range(D):
        acc += load_as_f32(q, qb + d, qkind) * load_as_f32(k, kb + d, kkind)
    s[t] = acc * scale


def qk_reference(q, qkind, k, kkind, kv_len, causal_offset, B, Tq, Tk, Hq, Hkv, D, scale):
    """Launch the reference QK GEMM on kernel-side arrays; returns S float32 flat
    [B*Hq*Tq*Tk] (kernel-side: NumPy under the simulator, a device array on a GPU).

    Constraints: q, k flat contiguous kernel-side arrays of kinds ``qkind`` / ``kkind``; kv_len
    int32 [B] kernel-side; ``causal_offset`` an int (Tk - Tq) or None (not causal); Hq a multiple
    of Hkv; scale a positive finite float (rounded to float32).
    """
    io = ArrayIO()
    s = io.empty(B * Hq * Tq * Tk, np.float32)
    nt = threads_per_block()
    if s.size:
        qk_ref_kernel.launch(-(-s.size // nt), nt, q, qkind, k, kkind, kv_len,
                             causal_offset or 0, causal_offset is not None, B, Tq, Tk, Hq, Hkv, D,
                             np.float32(scale), s)
    return s


# ----------------------------------------------------------------------------------------------
# PV GEMM (reference)
# ----------------------------------------------------------------------------------------------
# Napkin math (same prefill shape): 2*B*Hq*Tq*Tk*D = 275 GFLOP again; it READS the 4.3 GB of P
# written by the softmax (~1.3 ms) plus V (L2-resident per head), writes B*Tq*Hq*D float32 O
# (134 MB). Bound by P's traffic. One thread per output element walks a P row (shared by the D
# threads of the row) and a V column (stride Hkv*D: uncoalesced across j, coalesced across the
# threads d of a warp). Decode: 268 MB of V once from HBM -> memory-bound.
@kernel
def pv_ref_kernel(p, v, vkind, kv_len, coff, has_causal, B, Tq, Tk, Hq, Hkv, D, o):
    """o[b, i, hq, d] = sum_{j < L(b,i)} p[b, hq, i, j] * v[b, j, hq // (Hq/Hkv), d]  (float32).

    One thread per output element (flat index ((b*Tq + i)*Hq + hq)*D + d), j ascending, float32
    accumulate. Only the visible keys are read (their P is the softmax's; the rest of the row is 0
    and V there may be anything). A query that sees no key gets exactly 0.
    p: flat float32 [B*Hq*Tq*Tk]; v: flat [B*Tk*Hkv*D] float32 / float16 / bfloat16 bits.
    """
    t = cuda.grid(1)
    if t >= B * Tq * Hq * D:
        return
    d = t % D
    r = t // D
    hq = r % Hq
    bi = r // Hq
    i = bi % Tq
    b = bi // Tq
    L = visible_keys(b, i, Tk, kv_len, coff, has_causal)
    hk = hq // (Hq // Hkv)
    pb = ((int64(b) * Hq + hq) * Tq + i) * Tk
    acc = float32(0.0)
    for j in range(L):
        acc += p[pb + j] * load_as_f32(v, ((int64(b) * Tk + j) * Hkv + hk) * D + d, vkind)
    o[t] = acc


def pv_reference(p, v, vkind, kv_len, causal_offset, B, Tq, Tk, Hq, Hkv, D):
    """Launch the reference PV GEMM; returns O float32 flat [B*Tq*Hq*D] (kernel-side).

    Constraints: p float32 flat [B*Hq*Tq*Tk] (the softmax stage's output, rows normalised); v flat
    contiguous of kind ``vkind``; kv_len / causal_offset exactly as given to ``qk_reference``.
    """
    io = ArrayIO()
    o = io.empty(B * Tq * Hq * D, np.float32)
    nt = threads_per_block()
    if o.size:
        pv_ref_kernel.launch(-(-o.size // nt), nt, p, v, vkind, kv_len, causal_offset or 0,
                             causal_offset is not None, B, Tq, Tk, Hq, Hkv, D, o)
    return o


# ----------------------------------------------------------------------------------------------
# Epilogue (reference)
# ----------------------------------------------------------------------------------------------
# Napkin math: 4 B in + 2 B out per element (bf16), ~0 FLOPs: B*Tq*Hq*D = 33.5M elements at the
# prefill shape -> 201 MB, ~65 us. Pure bandwidth; in a fused kernel it is the register epilogue
# before the (TMA) store.
@kernel
def epilogue_ref_kernel(o, kind, out):
    """out[t] = o[t] rounded to the output kind: float32 as is, float16 / bfloat16 round to
    nearest even (bfloat16 stored as its uint16 bits; NaN stays NaN). One thread per element."""
    t = cuda.grid(1)
    if t < o.size:
        store_from_f32(out, t, o[t], kind)


def epilogue_reference(o, kind):
    """Round float32 O (flat, kernel-side) to the output dtype ``kind``; returns the flat output
    (float32, float16, or uint16 bfloat16 bits; kernel-side)."""
    io = ArrayIO()
    out = io.empty(o.size, np.uint16 if kind == BF16 else np.float16 if kind == F16 else np.float32)
    nt = threads_per_block()
    if out.size:
        epilogue_ref_kernel.launch(-(-out.size // nt), nt, o, kind, out)
    return out


# ----------------------------------------------------------------------------------------------
# Per-row lengths for the softmax stage (device kv_lengths only; host lengths use np.repeat)
# ----------------------------------------------------------------------------------------------
# Napkin math: B*Hq*Tq int32 writes (4 B each) -- noise next to S.
@kernel
def repeat_lengths_kernel(src, rep, dst):
    """dst[t] = src[t // rep]: per-batch key lengths [B] -> per-softmax-row lengths [B*rep]."""
    t = cuda.grid(1)
    if t < dst.size:
        dst[t] = src[t // rep]


def repeat_lengths(lens, rep):
    """int32 [B] kernel-side -> int32 [B * rep] kernel-side, each length repeated ``rep`` times."""
    io = ArrayIO()
    dst = io.empty(lens.shape[0] * rep, np.int32)
    nt = threads_per_block()
    if dst.size:
        repeat_lengths_kernel.launch(-(-dst.size // nt), nt, lens, rep, dst)
    return dst


registry.register("attn_qk", "reference")(qk_reference)
registry.register("attn_pv", "reference")(pv_reference)
registry.register("attn_epilogue", "reference")(epilogue_reference)

__all__ = ["visible_keys", "qk_ref_kernel", "pv_ref_kernel", "epilogue_ref_kernel",
           "qk_reference", "pv_reference", "epilogue_reference", "threads_per_block",
           "repeat_lengths_kernel", "repeat_lengths"]
