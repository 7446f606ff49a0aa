"""The PTX layer on CPU (issue 5, item 4): every snippet of mbarrier / tma / sync / wgmma / ldst_matrix
/ tcgen05 is used in a small kernel compiled for its minimum arch and assembled by ptxas; the PTX (and
the SASS, where nvdisasm is available) contains the instruction; ptxas reports no spills; the arch-
specific (``a``) families are rejected for the plain target (negative control) and the sm_90 families
assemble for plain sm_90 (their min-arch is not overstated)."""
import functools
import os
import inspect
import re

import numpy as np
import pytest
from numba import cuda, types
from numba.types import int32, uint8, uint32, uint64

from dsv4_numba.hw import ops, snippets
from dsv4_numba.runtime import env, kernel, toolchain

FILES = ("mbarrier.ptx", "tma.ptx", "sync.ptx", "wgmma.ptx", "ldst_matrix.ptx", "tcgen05.ptx",
         "cluster.ptx")
U8 = types.uint8[::1]
U64 = types.uint64[::1]
U32 = types.uint32[::1]


# ---------------------------------------------------------------- kernels (one per family group)
@kernel
def k_mbarrier_tma(tmap, out):
    """sm_90: mbarrier ring step, TMA 1D-5D loads (plain and L2-hinted) and stores, tensormap fences."""
    tile = cuda.shared.array(4096, uint8)
    bars = cuda.shared.array(3, uint64)
    bar = ops.shared_address(bars)
    dst = ops.shared_address(tile)
    desc = ops.array_address(tmap)
    t = cuda.threadIdx.x
    c = int32(t)
    if t == 0:
        ops.fence_proxy_tensormap_acquire_gpu(desc)
        ops.fence_proxy_tensormap_acquire_sys(desc)
        ops.prefetch_tensormap(desc)
        ops.mbarrier_init(bar, uint32(1))
        ops.mbarrier_init(bar + uint32(8), uint32(cuda.blockDim.x))
        ops.mbarrier_init(bar + uint32(16), uint32(cuda.blockDim.x))
        ops.fence_mbarrier_init()
    cuda.syncthreads()
    ops.cp_async_mbarrier_arrive_noinc(bar + uint32(16))
    if t == 0:
        ops.mbarrier_arrive_expect_tx(bar, uint32(4096))
        ops.mbarrier_expect_tx(bar, uint32(0))
        ops.tma_load_1d(dst, desc, c, bar)
        ops.bulk_load(dst, desc, uint32(128), bar)
        ops.tma_load_2d(dst, desc, c, c, bar)
        ops.tma_load_3d(dst, desc, c, c, c, bar)
        ops.tma_load_4d(dst, desc, c, c, c, c, bar)
        ops.tma_load_5d(dst, desc, c, c, c, c, c, bar)
        first = ops.l2_policy_evict_first()
        last = ops.l2_policy_evict_last()
        ops.tma_load_2d_hint(dst, desc, c, c, bar, first)
        ops.tma_load_3d_hint(dst, desc, c, c, c, bar, last)
    ops.mbarrier_wait_parity(bar, uint32(0))
    while ops.mbarrier_try_wait_parity(bar, uint32(0)) == 0:
        pass
    state = ops.mbarrier_arrive(bar + uint32(8))
    out[t] = state
    if t == 0:
        ops.tma_store_1d(desc, dst, c)
        ops.tma_store_2d(desc, dst, c, c)
        ops.tma_store_3d(desc, dst, c, c, c)
        ops.tma_store_4d(desc, dst, c, c, c, c)
        ops.tma_store_5d(desc, dst, c, c, c, c, c)
        ops.tma_store_commit_group()
        ops.tma_store_wait_group_read_1()
        ops.tma_store_wait_group_read_0()
        ops.tma_store_wait_group_0()
        ops.fence_proxy_tensormap_release_gpu()
        ops.mbarrier_inval(bar)


