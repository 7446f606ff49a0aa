"""The H100 verification microkernels (dsv4_numba.hw.microkernels) under the simulator + sm_90a emulator,
against the same oracles as tests/gpu/test_ptx_gpu.py — the issue-8 "emulator agrees with the H100"
check, in the emulator's direction. Small sizes: the simulator runs one Python thread per CUDA thread.

A variant the emulator does not cover (it answers NotEmulated) is skipped with the reason, not failed.
"""
import numpy as np
import pytest

from dsv4_numba import emu
from dsv4_numba.hw import microkernels as mk


@pytest.fixture(autouse=True)
def sim_mode(monkeypatch):
    monkeypatch.setenv("DSV4_MODE", "sim")


# ---------------------------------------------------------------- TMA load -> smem -> TMA store
TMA_CASES = [  # shape, box, load start (NumPy order), swizzle, store start (None: the load start)
    ((128, 192), (64, 64), (64, 64), "none", None),          # interior box
    ((100, 64), (64, 64), (64, 0), "128B", None),            # past the last row: zero fill, clipped
    ((40, 64), (16, 64), (-8, 0), "128B", (0, 0)),           # load before row 0 (stores may not)
    ((40, 64), (16, 64), (8, 0), "none", (32, 0)),           # store elsewhere, clipped at the end
    ((3, 20, 64), (2, 8, 64), (2, 16, 0), "128B", None),     # 3D, past the end in two dimensions
    ((3, 20, 32), (2, 8, 32), (1, 4, 0), "64B", None),
]


@pytest.mark.parametrize("shape,box,start,swizzle,store_start", TMA_CASES)
def test_tma_round_trip_bitwise(rng, shape, box, start, swizzle, store_start):
    x = rng.integers(1, 1 << 16, shape, dtype=np.uint16)
    img, y = mk.tma_round_trip(x, box, start, swizzle, dtype="bfloat16", store_start=store_start)
    np.testing.assert_array_equal(img, mk.tma_box_image(x, box, start, swizzle))
    np.testing.assert_array_equal(y, mk.tma_round_trip_oracle(x, box, start, store_start))
    if store_start is None:      # the oracle against a hand-written one: the box only, clipped
        want = np.full_like(x, 0xA5A5)
        sl = tuple(slice(max(s, 0), s + b) for s, b in zip(start, box))
        want[sl] = x[sl]
        np.testing.assert_array_equal(y, want)


def test_tma_round_trip_rejects_bad_box_before_launch():
    with pytest.raises(ValueError, match="wider than the 128B"):
        mk.tma_round_trip(np.zeros((8, 128), np.uint16), (8, 128), (0, 0), "128B")
    with pytest.raises(ValueError, match="exceeds this kernel"):
        mk.tma_round_trip(np.zeros((256, 256), np.uint16), (256, 128), (0, 0))
    with pytest.raises(ValueError, match="non-negative"):      # traps on the H100
        mk.tma_round_trip(np.zeros((40, 64), np.uint16), (16, 64), (-8, 0))
    with pytest.raises(ValueError, match="16-byte aligned"):
        mk.tma_round_trip(np.zeros((40, 64), np.uint16), (16, 32), (0, 4))


# ---------------------------------------------------------------- mbarrier ring
@pytest.mark.parametrize("rows,cols,stages,grid", [(77, 64, 2, 2), (8, 64, 1, 1), (1, 64, 3, 1),
                                                  (61, 36, 2, 1)])
def test_ring_copy_bitwise(rng, rows, cols, stages, grid):
    # 2 KB stages: 256 B rows -> 8-row boxes; 144 B rows -> 14-row boxes, the last one partial
    x = rng.integers(0, 1 << 32, (rows, cols), dtype=np.uint32)
    y = mk.ring_copy(x, stages=stages, stage_bytes=2048, grid=grid)
    np.testing.assert_array_equal(y, x)


def test_ring_copy_empty_and_bad_shapes():
    assert mk.ring_copy(np.zeros((0, 64), np.uint32)).shape == (0, 64)
    with pytest.raises(ValueError, match="multiple of 16"):
        mk.ring_copy(np.zeros((4, 3), np.uint32))
    with pytest.raises(ValueError, match="stages"):
        mk.ring_copy(np.zeros((4, 64), np.uint32), stages=9)


