"""TMA tensor maps: validate a tiled tensor-map request, encode it with the driver, and hand the
128-byte descriptor to a Numba kernel.

How the descriptor reaches the kernel — and why
-----------------------------------------------
``cp.async.bulk.tensor`` reads a 128-byte, 64-byte-aligned ``CUtensorMap``. CUDA C++ passes it by
value as a ``const __grid_constant__`` kernel parameter. A Numba kernel signature cannot: a tuple
of 16 uint64 is flattened into 16 separate parameters and a record is passed as a pointer (see
numba-cuda-notes §6). So this module uses the other documented route: the descriptor is copied into
a ``uint64[16]`` **device array** (cudaMalloc alignment, >= 256 B, satisfies the 64 B rule), the
kernel takes that array, passes ``ops.array_address(tmap)`` as the tensor-map operand, and every
CTA executes ``ops.fence_proxy_tensormap_acquire_sys`` (``fence.proxy.tensormap::generic.acquire.sys``,
128 bytes) on it once before its first TMA, because the descriptor was written through the generic
proxy (a host copy) and is read through the tensormap proxy. The ``__grid_constant__`` route (a
CUDA C++ entry shim linked with LTO) was verified to compile and link elsewhere but needs its own
launcher; it is not used here. ``hw.microkernels`` (TMA round trip, ring copy, wgmma tiles) exercises
this delivery end to end on the GPU (tests/gpu/test_ptx_gpu.py).

Dimension order: the driver's dimension 0 is the innermost (contiguous) one — the reverse of
NumPy's shape order. ``TensorMapSpec.from_array`` does the reversal so callers think in NumPy order.

Rules checked before calling the driver (CUDA driver API, cuTensorMapEncodeTiled)
--------------------------------------------------------------------------------
rank 1..5 · global address 16-byte aligned · every global dimension in 1..2^32 · every global
stride (bytes, dims 1..rank-1) a multiple of 16 and < 2^40 · every box dimension in 1..256 · the
inner box row (box[0] * element bytes) a multiple of 16 bytes · with a swizzle, the inner box row
no wider than the swizzle span (32 / 64 / 128 bytes) · element strides in 1..8.
Encoding itself needs the CUDA driver (libcuda); validation does not.

Rank 1: the global-stride array must not be NULL
------------------------------------------------
A rank-1 map has no global strides, and ``cuda.bindings`` turns the empty list into a NULL pointer —
which the driver rejects with CUDA_ERROR_INVALID_VALUE although its documentation says the array has
rank - 1 entries (NVIDIA cccl PR #1567/#1568, nvbug 4575531: "cuTensorMapEncodeTiled fails if the
stride array is a nullptr even if it is never used in 1D copies"; seen here on the H100, 2026-11-25,
for a legal (1000,) uint32 map with a 256-element box). ``encode`` therefore passes one unused stride
for rank 1: the row's bytes rounded up to 16 (it satisfies every stride rule above).

Box coordinates (checked on the host by ``check_box_start``; the kernels pass them as int32)
--------------------------------------------------------------------------------------------
* the innermost coordinate times the element size is a multiple of 16 bytes — PTX ISA §5.5.3.1:
  "The address of the bounding box must also be aligned to 16 bytes";
* loads (tile mode) may start anywhere, also at negative coordinates or past the end: PTX ISA
  §5.5.3.3 fills the out-of-bound elements with zero (or OOB-NaN);
* stores (shared -> global) must start at non-negative coordinates. The ISA is silent on stores;
  on the H100 (2026-11-25) a store box running past the far edge was clipped (verified bitwise) but
  a store at start (-8, 0) of a (40, 64) uint16 tensor killed the kernel with
  CUDA_ERROR_ILLEGAL_INSTRUCTION (the same kernel's load at that start was not isolated in that
  run — tests/gpu/test_ptx_gpu.py now tests it alone, in a subprocess).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SWIZZLE_BYTES = {"none": 0, "32B": 32, "64B": 64, "128B": 128}
_SWIZZLE_ENUM = {"none": 0, "32B": 1, "64B": 2, "128B": 3}   # CU_TENSOR_MAP_SWIZZLE_*
_DTYPE_ENUM = {                                              # CU_TENSOR_MAP_DATA_TYPE_*
    np.dtype(np.uint8): 0, np.dtype(np.uint16): 1, np.dtype(np.uint32): 2,
    np.dtype(np.int32): 3, np.dtype(np.uint64): 4, np.dtype(np.int64): 5,
    np.dtype(np.float16): 6, np.dtype(np.float32): 7, np.dtype(np.float64): 8,
}
BFLOAT16_ENUM = 9        # CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 (pass dtype="bfloat16")


@dataclass(frozen=True)
class TensorMapSpec:
    """A tiled tensor-map request in the driver's order (index 0 = innermost dimension)."""
    dtype_enum: int
    elem_bytes: int
    address: int
    dims: tuple          # elements per dimension, innermost first
    strides: tuple       # bytes, for dimensions 1..rank-1
    box: tuple           # box elements per dimension, innermost first
    elem_strides: tuple
    swizzle: str = "none"
    l2_promotion: int = 0          # CU_TENSOR_MAP_L2_PROMOTION_NONE
    oob_nan: bool = False          # out-of-bounds elements read as NaN instead of zero

    def __post_init__(self):
        validate(self)

    @classmethod
    def from_array(cls, arr, box, swizzle="none", dtype=None, elem_strides=None, **kw):
        """From a NumPy-ordered device array (``__cuda_array_interface__``) and a NumPy-ordered box.

        ``dtype="bfloat16"`` for bfloat16 data carried as uint16.
        """
        cai = arr.__cuda_array_interface__
        dt = np.dtype(cai["typestr"])
        shape = tuple(int(s) for s in cai["shape"])
        strides = cai.get("strides") or tuple(int(dt.itemsize * np.prod(shape[i + 1:]))
                                              for i in range(len(shape)))
        if len(box) != len(shape):
            raise ValueError(f"box {tuple(box)} must have one entry per array dimension {shape}")
        if strides[-1] != dt.itemsize:
            raise ValueError("the innermost array dimension must be contiguous (stride = one "
                             f"element); got strides {tuple(strides)}")
        if dtype == "bfloat16":
            if dt.itemsize != 2:
                raise ValueError("bfloat16 data must be carried as a 2-byte type (uint16)")
            enum = BFLOAT16_ENUM
        elif dt in _DTYPE_ENUM:
            enum = _DTYPE_ENUM[dt]
        else:
            raise TypeError(f"dtype {dt} has no tensor-map type; use one of "
                            f"{sorted(str(d) for d in _DTYPE_ENUM)} or dtype='bfloat16'")
        es = tuple(elem_strides) if elem_strides is not None else (1,) * len(shape)
        return cls(enum, dt.itemsize, int(cai["data"][0]), shape[::-1], tuple(strides[:-1])[::-1],
                   tuple(int(b) for b in box)[::-1], es[::-1], swizzle, **kw)


