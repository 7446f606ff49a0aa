"""The fused sm_90a indexer on an H100: against the float64 oracle with test_indexer's tie rule (an
O(L log L) form of it, for N = 65536), paged == contiguous bitwise, valid_len < k and 0, every score
position written (NaN-poisoned output), device arrays in -> device arrays out, fused vs staged;
V3.2 FP8 (e4m3 wgmma; the bound adds the FP8 accumulation term) and variant v3 (bitwise v2 + the
production top-k): ``-k "fp8 or v3"``."""
from __future__ import annotations

import os
import sys

import ml_dtypes
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import outliers  # noqa: E402
from test_indexer import oracle, page, random_bytes  # noqa: E402

from dsv4_numba import formats, runtime  # noqa: E402
from dsv4_numba.formats import QuantizedFP4  # noqa: E402
from dsv4_numba.pipelines import indexer_sm90 as F  # noqa: E402
from dsv4_numba.pipelines.indexer import _validate, indexer  # noqa: E402

pytestmark = pytest.mark.gpu
H, D = F.H_FUSED, F.D_FUSED


@pytest.fixture(scope="module", autouse=True)
def sm90():
    if runtime.device_arch() != "sm_90a":
        pytest.skip(f"the fused indexer is sm_90a only (this GPU: {runtime.device_arch()})")


def problem(seed, T, N, fmt):
    g = np.random.default_rng(seed)
    q = outliers(g, (T, H, D), scale_spread=1.0)
    kc = outliers(g, (N, D), scale_spread=1.0)
    w = (g.standard_normal((T, H)) * 0.5).astype(np.float32)
    w[:, 0] = np.abs(w[:, 0]) + 0.5
    if fmt == "bf16":
        return q.astype(ml_dtypes.bfloat16), kc.astype(ml_dtypes.bfloat16), w
    return formats.quantize(q, "dsv4_fp4"), formats.quantize(kc, "dsv4_fp4"), w


def check_selection_fast(idx, vals, s64, err, k, valid_len, name="fused"):
    """test_indexer.check_selection's rule with sorted bounds instead of an L x L matrix:
    must_in[n]: fewer than K others m with hi_m >= lo_n; beaten[n]: at least K m with lo_m > hi_n."""
    T = s64.shape[0]
    assert idx.shape == (T, k) and vals.shape == (T, k), (idx.shape, vals.shape)
    assert idx.dtype == np.int32 and vals.dtype == np.float32
    for t in range(T):
        L = int(valid_len[t])
        Kt = min(k, L)
        sel = idx[t, :Kt]
        assert (idx[t, Kt:] == -1).all() and np.isneginf(vals[t, Kt:]).all(), \
            f"{name}: token {t}: slots {Kt}.. must be -1 / -inf"
        assert ((sel >= 0) & (sel < L)).all() and np.unique(sel).size == Kt, \
            f"{name}: token {t}: {Kt} distinct keys in [0, {L}) expected"
        if not Kt:
            continue
        s, e = s64[t, :L], err[t, :L]
        lo, hi = s - e, s + e
        reach = L - np.searchsorted(np.sort(hi), lo, side="left") - 1     # minus n itself
        beaten = (L - np.searchsorted(np.sort(lo), hi, side="right")) >= Kt
        chosen = np.zeros(L, bool)
        chosen[sel] = True
        miss = np.flatnonzero((reach < Kt) & ~chosen)
        assert not miss.size, f"{name}: token {t}: keys {miss[:4]} must be selected"
        bad = np.flatnonzero(beaten & chosen)
        assert not bad.size, f"{name}: token {t}: keys {bad[:4]} are clearly below the k-th score"
        v = vals[t, :Kt].astype(np.float64)
        off = np.flatnonzero(np.abs(v - s[sel]) > e[sel])
        assert not off.size, f"{name}: token {t}: returned scores at keys {sel[off[:4]]} off the oracle"
        assert not (np.diff(v) > 0).any(), f"{name}: token {t}: scores not descending"


