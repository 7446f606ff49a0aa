"""Where are we running? GPU detection, run mode, and versions — without touching numba's driver.

Three run modes:

* ``gpu``       — a CUDA driver and at least one device: kernels run for real (reference and
                  production, the latter only where its arch matches the device).
* ``sim``       — no GPU, or ``DSV4_MODE=sim``: reference kernels run under Numba's CUDA simulator
                  (pure Python, very slow: keep shapes tiny). Production kernels cannot run.
* compile-only  — not a mode of execution but a service available in both: build any kernel's PTX
                  for a named arch (sm_90a, sm_100a) and assemble it (see ``toolchain``).

GPU detection loads ``libcuda`` through ctypes and asks the driver for devices, so it works before
(and independently of) ``numba.cuda``; the answer is cached.
"""
from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass

MODES = ("auto", "gpu", "sim")


@dataclass(frozen=True)
class GpuInfo:
    name: str
    cc: tuple[int, int]
    sm_count: int
    driver_version: int  # e.g. 13000 for CUDA 13.0

    @property
    def arch(self) -> str:
        """The arch-specific target this device runs ("sm_90a", "sm_100a", ...)."""
        major, minor = self.cc
        return f"sm_{major}{minor}a" if major >= 9 else f"sm_{major}{minor}"


@functools.lru_cache(maxsize=None)
def detect_gpu() -> GpuInfo | None:
    """The first CUDA device, or None when there is no driver or no device."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    if lib.cuInit(0) != 0:
        return None
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return None
    dev = ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(dev), 0)
    name = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(name, 256, dev)

    def attr(code: int) -> int:
        v = ctypes.c_int(0)
        lib.cuDeviceGetAttribute(ctypes.byref(v), code, dev)
        return v.value

    drv = ctypes.c_int(0)
    lib.cuDriverGetVersion(ctypes.byref(drv))
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76, MULTIPROCESSOR_COUNT = 16
    return GpuInfo(name.value.decode(), (attr(75), attr(76)), attr(16), drv.value)


def flag(name: str) -> bool:
    """An on/off environment switch: on unless unset, empty or "0"."""
    return os.environ.get(name, "0") not in ("", "0")


def simulator_forced() -> bool:
    """True when numba itself was put in simulator mode (NUMBA_ENABLE_CUDASIM=1)."""
    return flag("NUMBA_ENABLE_CUDASIM")


def kernel_cache() -> bool:
    """True when ``DSV4_NUMBA_CACHE=1``: GPU kernels are compiled with ``cache=True`` (Numba's on-disk
    cache, in ``NUMBA_CACHE_DIR`` or ``__pycache__``), so another process on the same machine loads
    them instead of compiling again. Numba checks only the stamp (mtime, size) of the file that
    defines the kernel, not of the helpers it inlines from other modules: use it where every
    source's stamp follows its content and its imports' (``tools/stamp_sources.py`` sets that).
    Off by default."""
    return flag("DSV4_NUMBA_CACHE")


def lineinfo() -> bool:
    """True when ``DSV4_LINEINFO=1``: GPU kernels are compiled with ``lineinfo=True`` (source-line
    tables in the cubin, so ``ncu --import-source yes`` / compute-sanitizer attribute SASS to
    Python lines) and without the disk cache (its entries do not record the option)."""
    return flag("DSV4_LINEINFO")


def pdl() -> bool:
    """True unless ``DSV4_PDL=0``: kernels declared ``Kernel(pdl=True)`` (they run
    ``griddepcontrol.wait`` before touching global memory) are launched on the GPU with
    programmatic dependent launch (PDL, sm_90+), so their launch and prologue overlap the tail of
    the kernel before them in the stream. ``DSV4_PDL=0`` launches them plainly (an A/B switch for
    timing). The simulator ignores it."""
    return os.environ.get("DSV4_PDL", "1") not in ("", "0")


def mode() -> str:
    """The run mode in force: "gpu" or "sim".

    Chosen by ``DSV4_MODE`` (``auto`` | ``gpu`` | ``sim``, default ``auto``): ``auto`` is ``gpu``
    when a device exists and ``sim`` otherwise. ``DSV4_MODE=gpu`` without a GPU is an error.
    """
    want = os.environ.get("DSV4_MODE", "auto").strip().lower() or "auto"
    if want not in MODES:
        raise ValueError(f"DSV4_MODE={want!r} is not one of {MODES}")
    if want == "sim" or simulator_forced():
        return "sim"
    gpu = detect_gpu()
    if want == "gpu" and gpu is None:
        raise RuntimeError("DSV4_MODE=gpu but no CUDA device or driver was found; "
                           "unset DSV4_MODE to use the CUDA simulator")
    return "gpu" if gpu is not None else "sim"


def device_arch() -> str | None:
    """The arch of the device kernels run on in this process, or None in simulator mode."""
    if mode() != "gpu":
        return None
    return detect_gpu().arch
