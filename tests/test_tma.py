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


@pytest.mark.gpu
def test_encode_on_a_gpu_gives_128_bytes():
    from numba import cuda

    from dsv4_numba.hw.tma import tensor_map_on_device
    a = cuda.device_array((256, 128), np.float32)
    t = tensor_map_on_device(a, (64, 32), "128B")
    assert t.shape == (16,) and t.dtype == np.uint64
