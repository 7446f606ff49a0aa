"""Row softmax stage: masked, scaled, with an attention sink and the log-sum-exp; plus the
online-softmax building blocks that fused attention kernels use.

What it computes (the contract; ``softmax`` below states the constraints)
--------------------------------------------------------------------------
For a row ``x[r, :]`` of length N (the last axis; all leading axes are rows), a scale ``s > 0``,
the row's valid length ``L_r`` and an optional sink logit ``k_r``::

    z_j   = s * x[r, j]                       for the valid columns j < L_r
    D     = sum_j exp(z_j) + exp(k_r)         (the sink term only when a sink is given)
    p_j   = exp(z_j) / D   (j < L_r),   p_j = 0   (j >= L_r: masked)
    lse_r = log(D)                            (natural log, sink included)

* Valid length: ``L_r = min(lengths[r], t_r + causal_offset + 1)`` clipped to [0, N], each term only
  when given. ``t_r`` is the row's index along axis -2 (the query position of a [..., T, N] score
  matrix; 0 for 1-D input), so with ``causal_offset = N - T`` query t sees keys 0..N-T+t. Masking
  is always a prefix of the row, so ``lengths`` alone expresses any causal layout (e.g. heads
  after queries: pass lengths = t + offset + 1).
* Sink: a logit in the *scaled* domain (not multiplied by ``scale``), as DeepSeek-V4 / gpt-oss
  attention sinks are: it adds ``exp(k_r)`` to the denominator and gets no output column.
  ``sink`` broadcasts against the row shape ``x.shape[:-1]`` (NumPy rules) -- ``[H]`` for rows laid
  out [..., H, N], ``[H, 1]`` for [B, H, T, N], a scalar for every row -- as long as its non-unit
  axes form one contiguous run (then row r reads ``sink[(r // div) % size]``).
* Nothing valid (``L_r == 0``, or every valid logit is -inf): zeros, and ``lse = -inf`` without a
  sink, ``lse = k_r`` with one (the denominator still holds the sink: lse is always log D).
* NaN among the valid logits or in the sink, or a +inf valid logit (or sink): the row is NaN
  (probabilities and lse), as in ``torch.softmax``. Masked positions are never read.
* Output dtype = input dtype: float32 -> float32; bfloat16 -> bfloat16 (the float32 probability
  rounded to nearest even). ``lse`` is float32.

Implementations (stage registry name ``softmax``)
-------------------------------------------------
* ``reference`` -- one block per row, strided loops, shared-memory tree reductions, natural exp;
  three passes over the row (max, sum, write). Runs on any GPU and under the CUDA simulator.
* ``production:sm_90a`` -- rows up to 16384: a row is held in registers by 1..32 warps (<= 16
  values a thread), read once with 16-byte ``ld.global.nc.v4`` loads, reduced with
  ``shfl.xor`` (warp) and, across warps, one shared-memory word per warp; exp2 with log2(e)
  folded into the scale (one FFMA + ex2 per element); written once with 16-byte stores.
  Longer rows are split across blocks: a stats pass writes each 4096-column chunk's (max, sum)
  pair, a normalize pass merges the row's pairs and rewrites the chunk (reads the row twice).
  Rows whose length or base address is not a multiple of 16 bytes use scalar loads.

Napkin math (H100: ~3.0 TB/s device copy, 132 SMs)
---------------------------------------------------
Softmax is memory-bound: per element 4 B (fp32) or 2 B (bf16) in and the same out, ~4 FP ops.
(4096, 4096) fp32: 64 MiB in + 64 MiB out = 134 MB -> ~45 us at copy speed; (65536, 2048) fp32:
1.07 GB -> ~360 us; bf16 halves both. (64, 131072) fp32 on the split path moves 3 x 33.5 MB (read,
re-read, write) -> ~34 us if the re-read misses L2 (the 33.5 MB row block mostly stays in the 50 MB
L2, so closer to 2 x). The reference reads every row three times and reduces through shared memory;
expect ~2x slower than production for long rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np
from numba import cuda, float32, int64, uint32

from .. import registry
from ..hw.bits import bits_f32, f32_bits, load_as_f32, store_from_f32
from ..hw.portable import address_of, ldg_v4, pack_bf16x2, shfl_xor, stg_v4
from ..runtime import BF16, F32, ArrayIO, device, is_device_array, kernel, mode
from ..runtime.arrays import check_lengths
from ..runtime.arrays import float_kind as _float_kind
from ..runtime.arrays import is_contiguous as _is_contiguous
from ..runtime.arrays import typestr as _typestr

try:  # the PTX bindings; absent only when numba itself runs as the simulator
    from ..hw import ops
except ImportError:  # pragma: no cover
    ops = None

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
NEG_INF = float32(-math.inf)

# ----------------------------------------------------------------------------------------------
# The oracle: float64 NumPy, written from the contract above, one row at a time
# ----------------------------------------------------------------------------------------------
def softmax_oracle(x, scale=1.0, lengths=None, causal_offset=None, sink=None):
    """(p, lse) in float64 for NumPy ``x`` (float32 or ml_dtypes.bfloat16): the contract, plainly.

    Slow (a Python loop over rows); meant for tests and for checking results of real sizes once.
    """
    x64 = np.asarray(x).astype(np.float64)
    shape = x64.shape
    lead, n = shape[:-1], shape[-1]
    rows = x64.reshape(-1, n)
    R = rows.shape[0]
    T = lead[-1] if lead else 1
    L = np.full(R, n, np.int64)
    if lengths is not None:
        L = np.minimum(L, np.clip(np.asarray(lengths).reshape(-1), 0, n))
    if causal_offset is not None:
        L = np.minimum(L, np.clip(np.arange(R) % T + causal_offset + 1, 0, n))
    s = np.full(R, -np.inf)
    if sink is not None:
        s = np.broadcast_to(np.asarray(sink, np.float64), lead).reshape(-1)
    p = np.zeros_like(rows)
    lse = np.empty(R)
    with np.errstate(invalid="ignore", over="ignore"):
        for r in range(R):
            z = np.append(scale * rows[r, :L[r]], s[r])
            m = np.nan if np.isnan(z).any() else z.max()
            if m == -np.inf:                 # nothing valid: zeros, lse -inf
                lse[r] = -np.inf
                continue
            e = np.exp(z - m)                # m = +inf gives NaN, as documented
            d = e.sum()
            p[r, :L[r]] = e[:-1] / d
            if np.isnan(d):
                p[r, :] = np.nan
            lse[r] = m + np.log(d)
    return p.reshape(shape), lse.reshape(lead)


# ----------------------------------------------------------------------------------------------
# Online softmax building blocks
# ----------------------------------------------------------------------------------------------
# A fused attention kernel sees a row's logits one tile at a time. It keeps (m, l): the running max
# and the running sum of exp(z - m), and an output accumulator O = sum_j exp(z_j - m) v_j. For a new
# tile with max tm:
#
#     m_new = online_max(m, tm)
#     alpha = online_rescale(m, m_new)          # multiply l AND the accumulator O by alpha
#     p_j   = online_weight(z_j, m_new)         # l = l * alpha + sum_j p_j ; O = O * alpha + p @ V
#     ... at the end: O / l  and  lse = online_lse(m, l)
#
# Partial states of the same row (two halves, two warps, two split-KV blocks) combine with
# online_merge. "-inf" is the state of nothing seen: weights against it are 0, never NaN.
#
# The production form works in the log2 domain: t = x * c with c = scale * log2(e), one FFMA and
# one ex2 per element: p = exp2(x * c + bias) with bias = online_bias_exp2(m) (= -m, or 0 when m is
# -inf so that masked -inf logits give exp2(-inf) = 0). Its lse converts back to natural log.


@device
def online_max(m, v):
    """Running max (both forms)."""
    return v if v > m else m


@device
def online_rescale(m_old, m_new):
    """exp(m_old - m_new): the factor that moves l and O from max m_old to max m_new."""
    if m_old == m_new:       # includes -inf == -inf (nothing seen yet): no change, not NaN
        return float32(1.0)
    return math.exp(m_old - m_new)


@device
def online_weight(z, m):
    """exp(z - m) for a logit z under running max m (0 while m is -inf)."""
    if m == NEG_INF:
        return float32(0.0)
    return math.exp(z - m)


@device
def online_merge(m1, l1, m2, l2):
    """Combine two partial (max, sum) states of one row."""
    m = online_max(m1, m2)
    return m, l1 * online_rescale(m1, m) + l2 * online_rescale(m2, m)


@device
def online_lse(m, l):
    """Natural log-sum-exp of a finished state; -inf when nothing contributed."""
    if l == 0:
        return NEG_INF
    return m + math.log(l)


@device
def online_bias_exp2(m):
    """The additive exponent offset for a log2-domain running max m: -m, or 0 while m is -inf."""
    if m == NEG_INF:
        return float32(0.0)
    return -m


@device
def online_weight_exp2(x, c, bias):
    """exp2(x * c + bias): one FFMA + one ex2 (c = scale * log2 e, bias = online_bias_exp2(m))."""
    return math.exp2(x * c + bias)


@device
def online_rescale_exp2(m_old, m_new):
    """exp2(m_old - m_new) for log2-domain maxima."""
    if m_old == m_new:
        return float32(1.0)
    return math.exp2(m_old - m_new)


@device
def online_merge_exp2(m1, l1, m2, l2):
    """Combine two partial log2-domain (max, sum) states of one row."""
    m = online_max(m1, m2)
    return m, l1 * online_rescale_exp2(m1, m) + l2 * online_rescale_exp2(m2, m)


@device
def online_lse_exp2(m, l):
    """Natural log-sum-exp of a finished log2-domain state: (m + log2 l) * ln 2."""
    if l == 0:
        return NEG_INF
    return (m + math.log2(l)) * float32(LN2)


@kernel
def online_softmax_stream_kernel(x, v, n, scale, tile, use_exp2, two_states, lse, o):
    """Streams each row in tiles of ``tile`` columns, as a fused attention kernel does.

    One thread per row of the flattened [R, n] ``x``: keeps (m, l) and O = sum_j p_j v[r, j] with
    the building blocks above (natural form, or log2 form when ``use_exp2``); with ``two_states``
    the even tiles and odd tiles go to two separate states merged at the end (online_merge). Writes
    lse[r] and o[r] = O / l -- which must equal log(sum exp(scale x)) and softmax(scale x) @ v.
    A test kernel and a usage example: n * R small, no speed intended.
    """
    r = cuda.grid(1)
    if r >= lse.size:
        return
    c = float32(scale * LOG2E) if use_exp2 else float32(scale)
    m_a = NEG_INF
    l_a = float32(0.0)
    o_a = float32(0.0)
    m_b = NEG_INF
    l_b = float32(0.0)
    o_b = float32(0.0)
    k = 0
    for t0 in range(0, n, tile):
        t1 = min(t0 + tile, n)
        use_b = two_states and (k % 2 == 1)
        m = m_b if use_b else m_a
        l = l_b if use_b else l_a
        acc = o_b if use_b else o_a
        tm = NEG_INF
        for j in range(t0, t1):
            tm = online_max(tm, x[r * n + j] * c)
        m_new = online_max(m, tm)
        alpha = online_rescale_exp2(m, m_new) if use_exp2 else online_rescale(m, m_new)
        l *= alpha
        acc *= alpha
        bias = online_bias_exp2(m_new)
        for j in range(t0, t1):
            if use_exp2:
                p = online_weight_exp2(x[r * n + j], c, bias)
            else:
                p = online_weight(x[r * n + j] * c, m_new)
            l += p
            acc += p * v[r * n + j]
        if use_b:
            m_b, l_b, o_b = m_new, l, acc
        else:
            m_a, l_a, o_a = m_new, l, acc
        k += 1
    # merge the two states; the accumulators rescale exactly like the sums
    m = online_max(m_a, m_b)
    if use_exp2:
        ra, rb = online_rescale_exp2(m_a, m), online_rescale_exp2(m_b, m)
        l = l_a * ra + l_b * rb
        lse[r] = online_lse_exp2(m, l)
    else:
        ra, rb = online_rescale(m_a, m), online_rescale(m_b, m)
        l = l_a * ra + l_b * rb
        lse[r] = online_lse(m, l)
    acc = o_a * ra + o_b * rb
    o[r] = acc / l if l != 0 else float32(0.0)


# ----------------------------------------------------------------------------------------------
# Shared by every implementation
# ----------------------------------------------------------------------------------------------
@device
def effective_length(row, n, lengths, has_len, T, coff, has_causal):
    """L_r = min(lengths[r], t + coff + 1) clipped to [0, n] (t = row % T, each term when given)."""
    L = int64(n)
    if has_len:
        L = min(max(int64(lengths[row]), int64(0)), L)
    if has_causal:
        L = min(L, max(int64(row % T) + coff + 1, int64(0)))
    return L


@device
def sink_logit(row, sink, sink_div, sink_mod, has_sink):
    """The sink logit of a row (scaled-domain units), -inf when there is none."""
    if has_sink:
        return float32(sink[(row // sink_div) % sink_mod])
    return NEG_INF


# ----------------------------------------------------------------------------------------------
# Reference kernel
# ----------------------------------------------------------------------------------------------
@device
def block_max(red, v):
    """Max of v over the block (blockDim.x a power of two <= 1024), by shared-memory tree."""
    tid = cuda.threadIdx.x
    red[tid] = v
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s and red[tid + s] > red[tid]:
            red[tid] = red[tid + s]
        cuda.syncthreads()
        s //= 2
    r = red[0]
    cuda.syncthreads()       # red is reused by the next reduction
    return r


@device
def block_sum(red, v):
    """Sum of v over the block (blockDim.x a power of two <= 1024), by shared-memory tree."""
    tid = cuda.threadIdx.x
    red[tid] = v
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            red[tid] += red[tid + s]
        cuda.syncthreads()
        s //= 2
    r = red[0]
    cuda.syncthreads()
    return r


# One block per row, blockDim.x threads stride over it three times: max, sum, write.
# Bytes: 3 reads + 1 write of the row (the re-reads hit L1/L2 for short rows); 2 block
# reductions of log2(blockDim) shared-memory steps each. Latency-bound for short rows.
@kernel
def softmax_ref_kernel(x, out, lse, n, lengths, has_len, T, coff, has_causal,
                       sink, sink_div, sink_mod, has_sink, scale, kind):
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    red = cuda.shared.array(1024, float32)
    L = effective_length(row, n, lengths, has_len, T, coff, has_causal)
    base = int64(row) * n
    m = NEG_INF
    for j in range(tid, L, nt):
        m = online_max(m, scale * load_as_f32(x, base + j, kind))
    m = online_max(block_max(red, m), sink_logit(row, sink, sink_div, sink_mod, has_sink))
    acc = float32(0.0)
    for j in range(tid, L, nt):
        acc += online_weight(scale * load_as_f32(x, base + j, kind), m)
    l = block_sum(red, acc) + online_weight(sink_logit(row, sink, sink_div, sink_mod, has_sink), m)
    inv = float32(0.0) if l == 0 else float32(1.0) / l      # NaN l stays NaN: a NaN row
    for j in range(tid, n, nt):
        p = float32(0.0)
        if j < L:
            p = online_weight(scale * load_as_f32(x, base + j, kind), m) * inv
        store_from_f32(out, base + j, p, kind)
    if tid == 0:
        lse[row] = online_lse(m, l)


# ----------------------------------------------------------------------------------------------
# Production kernels (sm_90a)
# ----------------------------------------------------------------------------------------------
@device
def warp_max(v):
    """Max over the 32 lanes (all lanes get it): 5 shfl.bfly steps."""
    off = 16
    while off > 0:
        v = online_max(v, shfl_xor(v, off))
        off //= 2
    return v


@device
def warp_sum(v):
    off = 16
    while off > 0:
        v += shfl_xor(v, off)
        off //= 2
    return v


@device
def group_max(red, v, wpr, g, lane):
    """Max over the wpr warps of row group g (warp_max first). One shared word per warp."""
    v = warp_max(v)
    if wpr > 1:                                   # uniform over the block
        red[cuda.threadIdx.x // 32] = v
        cuda.syncthreads()
        v = red[g * wpr + lane] if lane < wpr else NEG_INF
        v = warp_max(v)
    return v


@device
def group_sum(red, v, wpr, g, lane):
    v = warp_sum(v)
    if wpr > 1:
        red[cuda.threadIdx.x // 32] = v
        cuda.syncthreads()
        v = red[g * wpr + lane] if lane < wpr else float32(0.0)
        v = warp_sum(v)
    return v


@device
def unpack_bf16x2_lo(w):
    return bits_f32(w << 16)


@device
def unpack_bf16x2_hi(w):
    return bits_f32(w & uint32(0xFFFF0000))


MAX_PER_THREAD = 16          # row values a thread holds in registers (plus ~20 other registers)
MAX_ROW_WARPS = 32           # 1024 threads: rows up to 32 * 32 * 16 = 16384 stay in registers
SPLIT_THREADS = 256
SPLIT_CHUNK = SPLIT_THREADS * MAX_PER_THREAD     # 4096 columns per block on the split path


def _vec(kind, vectorized):
    return (8 if kind == BF16 else 4) if vectorized else 1


def max_row_warps(vec: int) -> int:
    """Warps one row may use: 32 (1024 threads, <= 64 registers) with 16-byte loads; the scalar
    path needs ~70 registers for 16 values (address arithmetic per element), so 16 warps."""
    return MAX_ROW_WARPS if vec > 1 else MAX_ROW_WARPS // 2




@device
def load_vec(x, src, base, col, L, vals, i0, kind, VEC):
    """VEC elements at columns col.. of the row at element offset base into vals[i0..] as float32,
    -inf at and beyond L. VEC > 1: one 16-byte ld.global.nc.v4 (4 float32 or 8 bfloat16); the
    caller guarantees base and col are multiples of VEC, and col < L implies col + VEC <= n."""
    if VEC == 1:
        vals[i0] = load_as_f32(x, base + col, kind) if col < L else NEG_INF
    elif col < L:
        w0, w1, w2, w3 = ldg_v4(x, src, base + col, 2 if kind == BF16 else 4)
        if VEC == 4:
            vals[i0 + 0] = bits_f32(w0) if col + 0 < L else NEG_INF
            vals[i0 + 1] = bits_f32(w1) if col + 1 < L else NEG_INF
            vals[i0 + 2] = bits_f32(w2) if col + 2 < L else NEG_INF
            vals[i0 + 3] = bits_f32(w3) if col + 3 < L else NEG_INF
        else:
            vals[i0 + 0] = unpack_bf16x2_lo(w0) if col + 0 < L else NEG_INF
            vals[i0 + 1] = unpack_bf16x2_hi(w0) if col + 1 < L else NEG_INF
            vals[i0 + 2] = unpack_bf16x2_lo(w1) if col + 2 < L else NEG_INF
            vals[i0 + 3] = unpack_bf16x2_hi(w1) if col + 3 < L else NEG_INF
            vals[i0 + 4] = unpack_bf16x2_lo(w2) if col + 4 < L else NEG_INF
            vals[i0 + 5] = unpack_bf16x2_hi(w2) if col + 5 < L else NEG_INF
            vals[i0 + 6] = unpack_bf16x2_lo(w3) if col + 6 < L else NEG_INF
            vals[i0 + 7] = unpack_bf16x2_hi(w3) if col + 7 < L else NEG_INF
    else:
        for q in range(VEC):
            vals[i0 + q] = NEG_INF


@device
def store_vec(out, dst, base, col, vals, i0, inv, kind, VEC):
    """VEC probabilities vals[i0..] * inv to columns col..: scalar, or one 16-byte st.global.v4
    (4 float32, or 8 bfloat16 rounded to nearest even by cvt.rn.bf16x2.f32)."""
    if VEC == 1:
        store_from_f32(out, base + col, vals[i0] * inv, kind)
    elif VEC == 4:
        stg_v4(out, dst, base + col, 4, f32_bits(vals[i0] * inv), f32_bits(vals[i0 + 1] * inv),
               f32_bits(vals[i0 + 2] * inv), f32_bits(vals[i0 + 3] * inv))
    else:
        stg_v4(out, dst, base + col, 2, pack_bf16x2(vals[i0 + 1] * inv, vals[i0] * inv),
               pack_bf16x2(vals[i0 + 3] * inv, vals[i0 + 2] * inv),
               pack_bf16x2(vals[i0 + 5] * inv, vals[i0 + 4] * inv),
               pack_bf16x2(vals[i0 + 7] * inv, vals[i0 + 6] * inv))


@device
def load_chunk(x, src, base, c0, L, vals, kind, VEC, J):
    """The split path's chunk: J vectors a thread, vector j at c0 + (j * blockDim + t) * VEC."""
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for j in range(J):
        load_vec(x, src, base, c0 + int64(j * nt + t) * VEC, L, vals, j * VEC, kind, VEC)


