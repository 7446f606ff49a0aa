"""Thread races of the emulator under Numba's CUDA simulator (one Python thread per CUDA thread).

``cuda.shared.array``: the simulator's allocation (find the call site's array, else make and store
one) had no lock, so two threads of a block reaching the line together could each make an array and
one would work on a private copy of a "shared" array. The emulator's hook (emu.state) now does the
lookup, creation and store under one lock. The race is forced here: array creation is made slow (a
sleep, which lets the other threads run), so without the lock every thread would make its own."""
import threading
import time

import numpy as np
import pytest
from numba import cuda
from numba.types import int32, uint32, uint64

from dsv4_numba import emu
from dsv4_numba.emu import state
from dsv4_numba.hw import ops
from dsv4_numba.runtime import device, kernel
from emu_helpers import one_mbarrier


@pytest.fixture(autouse=True)
def sim_mode(monkeypatch):
    monkeypatch.setenv("DSV4_MODE", "sim")


@pytest.fixture
def slow_shared_alloc(monkeypatch):
    """Creating a shared array takes 50 ms (the GIL is released meanwhile); counts the creations."""
    made = []
    new = state._new_shared

    def slow(shape, dtype):
        time.sleep(0.05)
        a = new(shape, dtype)
        made.append(a)
        return a
    monkeypatch.setattr(state, "_new_shared", slow)
    return made


@kernel
def k_shared_identity(addr, got):
    sm = cuda.shared.array(64, int32)
    t = cuda.threadIdx.x
    n = cuda.blockDim.x
    addr[t] = ops.shared_address(sm)
    sm[t] = int32(t + 1)
    cuda.syncthreads()
    got[t] = sm[(t + 1) % n]          # another thread's store: wrong on a private copy


def test_threads_of_a_block_get_one_shared_array(slow_shared_alloc):
    addr = np.zeros(64, np.uint32)
    got = np.zeros(64, np.int32)
    k_shared_identity.launch(1, 64, addr, got)
    assert len(slow_shared_alloc) == 1, f"{len(slow_shared_alloc)} arrays made for one shared array"
    assert (addr == addr[0]).all(), f"shared addresses differ across threads: {sorted(set(addr.tolist()))}"
    np.testing.assert_array_equal(got, (np.arange(64) + 1) % 64 + 1)


@kernel
def k_shared_aligned(addr, got):
    sm = cuda.shared.array(32, uint32, alignment=128)
    t = cuda.threadIdx.x
    addr[t] = ops.shared_address(sm)
    sm[t] = uint32(3 * t)
    cuda.syncthreads()
    got[t] = sm[31 - t]


def test_aligned_shared_array_is_shared_and_aligned(slow_shared_alloc):
    addr = np.zeros(32, np.uint32)
    got = np.zeros(32, np.uint32)
    k_shared_aligned.launch(1, 32, addr, got)
    assert len(slow_shared_alloc) == 1
    assert (addr == addr[0]).all() and addr[0] % 128 == 0
    np.testing.assert_array_equal(got, 3 * (31 - np.arange(32)))


@kernel
def k_shared_bad_alignment(out):
    sm = cuda.shared.array(4, uint32, alignment=24)
    out[0] = sm[0]


def test_shared_array_alignment_must_be_a_power_of_two():
    with pytest.raises(emu.EmulatorError, match="alignment 24 must be a power of 2"):
        k_shared_bad_alignment.launch(1, 32, np.zeros(1, np.uint32))


@kernel
def k_dynamic_shared(addr, got):
    dyn = cuda.shared.array(0, uint32)
    t = cuda.threadIdx.x
    addr[t] = ops.shared_address(dyn)
    dyn[t] = uint32(t + 7)
    cuda.syncthreads()
    got[t] = dyn[(t + 5) % 32]


def test_dynamic_shared_memory_is_one_buffer():
    addr = np.zeros(32, np.uint32)
    got = np.zeros(32, np.uint32)
    k_dynamic_shared.launch(1, 32, addr, got, shared_bytes=256)
    assert (addr == addr[0]).all()
    np.testing.assert_array_equal(got, (np.arange(32) + 5) % 32 + 7)


