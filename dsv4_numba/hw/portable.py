"""Warp and memory operations with a simulator twin, so production kernels written with them also
run (slowly, exactly) under the CUDA simulator in the CPU test suite.

On the GPU each is one instruction (named beside it); Numba's simulator has no shuffles, ballots or
inline PTX, so each twin exchanges through a Python buffer between two barriers — exact for kernels
that call them from every thread of blocks of whole warps. The memory operations take the array
beside its address so the twin can act on the array.
"""
import numpy as np
from numba import cuda, float32, int32, uint32, uint64
from numba.cuda import libdevice

from ..runtime import device
from . import ops
from .bits import bf16_bits


def _twin(gpu_fn, sim_fn):
    return device(gpu_fn, sim=sim_fn)


_SIM_XCHG = [None] * 1024     # the simulator runs one block at a time: one exchange buffer will do


def _sim_exchange(v, src):
    t = cuda.threadIdx.x
    _SIM_XCHG[t] = v
    cuda.syncthreads()
    r = _SIM_XCHG[src]
    cuda.syncthreads()
    return r


def _shfl_xor_gpu(v, off):
    return cuda.shfl_xor_sync(0xFFFFFFFF, v, off)


def _shfl_xor_sim(v, off):
    return _sim_exchange(v, cuda.threadIdx.x ^ off)


def _shfl_up_gpu(v, d):
    return cuda.shfl_up_sync(0xFFFFFFFF, v, d)


def _shfl_up_sim(v, d):
    t = cuda.threadIdx.x
    r = _sim_exchange(v, t - d if (t & 31) >= d else t)
    return r


def _shfl_idx_gpu(v, lane):
    return cuda.shfl_sync(0xFFFFFFFF, v, lane)


def _shfl_idx_sim(v, lane):
    return _sim_exchange(v, (cuda.threadIdx.x & ~31) | lane)


def _ballot_gpu(pred):
    return cuda.ballot_sync(0xFFFFFFFF, pred)


def _ballot_sim(pred):
    t = cuda.threadIdx.x
    _SIM_XCHG[t] = bool(pred)
    cuda.syncthreads()
    m = 0
    w0 = t & ~31
    for i in range(32):
        if w0 + i < cuda.blockDim.x and _SIM_XCHG[w0 + i]:
            m |= 1 << i
    cuda.syncthreads()
    return uint32(m)


# 16-byte memory operations (hw.ops snippets) taking the array beside its address, so that their
# simulator twins can act on the array: the vectorized production variants run there too.
def _ldg_v4_gpu(x, src, i, esz):
    """Elements i.. of x (esz bytes each; 16 bytes, 16-byte aligned) as 4 little-endian words."""
    return ops.ld_global_nc_v4_u32(src + uint64(esz) * uint64(i))


def _ldg_v4_sim(x, src, i, esz):
    if (int(i) * esz) % 16:                   # (relative to the array's start: 16-byte aligned)
        raise AssertionError(f"ldg_v4: element {int(i)} is not at a 16-byte boundary")
    if esz == 4:
        return tuple(np.uint32(np.float32(x[i + q]).view(np.uint32)) for q in range(4))
    return tuple(np.uint32(int(x[i + 2 * q]) | (int(x[i + 2 * q + 1]) << 16)) for q in range(4))


def _stg_v4_gpu(out, dst, i, esz, w0, w1, w2, w3):
    ops.st_global_v4_b32(dst + uint64(esz) * uint64(i), w0, w1, w2, w3)


def _stg_v4_sim(out, dst, i, esz, w0, w1, w2, w3):
    for q, w in enumerate((w0, w1, w2, w3)):
        if esz == 4:
            out[i + q] = np.uint32(w).view(np.float32)
        else:
            out[i + 2 * q] = int(w) & 0xFFFF
            out[i + 2 * q + 1] = int(w) >> 16


def _pack_bf16x2_gpu(hi, lo):
    return ops.pack_bf16x2(hi, lo)


def _pack_bf16x2_sim(hi, lo):
    return uint32((int(bf16_bits(hi)) << 16) | int(bf16_bits(lo)))


def _relu_gpu(x):
    return libdevice.fmaxf(x, float32(0.0))


def _relu_sim(x):
    return float32(x) if x > 0 else float32(0.0)


shfl_xor = _twin(_shfl_xor_gpu, _shfl_xor_sim)        # shfl.sync.bfly
#: max(x, 0) in one FMNMX (libdevice fmaxf; NaN -> 0, as ``x if x > 0 else 0``)
relu_f32 = _twin(_relu_gpu, _relu_sim)


def _warp_shfl_xor_sim(v, off):
    """Simulator twin of ``warp_shfl_xor``: a rendezvous of the calling warp's 32 lanes only, through
    the emulator's collective (``shfl_xor``'s twin needs every thread of the block, which kernels
    with warp roles -- a producer warp that never shuffles -- do not give)."""
    from ..emu import ops as eops
    st, me = eops._enter()
    warp, lane = divmod(me.thread_id, 32)
    return eops._collective(st, me, ("shfl", warp), 32, lane, int(off), v,
                            lambda key, got: [got[i ^ key] for i in range(32)],
                            "warp_shfl_xor", f"warp {warp}")


