"""FP4 decode / quantize stages: bitwise against the NumPy spec (simulator here, GPU in tests/gpu).

Decode and quantize are exact functions of their inputs (see stages/fp4.py), so every comparison
is bitwise — except NaN outputs (from NaN scale codes), whose payload is unspecified: their masks
must match exactly.
"""
import ml_dtypes
import numpy as np
import pytest
from conftest import outliers

import dsv4_numba as d
from dsv4_numba import formats
from dsv4_numba.formats import wrong
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
                               "cvt.rn.bf16x2.f32"],
    ("decode_fp4", "sm_100a"): ["cvt.rn.f16x2.e2m1x2", "cvt.rn.bf16x2.ue8m0x2",
                                "ld.global.nc.v4.u32"],
    ("quantize_fp4", "sm_90a"): ["ld.global.nc.v4.u32", "st.global.v4.b32"],
    ("quantize_fp4", "sm_100a"): ["cvt.rn.satfinite.e2m1x2.f32", "cvt.rp.satfinite.ue8m0x2.f32"],
}


@pytest.mark.parametrize("stage,arch", sorted(PTX_MUST_HAVE))
def test_production_kernels_assemble(stage, arch):
    impl = d.registry.REGISTRY[stage].impls[f"production:{arch}"]
    kern, sig = impl.kernels()[2]                # the bfloat16 variant
    res = kern.compile(sig, arch)
    for instr in PTX_MUST_HAVE[(stage, arch)]:
        assert instr in res.ptx, f"{instr} missing from the {arch} PTX"
    assert res.spill_stores == 0 and res.spill_loads == 0 and res.stack_bytes == 0, res.summary()
    if res.sass is not None:
        assert "LDG.E.128" in res.sass and "STG.E.128" in res.sass   # the 16-byte vectors survived
        if stage == "decode_fp4" and arch == "sm_90a":
            assert "PRMT" in res.sass
