"""dsv4_numba — DeepSeek-V4-style inference kernels in Python with Numba-CUDA.

Every stage exists twice: a reference kernel you can read line by line (it also runs under the
CUDA simulator) and a production kernel that reaches the hardware through inline PTX. The stage
registry (``dsv4_numba.registry``) picks one per call (``impl=``), per pipeline stage
(``impls={...}``) or by the ``DSV4_IMPL`` environment variable.

Public API (NumPy in -> NumPy out; device arrays in -> device arrays out):

* ``formats``        — number formats as executable NumPy specs (E2M1, UE8M0, E4M3, nvfp4, mxfp4,
                       dsv4_fp4, the 128x4 scale layout, KV-cache token layouts)
* ``decode_fp4``, ``quantize_fp4`` — FP4 stages
* ``softmax``, ``topk`` — softmax and top-k stages
* ``indexer``        — the sparse-attention indexer: staged (any stage reference / production) or
                       fused (sm_90a wgmma kernels; sm_100a tcgen05 FP4: emulator-only) + top-k
* ``fmha``           — attention (MHA / GQA / MQA, causal, sink, LSE): the fused sm_90a kernel
                       where it can run, else staged (sm_100a tcgen05: emulator-only)
* ``runtime``        — run modes, compile-only toolchain
* ``testing``        — the comparison helper used by the whole suite
"""
__version__ = "0.26.0"

from . import formats, registry, runtime, testing  # noqa: E402
from .registry import ImplUnavailable, ProductionUnavailableWarning  # noqa: E402
from .stages.fp4 import decode_fp4, quantize_fp4  # noqa: E402
from .stages.softmax import softmax  # noqa: E402
from .stages.topk import topk  # noqa: E402
from .pipelines.indexer import indexer  # noqa: E402
from .pipelines.fmha import fmha  # noqa: E402

__all__ = ["formats", "registry", "runtime", "testing", "ImplUnavailable",
           "ProductionUnavailableWarning", "decode_fp4", "quantize_fp4", "softmax", "topk", "indexer", "fmha"]

