"""Device-side float bit helpers shared by every stage (register moves once compiled).

Kernels see element kinds (``runtime.F32``, ``F16``, ``BF16``) as an argument; bfloat16 travels as
its uint16 bit pattern, so its conversions are spelled out here (round to nearest even, NaN kept).
"""
import numpy as np
from numba import cuda, float32, uint32

from ..runtime import BF16, device


@device
def f32_bits(x):
    """The IEEE bits of a float32 (a register move once compiled)."""
    t = cuda.local.array(1, float32)
    t[0] = x
    return t.view(np.uint32)[0]


@device
def bits_f32(u):
    t = cuda.local.array(1, uint32)
    t[0] = u
    return t.view(np.float32)[0]


@device
def bf16_bits(x):
    """float32 -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN."""
    u = f32_bits(x)
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16((u >> 16) | 0x40)
    return np.uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)


@device
def load_as_f32(x, i, kind):
    """Element i of an input of dtype kind (bfloat16 arrives as uint16 bits) as float32."""
    if kind == BF16:
        return bits_f32(uint32(x[i]) << 16)
    return float32(x[i])


@device
def store_from_f32(out, i, v, kind):
    """Round float32 v to the output dtype kind and store it (bfloat16 as uint16 bits)."""
    if kind == BF16:
        out[i] = bf16_bits(v)
    else:
        out[i] = v   # float32 as is; float16 rounds to nearest even (cvt.rn.f16.f32)


@device
def f16_bits_to_f32(h):
    t = cuda.local.array(1, np.uint16)
    t[0] = np.uint16(h)
    return float32(t.view(np.float16)[0])
