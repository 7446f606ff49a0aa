"""Staged attention (pipelines/fmha.py) under the simulator, against a float64 NumPy oracle.

The oracle takes the inputs' values exactly (bfloat16 / float16 / float32 -> float64) and computes
every row in float64: z = scale * q.k (scale as the float32 the kernels use), the softmax with the
sink in the denominator, O = P V, lse = log(denominator). The pipeline rounds in float32 on the way
and once more into the output dtype; the bound it must meet is derived here, per element.

Error bound (u = 2^-24 float32 unit roundoff, gamma(n) = n u / (1 - n u))
-------------------------------------------------------------------------
Per query row (b, i, hq) with visible keys j < L and KV head g:

1. attn_qk: a float32 dot product of D products, then one multiply by scale::

       |S_j - z_j| <= Delta_j = gamma(D + 1) * scale * sum_d |q_d k_jd|,   Delta = max_j Delta_j

2. softmax: p_j = exp(z_j) / sum_i exp(z_i) is invariant to a common shift, and moving every logit
   by at most Delta moves each p_j by a factor within exp(+-2 Delta). The float32 arithmetic itself
   (z - m or the exp2 form z*log2(e) - m: absolute exponent error <= u * 2 (Z + Delta) where
   Z = max |logit| of the row incl. the sink; exp / exp2 <= 2 ulp; Tk + 1 additions; 1 / l and the
   product) adds a relative error of at most 8 u (Z + Delta) + gamma(Tk + 8). Together::

       |P_j - p_j| <= eps * p_j,   eps = expm1(2 Delta) + 8 u (Z + Delta) + gamma(Tk + 8)

3. attn_pv: sum over L <= Tk products in float32: gamma(Tk) * sum_j P_j |v_j|. With step 2::

       |O - O64| <= E = (eps + gamma(Tk) (1 + eps)) * sum_j p_j |v_jd|

   (E is a multiple of sum p |v|, not of |O|: rows whose values cancel still get a fair bound.)

4. attn_epilogue: one round-to-nearest into the output format of unit roundoff u_out (float32: the
   identity, u_out = 0; float16 2^-11; bfloat16 2^-8) and an absolute floor eta_out for subnormal
   results (half the smallest subnormal: float16 2^-25, bfloat16 2^-134)::

       |out - O64| <= u_out |O64| + (1 + u_out) E + eta_out

   For bfloat16 inputs E is ~1e-6 relative, so this is the advertised "relative 2^-8 on O", plus
   a float32-sized slack for cancelling rows.

5. lse = m + log(l): the shifted logits move it by <= Delta (lse is 1-Lipschitz in max-norm); l
   carries the relative error of step 2; log and the add round relative to |log l| <= |lse| + Z::

       |lse - lse64| <= Delta + 8 u (Z + Delta) + gamma(Tk + 8) + 2 u (|lse64| + Z)

Exact rules (no tolerance): invisible keys give S = -inf and P = 0; a row that sees nothing gives
O = out = 0 and lse = -inf (no sink) or exactly the sink; the same call twice is bitwise equal.

Simulator cost: the softmax stage's reference kernel is ~0.2 s per row (B * Hq * Tq rows) under the
simulator, so the shapes stay tiny: B <= 2, Tq, Tk <= 9, Hq <= 4, D = 16 (one D = 64 case).
"""
from __future__ import annotations

import math
import warnings

import ml_dtypes
import numpy as np
import pytest

from dsv4_numba import registry
from dsv4_numba.pipelines.fmha import HEAD_DIMS, STAGES, fmha
from dsv4_numba.runtime import detect_gpu, mode
from dsv4_numba.runtime.arrays import ArrayIO
from dsv4_numba.runtime.kernel import Kernel
from dsv4_numba.testing import assert_close, poison

SIM = mode() == "sim"
REF = "reference"
U = 2.0 ** -24
BF16 = ml_dtypes.bfloat16
U_OUT = {np.dtype(np.float32): (0.0, 0.0), np.dtype(np.float16): (2.0 ** -11, 2.0 ** -25),
         np.dtype(BF16): (2.0 ** -8, 2.0 ** -134)}


def gamma(n):
    return n * U / (1 - n * U)