def check_scores(sc, orc, name="fused"):
    sc = sc.astype(np.float64)
    valid = ~np.isnan(orc["scores"])
    assert not np.isnan(sc).any(), f"{name}: NaN scores (unwritten positions?)"
    assert np.isneginf(sc[~valid]).all(), f"{name}: positions past valid_len must be -inf"
    over = np.abs(sc - np.nan_to_num(orc["scores"]))[valid] > orc["err"][valid]
    assert not over.any(), f"{name}: {int(over.sum())} scores outside gamma(D+H+3) sum|w||q.k|"


def test_decode8_exact_at_every_code_and_scale_on_the_gpu():
    """The FP4 decode every FP4 score kernel runs (prmt tables, mul.rn.bf16x2 by the scale as a
    bf16 pair) on the GPU, against ml_dtypes: every E2M1 code in every nibble, all 256 UE8M0 codes,
    bitwise (NaN for code 255) -- subnormal bf16 products (codes 0..7) included."""
    from numba import cuda
    from test_indexer_fused import _decode_both, assert_decode8
    words = np.array([0x76543210, 0xFEDCBA98, 0x1F2E3D4C, 0x8091A2B3], np.uint32)
    codes = np.arange(256, dtype=np.uint32)
    n = words.size * codes.size
    outs = [cuda.to_device(np.full(4 * n, 0xDEADBEEF, np.uint32)) for _ in range(2)]
    _decode_both.launch(4, 128, cuda.to_device(words), cuda.to_device(codes), *outs)
    for out in outs:                          # (on the GPU both are the GPU form)
        assert_decode8("GPU", out.copy_to_host(), words, codes)


@pytest.mark.parametrize("fmt", ["bf16", "dsv4_fp4"])
@pytest.mark.parametrize("T", [1, 4, 16])
@pytest.mark.parametrize("N", [127, 129, 65536])
def test_fused_matches_oracle(fmt, T, N):
    q, kc, w = problem(T * 7 + N, T, N, fmt)
    g = np.random.default_rng(N + T)
    vl = g.integers(0, N + 1, T).astype(np.int32)
    vl[0] = N
    if T > 2:
        vl[1] = 0                                      # a token with nothing to score
    k = 512                                            # > N for the small caches: -1 padding
    idx, vals, inter = indexer(q, kc, w, k, valid_len=vl, impls="fused", return_intermediates=True)
    orc = oracle(q, kc, w, vl)
    check_scores(inter["scores"], orc)
    check_selection_fast(idx, vals, orc["scores"], orc["err"], k, vl)


@pytest.mark.parametrize("fmt", ["bf16", "dsv4_fp4"])
@pytest.mark.parametrize("per_token", [False, True])
def test_paged_equals_contiguous(fmt, per_token):
    T, N, ps = 4, 4096, 64
    q, kc, w = problem(11, T, N, fmt)
    vl = np.array([N, 1000, 64, 4095], np.int32)
    ref = indexer(q, kc, w, 1024, valid_len=vl, impls="fused", return_intermediates=True)
    if fmt == "bf16":
        (pk,), table = page([kc.view(np.uint16)], ps, T, per_token, 3,
                            lambda shape, dt: np.full(shape, 0x7FC0, dt))   # bf16 NaN: never read
        pk = pk.view(ml_dtypes.bfloat16)
    else:
        (pd, psc), table = page([kc.data, kc.scales], ps, T, per_token, 3, random_bytes)
        pk = QuantizedFP4(pd, psc, None, "dsv4_fp4", pd.shape[:2] + (D,))
    got = indexer(q, pk, w, 1024, valid_len=vl, block_table=table, impls="fused",
                  return_intermediates=True)
    np.testing.assert_array_equal(got[2]["scores"].view(np.uint32), ref[2]["scores"].view(np.uint32))
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1].view(np.uint32), ref[1].view(np.uint32))


