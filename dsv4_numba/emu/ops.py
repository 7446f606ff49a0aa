"""Python twins of ``dsv4_numba.hw.ops``: same names, same argument order, acting on the emulated CTA
state (``dsv4_numba.emu.state``). Under the simulator, ``Kernel.launch`` swaps a kernel module's
global ``ops`` (when it is ``dsv4_numba.hw.ops``) for this module, so production kernels run unchanged.

Covered in this slice (sm_90a): shared/global addresses, ld/st.shared.v4, ld.global.nc / st.global.v4,
mbarrier (init, inval, arrive, arrive.expect_tx, expect_tx, try_wait.parity, wait_parity), TMA tile
loads/stores 1D-5D (+ L2-hint forms) with no / 32B / 64B / 128B swizzle, bulk-group commit/wait,
tensormap prefetch and fences, proxy fences, elect.sync, setmaxnreg, wgmma fence/commit/wait and
``wgmma_m64n{N}k16_f32_bf16_ss``. Any other hw.ops name raises ``NotEmulated`` when looked up.

Timing model: every asynchronous operation completes at issue. A TMA load applies complete_tx to its
mbarrier when it is issued; a wgmma has its result when it returns (wait_group is a no-op). Orderings
that hardware makes racy but that are correct under "completes at issue" are therefore not flagged.
"""
from __future__ import annotations

import functools

import numpy as np

from ..hw.descriptors import explain
from ..hw.layouts import wgmma_acc_coord
from ..hw.tma import SWIZZLE_BYTES
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
    st.complete_if_done(b)
    st.changed()
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
        st.complete_if_done(b)
        st.changed()


def _complete_tx(st, addr, nbytes, op):
    with st.lock:
        b = st.barrier(addr, op)
        b.log(f"{op} complete_tx -{nbytes}")
        _add_tx(st, b, -nbytes, op)
        st.complete_if_done(b)
        st.changed()


def _phase_done(st, addr, parity, op):
    b = st.barrier(addr, op)
    return (b.phase & 1) != (int(parity) & 1)


def mbarrier_try_wait_parity(addr, parity):
    """1 once the phase of ``parity`` has completed (the current phase has the other parity), else 0
    after a short bounded wait; a poller that can never succeed is reported as EmulatorDeadlock."""
    st, _ = _enter()
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
    _complete_tx(st, mbar, nbytes, op)


def _tma_store(tmap, src, coords, op):
    st, me = _enter()
    spec, root = lookup_tensor_map(tmap, op)
    goff, inb, saddr, nbytes = _tma_plan(spec, src, coords, op)
    gview, delta = _gmem_root(spec, root, op)
    sview = st.smem(int(src), nbytes, op)
    gview[delta + goff[inb]] = sview[saddr - int(src)][inb]


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
fence_proxy_tensormap_release_gpu = fence_proxy_async = fence_proxy_async_shared_cta = _noop
setmaxnreg_inc_232 = setmaxnreg_inc_240 = setmaxnreg_dec_40 = setmaxnreg_dec_24 = _noop
wgmma_fence = wgmma_commit_group = _noop                          # wgmma completes at issue
wgmma_wait_group_0 = wgmma_wait_group_1 = wgmma_wait_group_2 = _noop


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


def named_barrier_sync(bar_id, count):
    _, me = _enter()
    total = me._manager._block_dim
    nthreads = int(np.prod(total))
    if int(count) != nthreads:
        raise NotEmulated(f"named_barrier_sync({int(bar_id)}, {int(count)}): only the whole-CTA form "
                          f"(count == {nthreads}) is emulated")
    me.syncthreads()