# ----------------------------------------------------------------------------------------------
# The oracle
# ----------------------------------------------------------------------------------------------
def oracle(q, k, v, causal=False, scale=None, sink=None, kv_lengths=None):
    """float64 results and per-element bounds (module docstring), as a dict."""
    q64, k64, v64 = (np.asarray(x).astype(np.float64) for x in (q, k, v))
    B, Tq, Hq, D = q64.shape
    Tk, Hkv = k64.shape[1], k64.shape[2]
    scale = float(np.float32(D ** -0.5 if scale is None else scale))
    lens = np.full(B, Tk) if kv_lengths is None else np.asarray(kv_lengths)
    S = np.full((B, Hq, Tq, Tk), -np.inf)
    S_err = np.zeros((B, Hq, Tq, Tk))
    P = np.zeros((B, Hq, Tq, Tk))
    P_err = np.zeros((B, Hq, Tq, Tk))
    O = np.zeros((B, Tq, Hq, D))
    O_err = np.zeros((B, Tq, Hq, D))
    lse = np.empty((B, Hq, Tq))
    lse_err = np.zeros((B, Hq, Tq))
    for b in range(B):
        for hq in range(Hq):
            g = hq // (Hq // Hkv)
            for i in range(Tq):
                L = int(min(lens[b], Tk))
                if causal:
                    L = max(0, min(L, i + Tk - Tq + 1))
                s = -np.inf if sink is None else float(np.float32(sink[hq]))
                if L == 0:
                    lse[b, hq, i] = s
                    continue
                z = scale * (k64[b, :L, g] @ q64[b, i, hq])
                dz = gamma(D + 1) * scale * (np.abs(k64[b, :L, g]) @ np.abs(q64[b, i, hq]))
                zz = np.append(z, s)
                m = zz.max()
                e = np.exp(zz - m)
                den = e.sum()
                p = e[:-1] / den
                Delta = dz.max()
                Z = np.abs(zz[np.isfinite(zz)]).max()
                eps = math.expm1(2 * Delta) + 8 * U * (Z + Delta) + gamma(Tk + 8)
                S[b, hq, i, :L], S_err[b, hq, i, :L] = z, dz
                P[b, hq, i, :L], P_err[b, hq, i, :L] = p, eps * p
                O[b, i, hq] = p @ v64[b, :L, g]
                O_err[b, i, hq] = (eps + gamma(Tk) * (1 + eps)) * (p @ np.abs(v64[b, :L, g]))
                lse[b, hq, i] = m + math.log(den)
                lse_err[b, hq, i] = (Delta + 8 * U * (Z + Delta) + gamma(Tk + 8)
                                     + 2 * U * (abs(lse[b, hq, i]) + Z))
    return dict(S=S, S_err=S_err, P=P, P_err=P_err, O=O, O_err=O_err, lse=lse, lse_err=lse_err)


def within(got, exp, bound, name):
    """Exact where the oracle is not finite (-inf masks), else |got - exp| <= bound per element."""
    got = np.asarray(got).astype(np.float64)
    assert_close(got, exp, atol=float(np.max(bound, initial=0.0)), name=name)   # masks, shape
    fin = np.isfinite(exp)
    err = np.abs(got - np.where(fin, exp, 0.0))
    bad = fin & (err > bound)
    if bad.any():
        c = [tuple(int(x) for x in a) for a in np.argwhere(bad)[:6]]
        raise AssertionError(f"{name}: {int(bad.sum())} elements outside the derived bound, e.g. "
                             + ", ".join(f"{x}: got {got[x]:.9g} expected {exp[x]:.9g} bound "
                                         f"{bound[x]:.3g}" for x in c))


