"""Known-wrong decoders that the format tests must reject.

They exist so the tests prove they have teeth: a check that also passes one of these is too
weak.  The bug modelled here is reading the 3 magnitude bits of an E2M1 code as an integer::

    code bits  s | e e m        right: 0, 0.5, 1, 1.5, 2, 3, 4, 6   (exponent + mantissa)
                                wrong: 0, 1,   2, 3,   4, 5, 6, 7   (just the integer eem)

It keeps the order of magnitudes, so a top-k over the decoded values looks plausible -- this
is the bug that selected wrong indexer blocks.  Never use these outside tests.
"""

import numpy as np

from .blocks import _dequantize_with
from .e2m1 import _as_codes


def e2m1_decode_integer_wrong(codes):
    """WRONG on purpose: decode E2M1 codes as sign * (code & 7) (float32).

    Constraints: integer codes 0..15, as for e2m1_decode.
    """
    c = _as_codes(codes, "codes", 16)
    mag = (c & 0x7).astype(np.float32)
    return np.where(c & 0x8, -mag, mag).astype(np.float32)


def dequantize_integer_wrong(q, dtype=np.float32):
    """WRONG on purpose: dequantize() with e2m1_decode_integer_wrong as the element decode.

    Constraints: as for dequantize.
    """
    return _dequantize_with(q, e2m1_decode_integer_wrong, dtype)
