"""Feasibility of the emulator at attention size (issue 8): one CTA computes a 128 x 128 attention
tile (128 queries, 128 keys, head dim 64, bf16) the sm_100a way - TMA loads of Q, K, V (128B
swizzle), S = Q K^T by tcgen05.mma kind::f16 into TMEM, a row-per-thread softmax read with
tcgen05.ld 32x32b.x128, P (bf16, two per column) stored over S's first 64 columns with tcgen05.st
(the FA4 aliasing, legal: S is dead once read), O = P V by a TS MMA (A = P from TMEM, B = V
MN-major), O read back and normalised. It must finish in well under a minute on the CPU.

The softmax here uses NumPy inside the kernel body: this tile checks the emulated machinery
(descriptors, TMEM plan, barriers) at size, not a production kernel.
"""
import time

import numpy as np
import pytest
from numba import cuda
from numba.types import int32, uint8, uint32, uint64

from dsv4_numba import emu
from dsv4_numba.hw import ops
from dsv4_numba.hw.descriptors import umma_idesc, umma_smem_desc
from dsv4_numba.runtime import kernel


@pytest.fixture(autouse=True)
def sim_mode(monkeypatch):
    monkeypatch.setenv("DSV4_MODE", "sim")


SW128_K = umma_smem_desc(0, 16, 1024, "128B")          # Q, K: K-major, 128-B rows
SW128_MN = umma_smem_desc(0, 8192, 1024, "128B")       # V as B (d x keys): MN-major, 8 keys per 1024 B
IDESC_S = umma_idesc("f16", "bf16", "bf16", "f32", 128, 128)
IDESC_O = umma_idesc("f16", "bf16", "bf16", "f32", 128, 64, b_major="MN")
S_COL, O_COL, NCOLS = 0, 128, 256                      # TMEM plan: S 0..127 (P over 0..63), O 128..191


# Napkin math: 2 x 128 x 128 x 64 x 2 = 4.2 MFLOP, 48 KB in: one CTA, correctness only.
@kernel
def k_attn_tile(tmap_q, tmap_k, tmap_v, out, scale):
    sq = cuda.shared.array(16384, uint8)
    sk = cuda.shared.array(16384, uint8)
    sv = cuda.shared.array(16384, uint8)
    bars = cuda.shared.array(3, uint64)
    slot = cuda.shared.array(1, uint32)
    t = cuda.threadIdx.x
    warp, lane = t // 32, t % 32
    q4 = warp % 4
    bar_tma = ops.shared_address(bars)
    bar_s, bar_o = bar_tma + uint32(8), bar_tma + uint32(16)
    if t == 0:
        for b in (bar_tma, bar_s, bar_o):
            ops.mbarrier_init(b, uint32(1))
        ops.fence_mbarrier_init()
    if warp == 0:
        ops.tcgen05_alloc(ops.shared_address(slot), uint32(NCOLS))
    cuda.syncthreads()
    taddr = slot[0]
    row_addr = taddr + uint32((32 * q4) << 16)
    if t == 0:
        ops.mbarrier_arrive_expect_tx(bar_tma, uint32(3 * 16384))
        for buf, tm in ((sq, tmap_q), (sk, tmap_k), (sv, tmap_v)):
            ops.tma_load_2d(ops.shared_address(buf), ops.array_address(tm), int32(0), int32(0), bar_tma)
        ops.mbarrier_wait_parity(bar_tma, uint32(0))
        qd = uint64(SW128_K) | uint64(ops.shared_address(sq) >> 4)
        kd = uint64(SW128_K) | uint64(ops.shared_address(sk) >> 4)
        for s in range(4):                                   # head dim 64 = 4 x k16, +32 B each
            ops.tcgen05_mma_f16_ss(taddr + uint32(S_COL), qd + uint64(2 * s), kd + uint64(2 * s),
                                   uint32(IDESC_S), uint32(s > 0))
        ops.tcgen05_commit(bar_s)
    ops.mbarrier_wait_parity(bar_s, uint32(0))
    ops.tcgen05_fence_after_thread_sync()
    s_row = np.array(ops.tcgen05_ld_32x32b_x128(row_addr + uint32(S_COL)), np.uint32).view(np.float32)
    ops.tcgen05_wait_ld()
    x = s_row.astype(np.float32) * np.float32(scale)
    p = np.exp(x - x.max()).astype(np.float32)
    denom = p.sum(dtype=np.float32)
    u = p.view(np.uint32).astype(np.uint64)
    pb = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)        # bf16, round to nearest even
    words = pb[0::2] | (pb[1::2] << 16)                                    # lower key in the low half
    ops.tcgen05_st_32x32b_x64(row_addr + uint32(S_COL), *[uint32(w) for w in words])
    ops.tcgen05_wait_st()
    ops.tcgen05_fence_before_thread_sync()
    cuda.syncthreads()
    if t == 0:
        ops.tcgen05_fence_after_thread_sync()
        vd = uint64(SW128_MN) | uint64(ops.shared_address(sv) >> 4)
        for s in range(8):                                   # 128 keys = 8 x k16: P +8 columns, V +2048 B
            ops.tcgen05_mma_f16_ts(taddr + uint32(O_COL), taddr + uint32(S_COL + 8 * s), vd + uint64(128 * s),
                                   uint32(IDESC_O), uint32(s > 0))
        ops.tcgen05_commit(bar_o)
    ops.mbarrier_wait_parity(bar_o, uint32(0))
    ops.tcgen05_fence_after_thread_sync()
    o_row = np.array(ops.tcgen05_ld_32x32b_x64(row_addr + uint32(O_COL)), np.uint32).view(np.float32)
    ops.tcgen05_wait_ld()
    out[32 * q4 + lane, :] = o_row / denom
    cuda.syncthreads()
    if warp == 0:
        ops.tcgen05_dealloc(taddr, uint32(NCOLS))


def bf16_bits(x):
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_value(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def test_attention_tile_128x128_in_tmem_under_a_minute(rng):
    q, k, v = (bf16_bits(rng.standard_normal((128, 64)) * s) for s in (1.0, 1.0, 1.0))
    k[5] = bf16_bits(rng.standard_normal(64) * 8)                       # an outlier key
    scale = 64 ** -0.5
    out = np.full((128, 64), np.nan, np.float32)
    tm = dict(dtype="bfloat16")
    t0 = time.perf_counter()
    k_attn_tile.launch(1, 128, emu.tensor_map(q, (128, 64), "128B", **tm), emu.tensor_map(k, (128, 64), "128B", **tm),
                       emu.tensor_map(v, (128, 64), "128B", **tm), out, scale)
    took = time.perf_counter() - t0
    fq, fk, fv = bf16_value(q), bf16_value(k), bf16_value(v)
    s = fq @ fk.T * scale
    p = np.exp(s - s.max(1, keepdims=True))
    ref = (p @ fv) / p.sum(1, keepdims=True)
    # bound: P rounded to bf16 (2^-8 relative) dominates; S/exp/sum in float32 add ~1e-6
    bound = 2.0 ** -8 * (p @ np.abs(fv)) / p.sum(1, keepdims=True) + 1e-5
    assert np.all(np.abs(out - ref) <= bound), float(np.max(np.abs(out - ref) / bound))
    assert took < 60, took
    print(f"128x128 attention tile under the emulator: {took:.1f} s")
