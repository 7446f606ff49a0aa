"""Stages of the staged sparse-attention indexer: FP8 decode, score GEMM, ReLU-weighted head sum.

The pipeline (``dsv4_numba.pipelines.indexer``) strings these together with the FP4 decode stage
(``stages.fp4``) and the top-k stage (``stages.topk``)::

    decode (FP4 -> f32 | FP8 -> f32)  ->  indexer_scores  ->  indexer_reduce  ->  topk
            [T,H,D], [rows,D]             logits [T,H,N]      scores [T,N]        [T,k]

Every intermediate lives in global memory (staged mode), so each stage can be swapped and checked
on its own. Only ``reference`` implementations exist here (readable, one thread per output
element; they run under the CUDA simulator). The production path of the indexer is a fused sm_90a
kernel (wgmma + TMA), not built yet.

Addressing keys through a paged cache
-------------------------------------
Keys live in a cache of ``rows = num_pages * page_size`` physical rows of D values. Logical key n
of query token t is the physical row::

    row(t, n) = block_table[t if table_rows > 1 else 0, n // page_size] * page_size + n % page_size

A contiguous cache [N, D] is the special case num_pages = 1, page_size = N, block_table = [[0]],
so paged and contiguous caches run the SAME arithmetic in the same order (bitwise equal results).
``Paging`` carries the table (flat int32, kernel-side) and its geometry.

The V3.2 FP8 format (``QuantizedFP8``)
--------------------------------------
Codes are E4M3FN bytes (``formats.e4m3_encode`` / ``e4m3_decode``: bias 7, max 448, 0x7F/0xFF NaN);
one float32 scale per ``block`` (128) consecutive values of the last axis; value = e4m3(code) *
scale (one float32 multiply). DeepSeek-V3.2's ``act_quant``: scale = max(amax, 1e-4) / 448. With
D = 128 a key row has ONE scale s_n > 0, so ``ReLU(q . (s_n k)) = s_n ReLU(q . k)``: V3.2 scores
keys with the raw E4M3 values and multiplies the head sum by s_n (``indexer_reduce``'s ``kscale``).
[It belongs in ``formats/`` -- defined here until the formats owner takes it.]
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import cuda, float32, int64

from .. import registry
from ..formats.fp8 import QuantizedFP8
from ..hw.bits import load_as_f32
from ..runtime import ArrayIO, kernel, mode
from ..runtime import device as devfn
from .fp4 import E4M3, scale_value



def threads_per_block() -> int:
    """32 under the simulator (every thread is Python), 256 on a GPU."""
    return 32 if mode() == "sim" else 256


# ----------------------------------------------------------------------------------------------
# Paging
# ----------------------------------------------------------------------------------------------
@dataclass
class Paging:
    """Kernel-side block table: ``table`` flat int32 [table_rows * max_pages]; see module doc."""
    table: object
    table_rows: int
    max_pages: int
    page_size: int


@devfn
def cache_row(table, table_rows, max_pages, page_size, t, n):
    """Physical cache row of logical key n for query token t (int64: rows * D may pass 2^31)."""
    r = t if table_rows > 1 else 0
    page = int64(table[r * max_pages + n // page_size])
    return page * page_size + n % page_size


# ----------------------------------------------------------------------------------------------
# FP8 decode (reference)
# ----------------------------------------------------------------------------------------------
# Napkin math (V3.2 k cache, N = 131072 rows x D = 128): 1 B in + 4 B out + 4/128 B scale per
# value = 5.03 B -> 84 MB, ~28 us at ~3 TB/s; one E4M3 decode (~8 integer ops) + 1 fmul per value
# -> memory-bound. The fused kernel never materialises this: E4M3 feeds wgmma directly.
@kernel
def fp8_decode_ref_kernel(codes, scales, D, block, nblk, with_scales, out):
    """One thread per value: out[i] = e4m3(codes[i]) [* scales[row, d // block]] (float32).

    codes uint8 flat [rows * D], scales float32 flat [rows * nblk], out float32 flat.
    """
    i = cuda.grid(1)
    if i < codes.size:
        v = scale_value(codes[i], E4M3)           # the E4M3 decode of stages.fp4 (NaN codes: NaN)
        if with_scales:
            v = v * scales[(i // D) * nblk + (i % D) // block]
        out[i] = v


def decode_fp8_reference(q: QuantizedFP8, with_scales: bool = True):
    """float32 array of q's shape (NumPy in -> NumPy out; device in -> device out).

    ``with_scales=False`` returns the bare E4M3 values (V3.2 keys: the scale multiplies the head sum
    instead). Constraints: C-contiguous codes / scales, as built by ``QuantizedFP8``.
    """
    io = ArrayIO(q.codes, q.scales)
    codes = io.to_kernel(q.codes).reshape(-1)
    scales = io.to_kernel(q.scales).reshape(-1)
    out = io.empty(codes.size, np.float32)
    nt = threads_per_block()
    if codes.size:
        fp8_decode_ref_kernel.launch(-(-codes.size // nt), nt, codes, scales, q.shape[-1], q.block,
                                     q.blocks_per_row, with_scales, out)
    return io.result(out).reshape(q.shape)


# ----------------------------------------------------------------------------------------------
# Score GEMM (reference)
# ----------------------------------------------------------------------------------------------
# Napkin math (DeepSeek: H = 64, D = 128; T query tokens, N keys): 2*T*H*N*D flops, e.g. T = 64,
# N = 65536: 68.7 GFLOP -- 69 us at the H100's ~990 TFLOP/s bf16 wgmma rate, ~1.4 ms at the
# ~50 TFLOP/s of float32 FMA pipes this thread-per-logit kernel could reach at best. It also
# writes T*H*N float32 logits = 64*4 = 256 B per key per token (1.07 GB here, ~360 us of HBM):
# the staged pipeline is bound by its intermediates, which is why the production kernel fuses the
# head sum into the GEMM epilogue. Each thread reads D q values (cached: shared by the N threads
# of a head) and D key values (a row, read by every (t, h): H*T times from L2).
@kernel
def scores_ref_kernel(q, qkind, k, kkind, table, table_rows, max_pages, page_size, valid_len,
                      T, H, N, D, logits):
    """logits[t, h, n] = sum_d q[t, h, d] * key(t, n)[d]  (float32, d ascending).

    One thread per logit (flat index (t*H + h)*N + n). q: [T*H*D] float32 or bfloat16 bits
    (``qkind``); k: [rows*D] likewise (``kkind``); keys addressed through the block table
    (``cache_row``). Positions n >= valid_len[t] are not computed: their logit is written as 0.
    """
    i = cuda.grid(1)
    if i >= T * H * N:
        return
    n = i % N
    th = i // N
    t = th // H
    if n >= valid_len[t]:
        logits[i] = float32(0.0)
        return
    row = cache_row(table, table_rows, max_pages, page_size, t, n)
    qb = int64(th) * D
    kb = row * D
    acc = float32(0.0)
    for d in range(D):
        acc += load_as_f32(q, qb + d, qkind) * load_as_f32(k, kb + d, kkind)
    logits[i] = acc


def scores_reference(q, qkind, k, kkind, paging: Paging, valid_len, T, H, N, D):
    """Launch the reference score GEMM on kernel-side arrays; returns float32 logits [T*H*N]
    (kernel-side: NumPy under the simulator, a device array on a GPU)."""
    io = ArrayIO()
    logits = io.empty(T * H * N, np.float32)
    nt = threads_per_block()
    if logits.size:
        scores_ref_kernel.launch(-(-logits.size // nt), nt, q, qkind, k, kkind, paging.table,
                                 paging.table_rows, paging.max_pages, paging.page_size, valid_len,
                                 T, H, N, D, logits)
    return logits


# ----------------------------------------------------------------------------------------------
# ReLU-weighted head reduction (reference)
# ----------------------------------------------------------------------------------------------
# Napkin math: reads T*H*N float32 logits (256 B per key per token at H = 64) and writes T*N
# scores (4 B); 2H flops per score. Pure bandwidth: T = 64, N = 65536 reads 1.07 GB, ~360 us on an
# H100 -- the same traffic the GEMM stage wrote. In the fused kernel this is a register epilogue.
@kernel
def head_reduce_ref_kernel(logits, w, wkind, kscale, has_kscale, table, table_rows, max_pages,
                           page_size, valid_len, T, H, N, scores):
    """scores[t, n] = sum_h w[t, h] * ReLU(logits[t, h, n])  [* kscale[row(t, n)]]  (float32, h
    ascending; the k scale multiplies the finished head sum, as in V3.2).

    One thread per score. ReLU(x) is taken as ``x if x > 0 else 0`` (a NaN logit contributes 0 on
    GPU and simulator alike; the pipeline rejects NaN inputs before launch). n >= valid_len[t]:
    -inf (never selected; top-k also gets the lengths).
    """
    i = cuda.grid(1)
    if i >= T * N:
        return
    n = i % N
    t = i // N
    if n >= valid_len[t]:
        scores[i] = float32(-math.inf)
        return
    s = float32(0.0)
    for h in range(H):
        x = logits[(int64(t) * H + h) * N + n]
        if x > float32(0.0):
            s += load_as_f32(w, t * H + h, wkind) * x
    if has_kscale:
        s = s * kscale[cache_row(table, table_rows, max_pages, page_size, t, n)]
    scores[i] = s


def reduce_reference(logits, w, wkind, kscale, paging: Paging, valid_len, T, H, N):
    """Launch the reference head reduction; ``kscale`` None or float32 [rows] kernel-side.
    Returns float32 scores [T*N] (kernel-side)."""
    io = ArrayIO()
    scores = io.empty(T * N, np.float32)
    has = kscale is not None
    ks = kscale if has else (io.to_kernel(np.ones(1, np.float32)))
    nt = threads_per_block()
    if scores.size:
        head_reduce_ref_kernel.launch(-(-scores.size // nt), nt, logits, w, wkind, ks, has,
                                      paging.table, paging.table_rows, paging.max_pages,
                                      paging.page_size, valid_len, T, H, N, scores)
    return scores


registry.register("indexer_decode_fp8", "reference")(decode_fp8_reference)
registry.register("indexer_scores", "reference")(scores_reference)
registry.register("indexer_reduce", "reference")(reduce_reference)

__all__ = ["Paging", "cache_row", "fp8_decode_ref_kernel", "scores_ref_kernel",
           "head_reduce_ref_kernel", "decode_fp8_reference", "scores_reference", "reduce_reference"]
