"""The tcgen05 / Tensor Memory emulator (issue 8): alloc/dealloc rules, tcgen05.mma kind::f16 and
f8f6f4 (SS and TS) with descriptor decoding, the data-path layouts D (M=128) and F (M=64) checked
against the tables of ptx-facts.md §4.1, tcgen05.ld/st shapes and the lane-quadrant rule, commit /
mbarrier completion, and the diagnostics: never-written TMEM, overlapping regions, un-waited MMA
results, generic-proxy smem without fence.proxy.async. Known bugs reproduce (one test each).

No Blackwell GPU is lent: these kernels run only under the simulator (one CTA of 128 threads).
"""
import numpy as np
import pytest
from numba import cuda
from numba.types import int32, uint8, uint16, uint32, uint64

from dsv4_numba import emu
from dsv4_numba.emu import tmem as T
from dsv4_numba.hw import ops
from dsv4_numba.hw.descriptors import umma_idesc, umma_smem_desc
from dsv4_numba.hw.layouts import tmem_d_coord
from dsv4_numba.runtime import kernel


@pytest.fixture(autouse=True)
def sim_mode(monkeypatch):
    monkeypatch.setenv("DSV4_MODE", "sim")
    emu.tmem_regions_clear()
    yield
    emu.tmem_regions_clear()


def bf16_bits(x):
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_value(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def e4m3_bits(x):
    import ml_dtypes
    return np.asarray(x, np.float32).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)


def e4m3_value(bits):
    import ml_dtypes
    return bits.view(ml_dtypes.float8_e4m3fn).astype(np.float64)


SW128 = umma_smem_desc(0, 16, 1024, "128B")     # K-major, 128-byte rows, 8-row atoms 1024 B apart


