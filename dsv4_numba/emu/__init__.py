"""A semantic emulator of the sm_90a asynchronous machinery (shared memory, mbarrier, TMA, wgmma) under
Numba's CUDA simulator, so production kernels written against ``dsv4_numba.hw.ops`` run on a CPU
(issue 8): wgmma (SS/RS, bf16/e4m3, every swizzle, K- and MN-major), tcgen05 / Tensor Memory
(alloc, mma kind::f16/f8f6f4 SS/TS, ld/st shapes, commit) and diagnostics the hardware never gives.

Use: write the kernel with ``from dsv4_numba.hw import ops`` and launch it through
``dsv4_numba.runtime.kernel(...).launch`` in simulator mode (``DSV4_MODE=sim`` or no GPU): the
launcher swaps the kernel module's ``ops`` for ``dsv4_numba.emu.ops``. Build tensor maps with
``emu.tensor_map(array, box, swizzle, dtype=...)`` (same arguments and validation as
``hw.tma.TensorMapSpec.from_array``) and wrap tensors the TMA writes with ``emu.to_device`` so the
launcher does not copy them. See ``ops`` for what is covered and the timing model, ``state`` for the
machine state and the deadlock detector.
"""
from .state import (EmulatorDeadlock, EmulatorError, cta, last_cta, tensor_map, to_device)  # noqa: F401
from .ops import NotEmulated, coverage  # noqa: F401
from .tmem import tmem_region, tmem_regions, tmem_regions_clear  # noqa: F401

__all__ = ["EmulatorDeadlock", "EmulatorError", "NotEmulated", "coverage", "cta", "last_cta", "tensor_map",
           "tmem_region", "tmem_regions", "tmem_regions_clear", "to_device"]
