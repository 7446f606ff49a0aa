"""Scale formats: UE8M0 (power-of-two scale) and E4M3 / UE4M3 (FP8 scale and FP8 element).

UE8M0 -- 8 exponent bits, no sign, no mantissa (ml_dtypes ``float8_e8m0fnu``)::

    bit   7 6 5 4 3 2 1 0
        +-----------------+
        | e e e e e e e e |      value = 2^(e - 127);  e = 255 -> NaN;  no zero, no Inf
        +-----------------+
    code 0 = 2^-127 (a float32 subnormal, still exact), 127 = 1.0, 254 = 2^127, 255 = NaN

E4M3FN -- 1 sign, 4 exponent bits (bias 7), 3 mantissa bits (ml_dtypes ``float8_e4m3fn``)::

    bit   7   6 5 4 3   2 1 0
        +---+---------+-------+
        | s | e e e e | m m m |   e > 0: (-1)^s * 2^(e-7) * (1 + m/8)
        +---+---------+-------+   e = 0: (-1)^s * 2^-6 * (m/8)      (subnormal, step 2^-9)
    0x7E = 448 (largest), 0x7F and 0xFF = NaN, no Inf, 0x80 = -0.0

UE4M3 (the NVFP4 block scale of tcgen05) is E4M3 with the sign bit 0; ``e4m3_encode`` of a
non-negative value produces exactly that byte.

Both encoders read the float32 input's own bits (exponent field, 23-bit mantissa) so a GPU
kernel can reproduce them with integer operations::

    float32:  bit 31 sign | bits 30..23 exponent field E8 | bits 22..0 mantissa M23
    normal    (E8 > 0):  x = 2^(E8-127) * (1 + M23/2^23)
    subnormal (E8 = 0):  x = M23 * 2^-149
"""

import numpy as np

from .e2m1 import _as_codes, _as_float32

E4M3_MAX = np.float32(448.0)
UE8M0_ROUNDINGS = ("ceil", "nearest", "floor")


def _float32_log2_parts(a):
    """Split non-negative finite float32 ``a`` into (E, F): a = 2^E * (1 + F/2^23), exactly.

    E is floor(log2(a)) and F the 23-bit fraction after the leading one, both int64, read
    from the bits.  Subnormals are normalised (their leading one is found by a binary search
    over the mantissa bits).  For a == 0 the result is E = -150, F = 0 (callers mask zeros).
    """
    bits = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.int64) & 0x7FFFFFFF
    exp_field = bits >> 23
    mant = bits & 0x7FFFFF

    # Subnormal: position p of the highest set bit of the mantissa (bit_length - 1).
    p = np.zeros_like(mant)
    rest = mant.copy()
    for shift in (16, 8, 4, 2, 1):
        high = (rest >> shift) != 0
        p += np.where(high, shift, 0)
        rest = np.where(high, rest >> shift, rest)
    sub_e = np.where(mant == 0, -150, p - 149)
    sub_f = (mant << (23 - p)) & 0x7FFFFF

    normal = exp_field > 0
    e = np.where(normal, exp_field - 127, sub_e)
    f = np.where(normal, mant, sub_f)
    return e, f


def ue8m0_decode(codes):
    """Decode UE8M0 codes to float32: 2^(code-127); code 255 -> NaN.

    Constraints: integer codes in 0..255 (TypeError for other dtypes).  Code 0 decodes to
    2^-127, which is a float32 subnormal (exact); code 254 to 2^127.
    """
    c = _as_codes(codes, "codes", 256).astype(np.int32)
    value = np.ldexp(np.ones(c.shape, dtype=np.float32), np.minimum(c, 254) - 127)
    return np.where(c == 255, np.float32(np.nan), value).astype(np.float32)


