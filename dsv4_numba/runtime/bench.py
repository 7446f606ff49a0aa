"""GPU timing that measures the kernel, not Python: CUDA events around many back-to-back launches
queued behind a spin kernel (so the CPU's launch overhead cannot starve the GPU between them),
median over repeats. Used by ``tools/`` benchmarks and the demo; never by tests.
"""
from __future__ import annotations

import numpy as np

from .kernel import kernel


@kernel
def _spin(out, iters):
    """Keeps the GPU busy for a few ms while the host queues the launches to be timed."""
    x = out[0]
    for _ in range(iters):
        x = x * 0.999999 + 1e-7
    out[0] = x


def time_gpu(fn, reps: int = 20, repeats: int = 7, spin_iters: int = 2_000_000) -> float:
    """Median microseconds per call of ``fn()`` (which launches GPU work), by CUDA events."""
    from numba import cuda
    fn()
    cuda.synchronize()
    scratch = cuda.to_device(np.ones(1, np.float32))
    samples = []
    for _ in range(repeats):
        _spin.launch(1, 1, scratch, spin_iters)
        a, b = cuda.event(), cuda.event()
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        samples.append(cuda.event_elapsed_time(a, b) * 1e3 / reps)
    return float(np.median(samples))


L2_BYTES = 50 * 2 ** 20          # the H100's L2: timed inputs rotate through more than twice this


def rotation(nbytes: int, l2_bytes: int = L2_BYTES) -> int:
    """How many input sets of ``nbytes`` to cycle through so that the working set exceeds twice
    the L2 (1 to 8): each timed call then reads its input from HBM, as a cold call does."""
    return int(min(8, max(1, -(-2 * l2_bytes // max(nbytes, 1)))))


class Cycle:
    """``Cycle(items)()``: the next of ``items``, round and round (the timed calls' input sets)."""

    def __init__(self, items):
        self.items, self.i = items, 0

    def __call__(self):
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    from numba import cuda
    src = cuda.device_array(nbytes, np.uint8)
    dst = cuda.device_array(nbytes, np.uint8)
    us = time_gpu(lambda: dst.copy_to_device(src), reps=5, repeats=5)
    return 2 * nbytes / us / 1e3


def parse_shapes(arg: str, form: str = "TxNxk") -> list[tuple[int, int, int]]:
    """A benchmark's ``--shapes`` option: comma-separated triples ``AxBxC`` of integers."""
    out = []
    for item in arg.split(","):
        try:
            a, b, c = (int(x) for x in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--shapes: {item!r} is not {form} (e.g. 1x65536x512)") from None
        out.append((a, b, c))
    return out