# ---------------------------------------------------------------- wgmma tile
def _check_tile(rng, n, dtype, a_from, swizzle, b_major):
    k = mk.K_OF[dtype]
    bshape = (k, n) if b_major == "MN" else (n, k)
    for gen in (mk.integer_operand, mk.random_operand):
        a, b = gen(rng, (64, k), dtype), gen(rng, bshape, dtype)
        try:
            d = mk.wgmma_tile(a, b, dtype, a_from, swizzle, b_major)
        except emu.NotEmulated as e:
            pytest.skip(f"not emulated yet: {e}")
        ref, scale = mk.wgmma_oracle(a, b, dtype, b_major)
        assert np.isfinite(d).all()                          # every register written
        if gen is mk.integer_operand:
            np.testing.assert_array_equal(d, ref)            # exact: the fragment layout is right
        else:
            err = np.abs(d - ref)
            assert (err <= mk.wgmma_error_bound(scale, dtype)).all(), err.max()


@pytest.mark.parametrize("dtype,a_from,swizzle,b_major", [
    ("bf16", "smem", "none", "K"), ("bf16", "smem", "128B", "K"), ("bf16", "regs", "none", "K"),
    ("e4m3", "smem", "128B", "K"), ("e4m3", "regs", "none", "K"), ("bf16", "smem", "128B", "MN"),
    ("bf16", "regs", "128B", "MN")])
def test_wgmma_tile(rng, dtype, a_from, swizzle, b_major):
    _check_tile(rng, 64, dtype, a_from, swizzle, b_major)


def test_wgmma_tile_odd_n(rng):
    _check_tile(rng, 24, "bf16", "smem", "128B", "K")


def test_wgmma_tile_rejects_bad_inputs_before_launch():
    a = np.zeros((64, 64), np.uint16)
    with pytest.raises(ValueError, match="shape"):
        mk.wgmma_tile(a, np.zeros((64, 32), np.uint16))
    with pytest.raises(ValueError, match="8..256"):
        mk.wgmma_tile(a, np.zeros((12, 64), np.uint16))
    with pytest.raises(ValueError, match="no transpose"):
        mk.wgmma_tile(np.zeros((64, 128), np.uint8), np.zeros((128, 64), np.uint8), "e4m3",
                      b_major="MN")


def test_self_check_passes_under_the_emulator():
    res = mk.self_check()
    assert len(res) == 5 and all(v == "ok" for v in res.values()), res


# ---------------------------------------------------------------- the register-A fragment map
@pytest.mark.parametrize("bits", [16, 8])
def test_wgmma_a_coord_is_a_bijection_and_matches_the_emulator(bits):
    from dsv4_numba.emu.tmem import wgmma_a_map
    from dsv4_numba.hw.layouts import wgmma_a_coord, wgmma_a_owner
    kdim, epr = 256 // bits, 32 // bits
    rows, ks = wgmma_a_map(kdim, bits)
    seen = set()
    for t in range(128):
        for r in range(4):
            for e in range(epr):
                rc = wgmma_a_coord(t, r, e, bits)
                assert rc == (rows[t, r, e], ks[t, r, e])
                assert wgmma_a_owner(*rc, bits) == (t, r, e)
                seen.add(rc)
    assert seen == {(m, k) for m in range(64) for k in range(kdim)}
    with pytest.raises(ValueError):
        wgmma_a_coord(0, 0, 0, 32)


@pytest.mark.parametrize("dtype", ["bf16", "e4m3"])
def test_microkernel_rs_fragment_loads_are_wgmma_a_coord(dtype):
    """The RS tile kernel H100-verified on 2026-11-25 loads register j of k-step s from the row-major
    A words; those words hold exactly the elements layouts.wgmma_a_coord names."""
    import re

    from dsv4_numba.hw.layouts import wgmma_a_coord
    src = mk.wgmma_kernel(64, dtype, "regs", "none", "K").__doc__
    loads = re.findall(r"f(\d)_(\d) = uint32\(a_words\[\(row \+ (\d+)\) \* 32 \+ (\d+) \+ q\]\)", src)
    assert len(loads) == 4 * mk.N_STEPS, src
    bits = 16 if dtype == "bf16" else 8
    eb, kdim, epr = bits // 8, mk.K_STEP[dtype], 32 // bits
    for s, j, drow, dword in ((int(a), int(b), int(c), int(d)) for a, b, c, d in loads):
        for t in range(128):
            word = (16 * (t // 32) + (t % 32) // 4 + drow) * 32 + dword + t % 4
            row, k0 = divmod(word * 4, mk.ROW_BYTES)
            for e in range(epr):
                assert (row, k0 // eb + e - s * kdim) == wgmma_a_coord(t, j, e, bits), (s, j, t, e)
