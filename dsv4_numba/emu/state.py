"""Per-CTA machine state of the emulator: the shared-memory image, mbarriers, warpgroup rendezvous,
global-memory and tensor-map registries, and the deadlock detector.

Everything here runs inside Numba's CUDA simulator, which executes the threads of one block as Python
threads (``BlockThread``) managed by a ``BlockManager``, one block after another. The state of a CTA
hangs off its ``BlockManager`` (a fresh one per block), so every block starts with empty shared
memory bookkeeping and no barriers.

Shared memory
    The simulator gives each ``cuda.shared.array`` a NumPy array. The first time a kernel asks for
    ``shared_address`` of (a view of) one, its whole root buffer gets a fake 32-bit ``.shared``-window
    base: 1024-byte aligned, starting at 0x400, below 2**18 (the wgmma/tcgen05 descriptors keep
    address bits 4..17 only). ``smem(addr, n)`` turns an address range back into a writable uint8 view
    of the real array's bytes, so ordinary indexing in the kernel, TMA and wgmma all see one image.

Global memory
    ``array_address`` returns the real host pointer of an array's data and remembers the array, so
    ``gmem(addr, n)`` can resolve it again (tensor maps, vector loads/stores).

Deadlock
    A thread that waits (mbarrier parity, named barrier, warp/warpgroup rendezvous) registers what it
    waits for and the condition that would release it, then sleeps on the CTA's condition variable
    (notified by every change that can release a wait: a completed mbarrier phase, named-barrier
    generation or rendezvous; a mere arrival wakes nobody). The CTA is deadlocked when, all at one
    instant under the state lock: every thread of the block has started; every live thread is either parked in
    ``syncthreads`` (which the simulator releases only when *all* threads are parked there) or
    inside an emulator wait whose condition, re-evaluated now, is false; and at least one thread is
    in an emulator wait. A ``try_wait`` poller counts as blocked only while it is inside its poll
    after ``SPIN_POLLS`` consecutive failed polls with no other emulator op in between (a kernel may
    poll and do other work). Nothing in this decision depends on wall time, so a loaded machine
    cannot trigger it falsely; wall time only decides how often a sleeping waiter re-checks
    (``CHECK_S``). ``EmulatorDeadlock`` is raised in the waiters, carrying what each thread waits for
    and the state (phase, pending arrivals, tx-count, recent events) of every barrier involved.
    Last resort for hangs the exact rule cannot see (a thread spinning in plain Python): a waiter
    that sees no emulated state change for ``STALL_S`` seconds (env ``DSV4_EMU_STALL_S``, default
    600) raises ``EmulatorDeadlock`` saying so.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import weakref

import numpy as np

SMEM_BASE = 0x400          # first fake .shared address handed out (0 stays unused: catches a lost base)
SMEM_ALIGN = 1024          # every shared array root starts on a 128B-swizzle repeat boundary
SMEM_LIMIT = 1 << 18       # descriptor start addresses keep bits 4..17
CHECK_S = 0.05             # a sleeping waiter re-checks for deadlock this often (latency only, never a verdict)
SPIN_POLLS = 8             # consecutive failed try_wait polls after which a poller counts as blocked
STALL_S = float(os.environ.get("DSV4_EMU_STALL_S", "600"))   # last resort: no state change for this long
TX_LIMIT = (1 << 20) - 1   # tx-count range is +-(2^20 - 1)


class EmulatorError(RuntimeError):
    """A kernel did something the hardware leaves undefined or rejects (bad address, uninitialised
    barrier, mismatched warpgroup operands...). The message names the op, the thread and the address."""


class EmulatorDeadlock(EmulatorError):
    """No thread of the CTA can make progress: every live thread waits on something that only another
    waiting thread (or a TMA that was never issued) could complete. The message carries each waiter
    and the barriers' state."""


# ------------------------------------------------------------------------------------- helpers
def current_thread():
    """The simulator thread running this op (``BlockThread``); error outside a simulated kernel."""
    t = threading.current_thread()
    if not hasattr(t, "_manager") or not hasattr(t, "thread_id"):
        raise EmulatorError("dsv4_numba.emu ops run only inside a kernel launched under the CUDA "
                            "simulator (Kernel.launch with DSV4_MODE=sim or without a GPU)")
    return t


def thread_name(t) -> str:
    return f"thread {t.thread_id} (warp {t.thread_id // 32}, block {tuple(t.blockIdx)})"


