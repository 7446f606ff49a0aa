"""Arrays in and out: NumPy in -> NumPy out; device arrays in -> device arrays out.

Anything exposing ``__cuda_array_interface__`` (numba device arrays, CuPy, PyTorch) is taken as a
device array without a copy. bfloat16 has no ``__cuda_array_interface__`` type code; device
bfloat16 data is passed as its uint16 bit pattern (``t.view(torch.int16)``) — see each stage.
In simulator mode everything is NumPy.
"""
from __future__ import annotations

import numpy as np

from . import env


def is_device_array(a) -> bool:
    return hasattr(a, "__cuda_array_interface__")


class ArrayIO:
    """Collects a call's inputs; moves them to the device once and results back in the caller's kind.

    Results come back as NumPy when any input was NumPy, else they stay on the device.
    """

    def __init__(self, *arrays):
        self.on_device = bool(arrays) and all(is_device_array(a) for a in arrays if a is not None)
        self.gpu = env.mode() == "gpu"
        if self.on_device and not self.gpu:
            raise RuntimeError("device arrays were passed but the run mode is 'sim' (no GPU or "
                               "DSV4_MODE=sim); pass NumPy arrays instead")

    def to_kernel(self, a):
        """The form a kernel launch takes: a device array on the GPU, NumPy under the simulator."""
        if a is None:
            return None
        if not self.gpu:
            return np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a
        from numba import cuda
        if is_device_array(a):
            return cuda.as_cuda_array(a)
        return cuda.to_device(a)

    def empty(self, shape, dtype):
        if not self.gpu:
            return np.empty(shape, dtype)
        from numba import cuda
        return cuda.device_array(shape, dtype)

    def result(self, a, view_dtype=None):
        """Back to the caller: NumPy (optionally re-viewed, e.g. uint16 -> bfloat16) or device."""
        if self.on_device:
            return a
        host = a.copy_to_host() if self.gpu else a
        return host.view(view_dtype) if view_dtype is not None else host
