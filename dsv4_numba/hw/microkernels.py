"""Verification microkernels for the sm_90a PTX layer: small kernels with a host API each, so a user can
self-check a machine (``python -m pytest tests/gpu/test_ptx_gpu.py``) and the emulator tests can run the
very same kernels under the simulator (tests/test_microkernels_emu.py).

What each one proves, and what the fused kernels take from it:

``wgmma_tile``      one m64nN tile of ``wgmma.mma_async`` over K = 128 bytes per row (bf16: K=64, four
                    k16 steps; e4m3: K=128, four k32 steps), accumulate 0 on the first step over garbage
                    registers; A from shared memory (SS) or from registers (RS, fragment loaded with plain
                    32-bit loads per the documented layout); B K-major, or MN-major (bf16, imm-trans-b 1:
                    attention's V as the B of P@V); shared layouts "none" (core-matrix image copied in by
                    the threads) or "128B" (TMA-loaded 128B-swizzled tiles, the fused kernels' layout).
``tma_round_trip``  TMA load of a 1D-5D box -> shared memory -> TMA store of the same box, with the
                    shared image copied out too (the swizzle pattern is checked byte for byte); boxes
                    may run past the tensor edge (zero fill on load, clipped store); a load may start
                    at negative coordinates, a store may not (it traps: see hw/tma.py), so the store
                    start can be given separately.
``ring_copy``       an mbarrier-driven S-stage ring: one producer warp (elect.sync picks the lane)
                    issues TMA loads with arrive.expect_tx on full[s]; a consumer warpgroup (128
                    threads) waits full[s], copies the stage to global memory with 16-byte stores and
                    arrives on empty[s], which the producer waits before reusing the stage.

``self_check()`` runs one small case of each and returns {case: "ok" | error}.

All three deliver tensor maps through ``hw.tma.tensor_map_on_device`` (global-memory copy + tensormap
proxy fence; see hw/tma.py) on a GPU and ``emu.tensor_map`` under the simulator. Shared tiles are
placed at a 1024-byte-aligned address computed at run time (the simulator has no ``alignment=``).
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda
from numba.types import float32, int32, uint32, uint64

from ..runtime import env
from ..runtime.kernel import device, kernel
from . import ops
from .descriptors import wgmma_smem_desc
from .layouts import wgmma_acc_coord

ROW_BYTES = 128                       # bytes of K per operand row: one 128B-swizzle span
K_OF = {"bf16": 64, "e4m3": 128}      # K elements per row
K_STEP = {"bf16": 16, "e4m3": 32}     # K of one instruction (32 bytes either way)
N_STEPS = 4                           # ROW_BYTES / 32 bytes per instruction
_NP = {"bf16": np.uint16, "e4m3": np.uint8}
SMEM_PAD = 1024                       # room to round the tile base up to 1024 B


# ------------------------------------------------------------------------------ run-mode plumbing
def _gpu() -> bool:
    return env.mode() == "gpu"


def _to_dev(x):
    """A NumPy array -> device array (GPU) or no-copy simulator array (emulator); others pass."""
    if not isinstance(x, np.ndarray):
        return x
    if _gpu():
        return cuda.to_device(np.ascontiguousarray(x))
    from .. import emu
    return emu.to_device(x)


def _to_host(dev, host):
    """Copy back into ``host`` (GPU) — under the emulator ``dev`` already shares ``host``'s memory."""
    if _gpu():
        dev.copy_to_host(host)
    return host


def _tmap(dev, host, box, swizzle, dtype=None):
    if _gpu():
        from .tma import tensor_map_on_device
        return tensor_map_on_device(dev, box, swizzle, dtype=dtype)
    from .. import emu
    return emu.tensor_map(host, box, swizzle, dtype=dtype)


def _aligned_py(base):
    """Bytes to add to a .shared address to reach the next multiple of 1024."""
    return (uint32(1024) - (uint32(base) & uint32(1023))) & uint32(1023)


_aligned = device(_aligned_py)


