"""Staged lightning indexer (pipelines/indexer.py) under the simulator, against a float64 oracle.

The oracle dequantizes with ``dsv4_numba.formats`` (FP4: ``formats.dequantize``; FP8:
``formats.e4m3_decode`` times the float32 scale, one float32 multiply -- the V3.2 key scale
multiplies the head sum) and does everything else in float64. Decoding is exact spec work, so
decoded q / k are compared bitwise; the GEMM and the head sum round in float32, so they are
compared within a derived bound.

Error bound (u = 2^-24, gamma(n) = n u / (1 - n u)), per token t and key n::

    A[t,h,n] = sum_d |q[t,h,d] k[n,d]|                      |logit - exact|  <= gamma(D) A
    E[t,n]   = gamma(D + H + 3) * s_n * sum_h |w[t,h]| A     |score - exact|  <= E

(D products and adds per logit; H products and adds in the head sum, with |ReLU(l)| <= A; one
multiply by the V3.2 key scale s_n, else s_n = 1. FMA contraction on a GPU only removes roundings.)

The tie rule for the selected index sets
----------------------------------------
The kernel's float32 score of key n lies in [s_n - E_n, s_n + E_n] around the oracle's s_n, and the
top-k stage is exact on those float32 scores. So, among the L = valid_len[t] keys of token t with
K = min(k, L):
  * key n MUST be selected if fewer than K other keys m can reach it (s_m + E_m >= s_n - E_n);
  * key n must NOT be selected if at least K keys surely beat it (s_m - E_m > s_n + E_n);
  * every other key lies within float32 rounding of the K-th score and may swap with its peers.
``check_selection`` asserts exactly that, plus: K distinct indices in [0, L), slots K.. are -1 with
score -inf, returned scores non-increasing and within E of the oracle. The known-wrong FP4 integer
decode must fail it (``test_wrong_fp4_decode_fails_the_index_check``).

Simulator cost: every thread is Python; shapes stay at T <= 3, H <= 4, D <= 64, N <= 64, k <= 8.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from conftest import outliers

from dsv4_numba import formats, registry
from dsv4_numba.formats import wrong
from dsv4_numba.pipelines.indexer import STAGES, indexer
from dsv4_numba.runtime import detect_gpu, mode
from dsv4_numba.stages import topk as K
from dsv4_numba.formats import QuantizedFP8, dequantize_fp8, quantize_fp8
from dsv4_numba.testing import assert_close

SIM = mode() == "sim"
U = 2.0 ** -24
REF = "reference"


def gamma(n):
    return n * U / (1 - n * U)


# ----------------------------------------------------------------------------------------------
# The oracle and the checkers
# ----------------------------------------------------------------------------------------------
def decoded(q, kc):
    """(q [T,H,D], k physical [..., D], k_scale physical [...] or None) as the spec defines them,
    float32 (the values the score GEMM must read)."""
    if isinstance(q, formats.QuantizedFP4):
        return formats.dequantize(q), formats.dequantize(kc), None
    if isinstance(q, QuantizedFP8):
        def full(x):
            s = np.repeat(x.scales, x.block, axis=-1)[..., :x.codes.shape[-1]]
            return (formats.e4m3_decode(x.codes) * s).astype(np.float32)
        if kc.scales.shape[-1] == 1:               # V3.2: raw E4M3 keys, scale on the head sum
            return full(q), formats.e4m3_decode(kc.codes), kc.scales[..., 0]
        return full(q), full(kc), None
    return np.asarray(q).astype(np.float32), np.asarray(kc).astype(np.float32), None


def logical_rows(table, page_size, t, L):
    n = np.arange(L)
    return table[t if table.shape[0] > 1 else 0][n // page_size].astype(np.int64) * page_size \
        + n % page_size


def oracle(q, kc, w, valid_len=None, block_table=None):
    """float64 logits [T,H,N] and scores [T,N] (NaN where n >= valid_len), their error bounds,
    and the decoded inputs."""
    qv, kv, ks = decoded(q, kc)
    T, H, D = qv.shape
    if kv.ndim == 2:
        table, ps, N = np.zeros((1, 1), np.int64), kv.shape[0], kv.shape[0]
    else:
        table, ps = np.asarray(block_table), kv.shape[1]
        N = table.shape[1] * ps
    kflat = kv.reshape(-1, D).astype(np.float64)
    ksflat = None if ks is None else ks.reshape(-1).astype(np.float64)
    vl = np.full(T, N) if valid_len is None else np.broadcast_to(np.asarray(valid_len), (T,))
    logits = np.full((T, H, N), np.nan)
    lerr = np.zeros((T, H, N))
    s64 = np.full((T, N), np.nan)
    err = np.zeros((T, N))
    w64 = np.asarray(w).astype(np.float64)
    for t in range(T):
        L = int(vl[t])
        rows = logical_rows(table, ps, t, L)
        kt = kflat[rows]                                            # [L, D]
        q64 = qv[t].astype(np.float64)                              # [H, D]
        lg = q64 @ kt.T                                             # [H, L]
        A = np.abs(q64) @ np.abs(kt).T
        sc = np.ones(L) if ksflat is None else ksflat[rows]
        logits[t, :, :L], lerr[t, :, :L] = lg, gamma(D) * A
        s64[t, :L] = (w64[t][:, None] * np.maximum(lg, 0)).sum(0) * sc
        err[t, :L] = gamma(D + H + 3) * (np.abs(w64[t])[:, None] * A).sum(0) * sc
    return dict(logits=logits, logit_err=lerr, scores=s64, err=err, q=qv, k=kv, k_scale=ks,
                valid_len=vl)


def check_selection(idx, vals, s64, err, k, valid_len, name="indexer"):
    """The tie rule of the module docstring; AssertionError naming what is wrong."""
    T = s64.shape[0]
    if idx.shape != (T, k) or vals.shape != (T, k):
        raise AssertionError(f"{name}: shapes {idx.shape}/{vals.shape}, expected {(T, k)}")
    if idx.dtype != np.int32 or vals.dtype != np.float32:
        raise AssertionError(f"{name}: dtypes {idx.dtype}/{vals.dtype}, expected int32/float32")
    for t in range(T):
        L = int(valid_len[t])
        Kt = min(k, L)
        sel = idx[t, :Kt]
        if (idx[t, Kt:] != -1).any() or not np.isneginf(vals[t, Kt:]).all():
            raise AssertionError(f"{name}: token {t}: slots {Kt}.. must be -1 / -inf, got "
                                 f"{idx[t, Kt:]} / {vals[t, Kt:]}")
        if ((sel < 0) | (sel >= L)).any() or np.unique(sel).size != Kt:
            raise AssertionError(f"{name}: token {t}: indices {sel} must be {Kt} distinct keys "
                                 f"in [0, {L})")
        s, e = s64[t, :L], err[t, :L]
        lo, hi = s - e, s + e
        reach = hi[None, :] >= lo[:, None]                  # reach[n, m]: m may score >= n
        np.fill_diagonal(reach, False)
        must_in = reach.sum(1) < Kt
        beaten = (lo[None, :] > hi[:, None]).sum(1) >= Kt
        chosen = np.zeros(L, bool)
        chosen[sel] = True
        kth = np.sort(s)[::-1][Kt - 1] if Kt else np.nan
        miss = np.flatnonzero(must_in & ~chosen)
        if miss.size:
            raise AssertionError(f"{name}: token {t}: keys {miss[:4]} (oracle scores "
                                 f"{s[miss[:4]]}) clearly beat the {Kt}-th score {kth:.9g} but "
                                 f"were not selected; selected {sel}")
        bad = np.flatnonzero(beaten & chosen)
        if bad.size:
            raise AssertionError(f"{name}: token {t}: keys {bad[:4]} (oracle scores "
                                 f"{s[bad[:4]]}) are clearly below the {Kt}-th score {kth:.9g} "
                                 f"but were selected")
        v = vals[t, :Kt].astype(np.float64)
        off = np.abs(v - s[sel]) > e[sel]
        if off.any():
            j = np.flatnonzero(off)[:4]
            raise AssertionError(f"{name}: token {t}: returned scores {v[j]} at keys {sel[j]} "
                                 f"differ from the oracle {s[sel[j]]} by more than {e[sel[j]]}")
        if (np.diff(v) > 0).any():
            raise AssertionError(f"{name}: token {t}: scores are not in descending order: {v}")


def check_all(res, orc, k, name="indexer"):
    """Selection (tie rule) + every intermediate against the oracle."""
    idx, vals, inter = res
    vl = orc["valid_len"]
    check_selection(idx, vals, orc["scores"], orc["err"], k, vl, name)
    assert_close(inter["q"].astype(np.float32), orc["q"], bitwise=True, name=f"{name}: decoded q")
    assert_close(inter["k"].astype(np.float32), orc["k"], bitwise=True, name=f"{name}: decoded k")
    if orc["k_scale"] is None:
        assert inter["k_scale"] is None
    else:
        assert_close(inter["k_scale"], orc["k_scale"].reshape(-1), bitwise=True, name="k_scale")
    valid = ~np.isnan(orc["scores"])
    lg = inter["logits"].astype(np.float64)
    lvalid = np.broadcast_to(valid[:, None, :], lg.shape)
    assert (lg[~lvalid] == 0).all(), f"{name}: masked logits must be 0"
    assert (np.abs(lg - np.nan_to_num(orc["logits"]))[lvalid]
            <= orc["logit_err"][lvalid]).all(), f"{name}: logits outside gamma(D) * sum|q k|"
    sc = inter["scores"].astype(np.float64)
    assert np.isneginf(sc[~valid]).all(), f"{name}: masked scores must be -inf"
    over = np.abs(sc - np.nan_to_num(orc["scores"]))[valid] > orc["err"][valid]
    assert not over.any(), f"{name}: {int(over.sum())} reduced scores outside the bound"
    # top-k is exact on the pipeline's own float32 scores (ties -> lower index)
    K.assert_topk(vals, idx, inter["scores"], k, vl, name=f"{name}: top-k of its own scores")


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def problem(seed, T=3, H=4, D=64, N=64):
    g = np.random.default_rng(seed)
    q = outliers(g, (T, H, D), scale_spread=1.0)
    kc = outliers(g, (N, D), scale_spread=1.0)
    w = (g.standard_normal((T, H)) * 0.5).astype(np.float32)
    w[:, 0] = np.abs(w[:, 0]) + 0.5          # some positive weight in every token
    return q, kc, w


def fp4(q, kc):
    return formats.quantize(q, "dsv4_fp4"), formats.quantize(kc, "dsv4_fp4")


def page(arrays, page_size, T, per_token, seed, garbage):
    """Scatter row arrays [N, ...] into pages [P, page_size, ...] behind a block table.

    per_token: every token gets its own copy of the pages (table [T, max_pages]), else one shared
    table [1, max_pages]. Unused pages hold ``garbage(shape, dtype)`` (never read)."""
    g = np.random.default_rng(seed)
    N = arrays[0].shape[0]
    mp = N // page_size
    rows = T if per_token else 1
    P = rows * mp + 3
    perm = g.permutation(P)
    table = perm[:rows * mp].reshape(rows, mp).astype(np.int32)
    out = []
    for a in arrays:
        pa = garbage((P, page_size) + a.shape[1:], a.dtype)
        for r in range(rows):
            for j in range(mp):
                pa[table[r, j]] = a[j * page_size:(j + 1) * page_size]
        out.append(pa)
    return out, table


def random_bytes(shape, dtype):
    g = np.random.default_rng(99)
    if dtype == np.uint8:
        return g.integers(0, 256, shape, dtype=np.uint8)      # includes NaN scale / code bytes
    return np.full(shape, np.nan, dtype)


# ----------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------
def test_fp4_v4_with_short_rows():
    """dsv4_fp4 q and k; token 1 has valid_len 5 < k = 8 (-1 padding), token 2 a partial row."""
    q, kc, w = problem(1)
    qf, kf = fp4(q, kc)
    vl = np.array([64, 5, 30])
    res = indexer(qf, kf, w, 8, valid_len=vl, impls=REF, return_intermediates=True)
    check_all(res, oracle(qf, kf, w, vl), 8, "fp4")
    assert (res[0][1, 5:] == -1).all() and (res[0][1, :5] >= 0).all()


@pytest.mark.parametrize("block", [128, 32], ids=["v32-one-scale-per-row", "scale-per-32"])
def test_fp8(block):
    """V3.2 FP8: one scale per 128 (D = 64: one per row -> the k scale multiplies the head sum);
    and a scale per 32 (several per row -> keys decoded in full)."""
    q, kc, w = problem(2, T=2, H=3, N=48)
    q8, k8 = quantize_fp8(q, block), quantize_fp8(kc, block)
    step = np.repeat(k8.scales, block, axis=-1)[:, :64] * 2.0 ** -10    # half the subnormal step
    assert (np.abs(dequantize_fp8(k8) - kc) <= np.maximum(np.abs(kc) * 2.0 ** -4, step)).all()
    vl = np.array([48, 7])
    res = indexer(q8, k8, w, 8, valid_len=vl, impls=REF, return_intermediates=True)
    check_all(res, oracle(q8, k8, w, vl), 8, f"fp8/{block}")
    assert (res[2]["k_scale"] is not None) == (block == 128)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["float32", "bfloat16"])
def test_plain_float(dtype):
    q, kc, w = problem(3, T=2, H=2, D=32, N=32)
    q, kc = q.astype(dtype), kc.astype(dtype)
    res = indexer(q, kc, w, 6, impls=REF, return_intermediates=True)
    check_all(res, oracle(q, kc, w), 6, np.dtype(dtype).name)


# ----------------------------------------------------------------------------------------------
# Paged cache == contiguous cache
# ----------------------------------------------------------------------------------------------
def assert_same(a, b, name):
    for x, y, what in ((a[0], b[0], "indices"), (a[1], b[1], "scores"),
                       (a[2]["logits"], b[2]["logits"], "logits"),
                       (a[2]["scores"], b[2]["scores"], "reduced scores")):
        assert_close(x, y, bitwise=True, name=f"{name}: {what}")


@pytest.mark.parametrize("per_token", [True, False], ids=["table-per-token", "shared-table"])
def test_paged_equals_contiguous_fp4(per_token):
    q, kc, w = problem(4, D=32, N=48)
    qf, kf = fp4(q, kc)
    vl = np.array([48, 13, 41])
    ref = indexer(qf, kf, w, 8, valid_len=vl, impls=REF, return_intermediates=True)
    (data, scales), table = page([kf.data, kf.scales], 8, 3, per_token, 5, random_bytes)
    if per_token:                      # pages past a token's valid_len are never read: -1 is fine
        for t, L in enumerate(vl):
            table[t, -(-L // 8):] = -1
    kp = formats.QuantizedFP4(data, scales, None, "dsv4_fp4", data.shape[:2] + (32,))
    got = indexer(qf, kp, w, 8, valid_len=vl, block_table=table, impls=REF,
                  return_intermediates=True)
    assert_same(got, ref, "paged fp4")
    check_selection(got[0], got[1], *(lambda o: (o["scores"], o["err"]))(
        oracle(qf, kp, w, vl, table)), 8, vl, "paged fp4 vs oracle")


def test_paged_equals_contiguous_fp8_v32():
    """The V3.2 key scale is looked up through the block table in the head reduction."""
    q, kc, w = problem(6, T=2, H=2, D=32, N=32)
    q8, k8 = quantize_fp8(q), quantize_fp8(kc)
    vl = np.array([32, 19])
    ref = indexer(q8, k8, w, 6, valid_len=vl, impls=REF, return_intermediates=True)
    (codes, scales), table = page([k8.codes, k8.scales], 8, 2, True, 7, random_bytes)
    got = indexer(q8, QuantizedFP8(codes, scales), w, 6, valid_len=vl, block_table=table,
                  impls=REF, return_intermediates=True)
    assert_same(got, ref, "paged fp8")
    o = oracle(q8, QuantizedFP8(codes, scales), w, vl, table)
    check_selection(got[0], got[1], o["scores"], o["err"], 6, vl, "paged fp8 vs oracle")


# ----------------------------------------------------------------------------------------------
# Stage swaps
# ----------------------------------------------------------------------------------------------
def small_fp4(seed=8):
    q, kc, w = problem(seed, T=2, H=2, D=32, N=32)
    qf, kf = fp4(q, kc)
    return qf, kf, w, np.array([32, 11])


@pytest.fixture(scope="module")
def all_reference():
    qf, kf, w, vl = small_fp4()
    return indexer(qf, kf, w, 8, valid_len=vl, impls=REF, return_intermediates=True)


@pytest.mark.parametrize("stage", ["decode_fp4", "indexer_scores", "indexer_reduce", "topk"])
def test_single_stage_reference_swap(stage, all_reference):
    """One stage named explicitly, the others on auto (here: reference, with the warning)."""
    qf, kf, w, vl = small_fp4()
    with pytest.warns(registry.ProductionUnavailableWarning) if SIM else _nothing():
        got = indexer(qf, kf, w, 8, valid_len=vl, impls={stage: REF},
                      return_intermediates=True)
    assert_same(got, all_reference, f"{stage}=reference")


def test_fp8_decode_stage_swap():
    q, kc, w = problem(9, T=2, H=2, D=32, N=32)
    q8, k8 = quantize_fp8(q), quantize_fp8(kc)
    a = indexer(q8, k8, w, 5, impls=REF, return_intermediates=True)
    b = indexer(q8, k8, w, 5, impls={"indexer_decode_fp8": REF, "indexer_scores": REF,
                                     "indexer_reduce": REF, "topk": REF},
                return_intermediates=True)
    assert_same(a, b, "indexer_decode_fp8=reference")


@pytest.mark.filterwarnings("ignore::dsv4_numba.registry.ProductionUnavailableWarning")
@pytest.mark.skipif(not SIM, reason="on a GPU the real production top-k runs (test below)")
def test_topk_production_swap_simulated(monkeypatch, all_reference):
    """The production top-k's scalar pipeline (it runs under the simulator with 32-thread blocks,
    two blocks per row), swapped in through the registry for this test only."""
    impl = registry.REGISTRY["topk"].impls["production:sm_90a"]

    def sim_production(c):
        plan = K.TopkPlan(c.R, c.n, c.k, c.kind, threads=32, finish_threads=32, S=2)
        return K.topk_production(c, plan=plan, vectorized=False)

    monkeypatch.setattr(impl, "fn", sim_production)
    monkeypatch.setattr(impl, "unavailable", lambda: None)
    qf, kf, w, vl = small_fp4()
    got = indexer(qf, kf, w, 8, valid_len=vl, impls={"topk": "production"},
                  return_intermediates=True)
    assert_same(got, all_reference, "topk=production (simulated)")


@pytest.mark.skipif(detect_gpu() is None, reason="production stages need a GPU")
@pytest.mark.parametrize("stage", ["decode_fp4", "topk"])
def test_production_stage_swap_gpu(stage, all_reference):
    """Decode is bitwise and top-k exact, so a production stage changes nothing."""
    qf, kf, w, vl = small_fp4()
    got = indexer(qf, kf, w, 8, valid_len=vl, impls={s: (REF if s != stage else "production")
                                                     for s in STAGES},
                  return_intermediates=True)
    assert_same(got, all_reference, f"{stage}=production")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.filterwarnings("ignore::dsv4_numba.registry.ProductionUnavailableWarning")
def test_impls_errors():
    qf, kf, w, vl = small_fp4()
    with pytest.raises(ValueError, match="unknown stages.*fused"):
        indexer(qf, kf, w, 4, impls={"fused": REF})
    with pytest.raises(ValueError, match="impl 'fast'"):
        indexer(qf, kf, w, 4, impls={"indexer_scores": "fast"})
    if SIM:
        with pytest.raises(registry.ImplUnavailable):
            indexer(qf, kf, w, 4, impls={"topk": "production"})
        with pytest.raises(registry.ImplUnavailable):
            indexer(qf, kf, w, 4, impls={"indexer_scores": "production"})


# ----------------------------------------------------------------------------------------------
# The tests have teeth
# ----------------------------------------------------------------------------------------------
def test_wrong_fp4_decode_fails_the_index_check():
    """Keys decoded with the integer E2M1 bug (0,1,..,7 instead of 0,0.5,..,6) select other keys;
    the same pipeline fed the right decode passes."""
    q, kc, w = problem(10, T=2, H=4, D=64, N=64)
    qf, kf = fp4(q, kc)
    o = oracle(qf, kf, w)
    qd = formats.dequantize(qf)
    right = indexer(qd, formats.dequantize(kf), w, 8, impls=REF)
    check_selection(*right, o["scores"], o["err"], 8, o["valid_len"], "right decode")
    bad = indexer(qd, wrong.dequantize_integer_wrong(kf), w, 8, impls=REF)
    with pytest.raises(AssertionError, match="clearly"):
        check_selection(*bad, o["scores"], o["err"], 8, o["valid_len"], "integer decode")


def test_checker_tie_rule_by_hand():
    """Exact ties at the k-th place may go either way; a clear winner may not be dropped."""
    s = np.array([[5.0, 3.0, 3.0, 1.0, 3.0 + 1e-7, -2.0]])
    e = np.full_like(s, 1e-6)
    vl = [6]
    for pick in ([0, 1, 2], [0, 2, 4], [0, 4, 1]):
        v = np.sort(s[0, pick])[::-1].astype(np.float32)
        check_selection(np.array([pick], np.int32), v[None], s, e, 3, vl)
    for pick, match in (([1, 2, 4], "clearly beat"), ([0, 1, 3], "clearly below")):
        v = np.sort(s[0, pick])[::-1].astype(np.float32)
        with pytest.raises(AssertionError, match=match):
            check_selection(np.array([pick], np.int32), v[None], s, e, 3, vl)
    with pytest.raises(AssertionError, match="-1"):
        check_selection(np.array([[0, 1, 3, 2]], np.int32),
                        np.array([[5, 3, 1, 3]], np.float32), s[:, :4], e[:, :4], 4, [3])


# ----------------------------------------------------------------------------------------------
# Validation (before any launch)
# ----------------------------------------------------------------------------------------------
def _inputs():
    q, kc, w = problem(11, T=2, H=2, D=32, N=16)
    qf, kf = fp4(q, kc)
    return qf, kf, w


@pytest.mark.parametrize("change,err,match", [
    (lambda a: a.update(kc=formats.quantize(np.ones((16, 64), np.float32), "dsv4_fp4")),
     ValueError, "head dim mismatch"),
    (lambda a: a.update(w=np.ones((2, 3), np.float32)), ValueError, r"weights must be \[T, H\]"),
    (lambda a: a.update(w=np.ones((2, 2), np.float64)), TypeError, "float32 or bfloat16"),
    (lambda a: a.update(k=0), ValueError, r"1\.\.4096"),
    (lambda a: a.update(k=4097), ValueError, r"1\.\.4096"),
    (lambda a: a.update(k=2.0), TypeError, "int"),
    (lambda a: a.update(valid_len=[16, 17]), ValueError, r"valid_len\[1\] = 17 > N = 16"),
    (lambda a: a.update(valid_len=[1, 2, 3]), ValueError, r"shape \(T,\)"),
    (lambda a: a.update(kc=np.ones((16, 32), np.float32)), TypeError, "quantize both"),
    (lambda a: a.update(q=np.ones((2, 32), np.float32), kc=np.ones((16, 32), np.float32)),
     ValueError, r"q must be \[T, H, D\]"),
    (lambda a: a.update(block_table=np.zeros((1, 2), np.int32)), ValueError,
     "block_table is for a paged cache"),
    (lambda a: a.update(kc=np.ones((2, 8, 32), np.float32), q=np.ones((2, 2, 32), np.float32)),
     ValueError, "pass block_table"),
    (lambda a: a.update(kc=np.ones((2, 8, 32), np.float32), q=np.ones((2, 2, 32), np.float32),
                        block_table=np.array([[0, 2]], np.int32)), ValueError,
     r"block_table\[0, 1\] = 2 is not a page"),
    (lambda a: a.update(kc=np.ones((2, 8, 32), np.float32), q=np.ones((2, 2, 32), np.float32),
                        block_table=np.zeros((3, 2), np.int32)), ValueError, r"\[T, max_pages\]"),
    (lambda a: a.update(kc=np.ones((2, 8, 32), np.float32), q=np.ones((2, 2, 32), np.float32),
                        block_table=np.zeros((1, 2), np.float32)), TypeError, "integers"),
    (lambda a: a.update(q=np.full((2, 2, 32), np.nan, np.float32),
                        kc=np.ones((16, 32), np.float32)), ValueError, "NaN or inf"),
    (lambda a: a.update(q=formats.QuantizedFP4(np.zeros((2, 2, 16), np.uint8),
                                               np.full((2, 2, 1), 255, np.uint8), None,
                                               "dsv4_fp4", (2, 2, 32))), ValueError, "NaN scale"),
    (lambda a: a.update(q=quantize_fp8(np.ones((2, 2, 32))),
                        kc=QuantizedFP8(np.zeros((16, 32), np.uint8),
                                        np.zeros((16, 1), np.float32))),
     ValueError, "positive and finite"),
    (lambda a: a.update(q="q"), TypeError, "QuantizedFP4"),
])
def test_validation(change, err, match):
    qf, kf, w = _inputs()
    a = dict(q=qf, kc=kf, w=w, k=4, valid_len=None, block_table=None)
    change(a)
    with pytest.raises(err, match=match):
        indexer(a["q"], a["kc"], a["w"], a["k"], valid_len=a["valid_len"],
                block_table=a["block_table"], impls=REF)


def test_fp8_container_checks():
    with pytest.raises(ValueError, match="expected"):
        QuantizedFP8(np.zeros((4, 256), np.uint8), np.ones((4, 1), np.float32))
    with pytest.raises(TypeError, match="float32"):
        QuantizedFP8(np.zeros((4, 128), np.uint8), np.ones((4, 1), np.float64))


# ----------------------------------------------------------------------------------------------
# The reference kernels are real Numba-CUDA (not only simulator Python): compile for sm_90a
# ----------------------------------------------------------------------------------------------
def test_reference_kernels_compile_for_sm90a():
    from numba import types as t

    from dsv4_numba.stages import indexer_stages as S
    i32, i64, b, f32 = t.int32[::1], t.int64, t.boolean, t.float32[::1]
    sigs = [(S.fp8_decode_ref_kernel, (t.uint8[::1], f32, i64, i64, i64, b, f32)),
            (S.head_reduce_ref_kernel, (f32, f32, i64, f32, b, i32, i64, i64, i64, i32, i64, i64,
                                        i64, f32))]
    for arr in (f32, t.uint16[::1]):                 # float32 and bfloat16-bits inputs
        sigs.append((S.scores_ref_kernel, (arr, i64, arr, i64, i32, i64, i64, i64, i32, i64, i64,
                                           i64, i64, f32)))
    for kern, sig in sigs:
        res = kern.compile(sig, "sm_90a", want_sass=False)
        assert res.spill_stores == 0 and res.stack_bytes == 0, res.summary()