def test_every_score_position_written():
    from numba import cuda
    T, N = 3, 1000
    q, kc, w = problem(5, T, N, "dsv4_fp4")
    vl = np.array([1000, 999, 3], np.int32)
    c = _validate(q, kc, w, 16, vl, None)
    out = cuda.to_device(np.full(T * N, np.nan, np.float32))
    F.fused_scores(c, q, kc, w, out=out)
    sc = out.copy_to_host().reshape(T, N)
    check_scores(sc, oracle(q, kc, w, vl))


def test_device_arrays_in_device_arrays_out():
    from numba import cuda
    T, N = 4, 3000
    q, kc, w = problem(6, T, N, "bf16")
    host = indexer(q, kc, w, 256, impls="fused")
    dq, dk = (cuda.to_device(np.ascontiguousarray(x).view(np.uint16)) for x in (q, kc))
    dw = cuda.to_device(w)
    idx, vals = indexer(dq, dk, dw, 256, impls="fused")
    assert hasattr(idx, "copy_to_host") and hasattr(vals, "copy_to_host")
    np.testing.assert_array_equal(idx.copy_to_host(), host[0])
    np.testing.assert_array_equal(vals.copy_to_host().view(np.uint32), host[1].view(np.uint32))


def test_fused_and_staged_agree_within_the_bound():
    T, N = 4, 2048
    q, kc, w = problem(7, T, N, "dsv4_fp4")
    vl = np.array([2048, 2000, 700, 100], np.int32)
    orc = oracle(q, kc, w, vl)
    fused = indexer(q, kc, w, 512, valid_len=vl, impls="fused", return_intermediates=True)
    # indexer_reduce has no production implementation (the fused kernel is its production form):
    # named as reference so auto does not warn about it (the other stages stay on auto)
    staged = indexer(q, kc, w, 512, valid_len=vl, impls={"indexer_reduce": "reference"},
                     return_intermediates=True)
    for name, r in (("fused", fused), ("staged", staged)):
        check_scores(r[2]["scores"], orc, name)
        check_selection_fast(r[0], r[1], orc["scores"], orc["err"], 512, vl, name)
    both = ~np.isnan(orc["scores"])
    diff = np.abs(fused[2]["scores"].astype(np.float64) - staged[2]["scores"])[both]
    assert (diff <= 2 * orc["err"][both]).all()


@pytest.mark.parametrize("fmt", ["bf16", "dsv4_fp4"])
def test_staged_with_production_score_stage(fmt):
    """indexer_scores/production (wgmma, logits epilogue) inside the staged pipeline: decoded inputs
    bitwise the spec (FP4 decoded to bf16 for it), logits within gamma(D) sum|q k|, selection rule."""
    T, N = 4, 1500
    q, kc, w = problem(8, T, N, fmt)
    vl = np.array([1500, 1499, 200, 0], np.int32)
    orc = oracle(q, kc, w, vl)
    idx, vals, inter = indexer(q, kc, w, 256, valid_len=vl, impls={"indexer_scores": "production"},
                               return_intermediates=True)
    np.testing.assert_array_equal(np.asarray(inter["q"]).astype(np.float32), orc["q"])
    np.testing.assert_array_equal(np.asarray(inter["k"]).astype(np.float32), orc["k"])
    lg = inter["logits"].astype(np.float64)
    valid = ~np.isnan(orc["logits"])
    assert (lg[~valid] == 0).all()
    assert (np.abs(lg - np.nan_to_num(orc["logits"]))[valid] <= orc["logit_err"][valid]).all()
    check_scores(inter["scores"], orc, "staged+production GEMM")
    check_selection_fast(idx, vals, orc["scores"], orc["err"], 256, vl, "staged+production GEMM")


# ---------------------------------------------------------------- round 2 kernel (variant v2)
# Run alone with ``-k v2`` (one compile of the v2 kernel, one of the q decode, ~30 s of oracles).
@pytest.fixture
def v2(monkeypatch):
    monkeypatch.setenv("DSV4_INDEXER_VARIANT", "v2")


