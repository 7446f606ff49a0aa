"""Compile-only mode: any kernel -> PTX for a named arch -> ptxas -> resource report and SASS.

Works on a machine with no GPU and no driver. The toolchain is consistent by construction: the PTX
that Numba's NVVM emits names its release in its header ("Cuda compilation tools, release 13.5"),
and only a ptxas of the same release is used to assemble it (a ptxas older than the NVVM rejects the
newer ``.version``; a newer one would hide that the driver of a real machine may not JIT it). The
pinned wheels in pyproject.toml (nvidia-nvvm, nvidia-cuda-nvcc, nvidia-cuda-nvdisasm, all one
version) provide a matching set; a system CUDA is used only if its release matches.

    res = compile_kernel(my_kernel_pyfunc, (types.float32[::1],), arch="sm_90a")
    res.registers, res.spill_stores, res.shared_bytes, "HGMMA" in res.sass
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

from .env import detect_gpu

ARCHES = {"sm_90a": (9, 0, "a"), "sm_100a": (10, 0, "a")}


class ToolchainError(RuntimeError):
    pass


def _check_arch(arch: str) -> tuple:
    if arch not in ARCHES:
        raise ValueError(f"arch {arch!r} is not supported; use one of {sorted(ARCHES)}")
    return ARCHES[arch]


def _candidate_bin_dirs() -> list[str]:
    dirs = []
    try:  # the pip wheels (nvidia-cuda-nvcc, nvidia-cuda-nvdisasm) put their tools here
        import nvidia
        for root in nvidia.__path__:
            dirs += [os.path.join(root, "cu13", "bin"), os.path.join(root, "cuda_nvcc", "bin")]
    except ImportError:
        pass
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            dirs.append(os.path.join(os.environ[env], "bin"))
    dirs.append("/usr/local/cuda/bin")
    dirs += os.environ.get("PATH", "").split(os.pathsep)
    return [d for d in dict.fromkeys(dirs) if d and os.path.isdir(d)]


@functools.lru_cache(maxsize=None)
def _tool_release(path: str) -> str | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def ptx_release(ptx: str) -> str | None:
    """The CUDA release of the NVVM that wrote this PTX (from its header comment)."""
    m = re.search(r"release (\d+\.\d+)", ptx[:2000])
    return m.group(1) if m else None


def find_tool(name: str, release: str | None) -> str:
    """Path of ``name`` (ptxas, nvdisasm) whose release equals ``release``; ToolchainError if none."""
    seen = []
    for d in _candidate_bin_dirs():
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            rel = _tool_release(path)
            seen.append(f"{path} (release {rel})")
            if release is None or rel == release:
                return path
    raise ToolchainError(
        f"no {name} of CUDA release {release} found (the release of the NVVM that emitted the PTX); "
        f"found: {seen or 'none'}. Install the matching wheel, e.g. "
        f"pip install 'nvidia-cuda-nvcc=={release}.*' (see pyproject.toml)")


def nvvm_release() -> str | None:
    """Release of the NVVM numba-cuda uses, read from the header of a tiny compiled kernel."""
    from numba import types

    def _probe(a):
        a[0] = 1.0
    return ptx_release(compile_ptx(_probe, (types.float32[::1],), "sm_90a"))


@contextlib.contextmanager
def _no_driver_patch(cc):
    """numba-cuda asks the driver for the current device when a kernel calls a device function
    (its own internals do so too). Without a GPU, answer with a stand-in of the target arch; the
    PTX target still comes from ``cc``."""
    if detect_gpu() is not None:
        yield
        return
    from numba.cuda import dispatcher

    class _FakeDevice:
        compute_capability = cc[:2]
        id = 0

    orig = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _FakeDevice()
    try:
        yield
    finally:
        dispatcher.get_current_device = orig


def compile_ptx(pyfunc, sig, arch: str, launch_bounds=None, lineinfo=False) -> str:
    """PTX of ``pyfunc`` (a plain Python kernel function or a runtime.Kernel) for ``arch``."""
    from numba import cuda
    cc = _check_arch(arch)
    pyfunc = getattr(pyfunc, "py_func", pyfunc)
    kw = {"launch_bounds": launch_bounds} if launch_bounds else {}
    with _no_driver_patch(cc):
        ptx, _ = cuda.compile_ptx(pyfunc, sig, cc=cc, lineinfo=lineinfo, **kw)
    return ptx


@dataclass
class CompileResult:
    """What compile-only mode returns for one kernel and arch."""
    arch: str
    ptx: str
    cubin: bytes
    ptxas_log: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    shared_bytes: int
    sass: str | None = None
    tools: dict = field(default_factory=dict)

    def ptx_has(self, instr: str) -> bool:
        return instr in self.ptx

    def summary(self) -> str:
        return (f"{self.arch}: {self.registers} regs, {self.spill_stores}/{self.spill_loads} B spill "
                f"st/ld, {self.stack_bytes} B stack, {self.shared_bytes} B smem")


def _parse_ptxas(log: str) -> dict:
    def grab(pat, default=0):
        m = re.search(pat, log)
        return int(m.group(1)) if m else default
    return dict(
        registers=grab(r"Used (\d+) registers"),
        stack_bytes=grab(r"(\d+) bytes stack frame"),
        spill_stores=grab(r"(\d+) bytes spill stores"),
        spill_loads=grab(r"(\d+) bytes spill loads"),
        shared_bytes=grab(r"(\d+) bytes smem"),
    )


def assemble(ptx: str, arch: str, want_sass: bool = True) -> CompileResult:
    """Assemble PTX with the ptxas of the PTX's own release; report resources (and SASS)."""
    _check_arch(arch)
    rel = ptx_release(ptx)
    ptxas = find_tool("ptxas", rel)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        p = subprocess.run([ptxas, f"-arch={arch}", "-v", src, "-o", out],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise ToolchainError(f"ptxas ({ptxas}) rejected the PTX for {arch}:\n{p.stderr}")
        with open(out, "rb") as f:
            cubin = f.read()
        sass = None
        tools = {"ptxas": ptxas}
        if want_sass:
            try:
                nvdisasm = find_tool("nvdisasm", rel)
                tools["nvdisasm"] = nvdisasm
                sass = subprocess.run([nvdisasm, "-c", out], capture_output=True, text=True,
                                      check=True).stdout
            except (ToolchainError, subprocess.CalledProcessError):
                sass = None  # documented: SASS only where the toolkit gives it
    return CompileResult(arch=arch, ptx=ptx, cubin=cubin, ptxas_log=p.stderr + p.stdout,
                         sass=sass, tools=tools, **_parse_ptxas(p.stderr + p.stdout))


def compile_kernel(pyfunc, sig, arch: str, launch_bounds=None, want_sass=True) -> CompileResult:
    """Build ``pyfunc`` for ``arch`` and assemble it: PTX, resources, SASS. No GPU needed."""
    return assemble(compile_ptx(pyfunc, sig, arch, launch_bounds), arch, want_sass)


def which_tools() -> dict:
    """Paths and releases of the tools compile-only mode would use (for ``info``)."""
    out = {}
    for name in ("ptxas", "nvdisasm"):
        path = None
        for d in _candidate_bin_dirs():
            if os.access(os.path.join(d, name), os.X_OK):
                path = os.path.join(d, name)
                break
        out[name] = (path, _tool_release(path) if path else None)
    return out
