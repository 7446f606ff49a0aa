"""Softmax and top-k on a real GPU: production vs reference vs the NumPy oracle at real sizes,
NaN-poisoned output buffers (every element must be written), device-array in/out, and bitwise
repeatability. Skipped without a GPU (tests/conftest.py); run on the device machine with

    python -m pytest -q tests/gpu/test_softmax_topk_gpu.py

Tolerances as in tests/test_softmax.py, widened for long rows: the float32 row sum of n terms
carries up to ~n/2 ulp in the worst case but ~sqrt(n) in practice; rows here have n <= 131072, and
production sums in a different order (per-thread, then a shuffle tree) from the reference.
"""
from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest

from dsv4_numba.runtime import detect_gpu
from dsv4_numba.stages import softmax as S
from dsv4_numba.stages import topk as K
from dsv4_numba.testing import assert_close, poison

pytestmark = pytest.mark.gpu

if detect_gpu() is None:  # pragma: no cover - conftest skips, this keeps imports below safe
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from numba import cuda  # noqa: E402

RTOL_F32 = 5e-5
RTOL_BF16 = 2.0 ** -8 + 5e-5
ATOL_LSE = 1e-4


def rand(shape, seed, dtype=np.float32):
    g = np.random.default_rng(seed)
    x = g.standard_normal(shape) * 3.0
    x.reshape(-1)[::97] += 6.0
    return x.astype(dtype)


def _flat_out(call):
    """NaN-poisoned flat output buffers on the device: any element left unwritten stays NaN."""
    if call.kind == S.BF16:
        out = np.full(call.R * call.n, 0x7FC0, np.uint16)          # bfloat16 NaN bits
    else:
        out = poison(call.R * call.n, np.float32)
    return cuda.to_device(out), cuda.to_device(poison(call.R, np.float32))


SOFTMAX_CASES = [
    # shape, dtype, kwargs
    ((4096, 4096), np.float32, {}),
    ((4096, 4096), ml_dtypes.bfloat16, {"scale": 0.125}),
    ((129, 2049), np.float32, {"lengths": "rand", "sink": "heads", "scale": 0.3}),     # scalar path
    ((129, 2049), ml_dtypes.bfloat16, {"lengths": "rand", "causal_offset": 1900}),
    ((4, 32, 100), np.float32, {"sink": "heads", "causal_offset": 60}),          # warp per row
    ((64, 131072), np.float32, {}),                                                    # split path
    ((3, 40000), ml_dtypes.bfloat16, {"lengths": "rand", "sink": "heads"}),     # split, masked
    ((5, 16385), np.float32, {"causal_offset": 16000}),                          # split, scalar
]


def _kwargs(shape, kw, seed):
    g = np.random.default_rng(seed)
    kw = dict(kw)
    if kw.get("lengths") == "rand":
        kw["lengths"] = g.integers(0, shape[-1] + 1, shape[:-1])
        kw["lengths"].reshape(-1)[0] = 0
    if kw.get("sink") == "heads":
        kw["sink"] = g.standard_normal(shape[-2]).astype(np.float32) * 4
    return kw


@pytest.mark.parametrize("shape,dtype,kw", SOFTMAX_CASES,
                         ids=[f"{s}-{np.dtype(d).name}-{'+'.join(k) or 'plain'}"
                              for s, d, k in SOFTMAX_CASES])
