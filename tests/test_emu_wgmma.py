"""The emulated wgmma beyond bf16 SS K-major (issue 8): every swizzle mode (none / 32B / 64B / 128B),
K-major and MN-major (transposed, imm-trans) operands, e4m3 (k32), A from registers (RS), and the
generic-proxy diagnostic; the known bug "expect_tx short by one box".

Shared-memory images are built here element by element from the canonical layouts as ptx-facts.md
§3.3 words them (core matrices / swizzle atoms, chunk XOR row-in-atom), independently of
``emu.tmem.operand_addresses`` which the emulator uses.
"""
import numpy as np
import pytest
from numba import cuda
from numba.types import float32, int32, uint8, uint32, uint64

from dsv4_numba import emu
from dsv4_numba.hw import ops
from dsv4_numba.hw.descriptors import wgmma_smem_desc
from dsv4_numba.hw.layouts import wgmma_acc_coord
from dsv4_numba.runtime import kernel
from emu_helpers import one_mbarrier


@pytest.fixture(autouse=True)
def sim_mode(monkeypatch):
    monkeypatch.setenv("DSV4_MODE", "sim")


SPAN = {"none": 0, "32B": 32, "64B": 64, "128B": 128}


def bf16_bits(x):
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def values(bits, dtype):
    if dtype == "bf16":
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    import ml_dtypes
    return bits.view(ml_dtypes.float8_e4m3fn).astype(np.float64)


def random_bits(rng, shape, dtype):
    if dtype == "bf16":
        return bf16_bits(rng.standard_normal(shape))
    import ml_dtypes
    return rng.standard_normal(shape).astype(np.float32).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)


