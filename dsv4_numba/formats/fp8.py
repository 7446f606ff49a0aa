"""FP8 E4M3 with one float32 scale per block of the last axis (DeepSeek-V3.2 indexer q / k).

    codes   uint8   [..., D]                 E4M3FN bytes (see scales.py for the bit layout)
    scales  float32 [..., ceil(D / block)]   decode multipliers
    value[..., d] = e4m3_decode(codes[..., d]) * scales[..., d // block]      (float32)

Encoding follows V3.2's ``act_quant``: s = max(amax, 1e-4) / 448 per block, codes = e4m3(x / s)
with round-to-nearest-even and saturation (the E4M3 encoder clamps to 448, never producing NaN).
"""
from dataclasses import dataclass

import numpy as np

from .scales import e4m3_decode, e4m3_encode

FP8_BLOCK = 128                      # V3.2: one float32 scale per 128 values along D
FP8_AMAX_FLOOR = np.float32(1e-4)    # V3.2 act_quant clamps amax to at least 1e-4
E4M3_MAX = np.float32(448.0)


def _typestr(a):
    cai = getattr(a, "__cuda_array_interface__", None)
    return np.dtype(cai["typestr"]) if cai is not None else np.asarray(a).dtype


# ----------------------------------------------------------------------------------------------
@dataclass
class QuantizedFP8:
    """E4M3 codes with one float32 scale per ``block`` values of the last axis (DeepSeek-V3.2).

    Fields (NumPy arrays, or device arrays exposing ``__cuda_array_interface__``):
      codes   uint8   [..., D]                E4M3FN bytes (0x7F / 0xFF are NaN)
      scales  float32 [..., ceil(D / block)]  decode multipliers, positive and finite
      block   int, values per scale (128 in V3.2; D < block means one scale per row)

    value[..., d] = e4m3_decode(codes[..., d]) * scales[..., d // block]  (float32).
    Shapes and dtypes are checked on construction (values by the pipeline, before launch).
    """
    codes: object
    scales: object
    block: int = FP8_BLOCK

    def __post_init__(self):
        if isinstance(self.block, bool) or not isinstance(self.block, (int, np.integer)) \
                or self.block <= 0:
            raise ValueError(f"block must be a positive int, got {self.block!r}")
        self.block = int(self.block)
        for name, arr, dt in (("codes", self.codes, np.uint8), ("scales", self.scales, np.float32)):
            if not (isinstance(arr, np.ndarray) or hasattr(arr, "__cuda_array_interface__")):
                raise TypeError(f"QuantizedFP8.{name} must be a NumPy or device array, got "
                                f"{type(arr).__name__}")
            got = _typestr(arr)
            if got != dt:
                raise TypeError(f"QuantizedFP8.{name} must be {np.dtype(dt)}, got {got}")
        cs, ss = tuple(self.codes.shape), tuple(self.scales.shape)
        if len(cs) == 0:
            raise ValueError("QuantizedFP8.codes needs at least one axis (D, the last)")
        want = cs[:-1] + (-(-cs[-1] // self.block),)
        if ss != want:
            raise ValueError(f"QuantizedFP8.scales has shape {ss}, expected {want} (one scale per "
                             f"{self.block} codes of codes' last axis, shape {cs})")

    @property
    def shape(self) -> tuple:
        """Logical shape (that of ``codes``)."""
        return tuple(int(d) for d in self.codes.shape)

    @property
    def blocks_per_row(self) -> int:
        return int(self.scales.shape[-1])


def quantize_fp8(x, block: int = FP8_BLOCK) -> QuantizedFP8:
    """NumPy spec of V3.2's ``act_quant``: per block of the last axis, s = max(amax, 1e-4) / 448
    (float32), codes = e4m3_encode(x / s) (RNE, saturating). ``x``: finite floats, any shape."""
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("quantize_fp8 needs finite input (NaN or inf found)")
    D = x.shape[-1]
    nb = -(-D // block)
    pad = np.zeros(x.shape[:-1] + (nb * block - D,), np.float32)
    blocks = np.concatenate([x, pad], axis=-1).reshape(x.shape[:-1] + (nb, block))
    amax = np.maximum(np.abs(blocks).max(axis=-1), FP8_AMAX_FLOOR)
    s = (amax / E4M3_MAX).astype(np.float32)
    codes = e4m3_encode(blocks / s[..., None]).reshape(x.shape[:-1] + (nb * block,))[..., :D]
    return QuantizedFP8(np.ascontiguousarray(codes), s, block)


def dequantize_fp8(q: QuantizedFP8, with_scales: bool = True) -> np.ndarray:
    """NumPy spec of the decode: float32 e4m3(code) [* scale], one float32 multiply."""
    v = e4m3_decode(q.codes)
    if not with_scales:
        return v
    s = np.repeat(q.scales, q.block, axis=-1)[..., :q.shape[-1]]
    return (v * s).astype(np.float32)
