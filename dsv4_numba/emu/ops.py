"""Python twins of ``dsv4_numba.hw.ops``: same names, same argument order, acting on the emulated CTA
state (``dsv4_numba.emu.state``). Under the simulator, ``Kernel.launch`` swaps a kernel module's
global ``ops`` (when it is ``dsv4_numba.hw.ops``) for this module, so production kernels run unchanged.
``emu.coverage()`` lists the hw.ops bindings with and without a twin; a missing one raises
``NotEmulated`` when looked up.

Covered:
- sm_90a: shared/global addresses, ld/st.shared.v4, ld.global.nc / st.global.v4, mbarrier (init,
  inval, arrive, arrive.expect_tx, expect_tx, try_wait.parity, wait_parity), TMA tile loads/stores
  1D-5D (+ L2-hint forms) with no / 32B / 64B / 128B swizzle, bulk (non-tensor) loads, bulk-group
  commit/wait, tensormap prefetch and fences, proxy fences, elect.sync, named barriers (sync/arrive
  with counts), setmaxnreg, cp.async (+ cp.async.mbarrier.arrive.noinc), ldmatrix/stmatrix, prmt /
  pack / cvt conversions, and every ``wgmma_m64n{N}k{K}`` binding:
  bf16 / e4m3, A from smem (SS) or registers (RS), K-major or MN-major (imm-trans, ``_tb``) operands,
  all swizzle modes, read through the descriptor per the PTX canonical layouts (``emu.tmem``).
- sm_100a: tcgen05 alloc / dealloc / relinquish (whole warp, power of 2 in [32, 512], dealloc before
  exit checked at block end), tcgen05.mma kind::f16 / f8f6f4 (SS, TS) and the block-scaled mxf8f6f4 /
  mxf4nvf4 / mxf4 kinds (scale factors from TMEM), decoding the instruction and smem descriptors and
  writing D per the data-path layout (M=128 layout D, M=64 layout F); tcgen05.ld/st 32x32b, 16x64b,
  16x128b, 16x256b .x1-.x128 with the lane-quadrant rule; tcgen05.cp; commit -> mbarrier arrive.

Compute model: an MMA instruction sums its products exactly (float64) and rounds D once to float32
(f16 for an f16 D), so a K loop rounds once per instruction.

Timing model: every asynchronous operation completes at issue. A TMA load applies complete_tx to its
mbarrier when it is issued; a wgmma has its result when it returns (wait_group only keeps the
bookkeeping of the fence / commit / wait protocol, checked below); a
tcgen05.mma writes TMEM at issue but its result counts as readable only after a thread waited on the
mbarrier phase its tcgen05_commit arrived in. Other orderings that hardware makes racy but that are
correct under "completes at issue" are not flagged.

Diagnostics (EmulatorError / EmulatorDeadlock, naming the op, thread, address and what to check):
deadlocks with barrier state (decided without wall time: emu.state); a wgmma with no wgmma_fence
before it in its thread; wgmma results never covered by a wgmma_wait_group at thread exit; TMA bytes beyond a phase's expect_tx (a box short); async-proxy reads
(wgmma, tcgen05.mma/cp, TMA store) of smem written by ordinary stores after the last
fence.proxy.async; TMEM read never written / outside an allocation / before the MMA's commit was
waited on; accumulate=1 into never-written D; accumulate into D whose cells another op overwrote
(overlapping regions; a tcgen05.st by a warp that read those cells - a rescale - keeps ownership);
writes straddling declared regions (``emu.tmem_region``); scale factors not duplicated across quadrants;
one phase of a named barrier reached by the lanes of a warp from two different bar.sync / bar.arrive
instructions (they are .aligned).
"""
from __future__ import annotations

import functools
import re
import sys

import numpy as np

from ..hw.descriptors import explain
from ..hw.layouts import wgmma_acc_coord
from ..hw.tma import SWIZZLE_BYTES
from . import tmem as T
from .state import (GMEM, TX_LIMIT, EmulatorDeadlock, EmulatorError, MBarrier, cta, current_thread,
                    lookup_tensor_map, thread_name)

__all__ = ["EmulatorDeadlock", "EmulatorError", "NotEmulated"]


class NotEmulated(NotImplementedError, AttributeError):
    """A hw.ops binding (or an operand setting) that this emulator slice does not implement."""


def _enter():
    me = current_thread()
    st = cta()
    st.unspin(me)
    return st, me


def _u32(x) -> int:
    return int(x) & 0xFFFFFFFF


# ------------------------------------------------------------------------------ addresses, ld/st
def shared_address(arr):
    """Fake 32-bit .shared-window address of a shared array's first element (stable per CTA)."""
    st, _ = _enter()
    return st.shared_address(arr)


def array_address(arr):
    """The real host address of an array's data (remembered, so emulated global ops resolve it)."""
    return GMEM.register(arr)


def st_shared_v4_b32(addr, a, b, c, d):
    st, _ = _enter()
    if int(addr) % 16:
        raise EmulatorError(f"st_shared_v4_b32: smem {int(addr):#x} is not 16-byte aligned")
    st.smem(addr, 16, "st_shared_v4_b32").view(np.uint32)[:] = [_u32(a), _u32(b), _u32(c), _u32(d)]


def ld_shared_v4_u32(addr):
    st, _ = _enter()
    if int(addr) % 16:
        raise EmulatorError(f"ld_shared_v4_u32: smem {int(addr):#x} is not 16-byte aligned")
    return tuple(np.uint32(v) for v in st.smem(addr, 16, "ld_shared_v4_u32").view(np.uint32))


def ld_global_nc_v4_u32(addr):
    if int(addr) % 16:
        raise EmulatorError(f"ld_global_nc_v4_u32: {int(addr):#x} is not 16-byte aligned")
    return tuple(np.uint32(v) for v in GMEM.view(addr, 16, "ld_global_nc_v4_u32").view(np.uint32))


def ld_global_nc_u32(addr):
    if int(addr) % 4:
        raise EmulatorError(f"ld_global_nc_u32: {int(addr):#x} is not 4-byte aligned")
    return np.uint32(GMEM.view(addr, 4, "ld_global_nc_u32").view(np.uint32)[0])


def st_global_v4_b32(addr, a, b, c, d):
    if int(addr) % 16:
        raise EmulatorError(f"st_global_v4_b32: {int(addr):#x} is not 16-byte aligned")
    GMEM.view(addr, 16, "st_global_v4_b32").view(np.uint32)[:] = [_u32(a), _u32(b), _u32(c), _u32(d)]


# ------------------------------------------------------------------------------ mbarrier
def mbarrier_init(addr, count):
    st, me = _enter()
    addr, count = int(addr), int(count)
    if addr % 8:
        raise EmulatorError(f"mbarrier_init by {thread_name(me)}: smem {addr:#x} is not 8-byte aligned")
    if not 1 <= count < 1 << 20:
        raise EmulatorError(f"mbarrier_init @smem {addr:#x}: arrival count {count} outside 1..2^20-1")
    st.smem(addr, 8, "mbarrier_init")
    with st.lock:
        b = MBarrier(addr, count)
        b.log(f"init count {count} by t{me.thread_id}")
        st.barriers[addr] = b
        st.changed()


def mbarrier_inval(addr):
    st, _ = _enter()
    with st.lock:
        st.barrier(addr, "mbarrier_inval")
        del st.barriers[int(addr)]
        st.changed()


def fence_mbarrier_init():
    _enter()


def _add_tx(st, b, tx, what):
    b.tx += tx
    if abs(b.tx) > TX_LIMIT:
        raise EmulatorError(f"{what}: tx-count {b.tx} leaves the range +-(2^20-1); {b.describe()}")


def _arrive(st, me, b, op):
    if b.pending == 0:
        raise EmulatorError(f"{op} by {thread_name(me)}: more arrivals than the count in this phase; "
                            f"{b.describe()}")
    state = np.uint64(b.phase)
    b.pending -= 1
    st.settle(st.complete_if_done(b))
    return state


def mbarrier_arrive(addr):
    st, me = _enter()
    with st.lock:
        b = st.barrier(addr, "mbarrier_arrive")
        b.log(f"arrive by t{me.thread_id}")
        return _arrive(st, me, b, "mbarrier_arrive")


def mbarrier_arrive_expect_tx(addr, tx):
    st, me = _enter()
    with st.lock:
        b = st.barrier(addr, "mbarrier_arrive_expect_tx")
        b.log(f"arrive.expect_tx +{int(tx)} by t{me.thread_id}")
        _add_tx(st, b, int(tx), "mbarrier_arrive_expect_tx")
        _arrive(st, me, b, "mbarrier_arrive_expect_tx")


