"""Benchmark the fused sm_90a attention kernel against torch's scaled_dot_product_attention, measured
in the same run on the same GPU.

    python tools/bench_fmha.py            # all shapes (~1 min on an H100, incl. two kernel compiles)
    python tools/bench_fmha.py --quick    # fewer repetitions
    python tools/bench_fmha.py --quick --schedules v1,v2 --no-decode   # old vs new prefill schedule
    python tools/bench_fmha.py --extra --schedules v2   # + D=256, D=16 and float16 rows (round 2)
    # the D = 64 candidates beside v2 (all but v2f skip the D=128 row, where v2 shows no regression):
    python tools/bench_fmha.py --quick --no-decode --schedules v2,v2f,v3f,v2wf,v3,v2w \
        --shapes "prefill D=64 H=32,prefill D=128"

Shapes (issue 7): B=4, H=16, S=4096, D=128 non-causal and causal; B=4, H=32, S=4096, D=64
non-causal; decode B=64, Tq=1, Tk=8192, Hq=64, Hkv=8, D=128. ``--extra`` adds B=4, H=8, S=4096,
D=256 non-causal and causal (the same FLOPs as the D=128 rows), D=128 non-causal in float16, and
B=4, H=64, S=4096, D=16 non-causal (softmax-bound; the kernel pads it to 64 columns).

Method: bfloat16 torch tensors in the project's layout [B, T, H, D]; torch gets the same tensors as
[B, H, T, D] views (``transpose(1, 2)``, no copy; ``enable_gqa`` for decode). The fused kernel runs
through a prepared ``fmha_sm90.Plan`` (tensor maps and outputs made once), so the timed region is
the launch only. Both are timed by ``runtime.bench.time_gpu`` (CUDA events around back-to-back
launches queued behind a spin kernel, median of repeats). Before timing, the fused output is
compared with torch's (max |diff| over max |out|, printed). TFLOP/s counts 4*B*H*Tq*Tk*D
(half of it for causal, as FlashAttention reports). Decode is reported as the K/V bytes over the
time, as a share of the device-to-device copy bandwidth (read + write) measured in the same run.

torch exists on the device image, not on the development machine: imported lazily.
"""
from __future__ import annotations

import argparse
import datetime
import os

import numpy as np

PREFILL = [  # (name, B, T, H, D, causal, dtype)
    ("prefill D=128", 4, 4096, 16, 128, False, "bf16"),
    ("prefill D=128 causal", 4, 4096, 16, 128, True, "bf16"),
    ("prefill D=64 H=32", 4, 4096, 32, 64, False, "bf16"),
]
EXTRA = [   # --extra: the head dims and dtype of round 2
    ("prefill D=256 H=8", 4, 4096, 8, 256, False, "bf16"),
    ("prefill D=256 H=8 causal", 4, 4096, 8, 256, True, "bf16"),
    ("prefill D=128 f16", 4, 4096, 16, 128, False, "f16"),
    ("prefill D=16 H=64", 4, 4096, 64, 16, False, "bf16"),
]
DECODE = ("decode", 64, 1, 8192, 64, 8, 128)     # name, B, Tq, Tk, Hq, Hkv, D
SDPA_REF = {"prefill D=128": 673, "prefill D=128 causal": 544, "prefill D=64 H=32": 478}  # issue 7


def plan_for(torch, q, k, v, causal, schedule=None):
    from numba import cuda

    from dsv4_numba.pipelines import fmha_sm90
    from dsv4_numba.pipelines.fmha import _validate
    if q.dtype == torch.float16:
        dq, dk, dv = (cuda.as_cuda_array(x) for x in (q, k, v))
    else:
        dq, dk, dv = (cuda.as_cuda_array(x.view(torch.int16)).view(np.uint16) for x in (q, k, v))
    c = _validate(dq, dk, dv, causal, None, None, False, None)
    why = fmha_sm90.unsupported(c, False)
    if why:
        raise SystemExit(why)
    return fmha_sm90.Plan(c, dq.reshape(-1), dk.reshape(-1), dv.reshape(-1),
                          cuda.to_device(c.lens), None, schedule=schedule)


