"""The emulator's deadlock rule does not depend on wall time (round 2 of issue 8: a 0.5 s grace fired
falsely on a loaded 2-core CI machine). Each case here stalls one thread for a long time (slow thread
start, slow plain-Python work between polls) while every other thread waits: the old rule ("everyone
waits and nothing changed for 0.5 s") reported a deadlock; the exact rule must not. Real deadlocks
are still reported (tests/test_emu.py, tests/test_emu_misc.py and the late-start case below)."""
import time

import numpy as np
import pytest
from numba import cuda
from numba.cuda.simulator import kernel as simk
from numba.types import uint32, uint64

from dsv4_numba import emu
from dsv4_numba.hw import ops
from dsv4_numba.runtime import kernel
from emu_helpers import one_mbarrier

STALL = 0.8          # seconds a thread is held up: well past the old 0.5 s grace


@pytest.fixture(autouse=True)
def sim_mode(monkeypatch):
    monkeypatch.setenv("DSV4_MODE", "sim")


def stall():
    time.sleep(STALL)      # plain Python inside a simulated kernel: no emulated state changes


@pytest.fixture
def late_last_thread(monkeypatch):
    """Start the block's last thread STALL seconds after the others (what a loaded machine does to a
    384-thread block: the early threads wait on barriers the unstarted producer warp arrives on)."""
    start = simk.BlockThread.start

    def slow_start(self):
        if self.thread_id == int(np.prod(self._manager._block_dim)) - 1:
            time.sleep(STALL)
        start(self)
    monkeypatch.setattr(simk.BlockThread, "start", slow_start)


@kernel
def k_last_arrives(out, spin, arrive):
    bars = cuda.shared.array(1, uint64)
    t = cuda.threadIdx.x
    n = cuda.blockDim.x
    bar = ops.shared_address(bars)
    if t < 32:                                    # warp 0 consumes
        if t == 0:
            ops.mbarrier_init(bar, uint32(1))
            ops.fence_mbarrier_init()
        ops.named_barrier_sync(1, 32)
        if spin:
            while ops.mbarrier_try_wait_parity(bar, uint32(0)) == 0:
                pass
        else:
            ops.mbarrier_wait_parity(bar, uint32(0))
    elif t == n - 1 and arrive:                   # the last thread (started late) produces
        ops.mbarrier_arrive(bar)
    out[t] = uint32(t + 1)


@pytest.mark.parametrize("spin", [0, 1], ids=["wait_parity", "try_wait_loop"])
def test_late_starting_producer_is_not_a_deadlock(late_last_thread, spin):
    out = np.zeros(64, np.uint32)
    t0 = time.monotonic()
    k_last_arrives.launch(1, 64, out, spin, 1)
    assert time.monotonic() - t0 >= STALL
    np.testing.assert_array_equal(out, np.arange(1, 65))


def test_late_starting_thread_that_never_arrives_is_still_a_deadlock(late_last_thread):
    with pytest.raises(emu.EmulatorDeadlock, match="threads 0-31 wait for mbarrier"):
        k_last_arrives.launch(1, 64, np.zeros(64, np.uint32), 0, 0)


@kernel
def k_poll_then_work(out, polls):
    bars = cuda.shared.array(2, uint64)
    t = cuda.threadIdx.x
    full = ops.shared_address(bars)
    if t == 0:
        ops.mbarrier_init(full, uint32(1))
        ops.mbarrier_init(full + uint32(8), uint32(1))
        ops.fence_mbarrier_init()
    cuda.syncthreads()
    if t == 0:
        # a poller that looks, finds nothing, does slow other work, and only then produces
        for _ in range(polls):
            ops.mbarrier_try_wait_parity(full + uint32(8), uint32(0))
        stall()
        ops.mbarrier_arrive(full)
    else:
        ops.mbarrier_wait_parity(full, uint32(0))
    out[t] = uint32(t + 1)


@pytest.mark.parametrize("polls", [1, 3])
def test_poller_doing_slow_work_between_polls_is_not_a_deadlock(polls):
    out = np.zeros(32, np.uint32)
    k_poll_then_work.launch(1, 32, out, polls)
    np.testing.assert_array_equal(out, np.arange(1, 33))


@kernel
def k_slow_producer(out):
    bars = cuda.shared.array(1, uint64)
    t = cuda.threadIdx.x
    bar = one_mbarrier(bars, True)
    if t == 0:
        stall()
        ops.mbarrier_arrive(bar)
    while ops.mbarrier_try_wait_parity(bar, uint32(0)) == 0:
        pass
    ops.named_barrier_sync(1, 32)
    out[t] = uint32(t + 1)


def test_slow_producer_with_spinning_consumers_is_not_a_deadlock():
    out = np.zeros(32, np.uint32)
    k_slow_producer.launch(1, 32, out)
    np.testing.assert_array_equal(out, np.arange(1, 33))


def test_rule_has_no_wall_clock_grace():
    from dsv4_numba.emu import state
    assert not hasattr(state, "DEADLOCK_GRACE_S")
    assert state.STALL_S >= 300          # the last-resort timeout is generous


@kernel
def k_syncthreads_vs_mbarrier(out):
    bars = cuda.shared.array(1, uint64)
    t = cuda.threadIdx.x
    bar = one_mbarrier(bars, True)
    if t >= 32:
        ops.mbarrier_wait_parity(bar, uint32(0))  # warp 1: waits for warp 0's arrive...
    else:
        stall()
    cuda.syncthreads()                            # ...which warp 0 only makes after this syncthreads
    if t == 0:
        ops.mbarrier_arrive(bar)
    out[t] = uint32(t + 1)


def test_syncthreads_against_an_mbarrier_wait_is_a_deadlock():
    """Warp 0 parked in the simulator's syncthreads (which releases only when every live thread is
    there), warp 1 in an emulator mbarrier wait that only warp 0 could complete after it: reported
    (the shape of the sm_100a indexer hang's snapshot, there not a deadlock: its lanes had been
    released), with the syncthreads threads named, after warp 0's slow work, not before."""
    t0 = time.monotonic()
    with pytest.raises(emu.EmulatorDeadlock) as ei:
        k_syncthreads_vs_mbarrier.launch(1, 64, np.zeros(64, np.uint32))
    assert time.monotonic() - t0 >= STALL
    msg = str(ei.value)
    assert "threads 0-31 wait for syncthreads / bar.sync" in msg
    assert "threads 32-63 wait for mbarrier" in msg and "pending arrivals 1 of 1" in msg
