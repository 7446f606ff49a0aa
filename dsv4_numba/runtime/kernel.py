"""One kernel object, three ways to use it: run on the GPU, run under the simulator, compile only.

Kernels are written as plain Python functions (``from numba import cuda`` in their module) and wrapped
once::

    @kernel
    def scale(x, out): ...
    scale.launch(grid, block, x, out)           # GPU (numba.cuda.jit) or simulator, per run mode
    scale.compile((types.float32[::1],)*2, "sm_90a")   # PTX + ptxas report, no GPU needed

Helpers called from kernels are wrapped with ``@device``: on the GPU they are Numba device functions
inlined at the Numba-IR level (``inline="always"``, which also keeps compile-only mode free of driver
lookups); under the simulator the launcher swaps them for simulator device functions, so one source
serves both. Inline-PTX intrinsics have no simulator form; kernels that use them are production
kernels and run on hardware only.
"""
from __future__ import annotations

import contextlib
import importlib
import sys

from . import env, toolchain

# kernel __qualname__ -> its compile-time cluster shape (Kernel(cluster=...)); read when Numba sets the
# launch bounds of a kernel it compiles (_install_cluster_annotation)
_CLUSTER: dict[str, tuple] = {}

# id(real device dispatcher) -> (the dispatcher, its simulator device function). The dispatcher is
# kept (alive, so its id is never reused by another object) and compared by identity (_twin_of).
_SIM_TWIN: dict[int, tuple] = {}


def _twin_of(v):
    """The simulator twin of ``v`` if ``v`` is a @device dispatcher, else None."""
    entry = _SIM_TWIN.get(id(v))
    return entry[1] if entry is not None and entry[0] is v else None


def device(fn=None, *, sim=None):
    """Mark ``fn`` as a device helper usable from kernels in both GPU and simulator mode.

    ``sim``: a different Python body for the simulator, for helpers whose GPU body uses what the
    simulator lacks (inline PTX, warp shuffles); it must compute the same function.
    """
    if fn is None:
        return lambda f: device(f, sim=sim)
    from numba import cuda
    if env.simulator_forced():      # numba's own simulator mode: cuda.jit makes simulator functions
        return cuda.jit(device=True)(sim or fn)
    _install_fresh_ir_inlining()
    real = cuda.jit(device=True, inline="always")(fn)
    from numba.cuda.simulator.kernel import FakeCUDAKernel
    _SIM_TWIN[id(real)] = (real, FakeCUDAKernel(sim or fn, device=True))
    return real


def _functions_reachable(fn, seen):
    """fn and every @device helper it (transitively) references through its globals."""
    if id(fn) in seen:
        return
    seen[id(fn)] = fn
    for v in list(fn.__globals__.values()):
        if _twin_of(v) is not None:
            _functions_reachable(v.py_func, seen)


@contextlib.contextmanager
def _simulator_globals(fn):
    swapped = []
    seen: dict = {}
    _functions_reachable(fn, seen)
    hw_ops = sys.modules.get("dsv4_numba.hw.ops")
    for f in seen.values():
        g = f.__globals__
        orig = {k: v for k, v in g.items() if _twin_of(v) is not None}
        sub = {k: _twin_of(v) for k, v in orig.items()}
        if hw_ops is not None and g.get("ops") is hw_ops:   # production kernels: the emulator's ops
            from ..emu import ops as emu_ops
            orig["ops"], sub["ops"] = hw_ops, emu_ops
        g.update(sub)
        swapped.append((g, orig))
    try:
        yield
    finally:
        for g, orig in swapped:
            g.update(orig)


def _install_cluster_annotation():
    """Numba has no cluster-shape option (only ``launch_bounds``' max blocks a cluster). NVVM takes
    the shape as the kernel annotations ``cluster_dim_x/y/z`` (NVVM IR spec, "Global property
    annotation"), which become PTX's ``.reqnctapercluster`` (sm_90+): a plain launch then runs the
    grid as clusters of that shape, so the CTAs of one cluster are co-scheduled and share
    ``barrier.cluster``. Added here, in the one place Numba annotates a kernel it compiles
    (``nvvm.set_launch_bounds``, called for every kernel), for kernels registered in _CLUSTER;
    matched by the length-prefixed qualname Numba mangles into the kernel's name."""
    from llvmlite import ir
    from numba.cuda.cudadrv import nvvm
    if getattr(nvvm.set_launch_bounds, "_dsv4_cluster", False):
        return
    orig = nvvm.set_launch_bounds

    def set_launch_bounds(kern, launch_bounds):
        orig(kern, launch_bounds)
        dims = next((d for q, d in _CLUSTER.items() if f"{len(q)}{q}" in kern.name), None)
        if dims is None:
            return
        module = kern.module
        ann = module.add_named_metadata("nvvm.annotations")
        for axis, v in zip("xyz", dims):
            ann.add(module.add_metadata((kern, ir.MetaDataString(module, f"cluster_dim_{axis}"),
                                         ir.Constant(ir.IntType(32), v))))

    set_launch_bounds._dsv4_cluster = True
    nvvm.set_launch_bounds = set_launch_bounds