# ------------------------------------------------------------------------------ wgmma
@functools.lru_cache(maxsize=None)
def _acc_map(n: int):
    """(rows, cols) int arrays [128, n/2]: accumulator register i of thread t holds D[rows][cols]."""
    rc = np.array([[wgmma_acc_coord(t, i, n) for i in range(n // 2)] for t in range(128)])
    return rc[..., 0], rc[..., 1]


def _read_bf16_kmajor(st, desc, rows: int, which: str, op: str) -> np.ndarray:
    """A (rows x 16) bf16 K-major operand read through its sm_90 descriptor (PTX canonical layouts,
    ptx-facts §3.3, T = 8 elements per 16 bytes):
    none: ((8,m),(T,2)):((1T,SBO),(1,LBO)); 128B: Sw<3,4,3> o ((8,m),(T,2)):((8T,SBO),(1,T))."""
    try:
        f = explain(int(desc), "wgmma-smem").fields
    except ValueError as e:
        raise EmulatorError(f"{op}: {which} descriptor: {e}") from None
    if f["base_offset"]:
        raise NotEmulated(f"{op}: {which} descriptor field base_offset={f['base_offset']} (only 0 is emulated)")
    r = np.arange(rows, dtype=np.int64)[:, None]
    k = np.arange(16, dtype=np.int64)[None, :]
    start, lbo, sbo = f["start_addr"], f["lbo"], f["sbo"]
    if f["swizzle"] == "none":
        addr = start + (r // 8) * sbo + (r % 8) * 16 + (k // 8) * lbo + (k % 8) * 2
    elif f["swizzle"] == "128B":
        addr = _swizzle(start + (r // 8) * sbo + (r % 8) * 128 + k * 2, 128)
    else:
        raise NotEmulated(f"{op}: {which} descriptor field swizzle={f['swizzle']!r} (only 'none' and "
                          f"'128B' K-major bf16 operands are emulated)")
    lo, hi = int(addr.min()), int(addr.max()) + 2
    view = st.smem(lo, hi - lo, f"{op} ({which} operand, descriptor {int(desc):#x})")
    idx = addr - lo
    u16 = view[idx].astype(np.uint32) | (view[idx + 1].astype(np.uint32) << 8)
    return (u16 << 16).view(np.float32)


def _wgmma(n, acc, a_desc, b_desc, scale_d):
    op = f"wgmma_m64n{n}k16_f32_bf16_ss"
    st, me = _enter()
    tid = me.thread_id
    wg, t = divmod(tid, 128)
    nthreads = int(np.prod(me._manager._block_dim))
    if nthreads < 128 * (wg + 1):
        raise EmulatorError(f"{op} by {thread_name(me)}: warpgroup {wg} needs all 128 threads "
                            f"{128 * wg}..{128 * wg + 127}, the block has {nthreads}")
    if len(acc) != n // 2:
        raise EmulatorError(f"{op}: {len(acc)} accumulators, expected {n // 2}")
    key = (int(a_desc), int(b_desc), 1 if int(scale_d) else 0)
    with st.lock:
        rec = st.wg.setdefault(wg, {"gen": 0, "arrived": {}, "results": {}})
        gen = rec["gen"]
        rec["arrived"][t] = (key, np.asarray(acc, np.float32))
        st.changed()
        if len(rec["arrived"]) == 128:
            arrived, rec["arrived"] = rec["arrived"], {}
            rec["gen"] += 1
            try:
                rec["results"][gen] = [_wgmma_compute(st, n, arrived, op, wg), 128]
            except Exception as e:        # noqa: BLE001 - hand the error to every participant
                rec["results"][gen] = [e, 128]
    st.wait_until(lambda: gen in rec["results"],
                  f"the other threads of warpgroup {wg} at {op} (warpgroup-collective)")
    with st.lock:
        slot = rec["results"][gen]
        slot[1] -= 1
        if slot[1] == 0:
            del rec["results"][gen]
    if isinstance(slot[0], Exception):
        raise slot[0]
    return tuple(slot[0][t])


def _wgmma_compute(st, n, arrived, op, wg):
    keys = {k for k, _ in arrived.values()}
    if len(keys) != 1:
        firsts = {}
        for t, (k, _) in sorted(arrived.items()):
            firsts.setdefault(k, t)
        raise EmulatorError(f"{op}: warpgroup {wg} threads disagree on (a_desc, b_desc, accumulate): "
                            + "; ".join(f"thread {t}: ({k[0]:#x}, {k[1]:#x}, {k[2]})" for k, t in firsts.items())
                            + " - the descriptors and scale-d must be identical across the four warps")
    a_desc, b_desc, accumulate = keys.pop()
    a = _read_bf16_kmajor(st, a_desc, 64, "A", op).astype(np.float64)
    b = _read_bf16_kmajor(st, b_desc, n, "B", op).astype(np.float64)
    d = a @ b.T
    rows, cols = _acc_map(n)
    if accumulate:
        c = np.zeros((64, n), np.float64)
        regs = np.stack([arrived[t][1] for t in range(128)])
        c[rows, cols] = regs
        d = d + c
    d32 = d.astype(np.float32)
    return [tuple(np.float32(v) for v in d32[rows[t], cols[t]]) for t in range(128)]


def _make_wgmma(n):
    def wgmma(*args):
        return _wgmma(n, args[:n // 2], args[n // 2], args[n // 2 + 1], args[n // 2 + 2])
    wgmma.__name__ = wgmma.__qualname__ = f"wgmma_m64n{n}k16_f32_bf16_ss"
    wgmma.__doc__ = (f"Emulated wgmma.mma_async m64n{n}k16.f32.bf16.bf16 (A and B from smem): all 128 "
                     f"threads of the warpgroup rendezvous; D = A*B (+D if accumulate != 0), products summed "
                     f"in float64 and rounded once to float32; each thread gets its registers per "
                     f"layouts.wgmma_acc_coord.")
    return wgmma


for _n in range(8, 257, 8):
    globals()[f"wgmma_m64n{_n}k16_f32_bf16_ss"] = _make_wgmma(_n)


# ------------------------------------------------------------------------------ the rest
def __getattr__(name):
    from ..hw import ops as hw_ops
    if name in getattr(hw_ops, "__all__", ()):
        raise NotEmulated(f"ops.{name} is not emulated (this emulator slice covers sm_90a shared memory, "
                          f"mbarrier, TMA tile loads/stores, fences and wgmma bf16 with A and B in smem)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
