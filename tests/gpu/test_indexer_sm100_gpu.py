"""The sm_100a FP4 indexer (pipelines/indexer_sm100.py) on a Blackwell GPU (B200, sm_100a), against
the float64 oracle of tests/test_indexer.py (bound gamma(D + H + 3) sum_h |w| sum_d |q k|) and its
top-k tie rule. Skipped on any other GPU (an H100 skips every test here): this file is the first
thing to run on a B200 (indexer_sm100's "What to check first"). NEVER RUN YET (no B200 was lent).

Order: the step-1 tile kernel (layouts of the packed codes, the 128x4 scale atom, the SF ids, no
pipeline), then the pipelined kernel at the emulator shapes (a failure there is a layout /
descriptor / TMEM-address problem: the emulator passed them), then larger shapes (many CTAs, rings
that wrap many times: races), then the dispatch through ``indexer(..., impls="fused")``.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_indexer import check_selection, oracle, page  # noqa: E402
from test_indexer_sm100 import EMU_CASES, check_against_oracle, problem  # noqa: E402

from dsv4_numba import formats, runtime  # noqa: E402
from dsv4_numba.pipelines import indexer_sm100 as I  # noqa: E402
from dsv4_numba.pipelines.indexer import _validate, indexer  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def need_sm100a():
    if runtime.device_arch() != "sm_100a":
        pytest.skip(f"the sm_100a indexer needs a B200-class GPU; this GPU is {runtime.device_arch()}")


def finish(what, timeout_s=30.0):
    """Wait for the queued work; stop the run loudly on a kernel that does not finish (deadlock)."""
    from numba import cuda
    ev = cuda.event()
    ev.record()
    t0 = time.time()
    while not ev.query():
        if time.time() - t0 > timeout_s:
            pytest.exit(f"{what} did not finish within {timeout_s} s (deadlock? first suspects: the "
                        f"mbarrier parities of the load / MMA / epilogue hand-offs, the TMEM alloc)",
                        returncode=3)
        time.sleep(0.01)
    cuda.synchronize()


def test_score_tile_kernel_matches_float64():
    """Step 1 (no ring, no warp roles): 2 x 2 CTAs, the bound of tests/test_indexer_sm100.py."""
    g = np.random.default_rng(7)
    T, N = 3, 150
    x = g.standard_normal((T, I.H, I.D)) * 10.0 ** g.uniform(-2, 2, (T, I.H, 1))
    kx = g.standard_normal((N, I.D)) * 10.0 ** g.uniform(-2, 2, (N, 1))
    q = formats.quantize(x.astype(np.float32), "dsv4_fp4")
    k = formats.quantize(kx.astype(np.float32), "dsv4_fp4")
    w = (g.standard_normal((T, I.H)) * 0.5).astype(np.float32)
    grid, block, args, dyn = I.scores_launch(q, k, w)
    I.indexer_scores_sm100.launch(grid, block, *args, shared_bytes=dyn)
    finish("indexer_scores_sm100")
    got = args[5].reshape(T, N).astype(np.float64)
    assert not np.isnan(got).any(), "unwritten (NaN-poisoned) scores"
    qf, kf = formats.dequantize(q).astype(np.float64), formats.dequantize(k).astype(np.float64)
    logit = np.einsum("thd,nd->thn", qf, kf)
    ref = (np.maximum(logit, 0) * w[:, :, None]).sum(1)
    n = I.D + I.H + 3
    bound = n * 2.0 ** -24 / (1 - n * 2.0 ** -24) * (np.abs(w)[:, :, None] * np.abs(logit)).sum(1)
    err = np.abs(got - ref)
    assert (err <= bound).all(), f"worst err/bound {(err / np.maximum(bound, 1e-300)).max():.3g}"


# the emulator shapes, then larger: (T, N, valid_len, k, tiles_per_cta)
SHAPES = {f"emu_{k}": v for k, v in EMU_CASES.items()}
SHAPES.update({
    "T5_N5000_default_grid": (5, 5000, (5000, 4999, 1, 0, 2500), 64, None),
    "T2_N10000_one_cta_53_tiles": (2, 10000, (10000, 9000), 512, 100),      # the ring wraps 13 times
    "T64_N4096": (64, 4096, None, 512, None),
})


@pytest.mark.parametrize("name", list(SHAPES))
def test_fused_kernel_matches_oracle(name):
    from numba import cuda
    T, N, vl, k, tpc = SHAPES[name]
    q4, k4, w = problem(list(SHAPES).index(name), T, N)
    vl = np.full(T, N, np.int32) if vl is None else np.asarray(vl, np.int32)
    c = _validate(q4, k4, w, k, vl, None)
    out = cuda.to_device(np.full(T * N, np.nan, np.float32))
    idx, vals, inter = I.fused_indexer(c, q4, k4, w, None, True, tiles_per_cta=tpc, out=out)
    finish(f"indexer_fused_sm100 ({name})")
    check_against_oracle(idx, vals, inter["scores"], oracle(q4, k4, w, vl), k, f"sm_100a {name}")


@pytest.mark.parametrize("page_size,per_token", [(64, False), (16, False), (256, False), (64, True)])
def test_paged_equals_contiguous(page_size, per_token):
    """A shared block table (2 tokens per CTA) or per-token tables (1 token per CTA), unused pages
    holding NaN scale codes (never read): bitwise equal scores to the contiguous cache (R =
    gcd(page_size, 192) = 64 / 16 / 64 rows per TMA box)."""
    from dsv4_numba.formats import QuantizedFP4
    T, N, k = 6, 1536, 64
    vl = np.array([1536, 1500, 700, 1, 0, 1024], np.int32)
    q4, k4, w = problem(50 + page_size, T, N)
    (pd, ps), table = page([k4.data, k4.scales], page_size, T, per_token, 4,
                           lambda sh, dt: np.full(sh, 255, dt))
    kp = QuantizedFP4(pd, ps, None, k4.fmt, (pd.shape[0], page_size, I.D))
    res = []
    for kc, bt in ((kp, table), (k4, None)):
        c = _validate(q4, kc, w, k, vl, bt)
        res.append(I.fused_indexer(c, q4, kc, w, None, True, tiles_per_cta=3))
        finish(f"indexer_fused_sm100 paged={bt is not None}")
    (i1, v1, s1), (i2, v2, s2) = res
    assert np.array_equal(s1["scores"].view(np.uint32), s2["scores"].view(np.uint32)), "paged != contiguous"
    check_against_oracle(i1, v1, s1["scores"], oracle(q4, k4, w, vl), k, f"paged {page_size} {per_token}")


@pytest.mark.filterwarnings("ignore::dsv4_numba.registry.ProductionUnavailableWarning")   # top-k: sm_90a only
@pytest.mark.parametrize("impls", ["fused", "fused:sm_100a", "fused:sm_100a:reference"])
def test_indexer_dispatch_runs_the_sm100a_kernel(impls, monkeypatch):
    calls = []
    real = I.Plan.run

    def spy(self):
        calls.append(self.cfg["grid"])
        return real(self)
    monkeypatch.setattr(I.Plan, "run", spy)
    T, N, k = 3, 2000, 64
    q4, k4, w = problem(99, T, N)
    vl = np.array([2000, 700, 30], np.int32)
    idx, vals = indexer(q4, k4, w, k, valid_len=vl, impls=impls)
    assert calls, "indexer(impls='fused') did not run the sm_100a kernel on sm_100a"
    orc = oracle(q4, k4, w, vl)
    check_selection(idx, vals, orc["scores"], orc["err"], k, orc["valid_len"], impls)
