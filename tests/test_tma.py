"""TMA tensor-map requests: the driver's rules are checked before any driver call."""
import numpy as np
import pytest

from dsv4_numba.hw.tma import TensorMapSpec


class FakeDeviceArray:
    """Just enough __cuda_array_interface__ to describe a device buffer (no GPU needed)."""

    def __init__(self, shape, dtype, address=0x7F0000000000, strides=None):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": np.dtype(dtype).str,
                                         "data": (address, False), "strides": strides, "version": 3}


def test_valid_2d_request_is_reversed_to_driver_order():
    s = TensorMapSpec.from_array(FakeDeviceArray((1024, 256), np.uint16), (64, 64), "128B",
                                 dtype="bfloat16")
    assert s.dims == (256, 1024) and s.strides == (512,) and s.box == (64, 64)


@pytest.mark.parametrize("kwargs,match", [
    (dict(shape=(64, 100), dtype=np.uint16, box=(8, 8)), "multiple of 16 below"),
    (dict(shape=(64, 256), dtype=np.uint16, box=(8, 128), swizzle="128B"), "wider than the 128B"),
    (dict(shape=(64, 256), dtype=np.uint16, box=(8, 4)), "multiple of 16 bytes"),
    (dict(shape=(64, 256), dtype=np.uint16, box=(300, 8)), "1..256"),
    (dict(shape=(64, 256), dtype=np.uint16, box=(8, 8), address=0x7F0000000008), "16-byte aligned"),
    (dict(shape=(2, 2, 2, 2, 2, 16), dtype=np.uint8, box=(1, 1, 1, 1, 1, 16)), "1 to 5"),
    (dict(shape=(64, 256), dtype=np.uint16, box=(8, 8), swizzle="16B"), "not one of"),
    (dict(shape=(64, 256), dtype=np.complex64, box=(8, 8)), "no tensor-map type"),
    (dict(shape=(1000,), dtype=np.uint32, box=(3,)), "multiple of 16 bytes"),      # rank 1
    (dict(shape=(1000,), dtype=np.uint32, box=(512,)), "1..256"),
])
def test_rules_are_enforced_with_a_clear_message(kwargs, match):
    box = kwargs.pop("box")
    swz = kwargs.pop("swizzle", "none")
    with pytest.raises((ValueError, TypeError), match=match):
        TensorMapSpec.from_array(FakeDeviceArray(**kwargs), box, swz)


def test_non_contiguous_inner_dimension_is_rejected():
    arr = FakeDeviceArray((64, 64), np.float32, strides=(256, 8))
    with pytest.raises(ValueError, match="innermost array dimension must be contiguous"):
        TensorMapSpec.from_array(arr, (8, 8))


# ---------------------------------------------------------------- rank 1: no NULL stride array
def test_rank1_map_hands_the_driver_one_unused_stride():
    from dsv4_numba.hw.tma import driver_strides
    s = TensorMapSpec.from_array(FakeDeviceArray((1000,), np.uint32), (256,))
    assert s.strides == () and driver_strides(s) == (4000,)
    assert driver_strides(TensorMapSpec.from_array(FakeDeviceArray((3,), np.uint8), (16,))) == (16,)
    assert driver_strides(TensorMapSpec.from_array(FakeDeviceArray((999,), np.uint16), (8,))) == (2000,)
    s2 = TensorMapSpec.from_array(FakeDeviceArray((64, 256), np.uint16), (8, 8))
    assert driver_strides(s2) == (512,)          # rank >= 2: the real strides, untouched


def test_encode_passes_a_non_empty_stride_list_for_rank1(monkeypatch):
    """encode() as the driver binding sees it (the binding replaced by a recorder)."""
    from cuda.bindings import driver as drv

    from dsv4_numba.hw import tma
    seen = {}

    class Map:
        opaque = [0] * 16

    def fake(dtype, rank, addr, dims, strides, box, es, *rest):
        seen.update(rank=rank, strides=[int(x) for x in strides], dims=[int(d) for d in dims])
        return drv.CUresult.CUDA_SUCCESS, Map()

    monkeypatch.setattr(drv, "cuTensorMapEncodeTiled", fake)
    out = tma.encode(TensorMapSpec.from_array(FakeDeviceArray((1000,), np.uint32), (256,)))
    assert out.shape == (16,) and seen == {"rank": 1, "strides": [4000], "dims": [1000]}


