"""The indexer's top-k from a histogram the fused score kernel already built (variant ``v3``).

The registered top-k (``stages.topk``, "fused" / "staged" variants) is two launches: a histogram
pass (read every score once, count the top 12 bits of its order-preserving key in a 4096-bin
histogram per row, the row's last block finds the bin b1 holding the k-th largest) and a select
pass (re-read the row, keep the keys in bins above b1 ("sure") and in b1 ("candidates"), the row's
last block radix-selects and sorts). The fused indexer kernel holds every score in a register the
moment it is final, so it can count it there (``hist_add`` below: one ``red.global.add``
into ``ghist[t, key >> 20]`` per valid score) and the histogram pass disappears. What is left is
the select pass, which needs b1 first: every select block finds it itself from the row's 16 KB
global histogram (``stages.topk.block_find_bucket`` on the global row: 8 loads a thread, one block
scan -- no extra launch, no last-CTA tail in the score kernel), then runs the top-k's own select
and finish device functions (``filter_slice`` / ``stage_slice`` + ``stage_flush``,
``finish_fused``) on the top-k's workspace layout. The selection is therefore bitwise the
registered top-k's on the same scores: the same histogram (every score < valid_len counted once),
the same b1, the same lists, the same finish.

Napkin math (H100, 132 SMs; FP4 keys; per call)
-----------------------------------------------
* Saved: the histogram launch. Measured alone on an H100 (2026-11-26, bench_softmax_topk.py
  --breakdown): ~5.7 us at (1, 65536), ~5.9 us at (4, 65536), 18.5-24.3 us at (64, 131072) (a
  launch of 32 / 128 / 384-576 blocks: the scores read once, a 4096-bin shared histogram zeroed
  and flushed per block, a fence + ticket, the last block's scan). At T = 64, N = 65536 expect
  ~10 us (half the scores of (64, 131072)); at T = 16, N = 262144 the same 16.8 MB.
* Added to the score kernel: one fire-and-forget global reduction per valid score (T*N of them:
  65536 at T = 1, 4.2 M at T = 64), spread over ~50 hot bins a row. L2 serves roughly one atomic
  per clock per slice (~80 slices): 4.2 M / 80 ~ 52 K cycles ~ 30 us of L2 atomic work spread over
  the ~200 us kernel -- hidden unless the hot bins of a row fall in one slice (a row's bins are
  16 KB apart from the next row's; one row's hot bins are ~200 B: one or two slices, ~65 K
  serialised reductions at ~1 per clock ~ 40 us worst case per row, rows in parallel). Expect
  T = 1: -3 to -5 us end to end; T = 64: -5 to -10 us, or a loss if the same-address reductions
  serialise (that is what the device run decides; ``v2`` stays the default until it has).
  Measured (H100, 2026-11-26, tools/bench_indexer.py --quick --variant v2,v3, FP4): the score
  kernel with the histogram took +3.8 / +4.3 / +11.0 us (13.6 -> 17.4, 42.5 -> 46.8, 206.1 ->
  217.1 at T = 1 / 4 / 64), and the select + finish here (23.8 / 39.6 / 59.4 us) lost to the
  registered top-k's split / rowblock variants after v2 (21.9 / 25.8 / 29.3): v3 totals 41.2 /
  86.4 / 276.5 us vs v2's 35.5 / 68.3 / 235.4. v2 stays the default.
* Added to each select block: 8 global loads a thread (the row's histogram, L2-resident) and a
  block scan: ~1-2 us of latency, in parallel across blocks.
Not done: warp-aggregated reductions (``match.any`` is not in the PTX layer or the simulator);
a threshold that keeps sub-b1 scores out of memory (the score kernel would need b1 before its
scores are final: a grid-wide dependency); the top-k's one-launch ``rowblock`` variant seeded with
this histogram (its first 12-bit level pass is exactly this histogram: a ``ghist`` argument there
would drop one of its two passes over the row -- a change in ``stages/topk.py``).
"""
from __future__ import annotations

import numpy as np
from numba import cuda, int32, int64, uint32, uint64

