"""Tests of dsv4_numba.formats: every format checked bitwise against ml_dtypes or against an
independent re-derivation, and known-wrong decoders shown to fail the same checks."""

import ml_dtypes
import numpy as np
import pytest

import dsv4_numba.formats as F

FMTS = sorted(F.FORMATS)
SHAPES = [(1, 32), (127, 64), (3, 5, 96)]

# Values where round-to-nearest-even decides: (input, E2M1 code).
E2M1_TIES = [(0.25, 0), (0.75, 2), (1.25, 2), (1.75, 4), (2.5, 4), (3.5, 6), (5.0, 6),
             (-0.25, 8), (-0.75, 10), (-1.25, 10), (-1.75, 12), (-2.5, 12), (-3.5, 14),
             (-5.0, 14), (6.0, 7), (6.5, 7), (1e30, 7), (-7.0, 15)]


# ----------------------------------------------------------------------------- helpers

def assert_bitwise(got, want):
    """Same shape, dtype and bits (so NaN positions and signed zeros must match too)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape,
                                                                  want.dtype, want.shape)
    as_int = np.dtype(f"uint{8 * got.dtype.itemsize}")
    np.testing.assert_array_equal(got.view(as_int), want.view(as_int))


def outlier_floats(rng, n):
    """float32 with magnitudes over 6 decades, exact E2M1/E4M3 ties, and +-0."""
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n)
    ties = np.array([t for t, _ in E2M1_TIES] + [0.0, -0.0, 464.0, 448.0, 2.0 ** -10])
    return np.concatenate([x, ties, ties * 3.0 ** -4]).astype(np.float32)


def block_input(shape, seed):
    """Test tensor: per-row magnitudes 1e-3..1e3, 2% outliers x100, a tie block, a zero block."""
    rng = np.random.default_rng(seed)
    row_mag = 10.0 ** rng.uniform(-3, 3, shape[:-1] + (1,))
    x = rng.standard_normal(shape) * row_mag
    x[rng.random(shape) < 0.02] *= 100.0
    rows = x.reshape(-1, shape[-1])
    # amax 6 gives scale 1 for dsv4_fp4 and mxfp4, so the E2M1 ties land exactly.
    tie_block = [6.0, -0.0] + [t for t, _ in E2M1_TIES[:14]] + [0.1] * 16
    rows[0, :32] = tie_block
    if rows.shape[0] > 1:
        rows[1, :32] = 0.0
        rows[1, 5] = -0.0
    return x.astype(np.float32)


def block_scale_values(q):
    """Decode scale per block (float64, with the nvfp4 global scale), via ml_dtypes."""
    kind = {"ue8m0": ml_dtypes.float8_e8m0fnu, "e4m3": ml_dtypes.float8_e4m3fn}
    s = q.scales.view(kind[q.spec.scale_kind]).astype(np.float64)
    return s * float(q.global_scale) if q.global_scale is not None else s


def independent_quantize(x, fmt):
    """Scale codes, element codes, global scale computed with float64 log2 and ml_dtypes."""
    spec = F.FORMATS[fmt]
    lead, n = x.shape[:-1], x.shape[-1]
    blocks = x.reshape(lead + (n // spec.block, spec.block))
    amax_b = np.abs(blocks).max(axis=-1)
    global_scale = None
    with np.errstate(divide="ignore"):
        if fmt == "nvfp4":
            amax = amax_b.max()
            gs_enc = np.float32(2688.0) / amax if amax > 0 else np.float32(1.0)
            global_scale = amax / np.float32(2688.0) if amax > 0 else np.float32(1.0)
            sb = (gs_enc * amax_b) / np.float32(6.0)
            scale_codes = np.minimum(sb, np.float32(448)).astype(ml_dtypes.float8_e4m3fn)
            s_b = scale_codes.astype(np.float32)
            keep = s_b > 0
            y = blocks * (gs_enc / np.where(keep, s_b, 1))[..., None]
            scale_codes = scale_codes.view(np.uint8)
        else:
            if fmt == "dsv4_fp4":
                e = np.ceil(np.log2((amax_b / np.float32(6.0)).astype(np.float64)))
            else:
                e = np.floor(np.log2(amax_b.astype(np.float64))) - 2
            keep = amax_b > 0
            scale_codes = np.where(keep, np.clip(e + 127, 0, 254), 0).astype(np.uint8)
            s = (2.0 ** (scale_codes.astype(np.float64) - 127)).astype(np.float32)
            y = blocks / s[..., None]
    codes = y.astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    codes = np.where(keep[..., None], codes, 0).astype(np.uint8).reshape(x.shape)
    return scale_codes, codes, global_scale


def check_decode(dequantize_fn, fmt):
    """dequantize_fn(q, np.float32) must equal an independent ml_dtypes decode, bitwise."""
    x = block_input((16, 64), seed=7)
    q = F.quantize(x, fmt)
    codes = q.codes  # unpacking is tested separately against hand-made bytes
    elems = codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    elems = elems.reshape(q.scales.shape + (q.block,))
    kind = {"ue8m0": ml_dtypes.float8_e8m0fnu, "e4m3": ml_dtypes.float8_e4m3fn}
    scale = q.scales.view(kind[q.spec.scale_kind]).astype(np.float32)
    want = elems * scale[..., None]
    if q.global_scale is not None:
        want = want * q.global_scale
    assert_bitwise(dequantize_fn(q, np.float32), want.reshape(x.shape))


# ----------------------------------------------------------------------------- E2M1

def test_e2m1_all_codes_match_ml_dtypes():
    codes = np.arange(16, dtype=np.uint8)
    want = codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    assert_bitwise(F.e2m1_decode(codes), want)
    assert_bitwise(F.E2M1_VALUES, want)
    assert_bitwise(F.e2m1_encode(want), codes)          # every value encodes to itself


@pytest.mark.parametrize("x, code", E2M1_TIES)
def test_e2m1_ties_round_to_even_and_saturate(x, code):
    assert F.e2m1_encode(np.float32(x)) == code
    assert (np.float32(x).astype(ml_dtypes.float4_e2m1fn).view(np.uint8)) == code


def test_e2m1_signed_zero():
    x = np.array([0.0, -0.0, 0.1, -0.1, -0.25, 1e-40, -1e-40], dtype=np.float32)
    assert_bitwise(F.e2m1_encode(x), np.array([0, 8, 0, 8, 8, 0, 8], dtype=np.uint8))
    assert np.signbit(F.e2m1_decode(np.uint8(8)))


def test_e2m1_encode_matches_ml_dtypes():
    x = outlier_floats(np.random.default_rng(0), 200_000)
    assert_bitwise(F.e2m1_encode(x), x.astype(ml_dtypes.float4_e2m1fn).view(np.uint8))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float64])
def test_e2m1_encode_converts_to_float32_first(dtype):
    x = np.clip(outlier_floats(np.random.default_rng(1), 10_000), -6e4, 6e4).astype(dtype)
    assert_bitwise(F.e2m1_encode(x), F.e2m1_encode(x.astype(np.float32)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_e2m1_encode_rejects_nonfinite(bad):
    with pytest.raises(ValueError):
        F.e2m1_encode(np.array([1.0, bad], dtype=np.float32))


def test_e2m1_rejects_bad_dtypes_and_codes():
    with pytest.raises(TypeError):
        F.e2m1_encode(np.array([1, 2], dtype=np.int32))
    with pytest.raises(TypeError):
        F.e2m1_decode(np.array([1.0]))
    with pytest.raises(ValueError):
        F.e2m1_decode(np.array([16], dtype=np.uint8))


def test_pack_fp4_nibble_order_and_round_trip():
    assert_bitwise(F.pack_fp4(np.array([0x1, 0x2, 0xF, 0x8], dtype=np.uint8)),
                   np.array([0x21, 0x8F], dtype=np.uint8))
    assert_bitwise(F.unpack_fp4(np.array([0x21, 0x8F], dtype=np.uint8)),
                   np.array([0x1, 0x2, 0xF, 0x8], dtype=np.uint8))
    codes = np.random.default_rng(2).integers(0, 16, (3, 7, 10), dtype=np.uint8)
    packed = F.pack_fp4(codes)
    assert packed.shape == (3, 7, 5)
    assert_bitwise(F.unpack_fp4(packed), codes)
    with pytest.raises(ValueError):
        F.pack_fp4(np.zeros((4, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------- E4M3, UE8M0

def test_e4m3_all_codes_match_ml_dtypes():
    codes = np.arange(256, dtype=np.uint8)
    want = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    got = F.e4m3_decode(codes)
    assert_bitwise(got, want)                           # includes 0x7F = +NaN, 0xFF = -NaN
    assert np.flatnonzero(np.isnan(got)).tolist() == [0x7F, 0xFF]
    finite = ~np.isnan(want)
    assert_bitwise(F.e4m3_encode(want[finite]), codes[finite])


def test_e4m3_encode_matches_ml_dtypes_after_clamp():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(300_000) * 10.0 ** rng.uniform(-12, 4, 300_000)
    pos = np.sort(np.unique(np.abs(F.e4m3_decode(np.arange(0x7F, dtype=np.uint8)))))
    mids = (pos[1:].astype(np.float64) + pos[:-1]) / 2       # exact ties, float32-exact
    x = np.concatenate([x, pos, mids, -mids, [0.0, -0.0, 1e-45, -1e-45, 1e38]])
    x = x.astype(np.float32)
    want = np.clip(x, -448, 448).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    assert_bitwise(F.e4m3_encode(x), want)


def test_e4m3_encode_saturates_instead_of_nan():
    x = np.array([448, 464, 470, 1e30, np.inf, -470, -np.inf], dtype=np.float32)
    assert_bitwise(F.e4m3_encode(x),
                   np.array([0x7E] * 5 + [0xFE] * 2, dtype=np.uint8))
    with pytest.raises(ValueError):
        F.e4m3_encode(np.array([np.nan], dtype=np.float32))


def test_ue8m0_all_codes_match_ml_dtypes():
    codes = np.arange(256, dtype=np.uint8)
    want = codes.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    assert_bitwise(F.ue8m0_decode(codes), want)
    assert F.ue8m0_decode(np.uint8(0)) == np.float32(2.0 ** -127)    # subnormal, exact


def _random_positive_float32(rng, n, subnormal=False):
    """Uniformly random bit patterns: normals (exponent field 1..254) or subnormals."""
    exp_field = np.zeros(n, np.uint32) if subnormal else rng.integers(1, 255, n, dtype=np.uint32)
    mant = rng.integers(0 if not subnormal else 1, 1 << 23, n, dtype=np.uint32)
    return ((exp_field << 23) | mant).view(np.float32)


def test_ue8m0_nearest_matches_ml_dtypes():
    rng = np.random.default_rng(4)
    k = np.arange(-126, 127, dtype=np.float64)
    ties = (1.5 * 2.0 ** k).astype(np.float32)                    # exact midpoints
    x = np.concatenate([_random_positive_float32(rng, 200_000), ties,
                        np.nextafter(ties, 0), np.nextafter(ties, np.inf),
                        np.array([1.5, 3.0, 0.75, 6.0, 2.0 ** -127], np.float32)])
    x = x[x < np.float32(1.5 * 2.0 ** 127)]                        # ml_dtypes gives NaN above
    assert_bitwise(F.ue8m0_encode(x, "nearest"), x.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8))
    assert F.ue8m0_encode(np.float32(3e38), "nearest") == 254      # clamped, never NaN


def test_ue8m0_nearest_subnormals_documented_difference():
    # ml_dtypes 0.6 rounds float32 subnormals in (2^-127, 1.5*2^-127) up to code 1; the nearest
    # power of two there is 2^-127 (code 0).  Everywhere else on subnormals they agree.
    x = _random_positive_float32(np.random.default_rng(5), 100_000, subnormal=True)
    got = F.ue8m0_encode(x, "nearest")
    want = x.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
    lo, hi = np.float32(2.0 ** -127), np.float32(1.5 * 2.0 ** -127)
    differ = (x > lo) & (x < hi)
    assert differ.any() and (~differ).any()
    assert_bitwise(got[~differ], want[~differ])
    assert (got[differ] == 0).all() and (want[differ] == 1).all()


@pytest.mark.parametrize("rounding, fn", [("ceil", np.ceil), ("floor", np.floor)])
def test_ue8m0_ceil_floor_exact(rounding, fn):
    rng = np.random.default_rng(6)
    pow2 = (2.0 ** np.arange(-149, 128)).astype(np.float32)
    x = np.concatenate([_random_positive_float32(rng, 100_000),
                        _random_positive_float32(rng, 20_000, subnormal=True),
                        pow2, np.nextafter(pow2, np.inf), np.nextafter(pow2[1:], 0)])
    want = np.clip(fn(np.log2(x.astype(np.float64))) + 127, 0, 254).astype(np.uint8)
    assert_bitwise(F.ue8m0_encode(x, rounding), want)


def test_ue8m0_encode_edge_cases():
    x = np.array([0.0, -0.0, -3.0, 1e-45, 3e38, 1.0, 1.0000001], dtype=np.float32)
    assert_bitwise(F.ue8m0_encode(x, "ceil"), np.array([0, 0, 0, 0, 254, 127, 128], np.uint8))
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError):
            F.ue8m0_encode(np.array([bad], dtype=np.float32))
    with pytest.raises(ValueError):
        F.ue8m0_encode(np.float32(1.0), rounding="up")


# ----------------------------------------------------------------------------- block formats

def test_format_table():
    assert F.FORMATS["nvfp4"] == F.FormatSpec("nvfp4", 16, "e4m3", True)
    assert F.FORMATS["mxfp4"] == F.FormatSpec("mxfp4", 32, "ue8m0", False)
    assert F.FORMATS["dsv4_fp4"] == F.FormatSpec("dsv4_fp4", 32, "ue8m0", False)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt", FMTS)
def test_quantize_matches_independent_derivation(fmt, shape):
    x = block_input(shape, seed=hash(shape) % 1000)
    q = F.quantize(x, fmt)
    scale_codes, codes, global_scale = independent_quantize(x, fmt)
    assert q.shape == shape and q.data.shape == shape[:-1] + (shape[-1] // 2,)
    assert_bitwise(q.scales, scale_codes)
    assert_bitwise(q.data, codes[..., 0::2] | (codes[..., 1::2] << 4))
    if fmt == "nvfp4":
        assert_bitwise(q.global_scale, np.float32(global_scale))
    else:
        assert q.global_scale is None


# Round-trip bound.  With S the block's decode scale (times the global scale for nvfp4) and
# y = x / S, round-to-nearest leaves |y - e2m1(code)| <= half the E2M1 gap around y:
# 0.25 for |y| < 2, 0.5 for |y| < 4, 1 up to 6; above 6 saturation costs |y| - 6.  The scale
# rule bounds |y| per format:
#   dsv4_fp4: S = 2^ceil(log2(amax/6)) >= amax/6 (up to one float32 rounding) -> |y| <= 6,
#             so |x - dq| <= 1 * S.
#   mxfp4:    S = 2^(floor(log2 amax) - 2) > amax / 8 -> |y| < 8, so |x - dq| <= 2 * S (OCP
#             accepts this clipping of the top of the block).
#   nvfp4:    s_b = e4m3(sb).  For a normal E4M3 scale (s_b >= 2^-6) RNE to 3 mantissa bits
#             gives s_b >= sb / (1 + 2^-4) -> |y| <= 6.375, so |x - dq| <= 1 * S.  For a
#             subnormal one, s_b = k * 2^-9 >= sb - 2^-10 with k >= 1 -> |y| <= 6 (k + 1/2) / k
#             <= 9, so |x - dq| <= 3 * S: small blocks of a tensor with a large amax lose the
#             top of their range.  Blocks whose sb rounds to 0 (sb <= 2^-10) decode to 0 and
#             |x| <= 6 * 2^-10 * global_scale.
# Float32 rounding of y and of the decode multiplies adds ~1e-7 relative: slack 1e-5.
def max_y(q):
    """Largest |x| / S the scale rule allows, per block (see above)."""
    if q.fmt == "dsv4_fp4":
        return np.full(q.scales.shape, 6.0)
    if q.fmt == "mxfp4":
        return np.full(q.scales.shape, 8.0)
    s_b = q.scales.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    return np.where(s_b >= 2.0 ** -6, 6.375, 9.0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt", FMTS)
def test_round_trip_error_bounded_by_format(fmt, shape):
    x = block_input(shape, seed=11)
    q = F.quantize(x, fmt)
    dq = F.dequantize(q).astype(np.float64)
    x64 = x.astype(np.float64)
    S = np.repeat(block_scale_values(q), q.block, axis=-1)
    y_limit = np.repeat(max_y(q), q.block, axis=-1)
    err = np.abs(x64 - dq)
    slack = 1e-5 * (np.abs(x64) + 6 * S) + 1e-44

    zero_scale = S == 0                              # only nvfp4 blocks with sb <= 2^-10
    assert fmt == "nvfp4" or not zero_scale.any()
    if zero_scale.any():
        assert (dq[zero_scale] == 0).all()
        tiny = 6 * 2.0 ** -10 * float(q.global_scale) * (1 + 1e-5)
        assert (np.abs(x64[zero_scale]) <= tiny).all()

    keep = ~zero_scale
    S, x64, err, slack, y_limit = S[keep], x64[keep], err[keep], slack[keep], y_limit[keep]
    y = np.abs(x64) / S
    half_gap = np.where(y < 2, 0.25, np.where(y < 4, 0.5, 1.0))
    assert (y <= y_limit * (1 + 1e-5)).all()
    assert (err <= S * np.maximum(half_gap, y - 6) + slack).all()
    assert (err <= S * np.maximum(1.0, y_limit - 6) + slack).all()


def test_requantize_mxfp4_is_bitwise_idempotent():
    for shape in SHAPES:
        q1 = F.quantize(block_input(shape, seed=12), "mxfp4")
        q2 = F.quantize(F.dequantize(q1), "mxfp4")
        assert_bitwise(q2.scales, q1.scales)
        assert_bitwise(q2.data, q1.data)


def test_requantize_dsv4_fp4_reaches_fixed_point():
    # dsv4_fp4 is idempotent bitwise for blocks whose largest code is 4 or 6.  A block whose
    # largest code is 3 (amax/s in (3, 3.5)) re-quantizes to half the scale with doubled codes
    # (3*s/6 = s/2 is already a power of two): same values, different bytes.  One more
    # round is a bitwise fixed point.
    x = block_input((127, 64), seed=13)
    x[2, :32] = np.linspace(-3.2, 3.2, 32)                   # amax 3.2 -> s = 1, top code 3
    q1 = F.quantize(x, "dsv4_fp4")
    d1 = F.dequantize(q1)
    q2 = F.quantize(d1, "dsv4_fp4")
    assert_bitwise(F.dequantize(q2), d1)
    top = np.abs(F.e2m1_decode(q1.codes)).reshape(q1.scales.shape + (32,)).max(axis=-1)
    stable = top != 3
    assert (~stable).any() and stable.any()
    assert_bitwise(q2.scales[stable], q1.scales[stable])
    assert_bitwise(q2.scales[~stable], q1.scales[~stable] - 1)
    c1 = q1.codes.reshape(q1.scales.shape + (32,))
    c2 = q2.codes.reshape(q1.scales.shape + (32,))
    assert_bitwise(c2[stable], c1[stable])
    q3 = F.quantize(F.dequantize(q2), "dsv4_fp4")
    assert_bitwise(q3.scales, q2.scales)
    assert_bitwise(q3.data, q2.data)


@pytest.mark.parametrize("fmt", FMTS)
def test_all_zero_blocks_decode_to_zero(fmt):
    x = block_input((4, 64), seed=14)
    x[1] = 0.0
    x[1, 3] = -0.0
    q = F.quantize(x, fmt)
    dq = F.dequantize(q)
    assert (q.scales[1] == 0).all() and (q.codes[1] == 0).all()
    assert_bitwise(dq[1], np.zeros(64, np.float32))                # +0, never NaN
    qz = F.quantize(np.zeros((2, 32), np.float32), fmt)
    assert_bitwise(F.dequantize(qz), np.zeros((2, 32), np.float32))
    if fmt == "nvfp4":
        assert qz.global_scale == np.float32(1.0)


@pytest.mark.parametrize("fmt", FMTS)
def test_dequantize_output_dtypes(fmt):
    q = F.quantize(block_input((3, 64), seed=15), fmt)
    f32 = F.dequantize(q)
    for dtype in (np.float16, ml_dtypes.bfloat16):
        assert_bitwise(F.dequantize(q, dtype), f32.astype(dtype))
    with pytest.raises(TypeError):
        F.dequantize(q, np.int8)


@pytest.mark.parametrize("fmt", FMTS)
def test_quantize_converts_inputs_to_float32(fmt):
    x = block_input((3, 64), seed=16)
    for dtype in (np.float16, ml_dtypes.bfloat16):
        xd = x.astype(dtype)
        a, b = F.quantize(xd, fmt), F.quantize(xd.astype(np.float32), fmt)
        assert_bitwise(a.data, b.data)
        assert_bitwise(a.scales, b.scales)


@pytest.mark.parametrize("fmt", FMTS)
def test_nan_scale_codes_decode_to_nan(fmt):
    q = F.quantize(block_input((2, 64), seed=17), fmt)
    q.scales[0, 0] = 0xFF
    dq = F.dequantize(q)
    assert np.isnan(dq[0, :q.block]).all() and not np.isnan(dq[0, q.block:]).any()


@pytest.mark.parametrize("fmt", FMTS)
def test_quantize_rejects_bad_input(fmt):
    block = F.FORMATS[fmt].block
    with pytest.raises(ValueError, match="multiple"):
        F.quantize(np.ones((2, block + 2), np.float32), fmt)
    with pytest.raises(ValueError):
        F.quantize(np.float32(1.0), fmt)
    for bad in (np.nan, np.inf):
        x = np.ones((1, 32), np.float32)
        x[0, 3] = bad
        with pytest.raises(ValueError):
            F.quantize(x, fmt)
    with pytest.raises(TypeError):
        F.quantize(np.ones((1, 32), np.int32), fmt)
    with pytest.raises(ValueError):
        F.quantize(np.ones((1, 32), np.float32), "fp4")


def test_quantized_fp4_validates():
    q = F.quantize(np.ones((2, 32), np.float32), "nvfp4")
    with pytest.raises(ValueError):
        F.QuantizedFP4(q.data, q.scales[:, :1], q.global_scale, "nvfp4", q.shape)
    with pytest.raises(ValueError):
        F.QuantizedFP4(q.data, q.scales, None, "nvfp4", q.shape)
    with pytest.raises(TypeError):
        F.QuantizedFP4(q.data.astype(np.int16), q.scales, q.global_scale, "nvfp4", q.shape)
    with pytest.raises(ValueError):
        F.QuantizedFP4(q.data, q.scales, np.float32(1), "mxfp4", q.shape)
    assert q.block == 16 and q.spec.scale_kind == "e4m3"


def test_nvfp4_tiny_tensor_amax_rejected():
    with pytest.raises(ValueError, match="too small"):
        F.quantize(np.full((1, 16), 1e-37, np.float32), "nvfp4")


# ----------------------------------------------------------------------------- wrong decoders

@pytest.mark.parametrize("fmt", FMTS)
def test_check_decode_accepts_real_dequantize(fmt):
    check_decode(F.dequantize, fmt)


@pytest.mark.parametrize("fmt", FMTS)
def test_check_decode_rejects_integer_decode(fmt):
    with pytest.raises(AssertionError):
        check_decode(F.dequantize_integer_wrong, fmt)


def test_wrong_e2m1_decode_is_caught_on_the_code_table():
    codes = np.arange(16, dtype=np.uint8)
    want = codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    with pytest.raises(AssertionError):
        assert_bitwise(F.e2m1_decode_integer_wrong(codes), want)


# ----------------------------------------------------------------------------- 128x4 SF layout

@pytest.mark.parametrize("M", [1, 127, 128, 129, 300])
def test_sf_swizzle_round_trip_and_offsets(M):
    rng = np.random.default_rng(M)
    for K in range(1, 10):
        sf = rng.integers(1, 256, (M, K), dtype=np.uint8)          # nonzero: padding shows as 0
        buf = F.swizzle_scales(sf)
        assert buf.shape == (-(-M // 128), -(-K // 4), 512) == F.swizzled_shape(M, K)
        flat = buf.reshape(-1)
        m, k = np.meshgrid(np.arange(M), np.arange(K), indexing="ij")
        offsets = F.swizzled_offset(m, k, K)
        assert_bitwise(flat[offsets], sf)
        assert np.count_nonzero(flat) == M * K                     # every other byte is padding
        assert_bitwise(F.unswizzle_scales(buf, M, K), sf)
        assert_bitwise(F.unswizzle_scales(flat, M, K), sf)


def test_sf_offsets_by_hand():
    # 16*(m%32) + 4*((m//32)%4) + k%4 inside a 512-B atom; atoms (m//128, k//4), K-first.
    K = 9                                                       # 3 k-atoms per 128-row band
    cases = {(0, 0): 0, (0, 1): 1, (0, 3): 3, (1, 0): 16, (31, 0): 496, (32, 0): 4,
             (96, 3): 15, (0, 4): 512, (33, 5): 512 + 16 + 4 + 1, (128, 0): 3 * 512,
             (129, 8): (3 + 2) * 512 + 16}
    for (m, k), off in cases.items():
        assert F.swizzled_offset(m, k, K) == off, (m, k)


def test_sf_swizzle_rejects_bad_input():
    with pytest.raises(TypeError):
        F.swizzle_scales(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        F.swizzle_scales(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError):
        F.unswizzle_scales(np.zeros(511, np.uint8), 128, 4)


# ----------------------------------------------------------------------------- KV cache

def kv_input(T, d_nope, seed):
    rng = np.random.default_rng(seed)
    nope = rng.standard_normal((T, d_nope)) * 10.0 ** rng.uniform(-3, 2, (T, 1))
    nope[rng.random(nope.shape) < 0.01] *= 50.0
    nope[0, :] = 0.0                                                # all-zero token
    rope = rng.standard_normal((T, 64)) * 3
    return nope.astype(np.float32), rope.astype(np.float32)


def e4m3_error_ok(x, dq, scale):
    """E4M3 RNE: |y - e4m3(y)| <= 2^-4 |y| for normal y, <= 2^-10 in the subnormal range."""
    y = np.abs(x.astype(np.float64)) / scale
    bound = scale * np.maximum(2.0 ** -4 * y, 2.0 ** -10) * (1 + 1e-6)
    return (np.abs(x.astype(np.float64) - dq) <= bound).all()


def test_kv_v32_layout_and_round_trip():
    nope, rope = kv_input(37, 512, seed=20)
    buf = F.pack_kv_v32(nope, rope)
    assert F.KV_V32_BYTES == 656 and buf.shape == (37, 656) and buf.dtype == np.uint8
    tiles = nope.reshape(37, 4, 128)
    scale = np.maximum(np.abs(tiles).max(-1), np.float32(1e-4)) / np.float32(448)
    assert_bitwise(buf[:, 512:528].copy().view("<f4"), scale.astype("<f4"))
    codes = np.clip(tiles / scale[..., None], -448, 448).astype(ml_dtypes.float8_e4m3fn)
    assert_bitwise(buf[:, :512], codes.view(np.uint8).reshape(37, 512))
    assert_bitwise(buf[:, 528:].copy().view("<u2"),
                   rope.astype(ml_dtypes.bfloat16).view(np.uint16).astype("<u2"))
    nope_dq, rope_dq = F.unpack_kv_v32(buf)
    assert_bitwise(rope_dq, rope.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert e4m3_error_ok(nope, nope_dq, np.repeat(scale, 128, axis=-1))


def test_kv_model1_layout_and_round_trip():
    nope, rope = kv_input(29, 448, seed=21)
    buf = F.pack_kv_model1(nope, rope)
    assert F.KV_MODEL1_BYTES == 584 and buf.shape == (29, 584) and buf.dtype == np.uint8
    assert (buf[:, 583] == 0).all()                                  # pad byte
    tiles = nope.reshape(29, 7, 64)
    v = np.maximum(np.abs(tiles).max(-1) / np.float32(448), np.float32(1e-4))
    scale_codes = (np.ceil(np.log2(v.astype(np.float64))) + 127).astype(np.uint8)
    assert_bitwise(buf[:, 576:583], scale_codes)
    s = (2.0 ** (scale_codes.astype(np.float64) - 127)).astype(np.float32)
    codes = np.clip(tiles / s[..., None], -448, 448).astype(ml_dtypes.float8_e4m3fn)
    assert_bitwise(buf[:, :448], codes.view(np.uint8).reshape(29, 448))
    nope_dq, rope_dq = F.unpack_kv_model1(buf)
    assert_bitwise(rope_dq, rope.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert e4m3_error_ok(nope, nope_dq, np.repeat(s.astype(np.float64), 64, axis=-1))
    # a BF16 decode (what FlashMLA's reference does) gives the same values: the product is exact
    bf16 = (buf[:, :448].view(ml_dtypes.float8_e4m3fn).astype(ml_dtypes.bfloat16)
            * np.repeat(buf[:, 576:583].view(ml_dtypes.float8_e8m0fnu).astype(ml_dtypes.bfloat16),
                        64, axis=-1))
    assert_bitwise(nope_dq, bf16.astype(np.float32))


def test_kv_model1_page_arrangement():
    nope, rope = kv_input(64, 448, seed=22)
    tokens = F.pack_kv_model1(nope, rope)
    page = F.model1_tokens_to_page(tokens)
    assert page.size == 65 * 576                                     # ceil(64*584/576)*576
    assert_bitwise(page[5 * 576: 5 * 576 + 448], tokens[5, :448])
    assert_bitwise(page[64 * 576 + 5 * 8: 64 * 576 + 5 * 8 + 8], tokens[5, 576:])
    assert (page[64 * 584:] == 0).all()
    assert_bitwise(F.model1_page_to_tokens(page, 64), tokens)


def test_kv_rejects_bad_input():
    nope, rope = kv_input(4, 512, seed=23)
    with pytest.raises(ValueError):
        F.pack_kv_v32(nope[:, :500], rope)
    with pytest.raises(ValueError):
        F.pack_kv_v32(nope, rope[:3])
    with pytest.raises(ValueError):
        F.pack_kv_model1(nope, rope)                                 # 512 dims, MODEL1 wants 448
    bad = nope.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError):
        F.pack_kv_v32(bad, rope)
    with pytest.raises(ValueError):
        F.unpack_kv_v32(np.zeros((4, 655), np.uint8))
    with pytest.raises(ValueError):
        F.unpack_kv_model1(np.zeros((4, 656), np.uint8))
    with pytest.raises(TypeError):
        F.unpack_kv_model1(np.zeros((4, 584), np.float32))
