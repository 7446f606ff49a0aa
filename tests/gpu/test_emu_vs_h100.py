"""Issue 8 validation, Hopper: the H100-verified PTX-layer microkernels (dsv4_numba.hw.microkernels)
run on the GPU and in the emulator (same process, DSV4_MODE=sim for the emulated run) on the SAME
inputs, and must agree: bitwise where the order is fixed (integer operands: every partial sum
exact; TMA images), else within twice the accumulation bound each side is held to against the
float64 oracle. One line per case is printed (``-s``) for the record: max |gpu - emu| / (|A||B|),
the fraction of bitwise-equal elements, and each side's error against the oracle.

Run (from the repo root): ``python -m pytest -q -s tests/gpu/test_emu_vs_h100.py``
(kernels compile once per configuration; ~1-2 min on an H100 host, most of it the emulator).
"""
import numpy as np
import pytest

from dsv4_numba import runtime
from dsv4_numba.hw import microkernels as mk

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def hopper():
    if runtime.device_arch() != "sm_90a":
        pytest.skip(f"the microkernels are sm_90a; this device is {runtime.device_arch()}")


def both(monkeypatch, fn, *args, **kw):
    """(GPU result, emulator result) of ``fn(*args, **kw)``."""
    monkeypatch.setenv("DSV4_MODE", "gpu")
    g = fn(*args, **kw)
    monkeypatch.setenv("DSV4_MODE", "sim")
    e = fn(*args, **kw)
    monkeypatch.setenv("DSV4_MODE", "gpu")
    return g, e


def _ids(c):
    return f"m64n{c[0]}-{c[1]}-{'ss' if c[2] == 'smem' else 'rs'}-{c[3]}-B{c[4]}major"


@pytest.mark.parametrize("case", mk.VERIFY_WGMMA, ids=[_ids(c) for c in mk.VERIFY_WGMMA])
def test_wgmma_tile_gpu_equals_emulator(monkeypatch, case):
    n, dtype, a_from, swizzle, b_major = case
    rng = np.random.default_rng(1000 + n * 7 + len(dtype + a_from + swizzle + b_major))
    k = mk.K_OF[dtype]
    bshape = (k, n) if b_major == "MN" else (n, k)
    a, b = mk.integer_operand(rng, (64, k), dtype), mk.integer_operand(rng, bshape, dtype)
    g, e = both(monkeypatch, mk.wgmma_tile, a, b, dtype, a_from, swizzle, b_major, garbage=1.0e3)
    assert np.isfinite(g).all() and np.isfinite(e).all()
    np.testing.assert_array_equal(e, g)                       # exact partial sums: bit for bit
    a, b = mk.random_operand(rng, (64, k), dtype), mk.random_operand(rng, bshape, dtype)
    g, e = both(monkeypatch, mk.wgmma_tile, a, b, dtype, a_from, swizzle, b_major, garbage=float("nan"))
    ref, scale = mk.wgmma_oracle(a, b, dtype, b_major)
    bound = mk.wgmma_error_bound(scale, dtype)
    rel = np.abs(g - e) / np.maximum(scale, 1e-30)
    print(f"\nEMU-VS-H100 {_ids(case)}: max|gpu-emu|/(|A||B|) {rel.max():.3g}, bitwise equal "
          f"{np.mean(g == e):.1%}, gpu err/bound {(np.abs(g - ref) / bound).max():.3g}, "
          f"emu err/bound {(np.abs(e - ref) / bound).max():.3g}")
    assert np.isfinite(g).all() and np.isfinite(e).all()
    assert (np.abs(g - e) <= 2 * bound).all()


TMA_CASES = [  # shape, box, start (NumPy order), swizzle, element dtype
    ((128, 192), (64, 64), (64, 64), "128B", np.uint16),
    ((100, 72), (64, 64), (48, 16), "128B", np.uint16),         # past the last row and column
    ((40, 64), (16, 64), (-8, 0), "none", np.uint16),           # before row 0
    ((3, 20, 32), (2, 8, 32), (1, 4, 0), "64B", np.uint16),
    ((3, 20, 16), (2, 8, 16), (1, 4, 0), "32B", np.uint16),
    ((2, 3, 4, 5, 64), (1, 2, 3, 4, 32), (1, 1, 1, 2, 16), "none", np.uint16),   # 5D
]


@pytest.mark.parametrize("shape,box,start,swizzle,dt", TMA_CASES,
                         ids=[f"{len(c[0])}d-{c[3]}-{i}" for i, c in enumerate(TMA_CASES)])
def test_tma_round_trip_gpu_equals_emulator(monkeypatch, shape, box, start, swizzle, dt):
    x = np.random.default_rng(len(shape) * 31 + box[-1]).integers(1, 1 << 16, shape).astype(dt)
    (gi, gy), (ei, ey) = both(monkeypatch, mk.tma_round_trip, x, box, start, swizzle)
    np.testing.assert_array_equal(ei, gi)      # the swizzled shared image, byte for byte
    np.testing.assert_array_equal(ey, gy)      # the stored tensor (edges clipped the same way)
