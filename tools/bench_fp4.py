"""Benchmark the FP4 decode / quantize stages on a GPU against the torch code users write today.

    python tools/bench_fp4.py [--rows 7168 --cols 8192] [--out results.md] [--only nvfp4]

``--only nvfp4`` times only the nvfp4 quantize rows (two-pass, fused, global_amax given; no
decode; torch's result is checked against the spec but not timed) in ~30 s.

One table: decode dsv4_fp4 / nvfp4 / mxfp4 -> bfloat16 and -> float32, quantize bfloat16 -> each
format (nvfp4 twice: including its global-amax pass, and with ``global_amax=`` given, i.e. the
quantize kernel alone), each with microseconds, GB/s of unique bytes, % of the copy bandwidth
and the speed-up over the torch elementwise version, all measured in the same run.

Method: CUDA events around 20 back-to-back launches queued behind a spin kernel, median of 7
(dsv4_numba.runtime.bench.time_gpu); device-to-device copy bandwidth measured in the same run as the
ceiling. Unique bytes = packed codes + scales + output (decode) or input + codes + scales (quantize),
each counted once. Every timed result is checked bitwise against the NumPy spec (the output of the
timed launches themselves), and so is torch's (column "torch == spec"). Runs in ~1.5 min on an H100.
"""
from __future__ import annotations

import argparse
import datetime
import subprocess
import sys

import ml_dtypes
import numpy as np

from dsv4_numba import formats, runtime
from dsv4_numba.runtime.bench import copy_bandwidth, time_gpu
from dsv4_numba.stages import fp4

OUT = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}