def mbarrier_expect_tx(addr, tx):
    st, me = _enter()
    with st.lock:
        b = st.barrier(addr, "mbarrier_expect_tx")
        b.log(f"expect_tx +{int(tx)} by t{me.thread_id}")
        _add_tx(st, b, int(tx), "mbarrier_expect_tx")
        st.settle(st.complete_if_done(b))


def _complete_tx(st, addr, nbytes, op):
    with st.lock:
        b = st.barrier(addr, op)
        b.log(f"{op} complete_tx -{nbytes}")
        if b.tx - nbytes < 0:
            raise EmulatorError(
                f"{op} by {thread_name(current_thread())}: its {nbytes} bytes land on the mbarrier @smem "
                f"{int(addr):#x} in phase {b.phase}, which expects only {b.tx} more byte(s): the phase "
                f"completes (or completed) before all of its data arrived, and the surplus is counted "
                f"against the next phase. Check: expect_tx == the sum of the box bytes of every TMA of the "
                f"stage (a box short?), and arm (arrive.expect_tx) before issuing the loads; "
                f"{b.describe()}")
        _add_tx(st, b, -nbytes, op)
        st.settle(st.complete_if_done(b))


def _phase_done(st, addr, parity, op):
    b = st.barrier(addr, op)
    done = (b.phase & 1) != (int(parity) & 1)
    if done and st.tmem.mmas:
        _observe(st, int(addr))
    return done


def mbarrier_try_wait_parity(addr, parity):
    """1 once the phase of ``parity`` has completed (the current phase has the other parity), else 0
    after a short bounded wait; a poller that can never succeed is reported as EmulatorDeadlock."""
    me = current_thread()
    st = cta()
    st.unspin(me, keep_count=True)        # consecutive polls count towards "this poller is blocked"
    addr = int(addr)
    what = f"mbarrier @smem {addr:#x} phase parity {int(parity) & 1} (try_wait loop)"
    with st.lock:
        if _phase_done(st, addr, parity, "mbarrier_try_wait_parity"):
            return np.uint32(1)
    ok = st.wait_until(lambda: _phase_done(st, addr, parity, "mbarrier_try_wait_parity"), what, (addr,),
                       timeout=0.002, spin=True)
    return np.uint32(1 if ok else 0)


def mbarrier_wait_parity(addr, parity):
    st, _ = _enter()
    addr = int(addr)
    st.wait_until(lambda: _phase_done(st, addr, parity, "mbarrier_wait_parity"),
                  f"mbarrier @smem {addr:#x} phase parity {int(parity) & 1}", (addr,))


# ------------------------------------------------------------------------------ TMA
_SWZ_MASK = {0: 0, 32: 1, 64: 3, 128: 7}


def _swizzle(addr: np.ndarray, span: int) -> np.ndarray:
    """Swizzle<B,4,3> on absolute .shared byte addresses: the 16-byte chunk bits 4..(3+B) are XORed with
    bits 7..(6+B) (B = 1, 2, 3 for 32B, 64B, 128B); the pattern repeats every 256/512/1024 bytes."""
    return addr ^ (((addr >> 7) & _SWZ_MASK[span]) << 4)


def _tma_plan(spec, smem_addr, coords, op):
    """Byte addresses of a box: (global byte offsets from spec.address, in-bounds mask, smem addresses),
    each (elements, element bytes), elements in the box's row-major order (innermost dimension last)."""
    if any(e != 1 for e in spec.elem_strides):
        raise NotEmulated(f"{op}: elem_strides {spec.elem_strides} (only 1 is emulated)")
    if len(coords) != len(spec.dims):
        raise EmulatorError(f"{op}: {len(coords)} coordinates for a rank-{len(spec.dims)} tensor map")
    smem_addr = int(smem_addr)
    if smem_addr % 128:
        raise EmulatorError(f"{op}: smem {smem_addr:#x} is not 128-byte aligned (TMA requirement)")
    eb = spec.elem_bytes
    span = SWIZZLE_BYTES[spec.swizzle]
    if span and spec.box[0] * eb != span:
        raise NotEmulated(f"{op}: box[0] * element bytes = {spec.box[0] * eb} with the {spec.swizzle} "
                          f"swizzle (only rows exactly as wide as the swizzle span are emulated)")
    axes = [np.arange(int(c), int(c) + b, dtype=np.int64) for c, b in zip(coords, spec.box)]
    grids = [g.reshape(-1) for g in np.meshgrid(*axes[::-1], indexing="ij")][::-1]   # driver order
    inb = np.ones(grids[0].shape, bool)
    goff = grids[0] * eb
    for i, g in enumerate(grids):
        inb &= (g >= 0) & (g < spec.dims[i])
        if i:
            goff = goff + g * spec.strides[i - 1]
    lin = np.arange(grids[0].size, dtype=np.int64) * eb
    byte = np.arange(eb, dtype=np.int64)
    saddr = smem_addr + lin[:, None] + byte
    if span:
        saddr = _swizzle(saddr, span)
    return goff[:, None] + byte, inb, saddr, lin.size * eb


def _gmem_root(spec, root, op):
    base = root.__array_interface__["data"][0]
    view = GMEM.view(base, root.nbytes, op)
    return view, spec.address - base


def _tma_load(dst, tmap, coords, mbar, op):
    st, me = _enter()
    spec, root = lookup_tensor_map(tmap, op)
    if spec.oob_nan:
        raise NotEmulated(f"{op}: oob_nan=True (out-of-bounds NaN fill) is not emulated")
    goff, inb, saddr, nbytes = _tma_plan(spec, dst, coords, op)
    gview, delta = _gmem_root(spec, root, op)
    data = np.zeros(goff.shape, np.uint8)
    data[inb] = gview[delta + goff[inb]]
    sview = st.smem(int(dst), nbytes, op)
    with st.lock:
        sview[saddr - int(dst)] = data
        st.async_wrote(int(dst), nbytes)
    _complete_tx(st, mbar, nbytes, op)


def _tma_store(tmap, src, coords, op):
    st, me = _enter()
    spec, root = lookup_tensor_map(tmap, op)
    goff, inb, saddr, nbytes = _tma_plan(spec, src, coords, op)
    gview, delta = _gmem_root(spec, root, op)
    sview = st.smem(int(src), nbytes, op)
    st.check_async_visible(int(src), saddr - int(src), op, "the TMA store", me)
    gview[delta + goff[inb]] = sview[saddr - int(src)][inb]


def bulk_load(dst, src, nbytes, mbar):
    """cp.async.bulk global -> shared (no tensor map): nbytes from src to dst, complete_tx on mbar."""
    st, me = _enter()
    dst, src, n = int(dst), int(src), int(nbytes)
    if dst % 16 or src % 16 or n % 16 or n <= 0:
        raise EmulatorError(f"bulk_load by {thread_name(me)}: smem {dst:#x}, global {src:#x} and size "
                            f"{n} must be multiples of 16 (size > 0)")
    data = np.array(GMEM.view(src, n, "bulk_load"))
    sview = st.smem(dst, n, "bulk_load")
    with st.lock:
        sview[:] = data
        st.async_wrote(dst, n)
    _complete_tx(st, mbar, n, "bulk_load")


def tma_load_1d(dst, tmap, c0, mbar):
    _tma_load(dst, tmap, (c0,), mbar, "tma_load_1d")


def tma_load_2d(dst, tmap, c0, c1, mbar):
    _tma_load(dst, tmap, (c0, c1), mbar, "tma_load_2d")


def tma_load_2d_hint(dst, tmap, c0, c1, mbar, policy):
    _tma_load(dst, tmap, (c0, c1), mbar, "tma_load_2d_hint")


def tma_load_3d(dst, tmap, c0, c1, c2, mbar):
    _tma_load(dst, tmap, (c0, c1, c2), mbar, "tma_load_3d")


def tma_load_3d_hint(dst, tmap, c0, c1, c2, mbar, policy):
    _tma_load(dst, tmap, (c0, c1, c2), mbar, "tma_load_3d_hint")


def tma_load_4d(dst, tmap, c0, c1, c2, c3, mbar):
    _tma_load(dst, tmap, (c0, c1, c2, c3), mbar, "tma_load_4d")


def tma_load_5d(dst, tmap, c0, c1, c2, c3, c4, mbar):
    _tma_load(dst, tmap, (c0, c1, c2, c3, c4), mbar, "tma_load_5d")


