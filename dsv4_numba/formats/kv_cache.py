"""FP8 KV-cache token layouts of the sparse MLA decode kernels (FlashMLA ``tests/quant.py``).

One cached token = one latent KV vector: the "nope" dims stored as E4M3 with per-tile scales,
the 64 RoPE dims kept as BF16.  All multi-byte fields are little-endian.

V3.2 -- 656 bytes per token (512 nope dims, 4 tiles of 128, float32 scales)::

    byte  0                 512        528                       656
          +-----------------+----------+-------------------------+
          | 512 x E4M3 nope | 4 x fp32 | 64 x BF16 rope          |
          |  tile t = dims  |  scale t |  (2 B each)             |
          |  [128t,128t+128)|  (4 B)   |                         |
          +-----------------+----------+-------------------------+
    nope[d] = e4m3(code[d]) * scale[d // 128]

V4 "MODEL1" -- 584 bytes per token (448 nope dims, 7 tiles of 64, UE8M0 scales)::

    byte  0                 448                 576         583  584
          +-----------------+-------------------+-----------+----+
          | 448 x E4M3 nope | 64 x BF16 rope    | 7 x UE8M0 | 0  |
          |                 | (128 B)           | scale t   |pad |
          +-----------------+-------------------+-----------+----+
    nope[d] = e4m3(code[d]) * 2^(scale[d // 64] - 127)

The MODEL1 record above is the per-token view.  In FlashMLA's paged cache (tests/quant.py) a
page of ``block_size`` tokens does NOT store these records back to back: it holds first the
576-byte [nope | rope] parts of all tokens, then the 8-byte [7 scales | pad] parts of all
tokens, and the page is padded to a multiple of 576 bytes (``model1_tokens_to_page``).  The
facts file (shared/reference/dsv4-facts.md, section 2) describes only the 584-byte count; the
page arrangement was read from FlashMLA's tests/quant.py.  Whether other engines
(FlashInfer's SM120 "584 B/token packed SWA cache") interleave per token was not checked.

Encoders (the layouts do not fix them; decoders read any stored scale):
  * V3.2: scale = f32(max(amax_tile, 1e-4) / 448), a plain float32 (DeepSeek V3.2
    ``act_quant`` without ``scale_fmt``).  FlashMLA's test encoder instead stores the power of
    two 2^ceil(log2(max(amax/448, 1e-4))) in the same float32 field.
  * MODEL1: scale = 2^ceil(log2(max(f32(amax_tile / 448), 1e-4))) as in FlashMLA, with the ceil
    taken exactly from the float32 bits.  FlashMLA takes torch's float32 log2, which for a
    value just above a power of two 2^k with |k| >= 4 rounds to exactly k (log2 of 2^k(1+2^-23)
    is k + 1.7e-7, below half a float32 ulp of k); such rare tiles get one scale step less
    there.  (Reasoned from float32 precision, not run against torch.)
"""

import ml_dtypes
import numpy as np

from .e2m1 import _as_codes, _as_float32
from .scales import E4M3_MAX, e4m3_decode, e4m3_encode, ue8m0_decode, ue8m0_encode

KV_V32_BYTES = 656
KV_MODEL1_BYTES = 584
MODEL1_PAGE_ALIGN = 576
_ROPE_DIMS = 64
_AMAX_FLOOR = np.float32(1e-4)


def _check_pair(nope, rope, d_nope):
    nope = _as_float32(nope, "nope")
    rope = _as_float32(rope, "rope")
    if nope.ndim < 1 or nope.shape[-1] != d_nope:
        raise ValueError(f"nope must be [..., {d_nope}], got shape {nope.shape}")
    if rope.shape != nope.shape[:-1] + (_ROPE_DIMS,):
        raise ValueError(f"rope must be [..., {_ROPE_DIMS}] with the same leading dims as nope "
                         f"{nope.shape[:-1]}, got shape {rope.shape}")
    return nope, rope


def _bf16_bytes(rope):
    """float32 [..., 64] -> little-endian BF16 bytes uint8 [..., 128] (RNE via ml_dtypes)."""
    bits = rope.astype(ml_dtypes.bfloat16).view(np.uint16).astype("<u2")
    return bits.view(np.uint8).reshape(rope.shape[:-1] + (2 * rope.shape[-1],))


def _bf16_from_bytes(raw):
    """little-endian BF16 bytes uint8 [..., 2d] -> float32 [..., d] (exact)."""
    bits = np.ascontiguousarray(raw).view("<u2").astype(np.uint16)
    return bits.view(ml_dtypes.bfloat16).astype(np.float32)


def _check_buf(buf, nbytes):
    buf = np.asarray(buf)
    if buf.dtype != np.uint8:
        raise TypeError(f"buf has dtype {buf.dtype}; pass the uint8 KV cache bytes")
    if buf.ndim < 1 or buf.shape[-1] != nbytes:
        raise ValueError(f"buf must be [..., {nbytes}] bytes per token, got shape {buf.shape}")
    return buf