def check(res, orc, dtype, name):
    """Every output and intermediate of fmha(..., return_lse=True, return_intermediates=True)."""
    out, lse, inter = res
    dtype = np.dtype(dtype)
    assert out.dtype == dtype and lse.dtype == np.float32, (out.dtype, lse.dtype)
    assert inter["S"].dtype == inter["P"].dtype == inter["O"].dtype == np.float32
    within(inter["S"], orc["S"], orc["S_err"], f"{name}: S")
    assert (inter["P"][np.isneginf(orc["S"])] == 0).all(), f"{name}: P must be 0 at masked keys"
    within(inter["P"], orc["P"], orc["P_err"], f"{name}: P")
    within(inter["O"], orc["O"], orc["O_err"], f"{name}: O (float32)")
    u_out, eta = U_OUT[dtype]
    within(out, orc["O"], u_out * np.abs(orc["O"]) + (1 + u_out) * orc["O_err"] + eta,
           f"{name}: out ({dtype.name})")
    within(lse, orc["lse"], orc["lse_err"], f"{name}: lse")
    assert_close(inter["lse"], lse, bitwise=True, name=f"{name}: intermediates lse")
    # the epilogue is exactly one round-to-nearest of O
    assert_close(out, inter["O"].astype(dtype), bitwise=True, name=f"{name}: out = round(O)")


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def problem(seed, B, Tq, Tk, Hq, Hkv, D=16, dtype=np.float32, spread=3.0):
    """q, k, v with logits of a few units (q scaled by ``spread``: peaky rows, not uniform ones)."""
    g = np.random.default_rng(seed)
    q = g.standard_normal((B, Tq, Hq, D)) * spread
    k = g.standard_normal((B, Tk, Hkv, D))
    v = g.standard_normal((B, Tk, Hkv, D)) * 10.0 ** g.uniform(-1, 1, (B, Tk, Hkv, 1))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def run(q, k, v, **kw):
    kw.setdefault("impls", REF)
    return fmha(q, k, v, return_lse=True, return_intermediates=True, **kw)


def run_and_check(name, q, k, v, dtype, **kw):
    res = run(q, k, v, **kw)
    kw.pop("impls", None)
    check(res, oracle(q, k, v, **kw), dtype, name)
    return res


# ----------------------------------------------------------------------------------------------
# Against the oracle: head layouts, causal, decode, sink, lengths, dtypes
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["f32", "f16", "bf16"])
def test_mha_noncausal(dtype):
    q, k, v = problem(1, B=1, Tq=3, Tk=5, Hq=2, Hkv=2, dtype=dtype)
    run_and_check("mha", q, k, v, dtype)


def test_gqa_causal_prefill_bf16():
    """Tq = Tk (odd): ordinary causal prefill; two query heads per KV head."""
    q, k, v = problem(2, B=1, Tq=5, Tk=5, Hq=4, Hkv=2, dtype=BF16)
    res = run_and_check("gqa causal", q, k, v, BF16, causal=True)
    S = res[2]["S"]
    assert np.isneginf(S[0, :, 0, 1:]).all() and np.isfinite(S[0, :, 4]).all()


def test_gqa_causal_decode_tq_lt_tk():
    """Tq < Tk: the 3 new queries are the last of 9 tokens (query i sees keys <= i + 6)."""
    q, k, v = problem(3, B=1, Tq=3, Tk=9, Hq=2, Hkv=1, dtype=BF16)
    res = run_and_check("decode causal", q, k, v, BF16, causal=True)
    P = res[2]["P"][0, 0]
    assert [int((P[i] != 0).sum()) for i in range(3)] == [7, 8, 9]


def test_mqa_decode_tq1_sink_lengths():
    """Tq = 1 decode, MQA (Hkv = 1), per-head sinks, per-batch lengths, batch 2."""
    q, k, v = problem(4, B=2, Tq=1, Tk=9, Hq=4, Hkv=1, dtype=BF16)
    sink = np.array([0.5, -1.0, 3.0, -20.0], np.float32)
    run_and_check("mqa decode", q, k, v, BF16, causal=True, sink=sink, kv_lengths=[9, 4])


def test_gqa_batched_lengths_f16():
    """GQA with two KV heads (so hq -> hq // 2 differs from hq % 2), batch 2, per-batch lengths."""
    q, k, v = problem(14, B=2, Tq=1, Tk=7, Hq=4, Hkv=2, dtype=np.float16)
    run_and_check("gqa lengths", q, k, v, np.float16, kv_lengths=[7, 2])


def test_head_dim_64():
    q, k, v = problem(5, B=1, Tq=1, Tk=7, Hq=2, Hkv=1, D=64, dtype=BF16)
    run_and_check("D=64", q, k, v, BF16, scale=0.1)


