"""The sm_100a FP4 indexer (pipelines/indexer_sm100.py) without a Blackwell GPU.

1. Plans: the TMEM column plan through tools/tmem_plan.py's checker, shared memory within the
   sm_100a limit, the launch decomposition, the instruction descriptors.
2. ptxas for sm_100a: the pipelined kernel with no spills / local memory and the instructions it
   exists for (block-scaled tcgen05.mma, cp, ld.16x256b, alloc, relinquish, dealloc, commit, TMA,
   7 shfl.bfly) in the PTX and the SASS; the step-1 tile kernel likewise.
3. The pipelined kernel under the CUDA simulator with the semantic emulator (TMA, mbarriers,
   tcgen05, the TMEM plan declared as regions: warnings are errors, any EmulatorError fails):
   several CTAs, token pairs with one token, valid_len < N / = 0 / < k, a key tail, tiles skipped
   past valid_len, a ring that wraps and accumulators reused, paged caches (shared and per-token
   block tables: bitwise equal to contiguous), empty calls; scores NaN-poisoned beforehand;
   against the float64 oracle of tests/test_indexer.py (bound gamma(D + H + 3) sum_h |w| sum_d |q k|:
   the emulator's MMA sums exactly and rounds once per instruction, the head sum is 64 float32
   adds) and then the top-k selection under its tie rule. The GPU body of the epilogue's shuffle
   reduction (the emulator runs its NumPy twin) runs under the simulator against its column map.
4. Known-wrong variants fail: the integer E2M1 decode (formats.wrong) in the MMA, scale factors
   not duplicated into the four lane quadrants, a missing fence.proxy.async, a TMEM plan the kernel
   does not follow.
5. Dispatch: ``indexer(..., impls="fused")`` picks the kernel by device arch (faked, no launch);
   an explicit ``fused:sm_100a`` without a GPU raises before any launch; calls the kernel does not
   take (bfloat16, pages not a multiple of 8 rows, misaligned scales) say so before any launch.

Cost: the compiles take ~2-8 s each (more on a loaded machine); an emulator case 3-12 s (1-4 CTAs of
192 Python threads).
"""
import importlib.util
import pathlib
import re

import numpy as np
import pytest
from conftest import outliers
from numba import cuda, float32
from test_indexer import check_selection, fp4, oracle, page

