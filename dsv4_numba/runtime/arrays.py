"""Arrays in and out: NumPy in -> NumPy out; device arrays in -> device arrays out.

Anything exposing ``__cuda_array_interface__`` (numba device arrays, CuPy, PyTorch) is taken as a
device array without a copy. bfloat16 has no ``__cuda_array_interface__`` type code; device
bfloat16 data is passed as its uint16 bit pattern (``t.view(torch.int16)``) — see each stage.
In simulator mode everything is NumPy.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from . import env

# Element kinds as kernels see them (a kernel argument, so one kernel serves every dtype).
F32, F16, BF16 = 0, 1, 2


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


def typestr(a) -> np.dtype:
    """The dtype of a NumPy or device array."""
    if is_device_array(a):
        return np.dtype(a.__cuda_array_interface__["typestr"])
    return np.asarray(a).dtype


def is_contiguous(a) -> bool:
    """C-contiguity of a NumPy or device array (unit axes may have any stride)."""
    if not is_device_array(a):
        return a.flags.c_contiguous
    cai = a.__cuda_array_interface__
    if cai.get("strides") is None:
        return True
    expect, item = [], np.dtype(cai["typestr"]).itemsize
    for d in reversed(cai["shape"]):
        expect.append(item)
        item *= d
    return all(s == e or d == 1 for s, e, d in zip(cai["strides"], reversed(expect), cai["shape"]))


def float_kind(x, what: str, allow_f16: bool = False):
    """(kind, host_bf16) of a floating input; TypeError saying what to pass instead.

    float32 -> F32; float16 -> F16 (only where ``allow_f16``); ml_dtypes.bfloat16 on the host ->
    BF16 (host_bf16 True: pass ``x.view(np.uint16)`` to kernels); a uint16/int16 device array ->
    BF16 (device bfloat16 travels as its bit pattern).
    """
    dt = typestr(x)
    if dt == np.float32:
        return F32, False
    if allow_f16 and dt == np.float16:
        return F16, False
    if dt == np.dtype(ml_dtypes.bfloat16) and not is_device_array(x):
        return BF16, True
    if is_device_array(x) and dt in (np.dtype(np.uint16), np.dtype(np.int16)):
        return BF16, False
    names = "float32, float16 or bfloat16" if allow_f16 else "float32 or bfloat16"
    hint = (" (a device bfloat16 tensor: pass t.view(torch.int16) -- its bits)"
            if is_device_array(x)
            else "; convert with x.astype(np.float32) or x.astype(ml_dtypes.bfloat16)")
    raise TypeError(f"{what} must be {names}, got {dt}{hint}")


def check_lengths(lengths, lead: tuple, n: int, what: str = "x"):
    """Validate per-row valid lengths (before any launch); returns them ready for a kernel.

    NumPy: integers of shape ``lead`` (= ``what``.shape[:-1]) or (rows,), each in [0, n] ->
    contiguous int32 (rows,). Device: a contiguous int32 array of ``rows`` elements, taken as is
    (values are not checked there: that would need a synchronisation; kernels clamp them).
    """
    rows = int(np.prod(lead))
    if is_device_array(lengths):
        if typestr(lengths) != np.int32 or int(np.prod(lengths.shape)) != rows \
                or not is_contiguous(lengths):
            raise ValueError(f"device lengths must be a contiguous int32 array of {rows} elements "
                             f"(one per row of {what}.shape[:-1] = {lead}); got {typestr(lengths)} "
                             f"{tuple(lengths.shape)}")
        return lengths
    lengths = np.asarray(lengths)
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got {lengths.dtype}")
    if lengths.shape not in (lead, (rows,)):
        raise ValueError(f"lengths must have shape {lead} ({what}.shape[:-1]) or ({rows},), "
                         f"got {lengths.shape}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > n):
        raise ValueError(f"lengths must lie in [0, {n}] (the last axis), got values in "
                         f"[{lengths.min()}, {lengths.max()}]")
    return np.ascontiguousarray(lengths.reshape(-1), dtype=np.int32)