# ------------------------------------------------------------------ the GEMM tile kernel
# Napkin math: one CTA, M x N x 128 bytes of K: a correctness kernel (the emulator runs it on a CPU).
@kernel
def k_umma(tmap_a, tmap_b, out, idesc, m_rows, n, ncols, d_lane, d_col, first_acc, wait, dealloc,
           plan, kind8):
    sa = cuda.shared.array(16384, uint8)
    sb = cuda.shared.array(32768, uint8)
    bars = cuda.shared.array(2, uint64)
    slot = cuda.shared.array(1, uint32)
    t = cuda.threadIdx.x
    warp, lane = t // 32, t % 32
    bar_tma = ops.shared_address(bars)
    bar_mma = bar_tma + uint32(8)
    if t == 0:
        ops.mbarrier_init(bar_tma, uint32(1))
        ops.mbarrier_init(bar_mma, uint32(1))
        ops.fence_mbarrier_init()
    if warp == 0:
        ops.tcgen05_alloc(ops.shared_address(slot), uint32(ncols))
    cuda.syncthreads()
    taddr = slot[0]
    d = taddr + uint32(d_lane << 16) + uint32(d_col)
    if t == 0:
        ops.mbarrier_arrive_expect_tx(bar_tma, uint32((m_rows + n) * 128))
        ops.tma_load_2d(ops.shared_address(sa), ops.array_address(tmap_a), int32(0), int32(0), bar_tma)
        ops.tma_load_2d(ops.shared_address(sb), ops.array_address(tmap_b), int32(0), int32(0), bar_tma)
        ops.mbarrier_wait_parity(bar_tma, uint32(0))
        adesc = uint64(SW128) | uint64(ops.shared_address(sa) >> 4)
        bdesc = uint64(SW128) | uint64(ops.shared_address(sb) >> 4)
        for s in range(4):                      # 4 K steps of 32 bytes: +2 in the encoded start
            if kind8:
                ops.tcgen05_mma_f8f6f4_ss(d, adesc + uint64(2 * s), bdesc + uint64(2 * s), uint32(idesc),
                                          uint32(first_acc if s == 0 else 1))
            else:
                ops.tcgen05_mma_f16_ss(d, adesc + uint64(2 * s), bdesc + uint64(2 * s), uint32(idesc),
                                       uint32(first_acc if s == 0 else 1))
        ops.tcgen05_commit(bar_mma)
    cuda.syncthreads()
    if wait:
        ops.mbarrier_wait_parity(bar_mma, uint32(0))
    ops.tcgen05_fence_after_thread_sync()
    q = warp % 4
    if plan == 0:                               # right for M=128: 32x32b, thread = row, reg j = col j
        for c0 in range(0, n, 32):
            r = ops.tcgen05_ld_32x32b_x32(taddr + uint32((32 * q) << 16) + uint32(d_col + c0))
            for j in range(32):
                out[32 * q + lane, c0 + j] = r[j]
    elif plan == 1:                             # the packed-f16 mistake: second load at N/4 not N/2
        for c0 in (0, n // 4):
            r = ops.tcgen05_ld_32x32b_x32(taddr + uint32((32 * q) << 16) + uint32(d_col + c0))
            for j in range(32):
                out[32 * q + lane, (0 if c0 == 0 else 32) + j] = r[j]
    else:                                       # 16x256b at lane 32q + d_lane: out[TMEM lane, column]
        base = taddr + uint32((32 * q + d_lane) << 16) + uint32(d_col)
        for c0 in range(0, n, 8):
            r0, r1, r2, r3 = ops.tcgen05_ld_16x256b_x1(base + uint32(c0))
            # ptx-facts §1.3: r0,r1 = lane t/4, columns 2(t%4)+{0,1}; r2,r3 = lane t/4+8, same columns
            ln = 32 * q + d_lane + lane // 4
            cl = c0 + 2 * (lane % 4)
            out[ln, cl], out[ln, cl + 1], out[ln + 8, cl], out[ln + 8, cl + 1] = r0, r1, r2, r3
    ops.tcgen05_wait_ld()
    cuda.syncthreads()
    if warp == 0 and dealloc:
        ops.tcgen05_dealloc(taddr, uint32(ncols))


def stepwise(fa, fb, steps=4):
    """The emulator's compute model (one float32 rounding per MMA instruction, K split in ``steps``):
    D_0 = rn(A_0 B_0^T), D_s = rn(D_{s-1} + A_s B_s^T), each product summed exactly in float64."""
    k = fa.shape[1] // steps
    d = np.zeros((fa.shape[0], fb.shape[0]), np.float32)
    for s in range(steps):
        d = (d.astype(np.float64) + fa[:, s * k:(s + 1) * k] @ fb[:, s * k:(s + 1) * k].T).astype(np.float32)
    return d


def gemm_inputs(rng, M, N, dtype="bf16"):
    if dtype == "bf16":
        a, b = bf16_bits(rng.standard_normal((M, 64))), bf16_bits(rng.standard_normal((N, 64)))
        ref = stepwise(bf16_value(a), bf16_value(b))
        tm = dict(dtype="bfloat16")
        box = 64
    else:
        a, b = e4m3_bits(rng.standard_normal((M, 128))), e4m3_bits(rng.standard_normal((N, 128)))
        ref = stepwise(e4m3_value(a), e4m3_value(b))
        tm = {}
        box = 128
    ta = emu.tensor_map(a, (M, box), "128B", **tm)
    tb = emu.tensor_map(b, (N, box), "128B", **tm)
    return ta, tb, ref


def run_umma(rng, M=128, N=64, dtype="bf16", ncols=None, d_lane=0, d_col=0, first_acc=0, wait=1, dealloc=1,
             plan=0):
    ta, tb, ref = gemm_inputs(rng, M, N, dtype)
    kind, ty = ("f16", "bf16") if dtype == "bf16" else ("f8f6f4", "e4m3")
    idesc = umma_idesc(kind, ty, ty, "f32", M, N)
    out = np.full((128, 256), 0x7FC00000, np.uint32)                 # NaN: unwritten shows
    k_umma.launch(1, 128, ta, tb, out, idesc, M, N, ncols or max(32, N), d_lane, d_col, first_acc, wait,
                  dealloc, plan, int(dtype != "bf16"))
    return out.view(np.float32), ref


@pytest.mark.parametrize("dtype,N", [("bf16", 64), ("bf16", 256), ("e4m3", 64)])
def test_m128_gemm_tile_layout_d(rng, dtype, N):
    got, ref = run_umma(rng, 128, N, dtype)
    np.testing.assert_array_equal(got[:, :N], ref)      # bitwise: the order is fixed
    # Layout D (ptx-facts §4.1): D[m][n] -> lane m, column base + n; read from the TMEM image itself
    img = emu.last_cta().tmem.data
    assert not emu.last_cta().tmem.allocs                             # dealloc'd
    for m in (0, 1, 31, 32, 77, 127):
        for n in (0, 5, N - 1):
            lane, col = tmem_d_coord(m, n, 128)
            assert (lane, col) == (m, n)
            assert img[lane, col].view(np.float32) == np.float32(ref[m, n])


@pytest.mark.parametrize("align", [0, 16])
def test_m64_layout_f_half_datapath(rng, align):
    got, ref = run_umma(rng, 64, 64, d_lane=align, plan=2)
    # Layout F (ptx-facts §4.1): rows 0-15 in lanes 0-15, rows 16-31 in lanes 32-47, ... (+16 if aligned
    # at 16); the 16x256b readback above wrote out[TMEM lane, column]
    table = {m: (m % 16) + 32 * (m // 16) + align for m in range(64)}
    for m, lane in table.items():
        assert tmem_d_coord(m, 0, 64, align)[0] == lane
        np.testing.assert_array_equal(got[lane, :64], ref[m].astype(np.float32))
    untouched = sorted(set(range(128)) - set(table.values()))
    assert np.isnan(got[untouched, :64]).all()        # the other half of each quadrant is not D
    np.testing.assert_array_equal(T.datapath_lanes(64, align), [table[m] for m in range(64)])


def test_datapath_lanes_match_the_layouts_module():
    for M, align in ((128, 0), (64, 0), (64, 16)):
        lanes = T.datapath_lanes(M, align)
        assert [tmem_d_coord(m, 3, M, align) for m in range(M)] == [(int(x), 3) for x in lanes]
    with pytest.raises(ValueError, match="lane field must be 0"):
        T.datapath_lanes(128, 16)


# ------------------------------------------------------------------ tcgen05.ld shapes
def test_ld_maps_are_bijections_onto_their_footprint():
    for shape, (nl, per) in T.LD_SHAPES.items():
        for num in (1, 2, 8):
            lane, col = T.ld_map(shape, num)
            cells = set(zip(lane.ravel().tolist(), col.ravel().tolist()))
            assert len(cells) == lane.size == 32 * per * num
            assert {c for _, c in cells} == set(range(lane.size // nl))
            assert {ln for ln, _ in cells} == set(range(nl))
    lane, col = T.ld_map("16x256b", 1)             # the mma.sync m16n8 C-fragment pattern
    for t in range(32):
        assert [(lane[t, j], col[t, j]) for j in range(4)] == [
            (t // 4, 2 * (t % 4)), (t // 4, 2 * (t % 4) + 1), (t // 4 + 8, 2 * (t % 4)), (t // 4 + 8, 2 * (t % 4) + 1)]


# ------------------------------------------------------------------ known bugs
def test_known_bug_m128_n64_tile_read_with_the_wrong_column_plan(rng):
    got, ref = run_umma(rng, 128, 64, plan=1)
    want = ref.astype(np.float32)
    np.testing.assert_array_equal(got[:, :32], want[:, :32])          # first load is right
    assert not np.array_equal(got[:, 32:64], want[:, 32:64])          # columns 32.. are wrong ...
    np.testing.assert_array_equal(got[:, 32:64], want[:, 16:48])      # ... they are columns 16..47


def test_known_bug_16_lane_shape_with_32x32b_semantics_scrambles(rng):
    got, ref = run_umma(rng, 128, 64, plan=2)
    # a 16x256b load only reaches 16 of the warp's 32 lanes: half the rows of D never arrive
    assert np.isnan(got[16:32, :64]).all() and not np.isnan(got[0:16, :64]).any()


def test_known_bug_first_mma_accumulates_into_garbage(rng):
    with pytest.raises(emu.EmulatorError, match="never written: the MMA adds to garbage.*accumulate=0"):
        run_umma(rng, 128, 64, first_acc=1)


def test_allocation_smaller_than_the_accumulator_is_reported(rng):
    with pytest.raises(emu.EmulatorError, match="columns 0..63, not inside one live allocation"):
        run_umma(rng, 128, 64, ncols=32)


def test_reading_tmem_before_the_commit_was_waited_is_reported(rng):
    with pytest.raises(emu.EmulatorError, match="committed to the mbarrier .* no thread has waited"):
        run_umma(rng, 128, 64, wait=0)


def test_missing_dealloc_is_reported_at_kernel_end(rng):
    with pytest.raises(emu.EmulatorError, match="Tensor Memory still allocated: columns 0..63"):
        run_umma(rng, 128, 64, dealloc=0)


# ------------------------------------------------------------------ alloc rules, quadrants
@kernel
def k_alloc(ncols, bad_lane, read_col):
    slot = cuda.shared.array(1, uint32)
    t = cuda.threadIdx.x
    if t // 32 == 0:
        ops.tcgen05_alloc(ops.shared_address(slot), uint32(ncols))
    cuda.syncthreads()
    taddr = slot[0]
    ops.tcgen05_st_32x32b_x1(taddr + uint32((32 * (t // 32) + bad_lane) << 16), uint32(t))
    ops.tcgen05_wait_st()
    v = ops.tcgen05_ld_32x32b_x1(taddr + uint32((32 * (t // 32)) << 16) + uint32(read_col))
    assert v == t
    cuda.syncthreads()
    if t // 32 == 0:
        ops.tcgen05_dealloc(taddr, uint32(ncols))


@pytest.mark.parametrize("ncols", [16, 48, 1024])
def test_alloc_column_count_rules(ncols):
    with pytest.raises(emu.EmulatorError, match="power of 2 in \\[32, 512\\]"):
        k_alloc.launch(1, 64, ncols, 0, 0)


def test_lane_quadrant_rule():
    k_alloc.launch(1, 64, 32, 0, 0)
    with pytest.raises(emu.EmulatorError, match="may reach lanes (0..31|32..63) only"):
        k_alloc.launch(1, 64, 32, 32, 0)     # warp 1 aims at lanes 64..95


def test_reading_a_column_never_written_is_reported():
    with pytest.raises(emu.EmulatorError, match="tcgen05_ld_32x32b_x1 by thread .* reads TMEM lane .* column 1 "
                                                ".*never written since alloc"):
        k_alloc.launch(1, 64, 32, 0, 1)


# ------------------------------------------------------------------ P aliasing O, regions, rescale
@kernel
def k_alias(tmap_a, tmap_b, idesc, p_col, rescale):
    sa = cuda.shared.array(16384, uint8)
    sb = cuda.shared.array(8192, uint8)
    bars = cuda.shared.array(2, uint64)
    slot = cuda.shared.array(1, uint32)
    t = cuda.threadIdx.x
    warp, q = t // 32, (t // 32) % 4
    bar_tma = ops.shared_address(bars)
    bar_mma = bar_tma + uint32(8)
    if t == 0:
        ops.mbarrier_init(bar_tma, uint32(1))
        ops.mbarrier_init(bar_mma, uint32(1))
    if warp == 0:
        ops.tcgen05_alloc(ops.shared_address(slot), uint32(128))
    cuda.syncthreads()
    taddr = slot[0]
    adesc = uint64(SW128) | uint64(ops.shared_address(sa) >> 4)
    bdesc = uint64(SW128) | uint64(ops.shared_address(sb) >> 4)
    if t == 0:
        ops.mbarrier_arrive_expect_tx(bar_tma, uint32(16384 + 8192))
        ops.tma_load_2d(ops.shared_address(sa), ops.array_address(tmap_a), int32(0), int32(0), bar_tma)
        ops.tma_load_2d(ops.shared_address(sb), ops.array_address(tmap_b), int32(0), int32(0), bar_tma)
        ops.mbarrier_wait_parity(bar_tma, uint32(0))
        ops.tcgen05_mma_f16_ss(taddr, adesc, bdesc, uint32(idesc), uint32(0))       # O = first PV
        ops.tcgen05_commit(bar_mma)
    ops.mbarrier_wait_parity(bar_mma, uint32(0))
    ops.tcgen05_fence_after_thread_sync()
    row = taddr + uint32((32 * q) << 16)
    if rescale:                                  # the correction step: O *= 1 through registers
        r = ops.tcgen05_ld_32x32b_x16(row + uint32(p_col))
        ops.tcgen05_wait_ld()
        ops.tcgen05_st_32x32b_x16(row + uint32(p_col), *r)
    else:                                        # softmax writes P (16 columns of packed bf16)
        ops.tcgen05_st_32x32b_x16(row + uint32(p_col), *((uint32(0x3F803F80),) * 16))
    ops.tcgen05_wait_st()
    ops.tcgen05_fence_before_thread_sync()
    cuda.syncthreads()
    if t == 0:
        ops.tcgen05_fence_after_thread_sync()
        ops.tcgen05_mma_f16_ss(taddr, adesc + uint64(2), bdesc + uint64(2), uint32(idesc), uint32(1))  # O += PV
        ops.tcgen05_commit(bar_mma)
    ops.mbarrier_wait_parity(bar_mma, uint32(1))
    cuda.syncthreads()
    if warp == 0:
        ops.tcgen05_dealloc(taddr, uint32(128))


def run_alias(rng, p_col, rescale=0):
    a, b = bf16_bits(rng.standard_normal((128, 64))), bf16_bits(rng.standard_normal((64, 64)))
    k_alias.launch(1, 128, emu.tensor_map(a, (128, 64), "128B", dtype="bfloat16"),
                   emu.tensor_map(b, (64, 64), "128B", dtype="bfloat16"),
                   umma_idesc("f16", "bf16", "bf16", "f32", 128, 64), p_col, rescale)


def test_p_beside_o_is_fine(rng):
    run_alias(rng, 64)


def test_known_bug_p_aliasing_o_columns(rng):
    with pytest.raises(emu.EmulatorError, match="last written by tcgen05_st_32x32b_x16 by warp 0 at TMEM lane 0 "
                                                "column 32.*two live TMEM regions overlap"):
        run_alias(rng, 32)


def test_rescale_of_o_through_registers_keeps_ownership(rng):
    run_alias(rng, 16, rescale=1)


def test_declared_regions_name_the_owner_and_catch_straddling(rng):
    with emu.tmem_regions(O=(0, 64), P=(64, 16)):
        with pytest.raises(emu.EmulatorError, match=r"region O\).*two live TMEM regions overlap"):
            run_alias(rng, 32)
        with pytest.raises(emu.EmulatorError, match="straddle regions O, P"):
            run_alias(rng, 56)
        run_alias(rng, 64)
    with pytest.raises(ValueError, match="overlaps region 'O'"):
        with emu.tmem_regions(O=(0, 64), P=(32, 16)):
            pass


# ------------------------------------------------------------------ TS (A from TMEM), proxy fence
@kernel
def k_ts(a_rows, b_img, out, idesc, fence):
    sb = cuda.shared.array(2048, uint16)      # B: 64 x 16 bf16, K-major, no swizzle core matrices
    bars = cuda.shared.array(1, uint64)
    slot = cuda.shared.array(1, uint32)
    t = cuda.threadIdx.x
    q, lane = (t // 32) % 4, t % 32
    for i in range(t, b_img.shape[0], 128):
        sb[i] = b_img[i]
    if fence:
        ops.fence_proxy_async_shared_cta()
    bar = ops.shared_address(bars)
    if t == 0:
        ops.mbarrier_init(bar, uint32(1))
    if t // 32 == 0:
        ops.tcgen05_alloc(ops.shared_address(slot), uint32(64))
    cuda.syncthreads()
    taddr = slot[0]
    # A (128 x 16 bf16) into TMEM columns 32..39: two bf16 per 32-bit column, lower k in the low half
    words = cuda.local.array(8, uint32)
    for j in range(8):
        words[j] = uint32(a_rows[32 * q + lane, 2 * j]) | (uint32(a_rows[32 * q + lane, 2 * j + 1]) << 16)
    ops.tcgen05_st_32x32b_x8(taddr + uint32((32 * q) << 16) + uint32(32), *[words[j] for j in range(8)])
    ops.tcgen05_wait_st()
    ops.tcgen05_fence_before_thread_sync()
    cuda.syncthreads()
    if t == 0:
        ops.tcgen05_fence_after_thread_sync()
        bdesc = uint64(umma_smem_desc(0, 128, 256, "none")) | uint64(ops.shared_address(sb) >> 4)
        ops.tcgen05_mma_f16_ts(taddr, taddr + uint32(32), bdesc, uint32(idesc), uint32(0))
        ops.tcgen05_commit(bar)
    ops.mbarrier_wait_parity(bar, uint32(0))
    ops.tcgen05_fence_after_thread_sync()
    r = ops.tcgen05_ld_32x32b_x32(taddr + uint32((32 * q) << 16))
    for j in range(32):
        out[32 * q + lane, j] = r[j]
    cuda.syncthreads()
    if t // 32 == 0:
        ops.tcgen05_dealloc(taddr, uint32(64))


def core_matrix_image(m):
    rows = m.shape[0]
    return np.ascontiguousarray(m.reshape(rows // 8, 8, 2, 8).transpose(0, 2, 1, 3)).reshape(-1)


def run_ts(rng, fence=1):
    a = bf16_bits(rng.standard_normal((128, 16)))
    b = bf16_bits(rng.standard_normal((32, 16)))
    out = np.full((128, 32), 0x7FC00000, np.uint32)
    k_ts.launch(1, 128, a, core_matrix_image(b), out, umma_idesc("f16", "bf16", "bf16", "f32", 128, 32), fence)
    return out.view(np.float32), bf16_value(a) @ bf16_value(b).T


def test_ts_a_from_tmem(rng):
    out, ref = run_ts(rng)
    np.testing.assert_array_equal(out, ref.astype(np.float32))


def test_mma_reading_smem_without_proxy_fence_is_reported(rng):
    with pytest.raises(emu.EmulatorError, match="tcgen05_mma_f16_ts by thread 0.*written by ordinary stores "
                                                "after the last fence.proxy.async"):
        run_ts(rng, fence=0)


def test_invalid_instruction_descriptor_is_rejected(rng):
    ta, tb, _ = gemm_inputs(rng, 128, 64)
    bad = umma_idesc("f16", "bf16", "bf16", "f32", 128, 64) & ~(0x3F << 17) | (0 << 17)   # N = 0
    out = np.zeros((128, 256), np.uint32)
    with pytest.raises(emu.EmulatorError, match="instruction descriptor .* not valid for kind::f16"):
        k_umma.launch(1, 128, ta, tb, out, bad, 128, 64, 64, 0, 0, 0, 1, 1, 0, 0)


def test_e2m1_is_not_decoded_as_an_integer():
    """Known bug (integer FP4 decode, tests/test_fp4.py has the stage's): codes 0..7 are
    0, 0.5, 1, 1.5, 2, 3, 4, 6 -- not 0..7."""
    np.testing.assert_array_equal(T.decode(np.arange(8), "e2m1"), [0, 0.5, 1, 1.5, 2, 3, 4, 6])
    np.testing.assert_array_equal(T.decode(np.arange(8, 16), "e2m1"), -np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6]))


# ------------------------------------------------------------------ block-scaled kinds, tcgen05.cp
def kmajor_bytes_image(m):
    """K-major no-swizzle image of a (rows x 32) byte matrix: core matrix (row group g, 16-byte chunk h)
    of 8 rows x 16 B at (2g + h) * 128 -> LBO 128, SBO 256."""
    rows = m.shape[0]
    return np.ascontiguousarray(m.reshape(rows // 8, 8, 2, 16).transpose(0, 2, 1, 3)).reshape(-1)


def sf_atom(sf):
    """The 512-B "128x4" scale-factor atom (ptx-facts §2.6): byte 16 (m%32) + 4 (m//32) + k."""
    img = np.zeros(512, np.uint8)
    for m in range(sf.shape[0]):
        for k in range(sf.shape[1]):
            img[16 * (m % 32) + 4 * (m // 32) + k] = sf[m, k]
    return img


@kernel
def k_block_scaled(a_img, b_img, sfa_img, sfb_img, out, idesc, which, dup):
    sa = cuda.shared.array(4096, uint8)
    sb = cuda.shared.array(2048, uint8)
    ssa = cuda.shared.array(2048, uint8)     # 512 B used; 2 KB for the 128x128b copy of the dup=0 case
    ssb = cuda.shared.array(512, uint8)
    bars = cuda.shared.array(1, uint64)
    slot = cuda.shared.array(1, uint32)
    t = cuda.threadIdx.x
    q, lane = (t // 32) % 4, t % 32
    for i in range(t, 4096, 128):
        sa[i] = a_img[i]
    for i in range(t, 2048, 128):
        sb[i] = b_img[i]
    for i in range(t, 2048, 128):
        ssa[i] = sfa_img[i] if i < 512 else 0
    for i in range(t, 512, 128):
        ssb[i] = sfb_img[i]
    ops.fence_proxy_async_shared_cta()
    bar = ops.shared_address(bars)
    if t == 0:
        ops.mbarrier_init(bar, uint32(1))
    if t // 32 == 0:
        ops.tcgen05_alloc(ops.shared_address(slot), uint32(128))
    cuda.syncthreads()
    taddr = slot[0]
    if t == 0:
        nd = uint64(umma_smem_desc(0, 128, 256, "none"))
        sfd = uint64(umma_smem_desc(0, 128, 128, "none"))
        if dup:
            ops.tcgen05_cp_32x128b_warpx4(taddr + uint32(64), sfd | uint64(ops.shared_address(ssa) >> 4))
        else:                       # the 128x128b copy does not duplicate across the lane quadrants
            ops.tcgen05_cp_128x128b(taddr + uint32(64), sfd | uint64(ops.shared_address(ssa) >> 4))
        ops.tcgen05_cp_32x128b_warpx4(taddr + uint32(68), sfd | uint64(ops.shared_address(ssb) >> 4))
        a = nd | uint64(ops.shared_address(sa) >> 4)
        b = nd | uint64(ops.shared_address(sb) >> 4)
        if which == 0:
            ops.tcgen05_mma_mxf8f6f4_ss(taddr, a, b, uint32(idesc), taddr + uint32(64), taddr + uint32(68), uint32(0))
        else:
            ops.tcgen05_mma_mxf4nvf4_4x_ss(taddr, a, b, uint32(idesc), taddr + uint32(64), taddr + uint32(68),
                                           uint32(0))
        ops.tcgen05_commit(bar)
    ops.mbarrier_wait_parity(bar, uint32(0))
    ops.tcgen05_fence_after_thread_sync()
    r = ops.tcgen05_ld_32x32b_x64(taddr + uint32((32 * q) << 16))
    for j in range(64):
        out[32 * q + lane, j] = r[j]
    cuda.syncthreads()
    if t // 32 == 0:
        ops.tcgen05_dealloc(taddr, uint32(128))


def run_block_scaled(rng, which, dup=1):
    from dsv4_numba.hw.descriptors import umma_idesc_block_scaled
    if which == 0:      # mxf8f6f4: e4m3, K=32, one UE8M0 scale per row / column (byte sf_id = 0)
        a, b = e4m3_bits(rng.standard_normal((128, 32))), e4m3_bits(rng.standard_normal((64, 32)))
        fa, fb = e4m3_value(a), e4m3_value(b)
        sfa, sfb = rng.integers(120, 135, (128, 1)), rng.integers(120, 135, (64, 1))
        va, vb = 2.0 ** (sfa - 127.0), 2.0 ** (sfb - 127.0)
        idesc = umma_idesc_block_scaled("mxf8f6f4", "e4m3", "e4m3", "ue8m0", 128, 64)
        block = 32
    else:               # mxf4nvf4 4X: packed E2M1, K=64, four UE4M3 scales per row (block 16)
        ca, cb = rng.integers(0, 16, (128, 64)), rng.integers(0, 16, (64, 64))
        a, b = (ca[:, 0::2] | ca[:, 1::2] << 4).astype(np.uint8), (cb[:, 0::2] | cb[:, 1::2] << 4).astype(np.uint8)
        e2m1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6])
        fa, fb = e2m1[ca], e2m1[cb]
        sfa, sfb = rng.integers(0x30, 0x48, (128, 4)), rng.integers(0x30, 0x48, (64, 4))   # UE4M3 codes
        va, vb = T.LUT["e4m3"][sfa], T.LUT["e4m3"][sfb]
        idesc = umma_idesc_block_scaled("mxf4nvf4", "e2m1", "e2m1", "ue4m3", 128, 64)
        block = 16
    out = np.full((128, 64), 0x7FC00000, np.uint32)
    k_block_scaled.launch(1, 128, kmajor_bytes_image(a), kmajor_bytes_image(b), sf_atom(sfa), sf_atom(sfb), out,
                          idesc, which, dup)
    k = np.arange(fa.shape[1]) // block
    ref = (fa * va[:, k]) @ (fb * vb[:, k]).T
    return out.view(np.float32), ref


@pytest.mark.parametrize("which", [0, 1], ids=["mxf8f6f4_ue8m0", "mxf4nvf4_4x_ue4m3"])
def test_block_scaled_mma_with_scales_copied_by_tcgen05_cp(rng, which):
    got, ref = run_block_scaled(rng, which)
    np.testing.assert_array_equal(got, ref.astype(np.float32))


def test_scale_factors_not_duplicated_across_quadrants_is_reported(rng):
    with pytest.raises(emu.EmulatorError, match="A scale factors of row 0 differ between lane quadrant 0 and 1.*"
                                                "duplicated to all four 32-lane partitions"):
        run_block_scaled(rng, 0, dup=0)
