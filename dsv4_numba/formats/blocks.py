"""Block-scaled FP4 tensors: NVFP4, MXFP4 and the DeepSeek-V4 FP4 flavour.

A row of n values along the LAST axis is cut into blocks of ``block`` elements; each block
gets one 8-bit scale, each element one 4-bit E2M1 code::

    logical row x[0:n] (float32)
    | block 0: x[0:B] | block 1: x[B:2B] | ... |          B = 16 (nvfp4) or 32 (mxfp4, dsv4_fp4)

    data   uint8 [..., n/2]  byte i = code[2i] | code[2i+1] << 4        (see e2m1.py)
           | c1 c0 | c3 c2 | c5 c4 | ...                                  (high | low nibble)
    scales uint8 [..., n/B]  one code per block: UE8M0 (mxfp4, dsv4_fp4) or E4M3 (nvfp4)
    global_scale  float32 scalar (nvfp4 only; None otherwise)

    value[i] = e2m1(code[i]) * scale(scales[i // B]) [* global_scale]

============  =====  ===========  ============  =========================================
format        block  scale        global scale  block scale s chosen from amax_b = max|x|
============  =====  ===========  ============  =========================================
dsv4_fp4      32     UE8M0        no            2^ceil(log2(amax_b / 6))   (DeepGEMM / V4)
mxfp4         32     UE8M0        no            2^(floor(log2(amax_b)) - 2)  (OCP MX v1.0)
nvfp4         16     E4M3 (>= 0)  yes, float32  e4m3(amax_b * (2688/amax) / 6), see quantize
============  =====  ===========  ============  =========================================

The scale layout here is plain row-major [..., n/B]; the tensor-core 128x4 swizzle is in
``sf_layout.py``.
"""

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .e2m1 import _as_float32, e2m1_decode, e2m1_encode, pack_fp4, unpack_fp4
from .scales import (E4M3_MAX, _float32_log2_parts, e4m3_decode, e4m3_encode,
                     ue8m0_decode, ue8m0_encode)

NVFP4_GLOBAL_AMAX = np.float32(448.0 * 6.0)   # 2688: largest E4M3 scale times largest E2M1
_SIX = np.float32(6.0)
_OUTPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


@dataclass(frozen=True)
class FormatSpec:
    """Static description of one block-scaled FP4 format.

    name: key in FORMATS; block: elements per scale (16 or 32); scale_kind: 'ue8m0' or 'e4m3';
    has_global_scale: whether a per-tensor float32 decode scale is applied after the block scale.
    """
    name: str
    block: int
    scale_kind: str
    has_global_scale: bool


FORMATS = {
    "nvfp4": FormatSpec("nvfp4", 16, "e4m3", True),
    "mxfp4": FormatSpec("mxfp4", 32, "ue8m0", False),
    "dsv4_fp4": FormatSpec("dsv4_fp4", 32, "ue8m0", False),
}

_SCALE_DECODERS = {"ue8m0": ue8m0_decode, "e4m3": e4m3_decode}


def _spec(fmt):
    if fmt not in FORMATS:
        raise ValueError(f"unknown FP4 format {fmt!r}; use one of {sorted(FORMATS)}")
    return FORMATS[fmt]


