"""FP4 decode / quantize stages: bitwise against the NumPy spec (simulator here, GPU in tests/gpu).

Decode and quantize are exact functions of their inputs (see stages/fp4.py), so every comparison
is bitwise — except NaN outputs (from NaN scale codes), whose payload is unspecified: their masks
must match exactly.
"""
import re

import ml_dtypes
import numpy as np
import pytest
from conftest import outliers
from numba import cuda

import dsv4_numba as d
from dsv4_numba import formats
from dsv4_numba.formats import wrong
from dsv4_numba.runtime import kernel
from dsv4_numba.stages import fp4
from dsv4_numba.stages.fp4 import div6_rn, e2m1_encode_bits, e2m1_step, e4m3_code_bits, f32_bits
from dsv4_numba.testing import assert_close

FMTS = ("dsv4_fp4", "mxfp4", "nvfp4")
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def check_decode(decode, q, out_dtype):
    """The decode checker every implementation must pass (and the known-wrong one must fail)."""
    got = decode(q, out_dtype)
    want = formats.dequantize(q, DTYPES[out_dtype])
    assert got.shape == q.shape and np.dtype(got.dtype) == np.dtype(DTYPES[out_dtype])
    nan = np.isnan(want.astype(np.float32))
    assert_close(np.isnan(got.astype(np.float32)), nan, bitwise=True, name="NaN mask")
    assert_close(np.where(nan, 0, got), np.where(nan, 0, want), bitwise=True, name=out_dtype)


def reference_decode(q, out_dtype):
    return d.decode_fp4(q, out_dtype, impl="reference")


