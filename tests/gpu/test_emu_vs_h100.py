"""Issue 8 validation, Hopper: H100-verified production kernels run on the GPU and in the emulator
(same process; DSV4_MODE=sim for the emulated run) on the SAME inputs, and must agree: bitwise where
the order is fixed (integer operands: every partial sum exact; TMA images), else within twice the
accumulation bound each side is held to against the float64 oracle. One ``EMU-VS-H100`` line per
case is printed (``-s``) for the record.

Cases (few, small; the wgmma / TMA cases take seconds, the two kernel cases ~4 min on the device's
CPU -- the emulated FMHA alone ~230 s there, ~125 s on the 2-core CI machine -- so give the file a
500 s slot, or run ``-k "not fmha"``):
  - wgmma microkernels (hw.microkernels), m64n64: bf16 SS 128B K-major (the FMHA's QK form), bf16
    RS 128B MN-major (its PV form, ``_tb``), e4m3 SS no-swizzle (core-matrix LBO/SBO descriptors);
  - TMA round trips: 2D 128B swizzle with out-of-bounds rows/columns, 5D no swizzle;
  - the fused FMHA (pipelines/fmha_sm90.py, schedule v1 pinned: the H100-verified one), one CTA of
    384 threads: B=1, Tq=70, Tk=100, one head, D=64, causal, with a sink;
  - the fused indexer kernel (pipelines/indexer_sm90.py ``indexer_fused_kernel``, bf16 operands,
    logits epilogue: the registered ``indexer_scores`` production), T=2, N=129 (a 1-key tail block),
    valid_len (129, 5): per-head q.k logits.

Run (from the repo root): ``python -m pytest -q -s tests/gpu/test_emu_vs_h100.py``

Recorded (H100 80GB HBM3, 2026-11-26, driver 580.159.04 / CUDA 13.0, numba-cuda 0.30.4):
  fmha_sm90 v1, B1 Tq70 Tk100 H1 D64 causal + sink: output bitwise equal (100% of elements), LSE
  bitwise on 67%, max |gpu - emu| 1.9e-6 (bound 7.7e-5); both 0.69 of the oracle bound.
  indexer fused kernel, bf16 logits T2 N129 H64 D128: 36.9% bitwise, max |gpu - emu| 0.031 of the
  float32 accumulation bound (gpu 0.021, emu 0.0097 of it against float64).
  wgmma / TMA cases: CHANGELOG 0.2.0 (H100 and H200).
"""
import time

import ml_dtypes
import numpy as np
import pytest

from dsv4_numba import runtime
from dsv4_numba.hw import microkernels as mk

pytestmark = pytest.mark.gpu
BF16 = ml_dtypes.bfloat16
U, UBF = 2.0 ** -24, 2.0 ** -8


@pytest.fixture(scope="module", autouse=True)
def hopper():
    if runtime.device_arch() != "sm_90a":
        pytest.skip(f"the kernels compared are sm_90a; this device is {runtime.device_arch()}")


def both(monkeypatch, fn, *args, **kw):
    """(GPU result, emulator result, gpu seconds, emulator seconds) of ``fn(*args, **kw)``."""
    monkeypatch.setenv("DSV4_MODE", "gpu")
    t0 = time.perf_counter()
    g = fn(*args, **kw)
    t1 = time.perf_counter()
    monkeypatch.setenv("DSV4_MODE", "sim")
    try:
        e = fn(*args, **kw)
    finally:
        monkeypatch.setenv("DSV4_MODE", "gpu")
    return g, e, t1 - t0, time.perf_counter() - t1


def _ids(c):
    return f"m64n{c[0]}-{c[1]}-{'ss' if c[2] == 'smem' else 'rs'}-{c[3]}-B{c[4]}major"


# the three forms the fused kernels and descriptors rely on; round 1 recorded bf16 SS/none, SS/128B
# and RS/none (max|gpu-emu|/(|A||B|) 2.38e-07, 52.8% bitwise, gpu err/bound 0.0137, emu 0.00509)
WGMMA_CASES = [(64, "bf16", "smem", "128B", "K"), (64, "bf16", "regs", "128B", "MN"),
               (64, "e4m3", "smem", "none", "K")]