def tma_store_1d(tmap, src, c0):
    _tma_store(tmap, src, (c0,), "tma_store_1d")


def tma_store_2d(tmap, src, c0, c1):
    _tma_store(tmap, src, (c0, c1), "tma_store_2d")


def tma_store_3d(tmap, src, c0, c1, c2):
    _tma_store(tmap, src, (c0, c1, c2), "tma_store_3d")


def tma_store_4d(tmap, src, c0, c1, c2, c3):
    _tma_store(tmap, src, (c0, c1, c2, c3), "tma_store_4d")


def tma_store_5d(tmap, src, c0, c1, c2, c3, c4):
    _tma_store(tmap, src, (c0, c1, c2, c3, c4), "tma_store_5d")


def _noop(*_args):
    _enter()


tma_store_commit_group = tma_store_wait_group_0 = _noop          # stores complete at issue
tma_store_wait_group_read_0 = tma_store_wait_group_read_1 = _noop
prefetch_tensormap = fence_proxy_tensormap_acquire_gpu = fence_proxy_tensormap_acquire_sys = _noop
fence_proxy_tensormap_release_gpu = _noop
# PDL: the simulator runs launches one after another, each to completion
griddepcontrol_wait = griddepcontrol_launch_dependents = _noop


def fence_proxy_async():
    """fence.proxy.async: the CTA's generic-proxy smem writes so far become visible to TMA / MMA."""
    st, _ = _enter()
    st.fence_proxy_async()


fence_proxy_async_shared_cta = fence_proxy_async
setmaxnreg_inc_232 = setmaxnreg_inc_240 = setmaxnreg_dec_40 = setmaxnreg_dec_24 = _noop
# wgmma completes at issue; what is tracked (per thread: CTAState.wgmma_groups) is the protocol of
# PTX ISA 9.1 §9.7.15.7-9 (wgmma.fence / commit_group / wait_group): a wgmma with no wgmma_fence
# before it in the thread is flagged at issue; wgmmas never covered by a wait_group (uncommitted,
# or committed and not waited) when the thread exits are flagged at block end - their accumulators
# were read (or dropped) before the hardware had written them. Reads of accumulator registers
# between commit and wait are NOT seen (registers are Python values here).
def _wg_rec(st, me):
    rec = st.wgmma_groups.get(me.thread_id)
    if rec is None:
        rec = st.wgmma_groups[me.thread_id] = [False, 0, []]    # fenced, open wgmmas, committed groups
    return rec


def wgmma_fence():
    st, me = _enter()
    _wg_rec(st, me)[0] = True


def wgmma_commit_group():
    st, me = _enter()
    rec = _wg_rec(st, me)
    rec[2].append(rec[1])
    rec[1] = 0


def _wgmma_wait(n):
    def wait():
        st, me = _enter()
        rec = _wg_rec(st, me)
        del rec[2][:max(0, len(rec[2]) - n)]
    wait.__name__ = wait.__qualname__ = f"wgmma_wait_group_{n}"
    wait.__doc__ = (f"wgmma.wait_group {n}: at most {n} of this thread's committed groups stay pending "
                    f"(emulated: results exist already; the bookkeeping feeds the block-end check).")
    return wait


wgmma_wait_group_0, wgmma_wait_group_1, wgmma_wait_group_2, wgmma_wait_group_3 = (
    _wgmma_wait(n) for n in range(4))


def l2_policy_evict_first():
    return np.uint64(0x12F0000000000000)        # opaque; hints have no effect in the emulator


def l2_policy_evict_last():
    return np.uint64(0x14F0000000000000)


# ------------------------------------------------------------------------------ sync
def elect_one_sync(mask):
    """1 in the lowest lane named in ``mask`` (every named lane is assumed active), else 0."""
    _, me = _enter()
    mask = _u32(mask)
    if not mask:
        raise EmulatorError(f"elect_one_sync by {thread_name(me)}: empty member mask")
    lane = me.thread_id % 32
    return np.uint32(1 if (mask & -mask) == 1 << lane else 0)


def _named_barrier(bar_id, count, wait, op):
    """bar.sync / bar.arrive with a thread count (PTX §9.7.13.1): ``count`` threads (a multiple of 32)
    arrive per phase; sync waits for the phase to complete, arrive does not. The whole-CTA sync form
    is the simulator's own syncthreads (the same hardware barrier as __syncthreads for id 0)."""
    st, me = _enter()
    bar_id, n = int(bar_id), int(count)
    if not 0 <= bar_id < 16 or n <= 0 or n % 32:
        raise EmulatorError(f"{op}({bar_id}, {n}) by {thread_name(me)}: barrier id 0..15 and a thread count "
                            f"that is a positive multiple of 32")
    if wait and n == _nthreads(me):
        me.syncthreads()
        return
    f = sys._getframe(2)                  # the kernel line of this bar.sync / bar.arrive
    site = (f.f_code.co_filename, f.f_lineno)
    warp = me.thread_id // 32
    with st.lock:
        rec = st.wg.setdefault(("named", bar_id), {"gen": 0, "arrived": 0, "count": n, "sites": {}, "seq": {}})
        if rec["arrived"] and rec["count"] != n:
            raise EmulatorError(f"{op}({bar_id}, {n}) by {thread_name(me)}: this phase of named barrier {bar_id} "
                                f"was opened with count {rec['count']}; every participant must pass the same count")
        # .aligned: a warp arrives as a whole, at one instruction. A warp may arrive more than once in
        # a phase (bar.arrive then bar.sync: the ping-pong opening), so the k-th arrival of each lane
        # in this phase must be at the instruction of the k-th arrival of the warp's other lanes.
        k = rec["seq"].get(me.thread_id, 0)
        sites = rec["sites"].setdefault(warp, [])
        if k < len(sites) and sites[k] != (site, op):
            other = sites[k]
            raise EmulatorError(
                f"{op}({bar_id}, {n}) by {thread_name(me)} at {site[0]}:{site[1]}: other lanes of warp {warp} "
                f"arrived in this phase of named barrier {bar_id} by {other[1]} at {other[0][0]}:{other[0][1]} "
                f"(arrival {k + 1} of each lane in this phase). bar.sync / bar.arrive are .aligned: every lane "
                f"of a warp must execute the same barrier instruction (reconverge the warp before it)")
        if k == len(sites):
            sites.append((site, op))
        rec["seq"][me.thread_id] = k + 1
        rec["count"] = n
        gen = rec["gen"]
        rec["arrived"] += 1
        done = rec["arrived"] == n
        if done:
            rec["arrived"] = 0
            rec["gen"] += 1
            rec["sites"], rec["seq"] = {}, {}
        st.settle(done)
    if wait:
        st.wait_until(lambda: rec["gen"] != gen, f"named barrier {bar_id} ({n} threads; "
                                                  f"{rec['arrived']} arrived so far)")


def named_barrier_sync(bar_id, count):
    _named_barrier(bar_id, count, True, "named_barrier_sync")


def named_barrier_arrive(bar_id, count):
    _named_barrier(bar_id, count, False, "named_barrier_arrive")


# ------------------------------------------------------------------------------ collectives
def _collective(st, me, group, size, index, key, payload, compute, op, who):
    """Rendezvous of ``size`` threads (a warp, a warpgroup) at a ``.sync.aligned`` op: each
    contributes (key, payload); the last to arrive checks the keys agree and runs
    ``compute(key, {index: payload})``, whose result (indexable by member index, or None) every
    member receives. An exception in ``compute`` is raised in every member."""
    with st.lock:
        rec = st.wg.setdefault(group, {"gen": 0, "arrived": {}, "results": {}})
        gen = rec["gen"]
        rec["arrived"][index] = (key, payload)
        done = len(rec["arrived"]) == size
        if done:
            arrived, rec["arrived"] = rec["arrived"], {}
            rec["gen"] += 1
            try:
                keys = {}
                for i, (k, _) in sorted(arrived.items()):
                    keys.setdefault(k, i)
                if len(keys) != 1:
                    raise EmulatorError(f"{op}: the threads of {who} disagree on operands that must be "
                                        f"uniform: " + "; ".join(f"member {i}: {k}" for k, i in keys.items()))
                res = compute(next(iter(keys)), {i: p for i, (_, p) in arrived.items()})
                rec["results"][gen] = [res, size]
            except Exception as e:        # noqa: BLE001 - hand the error to every participant
                rec["results"][gen] = [e, size]
        st.settle(done)
    st.wait_until(lambda: gen in rec["results"], f"the other threads of {who} at {op} (collective)")
    with st.lock:
        slot = rec["results"][gen]
        slot[1] -= 1
        if slot[1] == 0:
            del rec["results"][gen]
    if isinstance(slot[0], Exception):
        raise slot[0]
    return None if slot[0] is None else slot[0][index]