def ue8m0_encode(x, rounding="ceil"):
    """Encode positive float32 values as UE8M0 exponent codes (uint8), same shape as ``x``.

    With a = 2^E * (1 + F/2^23) read from the float32 bits (subnormals normalised):
      * ``"ceil"``    -> E + (F != 0), i.e. exact ceil(log2(x)): the smallest power of two >= x
        (DeepSeek's ``2^ceil(log2(amax/6))`` scale).
      * ``"floor"``   -> E, the largest power of two <= x (OCP MX scale).
      * ``"nearest"`` -> E + (F >= 2^22): nearest power of two by value, a midpoint
        (1.5 * 2^E) rounds up (1.5 -> 2, 3 -> 4, 0.75 -> 1), as ml_dtypes float8_e8m0fnu does.
        Known difference: for float32 subnormals in (2^-127, 1.5*2^-127) ml_dtypes 0.6 returns
        code 1 (it rounds the raw bits), this function returns the nearer code 0.
    The code is E' + 127 clamped to [0, 254], so tiny values give code 0 (2^-127) and huge ones
    254 (2^127) -- never the NaN code 255.

    Constraints: float dtype (float32; float16/bfloat16/float64 converted first).  NaN or +-inf
    raise ValueError.  x <= 0 (including -0.0) gives code 0: callers use that for all-zero
    blocks.
    """
    if rounding not in UE8M0_ROUNDINGS:
        raise ValueError(f"rounding={rounding!r}; use one of {UE8M0_ROUNDINGS}")
    x = _as_float32(x)
    e, f = _float32_log2_parts(np.maximum(x, np.float32(0)))
    if rounding == "ceil":
        e = e + (f != 0)
    elif rounding == "nearest":
        e = e + (f >= (1 << 22))
    code = np.clip(e + 127, 0, 254)
    return np.where(x > 0, code, 0).astype(np.uint8)


def e4m3_encode(x):
    """Round float values to E4M3FN codes (uint8), round to nearest even, saturating at 448.

    Recipe (all exact float32 steps, a GPU kernel can mirror it):
      1. a = min(|x|, 448)   -- clamped BEFORE rounding, so the NaN codes 0x7F/0xFF never appear
      2. e = max(floor(log2(a)), -6)   (from the float32 bits; -6 is the smallest normal exponent)
      3. k = rint_even(a / 2^(e-3))    -- an integer in 0..16 (a / 2^(e-3) is exact)
      4. code = (e + 6) * 8 + k        -- k < 8 only when e = -6 (subnormal); k = 16 carries
                                          into the next exponent; 448 -> 0x7E
      5. set bit 7 when x is negative (including -0.0 and negatives that round to 0)

    Constraints: float dtype (float32; float16/bfloat16/float64 converted first).  NaN raises
    ValueError.  +-inf is accepted and saturates to +-448 like PTX ``cvt.rn.satfinite``.
    """
    x = _as_float32(x, allow_inf=True)
    a = np.minimum(np.abs(x), E4M3_MAX)
    e, _ = _float32_log2_parts(a)
    e = np.maximum(e, -6)
    step = np.ldexp(np.float32(1.0), (e - 3).astype(np.int32)).astype(np.float32)
    k = np.rint(a / step).astype(np.int64)
    code = (e + 6) * 8 + k
    return (code | (np.signbit(x).astype(np.int64) << 7)).astype(np.uint8)


def e4m3_decode(codes):
    """Decode E4M3FN codes (uint8) to float32 (exact); 0x7F and 0xFF decode to NaN.

    value = (-1)^s * 2^(max(e,1) - 10) * (e == 0 ? m : 8 + m), with s, e, m the fields above;
    0x7F gives +NaN and 0xFF -NaN (sign bit kept, bit-identical to ml_dtypes).

    Constraints: integer codes in 0..255 (TypeError for other dtypes).
    """
    c = _as_codes(codes, "codes", 256).astype(np.int32)
    e = (c >> 3) & 0xF
    m = c & 0x7
    significand = np.where(e == 0, m, 8 + m).astype(np.float32)
    mag = np.ldexp(significand, np.maximum(e, 1) - 10).astype(np.float32)
    mag = np.where((c & 0x7F) == 0x7F, np.float32(np.nan), mag)
    return np.where(c & 0x80, -mag, mag).astype(np.float32)   # 0xFF is -NaN, as in ml_dtypes
