"""Device helpers shared by the emulator test kernels."""
from numba import cuda, uint32

from dsv4_numba.hw import ops
from dsv4_numba.runtime import device


@device
def one_mbarrier(bars, fence):
    """The test kernels' usual start: thread 0 initialises the one-arrival mbarrier bars[0] (then
    fence.mbarrier_init when ``fence``), the block syncs; returns its shared address."""
    bar = ops.shared_address(bars)
    if cuda.threadIdx.x == 0:
        ops.mbarrier_init(bar, uint32(1))
        if fence:
            ops.fence_mbarrier_init()
    cuda.syncthreads()
    return bar
