"""The planned sm_100a FP4 indexer (pipelines/indexer_sm100.py): design and plans only, no kernel yet.
These tests pin the plans the kernel will be written against (TMEM columns through tools/tmem_plan.py's
checker, shared memory within the sm_100a limit) and that the missing kernel says so."""
import importlib.util
import pathlib

import pytest

from dsv4_numba.pipelines import indexer_sm100 as I

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tmem_plan_tool():
    spec = importlib.util.spec_from_file_location("tmem_plan", ROOT / "tools" / "tmem_plan.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tmem_plan_fits_and_does_not_overlap():
    plan = I.tmem_plan()
    errs, alloc = _tmem_plan_tool().check({k: (c, n, None) for k, (c, n) in plan.items()}, I.TMEM_COLS)
    assert errs == [] and alloc == 512
    assert plan["ACC0"][1] == plan["ACC1"][1] == I.BN                 # f32 accumulators: N columns
    assert plan["SFA"][1] == I.ROWS // 32 * (I.D // I.K_MMA)          # 1 column per 32 rows per K block
    assert I.BN % 32 == 0 and I.BN <= 256 and I.ROWS == 2 * I.H


def test_smem_plan_fits_sm100a():
    s = I.smem_plan()
    assert s["q"] == I.ROWS * I.D // 2 and s["k_slot"] == I.BN * I.D // 2
    assert s["total"] <= 227 * 1024, s


def test_kernel_is_not_written_yet():
    with pytest.raises(NotImplementedError, match="not written yet"):
        I.fused_production()
