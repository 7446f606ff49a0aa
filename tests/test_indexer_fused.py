"""The fused sm_90a indexer (pipelines/indexer_sm90.py): compiled for sm_90a here (no spills, the
wgmma it exists for, a 1024-aligned tile), and run on CPU under the simulator + the sm_90a emulator
(``dsv4_numba.emu``: ld/st, fences, wgmma bf16 / e4m3 SS) against the float64 oracle of test_indexer
with its tie rule; variant v3's histogram and its select (pipelines/indexer_topk.py) against NumPy
and the registered top-k's contract. Each emulated CTA is 128 Python threads: shapes stay at one or
two key blocks."""
from __future__ import annotations

import sys

import ml_dtypes
import numpy as np
import pytest
from numba import cuda, uint32
from conftest import outliers
from test_indexer import check_selection, fp4, oracle, page, random_bytes

from dsv4_numba import formats
from dsv4_numba.formats import QuantizedFP4, quantize_fp8
from dsv4_numba.pipelines import indexer_sm90 as F
from dsv4_numba.pipelines import indexer_sm90_rs as R
from dsv4_numba.pipelines.indexer import indexer
from dsv4_numba.pipelines.indexer_sm90 import decode8, decode8_prmt
from dsv4_numba.runtime import kernel

H, D = F.H_FUSED, F.D_FUSED


@pytest.fixture
def sim(monkeypatch):
    monkeypatch.setenv("DSV4_MODE", "sim")


def problem(seed, T, N, bf16):
    g = np.random.default_rng(seed)
    q = outliers(g, (T, H, D), scale_spread=1.0)
    kc = outliers(g, (N, D), scale_spread=1.0)
    w = (g.standard_normal((T, H)) * 0.5).astype(np.float32)
    w[:, 0] = np.abs(w[:, 0]) + 0.5
    if bf16:
        return q.astype(ml_dtypes.bfloat16), kc.astype(ml_dtypes.bfloat16), w
    q4, k4 = fp4(q, kc)
    return q4, k4, w


def check_scores(res, orc, k):
    idx, vals, inter = res
    check_selection(idx, vals, orc["scores"], orc["err"], k, orc["valid_len"], "fused")
    sc = inter["scores"].astype(np.float64)
    valid = ~np.isnan(orc["scores"])
    assert np.isneginf(sc[~valid]).all(), "fused: positions past valid_len must score -inf"
    over = np.abs(sc - np.nan_to_num(orc["scores"]))[valid] > orc["err"][valid]
    assert not over.any(), f"fused: {int(over.sum())} scores outside the derived bound"