def out_of(torch, plan, shape):
    """The plan's output as a torch tensor of q's dtype [B, T, H, D] (a copy)."""
    host = plan.out.copy_to_host().view(np.int16).reshape(shape)
    return torch.from_numpy(host).view(torch.float16 if plan.dtype == "f16" else torch.bfloat16).cuda()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--schedules", default=None,
                    help="comma-separated fmha_sm90 consumer schedules to time on the prefill "
                         "shapes (default: the default schedule), e.g. v1,v2")
    ap.add_argument("--no-decode", action="store_true", help="skip the decode shape")
    ap.add_argument("--extra", action="store_true",
                    help="also time the D=256, D=16 and float16 prefill rows (EXTRA)")
    ap.add_argument("--shapes", default=None,
                    help="comma-separated prefill shape names to run (default: all)")
    args = ap.parse_args(argv)
    scheds = args.schedules.split(",") if args.schedules else [None]
    table = PREFILL + (EXTRA if args.extra else [])
    shapes = [p for p in table if args.shapes is None or p[0] in args.shapes.split(",")]
    if args.shapes is not None and len(shapes) != len(args.shapes.split(",")):
        raise SystemExit(f"--shapes: names are {[p[0] for p in table]}, got {args.shapes!r}")
    import torch
    import torch.nn.functional as F

    from dsv4_numba.pipelines.fmha_sm90 import CANDIDATE_D as CAND_D
    from numba import cuda

    from dsv4_numba.runtime.bench import copy_bandwidth, time_gpu
    reps, repeats = (5, 3) if args.quick else (20, 7)
    dev = torch.cuda.get_device_name()
    print(f"# bench_fmha  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}  {dev}  "
          f"torch {torch.__version__}")
    copy_gbs = copy_bandwidth()
    print(f"# device-to-device copy: {copy_gbs:.0f} GB/s (read + write)")
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for name, B, T, H, D, causal, dt in shapes:
        tdt = torch.float16 if dt == "f16" else torch.bfloat16
        q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=tdt, generator=g)
                   for _ in range(3))
        ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2), is_causal=causal).transpose(1, 2)
        us_t = time_gpu(lambda: F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal),
            reps=reps, repeats=repeats)
        flop = 4.0 * B * H * T * T * D * (0.5 if causal else 1.0)
        tft = flop / us_t / 1e6
        for sched in scheds:
            if sched == "v1" and D == 256:
                print(f"# {name}: no v1 at D=256 (fmha_sm90: registers); skipped", flush=True)
                continue
            if sched in CAND_D and D not in CAND_D[sched]:
                print(f"# {name}: {sched} is a D = 64 candidate (fmha_sm90.CANDIDATE_D: "
                      f"{CAND_D[sched]}); skipped", flush=True)
                continue
            plan = plan_for(torch, q, k, v, causal, sched)
            plan.launch()
            if not plan.wait(15):
                print(f"FATAL: {name} schedule {plan.schedule}: no finish in 15 s (deadlock?)",
                      flush=True)
                _table(rows)
                os._exit(3)
            cuda.synchronize()
            got = out_of(torch, plan, (B, T, H, D))
            rel = float((got.float() - ref.float()).abs().max() / ref.float().abs().max())
            us = time_gpu(plan.launch, reps=reps, repeats=repeats)
            tf = flop / us / 1e6
            rows.append((f"{name} [{plan.schedule}]", us, tf, us_t, tft, f"{tf / tft:.2f}x SDPA",
                         f"maxdiff {rel:.1e}"))
            del plan
        del q, k, v
    if args.no_decode:
        _table(rows)
        return
    name, B, Tq, Tk, Hq, Hkv, D = DECODE
    q = torch.randn(B, Tq, Hq, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(B, Tk, Hkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
            for _ in range(2))
    plan = plan_for(torch, q, k, v, False)
    plan.launch()
    cuda.synchronize()
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         enable_gqa=True).transpose(1, 2)
    got = out_of(torch, plan, (B, Tq, Hq, D))
    rel = float((got.float() - ref.float()).abs().max() / ref.float().abs().max())
    us = time_gpu(plan.launch, reps=reps, repeats=repeats)
    us_t = time_gpu(lambda: F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), enable_gqa=True),
        reps=reps, repeats=repeats)
    kv_bytes = 2 * B * Tk * Hkv * D * 2
    gbs, gbs_t = kv_bytes / us / 1e3, kv_bytes / us_t / 1e3
    rows.append((name, us, gbs, us_t, gbs_t, f"{gbs / copy_gbs:.0%} of copy "
                 f"(SDPA {gbs_t / copy_gbs:.0%}); {us_t / us:.2f}x SDPA speed", f"maxdiff {rel:.1e}"))
    _table(rows)


def _table(rows):
    print(f"\n{'shape':30s} {'fused us':>10s} {'TFLOP/s|GB/s':>13s} {'SDPA us':>10s} "
          f"{'TFLOP/s|GB/s':>13s}  ratio")
    for r in rows:
        print(f"{r[0]:30s} {r[1]:10.1f} {r[2]:13.1f} {r[3]:10.1f} {r[4]:13.1f}  {r[5]}  {r[6]}")
    print("# targets (issue 7): >= 0.8x SDPA on the prefill shapes (H100 SDPA ~673 / 544 / 478 "
          "TFLOP/s); decode >= 70% of copy bandwidth on K/V bytes")


if __name__ == "__main__":
    main()
