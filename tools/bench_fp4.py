"""Benchmark the FP4 decode / quantize stages on a GPU against the torch decode users write today.

    python tools/bench_fp4.py [--rows 7168 --cols 8192] [--out results.md]

Method: CUDA events around 20 back-to-back launches queued behind a spin kernel, median of 7
(dsv4_numba.runtime.bench.time_gpu); device-to-device copy bandwidth measured in the same run as the
ceiling. Unique bytes = packed codes + scales + output (decode) or input + codes + scales (quantize),
each counted once. Every result is checked bitwise against the NumPy spec before it is timed.
"""
from __future__ import annotations

import argparse
import datetime
import subprocess
import sys

import ml_dtypes
import numpy as np

import dsv4_numba as d
from dsv4_numba import formats, runtime
from dsv4_numba.runtime.bench import copy_bandwidth, time_gpu
from dsv4_numba.stages import fp4


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


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=7168)
    p.add_argument("--cols", type=int, default=8192)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    from numba import cuda
    gpu = runtime.detect_gpu()
    if gpu is None:
        sys.exit("bench_fp4 needs a GPU")
    import torch
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((a.rows, a.cols)) * 10 ** rng.uniform(-2, 2, (a.rows, 1))).astype(np.float32)
    x.flat[rng.integers(0, x.size, x.size // 1000)] *= 50
    copy = copy_bandwidth()
    rows = []
    variants = {"smem-transpose": fp4.decode_sm90_kernel}
    for fmt in ("dsv4_fp4", "nvfp4"):
        q = formats.quantize(x, fmt)
        for out_dtype in ("bfloat16", "float32"):
            want = formats.dequantize(q, {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}[out_dtype])
            got = d.decode_fp4(q, out_dtype, impl="production")
            ok = np.array_equal(got.view(np.uint8), want.view(np.uint8))
            tfn = torch_decode_fn(q, out_dtype)
            t_ok = np.array_equal(tfn().cpu().view(torch.int16 if out_dtype == "bfloat16" else torch.int32).numpy().view(np.uint8),
                                  want.view(np.uint8))
            t_us = time_gpu(lambda: tfn(), reps=5, repeats=5)
            for u, kern in variants.items():
                tag = " (registered)" if kern.__name__ == fp4.decode_sm90_kernel.__name__ else ""
                us, gbs, res = fp4.time_decode(q, out_dtype, kern)
                v_ok = np.array_equal(res.reshape(-1).view(np.uint8), want.reshape(-1).view(np.uint8))
                rows.append((f"decode {fmt} -> {out_dtype}, {u}{tag}", us, gbs, 100 * gbs / copy,
                             t_us / us, v_ok and ok, t_ok))
            rows.append((f"torch decode {fmt} -> {out_dtype}", t_us, (q.data.nbytes + q.scales.nbytes + x.size * (2 if out_dtype == "bfloat16" else 4)) / t_us / 1e3,
                         float("nan"), float("nan"), t_ok, None))
    xb = x.astype(ml_dtypes.bfloat16)
    dx = cuda.to_device(xb.view(np.uint16))
    for fmt in ("dsv4_fp4", "mxfp4", "nvfp4"):
        spec = formats.quantize(xb, fmt)
        got = d.quantize_fp4(xb, fmt, impl="production")
        ok = (np.array_equal(got.data, spec.data) and np.array_equal(got.scales, spec.scales)
              and got.global_scale == spec.global_scale)
        us, gbs = fp4.time_quantize(dx, fmt)
        rows.append((f"quantize {fmt} <- bfloat16", us, gbs, 100 * gbs / copy, float("nan"), ok, None))
    tk = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    head = (f"GPU {gpu.name} ({gpu.arch}), driver CUDA {gpu.driver_version}, "
            f"{tk[-1] if tk else 'nvcc ?'}, torch {torch.__version__}, {datetime.date.today()}, "
            f"shape {a.rows}x{a.cols}, copy bandwidth {copy:.0f} GB/s (read+write)")
    lines = [head, "", "| case | us | GB/s unique | % of copy | x torch decode | bitwise == spec | torch == spec |",
             "|---|---|---|---|---|---|---|"]
    for name, us, gbs, pct, ratio, ok, tok in rows:
        lines.append(f"| {name} | {us:.1f} | {gbs:.0f} | {'' if pct != pct else f'{pct:.0f}%'} | "
                     f"{'' if ratio != ratio else f'{ratio:.1f}x'} | {ok} | {'' if tok is None else tok} |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        open(a.out, "w").write(text + "\n")
    return 0 if all(r[5] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