def _v2_plan_scores(q, kc, w, vl, tq=None, table=None, variant="v2", tpc=None, pf=None):
    """v2 (or v4) scores alone (no top-k: its compile stays out of the -k v2 run), NaN-poisoned
    output."""
    from numba import cuda
    c = _validate(q, kc, w, 16, vl, table)
    out = cuda.to_device(np.full(c.T * c.N, np.nan, np.float32))       # poisoned
    F.fused_plan(c, q, kc, w, out=out, variant=variant, tq=tq, tpc=tpc, pf=pf).run()
    return out.copy_to_host().reshape(c.T, c.N)


def _vl(T, N, seed):
    vl = np.random.default_rng(seed).integers(0, N + 1, T).astype(np.int32)
    vl[0] = N
    if T > 2:
        vl[1] = 0                                      # a token with nothing to score
    return vl


@pytest.mark.parametrize("fmt", ["bf16", "dsv4_fp4"])
@pytest.mark.parametrize("T,N", [(1, 129), (4, 127), (16, 129), (4, 65536)])
def test_v2_scores_match_oracle(fmt, T, N):
    q, kc, w = problem(T * 7 + N + 1, T, N, fmt)
    vl = _vl(T, N, N + T + 1)
    check_scores(_v2_plan_scores(q, kc, w, vl), oracle(q, kc, w, vl), "v2")


def _end_to_end_with_topk(fmt, seed, vl_seed, name, bound=None):
    """indexer(impls="fused") (the variant set by the caller's DSV4_INDEXER_VARIANT) at T = 4,
    N = 65536, k = 512: scores and the selection rule (``bound``: oracle, w -> the oracle with
    its error bound replaced, e.g. ``v5_oracle``)."""
    T, N, k = 4, 65536, 512
    q, kc, w = problem(seed, T, N, fmt)
    vl = _vl(T, N, vl_seed)
    idx, vals, inter = indexer(q, kc, w, k, valid_len=vl, impls="fused", return_intermediates=True)
    orc = oracle(q, kc, w, vl)
    if bound is not None:
        orc = bound(orc, w)
    check_scores(inter["scores"], orc, name)
    check_selection_fast(idx, vals, orc["scores"], orc["err"], k, vl, name)


@pytest.mark.parametrize("fmt", ["bf16", "dsv4_fp4"])
def test_v2_end_to_end_with_topk(v2, fmt):
    """indexer(impls="fused") with DSV4_INDEXER_VARIANT=v2: scores and the selection rule."""
    _end_to_end_with_topk(fmt, 99, 5, "v2")


@pytest.mark.parametrize("fmt", ["bf16", "dsv4_fp4"])
@pytest.mark.parametrize("tq", [7, 32])
def test_v2_many_tokens_per_cta(fmt, tq):
    """T = 33 tokens looped in one CTA column (tq = 32: a group of 32 and one of 1; tq = 7: a short
    last group): the q prefetch pipeline across tokens, every position written (no v1 run here:
    its compile alone is ~1 min)."""
    T, N = 33, 1000
    q, kc, w = problem(40 + tq, T, N, fmt)
    vl = np.random.default_rng(tq).integers(0, N + 1, T).astype(np.int32)
    vl[0] = N
    orc = oracle(q, kc, w, vl)
    sc = _v2_plan_scores(q, kc, w, vl, tq)
    check_scores(sc, orc, "v2")


