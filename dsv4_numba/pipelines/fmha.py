"""Multi-head attention (MHA / GQA / MQA), staged: S = scale Q K^T -> softmax -> O = P V -> round.

What it computes
----------------
For batch b, query position i, query head hq (KV head ``g = hq // (Hq // Hkv)``) and the keys j it
sees (``j < L(b, i)``, below)::

    z_j       = scale * q[b, i, hq, :] . k[b, j, g, :]
    Den       = sum_{j < L} exp(z_j) + exp(sink[hq])            (sink term only when given)
    out[b,i,hq,:] = sum_{j < L} exp(z_j) / Den * v[b, j, g, :]  (rounded once to q's dtype)
    lse[b, hq, i] = log(Den)                                    (natural log, float32)

Rules (all the caller needs; ``fmha`` lists the constraints):

* Visible keys: ``L(b, i) = min(kv_lengths[b], i + (Tk - Tq) + 1 if causal)`` clipped to [0, Tk].
  Causal is aligned to the END: the Tq queries are the last Tq tokens of a Tk-token sequence (decode
  of Tq new tokens after Tk - Tq cached ones; Tq = Tk is ordinary causal prefill). With Tq > Tk the
  first Tq - Tk queries see nothing. Keys j >= L are never read (a cache may hold garbage past its
  length).
* Sink: a per-query-head logit in the scaled-logit domain (NOT multiplied by ``scale``): it adds
  ``exp(sink)`` to the denominator and has no value row, so the weights sum to < 1 (DeepSeek-V4 /
  gpt-oss attention sinks).
* A query that sees no key (kv_lengths[b] = 0, or causal with Tq > Tk): output exactly 0, lse -inf
  without a sink, lse = sink[hq] with one (the denominator still holds the sink).
* NaN or +inf in a visible q / k element (hence in a logit), or in the sink: that query row's
  output and lse are NaN (the softmax stage's rule, as torch). NaN in a visible v element reaches
  only the output columns it feeds. Inputs are not scanned.
* Precision: S, P and O are float32 (products of the inputs' values, float32 accumulation); the
  output is rounded once (round to nearest even) to q's dtype in the ``attn_epilogue`` stage; lse is
  float32. For bfloat16 inputs that final rounding (relative 2^-8) dominates; see tests/test_fmha.py
  for the derived bound.

Stages (registry names, each chosen through ``registry.resolve_pipeline``)
-------------------------------------------------------------------------
1. ``attn_qk`` (``stages.attention_stages``): S [B, Hq, Tq, Tk] float32, scale folded in, -inf
   at invisible keys.
2. ``softmax`` (``stages.softmax``, the existing stage reused as is): rows of S with
   ``lengths = kv_lengths[b]`` per row, ``causal_offset = Tk - Tq`` (its rows run along Tq, axis
   -2), ``sink`` laid out [Hq, 1] against the rows [B, Hq, Tq], ``scale = 1`` (S is already
   scaled) -> P [B, Hq, Tq, Tk] float32 and lse [B, Hq, Tq]. Its production variant (sm_90a) can be
   swapped in on a GPU.
3. ``attn_pv``: O [B, Tq, Hq, D] float32 (normalised: P already is).
4. ``attn_epilogue``: out = O rounded to q's dtype.

There is no separate "load" stage: the GEMM stages read q, k, v where they are (bfloat16 as its
uint16 bits).

Napkin math of the STAGED pipeline (B=4, Hq=16, T=4096, D=128, bf16; H100 ~990 TFLOP/s, ~3.35 TB/s)
-------------------------------------------------------------------------------------------------
* FLOPs: 4*B*Hq*Tq*Tk*D = 550 GFLOP (two GEMMs) -> 0.56 ms at the wgmma rate.
* Intermediates: S and P are B*Hq*Tq*Tk float32 = 4.3 GB EACH; written by qk, read + written by the
  softmax, read by pv: ~17 GB of HBM traffic -> ~5 ms. The staged pipeline is bandwidth-bound by
  its intermediates by ~10x; it exists to be read and to corner a wrong stage. The fused kernel
  keeps S/P in registers (online softmax) and moves only Q, K, V and O: ~50 MB.
* Decode (B=64, Tq=1, Tk=8192, Hq=64, Hkv=8, D=128): K and V are 537 MB, S/P only 134 MB each; all
  memory-bound; the target is the K/V bytes at copy speed (~170 us).

The fused sm_90a kernel (issue 7) lives in ``pipelines.fmha_sm90``: registry stage ``attn_fused``
(``production`` = the fused kernel, ``reference`` = this staged pipeline). ``fmha`` runs it for
``impls="production"`` or ``impls={"attn_fused": "production"}``, and under ``auto`` whenever it can
run here (sm_90a GPU, bfloat16 or float16, D in {16, 64, 128, 256}, no ``return_intermediates``,
Tk >= 1); otherwise the staged pipeline runs. Not built yet on sm_90a: a TMA-store epilogue and
split-K decode; setmaxnreg and the ping-pong schedule are fmha_sm90's schedule v2 (the default).
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from .. import registry
from ..runtime import F16, ArrayIO, device_arch, is_device_array
from ..runtime.arrays import float_kind, is_contiguous, typestr
from ..stages import attention_stages  # noqa: F401  (registers attn_qk / attn_pv / attn_epilogue)
from ..stages import softmax as _softmax
from . import fmha_sm90, fmha_sm100

STAGES = ("attn_qk", "softmax", "attn_pv", "attn_epilogue")
#: the registry stage of the whole attention: ``production`` (sm_90a) is the fused kernel of
#: ``pipelines.fmha_sm90``, ``reference`` is this module's staged pipeline.
FUSED = "attn_fused"


def _staged_marker(*_a, **_k):
    """``attn_fused/reference`` is the staged pipeline itself (``fmha`` runs it stage by stage)."""
    raise RuntimeError("attn_fused/reference is run by fmha() as the staged pipeline")


registry.register(FUSED, "reference")(_staged_marker)
registry.register(FUSED, "production", arch="sm_90a", kernels=fmha_sm90.production_kernels)(
    fmha_sm90.fused_production)
registry.register(FUSED, "production", arch="sm_100a", kernels=fmha_sm100.production_kernels)(
    fmha_sm100.fused_production)
#: the fused kernel module of each arch (its ``unsupported`` says which calls it takes)
_FUSED_BY_ARCH = {"sm_90a": fmha_sm90, "sm_100a": fmha_sm100}
HEAD_DIMS = (16, 64, 128, 256)


class _Call:
    """One validated fmha call (host-side facts)."""


def _shape(x, name, what):
    if not (isinstance(x, np.ndarray) or is_device_array(x)):
        raise TypeError(f"{name} must be a NumPy or device array {what}, got {type(x).__name__}")
    s = tuple(int(d) for d in x.shape)
    if len(s) != 4:
        raise ValueError(f"{name} must be 4-D {what}, got shape {s} ({len(s)}-D)")
    return s


def _validate(q, k, v, causal, scale, sink, return_lse, kv_lengths) -> _Call:
    c = _Call()
    qs = _shape(q, "q", "[B, Tq, Hq, D]")
    ks = _shape(k, "k", "[B, Tk, Hkv, D]")
    vs = _shape(v, "v", "[B, Tk, Hkv, D]")
    kinds = []
    for name, x in (("q", q), ("k", k), ("v", v)):
        kinds.append(float_kind(x, name, allow_f16=True))
        if not is_contiguous(x):
            raise ValueError(f"{name} must be C-contiguous; pass np.ascontiguousarray({name})")
    dts = [typestr(x) for x in (q, k, v)]
    if not (dts[0] == dts[1] == dts[2]):
        raise TypeError(f"q, k and v must share one dtype, got q {dts[0]}, k {dts[1]}, v {dts[2]}; "
                        f"convert them to one of float32, float16, bfloat16")
    B, Tq, Hq, D = qs
    if ks != vs:
        raise ValueError(f"k and v must have the same shape [B, Tk, Hkv, D], got k {ks}, v {vs}")
    if ks[0] != B:
        raise ValueError(f"batch mismatch: q has B = {B}, k / v have B = {ks[0]}")
    Tk, Hkv = ks[1], ks[2]
    if ks[3] != D:
        raise ValueError(f"head dim mismatch: q has D = {D}, k / v have D = {ks[3]}")
    if D not in HEAD_DIMS:
        raise ValueError(f"head dim D = {D} is not supported; D must be one of {HEAD_DIMS} "
                         f"(pad the heads with zeros to the next size, and pass scale= for the "
                         f"original D)")
    if Hkv < 1 or Hq < 1 or Hq % Hkv:
        raise ValueError(f"Hq = {Hq} query heads must be a positive multiple of Hkv = {Hkv} KV "
                         f"heads (MHA: Hq = Hkv, GQA: Hq = g * Hkv, MQA: Hkv = 1)")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(f"return_lse must be a bool, got {return_lse!r}")
    if scale is None:
        scale = D ** -0.5
    if isinstance(scale, bool):
        raise TypeError(f"scale must be a number or None, got {scale!r}")
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale must be a number or None, got {type(scale).__name__}") from None
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    # sink: one logit per query head
    if sink is not None:
        if is_device_array(sink):
            if typestr(sink) != np.float32 or not is_contiguous(sink) \
                    or tuple(int(d) for d in sink.shape) != (Hq,):
                raise ValueError(f"a device sink must be a contiguous float32 array of shape "
                                 f"(Hq,) = ({Hq},)")
        else:
            sink = np.asarray(sink)
            if sink.dtype.kind not in "fiu" and sink.dtype != np.dtype(ml_dtypes.bfloat16):
                raise TypeError(f"sink must hold real numbers (one logit per query head), got "
                                f"{sink.dtype}")
            if sink.shape != (Hq,):
                raise ValueError(f"sink must have shape (Hq,) = ({Hq},) (one logit per query "
                                 f"head), got {sink.shape}")
            sink = np.ascontiguousarray(sink, dtype=np.float32)
    # per-batch key lengths
    if kv_lengths is None:
        lens = np.full(B, Tk, np.int32)
    elif is_device_array(kv_lengths):
        if typestr(kv_lengths) != np.int32 or tuple(int(d) for d in kv_lengths.shape) != (B,) \
                or not is_contiguous(kv_lengths):
            raise ValueError(f"device kv_lengths must be a contiguous int32 array of shape (B,) "
                             f"= ({B},); got {typestr(kv_lengths)} {tuple(kv_lengths.shape)}")
        lens = kv_lengths          # values not checked (would synchronise); kernels clamp
    else:
        kl = np.asarray(kv_lengths)
        if kl.dtype.kind not in "iu":
            raise TypeError(f"kv_lengths must be integers (one per batch), got {kl.dtype}")
        if kl.shape != (B,):
            raise ValueError(f"kv_lengths must have shape (B,) = ({B},), got {kl.shape}")
        if B and (kl.min() < 0 or kl.max() > Tk):
            raise ValueError(f"kv_lengths must lie in [0, Tk] = [0, {Tk}], got values in "
                             f"[{int(kl.min())}, {int(kl.max())}]")
        lens = np.ascontiguousarray(kl, dtype=np.int32)
    c.B, c.Tq, c.Tk, c.Hq, c.Hkv, c.D = B, Tq, Tk, Hq, Hkv, D
    c.kind, c.host_bf16 = kinds[0]
    c.scale, c.sink, c.lens, c.causal = scale, sink, lens, bool(causal)
    c.coff = Tk - Tq if causal else None
    return c


def _resolve(impls):
    if impls is not None and not isinstance(impls, (str, dict)):
        raise TypeError(f"impls must be None, one choice for all stages (str) or a dict "
                        f"{{stage: choice}} over {STAGES + (FUSED,)}, got {type(impls).__name__}")
    if isinstance(impls, dict):
        impls = {k: v for k, v in impls.items() if k != FUSED}
    return registry.resolve_pipeline(STAGES, impls)


def _pick_fused(impls, c, return_intermediates):
    """The fused implementation when this call selects it, else None (run the staged pipeline).

    * ``impls={"attn_fused": choice}``: that choice for the whole attention (the other keys then
      apply to the staged stages if the choice resolves to the reference);
    * ``impls="production"`` (the variant of this device's arch) / ``"production:sm_90a"`` /
      ``"production:sm_100a"``: that fused kernel, or ``ImplUnavailable`` naming why it cannot run
      (there is no staged production pipeline to fall back to);
    * ``None`` / ``"auto"`` (and ``DSV4_IMPL`` naming ``attn_fused``): the fused kernel when it
      can run here and supports the call, silently (the staged stages warn for themselves);
    * ``"reference"`` or a dict without ``attn_fused``: the staged pipeline.
    """
    if isinstance(impls, dict):
        if FUSED not in impls:
            return None
        choice, explicit = impls[FUSED], True
    elif impls is None:
        choice, explicit = registry.env_choice(FUSED), False
        if choice is not None and choice.startswith("production"):
            explicit = True
        choice = choice or "auto"
    else:
        choice, explicit = impls, impls.startswith("production")
    base = choice.partition(":")[0]
    if base == "reference":
        return None
    if base not in registry.CHOICES:
        registry.resolve(FUSED, choice)            # raises the registry's error for a bad choice
    # the variant named ("production:sm_100a"), else the one for this device's arch (sm_90a when
    # there is no GPU to say: its reasons are the ones reported)
    dev = device_arch()
    arch = choice.partition(":")[2] or (dev if dev in _FUSED_BY_ARCH else "sm_90a")
    if arch not in _FUSED_BY_ARCH:
        why = f"no fused production variant for {arch} (only {', '.join(_FUSED_BY_ARCH)})"
    else:
        why = _FUSED_BY_ARCH[arch].unsupported(c, return_intermediates)
        if why is None:
            why = registry.REGISTRY[FUSED].impls[f"production:{arch}"].unavailable()
    if why is None:
        return registry.REGISTRY[FUSED].impls[f"production:{arch}"]
    if explicit:
        raise registry.ImplUnavailable(f"{FUSED}: {choice!r} cannot run this call: {why}. Use "
                                       f"impls='reference' (staged pipeline).")
    return None


def fmha(q, k, v, causal=False, scale=None, sink=None, return_lse=False, kv_lengths=None,
         impls=None, return_intermediates=False):
    """Scaled dot-product attention, staged: ``out`` [, ``lse``] [, ``intermediates``].

    ``out[b, i, hq, :] = sum_j softmax_j(scale * q[b,i,hq] . k[b,j,g]) v[b,j,g]`` over the keys
    query i sees, with g = hq // (Hq // Hkv); see the module docstring for every rule (causal
    alignment, sink, empty rows, NaN).

    Returns ``out`` (q's shape and dtype); with ``return_lse`` also ``lse`` float32 [B, Hq, Tq];
    with ``return_intermediates`` last a dict: ``S`` float32 [B, Hq, Tq, Tk] (scaled logits, -inf
    at invisible keys), ``P`` float32 [B, Hq, Tq, Tk] (0 at invisible keys), ``O`` float32
    [B, Tq, Hq, D] (before the output rounding), ``lse`` float32 [B, Hq, Tq], and ``impls``
    {stage: implementation key} as run.

    Constraints (all checked before any launch; errors say what to change):
      * ``q`` [B, Tq, Hq, D], ``k`` and ``v`` [B, Tk, Hkv, D], C-contiguous, one dtype for all
        three: ``ml_dtypes.bfloat16`` (device: its uint16 / int16 bits), float16, or float32 (for
        teaching). D in {16, 64, 128, 256}; Hq a positive multiple of Hkv (MHA, GQA, MQA).
        Tq, Tk, B may be 0 (empty results; Tk = 0 makes every row empty).
      * ``causal``: bool; aligned to the end (query i sees keys j <= i + Tk - Tq).
      * ``scale``: positive finite, default D ** -0.5; applied in float32 after the dot product.
      * ``sink``: None or real numbers of shape (Hq,), scaled-logit domain (float32 internally).
      * ``kv_lengths``: None (all Tk) or integers of shape (B,) in [0, Tk]; device: contiguous
        int32 (B,), not range-checked (clamped to [0, Tk] by the kernels).
      * ``impls``: None / "auto" / "reference" / ... for every stage, or {stage: choice} over
        ``STAGES`` = ("attn_qk", "softmax", "attn_pv", "attn_epilogue"); unknown stage names raise
        ValueError, unknown choices ValueError, production where none can run ImplUnavailable.
        The key ``"attn_fused"`` selects the whole attention: ``"production"`` = the fused sm_90a
        kernel (bfloat16 or float16, every D); ``impls="production"`` means the fused kernel too
        (ImplUnavailable naming why when it cannot run the call). With ``None`` / ``"auto"`` the
        fused kernel runs where it can, else the staged stages (only ``softmax`` has a staged
        production variant; "auto" on the others runs the reference with a
        ``ProductionUnavailableWarning``).
      * NumPy in -> NumPy out; device arrays (GPU) in -> device arrays out (bfloat16 as uint16
        bits).
      * Memory: S and P are float32 [B, Hq, Tq, Tk] each, in global memory -- the staged mode is
        for inspection and moderate sizes, not for 32K prefill.
    """
    c = _validate(q, k, v, causal, scale, sink, return_lse, kv_lengths)
    if impls is not None and not isinstance(impls, (str, dict)):
        _resolve(impls)                                           # raises the TypeError
    fused = _pick_fused(impls, c, return_intermediates)
    if fused is not None:
        return _run_fused(fused, q, k, v, c, return_lse)
    plan = _resolve(impls)
    B, Tq, Tk, Hq, Hkv, D = c.B, c.Tq, c.Tk, c.Hq, c.Hkv, c.D
    io = ArrayIO(q, k, v)

    def placed(x):
        x = io.to_kernel(x.view(np.uint16) if c.host_bf16 else x)
        if is_device_array(x) and typestr(x) == np.int16:
            x = x.view(np.uint16)
        return x.reshape(-1)

    qd, kd, vd = placed(q), placed(k), placed(v)
    lens = io.to_kernel(c.lens).reshape(-1)
    # 1. S = scale * Q K^T  [B, Hq, Tq, Tk]
    s = plan["attn_qk"].fn(qd, c.kind, kd, c.kind, lens, c.coff, B, Tq, Tk, Hq, Hkv, D, c.scale)
    # 2. softmax over the keys, the same visibility rule through the stage's own arguments
    rows = B * Hq * Tq
    row_lens = c.lens
    if is_device_array(row_lens):   # per-row lengths on the device: spread [B] -> [B*Hq*Tq]
        row_lens = attention_stages.repeat_lengths(row_lens, Hq * Tq)
    else:
        row_lens = np.repeat(np.clip(row_lens, 0, Tk), Hq * Tq).astype(np.int32)
    row_lens = io.to_kernel(row_lens)
    sk = None
    if c.sink is not None:
        sk = io.to_kernel(c.sink).reshape(Hq, 1)      # [Hq, 1] against the rows [B, Hq, Tq]
    s4 = s.reshape(B, Hq, Tq, Tk)
    p, lse = _softmax.softmax(s4, scale=1.0, lengths=row_lens if rows else None,
                              causal_offset=c.coff, sink=sk, return_lse=True,
                              impl=plan["softmax"].key)
    # 3. O = P V  [B, Tq, Hq, D] float32, 4. round to q's dtype
    o = plan["attn_pv"].fn(p.reshape(-1), vd, c.kind, lens, c.coff, B, Tq, Tk, Hq, Hkv, D)
    out = plan["attn_epilogue"].fn(o, c.kind)
    res = (_back(io, out, ml_dtypes.bfloat16 if c.host_bf16 else None).reshape(B, Tq, Hq, D),)
    lse = _back(io, lse).reshape(B, Hq, Tq)
    if return_lse:
        res += (lse,)
    if return_intermediates:
        res += ({"S": _back(io, s).reshape(B, Hq, Tq, Tk),
                 "P": _back(io, p).reshape(B, Hq, Tq, Tk),
                 "O": _back(io, o).reshape(B, Tq, Hq, D),
                 "lse": lse,
                 "impls": {st: im.key for st, im in plan.items()}},)
    return res[0] if len(res) == 1 else res


def _run_fused(impl, q, k, v, c, return_lse):
    """The fused sm_90a kernel (``pipelines.fmha_sm90``) on one validated call."""
    B, Tq, Hq, D = c.B, c.Tq, c.Hq, c.D
    io = ArrayIO(q, k, v)
    odt = np.float16 if c.kind == F16 else np.uint16      # the kernel writes q's 16-bit type
    if B * Tq * Hq == 0:                       # nothing to compute: empty results, no launch
        out = io.empty((B, Tq, Hq, D), odt)
        lse = io.empty((B, Hq, Tq), np.float32)
    else:
        def placed(x):
            x = io.to_kernel(x.view(np.uint16) if c.host_bf16 else x)
            if typestr(x) == np.int16:
                x = x.view(np.uint16)
            return x.reshape(-1)
        sink = io.to_kernel(c.sink) if c.sink is not None else None
        o, lse = impl.fn(c, placed(q), placed(k), placed(v), io.to_kernel(c.lens), sink)
        out = o.view(odt).reshape(B, Tq, Hq, D)
        lse = lse.reshape(B, Hq, Tq)
    out = io.result(out, ml_dtypes.bfloat16 if c.host_bf16 else None)
    if return_lse:
        return out, io.result(lse)
    return out


def _back(io, a, view_dtype=None):
    """A kernel-side result back to the caller's kind (NumPy results are already host arrays)."""
    if isinstance(a, np.ndarray):
        return a.view(view_dtype) if view_dtype is not None else a
    return io.result(a, view_dtype)


__all__ = ["fmha", "STAGES", "HEAD_DIMS"]