def _install_fresh_ir_inlining():
    """Skip numba-cuda's two defensive deep copies of a callee IR it has just built.

    ``@device`` helpers are inlined at the Numba-IR level: for every call site,
    ``InlineWorker.inline_function`` runs the untyped pipeline on the callee (a fresh IR, its own
    callees already inlined) and hands it to ``inline_ir``, which deep-copies it block by block
    twice (once to mutate, once to return an unmutated copy that every caller discards). Each
    block's copy also copies the whole scope, so the cost grows with blocks x variables: profiled
    here (2026-11-27, numba-cuda 0.30.4), 85 % of the 6-minute PTX build of the cluster top-k
    kernel was ``copy.deepcopy``. Known upstream: NVIDIA/numba-cuda issue #688 and PR #689 (open
    at the time) drop the same copies. Here each block of the fresh IR answers ``deepcopy`` with
    itself for the length of that one ``inline_ir`` call (an instance ``__deepcopy__``, removed
    again right after): nothing else is copied differently, and the IR is never reused, so the
    generated code is the same (the PTX of the cluster top-k kernel compared byte for byte). Applied
    only where ``inline_ir`` still has the copies this relies on (numba-cuda 0.30); elsewhere it
    is left off and ``INLINE_PATCH`` says why (``python -m dsv4_numba info`` prints it).
    ``DSV4_FAST_INLINE=0`` leaves numba-cuda as it is."""
    import inspect
    import os
    from numba.cuda.core import inline_closurecall as icc
    worker = icc.InlineWorker
    if INLINE_PATCH["state"] != _INLINE_NOT_YET:  # decided at the first @device helper: on,
        return                                    # off or not applicable (no source read again)
    if os.environ.get("DSV4_FAST_INLINE", "1") == "0":
        INLINE_PATCH["state"] = "off (DSV4_FAST_INLINE=0)"
        return
    try:
        src = inspect.getsource(worker.inline_ir)
    except (OSError, TypeError) as e:
        INLINE_PATCH["state"] = f"not applied (no source of InlineWorker.inline_ir: {e})"
        return
    if "copy.deepcopy(block)" not in src or "callee_ir_original = copy_ir(callee_ir)" not in src:
        INLINE_PATCH["state"] = "not applied (this numba-cuda's InlineWorker.inline_ir differs)"
        return

    def inline_function(self, caller_ir, block, i, function, arg_typs=None):
        callee_ir = self.run_untyped_passes(function)        # fresh: referenced nowhere else
        blocks = list(callee_ir.blocks.values())
        for b in blocks:
            b.__deepcopy__ = (lambda b: lambda memo: b)(b)
        try:
            return self.inline_ir(caller_ir, block, i, callee_ir, function.__code__.co_freevars,
                                  arg_typs=arg_typs)
        finally:
            for b in blocks:
                del b.__deepcopy__

    INLINE_PATCH["original"] = worker.inline_function
    worker.inline_function = inline_function
    INLINE_PATCH["state"] = "on (numba-cuda's copies of fresh callee IR skipped)"


# whether _install_fresh_ir_inlining applies, and if not why
_INLINE_NOT_YET = "not installed yet (no @device helper made for the GPU)"
INLINE_PATCH = {"state": _INLINE_NOT_YET}


