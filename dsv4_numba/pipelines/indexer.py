"""The DeepSeek lightning indexer, staged: score every cached key per query token, keep the best k.

What it computes (DeepSeek-V3.2 / V4, see shared/reference/dsv4-facts.md section 1)
-------------------------------------------------------------------------------------
For query token t with H index heads q[t, h, :] of dimension D, per-head weights w[t, h] and cached
keys k[n, :] (one shared head)::

    logits[t, h, n] = q[t, h, :] . k[n, :]                              (float32 accumulate)
    score[t, n]     = sum_h w[t, h] * ReLU(logits[t, h, n])   [* s_n]    for n < valid_len[t]
    out[t]          = indices of the k largest score[t, :valid_len[t]]   (-1 padded)

Formats: DeepSeek-V4 keeps q and k in ``dsv4_fp4`` (E2M1 codes, one UE8M0 scale per 32 along D);
V3.2 keeps them in FP8 E4M3 with one float32 scale per 128 (= per row at D = 128), and the key's
scale s_n multiplies the head sum (exact: s_n > 0 commutes with ReLU); bfloat16 / float32 for
teaching.

Where the FP4 scales enter the dot product
------------------------------------------
With 32-element blocks b, q_d = e(q_d) * 2^a_b and k_d = e(k_d) * 2^c_b (e = E2M1 value)::

    q . k = sum_b 2^(a_b + c_b) * sum_{d in b} e(q_d) e(k_d)

The inner sum is over products of 2-significant-bit numbers: exact in any float format with a
few mantissa bits. Blackwell's block-scaled MMA consumes exactly this form. Hopper has no FP4 MMA:
the decode multiplies each E2M1 value by its power-of-two scale, which is exact in bfloat16 (and
float32), and the dot product runs in bf16 wgmma with float32 accumulation. Only the accumulation
rounds.

Napkin math: FLOPs and bytes per key (H = 64, D = 128, H100: ~3.35 TB/s, ~990 TFLOP/s bf16)
--------------------------------------------------------------------------------------------
* FLOPs per key per query token: 2*H*D = 16384 for the dot products + 2H = 128 for the ReLU-weighted
  sum (+1 for V3.2's scale) -- about 16.5 KFLOP.
* Bytes per key, read once for ALL query tokens of a sequence: dsv4_fp4 D/2 + D/32 = 68 B;
  V3.2 FP8 D + 4 = 132 B; bf16 256 B. Plus 4 B per key per token of scores written (fused) and
  read back by top-k.
* Intensity (fused, FP4 keys): 16.5K*T / (68 + 8T) FLOP/B. T = 1: ~217 FLOP/B, under the H100's
  ridge of ~295 FLOP/B -> memory/latency-bound: N = 65536 is 4.5 MB of keys (~1.3 us) and
  1.08 GFLOP (~1.1 us); the launch, the top-k and the tail dominate (the ~20 us target). T = 64:
  68.7 GFLOP, ~69 us at peak, vs 4.5 MB of keys + 34 MB of score traffic (~11 us) ->
  compute-bound; the <= 200 us target is ~340 TFLOP/s effective.
* Measured (H100, 2026-11-27, CHANGELOG 0.15.0 / 0.16.0; fused v4 + the registered top-k): T = 1,
  N = 65536: 18.8-20.0 us in all (13 runs, median 19.2), the score kernel ~8.8 of it timed alone
  -- the top-k and the hand-over between the two kernels are most of it, as above; T = 64:
  scores 144 us (~476 TFLOP/s, ~48 % of the bf16 peak) of 172 us. Neither end was bound by
  its napkin limit: ncu showed both issue-bound (decode, index arithmetic, code size; 0.14.0).
* The STAGED pipeline here also writes and re-reads logits [T, H, N] float32: 256 B per key per
  token, 1.07 GB at T = 64, N = 65536 (~0.6 ms of HBM) -- bandwidth-bound at every T. That is the
  reason for the fused kernel (ReLU and the head sum in the wgmma epilogue's registers).

Stages (registry names; each resolved through ``registry.resolve_pipeline``)
---------------------------------------------------------------------------
1. ``decode_fp4`` (``stages.fp4.decode_fp4``, FP4 inputs) or ``indexer_decode_fp8`` (FP8):
   q -> float32 [T, H, D] and the whole key cache -> float32 (bitwise the ``formats`` spec). Plain
   float32 / bfloat16 inputs skip decoding (the GEMM reads bfloat16 bits directly).
2. ``indexer_scores``: the score GEMM, logits [T, H, N] (0 where n >= valid_len[t]).
3. ``indexer_reduce``: ReLU-weighted head sum (times the V3.2 key scale), scores [T, N] (-inf where
   n >= valid_len[t]).
4. ``topk`` (``stages.topk``): k largest per row, ties to the lower index, -1 / -inf padded.

The fused path (``impls="fused"``, ``pipelines/indexer_sm90.py``)
----------------------------------------------------------------
One sm_90a kernel per (block of 128 keys, group of query tokens): keys -> shared memory once (FP4
decoded on the way, exactly, to bfloat16), per token the q tile, 8 x wgmma.m64n128k16 (M = the 64
heads, N = keys, K = D), ReLU and w[t, h] on the accumulator registers, the head sum through a
shared-memory exchange, scores [T, N] written once (4 B per key per token instead of the staged
256 + 4 + 4), then the registered top-k. bfloat16, dsv4_fp4 / mxfp4 and V3.2 FP8 (E4M3 wgmma, one
scale per row) inputs, H = 64, D = 128; variant v3 also counts the top-k's histogram in the kernel
(the top-k then skips its histogram launch); variant v4 (what "auto" runs for FP4, and for bf16 up
to 4 tokens) decodes the keys straight into wgmma's A registers; opt-in v5 rewrites FP4 as exact
E4M3 (one scale a row) for the FP8 wgmma (twice the rate, FP8 accumulation precision); opt-in v6
is v4 with the keys brought through a shared-memory ring of mbarrier-driven slots (TMA for a
contiguous cache, a cp.async gather for a paged one). The same kernel with a logits epilogue is
the staged ``indexer_scores`` production stage (bfloat16 inputs; FP4 is decoded to bfloat16 for
it). Not built yet: a threshold that would keep most scores out of memory.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from .. import registry
from ..formats import FORMATS, QuantizedFP4
from ..runtime import BF16, F32, ArrayIO, is_device_array
from ..runtime.arrays import float_kind, is_contiguous, typestr
from ..stages import topk as _topk
from ..formats.fp8 import QuantizedFP8
from ..stages.indexer_stages import Paging
from . import indexer_sm90 as _sm90          # registers indexer_scores/production (sm_90a wgmma)

_BF16 = ml_dtypes.bfloat16
STAGES = ("decode_fp4", "indexer_decode_fp8", "indexer_scores", "indexer_reduce", "topk")
K_MAX = _topk.K_MAX                                          # 4096
_STAGES_OF = {"fp4": ("decode_fp4", "indexer_scores", "indexer_reduce", "topk"),
              "fp8": ("indexer_decode_fp8", "indexer_scores", "indexer_reduce", "topk"),
              "float": ("indexer_scores", "indexer_reduce", "topk")}


def _family(x, what):
    if isinstance(x, QuantizedFP4):
        return "fp4"
    if isinstance(x, QuantizedFP8):
        return "fp8"
    if isinstance(x, np.ndarray) or is_device_array(x):
        return "float"
    raise TypeError(f"{what} must be a formats.QuantizedFP4 (dsv4_fp4), a QuantizedFP8 "
                    f"(stages.indexer_stages), or a float32 / bfloat16 array; got "
                    f"{type(x).__name__}")


def _host(a):
    """NumPy view of a small host array, or None for device arrays (values not checked there)."""
    return None if is_device_array(a) else np.asarray(a)


def _check_int(k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {k!r}")
    k = int(k)
    if not 1 <= k <= K_MAX:
        raise ValueError(f"k must be in 1..{K_MAX} (DeepSeek uses 512, 1024 or 2048), got {k}")
    return k


def _reachable_rows(table, valid_len, page_size, T):
    """Physical cache rows some token can read (host arrays): for the NaN checks."""
    rows = []
    for t in range(T):
        n = np.arange(int(valid_len[t]))
        r = table[t if table.shape[0] > 1 else 0]
        rows.append(r[n // page_size].astype(np.int64) * page_size + n % page_size)
    return np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)


class _Call:
    """One validated indexer call (host-side facts; arrays are placed later)."""


def _validate(q, k_cache, weights, k, valid_len, block_table) -> _Call:
    c = _Call()
    c.fam = _family(q, "q")
    kf = _family(k_cache, "k_cache")
    if kf != c.fam:
        raise TypeError(f"q is {c.fam.upper() if c.fam != 'float' else 'a float array'} but "
                        f"k_cache is {kf.upper() if kf != 'float' else 'a float array'}: quantize "
                        f"both the same way (both dsv4_fp4, both FP8, or both float)")
    qs, ks = tuple(int(d) for d in q.shape), tuple(int(d) for d in k_cache.shape)
    if len(qs) != 3:
        raise ValueError(f"q must be [T, H, D] (query tokens, index heads, head dim), got "
                         f"shape {qs}")
    T, H, D = qs
    if len(ks) not in (2, 3):
        raise ValueError(f"k_cache must be [N, D] (contiguous) or [num_pages, page_size, D] "
                         f"(paged, with block_table), got shape {ks}")
    if ks[-1] != D:
        raise ValueError(f"head dim mismatch: q has D = {D} but k_cache has D = {ks[-1]}; q and "
                         f"the keys must share the last axis")
    if c.fam == "fp4":
        for name, x in (("q", q), ("k_cache", k_cache)):
            if x.fmt not in FORMATS:
                raise ValueError(f"{name}.fmt {x.fmt!r} is not an FP4 format ({sorted(FORMATS)})")
    if c.fam == "float":
        c.qkind, c.q_bf16 = float_kind(q, "q")
        c.kkind, c.k_bf16 = float_kind(k_cache, "k_cache")
        for name, x in (("q", q), ("k_cache", k_cache)):
            if not is_contiguous(x):
                raise ValueError(f"{name} must be C-contiguous; pass np.ascontiguousarray({name})")
    # weights
    if not (isinstance(weights, np.ndarray) or is_device_array(weights)):
        raise TypeError(f"weights must be a float32 / bfloat16 array [T, H], got "
                        f"{type(weights).__name__}")
    c.wkind, c.w_bf16 = float_kind(weights, "weights")
    if tuple(weights.shape) != (T, H):
        raise ValueError(f"weights must be [T, H] = {(T, H)} (one weight per query token and "
                         f"index head, matching q {qs}), got {tuple(weights.shape)}")
    if not is_contiguous(weights):
        raise ValueError("weights must be C-contiguous; pass np.ascontiguousarray(weights)")
    c.k = _check_int(k)
    # cache geometry and block table
    if len(ks) == 2:
        if block_table is not None:
            raise ValueError(f"block_table is for a paged cache [num_pages, page_size, D]; k_cache "
                             f"has shape {ks} (contiguous [N, D]): drop block_table or reshape "
                             f"the cache into pages")
        c.num_pages, c.page_size, c.max_pages, c.table_rows = 1, ks[0], 1, 1
        c.paged = False
        c.N = ks[0]
        c.table = np.zeros(1, np.int32)
    else:
        if block_table is None:
            raise ValueError(f"k_cache {ks} is paged ([num_pages, page_size, D]): pass "
                             f"block_table [T or 1, max_pages] mapping logical pages to pages")
        if not is_device_array(block_table):
            block_table = np.asarray(block_table)
        c.num_pages, c.page_size = ks[0], ks[1]
        if c.page_size < 1:
            raise ValueError(f"page_size (k_cache.shape[1]) must be >= 1, got {c.page_size}")
        bs = tuple(int(d) for d in block_table.shape)
        if len(bs) != 2 or bs[0] not in (1, T):
            raise ValueError(f"block_table must be [T, max_pages] or [1, max_pages] with T = {T}, "
                             f"got shape {bs}")
        if typestr(block_table).kind not in "iu":
            raise TypeError(f"block_table must hold integers (int32 page ids), got "
                            f"{typestr(block_table)}")
        c.table_rows, c.max_pages = bs
        c.paged = True
        c.N = c.max_pages * c.page_size
        c.table = block_table
    # valid lengths
    if valid_len is None:
        c.valid_len = np.full(T, c.N, np.int32)
    else:
        if is_device_array(valid_len):
            if typestr(valid_len) != np.int32 or int(np.prod(valid_len.shape)) != T:
                raise ValueError(f"device valid_len must be a contiguous int32 array of T = {T}")
            c.valid_len = valid_len
        else:
            vl = np.asarray(valid_len)
            if vl.dtype.kind not in "iu":
                raise TypeError(f"valid_len must be integers, got {vl.dtype}")
            if vl.shape not in ((T,), ()):
                raise ValueError(f"valid_len must have shape (T,) = ({T},) (one per query token) "
                                 f"or be a scalar, got {vl.shape}")
            vl = np.broadcast_to(vl, (T,))
            if T and vl.min() < 0:
                raise ValueError(f"valid_len must be >= 0, got {int(vl.min())}")
            if T and vl.max() > c.N:
                t = int(np.argmax(vl))
                what = ("logical positions the block table maps (max_pages * page_size)"
                        if len(ks) == 3 else "cached keys (k_cache.shape[0])")
                raise ValueError(f"valid_len[{t}] = {int(vl[t])} > N = {c.N}, the number of "
                                 f"{what}: clip valid_len to N or pass a larger cache")
            c.valid_len = np.ascontiguousarray(vl, dtype=np.int32)
    # block table values: every page a valid position can read must exist
    vl_h, bt_h = _host(c.valid_len), _host(c.table)
    if len(ks) == 3 and vl_h is not None and bt_h is not None and T:
        for t in range(T):
            need = -(-int(vl_h[t]) // c.page_size)
            pages = bt_h[t if c.table_rows > 1 else 0, :need]
            bad = np.flatnonzero((pages < 0) | (pages >= c.num_pages))
            if bad.size:
                j = int(bad[0])
                raise ValueError(f"block_table[{t if c.table_rows > 1 else 0}, {j}] = "
                                 f"{int(pages[j])} is not a page of k_cache (0..{c.num_pages - 1})"
                                 f", but token {t} reads logical page {j} (valid_len "
                                 f"{int(vl_h[t])}, page_size {c.page_size}): fix the table or "
                                 f"shorten valid_len")
        c.table = np.ascontiguousarray(bt_h, dtype=np.int32)
    c.T, c.H, c.D = T, H, D
    _check_values(c, q, k_cache, weights, vl_h, bt_h)
    return c


def _check_values(c, q, k_cache, weights, vl_h, bt_h):
    """NaN / inf in NumPy inputs (device inputs are not scanned: that would synchronise). Only key
    rows some token can read are checked, so unused pages of a cache may hold anything."""
    if vl_h is None or bt_h is None:
        return
    rows = _reachable_rows(np.asarray(c.table).reshape(c.table_rows, c.max_pages), vl_h,
                           c.page_size, c.T)

    def krows(a):
        a = np.asarray(a)
        return a.reshape((c.num_pages * c.page_size,) + a.shape[len(k_cache.shape) - 1:])[rows]

    if c.fam == "float":
        for name, x in (("q", q), ("weights", weights)):
            if not is_device_array(x) and not np.isfinite(np.asarray(x).astype(np.float32)).all():
                raise ValueError(f"{name} contains NaN or inf: the indexer needs finite inputs")
        if not is_device_array(k_cache) and \
                not np.isfinite(krows(k_cache).astype(np.float32)).all():
            raise ValueError("k_cache contains NaN or inf in rows the block table reaches")
        return
    if not is_device_array(weights) and \
            not np.isfinite(np.asarray(weights).astype(np.float32)).all():
        raise ValueError("weights contain NaN or inf: the indexer needs finite weights")
    if c.fam == "fp4":
        for name, x, sc in (("q", q, None), ("k_cache", k_cache, rows)):
            if is_device_array(x.scales):
                continue
            s = np.asarray(x.scales) if sc is None else krows(x.scales)
            nan = (s == 255) if x.spec.scale_kind == "ue8m0" else ((s & 0x7F) == 0x7F)
            if nan.any():
                raise ValueError(f"{name}.scales hold NaN scale codes (UE8M0 0xFF / E4M3 0x7F): "
                                 f"those blocks decode to NaN; requantize {name}")
        return
    for name, x, sc in (("q", q, None), ("k_cache", k_cache, rows)):
        if is_device_array(x.codes) or is_device_array(x.scales):
            continue
        codes = np.asarray(x.codes) if sc is None else krows(x.codes)
        s = np.asarray(x.scales) if sc is None else krows(x.scales)
        if ((codes & 0x7F) == 0x7F).any():
            raise ValueError(f"{name}.codes hold E4M3 NaN codes (0x7F / 0xFF): requantize {name}")
        if not (np.isfinite(s) & (s > 0)).all():
            raise ValueError(f"{name}.scales must be positive and finite (float32 decode "
                             f"multipliers; V3.2: max(amax, 1e-4) / 448)")


def _resolve(fam, impls):
    used = _STAGES_OF[fam]
    if isinstance(impls, dict):
        unknown = set(impls) - set(STAGES)
        if unknown:
            raise ValueError(f"impls names unknown stages {sorted(unknown)}; the indexer's stages "
                             f"are {STAGES}")
        impls = {s: v for s, v in impls.items() if s in used}
    elif impls is not None and not isinstance(impls, str):
        raise TypeError(f"impls must be None, one choice for all stages (str) or a dict "
                        f"{{stage: choice}}, got {type(impls).__name__}")
    return registry.resolve_pipeline(used, impls)


def indexer(q, k_cache, weights, k, valid_len=None, block_table=None, impls=None,
            return_intermediates=False):
    """Top-k keys per query token by ReLU-weighted multi-head scores (staged lightning indexer).

    Returns ``(indices, scores)``: int32 [T, k] and float32 [T, k], sorted by score descending, ties
    to the lower index; slots a token cannot fill (valid_len[t] < k) hold index -1, score -inf.
    With ``return_intermediates=True`` a third value, a dict: ``q`` / ``k`` (what the score GEMM
    read: decoded float32, or the float input; ``k`` in the cache's physical layout), ``k_scale``
    (V3.2 FP8 keys with one scale per row: float32 [rows], else None), ``logits`` float32
    [T, H, N] (0 where n >= valid_len[t]), ``scores`` float32 [T, N] (-inf there).

    Constraints (all checked before any launch; errors say what to change):
      * ``q`` [T, H, D] and ``k_cache`` [N, D] or paged [num_pages, page_size, D], same family:
        both ``formats.QuantizedFP4`` (``dsv4_fp4``; mxfp4 / nvfp4 decode too), both
        ``formats.QuantizedFP8`` (E4M3 + float32 scale per 128), or float32 /
        bfloat16 arrays (``ml_dtypes.bfloat16``; on the device its uint16 bits). Same D.
      * ``weights`` float32 / bfloat16 [T, H]. Finite NumPy inputs (NaN / inf, NaN scale codes,
        non-positive FP8 scales -> ValueError); only cache rows some token reads are checked:
        rows past every valid_len may hold anything (the fused v4 kernel may load a contiguous
        cache's up to N before valid_len arrives; they never change a result).
      * ``k``: int in 1..4096; k > valid_len is allowed (-1 padding).
      * ``valid_len``: None (all N) or ints [T] in [0, N]; N = k_cache.shape[0] (contiguous) or
        max_pages * page_size (paged).
      * ``block_table``: paged caches only, int [T or 1, max_pages]; logical key n of token t is
        row ``block_table[t, n // page_size] * page_size + n % page_size``; every page a valid
        position reads must be in [0, num_pages) (others, e.g. -1, are never read).
        Paged and contiguous caches holding the same keys give bitwise identical results.
      * ``impls``: None / "auto" / "reference" / ... for every stage, or {stage: choice} over
        ``STAGES``; unknown names raise ValueError. Stages the call's format does not run are
        ignored. Production variants (GPU): ``decode_fp4``, ``indexer_scores`` (sm_90a wgmma; H = 64,
        D = 128, bfloat16 / FP4 inputs -- on "auto" other calls use the reference GEMM), ``topk``.
        ``impls="fused[:sm_90a|:sm_100a][:<topk choice>]"``: the fused kernel of the arch named,
        else of this device's (sm_90a wgmma: bf16 / FP4 / V3.2 FP8; sm_100a block-scaled tcgen05:
        dsv4_fp4 only, emulator-verified, never run on Blackwell) + top-k (see the module
        docstring); a fused kernel that cannot run the call raises ``ImplUnavailable`` before any
        launch; with ``return_intermediates`` the dict holds ``scores`` only. The sm_90a kernel
        is chosen by ``DSV4_INDEXER_VARIANT`` ("auto": v4 for FP4; "v6": v4 with the keys through
        a TMA / cp.async mbarrier ring; ``indexer_sm90.VARIANTS``).
      * NumPy in -> NumPy out; device inputs (GPU) -> device outputs (block_table / valid_len
        values on the device are not checked).
    """
    c = _validate(q, k_cache, weights, k, valid_len, block_table)
    if isinstance(impls, str) and impls.split(":")[0] == "fused":
        # "fused[:sm_90a|:sm_100a][:<top-k choice>]": the fused kernel of the arch named, else of
        # this device's (sm_100a GPU: indexer_sm100; otherwise indexer_sm90, as before)
        from .indexer_sm100 import pick_fused
        fused_indexer, topk_impl = pick_fused(impls)
        return fused_indexer(c, q, k_cache, weights, topk_impl, return_intermediates)
    plan = _resolve(c.fam, impls)
    T, H, D, N = c.T, c.H, c.D, c.N
    prod_gemm = plan["indexer_scores"].name == "production"
    if prod_gemm:
        # the wgmma score GEMM reads bfloat16: exact for FP4 (decoded to bfloat16) and bf16 inputs
        kinds = (BF16, BF16) if c.fam == "fp4" else (c.qkind, c.kkind) if c.fam == "float" \
            else (F32, F32)
        why = _sm90.scores_fits(*kinds, H, D)
        if why is not None:
            asked = impls if isinstance(impls, str) else (impls or {}).get("indexer_scores") \
                if isinstance(impls, dict) else None
            if asked and asked.startswith("production"):
                raise ValueError(f"indexer_scores/production cannot take this call: {why}; use "
                                 f"impls={{'indexer_scores': 'reference'}}")
            plan["indexer_scores"] = registry.resolve("indexer_scores", "reference")
            prod_gemm = False
    arrays = [weights]
    for x in (q, k_cache):
        arrays += ([x.data, x.scales] if c.fam == "fp4" else [x.codes, x.scales]
                   if c.fam == "fp8" else [x])
    io = ArrayIO(*arrays)
    inter = {"k_scale": None}
    kscale = None
    # 1. decode
    if c.fam == "fp4":
        dt = "bfloat16" if prod_gemm else "float32"        # E2M1 x 2^k is exact in either
        qd = plan["decode_fp4"].fn(_placed(q, io), dt)
        kd = plan["decode_fp4"].fn(_placed(k_cache, io), dt)
        qkind = kkind = BF16 if prod_gemm else F32
    elif c.fam == "fp8":
        dec = plan["indexer_decode_fp8"].fn
        qd = dec(_placed(q, io), True)
        one_scale = k_cache.blocks_per_row == 1
        kd = dec(_placed(k_cache, io), not one_scale)     # V3.2: the scale goes to the head sum
        if one_scale:
            kscale = io.to_kernel(k_cache.scales).reshape(-1)
            inter["k_scale"] = kscale
        qkind = kkind = F32
    else:
        qd = io.to_kernel(q.view(np.uint16) if c.q_bf16 else q)
        kd = io.to_kernel(k_cache.view(np.uint16) if c.k_bf16 else k_cache)
        qkind, kkind = c.qkind, c.kkind
    table = io.to_kernel(np.ascontiguousarray(c.table, dtype=np.int32)
                         if not is_device_array(c.table) else c.table).reshape(-1)
    paging = Paging(table, c.table_rows, c.max_pages, c.page_size)
    vl = io.to_kernel(c.valid_len).reshape(-1)
    w = io.to_kernel(weights.view(np.uint16) if c.w_bf16 else weights).reshape(-1)
    # 2. score GEMM, 3. head reduction
    def gemm_input(x):       # host bfloat16 travels as its bits; the return keeps the dtype
        return x.view(np.uint16) if isinstance(x, np.ndarray) and x.dtype == _BF16 else x
    logits = plan["indexer_scores"].fn(gemm_input(qd).reshape(-1), qkind,
                                       gemm_input(kd).reshape(-1), kkind, paging, vl, T, H, N, D)
    scores = plan["indexer_reduce"].fn(logits, w, c.wkind, kscale, paging, vl, T, H, N)
    # 4. top-k (lengths: positions beyond valid_len are never selected)
    call = _topk._prepare(scores.reshape(T, N), c.k, vl, check_nan=False)
    vals, idx = plan["topk"].fn(call)
    out = (io.result(idx).reshape(T, c.k), io.result(vals).reshape(T, c.k))
    if not return_intermediates:
        return out
    qv, kv = qd, kd
    if c.fam == "float":       # give back what the GEMM read, in the caller's dtype
        qv, kv = q, k_cache
    bits = _BF16 if prod_gemm and c.fam == "fp4" else None   # device bf16 decode: uint16 bits
    inter.update(q=io.result(qv, bits) if not isinstance(qv, np.ndarray) else qv,
                 k=io.result(kv, bits) if not isinstance(kv, np.ndarray) else kv,
                 logits=io.result(logits).reshape(T, H, N),
                 scores=io.result(scores).reshape(T, N))
    if inter["k_scale"] is not None:
        inter["k_scale"] = io.result(inter["k_scale"])
    return out + (inter,)


def _placed(x, io):
    """A quantized input with its arrays where the kernels run (device on a GPU)."""
    if not io.gpu:
        return x
    if isinstance(x, QuantizedFP4):
        return QuantizedFP4(io.to_kernel(x.data), io.to_kernel(x.scales), x.global_scale, x.fmt,
                            x.shape)
    return QuantizedFP8(io.to_kernel(x.codes), io.to_kernel(x.scales), x.block)


__all__ = ["indexer", "STAGES", "QuantizedFP8"]
