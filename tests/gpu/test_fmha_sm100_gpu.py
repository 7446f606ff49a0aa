"""The fused sm_100a attention kernel (pipelines/fmha_sm100.py) on a Blackwell GPU (B200, sm_100a),
against the float64 oracle and bound of tests/gpu/test_fmha_gpu.py (P rounded to bf16 before the PV
MMA, one rounding of the output). Skipped on any other GPU (an H100 skips every test here): this
file is the first thing to run on a B200 (fmha_sm100's "What to check first").

Order: the emulator test shapes first (one or two CTAs per head dim; a failure there is a layout /
descriptor problem, the emulator having passed them), then larger shapes (rings that wrap, many
CTAs: races), then the dispatch through ``fmha``.
"""
import ml_dtypes
import numpy as np
import pytest
from test_fmha_gpu import check, oracle, problem

from dsv4_numba import runtime
from dsv4_numba.pipelines import fmha_sm100
from dsv4_numba.pipelines.fmha import FUSED, fmha

pytestmark = pytest.mark.gpu
BF16 = ml_dtypes.bfloat16


@pytest.fixture(scope="module", autouse=True)
def need_sm100a():
    if runtime.device_arch() != "sm_100a":
        pytest.skip(f"the fused sm_100a kernel needs a B200-class GPU; this GPU is {runtime.device_arch()}")


def run_plan(q, k, v, causal=False, sink=None, kv_lengths=None):
    from numba import cuda

    from dsv4_numba.pipelines.fmha import _validate
    c = _validate(q, k, v, causal, None, sink, True, kv_lengths)
    assert fmha_sm100.unsupported(c, False) is None
    dev = [cuda.to_device(np.ascontiguousarray(x).view(np.uint16)) for x in (q, k, v)]
    plan = fmha_sm100.Plan(c, *(x.reshape(-1) for x in dev), cuda.to_device(c.lens),
                           cuda.to_device(c.sink) if c.sink is not None else None)
    plan.out.copy_to_device(np.full(plan.out.shape, 0x7FC17FC1, np.uint32))   # NaN poison
    plan.lse.copy_to_device(np.full(plan.lse.shape, np.nan, np.float32))
    plan.launch()
    if not plan.wait(30.0):            # a deadlocked kernel: stop the run loudly instead of hanging
        pytest.exit("fmha_sm100 kernel did not finish within 30 s (deadlock? first suspects: the "
                    "mbarrier parities of the MMA / softmax / correction hand-offs)", returncode=3)
    cuda.synchronize()
    B, Tq, Hq, D = q.shape
    return (plan.out.copy_to_host().view(BF16).reshape(B, Tq, Hq, D),
            plan.lse.copy_to_host().reshape(B, Hq, Tq))


# (B, Tq, Tk, Hq, Hkv, D, causal, kv_lengths): the emulator shapes of tests/test_fmha_sm100.py, then larger
SHAPES = {
    "emu_D16_short_lengths": (2, 70, 150, 1, 1, 16, False, (0, 140)),
    "emu_D16_causal": (1, 100, 100, 1, 1, 16, True, None),
    "emu_D64_causal_two_ctas": (1, 130, 130, 1, 1, 64, True, None),
    "emu_D64_decode3_gqa4": (1, 3, 140, 8, 2, 64, True, None),
    "emu_D128_kv200": (1, 40, 200, 1, 1, 128, False, (190,)),
    "emu_D128_causal_decode": (1, 20, 260, 1, 1, 128, True, None),
    "emu_D256_gqa2": (1, 60, 100, 2, 1, 256, False, None),
    "emu_D256_causal": (1, 70, 70, 1, 1, 256, True, None),
    "D128_mha_127x1029": (2, 127, 1029, 2, 2, 128, False, (1029, 700)),
    "D128_causal_prefill_1024": (1, 1024, 1024, 4, 4, 128, True, None),
    "D64_decode_gqa8": (4, 1, 4096, 64, 8, 64, False, (4096, 1, 0, 2049)),
    "D256_causal_512": (1, 512, 512, 2, 1, 256, True, None),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_fused_sm100_matches_float64(name):
    B, Tq, Tk, Hq, Hkv, D, causal, lens = SHAPES[name]
    q, k, v = problem(len(name), B, Tq, Tk, Hq, Hkv, D)
    if lens is not None:
        for b, L in enumerate(lens):
            k[b, L:] = np.nan
            v[b, L:] = np.nan
    sink = np.linspace(-1.0, 2.0, Hq).astype(np.float32) if "gqa" in name or "causal" in name else None
    out, lse = run_plan(q, k, v, causal, sink, lens)
    check(out, lse, oracle(q, k, v, causal, sink=sink, kv_lengths=lens), name)
    out2, lse2 = run_plan(q, k, v, causal, sink, lens)                       # deterministic
    assert np.array_equal(out.view(np.uint16), out2.view(np.uint16)), f"{name}: not bitwise repeatable"


def test_fmha_dispatches_to_sm100_by_arch():
    q, k, v = problem(5, 1, 33, 77, 4, 2, 128)
    a = fmha(q, k, v, causal=True, impls={FUSED: "production:sm_100a"})
    b = fmha(q, k, v, causal=True, impls="production")                       # this arch's variant
    c = fmha(q, k, v, causal=True)                                           # auto
    assert np.array_equal(a.view(np.uint16), b.view(np.uint16))
    assert np.array_equal(a.view(np.uint16), c.view(np.uint16))
    check(a, fmha(q, k, v, causal=True, return_lse=True, impls={FUSED: "production:sm_100a"})[1],
          oracle(q, k, v, causal=True), "dispatch")
