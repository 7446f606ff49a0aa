"""The PTX layer on an H100 (issue 5, item 5): the verification microkernels of dsv4_numba.hw.microkernels
against float64 NumPy oracles — wgmma tiles (bf16/e4m3, A from smem and registers, no swizzle / 128B,
B K-major and MN-major), TMA load -> smem -> store round trips (bitwise, with edges), the mbarrier
ring (bitwise, 64 MiB, GB/s printed) and the tensor-map encode + device-array delivery path.

Run: ``python -m pytest -q -s tests/gpu/test_ptx_gpu.py`` (``-s`` shows the ring's GB/s line).
"""
import numpy as np
import pytest

from dsv4_numba import runtime
from dsv4_numba.hw import microkernels as mk

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def hopper():
    if runtime.device_arch() != "sm_90a":
        pytest.skip(f"wgmma / TMA microkernels are sm_90a; this device is {runtime.device_arch()}")


# ---------------------------------------------------------------- (a) wgmma tiles
WGMMA_CASES = mk.VERIFY_WGMMA


def _ids(c):
    return f"m64n{c[0]}-{c[1]}-{'ss' if c[2] == 'smem' else 'rs'}-{c[3]}-B{c[4]}major"


@pytest.mark.parametrize("case", WGMMA_CASES, ids=[_ids(c) for c in WGMMA_CASES])
def test_wgmma_tile(case):
    n, dtype, a_from, swizzle, b_major = case
    rng = np.random.default_rng(n * 7 + len(dtype + a_from + swizzle + b_major))
    k = mk.K_OF[dtype]
    bshape = (k, n) if b_major == "MN" else (n, k)
    # 1) integers: every partial sum exact -> the tile must equal the oracle bit for bit. A wrong
    #    fragment layout, descriptor (LBO/SBO/swizzle), k-step advance or transpose shows here.
    a, b = mk.integer_operand(rng, (64, k), dtype), mk.integer_operand(rng, bshape, dtype)
    d = mk.wgmma_tile(a, b, dtype, a_from, swizzle, b_major, garbage=1.0e3)
    ref, _ = mk.wgmma_oracle(a, b, dtype, b_major)
    assert np.isfinite(d).all(), "some accumulator register was never written"
    bad = np.argwhere(d != ref)
    assert bad.size == 0, (f"{len(bad)} of {d.size} elements differ, first (row, col) "
                           f"{bad[:4].tolist()}: got {d[tuple(bad[0])]}, want {ref[tuple(bad[0])]}")
    # 2) random values with outliers: within the accumulation-format bound
    a, b = mk.random_operand(rng, (64, k), dtype), mk.random_operand(rng, bshape, dtype)
    d = mk.wgmma_tile(a, b, dtype, a_from, swizzle, b_major, garbage=float("nan"))
    ref, scale = mk.wgmma_oracle(a, b, dtype, b_major)
    err = np.abs(d - ref)
    bound = mk.wgmma_error_bound(scale, dtype)
    assert np.isfinite(d).all() and (err <= bound).all(), \
        f"max error {err.max():.3g}, max error/bound {(err / bound).max():.3g}"


# ---------------------------------------------------------------- (b) TMA round trips
# Every start here is non-negative: a TMA *store* at a negative start killed the kernel on the H100
# (CUDA_ERROR_ILLEGAL_INSTRUCTION, 2026-11-25) and is now rejected before launch; a *load* at a
# negative start is tested alone, in a subprocess, below (a trap there cannot take this process's
# context with it).
TMA_CASES = [  # shape, box, start (NumPy order), swizzle, element dtype, store start (None: = start)
    ((128, 192), (64, 64), (64, 64), "none", np.uint16, None),
    ((128, 192), (64, 64), (64, 64), "128B", np.uint16, None),
    ((100, 64), (64, 64), (64, 0), "128B", np.uint16, None),          # past the last row
    ((100, 72), (64, 64), (48, 16), "128B", np.uint16, None),         # past the last row and column
    ((40, 64), (16, 64), (8, 0), "none", np.uint16, (32, 0)),         # store elsewhere, clipped
    ((129, 127 * 4), (32, 64), (120, 480), "none", np.float32, None),  # odd sizes, past both ends
    ((3, 20, 64), (2, 8, 64), (2, 16, 0), "128B", np.uint16, None),   # 3D, past the end twice
    ((5, 33, 48), (4, 16, 48), (0, 8, 0), "none", np.uint16, None),   # 3D interior
    ((3, 20, 32), (2, 8, 32), (1, 4, 0), "64B", np.uint16, None),
    ((3, 20, 16), (2, 8, 16), (1, 4, 0), "32B", np.uint16, None),
    ((1000,), (256,), (900,), "none", np.uint32, None),               # 1D (non-NULL stride array)
    ((1000,), (64,), (960,), "none", np.uint32, None),                # 1D, a 256-byte box
    ((2, 3, 4, 5, 64), (1, 2, 3, 4, 32), (1, 1, 1, 2, 16), "none", np.uint16, None),   # 5D
]


def _check_round_trip(x, box, start, swizzle, store_start=None):
    img, y = mk.tma_round_trip(x, box, start, swizzle, store_start=store_start)
    want_img = mk.tma_box_image(x, box, start, swizzle)
    diff = np.flatnonzero(img != want_img)
    assert diff.size == 0, f"smem image differs at {diff.size} bytes, first offsets {diff[:8].tolist()}"
    # the box exactly, at the store start, clipped at the tensor's edges; the rest keeps the fill
    np.testing.assert_array_equal(y, mk.tma_round_trip_oracle(x, box, start, store_start))


