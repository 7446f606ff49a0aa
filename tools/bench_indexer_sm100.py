"""Benchmark the sm_100a FP4 indexer (pipelines/indexer_sm100.py) on a B200 against the torch path,
measured in the same run, with the napkin-math estimate of the module docstring beside it. READY FOR
A B200; it has not run anywhere (no Blackwell GPU is lent): on any other GPU, or without one, it
prints why and exits 2.

    python tools/bench_indexer_sm100.py [--quick] [--max-seconds 60]

Shapes and method as tools/bench_indexer.py (whose input builders, torch path and key rotation it
imports): dsv4_fp4 q and keys with random codes and scales, device-resident; H = 64, D = 128,
valid_len = N. "scores us": ``indexer_sm100.Plan.run`` (the kernel launch alone, NaN-poisoned
output checked once); "total us": + the top-k stage this device resolves (printed; the production
top-k is registered for sm_90a only, so on a B200 this is likely the reference kernel); torch:
dequantize, einsum (bf16), ReLU, x w, head sum, ``torch.topk``. Before timing, the top-k
indices are compared with torch's (share of torch's indices selected; ~1.0 expected, ties and the
bf16 rounding of the torch path make it not exactly 1). TFLOP/s counts 2 T H N D; "% FP4 peak" is of
the published ~9000 TFLOP/s dense FP4 of a B200 (a published figure, not measured). "estimate us"
is the module docstring's epilogue-bound figure (~900 clk per 128 x 192 tile at 1.85 GHz, the
tiles of one CTA in sequence, CTAs in waves of one per SM).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import pathlib
import sys
import time

import numpy as np

PEAK_FP4_TFLOPS = 9000.0          # B200 dense FP4, published
CLK_GHZ = 1.85
EST_CLK_PER_TILE = 900
HERE = pathlib.Path(__file__).resolve().parent
TOPK = None               # the top-k implementation key this device resolves ("auto"), set in main


def _bench_indexer():
    spec = importlib.util.spec_from_file_location("bench_indexer", HERE / "bench_indexer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def estimate_us(T: int, N: int, sms: int) -> float:
    from dsv4_numba.pipelines import indexer_sm100 as I
    cfg = I.launch_config(T, N)
    waves = -(-cfg["grid"][0] * cfg["grid"][1] // sms)
    return cfg["tiles_per_cta"] * waves * EST_CLK_PER_TILE / (CLK_GHZ * 1e3)


def bench_case(torch, B, T, N, k, reps, repeats, sms, rows):
    from numba import cuda

    from dsv4_numba.formats import QuantizedFP4
    from dsv4_numba.pipelines import indexer_sm100 as I
    from dsv4_numba.pipelines.indexer import _validate
    from dsv4_numba.runtime.bench import time_gpu
    from dsv4_numba.stages import topk as TK

    H, D = B.H, B.D
    kbytes = N * (D // 2 + D // 32)
    g = np.random.default_rng(T * N)
    base = B.make_inputs(torch, "fp4", T, N, g)
    keys = [base["k"]] + [B.make_inputs(torch, "fp4", 1, N, g)["k"] for _ in range(B.rotation(kbytes) - 1)]
    w = base["w"]
    wd = cuda.as_cuda_array(w)
    qd, qs = base["q"]
    q = QuantizedFP4(cuda.as_cuda_array(qd), cuda.as_cuda_array(qs), None, "dsv4_fp4", (T, H, D))
    scores_t = torch.full((T * N,), float("nan"), device="cuda")
    scores = cuda.as_cuda_array(scores_t)
    plans = []
    for kk in keys:
        kc = QuantizedFP4(cuda.as_cuda_array(kk[0]), cuda.as_cuda_array(kk[1]), None, "dsv4_fp4", (N, D))
        c = _validate(q, kc, wd, k, None, None)
        I.check_fusable(c, q, kc, wd)
        plans.append(I.Plan(c, q, kc, wd, out=scores))
    vl = plans[0].vl
    s2 = scores.reshape(T, N)
    lut = torch.tensor(B.E2M1, device="cuda")

    def torch_path(kk, exact=False):
        qb = B.torch_dequant_fp4(torch, qd, qs, lut)
        kb = B.torch_dequant_fp4(torch, kk[0], kk[1], lut)
        if exact:
            qb, kb = qb.float(), kb.float()
        logits = torch.einsum("thd,nd->thn", qb, kb)
        sc = (torch.relu(logits).float() * w[:, :, None]).sum(1)
        return torch.topk(sc, k, dim=-1)

    torch.backends.cuda.matmul.allow_tf32 = False
    theirs = torch_path(keys[0], exact=True).indices.cpu().numpy()
    plans[0].run()
    cuda.synchronize()
    if torch.isnan(scores_t).any():
        raise SystemExit(f"T={T} N={N}: unwritten (NaN-poisoned) scores: run tests/gpu/test_indexer_sm100_gpu.py")
    _, idx = TK.topk(s2, k, lengths=vl, impl=TOPK)
    ours = idx.copy_to_host().reshape(T, k)
    agree = float(np.mean([np.intersect1d(ours[t], theirs[t]).size / k for t in range(T)]))
    tcyc, pcyc = B.Cycle(keys), B.Cycle(plans)
    t_us = time_gpu(lambda: torch_path(tcyc()), reps, repeats)
    s_us = time_gpu(lambda: pcyc().run(), reps, repeats)

    def run_all():
        pcyc().run()
        TK.topk(s2, k, lengths=vl, impl=TOPK)
    a_us = time_gpu(run_all, reps, repeats)
    tf = 2.0 * T * H * N * D / s_us / 1e6
    est = estimate_us(T, N, sms)
    rows.append((T, N, k, s_us, a_us, t_us, tf, 100 * tf / PEAK_FP4_TFLOPS, est, agree))
    print(f"T={T} N={N} k={k}: scores {s_us:.1f} us (estimate {est:.1f}), total {a_us:.1f} us vs torch "
          f"{t_us:.1f} us; {tf:.0f} TFLOP/s ({rows[-1][7]:.1f}% of FP4 peak); agree {agree:.4f}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the three target rows, fewer repetitions")
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="start no new row after this many seconds (compiles included)")
    args = ap.parse_args(argv)
    from dsv4_numba.runtime import detect_gpu
    gpu = detect_gpu()
    if gpu is None or gpu.arch != "sm_100a":
        print(f"this benchmark needs a B200-class GPU (sm_100a); found "
              f"{'no GPU' if gpu is None else f'{gpu.name} ({gpu.arch})'}", file=sys.stderr)
        return 2
    import numba_cuda
    import torch  # noqa: lazily: present on the device image only
    B = _bench_indexer()
    import warnings

    from dsv4_numba import registry
    global TOPK
    with warnings.catch_warnings():            # the production top-k is registered for sm_90a only
        warnings.simplefilter("ignore")
        TOPK = registry.resolve("topk", None).key
    print(f"# top-k stage that runs here: topk/{TOPK}", flush=True)
    start = time.monotonic()
    reps, repeats = (5, 3) if args.quick else (10, 5)
    print(f"# {gpu.name} ({gpu.arch}, {gpu.sm_count} SMs), torch {torch.__version__}, "
          f"numba-cuda {numba_cuda.__version__}, {datetime.date.today()}", flush=True)
    shapes = [s for s in B.SHAPES if s in B.TARGETS] if args.quick else B.SHAPES
    rows = []
    for (T, N, k) in shapes:
        if time.monotonic() - start > args.max_seconds:
            print(f"# --max-seconds {args.max_seconds:.0f} passed: T={T} N={N} k={k} and later rows skipped")
            break
        bench_case(torch, B, T, N, k, reps, repeats, gpu.sm_count, rows)
    print()
    print(f"sm_100a FP4 indexer (H=64, D=128), {gpu.name}, {datetime.date.today()}; CUDA-event medians "
          f"(tools/bench_indexer_sm100.py)")
    print()
    print("| T | N | k | scores us | estimate us | total us | torch us | speed-up | TFLOP/s | % FP4 peak "
          "| top-k agree |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for T, N, k, s_us, a_us, t_us, tf, pk, est, agree in rows:
        print(f"| {T} | {N} | {k} | {s_us:.1f} | {est:.1f} | {a_us:.1f} | {t_us:.1f} | {t_us / a_us:.2f}x | "
              f"{tf:.0f} | {pk:.1f} | {agree:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
