"""Give every source file of the package an mtime that is a hash of its content and its imports'.

Numba's on-disk kernel cache (``DSV4_NUMBA_CACHE=1``) trusts a kernel's cache entry while the
stamp (mtime, size) of the ONE file that defines the kernel is unchanged; the helpers it inlines
from other modules are not checked. After this tool, a file's mtime changes exactly when its own
content or that of any package module it imports (transitively; the PTX snippet files count as
imported by every module) changes, so a stale entry cannot be loaded. Used on the device machine
before tests and benchmarks: ``python3 tools/stamp_sources.py && export DSV4_NUMBA_CACHE=1``.
"""
from __future__ import annotations

import ast
import hashlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCH = 1_000_000_000          # stamps fall in [EPOCH, EPOCH + 2**28): 2001-2009, in the past


def _module_file(mod: str, root: str) -> str | None:
    base = os.path.join(root, *mod.split("."))
    for cand in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(cand):
            return cand
    return None


def _imports(path: str, root: str) -> set[str]:
    """Package files that ``path`` imports (absolute ``dsv4_numba...`` or relative)."""
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    pkg = rel[:-1]                       # the package a relative import of level 1 names
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):       # `from m import a`: module m.a, else m itself
            base = pkg[:len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names = [f"{mod}.{a.name}" if _module_file(f"{mod}.{a.name}", root) else mod
                     for a in node.names]
        for n in names:
            if n.split(".")[0] == "dsv4_numba" and (f := _module_file(n, root)):
                out.add(f)
    return out


def stamp(root: str = ROOT) -> int:
    """Stamp every .py under root/dsv4_numba; returns how many."""
    pkg = os.path.join(root, "dsv4_numba")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(pkg) for f in fs if f.endswith(".py"))
    ptx_dir = os.path.join(root, "ptx")
    ptx = sorted(os.path.join(ptx_dir, f) for f in os.listdir(ptx_dir) if f.endswith(".ptx"))
    deps = {f: _imports(f, root) for f in files}
    for f in deps:
        seen, todo = set(), [f]
        while todo:
            g = todo.pop()
            if g not in seen:
                seen.add(g)
                todo.extend(deps.get(g, ()))
        h = hashlib.sha256()
        for g in sorted(seen) + ptx:
            h.update(os.path.relpath(g, root).encode() + b"\0" + open(g, "rb").read())
        t = EPOCH + int.from_bytes(h.digest()[:4], "little") % (1 << 28)
        os.utime(f, (t, t))
    return len(deps)


def main() -> int:
    print(f"stamped {stamp()} sources", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
