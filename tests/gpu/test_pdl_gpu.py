"""Programmatic dependent launch on the GPU (``runtime.Kernel(pdl=True)``, ``DSV4_PDL``).

A writer kernel lets its dependents be scheduled at once (``griddepcontrol.launch_dependents``),
then sleeps ~2 ms and writes a buffer; a reader launched after it with PDL copies the buffer.
- With ``griddepcontrol.wait`` first, the reader must see every written value (the ordering PDL
  keeps).
- A reader *without* the wait, launched the same way, sees the buffer before the write: proof that
  the launch really overlapped (if it did not, PDL is not in effect and the timing gain claimed
  for it is not there either; the message says so).

Run: ``python -m pytest -q tests/gpu/test_pdl_gpu.py`` on an sm_90+ GPU.
"""
import numpy as np
import pytest
from numba import cuda, uint32

from dsv4_numba import runtime
from dsv4_numba.hw import ops
from dsv4_numba.runtime import kernel

pytestmark = pytest.mark.gpu

N = 4096


@pytest.fixture(scope="module", autouse=True)
def hopper():
    gpu = runtime.detect_gpu()
    if gpu is None or gpu.cc < (9, 0):
        pytest.skip("programmatic dependent launch needs an sm_90+ GPU")


@kernel
def pdl_writer(buf, rounds):
    ops.griddepcontrol_launch_dependents()
    for _ in range(rounds):                      # ~rounds x 1 us
        ops.nanosleep_u32(uint32(1000))
    i = cuda.grid(1)
    if i < buf.size:
        buf[i] = i + 1


@kernel(pdl=True)
def pdl_reader(buf, out):
    ops.griddepcontrol_wait()
    i = cuda.grid(1)
    if i < buf.size:
        out[i] = buf[i]


@kernel(pdl=True)
def pdl_reader_without_wait(buf, out):   # declared pdl=True WRONGLY, on purpose: the control
    i = cuda.grid(1)
    if i < buf.size:
        out[i] = buf[i]


def _run(reader, monkeypatch, pdl="1"):
    monkeypatch.setenv("DSV4_PDL", pdl)
    scratch = cuda.to_device(np.zeros(N, np.int32))   # compile both first: a compile between
    pdl_writer.launch(1, 32, scratch, 0)                # the two launches would let the writer
    reader.launch(1, 32, scratch, scratch)              # end before the reader is launched
    cuda.synchronize()
    buf = cuda.to_device(np.zeros(N, np.int32))
    out = cuda.to_device(np.full(N, -7, np.int32))
    pdl_writer.launch(N // 128, 128, buf, 2000)     # ~2 ms: 200 us was once too short (1 of
    #                                                 4 runs, 14 pytest workers; H100, 2026-11-27)
    reader.launch(N // 128, 128, buf, out)
    cuda.synchronize()
    return out.copy_to_host()


def test_reader_with_wait_sees_the_writers_values(monkeypatch):
    got = _run(pdl_reader, monkeypatch)
    want = np.arange(1, N + 1, dtype=np.int32)
    assert np.array_equal(got, want), f"{np.sum(got != want)} of {N} values read before written"


def test_launch_overlaps_without_the_wait(monkeypatch):
    got = _run(pdl_reader_without_wait, monkeypatch)
    assert (got != -7).all(), "the reader did not run"
    stale = int(np.sum(got == 0))
    assert stale > 0, ("a reader without griddepcontrol.wait saw every value written: the PDL "
                       "launch did not overlap the writer (PDL not in effect on this stack)")
    # and with DSV4_PDL=0 the same (wrong) kernel is ordered by the stream again
    got = _run(pdl_reader_without_wait, monkeypatch, pdl="0")
    assert np.array_equal(got, np.arange(1, N + 1, dtype=np.int32))
