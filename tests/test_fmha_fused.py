"""The fused sm_90a attention kernel without a GPU: it compiles for sm_90a with no spills and no
local memory, its PTX / SASS hold the instructions it exists for, its shared-memory plan is what the
docstring says, and ``fmha`` routes to it (or says why not) before any launch.

Numerics are checked on an H100 by tests/gpu/test_fmha_gpu.py, and here by running the kernel
under the emulator (both schedules; the emulator executes wgmma synchronously and setmaxnreg as a
no-op, so it checks the data flow, masks, barriers and the ring, not the async overlap).
"""
import re

import ml_dtypes
import numpy as np
import pytest

from dsv4_numba import registry
from dsv4_numba.pipelines import fmha_sm90
from dsv4_numba.pipelines.fmha import FUSED, fmha
from dsv4_numba.runtime import detect_gpu
from dsv4_numba.runtime.kernel import Kernel

BF16 = ml_dtypes.bfloat16
NO_GPU = detect_gpu() is None


# every (D, nc, schedule, dtype) the kernel has; the four of round 1 run in CI, the rest (20-70 s of
# CPU each) are slow
_FAST = {(64, 2, "v1", "bf16"), (128, 2, "v1", "bf16"), (128, 1, "v1", "bf16"), (128, 2, "v2", "bf16")}
_ALL = [(D, nc, s, dt) for dt in fmha_sm90.DTYPES for D in fmha_sm90.SUPPORTED_D
        for nc, s in fmha_sm90.variants(D)]


@pytest.fixture(scope="module", params=[p if p in _FAST else pytest.param(p, marks=pytest.mark.slow)
                                        for p in _ALL],
                ids=lambda p: f"D{p[0]}_nc{p[1]}_{p[2]}_{p[3]}")
def compiled(request):
    D, nc, sched, dt = request.param
    return D, nc, sched, dt, fmha_sm90.fused_kernel(D, nc, sched, dt).compile(fmha_sm90.signature(),
                                                                             "sm_90a")


def test_every_variant_is_listed():
    assert len(_ALL) == 2 * (4 * 3 - 1)              # no v1 prefill (nc = 2) at D = 256
    assert (256, 2, "v1", "bf16") not in _ALL and (256, 2, "v2", "f16") in _ALL
    assert {p[:3] for p in _FAST} <= {p[:3] for p in _ALL}