# ------------------------------------------------------------------------------ (a) wgmma tile
# Napkin math: one CTA, 64 x N x K MACs (N=256, K=64: 1 MFLOP) — latency-bound by design (a few us);
# shared memory: A 8 KB + B N*128 B (<= 32 KB). What matters is bits, not speed.
#
# Shared layouts (per operand row = 128 bytes of K; ptx-facts §3.3):
#   "none", K-major: core matrix (8 rows x 16 B) of row group g, 16-byte K chunk c at g*1024 + c*128:
#            LBO (next K chunk) = 128, SBO (next 8 rows) = 1024; a 32-byte k-step advances 256 B.
#   "128B", K-major: row r at r*128 with 16-byte chunks XOR (r % 8) (what TMA writes with the 128B
#            swizzle); SBO = 1024, LBO unused; a k-step advances 32 B inside the row.
#   "128B", MN-major B (bf16, trans-b): the K x N tile as N/64 TMA boxes of 64 K-rows x 64 N (128 B),
#            8 KB apart: LBO (next 64-wide N block) = 8192, SBO (next 8 K rows) = 1024; a k16 step
#            advances 16 rows = 2048 B.
def _desc_consts(swizzle: str, b_major: str):
    """(A descriptor, A step, B descriptor, B step) — address bits left 0, steps in 16-byte units."""
    if swizzle == "none":
        d = wgmma_smem_desc(0, 128, 1024, "none")
        return d, 16, d, 16
    d = wgmma_smem_desc(0, 16, 1024, "128B")
    if b_major == "MN":
        return d, 2, wgmma_smem_desc(0, 8192, 1024, "128B"), 128
    return d, 2, d, 2


# The configurations the H100 check runs (tests/gpu/test_ptx_gpu.py) and CI compiles (a subset; all of
# them with DSV4_COMPILE_ALL=1): (N, dtype, A from, shared layout, B major).
VERIFY_WGMMA = ([(n, dt, af, sw, "K") for n in (64, 128, 256) for dt in ("bf16", "e4m3")
                 for af in ("smem", "regs") for sw in ("none", "128B")]
                + [(n, "bf16", af, "128B", "MN") for n in (64, 128, 256) for af in ("smem", "regs")]
                + [(8, "bf16", "smem", "128B", "K"), (200, "e4m3", "regs", "none", "K"),
                   (24, "bf16", "regs", "none", "K")])