@pytest.mark.parametrize("shape,box,start,swizzle,dt,store_start", TMA_CASES,
                         ids=[f"{len(c[0])}d-{c[3]}-{i}" for i, c in enumerate(TMA_CASES)])
def test_tma_round_trip_bitwise(shape, box, start, swizzle, dt, store_start):
    rng = np.random.default_rng(len(shape) * 100 + box[-1])
    x = rng.integers(1, 1 << 16, shape).astype(dt)
    _check_round_trip(x, box, start, swizzle, store_start)


def test_tma_store_at_negative_start_is_rejected_before_launch():
    x = np.zeros((40, 64), np.uint16)
    with pytest.raises(ValueError, match="non-negative"):
        mk.tma_round_trip(x, (16, 64), (-8, 0))
    with pytest.raises(ValueError, match="16-byte aligned"):
        mk.tma_round_trip(x, (16, 32), (0, 4))


_NEGATIVE_LOAD = """
import numpy as np
from dsv4_numba.hw import microkernels as mk
x = np.random.default_rng(7).integers(1, 1 << 16, (40, 64)).astype(np.uint16)
for swz in ("none", "128B"):
    img, y = mk.tma_round_trip(x, (16, 64), (-8, 0), swz, store_start=(0, 0))
    ok = (np.array_equal(img, mk.tma_box_image(x, (16, 64), (-8, 0), swz))
          and np.array_equal(y, mk.tma_round_trip_oracle(x, (16, 64), (-8, 0), (0, 0))))
    print("NEGATIVE-LOAD", swz, "bitwise" if ok else "WRONG", flush=True)
"""


def test_tma_load_at_negative_start_in_a_subprocess():
    """PTX ISA 5.5.3.3: a load box may cross the tensor boundary in any dimension (zero fill). Run in
    a child process: if the load traps too, the context loss stays there and the message says so."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), root) if p)
    r = subprocess.run([sys.executable, "-c", _NEGATIVE_LOAD], env=env, capture_output=True,
                       text=True, timeout=240, cwd=root)
    print("\n" + r.stdout.strip())
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("NEGATIVE-LOAD")]
    trapped = "ILLEGAL_INSTRUCTION" in r.stderr
    assert r.returncode == 0 and lines == ["NEGATIVE-LOAD none bitwise", "NEGATIVE-LOAD 128B bitwise"], (
        ("a TMA LOAD at a negative start traps too: hw/tma.check_box_start must reject negative load "
         "starts as well. " if trapped else "") + f"rc {r.returncode}, stdout {r.stdout[-800:]!r}, "
        f"stderr {r.stderr[-1500:]!r}")


# ---------------------------------------------------------------- (c) mbarrier ring
@pytest.mark.parametrize("rows,cols,stages", [(1, 64, 1), (129, 64, 2), (1000, 64, 3), (4097, 64, 4),
                                             (127, 256, 4), (333, 36, 2)])
def test_ring_copy_bitwise(rows, cols, stages):
    """Rows of 256 B (32-row boxes), 1 KB (8-row boxes: the widest inner box, 256 elements) and 144 B
    (56-row boxes, last one partial)."""
    x = np.random.default_rng(rows).integers(0, 1 << 32, (rows, cols), dtype=np.uint32)
    np.testing.assert_array_equal(mk.ring_copy(x, stages=stages), x)


@pytest.mark.parametrize("stages", [2, 4])
def test_ring_copy_64mib_bitwise_and_bandwidth(stages):
    gbs, copy_gbs, ok = mk.ring_copy_bandwidth(64 << 20, stages=stages)
    print(f"\nring copy 64 MiB (256 B rows), {stages} stages x 8 KB, 160 threads: {gbs:.0f} GB/s read+write "
          f"({gbs / copy_gbs:.0%} of the {copy_gbs:.0f} GB/s D2D copy)")
    assert ok, "the 64 MiB ring copy is not bitwise equal to its input"


# ---------------------------------------------------------------- (d) tensor-map encode + delivery
def test_tensor_map_encode_and_delivery():
    from numba import cuda

    from dsv4_numba.hw.tma import TensorMapSpec, encode, tensor_map_on_device
    x = cuda.to_device(np.zeros((256, 128), np.float32))
    host = encode(TensorMapSpec.from_array(x, (64, 32), "128B"))
    assert host.shape == (16,) and host.dtype == np.uint64 and host.any()
    dev = tensor_map_on_device(x, (64, 32), "128B")
    np.testing.assert_array_equal(dev.copy_to_host(), host)     # the bytes the kernel reads
    assert dev.__cuda_array_interface__["data"][0] % 64 == 0    # the 64-byte alignment rule
    # a different box encodes differently (the descriptor is not a constant)
    assert not np.array_equal(encode(TensorMapSpec.from_array(x, (32, 32), "128B")), host)
    # errors are raised before the driver is called
    with pytest.raises(ValueError, match="16-byte aligned"):
        tensor_map_on_device(x[:, 1:], (8, 8))
    with pytest.raises(ValueError, match="wider than the 128B"):
        tensor_map_on_device(x, (64, 64), "128B")


def test_self_check():
    res = mk.self_check()
    assert all(v == "ok" for v in res.values()), res