# A device function (sim twin) whose module is not the kernel's: the simulator swaps that module's
# `cuda` for the fake one on each call. The twin waits until every thread is inside, then each thread
# leaves after a delay growing with its index: the first one out used to put the real numba.cuda
# back while the others still ran.
_TWIN_SRC = '''
def tid_twin():
    t = cuda.threadIdx.x
    cuda.syncthreads()
    time.sleep(0.003 * t)
    return cuda.threadIdx.x
'''
_twin_globals = {"cuda": cuda, "time": time}
exec(compile(_TWIN_SRC, "<tid_twin>", "exec"), _twin_globals)    # noqa: S102 - its own module globals


def _tid_gpu():
    return cuda.threadIdx.x


tid_twin = device(_tid_gpu, sim=_twin_globals["tid_twin"])


@kernel
def k_twin_from_another_module(out):
    t = cuda.threadIdx.x
    out[t] = tid_twin()


def test_device_twin_of_another_module_sees_the_fake_cuda_in_every_thread():
    out = np.zeros(32, np.int32)
    k_twin_from_another_module.launch(1, 32, out)
    np.testing.assert_array_equal(out, np.arange(32))
    assert _twin_globals["cuda"] is cuda          # the real module is back after the launch


# The block manager: the simulator's polled the threads in a tight loop holding the GIL, which with
# the emulator's state lock made a lock convoy (the sm_100a indexer's "hang": >10 min instead of
# ~3 s, progressing). The emulator's manager sleeps until a syncthreads arrival or a thread end.
@kernel
def k_one_slow_thread(out):
    t = cuda.threadIdx.x
    if t == 0:
        time.sleep(0.4)                          # plain Python: the others wait in syncthreads
    cuda.syncthreads()
    out[t] = int32(t + 1)


def test_block_manager_does_not_spin_while_threads_work():
    out = np.zeros(64, np.int32)
    c0, w0 = time.thread_time(), time.monotonic()
    k_one_slow_thread.launch(2, 64, out)
    cpu, wall = time.thread_time() - c0, time.monotonic() - w0
    np.testing.assert_array_equal(out, np.arange(1, 65))
    assert wall >= 0.8
    assert cpu < 0.25 * wall, f"the launching thread used {cpu:.2f} s of CPU in {wall:.2f} s"


@kernel
def k_fail_while_others_parked(out):
    bars = cuda.shared.array(1, uint64)
    t = cuda.threadIdx.x
    bar = ops.shared_address(bars)
    if t == 0:
        time.sleep(0.2)                          # the others are parked in syncthreads by now
        ops.mbarrier_arrive(bar)                 # never initialised: EmulatorError, thread 0 ends
    cuda.syncthreads()
    out[t] = int32(1)                            # must not run: the block failed


def test_error_of_an_ended_thread_aborts_the_parked_ones():
    """The simulator looked only at live threads' errors: a thread that failed and ended between two
    polls was dropped, and the others' syncthreads released as if nothing happened."""
    out = np.zeros(64, np.int32)
    with pytest.raises(emu.EmulatorError, match="no initialised mbarrier"):
        k_fail_while_others_parked.launch(1, 64, emu.to_device(out))     # no copy: stores seen
    time.sleep(0.1)                              # let the aborted threads end
    assert not out.any()


@pytest.fixture
def slow_release(monkeypatch):
    """The block manager's release of a syncthreads takes 5 ms per thread (a preempted release loop,
    what a loaded machine does): the threads released first run while the others are still parked."""
    from numba.cuda.simulator import kernel as simk

    class SlowEvent(threading.Event):
        def set(self):
            super().set()
            if threading.current_thread() is threading.main_thread():
                time.sleep(0.005)            # the released thread runs on meanwhile
    start = simk.BlockThread.start

    def start_slow(self):
        self.syncthreads_event = SlowEvent()
        start(self)
    monkeypatch.setattr(simk.BlockThread, "start", start_slow)


@kernel
def k_wait_on_the_later_released(out):
    bars = cuda.shared.array(1, uint64)
    t = cuda.threadIdx.x
    bar = one_mbarrier(bars, False)
    if t < 32:
        ops.mbarrier_wait_parity(bar, uint32(0))     # released first: waits on warp 1...
    elif t == 32:
        ops.mbarrier_arrive(bar)                     # ...released later
    out[t] = int32(t + 1)


def test_a_half_done_syncthreads_release_is_not_a_deadlock(slow_release):
    """The sm_100a indexer case that failed once after the hang fix (threads 0-127 and 128 waiting
    on mbarriers, 129-191 'in syncthreads'): the release is made under the state lock now."""
    out = np.zeros(64, np.int32)
    k_wait_on_the_later_released.launch(1, 64, out)
    np.testing.assert_array_equal(out, np.arange(1, 65))
