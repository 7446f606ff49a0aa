"""The fused sm_100a attention kernel (pipelines/fmha_sm100.py) without a Blackwell GPU.

1. ptxas for sm_100a: no spills, no local memory, the register budget of 320 threads, and the
   tcgen05 instructions it exists for in the PTX (counted) and the SASS (UTCHMMA, LDTM, STTM, UTCBAR).
2. The kernel itself under the CUDA simulator with the semantic emulator (``dsv4_numba.emu``), the
   TMEM column plan declared (``emu.tmem_regions``): every head dim, causal and not, GQA packing,
   a sink, key lengths shorter than Tk (V rows past the length poisoned with NaN), a batch with no
   visible key; against a float64 oracle; the emulator's diagnostics must stay silent (any
   EmulatorError fails, warnings are errors).
3. The plan is enforced: a declared plan that does not match the kernel's writes is reported.

Error bound (as tests/test_fmha_fused.py / tests/gpu/test_fmha_gpu.py): P is rounded to bf16 before
the PV MMA (relative 2^-8 per weight, summed as 2^-8 * sum p |v|), the output once more to bf16
(2^-8 |O|); the emulator's MMA sums exactly and rounds once to float32 (1e-5 slack covers it and the
float32 softmax). lse: float32 throughout, 2e-5 absolute at |lse| < 20.

Cost: ~1-3 s per emulator case (1-3 CTAs of 320 threads), all in CI (two took 40-50 s before the
emulator's lock convoy was fixed and were slow-marked); the sm_100a compiles of every head dim
(D = 64 / 128 / 256: 30-50 s each) run in CI too, since the whole default run takes ~5 minutes of
the 15. No retry on EmulatorDeadlock: the deadlock rule is exact, a report is a bug.
"""
import importlib.util
import pathlib
import re

import ml_dtypes
import numpy as np
import pytest

from dsv4_numba.pipelines import fmha_sm100 as F

BF16 = ml_dtypes.bfloat16
ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------- ptxas
@pytest.fixture(scope="module", params=[pytest.param(16, id="D16"), pytest.param(64, id="D64"),
                                        pytest.param(128, id="D128"), pytest.param(256, id="D256")])
def compiled(request):
    D = request.param
    return D, F.fused_kernel(D).compile(F.signature(), "sm_100a")