FAKE_LIBCUDA = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>
typedef int CUresult;
CUresult cuInit(unsigned f) { return 0; }
CUresult cuDriverGetVersion(int *v) { *v = 13000; return 0; }
static CUresult enc(void *map, int dt, unsigned rank, void *addr, const uint64_t *gd,
                    const uint64_t *gs, const uint32_t *bd, const uint32_t *es, int il, int sw,
                    int l2, int oob) {
  printf("STRIDES %s\n", gs ? "non-null" : "NULL");
  fflush(stdout);
  memset(map, 0, 128);
  return gs ? 0 : 1;   /* the real driver's answer to a NULL stride array: INVALID_VALUE */
}
static CUresult stub(void) { return 0; }
CUresult cuGetProcAddress_v2(const char *s, void **p, int v, uint64_t f, int *st) {
  if (st) *st = 0;
  *p = strcmp(s, "cuTensorMapEncodeTiled") ? (void *)stub : (void *)enc;
  return 0;
}
CUresult cuGetProcAddress(const char *s, void **p, int v, uint64_t f) {
  return cuGetProcAddress_v2(s, p, v, f, 0);
}
"""


def test_rank1_stride_pointer_reaches_the_driver_non_null(tmp_path):
    """The H100 failure, reproduced without a GPU: a stand-in libcuda records the stride pointer
    cuda.bindings passes. An empty list arrives as NULL (the driver answers INVALID_VALUE);
    encode()'s rank-1 map arrives non-NULL."""
    import os
    import shutil
    import subprocess
    import sys
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler for the stand-in libcuda")
    (tmp_path / "fake.c").write_text(FAKE_LIBCUDA)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(tmp_path / "libcuda.so.1"),
                    str(tmp_path / "fake.c")], check=True)
    script = (
        "import numpy as np\n"
        "from cuda.bindings import driver as drv\n"
        "from dsv4_numba.hw import tma\n"
        "from dsv4_numba.hw.tma import TensorMapSpec\n"
        "s = TensorMapSpec(2, 4, 0x7F0000000000, (1000,), (), (256,), (1,))\n"
        "e = lambda st: drv.cuTensorMapEncodeTiled(drv.CUtensorMapDataType(2), 1, s.address, "
        "[drv.cuuint64_t(1000)], st, [drv.cuuint32_t(256)], [drv.cuuint32_t(1)], "
        "drv.CUtensorMapInterleave(0), drv.CUtensorMapSwizzle(0), drv.CUtensorMapL2promotion(0), "
        "drv.CUtensorMapFloatOOBfill(0))[0]\n"
        "print('EMPTY', e([]).name, flush=True)\n"
        "print('ENCODE', tma.encode(s).shape, flush=True)\n")
    env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path), CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=120)
    if "STRIDES" not in r.stdout:
        pytest.skip(f"the stand-in libcuda was not picked up: {r.stderr[-400:]}")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("STRIDES", "EMPTY", "ENCODE"))]
    assert lines[:2] == ["STRIDES NULL", "EMPTY CUDA_ERROR_INVALID_VALUE"], r.stdout
    assert lines[2:] == ["STRIDES non-null", "ENCODE (16,)"], r.stdout + r.stderr[-2000:]


# ---------------------------------------------------------------- box coordinates
def test_box_start_rules():
    from dsv4_numba.hw.tma import check_box_start
    check_box_start((-8, 0), 2, store=False)           # loads may start before the tensor
    check_box_start((120, 480), 4, store=True)         # stores may run past the far edge
    with pytest.raises(ValueError, match="non-negative"):
        check_box_start((-8, 0), 2, store=True)
    with pytest.raises(ValueError, match="16-byte aligned"):
        check_box_start((0, 4), 2, store=False)        # 8 bytes into the row
    with pytest.raises(ValueError, match="int32"):
        check_box_start((2**31, 0), 2, store=False)


@pytest.mark.gpu
def test_encode_on_a_gpu_gives_128_bytes():
    from numba import cuda

    from dsv4_numba.hw.tma import tensor_map_on_device
    a = cuda.device_array((256, 128), np.float32)
    t = tensor_map_on_device(a, (64, 32), "128B")
    assert t.shape == (16,) and t.dtype == np.uint64