class Kernel:
    """A kernel usable in every run mode. ``launch_bounds`` is passed to the GPU compile;
    ``cluster`` (an int or up to 3 ints, sm_90+) makes it a cluster kernel: compiled with that
    cluster shape, launched as clusters (the grid a multiple of it). Cluster kernels run on the GPU
    only (the simulator has no clusters) and are compiled under a name unique to their shape.
    ``pdl=True`` declares that the kernel runs ``ops.griddepcontrol_wait()`` before its first
    access to global memory: the GPU launch then uses programmatic dependent launch (sm_90+, on
    unless ``DSV4_PDL=0``; ``_launch_pdl``), so its launch overlaps the kernel before it. Never set
    it on a kernel without that wait: it would read its inputs while they are being written."""

    def __init__(self, fn, launch_bounds=None, cluster=None, pdl=False):
        self.py_func = fn
        self.launch_bounds = launch_bounds
        self.pdl = bool(pdl)
        self.cluster = None
        if cluster is not None:
            dims = (cluster,) if isinstance(cluster, int) else tuple(cluster)
            self.cluster = dims + (1,) * (3 - len(dims))
            if len(self.cluster) != 3 or min(self.cluster) < 1:
                raise ValueError(f"cluster: 1-3 positive ints, got {cluster!r}")
            _CLUSTER[fn.__qualname__] = self.cluster
            _install_cluster_annotation()
        self._gpu = None
        self._smem_raised = {}             # signature -> the dynamic-smem limit it was raised to
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    @property
    def gpu(self):
        """The numba.cuda dispatcher (compiled lazily at first launch); with Numba's disk cache
        when ``DSV4_NUMBA_CACHE=1`` (``env.kernel_cache``)."""
        if self._gpu is None:
            self._gpu = self._jit(env.kernel_cache())
        return self._gpu

    def _jit(self, cache: bool):
        from numba import cuda
        kw = {"launch_bounds": self.launch_bounds} if self.launch_bounds else {}
        if env.lineinfo():                # profiling build (env.lineinfo): never from the cache
            kw["lineinfo"], cache = True, False
        if cache:
            try:
                return cuda.jit(cache=True, **kw)(self.py_func)
            except RuntimeError as e:     # no source file to key the cache on (generated kernels)
                import warnings
                warnings.warn(f"{self.__name__}: Numba's disk cache unavailable ({e}); "
                              "compiling uncached")
        return cuda.jit(**kw)(self.py_func)

    def launch(self, grid, block, *args, shared_bytes=0, stream=0, pdl=None):
        """Launch on the GPU (PDL where the kernel is declared so, unless ``pdl=False`` for this
        launch: the caller's choice per problem; it can only turn PDL off) or the simulator."""
        if env.mode() == "gpu":
            from numba.cuda import config
            config.CUDA_LOW_OCCUPANCY_WARNINGS = 0   # small problems get small grids, by design
            if self.pdl and pdl is not False and env.pdl() and \
                    _launch_pdl(self.gpu, grid, block, stream, shared_bytes, args):
                return
            self.gpu[grid, block, stream, shared_bytes](*args)
            return
        if self.cluster is not None:
            raise RuntimeError(f"{self.__name__} is a cluster kernel (cluster {self.cluster}): it "
                               "runs on an sm_90+ GPU only, not under the CUDA simulator")
        from numba.cuda.simulator.kernel import FakeCUDAKernel

        # importing emu.state installs the emulator's block manager (event-driven, no GIL-holding
        # poll loop) and its locked cuda.shared.array: one rule for every simulated kernel,
        # whether or not it uses the emulated PTX ops
        importlib.import_module("dsv4_numba.emu.state")
        sim = FakeCUDAKernel(self.py_func, device=False)
        with _simulator_globals(self.py_func):
            sim[grid, block, 0, shared_bytes](*args)

    def reserve_dynamic_shared(self, args, nbytes: int) -> None:
        """GPU only: raise the dynamic shared-memory limit (above 48 KB) of the overload these launch
        arguments select (their exact types: an 'A'-layout view selects another overload than a
        'C' one), compiling it first if needed; only ever raised (a size at or below the one set
        returns at once: lowering it would fail a later launch of the larger size). A cluster
        kernel of more than 8 CTAs a cluster (H100: up to 16, "non-portable") is also allowed that
        size."""
        disp = self.gpu
        sig = tuple(disp.typeof_pyval(a) for a in args)
        if self._smem_raised.get(sig, -1) >= nbytes:   # (never lowered: a launch of an earlier,
            return                                       # larger size must still be allowed)
        if sig not in disp.overloads:
            disp.compile(sig)
        set_max_dynamic_shared(disp, sig, nbytes)
        if self.cluster is not None and self.cluster[0] * self.cluster[1] * self.cluster[2] > 8:
            set_kernel_attribute(disp, sig, "CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED", 1)
        self._smem_raised[sig] = nbytes

    def compile(self, sig, arch: str, want_sass: bool = True) -> toolchain.CompileResult:
        return toolchain.compile_kernel(self.py_func, sig, arch, self.launch_bounds, want_sass)

    def ptx(self, sig, arch: str) -> str:
        return toolchain.compile_ptx(self.py_func, sig, arch, self.launch_bounds)