@kernel
def k_sync_ldst(src, out):
    """sm_90: proxy fences, grid dependency control, named barriers, elect.sync, ldmatrix /
    stmatrix, cp.async."""
    ops.griddepcontrol_launch_dependents()
    ops.griddepcontrol_wait()
    sm = cuda.shared.array(4096, uint8)
    s = ops.shared_address(sm)
    g = ops.array_address(src)
    t = cuda.threadIdx.x
    row = s + uint32((t % 32) * 16)
    gi = g + uint64(t * 16)
    ops.cp_async_ca_4(row, gi)
    ops.cp_async_ca_8(row, gi)
    ops.cp_async_ca_16(row, gi)
    ops.cp_async_commit_group()
    ops.cp_async_cg_16(row, gi)
    ops.cp_async_cg_16_zfill(row, gi, uint32(t % 17))
    ops.cp_async_commit_group()
    ops.cp_async_wait_group_2()
    ops.cp_async_wait_group_1()
    ops.cp_async_wait_group_0()
    ops.named_barrier_arrive(uint32(1), uint32(64))
    ops.named_barrier_sync(uint32(1), uint32(64))
    a = ops.ldmatrix_x1(row)
    b0, b1 = ops.ldmatrix_x2(row)
    c0, c1, c2, c3 = ops.ldmatrix_x4(row)
    d = ops.ldmatrix_x1_trans(row)
    e0, e1 = ops.ldmatrix_x2_trans(row)
    f0, f1, f2, f3 = ops.ldmatrix_x4_trans(row)
    ops.named_barrier_sync(uint32(2), uint32(128))
    ops.stmatrix_x1(row, a ^ d)
    ops.stmatrix_x2(row, b0 ^ e0, b1 ^ e1)
    ops.stmatrix_x4(row, c0 ^ f0, c1 ^ f1, c2 ^ f2, c3 ^ f3)
    ops.fence_proxy_async()
    ops.fence_proxy_async_shared_cta()
    out[t] = ops.elect_one_sync(uint32(0xFFFFFFFF))


@kernel(cluster=2)
def k_cluster(out):
    """sm_90: a cluster kernel (runtime.kernel(cluster=2): NVVM's cluster_dim annotations) meeting
    at barrier.cluster (released and relaxed arrives), reading and writing its peer's shared memory
    (mapa, ld / st .shared::cluster), and pushing 512 bytes into it with st.async (16-, 8- and
    4-byte stores) on the peer's mbarrier, waited with acquire at cluster scope; then 32 more
    bytes whose count the sender adds to the peer's second mbarrier once they are issued (a remote
    arrive.expect_tx)."""
    sm = cuda.shared.array(256, uint32)
    rx = cuda.shared.array(128, uint32)
    rx2 = cuda.shared.array(8, uint32)
    mb = cuda.shared.array(2, uint64)
    t = cuda.threadIdx.x
    peer = uint32((cuda.blockIdx.x + 1) % 2)
    sm[t] = t
    if t == 0:
        ops.mbarrier_init(ops.shared_address(mb), uint32(1))
        ops.mbarrier_init(ops.shared_address(mb) + uint32(8), uint32(1))
        ops.fence_mbarrier_init()
    ops.cluster_arrive_release()
    ops.cluster_wait_acquire()
    a = ops.mapa_shared_cluster(ops.shared_address(sm) + uint32(4 * t), peer)
    v = ops.ld_shared_cluster_u32(a)
    w0, w1, w2, w3 = ops.ld_shared_cluster_v4_u32(a & uint32(0xFFFFFFF0))
    w0 += uint32(ops.ld_shared_cluster_u64(a & uint32(0xFFFFFFF8)) >> uint64(32))
    ops.cluster_arrive_release()
    ops.cluster_wait_acquire()
    ops.st_shared_cluster_u32(a, v + w0 + w1 + w2 + w3)
    if t == 0:
        ops.mbarrier_arrive_expect_tx(ops.shared_address(mb), uint32(4 * 128))
    pmb = ops.mapa_shared_cluster(ops.shared_address(mb), peer)
    if t < 16:
        ops.st_async_v4_b32(ops.mapa_shared_cluster(ops.shared_address(rx) + uint32(16 * t), peer),
                            t, t + uint32(1), t + uint32(2), t + uint32(3), pmb)
    elif t < 32:                                # words 64 .. 95: 8 bytes a thread
        ops.st_async_b64(ops.mapa_shared_cluster(ops.shared_address(rx) + uint32(8 * t + 128),
                                                 peer),
                         (uint64(2 * t + 33) << uint64(32)) | uint64(2 * t + 32), pmb)
    elif t < 64:                                # words 96 .. 127: 4 bytes a thread
        ops.st_async_b32(ops.mapa_shared_cluster(ops.shared_address(rx) + uint32(4 * t + 256),
                                                 peer), t + uint32(64), pmb)
    ops.mbarrier_wait_parity_cluster(ops.shared_address(mb), uint32(0))
    pmb2 = ops.mapa_shared_cluster(ops.shared_address(mb) + uint32(8), peer)
    if t < 8:
        ops.st_async_b32(ops.mapa_shared_cluster(ops.shared_address(rx2) + uint32(4 * t), peer),
                         t + uint32(7), pmb2)
    cuda.syncthreads()
    if t == 0:                                  # every push above is issued: 32 bytes
        ops.mbarrier_arrive_expect_tx_cluster(pmb2, uint32(32))
    ops.mbarrier_wait_parity_cluster(ops.shared_address(mb) + uint32(8), uint32(0))
    ops.cluster_arrive_release()
    ops.cluster_wait_acquire()
    u = sm[t] + rx[t & 127] + rx2[t & 7]
    ops.cluster_arrive_relaxed()                # every remote access above is complete
    ops.cluster_wait_acquire()
    out[cuda.blockIdx.x * cuda.blockDim.x + t] = u