def torch_decode_fn(q, out_dtype):
    """The elementwise torch decode: nibble unpack, value LUT, per-block scale, cast."""
    import torch
    dev = "cuda"
    data = torch.from_numpy(q.data).to(dev)
    sc = torch.from_numpy(q.scales).to(dev)
    lut = torch.from_numpy(formats.E2M1_VALUES.copy()).to(dev)
    rows, n = q.shape[0], q.shape[-1]
    blk = q.block
    g = float(q.global_scale) if q.global_scale is not None else None
    tdt = {"bfloat16": torch.bfloat16, "float32": torch.float32}[out_dtype]
    e4m3 = torch.from_numpy(formats.e4m3_decode(np.arange(256, dtype=np.uint8))).to(dev)

    def run():
        vals = torch.stack([lut[(data & 0xF).long()], lut[(data >> 4).long()]], -1).reshape(rows, n)
        s = torch.exp2(sc.float() - 127) if q.spec.scale_kind == "ue8m0" else e4m3[sc.long()]
        v = vals.view(rows, n // blk, blk) * s[..., None]
        if g is not None:
            v = v * g
        return v.reshape(rows, n).to(tdt)
    return run


def torch_quantize_fn(xt, fmt):
    """The elementwise torch quantize (bfloat16 in): block amax, scale code, divide, threshold
    encode (RNE ties as the spec), nibble pack. Returns a function giving (codes, scales)."""
    import torch
    blk = formats.FORMATS[fmt].block
    rows, n = xt.shape
    th = [(0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True),
          (5.0, False)]                                  # (threshold, ties round up)

    def run():
        x = xt.float().view(rows, n // blk, blk)
        amax_b = x.abs().amax(-1)
        keep = amax_b > 0
        if fmt == "nvfp4":
            amax = amax_b.max()
            gs = torch.where(amax > 0, 2688.0 / amax, torch.ones_like(amax))
            # divide by a 0-dim CUDA tensor, not the Python scalar 6.0: torch's CUDA true division
            # by a CPU scalar multiplies by its reciprocal (two roundings), which moves sb by an
            # ulp now and then and flips its E4M3 rounding: the spec divides
            sb = torch.clamp(gs * amax_b / torch.full((), 6.0, device=x.device), max=448.0)
            code = sb.to(torch.float8_e4m3fn)
            s = code.float()
            keep = s > 0
            y = x * (gs / torch.where(keep, s, torch.ones_like(s)))[..., None]
            scales = code.view(torch.uint8)
        else:
            m, e = torch.frexp(torch.where(keep, amax_b / 6.0 if fmt == "dsv4_fp4" else amax_b,
                                           torch.ones_like(amax_b)))
            if fmt == "dsv4_fp4":
                k = torch.where(m > 0.5, e, e - 1)       # ceil(log2 v)
            else:
                k = e - 1 - 2                            # floor(log2 amax) - 2
            c = torch.clamp(k + 127, 0, 254)
            c = torch.where(keep, c, torch.zeros_like(c))
            y = torch.ldexp(x, (127 - c)[..., None].float())
            scales = c.to(torch.uint8)
        a = y.abs()
        cnt = sum(((a >= t) if up else (a > t)).to(torch.uint8) for t, up in th)
        codes = cnt | (torch.signbit(y).to(torch.uint8) << 3)
        codes = torch.where(keep[..., None], codes, torch.zeros_like(codes)).view(rows, n)
        return codes[:, 0::2] | (codes[:, 1::2] << 4), scales.view(rows, -1)
    return run


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=7168)
    p.add_argument("--cols", type=int, default=8192)
    p.add_argument("--out", default=None)
    p.add_argument("--only", choices=["nvfp4"], default=None,
                   help="nvfp4: only the nvfp4 quantize rows (two-pass vs fused), torch not timed")
    a = p.parse_args(argv)
    from numba import cuda
    gpu = runtime.detect_gpu()
    if gpu is None:
        sys.exit("bench_fp4 needs a GPU")
    import torch
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((a.rows, a.cols)) * 10 ** rng.uniform(-2, 2, (a.rows, 1))).astype(np.float32)
    x.flat[rng.integers(0, x.size, x.size // 1000)] *= 50
    xb = x.astype(ml_dtypes.bfloat16)
    copy = copy_bandwidth()
    rows = []          # (case, us, GB/s, torch us, ours == spec, torch == spec)
    only = a.only == "nvfp4"
    fmts = ("nvfp4",) if only else ("dsv4_fp4", "nvfp4", "mxfp4")
    specs = {fmt: formats.quantize(xb, fmt) for fmt in fmts}
    for fmt, q in ({} if only else specs).items():
        for out_dtype in ("bfloat16", "float32"):
            want = formats.dequantize(q, OUT[out_dtype]).reshape(-1).view(np.uint8)
            tfn = torch_decode_fn(q, out_dtype)
            t_got = tfn().cpu()
            t_ok = np.array_equal(t_got.view(torch.int16 if out_dtype == "bfloat16" else torch.int32)
                                  .numpy().reshape(-1).view(np.uint8), want)
            t_us = time_gpu(tfn, reps=5, repeats=5)
            us, gbs, res = fp4.time_decode(q, out_dtype)
            ok = np.array_equal(res.reshape(-1).view(np.uint8), want)
            rows.append((f"decode {fmt} -> {out_dtype}", us, gbs, t_us, ok, t_ok))
    dx = cuda.to_device(xb.view(np.uint16))
    xt = torch.from_numpy(xb.view(np.int16)).cuda().view(torch.bfloat16)
    for fmt in ("dsv4_fp4", "mxfp4", "nvfp4"):
        if fmt not in specs:
            continue
        spec = specs[fmt]
        try:
            tfn = torch_quantize_fn(xt, fmt)
            tc, ts = tfn()
            t_ok = (np.array_equal(tc.cpu().numpy(), spec.data)
                    and np.array_equal(ts.cpu().numpy(), spec.scales))
            t_us = float("nan") if only else time_gpu(tfn, reps=3, repeats=5)   # --only: not timed
        except Exception as e:      # pragma: no cover - the baseline must not hide our numbers
            t_us, t_ok = float("nan"), f"torch failed: {type(e).__name__}: {e}"[:100]
        us, gbs, got = fp4.time_quantize(dx, fmt, variant="twopass")
        ok = (np.array_equal(got.data.copy_to_host(), spec.data)
              and np.array_equal(got.scales.copy_to_host(), spec.scales)
              and got.global_scale == spec.global_scale)
        label = f"quantize {fmt} <- bfloat16" + (" (incl. global amax pass)" if fmt == "nvfp4" else "")
        rows.append((label, us, gbs, t_us, ok, t_ok))
        if fmt == "nvfp4":          # the fused variant: amax + quantize in one persistent kernel
            import warnings
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RuntimeWarning)
                us, gbs, got = fp4.time_quantize(dx, fmt, variant="fused")
            ok = (np.array_equal(got.data.copy_to_host(), spec.data)
                  and np.array_equal(got.scales.copy_to_host(), spec.scales)
                  and got.global_scale == spec.global_scale
                  and not [w for w in caught if "grid barrier" in str(w.message)])
            rows.append(("quantize nvfp4 <- bfloat16 (incl. global amax, FUSED one kernel)",
                         us, gbs, t_us, ok, t_ok))
        if fmt == "nvfp4":          # global_amax= given (calibrated): no amax pass
            amax = np.abs(xb.astype(np.float32)).max()
            us, gbs, got = fp4.time_quantize(dx, fmt, global_amax=amax)
            ok = (np.array_equal(got.data.copy_to_host(), spec.data)
                  and np.array_equal(got.scales.copy_to_host(), spec.scales)
                  and got.global_scale == spec.global_scale)
            rows.append(("quantize nvfp4 <- bfloat16 (global_amax given)", us, gbs, t_us, ok, t_ok))
    tk = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    head = (f"GPU {gpu.name} ({gpu.arch}), driver CUDA {gpu.driver_version}, "
            f"{tk[-1] if tk else 'nvcc ?'}, torch {torch.__version__}, {datetime.date.today()}, "
            f"shape {a.rows}x{a.cols}, copy bandwidth {copy:.0f} GB/s (read+write)")
    lines = [head, "", "| case | us | GB/s unique | % of copy | x torch (torch us) | bitwise == spec "
             "| torch == spec |", "|---|---:|---:|---:|---:|---|---|"]
    for name, us, gbs, t_us, ok, t_ok in rows:
        lines.append(f"| {name} | {us:.1f} | {gbs:.0f} | {100 * gbs / copy:.0f}% | "
                     f"{t_us / us:.1f}x ({t_us:.0f}) | {ok} | {t_ok} |")
    if only:
        lines.append("")
        lines.append("nvfp4 quantize incl. the global amax: target >= 1500 GB/s unique (<= 100 us "
                     "at this shape); the FUSED row is the new variant, the row above it the "
                     "H100-verified two-pass one")
    text = "\n".join(lines)
    print(text)
    if a.out:
        open(a.out, "w").write(text + "\n")
    return 0 if all(r[4] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