def _paged_equals_contiguous(fmt, seed, variant, tq=None, bound=None):
    """Scores of ``variant`` (T = 4, N = 4096) against the oracle (``bound``: as in
    ``_end_to_end_with_topk``), then a paged cache (a shared and a per-token table, NaN / random
    garbage in unused pages) bitwise equal to contiguous."""
    T, N, ps = 4, 4096, 64
    q, kc, w = problem(seed, T, N, fmt)
    vl = np.array([N, 1000, 64, 4095], np.int32)
    ref = _v2_plan_scores(q, kc, w, vl, tq, variant=variant)
    orc = oracle(q, kc, w, vl)
    check_scores(ref, orc if bound is None else bound(orc, w), variant)
    for per_token in (False, True):
        if fmt == "bf16":
            (pk,), table = page([kc.view(np.uint16)], ps, T, per_token, 3,
                                lambda shape, dt: np.full(shape, 0x7FC0, dt))
            pk = pk.view(ml_dtypes.bfloat16)
        else:
            (pd, psc), table = page([kc.data, kc.scales], ps, T, per_token, 3, random_bytes)
            pk = QuantizedFP4(pd, psc, None, "dsv4_fp4", pd.shape[:2] + (D,))
        got = _v2_plan_scores(q, pk, w, vl, tq, table, variant=variant)
        np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("fmt", ["bf16", "dsv4_fp4"])
def test_v2_paged_equals_contiguous(fmt):
    _paged_equals_contiguous(fmt, 12, "v2", tq=4)


# ---------------------------------------------------------------- round 4 kernel (variant v4)
# ``-k v4``: keys decoded into wgmma's A registers (pipelines/indexer_sm90_rs.py).
@pytest.mark.parametrize("fmt", ["bf16", "dsv4_fp4"])
@pytest.mark.parametrize("T,N,tpc", [(1, 129, None), (2, 127, 1), (3, 200, 2), (4, 127, None),
                                     (16, 129, 1), (4, 65536, None), (64, 4096, None),
                                     (5, 65536, 7)])
def test_v4_scores_match_oracle(fmt, T, N, tpc):
    q, kc, w = problem(T * 11 + N + 3, T, N, fmt)
    vl = _vl(T, N, N + T + 3)
    check_scores(_v2_plan_scores(q, kc, w, vl, variant="v4", tpc=tpc), oracle(q, kc, w, vl), "v4")


def test_v4_prefetch_depths_agree():
    """TB = 1 FP4 at every prefetch depth (the raw-key queue, ``advance_keys``): 5 tiles a CTA,
    the last CTA's short, valid_len inside a tile; bitwise equal across depths, within the
    oracle's bound."""
    from dsv4_numba.pipelines import indexer_sm90_rs as R
    N = 3 * 5 * 64 + 45
    q, kc, w = problem(77, 1, N, "dsv4_fp4")
    vl = np.array([N - 20], np.int32)
    got = {pf: _v2_plan_scores(q, kc, w, vl, variant="v4", tpc=5, pf=pf) for pf in R.PF_CHOICES}
    check_scores(got[3], oracle(q, kc, w, vl), "v4 pf 3")
    for pf in R.PF_CHOICES:
        np.testing.assert_array_equal(got[pf].view(np.uint32), got[3].view(np.uint32),
                                      err_msg=f"pf {pf}")


@pytest.mark.parametrize("fmt", ["bf16", "dsv4_fp4"])
def test_v4_paged_equals_contiguous(fmt):
    _paged_equals_contiguous(fmt, 13, "v4")


@pytest.mark.parametrize("fmt", ["bf16", "dsv4_fp4"])
def test_v4_end_to_end_with_topk(monkeypatch, fmt):
    """indexer(impls="fused") with DSV4_INDEXER_VARIANT=v4: scores and the selection rule."""
    monkeypatch.setenv("DSV4_INDEXER_VARIANT", "v4")
    _end_to_end_with_topk(fmt, 98, 6, "v4")


# ---------------------------------------------------------------- round 6 kernel (variant v6)
# ``-k v6``: v4 with the keys through a shared-memory mbarrier ring (TMA / cp.async gather).
@pytest.mark.parametrize("fmt", ["bf16", "dsv4_fp4"])
@pytest.mark.parametrize("T,N,tpc", [(1, 5, None), (1, 129, None), (3, 200, 2), (4, 127, None),
                                     (16, 129, 1), (4, 65536, None), (64, 4096, None),
                                     (5, 65536, 7), (1, 65536, 9)])