_PROD_KERNELS: dict = {}


def rows_kernel(kind, vectorized, J):
    """Production kernel: rows in registers (N <= 16384).

    Block of B threads = B / (32 wpr) rows; row group g's thread t holds J vectors of VEC values,
    vector j at columns (j * 32 wpr + t) * VEC -- every warp-wide load is 32 consecutive 16-byte
    pieces (512 contiguous bytes). Per element: 1 load, 1 FFMA, 1 ex2, 1 FMUL, 1 store; per row:
    2 x (5 shuffles + at most one shared word per warp + one barrier).
    Bytes: N * esz in + N * esz out per row, once each: copy-bound by construction.
    """
    key = ("rows", kind, vectorized, J)
    if key in _PROD_KERNELS:
        return _PROD_KERNELS[key]
    VEC = _vec(kind, vectorized)
    V = VEC * J

    def softmax_rows(x, out, lse, n, n_rows, lengths, has_len, T, coff, has_causal,
                     sink, sink_div, sink_mod, has_sink, c, wpr):
        tid = cuda.threadIdx.x
        lane = tid & 31
        tpr = wpr * 32
        g = tid // tpr
        t = tid - g * tpr
        row = cuda.blockIdx.x * (cuda.blockDim.x // tpr) + g
        active = row < n_rows
        L = int64(0)
        if active:
            L = effective_length(row, n, lengths, has_len, T, coff, has_causal)
        red = cuda.shared.array(32, float32)
        red2 = cuda.shared.array(32, float32)
        src = address_of(x, VEC)
        dst = address_of(out, VEC)
        base = int64(row) * n
        vals = cuda.local.array(V, float32)
        for j in range(J):
            load_vec(x, src, base, int64(j * tpr + t) * VEC, L, vals, j * VEC, kind, VEC)
        mx = NEG_INF
        for i in range(V):
            mx = online_max(mx, vals[i])
        mx = group_max(red, mx, wpr, g, lane)
        s2 = NEG_INF
        if active:
            s2 = sink_logit(row, sink, sink_div, sink_mod, has_sink) * float32(LOG2E)
        m2 = online_max(mx * c, s2)
        bias = online_bias_exp2(m2)
        acc = float32(0.0)
        for i in range(V):
            e = online_weight_exp2(vals[i], c, bias)
            vals[i] = e
            acc += e
        l = group_sum(red2, acc, wpr, g, lane)
        if has_sink:
            l += math.exp2(s2 + bias)
        inv = float32(0.0) if l == 0 else float32(1.0) / l
        if active:
            for j in range(J):
                col = int64(j * tpr + t) * VEC
                if col < n:
                    store_vec(out, dst, base, col, vals, j * VEC, inv, kind, VEC)
            if t == 0:
                lse[row] = online_lse_exp2(m2, l)

    softmax_rows.__name__ = softmax_rows.__qualname__ = \
        f"softmax_rows_{'bf16' if kind == BF16 else 'f32'}_v{VEC}_j{J}"
    k = _PROD_KERNELS[key] = kernel(softmax_rows, launch_bounds=(max_row_warps(VEC) * 32,))
    return k


def split_kernels(kind, vectorized):
    """Production kernels for rows longer than 16384: (stats, normalize), one block per chunk.

    Block b handles chunk b % C of row b // C (blockDim x 16 columns: 4096 with 256 threads).
    stats: read the chunk once, write its log2-domain (max, sum) pair: 8 B per 4096 columns.
    normalize: merge the row's C pairs (C <= a few hundred, from L2), re-read the chunk, write it.
    Bytes: 2 N esz in (the second read mostly from L2) + N esz out.
    """
    key = ("split", kind, vectorized)
    if key in _PROD_KERNELS:
        return _PROD_KERNELS[key]
    VEC = _vec(kind, vectorized)
    J = MAX_PER_THREAD // VEC
    V = VEC * J
    TPB = SPLIT_THREADS

    def softmax_split_stats(x, part, n, nchunks, lengths, has_len, T, coff, has_causal, c):
        b = cuda.blockIdx.x
        row = b // nchunks
        chunk = b - row * nchunks
        nt = cuda.blockDim.x
        lane = cuda.threadIdx.x & 31
        red = cuda.shared.array(32, float32)
        red2 = cuda.shared.array(32, float32)
        L = effective_length(row, n, lengths, has_len, T, coff, has_causal)
        base = int64(row) * n
        c0 = int64(chunk) * (nt * V)
        vals = cuda.local.array(V, float32)
        load_chunk(x, address_of(x, VEC), base, c0, L, vals, kind, VEC, J)
        mx = NEG_INF
        for i in range(V):
            mx = online_max(mx, vals[i])
        m2 = group_max(red, mx, nt // 32, 0, lane) * c
        bias = online_bias_exp2(m2)
        acc = float32(0.0)
        for i in range(V):
            acc += online_weight_exp2(vals[i], c, bias)
        l = group_sum(red2, acc, nt // 32, 0, lane)
        if cuda.threadIdx.x == 0:
            part[2 * b] = m2
            part[2 * b + 1] = l

    def softmax_split_norm(x, out, lse, part, n, nchunks, lengths, has_len, T, coff, has_causal,
                           sink, sink_div, sink_mod, has_sink, c):
        b = cuda.blockIdx.x
        row = b // nchunks
        chunk = b - row * nchunks
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        lane = tid & 31
        red = cuda.shared.array(32, float32)
        red2 = cuda.shared.array(32, float32)
        # merge the row's partial states: each thread folds chunks tid, tid + nt, ...
        m = NEG_INF
        l = float32(0.0)
        for k in range(tid, nchunks, nt):
            pb = row * nchunks + k
            m, l = online_merge_exp2(m, l, part[2 * pb], part[2 * pb + 1])
        s2 = sink_logit(row, sink, sink_div, sink_mod, has_sink) * float32(LOG2E)
        m_all = online_max(group_max(red, m, nt // 32, 0, lane), s2)
        l_all = group_sum(red2, l * online_rescale_exp2(m, m_all), nt // 32, 0, lane)
        if has_sink:
            l_all += online_weight_exp2(s2, float32(1.0), online_bias_exp2(m_all))
        bias = online_bias_exp2(m_all)
        inv = float32(0.0) if l_all == 0 else float32(1.0) / l_all
        L = effective_length(row, n, lengths, has_len, T, coff, has_causal)
        base = int64(row) * n
        c0 = int64(chunk) * (nt * V)
        vals = cuda.local.array(V, float32)
        load_chunk(x, address_of(x, VEC), base, c0, L, vals, kind, VEC, J)
        dst = address_of(out, VEC)
        for j in range(J):
            col = c0 + int64(j * nt + tid) * VEC
            if col < n:
                for q in range(VEC):
                    vals[j * VEC + q] = online_weight_exp2(vals[j * VEC + q], c, bias)
                store_vec(out, dst, base, col, vals, j * VEC, inv, kind, VEC)
        if chunk == 0 and tid == 0:
            lse[row] = online_lse_exp2(m_all, l_all)

    tag = f"{'bf16' if kind == BF16 else 'f32'}_v{VEC}"
    softmax_split_stats.__name__ = softmax_split_stats.__qualname__ = f"softmax_split_stats_{tag}"
    softmax_split_norm.__name__ = softmax_split_norm.__qualname__ = f"softmax_split_norm_{tag}"
    pair = _PROD_KERNELS[key] = (kernel(softmax_split_stats, launch_bounds=(TPB, 2)),
                                 kernel(softmax_split_norm, launch_bounds=(TPB, 2)))
    return pair


# ----------------------------------------------------------------------------------------------
# Host side: validation, planning, launch, registration
# ----------------------------------------------------------------------------------------------
@dataclass
class SoftmaxCall:
    """One validated softmax problem: R rows of n columns (what the implementations take)."""
    io: ArrayIO
    x: object                 # flat kernel-side array: float32 or uint16 (bfloat16 bits)
    kind: int                 # F32 or BF16
    shape: tuple
    R: int
    n: int
    scale: float
    lengths: object           # int32 [R] kernel-side array, or None
    T: int
    causal_offset: int | None
    sink: object              # float32 kernel-side array, or None
    sink_div: int
    sink_mod: int
    host_bf16: bool           # results go back as ml_dtypes.bfloat16 NumPy


_DUMMY: dict = {}


def _dummy(io, dtype):
    """A 1-element array standing in for an absent optional input (cached on the device)."""
    if not io.gpu:
        return np.zeros(1, dtype)
    key = np.dtype(dtype).str
    if key not in _DUMMY:
        _DUMMY[key] = cuda.to_device(np.zeros(1, dtype))
    return _DUMMY[key]


def _sink_map(sink_shape: tuple, lead: tuple) -> tuple[int, int]:
    """(div, mod) so that row r uses sink.flat[(r // div) % mod]; ValueError if not expressible."""
    if len(sink_shape) > len(lead):
        raise ValueError(f"sink shape {sink_shape} has more axes than the rows {lead} "
                         f"(x.shape[:-1])")
    s = (1,) * (len(lead) - len(sink_shape)) + tuple(sink_shape)
    for a, b in zip(s, lead):
        if a not in (1, b):
            raise ValueError(f"sink shape {sink_shape} does not broadcast against the rows {lead}")
    axes = [i for i, (a, b) in enumerate(zip(s, lead)) if a == b and b != 1]
    if not axes:
        return 1, 1
    lo, hi = axes[0], axes[-1]
    if any(s[i] != lead[i] for i in range(lo, hi + 1)):
        raise ValueError(f"sink shape {sink_shape} broadcasts over rows {lead} in a pattern the "
                         f"kernels cannot index (its non-unit axes must be contiguous); pass "
                         f"np.broadcast_to(sink, {lead}) instead")
    div = int(np.prod(lead[hi + 1:], dtype=np.int64))
    return div, int(np.prod(lead[lo:hi + 1], dtype=np.int64))


def _prepare(x, scale, lengths, causal_offset, sink) -> SoftmaxCall:
    if not hasattr(x, "shape") or (not is_device_array(x) and not isinstance(x, np.ndarray)):
        raise TypeError(f"x must be a NumPy array or a device array, got {type(x).__name__}")
    shape = tuple(int(d) for d in x.shape)
    if len(shape) == 0:
        raise ValueError("x must have at least one axis (softmax runs over the last axis)")
    kind, host_bf16 = _float_kind(x, "x")
    if not _is_contiguous(x):
        raise ValueError("x must be C-contiguous; pass np.ascontiguousarray(x) (or .contiguous())")
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale must be a number, got {type(scale).__name__}") from None
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    lead, n = shape[:-1], shape[-1]
    R = int(np.prod(lead, dtype=np.int64))
    T = lead[-1] if lead else 1
    if causal_offset is not None:
        if isinstance(causal_offset, bool) or not isinstance(causal_offset, (int, np.integer)):
            raise TypeError(f"causal_offset must be an int (or None), got {causal_offset!r}")
        causal_offset = int(causal_offset)
    if lengths is not None:
        lengths = check_lengths(lengths, lead, n, "x")
    sink_div = sink_mod = 1
    if sink is not None:
        if is_device_array(sink):
            if _typestr(sink) != np.float32 or not _is_contiguous(sink):
                raise ValueError("device sink must be a contiguous float32 array")
        else:
            sink = np.asarray(sink)
            if sink.dtype.kind not in "fiu" and sink.dtype != np.dtype(ml_dtypes.bfloat16):
                raise TypeError(f"sink must be real numbers, got {sink.dtype}")
            sink = np.ascontiguousarray(sink, dtype=np.float32)
        sink_div, sink_mod = _sink_map(tuple(int(d) for d in sink.shape), lead)
        if not is_device_array(sink):
            sink = sink.reshape(-1)
    io = ArrayIO(x, lengths, sink)
    xk = x.view(np.uint16) if host_bf16 else x
    xk = io.to_kernel(xk)
    if is_device_array(xk) and kind == BF16 and _typestr(xk) == np.int16:
        xk = xk.view(np.uint16)
    xk = xk.reshape(-1) if hasattr(xk, "reshape") else xk
    lk = io.to_kernel(lengths) if lengths is not None else None
    sk = io.to_kernel(sink) if sink is not None else None
    if sk is not None and hasattr(sk, "reshape"):
        sk = sk.reshape(-1)
    if lk is not None and hasattr(lk, "reshape"):
        lk = lk.reshape(-1)
    return SoftmaxCall(io, xk, kind, shape, R, n, scale, lk, T, causal_offset, sk, sink_div,
                       sink_mod, host_bf16)


def _common_args(c: SoftmaxCall):
    """The masking / sink arguments every kernel takes, in kernel order."""
    return (c.lengths if c.lengths is not None else _dummy(c.io, np.int32), c.lengths is not None,
            c.T, c.causal_offset if c.causal_offset is not None else 0, c.causal_offset is not None,
            c.sink if c.sink is not None else _dummy(c.io, np.float32), c.sink_div, c.sink_mod,
            c.sink is not None)


def _outputs(c: SoftmaxCall, out=None, lse=None):
    """Flat output buffers: fresh ones, or the caller's (benchmarks pass preallocated buffers so
    that no allocation or free sits inside the timed region)."""
    if out is None:
        out = c.io.empty(c.R * c.n, np.uint16 if c.kind == BF16 else np.float32)
    if lse is None:
        lse = c.io.empty(c.R, np.float32)
    return out, lse


def _finish(c: SoftmaxCall, out, lse):
    o = c.io.result(out, ml_dtypes.bfloat16 if c.host_bf16 else None)
    s = c.io.result(lse)
    return o.reshape(c.shape), s.reshape(c.shape[:-1])


def _next_pow2(v: int) -> int:
    return 1 << max(0, int(v - 1).bit_length())


def reference_threads(n: int) -> int:
    """Threads per block of the reference kernel: small under the simulator (it is ~1e5x slower)."""
    if mode() == "sim":
        return 16 if n <= 64 else 32
    return 256


def softmax_reference(c: SoftmaxCall, threads: int | None = None, out=None, lse=None):
    """The reference implementation: (out, lse) in the caller's kind and shapes."""
    threads = threads or reference_threads(c.n)
    if threads & (threads - 1) or not 1 <= threads <= 1024:
        raise ValueError(f"reference threads must be a power of two in [1, 1024], got {threads}")
    out, lse = _outputs(c, out, lse)
    if c.R:
        softmax_ref_kernel.launch(c.R, threads, c.x, out, lse, c.n, *_common_args(c),
                                  np.float32(c.scale), c.kind)
    return _finish(c, out, lse)


def _aligned16(*arrays) -> bool:
    return all(not is_device_array(a) or a.__cuda_array_interface__["data"][0] % 16 == 0
               for a in arrays)


def rows_plan(n: int, vec: int):
    """(warps per row, J vectors a thread, threads per block) for the in-register path, or None."""
    threads = -(-n // MAX_PER_THREAD)
    wpr = _next_pow2(-(-threads // 32))
    if wpr > max_row_warps(vec):
        return None
    J = _next_pow2(-(-n // (32 * wpr * vec)))
    return wpr, J, max(32 * wpr, 128)


def softmax_production(c: SoftmaxCall, out=None, lse=None, part=None, *, vectorized=None,
                       plan=None, split_threads=None):
    """The sm_90a implementation (see the module docstring).

    ``out``/``lse``/``part``: optional preallocated flat buffers (``part``: float32
    [2 R ceil(n / (16 split_threads))], split path). Test hooks: ``vectorized=False`` takes the
    scalar path, which has no PTX and so runs under the simulator too; ``plan`` = (wpr, J, threads)
    forces the in-register geometry, ``plan="split"`` the split path; ``split_threads`` its block.
    """
    out, lse = _outputs(c, out, lse)
    if c.R == 0:
        return _finish(c, out, lse)
    if c.n == 0:     # nothing to read: the reference kernel writes the lse values
        softmax_ref_kernel.launch(c.R, 32, c.x, out, lse, c.n, *_common_args(c),
                                  np.float32(c.scale), c.kind)
        return _finish(c, out, lse)
    vec = _vec(c.kind, True)
    if vectorized is None:
        vectorized = c.n % vec == 0 and _aligned16(c.x, out)
    vec = _vec(c.kind, vectorized)
    cc = np.float32(c.scale * LOG2E)
    if plan is None:
        plan = rows_plan(c.n, vec)
    if plan is not None and plan != "split":
        wpr, J, tpb = plan
        rpb = tpb // (32 * wpr)
        k = rows_kernel(c.kind, vectorized, J)
        k.launch(-(-c.R // rpb), tpb, c.x, out, lse, c.n, c.R, *_common_args(c), cc, wpr)
    else:
        threads = split_threads or SPLIT_THREADS
        stats, norm = split_kernels(c.kind, vectorized)
        nchunks = -(-c.n // (threads * MAX_PER_THREAD))
        if part is None:
            part = c.io.empty(2 * c.R * nchunks, np.float32)
        a = _common_args(c)
        stats.launch(c.R * nchunks, threads, c.x, part, c.n, nchunks, *a[:5], cc)
        norm.launch(c.R * nchunks, threads, c.x, out, lse, part, c.n, nchunks, *a, cc)
    return _finish(c, out, lse)


def production_kernels():
    """(Kernel, signature) of every production kernel shape class, for compile-only checks."""
    from numba import types as t
    mask = (t.int32[::1], t.boolean, t.int64, t.int64, t.boolean)
    sinkt = (t.float32[::1], t.int64, t.int64, t.boolean)
    sigs = []
    for kind, arr in ((F32, t.float32), (BF16, t.uint16)):
        for vectorized in (True, False):
            vec = _vec(kind, vectorized)
            J = MAX_PER_THREAD // vec
            sigs.append((rows_kernel(kind, vectorized, J),
                         (arr[::1], arr[::1], t.float32[::1], t.int64, t.int64) + mask + sinkt
                         + (t.float32, t.int64)))
            stats, norm = split_kernels(kind, vectorized)
            sigs.append((stats, (arr[::1], t.float32[::1], t.int64, t.int64) + mask + (t.float32,)))
            sigs.append((norm, (arr[::1], arr[::1], t.float32[::1], t.float32[::1], t.int64,
                                t.int64) + mask + sinkt + (t.float32,)))
    return sigs


registry.register("softmax", "reference")(softmax_reference)
registry.register("softmax", "production", arch="sm_90a", kernels=production_kernels)(
    softmax_production)


def softmax(x, scale=1.0, lengths=None, causal_offset=None, sink=None, return_lse=False,
            impl: str | None = None):
    """Masked softmax over the last axis of ``x``, optional sink: ``out`` or ``(out, lse)``.

    ``p[..., j] = exp(scale * x[..., j]) / (sum_{valid i} exp(scale * x[..., i]) + exp(sink))`` for
    the valid columns ``j < L``, 0 for the masked ones; ``lse = log(denominator)`` (natural log).

    Constraints:
      * ``x``: float32 or bfloat16, at least 1-D, C-contiguous. NumPy (``ml_dtypes.bfloat16`` for
        bf16) -> NumPy results; device arrays (``__cuda_array_interface__``; bfloat16 as its
        uint16/int16 bit pattern) -> device results (bfloat16 as uint16 bits). The output has
        x's shape and dtype; ``lse`` is float32 of shape ``x.shape[:-1]``.
      * ``scale``: a positive finite number (applied to x inside the exponent; production folds
        log2(e) into it and uses exp2).
      * ``lengths``: per-row valid length, integers in [0, N] of shape ``x.shape[:-1]`` (or flat).
        Device lengths must be int32, contiguous; they are not range-checked (no synchronisation):
        values outside [0, N] are clamped.
      * ``causal_offset``: int; the row at position t along axis -2 sees columns ``c <= t + offset``
        (1-D x: t = 0). Negative offsets mask whole rows. Combined with ``lengths`` by min.
      * ``sink``: per-row sink logits (scaled domain: not multiplied by ``scale``), broadcastable to
        ``x.shape[:-1]`` with its non-unit axes contiguous: ``[H]`` for [..., H, N], ``[H, 1]`` for
        [B, H, T, N], a scalar for all rows. Adds exp(sink) to the denominator.
      * A row with nothing valid gives zeros; its lse is -inf (no sink) or the sink logit.
      * NaN (or +inf) among a row's valid logits or its sink makes that row NaN, as torch.softmax;
        inputs are not scanned. -inf logits are allowed (probability 0).
      * ``impl``: "auto" | "reference" | "production" | "production:sm_90a" (see ``registry``).
    """
    call = _prepare(x, scale, lengths, causal_offset, sink)
    out, lse = registry.resolve("softmax", impl).fn(call)
    return (out, lse) if return_lse else out


__all__ = ["softmax", "softmax_oracle", "SoftmaxCall", "online_max", "online_rescale",
           "online_weight", "online_merge", "online_lse", "online_bias_exp2", "online_weight_exp2",
           "online_rescale_exp2", "online_merge_exp2", "online_lse_exp2",
           "online_softmax_stream_kernel", "softmax_ref_kernel", "rows_kernel", "split_kernels",
           "rows_plan", "production_kernels"]