def image(m, swz, major):
    """(smem bytes, lbo, sbo) of operand ``m`` (rows = M or N, cols = K; bit patterns) in the
    canonical layout. K-major: rows are the strided dimension; MN-major: K is."""
    rows, kdim = m.shape
    eb = m.dtype.itemsize
    t = 16 // eb                                           # elements per 16-byte unit
    span = SPAN[swz]
    img = np.zeros(16384, np.uint8)
    mb = m.view(np.uint8).reshape(rows, kdim, eb)
    if major == "K" and not span:          # core matrix (8 rows x 16 B) of row group g, K chunk h
        lbo, sbo = 128, 128 * (kdim // t)
        for r in range(rows):
            for k in range(kdim):
                off = (r // 8) * sbo + (k // t) * lbo + (r % 8) * 16 + (k % t) * eb
                img[off:off + eb] = mb[r, k]
    elif major == "K":                     # atom: 8 rows x span B; chunk c of row r at c ^ (r%8 >> (3-B))
        lbo, sbo = 16, 8 * span
        shift = {128: 0, 64: 1, 32: 2}[span]
        for r in range(rows):
            for k in range(kdim):
                c, o = divmod(k * eb, 16)
                off = (r // 8) * sbo + (r % 8) * span + 16 * (c ^ ((r % 8) >> shift)) + o
                img[off:off + eb] = mb[r, k]
    elif not span:                         # core matrix: T MN-elements x 8 K-rows, 128 B
        sbo, lbo = 128, 128 * (rows // t)
        for r in range(rows):
            for k in range(kdim):
                off = (r // t) * sbo + (k // 8) * lbo + (k % 8) * 16 + (r % t) * eb
                img[off:off + eb] = mb[r, k]
    else:                                  # atom: 8 K-rows x span B of MN; chunk XOR K-row-in-atom
        per = span // eb
        shift = {128: 0, 64: 1, 32: 2}[span]
        sbo = 8 * span                     # next 8 K
        lbo = 8 * span * (kdim // 8)       # next MN atom
        for r in range(rows):
            for k in range(kdim):
                c, o = divmod((r % per) * eb, 16)
                off = (r // per) * lbo + (k // 8) * sbo + (k % 8) * span + 16 * (c ^ ((k % 8) >> shift)) + o
                img[off:off + eb] = mb[r, k]
    return img, lbo, sbo


NAMES = {0: "wgmma_m64n64k16_f32_bf16_ss", 1: "wgmma_m64n64k16_f32_bf16_ss_tb",
         2: "wgmma_m64n64k32_f32_e4m3_ss", 3: "wgmma_m64n64k16_f32_bf16_rs", 4: "wgmma_m64n64k32_f32_e4m3_rs"}


@kernel
def k_wgmma(a_img, b_img, a_regs, out, adesc, bdesc, fence, which):
    sa = cuda.shared.array(16384, uint8)
    sb = cuda.shared.array(16384, uint8)
    t = cuda.threadIdx.x
    for i in range(t, 16384, 128):
        sa[i] = a_img[i]
        sb[i] = b_img[i]
    if fence:
        ops.fence_proxy_async_shared_cta()
    cuda.syncthreads()
    a = uint64(adesc) | uint64(ops.shared_address(sa) >> 4)
    b = uint64(bdesc) | uint64(ops.shared_address(sb) >> 4)
    acc = (float32(7.0),) * 32                      # garbage: accumulate=0 must discard it
    fn = getattr(ops, NAMES[which])
    ops.wgmma_fence()
    if which >= 3:
        acc = fn(*acc, uint32(a_regs[t, 0]), uint32(a_regs[t, 1]), uint32(a_regs[t, 2]), uint32(a_regs[t, 3]),
                 b, uint32(0))
    else:
        acc = fn(*acc, a, b, uint32(0))
    ops.wgmma_commit_group()
    ops.wgmma_wait_group_0()
    for i in range(32):
        out[t, i] = acc[i]


def assemble(out):
    d = np.full((64, 64), np.nan)
    for t in range(128):
        for i in range(32):
            d[wgmma_acc_coord(t, i, 64)] = out[t, i]
    return d


def a_fragment(a, dtype):
    """uint32 [128, 4]: the RS A registers, per the mma.sync m16n8k16 / m16n8k32 A tables
    (PTX §9.7.15.5.1.1 points to them): g = lane/4, c = lane%4, rows 16w + g (+8), and
      bf16 (k16): a0a1 (g, 2c..2c+1)  a2a3 (g+8, 2c..)  a4a5 (g, 2c+8..)  a6a7 (g+8, 2c+8..)
      e4m3 (k32): a0-3 (g, 4c..4c+3)  a4-7 (g+8, 4c..)  a8-11 (g, 4c+16..)  a12-15 (g+8, 4c+16..)
    the lower k in the lower bits."""
    regs = np.zeros((128, 4), np.uint32)
    for t in range(128):
        w, lane = divmod(t, 32)
        g, c = divmod(lane, 4)
        for r, (dr, dk) in enumerate(((0, 0), (8, 0), (0, 8), (8, 8)) if dtype == "bf16" else
                                     ((0, 0), (8, 0), (0, 16), (8, 16))):
            row = 16 * w + g + dr
            if dtype == "bf16":
                k = 2 * c + dk
                regs[t, r] = int(a[row, k]) | int(a[row, k + 1]) << 16
            else:
                k = 4 * c + dk
                regs[t, r] = sum(int(a[row, k + e]) << (8 * e) for e in range(4))
    return regs


def run(rng, dtype, swz_a, swz_b, b_major="K", a_from="smem", fence=1):
    kdim = 16 if dtype == "bf16" else 32
    a = random_bits(rng, (64, kdim), dtype)
    b = random_bits(rng, (64, kdim), dtype)                          # B as N x K
    a_img, alb, asb = image(a, swz_a, "K")
    b_img, blb, bsb = image(b, swz_b, b_major)
    which = ({"bf16": 0, "e4m3": 2}[dtype] + (b_major == "MN")) if a_from == "smem" else \
        {"bf16": 3, "e4m3": 4}[dtype]
    out = np.full((128, 32), np.nan, np.float32)
    k_wgmma.launch(1, 128, a_img, b_img, a_fragment(a, dtype), out, wgmma_smem_desc(0, alb, asb, swz_a),
                   wgmma_smem_desc(0, blb, bsb, swz_b), fence, which)
    ref = (values(a, dtype) @ values(b, dtype).T).astype(np.float32)
    return assemble(out), ref


@pytest.mark.parametrize("dtype", ["bf16", "e4m3"])
@pytest.mark.parametrize("swz", ["none", "32B", "64B", "128B"])
def test_k_major_every_swizzle(rng, dtype, swz):
    got, ref = run(rng, dtype, swz, swz)
    np.testing.assert_array_equal(got, ref)      # one rounding of an exact sum: bitwise


@pytest.mark.parametrize("swz", ["none", "32B", "64B", "128B"])
def test_mn_major_b_every_swizzle(rng, swz):
    got, ref = run(rng, "bf16", "128B", swz, b_major="MN")
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dtype", ["bf16", "e4m3"])
def test_a_from_registers(rng, dtype):
    got, ref = run(rng, dtype, "none", "128B", a_from="regs")
    np.testing.assert_array_equal(got, ref)


def test_mismatched_swizzle_gives_a_wrong_tile(rng):
    """A 64B image read through a 128B descriptor: wrong values (what the hardware would do too)."""
    a = random_bits(rng, (64, 16), "bf16")
    b = random_bits(rng, (64, 16), "bf16")
    a_img, _, _ = image(a, "64B", "K")
    b_img, _, _ = image(b, "128B", "K")
    out = np.full((128, 32), np.nan, np.float32)
    k_wgmma.launch(1, 128, a_img, b_img, np.zeros((128, 4), np.uint32), out,
                   wgmma_smem_desc(0, 16, 1024, "128B"), wgmma_smem_desc(0, 16, 1024, "128B"), 1, 0)
    assert not np.allclose(assemble(out), values(a, "bf16") @ values(b, "bf16").T)


def test_wgmma_reading_unfenced_generic_stores_is_reported(rng):
    with pytest.raises(emu.EmulatorError, match="wgmma_m64n64k16_f32_bf16_ss.*the A operand.*written by ordinary "
                                                "stores after the last fence.proxy.async"):
        run(rng, "bf16", "128B", "128B", fence=0)


# ------------------------------------------------------------------ known bug: expect_tx short by one box
@kernel
def k_two_boxes(tmap, expect):
    tile = cuda.shared.array(16384, uint8)
    bars = cuda.shared.array(1, uint64)
    t = cuda.threadIdx.x
    bar = one_mbarrier(bars, False)
    if t == 0:
        ops.mbarrier_arrive_expect_tx(bar, uint32(expect))
        ops.tma_load_2d(ops.shared_address(tile), ops.array_address(tmap), int32(0), int32(0), bar)
        ops.tma_load_2d(ops.shared_address(tile) + uint32(8192), ops.array_address(tmap), int32(0), int32(64), bar)
    ops.mbarrier_wait_parity(bar, uint32(0))


def test_known_bug_expect_tx_short_by_one_box():
    x = np.zeros((128, 64), np.uint16)
    k_two_boxes.launch(1, 32, emu.tensor_map(x, (64, 64), "128B", dtype="bfloat16"), 16384)
    with pytest.raises(emu.EmulatorError, match="tma_load_2d by thread 0 .*8192 bytes land on the mbarrier .* "
                                                "expects only 0 more byte.*a box short"):
        k_two_boxes.launch(1, 32, emu.tensor_map(x, (64, 64), "128B", dtype="bfloat16"), 8192)


# ------------------------------------------------------------------ wgmma fence / commit / wait protocol
@kernel
def k_protocol(out, mode):
    sa = cuda.shared.array(2048, uint8)
    t = cuda.threadIdx.x
    for i in range(t, 2048, 128):
        sa[i] = uint8(0)
    ops.fence_proxy_async_shared_cta()
    cuda.syncthreads()
    d = uint64(wgmma_smem_desc(0, 128, 256, "none")) | uint64(ops.shared_address(sa) >> 4)
    acc = (float32(0.0),) * 32
    if mode != 1:                                   # 1: no wgmma_fence before the first wgmma
        ops.wgmma_fence()
    acc = ops.wgmma_m64n64k16_f32_bf16_ss(*acc, d, d, uint32(0))
    if mode != 3:                                   # 3: never committed
        ops.wgmma_commit_group()
    acc = ops.wgmma_m64n64k16_f32_bf16_ss(*acc, d, d, uint32(1))
    ops.wgmma_commit_group()
    if mode == 0 or mode == 3:
        ops.wgmma_wait_group_0()
    elif mode == 4:                                 # 4: waits for all but the last group only
        ops.wgmma_wait_group_1()
    out[t] = acc[0]                                 # 2: no wait at all


def test_wgmma_protocol_correct_kernel_passes():
    out = np.full(128, np.nan, np.float32)
    k_protocol.launch(1, 128, out, 0)
    assert (out == 0).all()


def test_wgmma_without_fence_is_reported():
    with pytest.raises(emu.EmulatorError, match="no wgmma_fence before this thread's first wgmma"):
        k_protocol.launch(1, 128, np.zeros(128, np.float32), 1)


@pytest.mark.parametrize("mode,what", [(2, "0 wgmma\\(s\\) not committed, 2 committed group\\(s\\) holding 2"),
                                       (4, "0 wgmma\\(s\\) not committed, 1 committed group\\(s\\) holding 1")],
                         ids=["never_waited", "wait_group_1_leaves_the_last"])
def test_wgmma_results_never_waited_are_reported_at_block_end(mode, what):
    with pytest.raises(emu.EmulatorError, match=f"threads 0-127 exit with wgmma results never waited for "
                                                f"\\(thread 0: {what}"):
        k_protocol.launch(1, 128, np.zeros(128, np.float32), mode)