def validate(s: TensorMapSpec) -> None:
    """Raise ValueError naming the rule (and what to change) for a request the driver rejects."""
    rank = len(s.dims)
    if not 1 <= rank <= 5:
        raise ValueError(f"tensor rank {rank}: TMA supports 1 to 5 dimensions")
    if not (len(s.box) == len(s.elem_strides) == rank and len(s.strides) == rank - 1):
        raise ValueError("dims, box and element strides need one entry per dimension and strides "
                         "one per dimension after the innermost")
    if s.swizzle not in SWIZZLE_BYTES:
        raise ValueError(f"swizzle {s.swizzle!r} is not one of {sorted(SWIZZLE_BYTES)}")
    if s.address % 16:
        raise ValueError(f"global address {s.address:#x} is not 16-byte aligned; pass a fresh "
                         "allocation or an offset that is a multiple of 16 bytes")
    for i, d in enumerate(s.dims):
        if not 1 <= d <= 2**32:
            raise ValueError(f"dimension {i} (innermost = 0) has {d} elements; must be 1..2^32")
    for i, st in enumerate(s.strides, start=1):
        if st % 16 or not 0 < st < 2**40:
            raise ValueError(f"stride of dimension {i} is {st} bytes; TMA needs a multiple of 16 "
                             "below 2^40 — pad the rows (e.g. the row length to a multiple of "
                             f"{16 // s.elem_bytes if s.elem_bytes < 16 else 1} elements)")
    for i, b in enumerate(s.box):
        if not 1 <= b <= 256:
            raise ValueError(f"box dimension {i} (innermost = 0) is {b}; must be 1..256")
    row = s.box[0] * s.elem_bytes
    if row % 16:
        raise ValueError(f"the inner box row is {row} bytes; it must be a multiple of 16 bytes")
    span = SWIZZLE_BYTES[s.swizzle]
    if span and row > span:
        raise ValueError(f"the inner box row is {row} bytes, wider than the {s.swizzle} swizzle "
                         f"span; use box[-1] <= {span // s.elem_bytes} elements (NumPy order) or a "
                         "wider swizzle")
    for i, e in enumerate(s.elem_strides):
        if not 1 <= e <= 8:
            raise ValueError(f"element stride {e} of dimension {i} must be 1..8")


