"""The fused sm_90a attention kernel (pipelines/fmha_sm90.py) on an H100, against a float64 oracle.

Error bound of the fused kernel (bfloat16 inputs; u = 2^-24, u_bf = 2^-8 the bfloat16 unit
roundoff), per query row with visible keys j < L (derivation as in tests/test_fmha.py, plus the one
rounding the fused kernel adds: P is rounded to bfloat16 before the PV GEMM, the row sum uses the
float32 P)::

    Delta = gamma(D + 1) * scale * max_j sum_d |q_d k_jd|          (float32 logits)
    eps   = expm1(2 Delta) + 8 u (Z + Delta) + gamma(Tk + 8)         (softmax in float32, exp2)
    E     = (eps + u_bf (1 + eps) + gamma(Tk)) * sum_j p_j |v_j|     (P rounded to bf16, f32 sums)
    |out - O64| <= u_bf |O64| + (1 + u_bf) E + 2^-134                (one rounding to bf16;
                                                                   float16: + 2^-25, half its
                                                                   subnormal spacing)
    |lse - lse64| <= Delta + 16 u (Z + Delta + |lse64|) + gamma(Tk + 8)

float16 inputs: the same bound with u_bf replaced by the float16 unit roundoff 2^-11 (P and the
output are rounded to float16; every value here is far inside float16's range), plus one term for
P's float16 subnormals: the kernel's unnormalised p_j = exp2(x_j - m) <= 1 below 2^-14 rounds with
an absolute error <= 2^-25 (half the subnormal spacing), and the output divides by the row sum
den >= 1 of the oracle's scaling: E += 2^-25 * sum_{j visible} |v_j| / den.

Exact rules: rows that see no key give out = 0 and lse = -inf (no sink) / the sink (within the
float32 rounding of sink * log2(e) * ln(2)); outputs are poisoned with NaN before the launch, so an
unwritten element fails; the same call twice is bitwise equal. The K/V cache past kv_lengths is
filled with NaN (it must never reach a result).
"""
import os
import sys
import zlib

import ml_dtypes
import numpy as np
import pytest

import dsv4_numba as d
from dsv4_numba import runtime
from dsv4_numba.pipelines import fmha_sm90
from dsv4_numba.pipelines.fmha import fmha

pytestmark = pytest.mark.gpu
BF16 = ml_dtypes.bfloat16
U, UBF = 2.0 ** -24, 2.0 ** -8


def gamma(n):
    return n * U / (1 - n * U)


@pytest.fixture(scope="module", autouse=True)
def need_sm90a():
    if runtime.device_arch() != "sm_90a":
        pytest.skip(f"the fused kernel is sm_90a only; this GPU is {runtime.device_arch()}")