def test_compiles_for_sm100a_without_spills(compiled):
    D, res = compiled
    assert res.spill_stores == res.spill_loads == res.stack_bytes == 0, res.summary()
    assert ".local" not in res.ptx, "S / O chunks must stay in registers"
    assert res.registers <= (65536 // F.THREADS) // 8 * 8, res.summary()


def test_tcgen05_pipeline_in_ptx_and_sass(compiled):
    D, res = compiled
    ptx, sass = res.ptx, res.sass
    bn = F.block_n(D)
    ss = re.findall(r"tcgen05\.mma\.cta_group::1\.kind::f16 \[%r\d+\], %rd\d+, %rd\d+, %r\d+, p;", ptx)
    ts = re.findall(r"tcgen05\.mma\.cta_group::1\.kind::f16 \[%r\d+\], \[%r\d+\], %rd\d+, %r\d+, p;", ptx)
    # S = Q K^T: D/16 k-steps; O += P V: BN/16 k-steps per N-subtile. LLVM may duplicate the
    # issue code (loop peeling / unswitching: 3 copies at D = 16), so count in whole copies.
    n_ss, n_ts = D // 16, (bn // 16) * max(1, D // F.PV_N)
    assert len(ss) >= n_ss and len(ss) % n_ss == 0, (len(ss), n_ss)
    assert len(ts) >= n_ts and len(ts) % n_ts == 0, (len(ts), n_ts)
    for instr in ("tcgen05.alloc.cta_group::1.sync.aligned.shared::cta.b32",
                  "tcgen05.relinquish_alloc_permit.cta_group::1", "tcgen05.dealloc.cta_group::1",
                  "tcgen05.commit.cta_group::1.mbarrier::arrive::one", "tcgen05.ld.sync.aligned.32x32b.x32",
                  "tcgen05.st.sync.aligned.32x32b.x16", "tcgen05.wait::ld", "tcgen05.wait::st",
                  "tcgen05.fence::before_thread_sync", "tcgen05.fence::after_thread_sync",
                  "cp.async.bulk.tensor.4d", "mbarrier.try_wait.parity", "fence.proxy.async.shared::cta",
                  "cvt.rn.bf16x2.f32", "ex2.approx"):
        assert instr in ptx, instr
    for op in ("UTCHMMA", "LDTM", "STTM", "UTCBAR", "UTMALDG"):
        assert op in sass, op


# ---------------------------------------------------------------------------------------- plan
@pytest.mark.parametrize("D", F.SUPPORTED_D)
def test_tmem_plan_is_consistent(D):
    plan = F.tmem_plan(D)
    tool = _tool("tmem_plan")
    regions = {k: (c, n, F.TMEM_ALIASES.get(k)) for k, (c, n) in plan.items()}
    errs, alloc = tool.check(regions, F.TMEM_COLS)
    assert errs == [] and alloc == F.TMEM_COLS
    bn = F.block_n(D)
    assert plan["O"][1] == D and plan["S0"][1] == plan["S1"][1] == bn       # f32: one column per N
    assert plan["P0"][1] == bn // 2                                         # bf16 pairs
    assert set(F.tmem_regions(D)) == {"S0", "S1", "O"}


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("D", F.SUPPORTED_D)
def test_tmem_walkthrough_follows_the_plan(D):
    """tools/tmem_walkthrough.py replays the kernel's schedule over the plan: no live data overwritten."""
    txt, errs = _tool("tmem_walkthrough").text_picture(D, 3)
    assert errs == [], errs
    assert f"O {F.tmem_plan(D)['O'][0]}.." in txt and "PV_2" in txt


@pytest.mark.parametrize("D", [16, 64, 128])
def test_two_q_tile_plan_follows_the_fa4_schedule(D):
    """The planned (not built) two-Q-tile variant: its plan replayed over the FA4 schedule."""
    txt, errs = _tool("tmem_walkthrough").text_picture(D, 3, qtiles=2)
    assert errs == [] and "O1 384.." in txt
    with pytest.raises(ValueError, match="D <= 128"):
        F.tmem_plan_two_q(256)


def test_tmem_walkthrough_catches_a_bad_plan(monkeypatch):
    bad = dict(F.tmem_plan(128))
    bad["O"] = (192, 128)                                   # O over the second half of S1
    monkeypatch.setattr(F, "tmem_plan", lambda D: bad)
    _, errs = _tool("tmem_walkthrough").text_picture(128, 3)
    assert any("still live" in e for e in errs), errs


@pytest.mark.parametrize("D", F.SUPPORTED_D)
def test_shared_memory_and_descriptors(D):
    from dsv4_numba.hw.descriptors import explain
    g = F.geometry(D)
    assert g["dyn_smem"] <= 227 * 1024, g
    assert g["boxq"] % 256 == 0 and g["boxk"] % 256 == 0 and g["qbytes"] % 1024 == 0
    d = F.descriptors(D)
    s = explain(d["idesc_s"], "umma-idesc", mma_kind="f16", cta_group=1, ws=False).fields
    o = explain(d["idesc_o"], "umma-idesc", mma_kind="f16", cta_group=1, ws=False).fields
    assert (s["M"], s["N"], s["a_major"], s["b_major"]) == (128, g["BN"], "K", "K")
    assert (o["M"], o["N"], o["a_major"], o["b_major"]) == (128, min(D, F.PV_N), "K", "MN")
    assert g["swizzle"] in str(explain(d["v"], "umma-smem"))


def test_launch_config_packs_gqa_heads():
    c = F.launch_config(64, 1, 64, 8, 128)                 # decode: 8 heads of a KV head in one CTA
    assert (c["G"], c["grid"], c["qbox"]) == (8, (1, 8, 64), (1, 16, 8, 64))
    c = F.launch_config(4, 4096, 16, 16, 128)              # MHA prefill
    assert (c["G"], c["grid"], c["qbox"]) == (1, (32, 16, 4), (1, 128, 1, 64))
    c = F.launch_config(1, 129, 6, 2, 16)                  # a group of 3 does not divide 128
    assert (c["G"], c["grid"], c["qbox"], c["kbox"]) == (1, (2, 6, 1), (1, 128, 1, 16), (1, 128, 1, 16))
    assert F.launch_config(1, 5, 4, 1, 256)["kbox"] == (1, 64, 1, 64)


# ---------------------------------------------------------------------------------------- emulator
class _Call:
    pass


def _emulated(monkeypatch, q, k, v, causal, sink, lens, regions=None):
    from dsv4_numba import emu
    monkeypatch.setenv("DSV4_MODE", "sim")
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    cfg = F.launch_config(B, Tq, Hq, Hkv, D)
    g = F.geometry(D)
    maps = [emu.tensor_map(np.ascontiguousarray(x).view(np.uint16), box, g["swizzle"], dtype="bfloat16")
            for x, box in zip((q, k, v), (cfg["qbox"], cfg["kbox"], cfg["kbox"]))]
    out = np.full(B * Tq * Hq * D // 2, 0x7FC17FC1, np.uint32)           # NaN-poisoned
    lse = np.full(B * Hq * Tq, np.nan, np.float32)
    c = _Call()
    c.Tq, c.Tk, c.Hq, c.Hkv, c.causal, c.scale, c.sink = Tq, Tk, Hq, Hkv, causal, D ** -0.5, sink
    sk = sink if sink is not None else np.zeros(1, np.float32)
    args = F.kernel_args(c, maps, out, lse, np.asarray(lens, np.int32), sk, cfg["G"])
    with emu.tmem_regions(**(regions or F.tmem_regions(D))):
        F.fused_kernel(D).launch(cfg["grid"], F.THREADS, *args, shared_bytes=g["dyn_smem"])
    return out.view(BF16).reshape(B, Tq, Hq, D), lse.reshape(B, Hq, Tq), c.scale


def _oracle(q, k, v, causal, sink, lens, scale):
    """float64 out [B, Tq, Hq, D], lse [B, Hq, Tq], and sum_j p_j |v_j| for the bound."""
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    O = np.zeros((B, Tq, Hq, D))
    A = np.zeros((B, Tq, Hq, D))
    lse = np.zeros((B, Hq, Tq))
    s32 = float(np.float32(scale))
    for b in range(B):
        for hq in range(Hq):
            L = int(lens[b])
            kk, vv = k64[b, :L, hq // (Hq // Hkv)], v64[b, :L, hq // (Hq // Hkv)]
            z = s32 * (q64[b, :, hq] @ kk.T)
            if causal:
                z = np.where(np.arange(L)[None, :] <= np.arange(Tq)[:, None] + Tk - Tq, z, -np.inf)
            sk = -np.inf if sink is None else float(sink[hq])
            m = np.maximum(z.max(axis=1, initial=-np.inf), sk)[:, None]
            m = np.where(np.isfinite(m), m, 0.0)
            e = np.exp(z - m)
            den = e.sum(axis=1) + np.exp(sk - m[:, 0])
            p = np.divide(e, den[:, None], out=np.zeros_like(e), where=den[:, None] > 0)
            O[b, :, hq] = p @ vv
            A[b, :, hq] = p @ np.abs(vv)
            with np.errstate(divide="ignore"):
                lse[b, hq] = m[:, 0] + np.log(den)
    return O, lse, A


# (B, Tq, Tk, Hq, Hkv, D, causal, lens or None): 1-2 CTAs each
EMU_CASES = {
    "D16_two_tiles_short_lengths": (2, 70, 150, 1, 1, 16, False, (0, 140)),
    "D16_causal_prefill": (1, 100, 100, 1, 1, 16, True, None),
    "D64_causal_two_ctas": (1, 130, 130, 1, 1, 64, True, None),
    "D64_decode3_gqa4_packed": (1, 3, 140, 8, 2, 64, True, None),
    "D128_kv200": (1, 40, 200, 1, 1, 128, False, (190,)),
    "D128_causal_decode": (1, 20, 260, 1, 1, 128, True, None),
    "D256_gqa2_subtiled_pv": (1, 60, 100, 2, 1, 256, False, None),
    "D256_causal": (1, 70, 70, 1, 1, 256, True, None),
    # causal with Tq > Tk: the first 20 queries see no key (out 0, lse = sink); MQA with a group of
    # 3 (does not divide 128: one head per CTA, 3 CTAs)
    "D64_causal_tq_gt_tk_mqa3": (1, 40, 20, 3, 1, 64, True, None),
    "D16_decode_mha_tq1": (2, 1, 70, 2, 2, 16, False, (70, 33)),
}


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("case", list(EMU_CASES))
def test_fused_sm100_under_the_emulator(monkeypatch, case):
    B, Tq, Tk, Hq, Hkv, D, causal, lens = EMU_CASES[case]
    lens = np.full(B, Tk) if lens is None else np.asarray(lens)
    g = np.random.default_rng(abs(hash(case)) % 2**32)
    q = (g.standard_normal((B, Tq, Hq, D)) * 3).astype(BF16)
    k = g.standard_normal((B, Tk, Hkv, D)).astype(BF16)
    k[:, 5] *= BF16(8)                                                        # an outlier key
    v = (g.standard_normal((B, Tk, Hkv, D)) * 10.0 ** g.uniform(-1, 1, (B, Tk, Hkv, 1))).astype(BF16)
    for b in range(B):
        k[b, lens[b]:] = np.nan                                               # past the length:
        v[b, lens[b]:] = np.nan                                               # never read
    sink = np.linspace(-1.0, 2.0, Hq).astype(np.float32) if case != "D128_kv200" else None
    out, lse, scale = _emulated(monkeypatch, q, k, v, causal, sink, lens)
    O, lse64, A = _oracle(q, k, v, causal, sink, lens, scale)
    got = out.astype(np.float64)
    assert not np.isnan(got).any(), "unwritten (NaN-poisoned) or NaN outputs"
    bound = 2.0 ** -8 * np.abs(O) + 1.01 * (2.0 ** -8 + 1e-5) * A + 1e-30
    err = np.abs(got - O)
    assert (err <= bound).all(), f"max err {err.max():.3g}, worst err/bound {(err / bound).max():.3g}"
    empty = ~np.isfinite(lse64)
    assert np.array_equal(np.isneginf(lse), empty)                            # no key, no sink: -inf
    np.testing.assert_allclose(lse[~empty], lse64[~empty], rtol=0, atol=2e-5)
    for b in range(B):                                                        # exact rules
        if lens[b] == 0:
            assert (out[b].astype(np.float32) == 0).all()
    if causal and Tq > Tk:                                                    # rows that see nothing
        assert (out[:, :Tq - Tk].astype(np.float32) == 0).all()
        if sink is not None:
            np.testing.assert_allclose(lse[:, :, :Tq - Tk], np.broadcast_to(sink[None, :, None],
                                       (B, Hq, Tq - Tk)), rtol=2e-7, atol=0)


def test_emulator_rejects_a_plan_the_kernel_does_not_follow(monkeypatch):
    """Declare S0 16 columns short: the first QK MMA writes past it and the emulator names it."""
    from dsv4_numba import emu
    D, Tq, Tk = 16, 8, 8
    g = np.random.default_rng(3)
    q, k, v = (g.standard_normal(s).astype(BF16) for s in ((1, Tq, 1, D), (1, Tk, 1, D), (1, Tk, 1, D)))
    plan = F.tmem_regions(D)
    plan["S0"] = (plan["S0"][0], plan["S0"][1] - 16)
    with pytest.raises(emu.EmulatorError, match="tcgen05_mma_f16_ss.*S0"):
        _emulated(monkeypatch, q, k, v, False, None, [Tk], regions=plan)


# ---------------------------------------------------------------------------------------- dispatch
def _qkv(D, Tq=3, Tk=5):
    g = np.random.default_rng(0)
    return tuple(g.standard_normal(s).astype(BF16) for s in ((1, Tq, 2, D), (1, Tk, 1, D), (1, Tk, 1, D)))


def test_registered_as_attn_fused_production_sm100a():
    from dsv4_numba import registry
    from dsv4_numba.pipelines.fmha import FUSED
    im = registry.REGISTRY[FUSED].impls["production:sm_100a"]
    assert im.fn is F.fused_production and im.arch == "sm_100a"
    assert [k for k, _ in im.kernels()] == [F.fused_kernel(D) for D in F.SUPPORTED_D]


def test_fused_variant_is_picked_by_device_arch(monkeypatch):
    """fmha's ``_pick_fused`` with the device arch faked (no launch): 'production' / auto mean the
    variant of this arch; an explicit arch is honoured; each variant's own limits apply."""
    from dsv4_numba import registry
    from dsv4_numba.pipelines import fmha as fm
    monkeypatch.setattr(registry.Impl, "unavailable", lambda self: None)      # pretend it can run
    q, k, v = _qkv(64)
    c = fm._validate(q, k, v, False, None, None, False, None)
    for arch in ("sm_90a", "sm_100a"):
        monkeypatch.setattr(fm, "device_arch", lambda a=arch: a)
        assert fm._pick_fused("production", c, False).key == f"production:{arch}"
        assert fm._pick_fused(None, c, False).key == f"production:{arch}"            # auto
        assert fm._pick_fused({fm.FUSED: "production"}, c, False).key == f"production:{arch}"
    assert fm._pick_fused({fm.FUSED: "production:sm_90a"}, c, False).key == "production:sm_90a"
    q, k, v = (x.astype(np.float16) for x in _qkv(64))  # float16: the sm_90a kernel only
    c = fm._validate(q, k, v, False, None, None, False, None)
    assert fm._pick_fused(None, c, False) is None                     # auto: staged on Blackwell
    with pytest.raises(registry.ImplUnavailable, match="bfloat16 q/k/v only"):
        fm._pick_fused("production", c, False)
    monkeypatch.setattr(fm, "device_arch", lambda: "sm_90a")
    assert fm._pick_fused("production", c, False).key == "production:sm_90a"
    with pytest.raises(registry.ImplUnavailable, match="no fused production variant for sm_80"):
        fm._pick_fused({fm.FUSED: "production:sm_80"}, c, False)


def test_explicit_sm100a_without_a_gpu_says_so_before_any_launch(monkeypatch):
    from dsv4_numba import registry
    from dsv4_numba.pipelines.fmha import FUSED, fmha
    from dsv4_numba.runtime import detect_gpu
    from dsv4_numba.runtime.kernel import Kernel
    if detect_gpu() is not None:
        pytest.skip("checks the no-GPU error")

    def boom(self, *a, **kw):
        raise AssertionError(f"kernel {self.__name__} launched before the error")
    monkeypatch.setattr(Kernel, "launch", boom)
    q, k, v = _qkv(256)
    with pytest.raises(registry.ImplUnavailable, match=r"production:sm_100a needs a GPU of arch sm_100a"):
        fmha(q, k, v, impls={FUSED: "production:sm_100a"})


def test_walkthrough_page_matches_the_tool():
    """docs/tmem_walkthrough.md embeds the tool's D = 128 picture: regenerate it when the plan changes
    (python tools/tmem_walkthrough.py --D 128 --tiles 3)."""
    page = (ROOT / "docs" / "tmem_walkthrough.md").read_text()
    txt, errs = _tool("tmem_walkthrough").text_picture(128, 3)
    assert errs == [] and txt in page, "docs/tmem_walkthrough.md is stale: regenerate its picture"