def kernel(fn=None, *, launch_bounds=None, cluster=None, pdl=False):
    """Decorator: wrap a plain Python kernel function as a ``Kernel``."""
    if fn is None:
        return lambda f: Kernel(f, launch_bounds, cluster, pdl)
    return Kernel(fn, launch_bounds, cluster, pdl)


_PDL_STATE = {"ok": None}


def _launch_pdl(disp, grid, block, stream, shared_bytes, args) -> bool:
    """Launch ``disp`` with programmatic dependent launch (CUDA's programmatic stream serialization,
    sm_90+): the grid may start while the kernel before it in the stream finishes; the kernel's
    ``griddepcontrol.wait`` holds every access to memory until that kernel has completed and its
    writes are visible. False (after one warning naming the cause) where this numba-cuda / cuda.core
    cannot launch so, or the GPU (device 0, as everywhere in the package) is older than sm_90: the
    caller then launches plainly, which is correct, only without the overlap. Errors of the launch
    itself (argument types, a rejected launch) propagate as a plain launch's would: no fallback.

    numba-cuda 0.30 launches through ``cuda.core.launch`` with a ``LaunchConfig`` that it builds
    without the PDL flag; this repeats its steps (the overload for these arguments, each argument
    prepared by the overload's ``_prepare_args``) with the flag set. Private numba-cuda API, wrapped
    here in one place as ``set_kernel_attribute`` is."""
    if _PDL_STATE["ok"] is None:              # the capability, probed once
        try:
            from cuda.core import LaunchConfig
            if env.detect_gpu().cc < (9, 0):
                raise RuntimeError("the GPU is older than sm_90")
            LaunchConfig(grid=1, block=1, programmatic_stream_serialization=True)
            _PDL_STATE["ok"] = True
        except Exception as e:  # noqa: BLE001 - any cause: say it once, then launch plainly
            import warnings
            _PDL_STATE["ok"] = False
            warnings.warn(f"programmatic dependent launch unavailable ({type(e).__name__}: {e}); "
                          "kernels declared pdl=True are launched without it (correct, no "
                          "overlap)")
    if not _PDL_STATE["ok"]:
        return False
    grid = tuple(grid) if isinstance(grid, list) else grid      # (numba takes lists too)
    block = tuple(block) if isinstance(block, list) else block
    from cuda.core import LaunchConfig, launch
    from numba.cuda.cudadrv import driver
    sig = tuple(disp.typeof_pyval(a) for a in args)      # errors from here on are the launch's
    kern = disp.overloads.get(sig) or disp.compile(sig)  # own (as numba-cuda raises them)
    cs = driver._to_core_stream(stream)
    retr, kargs = [], []
    for t, v in zip(kern.argument_types, args):
        kern._prepare_args(t, v, cs, retr, kargs)
    launch(cs, LaunchConfig(grid=grid, block=block, shmem_size=shared_bytes,
                            programmatic_stream_serialization=True),
           kern._codelibrary.get_cufunc().kernel, *kargs)
    for wb in retr:
        wb()
    return True


def set_kernel_attribute(dispatcher, sig, attribute: str, value: int) -> None:
    """Set a ``CUfunction_attribute`` of a compiled overload (GPU only): the dynamic shared-memory
    limit above 48 KB, a non-portable cluster size.

    numba-cuda 0.30 holds a ``CUkernel`` (library loading); ``cuKernelSetAttribute`` is what works
    on it (seen on an H100). The private attribute chain is wrapped here, in one place.
    """
    from cuda.bindings import driver
    handle = dispatcher.overloads[sig]._codelibrary.get_cufunc().handle
    dev = 0
    (err,) = driver.cuKernelSetAttribute(getattr(driver.CUfunction_attribute, attribute), value,
                                         handle, dev)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuKernelSetAttribute({attribute}={value}) failed: {err}")


def set_max_dynamic_shared(dispatcher, sig, nbytes: int) -> None:
    """Raise a compiled kernel's dynamic shared-memory limit above 48 KB (GPU only)."""
    set_kernel_attribute(dispatcher, sig, "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES", nbytes)
