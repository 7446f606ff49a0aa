"""Encode descriptor field sets with NVIDIA CUTLASS's own C++ encoders, for an independent check of
``dsv4_numba.hw.descriptors``.

How: generate a ``main()`` that calls ``desc_check.hpp`` once per field set (CUTLASS's
``make_runtime_instr_desc`` / ``make_instr_desc_block_scaled`` for instruction descriptors, its
``GmmaDescriptor`` / ``UMMA::SmemDescriptor`` unions and enums for shared-memory descriptors),
compile it with a host C++ compiler (g++; the CUTLASS headers need only CCCL's ``cuda/std`` headers and
``vector_types.h``, not nvcc), run it and read one hex value per field set.

Needs: the ``nvidia-cutlass`` headers (``pip install --no-deps nvidia-cutlass``, or point
``CUTLASS_INCLUDE_DIR`` at a CUTLASS ``include/``), a CUDA include directory with ``cccl/`` (the
toolkit's, or the ``nvidia-cuda-*`` wheels'; override with ``CUDA_INCLUDE_DIR``), and g++/clang++
(override with ``CXX``).

Run by hand:  python tools/cutlass_desc_check/cutlass_desc_check.py   (prints the worked examples)
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

_TYPES = {"f16": "cutlass::half_t", "bf16": "cutlass::bfloat16_t", "tf32": "cutlass::tfloat32_t",
          "e4m3": "cutlass::float_e4m3_t", "e5m2": "cutlass::float_e5m2_t",
          "e2m3": "cutlass::detail::float_e2m3_unpacksmem_t",
          "e3m2": "cutlass::detail::float_e3m2_unpacksmem_t",
          "e2m1": "cutlass::detail::float_e2m1_unpacksmem_t",  # f8f6f4 / mxf8f6f4: padded, code 5
          "u8": "uint8_t", "s8": "int8_t"}
_TYPES_MXF4 = {"e2m1": "cutlass::float_e2m1_t"}                # mxf4 / mxf4nvf4: packed, code 1
_D_TYPES = {"f16": "cutlass::half_t", "f32": "float", "s32": "int32_t"}
_SF_TYPES = {"ue8m0": "cutlass::float_ue8m0_t", "ue4m3": "cutlass::float_ue4m3_t"}
_SM90_LAYOUT = {"none": "INTERLEAVE", "128B": "B128", "64B": "B64", "32B": "B32"}
_SM100_LAYOUT = {"none": "SWIZZLE_NONE", "128B_base32B": "SWIZZLE_128B_BASE32B", "128B": "SWIZZLE_128B",
                 "64B": "SWIZZLE_64B", "32B": "SWIZZLE_32B"}
_MAX_SHIFT = {0: "NoShift", 8: "MaxShift8", 16: "MaxShift16", 32: "MaxShift32"}


def find_cutlass_include() -> Path | None:
    """CUTLASS's ``include/``: $CUTLASS_INCLUDE_DIR, else the ``nvidia-cutlass`` wheel's copy
    (``cutlass_library/source/include``, located without importing the package)."""
    env = os.environ.get("CUTLASS_INCLUDE_DIR")
    cands = [Path(env)] if env else []
    try:
        spec = importlib.util.find_spec("cutlass_library")
    except (ImportError, ValueError):
        spec = None
    if spec and spec.submodule_search_locations:
        cands += [Path(p) / "source" / "include" for p in spec.submodule_search_locations]
    for c in cands:
        if (c / "cute" / "arch" / "mma_sm100_desc.hpp").is_file():
            return c
    return None


def find_cuda_includes() -> list[Path] | None:
    """Include dirs that provide ``cuda/std/utility`` (CCCL) and ``vector_types.h``."""
    bases = []
    for env in ("CUDA_INCLUDE_DIR",):
        if os.environ.get(env):
            bases.append(Path(os.environ[env]))
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            bases.append(Path(os.environ[env]) / "include")
    bases.append(Path("/usr/local/cuda/include"))
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            bases += sorted(Path(loc).glob("cu*/include")) + sorted(Path(loc).glob("cuda_runtime/include"))
    for b in bases:
        dirs = [b] + ([b / "cccl"] if (b / "cccl").is_dir() else [])
        if (any((d / "cuda" / "std" / "utility").is_file() for d in dirs)
                and (b / "vector_types.h").is_file()):
            return dirs
    return None


def find_cxx() -> str | None:
    for c in ([os.environ["CXX"]] if os.environ.get("CXX") else []) + ["g++", "c++", "clang++"]:
        path = shutil.which(c)
        if path:
            return path
    return None


def cutlass_version(include: Path) -> str:
    text = (include / "cutlass" / "version.h").read_text()
    parts = [re.search(rf"#define CUTLASS_{k} (\d+)", text) for k in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m.group(1) for m in parts if m)


def unavailable_reason() -> str | None:
    """None when the cross-check can run here, else why not (for a pytest skip)."""
    if find_cutlass_include() is None:
        return ("CUTLASS headers not found: `pip install --no-deps nvidia-cutlass` or set "
                "CUTLASS_INCLUDE_DIR to a CUTLASS include/ directory")
    if find_cuda_includes() is None:
        return "no CUDA include dir with cccl/cuda/std and vector_types.h (set CUDA_INCLUDE_DIR)"
    if find_cxx() is None:
        return "no host C++ compiler (g++/c++/clang++; set CXX)"
    return None


def _bool(b) -> str:
    return "true" if b else "false"


def _call(case: tuple) -> str:
    what, f = case
    if what == "wgmma":
        return (f"dc::wgmma({f['start_addr']}u, {f['lbo']}u, {f['sbo']}u, "
                f"cute::SM90::GMMA::LayoutType::{_SM90_LAYOUT[f['swizzle']]}, {f['base_offset']}u)")
    if what == "umma":
        return (f"dc::umma({f['start_addr']}u, {f['lbo']}u, {f['sbo']}u, "
                f"cute::UMMA::LayoutType::{_SM100_LAYOUT[f['swizzle']]}, {f['base_offset']}u, "
                f"{1 if f.get('lbo_mode', 'relative') == 'absolute' else 0}u)")
    if what == "idesc":
        g = lambda k, d: f.get(k, d)  # noqa: E731
        return (f"dc::idesc<{_TYPES[f['a_type']]}, {_TYPES[f['b_type']]}, {_D_TYPES[f['d_type']]}, "
                f"{f['M']}, {f['N']}, dc::Major::{g('a_major', 'K')}, dc::Major::{g('b_major', 'K')}, "
                f"dc::ScaleIn::{'Neg' if g('negate_a', 0) else 'One'}, "
                f"dc::ScaleIn::{'Neg' if g('negate_b', 0) else 'One'}, "
                f"dc::Saturate::{'True' if g('saturate', 0) else 'False'}, {_bool(g('sparse', 0))}, "
                f"dc::MaxShift::{_MAX_SHIFT[g('max_shift', 0)]}>({g('sparse_id', 0)})")
    if what == "idesc_bs":
        g = lambda k, d: f.get(k, d)  # noqa: E731
        types = _TYPES_MXF4 if f["kind"] in ("mxf4", "mxf4nvf4") else _TYPES
        return (f"dc::idesc_bs<{types[f['a_type']]}, {types[f['b_type']]}, {_SF_TYPES[f['scale_type']]}, "
                f"{f['M']}, {f['N']}, dc::Major::{g('a_major', 'K')}, dc::Major::{g('b_major', 'K')}, "
                f"dc::ScaleIn::{'Neg' if g('negate_a', 0) else 'One'}, "
                f"dc::ScaleIn::{'Neg' if g('negate_b', 0) else 'One'}, {_bool(g('sparse', 0))}>"
                f"({g('a_sf_id', 0)}u, {g('b_sf_id', 0)}u, {int(bool(g('k96', 0)))}u)")
    raise ValueError(f"unknown case type {what!r}")


def cutlass_encode(cases: list, workdir: str | Path | None = None, timeout: float = 120) -> list[int]:
    """CUTLASS's encoding of each ``(what, fields)`` case, ``what`` in {"wgmma", "umma", "idesc",
    "idesc_bs"} and ``fields`` the keyword arguments of the matching dsv4_numba builder."""
    why = unavailable_reason()
    if why:
        raise RuntimeError(why)
    src = ['#include "desc_check.hpp"', "int main() {"]
    src += [f"  dc::emit({_call(c)});" for c in cases]
    src += ["  return 0;", "}"]
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        cpp, exe = Path(tmp) / "main.cpp", Path(tmp) / "desc_check"
        cpp.write_text("\n".join(src) + "\n")
        incs = [HERE, find_cutlass_include(), *find_cuda_includes()]
        cmd = [find_cxx(), "-std=c++17", "-O0", "-w", *[f"-I{p}" for p in incs], str(cpp), "-o", str(exe)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"compiling the CUTLASS cross-check failed:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
        out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=timeout, check=True).stdout
    vals = [int(line, 16) for line in out.split()]
    if len(vals) != len(cases):
        raise RuntimeError(f"expected {len(cases)} values from the CUTLASS program, got {len(vals)}")
    return vals


if __name__ == "__main__":  # pragma: no cover
    why = unavailable_reason()
    if why:
        raise SystemExit(why)
    demo = [("idesc", dict(a_type="bf16", b_type="bf16", d_type="f32", M=128, N=64)),
            ("idesc_bs", dict(kind="mxf4nvf4", a_type="e2m1", b_type="e2m1", scale_type="ue4m3", M=128, N=128)),
            ("umma", dict(start_addr=0, lbo=16, sbo=1024, swizzle="128B", base_offset=0)),
            ("wgmma", dict(start_addr=0, lbo=16, sbo=1024, swizzle="128B", base_offset=0))]
    print(f"CUTLASS {cutlass_version(find_cutlass_include())} at {find_cutlass_include()}")
    for c, v in zip(demo, cutlass_encode(demo)):
        print(f"{v:#018x}  {c[0]} {c[1]}")