def test_v6_scores_match_oracle_and_equal_v4(fmt, T, N, tpc):
    """Within the oracle's bound and bitwise v4's scores (the same products in the same order):
    N = 5 (a TMA box past the cache's end), 7 and 9 tiles a CTA (ring slots reused twice), short
    last tiles, tokens with nothing to score."""
    q, kc, w = problem(T * 17 + N + 4, T, N, fmt)
    vl = _vl(T, N, N + T + 4)
    got = _v2_plan_scores(q, kc, w, vl, variant="v6", tpc=tpc)
    check_scores(got, oracle(q, kc, w, vl), "v6")
    ref = _v2_plan_scores(q, kc, w, vl, variant="v4", tpc=tpc)
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("fmt", ["bf16", "dsv4_fp4"])
def test_v6_paged_equals_contiguous(fmt):
    """The cp.async gather (paged: a shared and a per-token table, garbage in unused pages)
    bitwise equal to the TMA loads (contiguous)."""
    _paged_equals_contiguous(fmt, 15, "v6")


@pytest.mark.parametrize("fmt", ["bf16", "dsv4_fp4"])
def test_v6_end_to_end_with_topk(monkeypatch, fmt):
    """indexer(impls="fused") with DSV4_INDEXER_VARIANT=v6: scores and the selection rule."""
    monkeypatch.setenv("DSV4_INDEXER_VARIANT", "v6")
    _end_to_end_with_topk(fmt, 96, 8, "v6")


# ---------------------------------------------------------------- round 5 kernel (variant v5)
# ``-k test_v5``: FP4 q and keys rewritten as E4M3 (one power-of-two scale a row) on the V3.2
# kernel's FP8 wgmma (indexer_sm90.e4m3_kernel); the bound adds the FP8 accumulation term.
def v5_oracle(orc, w):
    """The oracle with v5's bound: float32's + FP8_ACC_REL * sum_h |w| sum_d |q k| (the oracle's
    q, k carry both row scales, so no key-scale factor as for V3.2)."""
    err, extra = fp8_bound(orc, w, np.ones(orc["scores"].shape[1]))
    return dict(orc, err=err, fp8_extra=extra)


def _e4m3_values(x):
    """The values v5's kernel multiplies for FP4 ``x`` (``fp4_rows_as_e4m3``: codes x row scale),
    float64."""
    codes, sc = F.fp4_rows_as_e4m3(x.data, x.scales)
    return codes.view(ml_dtypes.float8_e4m3fn).astype(np.float64) * sc[..., None]


def _exact_as_e4m3(x):
    """v5's rewrite of these FP4 rows is exact (every block within 2^8 of its row's largest scale):
    the oracle of the FP4 values is the oracle of what the kernel multiplies."""
    np.testing.assert_array_equal(_e4m3_values(x), formats.dequantize(x).astype(np.float64))


def _check_v5(sc, orc, name):
    check_scores(sc, orc, name)
    valid = ~np.isnan(orc["scores"])
    d = np.abs(sc.astype(np.float64) - np.nan_to_num(orc["scores"]))[valid]
    print(f"\n{name}: max |err| / FP8 term {np.max(d / np.maximum(orc['fp8_extra'][valid], 1e-300)):.3g}")


@pytest.mark.parametrize("T,N", [(1, 129), (4, 127), (16, 1000), (4, 65536), (64, 4096)])
def test_v5_scores_match_oracle(T, N):
    q, kc, w = problem(T * 13 + N + 5, T, N, "dsv4_fp4")
    _exact_as_e4m3(q)
    _exact_as_e4m3(kc)
    vl = _vl(T, N, N + T + 5)
    _check_v5(_v2_plan_scores(q, kc, w, vl, variant="v5"), v5_oracle(oracle(q, kc, w, vl), w), "v5")


