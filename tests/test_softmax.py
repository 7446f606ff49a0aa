"""Softmax stage: the reference kernel under the simulator against a float64 NumPy oracle, the
online-softmax building blocks streamed tile by tile, input validation, and the production
kernels compiled for sm_90a (ptxas accepts them, no spills, the instructions they exist for).

Simulator cases are tiny on purpose (a few rows, N <= ~100, 8-32 threads): the simulator runs
each thread as Python.

Tolerances, derived from the formats:
* float32 output: z = scale*x rounds once (|z| <= ~8 here: <= 4.8e-7 absolute error in the exponent,
  i.e. relative error in exp(z)), exp is ~2 ulp, the row sum of <= 128 positive terms adds up to
  ~n/2 ulp in the worst case, the reciprocal 1 ulp: ~70 ulp = 4.2e-6 relative; RTOL_F32 = 8e-6.
* bfloat16 output: the float32 probability rounded to 8 significant bits: half an ulp = 2^-8
  relative, plus the float32 error: RTOL_BF16 = 2^-8 + 8e-6.
* lse: log of a sum with relative error <= 8e-6 -> 8e-6 absolute, plus the max term's rounding:
  ATOL_LSE = 2e-5.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from dsv4_numba import registry
from dsv4_numba.registry import ImplUnavailable
from dsv4_numba.runtime import mode
from dsv4_numba.stages import softmax as S
from dsv4_numba.stages.softmax import softmax
from dsv4_numba.testing import assert_close

RTOL_F32 = 8e-6
RTOL_BF16 = 2.0 ** -8 + 8e-6
ATOL_LSE = 2e-5
SIM = mode() == "sim"


oracle = S.softmax_oracle        # float64 NumPy, from the contract


def rand(shape, seed, dtype=np.float32, spread=3.0):
    """Normal logits with outliers, so a kernel that drops the max or the sum cannot pass."""
    g = np.random.default_rng(seed)
    x = g.standard_normal(shape) * spread
    x.reshape(-1)[:: 7] += 4.0
    return x.astype(dtype)


def check(x, out, lse, rtol, name, **kw):
    p, l = oracle(x, **kw)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert lse.dtype == np.float32 and lse.shape == x.shape[:-1]
    assert_close(out, p, atol=1e-30, rtol=rtol, min_cosine=0.99999, name=f"{name}: p")
    assert_close(lse, l, atol=ATOL_LSE, rtol=0, name=f"{name}: lse")


# ----------------------------------------------------------------------------------------------
# reference kernel under the simulator
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,rtol", [(np.float32, RTOL_F32), (ml_dtypes.bfloat16, RTOL_BF16)])
@pytest.mark.parametrize("shape", [(1, 1), (3, 40), (2, 97)])
def test_reference_plain(shape, dtype, rtol):
    x = rand(shape, seed=sum(shape), dtype=dtype)
    out, lse = softmax(x, scale=0.7, return_lse=True, impl="reference")
    check(x, out, lse, rtol, f"{shape}", scale=0.7)


def test_reference_threads_8_and_1d():
    """Block of 8 threads (strided loops wrap many times) and a 1-D input."""
    x = rand((64,), seed=3)
    call = S._prepare(x, 1.3, None, None, None)
    out, lse = S.softmax_reference(call, threads=8)
    check(x, out, lse, RTOL_F32, "1-D, 8 threads", scale=1.3)
    with pytest.raises(ValueError, match="power of two"):
        S.softmax_reference(call, threads=24)


def test_reference_lengths_causal_sink():
    """[H=2, T=3, N=11]: per-row lengths, causal offset N-T, per-head sink of shape [H, 1]."""
    H, T, n = 2, 3, 11
    x = rand((H, T, n), seed=5)
    lengths = np.array([[11, 4, 0], [7, 11, 2]])
    sink = np.array([[0.5], [-1.0]], np.float32)
    kw = dict(scale=0.5, lengths=lengths, causal_offset=n - T - 2, sink=sink)
    out, lse = softmax(x, return_lse=True, impl="reference", **kw)
    check(x, out, lse, RTOL_F32, "masked+sink", **kw)
    assert (out[0, 2] == 0).all() and lse[0, 2] == np.float32(0.5)     # empty row: lse = sink
    assert (out[0, 1, 4:] == 0).all()                                  # masked tail is exactly 0


def test_reference_sink_per_head_rows_last():
    """Rows laid out [B, H, N]: sink [H] -> row r uses sink[r % H]; bfloat16 in and out."""
    x = rand((2, 3, 19), seed=7, dtype=ml_dtypes.bfloat16)
    sink = np.array([2.0, -np.inf, 0.0], np.float32)
    out, lse = softmax(x, scale=1.0, sink=sink, return_lse=True, impl="reference")
    check(x, out, lse, RTOL_BF16, "sink [H]", sink=sink)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # inf - inf in the simulator
def test_reference_empty_and_special_rows():
    """Nothing valid -> zeros, lse -inf; all -inf -> the same (not NaN); NaN / +inf -> NaN row."""
    x = rand((5, 9), seed=11)
    x[1] = -np.inf
    x[2, 4] = np.nan
    x[3, 0] = np.inf
    x[4, 6:] = np.nan            # beyond the row's valid length: never read
    lengths = np.array([0, 9, 9, 9, 6])
    out, lse = softmax(x, lengths=lengths, return_lse=True, impl="reference")
    check(x, out, lse, RTOL_F32, "special rows", lengths=lengths)
    assert (out[0] == 0).all() and lse[0] == -np.inf
    assert (out[1] == 0).all() and lse[1] == -np.inf
    assert np.isnan(out[2]).all() and np.isnan(lse[2])
    assert np.isnan(out[3]).all() and np.isnan(lse[3])
    assert np.isfinite(out[4]).all() and abs(out[4].sum() - 1) < 1e-6


def test_reference_negative_causal_offset_masks_rows():
    x = rand((4, 6), seed=13)
    out, lse = softmax(x, causal_offset=-2, return_lse=True, impl="reference")
    check(x, out, lse, RTOL_F32, "causal -2", causal_offset=-2)
    assert (out[:2] == 0).all() and (lse[:2] == -np.inf).all()


def test_zero_rows_and_zero_columns():
    out = softmax(np.zeros((0, 5), np.float32), impl="reference")
    assert out.shape == (0, 5)
    out, lse = softmax(np.zeros((3, 0), np.float32), sink=np.float32(1.5), return_lse=True,
                       impl="reference")
    assert out.shape == (3, 0) and (lse == np.float32(1.5)).all()


def test_auto_falls_back_to_reference_with_a_warning():
    if not SIM:
        pytest.skip("auto picks production on a GPU")
    with pytest.warns(registry.ProductionUnavailableWarning):
        softmax(rand((1, 4), seed=1))
    with pytest.raises(ImplUnavailable):
        softmax(rand((1, 4), seed=1), impl="production")


# ----------------------------------------------------------------------------------------------
# production kernels under the simulator: the 16-byte memory operations, shuffles and ballots
# have simulator twins (softmax._with_sim_twin), so the exact production code runs here too
# ----------------------------------------------------------------------------------------------
PROD_SIM = [
    # shape, dtype, vectorized, plan (None: the host's choice), split threads
    ((2, 3, 40), np.float32, True, None, None),           # warp per row, several rows per block
    ((1, 3, 40), ml_dtypes.bfloat16, True, (2, 1, 64), None),   # two warps per row: shared hop
    ((2, 3, 37), np.float32, False, None, None),          # scalar loads (37 % 4 != 0)
    ((2, 3, 37), ml_dtypes.bfloat16, False, "split", 32),  # split path, scalar, one chunk a row
]


@pytest.mark.skipif(not SIM, reason="on a GPU the production tests run in tests/gpu")
@pytest.mark.parametrize("shape,dtype,vectorized,plan,threads", PROD_SIM,
                         ids=[f"{np.dtype(d).name}-{'v' if v else 's'}-{p}"
                              for _, d, v, p, _ in PROD_SIM])
def test_production_simulated(shape, dtype, vectorized, plan, threads):
    x = rand(shape, seed=29, dtype=dtype)
    n = shape[-1]
    kw = dict(scale=0.6, lengths=np.array([[n, 5, 0], [20, n, n - 1]])[:shape[0]],
              sink=np.array([0.3, -1.0, 2.0], np.float32))
    c = S._prepare(x, kw["scale"], kw["lengths"], None, kw["sink"])
    out, lse = S.softmax_production(c, vectorized=vectorized, plan=plan, split_threads=threads)
    check(x, out, lse, RTOL_F32 if dtype == np.float32 else RTOL_BF16, f"prod {plan}", **kw)


@pytest.mark.skipif(not SIM, reason="on a GPU the production tests run in tests/gpu")
def test_production_split_several_chunks_simulated():
    """bf16 rows of 1104 over 32-thread chunks of 512 (16-byte loads): three partial states
    merged per row, causal masking cutting through a chunk."""
    x = rand((2, 1104), seed=31, dtype=ml_dtypes.bfloat16)
    c = S._prepare(x, 1.0, None, 800, None)
    out, lse = S.softmax_production(c, vectorized=True, plan="split", split_threads=32)
    check(x, out, lse, RTOL_BF16 + 1e-5, "split x3", causal_offset=800)


# ----------------------------------------------------------------------------------------------
# the checks have teeth: plausible wrong answers are rejected by the same comparison
# ----------------------------------------------------------------------------------------------
def test_checker_rejects_known_wrong_softmax():
    x = rand((3, 12), seed=17)
    sink = np.array([1.0, 0.0, -0.5], np.float32)
    lengths = np.array([12, 5, 9])
    out, lse = softmax(x, scale=0.8, sink=sink, lengths=lengths, return_lse=True, impl="reference")
    check(x, out, lse, RTOL_F32, "right", scale=0.8, sink=sink, lengths=lengths)
    wrong = {  # each a bug seen in attention code
        "sink scaled like a logit": oracle(x, scale=0.8, sink=0.8 * sink, lengths=lengths),
        "sink forgotten": oracle(x, scale=0.8, lengths=lengths),
        "length off by one": oracle(x, scale=0.8, sink=sink, lengths=lengths - 1),
        "scale applied outside exp": oracle(x, scale=1.0, sink=sink, lengths=lengths),
    }
    for name, (p, l) in wrong.items():
        with pytest.raises(AssertionError):
            assert_close(out, p, atol=1e-30, rtol=RTOL_F32, min_cosine=0.99999, name=name)
            assert_close(lse, l, atol=ATOL_LSE, name=name)


# ----------------------------------------------------------------------------------------------
# online softmax building blocks: stream a row tile by tile, compare with one shot
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_exp2", [False, True], ids=["natural", "exp2"])
@pytest.mark.parametrize("tile,two_states", [(1, False), (5, False), (5, True), (64, False)])
def test_online_stream_matches_one_shot(tile, two_states, use_exp2):
    R, n, scale = 4, 23, 0.9
    x = rand((R, n), seed=19 + tile)
    x[1, :10] = -np.inf          # leading tiles with nothing seen: rescale(-inf, -inf) must be 1
    x[2, :] = -np.inf            # nothing at all: lse -inf, O = 0
    x[3, 17] = 30.0              # a late new max: every earlier tile rescales
    v = rand((R, n), seed=23, spread=1.0)
    lse = np.full(R, np.nan, np.float32)
    o = np.full(R, np.nan, np.float32)
    S.online_softmax_stream_kernel.launch(1, R, x.reshape(-1), v.reshape(-1), n, np.float32(scale),
                                          tile, use_exp2, two_states, lse, o)
    p, l = oracle(x, scale=scale)
    assert_close(lse, l, atol=ATOL_LSE, name="streamed lse")
    assert_close(o, (p * v.astype(np.float64)).sum(-1), atol=1e-6, rtol=2e-5, name="streamed O/l")


# ----------------------------------------------------------------------------------------------
# validation: errors name what to change, before any launch
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,kw,err,match", [
    (np.zeros((2, 3)), {}, TypeError, "float32 or bfloat16"),
    (np.zeros((2, 3), np.float16), {}, TypeError, "astype"),
    (np.zeros((2, 3), np.uint16), {}, TypeError, "float32 or bfloat16"),
    (np.zeros((3, 4), np.float32)[:, ::2], {}, ValueError, "C-contiguous"),
    (np.zeros((2, 3), np.float32), {"scale": 0.0}, ValueError, "positive finite"),
    (np.zeros((2, 3), np.float32), {"scale": math.nan}, ValueError, "positive finite"),
    (np.zeros((2, 3), np.float32), {"lengths": [1, 4]}, ValueError, r"\[0, 3\]"),
    (np.zeros((2, 3), np.float32), {"lengths": [1]}, ValueError, "shape"),
    (np.zeros((2, 3), np.float32), {"lengths": [1.0, 2.0]}, TypeError, "integers"),
    (np.zeros((2, 3), np.float32), {"causal_offset": 1.5}, TypeError, "int"),
    (np.zeros((2, 3), np.float32), {"sink": np.zeros(3)}, ValueError, "broadcast"),
    (np.zeros((2, 3, 4, 5), np.float32), {"sink": np.zeros((2, 1, 4))}, ValueError, "contiguous"),
    (np.float32(1.0), {}, TypeError, "NumPy array"),
    (np.zeros((2, 3), np.float32), {"impl": "fastest"}, ValueError, "impl"),
])
def test_validation(bad, kw, err, match):
    with pytest.raises(err, match=match):
        softmax(bad, **kw)


def test_sink_map():
    assert S._sink_map((4,), (2, 3, 4)) == (1, 4)
    assert S._sink_map((4, 1), (2, 4, 5)) == (5, 4)
    assert S._sink_map((), (2, 4)) == (1, 1)
    assert S._sink_map((2, 4, 5), (2, 4, 5)) == (1, 40)
    assert S._sink_map((1, 4, 1), (2, 4, 1)) == (1, 4)


# ----------------------------------------------------------------------------------------------
# production kernels: compile-only for sm_90a
# ----------------------------------------------------------------------------------------------
PROD = registry.REGISTRY["softmax"].impls["production:sm_90a"]


@pytest.mark.parametrize("idx", range(len(PROD.kernels())),
                         ids=[k.__name__ for k, _ in PROD.kernels()])
def test_production_compiles_for_sm90a(idx):
    k, sig = PROD.kernels()[idx]
    res = k.compile(sig, "sm_90a", want_sass=False)
    assert res.spill_stores == 0 and res.spill_loads == 0, res.summary()
    assert "ld.local" not in res.ptx and "st.local" not in res.ptx, "row values left registers"
    assert "shfl.sync" in res.ptx, "warp reductions must use shuffles"
    assert "ex2.approx" in res.ptx, "exp2 with log2(e) folded into the scale"
    if "_v1" not in k.__name__:
        assert "ld.global.nc.v4.u32" in res.ptx, "16-byte loads"
        if "stats" not in k.__name__:
            assert "st.global.v4.b32" in res.ptx, "16-byte stores"
    assert res.registers * k.launch_bounds[0] <= 65536, "a full block must fit the register file"


def test_rows_plan():
    assert S.rows_plan(2048, 4) == (4, 4, 128)       # 128 threads x 16 values
    assert S.rows_plan(4096, 4) == (8, 4, 256)
    assert S.rows_plan(16384, 4) == (32, 4, 1024)
    assert S.rows_plan(16388, 4) is None             # -> split path
    assert S.rows_plan(100, 4) == (1, 1, 128)         # a warp per row, 4 rows per block
    assert S.rows_plan(8192, 1) == (16, 16, 512)
    assert S.rows_plan(8193, 1) is None
    for n in (1, 7, 127, 129, 2049, 16384):
        for vec in (1, 4, 8):
            p = S.rows_plan(n, vec)
            if p:
                wpr, J, _ = p
                assert 32 * wpr * J * vec >= n and J * vec <= S.MAX_PER_THREAD
