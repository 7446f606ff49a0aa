"""Benchmark the fused sm_90a lightning indexer against the torch path, measured in the same run.

    python tools/bench_indexer.py            # all shapes, dsv4_fp4 and bf16 keys, kernels v1 and v2
    python tools/bench_indexer.py --quick    # the three target rows (FP4), fewer repetitions
    python tools/bench_indexer.py --fmt fp4  # one format
    python tools/bench_indexer.py --variant v2   # one fused kernel (v1: round 1, H100-verified)
    python tools/bench_indexer.py --variant v2,v3 --fmt fp4,fp8 --shapes 1x65536x512,16x262144x2048
    python tools/bench_indexer.py --quick --variant v2,v4,v4@4,v4@/1/0,v4@///1 --max-seconds 900
    python tools/bench_indexer.py --variant v5,v5@16 --shapes 64x65536x512   # v5: TQ tokens a CTA
        # v4 (keys in wgmma registers; what "auto" runs for FP4): v4@TPC/PF/SPLIT/STOP sets its
        # tiles a CTA, prefetch depth, commit groups, or times the kernel to a stop (unchecked)
    python tools/bench_indexer.py --quick --variant v4,v6   # v6: v4 with the keys through a
        # TMA / cp.async mbarrier ring (v6@TPC//SPLIT/STOP as v4's; PF unused)
    python tools/stamp_sources.py; export DSV4_NUMBA_CACHE=1    # Numba's disk cache, then
    python tools/bench_indexer.py --precompile --variant v2,v3 --fmt fp4,fp8   # fill it with
        # the fused kernels, one process per kernel in parallel (~2.5 min of compiles on 16
        # cores instead of ~1.5 min each in every process), then exit; later runs load them

Rows are not started once ``--max-seconds`` (default 40) have passed since the start (compiles
included): the table of what ran is printed either way.

The torch path is what users write today: dequantize (FP4: nibble unpack, E2M1 table, x 2^(s-127)
per 32, to bf16; FP8: E4M3 -> bf16 by torch.float8_e4m3fn, q's scale folded into w, the key's
scale on the head sum), ``einsum('thd,nd->thn')`` in bf16, ReLU, times w[t, h], sum over heads
(float32), ``torch.topk``. Variant ``v3``: the v2 kernel counting the top-k histogram + the
select of ``pipelines/indexer_topk.py`` (no histogram launch); its "scores us" is the kernel
with the histogram, "total us" kernel + select. dsv4_numba: the fused kernel (scores [T, N] written once) + the production top-k
stage on prepared, preallocated outputs. Both on the same device-resident inputs (H = 64, D = 128,
valid_len = N). Timing: CUDA events around 10 (--quick: 5) back-to-back calls queued behind a spin kernel
(``dsv4_numba.runtime.bench.time_gpu``), median of 5 (3) repeats, after a warm-up; key caches rotate
among copies whenever one would fit in L2 (50 MB). Before timing, the fused top-k is compared with
torch's: the share of torch's indices also selected (ties and bf16-vs-float32 rounding of the
torch path make ~1.0, not exactly 1, the expected value).

Columns: "scores us" = the fused kernel alone; "total us" = fused kernel + top-k; "key GB/s" =
key bytes / scores time; "TFLOP/s" = 2*T*H*N*D / scores time. Targets (issue 6, H100, FP4):
T=1,N=65536,k=512 <= 20 us; T=4,N=131072,k=1024 <= 40 us; T=64,N=65536,k=512 <= 200 us.
"""
from __future__ import annotations

import argparse
import datetime
import sys

import numpy as np

from dsv4_numba.runtime.bench import Cycle, rotation

H, D = 64, 128
SHAPES = [(1, 65536, 512), (4, 131072, 1024), (64, 65536, 512), (1, 262144, 2048),
          (16, 262144, 2048)]
TARGETS = {(1, 65536, 512): 20.0, (4, 131072, 1024): 40.0, (64, 65536, 512): 200.0}
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def torch_dequant_fp4(torch, data, scales, lut):
    """[..., D/2] uint8 codes + [..., D/32] UE8M0 -> [..., D] bf16 (what users write in torch)."""
    lo, hi = data & 15, data >> 4
    codes = torch.stack((lo, hi), dim=-1).flatten(-2).long()
    v = lut[codes]
    s = torch.exp2(scales.float() - 127.0).repeat_interleave(32, dim=-1)
    return (v * s).to(torch.bfloat16)


