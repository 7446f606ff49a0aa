"""Benchmark the fused sm_100a attention kernel (pipelines/fmha_sm100.py) on a B200 against torch's
scaled_dot_product_attention measured in the same run, with the napkin-math bound of the module
docstring beside it. READY FOR A B200; it has not run anywhere (no Blackwell GPU is lent): on any
other GPU it prints why and exits 2.

    python tools/bench_fmha_sm100.py [--quick]

Shapes (as tools/bench_fmha.py, plus D = 256): B=4, H=16, S=4096, D=128 non-causal and causal;
B=4, H=32, S=4096, D=64; B=2, H=16, S=4096, D=256; decode B=64, Tq=1, Tk=8192, Hq=64, Hkv=8, D=128.
Method as tools/bench_fmha.py: bfloat16 [B, T, H, D] tensors, torch gets [B, H, T, D] views; the
kernel runs through a prepared ``fmha_sm100.Plan`` (the timed region is the launch only); both timed
by ``runtime.bench.time_gpu`` (CUDA events, median); the output is compared with torch's first (max
|diff| / max |out|). TFLOP/s counts 4 B H Tq Tk D (half for causal). "% peak" is of the published
~2250 TFLOP/s dense BF16 of a B200 (a published figure, not measured); decode is reported as K/V
bytes over time, as a share of the copy bandwidth measured in the same run. Peers' published B200
forward numbers: FlashAttention-4 1613 TFLOP/s, FlashMLA dense MHA prefill 1460 TFLOP/s.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import numpy as np

PEAK_TFLOPS = 2250.0          # B200 dense BF16, published
PREFILL = [  # (name, B, T, H, D, causal)
    ("prefill D=128", 4, 4096, 16, 128, False),
    ("prefill D=128 causal", 4, 4096, 16, 128, True),
    ("prefill D=64 H=32", 4, 4096, 32, 64, False),
    ("prefill D=256", 2, 4096, 16, 256, False),
]
DECODE = ("decode", 64, 1, 8192, 64, 8, 128)     # name, B, Tq, Tk, Hq, Hkv, D


def plan_for(torch, q, k, v, causal):
    from numba import cuda

    from dsv4_numba.pipelines import fmha_sm100
    from dsv4_numba.pipelines.fmha import _validate
    dq, dk, dv = (cuda.as_cuda_array(x.view(torch.int16)).view(np.uint16) for x in (q, k, v))
    c = _validate(dq, dk, dv, causal, None, None, False, None)
    why = fmha_sm100.unsupported(c, False)
    if why:
        raise SystemExit(why)
    return fmha_sm100.Plan(c, dq.reshape(-1), dk.reshape(-1), dv.reshape(-1), cuda.to_device(c.lens), None)


def out_of(torch, plan, shape):
    host = plan.out.copy_to_host().view(np.int16).reshape(shape)
    return torch.from_numpy(host).view(torch.bfloat16).cuda()


def run_one(torch, plan, ref, shape, name, rows):
    from numba import cuda
    plan.launch()
    if not plan.wait(15):
        print(f"FATAL: {name}: the kernel did not finish in 15 s (deadlock?)", flush=True)
        _table(rows)
        os._exit(3)
    cuda.synchronize()
    got = out_of(torch, plan, shape)
    return float((got.float() - ref.float()).abs().max() / ref.float().abs().max())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    from dsv4_numba import runtime
    if runtime.device_arch() != "sm_100a":
        print(f"bench_fmha_sm100: needs a B200-class GPU (sm_100a); this is {runtime.device_arch()}")
        sys.exit(2)
    import torch
    import torch.nn.functional as F

    from dsv4_numba.runtime.bench import copy_bandwidth, time_gpu
    reps, repeats = (5, 3) if args.quick else (20, 7)
    print(f"# bench_fmha_sm100  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}  "
          f"{torch.cuda.get_device_name()}  torch {torch.__version__}")
    copy_gbs = copy_bandwidth()
    print(f"# device-to-device copy: {copy_gbs:.0f} GB/s (read + write)")
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for name, B, T, H, D, causal in PREFILL:
        q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))

        def sdpa():
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  is_causal=causal)
        ref = sdpa().transpose(1, 2)
        plan = plan_for(torch, q, k, v, causal)
        rel = run_one(torch, plan, ref, (B, T, H, D), name, rows)
        flop = 4.0 * B * H * T * T * D * (0.5 if causal else 1.0)
        us, us_t = time_gpu(plan.launch, reps=reps, repeats=repeats), time_gpu(sdpa, reps=reps, repeats=repeats)
        tf, tft = flop / us / 1e6, flop / us_t / 1e6
        rows.append((name, us, tf, us_t, tft, f"{tf / tft:.2f}x SDPA, {tf / PEAK_TFLOPS:.0%} of peak",
                     f"maxdiff {rel:.1e}"))
        del plan, q, k, v
    name, B, Tq, Tk, Hq, Hkv, D = DECODE
    q = torch.randn(B, Tq, Hq, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(B, Tk, Hkv, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))

    def sdpa_dec():
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              enable_gqa=True)
    plan = plan_for(torch, q, k, v, False)
    rel = run_one(torch, plan, sdpa_dec().transpose(1, 2), (B, Tq, Hq, D), name, rows)
    us, us_t = time_gpu(plan.launch, reps=reps, repeats=repeats), time_gpu(sdpa_dec, reps=reps, repeats=repeats)
    kv_bytes = 2 * B * Tk * Hkv * D * 2
    gbs, gbs_t = kv_bytes / us / 1e3, kv_bytes / us_t / 1e3
    rows.append((name, us, gbs, us_t, gbs_t, f"{gbs / copy_gbs:.0%} of copy (SDPA {gbs_t / copy_gbs:.0%})",
                 f"maxdiff {rel:.1e}"))
    _table(rows)


def _table(rows):
    print(f"\n{'shape':24s} {'fused us':>10s} {'TFLOP/s|GB/s':>13s} {'SDPA us':>10s} {'TFLOP/s|GB/s':>13s}  ratio")
    for r in rows:
        print(f"{r[0]:24s} {r[1]:10.1f} {r[2]:13.1f} {r[3]:10.1f} {r[4]:13.1f}  {r[5]}  {r[6]}")


if __name__ == "__main__":
    main()
