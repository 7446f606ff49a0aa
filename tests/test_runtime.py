"""Foundation: run modes, registry selection, compile-only toolchain, snippets, comparison helper."""
import numpy as np
import pytest
from numba import cuda, types

import dsv4_numba as d
from dsv4_numba import registry, runtime
from dsv4_numba.hw import ops, snippets
from dsv4_numba.runtime import toolchain
from dsv4_numba.stages import fp4
from dsv4_numba.testing import assert_close, poison

NO_GPU = runtime.detect_gpu() is None


# ---------------------------------------------------------------- run modes
def test_mode_is_sim_without_gpu(monkeypatch):
    monkeypatch.delenv("DSV4_MODE", raising=False)
    assert runtime.mode() == ("gpu" if not NO_GPU else "sim")
    monkeypatch.setenv("DSV4_MODE", "sim")
    assert runtime.mode() == "sim"
    monkeypatch.setenv("DSV4_MODE", "bogus")
    with pytest.raises(ValueError, match="DSV4_MODE"):
        runtime.mode()


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU error")
def test_forcing_gpu_mode_without_gpu_is_an_error(monkeypatch):
    monkeypatch.setenv("DSV4_MODE", "gpu")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        runtime.mode()


def _tool(name):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stamp_sources_follow_content_and_imports(tmp_path):
    """tools/stamp_sources.py: a source's mtime changes exactly when it or a package module it
    imports (transitively) or a PTX snippet file changes -- Numba's disk cache checks only the
    kernel's own file."""
    import os
    import shutil
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "dsv4_numba", tmp_path / "dsv4_numba",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "ptx", tmp_path / "ptx")
    st = _tool("stamp_sources")
    files = ("dsv4_numba/stages/topk.py", "dsv4_numba/hw/portable.py", "dsv4_numba/formats/e2m1.py")

    def stamps():
        assert st.stamp(str(tmp_path)) > 20
        return {f: os.stat(tmp_path / f).st_mtime for f in files}

    first = stamps()
    assert len(set(first.values())) == 3 and stamps() == first          # distinct, repeatable
    with open(tmp_path / "dsv4_numba/hw/portable.py", "a") as fh:       # a helper topk inlines
        fh.write("\n# changed\n")
    second = stamps()
    assert second["dsv4_numba/stages/topk.py"] != first["dsv4_numba/stages/topk.py"]
    assert second["dsv4_numba/hw/portable.py"] != first["dsv4_numba/hw/portable.py"]
    assert second["dsv4_numba/formats/e2m1.py"] == first["dsv4_numba/formats/e2m1.py"]  # no import
    with open(tmp_path / "ptx/memory.ptx", "a") as fh:                  # every module's
        fh.write("\n")
    third = stamps()
    assert all(third[f] != second[f] for f in files)


def test_precompile_runner_reports_failures(capsys):
    """tools/precompile.py's runner: every job runs (two at a time), each end is printed, a failed
    one makes the result 1."""
    run = _tool("precompile").run_jobs
    assert run([("a", ["print('A')"]), ("b", ["import sys; print(sys.argv[1])", "B"])], 2) == 0
    assert run([("ok", ["pass"]), ("bad", ["raise SystemExit(3)"])], 2) == 1
    out = capsys.readouterr().out
    assert "precompile bad: FAILED (rc 3)" in out and "precompile ok: ok" in out


