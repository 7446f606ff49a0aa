"""The sm_100a FP4 indexer, started (pipelines/indexer_sm100.py): the plans of the pipelined kernel
(TMEM columns through tools/tmem_plan.py's checker, shared memory within the sm_100a limit), and the
built score-tile kernel on block-scaled tcgen05.mma: ptxas for sm_100a, and the emulator against
float64. The registry variant is not built and says so."""
import importlib.util
import pathlib

import pytest

from dsv4_numba.pipelines import indexer_sm100 as I

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tmem_plan_tool():
    spec = importlib.util.spec_from_file_location("tmem_plan", ROOT / "tools" / "tmem_plan.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tmem_plan_fits_and_does_not_overlap():
    plan = I.tmem_plan()
    errs, alloc = _tmem_plan_tool().check({k: (c, n, None) for k, (c, n) in plan.items()}, I.TMEM_COLS)
    assert errs == [] and alloc == 512
    assert plan["ACC0"][1] == plan["ACC1"][1] == I.BN                 # f32 accumulators: N columns
    assert plan["SFA"][1] == I.ROWS // 32 * (I.D // I.K_MMA)          # 1 column per 32 rows per K block
    assert I.BN % 32 == 0 and I.BN <= 256 and I.ROWS == 2 * I.H


def test_smem_plan_fits_sm100a():
    s = I.smem_plan()
    assert s["q"] == I.ROWS * I.D // 2 and s["k_slot"] == I.BN * I.D // 2
    assert s["total"] <= 227 * 1024, s


def test_registry_variant_is_not_built_yet():
    with pytest.raises(NotImplementedError, match="not wired into the stage registry"):
        I.fused_production()


# ---------------------------------------------------------------- step 1: the score tile kernel
def test_score_kernel_compiles_for_sm100a():
    import re
    r = I.indexer_scores_sm100.compile(I.scores_signature(), "sm_100a")
    assert r.spill_stores == r.spill_loads == r.stack_bytes == 0, r.summary()
    mma = re.findall(r"tcgen05\.mma\.cta_group::1\.kind::mxf4nvf4\.block_scale\.scale_vec::2X "
                     r"\[%r\d+\], %rd\d+, %rd\d+, %r\d+, \[%r\d+\], \[%r\d+\], p;", r.ptx)
    assert len(mma) >= I.D // I.K_MMA, len(mma)
    assert r.ptx.count("tcgen05.cp.cta_group::1.32x128b.warpx4") >= 2
    for op in ("UTCOMMA", "UTCCP", "LDTM", "UTCBAR"):
        assert op in r.sass, op


@pytest.mark.filterwarnings("error")
def test_score_kernel_under_the_emulator(monkeypatch):
    """2 x 2 CTAs (T = 3 tokens: the second CTA holds one; N = 150 keys: the second block 22) against
    float64 on the decoded values. The MMA products of E2M1 x UE8M0 values are exact; the error is
    the float32 rounding of the MMA sum (once), of ReLU x w and of the 64-term head sum:
    gamma(D + H + 3) * sum_h |w| sum_d |q k| (the Hopper kernel's bound)."""
    import numpy as np

    from dsv4_numba import formats
    monkeypatch.setenv("DSV4_MODE", "sim")
    g = np.random.default_rng(7)
    T, N = 3, 150
    x = g.standard_normal((T, I.H, I.D)) * 10.0 ** g.uniform(-2, 2, (T, I.H, 1))
    kx = g.standard_normal((N, I.D)) * 10.0 ** g.uniform(-2, 2, (N, 1))
    kx[3] *= 1e4                                                   # an outlier key
    q = formats.quantize(x.astype(np.float32), "dsv4_fp4")
    k = formats.quantize(kx.astype(np.float32), "dsv4_fp4")
    w = (g.standard_normal((T, I.H)) * 0.5).astype(np.float32)
    grid, block, args, dyn = I.scores_launch(q, k, w)
    I.indexer_scores_sm100.launch(grid, block, *args, shared_bytes=dyn)
    got = args[5].reshape(T, N).astype(np.float64)
    assert not np.isnan(got).any(), "unwritten (NaN-poisoned) scores"
    qf, kf = formats.dequantize(q).astype(np.float64), formats.dequantize(k).astype(np.float64)
    logit = np.einsum("thd,nd->thn", qf, kf)
    ref = (np.maximum(logit, 0) * w[:, :, None]).sum(1)
    u = 2.0 ** -24
    n = I.D + I.H + 3
    bound = n * u / (1 - n * u) * (np.abs(w)[:, :, None] * np.abs(logit)).sum(1)
    err = np.abs(got - ref)
    assert (err <= bound).all(), f"worst err/bound {(err / np.maximum(bound, 1e-300)).max():.3g}"