def test_softmax_production_reference_oracle(shape, dtype, kw):
    x = rand(shape, seed=shape[-1], dtype=dtype)
    kw = _kwargs(shape, kw, seed=shape[0])
    rtol = RTOL_F32 if dtype == np.float32 else RTOL_BF16
    p, lse_o = S.softmax_oracle(x, **kw)
    call = S._prepare(x, kw.get("scale", 1.0), kw.get("lengths"), kw.get("causal_offset"),
                      kw.get("sink"))
    results = {}
    for name, fn in (("production", S.softmax_production), ("reference", S.softmax_reference)):
        out, lse = _flat_out(call)
        o, l = fn(call, out=out, lse=lse)               # NumPy in -> NumPy out (x's shape)
        assert o.shape == shape and o.dtype == x.dtype and l.shape == shape[:-1]
        assert_close(o, p, atol=1e-30, rtol=rtol, min_cosine=0.99999, name=f"{name} p")
        assert_close(l, lse_o, atol=ATOL_LSE, name=f"{name} lse")
        results[name] = (o, l)
    # two roundings of slightly different float32 values may land one bfloat16 ulp apart (2^-7)
    assert_close(results["production"][0], results["reference"][0], atol=1e-30,
                 rtol=rtol if dtype == np.float32 else 2.0 ** -7 + 5e-5,
                 name="production vs reference")
    # the public function: NumPy in -> NumPy out, same answer bitwise as the prepared call
    o2, l2 = S.softmax(x, return_lse=True, impl="production", **kw)
    assert_close(o2, results["production"][0], bitwise=True, name="public vs prepared")
    assert_close(l2, results["production"][1], bitwise=True, name="public lse")


def test_softmax_device_arrays_and_repeatability():
    x = rand((300, 4096), seed=1)
    dx = cuda.to_device(x)
    outs = [S.softmax(dx, scale=0.5, return_lse=True, impl="production") for _ in range(3)]
    assert all(isinstance(o, type(outs[0][0])) and hasattr(o, "copy_to_host") for o, _ in outs)
    for o, l in outs[1:]:
        assert_close(o.copy_to_host(), outs[0][0].copy_to_host(), bitwise=True, name="repeat")
        assert_close(l.copy_to_host(), outs[0][1].copy_to_host(), bitwise=True, name="repeat lse")
    # bfloat16 on the device travels as int16/uint16 bits
    xb = x.astype(ml_dtypes.bfloat16)
    ob = S.softmax(cuda.to_device(xb.view(np.int16)), impl="production").copy_to_host()
    assert ob.dtype == np.uint16
    assert_close(ob.view(ml_dtypes.bfloat16), S.softmax_oracle(xb)[0], atol=1e-30, rtol=RTOL_BF16,
                 name="device bf16")


def test_softmax_special_rows_production():
    x = rand((6, 2048), seed=2)
    x[1] = -np.inf
    x[2, 5] = np.nan
    x[3, 7] = np.inf
    x[4, 1000:] = np.nan           # masked by lengths: never read
    lengths = np.array([0, 2048, 2048, 2048, 1000, 2048])
    o, l = S.softmax(x, lengths=lengths, return_lse=True, impl="production")
    p, lo = S.softmax_oracle(x, lengths=lengths)
    assert_close(o, p, atol=1e-30, rtol=RTOL_F32, name="special p")
    assert_close(l, lo, atol=ATOL_LSE, name="special lse")


# ----------------------------------------------------------------------------------------------
# top-k
# ----------------------------------------------------------------------------------------------
TOPK_CASES = [
    # (R, N, k), dtype, lengths?
    ((4, 65536, 2048), np.float32, False),
    ((4, 65536, 2048), ml_dtypes.bfloat16, False),
    ((64, 131072, 512), np.float32, True),
    ((64, 131072, 2048), ml_dtypes.bfloat16, False),
    ((1, 1 << 20, 1024), np.float32, False),
    ((3, 127, 5), np.float32, True),
    ((2, 129, 200), ml_dtypes.bfloat16, True),          # k > N
    ((5, 70000, 4096), np.float32, True),
]


def _scores(R, N, dtype, seed, kind="normal"):
    g = np.random.default_rng(seed)
    if kind == "uniform":
        x = g.random((R, N))
    elif kind == "ties":
        x = g.integers(0, 50, (R, N)).astype(np.float64)
    else:
        x = g.standard_normal((R, N))
    return x.astype(dtype)


# the top-k variants under test: all by default; DSV4_TOPK_TEST_VARIANTS=staged (a comma list)
# narrows them when device time is short
TOPK_VARIANTS = tuple(v for v in os.environ.get("DSV4_TOPK_TEST_VARIANTS",
                                                ",".join(K.VARIANTS)).split(",") if v)
assert set(TOPK_VARIANTS) <= set(K.VARIANTS), f"DSV4_TOPK_TEST_VARIANTS: {TOPK_VARIANTS}"


