"""FP4 production kernels on a real GPU: bitwise against the spec, device arrays, poisoned outputs."""
import ml_dtypes
import numpy as np
import pytest

from numba import cuda, float32, uint32

import dsv4_numba as d
from dsv4_numba import formats, runtime
from dsv4_numba.runtime import kernel
from dsv4_numba.stages.fp4 import (bits_f32, div6_rn, e2m1_encode_bits, e2m1_step, e4m3_code,
                                   e4m3_code_bits)
from dsv4_numba.testing import assert_close

pytestmark = pytest.mark.gpu
DT = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def _x(rng, shape):
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, shape[:-1] + (1,))
    x.reshape(-1)[rng.integers(0, x.size, max(1, x.size // 64))] *= 50
    return x.astype(np.float32)


def _same(got, want):
    nan = np.isnan(want.astype(np.float32))
    assert_close(np.isnan(got.astype(np.float32)), nan, bitwise=True, name="NaN mask")
    assert_close(np.where(nan, 0, got), np.where(nan, 0, want), bitwise=True)


@pytest.fixture(scope="module")
def prod():
    arch = runtime.device_arch()
    if arch not in ("sm_90a", "sm_100a"):
        pytest.skip(f"no production FP4 kernels for {arch}")
    return "production"


@pytest.mark.parametrize("fmt", ["dsv4_fp4", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("shape", [(1, 32), (127, 96), (129, 4096), (7, 3, 160), (1000, 8192)])
def test_decode_matches_spec(prod, fmt, shape):
    rng = np.random.default_rng(sum(shape))
    q = formats.quantize(_x(rng, shape), fmt)
    for dt in DT:
        _same(d.decode_fp4(q, dt, impl=prod), formats.dequantize(q, DT[dt]))


@pytest.mark.parametrize("fmt", ["dsv4_fp4", "mxfp4", "nvfp4"])
def test_decode_every_byte_and_scale_code(prod, fmt):
    blk = formats.FORMATS[fmt].block
    data = np.tile(np.arange(256, dtype=np.uint8), (256, 1))          # every byte, every row
    scales = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 512 // blk, 1)  # every scale code
    g = np.float32(0.37) if formats.FORMATS[fmt].has_global_scale else None
    q = formats.QuantizedFP4(data, scales, g, fmt, (256, 512))
    for dt in DT:
        _same(d.decode_fp4(q, dt, impl=prod), formats.dequantize(q, DT[dt]))


@pytest.mark.parametrize("fmt", ["dsv4_fp4", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("in_dt", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("shape", [(1, 32), (127, 64), (129, 2048), (512, 8192)])
def test_quantize_matches_spec(prod, fmt, in_dt, shape):
    rng = np.random.default_rng(sum(shape) + 7)
    x = _x(rng, shape)
    if in_dt is np.float16:                       # keep outliers inside float16's range
        x = np.clip(x, -6e4, 6e4)
    x = x.astype(in_dt)
    x[0, :32] = 0
    q = d.quantize_fp4(x, fmt, impl=prod)
    s = formats.quantize(x, fmt)
    assert_close(q.data, s.data, bitwise=True, name="codes")
    assert_close(q.scales, s.scales, bitwise=True, name="scales")
    assert q.global_scale == s.global_scale


def test_device_arrays_stay_on_device_and_outputs_are_overwritten(prod):
    from numba import cuda
    rng = np.random.default_rng(3)
    q = formats.quantize(_x(rng, (64, 1024)), "dsv4_fp4")
    dq = formats.QuantizedFP4(cuda.to_device(q.data), cuda.to_device(q.scales), None, "dsv4_fp4",
                              q.shape)
    out = cuda.to_device(np.full(q.size if hasattr(q, "size") else 64 * 1024, np.nan, np.float32))
    r1 = d.decode_fp4(dq, "float32", impl=prod, out=out)
    assert hasattr(r1, "copy_to_host")
    h1 = r1.copy_to_host()
    assert not np.isnan(h1).any()
    h2 = d.decode_fp4(dq, "float32", impl=prod).copy_to_host()
    assert_close(h1, h2, bitwise=True, name="repeat")
    _same(h1, formats.dequantize(q, np.float32))
    qq = d.quantize_fp4(cuda.to_device(formats.dequantize(q, np.float32)), "dsv4_fp4", impl=prod)
    assert hasattr(qq.data, "copy_to_host")


def test_misaligned_device_buffer_is_rejected(prod):
    from numba import cuda
    q = formats.quantize(np.ones((4, 64), np.float32), "mxfp4")
    raw = cuda.to_device(np.zeros(4 * 32 + 8, np.uint8))
    dq = formats.QuantizedFP4(raw[8:].reshape(4, 32), cuda.to_device(q.scales), None, "mxfp4", q.shape)
    with pytest.raises(ValueError, match="16-byte aligned"):
        d.decode_fp4(dq, "float32", impl=prod)


def test_device_nan_input_raises_after_launch(prod):
    from numba import cuda
    x = np.ones((2, 64), np.float32)
    x[1, 5] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        d.quantize_fp4(cuda.to_device(x), "dsv4_fp4", impl=prod)


@pytest.mark.parametrize("in_dt", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("where", ["first", "last", "middle"])
def test_nvfp4_global_amax_pass(prod, in_dt, where):
    """The amax pass (16-byte grid-stride loads, warp max, one atomicMax per block) finds the
    tensor amax wherever it sits, negative, across many blocks; tiny-only inputs too."""
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, (300, 4096)).astype(np.float32)
    pos = {"first": 0, "last": x.size - 1, "middle": x.size // 2 + 17}[where]
    x.reshape(-1)[pos] = -3000.0
    for xi in (x, x * np.float32(1e-3)):
        xi = xi.astype(in_dt)
        q = d.quantize_fp4(xi, "nvfp4", impl=prod)
        s = formats.quantize(xi, "nvfp4")
        assert q.global_scale == s.global_scale
        assert_close(q.scales, s.scales, bitwise=True, name="scales")
        assert_close(q.data, s.data, bitwise=True, name="codes")


def test_timing_helpers_run(prod):
    """tools/bench_fp4.py's helpers on a small tensor: decode output checked, both quantize timings."""
    from numba import cuda
    from dsv4_numba.stages import fp4
    rng = np.random.default_rng(5)
    x = _x(rng, (256, 1024)).astype(ml_dtypes.bfloat16)
    for fmt in ("dsv4_fp4", "mxfp4", "nvfp4"):
        q = formats.quantize(x, fmt)
        us, gbs, res = fp4.time_decode(q, "bfloat16")
        assert us > 0 and gbs > 0
        want = formats.dequantize(q, ml_dtypes.bfloat16).reshape(-1).view(np.uint16)
        assert_close(res.reshape(-1), want, bitwise=True, name="timed decode output")
        dx = cuda.to_device(x.view(np.uint16))
        us, gbs, got = fp4.time_quantize(dx, fmt)
        assert us > 0 and gbs > 0
        assert_close(got.data.copy_to_host(), q.data, bitwise=True, name="timed quantize codes")
        if fmt == "nvfp4":
            amax = np.abs(x.astype(np.float32)).max()
            us, gbs, got = fp4.time_quantize(dx, fmt, global_amax=amax)
            assert got.global_scale == q.global_scale
            assert_close(got.scales.copy_to_host(), q.scales, bitwise=True, name="scales")


@pytest.mark.parametrize("in_dt", [np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("factor", [1.0, 0.5, 4.0])
def test_nvfp4_given_global_amax(prod, in_dt, factor):
    """quantize_fp4(global_amax=) skips the amax pass; bitwise the spec with the same argument,
    for the true amax, a larger one and a smaller one (blocks above it saturate)."""
    rng = np.random.default_rng(13)
    x = _x(rng, (300, 2048)).astype(in_dt)
    amax = np.float32(np.abs(x.astype(np.float32)).max() * factor)
    q = d.quantize_fp4(x, "nvfp4", impl=prod, global_amax=amax)
    s = formats.quantize(x, "nvfp4", global_amax=amax)
    assert q.global_scale == s.global_scale
    assert_close(q.scales, s.scales, bitwise=True, name="scales")
    assert_close(q.data, s.data, bitwise=True, name="codes")


# ---------------------------------------------- the fused nvfp4 quantize (variant="fused")
# One persistent kernel: amax phase (keeping 224 KB per SM of the input in shared memory), a grid
# barrier, quantize phase. Select with -k fused (about a minute on an H100, compiles included).
def _fused_on_device(x):
    """Fused nvfp4 quantize of NumPy x through a plan whose outputs are poisoned first (0xAB in
    every code byte and scale byte: anything left unwritten fails the bitwise check); a barrier
    time-out warning is an error here."""
    import warnings

    from numba import cuda

    from dsv4_numba.stages import fp4
    xd = cuda.to_device(x.view(np.uint16) if x.dtype == ml_dtypes.bfloat16 else x)
    plan = fp4.quantize_plan(xd, "nvfp4", fp4.quantize_sm90_kernel, ref=False, variant="fused")
    k, grid, args, threads, smem = plan.launches[-1]
    assert k.__name__.startswith("quantize_fp4_fused") and threads == fp4.FUSED_THREADS
    for buf in (args[3], args[4]):
        if hasattr(buf, "copy_to_device"):
            buf.copy_to_device(np.full(buf.shape, 0xAB, np.uint8))
        else:                               # NumPy buffers (a simulator dry run of this helper)
            buf[:] = 0xAB
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        q = plan.run().result()
    host = (lambda a: a.copy_to_host()) if hasattr(q.data, "copy_to_host") else np.asarray
    return (host(q.data).reshape(x.shape[:-1] + (-1,)),
            host(q.scales).reshape(x.shape[:-1] + (-1,)), q.global_scale)


@pytest.mark.parametrize("in_dt,shape", [
    (ml_dtypes.bfloat16, (4096, 8192)),   # ~15.5 rounds per CTA: 7 kept, the rest re-read
    (ml_dtypes.bfloat16, (1, 32)),        # one chunk: one CTA, everything kept
    (ml_dtypes.bfloat16, (129, 2048)),
    (np.float32, (2048, 8192)),           # float32: 3 kept rounds of 8 vectors per chunk
    (np.float16, (127, 4096)),
])
def test_fused_nvfp4_matches_spec(prod, in_dt, shape):
    rng = np.random.default_rng(sum(shape) + 21)
    x = _x(rng, shape)
    if in_dt is np.float16:
        x = np.clip(x, -6e4, 6e4)
    x = x.astype(in_dt)
    x[0, :32] = 0
    data, scales, g = _fused_on_device(x)
    s = formats.quantize(x, "nvfp4")
    assert g == s.global_scale
    assert_close(scales, s.scales, bitwise=True, name="scales")
    assert_close(data, s.data, bitwise=True, name="codes")


@pytest.mark.parametrize("where", ["first", "last", "middle", "kept_of_last_cta"])
def test_fused_nvfp4_amax_anywhere(prod, where):
    """The tensor amax (negative) in a kept round, a re-read round or the last CTA's: every CTA
    must see the same global scale after the barrier."""
    rng = np.random.default_rng(12)
    x = rng.uniform(-1, 1, (2048, 8192)).astype(np.float32)    # 1024 rounds: 7-8 per CTA
    n_sm = runtime.detect_gpu().sm_count
    pos = {"first": 0, "last": x.size - 1, "middle": x.size // 2 + 17,
           "kept_of_last_cta": (n_sm - 1) * 512 * 32 + 5}[where]
    x.reshape(-1)[pos] = -3000.0
    x = x.astype(ml_dtypes.bfloat16)
    data, scales, g = _fused_on_device(x)
    s = formats.quantize(x, "nvfp4")
    assert g == s.global_scale
    assert_close(scales, s.scales, bitwise=True, name="scales")
    assert_close(data, s.data, bitwise=True, name="codes")


def test_fused_nvfp4_public_api_and_errors(prod):
    from numba import cuda
    rng = np.random.default_rng(4)
    x = _x(rng, (300, 4096)).astype(ml_dtypes.bfloat16)
    q = d.quantize_fp4(x, "nvfp4", impl=prod, variant="fused")
    s = formats.quantize(x, "nvfp4")
    assert q.global_scale == s.global_scale
    assert_close(q.data, s.data, bitwise=True, name="codes")
    bad = np.ones((2, 64), np.float32)
    bad[1, 5] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        d.quantize_fp4(cuda.to_device(bad), "nvfp4", impl=prod, variant="fused")


def test_fused_timing_helper_runs(prod):
    from numba import cuda
    from dsv4_numba.stages import fp4
    rng = np.random.default_rng(6)
    x = _x(rng, (1024, 4096)).astype(ml_dtypes.bfloat16)
    us, gbs, got = fp4.time_quantize(cuda.to_device(x.view(np.uint16)), "nvfp4", variant="fused")
    assert us > 0 and gbs > 0
    s = formats.quantize(x, "nvfp4")
    assert got.global_scale == s.global_scale
    assert_close(got.data.copy_to_host(), s.data, bitwise=True, name="timed fused codes")


# ---------------------------------------------- the stream nvfp4 variants ("stream", "stream_l2")
# A one-wave lockstep amax pass (back to front) and the lean quantize pass (front to back).
# Select with -k stream (compiles: 2 variants x 3 input kinds x 2 kernels, plus one probe).
STREAM = ("stream", "stream_l2")


def _stream_on_device(x, variant, global_amax=None):
    """nvfp4 quantize of NumPy x through a stream plan whose outputs are poisoned first (0xAB in
    every code and scale byte: anything left unwritten fails the bitwise check)."""
    from dsv4_numba.stages import fp4
    xd = cuda.to_device(x.view(np.uint16) if x.dtype == ml_dtypes.bfloat16 else x)
    plan = fp4.quantize_plan(xd, "nvfp4", fp4.quantize_sm90_kernel, ref=False, variant=variant,
                             global_amax=global_amax)
    k, grid, args = plan.launches[-1][:3]
    assert k.__name__.startswith("quantize_fp4_nv_stream")
    for buf, dt in ((args[2], np.uint8), (args[3], np.uint16)):
        if hasattr(buf, "copy_to_device"):
            buf.copy_to_device(np.full(buf.shape, 0xABAB, np.uint32).astype(dt))
        else:                               # NumPy buffers (a simulator dry run of this helper)
            buf[:] = np.full(buf.shape, 0xABAB, np.uint32).astype(dt)
    q = plan.run().result()
    host = (lambda a: a.copy_to_host()) if hasattr(q.data, "copy_to_host") else np.asarray
    return (host(q.data).reshape(x.shape[:-1] + (-1,)),
            host(q.scales).reshape(x.shape[:-1] + (-1,)), q.global_scale)


_SPECS = {}                              # (case key) -> spec, shared by the two variants


def _check_stream(x, variant, global_amax=None, key=None):
    data, scales, g = _stream_on_device(x, variant, global_amax)
    if key is None or key not in _SPECS:
        _SPECS.clear()                   # keep one (large) spec at a time
        _SPECS[key] = formats.quantize(x, "nvfp4", global_amax=global_amax)
    s = _SPECS[key]
    assert g == s.global_scale
    assert_close(scales, s.scales, bitwise=True, name="scales")
    assert_close(data, s.data, bitwise=True, name="codes")


@pytest.mark.parametrize("variant", STREAM)
@pytest.mark.parametrize("in_dt,shape", [
    pytest.param(ml_dtypes.bfloat16, (4096, 8192), id="bf16-4096x8192"),  # 3 lockstep windows
    pytest.param(ml_dtypes.bfloat16, (1, 32), id="bf16-1x32"),   # one chunk, the remainder loop
    pytest.param(ml_dtypes.bfloat16, (129, 2048), id="bf16-129x2048"),
    pytest.param(np.float32, (2048, 8192), id="fp32-2048x8192"),
    pytest.param(np.float16, (127, 4096), id="fp16-127x4096"),
])
def test_stream_nvfp4_matches_spec(prod, variant, in_dt, shape):
    rng = np.random.default_rng(sum(shape) + 31)
    x = _x(rng, shape)
    if in_dt is np.float16:
        x = np.clip(x, -6e4, 6e4)
    x = x.astype(in_dt)
    x[0, :32] = 0
    if shape[0] > 2:
        x[1, :16] = -0.0
    _check_stream(x, variant, key=(np.dtype(in_dt).name, shape))


@pytest.mark.parametrize("where", ["first", "last", "window_edge"])
@pytest.mark.parametrize("variant", STREAM)
def test_stream_nvfp4_amax_anywhere(prod, variant, where):
    """The tensor amax (negative) in the front remainder (first element), the first, back window
    (last element), or the last element of the second window (just before the first window's
    start): the amax pass (one full window of the whole grid + the remainder for 2048 x 8192
    bfloat16 on an H100) and its one atomicMax per CTA must see it."""
    from dsv4_numba.stages import fp4
    rng = np.random.default_rng(14)
    x = rng.uniform(-1, 1, (2048, 8192)).astype(np.float32)
    if where == "window_edge":
        xd = cuda.to_device(x.astype(ml_dtypes.bfloat16).view(np.uint16))
        plan = fp4.quantize_plan(xd, "nvfp4", fp4.quantize_sm90_kernel, ref=False,
                                 variant=variant)
        k, grid, args, threads = plan.launches[1][:4]
        assert k.__name__.startswith("amax_fp4_stream")
        window = fp4.AMAX_UNROLL * grid * threads * 8        # elements (8 bf16 per vector)
        assert window < x.size, "no full window: the test would not cover the lockstep loop"
        pos = x.size - window - 1
    else:
        pos = {"first": 0, "last": x.size - 1}[where]
    x.reshape(-1)[pos] = -3000.0
    _check_stream(x.astype(ml_dtypes.bfloat16), variant, key=("amax", pos))


@pytest.mark.parametrize("in_dt", [pytest.param(np.float32, id="fp32"),
                                   pytest.param(ml_dtypes.bfloat16, id="bf16")])
@pytest.mark.parametrize("factor", [1.0, 0.01, 4.0])
def test_stream_nvfp4_given_global_amax(prod, in_dt, factor):
    """global_amax= with the stream quantize pass; 0.01 saturates most blocks (y far above 6,
    up to ~1e5 x)."""
    rng = np.random.default_rng(15)
    x = _x(rng, (300, 2048)).astype(in_dt)
    _check_stream(x, "stream", np.float32(np.abs(x.astype(np.float32)).max() * factor))


def test_stream_nvfp4_public_api_and_errors(prod):
    rng = np.random.default_rng(4)
    x = _x(rng, (300, 4096)).astype(ml_dtypes.bfloat16)
    for v in STREAM:
        q = d.quantize_fp4(x, "nvfp4", impl=prod, variant=v)
        s = formats.quantize(x, "nvfp4")
        assert q.global_scale == s.global_scale
        assert_close(q.data, s.data, bitwise=True, name="codes")
        bad = np.ones((2, 64), np.float32)
        bad[1, 5] = np.inf
        with pytest.raises(ValueError, match="NaN or inf"):
            d.quantize_fp4(cuda.to_device(bad), "nvfp4", impl=prod, variant=v)


@kernel
def _helper_sweep(lo_bits, n, bad):
    """bad[0..2] += mismatches of e2m1_step / e4m3_code_bits / div6_rn over float32 bits
    lo_bits .. lo_bits + n - 1 (see test_stream_helpers_every_float32)."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = bits_f32(uint32(lo_bits + i))
        if e2m1_step(v, uint32(8)) != e2m1_encode_bits(v):      # every finite y, inf, NaN
            cuda.atomic.add(bad, 0, 1)
        if e2m1_step(-v, uint32(8)) != e2m1_encode_bits(-v):
            cuda.atomic.add(bad, 0, 1)
        if v <= float32(448.0) and e4m3_code_bits(v) != e4m3_code(v):
            cuda.atomic.add(bad, 1, 1)
        if v >= float32(2.0 ** -120) and v <= float32(2688.0) and div6_rn(v) != v / float32(6.0):
            cuda.atomic.add(bad, 2, 1)


def test_stream_helpers_every_float32(prod):
    """The lean helpers on the GPU for EVERY float32 in their range, against helpers verified
    before (e2m1_encode_bits, e4m3_code) and the IEEE float32 division: e2m1_step on every
    float32 bit pattern of either sign (saturation up to inf and NaN included), e4m3_code_bits on
    all sb in [0, 448], div6_rn on all p in [2^-120, 2688] (below, quotients are < 2^-122: E4M3
    code 0 either way). Counts mismatches."""
    bad = cuda.to_device(np.zeros(3, np.int64))
    _helper_sweep.launch(8192, 256, np.uint32(0), np.int64(1 << 31), bad)
    assert bad.copy_to_host().tolist() == [0, 0, 0]
