"""The sm_90a emulator (issue 8, first slice): production-style kernels written against
``dsv4_numba.hw.ops`` run under the CUDA simulator through ``runtime.kernel(...).launch``, with
``ops`` swapped for ``dsv4_numba.emu.ops``. Tiles are small and blocks are one: the simulator is slow.
"""
import numpy as np
import pytest
from numba import cuda
from numba.types import float32, int32, uint8, uint16, uint32, uint64

from dsv4_numba import emu
from dsv4_numba.hw import ops
from dsv4_numba.hw.descriptors import wgmma_smem_desc
from dsv4_numba.hw.layouts import wgmma_acc_coord
from dsv4_numba.runtime import kernel
from emu_helpers import one_mbarrier


@pytest.fixture(autouse=True)
def sim_mode(monkeypatch):
    monkeypatch.setenv("DSV4_MODE", "sim")


def bf16_bits(x):
    """float32 -> bf16 bit patterns (round to nearest even), as uint16."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_value(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def swizzle_model(tile_u16, swizzled):
    """The TMA smem image of a 64 x 64 bf16 box (128-byte rows) at a 1024-aligned address: row r's
    16-byte chunk c lands at chunk c ^ (r % 8) with the 128B swizzle, at chunk c without."""
    rows = tile_u16.view(np.uint8).reshape(64, 8, 16)
    img = np.zeros((64, 8, 16), np.uint8)
    for r in range(64):
        for c in range(8):
            img[r, (c ^ (r % 8)) if swizzled else c] = rows[r, c]
    return img.reshape(-1)


# ---------------------------------------------------------------- (1) TMA load / store round trip
@kernel
def k_tma_roundtrip(tmap_in, tmap_out, img, c0, c1):
    tile = cuda.shared.array(8192, uint8)
    bars = cuda.shared.array(1, uint64)
    t = cuda.threadIdx.x
    dst = ops.shared_address(tile)
    bar = one_mbarrier(bars, True)
    if t == 0:
        ops.fence_proxy_tensormap_acquire_sys(ops.array_address(tmap_in))
        ops.mbarrier_arrive_expect_tx(bar, uint32(8192))
        ops.tma_load_2d(dst, ops.array_address(tmap_in), int32(c0), int32(c1), bar)
    while ops.mbarrier_try_wait_parity(bar, uint32(0)) == 0:
        pass
    for i in range(t, 8192, cuda.blockDim.x):
        img[i] = tile[i]
    cuda.syncthreads()
    if t == 0:
        ops.fence_proxy_async_shared_cta()
        ops.tma_store_2d(ops.array_address(tmap_out), dst, int32(c0), int32(c1))
        ops.tma_store_commit_group()
        ops.tma_store_wait_group_0()
        ops.mbarrier_inval(bar)


@pytest.mark.parametrize("swizzle", ["none", "128B"])
def test_tma_2d_load_store_round_trip(rng, swizzle):
    x = rng.integers(0, 1 << 16, (128, 192), dtype=np.uint16)
    y = np.zeros_like(x)
    tin = emu.tensor_map(x, (64, 64), swizzle, dtype="bfloat16")
    tout = emu.tensor_map(y, (64, 64), swizzle, dtype="bfloat16")
    img = np.zeros(8192, np.uint8)
    k_tma_roundtrip.launch(1, 32, tin, tout, img, 64, 64)       # box at row 64, column 64
    tile = np.ascontiguousarray(x[64:128, 64:128])
    np.testing.assert_array_equal(img, swizzle_model(tile, swizzle == "128B"))
    expect = np.zeros_like(x)
    expect[64:128, 64:128] = tile
    np.testing.assert_array_equal(y, expect)                    # bitwise round trip, nothing else written


def test_tma_out_of_bounds_box_is_zero_filled_and_not_stored(rng):
    x = rng.integers(1, 1 << 16, (100, 64), dtype=np.uint16)
    y = np.full_like(x, 7)
    img = np.zeros(8192, np.uint8)
    k_tma_roundtrip.launch(1, 32, emu.tensor_map(x, (64, 64), "128B", dtype="bfloat16"),
                           emu.tensor_map(y, (64, 64), "128B", dtype="bfloat16"), img, 0, 64)
    tile = np.zeros((64, 64), np.uint16)
    tile[:36] = x[64:100]                                       # rows 100..127 are outside: zeros
    np.testing.assert_array_equal(img, swizzle_model(tile, True))
    expect = np.full_like(x, 7)
    expect[64:] = x[64:]
    np.testing.assert_array_equal(y, expect)


# ---------------------------------------------------------------- (2) deadlock diagnostic
@kernel
def k_expect_too_much(tmap, extra, spin):
    tile = cuda.shared.array(8192, uint8)
    bars = cuda.shared.array(1, uint64)
    t = cuda.threadIdx.x
    bar = one_mbarrier(bars, False)
    if t == 0:
        ops.mbarrier_arrive_expect_tx(bar, uint32(8192 + extra))
        ops.tma_load_2d(ops.shared_address(tile), ops.array_address(tmap), int32(0), int32(0), bar)
    if spin:
        while ops.mbarrier_try_wait_parity(bar, uint32(0)) == 0:
            pass
    else:
        ops.mbarrier_wait_parity(bar, uint32(0))


@pytest.mark.parametrize("spin", [0, 1], ids=["wait_parity", "try_wait_loop"])
def test_expect_tx_more_than_delivered_is_a_deadlock_with_barrier_state(spin):
    x = np.zeros((64, 64), np.uint16)
    with pytest.raises(emu.EmulatorDeadlock) as ei:
        k_expect_too_much.launch(1, 32, emu.tensor_map(x, (64, 64), dtype="bfloat16"), 16, spin)
    msg = str(ei.value)
    assert "mbarrier @smem 0x2400" in msg and "phase 0" in msg       # after the 8 KB tile at 0x400
    assert "pending arrivals 0 of 1" in msg and "tx-count 16 bytes" in msg
    assert "arrive.expect_tx +8208" in msg and "tma_load_2d complete_tx -8192" in msg
    assert "threads 0-31 wait for mbarrier" in msg


def test_exact_expect_tx_does_not_deadlock():
    x = np.zeros((64, 64), np.uint16)
    k_expect_too_much.launch(1, 32, emu.tensor_map(x, (64, 64), dtype="bfloat16"), 0, 1)


# ---------------------------------------------------------------- (3)/(4) wgmma
# A (64 x 16) and B (8 x 16) bf16, K-major, no swizzle: core matrix (row group g, K half h) of 8 rows
# x 16 bytes at (2g + h) * 128 bytes -> LBO (next K core matrix) 128, SBO (next 8-row group) 256.
DESC_NOSWZ = wgmma_smem_desc(0, 128, 256, "none")
DESC_BASE_OFFSET = wgmma_smem_desc(0, 16, 1024, "128B", base_offset=1)


def core_matrix_image(m):
    """K-major no-swizzle smem image of a (rows x 16) bf16 matrix (uint16), as DESC_NOSWZ describes."""
    rows = m.shape[0]
    return np.ascontiguousarray(m.reshape(rows // 8, 8, 2, 8).transpose(0, 2, 1, 3)).reshape(-1)


@kernel
def k_wgmma_n8(a_img, b_img, out, desc_a, desc_b, garbage):
    sa = cuda.shared.array(1024, uint16)
    sb = cuda.shared.array(128, uint16)
    t = cuda.threadIdx.x
    for i in range(t, 1024, cuda.blockDim.x):
        sa[i] = a_img[i]
    if t < 128:
        sb[t] = b_img[t]
    ops.fence_proxy_async_shared_cta()
    cuda.syncthreads()
    adesc = uint64(desc_a) | uint64((ops.shared_address(sa) >> 4) & 0x3FFF)
    bdesc = uint64(desc_b) | uint64((ops.shared_address(sb) >> 4) & 0x3FFF)
    g = float32(garbage)
    ops.wgmma_fence()
    d0, d1, d2, d3 = ops.wgmma_m64n8k16_f32_bf16_ss(g, g, g, g, adesc, bdesc, uint32(0))
    ops.wgmma_commit_group()
    ops.wgmma_wait_group_0()
    out[0, t, 0], out[0, t, 1], out[0, t, 2], out[0, t, 3] = d0, d1, d2, d3
    ops.wgmma_fence()
    d0, d1, d2, d3 = ops.wgmma_m64n8k16_f32_bf16_ss(d0, d1, d2, d3, adesc, bdesc, uint32(1))
    ops.wgmma_commit_group()
    ops.wgmma_wait_group_0()
    out[1, t, 0], out[1, t, 1], out[1, t, 2], out[1, t, 3] = d0, d1, d2, d3


def run_wgmma_n8(rng, desc_a=DESC_NOSWZ, desc_b=DESC_NOSWZ):
    a = bf16_bits(rng.standard_normal((64, 16)))
    b = bf16_bits(rng.standard_normal((8, 16)))
    out = np.full((2, 128, 4), np.nan, np.float32)
    k_wgmma_n8.launch(1, 128, core_matrix_image(a), core_matrix_image(b), out, desc_a, desc_b, 1.0e3)
    ref = bf16_value(a).astype(np.float64) @ bf16_value(b).astype(np.float64).T
    return out, ref


def test_wgmma_m64n8k16_bf16_fragments_and_accumulate(rng):
    out, ref = run_wgmma_n8(rng)
    for t in range(128):
        for i in range(4):
            r, c = wgmma_acc_coord(t, i, 8)
            # (3) every thread's register i holds D[row][col] of the documented fragment layout
            assert out[0, t, i] == pytest.approx(ref[r, c], rel=1e-6, abs=1e-6), (t, i)
            # (4) accumulate=0 overwrote the 1000.0 garbage; accumulate=1 added to the first result
            assert out[1, t, i] == pytest.approx(2 * ref[r, c], rel=1e-6, abs=1e-6), (t, i)


def test_wgmma_rejects_unemulated_descriptor_field(rng):
    with pytest.raises(emu.NotEmulated, match="base_offset=1"):
        run_wgmma_n8(rng, desc_b=DESC_BASE_OFFSET)


@kernel
def k_wgmma_n64(a_img, b_img, out, desc):
    sa = cuda.shared.array(1024, uint16)
    sb = cuda.shared.array(1024, uint16)
    t = cuda.threadIdx.x
    for i in range(t, 1024, cuda.blockDim.x):
        sa[i] = a_img[i]
        sb[i] = b_img[i]
    ops.fence_proxy_async_shared_cta()
    cuda.syncthreads()
    adesc = uint64(desc) | uint64((ops.shared_address(sa) >> 4) & 0x3FFF)
    bdesc = uint64(desc) | uint64((ops.shared_address(sb) >> 4) & 0x3FFF)
    acc = (float32(0),) * 32
    ops.wgmma_fence()
    acc = ops.wgmma_m64n64k16_f32_bf16_ss(*acc, adesc, bdesc, uint32(0))
    ops.wgmma_commit_group()
    ops.wgmma_wait_group_0()
    for i in range(32):
        out[t, i] = acc[i]


def test_wgmma_m64n64k16_bf16_every_register(rng):
    a = bf16_bits(rng.standard_normal((64, 16)))
    b = bf16_bits(rng.standard_normal((64, 16)))
    out = np.full((128, 32), np.nan, np.float32)
    k_wgmma_n64.launch(1, 128, core_matrix_image(a), core_matrix_image(b), out, DESC_NOSWZ)
    ref = bf16_value(a).astype(np.float64) @ bf16_value(b).astype(np.float64).T
    want = np.array([[ref[wgmma_acc_coord(t, i, 64)] for i in range(32)] for t in range(128)])
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- TMA 128B tile -> wgmma 128B, K = 64
DESC_SW128 = wgmma_smem_desc(0, 16, 1024, "128B")


@kernel
def k_tma_wgmma_sw128(tmap_a, tmap_b, out):
    sa = cuda.shared.array(8192, uint8)
    sb = cuda.shared.array(1024, uint8)
    bars = cuda.shared.array(1, uint64)
    t = cuda.threadIdx.x
    bar = one_mbarrier(bars, False)
    if t == 0:
        ops.mbarrier_arrive_expect_tx(bar, uint32(8192 + 1024))
        ops.tma_load_2d(ops.shared_address(sa), ops.array_address(tmap_a), int32(0), int32(0), bar)
        ops.tma_load_2d(ops.shared_address(sb), ops.array_address(tmap_b), int32(0), int32(0), bar)
    ops.mbarrier_wait_parity(bar, uint32(0))
    a0 = uint64(DESC_SW128) | uint64((ops.shared_address(sa) >> 4) & 0x3FFF)
    b0 = uint64(DESC_SW128) | uint64((ops.shared_address(sb) >> 4) & 0x3FFF)
    acc = (float32(0),) * 4
    ops.wgmma_fence()
    for k in range(4):                                   # K step of 16 bf16 = 32 B = +2 encoded
        acc = ops.wgmma_m64n8k16_f32_bf16_ss(*acc, a0 + uint64(2 * k), b0 + uint64(2 * k),
                                             uint32(1 if k else 0))
    ops.wgmma_commit_group()
    ops.wgmma_wait_group_0()
    for i in range(4):
        out[t, i] = acc[i]


def test_tma_128b_tiles_feed_wgmma_128b_descriptors(rng):
    a = bf16_bits(rng.standard_normal((64, 64)))
    b = bf16_bits(rng.standard_normal((8, 64)))
    out = np.full((128, 4), np.nan, np.float32)
    k_tma_wgmma_sw128.launch(1, 128, emu.tensor_map(a, (64, 64), "128B", dtype="bfloat16"),
                             emu.tensor_map(b, (8, 64), "128B", dtype="bfloat16"), out)
    ref = bf16_value(a).astype(np.float64) @ bf16_value(b).astype(np.float64).T
    got = np.zeros((64, 8))
    for t in range(128):
        for i in range(4):
            got[wgmma_acc_coord(t, i, 8)] = out[t, i]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_unemulated_binding_is_named():
    from dsv4_numba.emu import ops as eops
    missing = emu.coverage()["missing"]
    if not missing:
        pytest.skip("every hw.ops binding is emulated")
    with pytest.raises(emu.NotEmulated, match=missing[0]):
        getattr(eops, missing[0])