def test_v5_large_scale_spread_rounds_as_documented():
    """Blocks 2^10-2^12 below their row's largest scale (some keys and q heads): the decode rounds
    them to E4M3 (nearest even), and the scores follow the oracle of those rounded values
    (``fp4_rows_as_e4m3``) within v5's bound; the rounding is real (values changed)."""
    T, N = 4, 1000
    q, kc, w = problem(123, T, N, "dsv4_fp4")
    ks, qs = kc.scales.copy(), q.scales.copy()
    ks[::7, 3] = np.maximum(ks[::7, 3].astype(np.int64) - 12, 0)
    qs[:, ::5, 2] = np.maximum(qs[:, ::5, 2].astype(np.int64) - 10, 0)
    kc2 = QuantizedFP4(kc.data, ks, None, "dsv4_fp4", (N, D))
    q2 = QuantizedFP4(q.data, qs, None, "dsv4_fp4", (T, H, D))
    qv, kv = (_e4m3_values(x).astype(np.float32) for x in (q2, kc2))
    assert not np.array_equal(kv, formats.dequantize(kc2)), "the spread must make the decode round"
    vl = _vl(T, N, 77)
    _check_v5(_v2_plan_scores(q2, kc2, w, vl, variant="v5"), v5_oracle(oracle(qv, kv, w, vl), w),
              "v5 spread")


def test_v5_paged_equals_contiguous():
    _paged_equals_contiguous("dsv4_fp4", 14, "v5", bound=v5_oracle)


def test_v5_end_to_end_with_topk(monkeypatch):
    """indexer(impls="fused") with DSV4_INDEXER_VARIANT=v5: scores and the selection rule (v5's
    bound)."""
    monkeypatch.setenv("DSV4_INDEXER_VARIANT", "v5")
    _end_to_end_with_topk("dsv4_fp4", 97, 7, "v5", bound=v5_oracle)


def test_v5_refuses_bf16():
    q, kc, w = problem(1, 1, 129, "bf16")
    with pytest.raises(ValueError, match="variant v5 runs FP4"):
        _v2_plan_scores(q, kc, w, np.array([129], np.int32), variant="v5")


# ---------------------------------------------------------------- round 3: V3.2 FP8 and variant v3
# Run alone with ``-k "fp8 or v3"`` (compiles: the FP8 kernel, the v2 kernel, the histogram select).
def fp8_problem(seed, T, N):
    q, kc, w = problem(seed, T, N, "bf16")
    return (formats.quantize_fp8(q.astype(np.float32)), formats.quantize_fp8(kc.astype(np.float32)),
            w)


def fp8_bound(orc, w, kscale_rows):
    """The oracle's float32 bound plus the FP8 wgmma's accumulation: FP8_ACC_REL * sum|q k| per
    logit (the Hopper tensor core keeps fewer than float32's bits while accumulating E4M3
    products), times |w| and the key scale. Also returns that extra term alone (for reporting)."""
    from test_indexer import gamma
    A = orc["logit_err"] / gamma(D)                      # sum_d |q k| per (t, h, n)
    extra = F.FP8_ACC_REL * (np.abs(np.asarray(w, np.float64))[:, :, None] * A).sum(1)
    extra = extra * kscale_rows[None, :]
    return orc["err"] + extra, extra