def e4m3_codes(torch, shape):
    """Random E4M3 bytes without the NaN codes (0x7F / 0xFF)."""
    c = torch.randint(0, 256, shape, device="cuda", dtype=torch.uint8)
    return torch.where((c & 0x7F) == 0x7F, c ^ 1, c)


def make_inputs(torch, fmt, T, N, g):
    """Device tensors: q and keys (FP4 codes + scales, FP8 codes + float32 scale per row, or
    bf16), weights."""
    dev = "cuda"
    w = torch.randn(T, H, device=dev) * 0.5
    if fmt == "fp8":
        qs = torch.rand(T, H, 1, device=dev) * 0.01 + 0.001
        ks = torch.rand(N, 1, device=dev) * 0.01 + 0.001
        return dict(q=(e4m3_codes(torch, (T, H, D)), qs), k=(e4m3_codes(torch, (N, D)), ks), w=w)
    if fmt == "fp4":
        qd = torch.randint(0, 256, (T, H, D // 2), device=dev, dtype=torch.uint8)
        qs = torch.randint(120, 131, (T, H, D // 32), device=dev, dtype=torch.uint8)
        kd = torch.randint(0, 256, (N, D // 2), device=dev, dtype=torch.uint8)
        ks = torch.randint(120, 131, (N, D // 32), device=dev, dtype=torch.uint8)
        return dict(q=(qd, qs), k=(kd, ks), w=w)
    q = torch.randn(T, H, D, device=dev).to(torch.bfloat16)
    k = torch.randn(N, D, device=dev).to(torch.bfloat16)
    return dict(q=q, k=k, w=w)


def bench_case(torch, fmt, T, N, k, reps, repeats, rows, variants=("v1", "v2"), with_topk=True):
    from numba import cuda

    from dsv4_numba.formats import QuantizedFP4, QuantizedFP8
    from dsv4_numba.pipelines import indexer_sm90 as F
    from dsv4_numba.pipelines import indexer_topk as IT
    from dsv4_numba.pipelines.indexer import _validate
    from dsv4_numba.runtime.bench import time_gpu
    from dsv4_numba.stages import topk as TK

    if fmt == "fp8":
        variants = tuple(v for v in variants if v != "v1")   # v1 / v2: the same FP8 kernel
    if fmt != "fp4":
        variants = tuple(v for v in variants if not v.startswith("v5"))   # v5: FP4 only
    if not variants:
        return
    kbytes = {"fp4": N * (D // 2 + D // 32), "fp8": N * (D + 4)}.get(fmt, N * D * 2)
    nrot = rotation(kbytes)
    g = np.random.default_rng(T * N)
    base = make_inputs(torch, fmt, T, N, g)
    keys = [base["k"]] + [make_inputs(torch, fmt, 1, N, g)["k"] for _ in range(nrot - 1)]
    w = base["w"]
    lut = torch.tensor(E2M1, device="cuda")

    # --- dsv4_numba: fused scores + production top-k, prepared
    def ours_inputs(kk):
        if fmt == "fp8":
            q = QuantizedFP8(cuda.as_cuda_array(base["q"][0]), cuda.as_cuda_array(base["q"][1]))
            kc = QuantizedFP8(cuda.as_cuda_array(kk[0]), cuda.as_cuda_array(kk[1]))
        elif fmt == "fp4":
            qd, qs = base["q"]
            q = QuantizedFP4(cuda.as_cuda_array(qd), cuda.as_cuda_array(qs), None, "dsv4_fp4", (T, H, D))
            kc = QuantizedFP4(cuda.as_cuda_array(kk[0]), cuda.as_cuda_array(kk[1]), None, "dsv4_fp4",
                              (N, D))
        else:
            q = cuda.as_cuda_array(base["q"].view(torch.int16))
            kc = cuda.as_cuda_array(kk.view(torch.int16))
        return q, kc

    wd = cuda.as_cuda_array(w)
    scores_t = torch.full((T * N,), float("nan"), device="cuda")          # poisoned
    scores = cuda.as_cuda_array(scores_t)
    plans = {}
    hsel = IT.hist_topk_for(T, N, k) if any(_base(v) == "v3" for v in variants) else None
    for v in variants:
        plans[v] = []
        for kk in keys:
            q, kc = ours_inputs(kk)
            vname, rs = _rs_options(v)
            plans[v].append(F.fused_plan(_validate(q, kc, wd, k, None, None), q, kc, wd,
                                         out=scores, variant=vname,
                                         ghist=hsel.ghist(True) if vname == "v3" else None, **rs))
    vl = plans[variants[0]][0].vl
    s2 = scores.reshape(T, N)
    vals = cuda.device_array(T * k, np.float32)          # flat, as topk_production takes them
    idx = cuda.device_array(T * k, np.int32)
    try:
        if not with_topk:
            raise LookupError("--no-topk")
        call = TK._prepare(s2, k, vl, check_nan=False)

        def run_topk():
            TK.topk_production(call, vals, idx)
        how = "prepared"
    except LookupError:
        def run_topk():
            pass
        how = "none"
    except Exception as e:  # noqa: BLE001 - the top-k stage is being rewritten: fall back to its public op
        print(f"# top-k prepared call unavailable ({type(e).__name__}: {e}); public topk()")

        def run_topk():
            TK.topk(s2, k, lengths=vl, impl="production")
        how = "public"
    # correctness spot check against torch (same inputs)
    def torch_path(kk, exact=False):
        wt, ksc = w, None
        if fmt == "fp8":
            f8 = torch.float8_e4m3fn
            qb, kb = base["q"][0].view(f8).to(torch.bfloat16), kk[0].view(f8).to(torch.bfloat16)
            wt, ksc = w * base["q"][1][:, :, 0], kk[1][:, 0]
        elif fmt == "fp4":
            qb = torch_dequant_fp4(torch, base["q"][0], base["q"][1], lut)
            kb = torch_dequant_fp4(torch, kk[0], kk[1], lut)
        else:
            qb, kb = base["q"], kk
        if exact:                                  # the check: float32 logits (bf16 ones round)
            qb, kb = qb.float(), kb.float()
        logits = torch.einsum("thd,nd->thn", qb, kb)
        sc = (torch.relu(logits).float() * wt[:, :, None]).sum(1)
        if ksc is not None:
            sc = sc * ksc[None, :]
        return torch.topk(sc, k, dim=-1)
    tcyc = Cycle(keys)
    torch.backends.cuda.matmul.allow_tf32 = False
    tv, ti = torch_path(keys[0], exact=True)
    theirs = ti.cpu().numpy()
    del tv, ti
    t_us = time_gpu(lambda: torch_path(tcyc()), reps, repeats)
    flops = 2.0 * T * H * N * D
    ref_idx = None
    for v in variants:
        scores_t.fill_(float("nan"))
        v3 = _base(v) == "v3"                   # (v3@TQ included)
        if v3:
            def sel():
                hsel.run(scores, vl, vals, idx)
        else:
            sel = run_topk
        if _rs_options(v)[1].get("stop"):     # a timing hook: the scores kernel alone, unchecked
            cyc = Cycle(plans[v])
            s_us = time_gpu(lambda: cyc().run(), reps, repeats)
            print(f"{fmt} {v} T={T} N={N} k={k}: scores kernel to its stop {s_us:.1f} us", flush=True)
            continue
        plans[v][0].run()
        cuda.synchronize()
        assert not torch.isnan(scores_t).any(), f"fused {v}: unwritten scores"
        if with_topk or v3:
            sel()
            cuda.synchronize()
            ours_idx = idx.copy_to_host().reshape(T, k)
        else:                                   # the selection by torch.topk on our scores
            ours_idx = torch.topk(scores_t.view(T, N), k, dim=-1).indices.cpu().numpy()
        if _base(v) in ("v2", "v3") and with_topk:   # the same kernel, the same total order
            if ref_idx is None:
                ref_idx = ours_idx
            elif not np.array_equal(ref_idx, ours_idx):
                print(f"# WARNING {fmt} T={T} N={N} k={k}: v3's indices differ from v2 + top-k's",
                      flush=True)
        agree = float(np.mean([np.intersect1d(ours_idx[t], theirs[t]).size / k for t in range(T)]))
        cyc = Cycle(plans[v])

        def run_scores():
            cyc().run()

        def run_all():
            run_scores()
            sel()
        a_us = time_gpu(run_all, reps, repeats) if (with_topk or v3) else None
        s_us = time_gpu(run_scores, reps, repeats)
        if v3:                                  # the scores-only runs left counts behind
            hsel.plan.workspace(True)[0].copy_to_device(
                np.zeros(hsel.plan.workspace(True)[0].size, np.int32))
            cuda.synchronize()
        a_us = s_us if a_us is None else a_us
        rows.append((fmt, v, T, N, k, s_us, a_us, t_us, kbytes / s_us / 1e3, flops / s_us / 1e6,
                     agree, how))
        tgt = TARGETS.get((T, N, k)) if fmt != "bf16" else None
        print(f"{fmt} {v} T={T} N={N} k={k}: scores {s_us:.1f} us, total {a_us:.1f} us vs torch "
              f"{t_us:.1f} us ({t_us / a_us:.2f}x); {flops / s_us / 1e6:.0f} TFLOP/s; "
              f"agree {agree:.4f}"
              + (f"; target {tgt:.0f} us {'MET' if a_us <= tgt else 'missed'}" if tgt else ""),
              flush=True)


def _base(v):
    """The variant name without its '@' options ('v3@16' -> 'v3')."""
    return v.partition("@")[0]


def _rs_options(v):
    """'v4@TPC/PF/SPLIT/STOP' (each part optional: v4@8, v4@/1, v4@4/2/0, v4@///1) -> ('v4',
    fused_plan kwargs). STOP (v4's timing hook) times the scores kernel only, unchecked. v6 (v4
    with the key ring) takes the same parts (PF unused). Other variants: 'v2@TQ' / 'v5@TQ' sets
    the tokens a CTA (``token_group``'s otherwise)."""
    name, _, opts = v.partition("@")
    if name not in ("v4", "v6"):
        return name, ({"tq": int(opts)} if opts else {})
    parts = (opts.split("/") + [""] * 4)[:4] if opts else [""] * 4
    return name, {key: int(x) for key, x in zip(("tpc", "pf", "split", "stop"), parts) if x}


def _list(arg, allowed, what):
    items = tuple(x for x in arg.split(",") if x)
    bad = [x for x in items if _base(x) not in allowed]
    if bad or not items:
        raise SystemExit(f"--{what}: {bad or arg!r} not in {allowed}")
    return items


def precompile_jobs(variants, fmts):
    """(label, python source) per kernel the run will launch: each compiles one overload into
    Numba's disk cache (``DSV4_NUMBA_CACHE=1``; ``Kernel.gpu``)."""
    head = ("from dsv4_numba.pipelines import indexer_sm90 as F, indexer_topk as IT\n"
            "from dsv4_numba.stages import topk as TK\n")
    compile_ = "k.gpu.compile(s)\n"
    jobs = []
    base = {_base(v) for v in variants}                     # "v5@16" -> "v5"
    if "v1" in base and set(fmts) - {"fp8"}:
        for i, f in enumerate(("bf16", "fp4")):
            if f in fmts:
                jobs.append((f"v1 {f}", head + f"k, s = F.production_kernels()[{i}]\n" + compile_))
    if {"v2", "v3"} & base and set(fmts) - {"fp8"}:
        jobs.append(("v2/v3", head + "k, s = F.v2_kernels()[0]\n" + compile_))
        jobs.append(("q decode", head + "k, s = F.v2_kernels()[1]\n" + compile_))
    if "fp8" in fmts:
        jobs.append(("fp8", head + "k, s = F.fp8_kernels()[0]\n" + compile_))
    if "v5" in base and "fp4" in fmts:
        jobs.append(("v5", head + "k, s = F.v5_kernels()[0]\n" + compile_))
        jobs.append(("v5 q", head + "k, s = F.v5_kernels()[1]\n" + compile_))
    if "v3" in base:
        jobs.append(("v3 select", head + "staged = IT.DEFAULT_SELECT == 'staged'\n"
                     "k, s = IT.kernels()[int(staged)]\n" + compile_))
    if {"v4", "v6"} & base and set(fmts) - {"fp8"}:
        from dsv4_numba.pipelines import indexer_sm90 as F
        extra = tuple(sorted({(o.get("pf"), o.get("split")) for o in
                              (_rs_options(v)[1] for v in variants if v.startswith("v4"))
                              if "pf" in o or "split" in o}, key=repr))   # None: the default
        extra += tuple(sorted({(None, o.get("split"), None) for o in     # v6: ring None =
                               (_rs_options(v)[1] for v in variants if v.startswith("v6"))},
                              key=repr))                                    # RING_DEFAULTS
        for i, (k, _) in enumerate(F.rs_kernels_of(fmts, extra)):
            jobs.append((k.__name__, head + f"k, s = F.rs_kernels_of({tuple(fmts)!r}, "
                         f"{extra!r})[{i}]\n" + compile_))
    if {"v1", "v2", "v4", "v5", "v6"} & base:     # the registered top-k after them
        from dsv4_numba.pipelines import indexer_topk as IT
        for i, (k, _) in enumerate(IT.registered_topk_kernels()):
            jobs.append((k.__name__, head + f"k, s = IT.registered_topk_kernels()[{i}]\n"
                         + compile_))
    return jobs


def precompile(variants, fmts) -> int:
    """Compile ``precompile_jobs`` in parallel processes (``tools/precompile.py``'s runner)."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "precompile.py")
    spec = importlib.util.spec_from_file_location("precompile", path)
    pre = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pre)
    from dsv4_numba.runtime.env import kernel_cache
    if not kernel_cache():
        print("--precompile: set DSV4_NUMBA_CACHE=1 (after tools/stamp_sources.py), else nothing "
              "is kept", file=sys.stderr)
        return 2
    return pre.run_jobs([(label, [src]) for label, src in precompile_jobs(variants, fmts)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="the three target rows (FP4 unless --fmt), fewer repetitions")
    ap.add_argument("--fmt", help="key formats, comma-separated: fp4, fp8, bf16")
    ap.add_argument("--variant", default="both",
                    help="fused kernel(s) to time, comma-separated: v1 (round 1, H100-verified), "
                         "v2 (round 2), v3 (v2 + histogram top-k), v4 (keys in wgmma registers; "
                         "v4@N: N key tiles a CTA), v5 (FP4 as E4M3 on the FP8 wgmma; FP4 rows "
                         "only), v6 (v4 with the keys through a TMA / cp.async mbarrier ring); "
                         "'both' = v1,v2, 'all'")
    ap.add_argument("--shapes", help="TxNxk list, e.g. 1x65536x512,16x262144x2048 (default: all "
                                     "of SHAPES, or the target rows with --quick)")
    ap.add_argument("--no-topk", action="store_true",
                    help="time the scores kernel only (no top-k compile; total = scores, the "
                         "selection check uses torch.topk on the fused scores)")
    ap.add_argument("--precompile", action="store_true",
                    help="compile the kernels the other options name into Numba's disk cache, "
                         "in parallel processes, and exit")
    ap.add_argument("--max-seconds", type=float, default=40.0,
                    help="start no new row after this many seconds (compiles included)")
    args = ap.parse_args(argv)
    import time
    start = time.monotonic()
    variants = {"both": ("v1", "v2"), "all": ("v1", "v2", "v3", "v4", "v5", "v6")}.get(
        args.variant) or _list(args.variant, ("v1", "v2", "v3", "v4", "v5", "v6"), "variant")
    fmts = _list(args.fmt, ("fp4", "fp8", "bf16"), "fmt") if args.fmt else \
        (("fp4",) if args.quick else ("fp4", "bf16"))
    if args.precompile:
        return precompile(variants, fmts)
    import torch  # noqa: lazily: present on the device image only

    from dsv4_numba.runtime import detect_gpu
    from dsv4_numba.runtime.bench import parse_shapes
    gpu = detect_gpu()
    if gpu is None:
        print("no GPU found: this benchmark runs on the device machine", file=sys.stderr)
        return 2
    import numba_cuda
    reps, repeats = (5, 3) if args.quick else (10, 5)
    print(f"# {gpu.name} ({gpu.arch}, {gpu.sm_count} SMs), torch {torch.__version__}, "
          f"numba-cuda {numba_cuda.__version__}, {datetime.date.today()}", flush=True)
    rows = []
    shapes = parse_shapes(args.shapes) if args.shapes else \
        [s for s in SHAPES if s in TARGETS] if args.quick else SHAPES
    for fmt in fmts:
        for (T, N, k) in shapes:
            if time.monotonic() - start > args.max_seconds:
                print(f"# --max-seconds {args.max_seconds:.0f} passed: {fmt} T={T} N={N} k={k} "
                      f"and later rows skipped", flush=True)
                break
            bench_case(torch, fmt, T, N, k, reps, repeats, rows, variants, not args.no_topk)
    print()
    print(f"Fused indexer (H=64, D=128), {gpu.name}, {datetime.date.today()}; CUDA-event medians "
          f"(tools/bench_indexer.py)")
    print()
    print("| keys | kernel | T | N | k | scores us | total us | torch us | speed-up | key GB/s "
          "| TFLOP/s | top-k agree | target |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for fmt, v, T, N, k, s_us, a_us, t_us, gbs, tf, agree, how in rows:
        tgt = TARGETS.get((T, N, k)) if fmt != "bf16" else None
        print(f"| {fmt} | {v} | {T} | {N} | {k} | {s_us:.1f} | {a_us:.1f} | {t_us:.1f} | "
              f"{t_us / a_us:.2f}x | {gbs:.0f} | {tf:.0f} | {agree:.4f} | "
              f"{'' if tgt is None else f'<= {tgt:.0f}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