def test_bench_helpers_shared_by_the_tools():
    """runtime.bench's rotation (input copies past 2 x L2, 1 to 8) and Cycle (round and round) are
    the ones the benchmark tools use (they were copied in two tools before 0.24.2)."""
    from dsv4_numba.runtime import bench
    assert bench.rotation(1) == 8 and bench.rotation(2 * bench.L2_BYTES) == 1
    assert bench.rotation(bench.L2_BYTES // 2 + 1) == 4 and bench.rotation(0) == 8
    c = bench.Cycle(["a", "b", "c"])
    assert [c() for _ in range(4)] == ["b", "c", "a", "b"]
    for name in ("bench_softmax_topk", "bench_indexer", "bench_read_floor"):
        t = _tool(name)
        assert t.rotation is bench.rotation and t.Cycle is bench.Cycle, name


def test_read_floor_kernels_assemble_and_check_arguments():
    """tools/bench_read_floor.py: its ld.global and cp.async.bulk read kernels compile for sm_90a
    without spills or local memory, with the loads they are named for; bad arguments are clear
    errors before any GPU work (and no GPU is one too)."""
    t = _tool("bench_read_floor")
    sig = (types.float32[::1], types.int64, types.int64, types.uint32[::1])
    for kern, want in ((t.ldg_kernel("nc", 512, 4), "LDG.E.128.CONSTANT"),
                       (t.ldg_kernel("cg", 256, 8), "LDG.E.128.STRONG.GPU"),
                       (t.ldg_kernel("nc_evict_last", 512, 8), "LDG.E.NA.128.CONSTANT"),
                       (t.bulk_kernel(512, 16384, 4), "UBLKCP.S.G")):
        res = kern.compile(sig, "sm_90a")
        assert res.spill_stores == 0 and res.stack_bytes == 0, res.summary()
        assert res.sass is None or want in res.sass, (kern.__name__, want)
    with pytest.raises(ValueError, match="load form"):
        t.load_form("ca")
    with pytest.raises(SystemExit, match="RxN"):
        t.main(["--shape", "64by8"])
    with pytest.raises(SystemExit, match="divide"):
        t.main(["--shape", "3x5", "--ctas", "2"])
    if NO_GPU:
        with pytest.raises(SystemExit, match="needs a GPU"):
            t.main(["--quick"])


def test_ncu_source_summary(tmp_path, capsys):
    """tools/ncu_source_summary.py on a hand-made ncu source page: totals by stall reason, the
    bank-conflict excess, windows with their landmarks, instructions that never ran, a clear
    error for a file that is not a source page."""
    import csv
    t = _tool("ncu_source_summary")
    hdr = ["Address", "Source", t.SAMPLES, t.EXECUTED, t.WAVES, t.IDEAL, "stall_no_inst",
           "stall_barrier", "stall_barrier (Not Issued)"]
    rows = [["0x0", "  LDS R1, [R2]", "6", "8", "64", "4", "1", "0", "9"],
            ["0x10", "  @P0 BAR.SYNC.DEFER_BLOCKING 0x0", "4", "8", "0", "0", "0", "4", "9"],
            ["0x20", "  BRA 0x0", "0", "0", "0", "0", "0", "0", "0"],
            ["0x30", "  STAS [R4.64], R5", "10", "2", "0", "0", "10", "0", "0"]]
    path = tmp_path / "src.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Kernel Name", "k(int)"])
        w.writerow(hdr)
        w.writerows(rows)
    name, data = t.read(str(path))
    tot = t.totals(data)
    assert name == "k(int)" and tot["lines"] == 4 and tot["ran"] == 3
    assert tot["samples"] == 20 and tot["stalls"] == {"stall_no_inst": 11, "stall_barrier": 4}
    assert (tot["waves"], tot["ideal"]) == (64, 4)
    win = t.windows(data, 2)
    assert [w["start"] for w in win] == [0, 2] and win[0]["marks"] == {"BAR": 1}
    assert win[0]["share"] == 0.5 and win[1]["marks"] == {"STAS": 1} and win[1]["ran"] == 1
    assert t.main([str(path), "--window", "2", "--hot", "1"]) == 0
    out = capsys.readouterr().out
    assert "no_inst" in out and "STAS [R4.64], R5" in out and "| STAS1" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("x\n")
    with pytest.raises(ValueError, match="source page"):
        t.read(str(bad))


def test_kernel_dispatcher_cache_and_lineinfo(monkeypatch):
    """DSV4_NUMBA_CACHE=1: dispatchers with Numba's disk cache; DSV4_LINEINFO=1: line tables and
    never the cache (its entries do not record the option). Making a dispatcher compiles
    nothing, so this runs without a GPU."""
    from dsv4_numba.runtime.kernel import Kernel

    def k(x):
        x[0] = 1

    monkeypatch.delenv("DSV4_LINEINFO", raising=False)
    monkeypatch.setenv("DSV4_NUMBA_CACHE", "1")
    d = Kernel(k, launch_bounds=(32,)).gpu
    assert type(d._cache).__name__ == "CUDACache" and not d.targetoptions["lineinfo"]
    assert d.targetoptions["launch_bounds"] == (32,)
    monkeypatch.setenv("DSV4_LINEINFO", "1")
    d = Kernel(k).gpu
    assert type(d._cache).__name__ == "NullCache" and d.targetoptions["lineinfo"]
    monkeypatch.setenv("DSV4_LINEINFO", "0")
    monkeypatch.setenv("DSV4_NUMBA_CACHE", "0")                         # the default: no cache
    assert type(Kernel(k).gpu._cache).__name__ == "NullCache"