@functools.lru_cache(maxsize=None)
def wgmma_kernel(n: int, dtype: str, a_from: str, swizzle: str, b_major: str):
    """The generated tile kernel for one configuration (a Kernel; N/2 accumulators are named
    variables, so ptxas keeps them in registers — no tuple indexing, no local memory).

    Arguments: ``a_words`` (uint32: the A core-matrix image for SS/"none", row-major A for RS, else
    unused), ``b_words`` (uint32 B image for "none"), ``tmap_a``, ``tmap_b`` (uint64[16]),
    ``out`` (float32[128, N/2]: register i of thread t), ``garbage`` (float32 preloaded into the
    accumulators; the first step's accumulate=0 must discard it)."""
    acc = n // 2
    ss = a_from == "smem"
    tb = b_major == "MN"
    name = f"wgmma_m64n{n}k{K_STEP[dtype]}_f32_{dtype}_{'ss' if ss else 'rs'}{'_tb' if tb else ''}"
    ops.wgmma_binding(n, dtype, a_from, tb)          # binds N outside ops.WGMMA_N on first use
    da, sa_step, db, sb_step = _desc_consts(swizzle, b_major)
    a_bytes = 64 * ROW_BYTES
    b_bytes = n * ROW_BYTES
    L = [f"def wgmma_tile_m64n{n}_{dtype}_{a_from}_{swizzle}_{b_major}(a_words, b_words, tmap_a, "
         "tmap_b, out, garbage):",
         f"    buf = cuda.shared.array({(a_bytes + b_bytes + SMEM_PAD) // 4}, uint32)",
         "    bars = cuda.shared.array(1, uint64)",
         "    t = cuda.threadIdx.x",
         "    base = ops.shared_address(buf)",
         "    padw = _aligned(base) // uint32(4)",
         "    sa = base + padw * uint32(4)",
         f"    sb = sa + uint32({a_bytes})",
         "    bar = ops.shared_address(bars)"]
    if swizzle == "none":
        if ss:
            L += [f"    for i in range(t, {a_bytes // 4}, 128):",
                  "        buf[padw + i] = a_words[i]"]
        L += [f"    for i in range(t, {b_bytes // 4}, 128):",
              f"        buf[padw + uint32({a_bytes // 4}) + i] = b_words[i]",
              "    ops.fence_proxy_async_shared_cta()",      # generic writes -> async-proxy reads
              "    cuda.syncthreads()"]
    else:
        tx = (a_bytes if ss else 0) + b_bytes
        L += ["    if t == 0:",
              "        ops.mbarrier_init(bar, uint32(1))",
              "        ops.fence_mbarrier_init()",
              "    cuda.syncthreads()",
              "    if t == 0:",
              "        ops.fence_proxy_tensormap_acquire_sys(ops.array_address(tmap_b))",
              f"        ops.mbarrier_arrive_expect_tx(bar, uint32({tx}))"]
        if ss:
            L += ["        ops.fence_proxy_tensormap_acquire_sys(ops.array_address(tmap_a))",
                  "        ops.tma_load_2d(sa, ops.array_address(tmap_a), int32(0), int32(0), bar)"]
        if tb:    # N/64 boxes of (64 K rows x 64 N), 8 KB apart
            for j in range(n // 64):
                L.append(f"        ops.tma_load_2d(sb + uint32({8192 * j}), ops.array_address(tmap_b), "
                         f"int32({64 * j}), int32(0), bar)")
        else:
            L.append("        ops.tma_load_2d(sb, ops.array_address(tmap_b), int32(0), int32(0), bar)")
        L.append("    ops.mbarrier_wait_parity(bar, uint32(0))")
    L += [f"    adesc = uint64({da}) | uint64((sa >> uint32(4)) & uint32(0x3FFF))",
          f"    bdesc = uint64({db}) | uint64((sb >> uint32(4)) & uint32(0x3FFF))",
          "    g = float32(garbage)",
          "    r = (" + ", ".join(["g"] * acc) + ",)"]
    if not ss:   # A fragment: register j of lane l in warp w = rows 16w + l/4 (+8 for odd j), K bytes
        L += ["    w = t // 32",   # 32s + 16*(j//2) + 4*(l%4) .. +3 of the row-major A (128 B rows)
              "    row = 16 * w + (t % 32) // 4",
              "    q = t % 4"]
        # every step's fragment is loaded before wgmma_fence: registers an in-flight wgmma reads must
        # not be written between the fence and the wgmma (PTX ISA §9.7.15.5, wgmma.fence)
        for s in range(N_STEPS):
            L += [f"    f{s}_{j} = uint32(a_words[(row + {8 * (j % 2)}) * 32 + {8 * s + 4 * (j // 2)} + q])"
                  for j in range(4)]
    L.append("    ops.wgmma_fence()")
    for s in range(N_STEPS):
        a_op = (f"adesc + uint64({s * sa_step})" if ss else
                ", ".join(f"f{s}_{j}" for j in range(4)))
        L.append(f"    r = ops.{name}(*r, {a_op}, bdesc + uint64({s * sb_step}), uint32({int(s > 0)}))")
    L += ["    ops.wgmma_commit_group()",
          "    ops.wgmma_wait_group_0()"]
    L += [f"    out[t, {i}] = r[{i}]" for i in range(acc)]
    ns = {"cuda": cuda, "ops": ops, "uint32": uint32, "uint64": uint64, "int32": int32,
          "float32": float32, "_aligned": _aligned}
    exec("\n".join(L), ns)  # noqa: S102 - generated, see the docstring
    fn = ns[L[0][4:L[0].index("(")]]
    fn.__doc__ = "\n".join(L)
    return kernel(fn, launch_bounds=(128, 1))


def core_matrix_image(m: np.ndarray) -> np.ndarray:
    """The "none"-layout shared image (uint32 words) of a (rows x 128 B) K-major operand: core matrix
    (row group g, 16-byte chunk c) at g*1024 + c*128 bytes, its 8 rows 16 B apart."""
    b = np.ascontiguousarray(m).view(np.uint8)
    rows = b.shape[0]
    img = b.reshape(rows // 8, 8, 8, 16).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(img).reshape(-1).view(np.uint32)


def _check_tile_args(a, b, n, dtype, a_from, swizzle, b_major):
    if dtype not in K_OF:
        raise ValueError(f"dtype {dtype!r}: one of {sorted(K_OF)}")
    if a_from not in ("smem", "regs") or swizzle not in ("none", "128B") or b_major not in ("K", "MN"):
        raise ValueError(f"a_from {a_from!r} (smem|regs), swizzle {swizzle!r} (none|128B), "
                         f"b_major {b_major!r} (K|MN)")
    if n not in range(8, 257, 8):
        raise ValueError(f"N={n}: wgmma needs 8..256 in steps of 8")
    k = K_OF[dtype]
    want_b = (k, n) if b_major == "MN" else (n, k)
    for nm, x, shp in (("a", a, (64, k)), ("b", b, want_b)):
        if x.shape != shp or x.dtype != _NP[dtype]:
            raise ValueError(f"{nm}: expected {np.dtype(_NP[dtype])} bit patterns of shape {shp} "
                             f"for {dtype}{' MN-major' if nm == 'b' and b_major == 'MN' else ''}, "
                             f"got {x.dtype} {x.shape}")
    if b_major == "MN":
        if dtype != "bf16" or swizzle != "128B" or n % 64:
            raise ValueError("MN-major B (imm-trans-b) is tested for bf16 with the 128B swizzle and N "
                             f"a multiple of 64; got {dtype}, {swizzle}, N={n} (8-bit wgmma has no "
                             "transpose)")
    if swizzle == "none" and n % 8:
        raise ValueError("the 'none' image needs N a multiple of 8")


def wgmma_tile(a, b, dtype="bf16", a_from="smem", swizzle="128B", b_major="K", garbage=1.0e3):
    """D = A @ B^T (B K-major, ``b`` is N x K) or A @ B (``b_major="MN"``, ``b`` is K x N), one
    64 x N tile by one warpgroup, as float32 (64, N). ``a``/``b`` are bit patterns (uint16 bf16,
    uint8 e4m3). Every accumulator register must be written: the (128, N/2) register dump starts
    as NaN and the tile is assembled through ``layouts.wgmma_acc_coord``."""
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    n = b.shape[1] if b_major == "MN" else b.shape[0]
    _check_tile_args(a, b, n, dtype, a_from, swizzle, b_major)
    kern = wgmma_kernel(n, dtype, a_from, swizzle, b_major)
    dummy = np.zeros(4, np.uint32)
    a_words = (core_matrix_image(a) if swizzle == "none" and a_from == "smem" else
               a.view(np.uint32).reshape(-1) if a_from == "regs" else dummy)
    b_words = core_matrix_image(b) if swizzle == "none" else dummy
    empty_map = np.zeros(16, np.uint64)
    tdt = "bfloat16" if dtype == "bf16" else None
    a_dev, b_dev = _to_dev(a), _to_dev(b)
    tmap_a = (_tmap(a_dev, a, (64, K_OF[dtype]), "128B", tdt)
              if swizzle == "128B" and a_from == "smem" else empty_map)
    tmap_b = (empty_map if swizzle == "none" else
              _tmap(b_dev, b, (64, 64), "128B", tdt) if b_major == "MN" else
              _tmap(b_dev, b, (n, K_OF[dtype]), "128B", tdt))
    out = np.full((128, n // 2), np.nan, np.float32)
    out_dev = _to_dev(out)
    kern.launch(1, 128, _to_dev(a_words), _to_dev(b_words), _to_dev(tmap_a), _to_dev(tmap_b),
                out_dev, np.float32(garbage))
    regs = _to_host(out_dev, out)
    return assemble_tile(regs, n)


@functools.lru_cache(maxsize=None)
def _coords(n):
    rc = np.array([[wgmma_acc_coord(t, i, n) for i in range(n // 2)] for t in range(128)])
    return rc[..., 0], rc[..., 1]


def assemble_tile(regs: np.ndarray, n: int) -> np.ndarray:
    """(64, N) tile from the (128, N/2) per-thread accumulator registers (wgmma fragment layout)."""
    d = np.full((64, n), np.nan, np.float32)
    rows, cols = _coords(n)
    d[rows, cols] = regs
    return d


def decode(bits: np.ndarray, dtype: str) -> np.ndarray:
    """bf16 / e4m3 bit patterns -> float64 (exact)."""
    if dtype == "bf16":
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    import ml_dtypes
    return bits.view(ml_dtypes.float8_e4m3fn).astype(np.float64)


def wgmma_oracle(a, b, dtype="bf16", b_major="K"):
    """(float64 product, float64 |A| @ |B|) of the decoded inputs — the tile's exact value and the
    scale of its rounding error."""
    fa, fb = decode(a, dtype), decode(b, dtype)
    if b_major == "K":
        fb = fb.T
    return fa @ fb, np.abs(fa) @ np.abs(fb)


def encode(x: np.ndarray, dtype: str) -> np.ndarray:
    """float -> bf16 (round to nearest even, uint16) or e4m3 (ml_dtypes float8_e4m3fn, uint8) bits."""
    if dtype == "bf16":
        u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    import ml_dtypes
    return np.asarray(x, np.float32).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)


def random_operand(rng, shape, dtype):
    """Random normal values (per-row magnitudes over 10^+-1, a few 16x outliers, e4m3 clipped to
    +-448) as exactly representable bit patterns."""
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-1, 1, shape[:-1] + (1,))
    flat = x.reshape(-1)
    flat[rng.integers(0, flat.size, max(1, flat.size // 64))] *= 16.0
    if dtype == "e4m3":
        x = np.clip(x * 8, -448, 448)
    return encode(x, dtype)


def integer_operand(rng, shape, dtype):
    """Integers in [-4, 4]: every product and partial sum of a K <= 128 tile is an integer below
    2^11, exact in any accumulator — so the tile must match the oracle bit for bit (layout check)."""
    return encode(rng.integers(-4, 5, shape).astype(np.float32), dtype)


def wgmma_error_bound(scale: np.ndarray, dtype: str) -> np.ndarray:
    """Per-element bound on |D - exact| for a K-deep tile, from the accumulation format.
    bf16: products are exact in float32; tensor cores align each block of products to its largest
    exponent and may truncate (Fasi et al., "Numerical behavior of NVIDIA tensor cores", 2021), so each
    of the K products and the K/4 block additions may lose up to 2^-23 of |A| @ |B|: bound
    2K * 2^-23 * (|A| @ |B|).
    e4m3: Hopper's FP8 wgmma keeps about 14 bits in its accumulation (DeepSeek-V3 technical report
    §3.3.2, measured on H800), so the bound uses 2^-13: K * 2^-13 * (|A| @ |B|)."""
    k = K_OF[dtype]
    return k * (2.0 ** -22 if dtype == "bf16" else 2.0 ** -13) * scale + 1e-30


# ------------------------------------------------------------------------------ (b) TMA round trip
# Napkin math: one CTA moves one box (<= 32 KB) in and out: latency-bound (~2 us), correctness only.
MAX_BOX_BYTES = 32768
_TMA_BUF_WORDS = (MAX_BOX_BYTES + SMEM_PAD) // 4


@kernel
def _k_tma_round_trip(tmap_in, tmap_out, img, coords, rank, nbytes):
    buf = cuda.shared.array(_TMA_BUF_WORDS, uint32)
    bars = cuda.shared.array(1, uint64)
    t = cuda.threadIdx.x
    base = ops.shared_address(buf)
    padw = _aligned(base) // uint32(4)
    dst = base + padw * uint32(4)
    bar = ops.shared_address(bars)
    c0, c1, c2, c3, c4 = int32(coords[0]), int32(coords[1]), int32(coords[2]), int32(coords[3]), \
        int32(coords[4])
    s0, s1, s2, s3, s4 = int32(coords[5]), int32(coords[6]), int32(coords[7]), int32(coords[8]), \
        int32(coords[9])
    src = ops.array_address(tmap_in)
    if t == 0:
        ops.mbarrier_init(bar, uint32(1))
        ops.fence_mbarrier_init()
    cuda.syncthreads()
    if t == 0:
        ops.fence_proxy_tensormap_acquire_sys(src)
        ops.mbarrier_arrive_expect_tx(bar, uint32(nbytes))
        if rank == 1:
            ops.tma_load_1d(dst, src, c0, bar)
        elif rank == 2:
            ops.tma_load_2d(dst, src, c0, c1, bar)
        elif rank == 3:
            ops.tma_load_3d(dst, src, c0, c1, c2, bar)
        elif rank == 4:
            ops.tma_load_4d(dst, src, c0, c1, c2, c3, bar)
        else:
            ops.tma_load_5d(dst, src, c0, c1, c2, c3, c4, bar)
    ops.mbarrier_wait_parity(bar, uint32(0))
    for i in range(t, nbytes // 4, cuda.blockDim.x):
        img[i] = buf[padw + i]
    cuda.syncthreads()
    if t == 0:
        d = ops.array_address(tmap_out)
        ops.fence_proxy_tensormap_acquire_sys(d)
        ops.fence_proxy_async_shared_cta()
        if rank == 1:
            ops.tma_store_1d(d, dst, s0)
        elif rank == 2:
            ops.tma_store_2d(d, dst, s0, s1)
        elif rank == 3:
            ops.tma_store_3d(d, dst, s0, s1, s2)
        elif rank == 4:
            ops.tma_store_4d(d, dst, s0, s1, s2, s3)
        else:
            ops.tma_store_5d(d, dst, s0, s1, s2, s3, s4)
        ops.tma_store_commit_group()
        ops.tma_store_wait_group_0()
        ops.mbarrier_inval(bar)


def tma_round_trip(x, box, start, swizzle="none", dtype=None, fill=0xA5, store_start=None):
    """TMA-load the box of ``x`` at ``start`` (NumPy order, may run past the edges, may be negative)
    into shared memory, copy the shared image out, TMA-store the box at ``store_start`` (default:
    ``start``; non-negative, may run past the far edges) into a copy of ``x`` filled with byte
    ``fill``. Returns (image: uint8[box bytes], y). ``dtype="bfloat16"`` for uint16-carried bf16.
    Coordinates a TMA cannot take raise ValueError before any launch (``tma.check_box_start``)."""
    from .tma import check_box_start
    x = np.ascontiguousarray(x)
    box, start = tuple(int(b) for b in box), tuple(int(s) for s in start)
    store_start = start if store_start is None else tuple(int(s) for s in store_start)
    if not 1 <= x.ndim <= 5 or len(box) != x.ndim or len(start) != x.ndim or \
            len(store_start) != x.ndim:
        raise ValueError(f"x has {x.ndim} dims; box {box}, start {start} and store_start "
                         f"{store_start} need one entry each (1..5)")
    nbytes = int(np.prod(box)) * x.itemsize
    if nbytes > MAX_BOX_BYTES:
        raise ValueError(f"box of {nbytes} bytes exceeds this kernel's {MAX_BOX_BYTES}-byte tile")
    check_box_start(start, x.itemsize, store=False)
    check_box_start(store_start, x.itemsize, store=True)
    y = np.full_like(x, 0)
    y.view(np.uint8)[...] = fill
    xd, yd = _to_dev(x), _to_dev(y)
    tin = _tmap(xd, x, box, swizzle, dtype)        # validates (clear errors) before any launch
    tout = _tmap(yd, y, box, swizzle, dtype)
    img = np.zeros(nbytes // 4, np.uint32)
    img_d = _to_dev(img)
    coords = np.zeros(10, np.int32)                # load start, then store start
    coords[:x.ndim] = start[::-1]                  # driver order: innermost first
    coords[5:5 + x.ndim] = store_start[::-1]
    _k_tma_round_trip.launch(1, 128, _to_dev(tin), _to_dev(tout), img_d, _to_dev(coords), x.ndim,
                             nbytes)
    return _to_host(img_d, img).view(np.uint8), _to_host(yd, y)


def _box_index(shape, box, start):
    """(index arrays of the box's elements, in-bounds mask) for a box at ``start`` of a tensor."""
    idx = np.meshgrid(*[np.arange(s, s + b) for s, b in zip(start, box)], indexing="ij")
    inb = np.ones(idx[0].shape, bool)
    for d, ix in enumerate(idx):
        inb &= (ix >= 0) & (ix < shape[d])
    return idx, inb


def tma_box_values(x, box, start):
    """The box of ``x`` at ``start`` as a TMA load delivers it: out-of-bounds elements zero."""
    idx, inb = _box_index(x.shape, box, start)
    vals = np.zeros(box, x.dtype)
    vals[inb] = x[tuple(ix[inb] for ix in idx)]
    return vals


def tma_round_trip_oracle(x, box, start, store_start=None, fill=0xA5):
    """The oracle for ``tma_round_trip``'s output: ``x``'s shape filled with byte ``fill``, with the
    loaded box (``tma_box_values``) written at ``store_start`` (default ``start``), clipped at the
    tensor's edges."""
    store_start = start if store_start is None else store_start
    y = np.zeros_like(x)
    y.view(np.uint8)[...] = fill
    idx, inb = _box_index(x.shape, box, store_start)
    y[tuple(ix[inb] for ix in idx)] = tma_box_values(x, box, start)[inb]
    return y


def tma_box_image(x, box, start, swizzle="none"):
    """The oracle for ``tma_round_trip``'s image: the box in row-major order, out-of-bounds elements
    zero, then (with a swizzle of S bytes) each 16-byte chunk at byte offset o moved to
    o ^ (((o >> 7) & (S/16 - 1)) << 4) — the pattern of a tile at a 1024-byte-aligned address."""
    flat = tma_box_values(x, box, start).reshape(-1).view(np.uint8)
    span = {"none": 0, "32B": 32, "64B": 64, "128B": 128}[swizzle]
    if not span:
        return flat.copy()
    o = np.arange(flat.size)
    dst = o ^ (((o >> 7) & (span // 16 - 1)) << 4)
    out = np.zeros_like(flat)
    out[dst] = flat
    return out


# ------------------------------------------------------------------------------ (c) mbarrier ring copy
# Napkin math (H100, 64 MiB): 64 MiB read + 64 MiB written = 134 MB; at the 3.0 TB/s D2D copy ceiling
# ~45 us. Each CTA holds S stages of one box (S x 8 KB + 1 KB), so several CTAs share an SM and the
# loads of one overlap the stores of another: expected memory-bound at 70-90% of copy.
RING_SMEM = 32768
RING_MAX_STAGES = 8
_RING_BUF_WORDS = (RING_SMEM + SMEM_PAD) // 4
_RING_BARS = 2 * RING_MAX_STAGES
RING_THREADS = 160                     # warps 0-3: consumer warpgroup; warp 4: producer


@kernel(launch_bounds=(RING_THREADS, 1))
def _k_ring_copy(tmap, y, rows, row_bytes, box_rows, stages, ntiles):
    buf = cuda.shared.array(_RING_BUF_WORDS, uint32)
    bars = cuda.shared.array(_RING_BARS, uint64)
    t = cuda.threadIdx.x
    base = ops.shared_address(buf)
    sbase = base + _aligned(base)
    full = ops.shared_address(bars)                      # full[s] at +8s, empty[s] at +64+8s
    empty = full + uint32(8 * RING_MAX_STAGES)
    stage_bytes = box_rows * row_bytes                   # bytes one box delivers (expect_tx)
    stride = (stage_bytes + 127) // 128 * 128            # TMA destinations are 128-byte aligned
    if t == 0:
        for s in range(stages):
            ops.mbarrier_init(full + uint32(8 * s), uint32(1))
            ops.mbarrier_init(empty + uint32(8 * s), uint32(128))
        ops.fence_mbarrier_init()
    cuda.syncthreads()
    if t >= 128:                                         # producer warp: one elected lane
        if ops.elect_one_sync(uint32(0xFFFFFFFF)) != 0:
            desc = ops.array_address(tmap)
            ops.fence_proxy_tensormap_acquire_sys(desc)
            it = 0
            for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
                s = it % stages
                u = it // stages
                if u > 0:                                # the consumers released this stage
                    ops.mbarrier_wait_parity(empty + uint32(8 * s), uint32((u - 1) & 1))
                ops.mbarrier_arrive_expect_tx(full + uint32(8 * s), uint32(stage_bytes))
                ops.tma_load_2d(sbase + uint32(s * stride), desc, int32(0),
                                int32(tile * box_rows), full + uint32(8 * s))
                it += 1
    else:                                                # consumer warpgroup
        yaddr = ops.array_address(y)
        it = 0
        for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
            s = it % stages
            u = it // stages
            ops.mbarrier_wait_parity(full + uint32(8 * s), uint32(u & 1))
            row0 = tile * box_rows
            nrows = min(box_rows, rows - row0)           # the box may run past the last row
            src = sbase + uint32(s * stride)
            gdst = yaddr + uint64(row0) * uint64(row_bytes)
            for c in range(t, nrows * row_bytes // 16, 128):
                v0, v1, v2, v3 = ops.ld_shared_v4_u32(src + uint32(16 * c))
                ops.st_global_v4_b32(gdst + uint64(16 * c), v0, v1, v2, v3)
            ops.mbarrier_arrive(empty + uint32(8 * s))
            it += 1


def _ring_plan(shape, itemsize, stages, stage_bytes):
    if len(shape) != 2:
        raise ValueError(f"ring_copy copies a 2D array (rows, row elements); got shape {tuple(shape)}")
    row_bytes = shape[1] * itemsize
    if row_bytes % 16 or not 0 < shape[1] <= 256 or row_bytes > stage_bytes:
        raise ValueError(f"rows of {row_bytes} bytes / {shape[1]} elements: need a multiple of 16 "
                         f"bytes, 1..256 elements and <= the {stage_bytes}-byte stage")
    if stage_bytes % 128:
        raise ValueError(f"stage_bytes {stage_bytes}: stages start 128-byte aligned (TMA destinations), "
                         "so it must be a multiple of 128")
    if not 1 <= stages <= RING_MAX_STAGES or stages * stage_bytes > RING_SMEM:
        raise ValueError(f"{stages} stages of {stage_bytes} B: 1..{RING_MAX_STAGES} stages, "
                         f"<= {RING_SMEM} B in all")
    box_rows = min(256, stage_bytes // row_bytes)
    return row_bytes, box_rows, -(-shape[0] // box_rows)


def ring_copier(x, y, stages=4, stage_bytes=8192, grid=None, x_host=None):
    """A no-argument launcher copying ``x`` into ``y`` through the ring (tensor map built once).
    On a GPU ``x``/``y`` are device arrays; under the emulator ``x_host`` is ``x``'s host array."""
    row_bytes, box_rows, ntiles = _ring_plan(tuple(x.shape), np.dtype(x.dtype).itemsize, stages,
                                             stage_bytes)
    tm = _tmap(x, x_host, (box_rows, x.shape[1]), "none")
    if grid is None:
        grid = min(ntiles, 4 * (cuda.get_current_device().MULTIPROCESSOR_COUNT if _gpu() else 1))
    grid = max(1, min(int(grid), ntiles))

    def launch():
        _k_ring_copy.launch(grid, RING_THREADS, tm, y, x.shape[0], row_bytes, box_rows, stages, ntiles)
    return launch


def ring_copy(x, stages=4, stage_bytes=8192, grid=None):
    """Copy the 2D NumPy array ``x`` through the ring (see the module docstring); returns the copy
    (``y`` starts as 0xFF bytes, so rows the ring misses show)."""
    x = np.ascontiguousarray(x)
    _ring_plan(x.shape, x.itemsize, stages, stage_bytes)     # clear errors before any allocation
    y = np.full(x.shape, 0xFF, x.dtype) if x.dtype.kind in "ui" else np.full(x.shape, np.nan, x.dtype)
    if x.shape[0] == 0:
        return y
    xd, yd = _to_dev(x), _to_dev(y)
    ring_copier(xd, yd, stages, stage_bytes, grid, x_host=x)()
    return _to_host(yd, y)


def ring_copy_bandwidth(nbytes=64 << 20, stages=4, stage_bytes=8192, grid=None):
    """(GB/s read+write of the ring, GB/s of a D2D copy of the same size, ring copy bitwise correct)
    on the GPU, by CUDA events (runtime.bench.time_gpu)."""
    from ..runtime.bench import time_gpu
    xh = np.arange(nbytes // 4, dtype=np.uint32).reshape(-1, 64)      # 256-byte rows, 32-row boxes
    x = cuda.to_device(xh)
    y = cuda.device_array_like(x)
    launch = ring_copier(x, y, stages, stage_bytes, grid)
    us = time_gpu(launch, reps=10, repeats=5)
    ok = bool(np.array_equal(y.copy_to_host(), xh))
    cus = time_gpu(lambda: y.copy_to_device(x), reps=10, repeats=5)
    return 2 * nbytes / us / 1e3, 2 * nbytes / cus / 1e3, ok


# ------------------------------------------------------------------------------ one-call self check
def self_check(seed: int = 0) -> dict:
    """Run one small case of each microkernel on this machine (GPU, or the emulator without one) against
    its oracle; returns {case: "ok" | error text}. A user's first question about a new machine or
    driver — does the layer's wgmma / TMA / mbarrier path compute the right bits here? — in one call."""
    rng = np.random.default_rng(seed)
    out = {}

    def run(name, fn):
        try:
            fn()
            out[name] = "ok"
        except Exception as e:  # noqa: BLE001 - reported, not raised: the caller wants every case
            out[name] = f"{type(e).__name__}: {e}"

    def tile(n, dtype, a_from, swizzle, b_major):
        k = K_OF[dtype]
        bshape = (k, n) if b_major == "MN" else (n, k)
        a, b = integer_operand(rng, (64, k), dtype), integer_operand(rng, bshape, dtype)
        d = wgmma_tile(a, b, dtype, a_from, swizzle, b_major, garbage=float("nan"))
        ref, _ = wgmma_oracle(a, b, dtype, b_major)
        if not np.array_equal(d, ref):
            raise AssertionError(f"{int((d != ref).sum())} of {d.size} tile elements differ")

    def tma():
        x = rng.integers(1, 1 << 16, (100, 64), dtype=np.uint16)
        img, y = tma_round_trip(x, (64, 64), (64, 0), "128B")
        want = np.full_like(x, 0xA5A5)
        want[64:] = x[64:]
        if not (np.array_equal(img, tma_box_image(x, (64, 64), (64, 0), "128B"))
                and np.array_equal(y, want)):
            raise AssertionError("TMA round trip is not bitwise")

    def ring():
        x = rng.integers(0, 1 << 32, (61, 36), dtype=np.uint32)
        if not np.array_equal(ring_copy(x, stages=2, stage_bytes=2048), x):
            raise AssertionError("ring copy is not bitwise")

    for cfg in [(64, "bf16", "smem", "128B", "K"), (64, "e4m3", "regs", "none", "K"),
                (64, "bf16", "regs", "128B", "MN")]:
        run("wgmma m64n{} {} {} {} B {}-major".format(*cfg), lambda cfg=cfg: tile(*cfg))
    run("tma 2D 128B round trip past the edge", tma)
    run("mbarrier ring copy", ring)
    return out