@pytest.mark.parametrize("case", WGMMA_CASES, ids=[_ids(c) for c in WGMMA_CASES])
def test_wgmma_tile_gpu_equals_emulator(monkeypatch, case):
    n, dtype, a_from, swizzle, b_major = case
    assert case in mk.VERIFY_WGMMA
    rng = np.random.default_rng(1000 + n * 7 + len(dtype + a_from + swizzle + b_major))
    k = mk.K_OF[dtype]
    bshape = (k, n) if b_major == "MN" else (n, k)
    a, b = mk.integer_operand(rng, (64, k), dtype), mk.integer_operand(rng, bshape, dtype)
    g, e, _, _ = both(monkeypatch, mk.wgmma_tile, a, b, dtype, a_from, swizzle, b_major, garbage=1.0e3)
    assert np.isfinite(g).all() and np.isfinite(e).all()
    np.testing.assert_array_equal(e, g)                       # exact partial sums: bit for bit
    a, b = mk.random_operand(rng, (64, k), dtype), mk.random_operand(rng, bshape, dtype)
    g, e, tg, te = both(monkeypatch, mk.wgmma_tile, a, b, dtype, a_from, swizzle, b_major,
                        garbage=float("nan"))
    ref, scale = mk.wgmma_oracle(a, b, dtype, b_major)
    bound = mk.wgmma_error_bound(scale, dtype)
    rel = np.abs(g - e) / np.maximum(scale, 1e-30)
    print(f"\nEMU-VS-H100 wgmma {_ids(case)}: integer operands bitwise equal; random: "
          f"max|gpu-emu|/(|A||B|) {rel.max():.3g}, bitwise equal {np.mean(g == e):.1%}, gpu err/bound "
          f"{(np.abs(g - ref) / bound).max():.3g}, emu err/bound {(np.abs(e - ref) / bound).max():.3g} "
          f"(gpu {tg:.1f} s, emu {te:.1f} s)")
    assert np.isfinite(g).all() and np.isfinite(e).all()
    assert (np.abs(g - e) <= 2 * bound).all()


TMA_CASES = [  # shape, box, start (NumPy order), swizzle, element dtype
    ((100, 72), (64, 64), (48, 16), "128B", np.uint16),         # past the last row and column
    ((2, 3, 4, 5, 64), (1, 2, 3, 4, 32), (1, 1, 1, 2, 16), "none", np.uint16),   # 5D
]


@pytest.mark.parametrize("shape,box,start,swizzle,dt", TMA_CASES,
                         ids=[f"{len(c[0])}d-{c[3]}" for c in TMA_CASES])
def test_tma_round_trip_gpu_equals_emulator(monkeypatch, shape, box, start, swizzle, dt):
    x = np.random.default_rng(len(shape) * 31 + box[-1]).integers(1, 1 << 16, shape).astype(dt)
    (gi, gy), (ei, ey), tg, te = both(monkeypatch, mk.tma_round_trip, x, box, start, swizzle)
    same_img, same_y = np.array_equal(ei, gi), np.array_equal(ey, gy)
    print(f"\nEMU-VS-H100 tma {len(shape)}d-{swizzle} box {box} at {start}: shared image bitwise "
          f"{'equal' if same_img else 'DIFFERENT'} ({gi.nbytes} B), stored tensor bitwise "
          f"{'equal' if same_y else 'DIFFERENT'} (gpu {tg:.1f} s, emu {te:.1f} s)")
    np.testing.assert_array_equal(ei, gi)      # the swizzled shared image, byte for byte
    np.testing.assert_array_equal(ey, gy)      # the stored tensor (edges clipped the same way)


# ---------------------------------------------------------------- fused FMHA (schedule v1)
FMHA_CASE = (1, 70, 100, 1, 1, 64, True)       # B, Tq, Tk, Hq, Hkv, D, causal: nc = 2, 2 key tiles


def _fmha_inputs():
    B, Tq, Tk, Hq, Hkv, D, causal = FMHA_CASE
    g = np.random.default_rng(11)
    q = (g.standard_normal((B, Tq, Hq, D)) * 3).astype(BF16)
    k = g.standard_normal((B, Tk, Hkv, D)).astype(BF16)
    v = (g.standard_normal((B, Tk, Hkv, D)) * 10.0 ** g.uniform(-1, 1, (B, Tk, Hkv, 1))).astype(BF16)
    sink = np.linspace(-1.0, 2.0, Hq).astype(np.float32)
    return q, k, v, causal, sink