@dataclass
class QuantizedFP4:
    """A block-quantized FP4 tensor (see the module docstring for the byte layout).

    Fields (``data`` and ``scales`` may also be device arrays exposing
    ``__cuda_array_interface__``, for the GPU stages; the NumPy functions here need NumPy):
      data          uint8 [..., n/2]     packed E2M1 codes, low nibble = even element
      scales        uint8 [..., n/block] one scale code per block (UE8M0 or E4M3 by ``fmt``)
      global_scale  np.float32 scalar for nvfp4 (a decode multiplier), None for other formats
      fmt           a key of FORMATS
      shape         logical shape (..., n) of the unquantized tensor; n a multiple of block

    Constraints are checked on construction (ValueError/TypeError naming what to fix).
    """
    data: np.ndarray
    scales: np.ndarray
    global_scale: object
    fmt: str
    shape: tuple

    def __post_init__(self):
        spec = _spec(self.fmt)
        self.shape = tuple(int(d) for d in self.shape)
        if len(self.shape) == 0 or self.shape[-1] % spec.block:
            raise ValueError(f"shape {self.shape} needs a last axis that is a multiple of "
                             f"{spec.block} for {self.fmt}")
        lead, n = self.shape[:-1], self.shape[-1]
        for name, arr, want in (("data", self.data, lead + (n // 2,)),
                                ("scales", self.scales, lead + (n // spec.block,))):
            cai = getattr(arr, "__cuda_array_interface__", None)
            if cai is not None:   # a device array (kernels accept these; the NumPy spec does not)
                if np.dtype(cai["typestr"]) != np.uint8:
                    raise TypeError(f"{name} must hold uint8, got {cai['typestr']}")
            elif not isinstance(arr, np.ndarray) or arr.dtype != np.uint8:
                raise TypeError(f"{name} must be a uint8 numpy array (or a uint8 device array), "
                                f"got {getattr(arr, 'dtype', type(arr))}")
            if tuple(arr.shape) != want:
                raise ValueError(f"{name} has shape {arr.shape}, expected {want} for logical "
                                 f"shape {self.shape} in {self.fmt}")
        if spec.has_global_scale:
            if self.global_scale is None:
                raise ValueError(f"{self.fmt} needs a float32 global_scale, got None")
            self.global_scale = np.float32(self.global_scale)
        elif self.global_scale is not None:
            raise ValueError(f"{self.fmt} has no global scale; pass global_scale=None")

    @property
    def spec(self):
        """The FormatSpec of ``fmt``."""
        return FORMATS[self.fmt]

    @property
    def block(self):
        """Elements per block scale (16 or 32)."""
        return self.spec.block

    @property
    def codes(self):
        """Unpacked E2M1 codes, uint8 of the logical shape."""
        return unpack_fp4(self.data)


def _ue8m0_block_scales(amax_b, fmt):
    """UE8M0 scale codes for dsv4_fp4 (ceil of amax/6) and mxfp4 (floor(log2 amax) - 2)."""
    if fmt == "dsv4_fp4":
        return ue8m0_encode(amax_b / _SIX, "ceil")            # amax_b == 0 -> code 0
    e, _ = _float32_log2_parts(amax_b)
    code = np.clip(e - 2 + 127, 0, 254)                       # exponent clamped to [-127, 127]
    return np.where(amax_b > 0, code, 0).astype(np.uint8)


def quantize(x, fmt, global_amax=None):
    """Quantize ``x`` [..., n] along its last axis to the block-scaled FP4 format ``fmt``.

    Constraints:
      * ``fmt`` in FORMATS; n (last axis) a multiple of the block (16 nvfp4, 32 otherwise),
        at least one dimension -- otherwise ValueError (pad the last axis).
      * dtype float32; float16, ml_dtypes.bfloat16 and float64 are converted to float32 first.
      * NaN or +-inf raise ValueError.
      * nvfp4: the tensor amax must satisfy 2688/amax < FLT_MAX (amax > ~7.9e-36), else
        ValueError.
      * ``global_amax`` (nvfp4 only; None: computed): use this float32 value as the tensor amax
        of step 1 (a calibrated or already known amax; it must be finite and >= 0, ValueError
        otherwise). Blocks whose amax exceeds it get the largest scale and saturate at +-6.

    Every intermediate is float32 and the order below is the bitwise contract for GPU kernels
    (b indexes blocks, amax_b = max |x| over the block, computed exactly in float32):

    dsv4_fp4 (block 32, UE8M0):
      1. if amax_b == 0: scale code 0 (decodes to 2^-127) and all element codes 0
      2. v = f32(amax_b / 6.0f);  code = ue8m0_encode(v, "ceil")   (exact ceil(log2 v) from bits)
      3. s = 2^(code - 127) as float32 (2^-127 is a subnormal: do not flush denormals)
      4. element code = e2m1_encode(f32(x / s))  (RNE, saturating: x/s may be slightly above 6)
    mxfp4 (block 32, UE8M0, OCP MX v1.0):
      1. if amax_b == 0: scale code 0 and all element codes 0
      2. e = floor(log2 amax_b) - 2 (from the float32 bits; 2 = emax of E2M1),
         clamped to [-127, 127]; code = e + 127
      3. element code = e2m1_encode(f32(x / 2^e))  (|x / 2^e| < 8; the part above 6 saturates)
    nvfp4 (block 16, E4M3 block scale, float32 global scale):
      1. amax = max |x| over the WHOLE tensor (all axes), or f32(global_amax) when given
      2. amax == 0: gs_enc = 1.0f, global_scale = 1.0f;
         else gs_enc = f32(2688.0f / amax), global_scale = f32(amax / 2688.0f)
      3. sb = f32(f32(gs_enc * amax_b) / 6.0f);  code = e4m3_encode(min(sb, 448.0f))
      4. s_b = e4m3_decode(code); if s_b == 0: all element codes 0
      5. r = f32(gs_enc / s_b);  element code = e2m1_encode(f32(x * r))  (saturating)

    For the UE8M0 formats x / s is bitwise equal to x * 2^(127 - code): 2^(127 - code) is a
    float32 for every code 0..254 and both are the correctly rounded same real number.
    Returns a QuantizedFP4.
    """
    spec = _spec(fmt)
    x = _as_float32(x)
    if x.ndim == 0 or x.shape[-1] % spec.block:
        raise ValueError(f"{fmt} quantizes the last axis in blocks of {spec.block}; got shape "
                         f"{x.shape}: pad the last axis to a multiple of {spec.block}")
    lead, n = x.shape[:-1], x.shape[-1]
    blocks = x.reshape(lead + (n // spec.block, spec.block))
    amax_b = np.max(np.abs(blocks), axis=-1, initial=np.float32(0))

    global_scale = None
    if global_amax is not None:
        if not spec.has_global_scale:
            raise ValueError(f"{fmt} has no global scale; global_amax is for nvfp4 only")
        global_amax = np.float32(global_amax)
        if not (np.isfinite(global_amax) and global_amax >= 0):
            raise ValueError(f"global_amax must be finite and >= 0, got {global_amax!r}")
    if spec.scale_kind == "ue8m0":
        scale_codes = _ue8m0_block_scales(amax_b, fmt)
        s = ue8m0_decode(scale_codes)
        y = blocks / s[..., None]
        keep = amax_b > 0
    else:
        amax = np.max(amax_b, initial=np.float32(0)) if global_amax is None else global_amax
        if amax == 0:
            gs_enc = global_scale = np.float32(1.0)
        else:
            with np.errstate(over="ignore"):
                gs_enc = np.float32(NVFP4_GLOBAL_AMAX / amax)
            if not np.isfinite(gs_enc):
                raise ValueError(f"nvfp4 tensor amax {amax!r} is too small: 2688/amax overflows "
                                 f"float32; scale the input up before quantizing")
            global_scale = np.float32(amax / NVFP4_GLOBAL_AMAX)
        sb = (gs_enc * amax_b) / _SIX
        scale_codes = e4m3_encode(np.minimum(sb, E4M3_MAX))
        s_b = e4m3_decode(scale_codes)
        keep = s_b > 0
        r = gs_enc / np.where(keep, s_b, np.float32(1.0))
        y = blocks * r[..., None]

    codes = np.where(keep[..., None], e2m1_encode(y), np.uint8(0)).reshape(x.shape)
    return QuantizedFP4(pack_fp4(codes), scale_codes, global_scale, fmt, x.shape)


def _dequantize_with(q, decode_e2m1, dtype):
    """Shared body of dequantize: ``decode_e2m1`` maps codes to float32 (swappable for tests)."""
    if not isinstance(q, QuantizedFP4):
        raise TypeError(f"expected a QuantizedFP4, got {type(q).__name__}")
    dtype = np.dtype(dtype)
    if dtype not in _OUTPUT_DTYPES:
        raise TypeError(f"dtype {dtype} not supported; use np.float32, np.float16 or "
                        f"ml_dtypes.bfloat16")
    spec = q.spec
    lead, n = q.shape[:-1], q.shape[-1]
    values = decode_e2m1(unpack_fp4(q.data)).astype(np.float32)
    values = values.reshape(lead + (n // spec.block, spec.block))
    scale = _SCALE_DECODERS[spec.scale_kind](q.scales)
    with np.errstate(over="ignore"):   # 6 * 2^127 overflows to inf: documented, not an error
        out = values * scale[..., None]
        if spec.has_global_scale:
            out = out * q.global_scale
        return out.reshape(q.shape).astype(dtype)


def dequantize(q, dtype=np.float32):
    """Decode a QuantizedFP4 to an array of its logical shape.

    value = f32(f32(e2m1(code) * scale) * global_scale), the global multiply for nvfp4 only,
    all in float32, then cast to ``dtype`` with round-to-nearest-even (float16 may overflow to
    inf).

    Constraints: ``dtype`` is np.float32, np.float16 or ml_dtypes.bfloat16 (TypeError
    otherwise).  A NaN scale code (UE8M0 0xFF, E4M3 0x7F/0xFF) makes its whole block NaN; the
    codes ``quantize`` writes for all-zero blocks decode to zeros, never NaN.
    """
    return _dequantize_with(q, e2m1_decode, dtype)