from ..hw.bits import f32_bits
from ..hw.portable import address_of
from ..runtime import F32, device, kernel, mode
from ..stages import topk as TK
# device functions by name: the simulator swaps a kernel's global helpers for their twins
from ..stages.topk import block_find_bucket, finish_fused, key_f32_bits, row_length, select_slice

NBINS = TK.NBINS                 # 4096 bins: the top 12 bits of the order-preserving float key
HSHIFT = TK.HSHIFT
META = TK.META
K_MAX = TK.K_MAX                 # module globals: Numba freezes them as compile-time constants
HIST_VARIANTS = ("fused", "staged")
#: The select form HistTopk runs: "staged" (appends staged in shared memory, one-wave grid). The
#: H100 breakdown of 2026-11-26 (tools/bench_softmax_topk.py --breakdown) measured the part after
#: the histogram launch at 35.0 / 26.2 / 100.0 us for staged vs 35.1 / 26.6 / 128.5 us for fused
#: at (1, 65536, 2048) / (4, 65536, 512) / (64, 131072, 2048).
DEFAULT_SELECT = "staged"


@device
def hist_add(ghist, t, s):
    """Count score ``s`` of token (row) ``t`` in the row's histogram (global, int32 [T * NBINS]):
    the bin of the top-k stage (``stages.topk.key_f32_bits(bits) >> HSHIFT``)."""
    key = key_f32_bits(f32_bits(s))
    cuda.atomic.add(ghist, int64(t) * NBINS + int64(key >> uint32(HSHIFT)), 1)


_KERNELS: dict = {}


def select_hist_kernel(vectorized: bool, staged: bool):
    """The top-k's select launch (``stages.topk.select_kernel``, float32 scores) whose blocks find
    the row's bin b1 from the histogram the score kernel counted (``ghist``) instead of reading it
    from ``meta`` (written there by the histogram launch this path does not run). Every block of a
    row finds the same b1; the row's last block (the finisher) writes it to meta[row, 0], where
    ``finish_fused`` reads it."""
    key = (vectorized, staged)
    if key in _KERNELS:
        return _KERNELS[key]
    VEC = TK._vec(F32, vectorized)
    STAGED = staged

    def indexer_select(x, n, k, lengths, S, chunk, ghist, meta, tickets, sure, cand, capacity,
                       vals, idx, scap):
        b = cuda.blockIdx.x
        row = b // S
        s = b - row * S
        tid = cuda.threadIdx.x
        hist = cuda.shared.array(256, int32)
        buf = cuda.shared.array(K_MAX, uint64)
        st = cuda.shared.array(4, int64)
        st32 = cuda.shared.array(8, int32)
        wsum = cuda.shared.array(32, int32)
        keys = cuda.local.array(VEC, uint32)
        nxt = cuda.local.array(VEC, uint32)
        L = row_length(row, n, lengths, True)
        K = min(int64(k), L)
        b1 = -1
        if K > 0:                                  # block-uniform: the barriers inside are safe
            gb = int64(row) * NBINS
            block_find_bucket(ghist[gb:gb + NBINS], NBINS, K, st32, wsum)
            b1 = st32[0]
        cuda.syncthreads()                         # every thread has b1: st32 is reused below
        if not select_slice(x, n, L, b1, row, s, S, chunk, meta, sure, cand, capacity, keys, nxt,
                            F32, VEC, STAGED, buf, scap, st32):
            return
        if tid == 0:
            meta[row * META + 0] = b1              # the finish reads b1 here (the histogram
        cuda.syncthreads()                         # launch would have written it)
        finish_fused(x, L, int64(row) * n, int64(row) * k, k, F32, row, ghist, meta, tickets,
                        sure, cand, capacity, vals, idx, hist, buf, st, st32)

    indexer_select.__name__ = indexer_select.__qualname__ = \
        f"indexer_select_hist{'_staged' if staged else ''}_v{VEC}"
    bounds = (TK.FUSED_THREADS, TK.SELECT_BLOCKS_PER_SM) if staged else (TK.FUSED_THREADS,)
    k_ = _KERNELS[key] = kernel(indexer_select, launch_bounds=bounds)
    return k_


