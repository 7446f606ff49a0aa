"""FP4 decode and quantize stages: packed E2M1 + block scales <-> float32 / float16 / bfloat16.

The number format (bit for bit: ``dsv4_numba.formats``)
-------------------------------------------------------
E2M1 is a 4-bit float: 1 sign bit, 2 exponent bits (bias 1), 1 mantissa bit, no inf, no NaN::

    bit   3    2  1    0            code: 0    1    2    3    4    5    6    7
        [ s | e1 e0 | m ]           value: 0   0.5   1   1.5   2    3    4    6    (codes 8..15: -)

Two codes share a byte, the even (first) element in the LOW nibble::

    byte i of .data:   [ code[2i+1] (bits 7:4) | code[2i] (bits 3:0) ]

A block of 16 (nvfp4) or 32 (mxfp4, dsv4_fp4) consecutive elements of the last axis shares one
8-bit scale: UE8M0 (an exponent: 2^(c-127); 0xFF is NaN) or, for nvfp4, E4M3 (bias 7, max 448),
and nvfp4 multiplies a float32 per-tensor ``global_scale`` on top::

    value = e2m1(code) * scale(block code) [* global_scale]      (float32, in this order)

e2m1 x scale is exact in float32 (2 significant bits x 1 or 4); only the global-scale multiply
and the final rounding to bfloat16 / float16 round — so every implementation here is BITWISE
equal to ``formats.dequantize`` rounded to the output dtype, and quantize is bitwise equal to
``formats.quantize`` (it replays the spec's float32 recipe operation by operation).

Implementations (stage registry names ``decode_fp4`` / ``quantize_fp4``)
------------------------------------------------------------------------
* ``reference`` — one thread per packed byte (decode) or per block (quantize); plain arithmetic;
  runs on any GPU and under the CUDA simulator.
* ``production:sm_90a`` — decode: a warp takes 512 packed bytes per step, one 16-byte
  ``ld.global.nc`` per lane (512 contiguous bytes per warp instruction); the E2M1 -> bfloat16 bit
  patterns come from ``prmt`` on two 8-entry byte tables held in registers (no branches, no memory
  table), signs merged with one more ``prmt``, the scale applied by one float multiply per element
  (nvfp4: two — e2m1 x s is exact, x g is the spec's one rounding; folding g into s would round
  twice for the 1.5 x 2^k codes), pairs packed by ``cvt.rn.bf16x2.f32``; the 4x larger output is
  staged through a bank-conflict-free shared-memory tile so that every 16-byte ``st.global`` of
  the warp is contiguous too (writing straight from registers puts 64 B between lanes, which
  halved the bandwidth on the H100). Block scales decode by bit arithmetic: UE8M0 code << 23;
  E4M3 ``(code & 0x7F) << 20`` read as float32 times 2^120 (exact for normals and subnormals).
  Each (format, output dtype) pair is its own compiled kernel (closure constants), so the loop
  has no format branch and no runtime division.
  Quantize: one thread per 32 elements, 16-byte loads, the amax / scale in registers, the E2M1
  encode by float32 bit arithmetic (RNE via one fma below 1.0, a mantissa round above), one
  16-byte store of codes. nvfp4 first runs the global-amax pass: 16-byte grid-stride loads,
  integer max of the magnitude bits, warp butterfly, one atomicMax per block. Grid-stride loops
  over grids sized to fill the GPU.
  nvfp4 variant ``fused`` (``quantize_fp4(..., variant="fused")`` or
  ``DSV4_FP4_NVFP4_VARIANT=fused``): ONE persistent kernel, one
  CTA of 512 threads per SM; phase 1 reads the input once for the amax and keeps each CTA's
  first rounds in shared memory (224 KB per SM, 29.6 MB on an H100), a grid barrier (atomics,
  with a time-out that falls back to the two-pass path), phase 2 quantizes the other rounds
  newest-first (from L2 where they still are) and then the kept ones from shared memory.
  nvfp4 variants ``stream`` (the DEFAULT since the H100 measured it fastest: 96.1 us = 1565 GB/s
  incl. the amax pass at 7168 x 8192 bf16, vs 110.9 us twopass, 113.1 fused, 104.4 stream_l2) and
  ``stream_l2`` (same switch): the amax pass on a grid of exactly
  the resident CTAs, 4 independent 16-byte loads per thread per sweep, the whole grid sweeping
  the tensor back to front in lockstep; then a leaner quantize pass (also one wave) front to
  back, so it starts on what the amax pass read last (in L2). Its nvfp4 scale costs ~20
  instructions per 16-block instead of ~75 (division by 6 as a multiply + two fma, E4M3 code by
  bit arithmetic, r = gs / s from a per-CTA table, both scale codes in one 16-bit store) and its
  E2M1 encode 6 instead of ~10 (``e2m1_mag_step``: one float add onto a power of two whose ulp is
  the E2M1 step): 465 SASS instructions per 32-element chunk instead of 725 (sm_90a, bfloat16
  in). ``stream_l2`` also tags the loads with L2 eviction priorities (evict_last on the amax
  pass's last-read ~24 MB, evict_first elsewhere). Bitwise the spec; the helpers are checked for
  every float32 of their range on the GPU. Napkin math above ``make_quantize_stream_kernel``.
  The inline-PTX operations have simulator twins (and ``dsv4_numba.emu`` emulates the 16-byte
  global / shared accesses), so these exact kernels are tested bitwise on the CPU too.
* ``production:sm_100a`` — same data path, but decodes with the Blackwell conversion
  instructions (``cvt.rn.f16x2.e2m1x2``, ``cvt.rn.bf16x2.ue8m0x2``) and quantizes with
  ``cvt.rn.satfinite.e2m1x2.f32`` and ``cvt.rp.satfinite.ue8m0x2.f32``. It is compiled and assembled
  for sm_100a in CI; it has NOT run on Blackwell hardware here.

Napkin math (decode of a 7168 x 8192 tensor to bfloat16)
--------------------------------------------------------
Per element: 0.5 B packed in + 2 B out + 1/32 B (dsv4_fp4, mxfp4) or 1/16 B (nvfp4) of scales:
~2.53 B. 58.7 M elements -> 148.6 MB (nvfp4 150.4 MB) of unique traffic; at the ~3.0 TB/s an
H100 copies (read + write), ~50 us. Arithmetic per 8 elements: 4 table prmt + 4 merge prmt +
4 sign prmt + ~12 logic/shift, 8 fmul (16 for nvfp4), 4 cvt; per 32 elements 4 st.shared.v4 +
4 ld.shared.v4 + 4 st.global.v4 + 1 ld.global.v4: ~200 instructions per lane per warp step,
57 K warp steps -> ~11 M warp instructions, ~12 us of issue on 132 SMs -> memory-bound.
float32 output: 4.53 B/elem -> 266 MB -> ~89 us.
Quantize from bfloat16: 2 + 0.53 B/elem (149 MB, ~50 us at copy speed); ~15 instructions per
element (encode ~11) -> ~28 us of issue: memory-bound with less slack. nvfp4 adds the amax
pass: 117 MB read-only, ~40 us at ~3 TB/s, so ~1.8x the others' time unless the tensor amax is
given: ``quantize_fp4(x, "nvfp4", global_amax=a)`` skips the pass (bitwise the spec with the
same argument).
The fused variant reads the input from HBM about 1.45 times instead of 2 (napkin math above
``make_quantize_fused_kernel``): ~83 us expected, <= ~93 us if nothing is left in L2.
Measured on an H100 (2026-11-25, copy 3014 GB/s, CHANGELOG) with the format-specialized kernels:
decode -> bfloat16 56.2 us (dsv4_fp4, mxfp4) / 57.0 us (nvfp4), 88% of copy; -> float32 ~99 us
(~90%); quantize dsv4_fp4 / mxfp4 61.8 us (2.4 TB/s); nvfp4 111.3 us incl. the amax pass
(1.35 TB/s), 67.6 us with global_amax given. The fused nvfp4 variant did not pay on an H200
(101.9 vs 99.2 us two-pass); the stream variants (expected ~88-96 us on an H100, ~1.6 TB/s) have
not been timed yet: ``tools/bench_fp4.py --only nvfp4 --variants all`` times every variant.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
from numba import cuda, float32, int32, uint32, uint64

from .. import registry
from ..formats.blocks import FORMATS, QuantizedFP4
from ..hw.bits import (bf16_bits, bits_f32, f16_bits_to_f32, f32_bits, load_as_f32,
                       store_from_f32)
from ..hw.portable import shfl_xor
from ..runtime import (BF16, F16, F32, ArrayIO, detect_gpu, device, float_kind, is_device_array,
                       kernel)

try:  # the PTX bindings; absent only when numba itself runs as the simulator
    from ..hw import ops
except ImportError:  # pragma: no cover
    ops = None

# ----------------------------------------------------------------------------------------------
# dtypes and format ids shared by host and kernels
# ----------------------------------------------------------------------------------------------
OUT_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
              "bfloat16": np.dtype(ml_dtypes.bfloat16)}
UE8M0, E4M3 = 0, 1                  # scale kinds
FMT_DSV4, FMT_MX, FMT_NV = 0, 1, 2  # scale recipes for quantize
_FMT_ID = {"dsv4_fp4": FMT_DSV4, "mxfp4": FMT_MX, "nvfp4": FMT_NV}
THREADS = 256                       # threads per block of every FP4 kernel
_KIND = {np.dtype(np.float32): F32, np.dtype(np.float16): F16, np.dtype(ml_dtypes.bfloat16): BF16}


def _dtype_name(dt) -> str:
    for name, d in OUT_DTYPES.items():
        if np.dtype(dt) == d if not isinstance(dt, str) else dt == name:
            return name
    raise TypeError(f"dtype {dt!r} is not supported; use one of {sorted(OUT_DTYPES)} "
                    f"(numpy.float32, numpy.float16, ml_dtypes.bfloat16 or their names)")


# ----------------------------------------------------------------------------------------------
# device helpers shared by every implementation (one place per concern)
# ----------------------------------------------------------------------------------------------
@device
def e2m1_value(code):
    """The float32 value of a 4-bit E2M1 code, straight from the definition."""
    mag = code & 7
    e = mag >> 1
    m = mag & 1
    if e == 0:
        v = float32(0.5) * m                                # subnormal: 0 or 0.5
    else:
        v = float32(math.ldexp(1.0 + 0.5 * m, int(e) - 1))      # 1, 1.5, 2, 3, 4, 6
    return -v if code & 8 else v


@device
def e4m3_value(code):
    """The float32 value of an E4M3 code by bit arithmetic (0x7F / 0xFF: NaN).

    The 7 magnitude bits [e3..e0 m2 m1 m0] shifted left by 20 land on float32's exponent and top
    mantissa bits, giving the float32 2^(e-127) * (1 + m/8) = 2^-120 * value; for e = 0 the same
    shift gives the float32 subnormal m * 2^-129 = 2^-120 * (m * 2^-9), so ONE exact multiply by
    2^120 rebiases normals and subnormals alike (denormals are not flushed in these kernels).
    """
    c = uint32(code)
    mag = c & uint32(0x7F)
    v = bits_f32(mag << uint32(20)) * float32(2.0 ** 120)
    if mag == uint32(0x7F):
        return float32(math.nan)
    return -v if c & uint32(0x80) else v


@device
def scale_value(code, skind):
    """The float32 value of an 8-bit scale code: UE8M0 2^(c-127) (0xFF: NaN) or E4M3."""
    if skind == UE8M0:
        if code == 255:
            return float32(math.nan)
        if code == 0:
            return bits_f32(uint32(0x00400000))             # 2^-127, a float32 subnormal
        return bits_f32(uint32(code) << 23)
    return e4m3_value(code)


@device
def pow2_recip(code):
    """2^(127 - code) for a UE8M0 code 0..254: the exact float32 reciprocal of its scale (code 254
    gives 2^-127, a subnormal). x * pow2_recip(c) equals the spec's x / 2^(c-127) bitwise: same
    real number, one rounding."""
    return bits_f32(uint32(254 - code) << 23) if code < 254 else bits_f32(uint32(0x00400000))


@device
def e2m1_encode(v):
    """float32 -> E2M1 code, round to nearest even, saturating at +-6 (the spec's thresholds)."""
    a = abs(v)
    c = (int(a > 0.25) + int(a >= 0.75) + int(a > 1.25) + int(a >= 1.75)   # int(): NumPy bools
         + int(a > 2.5) + int(a >= 3.5) + int(a > 5.0))                     # would add as OR
    return uint32(c) | ((f32_bits(v) >> 28) & 8)


@device
def ue8m0_ceil_code(v):
    """UE8M0 code of 2^ceil(log2 v) for positive finite float32 v, clamped to [0, 254]."""
    u = f32_bits(v)
    e = int((u >> 23) & 0xFF)
    m = u & 0x7FFFFF
    if e == 0:                       # subnormal: v = m * 2^-149; ceil(log2 v) <= -127 -> code 0
        return uint32(0)
    c = e + (1 if m != 0 else 0)
    return uint32(min(c, 254))


@device
def ue8m0_mx_code(amax):
    """OCP MX scale code: 2^(floor(log2 amax) - 2), exponent clamped to [-127, 127]."""
    u = f32_bits(amax)
    e = int((u >> 23) & 0xFF)
    if e == 0:                       # subnormal amax: floor(log2) = 31 - clz(m) - 149
        m = u & 0x7FFFFF
        fl = -150
        while m:
            m >>= 1
            fl += 1
        c = fl - 2 + 127
    else:
        c = e - 2
    return uint32(max(0, min(c, 254)))


@device
def e4m3_code(v):
    """Non-negative float32 v (<= 448) -> E4M3 code, round to nearest even (bit arithmetic)."""
    u = f32_bits(v)
    e = int((u >> 23) & 0xFF) - 127
    if e < -6:                                         # E4M3 subnormal range: m * 2^-9
        q = v * float32(512.0)                         # exact (power-of-two scaling), < 8
        return uint32((q + float32(8388608.0)) - float32(8388608.0))   # RNE to an integer
    m = u & 0x7FFFFF
    q = m >> 20
    rem = m & 0xFFFFF
    if rem > 0x80000 or (rem == 0x80000 and (q & 1)):
        q += 1
    if q == 8:
        q = 0
        e += 1
    return uint32(((e + 7) << 3) | q)


@device
def block_scale(amax, fmt, gs_enc):
    """(scale code, float32 multiplier that maps x to the E2M1 grid) for one block.

    Replays ``formats.quantize`` exactly: dsv4_fp4 ceil(amax/6), mxfp4 floor(log2 amax) - 2,
    nvfp4 e4m3((gs_enc * amax) / 6) with multiplier gs_enc / s. amax == 0 -> (0, 0): all codes 0.
    For power-of-two scales the multiplier is ``pow2_recip(code)``.
    """
    if amax == 0:
        return uint32(0), float32(0.0)
    if fmt == FMT_NV:
        sb = (gs_enc * amax) / float32(6.0)
        code = e4m3_code(min(sb, float32(448.0)))
        s = e4m3_value(code)
        if s == 0:
            return code, float32(0.0)
        return code, gs_enc / s
    code = ue8m0_ceil_code(amax / float32(6.0)) if fmt == FMT_DSV4 else ue8m0_mx_code(amax)
    return code, pow2_recip(code)


# ----------------------------------------------------------------------------------------------
# reference kernels: readable, one thread per byte (decode) / per block (quantize)
# ----------------------------------------------------------------------------------------------
@device
def decode_byte(data, scales, gscale, block, skind, has_g, okind, out, i):
    """out[2i], out[2i+1] from packed byte data[i] (flattened arrays): the definition, literally."""
    byte = data[i]
    for half in range(2):
        e = 2 * i + half
        code = (byte >> (4 * half)) & 15
        v = e2m1_value(code) * scale_value(scales[e // block], skind)
        if has_g:
            v = v * gscale
        store_from_f32(out, e, v, okind)


@kernel
def decode_ref_kernel(data, scales, gscale, block, skind, has_g, okind, out):
    """One thread per packed byte."""
    i = cuda.grid(1)
    if i < data.size:
        decode_byte(data, scales, gscale, block, skind, has_g, okind, out, i)


@kernel
def amax_ref_kernel(x, ikind, amax_bits):
    """amax_bits[0] = max |x| as float32 bits (non-negative floats order like their bits)."""
    i = cuda.grid(1)
    if i < x.size:
        cuda.atomic.max(amax_bits, 0, f32_bits(abs(load_as_f32(x, i, ikind))))


@device
def encode_scale_of_bits(bits, fmt):
    """nvfp4's f32(2688 / amax) from the tensor amax's float32 bits (1.0 for amax 0 and for the
    other formats)."""
    if fmt == FMT_NV:
        amax = bits_f32(bits)
        if amax > 0:
            return float32(2688.0) / amax
    return float32(1.0)


@device
def global_encode_scale(amax_bits, fmt):
    """nvfp4's f32(2688 / amax) from the tensor amax bits in amax_bits[0]."""
    return encode_scale_of_bits(amax_bits[0], fmt)


@kernel
def quantize_ref_kernel(x, ikind, block, fmt, amax_bits, data, scales):
    """One thread per block: block amax -> scale code -> E2M1 codes, packed low nibble first."""
    b = cuda.grid(1)
    if b >= scales.size:
        return
    gs_enc = global_encode_scale(amax_bits, fmt)
    amax_b = float32(0.0)
    for j in range(block):
        amax_b = max(amax_b, abs(load_as_f32(x, b * block + j, ikind)))
    code, mult = block_scale(amax_b, fmt, gs_enc)
    scales[b] = code
    for j in range(0, block, 2):
        e = b * block + j
        lo = e2m1_encode(load_as_f32(x, e, ikind) * mult) if mult != 0 else uint32(0)
        hi = e2m1_encode(load_as_f32(x, e + 1, ikind) * mult) if mult != 0 else uint32(0)
        data[e // 2] = lo | (hi << 4)


# ----------------------------------------------------------------------------------------------
# production kernels (sm_90a): 16-byte vectors, prmt decode tables
# ----------------------------------------------------------------------------------------------
# Inline-PTX operations used below, each with a simulator twin (same function, plain Python) so the
# production kernels also run — slowly, exactly — under the CUDA simulator in the CPU test suite
# (global / shared vector memory comes from dsv4_numba.emu, which the launcher swaps in for ops).
def _prmt_gpu(a, b, c):
    return ops.prmt(a, b, c)            # prmt.b32 (PTX ISA "prmt", sm_20+): see ptx/convert.ptx


def _prmt_sim(a, b, c):
    src = int(a) | (int(b) << 32)       # bytes 0..3 from a, 4..7 from b
    d = 0
    for i in range(4):
        sel = (int(c) >> (4 * i)) & 15
        byte = (src >> (8 * (sel & 7))) & 0xFF
        if sel & 8:                     # replicate the selected byte's msb
            byte = 0xFF if byte & 0x80 else 0
        d |= byte << (8 * i)
    return uint32(d)


def _pack16x2_gpu(hi, lo, okind):
    if okind == BF16:
        return ops.pack_bf16x2(hi, lo)  # cvt.rn.bf16x2.f32 (PTX ISA cvt, sm_80+)
    return ops.pack_f16x2(hi, lo)       # cvt.rn.f16x2.f32 (PTX ISA cvt, sm_80+)


def _pack16x2_sim(hi, lo, okind):
    if okind == BF16:
        return uint32((int(bf16_bits(hi)) << 16) | int(bf16_bits(lo)))
    h = int(np.float16(hi).view(np.uint16))
    return uint32((h << 16) | int(np.float16(lo).view(np.uint16)))


def _mul_bf16x2_gpu(a, b):
    return ops.mul_bf16x2(a, b)         # mul.rn.bf16x2 (PTX ISA "mul" half precision, sm_90+)


def _mul_bf16x2_sim(a, b):
    from ..emu import ops as emu_ops
    return uint32(emu_ops.mul_bf16x2(a, b))


def _syncwarp_gpu():
    cuda.syncwarp()                     # bar.warp.sync 0xffffffff


def _syncwarp_sim():
    cuda.syncthreads()                  # the simulator has no warps; callers keep it block-uniform


def _staging_tile_gpu():
    return cuda.shared.array(TILE_WORDS, uint32, alignment=16)


def _staging_tile_sim():
    return cuda.shared.array(TILE_WORDS, uint32)    # the simulator takes no alignment argument


WARPS = 8                   # per block of THREADS = 256
TILE_WORDS = WARPS * 1024   # 4 KB of staging per warp (float32 output needs all of it)
prmt = device(_prmt_gpu, sim=_prmt_sim)
pack16x2 = device(_pack16x2_gpu, sim=_pack16x2_sim)
mul_bf16x2 = device(_mul_bf16x2_gpu, sim=_mul_bf16x2_sim)
syncwarp = device(_syncwarp_gpu, sim=_syncwarp_sim)
staging_tile = device(_staging_tile_gpu, sim=_staging_tile_sim)


# E2M1 magnitude code (0..7) -> bfloat16 bit pattern, split into its high and low byte:
#   code   0     1     2     3     4     5     6     7
#   value  0    0.5    1    1.5    2     3     4     6
#   bf16 0x0000 3F00  3F80  3FC0  4000  4040  4080  40C0
# prmt's 8 source bytes are {b, a}: table entries 0..3 in a, 4..7 in b.
HI_TAB_A, HI_TAB_B = 0x3F3F3F00, 0x40404040
LO_TAB_A, LO_TAB_B = 0xC0800000, 0xC0804000

def _sign_selector(j):
    """prmt control putting the sign of element 2j at bit 15 and of element 2j+1 at bit 31.

    With a = w << 4 (bytes 0..3) and b = w (bytes 4..7): byte j of a has element 2j's sign bit as
    its msb, byte j of b has element 2j+1's; selector nibbles with bit 3 set replicate that msb.
    """
    return ((8 | (4 + j)) << 12) | ((8 | j) << 4)


SIGN_SEL = tuple(_sign_selector(j) for j in range(4))
S0, S1, S2, S3 = SIGN_SEL


@device
def e2m1x8_bf16x2(w):
    """Eight E2M1 codes (one 32-bit word, element 0 in bits 3:0) -> four words of bfloat16 pairs
    (element 2i in the low half of word i), via prmt tables: exact (E2M1 values are bf16 values)."""
    idx = w & uint32(0x77777777)
    hi_a = prmt(uint32(HI_TAB_A), uint32(HI_TAB_B), idx)          # elements 0..3, high bytes
    lo_a = prmt(uint32(LO_TAB_A), uint32(LO_TAB_B), idx)          # elements 0..3, low bytes
    hi_b = prmt(uint32(HI_TAB_A), uint32(HI_TAB_B), idx >> uint32(16))    # elements 4..7
    lo_b = prmt(uint32(LO_TAB_A), uint32(LO_TAB_B), idx >> uint32(16))
    u = w << uint32(4)
    sm = uint32(0x80008000)
    p0 = prmt(lo_a, hi_a, uint32(0x5140)) | (prmt(u, w, uint32(S0)) & sm)   # bf16 x2
    p1 = prmt(lo_a, hi_a, uint32(0x7362)) | (prmt(u, w, uint32(S1)) & sm)
    p2 = prmt(lo_b, hi_b, uint32(0x5140)) | (prmt(u, w, uint32(S2)) & sm)
    p3 = prmt(lo_b, hi_b, uint32(0x7362)) | (prmt(u, w, uint32(S3)) & sm)
    return p0, p1, p2, p3


@device
def ue8m0_bf16x2(code):
    """A UE8M0 scale code as a pair of equal bfloat16 values 2^(code - 127), branch-free: bf16 holds
    every one exactly (code 0: the subnormal 2^-127 = 0x0040; 255: the NaN 0x7FC0, as
    ``scale_value``)."""
    c = uint32(code) & uint32(0xFF)
    h = c << uint32(7)
    h = uint32(0x0040) if c == uint32(0) else h
    h = uint32(0x7FC0) if c == uint32(0xFF) else h
    return h | (h << uint32(16))


@device
def e2m1x8_sm90(w):
    """Eight E2M1 codes (one 32-bit word, element 0 in bits 3:0) -> eight float32, via prmt tables."""
    p0, p1, p2, p3 = e2m1x8_bf16x2(w)
    hm = uint32(0xFFFF0000)
    sh = uint32(16)
    return (bits_f32(p0 << sh), bits_f32(p0 & hm), bits_f32(p1 << sh), bits_f32(p1 & hm),
            bits_f32(p2 << sh), bits_f32(p2 & hm), bits_f32(p3 << sh), bits_f32(p3 & hm))


@device
def e2m1x8_sm100(w):
    """Eight E2M1 codes -> eight float32 with the Blackwell cvt.rn.f16x2.e2m1x2 (exact in f16)."""
    h0 = ops.cvt_f16x2_e2m1x2(w)
    h1 = ops.cvt_f16x2_e2m1x2(w >> 8)
    h2 = ops.cvt_f16x2_e2m1x2(w >> 16)
    h3 = ops.cvt_f16x2_e2m1x2(w >> 24)
    return (f16_bits_to_f32(h0 & 0xFFFF), f16_bits_to_f32(h0 >> 16),
            f16_bits_to_f32(h1 & 0xFFFF), f16_bits_to_f32(h1 >> 16),
            f16_bits_to_f32(h2 & 0xFFFF), f16_bits_to_f32(h2 >> 16),
            f16_bits_to_f32(h3 & 0xFFFF), f16_bits_to_f32(h3 >> 16))


@device
def ue8m0_value_sm100(code, skind):
    """Block scale value; UE8M0 through cvt.rn.bf16x2.ue8m0x2 (bf16 holds every 2^k exactly)."""
    if skind == UE8M0:
        return bits_f32((ops.cvt_bf16x2_ue8m0x2(code) & 0xFFFF) << 16)
    return scale_value(code, skind)


@device
def e2m1x8(w, SM100):
    """Eight E2M1 codes -> eight float32 with the arch's decoder (SM100: a compile-time constant)."""
    if SM100:
        return e2m1x8_sm100(w)
    return e2m1x8_sm90(w)


@device
def block_scale_value(code, skind, SM100):
    """Block scale value with the arch's decoder (SM100: a compile-time constant)."""
    if SM100:
        return ue8m0_value_sm100(code, skind)
    return scale_value(code, skind)


@device
def scaled8(vals, s, g, has_g, okind):
    """Eight decoded values scaled (e2m1 * s [* g], the spec's order) and packed to output words:
    8 float32 words, or 4 words of two 16-bit values (then the last 4 are 0).

    e2m1 * s is exact (<= 2 x 4 significant bits), so for nvfp4 the second multiply is the only
    rounding, as in the spec. Folding g into s (one multiply by f32(s * g)) is NOT bitwise: for
    e2m1 = 1.5 it rounds twice (e.g. s = 0.017578125, g = 0.6369617: 0.016794888 vs 0.01679489).
    """
    v0, v1, v2, v3, v4, v5, v6, v7 = vals
    v0, v1, v2, v3 = v0 * s, v1 * s, v2 * s, v3 * s
    v4, v5, v6, v7 = v4 * s, v5 * s, v6 * s, v7 * s
    if has_g:
        v0, v1, v2, v3 = v0 * g, v1 * g, v2 * g, v3 * g
        v4, v5, v6, v7 = v4 * g, v5 * g, v6 * g, v7 * g
    if okind == F32:
        return (f32_bits(v0), f32_bits(v1), f32_bits(v2), f32_bits(v3),
                f32_bits(v4), f32_bits(v5), f32_bits(v6), f32_bits(v7))
    z = uint32(0)
    return (pack16x2(v1, v0, okind), pack16x2(v3, v2, okind), pack16x2(v5, v4, okind),
            pack16x2(v7, v6, okind), z, z, z, z)


@device
def smem_slot(writer, k, S):
    """Physical 16-byte slot of a lane's k-th output slot in its warp's staging tile.

    Lane l's S slots are S*l .. S*l+S-1, rotated by l>>1 (S=4) or l (S=8) so that the 8 lanes of
    each quarter-warp phase hit 8 distinct 16-byte bank groups, both when a lane writes its own
    slots and when lanes read the tile back in row order. S is a compile-time constant (4 or 8):
    every division here is a shift.
    """
    rot = (writer >> 1) if S == 4 else writer
    return S * writer + ((k + rot) & (S - 1))


# Napkin math of one warp step (512 packed bytes -> 1024 outputs), bfloat16 output: 512 B read +
# 2 KB written (+ 32 or 64 scale bytes); per lane 32 elements: 12 prmt + 4 sign prmt + 8 logic per
# 8 elements, 32 fmul (64 for nvfp4: e2m1 * s, then * g), 16 cvt.bf16x2, 4 st.shared.v4 +
# 4 ld.shared.v4 + 4 st.global.v4 + 1 ld.global.v4: ~200 instructions per lane, 57 K warp steps
# for 7168 x 8192 -> ~11 M warp instructions = ~12 us of issue on 132 SMs x 4 schedulers at 1.75
# GHz, below the ~50 us that the 149 MB take at the copy bandwidth: memory-bound.
def make_decode_kernel(SM100, name, BLOCK, SKIND, HAS_G, OKIND):
    """Decode with 16-byte loads AND coalesced 16-byte stores, through a per-warp shared tile.

    BLOCK / SKIND / HAS_G (the format), OKIND (the output dtype) and SM100 (decode with the
    Blackwell cvt instructions) are compile-time constants of the returned kernel (closure
    constants: Numba folds them, so no format branch, no runtime division survives in the loop).
    Helpers are called by their global names (the simulator launcher swaps globals, not closure
    cells, for their simulator twins).
    A warp step covers 512 packed bytes (1024 elements): each lane loads its 16 bytes with one
    ld.global.nc.v4 (512 B contiguous per warp instruction), decodes 32 elements and writes them
    to the warp's staging tile (4 or 8 st.shared.v4, bank-conflict-free by ``smem_slot``);
    after __syncwarp each lane reads back 16-byte rows in tile order and writes them with
    st.global.v4 — 512 contiguous bytes per warp instruction. The block strides over groups of
    WARPS tiles (a block-uniform trip count, which the simulator's syncwarp twin needs). Bytes
    past the last whole 512-byte tile are decoded by block 0 with the reference helper.
    Shared memory: 8 warps x 4 KB.
    """
    S = 8 if OKIND == F32 else 4                    # 16-byte output slots per lane

    def kern(data, scales, gscale, out, ntiles):
        tile = staging_tile()
        lane = cuda.laneid
        wib = cuda.threadIdx.x >> 5
        src = ops.array_address(data)
        dst = ops.array_address(out)
        sbase = ops.shared_address(tile) + uint32(4096) * uint32(wib)
        for t0 in range(cuda.blockIdx.x * WARPS, ntiles, cuda.gridDim.x * WARPS):
            t = t0 + wib
            if t < ntiles:
                c = 32 * t + lane                   # this lane's 16-byte chunk
                w0, w1, w2, w3 = ops.ld_global_nc_v4_u32(src + uint64(16) * uint64(c))
                if BLOCK == 32:
                    s0 = block_scale_value(scales[c], SKIND, SM100)
                    s1 = s0
                else:
                    s0 = block_scale_value(scales[2 * c], SKIND, SM100)
                    s1 = block_scale_value(scales[2 * c + 1], SKIND, SM100)
                for q in range(4):
                    wq = w0 if q == 0 else (w1 if q == 1 else (w2 if q == 2 else w3))
                    o0, o1, o2, o3, o4, o5, o6, o7 = scaled8(e2m1x8(wq, SM100), s0 if q < 2 else s1,
                                                             gscale, HAS_G, OKIND)
                    if S == 4:
                        ops.st_shared_v4_b32(sbase + 16 * smem_slot(lane, q, 4), o0, o1, o2, o3)
                    else:
                        ops.st_shared_v4_b32(sbase + 16 * smem_slot(lane, 2 * q, 8), o0, o1, o2, o3)
                        ops.st_shared_v4_b32(sbase + 16 * smem_slot(lane, 2 * q + 1, 8),
                                             o4, o5, o6, o7)
            syncwarp()
            if t < ntiles:
                obase = dst + uint64(512 * S) * uint64(t)
                for k in range(S):
                    L = 32 * k + lane               # logical slot = row order of the output
                    r0, r1, r2, r3 = ops.ld_shared_v4_u32(sbase + 16 * smem_slot(L // S, L % S, S))
                    ops.st_global_v4_b32(obase + uint64(16) * uint64(L), r0, r1, r2, r3)
            syncwarp()
        if cuda.blockIdx.x == 0:
            for i in range(512 * ntiles + cuda.threadIdx.x, data.size, cuda.blockDim.x):
                decode_byte(data, scales, gscale, BLOCK, SKIND, HAS_G, OKIND, out, i)
    kern.__name__ = kern.__qualname__ = name
    k = kernel(kern)
    k.unit_bytes, k.units_per_block = 512, WARPS     # one 512-byte tile per warp per step
    return k


class KernelFamily:
    """Kernels of one factory specialized on compile-time constants, built once per key.

    ``family.get(*key)`` returns the ``Kernel`` for that key (e.g. block, scale kind, global scale,
    output kind); ``family.name`` is the common name (benchmarks label rows with it).
    """

    def __init__(self, name, factory):
        self.name, self.factory, self._built = name, factory, {}

    def get(self, *key):
        if key not in self._built:
            tag = "_".join(str(int(k)) for k in key)
            self._built[key] = self.factory(f"{self.name}_{tag}", *key)
        return self._built[key]


def _decode_key(fmt, okind):
    spec = FORMATS[fmt]
    return (spec.block, UE8M0 if spec.scale_kind == "ue8m0" else E4M3, spec.has_global_scale, okind)


decode_sm90_kernel = KernelFamily(
    "decode_fp4_sm90", lambda name, *key: make_decode_kernel(False, name, *key))
decode_sm100_kernel = KernelFamily(
    "decode_fp4_sm100", lambda name, *key: make_decode_kernel(True, name, *key))


@device
def e2m1_encode_bits(v):
    """float32 -> E2M1 code by float32 bit arithmetic; bitwise ``e2m1_encode`` (RNE, saturating).

    |v| < 1 (the E2M1 subnormal step 0.5): code = rint(2|v|), one exact-then-rounded fma:
    2|v| + 2^23 lands in [2^23, 2^24) where float32's spacing is 1, so its low bits are the
    round-to-nearest-even integer. |v| >= 1: round the float32 mantissa to 1 bit (RNE: add
    0x1FFFFF plus the kept bit), then bits >> 22 = exponent field * 2 + mantissa bit, and
    code = that - 252 (1.0 = 0x3F800000 -> 254 -> code 2), saturated at 7 (6.0, bits clamped
    to 0x40FFFFFF first).
    ~11 integer/float instructions instead of 7 compares, selects and adds.
    """
    u = f32_bits(v)
    a = uint32(u & uint32(0x7FFFFFFF))            # uint32() after each step: Numba widens
    if a < uint32(0x3F800000):                    # integer arithmetic to 64 bits otherwise
        code = uint32(f32_bits(abs(v) * float32(2.0) + float32(8388608.0)) & uint32(7))
    else:
        t = uint32(a + uint32(0x1FFFFF) + ((a >> uint32(22)) & uint32(1)))
        code = uint32((min(t, uint32(0x40FFFFFF)) >> uint32(22)) - uint32(252))
    return uint32(code | ((u >> uint32(28)) & uint32(8)))


@device
def encode2_sw(a, b):
    """Two float32 (already on the E2M1 grid scale) -> one byte, a in the low nibble."""
    return e2m1_encode_bits(a) | (e2m1_encode_bits(b) << uint32(4))


@device
def encode2_sm100(a, b):
    """The same with cvt.rn.satfinite.e2m1x2.f32 (its first operand goes to the high nibble)."""
    return ops.cvt_e2m1x2_f32(b, a)


@device
def encode2(a, b, SM100):
    if SM100:
        return encode2_sm100(a, b)
    return encode2_sw(a, b)


@device
def ceil_code_sm100(v):
    """dsv4_fp4 scale code with cvt.rp.satfinite.ue8m0x2.f32 (rounds up to a power of two)."""
    return ops.cvt_rp_ue8m0x2_f32(float32(0.0), v) & 0xFF


@device
def unpack8(a0, a1, a2, a3, b0, b1, b2, b3, ikind):
    """Eight float32 from 16-byte vectors of input words: float32 takes a and b (8 words),
    the 16-bit kinds take a only (8 halves, element 0 in the low half of a0)."""
    if ikind == F32:
        return (bits_f32(a0), bits_f32(a1), bits_f32(a2), bits_f32(a3),
                bits_f32(b0), bits_f32(b1), bits_f32(b2), bits_f32(b3))
    if ikind == BF16:
        hm = uint32(0xFFFF0000)
        sh = uint32(16)
        return (bits_f32(a0 << sh), bits_f32(a0 & hm), bits_f32(a1 << sh), bits_f32(a1 & hm),
                bits_f32(a2 << sh), bits_f32(a2 & hm), bits_f32(a3 << sh), bits_f32(a3 & hm))
    return (f16_bits_to_f32(a0 & 0xFFFF), f16_bits_to_f32(a0 >> 16),
            f16_bits_to_f32(a1 & 0xFFFF), f16_bits_to_f32(a1 >> 16),
            f16_bits_to_f32(a2 & 0xFFFF), f16_bits_to_f32(a2 >> 16),
            f16_bits_to_f32(a3 & 0xFFFF), f16_bits_to_f32(a3 >> 16))


@device
def load8(src, ikind, k):
    """Elements 8k..8k+7 of a 32-element chunk at address src, as float32 (one or two v4 loads)."""
    if ikind == F32:
        a0, a1, a2, a3 = ops.ld_global_nc_v4_u32(src + uint64(32 * k))
        b0, b1, b2, b3 = ops.ld_global_nc_v4_u32(src + uint64(32 * k + 16))
        return unpack8(a0, a1, a2, a3, b0, b1, b2, b3, ikind)
    a0, a1, a2, a3 = ops.ld_global_nc_v4_u32(src + uint64(16 * k))
    return unpack8(a0, a1, a2, a3, a0, a1, a2, a3, ikind)


@device
def amax8(v, m):
    v0, v1, v2, v3, v4, v5, v6, v7 = v
    return max(m, max(max(max(abs(v0), abs(v1)), max(abs(v2), abs(v3))),
                      max(max(abs(v4), abs(v5)), max(abs(v6), abs(v7)))))


@device
def encode8(v, mult, SM100):
    """Eight float32 -> one word of eight E2M1 codes (element 0 in bits 3:0)."""
    v0, v1, v2, v3, v4, v5, v6, v7 = v
    if mult == 0:
        return uint32(0)
    return (uint32(encode2(v0 * mult, v1 * mult, SM100))
            | (uint32(encode2(v2 * mult, v3 * mult, SM100)) << 8)
            | (uint32(encode2(v4 * mult, v5 * mult, SM100)) << 16)
            | (uint32(encode2(v6 * mult, v7 * mult, SM100)) << 24))


@device
def scale_for(amax, fmt, gs_enc, SM100):
    """block_scale with the arch's dsv4 ceil-code instruction substituted where it has one."""
    if SM100 and fmt == FMT_DSV4 and amax != 0:
        code = ceil_code_sm100(amax / float32(6.0))
        return code, pow2_recip(code)
    return block_scale(amax, fmt, gs_enc)


# Napkin math (bfloat16 in, 32 elements per thread): 64 B read + 16 B codes + 1-2 B scales written;
# per element ~2 (unpack, fmul) + ~11 (encode) + 1/2 (pack) instructions: 58.7 M elements ->
# ~0.8 G thread instructions = 26 M warp instructions = ~28 us of issue on an H100 vs ~50 us of
# memory time: memory-bound but with less slack than decode (the encode is most of it).
def make_quantize_kernel(SM100, name, FMT, BLOCK, IKIND):
    """The production quantize kernel: one thread per 32-element chunk (1 or 2 blocks).

    FMT / BLOCK / IKIND / SM100 are compile-time constants. Loads the chunk with 16-byte loads (4 for
    16-bit input, 8 for float32), reduces the block amax in registers, computes the scale exactly
    as the spec, encodes, and writes one 16-byte store of codes plus the scale byte(s).
    Non-finite input sets flag[0] (checked on return).
    """
    ebytes = 4 if IKIND == F32 else 2

    def kern(x, amax_bits, data, scales, flag, nchunks):
        tid = cuda.grid(1)
        stride = cuda.gridsize(1)
        gs_enc = global_encode_scale(amax_bits, FMT)
        src = ops.array_address(x)
        dst = ops.array_address(data)
        for c in range(tid, nchunks, stride):
            base = src + uint64(32 * ebytes) * uint64(c)
            quantize_chunk(load8(base, IKIND, 0), load8(base, IKIND, 1), load8(base, IKIND, 2),
                           load8(base, IKIND, 3), c, gs_enc, dst, scales, flag, FMT, BLOCK, SM100)
    kern.__name__ = kern.__qualname__ = name
    return kernel(kern)


@device
def quantize_chunk(q0, q1, q2, q3, c, gs_enc, dst, scales, flag, FMT, BLOCK, SM100):
    """Quantize 32-element chunk c given as four 8-float tuples: block amax(es), scale code(s)
    (the spec's recipe), one 16-byte store of the 16 code bytes at dst + 16c, the scale byte(s).
    NaN / inf in the chunk sets flag[0]."""
    m01 = amax8(q1, amax8(q0, float32(0.0)))
    m23 = amax8(q3, amax8(q2, float32(0.0)))
    if not (m01 <= float32(3.4028235e38) and m23 <= float32(3.4028235e38)):
        flag[0] = 1                                  # NaN or inf in this chunk
    if BLOCK == 32:
        code0, mult0 = scale_for(max(m01, m23), FMT, gs_enc, SM100)
        code1, mult1 = code0, mult0
        scales[c] = code0
    else:
        code0, mult0 = scale_for(m01, FMT, gs_enc, SM100)
        code1, mult1 = scale_for(m23, FMT, gs_enc, SM100)
        scales[2 * c] = code0
        scales[2 * c + 1] = code1
    ops.st_global_v4_b32(dst + uint64(16) * uint64(c), encode8(q0, mult0, SM100),
                         encode8(q1, mult0, SM100), encode8(q2, mult1, SM100),
                         encode8(q3, mult1, SM100))


quantize_sm90_kernel = KernelFamily(
    "quantize_fp4_sm90", lambda name, *key: make_quantize_kernel(False, name, *key))
quantize_sm100_kernel = KernelFamily(
    "quantize_fp4_sm100", lambda name, *key: make_quantize_kernel(True, name, *key))


# Napkin math: reads the input once (117 MB of bfloat16 for 7168 x 8192) and writes 4 bytes:
# ~40 us at the copy bandwidth's read half... i.e. a read-only stream at up to ~3 TB/s. Per 16-byte
# vector 4 and + 4 integer max (16-bit kinds) — a tenth of the issue budget.
def make_amax_kernel(name, IKIND):
    """max |x| of the whole tensor as float32 bits, into amax_bits[0] (NaN / inf: >= 0x7F800000).

    Grid-stride over 16-byte vectors (ld.global.nc.v4), |x| as integer magnitude bits (non-negative
    floats order like their bits, NaN above inf, so unsigned max is the float max and keeps NaN),
    a warp butterfly (shfl.sync.bfly), the 8 warp maxima through shared memory, and ONE atomicMax
    per block. 16-bit kinds keep two accumulators (high and low halves) so each word costs
    2 and + 2 max; float16 magnitudes convert to float32 once at the end.
    The pass walks the tensor back to front: the quantize kernel that follows reads front to back,
    so its first tens of MB are the ones this pass read last, still in the 50 MB L2.
    """
    def kern(x, amax_bits, nvec):
        red = cuda.shared.array(WARPS, uint32)
        src = ops.array_address(x)
        m_hi = uint32(0)
        m_lo = uint32(0)
        for v in range(cuda.grid(1), nvec, cuda.gridsize(1)):
            vr = nvec - 1 - v                   # back to front: see the docstring
            w0, w1, w2, w3 = ops.ld_global_nc_v4_u32(src + uint64(16) * uint64(vr))
            m_hi, m_lo = amax_words(w0, w1, w2, w3, m_hi, m_lo, IKIND)
        m = block_max_u32(amax_of_accumulators(m_hi, m_lo, IKIND), red)
        if cuda.threadIdx.x == 0:
            cuda.atomic.max(amax_bits, 0, m)
    kern.__name__ = kern.__qualname__ = name
    return kernel(kern)


@device
def amax_words(w0, w1, w2, w3, m_hi, m_lo, IKIND):
    """Fold one 16-byte vector of input words into the two magnitude-bit accumulators."""
    if IKIND == F32:
        mk = uint32(0x7FFFFFFF)
        m_hi = max(m_hi, max(w0 & mk, w1 & mk))
        m_lo = max(m_lo, max(w2 & mk, w3 & mk))
    else:
        hk = uint32(0x7FFF0000)
        lk = uint32(0x7FFF)
        m_hi = max(m_hi, max(max(w0 & hk, w1 & hk), max(w2 & hk, w3 & hk)))
        m_lo = max(m_lo, max(max(w0 & lk, w1 & lk), max(w2 & lk, w3 & lk)))
    return m_hi, m_lo


@device
def amax_of_accumulators(m_hi, m_lo, IKIND):
    """The float32 bits of max |x| from amax_words' two accumulators."""
    if IKIND == F32:
        b = max(m_hi, m_lo)
    elif IKIND == BF16:
        b = max(m_hi, m_lo << uint32(16))
    else:
        b = f32_bits(f16_bits_to_f32(max(m_hi >> uint32(16), m_lo)))
        b = b & uint32(0x7FFFFFFF)
    return b


@device
def block_max_u32(b, red):
    """max of b (< 2^31) over the block, valid in thread 0: warp butterfly (shfl.sync.bfly), the
    warp maxima through red (shared, one slot per warp), thread 0 folds them. Ends after a
    __syncthreads, so red may be reused only after another one."""
    r = int32(b)                                    # < 2^31: shfl takes 32-bit signed ints
    for off in (16, 8, 4, 2, 1):
        r = max(r, shfl_xor(r, off))
    if cuda.laneid == 0:
        red[cuda.threadIdx.x >> 5] = uint32(r)
    cuda.syncthreads()
    m = red[0]
    if cuda.threadIdx.x == 0:
        for w in range(1, cuda.blockDim.x >> 5):
            m = max(m, red[w])
    return m


amax_prod_kernel = KernelFamily("amax_fp4", make_amax_kernel)


# ----------------------------------------------------------------------------------------------
# nvfp4 quantize in ONE persistent kernel (variant "fused"; not the default, see nvfp4_variant)
# ----------------------------------------------------------------------------------------------
# Napkin math (7168 x 8192 bfloat16 -> nvfp4 on an H100: 132 SMs, 50 MB L2, ~3.0 TB/s copy):
#   unique bytes 117.4 MB in + 29.4 MB codes + 3.7 MB scales = 150.5 MB; 1.5 TB/s <=> 100 us.
#   Two passes (measured): amax 117 MB read (~44 us) + quantize 150 MB (67.6 us) = 111.3 us.
#   Fused: phase 1 reads the 117 MB once (~40 us at ~2.9 TB/s read-only) and keeps each CTA's
#   first KEEP rounds in shared memory (224 KB per SM -> 132 x 224 KB = 29.6 MB, 25% of the
#   input; registers are not used for it); grid barrier (~2-5 us); phase 2 re-reads the other
#   88 MB newest-first, so the ~30-40 MB read last come from L2 and ~50 MB from HBM, plus 33 MB
#   of writes: ~83 MB of HBM traffic (~29 us) against the encode's ~37 us of issue (about 20
#   instructions per element). Expected ~40 + 3 + ~40 = ~83 us (~1.8 TB/s); if nothing were
#   left in L2 (88 MB + 33 MB from / to HBM in phase 2): ~40 + 3 + ~42 = ~85-93 us, still
#   inside 100 us. Hence: the target is reachable on paper, with ~10-15% margin.
#   A CTA is 512 threads (launch bound: 128 registers), one per SM (the shared memory takes
#   more than half an SM), and the grid is the SM count, so every CTA is resident at once and
#   the hand-rolled grid barrier below cannot wait for a CTA that never starts (numba's
#   cooperative launch would need libcudadevrt at link time on the device). If it ever waited
#   longer than ``spin_limit`` naps (~1 s) it records flag[1] and the host re-runs the call
#   through the verified two-pass path (with a warning) instead of hanging or returning garbage.
FUSED_THREADS = 512
FUSED_SMEM_BUDGET = 224 * 1024      # dynamic shared memory for kept rounds (227 KB max per CTA)
FUSED_SPIN_LIMIT = 1 << 22          # naps of ~256 ns before the barrier gives up (~1 s)


def _keep_tile_gpu():
    return cuda.shared.array(0, uint32, alignment=16)      # dynamic: the launch sizes it


def _keep_tile_sim():
    return cuda.shared.array(0, uint32)


def _nap_gpu():
    cuda.nanosleep(256)                 # nanosleep.u32 (PTX ISA "nanosleep", sm_70+)


def _nap_sim():
    pass


keep_tile = device(_keep_tile_gpu, sim=_keep_tile_sim)
nap = device(_nap_gpu, sim=_nap_sim)


@device
def kept8(kb, slot0, T, k, ikind):
    """Elements 8k..8k+7 of a chunk kept in shared memory whose first vector is at slot0 (vector j
    of the chunk sits T slots after vector j-1: each warp's lanes hit consecutive 16-byte slots)."""
    if ikind == F32:
        a0, a1, a2, a3 = ops.ld_shared_v4_u32(kb + uint32(16) * uint32(slot0 + 2 * k * T))
        b0, b1, b2, b3 = ops.ld_shared_v4_u32(kb + uint32(16) * uint32(slot0 + (2 * k + 1) * T))
        return unpack8(a0, a1, a2, a3, b0, b1, b2, b3, ikind)
    a0, a1, a2, a3 = ops.ld_shared_v4_u32(kb + uint32(16) * uint32(slot0 + k * T))
    return unpack8(a0, a1, a2, a3, a0, a1, a2, a3, ikind)


@device
def load_chunk_4v(base):
    """The four 16-byte vectors of a 16-bit 32-element chunk at global address base."""
    return (ops.ld_global_nc_v4_u32(base), ops.ld_global_nc_v4_u32(base + uint64(16)),
            ops.ld_global_nc_v4_u32(base + uint64(32)), ops.ld_global_nc_v4_u32(base + uint64(48)))


@device
def unpack8v(v, ikind):
    """unpack8 of one 16-byte vector (a 4-tuple of words) of a 16-bit kind."""
    return unpack8(v[0], v[1], v[2], v[3], v[0], v[1], v[2], v[3], ikind)


@device
def grid_barrier_amax(m, amax_bits, sync, flag, spin_limit):
    """Thread 0 of each CTA: publish the CTA's amax m (atomicMax), arrive (fence + atomicAdd),
    wait until all gridDim.x CTAs have arrived (or spin_limit naps: flag[1] = 1), then return the
    tensor amax bits read with an atomic (L2, never a stale L1 line)."""
    cuda.atomic.max(amax_bits, 0, m)
    cuda.threadfence()                              # membar.gl: the max before the arrival
    cuda.atomic.add(sync, 0, 1)
    n = 0
    while cuda.atomic.add(sync, 0, 0) < cuda.gridDim.x:
        n += 1
        if n >= spin_limit:
            flag[1] = 1
            break
        nap()
    cuda.threadfence()
    return cuda.atomic.max(amax_bits, 0, uint32(0))


def make_quantize_fused_kernel(SM100, name, FMT, BLOCK, IKIND, T, KEEP):
    """Global amax + quantize in one launch; T threads per CTA, KEEP rounds kept in shared memory.

    Work unit: a 32-element chunk (NV 16-byte vectors); a round is T consecutive chunks (thread t
    takes chunk round * T + t: every warp load is 512 contiguous bytes); CTA b owns rounds
    b, b + G, b + 2G, ... (G = gridDim.x), its i-th being round b + i * G.
    Phase 1: for i = 0, 1, ...: load the round's chunk, fold it into the amax; rounds i < KEEP
    also go to shared memory (vector j of thread t at slot (i * NV + j) * T + t: conflict-free
    on both sides). The kept rounds are read FIRST, so the rounds re-read later are the ones read
    last (most likely still in L2).
    Barrier: block max -> grid_barrier_amax (all CTAs must be resident: grid <= SMs, 1 CTA/SM).
    Phase 2: rounds i >= KEEP newest-first from global memory (L2 first; 16-bit input: the next
    chunk's loads are issued before this one is encoded, since a CTA of 16 warps has little
    else to hide their latency), then the kept rounds from shared memory; each chunk through
    quantize_chunk, the same code as the two-pass kernel.
    """
    NV = 8 if IKIND == F32 else 4                   # 16-byte vectors per 32-element chunk

    def kern(x, amax_bits, sync, data, scales, flag, nchunks, spin_limit):
        keep = keep_tile()
        red = cuda.shared.array(33, uint32)         # warp maxima; [32]: the tensor amax bits
        t = cuda.threadIdx.x
        b = cuda.blockIdx.x
        G = cuda.gridDim.x
        nrounds = (nchunks + T - 1) // T
        mine = (nrounds - b + G - 1) // G           # rounds of this CTA (b < G: never negative)
        src = ops.array_address(x)
        dst = ops.array_address(data)
        kb = ops.shared_address(keep)
        m_hi = uint32(0)
        m_lo = uint32(0)
        for i in range(mine):
            c = (b + i * G) * T + t
            if c < nchunks:
                base = src + uint64(16 * NV) * uint64(c)
                for h in range(NV // 4):            # 4 loads in flight, then their 4 stores
                    a0, a1, a2, a3 = ops.ld_global_nc_v4_u32(base + uint64(64 * h))
                    b0, b1, b2, b3 = ops.ld_global_nc_v4_u32(base + uint64(64 * h + 16))
                    c0, c1, c2, c3 = ops.ld_global_nc_v4_u32(base + uint64(64 * h + 32))
                    d0, d1, d2, d3 = ops.ld_global_nc_v4_u32(base + uint64(64 * h + 48))
                    m_hi, m_lo = amax_words(a0, a1, a2, a3, m_hi, m_lo, IKIND)
                    m_hi, m_lo = amax_words(b0, b1, b2, b3, m_hi, m_lo, IKIND)
                    m_hi, m_lo = amax_words(c0, c1, c2, c3, m_hi, m_lo, IKIND)
                    m_hi, m_lo = amax_words(d0, d1, d2, d3, m_hi, m_lo, IKIND)
                    if i < KEEP:
                        s0 = (i * NV + 4 * h) * T + t
                        ops.st_shared_v4_b32(kb + uint32(16) * uint32(s0), a0, a1, a2, a3)
                        ops.st_shared_v4_b32(kb + uint32(16) * uint32(s0 + T), b0, b1, b2, b3)
                        ops.st_shared_v4_b32(kb + uint32(16) * uint32(s0 + 2 * T), c0, c1, c2, c3)
                        ops.st_shared_v4_b32(kb + uint32(16) * uint32(s0 + 3 * T), d0, d1, d2, d3)
        m = block_max_u32(amax_of_accumulators(m_hi, m_lo, IKIND), red)
        if t == 0:
            red[32] = grid_barrier_amax(m, amax_bits, sync, flag, spin_limit)
        cuda.syncthreads()
        gs_enc = encode_scale_of_bits(red[32], FMT)
        if NV == 4:     # re-read rounds, newest first (L2), the next chunk's 4 loads in flight
            z = (uint32(0), uint32(0), uint32(0), uint32(0))   # while this one is encoded
            va, vb, vc, vd = z, z, z, z
            i = mine - 1
            c = (b + i * G) * T + t
            if i >= KEEP and c < nchunks:
                va, vb, vc, vd = load_chunk_4v(src + uint64(64) * uint64(c))
            while i >= KEEP:
                ua, ub, uc, ud = va, vb, vc, vd
                cc = c
                i -= 1
                c = (b + i * G) * T + t
                if i >= KEEP and c < nchunks:
                    va, vb, vc, vd = load_chunk_4v(src + uint64(64) * uint64(c))
                if cc < nchunks:
                    quantize_chunk(unpack8v(ua, IKIND), unpack8v(ub, IKIND),
                                   unpack8v(uc, IKIND), unpack8v(ud, IKIND),
                                   cc, gs_enc, dst, scales, flag, FMT, BLOCK, SM100)
        else:           # float32 input: 8 loads per chunk, no prefetch
            for i in range(mine - 1, KEEP - 1, -1):
                c = (b + i * G) * T + t
                if c < nchunks:
                    base = src + uint64(16 * NV) * uint64(c)
                    quantize_chunk(load8(base, IKIND, 0), load8(base, IKIND, 1),
                                   load8(base, IKIND, 2), load8(base, IKIND, 3),
                                   c, gs_enc, dst, scales, flag, FMT, BLOCK, SM100)
        for i in range(min(mine, KEEP)):            # kept rounds, from shared memory
            c = (b + i * G) * T + t
            if c < nchunks:
                s0 = i * NV * T + t
                quantize_chunk(kept8(kb, s0, T, 0, IKIND), kept8(kb, s0, T, 1, IKIND),
                               kept8(kb, s0, T, 2, IKIND), kept8(kb, s0, T, 3, IKIND),
                               c, gs_enc, dst, scales, flag, FMT, BLOCK, SM100)
    kern.__name__ = kern.__qualname__ = name
    k = kernel(kern, launch_bounds=(T, 1))
    k.threads, k.keep, k.round_bytes = T, KEEP, T * NV * 16
    return k


def fused_key(fmt, ikind, threads=FUSED_THREADS, smem_budget=FUSED_SMEM_BUDGET):
    """The KernelFamily key of the fused quantize for (format, input kind, CTA size, smem)."""
    nv = 8 if ikind == F32 else 4
    return (_FMT_ID[fmt], FORMATS[fmt].block, ikind, threads,
            max(0, smem_budget // (threads * nv * 16)))


quantize_fused_sm90_kernel = KernelFamily(
    "quantize_fp4_fused_sm90", lambda name, *key: make_quantize_fused_kernel(False, name, *key))
quantize_fused_sm100_kernel = KernelFamily(
    "quantize_fp4_fused_sm100", lambda name, *key: make_quantize_fused_kernel(True, name, *key))


# ----------------------------------------------------------------------------------------------
# nvfp4 variants "stream" / "stream_l2": a leaner quantize pass, a lockstep amax pass (L2 reuse)
# ----------------------------------------------------------------------------------------------
# Why: on the H100 the two-pass nvfp4 quantize took 111.3 us = amax pass (~44 us) + quantize pass
# (67.6 us). The quantize kernel's loop was ~725 SASS instructions per 32-element chunk (two IEEE
# divisions with slow-path branches per 16-block, a branchy E4M3 encode, both paths of the E2M1
# encode issued under predicates): 1.84 M chunks x 725 / 32 lanes = 42 M warp instructions =
# ~45 us of issue on 132 SMs x 4 schedulers at ~1.75 GHz, as long as the ~50 us of memory time,
# so the two did not overlap into 50 us. The stream variants cut the per-chunk work (below) to
# 465 instructions (~29 us of issue: memory-bound again), and order both passes so the quantize
# pass starts on what the amax pass read last.
#
# Per 16-element block (float32, all bitwise the spec, each checked exhaustively in the tests):
#   * sb = f32(f32(gs * amax_b) / 6): gs * amax_b clamped to 2688 first (= min(sb, 448) of the
#     spec, the division being monotonic), then the division as one multiply by RN(1/6) and two
#     fma (Markstein's correction: the residual p - 6q is exact and q + r/6 rounds once);
#   * the E4M3 code by bit arithmetic (mantissa rounded to 3 bits, or rint(sb * 512) below 2^-6);
#   * r = f32(gs / s) read from a 128-entry shared table filled once per CTA with the spec's
#     division (0 for code 0: that block's codes are all 0);
#   * the two scale codes of a chunk stored as one 16-bit word.
# Per element: y = x * r (the spec's rounding), then ``e2m1_mag_step``: 7 instructions, no
# predicated second path; the sign from y's bit 31 under a per-block mask (so a zero scale gives
# +0 codes, as the spec). Blocks whose gs * amax_b exceeds 2688 (only with a global_amax below
# the block's amax; y is then unbounded) saturate through the same encoder (see its docstring).
#
# L2 order: an H100 has 50 MB of L2; the tensor is 117 MB. The amax pass runs on a grid of exactly
# the resident CTAs, each thread 4 independent 16-byte loads per sweep, the whole grid sweeping the
# tensor BACK TO FRONT in lockstep (a sweep = 4 x 16 B x resident threads, ~17 MB on an H100); the
# quantize pass (also one resident wave, grid-stride) reads FRONT TO BACK, so its first ~tens of
# MB were the amax pass's last reads. (The two-pass kernels' grids are 16 waves of CTAs: a later
# wave of CTAs re-walks the whole tensor, so "what was read last" is spread over all of it.)
# "stream_l2" adds L2 eviction priorities (createpolicy + ld.global.nc.L2::cache_hint): the amax
# pass's sweeps over the first L2_KEEP_BYTES of the tensor are evict_last, the rest evict_first;
# the quantize pass's loads are evict_first (read once more, never again).
# Expected on an H100 (copy ~3.0 TB/s): amax ~117 MB / ~2.9 TB/s read = ~40 us; quantize 150 MB at
# ~2.7 TB/s = ~56 us, minus what L2 serves (up to ~20-30 MB: ~8 us): ~88-96 us (1.57-1.7 TB/s).
NV_P_MAX = np.float32(2688.0)         # 6 x 448: gs * amax_b above it saturates the E4M3 scale
SIXTH = np.float32(1.0) / np.float32(6.0)     # RN(1/6) in float32
L2_KEEP_BYTES = 24 << 20            # stream_l2: front bytes the amax pass marks evict_last
AMAX_UNROLL = 4                     # 16-byte loads in flight per thread in the stream amax pass


def _fma32_gpu(a, b, c):
    return cuda.fma(a, b, c)            # fma.rn.f32: a * b + c rounded once


def _fma32_sim(a, b, c):
    """float32 a * b + c rounded ONCE (the simulator's cuda.fma rounds twice): the product is exact
    in float64, the float64 sum's error is recovered exactly (TwoSum) and decides the one case
    where rounding the float64 sum to float32 differs (the sum landing on a float32 midpoint)."""
    p = float(a) * float(b)
    cc = float(c)
    s = p + cc
    bb = s - p
    e = (p - (s - bb)) + (cc - bb)
    r = np.float32(s)
    if e != 0 and float(r) != s:
        other = np.nextafter(r, np.float32(np.inf if float(r) < s else -np.inf))
        if (float(r) + float(other)) / 2 == s:
            r = np.float32(np.nextafter(s, np.inf if e > 0 else -np.inf))
    return float32(r)


def _ld_hint_gpu(addr, policy):
    return ops.ld_global_nc_v4_u32_hint(addr, policy)   # ld.global.nc...L2::cache_hint (sm_80+)


def _ld_hint_sim(addr, policy):
    return ops.ld_global_nc_v4_u32(addr)                # cache hints do not change the data


fma32 = device(_fma32_gpu, sim=_fma32_sim)
ld_hint = device(_ld_hint_gpu, sim=_ld_hint_sim)


@device
def ld16(addr, policy, HINT):
    """One 16-byte read-only load; with HINT (a compile-time constant) tagged with an L2 policy."""
    if HINT:
        return ld_hint(addr, policy)
    return ops.ld_global_nc_v4_u32(addr)


@device
def l2_policy(last, HINT):
    """An L2 policy register (evict_last if ``last`` else evict_first); 0 without HINT."""
    if HINT:
        if last:
            return ops.l2_policy_evict_last()       # createpolicy.fractional (sm_80+), tma.ptx
        return ops.l2_policy_evict_first()
    return uint64(0)


@device
def div6_rn(p):
    """f32(p / 6) for finite 0 <= p <= 2688: q = p * RN(1/6) is within an ulp of p/6, r = p - 6q is
    exact (fma), and q + r * RN(1/6) (fma) is the correctly rounded quotient (Markstein). Checked
    against the IEEE division for every float32 significand in several binades (tests); quotients
    below 2^-126 may differ by an ulp, which no E4M3 code can see (they all encode to 0)."""
    q = p * SIXTH
    r = fma32(-q, float32(6.0), p)
    return fma32(r, SIXTH, q)


@device
def e4m3_code_bits(sb):
    """E4M3 code (round to nearest even) of 0 <= sb <= 448, bitwise ``e4m3_code``, branch-light:
    below 2^-6 (the E4M3 subnormal step 2^-9) rint(sb * 512) by one exact-then-rounded fma onto
    2^23; above, the float32 mantissa rounded to 3 bits (+0x7FFFF plus the kept lsb; a carry moves
    into the exponent, as it should) and rebiased by (127 - 7) << 3 = 960."""
    u = f32_bits(sb)
    if u < uint32(0x3C800000):
        return uint32(f32_bits(sb * float32(512.0) + float32(8388608.0)) & uint32(15))
    t = uint32(u + uint32(0x7FFFF) + ((u >> uint32(20)) & uint32(1)))
    return uint32((t >> uint32(20)) - uint32(960))


@device
def e2m1_mag_step(y):
    """E2M1 magnitude code (0..7) of any float32 y: round to nearest even, saturating at 6.

    C = 2^22 * 2^max(e, 0) (e = floor(log2 |y|)) has an ulp equal to the E2M1 step at |y| (0.5 below
    2, 1 in [2, 4), 2 in [4, 8)), so the float add |y| + C rounds |y| to the E2M1 grid (ties to the
    even step, which is the even code) and bits(|y| + C) - bits(C) counts steps:
    code = steps + 2 * max(e, 0), saturated at 7; with bits(C) = max(bits & 0x7F800000, 1.0's
    bits) + (22 << 23), 2 * max(e, 0) = (bits(C) >> 22) - 298. Six SASS instructions (and,
    add-max, fadd, sub, lea.hi, add-min); ``e2m1_encode_bits`` issues both of its paths under
    predicates (~10). |y| + C must stay an add of the ROUNDED y: y = x * r is computed before
    (no fma contraction: the abs sits between them; the SASS shows FMUL then FADD).
    |y| >= 2^106 (a saturated block with a small given global_amax), inf or NaN: bits(C)
    overflows to +inf or a negative float, |y| + C is then inf or |y| itself, and the wrapped
    unsigned difference stays >= 7, so the code saturates at 7 (checked for every float32)."""
    a = uint32(f32_bits(y) & uint32(0x7F800000))
    cb = max(uint32(a + uint32(0x0B000000)), uint32(0x4A800000))
    v = f32_bits(abs(y) + bits_f32(cb))
    return min(uint32(v - cb + ((cb >> uint32(22)) - uint32(298))), uint32(7))


@device
def e2m1_step(y, smask):
    """E2M1 code of y with its sign bit kept where smask = 8 (0: the block's scale is 0)."""
    return e2m1_mag_step(y) | ((f32_bits(y) >> uint32(28)) & smask)


@device
def encode8_step(v, mult, smask):
    """Eight float32 x -> one word of eight E2M1 codes of x * mult (element 0 in bits 3:0)."""
    v0, v1, v2, v3, v4, v5, v6, v7 = v
    return (e2m1_step(v0 * mult, smask) | (e2m1_step(v1 * mult, smask) << uint32(4))
            | (e2m1_step(v2 * mult, smask) << uint32(8))
            | (e2m1_step(v3 * mult, smask) << uint32(12))
            | (e2m1_step(v4 * mult, smask) << uint32(16))
            | (e2m1_step(v5 * mult, smask) << uint32(20))
            | (e2m1_step(v6 * mult, smask) << uint32(24))
            | (e2m1_step(v7 * mult, smask) << uint32(28)))


@device
def fill_mult_table(rtab, gs_enc):
    """rtab[code] = f32(gs_enc / e4m3(code)) (the spec's r) for the E4M3 codes 1..126, 0 for code
    0 (a zero scale: all codes 0) and 127 (NaN; never produced: sb <= 448). Ends with a barrier."""
    for c in range(cuda.threadIdx.x, 128, cuda.blockDim.x):
        r = float32(0.0)
        if c != 0 and c != 127:
            r = gs_enc / e4m3_value(c)
        rtab[c] = r
    cuda.syncthreads()


@device
def quantize_chunk_nv(q0, q1, q2, q3, c, gs_enc, rtab, dst, scales16, flag):
    """nvfp4 chunk c (two 16-blocks, four 8-float tuples) -> 16 code bytes at dst + 16c (one
    16-byte store) and its two E4M3 scale codes as one 16-bit word scales16[c]. Bitwise
    ``quantize_chunk`` for FMT_NV; NaN / inf set flag[0]."""
    m01 = amax8(q1, amax8(q0, float32(0.0)))
    m23 = amax8(q3, amax8(q2, float32(0.0)))
    if not (m01 <= float32(3.4028235e38) and m23 <= float32(3.4028235e38)):
        flag[0] = 1                                  # NaN or inf in this chunk
    # min(gs * amax_b, 2688) / 6 == min(sb, 448) of the spec (the division is monotonic); the mask
    # keeps a NaN chunk's (flagged, discarded) table index in range
    code0 = e4m3_code_bits(div6_rn(min(gs_enc * m01, NV_P_MAX))) & uint32(127)
    code1 = e4m3_code_bits(div6_rn(min(gs_enc * m23, NV_P_MAX))) & uint32(127)
    mult0 = rtab[code0]
    mult1 = rtab[code1]
    scales16[c] = code0 | (code1 << uint32(8))
    s0 = uint32(8) if mult0 > float32(0.0) else uint32(0)
    s1 = uint32(8) if mult1 > float32(0.0) else uint32(0)
    ops.st_global_v4_b32(dst + uint64(16) * uint64(c), encode8_step(q0, mult0, s0),
                         encode8_step(q1, mult0, s0), encode8_step(q2, mult1, s1),
                         encode8_step(q3, mult1, s1))


@device
def load8h(src, ikind, k, policy, HINT):
    """``load8`` with the loads optionally tagged with an L2 policy."""
    if ikind == F32:
        a0, a1, a2, a3 = ld16(src + uint64(32 * k), policy, HINT)
        b0, b1, b2, b3 = ld16(src + uint64(32 * k + 16), policy, HINT)
        return unpack8(a0, a1, a2, a3, b0, b1, b2, b3, ikind)
    a0, a1, a2, a3 = ld16(src + uint64(16 * k), policy, HINT)
    return unpack8(a0, a1, a2, a3, a0, a1, a2, a3, ikind)


# Napkin math (7168 x 8192 bfloat16): 117.4 MB read + 29.4 MB codes + 3.7 MB scales written,
# ~50 us at the ~3.0 TB/s copy bandwidth; 465 SASS instructions per chunk (~10.5 per element + ~130
# per chunk for loads, amax and scales; measured sm_90a) -> 1.84 M x 465 / 32 = 27 M warp
# instructions, ~29 us of issue at ~1.75 GHz on 132 x 4 schedulers: memory-bound.
def make_quantize_stream_kernel(name, IKIND, HINT):
    """The nvfp4 quantize pass of the stream variants: one thread per 32-element chunk, a grid of
    exactly the resident CTAs striding front to back (see the section comment); the per-CTA table
    of r = gs / s; ``quantize_chunk_nv``. IKIND / HINT are compile-time constants."""
    ebytes = 4 if IKIND == F32 else 2

    def kern(x, amax_bits, data, scales16, flag, nchunks):
        rtab = cuda.shared.array(128, float32)
        gs_enc = global_encode_scale(amax_bits, FMT_NV)
        fill_mult_table(rtab, gs_enc)
        policy = l2_policy(False, HINT)
        src = ops.array_address(x)
        dst = ops.array_address(data)
        for c in range(cuda.grid(1), nchunks, cuda.gridsize(1)):
            base = src + uint64(32 * ebytes) * uint64(c)
            quantize_chunk_nv(load8h(base, IKIND, 0, policy, HINT),
                              load8h(base, IKIND, 1, policy, HINT),
                              load8h(base, IKIND, 2, policy, HINT),
                              load8h(base, IKIND, 3, policy, HINT),
                              c, gs_enc, rtab, dst, scales16, flag)
    kern.__name__ = kern.__qualname__ = name
    if IKIND == F32:                # 8 loads per chunk: left to ptxas (56+ registers)
        k = kernel(kern)
        k.blocks_per_sm = 4
    else:                           # 5 CTAs of 256 per SM: <= 48 registers (56 unbounded), no
        k = kernel(kern, launch_bounds=(THREADS, 5))    # spill, same instruction count (sm_90a)
        k.blocks_per_sm = 5
    return k


# Napkin math: 117.4 MB read once (bfloat16 7168 x 8192), 4 bytes written: ~38-40 us at a ~3 TB/s
# read stream; per 16-byte vector 4 and + 4 max (16-bit kinds): ~8% of the issue budget.
def make_amax_stream_kernel(name, IKIND, HINT):
    """max |x| as float32 bits into amax_bits[0], like ``make_amax_kernel``, but for a grid of
    exactly the resident CTAs sweeping the tensor back to front in lockstep: sweep k covers the
    window of AMAX_UNROLL x (grid threads) vectors ending k windows before the end, each thread
    issuing its AMAX_UNROLL 16-byte loads (each one coalesced across the warp) before folding
    any; the front remainder last. With HINT, loads of the first ``keep_vecs`` vectors carry an
    evict_last L2 policy, the others evict_first. One atomicMax per CTA."""
    def kern(x, amax_bits, nvec, keep_vecs):
        red = cuda.shared.array(WARPS, uint32)
        src = ops.array_address(x)
        tid = cuda.grid(1)
        S = cuda.gridsize(1)
        W = AMAX_UNROLL * S
        keep = l2_policy(True, HINT)
        first = l2_policy(False, HINT)
        m_hi = uint32(0)
        m_lo = uint32(0)
        end = nvec
        while end >= W:                             # full windows [end - W, end), back to front
            lo = end - W
            v = lo + tid                            # this thread's vectors: v, v + S, v + 2S, v + 3S
            a = src + uint64(16) * uint64(v)
            step = uint64(16) * uint64(S)
            a0, a1, a2, a3 = ld16(a, keep if v < keep_vecs else first, HINT)
            b0, b1, b2, b3 = ld16(a + step, keep if v + S < keep_vecs else first, HINT)
            c0, c1, c2, c3 = ld16(a + uint64(2) * step, keep if v + 2 * S < keep_vecs else first,
                                  HINT)
            d0, d1, d2, d3 = ld16(a + uint64(3) * step, keep if v + 3 * S < keep_vecs else first,
                                  HINT)
            m_hi, m_lo = amax_words(a0, a1, a2, a3, m_hi, m_lo, IKIND)
            m_hi, m_lo = amax_words(b0, b1, b2, b3, m_hi, m_lo, IKIND)
            m_hi, m_lo = amax_words(c0, c1, c2, c3, m_hi, m_lo, IKIND)
            m_hi, m_lo = amax_words(d0, d1, d2, d3, m_hi, m_lo, IKIND)
            end = lo
        for v in range(tid, end, S):                # the front remainder (< one window)
            w0, w1, w2, w3 = ld16(src + uint64(16) * uint64(v), keep if v < keep_vecs else first,
                                  HINT)
            m_hi, m_lo = amax_words(w0, w1, w2, w3, m_hi, m_lo, IKIND)
        m = block_max_u32(amax_of_accumulators(m_hi, m_lo, IKIND), red)
        if cuda.threadIdx.x == 0:
            cuda.atomic.max(amax_bits, 0, m)
    kern.__name__ = kern.__qualname__ = name
    k = kernel(kern)
    k.blocks_per_sm = 8             # 32 registers: 2048 threads per SM
    return k


quantize_stream_kernel = KernelFamily("quantize_fp4_nv_stream", make_quantize_stream_kernel)
amax_stream_kernel = KernelFamily("amax_fp4_stream", make_amax_stream_kernel)
_RESIDENT = {}                      # (kernel name, argument types, threads) -> resident CTAs
RESIDENT_SOURCE = {}                # kernel name -> how its one-wave grid was sized


def _one_wave(k, args, work_items):
    """The launch tuple of a one-wave (persistent) grid: THREADS per CTA and as many CTAs as fit on
    the GPU at once for this compiled kernel (occupancy API), at most one per THREADS work items.
    Simulator: CTAs of 32 threads, at most 2, so that tiny tests cover several CTAs and several
    lockstep sweeps."""
    from ..runtime import env
    if env.mode() != "gpu":
        return (k, min(2, max(1, -(-work_items // 32))), args, 32, 0)
    return (k, _resident_grid(k, args, work_items, THREADS), args, THREADS, 0)


def _resident_grid(k, args, work_items, threads):
    """Resident CTAs of k for these arguments: numba's occupancy query (cuOccupancy...), cached;
    if that query fails on this numba / driver, ``k.blocks_per_sm`` (what ptxas's register count
    gave for sm_90a here: 32 registers -> 8 CTAs of 256, 48 -> 5) times the SM count. Which one
    was used is recorded in ``RESIDENT_SOURCE`` (the benchmark prints it)."""
    need = max(1, -(-work_items // threads))
    disp = k.gpu
    sig = tuple(disp.typeof_pyval(a) for a in args)
    key = (k.__name__, sig, threads)
    if key not in _RESIDENT:
        if sig not in disp.overloads:
            disp.compile(sig)
        try:
            _RESIDENT[key] = max(1, int(disp.overloads[sig].max_cooperative_grid_blocks(threads)))
            RESIDENT_SOURCE[k.__name__] = f"{_RESIDENT[key]} CTAs (occupancy API)"
        except Exception as e:          # a performance parameter only: the kernels are correct
            _RESIDENT[key] = detect_gpu().sm_count * k.blocks_per_sm   # for any grid size
            RESIDENT_SOURCE[k.__name__] = (f"{_RESIDENT[key]} CTAs (fallback: occupancy query "
                                           f"failed: {type(e).__name__}: {e})"[:200])
    return min(_RESIDENT[key], need)


# ----------------------------------------------------------------------------------------------
# host side: validation, launch, registration
# ----------------------------------------------------------------------------------------------
def _grid(work_items: int, per_block: int = THREADS, waves_per_sm: int = 16) -> int:
    """Blocks for a grid-stride loop: enough to fill every SM several times over, no more."""
    need = max(1, -(-work_items // per_block))
    gpu = detect_gpu()
    return min(need, (gpu.sm_count if gpu else 1) * waves_per_sm) if gpu else need


def _check_quantized(q) -> None:
    if not isinstance(q, QuantizedFP4):
        raise TypeError(f"decode_fp4 takes a formats.QuantizedFP4 (from formats.quantize or "
                        f"quantize_fp4), got {type(q).__name__}")
    for name in ("data", "scales"):
        a = getattr(q, name)
        if isinstance(a, np.ndarray) and not a.flags.c_contiguous:
            raise ValueError(f"q.{name} is not C-contiguous; pass np.ascontiguousarray(q.{name})")


def _check_aligned(*arrays) -> None:
    for a in arrays:
        ptr = a.__cuda_array_interface__["data"][0] if is_device_array(a) else 0
        if ptr % 16:
            raise ValueError("the production FP4 kernels use 16-byte vector loads/stores and need "
                             f"16-byte aligned device buffers (got address {ptr:#x}); pass a fresh "
                             "allocation or impl='reference'")


class _Plan:
    """A validated call: buffers placed, launches listed. ``run()`` only launches (the benchmarks
    time exactly that); ``result()`` brings the outputs back in the caller's kind."""

    def __init__(self, launches, finish):
        self.launches, self.finish = launches, finish

    def run(self):
        for launch in self.launches:            # (kernel, grid, args[, threads, shared bytes])
            kern, grid, args = launch[:3]
            threads, shared = launch[3:] if len(launch) > 3 else (THREADS, 0)
            kern.launch(grid, threads, *args, shared_bytes=shared)
        return self

    def result(self):
        return self.finish()


def decode_plan(q, out_dtype, kern, ref, out=None) -> _Plan:
    _check_quantized(q)
    name = _dtype_name(out_dtype)
    io = ArrayIO(q.data, q.scales)
    spec = FORMATS[q.fmt]
    data = io.to_kernel(q.data).reshape(-1)
    scales = io.to_kernel(q.scales).reshape(-1)
    n = int(np.prod(q.shape))
    kind = _KIND[OUT_DTYPES[name]]
    store_dt = np.uint16 if kind == BF16 else OUT_DTYPES[name]
    if out is None:
        out = io.empty(n, store_dt)
    elif tuple(out.shape) != (n,) or np.dtype(out.dtype) != np.dtype(store_dt):
        raise ValueError(f"out must be a flat ({n},) {np.dtype(store_dt)} buffer")
    g = np.float32(q.global_scale if spec.has_global_scale else 1.0)
    launches = []
    if n and ref:
        launches.append((kern, -(-(n // 2) // THREADS),
                         (data, scales, g) + _decode_key(q.fmt, kind) + (out,)))
    elif n:
        _check_aligned(data, out)
        k = kern.get(*_decode_key(q.fmt, kind))
        units = (n // 2) // k.unit_bytes
        launches.append((k, _grid(units + 1, k.units_per_block), (data, scales, g, out, units)))
    return _Plan(launches, lambda: io.result(out, OUT_DTYPES[name] if kind == BF16 else None)
                 .reshape(q.shape))


def _decode(q, out_dtype, kern, ref, out=None):
    return decode_plan(q, out_dtype, kern, ref, out).run().result()


@kernel
def reset_kernel(amax_bits, flag, amax_init):
    amax_bits[0] = amax_init
    flag[0] = 0


@kernel
def reset_fused_kernel(amax_bits, flag, sync):
    amax_bits[0] = 0
    flag[0] = 0
    flag[1] = 0
    sync[0] = 0


NVFP4_VARIANTS = ("twopass", "fused", "stream", "stream_l2")
NVFP4_DEFAULT_VARIANT = "stream"    # fastest on the H100 (2026-11-26: 96.1 us vs twopass 110.9)
_FUSED = {}                         # id(quantize family) -> its fused family (set below)


def nvfp4_variant(variant=None) -> str:
    """The nvfp4 amax + quantize variant: the argument, else $DSV4_FP4_NVFP4_VARIANT, else the
    default ``stream`` (lockstep amax pass + the lean quantize pass); ``twopass``: amax pass +
    the first quantize kernel; ``fused``: one persistent kernel; ``stream_l2``: ``stream`` with L2
    eviction priorities)."""
    import os
    v = variant or os.environ.get("DSV4_FP4_NVFP4_VARIANT") or NVFP4_DEFAULT_VARIANT
    if v not in NVFP4_VARIANTS:
        raise ValueError(f"nvfp4 quantize variant {v!r}: use one of {NVFP4_VARIANTS}")
    return v


def _fused_launch(k, flat, amax, sync, data, scales, flag, nchunks, grid=None):
    """The fused kernel's launch tuple: grid = one CTA per SM (at most one per round; the
    simulator runs CTAs one after another, so there: 1), the dynamic shared memory of KEEP rounds
    (its > 48 KB limit raised once per compiled signature on the GPU)."""
    from ..runtime import env
    nrounds = -(-nchunks // k.threads)
    gpu = detect_gpu() if env.mode() == "gpu" else None
    if grid is None:
        grid = max(1, min(nrounds, gpu.sm_count if gpu else 1))
    smem = k.keep * k.round_bytes
    args = (flat, amax, sync, data, scales, flag, np.int64(nchunks), np.int64(FUSED_SPIN_LIMIT))
    if gpu is not None and smem > 48 * 1024:
        k.reserve_dynamic_shared(args, smem)
    return (k, grid, args, k.threads, smem)


def quantize_plan(x, fmt, kern, ref, global_amax=None, variant=None, fused_config=None) -> _Plan:
    """Validate, place buffers and list the launches of one quantize call (``kern``: the reference
    kernel or a production KernelFamily). nvfp4 plans launch the global-amax pass first, unless
    ``global_amax`` is given (then its float32 bits seed the amax buffer), or, production with
    ``variant="fused"`` (see ``nvfp4_variant``), one persistent kernel doing both; ``"stream"`` /
    ``"stream_l2"`` use the lockstep amax pass and the lean quantize pass (also with a given amax).
    ``fused_config``: (threads, smem budget, grid) overrides for the fused kernel (tests)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown FP4 format {fmt!r}; use one of {sorted(FORMATS)}")
    spec = FORMATS[fmt]
    amax_init = np.uint32(0)
    if global_amax is not None:
        if not spec.has_global_scale:
            raise ValueError(f"{fmt} has no global scale; global_amax is for nvfp4 only")
        ga = np.float32(global_amax)
        if not (np.isfinite(ga) and ga >= 0):
            raise ValueError(f"global_amax must be finite and >= 0, got {global_amax!r}")
        amax_init = np.array(ga, np.float32).view(np.uint32)[()]
    v = nvfp4_variant(variant) if (not ref and spec.has_global_scale) else "twopass"
    fused = v == "fused" and global_amax is None
    stream = v in ("stream", "stream_l2")          # with or without a given global_amax
    shape = tuple(x.shape)
    ikind, _ = float_kind(x, "quantize_fp4 input", allow_f16=True)
    if not shape or shape[-1] % spec.block:
        raise ValueError(f"the last axis ({shape[-1] if shape else 'scalar'}) must be a multiple "
                         f"of {spec.block} for {fmt}; pad it")
    if not is_device_array(x):
        if not x.flags.c_contiguous:
            raise ValueError("x is not C-contiguous; pass np.ascontiguousarray(x)")
        if not np.isfinite(x.astype(np.float32)).all():
            raise ValueError("x contains NaN or inf; FP4 cannot represent them: clean the input")
    n = int(np.prod(shape))
    if not ref and n % 32:   # nvfp4 with n = 16 (mod 32): a lone 16-block at the end
        raise ValueError(f"the production quantize needs a total element count that is a "
                         f"multiple of 32 (got {n}); use impl='reference'")
    io = ArrayIO(x)
    flat = io.to_kernel(x.view(np.uint16) if ikind == BF16 and not is_device_array(x) else x)
    flat = flat.reshape(-1)
    data = io.empty(n // 2, np.uint8)
    scales = io.empty(n // spec.block, np.uint8)
    amax = io.to_kernel(np.zeros(1, np.uint32))
    flag = io.to_kernel(np.zeros(2, np.int32))     # [0]: NaN / inf seen, [1]: barrier gave up
    launches = []
    if n and fused:
        _check_aligned(flat, data)
        threads, budget, grid = fused_config or (FUSED_THREADS, FUSED_SMEM_BUDGET, None)
        k = _FUSED[id(kern)].get(*fused_key(fmt, ikind, threads, budget))
        sync = io.to_kernel(np.zeros(1, np.int32))
        launches.append((reset_fused_kernel, 1, (amax, flag, sync)))
        launches.append(_fused_launch(k, flat, amax, sync, data, scales, flag, n // 32, grid))
    elif n:
        launches.append((reset_kernel, 1, (amax, flag, amax_init)))
        amax_pass = spec.has_global_scale and global_amax is None
        if ref:
            if amax_pass:
                launches.append((amax_ref_kernel, -(-n // THREADS), (flat, ikind, amax)))
            launches.append((quantize_ref_kernel, -(-(n // spec.block) // THREADS),
                             (flat, ikind, spec.block, _FMT_ID[fmt], amax, data, scales)))
        else:
            _check_aligned(flat, data)
            nvec = n * np.dtype(flat.dtype).itemsize // 16
            if stream:
                hint = v == "stream_l2"
                if amax_pass:
                    ka = amax_stream_kernel.get(ikind, hint)
                    args = (flat, amax, nvec, L2_KEEP_BYTES // 16)
                    launches.append(_one_wave(ka, args, -(-nvec // AMAX_UNROLL)))
                kq = quantize_stream_kernel.get(ikind, hint)
                args = (flat, amax, data, scales.view(np.uint16), flag, n // 32)
                launches.append(_one_wave(kq, args, n // 32))
            else:
                if amax_pass:
                    launches.append((amax_prod_kernel.get(ikind), _grid(nvec), (flat, amax, nvec)))
                launches.append((kern.get(_FMT_ID[fmt], spec.block, ikind), _grid(n // 32),
                                 (flat, amax, data, scales, flag, n // 32)))

    def finish():
        amax_host = amax.copy_to_host() if hasattr(amax, "copy_to_host") else amax
        flag_host = flag.copy_to_host() if hasattr(flag, "copy_to_host") else flag
        if flag_host[1]:                            # the fused kernel's barrier gave up
            import warnings
            warnings.warn("fused nvfp4 quantize: the grid barrier timed out (were all CTAs "
                          "resident?); re-running with the two-pass variant", RuntimeWarning)
            return quantize_plan(x, fmt, kern, ref, None, "twopass").run().result()
        if flag_host[0] or (spec.has_global_scale and amax_host[0] >= 0x7F800000):
            raise ValueError("x contains NaN or inf; FP4 cannot represent them: clean the input")
        a = amax_host.view(np.float32)[0]
        if spec.has_global_scale and a > 0 and not np.isfinite(np.float32(2688.0) / a):
            raise ValueError(f"nvfp4: amax {a} is so small that the global encode scale "
                             f"2688/amax overflows float32; rescale the input")
        gscale = None
        if spec.has_global_scale:
            gscale = np.float32(a / np.float32(2688.0)) if a > 0 else np.float32(1.0)
        lead = shape[:-1]
        d = io.result(data).reshape(lead + (shape[-1] // 2,))
        s_ = io.result(scales).reshape(lead + (shape[-1] // spec.block,))
        return QuantizedFP4(d, s_, gscale, fmt, shape)
    return _Plan(launches, finish)


def _quantize(x, fmt, kern, ref, global_amax=None, variant=None):
    return quantize_plan(x, fmt, kern, ref, global_amax, variant).run().result()


def _kernels_decode(family, fmts=("dsv4_fp4", "nvfp4"), okinds=(F32, F16, BF16)):
    """(kernel, signature) of every specialization (mxfp4 shares dsv4_fp4's: same block and
    scale kind); the compile tests and the device warm-up walk this list."""
    from numba import types as t
    out_t = {F32: t.float32, F16: t.float16, BF16: t.uint16}
    return [(family.get(*_decode_key(fmt, ok)),
             (t.uint8[::1], t.uint8[::1], t.float32, out_t[ok][::1], t.int64))
            for fmt in fmts for ok in okinds]


def _kernels_quantize(family, fmts=("dsv4_fp4", "mxfp4", "nvfp4"), ikinds=(F32, F16, BF16)):
    from numba import types as t
    in_t = {F32: t.float32, F16: t.float16, BF16: t.uint16}
    return [(family.get(_FMT_ID[fmt], FORMATS[fmt].block, ik),
             (in_t[ik][::1], t.uint32[::1], t.uint8[::1], t.uint8[::1], t.int32[::1], t.int64))
            for fmt in fmts for ik in ikinds]


def _kernels_fused(family, ikinds=(F32, F16, BF16)):
    """(kernel, signature) of the fused nvfp4 quantize kernels (production CTA size and smem)."""
    from numba import types as t
    in_t = {F32: t.float32, F16: t.float16, BF16: t.uint16}
    return [(family.get(*fused_key("nvfp4", ik)),
             (in_t[ik][::1], t.uint32[::1], t.int32[::1], t.uint8[::1], t.uint8[::1],
              t.int32[::1], t.int64, t.int64)) for ik in ikinds]


def _kernels_stream(ikinds=(F32, F16, BF16), hints=(False, True)):
    """(kernel, signature) of the stream variants' amax and quantize kernels."""
    from numba import types as t
    in_t = {F32: t.float32, F16: t.float16, BF16: t.uint16}
    out = []
    for ik in ikinds:
        for h in hints:
            out.append((amax_stream_kernel.get(ik, h),
                        (in_t[ik][::1], t.uint32[::1], t.int64, t.int64)))
            out.append((quantize_stream_kernel.get(ik, h),
                        (in_t[ik][::1], t.uint32[::1], t.uint8[::1], t.uint16[::1],
                         t.int32[::1], t.int64)))
    return out


def _kernels_amax(ikinds=(F32, F16, BF16)):
    from numba import types as t
    in_t = {F32: t.float32, F16: t.float16, BF16: t.uint16}
    return [(amax_prod_kernel.get(ik), (in_t[ik][::1], t.uint32[::1], t.int64)) for ik in ikinds]


_FUSED[id(quantize_sm90_kernel)] = quantize_fused_sm90_kernel
_FUSED[id(quantize_sm100_kernel)] = quantize_fused_sm100_kernel

registry.register("decode_fp4", "reference")(
    lambda q, out_dtype, out=None: _decode(q, out_dtype, decode_ref_kernel, ref=True, out=out))
registry.register("decode_fp4", "production", arch="sm_90a",
                  kernels=lambda: _kernels_decode(decode_sm90_kernel))(
    lambda q, out_dtype, out=None: _decode(q, out_dtype, decode_sm90_kernel, ref=False, out=out))
registry.register("decode_fp4", "production", arch="sm_100a",
                  kernels=lambda: _kernels_decode(decode_sm100_kernel))(
    lambda q, out_dtype, out=None: _decode(q, out_dtype, decode_sm100_kernel, ref=False, out=out))
registry.register("quantize_fp4", "reference")(
    lambda x, fmt, global_amax=None, variant=None:
    _quantize(x, fmt, quantize_ref_kernel, True, global_amax))
registry.register("quantize_fp4", "production", arch="sm_90a",
                  kernels=lambda: (_kernels_quantize(quantize_sm90_kernel) + _kernels_amax()
                                   + _kernels_fused(quantize_fused_sm90_kernel)
                                   + _kernels_stream()))(
    lambda x, fmt, global_amax=None, variant=None:
    _quantize(x, fmt, quantize_sm90_kernel, False, global_amax, variant))
registry.register("quantize_fp4", "production", arch="sm_100a",
                  kernels=lambda: (_kernels_quantize(quantize_sm100_kernel) + _kernels_amax()
                                   + _kernels_fused(quantize_fused_sm100_kernel)
                                   + _kernels_stream()))(
    lambda x, fmt, global_amax=None, variant=None:
    _quantize(x, fmt, quantize_sm100_kernel, False, global_amax, variant))


def decode_fp4(q: QuantizedFP4, out_dtype="bfloat16", impl: str | None = None, out=None):
    """Decode a block-scaled FP4 tensor to ``out_dtype``: bitwise ``formats.dequantize(q, out_dtype)``.

    Constraints:
      * ``q``: a ``formats.QuantizedFP4`` of format ``nvfp4``, ``mxfp4`` or ``dsv4_fp4``, any
        leading shape, last axis a multiple of the block (16 / 32). Its ``data`` and ``scales``
        are C-contiguous uint8 NumPy arrays (result: NumPy) or device arrays (result: device).
      * ``out_dtype``: ``"bfloat16"`` (default), ``"float16"``, ``"float32"`` or the dtypes.
        Device bfloat16 results are returned as uint16 bit patterns (no CUDA type code exists).
      * Scale codes that are NaN (UE8M0 0xFF, E4M3 0x7F/0xFF) decode to NaN (payload unspecified).
      * production: device buffers 16-byte aligned (fresh allocations are).
      * ``impl``: "reference" | "production" | "production:sm_90a" | "production:sm_100a" | "auto".
      * ``out``: optional preallocated flat buffer of q.size elements (uint16 for bfloat16) of the
        same kind (NumPy / device) as the result; it is filled and returned reshaped.
    """
    return registry.resolve("decode_fp4", impl).fn(q, out_dtype, out=out)


def quantize_fp4(x, fmt: str = "dsv4_fp4", impl: str | None = None,
                 global_amax=None, variant: str | None = None) -> QuantizedFP4:
    """Quantize ``x`` along its last axis: bitwise ``formats.quantize(x, fmt)`` (codes and scales).

    Constraints:
      * ``x``: float32, float16 or bfloat16 (ml_dtypes; on the device its uint16 bits), C-contiguous,
        finite (NaN/inf raise ValueError: before launch for NumPy input, after it for device input),
        last axis a multiple of the block (16 nvfp4, 32 mxfp4/dsv4_fp4).
      * production: total element count a multiple of 32; device buffers 16-byte aligned.
      * nvfp4 runs an extra pass for the per-tensor amax (the global scale), unless
        ``global_amax`` (nvfp4 only: a finite float >= 0, e.g. a calibrated amax) is given; the
        result is then bitwise ``formats.quantize(x, "nvfp4", global_amax=global_amax)``.
      * ``variant`` (nvfp4 production): ``"stream"`` (the default, see below), ``"twopass"``
        (amax pass + the first quantize kernel), ``"fused"`` (one persistent kernel that keeps part of the input in shared
        memory across a grid barrier; without ``global_amax`` only), ``"stream"`` (one-wave
        lockstep amax pass back to front, then the lean quantize pass front to back) or
        ``"stream_l2"`` (the same with L2 evict_last / evict_first priorities); also
        $DSV4_FP4_NVFP4_VARIANT. All are bitwise the spec.
    """
    return registry.resolve("quantize_fp4", impl).fn(x, fmt, global_amax=global_amax,
                                                     variant=variant)


def time_decode(q: QuantizedFP4, out_dtype="bfloat16", kern=None):
    """(median microseconds, GB/s of unique bytes, output as NumPy bits) of the production decode
    kernel launch on device-resident data (GPU only; ``kern`` defaults to the registered sm_90a
    kernel). The output is returned so callers check what they timed.
    Unique bytes = packed codes + scales + output, each counted once."""
    from numba import cuda

    from ..runtime.bench import time_gpu
    dq = QuantizedFP4(cuda.to_device(q.data), cuda.to_device(q.scales), q.global_scale, q.fmt,
                      q.shape)
    name = _dtype_name(out_dtype)
    plan = decode_plan(dq, name, kern or decode_sm90_kernel, ref=False)
    us = time_gpu(plan.run)
    n = int(np.prod(q.shape))
    nbytes = q.data.nbytes + q.scales.nbytes + n * OUT_DTYPES[name].itemsize
    return us, nbytes / us / 1e3, plan.result().copy_to_host()


def time_quantize(x_device, fmt, kern=None, global_amax=None, variant=None):
    """(median microseconds, GB/s of unique bytes, the QuantizedFP4 the timed launches produced,
    on the device) of the production quantize launches on a device-resident input. nvfp4: with
    ``global_amax=None`` the launches include the global-amax pass (``variant``: see
    ``nvfp4_variant``); with a given amax they are the reset and the quantize kernel
    only. Unique bytes = input + codes + scales."""
    from ..runtime.bench import time_gpu
    plan = quantize_plan(x_device, fmt, kern or quantize_sm90_kernel, ref=False,
                         global_amax=global_amax, variant=variant)
    us = time_gpu(plan.run)
    n = int(np.prod(x_device.shape))
    nbytes = n * x_device.dtype.itemsize + n // 2 + n // FORMATS[fmt].block
    return us, nbytes / us / 1e3, plan.result()
