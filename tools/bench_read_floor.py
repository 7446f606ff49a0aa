"""The floor of a one-wave read: plain read kernels over R x N float32 scores in a fixed number of
CTAs (the top-k cluster kernel's pass 1 reads 64 x 131072 in 128 CTAs of 512 threads), by
ld.global (load forms, depth, CTA size) and by cp.async.bulk pipelines into shared memory (stage
size, stages in flight). What pass 1 can reach is what the best of these reaches, not the copy
bandwidth: a single wave of 128 CTAs over 33.5 MB does not run at the bandwidth of a long copy.

    python tools/bench_read_floor.py                      # 64x131072 in 128 CTAs
    python tools/bench_read_floor.py --shape 4x65536 --ctas 64

Each kernel reads its CTA's contiguous share once and folds the words into a value it stores only
if it matches a magic constant (so no load is dead); times are CUDA-event medians of launches
cycling through input copies of more than 2 x L2 (``dsv4_numba.runtime.bench``), launch overhead
included (a back-to-back launch of an empty kernel: ~1 us on the H100).

H100 80GB HBM3, 2026-11-28 (session 26), 64 x 131072 in 128 CTAs: every ld.global form 13.7-14.4
us (ld.global.nc / .cg / L1::no_allocate / L2::128B / L2::256B prefetch; 4 or 8 vectors a thread
in flight, pipelined; 256 or 512 threads; 256 CTAs 13.7), every bulk pipeline 13.9-14.3 us (8-64
KB stages, 2-8 in flight); torch.sum over the same 33.5 MB 18.9 us. That is ~2.4 TB/s with the
launch, where a long device-to-device copy reaches 3.0 TB/s (read + write); the top-k pass 1
ends at 14.6-14.7 us with the launch. (Those figures are from the development script this tool
was made from, which also had L2::128B / L2::256B loads; this form keeps the project's snippets.)
GPU only; torch is optional (the torch.sum line).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from numba import cuda, uint32, uint64

from dsv4_numba.hw import ops
from dsv4_numba.runtime import detect_gpu, device, kernel
from dsv4_numba.runtime.bench import Cycle, copy_bandwidth, rotation, time_gpu

MAGIC = 0x12345679      # the fold is stored only if it equals this (it never does in practice)


@device
def ld_nc(a):
    return ops.ld_global_nc_v4_u32(a)               # ld.global.nc.v4.u32


@device
def ld_cg(a):
    return ops.ld_global_cg_v4_u32(a)               # ld.global.cg.v4.u32


@device
def ld_nc_evict_last(a):                            # ld.global.nc.L1::no_allocate.L2::cache_hint
    return ops.ld_global_nc_v4_u32_hint(a, ops.l2_policy_evict_last())


LOADS = {"nc": ld_nc, "cg": ld_cg, "nc_evict_last": ld_nc_evict_last}


def load_form(name):
    """The 16-byte load of an ld.global form (a device function of the generic address)."""
    if name not in LOADS:
        raise ValueError(f"load form {name!r}: one of {', '.join(LOADS)}")
    return LOADS[name]


def ldg_kernel(load, T, U):
    """T threads a CTA read its share ``per`` floats from x[base + b per:] in trips of T x U
    16-byte vectors, the next trip's U loads issued before the current trip is folded (as the
    top-k pass 1 does). Napkin math: 16 U bytes a thread in flight, 2 x that across the
    pipeline; at T = 512, U = 4: 32-64 KB a CTA, ~4-8 MB over 128 CTAs -- past the ~3 MB that
    Little's law asks at 3 TB/s and ~1 us of latency, so the read is bound by HBM and the wave's
    ramp, not by loads in flight (measured: U = 8 no faster)."""
    fetch = load_form(load)

    def read_ldg(x, base, per, out):
        tid = cuda.threadIdx.x
        a0 = ops.array_address(x) + uint64(base + cuda.blockIdx.x * per) * uint64(4)
        w = cuda.local.array(64, uint32)
        step = uint64(T * 16 * U)
        trips = per * 4 // (T * 16 * U)
        acc = uint32(0)
        p = a0 + uint64(tid * 16)
        for u in range(U):
            w[4 * u], w[4 * u + 1], w[4 * u + 2], w[4 * u + 3] = fetch(p + uint64(u * T * 16))
        for t in range(trips):
            nxt = t + 1 < trips
            if nxt:
                for u in range(U):
                    w[32 + 4 * u], w[33 + 4 * u], w[34 + 4 * u], w[35 + 4 * u] = \
                        fetch(p + step + uint64(u * T * 16))
            for i in range(4 * U):
                acc = uint32(acc + (w[i] ^ (acc >> uint32(3))))
            if nxt:
                for i in range(4 * U):
                    w[i] = w[32 + i]
            p += step
        if acc == uint32(MAGIC):
            out[0] = acc
    read_ldg.__name__ = read_ldg.__qualname__ = f"read_ldg_{load}_t{T}_u{U}"
    return kernel(read_ldg)


def bulk_kernel(T, SB, NS):
    """One thread of a CTA streams its share into NS shared-memory stages of SB bytes with
    cp.async.bulk (the TMA unit's non-tensor copy, completing on a stage's mbarrier); all T
    threads fold a stage (ld.shared.v4) once its mbarrier completes, then a barrier frees it
    for the next copy. Napkin math: NS x SB bytes in flight a CTA (64-128 KB: ~8-16 MB over
    128 CTAs); one elected thread issues ~per x 4 / SB copies; the fold reads each byte from
    shared memory once (~60 B / clk an SM of ~128 available)."""
    def read_bulk(x, base, per, out):
        tid = cuda.threadIdx.x
        dyn = cuda.shared.array(0, uint32)
        bars = cuda.shared.array(16, uint64)
        sa = ops.shared_address(dyn)
        ba = ops.shared_address(bars)
        g0 = ops.array_address(x) + uint64(base + cuda.blockIdx.x * per) * uint64(4)
        n = per * 4 // SB
        if tid == 0:
            for s in range(NS):
                ops.mbarrier_init(ba + uint32(8 * s), uint32(1))
            ops.fence_mbarrier_init()
        cuda.syncthreads()
        if tid == 0:
            for s in range(NS):
                if s < n:
                    ops.mbarrier_arrive_expect_tx(ba + uint32(8 * s), uint32(SB))
                    ops.bulk_load(sa + uint32(s * SB), g0 + uint64(s * SB), uint32(SB),
                                  ba + uint32(8 * s))
        acc = uint32(0)
        for c in range(n):
            s = c % NS
            ops.mbarrier_wait_parity(ba + uint32(8 * s), uint32((c // NS) & 1))
            for j in range(SB // 16 // T):
                w0, w1, w2, w3 = ops.ld_shared_v4_u32(sa + uint32(s * SB + (j * T + tid) * 16))
                acc = uint32(acc + (w0 ^ w1 ^ (w2 + w3) ^ (acc >> uint32(3))))
            cuda.syncthreads()                    # every thread is done with stage s
            if tid == 0 and c + NS < n:
                ops.mbarrier_arrive_expect_tx(ba + uint32(8 * s), uint32(SB))
                ops.bulk_load(sa + uint32(s * SB), g0 + uint64((c + NS) * SB), uint32(SB),
                              ba + uint32(8 * s))
        if acc == uint32(MAGIC):
            out[0] = acc
    read_bulk.__name__ = read_bulk.__qualname__ = f"read_bulk_t{T}_{SB // 1024}k_x{NS}"
    return kernel(read_bulk)


def forms(quick: bool):
    """(label, kernel, threads, dynamic shared bytes, bytes a CTA's share must divide into)."""
    out = []
    for load in (("nc",) if quick else LOADS):
        for T, U in (((512, 4),) if quick else ((512, 4), (512, 8), (256, 8))):
            out.append((f"ld {load} {T} threads, {U} vectors", ldg_kernel(load, T, U), T, 0,
                        T * 16 * U))
    for T, SB, NS in (((512, 16384, 4),) if quick else
                      ((512, 16384, 4), (512, 32768, 2), (512, 32768, 4), (512, 8192, 8),
                       (256, 16384, 6))):
        out.append((f"bulk {T} threads, {SB // 1024} KB x {NS}", bulk_kernel(T, SB, NS), T,
                    SB * NS, SB))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="64x131072", help="R x N float32 scores (default 64x131072)")
    ap.add_argument("--ctas", type=int, default=128, help="CTAs of the one wave (default 128)")
    ap.add_argument("--quick", action="store_true", help="one ld and one bulk form")
    args = ap.parse_args(argv)
    try:
        R, N = (int(v) for v in args.shape.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--shape: {args.shape!r} is not RxN (e.g. 64x131072)") from None
    if args.ctas < 1 or (R * N) % args.ctas:
        raise SystemExit(f"--ctas {args.ctas}: must divide the {R * N} scores evenly")
    gpu = detect_gpu()
    if gpu is None:
        raise SystemExit("bench_read_floor needs a GPU (none found)")
    tot = R * N
    per = tot // args.ctas
    copies = rotation(4 * tot)
    x = cuda.to_device(np.random.default_rng(0).standard_normal(tot * copies).astype(np.float32))
    out = cuda.to_device(np.zeros(1, np.uint32))
    print(f"# {gpu.name}: {R} x {N} float32 ({4 * tot / 1e6:.1f} MB) in {args.ctas} CTAs, "
          f"{copies} input copies; copy bandwidth {copy_bandwidth():.0f} GB/s (read + write)")
    print("| form | us | GB/s |\n|---|---:|---:|")
    for label, kern, T, smem, unit in forms(args.quick):
        if (4 * per) % unit:
            print(f"| {label} | (a CTA's {4 * per} bytes are not a multiple of {unit}) | |")
            continue
        if smem:
            kern.reserve_dynamic_shared((x, 0, per, out), smem)
        bases = Cycle([c * tot for c in range(copies)])
        us = time_gpu(lambda: kern.launch(args.ctas, T, x, bases(), per, out,  # noqa: B023
                                          shared_bytes=smem), reps=8, repeats=7)
        print(f"| {label} | {us:.2f} | {4 * tot / us / 1e3:.0f} |", flush=True)
    try:
        import torch
    except ImportError:
        return 0
    tx = torch.randn(copies, R, N, device="cuda")
    rows = Cycle(list(tx))
    us = time_gpu(lambda: rows().sum(), reps=8, repeats=7)
    print(f"| torch.sum | {us:.2f} | {4 * tot / us / 1e3:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
