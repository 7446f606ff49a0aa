"""E2M1 (FP4) element format: code table, encode/decode, and nibble packing.

One E2M1 number is 4 bits: sign, 2 exponent bits (bias 1), 1 mantissa bit.
There is no Inf and no NaN::

    bit   3    2   1    0
        +----+-------+----+
        | s  |  e e  | m  |      value = (-1)^s * 2^(e-1) * (1 + m/2)   e > 0
        +----+-------+----+      value = (-1)^s * 0.5 * m               e = 0 (subnormal)

    code  0    1    2    3    4    5    6    7      (8..15: same magnitudes, negative)
    value 0   0.5  1.0  1.5  2.0  3.0  4.0  6.0     (code 8 is -0.0)

Two codes share one byte ("e2m1x2"); along the last axis the EVEN element sits in the LOW
nibble, the ODD element in the HIGH nibble (the layout of vLLM, DeepGEMM and the V4 reference)::

    byte i of the packed row:   bits 7..4 = code of element 2i+1 | bits 3..0 = code of element 2i

(PTX ``cvt.rn.satfinite.e2m1x2.f32 d, a, b`` puts ``a`` in the high nibble, so a kernel passes
a = element 2i+1, b = element 2i.)

Rounding used by ``e2m1_encode`` (round to nearest, ties to the even code, saturate at 6)::

    |x| in  [0,0.25] (0.25,0.75) [0.75,1.25] (1.25,1.75) [1.75,2.5] (2.5,3.5) [3.5,5] (5,inf)
    code       0         1           2           3           4          5        6       7

A closed bracket means the tie at that end goes to this (even) code.

This module is the only place (with the rest of ``dsv4_numba.formats``) that knows these bits.
"""

import ml_dtypes
import numpy as np

E2M1_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
     -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=np.float32,
)
E2M1_VALUES.setflags(write=False)

E2M1_MAX = np.float32(6.0)

# Boundaries between magnitude codes i and i+1.  At a tie the even code wins: when the lower
# code i is even the boundary itself belongs to code i (compare with ">"), when i is odd it
# belongs to code i+1 (compare with ">=").
_THRESHOLDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)

_FLOAT_INPUTS = (np.float32, np.float64, np.float16, ml_dtypes.bfloat16)


def _as_float32(x, name="x", allow_inf=False):
    """Return ``x`` as a float32 ndarray, rejecting NaN (and Inf unless ``allow_inf``).

    Constraints: dtype float32, float64, float16 or ml_dtypes.bfloat16 (python floats/lists are
    taken as float64).  float64 is rounded to float32 first (RNE), so a float64 input that is not
    a float32 value is rounded twice.  Integer and other dtypes raise TypeError.
    """
    arr = np.asarray(x)
    if arr.dtype not in [np.dtype(t) for t in _FLOAT_INPUTS]:
        raise TypeError(
            f"{name} has dtype {arr.dtype}; pass float32 (or float16, bfloat16, float64, "
            f"which are converted to float32)")
    arr = arr.astype(np.float32)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN; these formats cannot encode NaN, "
                         f"remove or replace it before quantizing")
    if not allow_inf and np.isinf(arr).any():
        raise ValueError(f"{name} contains +-inf; clamp it to a finite value before quantizing")
    return arr


def _as_codes(codes, name, limit):
    """Return integer ``codes`` as uint8, checking every code is < ``limit``.

    Constraints: any integer dtype (TypeError otherwise); values in [0, limit) (ValueError).
    """
    arr = np.asarray(codes)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} has dtype {arr.dtype}; pass uint8 codes")
    if arr.size and (arr.min() < 0 or arr.max() >= limit):
        raise ValueError(f"{name} must hold codes in [0, {limit - 1}]; "
                         f"got range [{arr.min()}, {arr.max()}]")
    return arr.astype(np.uint8)


def e2m1_encode(x):
    """Round float values to E2M1 codes (uint8, 0..15), same shape as ``x``.

    Constraints:
      * dtype float32; float16, ml_dtypes.bfloat16 and float64 are converted to float32 first.
      * Round to nearest, ties to the even code (0.25->0, 0.75->1.0, 1.25->1.0, 1.75->2,
        2.5->2, 3.5->4, 5->4); |x| > 6 saturates to code 7 / 15 (+-6).
      * The sign is kept: a negative value that rounds to zero, and -0.0, give code 8 (-0),
        as ml_dtypes.float4_e2m1fn does.
      * NaN or +-inf raise ValueError (saturation is for finite overshoot only; an inf means
        a bug upstream).
    """
    x = _as_float32(x)
    mag = np.abs(x)
    code = np.zeros(x.shape, dtype=np.uint8)
    for lower_code, t in enumerate(_THRESHOLDS):
        t = np.float32(t)
        crossed = (mag > t) if lower_code % 2 == 0 else (mag >= t)
        code += crossed.astype(np.uint8)
    return code | (np.signbit(x).astype(np.uint8) << 3)


def e2m1_decode(codes):
    """Decode E2M1 codes (integers 0..15, usually uint8) to float32 values (exact).

    Constraints: integer dtype (TypeError otherwise); codes outside 0..15 raise ValueError.
    Code 8 decodes to -0.0.
    """
    return E2M1_VALUES[_as_codes(codes, "codes", 16)]


def pack_fp4(codes):
    """Pack E2M1 codes two per byte along the last axis: [..., n] -> uint8 [..., n/2].

    Constraints: last axis length n even (ValueError: pad it); codes in 0..15.
    Element 2i goes to the low nibble of byte i, element 2i+1 to the high nibble.
    """
    codes = _as_codes(codes, "codes", 16)
    if codes.ndim == 0 or codes.shape[-1] % 2:
        raise ValueError(f"pack_fp4 needs an even last axis, got shape {codes.shape}; "
                         f"pad the last axis to an even length")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_fp4(packed):
    """Inverse of ``pack_fp4``: uint8 [..., m] -> E2M1 codes uint8 [..., 2m].

    Constraints: integer dtype with values in 0..255, at least one dimension.
    """
    packed = _as_codes(packed, "packed", 256)
    if packed.ndim == 0:
        raise ValueError("unpack_fp4 needs an array with a last axis, got a scalar")
    low = packed & 0x0F
    high = packed >> 4
    return np.stack([low, high], axis=-1).reshape(packed.shape[:-1] + (2 * packed.shape[-1],))
