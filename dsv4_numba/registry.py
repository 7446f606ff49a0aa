"""The stage registry: every stage has named implementations, selected per call or by environment.

A stage (``"decode_fp4"``, ``"softmax"``, ``"topk"``, ...) has implementations registered under a
name — ``"reference"`` (readable, runs on any GPU and under the simulator) and ``"production"`` —
and, where kernels differ by arch, one production variant per arch (``arch="sm_90a"``,
``arch="sm_100a"``). Selection, in order of precedence:

1. the call's ``impl=`` argument (a pipeline's ``impls={"stage": ...}`` dict feeds it per stage);
2. the environment variable ``DSV4_IMPL``: either one choice for every stage (``production``) or a
   comma list ``decode_fp4=reference,topk=production`` (``*=...`` sets the rest);
3. ``"auto"``: production when a variant for this device's arch can run here, else reference —
   and then a ``ProductionUnavailableWarning`` says why (never a silent fallback).

A choice is ``"reference"``, ``"production"`` (the variant for the device's arch), an exact variant
``"production:sm_100a"``, or ``"auto"``. Asking for a production path that cannot run here raises
``ImplUnavailable`` naming what is missing.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable

from .runtime import env

CHOICES = ("auto", "reference", "production")


class ImplUnavailable(RuntimeError):
    """The requested implementation cannot run in this environment."""


class ProductionUnavailableWarning(UserWarning):
    """``auto`` selection chose the reference path because no production variant can run here."""


@dataclass
class Impl:
    stage: str
    name: str                 # "reference" or "production"
    fn: Callable
    arch: str | None = None   # production variants: the arch they are built for
    kernels: Callable | None = None  # () -> [(Kernel, signature)] for compile-only checks

    @property
    def key(self) -> str:
        return f"{self.name}:{self.arch}" if self.arch else self.name

    def unavailable(self) -> str | None:
        """None when this implementation can run here, else the reason it cannot."""
        if self.name == "reference":
            return None
        m = env.mode()
        if m != "gpu":
            return (f"{self.stage}/{self.key} needs a GPU of arch {self.arch}, but the run mode is "
                    f"'sim' ({'DSV4_MODE=sim' if os.environ.get('DSV4_MODE') == 'sim' else 'no CUDA device found'})")
        dev = env.device_arch()
        if self.arch and dev != self.arch:
            return f"{self.stage}/{self.key} is built for {self.arch}, but this device is {dev}"
        return None


@dataclass
class Stage:
    name: str
    impls: dict[str, Impl] = field(default_factory=dict)

    def variants(self, name: str) -> list[Impl]:
        return [i for i in self.impls.values() if i.name == name]


REGISTRY: dict[str, Stage] = {}


def register(stage: str, name: str, arch: str | None = None, kernels=None):
    """Decorator registering ``fn`` as implementation ``name`` (optionally for ``arch``) of ``stage``."""
    if name not in ("reference", "production"):
        raise ValueError(f"implementation name must be 'reference' or 'production', not {name!r}")

    def deco(fn):
        st = REGISTRY.setdefault(stage, Stage(stage))
        impl = Impl(stage, name, fn, arch, kernels)
        if impl.key in st.impls:
            raise ValueError(f"{stage}/{impl.key} registered twice")
        st.impls[impl.key] = impl
        return fn
    return deco


def env_choice(stage: str) -> str | None:
    """The choice DSV4_IMPL makes for ``stage`` (None when it says nothing about it)."""
    raw = os.environ.get("DSV4_IMPL", "").strip()
    if not raw:
        return None
    if "=" not in raw:
        return raw
    table = {}
    for part in raw.split(","):
        k, sep, v = part.partition("=")
        if not sep:
            raise ValueError(f"DSV4_IMPL={raw!r}: write 'stage=impl,...' or one impl for all stages")
        table[k.strip()] = v.strip()
    return table.get(stage, table.get("*"))


def resolve(stage: str, impl: str | None = None) -> Impl:
    """The implementation of ``stage`` to run for this call (see module docstring)."""
    if stage not in REGISTRY:
        raise KeyError(f"unknown stage {stage!r}; known: {sorted(REGISTRY)}")
    st = REGISTRY[stage]
    choice = impl or env_choice(stage) or "auto"
    base, _, arch = choice.partition(":")
    if base not in CHOICES:
        raise ValueError(f"impl {choice!r} for stage {stage!r} is not one of {CHOICES} "
                         f"(or 'production:<arch>'); registered: {sorted(st.impls)}")
    if base == "reference":
        return st.impls["reference"]
    prods = [p for p in st.variants("production") if not arch or p.arch == arch]
    runnable = [p for p in prods if p.unavailable() is None]
    if runnable:
        return runnable[0]
    reasons = "; ".join(p.unavailable() for p in prods) or (
        f"no production implementation{' for ' + arch if arch else ''} of {stage!r} is registered")
    if base == "auto":
        warnings.warn(f"{stage}: production path unavailable ({reasons}); running the reference "
                      f"implementation", ProductionUnavailableWarning, stacklevel=3)
        return st.impls["reference"]
    raise ImplUnavailable(f"{stage}: {choice!r} cannot run here: {reasons}. "
                          f"Use impl='reference' or run on a matching GPU.")


def resolve_pipeline(stages: tuple[str, ...], impls: dict | str | None) -> dict[str, Impl]:
    """Per-stage implementations for a pipeline; ``impls`` is a dict, one choice for all, or None."""
    if impls is None or isinstance(impls, str):
        return {s: resolve(s, impls) for s in stages}
    unknown = set(impls) - set(stages)
    if unknown:
        raise ValueError(f"impls names unknown stages {sorted(unknown)}; this pipeline has {stages}")
    return {s: resolve(s, impls.get(s)) for s in stages}


def table() -> list[tuple[str, str, str]]:
    """(stage, implementation, status) for every registered implementation — for ``info``."""
    rows = []
    for st in REGISTRY.values():
        for im in st.impls.values():
            why = im.unavailable()
            rows.append((st.name, im.key, "runs here" if why is None else f"cannot run: {why}"))
    return rows