def pack_kv_v32(nope, rope):
    """Pack V3.2 KV tokens: nope float32 [..., 512], rope [..., 64] -> uint8 [..., 656].

    Per tile t of 128 dims (float32 throughout):
      1. amax = max(max |nope[tile]|, 1e-4f)
      2. scale = f32(amax / 448.0f)                     -> bytes [512 + 4t, 516 + 4t)
      3. code = e4m3_encode(f32(nope / scale))           (saturates at 448, never NaN)
    rope is rounded to BF16 (RNE) -> bytes [528, 656).

    Constraints: float dtypes (converted to float32 first), no NaN/inf (ValueError), matching
    leading dims.
    """
    nope, rope = _check_pair(nope, rope, 512)
    lead = nope.shape[:-1]
    tiles = nope.reshape(lead + (4, 128))
    amax = np.maximum(np.max(np.abs(tiles), axis=-1), _AMAX_FLOOR)
    scale = amax / E4M3_MAX
    codes = e4m3_encode(tiles / scale[..., None])
    out = np.zeros(lead + (KV_V32_BYTES,), dtype=np.uint8)
    out[..., 0:512] = codes.reshape(lead + (512,))
    out[..., 512:528] = scale.astype("<f4").view(np.uint8).reshape(lead + (16,))
    out[..., 528:656] = _bf16_bytes(rope)
    return out


def unpack_kv_v32(buf):
    """Decode V3.2 tokens uint8 [..., 656] -> (nope f32 [..., 512], rope f32 [..., 64]).

    nope = f32(e4m3_decode(code) * scale_tile); rope is the stored BF16 widened exactly.
    Constraints: uint8 with last axis 656 (TypeError/ValueError otherwise).
    """
    buf = _check_buf(buf, KV_V32_BYTES)
    lead = buf.shape[:-1]
    values = e4m3_decode(buf[..., 0:512]).reshape(lead + (4, 128))
    scale = np.ascontiguousarray(buf[..., 512:528]).view("<f4").astype(np.float32)
    nope = (values * scale[..., None]).reshape(lead + (512,))
    return nope, _bf16_from_bytes(buf[..., 528:656])


def pack_kv_model1(nope, rope):
    """Pack V4 MODEL1 KV tokens: nope float32 [..., 448], rope [..., 64] -> uint8 [..., 584].

    Per tile t of 64 dims (float32 throughout):
      1. v = max(f32(max |nope[tile]| / 448.0f), 1e-4f)
      2. code_t = ue8m0_encode(v, "ceil"); s = 2^(code_t - 127)      -> byte 576 + t
      3. code = e4m3_encode(f32(nope / s))     (|nope / s| <= 448 up to rounding; saturates)
    rope -> BF16 (RNE) at bytes [448, 576); byte 583 is 0.

    Constraints: float dtypes (converted to float32 first), no NaN/inf (ValueError), matching
    leading dims.
    """
    nope, rope = _check_pair(nope, rope, 448)
    lead = nope.shape[:-1]
    tiles = nope.reshape(lead + (7, 64))
    v = np.maximum(np.max(np.abs(tiles), axis=-1) / E4M3_MAX, _AMAX_FLOOR)
    scale_codes = ue8m0_encode(v, "ceil")
    codes = e4m3_encode(tiles / ue8m0_decode(scale_codes)[..., None])
    out = np.zeros(lead + (KV_MODEL1_BYTES,), dtype=np.uint8)
    out[..., 0:448] = codes.reshape(lead + (448,))
    out[..., 448:576] = _bf16_bytes(rope)
    out[..., 576:583] = scale_codes
    return out


def unpack_kv_model1(buf):
    """Decode V4 MODEL1 tokens uint8 [..., 584] -> (nope f32 [..., 448], rope f32 [..., 64]).

    nope = e4m3_decode(code) * 2^(scale_code - 127), exact in float32 (and in BF16, which is
    what FlashMLA's reference computes in); scale code 0xFF gives a NaN tile.  The pad byte is
    ignored.  Constraints: uint8 with last axis 584 (TypeError/ValueError otherwise).
    """
    buf = _check_buf(buf, KV_MODEL1_BYTES)
    lead = buf.shape[:-1]
    values = e4m3_decode(buf[..., 0:448]).reshape(lead + (7, 64))
    scale = ue8m0_decode(buf[..., 576:583])
    nope = (values * scale[..., None]).reshape(lead + (448,))
    return nope, _bf16_from_bytes(buf[..., 448:576])


def model1_tokens_to_page(tokens):
    """Arrange the 584-byte records of one page's tokens uint8 [B, 584] as FlashMLA's paged cache.

    page = [B x 576 B (nope|rope)] [B x 8 B (7 scales|pad)] [zeros up to a multiple of 576]
    Returns uint8 [ceil(B*584 / 576) * 576].  Constraints: 2-D uint8 [B, 584].
    """
    tokens = _check_buf(tokens, KV_MODEL1_BYTES)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [block_size, 584], got shape {tokens.shape}")
    b = tokens.shape[0]
    size = -(-b * KV_MODEL1_BYTES // MODEL1_PAGE_ALIGN) * MODEL1_PAGE_ALIGN
    page = np.zeros(size, dtype=np.uint8)
    page[: b * 576] = tokens[:, :576].reshape(-1)
    page[b * 576: b * KV_MODEL1_BYTES] = tokens[:, 576:].reshape(-1)
    return page


def model1_page_to_tokens(page, block_size):
    """Inverse of ``model1_tokens_to_page``: one page's bytes -> uint8 [block_size, 584].

    Constraints: 1-D uint8 page of at least block_size * 584 bytes.
    """
    page = _as_codes(page, "page", 256)
    if page.ndim != 1 or page.size < block_size * KV_MODEL1_BYTES:
        raise ValueError(f"page must be 1-D with >= {block_size * KV_MODEL1_BYTES} bytes for "
                         f"block_size={block_size}, got shape {page.shape}")
    b = block_size
    data = page[: b * 576].reshape(b, 576)
    tail = page[b * 576: b * KV_MODEL1_BYTES].reshape(b, 8)
    return np.concatenate([data, tail], axis=1)