def every_byte_tensor(fmt, rng):
    """All 256 data bytes, and every scale code (NaN codes included), in one small tensor."""
    blk = formats.FORMATS[fmt].block
    n = 512                                      # 256 bytes -> every byte value once per row
    data = np.tile(np.arange(256, dtype=np.uint8), (2, 1))
    codes = np.arange(256, dtype=np.uint8)
    scales = rng.choice(codes, size=(2, n // blk), replace=False).astype(np.uint8)
    scales[0, : min(8, n // blk)] = [0, 1, 127, 254, 255, 0x7F, 0x7E, 0x08][: min(8, n // blk)]
    g = np.float32(0.37) if formats.FORMATS[fmt].has_global_scale else None
    return formats.QuantizedFP4(data, scales, g, fmt, (2, n))


@pytest.mark.parametrize("fmt", FMTS)
def test_reference_decode_every_byte_and_scale(fmt, rng):
    q = every_byte_tensor(fmt, rng)
    for dt in DTYPES:
        check_decode(reference_decode, q, dt)


@pytest.mark.parametrize("fmt", FMTS)
def test_known_wrong_integer_decode_is_rejected(fmt, rng):
    q = formats.quantize(outliers(rng, (2, 64)), fmt)
    check_decode(reference_decode, q, "float32")
    with pytest.raises(AssertionError):
        check_decode(lambda q, dt: wrong.dequantize_integer_wrong(q, DTYPES[dt]), q, "float32")


@pytest.mark.parametrize("fmt,shape", [("dsv4_fp4", (1, 32)), ("dsv4_fp4", (127, 32)),
                                       ("nvfp4", (129, 16)), ("mxfp4", (3, 5, 64)),
                                       ("nvfp4", (0, 16))])
def test_reference_roundtrip_shapes(fmt, shape, rng):
    x = outliers(rng, shape)
    q = d.quantize_fp4(x, fmt, impl="reference")
    spec = formats.quantize(x, fmt) if x.size else q
    assert_close(q.data, spec.data, bitwise=True, name="codes")
    assert_close(q.scales, spec.scales, bitwise=True, name="scales")
    assert q.global_scale == spec.global_scale
    check_decode(reference_decode, q, "bfloat16")


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("in_dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_reference_quantize_bitwise(fmt, in_dtype, rng):
    x = outliers(rng, (3, 64), scale_spread=2.0).astype(in_dtype)
    x.reshape(-1)[:8] = np.array([0.25, -0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.5], np.float32) * 4
    x[2, 32:] = 0                                # an all-zero block decodes to zeros
    q = d.quantize_fp4(x, fmt, impl="reference")
    spec = formats.quantize(x, fmt)
    assert_close(q.data, spec.data, bitwise=True, name="codes")
    assert_close(q.scales, spec.scales, bitwise=True, name="scales")
    assert q.global_scale == spec.global_scale
    assert (formats.dequantize(q)[2, 32:] == 0).all()


def test_bad_inputs_get_clear_errors():
    x = np.ones((2, 48), np.float32)
    with pytest.raises(ValueError, match="multiple of 32"):
        d.quantize_fp4(x, "dsv4_fp4", impl="reference")
    with pytest.raises(ValueError, match="unknown FP4 format"):
        d.quantize_fp4(x, "fp4", impl="reference")
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        d.quantize_fp4(np.ones((2, 32), np.int32), "dsv4_fp4", impl="reference")
    with pytest.raises(ValueError, match="C-contiguous"):
        d.quantize_fp4(np.ones((64, 2), np.float32).T, "dsv4_fp4", impl="reference")
    bad = np.ones((1, 32), np.float32)
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        d.quantize_fp4(bad, "dsv4_fp4", impl="reference")
    q = formats.quantize(np.ones((2, 64), np.float32), "mxfp4")
    with pytest.raises(TypeError, match="out_dtype|dtype"):
        d.decode_fp4(q, np.int8, impl="reference")
    with pytest.raises(TypeError, match="QuantizedFP4"):
        d.decode_fp4(np.zeros((2, 32), np.uint8), "float32", impl="reference")
    with pytest.raises(ValueError, match="C-contiguous"):
        nc = formats.QuantizedFP4(np.zeros((64, 2), np.uint8).T, np.zeros((2, 4), np.uint8), None,
                                  "mxfp4", (2, 128))
        d.decode_fp4(nc, "float32", impl="reference")
    with pytest.raises(ValueError, match="multiple of"):
        formats.QuantizedFP4(np.zeros((2, 12), np.uint8), np.zeros((2, 1), np.uint8), None,
                             "mxfp4", (2, 24))


# ------------------------------------------------------------------ production: compile-only here
PTX_MUST_HAVE = {
    ("decode_fp4", "sm_90a"): ["prmt.b32", "ld.global.nc.v4.u32", "st.global.v4.b32",
                               "st.shared.v4.b32", "ld.shared.v4.u32"],
    ("decode_fp4", "sm_100a"): ["cvt.rn.f16x2.e2m1x2", "cvt.rn.bf16x2.ue8m0x2",
                                "ld.global.nc.v4.u32"],
    ("quantize_fp4", "sm_90a"): ["ld.global.nc.v4.u32", "st.global.v4.b32"],
    ("quantize_fp4", "sm_100a"): ["cvt.rn.satfinite.e2m1x2.f32", "cvt.rp.satfinite.ue8m0x2.f32"],
    ("amax_fp4", "sm_90a"): ["ld.global.nc.v4.u32", "shfl.sync.bfly", "atom.global.max.u32"],
    ("quantize_fused", "sm_90a"): ["ld.global.nc.v4.u32", "st.shared.v4.b32", "ld.shared.v4.u32",
                                   "st.global.v4.b32", "atom.global.max.u32", "membar.gl",
                                   "nanosleep", ".maxntid 512"],
    ("quantize_fused", "sm_100a"): ["cvt.rn.satfinite.e2m1x2.f32", "st.shared.v4.b32"],
    ("quantize_stream", "sm_90a"): ["ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32",
                                    "createpolicy.fractional.L2::evict_first", "fma.rn.f32",
                                    "st.global.v4.b32", "st.global.u16", ".minnctapersm 5"],
    ("amax_stream", "sm_90a"): ["ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32",
                                "createpolicy.fractional.L2::evict_last",
                                "createpolicy.fractional.L2::evict_first", "atom.global.max.u32"],
}
F32, F16, BF16 = fp4.F32, fp4.F16, fp4.BF16
# (stage, arch) -> the specializations compiled here (the GPU tests run every one of them)
COMPILED = {
    ("decode_fp4", "sm_90a"): [("nvfp4", BF16), ("dsv4_fp4", F32)],
    ("decode_fp4", "sm_100a"): [("dsv4_fp4", BF16)],
    ("quantize_fp4", "sm_90a"): [("nvfp4", BF16)],
    ("quantize_fp4", "sm_100a"): [("dsv4_fp4", BF16)],
    ("amax_fp4", "sm_90a"): [(None, BF16)],
    ("quantize_fused", "sm_90a"): [("nvfp4", BF16)],
    ("quantize_stream", "sm_90a"): [("nvfp4", BF16)],      # the stream_l2 kernels (hints on)
    ("amax_stream", "sm_90a"): [(None, BF16)],
}


SLOW_COMPILE = {("quantize_fused", "sm_90a")}       # ~75 s (the stream quantize kernel: ~25 s)


def _kernels(stage, arch, fmt, kind):
    fam = {("decode_fp4", "sm_90a"): fp4.decode_sm90_kernel,
           ("decode_fp4", "sm_100a"): fp4.decode_sm100_kernel,
           ("quantize_fp4", "sm_90a"): fp4.quantize_sm90_kernel,
           ("quantize_fp4", "sm_100a"): fp4.quantize_sm100_kernel}.get((stage, arch))
    if stage == "decode_fp4":
        return fp4._kernels_decode(fam, (fmt,), (kind,))
    if stage == "quantize_fp4":
        return fp4._kernels_quantize(fam, (fmt,), (kind,))
    if stage in ("quantize_stream", "amax_stream"):
        ks = fp4._kernels_stream((kind,), (True,))
        return ks[1:] if stage == "quantize_stream" else ks[:1]
    if stage == "quantize_fused":
        return fp4._kernels_fused({"sm_90a": fp4.quantize_fused_sm90_kernel,
                                   "sm_100a": fp4.quantize_fused_sm100_kernel}[arch], (kind,))
    return fp4._kernels_amax((kind,))


@pytest.mark.parametrize("stage,arch,fmt,kind", [
    pytest.param(*(k + v), marks=pytest.mark.slow) if k in SLOW_COMPILE
    else k + v for k, vs in sorted(COMPILED.items()) for v in vs])
def test_production_kernels_assemble(stage, arch, fmt, kind):
    (kern, sig), = _kernels(stage, arch, fmt, kind)
    res = kern.compile(sig, arch)
    for instr in PTX_MUST_HAVE[(stage, arch)]:
        assert instr in res.ptx, f"{instr} missing from the {arch} PTX"
    assert res.spill_stores == 0 and res.spill_loads == 0 and res.stack_bytes == 0, res.summary()
    if res.sass is not None:
        assert re.search(r"LDG\.E(\.NA)?\.128", res.sass)    # the 16-byte vectors survived
        if stage not in ("amax_fp4", "amax_stream"):
            assert "STG.E.128" in res.sass
        if stage == "quantize_stream":      # y = x * r rounded BEFORE the E2M1 step add:
            assert len(re.findall(r"FADD R\d+, \|R\d+\|", res.sass)) >= 32, "fma contraction?"
            lo = res.sass.index("LDG.E.NA.128")
            hot = res.sass[lo:res.sass.index("STG.E.128", lo)]
            assert "CALL" not in hot and "DMUL" not in hot, "slow path left in the loop"
        if stage == "decode_fp4" and arch == "sm_90a":
            assert "PRMT" in res.sass
            hot = res.sass[res.sass.index("LDG.E.128"):res.sass.rindex("STG.E.128")]
            assert "CALL" not in hot and "DMUL" not in hot, "slow path left in the decode loop"


def test_registry_lists_every_specialization():
    impl = d.registry.REGISTRY["decode_fp4"].impls["production:sm_90a"]
    assert len(impl.kernels()) == 6                      # {dsv4/mx, nv} x {f32, f16, bf16}
    impl = d.registry.REGISTRY["quantize_fp4"].impls["production:sm_90a"]
    assert len(impl.kernels()) == 9 + 3 + 3 + 12   # 3 formats x 3 inputs + 3 amax + 3 fused
    #                                            + stream: 3 inputs x 2 hints x (amax, quantize)


# ------------------------------------------- production kernels under the simulator (dsv4_numba.emu)
# The production kernels' inline-PTX operations have simulator twins (stages/fp4.py) and the emulator
# supplies the 16-byte global / shared accesses, so the very kernels the H100 runs are checked
# bitwise here on small tensors (a few 512-byte warp tiles plus a tail for decode).
def production(stage):
    return d.registry.REGISTRY[stage].impls["production:sm_90a"].fn


@pytest.fixture
def sim_mode(monkeypatch):
    monkeypatch.setenv("DSV4_MODE", "sim")


@pytest.mark.parametrize("fmt", FMTS)
def test_production_decode_under_simulator(fmt, rng, sim_mode):
    q = formats.quantize(outliers(rng, (5, 416)), fmt)      # 1040 bytes: 2 warp tiles + a tail
    q.scales.reshape(-1)[:4] = [255, 0x7F, 0, 3]             # NaN (UE8M0 / E4M3) and tiny scales
    for dt in DTYPES:
        check_decode(production("decode_fp4"), q, dt)
    for dt in DTYPES:                                        # every byte value, every scale code
        check_decode(production("decode_fp4"), every_byte_tensor(fmt, rng), dt)


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("in_dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_production_quantize_under_simulator(fmt, in_dtype, rng, sim_mode):
    x = outliers(rng, (9, 96), scale_spread=2.0)
    x.reshape(-1)[:8] = np.array([0.25, -0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.5], np.float32) * 4
    x[2, 32:64] = 0                                          # an all-zero block
    x[7, 95] = -x.max() * 3                                  # the tensor amax: last, negative
    x = x.astype(in_dtype)
    q = production("quantize_fp4")(x, fmt)
    spec = formats.quantize(x, fmt)
    assert_close(q.data, spec.data, bitwise=True, name="codes")
    assert_close(q.scales, spec.scales, bitwise=True, name="scales")
    assert q.global_scale == spec.global_scale


@kernel
def encode_probe(v, out):
    i = cuda.grid(1)
    for j in range(i, v.size, cuda.gridsize(1)):
        out[j] = e2m1_encode_bits(v[j])


def test_bit_arithmetic_e2m1_encode_matches_spec(sim_mode):
    """The production encoder at, and one float32 ulp either side of, every rounding threshold."""
    t = np.array([0.25, 0.75, 1.0, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 0.5, 1.5, 2.0, 3.0, 4.0],
                 np.float32)
    near = np.concatenate([t, np.nextafter(t, np.float32(0)), np.nextafter(t, np.float32(9))])
    v = np.concatenate([near, -near, [0.0, -0.0, 1e-30, 6.5, 7.99, 8.0, 100.0, 3e38],
                        np.linspace(0, 7, 201, dtype=np.float32)]).astype(np.float32)
    out = np.zeros(v.size, np.uint32)
    encode_probe.launch(1, 32, v, out)
    assert_close(out.astype(np.uint8), formats.e2m1_encode(v), bitwise=True, name="E2M1 codes")


@pytest.mark.parametrize("factor", [1.0, 0.25, 8.0, 0.0])
def test_nvfp4_given_global_amax(factor, rng, sim_mode):
    """global_amax= skips the amax pass: reference and production (simulator) are bitwise the spec
    given the same amax; the true amax reproduces the plain call; blocks above a small one saturate."""
    x = outliers(rng, (4, 64), scale_spread=1.0)
    amax = np.float32(np.abs(x).max() * factor)
    spec = formats.quantize(x, "nvfp4", global_amax=amax)
    if factor == 1.0:
        plain = formats.quantize(x, "nvfp4")
        assert_close(spec.data, plain.data, bitwise=True, name="codes")
        assert spec.global_scale == plain.global_scale
    for q in (d.quantize_fp4(x, "nvfp4", impl="reference", global_amax=amax),
              production("quantize_fp4")(x, "nvfp4", global_amax=amax)):
        assert_close(q.data, spec.data, bitwise=True, name="codes")
        assert_close(q.scales, spec.scales, bitwise=True, name="scales")
        assert q.global_scale == spec.global_scale


def test_global_amax_bad_values_get_clear_errors():
    x = np.ones((2, 32), np.float32)
    for fn in (formats.quantize, lambda x, f, **k: d.quantize_fp4(x, f, impl="reference", **k)):
        with pytest.raises(ValueError, match="nvfp4 only"):
            fn(x, "dsv4_fp4", global_amax=1.0)
        for bad in (np.inf, np.nan, -1.0):
            with pytest.raises(ValueError, match="finite and >= 0"):
                fn(x, "nvfp4", global_amax=bad)


# ------------------------------------------- the fused nvfp4 quantize (one persistent kernel)
def _fused_case(rng, in_dtype, rows, where):
    x = outliers(rng, (rows, 32), scale_spread=2.0)
    x[1] = 0                                                 # an all-zero chunk (two blocks)
    pos = {"first": 0, "last": x.size - 1, "middle": x.size // 2 + 5}[where]
    x.reshape(-1)[pos] = -np.abs(x).max() * 3                # the tensor amax, negative
    return x.astype(in_dtype)


@pytest.mark.parametrize("in_dtype,rows,keep,where", [
    (ml_dtypes.bfloat16, 101, 2, "last"),     # 4 rounds of 32 chunks, the last partial: 2 kept
    (np.float32, 101, 2, "first"),            # float32: 8 vectors per chunk
    (np.float16, 40, 0, "middle"),            # nothing kept: everything re-read
    (ml_dtypes.bfloat16, 40, 3, "middle"),    # everything kept
])
def test_fused_nvfp4_quantize_under_simulator(in_dtype, rows, keep, where, rng, sim_mode):
    """The fused kernel (amax, grid barrier, kept + re-read rounds) is bitwise the spec; one CTA
    of 32 threads (the simulator runs CTAs one after another, so a grid barrier needs one)."""
    x = _fused_case(rng, in_dtype, rows, where)
    nv = 8 if np.dtype(in_dtype) == np.float32 else 4
    plan = fp4.quantize_plan(x, "nvfp4", fp4.quantize_sm90_kernel, ref=False, variant="fused",
                             fused_config=(32, keep * 32 * nv * 16, 1))
    k = plan.launches[-1][0]
    assert k.threads == 32 and k.keep == keep
    q = plan.run().result()
    spec = formats.quantize(x, "nvfp4")
    assert_close(q.scales, spec.scales, bitwise=True, name="scales")
    assert_close(q.data, spec.data, bitwise=True, name="codes")
    assert q.global_scale == spec.global_scale


def test_fused_barrier_timeout_falls_back_to_two_pass(rng, sim_mode, monkeypatch):
    """Two CTAs under the simulator (which runs them one after another): CTA 0's barrier gives
    up after spin_limit naps, flags it, and the host re-runs the call with the two-pass variant:
    a warning, never a hang or a wrong result."""
    monkeypatch.setattr(fp4, "FUSED_SPIN_LIMIT", 3)
    x = _fused_case(rng, ml_dtypes.bfloat16, 70, "last")
    plan = fp4.quantize_plan(x, "nvfp4", fp4.quantize_sm90_kernel, ref=False, variant="fused",
                             fused_config=(32, 2 * 32 * 4 * 16, 2))
    with pytest.warns(RuntimeWarning, match="grid barrier timed out"):
        q = plan.run().result()
    spec = formats.quantize(x, "nvfp4")
    assert_close(q.data, spec.data, bitwise=True, name="codes")
    assert q.global_scale == spec.global_scale


def test_nvfp4_variant_selection(monkeypatch):
    monkeypatch.delenv("DSV4_FP4_NVFP4_VARIANT", raising=False)
    assert fp4.nvfp4_variant() == fp4.NVFP4_DEFAULT_VARIANT in fp4.NVFP4_VARIANTS
    monkeypatch.setenv("DSV4_FP4_NVFP4_VARIANT", "fused")
    assert fp4.nvfp4_variant() == "fused" and fp4.nvfp4_variant("twopass") == "twopass"
    monkeypatch.setenv("DSV4_FP4_NVFP4_VARIANT", "stream_l2")
    assert fp4.nvfp4_variant() == "stream_l2"
    with pytest.raises(ValueError, match="variant"):
        fp4.nvfp4_variant("bogus")


# ------------------------------------------- the stream nvfp4 variants (lean quantize, lockstep amax)
@kernel
def stream_helper_probe(y, sb, p, out):
    """out[:, 0] = e2m1_step(y, 8), out[:, 1] = e4m3_code_bits(sb), out[:, 2] = bits(div6_rn(p))."""
    i = cuda.grid(1)
    for j in range(i, y.size, cuda.gridsize(1)):
        out[j, 0] = e2m1_step(y[j], np.uint32(8))
        out[j, 1] = e4m3_code_bits(sb[j])
        out[j, 2] = f32_bits(div6_rn(p[j]))


def _around(t):
    t = np.asarray(t, np.float32)
    return np.concatenate([t, np.nextafter(t, np.float32(0)), np.nextafter(t, np.float32(1e9))])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the intended uint32
def test_stream_helpers_match_spec(rng, sim_mode):                       # wrap (huge y) in NumPy
    """The lean helpers (the production kernel's own code, simulator twins for fma) at and one ulp
    either side of every E2M1 / E4M3 rounding threshold and binade edge, plus random values: E2M1
    codes against formats.e2m1_encode (signs, -0, saturation), E4M3 codes against
    formats.e4m3_encode, the division against IEEE float32 p / 6. (On the GPU the same helpers
    are checked for every float32 in range: tests/gpu/test_fp4_gpu.py.)"""
    e2 = _around([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0,
                  8.0, 12.0, 1e-30, 2.0 ** -126, 1e20, 2.0 ** 106, 2.0 ** 127, 3.4e38])
    y = np.concatenate([e2, -e2, [0.0, -0.0], rng.uniform(-9, 9, 200)]).astype(np.float32)
    e4 = formats.e4m3_decode(np.arange(127, dtype=np.uint8)).astype(np.float64)
    mids = (e4[1:] + e4[:-1]) / 2                       # every E4M3 rounding midpoint (exact in f32)
    sb = np.concatenate([_around(mids), _around(e4), [448.0, 2.0 ** -6, 2.0 ** -10, 0.0]])
    sb = np.clip(sb, 0, 448).astype(np.float32)
    p = np.concatenate([sb * 6, rng.uniform(0, 2688, 300), 2.0 ** rng.uniform(-100, 11, 300),
                        [2688.0, 6.0, 3.0, 1.0, 0.0]]).astype(np.float32)
    m = max(y.size, sb.size, p.size)
    y, sb, p = (np.resize(a, m) for a in (y, sb, p))
    out = np.zeros((m, 3), np.uint32)
    stream_helper_probe.launch(2, 32, y, sb, p, out)
    assert_close(out[:, 0].astype(np.uint8), formats.e2m1_encode(y), bitwise=True, name="E2M1")
    assert_close(out[:, 1].astype(np.uint8), formats.e4m3_encode(sb), bitwise=True, name="E4M3")
    assert_close(out[:, 2], (p / np.float32(6)).view(np.uint32), bitwise=True, name="p / 6")


@pytest.mark.parametrize("variant,in_dtype,shape,where", [
    ("stream", ml_dtypes.bfloat16, (9, 96), "last"),        # one partial window
    ("stream_l2", ml_dtypes.bfloat16, (40, 256), "last"),   # 5 lockstep windows + a remainder
    ("stream", np.float32, (40, 256), "first"),
    ("stream_l2", np.float16, (20, 128), "middle"),
])
def test_stream_nvfp4_under_simulator(variant, in_dtype, shape, where, rng, sim_mode):
    """The stream variants (the amax pass over 2 CTAs of 32 threads sweeping back to front, the
    lean quantize pass) bitwise the spec: all-zero and -0 blocks, the tensor amax (negative) at
    either end or in the middle, every threshold value on the E2M1 grid."""
    x = outliers(rng, shape, scale_spread=2.0)
    x.reshape(-1)[:8] = np.array([0.25, -0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.5], np.float32) * 4
    x[1, :32] = 0
    x[2, :16] = -0.0
    pos = {"first": 0, "last": x.size - 1, "middle": x.size // 2 + 5}[where]
    x.reshape(-1)[pos] = -np.abs(x).max() * 3
    x = x.astype(in_dtype)
    plan = fp4.quantize_plan(x, "nvfp4", fp4.quantize_sm90_kernel, ref=False, variant=variant)
    names = [launch[0].__name__ for launch in plan.launches]
    assert names[1].startswith("amax_fp4_stream") and names[2].startswith("quantize_fp4_nv_stream")
    q = plan.run().result()
    spec = formats.quantize(x, "nvfp4")
    assert_close(q.data, spec.data, bitwise=True, name="codes")
    assert_close(q.scales, spec.scales, bitwise=True, name="scales")
    assert q.global_scale == spec.global_scale


@pytest.mark.parametrize("factor", [0.25, 1.0])
def test_stream_nvfp4_given_global_amax(factor, rng, sim_mode):
    """global_amax= with the stream variant: the lean quantize pass alone; a small amax saturates
    blocks (gs * amax_b > 2688: y unbounded, codes +-6), bitwise the spec."""
    x = outliers(rng, (6, 64), scale_spread=1.0)
    amax = np.float32(np.abs(x).max() * factor)
    q = production("quantize_fp4")(x, "nvfp4", global_amax=amax, variant="stream")
    spec = formats.quantize(x, "nvfp4", global_amax=amax)
    assert_close(q.data, spec.data, bitwise=True, name="codes")
    assert_close(q.scales, spec.scales, bitwise=True, name="scales")
    assert q.global_scale == spec.global_scale