def _production(x, k, lengths, variant):
    """The production top-k of NumPy scores through one variant (``topk.VARIANTS``)."""
    return K.topk_production(K._prepare(x, k, lengths), variant=variant)


@pytest.mark.parametrize("shape,dtype,with_len", TOPK_CASES,
                         ids=[f"{s}-{np.dtype(d).name}-{'len' if w else 'full'}"
                              for s, d, w in TOPK_CASES])
def test_topk_production_reference_oracle(shape, dtype, with_len):
    R, N, k = shape
    x = _scores(R, N, dtype, seed=N + k)
    lengths = None
    if with_len:
        lengths = np.random.default_rng(k).integers(0, N + 1, R)
        lengths[0] = min(N, k // 2)              # fewer valid than k: -1 indices
    v, i = K.topk(x, k, lengths=lengths, impl="reference")
    K.assert_topk(v, i, x, k, lengths, name="reference")
    for variant in TOPK_VARIANTS:
        pv, pi = _production(x, k, lengths, variant)
        K.assert_topk(pv, pi, x, k, lengths, name=variant)
        assert_close(pi, i, bitwise=True, name=f"{variant} indices")


@pytest.mark.parametrize("variant", TOPK_VARIANTS)
@pytest.mark.parametrize("kind", ["uniform", "ties"])
def test_topk_hard_distributions(kind, variant):
    """Uniform [0, 1) (dense top bins: > 4096 candidates, the fused variant's global-pass path)
    and 50 distinct values (huge ties at the threshold)."""
    for (R, N, k) in ((4, 65536, 2048), (64, 131072, 512)):
        for dtype in (np.float32, ml_dtypes.bfloat16):
            x = _scores(R, N, dtype, seed=R + k, kind=kind)
            v, i = _production(x, k, None, variant)
            K.assert_topk(v, i, x, k, None, name=f"{variant} {kind} {dtype.__name__}")


@pytest.mark.parametrize("variant", TOPK_VARIANTS)
def test_topk_poisoned_outputs_and_repeatability(variant):
    x = _scores(8, 131072, np.float32, seed=9)
    plan = K.TopkPlan(8, 131072, 2048, K.F32, variant=variant)
    dx = cuda.to_device(x)
    vals = cuda.to_device(poison(8 * 2048, np.float32))
    idx = cuda.to_device(np.full(8 * 2048, -7, np.int32))      # not -1: that is a legal answer
    first = None
    for _ in range(3):
        plan.run(dx.reshape(-1), None, vals, idx)
        v, i = vals.copy_to_host().reshape(8, 2048), idx.copy_to_host().reshape(8, 2048)
        K.assert_topk(v, i, x, 2048, None, name="poisoned")
        if first is None:
            first = (v, i)
        assert_close(v, first[0], bitwise=True, name="repeat values")
        assert_close(i, first[1], bitwise=True, name="repeat indices")


@pytest.mark.parametrize("variant", TOPK_VARIANTS)
def test_topk_nan_rule_on_device(variant):
    """Device inputs are not scanned: NaN ranks above +inf (torch.topk's order), ties by index."""
    x = _scores(2, 5000, np.float32, seed=4)
    x[0, [10, 20]] = np.nan
    x[0, 30] = np.inf
    c = K._prepare(cuda.to_device(x), 4, None, check_nan=False)
    v, i = K.topk_production(c, variant=variant)
    i = i.copy_to_host()
    assert list(i[0, :3]) == [10, 20, 30]


@pytest.mark.skipif("cluster" not in TOPK_VARIANTS, reason="cluster variant not under test")
def test_topk_nan_payloads_on_device():
    """The GPU's float32 key (``topk.key_f32_bits``: one add.rn.f32 of +0 stands for the -0 and
    NaN rules) on device inputs, at 64 x 131072 (cluster pairs): NaNs of either sign and any
    payload (quiet, signaling, all ones) rank above +inf and tie by index; -0 ties +0;
    subnormals keep their order (no flush to zero). The oracle, values bit for bit."""
    R, N, k = 64, 131072, 2048
    x = _scores(R, N, np.float32, seed=9)
    u = x.view(np.uint32)
    u[0, [100, 5000, 70000, 130000, 9]] = [0xFFC00000, 0x7FC01234, 0x7F800001, 0xFFFFFFFF,
                                          0x7FFFFFFF]
    x[0, 7] = np.inf
    x[1] = _scores(1, N, np.float32, seed=10)[0] * np.float32(1e-39)     # subnormals, +-0
    x[1, ::7] = np.float32(0.0)
    u[1, 3::7] = 0x80000000                                              # -0
    x[2, :] = np.float32(0.0)
    u[2, 1::2] = 0x80000000                                              # +0 / -0 alternating
    c = K._prepare(cuda.to_device(x), k, None, check_nan=False)
    plan = K.TopkPlan(R, N, k, c.kind, variant="cluster")
    v, i = K.topk_production(c, plan=plan)
    i = i.copy_to_host()
    assert i[0, :6].tolist() == [9, 100, 5000, 70000, 130000, 7]
    assert i[2].tolist() == list(range(k))
    K.assert_topk(v, i, x, k, name="NaN payloads, subnormals, -0")


@pytest.mark.parametrize("variant", TOPK_VARIANTS)
def test_topk_fallback_massive_ties_and_device_bf16(variant):
    """A row of one repeated value overflows the candidate list (> N/8 in the threshold's bin):
    the finish pass runs the reference routine for it. Device bfloat16 in -> uint16 bits out."""
    x = np.full((2, 131072), 1.5, np.float32)
    x[1, ::1000] = 2.0                                   # 132 larger ones, then ties by index
    v, i = _production(x, 2048, None, variant)
    K.assert_topk(v, i, x, 2048, None, name="massive ties")
    assert i[0].tolist() == list(range(2048))
    xb = _scores(3, 4096, ml_dtypes.bfloat16, seed=5)
    vb, ib = K.topk_production(K._prepare(cuda.to_device(xb.view(np.int16)), 64, None),
                               variant=variant)
    assert vb.dtype == np.uint16 and ib.dtype == np.int32
    K.assert_topk(vb.copy_to_host(), ib.copy_to_host(), xb, 64, None, name="device bf16")


@pytest.mark.skipif("staged" not in TOPK_VARIANTS, reason="staged variant not under test")
@pytest.mark.parametrize("kind", ["normal", "uniform"])
def test_topk_staged_overflow(kind):
    """The staged variant with 16 shared slots per list and block: nearly every append takes the
    direct global path, racing the blocks' range reservations on the same row counters; also
    a single-row (one-wave) grid. Same answer as the oracle, twice (workspace left clean)."""
    for (R, N, k) in ((4, 65536, 2048), (1, 65536, 2048)):
        x = _scores(R, N, np.float32, seed=R + 7, kind=kind)
        plan = K.TopkPlan(R, N, k, K.F32, variant="staged", stage_cap=16)
        dx = cuda.to_device(x)
        vals = cuda.to_device(poison(R * k, np.float32))
        idx = cuda.to_device(np.full(R * k, -7, np.int32))
        for _ in range(2):
            plan.run(dx.reshape(-1), None, vals, idx)
            K.assert_topk(vals.copy_to_host().reshape(R, k), idx.copy_to_host().reshape(R, k),
                          x, k, None, name=f"staged overflow {kind} {R}x{N}")


@pytest.mark.skipif("rowblock" not in TOPK_VARIANTS, reason="rowblock variant not under test")
@pytest.mark.parametrize("kind", ["normal", "uniform", "ties"])
def test_topk_rowblock_level_passes(kind):
    """rowblock with a bucket capacity of 64 (a TopkPlan test hook): nearly every row's
    threshold bucket is narrowed by 12-bit level passes over the row before its list is built
    (the generic composite append); N = 70001 takes the scalar loads. Twice (bitwise repeat)."""
    for (R, N, k), dtype in (((4, 65536, 2048), np.float32), ((3, 70001, 512), np.float32),
                             ((2, 65536, 1024), ml_dtypes.bfloat16)):
        x = _scores(R, N, dtype, seed=R + N + k, kind=kind)
        c = K._prepare(x, k, None)
        plan = K.TopkPlan(R, N, k, c.kind, variant="rowblock", capacity=64)
        first = None
        for _ in range(2):
            v, i = K.topk_production(c, plan=plan)
            K.assert_topk(v, i, x, k, None, name=f"rowblock levels {kind} {R}x{N} {dtype}")
            if first is None:
                first = (v, i)
            assert_close(i, first[1], bitwise=True, name="repeat indices")


@pytest.mark.skipif("rowblock" not in TOPK_VARIANTS, reason="rowblock variant not under test")
def test_topk_rowblock_special_rows_on_device():
    """The level-1 append compares floats with the threshold's float: rows whose threshold is
    -inf (all -inf), +inf, NaN (device input, unscanned: NaN ranks above +inf), -0/+0; and
    "auto" resolves to rowblock for 64 such rows, to fused for 1M-score rows."""
    N, k = 65536, 1024
    x = _scores(6, N, np.float32, seed=61)
    x[0] = -np.inf
    x[1, ::40] = np.inf                                   # 1639 +inf: the threshold is +inf
    x[2, ::50] = np.nan                                   # 1311 NaN: the threshold is NaN
    x[3] = np.where(np.arange(N) % 2 == 0, -0.0, 0.0)
    x[3, ::97] = -1.0
    x[4, 7:] = -np.inf                                    # 7 real values, then -inf
    c = K._prepare(cuda.to_device(x), k, None, check_nan=False)
    v, i = K.topk_production(c, variant="rowblock")
    v, i = v.copy_to_host(), i.copy_to_host()
    assert i[0].tolist() == list(range(k))
    assert i[2].tolist() == list(range(0, N, 50))[:k] and np.isnan(v[2]).all()   # 1311 NaN > k
    K.assert_topk(v, i, x, k, None, name="rowblock special rows")
    assert K.resolve_variant("auto", N, 64) == "rowblock"
    assert K.resolve_variant("auto", 1 << 20, 64) == "fused"


def _repeats_bitwise(x, k, c, plan, calls, ws_msg):
    """``calls`` top-k calls on one split / cluster plan: the first against the oracle, every one
    bit for bit equal to it, and the plan's global histogram buffers zero after each
    (``ws_msg`` says why)."""
    first = None
    for _ in range(calls):
        v, i = K.topk_production(c, plan=plan)
        assert not plan.split_workspace(True, K.SP_NBUF)[0].copy_to_host().any(), ws_msg
        if first is None:
            K.assert_topk(v, i, x, k, None, name=f"{plan.variant} {c.R}x{c.n} S={plan.S}")
            first = (v, i)
        assert_close(i, first[1], bitwise=True, name=f"{plan.variant} repeat indices")
        assert_close(v.view(np.uint8), first[0].view(np.uint8), bitwise=True,
                     name=f"{plan.variant} repeat values")


@pytest.mark.skipif("split" not in TOPK_VARIANTS, reason="split variant not under test")
@pytest.mark.parametrize("R,N,k,S", [(1, 65536, 2048, "all"), (4, 65536, 512, "all"),
                                     (1, 1 << 20, 4096, None)])
def test_topk_split_every_sm_repeated(R, N, k, S):
    """split (S CTAs a row meeting at barriers in global memory) with as many CTAs as SMs, 10
    calls on one plan: the barrier counters keep growing, the histogram buffers must be zero
    after every call, the answer must repeat bit for bit."""
    from dsv4_numba.runtime import detect_gpu
    if S == "all":
        S = detect_gpu().sm_count // R
    x = _scores(R, N, np.float32, seed=R + N, kind="normal")
    c = K._prepare(x, k, None)
    _repeats_bitwise(x, k, c, K.TopkPlan(R, N, k, c.kind, variant="split", S=S), 10,
                     "every split run must leave its histograms zero")


@pytest.mark.skipif("split" not in TOPK_VARIANTS, reason="split variant not under test")
@pytest.mark.parametrize("kind", ["normal", "uniform", "ties"])
@pytest.mark.parametrize("R,N,k,dtype", [(4, 65536, 2048, np.float32), (3, 70001, 512, np.float32),
                                         (2, 65536, 1024, ml_dtypes.bfloat16),
                                         (5, 127, 64, np.float32),
                                         (3, 129, 100, ml_dtypes.bfloat16)])
def test_topk_split_level_rounds_and_replay(R, N, k, dtype, kind):
    """split with a bucket capacity of 64 (level rounds on most rows), lengths (one row full),
    N = 70001 / 127 / 129 (scalar loads); then its replay form (the simulator's: one launch a
    barrier) on the GPU: the same bits."""
    x = _scores(R, N, dtype, seed=R + N + k, kind=kind)
    lengths = np.random.default_rng(N).integers(0, N + 1, R)
    lengths[0] = N
    c = K._prepare(x, k, lengths)
    plan = K.TopkPlan(R, N, k, c.kind, variant="split", capacity=64)
    v, i = K.topk_production(c, plan=plan)
    K.assert_topk(v, i, x, k, lengths, name=f"split levels {kind} {R}x{N} {dtype}")
    plan.replay = True
    rv, ri = K.topk_production(c, plan=plan)
    assert_close(ri, i, bitwise=True, name="split replay indices")
    assert_close(rv.view(np.uint8), v.view(np.uint8), bitwise=True, name="split replay values")


@pytest.mark.skipif("cluster" not in TOPK_VARIANTS, reason="cluster variant not under test")
@pytest.mark.parametrize("R,N,k,S,dtype", [
    (1, 65536, 2048, 16, np.float32), (4, 65536, 512, 16, np.float32),
    (1, 65536, 2048, 8, np.float32), (2, 262144, 4096, 4, np.float32),
    (64, 131072, 2048, 2, np.float32), (3, 65536, 1024, 16, ml_dtypes.bfloat16)])
def test_topk_cluster_repeated(R, N, k, S, dtype):
    """cluster (each row one cluster of S CTAs meeting at barrier.cluster, exchanging through
    distributed shared memory): the oracle, then 5 more calls on one plan repeating it bit for
    bit, split's global histograms never written; S = 2 / 4 / 8 / 16, 64 rows x 2 CTAs, bf16."""
    x = _scores(R, N, dtype, seed=R + N + S, kind="normal")
    c = K._prepare(x, k, None)
    _repeats_bitwise(x, k, c, K.TopkPlan(R, N, k, c.kind, variant="cluster", S=S), 6,
                     "cluster must leave split's global histograms untouched (zero)")


@pytest.mark.skipif("cluster" not in TOPK_VARIANTS, reason="cluster variant not under test")
@pytest.mark.parametrize("kind", ["normal", "uniform", "ties"])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_topk_cluster_stash(kind, dtype):
    """cluster's stash (pass 2 filters the top 16 key bits pass 1 left in shared memory, then
    loads the listed scores), on by default at 64 x 131072 (S = 2 x 512 threads, 8 trips a
    slice): the oracle, and the same bits as the kernel with the stash off. Lengths: full, odd
    (a scalar tail), ending inside slice 1 and inside slice 0 (checked trips, an empty slice),
    below k, zero; outliers and +-inf; uniform (dense top bins), ties (50 values: level rounds,
    pass 2 reads the scores, the stash unused)."""
    R, N, k = 64, 131072, 2048
    x = _scores(R, N, dtype, seed=7 + len(kind), kind=kind)
    g = np.random.default_rng(8)
    if kind == "normal":
        x[g.integers(0, R, 50), g.integers(0, N, 50)] = dtype(1e4)
        x[3, 17], x[4, 18], x[5, 19] = dtype(np.inf), dtype(-np.inf), dtype(-1e4)
    lengths = g.integers(0, N + 1, R)
    lengths[:6] = [N, N - 3, 65536 + 1001, 40001, 1000, 0]
    c = K._prepare(x, k, lengths)
    on = K.TopkPlan(R, N, k, c.kind, variant="cluster")
    assert on.stash and (on.S, on.split_threads) == (2, 512)
    v, i = K.topk_production(c, plan=on)
    K.assert_topk(v, i, x, k, lengths, name=f"cluster stash {kind} {dtype.__name__}")
    off = K.TopkPlan(R, N, k, c.kind, variant="cluster", stash=False)
    v2, i2 = K.topk_production(c, plan=off)
    assert_close(i2, i, bitwise=True, name="stash off vs on indices")
    assert_close(v2.view(np.uint8), v.view(np.uint8), bitwise=True, name="stash off vs on values")


@pytest.mark.skipif("cluster" not in TOPK_VARIANTS, reason="cluster variant not under test")
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_topk_cluster_pair_split_and_merge(dtype):
    """A pair's two endings (64 x 131072, k = 2048, S = 2 x 512): the counting sort split by slot
    (``pair_split_ending``, where no level round ran) and the sorted lists' merge (after a level
    round; ``TopkPlan.pair_merge`` forces it): the oracle, and the same bits. Rows 0-3 put 300
    copies of 3.0 in both slices, all in one slot (past RB_BMAX: the CTA ranking them sorts its
    items by counting_sort_desc instead); lengths inside each slice, below k and zero; outliers
    and +-inf elsewhere."""
    R, N, k = 64, 131072, 2048
    x = _scores(R, N, dtype, seed=11)
    g = np.random.default_rng(12)
    x[g.integers(4, R, 40), g.integers(0, N, 40)] = dtype(1e4)
    x[6, 5], x[7, 70000], x[8, 3] = dtype(np.inf), dtype(-np.inf), dtype(-1e4)
    for r in range(4):
        x[r, g.choice(N, 300, replace=False)] = dtype(3.0)
    lengths = np.full(R, N)
    lengths[8:13] = [N - 5, 65536 + 999, 30001, 1000, 0]
    c = K._prepare(x, k, lengths)
    plan = K.TopkPlan(R, N, k, c.kind, variant="cluster")
    assert (plan.S, plan.split_threads) == (2, 512)
    v, i = K.topk_production(c, plan=plan)
    K.assert_topk(v, i, x, k, lengths, name=f"cluster pair split {dtype.__name__}")
    plan.pair_merge = True
    v2, i2 = K.topk_production(c, plan=plan)
    K.assert_topk(v2, i2, x, k, lengths, name=f"cluster pair merge {dtype.__name__}")
    assert_close(i2, i, bitwise=True, name="merge vs split indices")
    assert_close(v2.view(np.uint8), v.view(np.uint8), bitwise=True, name="merge vs split values")


@pytest.mark.skipif("cluster" not in TOPK_VARIANTS, reason="cluster variant not under test")
@pytest.mark.parametrize("kind", ["normal", "ties"])
@pytest.mark.parametrize("R,N,k,dtype", [(4, 65536, 2048, np.float32),
                                         (3, 70000, 512, np.float32),
                                         (2, 65536, 1024, ml_dtypes.bfloat16)])
def test_topk_cluster_level_rounds_lengths(R, N, k, dtype, kind):
    """cluster at its default S with a bucket capacity of 64 (level rounds: more cluster barriers
    a row), lengths (one row full, others short, some below k): the same bits as split's
    replay form (global-memory exchange, one launch a barrier)."""
    x = _scores(R, N, dtype, seed=R + N + k + 1, kind=kind)
    lengths = np.random.default_rng(N + 1).integers(0, N + 1, R)
    lengths[0], lengths[-1] = N, min(k // 2, N)
    c = K._prepare(x, k, lengths)
    plan = K.TopkPlan(R, N, k, c.kind, variant="cluster", capacity=64)
    v, i = K.topk_production(c, plan=plan)
    K.assert_topk(v, i, x, k, lengths, name=f"cluster levels {kind} {R}x{N} {dtype}")
    ref = K.TopkPlan(R, N, k, c.kind, variant="split", capacity=64, S=plan.S)
    ref.replay = True
    rv, ri = K.topk_production(c, plan=ref)
    assert_close(ri, i, bitwise=True, name="cluster vs split replay indices")
    assert_close(rv.view(np.uint8), v.view(np.uint8), bitwise=True,
                 name="cluster vs split replay values")
