"""The fused sm_90a attention kernel without a GPU: it compiles for sm_90a with no spills and no
local memory, its PTX / SASS hold the instructions it exists for, its shared-memory plan is what the
docstring says, and ``fmha`` routes to it (or says why not) before any launch.

Numerics are checked on an H100 by tests/gpu/test_fmha_gpu.py (the emulator does not cover wgmma
with A from registers and a transposed B yet).
"""
import re

import ml_dtypes
import numpy as np
import pytest

from dsv4_numba import registry
from dsv4_numba.pipelines import fmha_sm90
from dsv4_numba.pipelines.fmha import FUSED, fmha
from dsv4_numba.runtime import detect_gpu
from dsv4_numba.runtime.kernel import Kernel

BF16 = ml_dtypes.bfloat16
NO_GPU = detect_gpu() is None


@pytest.fixture(scope="module", params=fmha_sm90.SUPPORTED_D, ids=lambda d: f"D{d}")
def compiled(request):
    D = request.param
    return D, fmha_sm90.fused_kernel(D).compile(fmha_sm90.signature(), "sm_90a")


def test_compiles_without_spills_or_local_memory(compiled):
    D, res = compiled
    assert res.spill_stores == res.spill_loads == res.stack_bytes == 0, res.summary()
    assert ".local" not in res.ptx, "accumulators must stay in registers"
    threads = fmha_sm90.geometry(D)["threads"]
    assert res.registers <= (65536 // threads) // 8 * 8, res.summary()
    assert "serialized" not in res.ptxas_log, res.ptxas_log     # no wgmma serialisation warning


def test_ptx_and_sass_hold_the_pipeline(compiled):
    D, res = compiled
    ptx = res.ptx
    # S = Q K^T: D/16 SS wgmmas of N = BN per tile; O += P V: BN/16 RS wgmmas with imm-trans-b = 1
    ss = re.findall(rf"wgmma\.mma_async\.sync\.aligned\.m64n{fmha_sm90.BN}k16\.f32\.bf16\.bf16 "
                    r"\{[^}]*\}, %rd\d+, %rd\d+, p, 1, 1, 0, 0;", ptx)
    rs = re.findall(rf"wgmma\.mma_async\.sync\.aligned\.m64n{D}k16\.f32\.bf16\.bf16 "
                    r"\{[^}]*\}, \{[^}]*\}, %rd\d+, p, 1, 1, 1;", ptx)
    assert len(ss) == D // 16 and len(rs) == fmha_sm90.BN // 16, (len(ss), len(rs))
    for instr in ("cp.async.bulk.tensor.4d", "mbarrier.arrive.expect_tx", "mbarrier.try_wait.parity",
                  "cvt.rn.bf16x2.f32", "fence.proxy.tensormap::generic.acquire",
                  "wgmma.fence.sync.aligned", "wgmma.wait_group.sync.aligned 0", "shfl.sync.bfly"):
        assert instr in ptx, instr
    assert res.sass.count("HGMMA") == D // 16 + fmha_sm90.BN // 16
    assert "UTMALDG" in res.sass


@pytest.mark.parametrize("D", fmha_sm90.SUPPORTED_D)
def test_shared_memory_plan(D):
    g = fmha_sm90.geometry(D)
    assert g["boxq"] % 1024 == 0 and g["boxk"] % 1024 == 0 and g["kbytes"] % 1024 == 0
    assert g["qbytes"] == fmha_sm90.NC * 64 * D * 2
    assert g["kbytes"] == fmha_sm90.BN * D * 2
    assert g["dyn_smem"] <= 227 * 1024
    assert g["threads"] == 128 * (fmha_sm90.NC + 1)


def test_descriptors():
    from dsv4_numba.hw.descriptors import explain
    k = explain(fmha_sm90.DESC_KMAJOR, "wgmma-smem")
    v = explain(fmha_sm90.DESC_V, "wgmma-smem")
    assert "128B" in str(k) and "128B" in str(v)
    assert (fmha_sm90.DESC_V >> 16) & 0x3FFF == fmha_sm90.BN * 128 >> 4      # LBO: next 64 columns
    assert (fmha_sm90.DESC_V >> 32) & 0x3FFF == 1024 >> 4                    # SBO: next 8 keys
    assert fmha_sm90.DESC_V & 0x3FFF == fmha_sm90.DESC_KMAJOR & 0x3FFF == 0  # address ORed in later


def test_registered_as_attn_fused_production():
    st = registry.REGISTRY[FUSED]
    assert set(st.impls) == {"reference", "production:sm_90a"}
    kern = st.impls["production:sm_90a"].kernels()
    assert [k for k, _ in kern] == [fmha_sm90.fused_kernel(D) for D in fmha_sm90.SUPPORTED_D]


@pytest.fixture
def no_launch(monkeypatch):
    def boom(self, *a, **k):
        raise AssertionError(f"kernel {self.__name__} launched before the error")
    monkeypatch.setattr(Kernel, "launch", boom)


def _qkv(D, dtype=BF16, Tq=3, Tk=5):
    g = np.random.default_rng(0)
    return tuple(g.standard_normal(s).astype(dtype)
                 for s in ((1, Tq, 2, D), (1, Tk, 1, D), (1, Tk, 1, D)))


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU errors")
def test_selection_errors_before_launch(no_launch):
    q, k, v = _qkv(64)
    with pytest.raises(registry.ImplUnavailable, match="attn_fused.*needs a GPU"):
        fmha(q, k, v, impls="production")
    with pytest.raises(registry.ImplUnavailable, match="attn_fused.*needs a GPU"):
        fmha(q, k, v, impls={FUSED: "production"})
    with pytest.raises(registry.ImplUnavailable, match=r"only sm_90a"):
        fmha(q, k, v, impls={FUSED: "production:sm_100a"})
    with pytest.raises(ValueError, match="impl 'fast'"):
        fmha(q, k, v, impls={FUSED: "fast"})
    q, k, v = _qkv(16)
    with pytest.raises(registry.ImplUnavailable, match=r"D in \(64, 128\), not D = 16"):
        fmha(q, k, v, impls={FUSED: "production"})
    q, k, v = _qkv(64, np.float16)
    with pytest.raises(registry.ImplUnavailable, match="bfloat16 q/k/v only"):
        fmha(q, k, v, impls="production")
    q, k, v = _qkv(64)
    with pytest.raises(registry.ImplUnavailable, match="return_intermediates"):
        fmha(q, k, v, impls="production", return_intermediates=True)


@pytest.mark.skipif(not NO_GPU, reason="on a GPU auto picks the fused kernel")
@pytest.mark.filterwarnings("ignore::dsv4_numba.registry.ProductionUnavailableWarning")
def test_auto_and_reference_run_staged_here():
    q, k, v = _qkv(64, Tq=1, Tk=2)
    a = fmha(q, k, v, impls={FUSED: "reference", "softmax": "reference"})
    b = fmha(q, k, v)                                          # auto: the fused kernel cannot run
    np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


def test_generated_source_is_static():
    """Every accumulator is a named scalar: no subscripted register state in the kernel body."""
    src = fmha_sm90._source(128)
    assert "s31 = " in src and "o63 = " in src and "p15 = " in src
    assert not re.search(r"\b[sop]\[", src)