def test_compiles_without_spills_or_local_memory(compiled):
    D, nc, sched, dt, res = compiled
    assert res.spill_stores == res.spill_loads == res.stack_bytes == 0, res.summary()
    assert ".local" not in res.ptx, "accumulators must stay in registers"
    threads = fmha_sm90.geometry(D, nc, sched)["threads"]
    assert res.registers <= (65536 // threads) // 8 * 8, res.summary()
    assert "serialized" not in res.ptxas_log, res.ptxas_log     # no wgmma serialisation warning
    assert "C7508" not in res.ptxas_log, res.ptxas_log          # setmaxnreg honoured (v2)


def test_ptx_and_sass_hold_the_pipeline(compiled):
    D, nc, sched, dt, res = compiled
    ptx = res.ptx
    bn = fmha_sm90.block_n(D, sched)
    dp = fmha_sm90.padded_d(D)          # D = 16: O and the P V GEMM are 64 wide (zero-filled V)
    # S = Q K^T: D/16 SS wgmmas of N = bn per tile; O += P V: bn/16 RS wgmmas with imm-trans-b = 1;
    # v2 generates each twice (first tile + loop for S, loop + last tile for P V) except at D = 256
    # (the serial body with setmaxnreg)
    copies = 1 if sched == "v1" or D == 256 else 2
    ss = re.findall(rf"wgmma\.mma_async\.sync\.aligned\.m64n{bn}k16\.f32\.{dt}\.{dt} "
                    r"\{[^}]*\}, %rd\d+, %rd\d+, p, 1, 1, 0, 0;", ptx)
    rs = re.findall(rf"wgmma\.mma_async\.sync\.aligned\.m64n{dp}k16\.f32\.{dt}\.{dt} "
                    r"\{[^}]*\}, \{[^}]*\}, %rd\d+, p, 1, 1, 1;", ptx)
    assert len(ss) == copies * D // 16 and len(rs) == copies * bn // 16, (len(ss), len(rs))
    if sched == "v2":
        for instr in ("setmaxnreg.dec.sync.aligned.u32 24", "setmaxnreg.inc.sync.aligned.u32 240"):
            assert instr in ptx, instr
    if sched == "v2" and D != 256:
        for instr in ("wgmma.wait_group.sync.aligned 1", "bar.arrive", "bar.sync"):
            assert instr in ptx, instr
    for instr in ("cp.async.bulk.tensor.4d", "mbarrier.arrive.expect_tx", "mbarrier.try_wait.parity",
                  f"cvt.rn.{dt}x2.f32", "fence.proxy.tensormap::generic.acquire",
                  "wgmma.fence.sync.aligned", "wgmma.wait_group.sync.aligned 0", "shfl.sync.bfly"):
        assert instr in ptx, instr
    assert res.sass.count("HGMMA") == copies * (D // 16 + bn // 16)
    assert (".bf16" in ptx) == (dt == "bf16")        # no mixed-type wgmma / conversion
    assert "UTMALDG" in res.sass


@pytest.mark.parametrize("D", fmha_sm90.SUPPORTED_D)
@pytest.mark.parametrize("nc,sched", [(1, "v1"), (2, "v1"), (2, "v2")])
def test_shared_memory_plan(D, nc, sched):
    if (nc, sched) not in fmha_sm90.variants(D):
        with pytest.raises(ValueError, match="does not fit D = 256"):
            fmha_sm90.geometry(D, nc, sched)
        return
    g = fmha_sm90.geometry(D, nc, sched)
    dp = max(D, 64)                            # D = 16 lives in 64-wide (128-B) zero-filled boxes
    bn = 64 if sched == "v1" or D == 256 else 128
    assert g["stages"] >= 2 and g["bn"] == bn == fmha_sm90.block_n(D, sched) and g["dp"] == dp
    assert g["boxq"] % 1024 == 0 and g["boxk"] % 1024 == 0 and g["kbytes"] % 1024 == 0
    assert g["qbytes"] == nc * 64 * dp * 2
    assert g["kbytes"] == bn * dp * 2
    assert g["dyn_smem"] + 8 * (1 + 3 * g["stages"]) <= 227 * 1024     # + static mbarriers
    assert g["threads"] == 128 * (nc + 1)
    if sched == "v2":       # the ring as deep as fits: D = 128 -> 3 stages (225 KB), D <= 64 -> 4,
        # D = 256 -> 2 (Q 64 KB + 2 x (K 32 KB + V 32 KB) = 192 KB)
        assert g["stages"] == {16: 4, 64: 4, 128: 3, 256: 2}[D]
        assert fmha_sm90.REGS[0] * 128 + fmha_sm90.REGS[1] * 256 <= 65536   # setmaxnreg pool
    if D == 256 and nc == 1:                   # decode: Q 32 KB + 3 x 64 KB (v1 wants 4: no room)
        assert g["stages"] == 3 and g["dyn_smem"] == 1024 + 32768 + 3 * 2 * 32768


def test_schedule_selection(monkeypatch):
    monkeypatch.delenv("DSV4_FMHA_SCHEDULE", raising=False)
    assert fmha_sm90.schedule_for(2) == fmha_sm90.DEFAULT_SCHEDULE
    # per (D, dtype) defaults: D = 64 bfloat16 prefill runs v3f (H100: 0.91x SDPA vs v2 0.74x)
    assert fmha_sm90.schedule_for(2, None, 64, "bf16") == "v3f"
    assert fmha_sm90.schedule_for(2, None, 64, "f16") == fmha_sm90.DEFAULT_SCHEDULE
    assert fmha_sm90.schedule_for(1, None, 64, "bf16") == "v1"             # decode
    assert fmha_sm90.schedule_for(2, None, 128, "bf16") == fmha_sm90.DEFAULT_SCHEDULE
    assert fmha_sm90.schedule_for(2, "v2", 64, "bf16") == "v2"
    assert fmha_sm90.schedule_for(2, "v2") == "v2" and fmha_sm90.schedule_for(1, "v2") == "v1"
    monkeypatch.setenv("DSV4_FMHA_SCHEDULE", "v2")
    assert fmha_sm90.schedule_for(2) == "v2" and fmha_sm90.schedule_for(2, "v1") == "v1"
    monkeypatch.setenv("DSV4_FMHA_SCHEDULE", "v9")
    with pytest.raises(ValueError, match="schedule must be one of"):
        fmha_sm90.schedule_for(2)
    with pytest.raises(ValueError, match="needs nc = 2"):
        fmha_sm90.geometry(64, 1, "v2")
    # D = 256: prefill runs v2 whatever the environment says; v1 asked for by name is an error
    monkeypatch.setenv("DSV4_FMHA_SCHEDULE", "v1")
    assert fmha_sm90.schedule_for(2, None, 256) == "v2" and fmha_sm90.schedule_for(1, None, 256) == "v1"
    with pytest.raises(ValueError, match="does not fit D = 256"):
        fmha_sm90.schedule_for(2, "v1", 256)
    with pytest.raises(ValueError, match="supports D in"):
        fmha_sm90.geometry(32, 2, "v1")


def test_descriptors():
    from dsv4_numba.hw.descriptors import explain
    k = explain(fmha_sm90.DESC_KMAJOR, "wgmma-smem")
    v = explain(fmha_sm90.DESC_V, "wgmma-smem")
    assert "128B" in str(k) and "128B" in str(v)
    assert (fmha_sm90.DESC_V >> 16) & 0x3FFF == fmha_sm90.BN * 128 >> 4      # LBO: next 64 columns
    assert (fmha_sm90.DESC_V >> 32) & 0x3FFF == 1024 >> 4                    # SBO: next 8 keys
    assert fmha_sm90.DESC_V & 0x3FFF == fmha_sm90.DESC_KMAJOR & 0x3FFF == 0  # address ORed in later


# the D = 64 candidates (issue 7): not production kernels (``variants``), selectable by schedule
CANDIDATES = [(64, fmha_sm90.NC_OF[s], s, "bf16") for s in fmha_sm90.SMALL_D_SCHEDULES] + [
    (128, 2, "v2f", "bf16")]


@pytest.mark.slow           # 15-30 s of CPU per kernel
@pytest.mark.parametrize("p", CANDIDATES, ids=[f"{p[2]}_D{p[0]}" for p in CANDIDATES])
def test_d64_candidates_compile_without_spills(p):
    D, nc, sched, dt = p
    res = fmha_sm90.fused_kernel(D, nc, sched, dt).compile(fmha_sm90.signature(), "sm_90a")
    assert res.spill_stores == res.spill_loads == res.stack_bytes == 0, res.summary()
    assert ".local" not in res.ptx
    assert "C7508" not in res.ptxas_log and "serialized" not in res.ptxas_log, res.ptxas_log
    lo, hi = fmha_sm90.REGS_OF[sched]
    assert lo * 128 + hi * 128 * nc <= 65536
    for instr in (f"setmaxnreg.dec.sync.aligned.u32 {lo}", f"setmaxnreg.inc.sync.aligned.u32 {hi}"):
        assert instr in res.ptx, instr
    bn = fmha_sm90.block_n(D, sched)
    copies = 1 if nc == 3 else 2             # v3 / v3f: the serial body; v2w(f) / v2f: overlapped
    assert res.sass.count("HGMMA") == copies * (D // 16 + bn // 16)
    assert f"m64n{bn}k16.f32.bf16.bf16" in res.ptx
    if sched in fmha_sm90.FAST_SOFTMAX:      # one MUFU.EX2 per score, no libdevice range fix-up
        # bn/2 scores + 2 correction factors per softmax copy; the epilogue's 4 exp2 stay libdevice
        assert res.ptx.count("ex2.approx.ftz.f32") == copies * (bn // 2 + 2)
        assert res.sass.count("MUFU.EX2") == copies * (bn // 2 + 2) + 4
    if nc == 3:
        assert "bar.sync" in res.ptx     # the V-zeroing barrier over the 3 consumers


@pytest.mark.parametrize("sched", fmha_sm90.SMALL_D_SCHEDULES)
def test_d64_candidate_plans(sched, monkeypatch):
    nc = fmha_sm90.NC_OF[sched]
    g = fmha_sm90.geometry(64, nc, sched)
    assert g["threads"] == 128 * (nc + 1) and g["bn"] == fmha_sm90.block_n(64, sched)
    assert g["stages"] == 4 and g["dyn_smem"] + 8 * 13 <= 227 * 1024
    assert g["qbytes"] == nc * 64 * 128
    for D in (16, 128, 256):                     # D = 64 candidates (v2f also D = 128)
        if D in fmha_sm90.CANDIDATE_D[sched]:
            assert fmha_sm90.schedule_for(2, sched, D) == sched
            continue
        with pytest.raises(ValueError, match="D = 64 candidate"):
            fmha_sm90.geometry(D, nc, sched)
        with pytest.raises(ValueError, match="D = 64 candidate"):
            fmha_sm90.schedule_for(2, sched, D)
    with pytest.raises(ValueError, match=f"needs nc = {nc}"):
        fmha_sm90.geometry(64, 5 - nc, sched)
    monkeypatch.setenv("DSV4_FMHA_SCHEDULE", sched)      # by environment: v2 where they do not exist
    assert fmha_sm90.schedule_for(2, None, 256) == "v2" and fmha_sm90.schedule_for(2, None, 64) == sched
    assert fmha_sm90.schedule_for(1, None, 64) == "v1"
    c = fmha_sm90.launch_config(4, 4096, 32, 32, nc)
    assert c["nc"] == nc and c["grid"] == (-(-4096 // (64 * nc)), 32, 4)
    assert fmha_sm90.launch_config(1, 3, 8, 2, nc)["nc"] == 1          # decode stays nc = 1
    assert fmha_sm90.kernel_name(64, nc, sched).endswith(sched)


def test_registered_as_attn_fused_production():
    st = registry.REGISTRY[FUSED]
    # production:sm_100a (pipelines.fmha_sm100) is registered beside it; fmha picks by arch
    assert {"reference", "production:sm_90a"} <= set(st.impls)
    kern = st.impls["production:sm_90a"].kernels()
    assert [k for k, _ in kern] == [fmha_sm90.fused_kernel(D, nc, s, dt) for dt in ("bf16", "f16")
                                    for D in (16, 64, 128, 256) for nc, s in fmha_sm90.variants(D)] \
        + [fmha_sm90.fused_kernel(64, 3, "v3f", "bf16")]       # the D = 64 bfloat16 default
    assert len(kern) == 23


def test_launch_config_packs_gqa_heads():
    c = fmha_sm90.launch_config(64, 1, 64, 8)                  # the decode benchmark shape
    assert (c["G"], c["nc"], c["grid"], c["qbox"]) == (8, 1, (1, 8, 64), (1, 8, 8, 64))
    c = fmha_sm90.launch_config(4, 4096, 16, 16)               # MHA prefill
    assert (c["G"], c["nc"], c["grid"], c["qbox"]) == (1, 2, (32, 16, 4), (1, 64, 1, 64))
    c = fmha_sm90.launch_config(1, 129, 6, 2)                  # group of 3 does not divide 64
    assert (c["G"], c["nc"], c["grid"]) == (1, 2, (2, 6, 1))
    c = fmha_sm90.launch_config(2, 1000, 8, 1)                 # MQA prefill: 8 heads x 16 positions
    assert (c["G"], c["nc"], c["grid"]) == (8, 2, (63, 1, 2))


@pytest.fixture
def no_launch(monkeypatch):
    def boom(self, *a, **k):
        raise AssertionError(f"kernel {self.__name__} launched before the error")
    monkeypatch.setattr(Kernel, "launch", boom)


def _qkv(D, dtype=BF16, Tq=3, Tk=5):
    g = np.random.default_rng(0)
    return tuple(g.standard_normal(s).astype(dtype)
                 for s in ((1, Tq, 2, D), (1, Tk, 1, D), (1, Tk, 1, D)))


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU errors")
def test_selection_errors_before_launch(no_launch):
    q, k, v = _qkv(64)
    with pytest.raises(registry.ImplUnavailable, match="attn_fused.*needs a GPU"):
        fmha(q, k, v, impls="production")
    with pytest.raises(registry.ImplUnavailable, match="attn_fused.*needs a GPU"):
        fmha(q, k, v, impls={FUSED: "production"})
    with pytest.raises(registry.ImplUnavailable, match=r"production:sm_100a.*needs a GPU"):
        fmha(q, k, v, impls={FUSED: "production:sm_100a"})
    with pytest.raises(registry.ImplUnavailable, match=r"no fused production variant for sm_80"):
        fmha(q, k, v, impls={FUSED: "production:sm_80"})
    with pytest.raises(ValueError, match="impl 'fast'"):
        fmha(q, k, v, impls={FUSED: "fast"})
    for D, dt in ((16, BF16), (256, np.float16)):       # supported: only the missing GPU stops them
        q, k, v = _qkv(D, dt)
        with pytest.raises(registry.ImplUnavailable, match="attn_fused.*needs a GPU"):
            fmha(q, k, v, impls={FUSED: "production"})
    q, k, v = _qkv(64, np.float32)
    with pytest.raises(registry.ImplUnavailable, match="bfloat16 or float16 q/k/v"):
        fmha(q, k, v, impls="production")
    q, k, v = _qkv(64)
    with pytest.raises(registry.ImplUnavailable, match="return_intermediates"):
        fmha(q, k, v, impls="production", return_intermediates=True)


@pytest.mark.skipif(not NO_GPU, reason="on a GPU auto picks the fused kernel")
@pytest.mark.filterwarnings("ignore::dsv4_numba.registry.ProductionUnavailableWarning")
def test_auto_and_reference_run_staged_here():
    q, k, v = _qkv(64, Tq=1, Tk=2)
    a = fmha(q, k, v, impls={FUSED: "reference", "softmax": "reference"})
    b = fmha(q, k, v)                                          # auto: the fused kernel cannot run
    np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


def test_generated_source_is_static():
    """Every accumulator is a named scalar: no subscripted register state in the kernel body."""
    src = fmha_sm90._source(128, 2)
    assert "s31 = " in src and "o63 = " in src and "p15 = " in src
    assert not re.search(r"\b[sop]\[", src)
    src = fmha_sm90._source(128, 2, "v2")
    assert "s63 = " in src and "o63 = " in src and "p31 = " in src
    assert not re.search(r"\b[sop]\[", src)


# ----------------------------------------------------------------------------------------------
# The fused kernel itself, run under the simulator with the emulator (dsv4_numba.emu): one CTA of
# 384 threads (producer warpgroup + 2 consumers), D = 64, Tq = 70 (the second consumer holds 6 real
# rows), Tk = 100 (two key tiles, the second partly out of bounds: TMA zero fill), causal, a sink.
# ----------------------------------------------------------------------------------------------
def _emulated_run(monkeypatch, q, k, v, causal, sink, schedule="v1", kvlen=None):
    """fmha_sm90's kernel under the emulator with ``launch_config``'s grid, box and packing
    (q/k/v bfloat16 or float16: the kernel of that dtype; boxes 64 wide whatever D, as Plan)."""
    from dsv4_numba import emu
    monkeypatch.setenv("DSV4_MODE", "sim")
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    dt = "f16" if q.dtype == np.float16 else "bf16"
    cfg = fmha_sm90.launch_config(B, Tq, Hq, Hkv, fmha_sm90.NC_OF[schedule])
    g = fmha_sm90.geometry(D, cfg["nc"], schedule)
    boxes = (cfg["qbox"], (1, g["bn"], 1, 64), (1, g["bn"], 1, 64))
    maps = [emu.tensor_map(np.ascontiguousarray(x).view(np.uint16), box, "128B", dtype="bfloat16")
            if dt == "bf16" else emu.tensor_map(np.ascontiguousarray(x), box, "128B")
            for x, box in zip((q, k, v), boxes)]
    out = np.full(B * Tq * Hq * D // 2, 0x7FC17FC1, np.uint32)           # NaN-poisoned
    lse = np.full(B * Hq * Tq, np.nan, np.float32)
    scale = D ** -0.5
    fmha_sm90.fused_kernel(D, cfg["nc"], schedule, dt).launch(
        cfg["grid"], g["threads"], *maps, out, lse, np.full(B, Tk if kvlen is None else kvlen, np.int32),
        np.asarray(sink, np.float32), np.int32(1), Tq, Tk, Hq, Hkv, cfg["G"], np.int32(causal),
        Tk - Tq, np.float32(scale * fmha_sm90.LOG2E), shared_bytes=g["dyn_smem"])
    return (out.view(BF16 if dt == "bf16" else np.float16).reshape(B, Tq, Hq, D),
            lse.reshape(B, Hq, Tq), scale, cfg)


# (B, Tq, Tk, Hq, Hkv, D, causal, schedule, kvlen): one CTA of 384 threads (2 consumers, the second
# holding 6 real rows; two key tiles, the second partly out of bounds: TMA zero fill), and a decode of 3 tokens
# with 4 query heads per KV head packed into the rows (2 CTAs of 256 threads, nc = 1, G = 4; 5 key
# tiles wrap the 4-stage ring); schedule v2: 3 tiles of 128 keys (the loop body with S(kt) before
# P V(kt-1), both ping-pong barriers, the tail P V), a key length of 290 < Tk = 300 with NaN in
# the cache past it (the tail tile zeroes V rows 290..299)
# New head dims / dtype (issue 7 round 2): float16 at D = 16 as a decode (one CTA of 256 threads,
# one real row, 2 key tiles, the second partly out of bounds; the 64-wide boxes over 16-wide rows:
# zero fill in the columns too); float16 D = 64 prefill (v1); D = 16 prefill with v2 (128-key tiles,
# key length edge); D = 256 with v2 (the serial body + setmaxnreg, 64-key tiles, 2-stage ring
# wrapped by 3 tiles, NaN past the key length); a float16 D = 256 decode (nc = 1: the 3-stage
# ring wrapped by 5 tiles, G = 2 heads packed, key length 290 of 300)
EMU_CASES = {"prefill_causal": (1, 70, 100, 1, 1, 64, True, "v1", None, "bf16"),
             "decode3_gqa4_packed": (1, 3, 300, 8, 2, 64, True, "v1", None, "bf16"),
             "v2_prefill_causal_len": (1, 70, 300, 1, 1, 64, True, "v2", 290, "bf16"),
             "f16_d16_decode": (1, 1, 100, 1, 1, 16, False, "v1", None, "f16"),
             "f16_prefill_causal": (1, 70, 100, 1, 1, 64, True, "v1", None, "f16"),
             "d16_v2_prefill_len": (1, 70, 200, 1, 1, 16, False, "v2", 190, "bf16"),
             "d256_v2_prefill_causal_len": (1, 70, 190, 1, 1, 256, True, "v2", 185, "bf16"),
             "f16_d256_decode2_gqa2_len": (1, 2, 300, 4, 2, 256, True, "v1", 290, "f16"),
             # the D = 64 candidates (issue 7): v3 / v3f 3 consumers (192 rows; the third holds
             # 6 real rows), 3 tiles of 128 keys, key length 290 of 300 (V zeroing by 3 warpgroups)
             # and causal; v2w 192-key tiles (2 tiles, the second partly out of bounds), a key
             # length edge; v2f the overlapped v2 body with the short softmax, causal
             "v3_prefill_causal_len": (1, 134, 300, 1, 1, 64, True, "v3", 290, "bf16"),
             "v3f_prefill_len": (1, 134, 300, 1, 1, 64, False, "v3f", 290, "bf16"),
             "v2w_prefill_len": (1, 70, 300, 1, 1, 64, False, "v2w", 290, "bf16"),
             "v2f_prefill_causal": (1, 70, 300, 1, 1, 64, True, "v2f", None, "bf16"),
             "v2wf_prefill_causal_len": (1, 70, 400, 1, 1, 64, True, "v2wf", 390, "bf16"),
             # 3 consumers with G = 2 heads packed (96 positions a CTA, 2 CTAs), causal
             "v3f_gqa2_packed_causal": (1, 90, 200, 4, 2, 64, True, "v3f", None, "bf16")}
@pytest.mark.parametrize("case", list(EMU_CASES))     # 2-8 s each on 2 CPU cores since the
def test_fused_kernel_under_the_emulator(monkeypatch, case):   # emulator's lock convoy was fixed
    B, Tq, Tk, Hq, Hkv, D, causal, schedule, kvlen, dt = EMU_CASES[case]
    ty, u = (BF16, 2.0 ** -8) if dt == "bf16" else (np.float16, 2.0 ** -11)   # unit roundoff
    g = np.random.default_rng(11)
    q = (g.standard_normal((B, Tq, Hq, D)) * 3).astype(ty)
    k = g.standard_normal((B, Tk, Hkv, D)).astype(ty)
    v = (g.standard_normal((B, Tk, Hkv, D)) * 10.0 ** g.uniform(-1, 1, (B, Tk, Hkv, 1))).astype(ty)
    sink = np.linspace(-1.0, 2.0, Hq).astype(np.float32)
    n = Tk if kvlen is None else kvlen
    k[:, n:] = np.nan                      # garbage past the key length never reaches a result
    v[:, n:] = np.nan
    out, lse, scale, cfg = _emulated_run(monkeypatch, q, k, v, causal, sink, schedule, kvlen)
    if case.endswith("packed"):
        assert cfg["G"] == Hq // Hkv and cfg["nc"] == 1
    # float64 oracle (tests/gpu/test_fmha_gpu.py derives the bound; 16-bit P and output dominate)
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    for b in range(B):
        for hq in range(Hq):
            kk, vv = k64[b, :n, hq // (Hq // Hkv)], v64[b, :n, hq // (Hq // Hkv)]
            z = float(np.float32(scale)) * (q64[b, :, hq] @ kk.T)
            if causal:
                z = np.where(np.arange(n)[None, :] <= np.arange(Tq)[:, None] + Tk - Tq, z, -np.inf)
            m = np.maximum(z.max(axis=1), sink[hq])[:, None]
            e = np.exp(z - m)
            den = e.sum(axis=1) + np.exp(sink[hq] - m[:, 0])
            p = e / den[:, None]
            O = p @ vv
            bound = u * np.abs(O) + 1.01 * (u + 1e-5) * (p @ np.abs(vv)) + 1e-30
            if dt == "f16":      # P below 2^-14 is a float16 subnormal: absolute error <= 2^-25
                bound += 2.0 ** -25 * np.abs(vv).sum(axis=0) / den[:, None]
            got = out[b, :, hq].astype(np.float64)
            assert not np.isnan(got).any(), f"head {hq}: unwritten (NaN-poisoned) outputs"
            err = np.abs(got - O)
            assert (err <= bound).all(), (f"head {hq}: max err {err.max():.3g}, worst err/bound "
                                          f"{(err / bound).max():.3g}")
            np.testing.assert_allclose(lse[b, hq], m[:, 0] + np.log(den), rtol=0, atol=2e-5)
