"""Number formats and byte layouts as executable NumPy specs.

Every GPU kernel in dsv4_numba is tested bitwise against these functions, and only this
package knows how numbers are laid out in bits:

  e2m1.py       E2M1 (FP4) codes, RNE encode with saturation, nibble packing
  scales.py     UE8M0 and E4M3 scale/element formats, encoded from float32 bits
  blocks.py     block-scaled FP4 tensors: nvfp4, mxfp4, dsv4_fp4 (quantize/dequantize)
  sf_layout.py  the 128x4 swizzled scale-factor layout of SM100 tensor cores
  kv_cache.py   FP8 KV-cache token layouts (V3.2 656 B, V4 MODEL1 584 B)
  wrong.py      known-wrong decoders the tests must reject
"""

from .blocks import (FORMATS, NVFP4_GLOBAL_AMAX, FormatSpec, QuantizedFP4, dequantize,
                     quantize)
from .e2m1 import E2M1_MAX, E2M1_VALUES, e2m1_decode, e2m1_encode, pack_fp4, unpack_fp4
from .kv_cache import (KV_MODEL1_BYTES, KV_V32_BYTES, model1_page_to_tokens,
                       model1_tokens_to_page, pack_kv_model1, pack_kv_v32, unpack_kv_model1,
                       unpack_kv_v32)
from .scales import (E4M3_MAX, e4m3_decode, e4m3_encode, ue8m0_decode, ue8m0_encode)
from .sf_layout import swizzle_scales, swizzled_offset, swizzled_shape, unswizzle_scales
from .wrong import dequantize_integer_wrong, e2m1_decode_integer_wrong

from .fp8 import FP8_BLOCK, QuantizedFP8, dequantize_fp8, quantize_fp8  # noqa: E402

__all__ = [
    "E2M1_MAX", "E2M1_VALUES", "e2m1_encode", "e2m1_decode", "pack_fp4", "unpack_fp4",
    "E4M3_MAX", "ue8m0_decode", "ue8m0_encode", "e4m3_encode", "e4m3_decode",
    "FORMATS", "FormatSpec", "NVFP4_GLOBAL_AMAX", "QuantizedFP4", "quantize", "dequantize",
    "swizzle_scales", "unswizzle_scales", "swizzled_offset", "swizzled_shape",
    "KV_V32_BYTES", "KV_MODEL1_BYTES", "pack_kv_v32", "unpack_kv_v32", "pack_kv_model1",
    "unpack_kv_model1", "model1_tokens_to_page", "model1_page_to_tokens",
    "e2m1_decode_integer_wrong", "dequantize_integer_wrong",
    "FP8_BLOCK", "QuantizedFP8", "quantize_fp8", "dequantize_fp8",
]