# ---------------------------------------------------------------- registry
@runtime.kernel(pdl=True)
def _pdl_copy(src, out):
    ops.griddepcontrol_wait()
    ops.griddepcontrol_launch_dependents()
    i = cuda.grid(1)
    if i < out.size:
        out[i] = src[i] + 1


def _pdl_kernels():
    """Every PDL kernel of the production top-k and the fused indexers' kernel lists."""
    from dsv4_numba.pipelines import indexer_sm90 as F
    from dsv4_numba.stages import topk as T
    lists = (T.production_kernels(), F.production_kernels(), F.v2_kernels(), F.rs_kernels_of(),
             F.fp8_kernels(), F.v5_kernels())
    out = {id(k): k for kl in lists for k, _ in kl if k.pdl}
    names = {k.__name__ for k in out.values()}
    # the top-k's one-launch variants are PDL kernels (what the indexer's top-k runs)
    assert {"topk_rowblock_f32_v4_t1024", "topk_split_f32_v4_t256",
            "topk_split_f32_v4_t256_c16"} <= names, sorted(names)
    return list(out.values())


def test_pdl_kernels_wait_before_anything_else():
    """A kernel launched with programmatic dependent launch may start while the kernel before it
    still writes its inputs: every kernel declared ``pdl=True`` must run griddepcontrol.wait as its
    first statement (the review rule of ``runtime.Kernel``)."""
    import ast
    import inspect
    import textwrap
    for k in _pdl_kernels():
        fn = ast.parse(textwrap.dedent(inspect.getsource(k.py_func))).body[0]
        first = fn.body[0]
        assert isinstance(first, ast.Expr) and ast.unparse(first.value) == \
            "ops.griddepcontrol_wait()", f"{k.__name__}: first statement {ast.unparse(first)}"


def test_pdl_switch_and_simulator_launch(monkeypatch):
    """DSV4_PDL: on by default, "0" turns it off; under the simulator a pdl kernel launches as any
    other (its griddepcontrol ops are the emulator's no-ops)."""
    monkeypatch.delenv("DSV4_PDL", raising=False)
    assert runtime.env.pdl()
    monkeypatch.setenv("DSV4_PDL", "0")
    assert not runtime.env.pdl()
    if runtime.mode() != "sim":
        pytest.skip("simulator check")
    src = np.arange(40, dtype=np.int32)
    out = poison(40, np.int32)
    _pdl_copy.launch(2, 32, src, out)
    assert np.array_equal(out, src + 1)


def test_pdl_unavailable_warns_once_and_falls_back(monkeypatch, recwarn):
    """Where PDL cannot be used (here: a GPU older than sm_90), one warning names the cause and
    ``_launch_pdl`` declines (the caller launches plainly); later calls decline silently."""
    import sys
    K = sys.modules["dsv4_numba.runtime.kernel"]
    monkeypatch.setitem(K._PDL_STATE, "ok", None)
    monkeypatch.setattr(runtime.env, "detect_gpu",
                        lambda: runtime.GpuInfo("an sm_80 GPU", (8, 0), 108, 13000))
    assert K._launch_pdl(None, 1, 32, 0, 0, ()) is False
    assert K._launch_pdl(None, 1, 32, 0, 0, ()) is False
    msgs = [str(w.message) for w in recwarn.list if "dependent launch" in str(w.message)]
    assert len(msgs) == 1 and "older than sm_90" in msgs[0] and "without it" in msgs[0], msgs