@pytest.mark.parametrize("T,N", [(1, 129), (4, 65536), (16, 1000)])
def test_fp8_scores_match_oracle(T, N):
    """E4M3 wgmma (k32) scores vs the float64 oracle: within the float32 bound + the FP8
    accumulation term; prints the largest error seen as a share of that term (the evidence
    for FP8_ACC_REL); every position written (NaN-poisoned output)."""
    q, kc, w = fp8_problem(T * 5 + N, T, N)
    vl = _vl(T, N, N + T + 2)
    orc = oracle(q, kc, w, vl)
    err, extra = fp8_bound(orc, w, kc.scales[:, 0].astype(np.float64))
    from numba import cuda
    c = _validate(q, kc, w, 16, vl, None)
    out = cuda.to_device(np.full(T * N, np.nan, np.float32))
    F.fused_plan(c, q, kc, w, out=out).run()
    sc = out.copy_to_host().reshape(T, N).astype(np.float64)
    valid = ~np.isnan(orc["scores"])
    assert not np.isnan(sc).any(), "fp8: unwritten scores"
    assert np.isneginf(sc[~valid]).all()
    d = np.abs(sc - np.nan_to_num(orc["scores"]))[valid]
    print(f"\nFP8 T={T} N={N}: max |err| / float32 bound {np.max(d / orc['err'][valid]):.3g}, "
          f"/ FP8 term {np.max(d / np.maximum(extra[valid], 1e-300)):.3g}")
    assert (d <= err[valid]).all(), f"fp8: {int((d > err[valid]).sum())} scores outside the bound"


@pytest.mark.parametrize("per_token", [False, True])
def test_fp8_end_to_end_paged_equals_contiguous(per_token):
    """indexer(impls="fused") on V3.2 FP8: the selection rule (FP8 bound) and a paged cache
    (NaN scales / random codes in unused pages) bitwise the contiguous result."""
    from dsv4_numba.formats import QuantizedFP8
    T, N, ps, k = 4, 4096, 64, 1024
    q, kc, w = fp8_problem(13, T, N)
    vl = np.array([N, 1000, 64, 4095], np.int32)
    ref = indexer(q, kc, w, k, valid_len=vl, impls="fused", return_intermediates=True)
    orc = oracle(q, kc, w, vl)
    err, _ = fp8_bound(orc, w, kc.scales[:, 0].astype(np.float64))
    check_selection_fast(ref[0], ref[1], orc["scores"], err, k, vl, "fp8")
    (codes, scales), table = page([kc.codes, kc.scales], ps, T, per_token, 3, random_bytes)
    got = indexer(q, QuantizedFP8(codes, scales), w, k, valid_len=vl, block_table=table,
                  impls="fused", return_intermediates=True)
    np.testing.assert_array_equal(got[2]["scores"].view(np.uint32), ref[2]["scores"].view(np.uint32))
    np.testing.assert_array_equal(got[0], ref[0])


@pytest.mark.parametrize("fmt", ["bf16", "dsv4_fp4", "fp8"])
@pytest.mark.parametrize("T,N,k", [(1, 65536, 2048), (4, 65536, 512), (5, 3000, 1024)])
def test_v3_equals_v2_with_the_production_topk(monkeypatch, fmt, T, N, k):
    """v3 (histogram counted in the score kernel, select without the histogram launch) returns
    bitwise what v2 + the registered production top-k return (the top-k order is total: value
    descending, ties to the lower index), leaves its workspace zero, and repeats bitwise.
    (5, 3000, 1024): short rows, valid_len < k and 0."""
    from dsv4_numba.pipelines import indexer_topk as IT
    q, kc, w = fp8_problem(77 + T, T, N) if fmt == "fp8" else problem(77 + T, T, N, fmt)
    vl = _vl(T, N, 9 + T)
    monkeypatch.setenv("DSV4_INDEXER_VARIANT", "v2")
    ref = indexer(q, kc, w, k, valid_len=vl, impls="fused:production", return_intermediates=True)
    monkeypatch.setenv("DSV4_INDEXER_VARIANT", "v3")
    for _ in range(2):
        got = indexer(q, kc, w, k, valid_len=vl, impls="fused", return_intermediates=True)
        np.testing.assert_array_equal(got[2]["scores"].view(np.uint32),
                                      ref[2]["scores"].view(np.uint32))
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1].view(np.uint32), ref[1].view(np.uint32))
        ws = IT.hist_topk_for(T, N, k).plan.workspace(True)[0].copy_to_host()
        assert not ws.any(), "v3 must leave the top-k workspace zero"