from dsv4_numba.pipelines import indexer_sm100 as I
from dsv4_numba.runtime import device, kernel

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tmem_plan_tool():
    spec = importlib.util.spec_from_file_location("tmem_plan", ROOT / "tools" / "tmem_plan.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------- plans
def test_tmem_plan_fits_and_does_not_overlap():
    plan = I.tmem_plan()
    errs, alloc = _tmem_plan_tool().check({k: (c, n, None) for k, (c, n) in plan.items()}, I.TMEM_COLS)
    assert errs == [] and alloc == 512
    assert plan["ACC0"][1] == plan["ACC1"][1] == I.BN                 # f32 accumulators: N columns
    assert plan["SFA"][1] == I.ROWS // 32                             # one column per 32 rows (4 SFs)
    assert plan["SFB0"][1] == plan["SFB1"][1] == 4 * -(-I.BN // 128)  # one warpx4 cp per 128x4 atom
    assert I.BN % 32 == 0 and I.BN <= 256 and I.ROWS == 2 * I.H


def test_smem_plan_fits_sm100a():
    s = I.smem_plan()
    assert s["q"] == I.ROWS * I.D // 2 and s["k_slot"] == I.BN * I.D // 2
    assert s["total"] <= 227 * 1024, s
    assert I.K_OFF % 512 == 0 and I.K_BYTES % 512 == 0          # 64B swizzle repeat


def test_launch_config():
    c = I.launch_config(1, 65536)                   # decode: 342 tiles over the 148 SMs
    assert c["ntiles"] == 342 and c["tiles_per_cta"] == 3 and c["grid"] == (114, 1)
    c = I.launch_config(4096, 65536)                # prefill: one chunk per token pair
    assert c["grid"] == (1, 2048) and c["tiles_per_cta"] == 342
    assert I.launch_config(3, 400, 2)["grid"] == (2, 2)
    assert I.launch_config(3, 400, 2, tokens_per_cta=1)["grid"] == (2, 3)      # per-token block tables


def test_descriptors():
    from dsv4_numba.hw.descriptors import explain
    for kb, idesc in enumerate((I.IDESC_K0, I.IDESC_K1)):
        f = explain(idesc, "umma-idesc-bs", mma_kind="mxf4nvf4", cta_group=1).fields
        assert (f["M"], f["N"], f["a_type"], f["b_type"], f["scale_type"]) == (128, I.BN, "e2m1", "e2m1", "ue8m0")
        assert f["a_sf_id"] == f["b_sf_id"] == 2 * kb
    assert "64B" in str(explain(I.DESC_SW64, "umma-smem"))


# ---------------------------------------------------------------------------------------- ptxas
@pytest.fixture(scope="module")
def compiled():
    return I.indexer_fused_sm100.compile(I.fused_signature(), "sm_100a")


def test_fused_kernel_compiles_for_sm100a_without_spills(compiled):
    r = compiled
    assert r.spill_stores == r.spill_loads == r.stack_bytes == 0, r.summary()
    assert ".local" not in r.ptx
    assert r.registers <= 65536 // I.THREADS, r.summary()


def test_fused_kernel_tcgen05_in_ptx_and_sass(compiled):
    ptx, sass = compiled.ptx, compiled.sass
    mma = re.findall(r"tcgen05\.mma\.cta_group::1\.kind::mxf4nvf4\.block_scale\.scale_vec::2X "
                     r"\[%r\d+\], %rd\d+, %rd\d+, %r\d+, \[%r\d+\], \[%r\d+\], p;", ptx)
    n = I.D // I.K_MMA                                # 2 MMAs per key tile; LLVM may peel copies
    assert len(mma) >= n and len(mma) % n == 0, len(mma)
    for instr in ("tcgen05.cp.cta_group::1.32x128b.warpx4", "tcgen05.ld.sync.aligned.16x256b.x4",
                  "tcgen05.alloc.cta_group::1.sync.aligned.shared::cta.b32",
                  "tcgen05.relinquish_alloc_permit.cta_group::1", "tcgen05.dealloc.cta_group::1",
                  "tcgen05.commit.cta_group::1.mbarrier::arrive::one", "tcgen05.wait::ld",
                  "tcgen05.fence::before_thread_sync", "tcgen05.fence::after_thread_sync",
                  "cp.async.bulk.tensor.2d", "mbarrier.try_wait.parity", "fence.proxy.async.shared::cta",
                  "fence.proxy.tensormap::generic.acquire", "st.shared.v4.b32", "bar.sync",
                  "shfl.sync.bfly.b32"):
        assert instr in ptx, instr
    for op in ("UTCOMMA", "UTCCP", "LDTM", "UTCBAR", "UTMALDG", "SHFL.BFLY"):
        assert op in sass, op
    assert sass.count("SHFL.BFLY") == 7, "the head sum: 4 + 2 + 1 shuffles per 32-key chunk"


def test_epilogue_column_map():
    """head_sum8 leaves each of the 32 columns of a chunk in exactly one lane; lanes with the same
    lane % 4 hold the columns of the 16x256b fragment (8 (j // 4) + 2 (t % 4) + j % 2) of that lane."""
    cols = [I.epilogue_column(ln) for ln in range(32)]
    assert sorted(cols) == list(range(32))
    for ln in range(32):
        assert (cols[ln] % 8) // 2 == ln % 4


def test_score_tile_kernel_compiles_for_sm100a():
    r = I.indexer_scores_sm100.compile(I.scores_signature(), "sm_100a")
    assert r.spill_stores == r.spill_loads == r.stack_bytes == 0, r.summary()
    mma = re.findall(r"tcgen05\.mma\.cta_group::1\.kind::mxf4nvf4\.block_scale\.scale_vec::2X "
                     r"\[%r\d+\], %rd\d+, %rd\d+, %r\d+, \[%r\d+\], \[%r\d+\], p;", r.ptx)
    assert len(mma) >= I.D // I.K_MMA, len(mma)
    assert r.ptx.count("tcgen05.cp.cta_group::1.32x128b.warpx4") >= 2
    for op in ("UTCOMMA", "UTCCP", "LDTM", "UTCBAR"):
        assert op in r.sass, op


_HS_BODY = device(I._head_sum8_gpu)                   # no twin: the shuffles themselves


def _hs_probe(out):
    ln = cuda.threadIdx.x
    f = float32(ln * 8)
    out[ln] = _HS_BODY(ln, f, f + float32(1), f + float32(2), f + float32(3), f + float32(4),
                       f + float32(5), f + float32(6), f + float32(7))


def test_head_sum_shuffles_match_the_column_map(monkeypatch):
    """The GPU body of ``head_sum8`` (the 7 shfl.bfly; the emulator runs the kernel with its NumPy
    twin) run by the simulator on one warp: lane l must end with the sum over the 8 lanes sharing
    l % 4 of their partial for column ``epilogue_column(l)``."""
    monkeypatch.setenv("DSV4_MODE", "sim")
    out = np.full(32, np.nan, np.float32)
    kernel(_hs_probe).launch(1, 32, out)
    k_of = {}
    for ln in range(32):
        c = I.epilogue_column(ln)
        k_of[ln] = 2 * (c // 8) + c % 2                 # the partial index of that column
    want = [sum(8 * src + k_of[ln] for src in range(ln % 4, 32, 4)) for ln in range(32)]
    assert out.tolist() == want


# ---------------------------------------------------------------------------------------- emulator
def problem(seed, T, N):
    g = np.random.default_rng(seed)
    q = outliers(g, (T, I.H, I.D), scale_spread=1.0)
    kc = outliers(g, (N, I.D), scale_spread=1.0)
    w = (g.standard_normal((T, I.H)) * 0.5).astype(np.float32)
    w[:, 0] = np.abs(w[:, 0]) + 0.5
    q4, k4 = fp4(q, kc)
    return q4, k4, w


# The pipelined kernel under the emulator. 2026-11-26: one clean-clone CI run hung in
# test_paged_caches_equal_contiguous with no EmulatorDeadlock and a solo run took >2 min, so these
# tests went to the slow set. Cause, reproduced (a solo run of this set on an idle machine spent
# >10 min in its first test; successive py-spy dumps showed it progressing): no deadlock but a lock
# convoy between the emulator's state lock and the GIL, which the simulator's block manager kept
# in a busy polling loop (each hand-over of the lock waited out a 5 ms switch interval), fed by
# every barrier arrival waking all ~150 waiters. Fixed in the emulator (emu.state): an event-driven
# block manager, and arrivals that complete nothing wake nobody. The lanes seen "at both LOAD_BAR
# sites" were released lanes not yet scheduled (a lane reaches the second site only after the
# first site's phase completed); the emulator now reports a named-barrier phase reached by one
# warp's lanes from two sites (bar.sync is .aligned), and gives every thread the same
# cuda.shared.array (the simulator's allocation could race). Back in the default selection:
# with the fix, runs of these tests (3 processes in parallel on 2 cores) took 10-23 s each; one
# of 63 reported a false deadlock (a syncthreads release seen half done, fixed in emu as well),
# none of 72 since; a full-suite -n 2 run with them in took 4 min 53 s (~12 s of it theirs).
# STALL_GUARD_S: a wait that sees no emulated progress that long raises EmulatorDeadlock with every
# thread's state instead of running into the CI timeout.
def PIPELINED_EMU(test):          # in the default selection; `= pytest.mark.slow` moves them out
    return test


STALL_GUARD_S = 180      # last-resort stall timeout here: these launches change emulated state many
                         # times a second, so 3 minutes without one is a hang, reported with each
                         # thread's state (the exact deadlock rule never depends on wall time)


def run_emulated(monkeypatch, q4, k4, w, k, vl, tiles_per_cta=None, regions=None, block_table=None):
    """fused_indexer on the emulator (scores NaN-poisoned first): (idx, vals, scores [T, N])."""
    from dsv4_numba import emu
    from dsv4_numba.emu import state
    from dsv4_numba.pipelines.indexer import _validate
    monkeypatch.setenv("DSV4_MODE", "sim")
    monkeypatch.setattr(state, "STALL_S", min(state.STALL_S, STALL_GUARD_S))
    c = _validate(q4, k4, w, k, vl, block_table)
    out = np.full(c.T * c.N, np.nan, np.float32)
    with emu.tmem_regions(**(regions or I.tmem_plan())):
        idx, vals, inter = I.fused_indexer(c, q4, k4, w, "reference", True, emulate=True,
                                           tiles_per_cta=tiles_per_cta, out=out)
    return idx, vals, inter["scores"]


def check_against_oracle(idx, vals, scores, orc, k, name="fused sm_100a"):
    sc = scores.astype(np.float64)
    assert not np.isnan(sc).any(), f"{name}: unwritten (NaN-poisoned) scores"
    valid = ~np.isnan(orc["scores"])
    assert np.isneginf(sc[~valid]).all(), f"{name}: positions past valid_len must score -inf"
    err = np.abs(sc - np.nan_to_num(orc["scores"]))[valid]
    bound = orc["err"][valid]
    assert (err <= bound).all(), \
        f"{name}: {int((err > bound).sum())} scores outside the bound, worst err/bound {(err / bound).max():.3g}"
    check_selection(idx, vals, orc["scores"], orc["err"], k, orc["valid_len"], name)


# (T, N, valid_len, k, tiles_per_cta)
EMU_CASES = {
    # 2 token pairs (the second holds one token) x 2 key chunks (3 tiles: 192 + 192 + a 16-key tail):
    # token 2's valid_len 5 < k leaves its second chunk without a valid key (no load, no MMA: -inf)
    "two_pairs_tail_skip": (3, 400, (400, 150, 5), 16, 2),
    # one CTA, 5 tiles (the last 40 keys): the 4-slot ring wraps and both accumulators are reused;
    # token 1 has valid_len 0
    "ring_wraps_one_cta": (2, 808, (808, 0), 8, 5),
    # decode: T = 1 (half the MMA rows are zero-filled), the default launch (1 tile per CTA)
    "decode_default_grid": (1, 300, (290,), 8, None),
}


@PIPELINED_EMU
@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("case", list(EMU_CASES))
def test_fused_sm100_under_the_emulator(monkeypatch, case):
    T, N, vl, k, tpc = EMU_CASES[case]
    q4, k4, w = problem(list(EMU_CASES).index(case), T, N)
    vl = np.asarray(vl, np.int32)
    idx, vals, scores = run_emulated(monkeypatch, q4, k4, w, k, vl, tpc)   # no retry: the rule is exact
    check_against_oracle(idx, vals, scores, oracle(q4, k4, w, vl), k)


@PIPELINED_EMU
@pytest.mark.filterwarnings("error")
def test_paged_caches_equal_contiguous(monkeypatch):
    """The same keys scattered over pages of 64 rows (unused pages hold NaN scale codes 0xFF, never
    read), behind one shared block table (2 tokens per CTA) and behind per-token tables (one token
    per CTA, its own table row): scores bitwise equal to the contiguous cache's, and right. Tile 0 =
    3 runs of 64 rows from 3 pages; tile 1 = 1 run, then 2 past the valid keys (zero-filled boxes at
    a negative row, no page read)."""
    from dsv4_numba.formats import QuantizedFP4
    T, N, vl, k = 2, 256, np.array([250, 100], np.int32), 8
    q4, k4, w = problem(21, T, N)
    idx, vals, sc = run_emulated(monkeypatch, q4, k4, w, k, vl, 2)
    check_against_oracle(idx, vals, sc, oracle(q4, k4, w, vl), k)
    for per_token in (False, True):
        (pd, ps), table = page([k4.data, k4.scales], 64, T, per_token, 4, lambda sh, dt: np.full(sh, 255, dt))
        kp = QuantizedFP4(pd, ps, None, k4.fmt, (pd.shape[0], 64, I.D))
        idx2, vals2, sp = run_emulated(monkeypatch, q4, kp, w, k, vl, 2, block_table=table)
        what = "per-token" if per_token else "shared"
        assert np.array_equal(sp.view(np.uint32), sc.view(np.uint32)), f"paged ({what} table) != contiguous"
        assert np.array_equal(idx, idx2) and np.array_equal(vals.view(np.uint32), vals2.view(np.uint32))


@PIPELINED_EMU
@pytest.mark.filterwarnings("error")
def test_empty_calls_and_no_valid_key(monkeypatch):
    """T = 0 or N = 0: no launch, -1 / -inf; valid_len 0 for every token: the kernel runs (2 CTAs, no
    load and no MMA: the TMEM allocation is still made and freed) and writes -inf everywhere."""
    from dsv4_numba.pipelines.indexer import _validate
    monkeypatch.setenv("DSV4_MODE", "sim")
    for T, N in ((0, 50), (2, 0)):
        q4, k4, w = problem(5, T, N)
        idx, vals = I.fused_indexer(_validate(q4, k4, w, 4, None, None), q4, k4, w, "reference", emulate=True)
        assert idx.shape == vals.shape == (T, 4) and (idx == -1).all() and np.isneginf(vals).all()
    q4, k4, w = problem(5, 3, 100)
    idx, vals, scores = run_emulated(monkeypatch, q4, k4, w, 4, np.zeros(3, np.int32))
    assert (idx == -1).all() and np.isneginf(vals).all() and np.isneginf(scores).all()


@PIPELINED_EMU
def test_wrong_fp4_decode_in_the_mma_fails_the_check(monkeypatch):
    """The emulated MMA decoding E2M1 as sign * (code & 7) (formats.wrong, the bug that selected
    wrong blocks): the scores leave the bound and the check says so."""
    from dsv4_numba.emu import tmem as T
    from dsv4_numba.formats import wrong
    monkeypatch.setitem(T.LUT, "e2m1", wrong.e2m1_decode_integer_wrong(np.arange(16, dtype=np.uint8))
                        .astype(np.float64))
    T_, N, vl, k, tpc = EMU_CASES["decode_default_grid"]
    q4, k4, w = problem(11, T_, N)
    vl = np.asarray(vl, np.int32)
    idx, vals, scores = run_emulated(monkeypatch, q4, k4, w, k, vl, tpc)
    with pytest.raises(AssertionError, match="outside the bound|not selected|below the"):
        check_against_oracle(idx, vals, scores, oracle(q4, k4, w, vl), k)


@PIPELINED_EMU
def test_scales_not_duplicated_to_the_lane_quadrants_are_reported(monkeypatch):
    """tcgen05.cp without the .warpx4 broadcast (scale factors only in lanes 0-31): the emulated MMA
    reports the scale-factor cells of lanes 32-127 as never written instead of computing with
    garbage (hardware would read whatever TMEM held)."""
    from dsv4_numba import emu
    from dsv4_numba.emu import ops as E
    monkeypatch.setitem(E._CP_SHAPES, "32x128b_warpx4", (32, 16, False))
    monkeypatch.setattr(E, "tcgen05_cp_32x128b_warpx4", E._make_cp("32x128b_warpx4"))
    q4, k4, w = problem(12, 1, 100)
    with pytest.raises(emu.EmulatorError, match=r"scale factors reads TMEM lane (3[2-9]|[4-9]\d|1[0-2]\d) "):
        run_emulated(monkeypatch, q4, k4, w, 4, np.array([100], np.int32))


@PIPELINED_EMU
def test_missing_proxy_fence_before_the_scale_copy_is_reported(monkeypatch):
    """The load warp's scale stores are generic-proxy writes read by tcgen05.cp (async proxy): without
    fence.proxy.async the emulator names the unfenced bytes."""
    from dsv4_numba import emu
    from dsv4_numba.emu import ops as E
    monkeypatch.setattr(E, "fence_proxy_async_shared_cta", lambda: E._enter() and None)
    q4, k4, w = problem(14, 1, 100)
    with pytest.raises(emu.EmulatorError, match="tcgen05_cp_32x128b_warpx4.*after the last fence.proxy.async"):
        run_emulated(monkeypatch, q4, k4, w, 4, np.array([100], np.int32))


@PIPELINED_EMU
def test_emulator_rejects_a_plan_the_kernel_does_not_follow(monkeypatch):
    """Declare ACC0 16 columns short: the first MMA writes past it and the emulator names it."""
    from dsv4_numba import emu
    plan = I.tmem_plan()
    plan["ACC0"] = (plan["ACC0"][0], plan["ACC0"][1] - 16)
    q4, k4, w = problem(13, 1, 100)
    with pytest.raises(emu.EmulatorError, match=r"tcgen05_mma_mxf4nvf4.*ACC0"):
        run_emulated(monkeypatch, q4, k4, w, 4, np.array([100], np.int32), regions=plan)


@pytest.mark.filterwarnings("error")
def test_score_tile_kernel_under_the_emulator(monkeypatch):
    """Step 1 (one warpgroup, one tile): 2 x 2 CTAs (T = 3 tokens: the second CTA holds one; N = 150
    keys: the second block 22) against float64 on the decoded values, the bound above."""
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


# ---------------------------------------------------------------------------------------- dispatch
def _fake_device(monkeypatch, arch):
    from dsv4_numba import runtime
    monkeypatch.setattr(runtime, "device_arch", lambda: arch)
    monkeypatch.setattr(runtime, "mode", lambda: "gpu" if arch else "sim")


def test_fused_is_picked_by_device_arch(monkeypatch):
    """pick_fused (what indexer(..., impls="fused...") calls) with the device faked, no launch."""
    from dsv4_numba import registry
    from dsv4_numba.pipelines import indexer_sm90
    _fake_device(monkeypatch, "sm_100a")
    assert I.pick_fused("fused") == (I.fused_indexer, None)
    assert I.pick_fused("fused:reference") == (I.fused_indexer, "reference")
    assert I.pick_fused("fused:sm_100a:production") == (I.fused_indexer, "production")
    assert I.pick_fused("fused:sm_90a") == (indexer_sm90.fused_indexer, None)
    _fake_device(monkeypatch, "sm_90a")
    assert I.pick_fused("fused") == (indexer_sm90.fused_indexer, None)
    assert I.pick_fused("fused:production:sm_90a") == (indexer_sm90.fused_indexer, "production:sm_90a")
    with pytest.raises(registry.ImplUnavailable, match="built for sm_100a, but this device is sm_90a"):
        I.pick_fused("fused:sm_100a")
    with pytest.raises(registry.ImplUnavailable, match="no fused indexer for sm_80"):
        I.pick_fused("fused:sm_80")
    _fake_device(monkeypatch, None)                   # no GPU: the sm_90a kernel on the emulator
    assert I.pick_fused("fused") == (indexer_sm90.fused_indexer, None)


def _no_launch(monkeypatch):
    from dsv4_numba.runtime.kernel import Kernel

    def boom(self, *a, **kw):
        raise AssertionError(f"kernel {self.__name__} launched before the error")
    monkeypatch.setattr(Kernel, "launch", boom)


def test_explicit_sm100a_without_a_gpu_says_so_before_any_launch(monkeypatch):
    from dsv4_numba import registry
    from dsv4_numba.pipelines.indexer import indexer
    from dsv4_numba.runtime import detect_gpu
    if detect_gpu() is not None:
        pytest.skip("checks the no-GPU error")
    _no_launch(monkeypatch)
    q4, k4, w = problem(1, 2, 50)
    with pytest.raises(registry.ImplUnavailable, match="needs a GPU of arch sm_100a"):
        indexer(q4, k4, w, 4, impls="fused:sm_100a")
    with pytest.raises(registry.ImplUnavailable, match="needs a GPU of arch sm_100a"):
        indexer(q4, k4, w, 4, impls="fused:sm_100a:reference")


@pytest.mark.parametrize("case", ["page_size_12", "bf16"])
def test_calls_the_kernel_does_not_take_say_so_before_any_launch(monkeypatch, case):
    import ml_dtypes

    from dsv4_numba.pipelines.indexer import indexer
    _fake_device(monkeypatch, "sm_100a")
    _no_launch(monkeypatch)
    q4, k4, w = problem(2, 2, 64)
    if case == "page_size_12":
        from dsv4_numba.formats import QuantizedFP4
        ps = 12
        P = -(-64 // ps)
        data = np.zeros((P * ps, 64), np.uint8)
        scales = np.zeros((P * ps, 4), np.uint8)
        data[:64], scales[:64] = k4.data, k4.scales
        kp = QuantizedFP4(data.reshape(P, ps, 64), scales.reshape(P, ps, 4), None, k4.fmt, (P, ps, 128))
        table = np.arange(P, dtype=np.int32)[None]
        with pytest.raises(NotImplementedError, match="multiple of 8"):
            indexer(q4, kp, w, 4, block_table=table, impls="fused")
    else:
        g = np.random.default_rng(0)
        q = g.standard_normal((2, I.H, I.D)).astype(ml_dtypes.bfloat16)
        kc = g.standard_normal((64, I.D)).astype(ml_dtypes.bfloat16)
        with pytest.raises(NotImplementedError, match="FP4"):
            indexer(q, kc, w, 4, impls="fused")


def test_misaligned_scales_say_so_before_any_launch(monkeypatch):
    from dsv4_numba.formats import QuantizedFP4
    from dsv4_numba.pipelines.indexer import _validate
    monkeypatch.setenv("DSV4_MODE", "sim")
    _no_launch(monkeypatch)
    q4, k4, w = problem(3, 2, 64)
    buf = np.zeros(k4.scales.size + 1, np.uint8)
    buf[1:] = k4.scales.reshape(-1)
    kx = QuantizedFP4(k4.data, buf[1:].reshape(k4.scales.shape), None, k4.fmt, k4.shape)
    with pytest.raises(ValueError, match="k_cache.scales .* not 4-byte aligned"):
        I.fused_indexer(_validate(q4, kx, w, 4, None, None), q4, kx, w, "reference", emulate=True)