# ---------------------------------------------------------------- the FP4 decode, both forms
@kernel
def _decode_both(words, codes, out_gpu_form, out_sim_form):
    nw = words.size
    for j in range(cuda.threadIdx.x, codes.size * nw, cuda.blockDim.x):
        w = uint32(words[j % nw])
        c = uint32(codes[j // nw])
        a0, a1, a2, a3 = decode8_prmt(w, c)
        b0, b1, b2, b3 = decode8(w, c)
        out_gpu_form[4 * j], out_gpu_form[4 * j + 1] = a0, a1
        out_gpu_form[4 * j + 2], out_gpu_form[4 * j + 3] = a2, a3
        out_sim_form[4 * j], out_sim_form[4 * j + 1] = b0, b1
        out_sim_form[4 * j + 2], out_sim_form[4 * j + 3] = b2, b3


def decode8_oracle(words, codes):
    """[codes, words, 8] bf16 bits of E2M1 (ml_dtypes) x 2^(code - 127), via float64 (exact)."""
    nib = (words[:, None] >> (4 * np.arange(8))) & 15
    e2m1 = nib.astype(np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float64)
    scale = np.where(codes == 255, np.nan, 2.0 ** (codes.astype(np.float64) - 127))
    v = e2m1[None] * scale[:, None, None]
    return v.astype(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)


def test_decode8_both_forms_exact_at_every_code_and_scale(sim):
    """``decode8``'s GPU form (prmt tables, then mul.rn.bf16x2 by the scale as a bf16 pair; run
    here with its ops' simulator twins) and its simulator form against ml_dtypes, for all 16 E2M1
    codes in every nibble and all 256 UE8M0 codes: bitwise, NaN for code 255 (a NaN either way)."""
    words = np.array([0x76543210, 0xFEDCBA98, 0x1F2E3D4C, 0x8091A2B3], np.uint32)
    codes = np.arange(256, dtype=np.uint32)
    n = words.size * codes.size
    outs = [np.full(4 * n, 0xDEADBEEF, np.uint32) for _ in range(2)]
    _decode_both.launch(1, 32, words, codes, *outs)
    for name, out in zip(("GPU form", "simulator form"), outs):
        assert_decode8(name, out, words, codes)


def assert_decode8(name, out, words, codes):
    """``_decode_both``'s output words (element 2i in the low half of word i) against
    ``decode8_oracle``: bitwise, NaN where the oracle has NaN (code 255)."""
    want = decode8_oracle(words, codes).reshape(-1)
    got = out.view(np.uint16)
    nan_w = np.isnan(want.view(ml_dtypes.bfloat16).astype(np.float32))
    nan_g = np.isnan(got.view(ml_dtypes.bfloat16).astype(np.float32))
    assert np.array_equal(nan_w, nan_g), f"{name}: NaN positions differ"
    bad = np.flatnonzero((got != want) & ~nan_w)
    assert bad.size == 0, (f"{name}: {bad.size} elements differ, first at code "
                           f"{bad[0] // (8 * words.size)}: {got[bad[0]]:#06x} vs "
                           f"{want[bad[0]]:#06x}")


# ---------------------------------------------------------------- compile for sm_90a
@pytest.mark.slow        # ~145 s each on 2 CPU cores (v1: the selectable round-1 kernel)
@pytest.mark.parametrize("which", [0, 1], ids=["bf16", "fp4"])
def test_fused_kernel_compiles_for_sm90a(which):
    kern, sig = F.production_kernels()[which]
    r = kern.compile(sig, "sm_90a")
    assert r.spill_stores == 0 and r.spill_loads == 0 and r.stack_bytes == 0, r.summary
    assert r.shared_bytes == F.SMEM_BYTES <= 48 * 1024
    assert r.sass.count("HGMMA.64x128x16.F32.BF16") == D // 16, "8 wgmma k16 steps expected"
    assert ".shared .align 1024" in r.ptx, "the 128B-swizzled tiles need a 1024-aligned base"
    assert "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16" in r.ptx
    if which:
        assert "prmt.b32" in r.ptx and "cvt.rn.bf16x2.f32" in r.ptx


# ---------------------------------------------------------------- emulator runs
def test_fused_bf16_emulated_against_oracle(sim):
    """Two key blocks (N = 129: a 1-key tail), T = 2, one token shorter than k and than a block."""
    q, kc, w = problem(1, 2, 129, bf16=True)
    vl = np.array([129, 5], np.int32)
    res = indexer(q, kc, w, 8, valid_len=vl, impls="fused:reference", return_intermediates=True)
    check_scores(res, oracle(q, kc, w, vl), 8)


def test_fused_fp4_emulated_paged_equals_contiguous(sim):
    """dsv4_fp4 q and keys decoded on the way into shared memory; a per-token paged cache (garbage in
    unused pages, -1 past valid_len) gives bitwise the contiguous result."""
    q, kc, w = problem(2, 2, 128, bf16=False)
    vl = np.array([128, 37], np.int32)
    res = indexer(q, kc, w, 8, valid_len=vl, impls="fused:reference", return_intermediates=True)
    check_scores(res, oracle(q, kc, w, vl), 8)
    (pd, ps), table = page([kc.data, kc.scales], 32, 2, True, 5, random_bytes)
    table[1, 2:] = -1                                    # token 1 reads logical pages 0..1 only
    kp = QuantizedFP4(pd, ps, None, "dsv4_fp4", pd.shape[:2] + (D,))
    res2 = indexer(q, kp, w, 8, valid_len=vl, block_table=table, impls="fused:reference",
                   return_intermediates=True)
    np.testing.assert_array_equal(res2[2]["scores"].view(np.uint32), res[2]["scores"].view(np.uint32))
    np.testing.assert_array_equal(res2[0], res[0])


@pytest.mark.parametrize("variant", ["v2", "v4", "v5"])
def test_wrong_fp4_decode_in_the_kernel_fails_the_index_check(sim, monkeypatch, variant):
    """The integer E2M1 bug (codes 0..7 as values) in the kernel's decode (v2: keys and q into
    shared memory; v4: keys into registers, q into shared memory; v5: the E4M3 tables of q and
    the keys): the tie rule catches it."""
    from numba.cuda.simulator.kernel import FakeCUDAKernel

    K = sys.modules["dsv4_numba.runtime.kernel"]     # the module (the package exports the decorator)

    def wrong8(word, scode):           # plain Python (a simulator twin), NumPy rounding to bf16
        s = 2.0 ** (int(scode) - 127)
        v = [(-1.0 if c & 8 else 1.0) * (c & 7) * s for c in ((int(word) >> (4 * i)) & 15
                                                          for i in range(8))]
        b = np.array(v, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16).astype(np.uint32)
        return tuple(np.uint32(b[2 * i] | (b[2 * i + 1] << 16)) for i in range(4))

    def wrong_lut(d):                  # v5's tables of the integer values 0..7 x 2^-d
        b = (np.arange(8) * 2.0 ** -int(d)).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
        b = b.astype(np.uint32)
        return (np.uint32(b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24),
                np.uint32(b[4] | b[5] << 8 | b[6] << 16 | b[7] << 24))

    monkeypatch.setenv("DSV4_INDEXER_VARIANT", variant)
    monkeypatch.setitem(K._SIM_TWIN, id(F.decode8), (F.decode8, FakeCUDAKernel(wrong8, device=True)))
    monkeypatch.setitem(K._SIM_TWIN, id(F.e4m3_lut),
                        (F.e4m3_lut, FakeCUDAKernel(wrong_lut, device=True)))
    q, kc, w = problem(12, 1, 128, bf16=False)
    orc = oracle(q, kc, w)
    idx, vals = indexer(q, kc, w, 8, impls="fused:reference")
    with pytest.raises(AssertionError, match="clearly"):
        check_selection(idx, vals, orc["scores"], orc["err"], 8, orc["valid_len"], "integer decode")


# ---------------------------------------------------------------- round 2 kernel (variant v2)
def v2_scores(q, kc, w, vl, table=None, tq=None, k=8, variant="v2", tpc=None, pf=None):
    from dsv4_numba.pipelines.indexer import _validate
    c = _validate(q, kc, w, k, vl, table)
    p = F.fused_plan(c, q, kc, w, out=np.full(c.T * c.N, np.nan, np.float32), variant=variant,
                     tq=tq, tpc=tpc, pf=pf).run()
    return p.scores.reshape(c.T, c.N)


def check_v2(sc, orc):
    valid = ~np.isnan(orc["scores"])
    assert not np.isnan(sc).any(), "v2: unwritten scores"
    assert np.isneginf(sc[~valid]).all(), "v2: positions past valid_len must score -inf"
    over = np.abs(sc.astype(np.float64) - np.nan_to_num(orc["scores"]))[valid] > orc["err"][valid]
    assert not over.any(), f"v2: {int(over.sum())} scores outside the derived bound"


def test_v2_bf16_emulated_three_tokens_per_cta(sim):
    """One CTA column loops 3 tokens (q of the next token prefetched during the wgmma / epilogue,
    the last one re-fetched); a 1-key tail block; a token with nothing to score."""
    q, kc, w = problem(21, 3, 129, bf16=True)
    vl = np.array([129, 70, 0], np.int32)
    check_v2(v2_scores(q, kc, w, vl, tq=3), oracle(q, kc, w, vl))


def test_v2_fp4_emulated_decoded_q_paged_equals_contiguous(sim):
    """FP4 q decoded once by q_decode_kernel (T > 1), 2 tokens per CTA then 1; per-token paged
    cache (garbage in unused pages) bitwise the contiguous result."""
    q, kc, w = problem(22, 3, 128, bf16=False)
    vl = np.array([128, 37, 100], np.int32)
    sc = v2_scores(q, kc, w, vl, tq=2)
    check_v2(sc, oracle(q, kc, w, vl))
    (pd, ps), table = page([kc.data, kc.scales], 32, 3, True, 5, random_bytes)
    table[1, 2:] = -1
    kp = QuantizedFP4(pd, ps, None, "dsv4_fp4", pd.shape[:2] + (D,))
    np.testing.assert_array_equal(v2_scores(q, kp, w, vl, table, tq=2).view(np.uint32),
                                  sc.view(np.uint32))


def test_variant_switch(monkeypatch):
    assert F.DEFAULT_VARIANT == "auto"
    assert F.pick_variant() == "v2" and F.pick_variant(None, 65536) == "v2"   # T unknown / > 65535
    assert F.pick_variant(None, 1) == "v4" == F.pick_variant("auto", 64) == F.pick_variant(None, 65535)
    assert F.pick_variant(None, 4, "float") == "v4" and F.pick_variant(None, 5, "float") == "v2"
    monkeypatch.setenv("DSV4_INDEXER_VARIANT", "v2")
    assert F.pick_variant() == "v2" and F.pick_variant("v1") == "v1"
    assert F.pick_variant("v3") == "v3"
    assert F.pick_variant("v4") == "v4" and F.pick_variant("v5") == "v5"
    assert F.pick_variant("v6") == "v6"
    assert all(F.pick_variant("auto", T) not in ("v5", "v6")                     # opt-in only
               for T in (1, 4, 5, 64, 4096))
    with pytest.raises(ValueError, match="v1"):
        F.pick_variant("v7")


@pytest.mark.parametrize("which", [pytest.param(0, marks=pytest.mark.slow), 1],
                         ids=["v2", "q_decode"])
def test_v2_kernels_compile_for_sm90a(which):
    """v2: 128 registers, no spills / stack (measured here: 4471 SASS lines vs v1's 6833); ~2 min of
    CPU to compile (marked slow)."""
    kern, sig = F.v2_kernels()[which]
    r = kern.compile(sig, "sm_90a")
    assert r.spill_stores == 0 and r.spill_loads == 0 and r.stack_bytes == 0, r.summary()
    if which == 0:
        assert r.shared_bytes == F.SMEM_BYTES <= 48 * 1024
        assert r.sass.count("HGMMA.64x128x16.F32.BF16") == D // 16
        assert r.sass.count("SHFL.BFLY") == 16 + 8 + 4, "the transpose-reduce: 28 shuffles"
        assert "cvt.rn.bf16x2.f32" in r.ptx                  # FP4 keys decoded in the kernel
    else:
        assert "st.global.v4.b32" in r.ptx


def test_production_score_stage_emulated(sim):
    """indexer_scores/production (the same kernel writing logits) against float64 q . k."""
    from dsv4_numba.stages.indexer_stages import Paging
    q, kc, w = problem(4, 2, 129, bf16=True)
    vl = np.array([129, 70], np.int32)
    lg = F.scores_production(q.view(np.uint16).reshape(-1), F.BF16, kc.view(np.uint16).reshape(-1),
                             F.BF16, Paging(np.zeros(1, np.int32), 1, 1, 129), vl, 2, H, 129, D)
    lg = lg.reshape(2, H, 129).astype(np.float64)
    orc = oracle(q, kc, w, vl)
    valid = ~np.isnan(orc["logits"])
    assert (lg[~valid] == 0).all()
    assert (np.abs(lg - np.nan_to_num(orc["logits"]))[valid] <= orc["logit_err"][valid]).all()


def test_production_score_stage_falls_back_on_auto_and_refuses_when_asked(monkeypatch):
    """Shapes it does not take: auto -> the reference GEMM; asked for by name -> ValueError."""
    from dsv4_numba import registry
    from test_indexer import small_fp4
    impl = registry.REGISTRY["indexer_scores"].impls["production:sm_90a"]
    monkeypatch.setattr(impl, "unavailable", lambda: None)
    qf, kf, w, vl = small_fp4()
    ref = indexer(qf, kf, w, 8, valid_len=vl, impls="reference")
    got = indexer(qf, kf, w, 8, valid_len=vl, impls={s: "reference" for s in
                                                     ("decode_fp4", "indexer_reduce", "topk")})
    np.testing.assert_array_equal(got[0], ref[0])
    with pytest.raises(ValueError, match="H = 64.*reference"):
        indexer(qf, kf, w, 8, valid_len=vl, impls={"indexer_scores": "production"})


# ---------------------------------------------------------------- errors before launch
def _fp4(shape, fmt="dsv4_fp4"):
    return formats.quantize(np.ones(shape, np.float32), fmt)


@pytest.mark.parametrize("case,err,match", [
    ("fp8", NotImplementedError, "FP8 with one scale per row.*4 scales a row.*staged"),
    ("heads", ValueError, "H = 64.*staged"),
    ("float32", NotImplementedError, "bfloat16.*staged"),
    ("nvfp4", NotImplementedError, "UE8M0.*staged"),
])
def test_unfused_inputs_name_the_staged_path(sim, case, err, match):
    w = np.ones((1, H), np.float32)
    if case == "fp8":
        q = quantize_fp8(np.ones((1, H, D), np.float32), 32)       # a scale per 32: not V3.2
        kc = quantize_fp8(np.ones((4, D), np.float32), 32)
    elif case == "heads":
        q, kc, w = np.ones((1, 4, D), ml_dtypes.bfloat16), np.ones((4, D), ml_dtypes.bfloat16), \
            np.ones((1, 4), np.float32)
    elif case == "float32":
        q, kc = np.ones((1, H, D), np.float32), np.ones((4, D), np.float32)
    else:
        q, kc = _fp4((1, H, D), "nvfp4"), _fp4((4, D), "nvfp4")
    with pytest.raises(err, match=match):
        indexer(q, kc, w, 2, impls="fused")


def test_empty_problems(sim):
    q, kc, w = problem(3, 2, 0, bf16=True)
    idx, vals = indexer(q, kc, w, 4, impls="fused:reference")
    assert (idx == -1).all() and np.isneginf(vals).all() and idx.shape == (2, 4)
    q, kc, w = problem(3, 0, 16, bf16=True)
    idx, vals = indexer(q, kc, w, 4, impls="fused:reference")
    assert idx.shape == (0, 4) and vals.shape == (0, 4)


def test_token_groups_cover_every_token():
    for T in (1, 4, 16, 64, 65):
        for N in (1, 127, 65536, 262144):
            tq = F.token_group(T, N)
            assert 1 <= tq <= T and -(-T // tq) * tq >= T
            assert -(-N // F.BN) * -(-T // tq) <= max(F.TARGET_CTAS, -(-N // F.BN)) + -(-N // F.BN)


# ---------------------------------------------------------------- V3.2 FP8 keys (e4m3 wgmma)
def fp8_problem(seed, T, N):
    q, kc, w = problem(seed, T, N, bf16=True)
    return quantize_fp8(q.astype(np.float32)), quantize_fp8(kc.astype(np.float32)), w


def test_fp8_emulated_against_oracle_paged_equals_contiguous(sim):
    """E4M3 q and keys straight into wgmma e4m3 (k32), s_q folded into w, s_k on the head sum:
    scores within the float32 bound of the float64 oracle (the emulator accumulates exactly;
    the GPU test uses FP8_ACC_REL), the selection by the tie rule; a per-token paged cache
    (NaN scales and random codes in unused pages, -1 past valid_len) bitwise the contiguous
    result."""
    from dsv4_numba.formats import QuantizedFP8
    q, kc, w = fp8_problem(31, 2, 128)
    vl = np.array([128, 37], np.int32)
    res = indexer(q, kc, w, 8, valid_len=vl, impls="fused:reference", return_intermediates=True)
    check_scores(res, oracle(q, kc, w, vl), 8)
    (codes, scales), table = page([kc.codes, kc.scales], 32, 2, True, 5, random_bytes)
    table[1, 2:] = -1
    res2 = indexer(q, QuantizedFP8(codes, scales), w, 8, valid_len=vl, block_table=table,
                   impls="fused:reference", return_intermediates=True)
    np.testing.assert_array_equal(res2[2]["scores"].view(np.uint32),
                                  res[2]["scores"].view(np.uint32))
    np.testing.assert_array_equal(res2[0], res[0])


def test_fp8_scales_matter(sim):
    """A test that can fail: the same E4M3 codes with the key scales permuted must change the
    scores (s_k is applied per key row, through the table) and still match their own oracle."""
    from dsv4_numba.formats import QuantizedFP8
    q, kc, w = fp8_problem(32, 1, 128)
    ks = kc.scales.copy()
    ks[:, 0] = np.linspace(0.5, 8.0, ks.shape[0], dtype=np.float32)
    kc2 = QuantizedFP8(kc.codes, ks)
    a = indexer(q, kc, w, 8, impls="fused:reference", return_intermediates=True)
    b = indexer(q, kc2, w, 8, impls="fused:reference", return_intermediates=True)
    assert not np.array_equal(a[2]["scores"], b[2]["scores"])
    check_scores(b, oracle(q, kc2, w), 8)


# ---------------------------------------------------------------- variant v3: histogram top-k
# (v3 is not the default: its two emulator cases, ~25-45 s each on 2 cores, are in the slow set)
@pytest.mark.slow
def test_v3_histogram_counts_every_valid_score(sim):
    """The v3 kernel's histogram is the top-k's: bin key >> 20 of every score < valid_len, each
    counted once (NumPy order_keys on the kernel's own scores), nothing for tokens with none."""
    from dsv4_numba.pipelines.indexer import _validate
    from dsv4_numba.stages.topk import order_keys
    q, kc, w = problem(41, 3, 128, bf16=True)
    vl = np.array([128, 70, 0], np.int32)
    c = _validate(q, kc, w, 8, vl, None)
    gh = np.zeros(3 * 4096, np.int32)
    p = F.fused_plan(c, q, kc, w, out=np.full(3 * 128, np.nan, np.float32), variant="v3", tq=2,
                     ghist=gh).run()
    sc = p.scores.reshape(3, 128)
    check_v2(sc, oracle(q, kc, w, vl))
    want = np.zeros((3, 4096), np.int64)
    for t in range(3):
        np.add.at(want[t], (order_keys(sc[t, :vl[t]]) >> 20).astype(np.int64), 1)
    np.testing.assert_array_equal(gh.reshape(3, 4096), want)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_v3_end_to_end_equals_v2_with_the_registered_topk(sim, monkeypatch, fmt):
    """v3 (histogram in the score kernel + indexer_topk.HistTopk) returns bitwise what v2 + the
    reference top-k return (the top-k order is total) and leaves its workspace zero for the next
    call. FP8: the histogram in the FP8 kernel."""
    from dsv4_numba.pipelines import indexer_topk as IT
    if fmt == "bf16":
        q, kc, w = problem(42, 2, 129, bf16=True)
    else:
        q, kc, w = fp8_problem(43, 2, 129)
    vl = np.array([129, 37], np.int32)
    ref = indexer(q, kc, w, 40, valid_len=vl, impls="fused:reference", return_intermediates=True)
    monkeypatch.setenv("DSV4_INDEXER_VARIANT", "v3")
    got = indexer(q, kc, w, 40, valid_len=vl, impls="fused", return_intermediates=True)
    np.testing.assert_array_equal(got[2]["scores"].view(np.uint32),
                                  ref[2]["scores"].view(np.uint32))
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1].view(np.uint32), ref[1].view(np.uint32))
    assert not IT.hist_topk_for(2, 129, 40).plan.workspace(False)[0].any(), \
        "v3 must leave the top-k workspace zero (the next call reuses it)"
    with pytest.raises(ValueError, match="v3.*v2"):
        indexer(q, kc, w, 8, valid_len=vl, impls="fused:reference")
    with pytest.raises(ValueError, match="ghist"):
        from dsv4_numba.pipelines.indexer import _validate
        F.fused_plan(_validate(q, kc, w, 8, vl, None), q, kc, w, variant="v3")


@pytest.mark.slow        # ~1-2 min of CPU
def test_fp8_kernel_compiles_for_sm90a():
    kern, sig = F.fp8_kernels()[0]
    r = kern.compile(sig, "sm_90a")
    assert r.spill_stores == 0 and r.spill_loads == 0 and r.stack_bytes == 0, r.summary()
    assert r.shared_bytes == F.SMEM8_WORDS * 4 == 24 * 1024
    assert r.sass.count("QGMMA.64x128x32.F32.E4M3.E4M3") == D // 32, "4 wgmma k32 steps expected"
    assert "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3" in r.ptx
    assert r.sass.count("SHFL.BFLY") == 16 + 8 + 4
    assert r.sass.count("REDG.E.ADD") == 1, "the v3 histogram: one fire-and-forget reduction"


@pytest.mark.slow
def test_v3_select_compiles_for_sm90a():
    from dsv4_numba.pipelines import indexer_topk as IT
    for kern, sig in IT.kernels():
        r = kern.compile(sig, "sm_90a")
        assert r.spill_stores == 0 and r.spill_loads == 0, r.summary()


@pytest.mark.parametrize("variant", ["fused", "staged"])
def test_hist_topk_select_from_a_given_histogram(sim, variant):
    """indexer_topk.HistTopk alone: a histogram counted on the host (the spec of hist_add), rows
    with ties, a short row (valid length < k) and an empty one; the top-k contract bitwise
    (stages.topk.assert_topk) and the workspace left zero; several select blocks per row (S = 2)."""
    from dsv4_numba.pipelines import indexer_topk as IT
    from dsv4_numba.stages import topk as TK
    g = np.random.default_rng(5)
    R, n, k = 3, 200, 24
    x = g.standard_normal((R, n)).astype(np.float32)
    x[0, 50:80] = x[0, 3]                                # ties across the k-th value
    vl = np.array([200, 17, 0], np.int32)
    sel = IT.HistTopk(R, n, k, threads=32, S=2, variant=variant)
    gh = sel.ghist(False)
    for r in range(R):
        np.add.at(gh, r * IT.NBINS + (TK.order_keys(x[r, :vl[r]]) >> 20).astype(np.int64), 1)
    vals, idx = np.empty(R * k, np.float32), np.empty(R * k, np.int32)
    sel.run(x.reshape(-1), vl, vals, idx)
    TK.assert_topk(vals.reshape(R, k), idx.reshape(R, k), x, k, vl, name=f"HistTopk {variant}")
    assert not sel.plan.workspace(False)[0].any(), "the workspace must be left zero"


# ---------------------------------------------------------------- variant v4: keys in registers
def test_v4_permutation_is_the_a_fragment_of_one_fp4_block():
    """perm_pos is a permutation of D; lane c of a quad holds exactly D[32c, 32c + 32) (one FP4
    block, one scale) across the 8 k-steps, at the A fragment's columns {2c, 2c+1, 2c+8, 2c+9}."""
    p = R.perm_pos(np.arange(D))
    assert sorted(p.tolist()) == list(range(D))
    for c in range(4):
        cols = p[32 * c:32 * (c + 1)] % 16
        assert set(cols.tolist()) == {2 * c, 2 * c + 1, 2 * c + 8, 2 * c + 9}
        assert sorted((p[32 * c:32 * (c + 1)] // 16).tolist()) == sorted(list(range(8)) * 4)


@pytest.mark.parametrize("T,N,vl,tpc,bf16", [
    (1, 70, [70], None, True),                    # one tile + a 6-key tail tile
    (2, 129, [129, 37], 2, False),                # TB = 2, two tiles a CTA, the last one short
    (3, 200, [200, 150, 3], 1, True),             # TB = 4 with a missing 4th token
    (4, 200, [200, 150, 0, 64], 2, False),        # a token with nothing to score
], ids=["bf16-T1", "fp4-T2", "bf16-T3", "fp4-T4"])
def test_v4_emulated_against_oracle(sim, T, N, vl, tpc, bf16):
    q, kc, w = problem(30 + T, T, N, bf16=bf16)
    vl = np.array(vl, np.int32)
    check_v2(v2_scores(q, kc, w, vl, variant="v4", tpc=tpc), oracle(q, kc, w, vl))


def test_v4_fp4_emulated_prefetch_depths_agree(sim):
    """The raw-key queue (``advance_keys``) at every depth: 5 tiles a CTA (the last one short),
    so that each depth loads tiles both before the loop and inside it, and runs out of tiles
    before the CTA does; valid_len ends inside a tile. pf 1..4 give the same bits (the same
    products, the same order), within the oracle's bound."""
    q, kc, w = problem(35, 1, 4 * 64 + 45, bf16=False)
    vl = np.array([4 * 64 + 30], np.int32)
    got = {pf: v2_scores(q, kc, w, vl, variant="v4", tpc=5, pf=pf) for pf in R.PF_CHOICES}
    check_v2(got[3], oracle(q, kc, w, vl))
    for pf in R.PF_CHOICES:
        np.testing.assert_array_equal(got[pf].view(np.uint32), got[3].view(np.uint32),
                                      err_msg=f"pf {pf}")


@pytest.mark.parametrize("per_token", [False, True], ids=["shared-table", "per-token-table"])
def test_v4_fp4_emulated_paged_equals_contiguous(sim, per_token):
    """A paged FP4 cache gives bitwise the contiguous scores (a per-token table runs TB = 1)."""
    q, kc, w = problem(33, 2, 128, bf16=False)
    vl = np.array([128, 37], np.int32)
    sc = v2_scores(q, kc, w, vl, variant="v4", tpc=1)
    (pd, ps), table = page([kc.data, kc.scales], 32, 2, per_token, 5, random_bytes)
    if per_token:
        table[1, 2:] = -1                          # token 1 reads logical pages 0..1 only
    kp = QuantizedFP4(pd, ps, None, "dsv4_fp4", pd.shape[:2] + (D,))
    np.testing.assert_array_equal(v2_scores(q, kp, w, vl, table, variant="v4", tpc=1)
                                  .view(np.uint32), sc.view(np.uint32))


@pytest.mark.parametrize("bf16", [False, True], ids=["fp4", "bf16"])
def test_v4_contiguous_early_keys_past_valid_len_change_nothing(sim, monkeypatch, bf16):
    """A contiguous cache's first tiles are loaded up to N before valid_len arrives (max_pages 0,
    RS_DEFAULTS["early_keys"]): rows past valid_len holding garbage (NaN scale codes / NaN bf16)
    give the same bits as the valid_len-bounded loads, within the oracle's bound."""
    q, kc, w = problem(41, 2, 200, bf16=bf16)
    vl = np.array([70, 9], np.int32)
    if bf16:
        kc[70:] = np.nan
    else:
        kc.scales[70:] = 0xFF                      # UE8M0 NaN
        kc.data[70:] = np.random.default_rng(1).integers(0, 256, kc.data[70:].shape)
    orc = oracle(q, kc, w, vl)
    early = v2_scores(q, kc, w, vl, variant="v4", tpc=2)
    check_v2(early, orc)
    monkeypatch.setitem(R.RS_DEFAULTS, "early_keys", False)
    np.testing.assert_array_equal(v2_scores(q, kc, w, vl, variant="v4", tpc=2).view(np.uint32),
                                  early.view(np.uint32))


def test_v4_plan_launch_policy(sim, monkeypatch):
    """fused_plan's v4 launch: PDL up to RS_DEFAULTS["pdl_max_t"] tokens (the kernel is declared
    a PDL kernel at every T); max_pages 0 (early keys) for a contiguous cache, the table's width
    for a paged one or with early_keys off. Placement only: nothing is launched."""
    from dsv4_numba.pipelines.indexer import _validate

    def plan(T, paged=False):
        q, kc, w = problem(50, T, 64, bf16=True)
        table = None
        if paged:
            (kc,), table = page([kc], 32, T, False, 5, random_bytes)
        return F.fused_plan(_validate(q, kc, w, 8, None, table), q, kc, w, variant="v4")

    p1, p2 = plan(1), plan(2)
    assert p1.kern.pdl and p2.kern.pdl
    assert p1.pdl and not p2.pdl
    assert p1.args[7] == 0 and p2.args[7] == 0              # max_pages: contiguous
    assert plan(1, paged=True).args[7] == 2                 # two pages of 32
    monkeypatch.setitem(R.RS_DEFAULTS, "early_keys", False)
    monkeypatch.setitem(R.RS_DEFAULTS, "pdl_max_t", 0)
    p1 = plan(1)
    assert p1.args[7] == 1 and not p1.pdl


def test_v4_geometry():
    assert R.rs_geometry(1, 65536, 1, None, 132) == (1, 3, (342, 1))     # RESIDENT[1] = 3
    assert R.rs_geometry(4, 131072, 1, None, 132)[:2] == (4, 8)
    tb, tpc, grid = R.rs_geometry(64, 65536, 1, None, 132)
    assert tb == 4 and grid[1] == 16 and grid[0] * tpc >= 1024
    assert grid[0] * grid[1] <= 132 * R.RESIDENT[4], "one wave (was 17 x 16 = 272 CTAs > 264)"
    for T in (3, 8, 16, 32, 64, 100):                         # one wave whenever chunks allow
        for N in (4096, 65536, 131072, 262144):
            tb, tpc, grid = R.rs_geometry(T, N, 1, None, 132)
            assert grid[0] * tpc * 64 >= N and grid[0] * grid[1] <= 132 * R.RESIDENT[tb], (T, N)
    assert R.rs_geometry(4, 1000, 4, 3, 132) == (1, 3, (6, 4))      # per-token table: TB = 1
    assert R.rs_geometry(2, 64, 1, None, 132) == (2, 1, (1, 1))
    with pytest.raises(ValueError, match="variant v2"):
        R.rs_geometry(4 * 65535 + 1, 64, 1)                   # grid y > 65535 token chunks


@pytest.mark.parametrize("which", [0, pytest.param(2, marks=pytest.mark.slow)],
                         ids=["tb1-fp4", "tb4-fp4"])
def test_v4_kernels_compile_for_sm90a(which):
    """No spills; TB x 8 HGMMA 64x64x16 with A in registers, issued back to back (not serialised by
    ptxas). ~40 s (TB = 1) / ~70-200 s (TB = 4) of CPU here."""
    kern, sig = R.rs_kernels()[which]
    r = kern.compile(sig, "sm_90a")
    assert r.spill_stores == 0 and r.spill_loads == 0 and r.stack_bytes == 0, r.summary()
    import re
    hg = re.findall(r"HGMMA\.64x64x16\.F32\.BF16 R\d+, (\S+),", r.sass)
    assert len(hg) == 8 * kern.tb and all(a.startswith("R") for a in hg), hg[:3]
    assert "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16" in r.ptx
    assert r.sass.count("SHFL.BFLY") == 4 * kern.tb, "2 rows x shfl.bfly 1, 2 a token"
    # one warpgroup arrive a tile: ptxas did not serialise the wgmmas (it does, with warnings
    # C7513-C7517, when an in-flight accumulator or A register is touched -- e.g. a read before
    # its wait_group on any path, even a timing hook's)
    assert r.sass.count("WARPGROUP.ARRIVE") == 1 and "C751" not in r.ptxas_log, r.ptxas_log


# ---------------------------------------------------------------- variant v6: v4 + the key ring
@pytest.mark.parametrize("N,vl,tpc,bf16", [
    (6 * 64 + 38, 6 * 64 + 38, 7, False),    # 7 tiles through 4 slots; last tile: 2 scale rows
    (67, 67, None, False),                    # a 3-row tile: no bulk copy of scales at all
    (3 * 64 + 45, 200, 4, True),              # bf16 tensor map: 4 tiles through 3 slots, OOB fill
], ids=["fp4-reuse", "fp4-3-rows", "bf16-reuse"])
def test_v6_emulated_equals_v4(sim, N, vl, tpc, bf16):
    """The ring (a contiguous cache: TMA bulk copies for FP4, a 128B-swizzled tensor map for bf16;
    mbarrier full / empty slots reused) gives v4's scores bitwise -- the same raw words, decoded
    and multiplied in the same order -- within the oracle's bound; the cache's last 1-3 rows of
    scales past the bulk copy's 16-byte multiple come through thread 0's loads."""
    q, kc, w = problem(60 + N, 1, N, bf16=bf16)
    vl = np.array([vl], np.int32)
    got = v2_scores(q, kc, w, vl, variant="v6", tpc=tpc)
    check_v2(got, oracle(q, kc, w, vl))
    np.testing.assert_array_equal(got.view(np.uint32),
                                  v2_scores(q, kc, w, vl, variant="v4", tpc=tpc).view(np.uint32))


@pytest.mark.parametrize("bf16,per_token", [(False, True), (True, False)],
                         ids=["fp4-per-token-table", "bf16-shared-table"])
def test_v6_emulated_paged_equals_contiguous(sim, bf16, per_token):
    """A paged cache goes through the cp.async gather (each thread its rows' 16-B pieces, the
    quad's lane 0 the scale word, cp.async.mbarrier.arrive.noinc on the slot's full barrier;
    bf16 into the tensor map's swizzled places): bitwise the contiguous (TMA) scores; bf16: 6
    tiles through 3 slots (every thread waits for a slot to empty); a token whose valid_len ends
    inside a tile."""
    T, N, tpc = (2, 11 * 32, 6) if bf16 else (2, 6 * 32, 3)
    q, kc, w = problem(61, T, N, bf16=bf16)
    vl = np.array([N, 2 * 64 + 30], np.int32)
    ref = v2_scores(q, kc, w, vl, variant="v6", tpc=tpc)
    if bf16:
        (kp,), table = page([kc], 32, T, per_token, 20, random_bytes)
    else:
        (pd, ps), table = page([kc.data, kc.scales], 32, T, per_token, 20, random_bytes)
        kp = QuantizedFP4(pd, ps, None, "dsv4_fp4", pd.shape[:2] + (D,))
    got = v2_scores(q, kp, w, vl, table, variant="v6", tpc=tpc)
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


def test_v6_kernel_compiles_for_sm90a():
    """TB = 1 FP4 (what T = 1 runs): no spills; the keys by bulk copy (UBLKCP, contiguous) and
    cp.async (LDGSTS + its mbarrier arrive, paged); mbarrier waits; 8 HGMMA 64x64x16 with A in
    registers, not serialised by ptxas. ~25-40 s of CPU here."""
    import re
    kern, sig = R.rs_kernel(1, F.FMT_FP4, ring=R.RING_DEFAULTS[F.FMT_FP4]), R.rs_kernels()[0][1]
    r = kern.compile(sig, "sm_90a")
    assert r.spill_stores == 0 and r.spill_loads == 0 and r.stack_bytes == 0, r.summary()
    for m in ("UBLKCP", "LDGSTS", "ARRIVES.LDGSTSBAR", "SYNCS.PHASECHK", "SYNCS.ARRIVE"):
        assert m in r.sass, f"{m} missing from the v6 SASS"
    assert "UTMALDG" not in r.sass, "FP4 keys need no tensor map (nor its fence)"
    hg = re.findall(r"HGMMA\.64x64x16\.F32\.BF16 R\d+, (\S+),", r.sass)
    assert len(hg) == 8 and all(a.startswith("R") for a in hg), hg[:3]
    assert r.sass.count("WARPGROUP.ARRIVE") == 1 and "C751" not in r.ptxas_log, r.ptxas_log


# ---------------------------------------------------------------- variant v5: FP4 as exact E4M3
def test_v5_decode_is_the_e4m3_rounding_of_each_block():
    """q_e4m3_kernel (the decode v5's key tiles use too) against ml_dtypes: every E2M1 code at block
    shifts d = 0..20 below the row's largest scale (d <= 8: exact, the FP4 values; beyond: E4M3's
    nearest even), scale code 0 and 254 rows, and the float32 row scale 2^(e_ref - 127)."""
    import ml_dtypes
    g = np.random.default_rng(5)
    ds = np.arange(21)
    rows = len(ds) + 2
    data = g.integers(0, 256, (rows, 64), dtype=np.uint8)
    codes = np.arange(16, dtype=np.uint8)
    data[:, :8] = codes[0::2] | (codes[1::2] << 4)          # block 0 holds every code
    sc = np.empty((rows, 4), np.int64)
    sc[:len(ds)] = 140
    sc[:len(ds), 0] = 140 - ds                    # block 0 (every code) d below the row's max
    sc[len(ds)] = [0, 0, 0, 0]
    sc[len(ds) + 1] = [254, 250, 246, 1]
    sc = sc.astype(np.uint8)
    out = np.zeros(rows * 128, np.uint8)
    scales = np.zeros(rows, np.float32)
    F.q_e4m3_kernel.launch((1,), 256, data.reshape(-1), sc.reshape(-1), rows * 4, out, scales)
    out = out.reshape(rows, 128)
    vals = formats.e2m1_decode(formats.unpack_fp4(data)).astype(np.float64).reshape(rows, 4, 32)
    d = sc.max(1, keepdims=True).astype(np.int64) - sc.astype(np.int64)
    want = (vals * np.exp2(-d)[..., None]).reshape(rows, 128).astype(ml_dtypes.float8_e4m3fn)
    np.testing.assert_array_equal(out, want.view(np.uint8))
    np.testing.assert_array_equal(out, F.fp4_rows_as_e4m3(data, sc)[0])
    np.testing.assert_array_equal(scales, formats.ue8m0_decode(sc.max(1)))
    got = out.view(ml_dtypes.float8_e4m3fn).astype(np.float64).reshape(rows, 4, 32)
    exact = (got == vals * np.exp2(-d)[..., None]).all(axis=2)
    assert exact[d <= 8].all(), "every block within 2^8 of its row's scale must be exact"
    assert not exact[:len(ds)][ds > 9, 0].all(), "far blocks round (the test can see rounding)"


@pytest.mark.parametrize("T,N,vl,tq", [(2, 129, [129, 37], None), (3, 128, [128, 0, 5], 2)])
def test_v5_emulated_against_oracle(sim, T, N, vl, tq):
    """v5 (q converted once, FP4 keys decoded to E4M3 into the key tile, e4m3 wgmma, row scales on
    w and the head sum): within the float32 bound of the float64 oracle (the emulator accumulates
    exactly; the GPU test adds FP8_ACC_REL)."""
    q, kc, w = problem(40 + T, T, N, bf16=False)
    vl = np.array(vl, np.int32)
    check_v2(v2_scores(q, kc, w, vl, variant="v5", tq=tq), oracle(q, kc, w, vl))


def test_v5_fp4_emulated_paged_equals_contiguous(sim):
    q, kc, w = problem(43, 2, 128, bf16=False)
    vl = np.array([128, 37], np.int32)
    sc = v2_scores(q, kc, w, vl, variant="v5")
    (pd, ps), table = page([kc.data, kc.scales], 32, 2, True, 5, random_bytes)
    table[1, 2:] = -1
    kp = QuantizedFP4(pd, ps, None, "dsv4_fp4", pd.shape[:2] + (D,))
    np.testing.assert_array_equal(v2_scores(q, kp, w, vl, table, variant="v5").view(np.uint32),
                                  sc.view(np.uint32))


def test_v5_refuses_bf16(sim):
    q, kc, w = problem(44, 1, 64, bf16=True)
    with pytest.raises(ValueError, match="variant v5 runs FP4"):
        v2_scores(q, kc, w, np.array([64], np.int32), variant="v5")


@pytest.mark.heavy
def test_v5_kernel_compiles_for_sm90a():
    """No spills, <= 128 registers (4 CTAs an SM, as the V3.2 kernel), 4 QGMMA k32 a token issued
    together, the transpose-reduce head sum; ~50 s of CPU here."""
    kern, sig = F.v5_kernels()[0]
    r = kern.compile(sig, "sm_90a")
    assert r.spill_stores == 0 and r.spill_loads == 0 and r.stack_bytes == 0, r.summary()
    assert r.registers <= 128, r.summary()
    assert r.shared_bytes == F.SMEM8_WORDS * 4 == 24 * 1024
    assert r.sass.count("QGMMA.64x128x32.F32.E4M3.E4M3") == D // 32
    assert r.sass.count("WARPGROUP.ARRIVE") == 1 and "C751" not in r.ptxas_log, r.ptxas_log
    assert r.sass.count("SHFL.BFLY") == 16 + 8 + 4
    assert "prmt.b32" in r.ptx