#: ``shfl.sync.bfly.b32`` over the full warp (PTX ISA 9.7.9.6, sm_30+; via Numba) for warp-specialised
#: kernels run under the emulator (fused attention / indexer)
warp_shfl_xor = _twin(_shfl_xor_gpu, _warp_shfl_xor_sim)
shfl_up = _twin(_shfl_up_gpu, _shfl_up_sim)           # shfl.sync.up
shfl_idx = _twin(_shfl_idx_gpu, _shfl_idx_sim)        # shfl.sync.idx
ballot = _twin(_ballot_gpu, _ballot_sim)              # vote.sync.ballot
ldg_v4 = _twin(_ldg_v4_gpu, _ldg_v4_sim)              # ld.global.nc.v4.u32
stg_v4 = _twin(_stg_v4_gpu, _stg_v4_sim)              # st.global.v4.b32
pack_bf16x2 = _twin(_pack_bf16x2_gpu, _pack_bf16x2_sim)   # cvt.rn.bf16x2.f32


def _address_of_gpu(x, VEC):
    """The array's address for 16-byte accesses (0 on the scalar path, which needs none)."""
    return ops.array_address(x) if VEC > 1 else uint64(0)


def _address_of_sim(x, VEC):
    return uint64(0)          # the simulator twins of the memory operations use the array itself


address_of = _twin(_address_of_gpu, _address_of_sim)


# Cross-CTA communication (the top-k split variant's per-row barriers): strong loads that read the
# L2's value, and the spin-wait's back-off. The simulator runs one block at a time: nothing there
# ever waits on another block, so the twins are plain reads and a no-op.
def _gaddr_gpu(a):
    return ops.array_address(a)


def _gaddr_sim(a):
    return uint64(0)


def _ld_acquire_u64_gpu(a, addr, i):
    """a[i] of a uint64 global array at address ``addr``, an acquire load at .gpu scope."""
    return ops.ld_acquire_gpu_u64(addr + uint64(8) * uint64(i))


def _ld_acquire_u64_sim(a, addr, i):
    return uint64(a[i])


def _ld_cg_v4_i32_gpu(a, addr, i):
    """a[i:i + 4] of an int32 global array at address ``addr`` (16-byte aligned), cached in L2
    only (ld.global.cg.v4.u32): 4 int32."""
    w0, w1, w2, w3 = ops.ld_global_cg_v4_u32(addr + uint64(4) * uint64(i))
    return int32(w0), int32(w1), int32(w2), int32(w3)


def _ld_cg_v4_i32_sim(a, addr, i):
    if int(i) % 4:
        raise AssertionError(f"ld_cg_v4_i32: element {int(i)} is not at a 16-byte boundary")
    return int32(a[i]), int32(a[i + 1]), int32(a[i + 2]), int32(a[i + 3])


def _nanosleep_gpu(ns):
    ops.nanosleep_u32(uint32(ns))


def _nanosleep_sim(ns):
    pass


gaddr = _twin(_gaddr_gpu, _gaddr_sim)                        # the array's generic address
ld_acquire_u64 = _twin(_ld_acquire_u64_gpu, _ld_acquire_u64_sim)   # ld.acquire.gpu.global.u64
ld_cg_v4_i32 = _twin(_ld_cg_v4_i32_gpu, _ld_cg_v4_i32_sim)     # ld.global.cg.v4.u32
nanosleep = _twin(_nanosleep_gpu, _nanosleep_sim)            # nanosleep.u32


# Asynchronous gathers into a shared-memory list (the top-k stash's pass 2): the GPU copies with
# cp.async (no register waits on the load; complete at ``async_wait``), the simulator at issue.
def _f32_to_list_gpu(lst, slot, x, e):
    """The high word of the shared uint64 lst[slot] <- the bits of float32 x[e], asynchronously
    (cp.async.ca.shared.global, 4 bytes: PTX ISA 9.1 "cp.async", sm_80+): visible to this
    thread after ``async_wait``, to others after a barrier after that."""
    ops.cp_async_ca_4(ops.shared_address(lst) + uint32(8) * uint32(slot) + uint32(4),
                      ops.array_address(x) + uint64(4) * uint64(e))


def _f32_to_list_sim(lst, slot, x, e):
    lst[slot] = (uint64(np.float32(x[e]).view(np.uint32)) << uint64(32)) \
        | (uint64(lst[slot]) & uint64(0xFFFFFFFF))


def _async_wait_gpu():
    """Every cp.async this thread issued has landed (commit_group + wait_group 0)."""
    ops.cp_async_commit_group()
    ops.cp_async_wait_group_0()


def _async_wait_sim():
    pass


f32_to_list = _twin(_f32_to_list_gpu, _f32_to_list_sim)      # cp.async.ca.shared.global 4
async_wait = _twin(_async_wait_gpu, _async_wait_sim)          # cp.async.commit / wait_group 0
