"""Compile production kernels into Numba's disk cache, one process per kernel, in parallel.

Each process that launches a kernel compiles it again (each pytest-xdist worker, then the
benchmark); on the H100 machine 30 split top-k kernels took 292 s at -j 16 (0.22.0, 2026-11-27).
Compiling them once, in parallel, into the disk cache lets those processes load them instead::

    python3 tools/stamp_sources.py            # stamps that follow content (see that tool)
    export DSV4_NUMBA_CACHE=1 NUMBA_CACHE_DIR=/tmp/ncache
    python3 tools/precompile.py topk_split topk_rowblock -j 8

Arguments: substrings of kernel names (``topk_split_bf16``), all if none; a name ending in ``$``
matches that whole name only (``topk_split_f32_v4_t256$``, not its cluster forms); the kernels are those
``dsv4_numba.stages.topk.production_kernels`` lists (``--module`` / ``--function`` for others).
A cache hit needs the launch's argument types to equal the listed signature.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="kernel-name substrings, or whole names ending in $ "
                                              "(default: every kernel)")
    ap.add_argument("--module", default="dsv4_numba.stages.topk")
    ap.add_argument("--function", default="production_kernels")
    ap.add_argument("-j", type=int, default=None, help="processes at a time (default: CPUs)")
    args = ap.parse_args(argv)
    from dsv4_numba.runtime.env import kernel_cache
    if not kernel_cache():
        ap.error("set DSV4_NUMBA_CACHE=1 (else nothing is kept)")
    import importlib
    kernels = getattr(importlib.import_module(args.module), args.function)()
    todo = [(i, k.__name__) for i, (k, _) in enumerate(kernels)
            if not args.names or any(k.__name__ == n[:-1] if n.endswith("$") else n in k.__name__
                                     for n in args.names)]
    src = ("import sys, importlib\n"
           f"k, s = getattr(importlib.import_module({args.module!r}), {args.function!r})()"
           "[int(sys.argv[1])]\n"
           "k.gpu.compile(s)\n")
    return run_jobs([(name, [src, str(i)]) for i, name in todo], args.j)


def run_jobs(jobs, j: int | None = None) -> int:
    """Run ``python -c SRC ARGS...`` for each (label, [SRC, ARGS...]) of ``jobs``, ``j`` at a time
    (default: the CPU count); print each one's end. Returns 1 if any failed (a failed compile
    only means that kernel compiles at its first launch instead)."""
    j = j or os.cpu_count() or 1
    t0, running, failed, todo = time.monotonic(), [], 0, list(jobs)
    while todo or running:
        while todo and len(running) < j:
            label, argv = todo.pop(0)
            running.append((label, subprocess.Popen([sys.executable, "-c", *argv])))
        label, p = running.pop(0)
        rc = p.wait()
        failed += rc != 0
        print(f"# precompile {label}: {'ok' if rc == 0 else f'FAILED (rc {rc})'} at "
              f"{time.monotonic() - t0:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