def _fmha_gpu(q, k, v, causal, sink):
    """The production Plan (schedule v1), NaN-poisoned outputs; host (out bf16, lse)."""
    from numba import cuda

    from dsv4_numba.pipelines import fmha_sm90
    from dsv4_numba.pipelines.fmha import _validate
    c = _validate(q, k, v, causal, None, sink, True, None)
    assert fmha_sm90.unsupported(c, False) is None
    dev = [cuda.to_device(np.ascontiguousarray(x).view(np.uint16)) for x in (q, k, v)]
    plan = fmha_sm90.Plan(c, *(x.reshape(-1) for x in dev), cuda.to_device(c.lens),
                          cuda.to_device(np.asarray(c.sink, np.float32)), schedule="v1")
    assert plan.schedule == "v1"
    plan.out.copy_to_device(np.full(plan.out.shape, 0x7FC17FC1, np.uint32))
    plan.lse.copy_to_device(np.full(plan.lse.shape, np.nan, np.float32))
    plan.launch()
    cuda.synchronize()
    B, Tq, Hq, D = q.shape
    return (plan.out.copy_to_host().view(BF16).reshape(B, Tq, Hq, D),
            plan.lse.copy_to_host().reshape(B, Hq, Tq), c.scale)


def _fmha_emu(q, k, v, causal, sink):
    """The same kernel (v1) and arguments as Plan, under the simulator + emulator."""
    from dsv4_numba import emu
    from dsv4_numba.pipelines import fmha_sm90
    from dsv4_numba.pipelines.fmha import _validate
    c = _validate(q, k, v, causal, None, sink, True, None)
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    cfg = fmha_sm90.launch_config(B, Tq, Hq, Hkv)
    g = fmha_sm90.geometry(D, cfg["nc"], "v1")
    boxes = (cfg["qbox"], (1, g["bn"], 1, 64), (1, g["bn"], 1, 64))
    maps = [emu.tensor_map(np.ascontiguousarray(x).view(np.uint16), box, "128B", dtype="bfloat16")
            for x, box in zip((q, k, v), boxes)]
    out = np.full(B * Tq * Hq * D // 2, 0x7FC17FC1, np.uint32)
    lse = np.full(B * Hq * Tq, np.nan, np.float32)
    fmha_sm90.fused_kernel(D, cfg["nc"], "v1").launch(
        cfg["grid"], g["threads"], *maps, out, lse, np.asarray(c.lens, np.int32),
        np.asarray(c.sink, np.float32), np.int32(1), Tq, Tk, Hq, Hkv, cfg["G"], np.int32(c.causal),
        int(Tk - Tq), np.float32(c.scale * fmha_sm90.LOG2E), shared_bytes=g["dyn_smem"])
    return out.view(BF16).reshape(B, Tq, Hq, D), lse.reshape(B, Hq, Tq), c.scale


def _fmha_oracle(q, k, v, causal, sink, scale):
    """float64 out, its per-element bound (test_fmha_fused's: bf16 P and output dominate), lse and
    a float32-accumulation bound for lse (logits Delta + softmax sums)."""
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    O, Ob = np.zeros(q.shape), np.zeros(q.shape)
    L, Lb = np.zeros((B, Hq, Tq)), np.zeros((B, Hq, Tq))
    sc = float(np.float32(scale))
    gam = lambda n: n * U / (1 - n * U)              # noqa: E731
    for b in range(B):
        for h in range(Hq):
            kk, vv = k64[b, :, h // (Hq // Hkv)], v64[b, :, h // (Hq // Hkv)]
            z = sc * (q64[b, :, h] @ kk.T)
            delta = gam(D + 1) * sc * (np.abs(q64[b, :, h]) @ np.abs(kk).T).max(axis=1)
            if causal:
                z = np.where(np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + Tk - Tq, z, -np.inf)
            m = np.maximum(z.max(axis=1), sink[h])[:, None]
            e = np.exp(z - m)
            den = e.sum(axis=1) + np.exp(sink[h] - m[:, 0])
            p = e / den[:, None]
            O[b, :, h] = p @ vv
            Ob[b, :, h] = 2.0 ** -8 * np.abs(p @ vv) + 1.01 * (2.0 ** -8 + 1e-5) * (p @ np.abs(vv)) + 1e-30
            L[b, h] = m[:, 0] + np.log(den)
            Lb[b, h] = delta + 16 * U * (np.abs(L[b, h]) + delta + 1) + gam(Tk + 8)
    return O, Ob, L, Lb


def _fmha_run(q, k, v, causal, sink):
    from dsv4_numba.runtime import env
    return (_fmha_gpu if env.mode() == "gpu" else _fmha_emu)(q, k, v, causal, sink)


def test_fused_fmha_gpu_agrees_with_emulator(monkeypatch):
    q, k, v, causal, sink = _fmha_inputs()
    (go, gl, scale), (eo, el, _), tg, te = both(monkeypatch, _fmha_run, q, k, v, causal, sink)
    O, Ob, L, Lb = _fmha_oracle(q, k, v, causal, sink, scale)
    g64, e64 = go.astype(np.float64), eo.astype(np.float64)
    assert not np.isnan(g64).any() and not np.isnan(e64).any(), "unwritten (NaN-poisoned) outputs"
    assert np.isfinite(gl).all() and np.isfinite(el).all()
    d = np.abs(g64 - e64)
    dl = np.abs(gl.astype(np.float64) - el.astype(np.float64))
    print(f"\nEMU-VS-H100 fmha_sm90 v1 B1 Tq70 Tk100 H1 D64 causal+sink (1 CTA, 384 threads): out "
          f"bitwise equal {np.mean(go.view(np.uint16) == eo.view(np.uint16)):.1%}, max|gpu-emu|/bound "
          f"{(d / Ob).max():.3g}, gpu err/bound {(np.abs(g64 - O) / Ob).max():.3g}, emu err/bound "
          f"{(np.abs(e64 - O) / Ob).max():.3g}; lse bitwise equal {np.mean(gl == el):.1%}, "
          f"max|gpu-emu| {dl.max():.3g} (bound {Lb.min():.3g}..{Lb.max():.3g}) "
          f"(gpu {tg:.1f} s incl. compile, emu {te:.1f} s)")
    assert (d <= 2 * Ob).all(), f"out: worst |gpu-emu|/bound {(d / Ob).max():.3g}"
    assert (dl <= 2 * Lb).all(), f"lse: worst |gpu-emu|/bound {(dl / Lb).max():.3g}"


# ---------------------------------------------------------------- fused indexer kernel (logits)
def _indexer_logits(q, kc, vl):
    """indexer_scores/production: the fused kernel with the logits epilogue, [T, H, N] float32."""
    from dsv4_numba.pipelines import indexer_sm90 as F
    from dsv4_numba.runtime import env
    from dsv4_numba.stages.indexer_stages import Paging
    T, H, D = q.shape
    N = kc.shape[0]
    qb, kb = q.view(np.uint16).reshape(-1), kc.view(np.uint16).reshape(-1)
    table = np.zeros(1, np.int32)
    if env.mode() == "gpu":
        from numba import cuda
        qb, kb, table, vl = (cuda.to_device(np.ascontiguousarray(x)) for x in (qb, kb, table, vl))
    lg = F.scores_production(qb, F.BF16, kb, F.BF16, Paging(table, 1, 1, N), vl, T, H, N, D)
    if hasattr(lg, "copy_to_host"):
        lg = lg.copy_to_host()
    return np.asarray(lg).reshape(T, H, N)


def test_fused_indexer_kernel_gpu_agrees_with_emulator(monkeypatch):
    from dsv4_numba.pipelines import indexer_sm90 as F
    H, D = F.H_FUSED, F.D_FUSED
    T, N = 2, 129
    g = np.random.default_rng(4)
    q = (g.standard_normal((T, H, D)) * 10.0 ** g.uniform(-1, 1, (T, H, 1))).astype(BF16)
    kc = (g.standard_normal((N, D)) * 10.0 ** g.uniform(-1, 1, (N, 1))).astype(BF16)
    kc.reshape(-1)[g.integers(0, kc.size, 8)] *= 50
    vl = np.array([129, 5], np.int32)
    gl, el, tg, te = both(monkeypatch, _indexer_logits, q, kc, vl)
    q64, k64 = q.astype(np.float64), kc.astype(np.float64)
    ref = np.einsum("thd,nd->thn", q64, k64)
    bound = (D * U / (1 - D * U)) * np.einsum("thd,nd->thn", np.abs(q64), np.abs(k64)) + 1e-30
    valid = np.broadcast_to(np.arange(N)[None, None, :] < vl[:, None, None], (T, H, N))
    for name, lg in (("gpu", gl), ("emu", el)):
        assert np.isfinite(lg).all(), f"{name}: non-finite logits"
        assert (lg[~valid] == 0).all(), f"{name}: positions past valid_len must be 0"
    d = np.abs(gl.astype(np.float64) - el.astype(np.float64))
    print(f"\nEMU-VS-H100 indexer_fused_kernel bf16 logits T2 N129 H{H} D{D} valid_len (129, 5): bitwise "
          f"equal {np.mean(gl[valid] == el[valid]):.1%}, max|gpu-emu|/bound {(d / bound)[valid].max():.3g}, "
          f"gpu err/bound {(np.abs(gl - ref) / bound)[valid].max():.3g}, emu err/bound "
          f"{(np.abs(el - ref) / bound)[valid].max():.3g} (gpu {tg:.1f} s incl. compile, emu {te:.1f} s)")
    assert (d[valid] <= 2 * bound[valid]).all()