def test_registry_reference_and_env(monkeypatch):
    monkeypatch.delenv("DSV4_IMPL", raising=False)
    assert registry.resolve("decode_fp4", "reference").name == "reference"
    monkeypatch.setenv("DSV4_IMPL", "decode_fp4=reference,*=production")
    assert registry.env_choice("decode_fp4") == "reference"
    assert registry.env_choice("quantize_fp4") == "production"
    monkeypatch.setenv("DSV4_IMPL", "reference")
    assert registry.resolve("quantize_fp4").name == "reference"
    monkeypatch.setenv("DSV4_IMPL", "decode_fp4")
    with pytest.raises(ValueError, match="not one of"):
        registry.resolve("decode_fp4")


def test_registry_errors():
    with pytest.raises(KeyError, match="unknown stage"):
        registry.resolve("nope")
    with pytest.raises(ValueError, match="not one of"):
        registry.resolve("decode_fp4", "fast")
    with pytest.raises(ValueError, match="unknown stages"):
        registry.resolve_pipeline(("decode_fp4",), {"qk": "reference"})
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("decode_fp4", "reference")(lambda: None)


@pytest.mark.skipif(not NO_GPU, reason="no-GPU behaviour")
def test_production_without_gpu_raises_and_auto_warns(monkeypatch):
    monkeypatch.delenv("DSV4_IMPL", raising=False)
    with pytest.raises(d.ImplUnavailable, match="needs a GPU of arch sm_90a"):
        registry.resolve("decode_fp4", "production")
    with pytest.raises(d.ImplUnavailable, match="sm_100a"):
        registry.resolve("decode_fp4", "production:sm_100a")
    with pytest.warns(d.ProductionUnavailableWarning, match="production path unavailable"):
        assert registry.resolve("decode_fp4").name == "reference"
    with pytest.warns(d.ProductionUnavailableWarning, match="quantize_fp4"):
        picked = registry.resolve_pipeline(("decode_fp4", "quantize_fp4"),
                                           {"decode_fp4": "reference"})
    assert picked["decode_fp4"].name == picked["quantize_fp4"].name == "reference"


# ---------------------------------------------------------------- compile-only mode
def test_compile_trivial_kernel_both_arches():
    sig = (types.uint8[::1], types.uint8[::1], types.float32, types.int64, types.int64,
           types.boolean, types.int64, types.float32[::1])
    for arch in ("sm_90a", "sm_100a"):
        res = fp4.decode_ref_kernel.compile(sig, arch)
        assert f".target {arch}" in res.ptx
        assert res.registers > 0 and res.spill_stores == 0 and len(res.cubin) > 0
        assert res.sass is None or "EXIT" in res.sass


def test_toolchain_uses_matching_ptxas_only():
    ptx = fp4.decode_ref_kernel.ptx((types.uint8[::1], types.uint8[::1], types.float32, types.int64,
                                     types.int64, types.boolean, types.int64,
                                     types.float32[::1]), "sm_90a")
    rel = toolchain.ptx_release(ptx)
    assert rel is not None
    assert toolchain._tool_release(toolchain.find_tool("ptxas", rel)) == rel
    with pytest.raises(toolchain.ToolchainError, match="release 0.1"):
        toolchain.find_tool("ptxas", "0.1")
    with pytest.raises(ValueError, match="not supported"):
        toolchain.compile_ptx(fp4.decode_ref_kernel, (), "sm_80")


def test_wrong_arch_instruction_is_rejected_by_ptxas():
    """The check is real: an sm_100a-only conversion does not assemble for sm_90a."""
    kern, sig = fp4._kernels_decode(fp4.decode_sm100_kernel)[2]
    ptx = kern.ptx(sig, "sm_100a")
    with pytest.raises(toolchain.ToolchainError, match="not supported on .target"):
        toolchain.assemble(ptx.replace(".target sm_100a", ".target sm_90a"), "sm_90a",
                           want_sass=False)


# ---------------------------------------------------------------- PTX snippets
def test_every_snippet_documents_its_contract():
    assert {"prmt", "ld_global_nc_v4_u32", "cvt_f16x2_e2m1x2"} <= set(snippets.SNIPPETS)
    for sn in snippets.SNIPPETS.values():
        assert sn.instruction and sn.ptx_isa and sn.min_arch.startswith("sm_") and sn.body


def test_snippet_without_contract_is_rejected():
    with pytest.raises(ValueError, match="lacks"):
        snippets.parse("// ==== bad\n// instruction: x\nadd.u32 $0, $1, $2;\n")


