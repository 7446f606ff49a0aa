"""Emulator twins of the plain (non-async-proxy) bindings: prmt, packs and conversions, cp.async,
ldmatrix / stmatrix (warp-collective), checked against the PTX snippets' layout text."""
import numpy as np
import pytest
from numba import cuda
from numba.types import uint16, uint32

from dsv4_numba import emu
from dsv4_numba.emu import ops as eops
from dsv4_numba.hw import ops
from dsv4_numba.runtime import kernel


@pytest.fixture(autouse=True)
def sim_mode(monkeypatch):
    monkeypatch.setenv("DSV4_MODE", "sim")


def test_conversions_follow_the_snippet_text():
    assert eops.prmt(0x03020100, 0x07060504, 0x7654) == 0x07060504          # bytes 4..7 = b
    assert eops.prmt(0x80, 0, 0x8) == 0x808080FF                            # bit 3: replicate the msb
    assert eops.pack_bf16x2(1.0, -2.0) == 0x3F80C000                        # a -> upper half
    assert eops.pack_f16x2(1.0e6, 1.0) == 0x7C003C00                        # overflow -> inf
    assert eops.cvt_f16x2_e2m1x2(0x2F) == 0x3C00C600                        # upper nibble -> upper f16
    assert eops.cvt_e2m1x2_f32(2.5, -7.0) == 0x4F                           # tie to even; saturate to -6
    assert eops.cvt_rp_ue8m0x2_f32(3.0, 0.25) == 0x817D                     # round up to 2^2; exact 2^-2
    assert eops.cvt_bf16x2_ue8m0x2(0x7F80) == 0x3F804000                    # 2^0, 2^1


@kernel
def k_ldst(src, out, trans):
    sm = cuda.shared.array(256, uint16)          # four 8x8 b16 matrices, row-major, 16-B rows
    sm2 = cuda.shared.array(256, uint16)
    t = cuda.threadIdx.x
    for i in range(t, 256, 32):
        sm[i] = src[i]
    cuda.syncthreads()
    addr = ops.shared_address(sm) + uint32(16 * t)          # lane t: row t%8 of matrix t//8
    if trans:
        r = ops.ldmatrix_x4_trans(addr)
    else:
        r = ops.ldmatrix_x4(addr)
    for i in range(4):
        out[t, i] = r[i]
    ops.stmatrix_x4(ops.shared_address(sm2) + uint32(16 * t), r[0], r[1], r[2], r[3])
    cuda.syncthreads()
    for i in range(t, 256, 32):
        out[32 + i // 4, i % 4] = sm2[i]


@pytest.mark.parametrize("trans", [0, 1])
def test_ldmatrix_x4_fragments_and_stmatrix_round_trip(rng, trans):
    src = rng.integers(0, 1 << 16, 256, dtype=np.uint16)
    out = np.zeros((96, 4), np.uint32)
    k_ldst.launch(1, 32, src, out, trans)
    mats = src.reshape(4, 8, 8)
    for lane in range(32):
        for i in range(4):
            m = mats[i].T if trans else mats[i]
            lo, hi = m[lane // 4, 2 * (lane % 4)], m[lane // 4, 2 * (lane % 4) + 1]
            assert out[lane, i] == int(lo) | int(hi) << 16
    back = out[32:].reshape(-1)[:256].astype(np.uint16)
    want = mats.transpose(0, 2, 1) if trans else mats        # stmatrix stores the fragments' matrices
    np.testing.assert_array_equal(back, want.reshape(-1))


@kernel
def k_named(out, count):
    buf = cuda.shared.array(32, uint32)
    t = cuda.threadIdx.x
    if t >= 32:                                   # producer warp: write, then arrive (no wait)
        buf[t - 32] = uint32(t * 3)
        ops.named_barrier_arrive(1, count)
    else:                                         # consumer warp: wait for the producer's arrival
        ops.named_barrier_sync(1, count)
        out[t] = buf[t]


def test_named_barrier_producer_consumer():
    out = np.zeros(32, np.uint32)
    k_named.launch(1, 64, out, 64)
    np.testing.assert_array_equal(out, 3 * np.arange(32, 64))


def test_named_barrier_count_too_large_is_a_deadlock():
    with pytest.raises(emu.EmulatorDeadlock, match="named barrier 1 \\(96 threads"):
        k_named.launch(1, 64, np.zeros(32, np.uint32), 96)


@kernel
def k_split_warp(out, split):
    t = cuda.threadIdx.x
    if t < split:
        ops.named_barrier_sync(2, 32)             # warp 0's lanes below `split`: one bar.sync...
    elif t < 32:
        ops.named_barrier_sync(2, 32)             # ...the others: another one (UB: .aligned)
    out[t] = uint32(t + 1)                        # warp 1 takes no part


def test_named_barrier_phase_from_two_sites_of_one_warp_is_reported():
    """bar.sync is .aligned: one phase completed by lanes of a warp at two different bar.sync
    instructions (the suspicion in the sm_100a indexer hang) is reported, naming both lines."""
    with pytest.raises(emu.EmulatorError, match=r"other lanes of warp 0 arrived in this phase of named "
                                                r"barrier 2 by named_barrier_sync at .*test_emu_misc.py:\d+"):
        k_split_warp.launch(1, 64, np.zeros(64, np.uint32), 16)
    out = np.zeros(64, np.uint32)
    k_split_warp.launch(1, 64, out, 32)              # the whole warp at one site: fine
    np.testing.assert_array_equal(out, np.arange(1, 65))


@kernel
def k_arrive_then_sync(out):
    t = cuda.threadIdx.x
    if t < 32:                                    # the ping-pong opening: warp 0 arrives, then syncs on
        ops.named_barrier_arrive(3, 64)           # the same barrier - two arrivals of one warp complete
        ops.named_barrier_sync(3, 64)             # the 64-thread phase (legal: each is a whole warp)
    out[t] = uint32(t + 1)


def test_a_warp_arriving_twice_in_one_phase_is_not_a_split():
    out = np.zeros(64, np.uint32)
    k_arrive_then_sync.launch(1, 64, out)
    np.testing.assert_array_equal(out, np.arange(1, 65))


def test_tmem_plan_tool_flags_undeclared_overlap():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "tmem_plan.py"
    spec = importlib.util.spec_from_file_location("tmem_plan", path)
    tp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tp)
    errs, alloc = tp.check(tp.parse(["S=0:128", "P=0:64@S", "O=128:64"]))
    assert errs == [] and alloc == 256
    errs, _ = tp.check(tp.parse(["O=0:64", "P=32:16"]))
    assert errs == ["O (columns 0..63) overlaps P (columns 32..47) without a declared alias"]
    errs, _ = tp.check(tp.parse(["O=0:64"]), alloc=48)
    assert "power of 2" in errs[0]