@kernel(launch_bounds=(384, 1))
def k_wgmma_setmaxnreg(out):
    """sm_90a: wgmma ordering instructions and setmaxnreg (launch bounds so ptxas honours it)."""
    t = cuda.threadIdx.x
    if t < 128:
        ops.setmaxnreg_dec_40()
        ops.setmaxnreg_dec_24()
    else:
        ops.setmaxnreg_inc_232()
        ops.setmaxnreg_inc_240()
        ops.wgmma_fence()
        ops.wgmma_commit_group()
        ops.wgmma_wait_group_3()
        ops.wgmma_wait_group_2()
        ops.wgmma_wait_group_1()
        ops.wgmma_wait_group_0()
    out[t] = t


@kernel
def k_tcgen05(adesc, out):
    """sm_100a: TMEM alloc, SS and TS mma (f16, f8f6f4), commit, fences, ld/st, waits, dealloc."""
    holder = cuda.shared.array(2, uint32)
    bars = cuda.shared.array(1, uint64)
    hold = ops.shared_address(holder)
    bar = ops.shared_address(bars)
    t = cuda.threadIdx.x
    warp = t // 32
    if warp == 0:
        ops.tcgen05_alloc(hold, uint32(64))
        ops.tcgen05_relinquish_alloc_permit()
    if t == 0:
        ops.mbarrier_init(bar, uint32(1))
    ops.tcgen05_fence_before_thread_sync()
    cuda.syncthreads()
    ops.tcgen05_fence_after_thread_sync()
    tmem = holder[0]
    ad = adesc[0]
    bd = adesc[1]
    idesc = uint32(adesc[2])
    if t == 0:
        ops.tcgen05_mma_f16_ss(tmem, ad, bd, idesc, uint32(0))
        ops.tcgen05_mma_f16_ts(tmem, tmem + uint32(32), bd, idesc, uint32(1))
        ops.tcgen05_mma_f8f6f4_ss(tmem, ad, bd, idesc, uint32(1))
        ops.tcgen05_mma_f8f6f4_ts(tmem, tmem + uint32(32), bd, idesc, uint32(1))
        ops.tcgen05_commit(bar)
    ops.mbarrier_wait_parity(bar, uint32(0))
    ops.tcgen05_fence_after_thread_sync()
    lane = tmem + (uint32(warp * 32) << 16)
    x = ops.tcgen05_ld_32x32b_x1(lane)
    y0, y1, y2, y3 = ops.tcgen05_ld_16x256b_x1(lane)
    ops.tcgen05_wait_ld()
    ops.tcgen05_st_32x32b_x1(lane + uint32(8), x + y0)
    ops.tcgen05_st_16x256b_x1(lane + uint32(16), y0, y1, y2, y3)
    ops.tcgen05_wait_st()
    out[t] = x ^ y3
    ops.tcgen05_fence_before_thread_sync()
    cuda.syncthreads()
    if warp == 0:
        ops.tcgen05_dealloc(tmem, uint32(64))