def oracle(q, k, v, causal=False, scale=None, sink=None, kv_lengths=None):
    """float64 out [B,Tq,Hq,D], lse [B,Hq,Tq] and their bounds (module docstring), vectorized; the
    16-bit unit roundoff from q's dtype (bfloat16 2^-8, float16 2^-11)."""
    f16 = np.asarray(q).dtype == np.float16
    UBF = 2.0 ** -11 if f16 else 2.0 ** -8
    q64, k64, v64 = (np.asarray(x).astype(np.float64) for x in (q, k, v))
    B, Tq, Hq, D = q64.shape
    Tk, Hkv = k64.shape[1], k64.shape[2]
    scale = float(np.float32(D ** -0.5 if scale is None else scale))
    lens = np.full(B, Tk) if kv_lengths is None else np.asarray(kv_lengths)
    O = np.zeros((B, Tq, Hq, D))
    Ob = np.zeros((B, Tq, Hq, D))
    lse = np.empty((B, Hq, Tq))
    lse_b = np.zeros((B, Hq, Tq))
    i = np.arange(Tq)[:, None]
    j = np.arange(Tk)[None, :]
    for b in range(B):
        L = np.minimum(lens[b], Tk) + 0 * i
        if causal:
            L = np.clip(np.minimum(L, i + Tk - Tq + 1), 0, None)
        vis = j < L                                                      # [Tq, Tk]
        for hq in range(Hq):
            g = hq // (Hq // Hkv)
            kk, vv = k64[b, :, g], v64[b, :, g]
            kk = np.where(np.isnan(kk), 0, kk)                           # garbage past lengths
            vv = np.where(np.isnan(vv), 0, vv)
            z = np.where(vis, scale * (q64[b, :, hq] @ kk.T), -np.inf)
            dz = np.where(vis, gamma(D + 1) * scale * (np.abs(q64[b, :, hq]) @ np.abs(kk).T), 0)
            s = -np.inf if sink is None else float(np.float32(sink[hq]))
            m = np.maximum(z.max(axis=1, initial=-np.inf), s)
            mm = np.where(np.isfinite(m), m, 0)[:, None]
            e = np.exp(z - mm)
            den = e.sum(axis=1) + np.exp(s - mm[:, 0])
            with np.errstate(invalid="ignore", divide="ignore"):
                p = np.where(den[:, None] > 0, e / den[:, None], 0)
                lse[b, hq] = np.where(den > 0, mm[:, 0] + np.log(den), -np.inf)
            Delta = dz.max(axis=1, initial=0)
            Z = np.maximum(np.abs(np.where(vis, z, 0)).max(axis=1, initial=0),
                           abs(s) if np.isfinite(s) else 0)
            eps = np.expm1(2 * Delta) + 8 * U * (Z + Delta) + gamma(Tk + 8)
            O[b, :, hq] = p @ vv
            E = (eps + UBF * (1 + eps) + gamma(Tk))[:, None] * (p @ np.abs(vv))
            if f16:                        # float16 subnormal P (module docstring)
                with np.errstate(invalid="ignore", divide="ignore"):
                    E += np.where(den[:, None] > 0, 2.0 ** -25 * (vis @ np.abs(vv)) / den[:, None], 0)
            Ob[b, :, hq] = UBF * np.abs(O[b, :, hq]) + (1 + UBF) * E + (2.0 ** -25 if f16 else 2.0 ** -134)
            fin = np.isfinite(lse[b, hq])
            lse_b[b, hq] = np.where(fin, Delta + 16 * U * (Z + Delta + np.abs(np.where(fin, lse[b, hq], 0)))
                                    + gamma(Tk + 8), 0)
    return O, Ob, lse, lse_b


def check(out, lse, orc, name):
    O, Ob, L, Lb = orc
    out = np.asarray(out).astype(np.float64)
    assert not np.isnan(out).any(), f"{name}: NaN in out (unwritten or poisoned)"
    err = np.abs(out - O)
    bad = err > Ob
    if bad.any():
        c = [tuple(int(x) for x in a) for a in np.argwhere(bad)[:5]]
        raise AssertionError(f"{name}: {int(bad.sum())} of {out.size} outputs outside the bound, e.g. "
                             + ", ".join(f"{x}: got {out[x]:.6g} want {O[x]:.6g} bound {Ob[x]:.3g}"
                                         for x in c))
    lse = np.asarray(lse).astype(np.float64)
    inf = np.isinf(L)
    assert (lse[inf] == L[inf]).all(), f"{name}: lse must be -inf exactly where no key is seen"
    e = np.abs(np.where(inf, 0, lse) - np.where(inf, 0, L))
    assert not np.isnan(e).any(), f"{name}: NaN lse"
    assert (e <= Lb + 1e-30).all(), f"{name}: lse error {e.max():.3g} > bound {Lb[e > Lb].min():.3g}"