def ndarray_of(x) -> np.ndarray:
    """The NumPy array behind a simulator array object (kernel argument, device array, shared array)."""
    for _ in range(4):
        if isinstance(x, np.ndarray):
            return x
        if "_item" in getattr(x, "__dict__", {}):       # FakeWithinKernelCUDAArray
            x = x.__dict__["_item"]
        elif hasattr(x, "_ary"):                          # FakeCUDAArray
            x = x._ary
        else:
            break
    raise TypeError(f"expected an array, got {type(x).__name__}")


def root_of(a: np.ndarray) -> np.ndarray:
    """The outermost NumPy array owning ``a``'s memory (through views and frombuffer)."""
    r = a
    while True:
        b = r.base
        if isinstance(b, memoryview):
            b = b.obj
        if isinstance(b, np.ndarray):
            r = b
            continue
        if b is not None and not isinstance(b, np.ndarray):
            try:
                b2 = np.asarray(b)
            except Exception:       # noqa: BLE001 - not array-like: r is the root
                return r
            if b2.ctypes.data <= r.ctypes.data and r.ctypes.data + r.nbytes <= b2.ctypes.data + b2.nbytes:
                return b2
        return r


def data_ptr(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def bytes_of(root: np.ndarray) -> np.ndarray:
    """A writable uint8 view of a contiguous root buffer."""
    if not root.flags.c_contiguous:
        raise EmulatorError("emulated memory must be backed by a C-contiguous buffer")
    return root.reshape(-1).view(np.uint8)


# ------------------------------------------------------------------------------------- mbarrier
class MBarrier:
    """One mbarrier: phase, expected arrival count, pending arrivals, tx-count (PTX §9.7.13.15)."""

    def __init__(self, addr: int, count: int):
        self.addr = addr
        self.expected = count
        self.pending = count
        self.phase = 0
        self.tx = 0
        self.events: list[str] = []

    def log(self, what: str):
        self.events.append(what)
        del self.events[:-8]

    def describe(self) -> str:
        return (f"mbarrier @smem {self.addr:#x}: phase {self.phase} (parity {self.phase & 1} in "
                f"progress, parity {(self.phase - 1) & 1} last completed{' - none yet' if self.phase == 0 else ''}), "
                f"pending arrivals {self.pending} of {self.expected}, tx-count {self.tx} bytes; "
                f"recent: {'; '.join(self.events) or 'none'}")


# ------------------------------------------------------------------------------------- CTA state
class CTAState:
    """The emulated machine state of one CTA (one simulator BlockManager)."""

    def __init__(self, manager):
        self.manager = manager
        self.lock = threading.RLock()
        self.cv = threading.Condition(self.lock)   # notified by every state change (waiters sleep on it)
        self.version = 0                      # bumped by every state change
        self.smem_roots: list = []            # (base, nbytes, uint8 view, root id)
        self.smem_by_root: dict = {}          # id(root) -> base
        self.next_smem = SMEM_BASE
        self.barriers: dict[int, MBarrier] = {}
        self.waiting: dict = {}               # BlockThread -> _Waiter (what it waits for, its condition)
        self.spins: dict = {}                 # BlockThread -> consecutive failed try_wait polls
        self.deadlock: str | None = None
        self.blocker = None                   # the thread that refuted the last deadlock check (checked first)
        self.wg: dict = {}                    # collective key -> rendezvous record
        self.async_snap: dict = {}            # smem base -> bytes as the async proxy last saw them
        self.tmem = TMem()
        self.wgmma_groups: dict = {}          # thread id -> [fenced, open wgmmas, committed groups' sizes]
        global LAST
        LAST = self

    # ------------------------------------------------------------------ shared memory
    def shared_address(self, arr) -> int:
        a = ndarray_of(arr)
        root = root_of(a)
        with self.lock:
            base = self.smem_by_root.get(id(root))
            if base is None:
                base = self.next_smem
                if base + root.nbytes > SMEM_LIMIT:
                    raise EmulatorError(f"shared memory: {root.nbytes} more bytes at {base:#x} exceed the "
                                        f"{SMEM_LIMIT:#x}-byte window the descriptors can address")
                self.smem_roots.append((base, root.nbytes, bytes_of(root), root))
                self.async_snap[base] = bytes_of(root).copy()
                self.smem_by_root[id(root)] = base
                self.next_smem = -(-(base + root.nbytes) // SMEM_ALIGN) * SMEM_ALIGN
                self.next_smem = max(self.next_smem, base + SMEM_ALIGN)
        return base + data_ptr(a) - data_ptr(root)

    def smem(self, addr: int, nbytes: int, op: str) -> np.ndarray:
        """Writable uint8 view of shared bytes [addr, addr + nbytes): one shared array must hold them."""
        addr = int(addr)
        for base, size, view, _ in self.smem_roots:
            if base <= addr < base + size:
                if addr + nbytes > base + size:
                    raise EmulatorError(f"{op}: shared bytes {addr:#x}..{addr + nbytes - 1:#x} run past the end "
                                        f"of the shared array at {base:#x} ({size} bytes)")
                return view[addr - base: addr - base + nbytes]
        known = ", ".join(f"{b:#x}+{s}" for b, s, _, _ in self.smem_roots) or "none"
        raise EmulatorError(f"{op}: {addr:#x} is not inside any shared array of this CTA (known: {known}); "
                            f"compute .shared addresses from ops.shared_address(...)")

    # ------------------------------------------------------------------ generic vs async proxy
    def fence_proxy_async(self):
        """fence.proxy.async: everything written to shared memory so far becomes visible to the async
        proxy (TMA, wgmma, tcgen05). Modelled by a snapshot of every shared array; an async read
        compares the bytes it reads with the snapshot (``check_async_visible``)."""
        with self.lock:
            for base, _, view, _ in self.smem_roots:
                self.async_snap[base][:] = view

    def async_wrote(self, addr: int, nbytes: int):
        """The async proxy itself wrote [addr, addr + nbytes) (a TMA load): it sees those bytes."""
        for base, size, view, _ in self.smem_roots:
            if base <= addr < base + size:
                o = addr - base
                self.async_snap[base][o:o + nbytes] = view[o:o + nbytes]
                return

    def check_async_visible(self, lo: int, idx: np.ndarray, op: str, what: str, me=None):
        """Raise if shared bytes ``lo + idx`` that an async-proxy op reads were written by ordinary
        (generic-proxy) stores after the last fence.proxy.async of the CTA."""
        for base, size, view, _ in self.smem_roots:
            if base <= lo < base + size:
                o = lo - base
                cur = view[o + idx]
                old = self.async_snap[base][o + idx]
                bad = np.nonzero(cur != old)
                if bad[0].size:
                    first = int((o + idx)[tuple(b[:1] for b in bad)][0]) + base
                    who = f" by {thread_name(me)}" if me is not None else ""
                    raise EmulatorError(
                        f"{op}{who}: {what} reads {bad[0].size} shared byte(s) (first at smem {first:#x}) "
                        f"written by ordinary stores after the last fence.proxy.async: the async proxy "
                        f"may not see them. Check: ops.fence_proxy_async_shared_cta() after the st.shared "
                        f"/ array stores, then a barrier, before the MMA / TMA store")
                return

    def smem_image(self) -> dict:
        """{base address: uint8 view} of every shared array seen so far (for tests and debugging)."""
        return {base: view for base, _, view, _ in self.smem_roots}

    # ------------------------------------------------------------------ mbarriers
    def barrier(self, addr: int, op: str) -> MBarrier:
        addr = int(addr)
        b = self.barriers.get(addr)
        if b is None:
            self.smem(addr, 8, op)
            raise EmulatorError(f"{op}: no initialised mbarrier at smem {addr:#x} (mbarrier_init first, "
                                f"then a barrier/fence before other threads use it); initialised: "
                                f"{', '.join(hex(a) for a in sorted(self.barriers)) or 'none'}")
        return b

    def changed(self):
        """A state change a waiter's condition may depend on: wake every waiter to re-check."""
        with self.lock:
            self.version += 1
            self.cv.notify_all()

    def bump(self):
        """A state change no waiter's condition depends on (an arrival that completes no phase, no
        rendezvous): progress for the last-resort stall detector, but nobody is woken. Waking all
        ~150 waiters of a CTA on each of the 32..128 arrivals of every phase made the run quadratic
        in the thread count; the deadlock rule needs no wake-up here (the arriving thread checks
        it when it starts to wait; the sleeping waiters re-check every CHECK_S)."""
        with self.lock:
            self.version += 1

    def settle(self, done: bool):
        """``changed()`` if ``done`` (a phase / generation / rendezvous completed), else ``bump()``."""
        if done:
            self.changed()
        else:
            self.bump()

    def complete_if_done(self, b: MBarrier) -> bool:
        """Complete the barrier's current phase if nothing is pending; whether it did."""
        if b.pending == 0 and b.tx == 0:
            b.log(f"phase {b.phase} completed")
            b.phase += 1
            b.pending = b.expected
            return True
        return False

    # ------------------------------------------------------------------ waiting / deadlock
    def live_threads(self):
        """The block's threads that have started and not finished (in thread-id order)."""
        return [t for t in getattr(self.manager, "_dsv4_threads", ()) if t.is_alive()]

    def all_started(self) -> bool:
        return len(getattr(self.manager, "_dsv4_threads", ())) >= int(np.prod(self.manager._block_dim))

    def _blocked(self, t) -> bool:
        """Whether thread ``t`` provably cannot move now (called under the lock)."""
        if t.syncthreads_blocked:
            return True
        w = self.waiting.get(t)
        if w is None or not w.inside or (w.spin and self.spins.get(t, 0) < SPIN_POLLS):
            return False
        try:
            return not w.cond()
        except Exception:          # noqa: BLE001 - its own wait will raise it; not a deadlock
            return False

    def stuck(self):
        """The live threads if the CTA is deadlocked (see the module docstring), else None. Exact and
        instantaneous: evaluated under the state lock, which every emulated state change takes."""
        if not self.all_started():
            return None
        b = self.blocker
        if b is not None and b.is_alive() and not self._blocked(b):
            return None
        live = self.live_threads()
        for t in live:
            if not self._blocked(t):
                self.blocker = t
                return None
        if not any(t in self.waiting for t in live):
            return None            # all parked in syncthreads: the simulator releases them
        return live

    def wait_until(self, cond, what: str, barrier_addrs=(), timeout=None, spin=False) -> bool:
        """Block the calling thread until ``cond()`` (evaluated under the lock) holds. Returns False
        after ``timeout`` seconds (with ``spin``, the thread then stays registered, not inside, until
        its next op, as a try_wait poller does); raises EmulatorDeadlock when no thread can make
        progress (decided by ``stuck``, never by elapsed time)."""
        me = current_thread()
        start = time.monotonic()
        keep = False
        with self.lock:
            w = _Waiter(what, tuple(barrier_addrs), cond, spin)
            self.waiting[me] = w
            seen, seen_t = self.version, start
            try:
                while True:
                    if cond():
                        self.spins.pop(me, None)
                        return True
                    if self.deadlock:
                        raise EmulatorDeadlock(self.deadlock)
                    failed = getattr(self.manager, "_dsv4_failed", None)
                    if failed is not None:      # another thread died: report its error, not a deadlock
                        raise (type(failed) if isinstance(failed, EmulatorError) else EmulatorError)(
                            f"(while waiting for {what}) another thread failed: {failed}")
                    if getattr(me, "abort", False):
                        raise EmulatorError(f"{thread_name(me)}: aborted while waiting for {what}")
                    live = self.stuck()
                    if live is not None:
                        self.deadlock = self.report(live)
                        self.cv.notify_all()
                        raise EmulatorDeadlock(self.deadlock)
                    now = time.monotonic()
                    if self.version != seen:
                        seen, seen_t = self.version, now
                    elif now - seen_t > STALL_S:
                        self.deadlock = (f"no emulated state changed for {STALL_S:.0f} s while waiting "
                                         f"(last-resort timeout DSV4_EMU_STALL_S; the exact deadlock rule "
                                         f"saw a thread not blocked in an emulator wait - a spin in plain "
                                         f"Python?)\n" + self.report(self.live_threads(), exact=False))
                        self.cv.notify_all()
                        raise EmulatorDeadlock(self.deadlock)
                    if timeout is not None:
                        left = timeout - (now - start)
                        if left <= 0:
                            keep = spin
                            if spin:
                                self.spins[me] = self.spins.get(me, 0) + 1
                            return False
                        self.cv.wait(min(left, CHECK_S))
                    else:
                        self.cv.wait(CHECK_S)
            finally:
                w.inside = False
                if not keep:
                    self.waiting.pop(me, None)

    def unspin(self, me, keep_count=False):
        """The thread runs another op: it no longer waits (and, unless ``keep_count`` - a try_wait
        poll - its consecutive-poll count restarts)."""
        if me in self.waiting or (not keep_count and me in self.spins):
            with self.lock:
                self.waiting.pop(me, None)
                if not keep_count:
                    self.spins.pop(me, None)

    def finish(self):
        """Checks at kernel (block) end: every TMEM allocation released; every wgmma covered by a
        wgmma_wait_group."""
        late = {tid: (rec[1], len(rec[2]), sum(rec[2])) for tid, rec in self.wgmma_groups.items()
                if rec[1] or rec[2]}
        if late:
            tids = sorted(late)
            o, g, n = late[tids[0]]
            raise EmulatorError(
                f"kernel end (block {self.block}): threads {_ranges(tids)} exit with wgmma results never "
                f"waited for (thread {tids[0]}: {o} wgmma(s) not committed, {g} committed group(s) "
                f"holding {n} wgmma(s) not waited): on hardware their accumulators are read (or dropped) "
                f"before the async MMA wrote them. Check: wgmma_commit_group() after the MMAs, then "
                f"wgmma_wait_group_0() before reading the accumulators")
        if self.tmem.allocs:
            lst = ", ".join(f"columns {c}..{c + n - 1} (alloc by warp {w})"
                            for c, (n, w) in sorted(self.tmem.allocs.items()))
            raise EmulatorError(f"kernel end (block {self.block}): Tensor Memory still allocated: {lst}. "
                                f"Check: every tcgen05_alloc needs a tcgen05_dealloc (same warp, same "
                                f"column count) before the CTA exits")

    def report(self, live, exact=True) -> str:
        lines = ["deadlock: every live thread of the CTA waits and nothing can change the state."
                 if exact else "threads of the CTA:"]
        groups: dict = {}
        addrs = set()
        frames = sys._current_frames()
        for t in sorted(live, key=lambda t: t.thread_id):
            if t in self.waiting:
                what, ba = self.waiting[t].what, self.waiting[t].addrs
                addrs.update(ba)
            elif t.syncthreads_blocked:
                what = "syncthreads / bar.sync"
            else:
                what = "nothing the emulator knows of (running)"
            what += _kernel_line(frames.get(t.ident))
            groups.setdefault(what, []).append(t.thread_id)
        for what, tids in groups.items():
            lines.append(f"  threads {_ranges(tids)} wait for {what}")
        for a in sorted(addrs):
            b = self.barriers.get(a)
            lines.append("  " + (b.describe() if b else f"mbarrier @smem {a:#x}: not initialised"))
        lines.append("  check: expect_tx bytes == bytes the TMAs deliver (box bytes each); arrival count "
                     "== arrive calls per phase; the waited parity is the phase the producer fills.")
        return "\n".join(lines)


_NOT_KERNEL = (os.sep + "threading.py", os.sep + "simulator" + os.sep, os.path.dirname(os.path.abspath(__file__)))


def _kernel_line(frame) -> str:
    """' at FILE:LINE' of the innermost frame of a thread that is kernel code (not the simulator, the
    emulator or threading), '' if none."""
    while frame is not None:
        f = frame.f_code.co_filename
        if not any(x in f for x in _NOT_KERNEL):
            return f" at {os.path.basename(f)}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


class _Waiter:
    """What a waiting thread waits for: description, barriers involved, the releasing condition, and
    whether it is inside the wait now (a try_wait poller stays registered between polls)."""
    __slots__ = ("what", "addrs", "cond", "spin", "inside")

    def __init__(self, what, addrs, cond, spin):
        self.what, self.addrs, self.cond, self.spin, self.inside = what, addrs, cond, spin, True


def _ranges(ids) -> str:
    out, start, prev = [], None, None
    for i in ids:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(out)


# ------------------------------------------------------------------------------------- TMEM
class TMem:
    """Tensor Memory of one CTA (PTX §9.7.16.1): 128 lanes x 512 columns of 32-bit cells, with
    bookkeeping the hardware does not keep: which op last wrote each cell (``tag``, 0 = never
    written), which MMA result is not yet known complete (``pending``), which warps read a cell since
    its last write (``readby``), the live allocations and user-declared regions."""
    LANES, COLS = 128, 512

    def __init__(self):
        self.data = np.zeros((128, 512), np.uint32)
        self.tag = np.zeros((128, 512), np.int32)
        self.pending = np.zeros((128, 512), np.int32)
        self.readby = np.zeros((128, 512), np.int64)
        self.tags: dict = {0: "nothing (never written)"}
        self.tag_of: dict = {}
        self.mma_tags: set = set()
        self.allocs: dict = {}            # first column -> (ncols, warp)
        self.relinquished = False
        self.mmas: dict = {}              # mma id -> record
        self.uncommitted: dict = {}       # issuing thread id -> [mma ids]
        self.next_mma = 1
        self.region_base = None           # column of the first allocation (declared regions are relative)

    def intern(self, desc: str, mma: bool = False) -> int:
        t = self.tag_of.get(desc)
        if t is None:
            t = len(self.tags)
            self.tags[t] = desc
            self.tag_of[desc] = t
            if mma:
                self.mma_tags.add(t)
        return t

    def allocated(self, c0: int, c1: int) -> bool:
        return any(c <= c0 and c1 <= c + n for c, (n, _) in self.allocs.items())


LAST = None          # the CTAState created last (tests and debugging: emu.last_cta())
_STATE_LOCK = threading.Lock()


def cta() -> CTAState:
    """The state of the CTA the calling simulator thread belongs to (created on first use)."""
    mgr = current_thread()._manager
    st = getattr(mgr, "_dsv4_emu_state", None)
    if st is None:
        with _STATE_LOCK:
            st = getattr(mgr, "_dsv4_emu_state", None)
            if st is None:
                st = CTAState(mgr)
                st.block = tuple(current_thread().blockIdx)
                mgr._dsv4_emu_state = st
    return st


# ------------------------------------------------------------------------------------- global memory
class _GlobalMemory:
    """Arrays whose addresses kernels have taken (array_address) or tensor maps point into."""

    def __init__(self):
        self.lock = threading.Lock()
        self.roots: dict = {}       # root data pointer -> (nbytes, weakref to root): launches copy
                                    # their NumPy arguments, so dead copies must not pile up

    def register(self, arr) -> int:
        a = ndarray_of(arr)
        root = root_of(a)
        with self.lock:
            dead = [p for p, (_, ref) in self.roots.items() if ref() is None]
            for p in dead:
                del self.roots[p]
            self.roots[data_ptr(root)] = (root.nbytes, weakref.ref(root))
        return data_ptr(a)

    def view(self, addr: int, nbytes: int, op: str) -> np.ndarray:
        addr = int(addr)
        with self.lock:
            for p, (size, ref) in self.roots.items():
                root = ref()
                if root is not None and p <= addr and addr + nbytes <= p + size:
                    return bytes_of(root)[addr - p: addr - p + nbytes]
        raise EmulatorError(f"{op}: global bytes {addr:#x}..{addr + nbytes - 1:#x} are not inside an array "
                            f"the kernel took the address of (ops.array_address) or a tensor map points to")


GMEM = _GlobalMemory()


# ------------------------------------------------------------------------------------- tensor maps
TMAP_MAGIC = 0xD5F4_E3E0_7E45_0001     # word 0 of an emulated tensor map; word 1 is its registry id
_TMAPS: dict[int, tuple] = {}          # id -> (TensorMapSpec, root array of the global tensor)
_TMAP_LOCK = threading.Lock()


class _HostArrayInterface:
    """__cuda_array_interface__ of a host (simulator) array, so TensorMapSpec.from_array validates it."""

    def __init__(self, a: np.ndarray):
        ai = a.__array_interface__
        self.__cuda_array_interface__ = {"shape": a.shape, "typestr": a.dtype.str, "data": ai["data"],
                                         "strides": ai.get("strides") or None, "version": 3}


def to_device(arr):
    """A simulator device array over ``arr``'s memory (no copy): what ``cuda.to_device`` gives under
    NUMBA_ENABLE_CUDASIM. Kernel.launch copies plain NumPy arguments in and out; pass TMA-addressed
    tensors wrapped like this, so the bytes the TMA engine moves are the ones the kernel and the host see."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    a = ndarray_of(arr)
    return arr if not isinstance(arr, np.ndarray) else FakeCUDAArray(a)


def tensor_map(arr, box, swizzle="none", dtype=None, **kw) -> np.ndarray:
    """The emulator's stand-in for ``hw.tma.tensor_map_on_device``: validates the request exactly as
    the driver path does (``TensorMapSpec.from_array``: NumPy-ordered ``box``, ``dtype="bfloat16"`` for
    uint16-carried bf16) and returns a ``uint64[16]`` whose words 0/1 identify the registered spec.
    The kernel passes ``ops.array_address(tmap)`` as on the GPU; the emulated TMA reads the words
    back, so the map may be copied (Kernel.launch copies NumPy arguments) and still resolve."""
    from ..hw.tma import TensorMapSpec
    a = ndarray_of(arr)
    spec = TensorMapSpec.from_array(_HostArrayInterface(a), box, swizzle, dtype=dtype, **kw)
    GMEM.register(a)
    with _TMAP_LOCK:
        tid = len(_TMAPS) + 1
        _TMAPS[tid] = (spec, root_of(a))
    out = np.zeros(16, np.uint64)
    out[0], out[1] = TMAP_MAGIC, tid
    return out


def lookup_tensor_map(addr: int, op: str):
    words = GMEM.view(addr, 16, op).view(np.uint64)
    if int(words[0]) != TMAP_MAGIC or int(words[1]) not in _TMAPS:
        raise EmulatorError(f"{op}: the 128 bytes at {int(addr):#x} are not an emulated tensor map; build it "
                            f"with dsv4_numba.emu.tensor_map(...) (the driver's encoding is opaque)")
    return _TMAPS[int(words[1])]


def last_cta() -> CTAState | None:
    """The machine state of the last CTA the emulator ran (TMEM image, smem, barriers), for tests."""
    return LAST


MANAGER_POLL_S = 0.01     # the block manager's fallback re-scan period (it is woken by each event)


def _install_block_end_hook():
    """Replace the simulator's ``BlockManager.run`` (and ``BlockThread.syncthreads`` / ``run``) by an
    event-driven version of the same rules, plus the emulator's block-end checks. Idempotent.

    The simulator's manager runs the block's threads and, in the launching thread, polls them in a
    tight pure-Python loop: release ``syncthreads`` when every live thread is parked there, abort
    all on a thread's error. That loop never gives up the GIL by itself, so every other thread
    waits up to the interpreter's switch interval (5 ms) each time it needs the GIL back, e.g.
    after acquiring a lock. With ~190 threads taking the emulator's state lock, this turned into a
    lock convoy: a holder of the state lock waiting for the GIL, everyone else waiting for the lock,
    each hand-over costing a switch interval. The sm_100a indexer's tests, normally ~3-8 s each,
    then ran for more than 10 minutes (a solo run on an idle machine, py-spy showing progress: the
    "hang" of issue #8/#9). Here the manager sleeps on an event that each syncthreads arrival and
    each thread end sets (with a ``MANAGER_POLL_S`` fallback), so it holds the GIL only to decide.

    Same rules otherwise, with two fixes: a syncthreads release happens under the CTA state lock
    (the deadlock rule, evaluated under that lock, saw threads released first waiting on threads
    not yet released, and reported a deadlock that was none: the simulator's release loop has the
    same window); a thread that failed is noticed even when it has already ended by the time the
    manager looks (the simulator only looked at live threads' errors, so the others'
    ``syncthreads`` could be released after a failure); the error raised is the first thread's to
    fail. After the threads end without error, the emulator checks what must hold at
    kernel exit (``CTAState.finish``: TMEM deallocated, wgmma results waited for)."""
    from numba.cuda.simulator import kernel as simk
    if getattr(simk.BlockManager.run, "_dsv4_emu", False):
        return

    def syncthreads(self):
        if self.abort:
            raise RuntimeError("abort flag set on syncthreads call")
        self.syncthreads_blocked = True
        wake = getattr(self._manager, "_dsv4_wake", None)
        if wake is not None:
            wake.set()
        self.syncthreads_event.wait()
        self.syncthreads_event.clear()
        if self.abort:
            raise RuntimeError("abort flag set on syncthreads clear")

    def thread_run(self):
        mgr = self._manager
        with _STATE_LOCK:        # the block's started threads, in start order (deadlock rule: all started)
            lst = getattr(mgr, "_dsv4_threads", None)
            if lst is None:
                lst = mgr._dsv4_threads = []
            lst.append(self)
        try:
            trun(self)           # BlockThread.run: the kernel; an error is kept in self.exception
        finally:
            if getattr(self, "exception", None):
                with _STATE_LOCK:
                    if getattr(mgr, "_dsv4_failed", None) is None:
                        mgr._dsv4_failed = self.exception[0]   # waiters re-raise the first error
                        mgr._dsv4_failed_thread = self
            self._dsv4_done = True
            wake = getattr(mgr, "_dsv4_wake", None)
            if wake is not None:
                wake.set()

    def run(self, grid_point, *args):
        self._dsv4_wake = wake = threading.Event()
        threads = []
        for block_point in np.ndindex(*self._block_dim):
            def target():
                self._f(*args)
            t = simk.BlockThread(target, self, grid_point, block_point, self._debug)
            t.start()
            threads.append(t)
        live = list(threads)
        while live:
            wake.wait(MANAGER_POLL_S)
            wake.clear()                 # everything that set it before this is seen by the scan below
            failed = getattr(self, "_dsv4_failed_thread", None)
            if failed is None:
                failed = next((t for t in threads if t.exception), None)
            if failed is not None:
                for t in threads:        # as the simulator does: abort the others, do not join them
                    t.abort = True
                    t.syncthreads_blocked = False
                    t.syncthreads_event.set()
                raise failed.exception[0].with_traceback(failed.exception[1])
            live = [t for t in live if not getattr(t, "_dsv4_done", False) and t.is_alive()]
            if live and all(t.syncthreads_blocked for t in live):
                # every live thread is parked in syncthreads: release them, all under the CTA's state
                # lock, so the deadlock rule never sees half of them released and the others still
                # parked (the threads released first could wait on those: a false deadlock)
                st = getattr(self, "_dsv4_emu_state", None)
                with st.lock if st is not None else contextlib.nullcontext():
                    for t in live:
                        t.syncthreads_blocked = False
                        t.syncthreads_event.set()
        failed = getattr(self, "_dsv4_failed_thread", None) or next((t for t in threads if t.exception), None)
        if failed is not None:
            raise failed.exception[0].with_traceback(failed.exception[1])
        st = getattr(self, "_dsv4_emu_state", None)
        if st is not None:
            st.finish()

    trun = simk.BlockThread.run
    run._dsv4_emu = True
    simk.BlockThread.syncthreads = syncthreads
    simk.BlockThread.run = thread_run
    simk.BlockManager.run = run


_install_block_end_hook()


_SHARED_LOCK = threading.Lock()     # cuda.shared.array: lookup + create + store of one call site


def _new_shared(shape, dtype) -> np.ndarray:
    """The NumPy array behind a new static ``cuda.shared.array`` (a seam for the race test)."""
    return np.empty(shape, dtype)


def _install_shared_array_hook():
    """Register every ``cuda.shared.array`` with the CTA state when the kernel creates it (not when it
    first takes its address), so the async-proxy snapshot holds the array's bytes before any thread
    writes them and unfenced generic stores are seen. Re-implements the simulator's per-call-site
    allocation (its caller lookup must see the kernel's frame, not this wrapper's). Idempotent.

    The simulator's own ``FakeCUDAShared.array`` looks the call site up and stores a new array with
    no lock: two threads of a block reaching the same line together could both find nothing and
    create two arrays, one thread then working on a private copy of a "shared" array (numba-cuda
    0.30).
    Here lookup, creation and store happen under one lock, so every thread of the launch gets the
    same array. ``alignment`` (which the simulator rejects) is checked and accepted: every
    shared root gets a 1024-byte aligned emulated address anyway. Shape 0 is the dynamic shared
    memory: one buffer per launch, made when the launch starts (views of it need no lock)."""

    from numba.cuda.simulator import kernelapi as ka
    orig = ka.FakeCUDAShared.array
    if getattr(orig, "_dsv4_emu", False):
        return

    def array(self, shape, dtype, alignment=None):
        from numba.core import types
        from numba.np import numpy_support
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        dtype = np.dtype(dtype)
        if alignment is not None:
            al = int(alignment)
            if al <= 0 or al & (al - 1) or al > SMEM_ALIGN:
                raise EmulatorError(f"cuda.shared.array: alignment {alignment} must be a power of 2 up to "
                                    f"{SMEM_ALIGN}")
        if shape == 0:          # dynamic shared memory: every call views the launch's one buffer
            res = np.frombuffer(self._dynshared.data, dtype=dtype,
                                count=self._dynshared_size // dtype.itemsize)
        else:
            f = sys._getframe(1)                 # the kernel line (the simulator keys on file + line)
            caller = (f.f_code.co_filename, f.f_lineno)
            with _SHARED_LOCK:
                res = self._allocations.get(caller)
                if res is None:
                    res = _new_shared(shape, dtype)
                    self._allocations[caller] = res
        t = threading.current_thread()
        if hasattr(t, "_manager") and hasattr(t, "thread_id"):
            cta().shared_address(res)
        return res
    array._dsv4_emu = True
    ka.FakeCUDAShared.array = array


_install_shared_array_hook()