@kernel
def k_tcgen05_block_scaled(adesc, out):
    """sm_100a: tcgen05.cp of scale factors (32x128b.warpx4) and tiles (128x256b, 4x256b), block-scaled
    mma kind::mxf8f6f4 (1X) and kind::mxf4nvf4 (4X, 2X), A from smem and from TMEM."""
    holder = cuda.shared.array(2, uint32)
    bars = cuda.shared.array(1, uint64)
    hold = ops.shared_address(holder)
    bar = ops.shared_address(bars)
    t = cuda.threadIdx.x
    if t // 32 == 0:
        ops.tcgen05_alloc(hold, uint32(256))
    if t == 0:
        ops.mbarrier_init(bar, uint32(1))
    ops.tcgen05_fence_before_thread_sync()
    cuda.syncthreads()
    ops.tcgen05_fence_after_thread_sync()
    tmem = holder[0]
    sfa = tmem + uint32(128)
    sfb = tmem + uint32(136)
    ad = adesc[0]
    bd = adesc[1]
    idesc = uint32(adesc[2])
    if t == 0:
        ops.tcgen05_cp_32x128b_warpx4(sfa, adesc[3])
        ops.tcgen05_cp_32x128b_warpx4(sfb, adesc[4])
        ops.tcgen05_cp_128x256b(tmem + uint32(160), ad)
        ops.tcgen05_cp_4x256b(tmem + uint32(168), bd)
        ops.tcgen05_mma_mxf8f6f4_ss(tmem, ad, bd, idesc, sfa, sfb, uint32(0))
        ops.tcgen05_mma_mxf8f6f4_ts(tmem, tmem + uint32(160), bd, idesc, sfa, sfb, uint32(1))
        ops.tcgen05_mma_mxf4nvf4_4x_ss(tmem, ad, bd, idesc, sfa, sfb, uint32(1))
        ops.tcgen05_mma_mxf4nvf4_4x_ts(tmem, tmem + uint32(160), bd, idesc, sfa, sfb, uint32(1))
        ops.tcgen05_mma_mxf4nvf4_2x_ss(tmem, ad, bd, idesc, sfa, sfb, uint32(1))
        ops.tcgen05_commit(bar)
    ops.mbarrier_wait_parity(bar, uint32(0))
    ops.tcgen05_fence_after_thread_sync()
    out[t] = ops.tcgen05_ld_32x32b_x1(tmem + (uint32((t // 32) * 32) << 16))
    ops.tcgen05_wait_ld()
    ops.tcgen05_fence_before_thread_sync()
    cuda.syncthreads()
    if t // 32 == 0:
        ops.tcgen05_dealloc(tmem, uint32(256))


CASES = {  # name: (kernel, signature, arch, files it covers)
    "mbarrier_tma": (k_mbarrier_tma, (U64, U64), "sm_90a", ("mbarrier.ptx", "tma.ptx")),
    "sync_ldst": (k_sync_ldst, (U8, types.uint32[::1]), "sm_90a", ("sync.ptx", "ldst_matrix.ptx")),
    "wgmma_setmaxnreg": (k_wgmma_setmaxnreg, (types.int32[::1],), "sm_90a", ("sync.ptx", "wgmma.ptx")),
    "cluster": (k_cluster, (types.uint32[::1],), "sm_90a", ("cluster.ptx",)),
    "tcgen05": (k_tcgen05, (U64, types.uint32[::1]), "sm_100a", ("tcgen05.ptx",)),
    "tcgen05_bs": (k_tcgen05_block_scaled, (U64, types.uint32[::1]), "sm_100a", ("tcgen05.ptx",)),
}


@functools.lru_cache(maxsize=None)
def _compiled(case):
    kern, sig, arch, _ = CASES[case]
    return kern.compile(sig, arch)


def _family(file):
    return {n: s for n, s in snippets.SNIPPETS.items() if s.file == file}


def _opcode(sn):
    """The snippet's main instruction as it appears in the PTX (its first non-helper body line)."""
    for ln in sn.body.split("\n\t"):
        if ln in ("{", "}") or ln.startswith((".reg", "setp", "selp", "@")) or ln.endswith(":"):
            continue
        return ln.split(" ")[0].rstrip(";")
    raise AssertionError(sn.name)


def _used_in(case):
    src = inspect.getsource(CASES[case][0].py_func)
    return set(re.findall(r"ops\.(\w+)\(", src))


# ---------------------------------------------------------------- coverage and contracts
def test_every_layer_snippet_is_exercised_and_documented():
    used = set().union(*(_used_in(c) for c in CASES))
    for file in FILES:
        fam = _family(file)
        assert fam, f"{file} defines no snippets"
        assert set(fam) <= used, f"{file}: not exercised by any kernel: {sorted(set(fam) - used)}"
        for sn in fam.values():
            assert sn.instruction and sn.ptx_isa.startswith("PTX ISA") and sn.layout, sn.name
            assert re.fullmatch(r"sm_\d+a?", sn.min_arch), sn.name
            assert "%" not in sn.body.replace("%smid", ""), f"{sn.name}: operands are $N, not %N"
            assert "+" not in sn.constraints, f"{sn.name}: no '+' constraints (use tied inputs)"
            assert sn.side_effect or not sn.signature.startswith("void"), sn.name
            assert hasattr(ops, sn.name)
            # the kernel exercising it is built for its min-arch ("a" families: exactly that arch)
            arch = next(CASES[c][2] for c in CASES if file in CASES[c][3] and sn.name in _used_in(c))
            if sn.min_arch.endswith("a"):
                assert arch == sn.min_arch, (sn.name, arch)
            else:
                assert int(sn.min_arch[3:]) <= int(arch[3:-1]), (sn.name, arch)


def test_every_snippet_touching_memory_is_side_effecting():
    """ptx/README.md: a snippet that reads or writes memory or synchronises is ``side-effect: yes``
    (volatile asm). A pure asm load is one LLVM may execute outside the branch that guards it: on
    the H100 a bf16 top-k tail load did, and faulted (misaligned address)."""
    assert snippets.SNIPPETS
    for sn in snippets.SNIPPETS.values():
        op = sn.instruction.split(".")[0].split()[0]
        if re.match(r"ld|st|cp|red|atom|mbarrier|fence|bar|tcgen05|wgmma|nanosleep|prefetch", op):
            assert sn.side_effect, f"{sn.file}: {sn.name} ({sn.instruction}) must be side-effect: yes"


# ---------------------------------------------------------------- compile, assemble, inspect
SASS = {  # characteristic SASS mnemonics, per kernel
    "mbarrier_tma": ("SYNCS.EXCH.64", "SYNCS.ARRIVE", "SYNCS.PHASECHK", "ARRIVES.LDGSTSBAR", "UBLKCP", "UTMALDG.1D", "UTMALDG.5D",
                     "UTMASTG.1D", "UTMASTG.5D", "UTMACCTL.PF"),
    "sync_ldst": ("LDSM.16.M88.4", "LDSM.16.MT88", "STSM.16.M88.4", "LDGSTS", "LDGDEPBAR", "BAR.ARV",
                  "PREEXIT", "ACQBULK",
                  "ELECT"),
    "wgmma_setmaxnreg": ("WARPGROUP.ARRIVE", "WARPGROUP.DEPBAR", "USETMAXREG"),
    "cluster": ("UCGABAR_ARV", "UCGABAR_WAIT", "LD.E", "ST.E", "STAS.128", "SYNCS.PHASECHK"),
    "tcgen05": ("UTCATOMSWS", "UTCHMMA", "UTCQMMA", "UTCBAR", "LDTM", "STTM"),
    "tcgen05_bs": ("UTCCP.T.S.4x32dp128bit", "UTCCP.T.S.4dp256bit", "UTCOMMA.4X", "UTCOMMA", "UTCQMMA",
                   "UTCBAR"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_kernel_assembles_with_its_instructions(case):
    kern, sig, arch, files = CASES[case]
    res = _compiled(case)
    assert f".target {arch}" in res.ptx
    used = _used_in(case)
    for file in files:
        for name, sn in _family(file).items():
            if name in used:
                assert _opcode(sn) in res.ptx, f"{name}: {_opcode(sn)} missing from the {arch} PTX"
    assert res.spill_stores == 0 and res.spill_loads == 0, res.summary()
    assert "C7508" not in res.ptxas_log, res.ptxas_log   # setmaxnreg was not ignored
    assert "warning" not in res.ptxas_log.lower(), res.ptxas_log
    if res.sass is not None:
        for m in SASS[case]:
            assert m in res.sass, f"{m} missing from the {arch} SASS"


@pytest.mark.parametrize("case", sorted(CASES))
def test_target_controls(case):
    """``a``-only families are rejected for the plain target; sm_90 families assemble for sm_90."""
    kern, sig, arch, files = CASES[case]
    ptx = _compiled(case).ptx
    plain = ptx.replace(f".target {arch}", f".target {arch[:-1]}")
    needs_a = any(sn.min_arch.endswith("a") for f in files for n, sn in _family(f).items()
                  if n in _used_in(case))
    if needs_a:
        with pytest.raises(toolchain.ToolchainError, match="not supported on .target"):
            toolchain.assemble(plain, arch, want_sass=False)
    else:
        toolchain.assemble(plain, arch, want_sass=False)


def test_cluster_kernel_has_its_shape():
    """Kernel(cluster=2) reaches the PTX as ``.reqnctapercluster 2, 1, 1`` (a plain launch then
    runs clusters); a kernel without it has none; cluster kernels refuse the simulator."""
    ptx = _compiled("cluster").ptx
    assert re.search(r"\.reqnctapercluster\s+2,\s*1,\s*1", ptx) and ".explicitcluster" in ptx
    assert ".reqnctapercluster" not in _compiled("sync_ldst").ptx
    assert k_cluster.cluster == (2, 1, 1) and k_sync_ldst.cluster is None
    with pytest.raises(ValueError, match="cluster"):
        kernel(cluster=(0,))(lambda out: None)
    if env.mode() != "gpu":
        with pytest.raises(RuntimeError, match="cluster kernel"):
            k_cluster.launch(2, 32, np.zeros(64, np.uint32))


# ---------------------------------------------------------------- generated wgmma.mma_async
def _wgmma_kernel(name):
    """A warpgroup kernel issuing two chained ``ops.<name>`` (overwrite, then accumulate)."""
    sn = ops.WGMMA[name]
    acc = int(re.search(r"m64n(\d+)", name).group(1)) // 2
    accs = ", ".join(f"a{i}" for i in range(acc))
    a_op = "d[0]" if "_ss" in name else "uint32(t), uint32(t + 1), uint32(t + 2), uint32(t + 3)"
    lines = ["def k(d, out):", "    t = cuda.threadIdx.x", "    z = float32(t)"]
    lines += [f"    a{i} = z" for i in range(acc)]
    lines += ["    ops.wgmma_fence()",
              f"    r = ops.{name}({accs}, {a_op}, d[1], uint32(0))",
              f"    r = ops.{name}(*r, {a_op}, d[1], uint32(1))",
              "    ops.wgmma_commit_group()",
              "    ops.wgmma_wait_group_0()",
              "    out[t] = " + " + ".join(f"r[{i}]" for i in range(acc))]
    ns = {"cuda": cuda, "ops": ops, "float32": types.float32, "uint32": uint32}
    exec("\n".join(lines), ns)  # noqa: S102
    assert sn.min_arch == "sm_90a"
    return kernel(ns["k"], launch_bounds=(128, 1))


@pytest.mark.parametrize("name", sorted(ops.WGMMA, key=lambda n: (len(n), n)))
def test_generated_wgmma_assembles_without_spills(name):
    sn = ops.WGMMA[name]
    assert sn.instruction and sn.ptx_isa and sn.layout and "+" not in sn.constraints
    k = _wgmma_kernel(name)
    res = k.compile((U64, types.float32[::1]), "sm_90a")
    assert sn.instruction in res.ptx
    assert res.spill_stores == 0 and res.spill_loads == 0 and res.stack_bytes == 0, res.summary()
    assert "warning" not in res.ptxas_log.lower(), res.ptxas_log   # e.g. no wgmma serialization
    if res.sass is not None:
        gmma = "QGMMA" if "e4m3" in name else "HGMMA"          # fp8 wgmma is QGMMA in SASS
        assert f"{gmma}.64x{name.split('m64n')[1].split('k')[0]}x" in res.sass
        assert "WARPGROUP.ARRIVE" in res.sass
    with pytest.raises(toolchain.ToolchainError, match="not supported on .target"):
        toolchain.assemble(res.ptx.replace(".target sm_90a", ".target sm_90"), "sm_90a",
                           want_sass=False)


# ---------------------------------------------------------------- the H100 verification microkernels
def _mk_cases():
    from dsv4_numba.hw import microkernels as mk
    if os.environ.get("DSV4_COMPILE_ALL") == "1":
        return mk.VERIFY_WGMMA
    return [(256, "bf16", "smem", "128B", "K"), (256, "bf16", "regs", "128B", "MN"),
            (256, "e4m3", "regs", "none", "K"), (64, "e4m3", "smem", "128B", "K")]


@pytest.mark.parametrize("case", _mk_cases(), ids=lambda c: "-".join(map(str, c)))
def test_microkernel_wgmma_tile_compiles_for_sm90a_without_spills(case):
    """tests/gpu/test_ptx_gpu.py must not fail on syntax: its kernels assemble here, with the
    accumulators in registers (no local memory) and no ptxas warning (e.g. wgmma serialization)."""
    from dsv4_numba.hw import microkernels as mk
    res = mk.wgmma_kernel(*case).compile((U32, U32, U64, U64, types.float32[:, ::1], types.float32),
                                         "sm_90a")
    assert res.spill_stores == 0 and res.spill_loads == 0 and res.stack_bytes == 0, res.summary()
    assert "warning" not in res.ptxas_log.lower(), res.ptxas_log
    if res.sass is not None:
        gmma = "QGMMA" if case[1] == "e4m3" else "HGMMA"
        assert f"{gmma}.64x{case[0]}x" in res.sass and "WARPGROUP.ARRIVE" in res.sass
        if case[3] == "128B":
            assert "UTMALDG.2D" in res.sass and "SYNCS" in res.sass


@pytest.mark.parametrize("which", ["tma_round_trip", "ring_copy"])
def test_microkernel_tma_and_ring_compile_for_sm90a(which):
    from dsv4_numba.hw import microkernels as mk
    if which == "tma_round_trip":
        res = mk._k_tma_round_trip.compile((U64, U64, U32, types.int32[::1], types.int64,
                                            types.int64), "sm_90a")
        marks = ("UTMALDG.1D", "UTMALDG.5D", "UTMASTG.3D", "SYNCS.PHASECHK")
    else:
        res = mk._k_ring_copy.compile((U64, types.uint32[:, ::1]) + (types.int64,) * 5, "sm_90a")
        marks = ("UTMALDG.2D", "ELECT", "SYNCS.ARRIVE", "STG.E.128", "LDS.128")
    assert res.spill_stores == 0 and res.spill_loads == 0, res.summary()
    assert "warning" not in res.ptxas_log.lower(), res.ptxas_log
    if res.sass is not None:
        for m in marks:
            assert m in res.sass, f"{m} missing from the {which} SASS"


# ---------------------------------------------------------------- generated tcgen05.ld / st .x2 .. .x128
def _tcgen05_ldst_kernel(shape):
    """Every generated .xN of one shape: ld into registers, wait, st them back 256 columns further."""
    names = sorted((n for n in ops.TCGEN05_LDST if f"_ld_{shape}_" in n), key=lambda n: int(n.split("_x")[1]))
    lines = ["def k(out):",
             "    holder = cuda.shared.array(1, uint32)",
             "    t = cuda.threadIdx.x",
             "    if t // 32 == 0:",
             "        ops.tcgen05_alloc(ops.shared_address(holder), uint32(512))",
             "    ops.tcgen05_fence_before_thread_sync()",
             "    cuda.syncthreads()",
             "    ops.tcgen05_fence_after_thread_sync()",
             "    tm = holder[0] + (uint32((t // 32) * 32) << 16)",
             "    acc = uint32(0)"]
    for n in names:
        lines += [f"    r = ops.{n}(tm)",
                  "    ops.tcgen05_wait_ld()",
                  f"    ops.{n.replace('_ld_', '_st_')}(tm + uint32(256), *r)",
                  "    ops.tcgen05_wait_st()",
                  "    acc ^= r[0] ^ r[len(r) - 1]"]
    lines += ["    out[t] = acc",
              "    ops.tcgen05_fence_before_thread_sync()",
              "    cuda.syncthreads()",
              "    if t // 32 == 0:",
              "        ops.tcgen05_dealloc(holder[0], uint32(512))"]
    ns = {"cuda": cuda, "ops": ops, "uint32": uint32}
    exec("\n".join(lines), ns)  # noqa: S102
    return kernel(ns["k"], launch_bounds=(128, 1)), names


@pytest.mark.parametrize("shape", sorted(ops.TCGEN05_LDST_SHAPES))
def test_generated_tcgen05_ld_st_assemble_for_sm100a(shape):
    k, names = _tcgen05_ldst_kernel(shape)
    per, top = ops.TCGEN05_LDST_SHAPES[shape]
    assert [int(n.split("_x")[1]) for n in names] == [2 ** i for i in range(1, top.bit_length())]
    for n in names:
        sn = ops.TCGEN05_LDST[n]
        assert sn.min_arch == "sm_100a" and sn.ptx_isa.startswith("PTX ISA") and sn.layout
        assert "+" not in sn.constraints
    res = k.compile((types.uint32[::1],), "sm_100a")
    for n in names:
        num = n.split("_x")[1]
        assert f"tcgen05.ld.sync.aligned.{shape}.x{num}.b32" in res.ptx, n
        assert f"tcgen05.st.sync.aligned.{shape}.x{num}.b32" in res.ptx, n
    assert res.spill_stores == 0 and res.spill_loads == 0, res.summary()
    assert "warning" not in res.ptxas_log.lower(), res.ptxas_log
    if res.sass is not None:
        assert "LDTM" in res.sass and "STTM" in res.sass
    with pytest.raises(toolchain.ToolchainError, match="not supported on .target"):
        toolchain.assemble(res.ptx.replace(".target sm_100a", ".target sm_100"), "sm_100a",
                           want_sass=False)


def test_tcgen05_ldst_generator_rejects_bad_shapes():
    with pytest.raises(ValueError, match="num a power of 2"):
        ops.tcgen05_ldst_snippet("16x256b", 64, "ld")
    with pytest.raises(ValueError):
        ops.tcgen05_ldst_snippet("32x32b", 3, "st")
    with pytest.raises(ValueError, match="imm-trans-b exists only"):
        ops.wgmma_snippet(64, "e4m3", "smem", trans_b=True)
