"""Run modes (GPU / simulator / compile-only), kernel wrappers, array movement, the toolchain."""
from .env import GpuInfo, detect_gpu, device_arch, mode
from .kernel import Kernel, device, kernel, set_max_dynamic_shared
from .arrays import BF16, F16, F32, ArrayIO, float_kind, is_contiguous, is_device_array, typestr
from .toolchain import ARCHES, CompileResult, ToolchainError, assemble, compile_kernel, compile_ptx

__all__ = ["GpuInfo", "detect_gpu", "device_arch", "mode", "Kernel", "device", "kernel",
           "set_max_dynamic_shared", "ArrayIO", "is_device_array", "F32", "F16", "BF16",
           "float_kind", "is_contiguous", "typestr", "ARCHES", "CompileResult",
           "ToolchainError", "assemble", "compile_kernel", "compile_ptx"]
