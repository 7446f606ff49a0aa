"""Command line: ``python -m dsv4_numba {info,demo,explain-desc}``.

* ``info``  — the environment: GPU, compute capability, driver, toolkit/NVVM/ptxas versions, and for
  every registered stage implementation whether it runs here, compiles here, or neither.
* ``demo``  — the main job on an embedded default configuration: quantize a DeepSeek-V4-shaped
  weight to each FP4 format, decode it with every implementation that can run here, check every
  result bitwise against the NumPy spec, and (on a GPU) time the production decode. Without a GPU
  it runs the reference kernels under the CUDA simulator at a tiny size, and says so.
* ``explain-desc VALUE --kind {wgmma-smem,umma-smem,umma-idesc,umma-idesc-bs}`` — decode a
  descriptor into named fields; invalid values are rejected with the field named (exit 2).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import ml_dtypes
import numpy as np


def _versions() -> dict:
    import llvmlite
    import numba
    out = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
           "llvmlite": llvmlite.__version__}
    try:
        from importlib.metadata import version
        out["numba-cuda"] = version("numba-cuda")
    except Exception:  # pragma: no cover
        out["numba-cuda"] = "?"
    return out


def cmd_info(args) -> int:
    from . import registry, runtime
    from .runtime import toolchain
    print("dsv4_numba environment")
    for k, v in _versions().items():
        print(f"  {k:<12} {v}")
    gpu = runtime.detect_gpu()
    if gpu:
        d = gpu.driver_version
        print(f"  GPU          {gpu.name}, cc {gpu.cc[0]}.{gpu.cc[1]} ({gpu.arch}), {gpu.sm_count} SMs, "
              f"driver CUDA {d // 1000}.{d % 1000 // 10}")
    else:
        print("  GPU          none (no CUDA driver or device)")
    print(f"  run mode     {runtime.mode()}")
    try:
        rel = toolchain.nvvm_release()
        print(f"  NVVM         CUDA release {rel} (from the PTX header numba-cuda emits)")
    except Exception as e:  # noqa: BLE001 - info must print whatever it can
        rel = None
        print(f"  NVVM         unavailable: {e}")
    for name, (path, trel) in toolchain.which_tools().items():
        ok = "matches NVVM" if trel == rel else "does NOT match NVVM"
        print(f"  {name:<12} {path or 'not found'} (release {trel}; {ok if path else '-'})")
    try:
        ptxas = toolchain.find_tool("ptxas", rel)
        compile_ok = f"yes ({ptxas})"
    except Exception as e:  # noqa: BLE001
        ptxas, compile_ok = None, f"no: {e}"
    print(f"  compile-only {compile_ok}")
    from .runtime.kernel import INLINE_PATCH, _install_fresh_ir_inlining
    _install_fresh_ir_inlining()
    print(f"  IR inlining  {INLINE_PATCH['state']}")
    print("\nstage implementations")
    for stage, key, status in registry.table():
        im = registry.REGISTRY[stage].impls[key]
        comp = ""
        if im.kernels is not None:
            comp = f"; compiles here for {im.arch or 'sm_90a/sm_100a'}" if ptxas else "; cannot compile here"
        print(f"  {stage:<12} {key:<20} {status}{comp}")
    return 0


def cmd_demo(args) -> int:
    from . import decode_fp4, formats, quantize_fp4, registry, runtime
    gpu = runtime.mode() == "gpu"
    if gpu:
        rows, cols = args.rows or 7168, args.cols or 8192
        print(f"GPU run: {runtime.detect_gpu().name}; FP4 decode of a {rows} x {cols} weight "
              f"(the DeepSeek-V4-Pro hidden size x a K slice)")
    else:
        rows, cols = args.rows or 2, args.cols or 64
        print(f"No GPU here: running the reference kernels under the CUDA SIMULATOR at a tiny size "
              f"({rows} x {cols}); production kernels need a GPU and are not run.")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((rows, cols)) * np.exp(rng.uniform(-3, 3, (rows, 1)))).astype(np.float32)
    x.flat[rng.integers(0, x.size, max(1, x.size // 1000))] *= 50.0  # outliers
    failures = 0
    for fmt in ("dsv4_fp4", "mxfp4", "nvfp4"):
        spec_q = formats.quantize(x, fmt)
        spec = formats.dequantize(spec_q, np.float32)
        impls = [k for k in registry.REGISTRY["decode_fp4"].impls
                 if registry.REGISTRY["decode_fp4"].impls[k].unavailable() is None]
        for impl in impls:
            q = quantize_fp4(x, fmt, impl=impl)
            same_q = (np.array_equal(q.data, spec_q.data) and np.array_equal(q.scales, spec_q.scales))
            t0 = time.perf_counter()
            y = decode_fp4(q, np.float32, impl=impl)
            dt = time.perf_counter() - t0
            same = np.array_equal(y.view(np.uint32), spec.view(np.uint32))
            err = float(np.linalg.norm(y - x) / np.linalg.norm(x))
            failures += (not same) + (not same_q)
            print(f"  {fmt:<9} {impl:<20} quantize==spec: {same_q}  decode==spec (bitwise): {same}  "
                  f"rel. quantization error {err:.3f}  ({dt * 1e3:.1f} ms incl. transfers)")
    if gpu:
        from .stages.fp4 import time_decode
        print("\nproduction decode to bfloat16 (CUDA events, median):")
        for fmt in ("dsv4_fp4", "nvfp4"):
            qf = formats.quantize(x, fmt)
            us, gbs, got = time_decode(qf, "bfloat16")
            ok = np.array_equal(got, formats.dequantize(qf, ml_dtypes.bfloat16).reshape(-1).view(np.uint16))
            failures += not ok
            print(f"  {fmt:<9} {us:8.1f} us  {gbs:7.0f} GB/s of unique bytes  (== spec: {ok})")
    print("demo:", "OK" if failures == 0 else f"{failures} MISMATCHES")
    return 1 if failures else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dsv4_numba", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="print the environment and what can run / compile here")
    d = sub.add_parser("demo", help="the main job on an embedded default configuration")
    d.add_argument("--rows", type=int, default=None)
    d.add_argument("--cols", type=int, default=None)
    e = sub.add_parser("explain-desc", add_help=False,
                       help="decode a wgmma / tcgen05 descriptor into named fields "
                            "(python -m dsv4_numba explain-desc 0x08100490 --kind umma-idesc)")
    e.add_argument("rest", nargs=argparse.REMAINDER)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["explain-desc"]:
        from .hw.descriptors import explain_desc_main
        return explain_desc_main(argv[1:])
    args = p.parse_args(argv)
    return {"info": cmd_info, "demo": cmd_demo}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