def test_empty_key_length_with_and_without_sink():
    """kv_lengths[b] = 0: output exactly 0; lse -inf without a sink, the sink itself with one."""
    q, k, v = problem(6, B=2, Tq=2, Tk=3, Hq=2, Hkv=2, dtype=BF16)
    v[1] = np.nan                        # batch 1 sees no key: its v (and k) are never read
    k[1] = np.nan
    out, lse, inter = run_and_check("empty, no sink", q, k, v, BF16, kv_lengths=[3, 0])
    assert (out[1].astype(np.float32) == 0).all() and np.isneginf(lse[1]).all()
    assert (inter["P"][1] == 0).all() and np.isneginf(inter["S"][1]).all()
    sink = np.array([1.25, -0.5], np.float32)
    out, lse, _ = run_and_check("empty, sink", q, k, v, BF16, kv_lengths=[3, 0], sink=sink)
    assert (out[1].astype(np.float32) == 0).all()
    assert (lse[1] == sink[:, None]).all()


def test_causal_tq_gt_tk_rows_see_nothing():
    """Tq > Tk, causal: the first Tq - Tk queries see no key (0 out, -inf lse)."""
    q, k, v = problem(7, B=1, Tq=3, Tk=1, Hq=1, Hkv=1)
    out, lse, _ = run_and_check("tq>tk", q, k, v, np.float32, causal=True)
    assert (out[0, :2] == 0).all() and np.isneginf(lse[0, 0, :2]).all()
    assert np.isfinite(lse[0, 0, 2])


def test_zero_sizes():
    """Tk = 0: every row sees nothing; Tq = 0: empty results of the right shapes."""
    q, k, v = problem(8, B=1, Tq=2, Tk=0, Hq=2, Hkv=1)
    out, lse = fmha(q, k, v, return_lse=True, impls=REF)
    assert out.shape == q.shape and (out == 0).all() and np.isneginf(lse).all()
    q, k, v = problem(8, B=1, Tq=0, Tk=3, Hq=2, Hkv=1)
    out, lse = fmha(q, k, v, return_lse=True, impls=REF)
    assert out.shape == (1, 0, 2, 16) and lse.shape == (1, 2, 0)