class HistTopk:
    """Top-k of float32 scores [rows, n] whose histogram was counted by the score kernel.

    ``ghist``: the int32 [rows * NBINS] histogram to hand to the score kernel (zero before it
    runs; every ``run`` leaves it, and the rest of the workspace, zero again). Geometry and
    workspace are a ``stages.topk.TopkPlan``'s of ``variant`` (default ``DEFAULT_SELECT``).
    Test hooks: ``threads``, ``S``, ``capacity``.
    """

    def __init__(self, rows: int, n: int, k: int, *, threads: int | None = None,
                 S: int | None = None, capacity: int | None = None, variant: str | None = None):
        v = variant or DEFAULT_SELECT
        if v not in HIST_VARIANTS:
            raise ValueError(f"histogram top-k variant must be one of {HIST_VARIANTS}, not {v!r}")
        kw = {} if threads is None else {"threads": threads, "finish_threads": threads}
        self.plan = TK.TopkPlan(rows, n, k, F32, S=S, capacity=capacity, variant=v, **kw)
        if NBINS % self.plan.threads:
            raise ValueError(f"threads must divide {NBINS}, got {self.plan.threads}")
        self.rows, self.n, self.k, self.variant = rows, n, k, v

    def ghist(self, gpu: bool):
        return self.plan.workspace(gpu)[1]

    def run(self, x, lengths, vals, idx, vectorized=None):
        """x: float32 kernel-side [rows * n] (scores; the histogram already counted), lengths int32
        [rows]; vals / idx: flat [rows * k] outputs."""
        p = self.plan
        gpu = not isinstance(x, np.ndarray)
        ints, ghist, meta, tickets, sure, cand = p.workspace(gpu)
        if vectorized is None:
            vectorized = gpu and self.n % 4 == 0 and x.__cuda_array_interface__["data"][0] % 16 == 0
        kern = select_hist_kernel(bool(vectorized), self.variant == "staged")
        args = (x, self.n, self.k, lengths, p.sel_S, p.sel_chunk, ghist, meta, tickets, sure, cand,
                p.capacity, vals, idx, p.stage_cap)
        if gpu:                     # as the score kernels (``indexer_sm90.gpu_dispatcher``)
            from .indexer_sm90 import gpu_dispatcher
            gpu_dispatcher(kern)[self.rows * p.sel_S, p.threads](*args)
        else:
            kern.launch(self.rows * p.sel_S, p.threads, *args)


_PLANS: dict = {}


def hist_topk_for(rows: int, n: int, k: int) -> HistTopk:
    """A cached HistTopk per shape (its workspace is reused: calls on one stream only)."""
    key = (rows, n, k, DEFAULT_SELECT, mode())
    if key not in _PLANS:
        if len(_PLANS) > 16:
            _PLANS.clear()
        # the simulator: one warp a block (its shuffle twins exchange within one warp; the GPU: 512)
        _PLANS[key] = HistTopk(rows, n, k, threads=32 if mode() == "sim" else None)
    return _PLANS[key]


def registered_topk_kernels() -> list:
    """(Kernel, signature) of the registered top-k's float32 vectorized kernels: those
    ``impls="fused"`` with v1 / v2 may launch (``tools/bench_indexer.py --precompile`` compiles
    them into Numba's disk cache)."""
    from numba import types as t
    out = []
    for k, sig in TK.production_kernels():
        vec = f"_v{TK._vec(F32, True)}"           # the vectorized forms: ..._v4 or ..._v4_t1024
        if sig[0] == t.float32[::1] and (k.__name__.endswith(vec) or f"{vec}_" in k.__name__):
            out.append((k, sig))
    return out


def kernels():
    """(Kernel, signature) of the select launches, for compile-only checks."""
    from numba import types as t
    i32, i64, u64 = t.int32[::1], t.int64, t.uint64[::1]
    return [(select_hist_kernel(True, staged),
             (t.float32[::1], i64, i64, i32, i64, i64, i32, i32, i32, u64, u64, i64,
              t.float32[::1], i32, i64)) for staged in (False, True)]


__all__ = ["hist_add", "select_hist_kernel", "HistTopk", "hist_topk_for", "kernels", "NBINS",
           "DEFAULT_SELECT",
           "registered_topk_kernels"]