def driver_strides(s: TensorMapSpec) -> tuple:
    """The global strides handed to the driver: ``s.strides``, or for rank 1 one unused stride (the
    row's bytes rounded up to 16) so that the array is not NULL (module docstring, "Rank 1")."""
    if s.strides:
        return tuple(s.strides)
    return (max(16, -(-s.dims[0] * s.elem_bytes // 16) * 16),)


def check_box_start(start, elem_bytes: int, *, store: bool) -> None:
    """Raise ValueError for box coordinates (NumPy order, innermost last) a TMA load (``store=False``)
    or store (``store=True``) cannot take — the rules in the module docstring, "Box coordinates"."""
    start = tuple(int(c) for c in start)
    for c in start:
        if not -2**31 <= c < 2**31:
            raise ValueError(f"box coordinate {c} does not fit the instruction's int32 operand")
    if start and (start[-1] * elem_bytes) % 16:
        raise ValueError(f"the innermost box coordinate {start[-1]} is {start[-1] * elem_bytes} bytes "
                         "into the row; TMA boxes start 16-byte aligned (PTX ISA 5.5.3.1) — use a "
                         f"multiple of {max(1, 16 // elem_bytes)} elements")
    if store and any(c < 0 for c in start):
        raise ValueError(f"TMA store at start {start}: a store box must start at non-negative "
                         "coordinates (a negative start killed the H100 kernel with "
                         "CUDA_ERROR_ILLEGAL_INSTRUCTION; boxes past the far edge are clipped)")


def encode(s: TensorMapSpec) -> np.ndarray:
    """The 128-byte CUtensorMap as ``uint64[16]`` (needs the CUDA driver)."""
    from cuda.bindings import driver as drv
    rank = len(s.dims)
    res = drv.cuTensorMapEncodeTiled(
        drv.CUtensorMapDataType(s.dtype_enum), rank, s.address,
        [drv.cuuint64_t(d) for d in s.dims], [drv.cuuint64_t(x) for x in driver_strides(s)],
        [drv.cuuint32_t(b) for b in s.box], [drv.cuuint32_t(e) for e in s.elem_strides],
        drv.CUtensorMapInterleave(0), drv.CUtensorMapSwizzle(_SWIZZLE_ENUM[s.swizzle]),
        drv.CUtensorMapL2promotion(s.l2_promotion), drv.CUtensorMapFloatOOBfill(int(s.oob_nan)))
    err, tmap = res
    if err != drv.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed ({err}) for {s}")
    return np.array([int(w) for w in tmap.opaque], dtype=np.uint64)


def tensor_map_on_device(arr, box, swizzle="none", **kw):
    """Validate, encode and copy a tensor map for ``arr`` to the device (``uint64[16]``).

    Kernels pass ``ops.array_address(tmap)`` to the TMA snippets and fence it once per CTA with
    ``ops.fence_proxy_tensormap_acquire_sys`` before the first use (see the module docstring).
    """
    from numba import cuda
    return cuda.to_device(encode(TensorMapSpec.from_array(arr, box, swizzle, **kw)))