def _nthreads(me) -> int:
    return int(np.prod(me._manager._block_dim))


# ------------------------------------------------------------------------------ smem operands
def _read_operand(st, desc, rows, kdim, dtype, major, which, op, kind, me):
    """float64 (rows x kdim) operand read through a wgmma ("wgmma-smem") or tcgen05 ("umma-smem")
    shared-memory descriptor, per the canonical layout of its swizzle and majorness
    (``tmem.operand_addresses``); the bytes must be visible to the async proxy."""
    desc = int(desc)
    try:
        f = explain(desc, kind).fields
    except ValueError as e:
        raise EmulatorError(f"{op}: {which} descriptor: {e}") from None
    if f["base_offset"]:
        raise NotEmulated(f"{op}: {which} descriptor field base_offset={f['base_offset']} (only 0 is emulated: "
                          f"align swizzled tiles to the pattern's repeat)")
    if f.get("lbo_mode", "relative") != "relative" or f["swizzle"] not in T.SPAN:
        raise NotEmulated(f"{op}: {which} descriptor swizzle={f['swizzle']!r} lbo_mode={f.get('lbo_mode')!r} "
                          f"(emulated: none, 32B, 64B, 128B with relative LBO)")
    if dtype == "e2m1":                  # two per byte, lower k in the low nibble (mxf4 kinds, K-major)
        if major != "K":
            raise EmulatorError(f"{op}: packed E2M1 operands are K-major only (no transpose for mxf4 kinds)")
        raw = _read_operand(st, desc, rows, kdim // 2, "u8", major, which, op, kind, me).astype(np.int64)
        codes = np.stack([raw & 0xF, raw >> 4], axis=-1).reshape(rows, kdim)
        return T.decode(codes, "e2m1")
    eb = T.ELEM_BITS[dtype] // 8
    try:
        addr = T.operand_addresses(f["start_addr"], f["lbo"], f["sbo"], f["swizzle"], rows, kdim, eb, major)
    except ValueError as e:
        raise EmulatorError(f"{op}: {which} descriptor {desc:#x}: {e}") from None
    lo, hi = int(addr.min()), int(addr.max()) + eb
    view = st.smem(lo, hi - lo, f"{op} ({which} operand, descriptor {desc:#x}, {major}-major, swizzle "
                                f"{f['swizzle']}, LBO {f['lbo']}, SBO {f['sbo']})")
    idx = addr - lo
    allidx = idx if eb == 1 else np.stack([idx + i for i in range(eb)])
    st.check_async_visible(lo, allidx, op, f"the {which} operand (descriptor {desc:#x})", me)
    raw = view[idx].astype(np.uint32)
    for i in range(1, eb):
        raw |= view[idx + i].astype(np.uint32) << (8 * i)
    return raw.astype(np.float64) if dtype == "u8" else T.decode(raw, dtype)


# ------------------------------------------------------------------------------ wgmma
@functools.lru_cache(maxsize=None)
def _acc_map(n: int):
    """(rows, cols) int arrays [128, n/2]: accumulator register i of thread t holds D[rows][cols]."""
    rc = np.array([[wgmma_acc_coord(t, i, n) for i in range(n // 2)] for t in range(128)])
    return rc[..., 0], rc[..., 1]


_WGMMA_RE = re.compile(r"^wgmma_m64n(\d+)k(\d+)_f32_(bf16|f16|e4m3|e5m2)_(ss|rs)(?:_tb)?$")


def _wgmma_imms(body: str) -> list:
    """The immediates after the scale-d predicate (imm-scale-a, imm-scale-b[, imm-trans-a], imm-trans-b)."""
    m = re.search(r"\bp,\s*([-\d,\s]+);", body)
    return [int(x) for x in m.group(1).split(",")] if m else [1, 1]


def _wgmma(cfg, acc, a, b_desc, scale_d):
    n, kdim, dtype, a_regs, sa, sb, ta, tb, op = cfg
    st, me = _enter()
    wg, t = divmod(me.thread_id, 128)
    if _nthreads(me) < 128 * (wg + 1):
        raise EmulatorError(f"{op} by {thread_name(me)}: warpgroup {wg} needs all 128 threads "
                            f"{128 * wg}..{128 * wg + 127}, the block has {_nthreads(me)}")
    if len(acc) != n // 2:
        raise EmulatorError(f"{op}: {len(acc)} accumulators, expected {n // 2}")
    key = (None if a_regs else f"a_desc {int(a):#x}", f"b_desc {int(b_desc):#x}",
           f"accumulate {1 if int(scale_d) else 0}")
    payload = (np.asarray(acc, np.float32), a if a_regs else None)
    rec = _wg_rec(st, me)
    if not rec[0]:
        raise EmulatorError(f"{op} by {thread_name(me)}: no wgmma_fence before this thread's first wgmma "
                            f"(PTX ISA 9.1 §9.7.15.7: wgmma.fence is required before the first "
                            f"wgmma.mma_async and between a register access and a wgmma using those "
                            f"registers). Check: ops.wgmma_fence() before the MMA loop")
    rec[1] += 1

    def compute(key, arrived):
        if a_regs:
            regs = np.array([arrived[i][1] for i in range(128)], np.uint64)      # [128, 4]
            bits = T.ELEM_BITS[dtype]
            epr = 32 // bits
            codes = (regs[:, :, None] >> (bits * np.arange(epr, dtype=np.uint64))) & ((1 << bits) - 1)
            rows, ks = T.wgmma_a_map(kdim, bits)
            amat = np.zeros((64, kdim))
            amat[rows, ks] = T.decode(codes, dtype)
        else:
            amat = _read_operand(st, int(a), 64, kdim, dtype, "MN" if ta else "K", "A", op, "wgmma-smem", None)
        bmat = _read_operand(st, int(b_desc), n, kdim, dtype, "MN" if tb else "K", "B", op, "wgmma-smem", None)
        d = (sa * sb) * (amat @ bmat.T)
        rows, cols = _acc_map(n)
        if key[2].endswith("1"):
            c = np.zeros((64, n), np.float64)
            c[rows, cols] = np.stack([arrived[i][0] for i in range(128)])
            d = d + c
        d32 = d.astype(np.float32)
        return [tuple(np.float32(v) for v in d32[rows[i], cols[i]]) for i in range(128)]

    return _collective(st, me, ("wg", wg), 128, t, key, payload, compute, op, f"warpgroup {wg}")


def _make_wgmma(name, body):
    n, kdim, dtype, src = _WGMMA_RE.match(name).groups()
    n, kdim, a_regs = int(n), int(kdim), src == "rs"
    imms = _wgmma_imms(body)
    sa, sb = imms[0], imms[1]
    ta = imms[2] if (not a_regs and len(imms) == 4) else 0
    tb = imms[-1] if len(imms) >= 3 else 0
    cfg = (n, kdim, dtype, a_regs, sa, sb, ta, tb, name)
    nacc = n // 2

    def wgmma(*args):
        acc = args[:nacc]
        if a_regs:
            a, rest = tuple(_u32(x) for x in args[nacc:nacc + 4]), args[nacc + 4:]
        else:
            a, rest = int(args[nacc]), args[nacc + 1:]
        return _wgmma(cfg, acc, a, rest[0], rest[1])
    wgmma.__name__ = wgmma.__qualname__ = name
    wgmma.__doc__ = (f"Emulated wgmma.mma_async m64n{n}k{kdim}.f32.{dtype} (A from "
                     f"{'registers' if a_regs else 'smem'}, A {'MN' if ta else 'K'}-major, B "
                     f"{'MN' if tb else 'K'}-major, scale-a {sa}, scale-b {sb}): the 128 threads rendezvous; "
                     f"D = A*B (+D) summed in float64, rounded once to float32; registers per "
                     f"layouts.wgmma_acc_coord.")
    return wgmma


def _wgmma_names():
    """Every wgmma binding of hw.ops (with its PTX body, for the immediates), plus the m64nNk16 bf16
    SS family for every N (kernels may use N the bindings do not generate yet)."""
    from ..hw import ops as hw_ops
    out = {name: sn.body for name, sn in getattr(hw_ops, "WGMMA", {}).items()}
    for n in range(8, 257, 8):
        for dt, k in (("bf16", 16), ("e4m3", 32)):
            for src in ("ss", "rs"):
                nm = f"wgmma_m64n{n}k{k}_f32_{dt}_{src}"
                if nm not in out:
                    out[nm] = hw_ops.wgmma_snippet(n, dt, "smem" if src == "ss" else "regs").body
    return out


for _name, _body in _wgmma_names().items():
    if _WGMMA_RE.match(_name):
        globals()[_name] = _make_wgmma(_name, _body)


# ------------------------------------------------------------------------------ tcgen05 / TMEM
def _taddr(x):
    x = _u32(x)
    return x >> 16, x & 0xFFFF


def _warp_collective(st, me, op, key, compute):
    warp, lane = divmod(me.thread_id, 32)
    if _nthreads(me) < 32 * (warp + 1):
        raise EmulatorError(f"{op} by {thread_name(me)}: a .sync.aligned tcgen05 op needs the whole warp "
                            f"{warp} (threads {32 * warp}..{32 * warp + 31}); the block has {_nthreads(me)}")
    return _collective(st, me, ("warp", warp), 32, lane, key, None, compute, op, f"warp {warp}")


def tcgen05_alloc(dst, ncols):
    """tcgen05.alloc.cta_group::1 (PTX §9.7.16.7.1): the whole warp; nCols a power of 2 in [32, 512];
    the TMEM address (lane 0, first column) is written to shared memory at ``dst``. An allocation
    that cannot fit (it would block until another warp deallocates) is reported at once."""
    st, me = _enter()
    warp = me.thread_id // 32
    op = "tcgen05_alloc"

    def compute(key, _):
        dst, n = key
        tm = st.tmem
        if tm.relinquished:
            raise EmulatorError(f"{op} by warp {warp}: this CTA ran tcgen05_relinquish_alloc_permit; it may "
                                f"not allocate again")
        if n < 32 or n > 512 or n & (n - 1):
            raise EmulatorError(f"{op} by warp {warp}: nCols={n}; it must be a power of 2 in [32, 512]")
        if dst % 4:
            raise EmulatorError(f"{op} by warp {warp}: dst smem {dst:#x} is not 4-byte aligned")
        used = np.zeros(512, bool)
        for c, (k, _w) in tm.allocs.items():
            used[c:c + k] = True
        for c in range(0, 513 - n, 32):
            if not used[c:c + n].any():
                break
        else:
            raise EmulatorDeadlock(f"{op} by warp {warp}: {n} columns do not fit beside the live allocations "
                                   + ", ".join(f"{c}..{c + k - 1} (warp {w})" for c, (k, w) in tm.allocs.items())
                                   + "; the alloc would block until they are freed. Check the column budget "
                                     "(512 per CTA, shared by co-resident CTAs on hardware)")
        tm.allocs[c] = (n, warp)
        if tm.region_base is None:
            tm.region_base = c
        st.smem(dst, 4, op).view(np.uint32)[0] = c
        st.changed()
        return None
    _warp_collective(st, me, op, (int(dst), int(ncols)), compute)


def tcgen05_dealloc(taddr, ncols):
    """tcgen05.dealloc: the whole warp, the address alloc returned and the same column count; the
    columns' contents become 'never written' again."""
    st, me = _enter()
    warp = me.thread_id // 32
    op = "tcgen05_dealloc"

    def compute(key, _):
        addr, n = key
        lane, col = _taddr(addr)
        tm = st.tmem
        got = tm.allocs.get(col)
        if lane or got is None or got[0] != n:
            live = ", ".join(f"col {c} x {k}" for c, (k, _w) in tm.allocs.items()) or "none"
            raise EmulatorError(f"{op} by warp {warp}: TMEM address {addr:#x} with {n} columns is not a live "
                                f"allocation (live: {live}); pass the address and nCols alloc used")
        del tm.allocs[col]
        for a in (tm.tag, tm.pending, tm.readby):
            a[:, col:col + n] = 0
        st.changed()
        return None
    _warp_collective(st, me, op, (_u32(taddr), int(ncols)), compute)


def tcgen05_relinquish_alloc_permit():
    st, _ = _enter()
    st.tmem.relinquished = True


def _observe(st, addr):
    """A thread saw a phase of the mbarrier at ``addr`` complete: MMAs whose commit arrived in a phase
    that has completed are now known finished (their TMEM results may be read)."""
    tm = st.tmem
    b = st.barriers.get(addr)
    done = [i for i, r in tm.mmas.items() if r["bar"] == addr and b is not None and b.phase > r["phase"]]
    if done:
        tm.pending[np.isin(tm.pending, done)] = 0
        for i in done:
            del tm.mmas[i]


def tcgen05_commit(mbar):
    """tcgen05.commit.mbarrier::arrive::one: the MMAs this thread issued since its last commit are
    tracked by one arrive on ``mbar`` (emulated: they are complete, so it arrives now); their TMEM
    results count as readable once a thread has waited for that phase."""
    st, me = _enter()
    addr = int(mbar)
    with st.lock:
        b = st.barrier(addr, "tcgen05_commit")
        ids = st.tmem.uncommitted.pop(me.thread_id, [])
        for i in ids:
            st.tmem.mmas[i].update(bar=addr, phase=b.phase)
        b.log(f"tcgen05_commit by t{me.thread_id} ({len(ids)} mma)")
        _arrive(st, me, b, "tcgen05_commit")


def _noop_sync(*_args):
    _enter()


tcgen05_wait_ld = tcgen05_wait_st = _noop_sync                  # ld/st complete at issue
tcgen05_fence_before_thread_sync = tcgen05_fence_after_thread_sync = _noop_sync

_MMA_K = {"f16": 16, "f8f6f4": 32, "mxf8f6f4": 32, "mxf4": 64, "mxf4nvf4": 64}


def _tmem_cells_check(st, lanes, cols, op, who, what, need_written=True):
    """Allocated, written (``need_written``) and no un-waited MMA result among TMEM cells
    (lanes x cols, broadcastable int arrays)."""
    tm = st.tmem
    c0, c1 = int(np.min(cols)), int(np.max(cols)) + 1
    if c1 > 512 or not tm.allocated(c0, c1):
        live = ", ".join(f"{c}..{c + k - 1}" for c, (k, _w) in sorted(tm.allocs.items())) or "none"
        raise EmulatorError(f"{op} by {who}: {what} uses TMEM columns {c0}..{c1 - 1}, not inside one live "
                            f"allocation (allocated: {live}). Check the column offsets and the alloc size")
    if need_written:
        tags = tm.tag[lanes, cols]
        bad = np.argwhere(tags == 0)
        if bad.size:
            ln, cl = np.broadcast_to(lanes, tags.shape)[tuple(bad[0])], np.broadcast_to(cols, tags.shape)[tuple(bad[0])]
            raise EmulatorError(f"{op} by {who}: {what} reads TMEM lane {ln} column {cl} ({bad.shape[0]} cell(s) "
                                f"in all), never written since alloc. Check: the first MMA of a K loop passes "
                                f"accumulate=0; the column plan matches what the MMA / tcgen05.st wrote (D of an "
                                f"M x N MMA is N 32-bit columns, not packed)")
        pend = tm.pending[lanes, cols]
        bad = np.argwhere(pend != 0)
        if bad.size:
            i = int(pend[tuple(bad[0])])
            rec = tm.mmas.get(i, {})
            ln, cl = np.broadcast_to(lanes, pend.shape)[tuple(bad[0])], np.broadcast_to(cols, pend.shape)[tuple(bad[0])]
            how = ("was never committed (tcgen05_commit)" if rec.get("bar") is None else
                   f"was committed to the mbarrier @smem {rec['bar']:#x} (phase {rec['phase']}) but no thread "
                   f"has waited for that phase yet")
            raise EmulatorError(f"{op} by {who}: {what} reads TMEM lane {ln} column {cl} written by "
                                f"{rec.get('desc', 'an MMA')}, which {how}. Check: tcgen05_commit(mbar) after the "
                                f"MMA, mbarrier wait on it, tcgen05_fence_after_thread_sync, then tcgen05.ld")


def _tcgen05_mma(kind, bs, d, a, b_desc, idesc, accumulate, a_tmem, sfa=None, sfb=None, op="", vec=None):
    st, me = _enter()
    who = thread_name(me)
    idesc = _u32(idesc)
    try:
        f = explain(idesc, "umma-idesc-bs" if bs else "umma-idesc", mma_kind=kind, cta_group=1,
                    **({} if bs else {"ws": False})).fields
    except ValueError as e:
        raise EmulatorError(f"{op} by {who}: instruction descriptor {idesc:#010x} is not valid for kind::{kind} "
                            f"cta_group::1: {e}") from None
    M, N, K = f["M"], f["N"], _MMA_K[kind]
    if f.get("sparse") or f.get("max_shift"):
        raise NotEmulated(f"{op}: sparse / .ws instruction descriptors are not emulated")
    at, bt = f["a_type"], f["b_type"]
    for nm, ty in (("A", at), ("B", bt)):
        if ty not in T.ELEM_BITS or (ty == "e2m1" and kind == "f8f6f4") or (ty == "e2m1") != kind.startswith("mxf4"):
            raise NotEmulated(f"{op}: {nm} type {ty} (emulated: bf16, f16, e4m3, e5m2; e2m1 packed for mxf4 kinds)")
    if a_tmem and f["a_major"] != "K":
        raise EmulatorError(f"{op} by {who}: A from TMEM is always K-major, the descriptor says a_major=MN")
    tm = st.tmem
    d_lane, d_col = _taddr(d)
    try:
        lanes = T.datapath_lanes(M, d_lane)
    except ValueError as e:
        raise EmulatorError(f"{op} by {who}: D address {_u32(d):#x}: {e}") from None
    cols = d_col + np.arange(N)
    with st.lock:
        base = tm.region_base or 0
        try:
            reg = T.region_of(d_col, d_col + N, base, op)
        except ValueError as e:
            raise EmulatorError(f"{op} by {who}: {e}") from None
        _tmem_cells_check(st, lanes[:, None], cols[None, :], op, who, f"D (M={M}, N={N})", need_written=False)
        if a_tmem:
            a_lane, a_col = _taddr(a)
            if a_lane != d_lane:
                raise EmulatorError(f"{op} by {who}: A in TMEM at lane {a_lane}, D at lane {d_lane}: A and D must "
                                    f"use the same lane alignment (PTX §9.7.16.10.5; M=64 half-datapath layouts)")
            try:
                alanes = T.datapath_lanes(M, a_lane)
            except ValueError as e:
                raise EmulatorError(f"{op} by {who}: A address {_u32(a):#x}: {e}") from None
            bits = T.ELEM_BITS[at]
            per = 32 // bits
            k = np.arange(K)
            acols = a_col + k // per
            _tmem_cells_check(st, alanes[:, None], acols[None, :], op, who, f"A from TMEM ({at}, M={M}, K={K})")
            raw = (tm.data[alanes[:, None], acols[None, :]] >> (bits * (k % per)).astype(np.uint32)) & ((1 << bits) - 1)
            amat = T.decode(raw, at)
        else:
            amat = _read_operand(st, a, M, K, at, f["a_major"], "A", op, "umma-smem", me)
        bmat = _read_operand(st, b_desc, N, K, bt, f["b_major"], "B", op, "umma-smem", me)
        if f.get("negate_a"):
            amat = -amat
        if f.get("negate_b"):
            bmat = -bmat
        if bs:
            amat, bmat = _apply_block_scales(st, kind, f, sfa, sfb, amat, bmat, M, N, K, op, who, vec)
        prod = amat @ bmat.T
        dtag_desc = (f"the tcgen05.mma accumulator D @ TMEM lane {d_lane} column {d_col} (M={M}, N={N}"
                     + (f", region {reg}" if reg else "") + ")")
        mytag = tm.intern(dtag_desc, mma=True)
        f16 = f.get("d_type") == "f16"
        if int(accumulate):
            tags = tm.tag[lanes[:, None], cols[None, :]]
            bad = np.argwhere(tags != mytag)
            if bad.size:
                r, c = bad[0]
                other = int(tags[r, c])
                if other == 0:
                    raise EmulatorError(
                        f"{op} by {who}: accumulate=1 but D row {r} column {c} (TMEM lane {lanes[r]}, column "
                        f"{cols[c]}) was never written: the MMA adds to garbage ({bad.shape[0]} cell(s)). Check: "
                        f"the first MMA into this accumulator (first K step, first PV) must pass accumulate=0")
                raise EmulatorError(
                    f"{op} by {who}: accumulate=1 into {dtag_desc}, but D row {r} column {c} (TMEM lane "
                    f"{lanes[r]}, column {cols[c]}; {bad.shape[0]} cell(s) in all) was last written by "
                    f"{tm.tags[other]}: two live TMEM regions overlap. Check the column plan (e.g. P or S "
                    f"placed over columns O still owns)")
            old = tm.data[lanes[:, None], cols[None, :]]
            prod = prod + (old.astype(np.uint16).view(np.float16) if f16 else old.view(np.float32)).astype(np.float64)
        out = (prod.astype(np.float16).view(np.uint16).astype(np.uint32) if f16
               else prod.astype(np.float32).view(np.uint32))
        mid = tm.next_mma
        tm.next_mma += 1
        tm.data[lanes[:, None], cols[None, :]] = out
        tm.tag[lanes[:, None], cols[None, :]] = mytag
        tm.pending[lanes[:, None], cols[None, :]] = mid
        tm.readby[lanes[:, None], cols[None, :]] = 0
        tm.mmas[mid] = {"bar": None, "phase": None, "desc": f"{op} #{mid} by {who} into {dtag_desc}"}
        tm.uncommitted.setdefault(me.thread_id, []).append(mid)
        st.changed()


_SCALE_VEC = {"mxf8f6f4": {"1x": (1, 32)}, "mxf4nvf4": {"2x": (2, 32), "4x": (4, 16)},
              "mxf4": {"2x": (2, 32)}}


def _read_scales(st, taddr, rows, nsf, sf_id, scale_type, which, op, who):
    """float64 [rows, nsf] scale factors from TMEM (ptx-facts §2.6, CUTLASS tmem_sf_frg): row
    r = r0 + 32 r1 sits in lane r0 of every 32-lane quadrant (duplicated), column base + r1, bytes
    sf_id .. sf_id + nsf - 1 of the word (1X: byte sf_id; 2X: half-word at sf_id; 4X: all 4)."""
    lane0, col0 = _taddr(taddr)
    r = np.arange(rows)
    cols = col0 + r // 32
    quads = np.arange(4)[:, None] * 32 + lane0 + (r % 32)[None, :]          # [4, rows]
    _tmem_cells_check(st, quads, cols[None, :], op, who, f"the {which} scale factors")
    words = st.tmem.data[quads, cols[None, :]]
    if not (words == words[0]).all():
        q, i = [int(x[0]) for x in np.nonzero(words != words[0])]
        raise EmulatorError(f"{op} by {who}: {which} scale factors of row {i} differ between lane quadrant 0 and "
                            f"{q} (TMEM lanes {int(quads[0, i])} / {int(quads[q, i])}, column {int(cols[i])}): "
                            f"they must "
                            f"be duplicated to all four 32-lane partitions (tcgen05_cp_32x128b_warpx4 does that)")
    byte = (words[0][:, None] >> (8 * (sf_id + np.arange(nsf))).astype(np.uint32)) & 0xFF
    return T.ue8m0(byte) if scale_type == "ue8m0" else T.ue4m3(byte)


def _apply_block_scales(st, kind, f, sfa, sfb, amat, bmat, M, N, K, op, who, vec):
    nsf, block = vec
    if nsf * block != K:
        raise EmulatorError(f"{op}: scale_vec {nsf}X with K={K} (block {block}) does not tile K")
    if kind == "mxf4nvf4" and f["scale_type"] == "ue4m3" and nsf != 4:
        raise EmulatorError(f"{op} by {who}: UE4M3 scales need scale_vec::4X (block16) (PTX Table 57)")
    if nsf == 4 and (f["a_sf_id"] or f["b_sf_id"]):
        raise EmulatorError(f"{op} by {who}: scale_vec::4X needs both scale-factor ids 0, got A {f['a_sf_id']}, "
                            f"B {f['b_sf_id']}")
    sa = _read_scales(st, sfa, M, nsf, f["a_sf_id"], f["scale_type"], "A", op, who)
    sb = _read_scales(st, sfb, N, nsf, f["b_sf_id"], f["scale_type"], "B", op, who)
    k = np.arange(K) // block
    return amat * sa[:, k], bmat * sb[:, k]


def _make_mma(kind, src, bs=False, vec_name=None):
    name = f"tcgen05_mma_{kind}_{vec_name + '_' if vec_name and kind != 'mxf8f6f4' else ''}{src}"
    if bs:
        vec = _SCALE_VEC[kind][vec_name]

        def mma(d, a, b_desc, idesc, sfa, sfb, accumulate):
            _tcgen05_mma(kind, True, d, a, b_desc, idesc, accumulate, src == "ts", sfa, sfb, op=name, vec=vec)
    else:
        def mma(d, a, b_desc, idesc, accumulate):
            _tcgen05_mma(kind, False, d, a, b_desc, idesc, accumulate, src == "ts", op=name)
    mma.__name__ = mma.__qualname__ = name
    mma.__doc__ = (f"Emulated tcgen05.mma.cta_group::1.kind::{kind} "
                   f"({'A from TMEM' if src == 'ts' else 'A from smem'}):"
                   f" decodes the instruction and smem descriptors, computes in float64 and rounds D once, "
                   f"writes D per the data-path layout (M=128: lane m; M=64: layout F). One thread issues.")
    return mma


for _kind in ("f16", "f8f6f4"):
    for _src in ("ss", "ts"):
        globals()[f"tcgen05_mma_{_kind}_{_src}"] = _make_mma(_kind, _src)
for _kind, _vecs in _SCALE_VEC.items():
    for _v in _vecs:
        for _src in ("ss", "ts"):
            _f = _make_mma(_kind, _src, True, _v)
            globals()[_f.__name__] = _f


# tcgen05.cp shapes: (lanes, bytes per lane, broadcast to all 4 quadrants)
_CP_SHAPES = {"128x256b": (128, 32, False), "4x256b": (4, 32, False), "128x128b": (128, 16, False),
              "32x128b_warpx4": (32, 16, True)}


def _make_cp(shape):
    name = f"tcgen05_cp_{shape}"
    nl, nb, bcast = _CP_SHAPES[shape]

    def cp(taddr, sdesc):
        """Emulated tcgen05.cp (PTX §9.7.16.9): one thread copies a lanes x bytes matrix from shared
        memory (read through the descriptor as a K-major operand of 1-byte elements: row = TMEM lane,
        16-byte chunks at LBO, 8-row groups at SBO - [inferred from the canonical layouts]) into TMEM
        at taddr, 4 bytes per column; .warpx4 writes the 32 rows into all four lane quadrants."""
        st, me = _enter()
        who = thread_name(me)
        lane0, col0 = _taddr(taddr)
        raw = _read_operand(st, sdesc, nl, nb, "u8", "K", "source", name, "umma-smem", me)
        words = raw.astype(np.uint32).reshape(nl, nb // 4, 4)
        words = words[..., 0] | words[..., 1] << 8 | words[..., 2] << 16 | words[..., 3] << 24
        lanes = lane0 + np.arange(nl)
        if bcast:
            lanes = (np.arange(4)[:, None] * 32 + lanes[None, :]).reshape(-1)
            words = np.tile(words, (4, 1))
        if lanes.max() >= 128:
            raise EmulatorError(f"{name} by {who}: lanes {lane0}..{int(lanes.max())} run past lane 127")
        cols = col0 + np.arange(nb // 4)
        tm = st.tmem
        with st.lock:
            _tmem_cells_check(st, lanes[:, None], cols[None, :], name, who, "the copy", need_written=False)
            try:
                reg = T.region_of(col0, col0 + nb // 4, tm.region_base or 0, name)
            except ValueError as e:
                raise EmulatorError(f"{name} by {who}: {e}") from None
            tag = tm.intern(f"{name} by {who} at TMEM lane {lane0} column {col0}" + (f" (region {reg})" if reg else ""))
            tm.data[lanes[:, None], cols[None, :]] = words
            tm.tag[lanes[:, None], cols[None, :]] = tag
            tm.readby[lanes[:, None], cols[None, :]] = 0
            st.changed()
    cp.__name__ = cp.__qualname__ = name
    return cp


for _shape in _CP_SHAPES:
    globals()[f"tcgen05_cp_{_shape}"] = _make_cp(_shape)


def _tmem_access(shape, num, taddr, op):
    st, me = _enter()
    warp, t = divmod(me.thread_id, 32)
    lane0, col0 = _taddr(taddr)
    q = warp % 4
    nl = T.shape_lanes(shape)
    if not (32 * q <= lane0 and lane0 + nl <= 32 * q + 32):
        raise EmulatorError(f"{op} by {thread_name(me)}: TMEM address {_u32(taddr):#x} (lane {lane0}, column "
                            f"{col0}) covers lanes {lane0}..{lane0 + nl - 1}, but warp {warp} (warp % 4 = {q}) "
                            f"may reach lanes {32 * q}..{32 * q + 31} only. Check: lane field = "
                            f"(32 * (warp % 4)) << 16")
    lo, co = T.ld_map(shape, num)
    return st, me, warp, lane0 + lo[t], col0 + co[t], (lane0, col0, int(co.max()) + 1)


def _make_ld(shape, num):
    name = f"tcgen05_ld_{shape}_x{num}"

    def ld(taddr):
        st, me, warp, L, C, _ = _tmem_access(shape, num, taddr, name)
        with st.lock:
            _tmem_cells_check(st, L, C, name, thread_name(me), "the load")
            st.tmem.readby[L, C] |= np.int64(1) << warp
            vals = st.tmem.data[L, C]
        if vals.size == 1:
            return np.uint32(vals[0])
        return tuple(np.uint32(v) for v in vals)
    ld.__name__ = ld.__qualname__ = name
    ld.__doc__ = f"Emulated tcgen05.ld.sync.aligned.{shape}.x{num}.b32 (maps: emu.tmem.ld_map)."
    return ld


def _make_st(shape, num):
    name = f"tcgen05_st_{shape}_x{num}"

    def st_(taddr, *vals):
        st, me, warp, L, C, (lane0, col0, ncol) = _tmem_access(shape, num, taddr, name)
        if len(vals) != L.size:
            raise EmulatorError(f"{name}: {len(vals)} registers, expected {L.size}")
        who = thread_name(me)
        tm = st.tmem
        with st.lock:
            _tmem_cells_check(st, L, C, name, who, "the store", need_written=False)
            try:
                reg = T.region_of(col0, col0 + ncol, tm.region_base or 0, name)
            except ValueError as e:
                raise EmulatorError(f"{name} by {who}: {e}") from None
            mytag = tm.intern(f"{name} by warp {warp} at TMEM lane {lane0} column {col0}"
                              + (f" (region {reg})" if reg else ""))
            old = tm.tag[L, C]
            keep = (((tm.readby[L, C] >> warp) & 1) == 1) & np.isin(old, list(tm.mma_tags))
            tm.data[L, C] = np.array([_u32(v) for v in vals], np.uint32)
            tm.tag[L, C] = np.where(keep, old, mytag)       # read-modify-write of an accumulator keeps it
            tm.readby[L, C] = 0
            tm.pending[L, C] = 0
            st.changed()
    st_.__name__ = st_.__qualname__ = name
    st_.__doc__ = f"Emulated tcgen05.st.sync.aligned.{shape}.x{num}.b32 (maps: emu.tmem.ld_map)."
    return st_


for _shape, (_nl, _per) in T.LD_SHAPES.items():
    for _num in (1, 2, 4, 8, 16, 32, 64, 128):
        if _per * _num <= 128:
            globals()[f"tcgen05_ld_{_shape}_x{_num}"] = _make_ld(_shape, _num)
            globals()[f"tcgen05_st_{_shape}_x{_num}"] = _make_st(_shape, _num)


# ------------------------------------------------------------------------------ the rest
def __getattr__(name):
    from ..hw import ops as hw_ops
    if name in getattr(hw_ops, "__all__", ()):
        raise NotEmulated(f"ops.{name} is not emulated (see dsv4_numba.emu.ops for what is covered; "
                          f"emu.coverage() lists the hw.ops bindings without an emulator twin)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def coverage() -> dict:
    """{"emulated": [...], "missing": [...]}: the hw.ops bindings with / without an emulator twin."""
    from ..hw import ops as hw_ops
    names = list(getattr(hw_ops, "__all__", ()))
    g = globals()
    return {"emulated": sorted(n for n in names if n in g), "missing": sorted(n for n in names if n not in g)}


# ------------------------------------------------------------------------------ conversions, cp.async, ldmatrix
def _f32(x) -> np.float32:
    return np.float32(x)


def _rne16(x, kind):
    """16-bit pattern of float32 x rounded to nearest even as bf16 or f16."""
    if kind == "f16":
        with np.errstate(over="ignore"):
            return int(np.array([x], np.float32).astype(np.float16).view(np.uint16)[0])
    u = int(np.array([x], np.float32).view(np.uint32)[0])
    if (u & 0x7F800000) == 0x7F800000 and u & 0x7FFFFF:
        return (u >> 16) | 0x40                                     # quiet NaN
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF


def prmt(a, b, c):
    """prmt.b32 (default mode): byte i of d = byte nibble_i(c) & 7 of {b, a}; bit 3 of the nibble
    replicates that byte's sign bit."""
    src = _u32(a) | _u32(b) << 32
    c = _u32(c)
    d = 0
    for i in range(4):
        nib = (c >> (4 * i)) & 0xF
        byte = (src >> (8 * (nib & 7))) & 0xFF
        if nib & 8:
            byte = 0xFF if byte & 0x80 else 0
        d |= byte << (8 * i)
    return np.uint32(d)


def pack_bf16x2(a, b):
    return np.uint32(_rne16(_f32(a), "bf16") << 16 | _rne16(_f32(b), "bf16"))


def mul_bf16x2(a, b):
    """mul.rn.bf16x2: each bfloat16 lane of a times b's, rounded to nearest even. The float32 product
    of two bfloat16 values is exact above float32's subnormal range, so one rounding there; below it
    (|product| < 2^-126) this rounds twice, unlike the hardware: exact products only (the FP4
    decode's) are emulated faithfully there."""
    a, b = _u32(a), _u32(b)
    out = 0
    for sh in (0, 16):
        x = np.uint32(((a >> sh) & 0xFFFF) << 16).view(np.float32)
        y = np.uint32(((b >> sh) & 0xFFFF) << 16).view(np.float32)
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            out |= _rne16(np.float32(x * y), "bf16") << sh
    return np.uint32(out)


def pack_f16x2(a, b):
    return np.uint32(_rne16(_f32(a), "f16") << 16 | _rne16(_f32(b), "f16"))


def cvt_f16x2_e2m1x2(a):
    byte = _u32(a) & 0xFF
    lo, hi = T.decode(np.array([byte & 0xF, byte >> 4]), "e2m1").astype(np.float16).view(np.uint16)
    return np.uint32(int(hi) << 16 | int(lo))


_E2M1_VALUES = T.LUT["e2m1"][:8]


def _e2m1_code(x: float) -> int:
    """Round-to-nearest-even E2M1 code of x, |x| > 6 saturating (satfinite), NaN -> +6? (undefined in
    the PTX text; the emulator reports it)."""
    if np.isnan(x):
        raise EmulatorError("cvt_e2m1x2_f32: NaN input (its E2M1 code is not defined by the PTX text)")
    s = 8 if np.signbit(x) else 0
    m = min(abs(float(x)), 6.0)
    d = np.abs(_E2M1_VALUES - m)
    best = np.flatnonzero(d == d.min())
    code = int(best[0]) if len(best) == 1 else int(best[0] if best[0] % 2 == 0 else best[1])  # ties: even
    return s | code


def cvt_e2m1x2_f32(a, b):
    return np.uint32(_e2m1_code(_f32(a)) << 4 | _e2m1_code(_f32(b)))


def _ue8m0_rp(x: float) -> int:
    x = float(_f32(x))
    if np.isnan(x):
        return 0xFF
    if x <= 0:
        return 0                                                    # satfinite: smallest code
    e = int(np.ceil(np.log2(x)))
    while 2.0 ** e < x:
        e += 1
    while e - 1 >= -127 and 2.0 ** (e - 1) >= x:
        e -= 1
    return int(min(max(e + 127, 0), 254))


def cvt_rp_ue8m0x2_f32(a, b):
    return np.uint32(_ue8m0_rp(a) << 8 | _ue8m0_rp(b))


def cvt_bf16x2_ue8m0x2(a):
    v = _u32(a) & 0xFFFF
    out = 0
    for half, code in ((1, v >> 8), (0, v & 0xFF)):
        f = T.ue8m0(code)
        out |= _rne16(np.float32(f), "bf16") << (16 * half)
    return np.uint32(out)


def _cp_async(dst, src, n, op, src_bytes=None):
    """cp.async (generic-proxy copy global -> shared): emulated as done at issue."""
    st, me = _enter()
    if int(dst) % n or int(src) % n:
        raise EmulatorError(f"{op} by {thread_name(me)}: smem {int(dst):#x} / global {int(src):#x} not "
                            f"{n}-byte aligned")
    k = n if src_bytes is None else int(src_bytes)
    if not 0 <= k <= n:
        raise EmulatorError(f"{op}: src-size {k} outside 0..{n}")
    view = st.smem(dst, n, op)
    view[:k] = GMEM.view(src, k, op) if k else view[:0]
    view[k:] = 0


def cp_async_ca_4(dst, src):
    _cp_async(dst, src, 4, "cp_async_ca_4")


def cp_async_ca_8(dst, src):
    _cp_async(dst, src, 8, "cp_async_ca_8")


def cp_async_ca_16(dst, src):
    _cp_async(dst, src, 16, "cp_async_ca_16")


def cp_async_cg_16(dst, src):
    _cp_async(dst, src, 16, "cp_async_cg_16")


def cp_async_cg_16_zfill(dst, src, nbytes):
    _cp_async(dst, src, 16, "cp_async_cg_16_zfill", nbytes)


def cp_async_mbarrier_arrive_noinc(addr):
    """One arrival once this thread's earlier cp.asyncs completed: they complete at issue here,
    so the arrival is made now (.noinc: against the init count, no pending-count increment)."""
    st, me = _enter()
    with st.lock:
        b = st.barrier(addr, "cp_async_mbarrier_arrive_noinc")
        b.log(f"cp.async arrive.noinc by t{me.thread_id}")
        _arrive(st, me, b, "cp_async_mbarrier_arrive_noinc")


cp_async_commit_group = cp_async_wait_group_0 = cp_async_wait_group_1 = cp_async_wait_group_2 = _noop


def _ldst_matrix(nmat, trans, addr, regs, op):
    """ldmatrix / stmatrix m8n8 b16, warp-collective: lanes 8i..8i+7 give the row addresses of matrix i;
    lane l's register i holds matrix i's row l/4, columns 2(l%4), 2(l%4)+1 (low half = lower column);
    .trans delivers the transpose."""
    st, me = _enter()
    lane = me.thread_id % 32
    store = regs is not None

    def compute(key, arrived):
        out = [[0] * nmat for _ in range(32)]
        for i in range(nmat):
            rows = []
            for r in range(8):
                a = int(arrived[8 * i + r][0])
                if a % 16:
                    raise EmulatorError(f"{op}: row address {a:#x} of matrix {i} (lane {8 * i + r}) is not "
                                        f"16-byte aligned")
                rows.append(st.smem(a, 16, op).view(np.uint16))
            if store:
                m = np.zeros((8, 8), np.uint16)
                for l in range(32):
                    w = int(arrived[l][1][i])
                    m[l // 4, 2 * (l % 4)], m[l // 4, 2 * (l % 4) + 1] = w & 0xFFFF, w >> 16
                if trans:
                    m = m.T
                for r in range(8):
                    rows[r][:] = m[r]
            else:
                m = np.stack(rows)
                if trans:
                    m = m.T
                for l in range(32):
                    out[l][i] = np.uint32(int(m[l // 4, 2 * (l % 4)]) | int(m[l // 4, 2 * (l % 4) + 1]) << 16)
        st.changed()
        return None if store else out
    warp = me.thread_id // 32
    res = _collective(st, me, ("ldst_matrix", warp), 32, lane, op, (int(addr), regs), compute, op, f"warp {warp}")
    if store:
        return None
    return res[0] if nmat == 1 else tuple(res)


def _make_ldmatrix(nmat, trans):
    name = f"ldmatrix_x{nmat}{'_trans' if trans else ''}"

    def f(addr):
        return _ldst_matrix(nmat, trans, addr, None, name)
    f.__name__ = f.__qualname__ = name
    return f


def _make_stmatrix(nmat):
    name = f"stmatrix_x{nmat}"

    def f(addr, *regs):
        return _ldst_matrix(nmat, False, addr, tuple(_u32(r) for r in regs), name)
    f.__name__ = f.__qualname__ = name
    return f


for _m in (1, 2, 4):
    globals()[f"ldmatrix_x{_m}"] = _make_ldmatrix(_m, False)
    globals()[f"ldmatrix_x{_m}_trans"] = _make_ldmatrix(_m, True)
    globals()[f"stmatrix_x{_m}"] = _make_stmatrix(_m)
