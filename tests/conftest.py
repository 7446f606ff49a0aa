import numpy as np
import pytest

from dsv4_numba.runtime import detect_gpu


def pytest_collection_modifyitems(config, items):
    # long compiles (marker ``heavy``) first, order otherwise kept: pytest-xdist then runs them
    # beside the many short tests instead of last and alone (CI: 2 cores, 15 minutes; the cluster
    # top-k's sm_90a compile alone takes ~4 min there, and test_topk.py is collected last)
    items.sort(key=lambda it: it.get_closest_marker("heavy") is None)
    if detect_gpu() is not None:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none found): run on the device machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng(request):
    """A seeded generator per test (seed from the test name, so failures reproduce)."""
    return np.random.default_rng(abs(hash(request.node.name)) % (2**32))


def outliers(rng, shape, scale_spread=3.0, dtype=np.float32):
    """Random values with per-row magnitudes over 10^+-scale_spread and a few 50x outliers; no zeros."""
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-scale_spread, scale_spread, shape[:-1] + (1,))
    flat = x.reshape(-1)
    if flat.size:
        flat[rng.integers(0, flat.size, max(1, flat.size // 64))] *= 50.0
    x[x == 0] = 1.0
    return x.astype(dtype)
