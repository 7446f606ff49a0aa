"""One comparison helper for the whole suite (and for users checking their own kernels).

``assert_close(actual, expected, atol, rtol, min_cosine)`` checks, in this order:

1. shapes equal;
2. NaN masks equal exactly, and +inf / -inf masks equal exactly;
3. every finite element: ``|a - e| <= atol + rtol * |e|`` (abs-or-rel, the usual numpy form);
4. globally, cosine similarity of the finite parts >= ``min_cosine`` (when given) — catches a
   systematically wrong result hiding inside a loose per-element tolerance.

``bitwise=True`` instead requires identical bit patterns (for decode/quantize, which are exact).
A failure message names the worst coordinates with both values, so a wrong tile is found at once.
Tolerances belong beside the test that uses them, derived from the number format.
"""
from __future__ import annotations

import numpy as np


def _as_numpy(a):
    if hasattr(a, "copy_to_host"):
        a = a.copy_to_host()
    elif hasattr(a, "__cuda_array_interface__") and hasattr(a, "get"):
        a = a.get()
    return np.asarray(a)


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _coords(mask: np.ndarray, limit: int = 8) -> list:
    return [tuple(int(i) for i in c) for c in np.argwhere(mask)[:limit]]


def assert_close(actual, expected, *, atol: float = 0.0, rtol: float = 0.0,
                 min_cosine: float | None = None, bitwise: bool = False, name: str = "result",
                 max_report: int = 8) -> None:
    a, e = _as_numpy(actual), _as_numpy(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {a.shape} != expected {e.shape}")
    if bitwise:
        if a.dtype.itemsize != e.dtype.itemsize:
            raise AssertionError(f"{name}: dtype {a.dtype} vs {e.dtype} cannot be compared bitwise")
        bad = _bits(a) != _bits(e)
        if bad.any():
            lines = [f"  at {c}: got {a[c]!r} ({_bits(a)[c]:#x}), expected {e[c]!r} ({_bits(e)[c]:#x})"
                     for c in _coords(bad, max_report)]
            raise AssertionError(f"{name}: {int(bad.sum())} of {a.size} elements differ bitwise\n"
                                 + "\n".join(lines))
        return
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    for label, fa, fe in (("NaN", np.isnan(a64), np.isnan(e64)),
                          ("+inf", np.isposinf(a64), np.isposinf(e64)),
                          ("-inf", np.isneginf(a64), np.isneginf(e64))):
        if (fa != fe).any():
            c = _coords(fa != fe, max_report)
            raise AssertionError(f"{name}: {label} masks differ at {int((fa != fe).sum())} elements, "
                                 f"first {c}: got {[a[i] for i in c]}, expected {[e[i] for i in c]}")
    fin = np.isfinite(e64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(fin, np.abs(a64 - e64), 0.0)
    bad = err > atol + rtol * np.abs(np.where(fin, e64, 0.0))
    if bad.any():
        order = np.argsort(-(err * bad).ravel())[:max_report]
        lines = []
        for flat in order:
            c = np.unravel_index(flat, a.shape)
            lines.append(f"  at {tuple(int(i) for i in c)}: got {a64[c]:.8g}, expected {e64[c]:.8g}, "
                         f"|diff| {err[c]:.3g}")
        raise AssertionError(f"{name}: {int(bad.sum())} of {a.size} elements outside atol={atol:g}, "
                             f"rtol={rtol:g} (max |diff| {err.max():.3g})\n" + "\n".join(lines))
    if min_cosine is not None and fin.any():
        x, y = a64[fin], e64[fin]
        den = np.linalg.norm(x) * np.linalg.norm(y)
        cos = float(x @ y / den) if den > 0 else float(np.array_equal(x, y))
        if cos < min_cosine:
            raise AssertionError(f"{name}: cosine similarity {cos:.8f} < {min_cosine}")


def poison(shape, dtype, xp=np):
    """An output buffer full of NaN (or 0xFF.. bytes for integer types), so unwritten elements show."""
    out = xp.empty(shape, dtype)
    if np.dtype(dtype).kind == "f":
        out[...] = np.nan
    else:
        out.view(np.uint8)[...] = 0xFF
    return out