def test_default_call_returns_out_only():
    """Defaults: impls auto (reference with a warning here), scale D^-0.5, output like q."""
    q, k, v = problem(9, B=1, Tq=1, Tk=3, Hq=1, Hkv=1, dtype=np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", registry.ProductionUnavailableWarning)
        out = fmha(q, k, v)
    assert isinstance(out, np.ndarray) and out.dtype == np.float16 and out.shape == q.shape
    o = oracle(q, k, v)
    within(out, o["O"], 2.0 ** -11 * np.abs(o["O"]) + 2 * o["O_err"] + 2.0 ** -25, "default")


# ----------------------------------------------------------------------------------------------
# Every element written, determinism
# ----------------------------------------------------------------------------------------------
def _masked_case():
    q, k, v = problem(10, B=2, Tq=2, Tk=3, Hq=2, Hkv=1, dtype=BF16)
    return (q, k, v), dict(causal=True, kv_lengths=[3, 0], sink=np.array([0.0, 1.0], np.float32))


@pytest.mark.skipif(not SIM, reason="poisons the simulator's NumPy buffers")
def test_nan_poisoned_outputs_fully_overwritten(monkeypatch):
    """Every buffer a stage allocates (S, P, lse, O, out, row lengths) starts as NaN / 0xFF bytes:
    the results must match a clean run bitwise (masked, empty and sink rows included)."""
    args, kw = _masked_case()
    clean = run(*args, **kw)
    monkeypatch.setattr(ArrayIO, "empty", lambda self, shape, dtype: poison(shape, dtype))
    dirty = run(*args, **kw)
    assert_close(dirty[0], clean[0], bitwise=True, name="out")
    assert_close(dirty[1], clean[1], bitwise=True, name="lse")
    for key in ("S", "P", "O"):
        assert_close(dirty[2][key], clean[2][key], bitwise=True, name=key)
    assert not np.isnan(dirty[0].astype(np.float32)).any()


def test_repeated_runs_bitwise_equal():
    args, kw = _masked_case()
    a, b = run(*args, **kw), run(*args, **kw)
    assert_close(a[0], b[0], bitwise=True, name="out")
    assert_close(a[1], b[1], bitwise=True, name="lse")
    for key in ("S", "P", "O"):
        assert_close(a[2][key], b[2][key], bitwise=True, name=key)


# ----------------------------------------------------------------------------------------------
# Stage selection
# ----------------------------------------------------------------------------------------------
def _swap_case():
    return problem(11, B=1, Tq=1, Tk=5, Hq=2, Hkv=1, dtype=BF16), dict(causal=True)


@pytest.fixture(scope="module")
def all_reference():
    args, kw = _swap_case()
    return run(*args, **kw)


@pytest.mark.parametrize("stage", STAGES)
def test_single_stage_reference_swap(stage, all_reference):
    """One stage named explicitly, the others on auto (here: reference, with the warning)."""
    args, kw = _swap_case()
    ctx = pytest.warns(registry.ProductionUnavailableWarning)
    with ctx:
        got = run(*args, impls={stage: REF}, **kw)
    assert got[2]["impls"][stage] == REF
    for i, what in ((0, "out"), (1, "lse")):
        assert_close(got[i], all_reference[i], bitwise=True, name=f"{stage}=reference: {what}")
    for key in ("S", "P", "O"):
        assert_close(got[2][key], all_reference[2][key], bitwise=True, name=f"{stage}: {key}")


@pytest.mark.skipif(not SIM, reason="on a GPU the real production softmax runs (test below)")
def test_softmax_production_swap_simulated(monkeypatch, all_reference):
    """The production softmax's scalar path (no PTX: it runs under the simulator, one 32-thread
    warp per row) swapped in through the registry: within the bound of the oracle, exp2 form."""
    from dsv4_numba.stages import softmax as SM
    impl = registry.REGISTRY["softmax"].impls["production:sm_90a"]

    def sim_production(c):
        return SM.softmax_production(c, vectorized=False, plan=(1, 1, 32))

    monkeypatch.setattr(impl, "fn", sim_production)
    monkeypatch.setattr(impl, "unavailable", lambda: None)
    args, kw = _swap_case()
    got = run(*args, impls={s: (REF if s != "softmax" else "production") for s in STAGES}, **kw)
    assert got[2]["impls"]["softmax"] == "production:sm_90a"
    check(got, oracle(*args, **kw), BF16, "softmax=production (simulated)")
    assert_close(got[2]["S"], all_reference[2]["S"], bitwise=True, name="S unchanged")


@pytest.mark.skipif(detect_gpu() is None, reason="production stages need a GPU")
def test_softmax_production_swap_gpu():
    args, kw = _swap_case()
    got = run(*args, impls={"softmax": "production", "attn_qk": REF, "attn_pv": REF,
                            "attn_epilogue": REF}, **kw)
    check(got, oracle(*args, **kw), BF16, "softmax=production")


@pytest.fixture
def no_launch(monkeypatch):
    """Any kernel launch fails the test: errors must come before the first launch."""
    def boom(self, *a, **k):
        raise AssertionError(f"kernel {self.__name__} launched before the error")
    monkeypatch.setattr(Kernel, "launch", boom)


@pytest.mark.filterwarnings("ignore::dsv4_numba.registry.ProductionUnavailableWarning")
def test_impls_errors(no_launch):
    q, k, v = problem(12, B=1, Tq=1, Tk=3, Hq=1, Hkv=1)
    with pytest.raises(ValueError, match=r"unknown stages \['fused'\]"):
        fmha(q, k, v, impls={"fused": REF})
    with pytest.raises(ValueError, match="impl 'fast'"):
        fmha(q, k, v, impls={"attn_qk": "fast"})
    with pytest.raises(TypeError, match="impls must be"):
        fmha(q, k, v, impls=["reference"])
    for stage in ("attn_qk", "attn_pv", "attn_epilogue"):     # no production variant anywhere
        with pytest.raises(registry.ImplUnavailable, match=stage):
            fmha(q, k, v, impls={stage: "production"})
    if SIM:                                                    # softmax has one, for sm_90a GPUs
        with pytest.raises(registry.ImplUnavailable, match="softmax"):
            fmha(q, k, v, impls={"softmax": "production"})
        with pytest.raises(registry.ImplUnavailable):
            fmha(q, k, v, impls="production")


# ----------------------------------------------------------------------------------------------
# Validation (before any launch)
# ----------------------------------------------------------------------------------------------
def _f(shape, dtype=np.float32):
    return np.ones(shape, dtype)


@pytest.mark.parametrize("change,err,match", [
    (dict(q=_f((1, 2, 2, 48)), k=_f((1, 3, 1, 48)), v=_f((1, 3, 1, 48))), ValueError,
     r"D = 48 is not supported; D must be one of \(16, 64, 128, 256\)"),
    (dict(q=_f((1, 2, 3, 16)), k=_f((1, 3, 2, 16)), v=_f((1, 3, 2, 16))), ValueError,
     "Hq = 3 query heads must be a positive multiple of Hkv = 2"),
    (dict(k=_f((1, 3, 1, 16), BF16)), TypeError, "share one dtype.*k bfloat16"),
    (dict(v=_f((1, 3, 1, 16), np.float16)), TypeError, "share one dtype.*v float16"),
    (dict(q=_f((2, 2, 16))), ValueError, r"q must be 4-D \[B, Tq, Hq, D\], got shape \(2, 2, 16\)"),
    (dict(k=_f((1, 3, 1, 1, 16))), ValueError, r"k must be 4-D"),
    (dict(v="v"), TypeError, "v must be a NumPy or device array"),
    (dict(q=_f((1, 2, 2, 16), np.float64)), TypeError, "float32, float16 or bfloat16"),
    (dict(v=_f((1, 4, 1, 16))), ValueError, "same shape"),
    (dict(k=_f((2, 3, 1, 16)), v=_f((2, 3, 1, 16))), ValueError, "batch mismatch"),
    (dict(k=_f((1, 3, 1, 64)), v=_f((1, 3, 1, 64))), ValueError, "head dim mismatch"),
    (dict(q=np.ones((1, 2, 16, 2), np.float32).transpose(0, 1, 3, 2)), ValueError, "C-contiguous"),
    (dict(sink=np.zeros(3)), ValueError, r"sink must have shape \(Hq,\) = \(2,\)"),
    (dict(sink=np.array(["a", "b"])), TypeError, "sink must hold real numbers"),
    (dict(kv_lengths=[4]), ValueError, r"\[0, Tk\] = \[0, 3\]"),
    (dict(kv_lengths=[1, 2]), ValueError, r"shape \(B,\) = \(1,\)"),
    (dict(kv_lengths=[1.0]), TypeError, "integers"),
    (dict(scale=0.0), ValueError, "positive finite"),
    (dict(scale=float("nan")), ValueError, "positive finite"),
    (dict(scale="big"), TypeError, "scale must be a number"),
    (dict(causal=1), TypeError, "causal must be a bool"),
    (dict(return_lse="yes"), TypeError, "return_lse must be a bool"),
])
def test_validation(change, err, match, no_launch):
    a = dict(q=_f((1, 2, 2, 16)), k=_f((1, 3, 1, 16)), v=_f((1, 3, 1, 16)))
    a.update(change)
    q, k, v = a.pop("q"), a.pop("k"), a.pop("v")
    with pytest.raises(err, match=match):
        fmha(q, k, v, impls=REF, **a)


@pytest.mark.parametrize("D", [128, 256])
def test_large_head_dims_accepted(D):
    """D = 128 / 256 run too (one query, two keys: the simulator's cost grows with D)."""
    assert D in HEAD_DIMS
    q, k, v = problem(13, B=1, Tq=1, Tk=2, Hq=1, Hkv=1, D=D, dtype=BF16)
    run_and_check(f"D={D}", q, k, v, BF16)


# ----------------------------------------------------------------------------------------------
# The reference kernels are real Numba-CUDA (not only simulator Python): compile for sm_90a
# ----------------------------------------------------------------------------------------------
def test_reference_kernels_compile_for_sm90a():
    from numba import types as t

    from dsv4_numba.stages import attention_stages as A
    i32, i64, b, f32 = t.int32[::1], t.int64, t.boolean, t.float32[::1]
    sigs = [(A.repeat_lengths_kernel, (i32, i64, i32))]
    for arr in (f32, t.float16[::1], t.uint16[::1]):      # float32, float16, bfloat16 bits
        sigs += [(A.qk_ref_kernel, (arr, i64, arr, i64, i32, i64, b) + (i64,) * 6
                  + (t.float32, f32)),
                 (A.pv_ref_kernel, (f32, arr, i64, i32, i64, b) + (i64,) * 6 + (f32,)),
                 (A.epilogue_ref_kernel, (f32, i64, arr))]
    for kern, sig in sigs:
        res = kern.compile(sig, "sm_90a", want_sass=False)
        assert res.spill_stores == 0 and res.stack_bytes == 0, res.summary()