def problem(seed, B, Tq, Tk, Hq, Hkv, D, spread=3.0, dtype=BF16):
    g = np.random.default_rng(seed)
    q = g.standard_normal((B, Tq, Hq, D)) * spread
    k = g.standard_normal((B, Tk, Hkv, D))
    v = g.standard_normal((B, Tk, Hkv, D)) * 10.0 ** g.uniform(-1, 1, (B, Tk, Hkv, 1))
    v.reshape(-1)[g.integers(0, v.size, max(1, v.size // 64))] *= 50          # outliers
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def run_plan(q, k, v, causal=False, sink=None, kv_lengths=None, scale=None, schedule="v1"):
    """Through fmha's validation and the fused Plan (consumer ``schedule``, see fmha_sm90; None:
    the default), with NaN-poisoned outputs; returns host arrays (out as q's dtype [B,Tq,Hq,D],
    lse [B,Hq,Tq])."""
    from numba import cuda

    from dsv4_numba.pipelines.fmha import _validate
    c = _validate(q, k, v, causal, scale, sink, True, kv_lengths)
    assert fmha_sm90.unsupported(c, False) is None
    f16 = q.dtype == np.float16
    dev = [cuda.to_device(np.ascontiguousarray(x) if f16 else np.ascontiguousarray(x).view(np.uint16))
           for x in (q, k, v)]
    plan = fmha_sm90.Plan(c, *(x.reshape(-1) for x in dev), cuda.to_device(c.lens),
                          cuda.to_device(c.sink) if c.sink is not None else None, schedule=schedule)
    plan.out.copy_to_device(np.full(plan.out.shape, 0x7FC17FC1, np.uint32))   # NaN poison
    plan.lse.copy_to_device(np.full(plan.lse.shape, np.nan, np.float32))
    plan.launch()
    if not plan.wait(30):       # a hung kernel would hang every later test: stop the run, loudly
        sys.stderr.write(f"\nFATAL: fmha_sm90 schedule {plan.schedule} did not finish in 30 s "
                         f"(deadlock?) on q {q.shape}, k {k.shape}, causal={causal}\n")
        sys.stderr.flush()
        os._exit(3)
    cuda.synchronize()
    B, Tq, Hq, D = q.shape
    return (plan.out.copy_to_host().view(np.float16 if f16 else BF16).reshape(B, Tq, Hq, D),
            plan.lse.copy_to_host().reshape(B, Hq, Tq))


#: the head dims of round 1 (bfloat16, schedules v1 and v2 each); every D x dtype runs in
#: test_every_dim_and_dtype_vs_oracle (the default schedule)
ROUND1_D = (64, 128)

SHAPES = {   # (B, Tq, Tk, Hq, Hkv)
    "mha_127x129": (2, 127, 129, 2, 2),
    "gqa_129x127": (1, 129, 127, 4, 2),
    "mqa_1000": (1, 1000, 1000, 2, 1),
    "decode1_gqa": (3, 1, 1000, 8, 2),
    "decode4_mqa": (2, 4, 129, 4, 1),
    "gqa3_unpacked": (1, 129, 200, 6, 2),
    "one": (1, 1, 1, 1, 1),
}


@pytest.mark.parametrize("D", ROUND1_D)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_fused_vs_oracle(shape, causal, D):
    B, Tq, Tk, Hq, Hkv = SHAPES[shape]
    q, k, v = problem(zlib.crc32(f"{shape}{causal}{D}".encode()), B, Tq, Tk, Hq, Hkv, D)
    out, lse = run_plan(q, k, v, causal=causal)
    check(out, lse, oracle(q, k, v, causal=causal), f"{shape} causal={causal} D={D}")


# schedule v2 (setmaxnreg, 128-key tiles, S(kt) before P V(kt-1), ping-pong consumers, deeper
# ring) runs the calls with 2 consumer warpgroups; the decode shapes fall back to v1 (nc = 1).
# "long" has 16 key tiles (wraps the 3- / 4-stage ring several times) and a causal diagonal
# crossing tiles at an offset of Tk - Tq = 1000.
V2_SHAPES = {k: SHAPES[k] for k in ("mha_127x129", "gqa_129x127", "mqa_1000", "gqa3_unpacked")}
V2_SHAPES["long"] = (1, 1048, 2048, 2, 2)


@pytest.mark.parametrize("D", ROUND1_D)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", list(V2_SHAPES), ids=list(V2_SHAPES))
def test_v2_vs_oracle(shape, causal, D):
    B, Tq, Tk, Hq, Hkv = V2_SHAPES[shape]
    q, k, v = problem(zlib.crc32(f"v2{shape}{causal}{D}".encode()), B, Tq, Tk, Hq, Hkv, D)
    out, lse = run_plan(q, k, v, causal=causal, schedule="v2")
    check(out, lse, oracle(q, k, v, causal=causal), f"v2 {shape} causal={causal} D={D}")
    out2, lse2 = run_plan(q, k, v, causal=causal, schedule="v2")
    np.testing.assert_array_equal(out.view(np.uint16), out2.view(np.uint16))    # deterministic
    np.testing.assert_array_equal(lse.view(np.uint32), lse2.view(np.uint32))


@pytest.mark.parametrize("schedule", ["v1", "v2"])
@pytest.mark.parametrize("D", ROUND1_D)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_lengths_sink_and_garbage_past_length(causal, D, schedule):
    """Per-batch key lengths incl. 0 (documented result: out 0, lse = sink / -inf), a sink, and a
    cache holding NaN past each length (must not reach any result)."""
    B, Tq, Tk, Hq, Hkv = 4, 129, 200, 4, 2
    q, k, v = problem(7 + D, B, Tq, Tk, Hq, Hkv, D)
    lens = np.array([0, 1, 130, 200], np.int32)
    for b, n in enumerate(lens):
        k[b, n:] = np.nan
        v[b, n:] = np.nan
    for sink in (None, np.array([0.5, -2.0, 3.0, -np.inf], np.float32)):
        out, lse = run_plan(q, k, v, causal=causal, sink=sink, kv_lengths=lens, schedule=schedule)
        orc = oracle(q, k, v, causal=causal, sink=sink, kv_lengths=lens)
        check(out, lse, orc, f"{schedule} lengths causal={causal} sink={sink is not None} D={D}")
        assert (out[0].astype(np.float32) == 0).all()
        if sink is None:
            assert np.isneginf(lse[0]).all()
        else:
            np.testing.assert_allclose(lse[0, :3], np.repeat(sink[:3, None], Tq, 1), rtol=1e-6)


@pytest.mark.parametrize("schedule", ["v1", "v2"])
@pytest.mark.parametrize("D", ROUND1_D)
def test_causal_more_queries_than_keys(D, schedule):
    """Tq > Tk causal: the first Tq - Tk queries see nothing (out 0, lse -inf); with v2 the first
    CTA (queries 0..127) has a single, partly visible key tile."""
    q, k, v = problem(3, 1, 129, 100, 2, 1, D)
    out, lse = run_plan(q, k, v, causal=True, schedule=schedule)
    check(out, lse, oracle(q, k, v, causal=True), "Tq > Tk causal")
    assert (out[0, :29].astype(np.float32) == 0).all() and np.isneginf(lse[0, :, :29]).all()


@pytest.mark.parametrize("schedule", ["v1", "v2"])
def test_nan_rules(schedule):
    """NaN in a visible q / k element -> that row's out and lse are NaN (the staged rule)."""
    q, k, v = problem(4, 1, 256, 256, 1, 1, 64)
    q[0, 5, 0, 3] = np.nan
    out, lse = run_plan(q, k, v, schedule=schedule)
    assert np.isnan(out[0, 5].astype(np.float32)).all() and np.isnan(lse[0, 0, 5])
    ok = np.ones(256, bool)
    ok[5] = False
    assert np.isfinite(out[0, ok].astype(np.float32)).all()


@pytest.mark.parametrize("D", ROUND1_D)
def test_public_api_selects_fused_repeatable_and_device_arrays(D):
    from numba import cuda
    q, k, v = problem(5, 2, 300, 300, 4, 2, D)
    a = fmha(q, k, v, causal=True, impls="production", return_lse=True)
    b = fmha(q, k, v, causal=True, impls={"attn_fused": "production"}, return_lse=True)
    np.testing.assert_array_equal(a[0].view(np.uint16), b[0].view(np.uint16))    # bitwise
    np.testing.assert_array_equal(a[1].view(np.uint32), b[1].view(np.uint32))
    check(a[0], a[1], oracle(q, k, v, causal=True), "public api")
    dq, dk, dv = (cuda.to_device(np.ascontiguousarray(x).view(np.uint16)) for x in (q, k, v))
    # device bf16 is uint16 bits: fmha treats uint16 device arrays as bfloat16
    do, dl = fmha(dq, dk, dv, causal=True, impls="production", return_lse=True)
    np.testing.assert_array_equal(do.copy_to_host(), a[0].view(np.uint16))


def test_fused_vs_staged():
    q, k, v = problem(6, 1, 33, 70, 2, 1, 64)
    f_out, f_lse = fmha(q, k, v, causal=True, impls="production", return_lse=True)
    s_out, s_lse = fmha(q, k, v, causal=True, impls="reference", return_lse=True)
    diff = np.abs(f_out.astype(np.float32) - s_out.astype(np.float32))
    assert diff.max() <= 2 * UBF * max(1.0, np.abs(s_out.astype(np.float32)).max())
    np.testing.assert_allclose(f_lse, s_lse, rtol=1e-5, atol=1e-5)


def test_unsupported_is_a_clear_error():
    q, k, v = (x.astype(np.float32) for x in problem(8, 1, 4, 4, 1, 1, 64))
    with pytest.raises(d.registry.ImplUnavailable, match="bfloat16 or float16"):
        fmha(q, k, v, impls="production")
    q, k, v = problem(8, 1, 4, 4, 1, 1, 16)
    with pytest.raises(d.registry.ImplUnavailable, match="return_intermediates"):
        fmha(q, k, v, impls="production", return_intermediates=True)
    with pytest.raises(ValueError, match="does not fit D = 256"):
        run_plan(*problem(8, 1, 200, 200, 1, 1, 256), schedule="v1")


# ---------------------------------------------------------------- every D x dtype (round 2)
# Each (D, dtype) compiles 2 kernels (decode nc = 1 v1, prefill v2): run one process per pair in
# parallel to spread the compiles: -k "every and D16 and f16" etc. (tools' device command).
DTYPES = {"bf16": BF16, "f16": np.float16}


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("D", fmha_sm90.SUPPORTED_D, ids=[f"D{x}" for x in fmha_sm90.SUPPORTED_D])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", list(V2_SHAPES) + ["decode1_gqa", "decode4_mqa", "one"])
def test_every_dim_and_dtype_vs_oracle(shape, causal, D, dt):
    B, Tq, Tk, Hq, Hkv = {**SHAPES, **V2_SHAPES}[shape]
    q, k, v = problem(zlib.crc32(f"all{shape}{causal}{D}{dt}".encode()), B, Tq, Tk, Hq, Hkv, D,
                      dtype=DTYPES[dt])
    out, lse = run_plan(q, k, v, causal=causal, schedule=None)
    assert out.dtype == DTYPES[dt]
    check(out, lse, oracle(q, k, v, causal=causal), f"{shape} causal={causal} D={D} {dt}")


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("D", fmha_sm90.SUPPORTED_D, ids=[f"D{x}" for x in fmha_sm90.SUPPORTED_D])
def test_every_dim_and_dtype_lengths_sink_api(D, dt):
    """Key lengths incl. 0 with NaN past them and a sink (default schedule, causal), then the public
    API on NumPy and device arrays: bitwise equal to the Plan, repeatable."""
    from numba import cuda
    B, Tq, Tk, Hq, Hkv = 4, 129, 200, 4, 2
    q, k, v = problem(17 + D, B, Tq, Tk, Hq, Hkv, D, dtype=DTYPES[dt])
    lens = np.array([0, 1, 130, 200], np.int32)
    for b, n in enumerate(lens):
        k[b, n:] = np.nan
        v[b, n:] = np.nan
    sink = np.array([0.5, -2.0, 3.0, -np.inf], np.float32)
    out, lse = run_plan(q, k, v, causal=True, sink=sink, kv_lengths=lens, schedule=None)
    check(out, lse, oracle(q, k, v, causal=True, sink=sink, kv_lengths=lens), f"lengths D={D} {dt}")
    assert (out[0].astype(np.float32) == 0).all()
    q, k, v = problem(5, 2, 300, 300, 4, 2, D, dtype=DTYPES[dt])
    a = fmha(q, k, v, causal=True, impls="production", return_lse=True)
    b = fmha(q, k, v, causal=True, return_lse=True)                     # auto picks the fused kernel
    assert a[0].dtype == DTYPES[dt]
    np.testing.assert_array_equal(a[0].view(np.uint16), b[0].view(np.uint16))
    np.testing.assert_array_equal(a[1].view(np.uint32), b[1].view(np.uint32))
    check(a[0], a[1], oracle(q, k, v, causal=True), f"public api D={D} {dt}")
    ref, _ = run_plan(q, k, v, causal=True, schedule=None)
    np.testing.assert_array_equal(a[0].view(np.uint16), ref.view(np.uint16))
    dev = [cuda.to_device(np.ascontiguousarray(x) if dt == "f16" else np.ascontiguousarray(x).view(np.uint16))
           for x in (q, k, v)]
    do = fmha(*dev, causal=True, impls="production")
    np.testing.assert_array_equal(do.copy_to_host().view(np.uint16), a[0].view(np.uint16))


def test_public_api_runs_v2_by_environment(monkeypatch):
    """DSV4_FMHA_SCHEDULE=v2 makes fmha()'s fused calls with 2 consumer warpgroups run v2."""
    monkeypatch.setenv("DSV4_FMHA_SCHEDULE", "v2")
    q, k, v = problem(9, 1, 300, 300, 4, 2, 128)
    out, lse = fmha(q, k, v, causal=True, impls="production", return_lse=True)
    check(out, lse, oracle(q, k, v, causal=True), "public api v2")
    ref, _ = run_plan(q, k, v, causal=True, schedule="v2")
    np.testing.assert_array_equal(out.view(np.uint16), ref.view(np.uint16))


# ----------------------------------------------------------------------------------------------
# The D = 64 candidates of issue 7 (fmha_sm90.SMALL_D_SCHEDULES; not the default): v3 / v3f three
# consumer warpgroups (192 rows a CTA, serial body; v3f the short softmax), v2w 192-key tiles,
# v2f v2 with the short softmax. The same shapes as v2 (edges: 127 / 129 rows against 192-row
# CTAs, 127 / 129 keys against 192-key tiles, a 16-tile causal diagonal at an offset), key
# lengths with NaN past them and a sink, Tq > Tk causal, the NaN rule; v2f also at D = 128
# (``CANDIDATE_D``). Each schedule is an xdist group: ``-n 6 --dist loadgroup`` compiles each
# kernel in one worker only (~15-50 s of CPU each).
# ----------------------------------------------------------------------------------------------
CANDIDATES = list(fmha_sm90.SMALL_D_SCHEDULES)


def _grouped(s, D=None):
    """One xdist group per kernel (schedule, D): the lengths test (D = 64) joins the D = 64 one."""
    return pytest.param(*((s,) if D is None else (s, D)),
                        marks=pytest.mark.xdist_group(f"fmha_{s}_{D or 64}"))


@pytest.mark.parametrize("schedule,D", [_grouped(s, 64) for s in CANDIDATES] + [_grouped("v2f", 128)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", list(V2_SHAPES), ids=list(V2_SHAPES))
def test_d64_candidates_vs_oracle(shape, causal, schedule, D):
    B, Tq, Tk, Hq, Hkv = V2_SHAPES[shape]
    q, k, v = problem(zlib.crc32(f"{schedule}{shape}{causal}{D}".encode()), B, Tq, Tk, Hq, Hkv, D)
    out, lse = run_plan(q, k, v, causal=causal, schedule=schedule)
    check(out, lse, oracle(q, k, v, causal=causal), f"{schedule} {shape} causal={causal}")
    out2, lse2 = run_plan(q, k, v, causal=causal, schedule=schedule)
    np.testing.assert_array_equal(out.view(np.uint16), out2.view(np.uint16))    # deterministic
    np.testing.assert_array_equal(lse.view(np.uint32), lse2.view(np.uint32))


@pytest.mark.parametrize("schedule", [_grouped(s) for s in CANDIDATES])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_d64_candidates_lengths_sink_edges(causal, schedule):
    B, Tq, Tk, Hq, Hkv = 4, 129, 200, 4, 2
    q, k, v = problem(17, B, Tq, Tk, Hq, Hkv, 64)
    lens = np.array([0, 1, 130, 200], np.int32)
    for b, n in enumerate(lens):
        k[b, n:] = np.nan
        v[b, n:] = np.nan
    sink = np.array([0.5, -2.0, 3.0, -np.inf], np.float32)
    out, lse = run_plan(q, k, v, causal=causal, sink=sink, kv_lengths=lens, schedule=schedule)
    check(out, lse, oracle(q, k, v, causal=causal, sink=sink, kv_lengths=lens),
          f"{schedule} lengths causal={causal}")
    assert (out[0].astype(np.float32) == 0).all()
    q, k, v = problem(3, 1, 129, 100, 2, 1, 64)                       # Tq > Tk causal
    out, lse = run_plan(q, k, v, causal=True, schedule=schedule)
    check(out, lse, oracle(q, k, v, causal=True), f"{schedule} Tq > Tk causal")
    assert (out[0, :29].astype(np.float32) == 0).all() and np.isneginf(lse[0, :, :29]).all()
    q, k, v = problem(4, 1, 256, 256, 1, 1, 64)                       # NaN rule
    q[0, 5, 0, 3] = np.nan
    out, lse = run_plan(q, k, v, schedule=schedule)
    assert np.isnan(out[0, 5].astype(np.float32)).all() and np.isnan(lse[0, 0, 5])
    ok = np.ones(256, bool)
    ok[5] = False
    assert np.isfinite(out[0, ok].astype(np.float32)).all()