# ---------------------------------------------------------------- comparison helper
def test_assert_close_catches_what_it_should():
    e = np.array([[1.0, 2.0], [np.nan, np.inf]], np.float32)
    assert_close(e.copy(), e, atol=0, rtol=0)
    with pytest.raises(AssertionError, match="NaN masks differ"):
        assert_close(np.array([[1, 2], [0, np.inf]], np.float32), e)
    with pytest.raises(AssertionError, match=r"\+inf masks"):
        assert_close(np.array([[1, 2], [np.nan, 1]], np.float32), e)
    with pytest.raises(AssertionError, match=r"at \(0, 1\)"):
        assert_close(np.array([[1, 2.1], [np.nan, np.inf]], np.float32), e, atol=1e-3)
    assert_close(np.array([[1, 2.1], [np.nan, np.inf]], np.float32), e, rtol=0.06)
    with pytest.raises(AssertionError, match="cosine"):
        assert_close(-np.ones(4), np.ones(4), atol=3, min_cosine=0.9)
    with pytest.raises(AssertionError, match="differ bitwise"):
        assert_close(np.float32([0.0]), np.float32([-0.0]), bitwise=True)
    with pytest.raises(AssertionError, match="shape"):
        assert_close(np.zeros(3), np.zeros(4))
    assert np.isnan(poison((3,), np.float32)).all()
    assert (poison((3,), np.int32) == -1).all()


# ---------------------------------------------------------------- CLI
@pytest.mark.parametrize("args,expect", [
    (["info"], "stage implementations"),
    (["demo"], "demo: OK"),
    (["explain-desc", "0x08100490", "--kind", "umma-idesc"], "M = 128"),
])
def test_cli(args, expect):
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "dsv4_numba", *args], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert expect in p.stdout
    if args == ["demo"] and NO_GPU:
        assert "SIMULATOR" in p.stdout


def test_cli_rejects_invalid_descriptor():
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "dsv4_numba", "explain-desc", "0x1", "--kind",
                        "umma-smem"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "version bits" in p.stderr


def test_version_is_one_number_everywhere():
    """pyproject's version, ``__version__`` and the CHANGELOG's newest entry agree (they had drifted
    apart: 0.1.0 against 0.21.0 until 0.22.0)."""
    import pathlib
    import re
    root = pathlib.Path(__file__).resolve().parent.parent
    py = re.search(r'^version = "([^"]+)"', (root / "pyproject.toml").read_text(), re.M)
    log = re.search(r"^## (\d+\.\d+\.\d+) ", (root / "CHANGELOG.md").read_text(), re.M)
    assert py and log, "pyproject.toml needs a version line, CHANGELOG.md a '## X.Y.Z' entry"
    assert py.group(1) == d.__version__ == log.group(1), (py.group(1), d.__version__, log.group(1))


def test_fresh_ir_inlining_is_on_and_changes_no_code():
    """``_install_fresh_ir_inlining`` (numba-cuda's deep copies of a fresh callee IR skipped: ~5x
    faster builds of the big kernels) is on with the pinned numba-cuda, and a production kernel of
    nested @device helpers compiles to the same PTX with it and without it."""
    import importlib
    import re
    from numba.cuda.core import inline_closurecall as icc
    K = importlib.import_module("dsv4_numba.runtime.kernel")
    K._install_fresh_ir_inlining()
    assert K.INLINE_PATCH["state"].startswith("on"), K.INLINE_PATCH["state"]
    kern, sig = registry.REGISTRY["softmax"].impls["production:sm_90a"].kernels()[0]
    fast = kern.ptx(sig, "sm_90a")
    patched = icc.InlineWorker.inline_function
    icc.InlineWorker.inline_function = K.INLINE_PATCH["original"]
    try:
        plain = kern.ptx(sig, "sm_90a")
    finally:
        icc.InlineWorker.inline_function = patched

    def named(ptx):         # mangled names and shared arrays carry per-compile counters
        seen = {}
        return re.sub(r"_ZN\w+|_cudapy_smem_\d+",
                      lambda m: seen.setdefault(m.group(0), f"NAME{len(seen)}"), ptx)
    assert named(fast) == named(plain)
    assert named(fast) != named(kern.ptx(sig, "sm_100a")), "the comparison can fail"
