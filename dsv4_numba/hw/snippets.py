"""Parse the PTX snippet files (``ptx/*.ptx``, shipped as ``dsv4_numba.ptx``) into contracts.

The file format is described in ``ptx/README.md``. Every snippet must name its instruction, PTX-ISA
section, minimum arch, signature and constraints; a snippet missing one is rejected at import.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources

REQUIRED = ("instruction", "ptx-isa", "min-arch", "signature", "constraints", "side-effect")


@dataclass(frozen=True)
class Snippet:
    name: str
    file: str
    instruction: str
    ptx_isa: str
    min_arch: str
    signature: str
    constraints: str
    side_effect: bool
    layout: str
    body: str


def _ptx_dir():
    try:
        return resources.files("dsv4_numba.ptx")
    except ModuleNotFoundError:  # running from a source tree that is not installed
        return resources.files("ptx")


def parse(text: str, file: str = "<string>") -> dict[str, Snippet]:
    out = {}
    for chunk in text.split("// ==== ")[1:]:
        lines = chunk.splitlines()
        name = lines[0].strip()
        fields: dict[str, str] = {}
        body = []
        for ln in lines[1:]:
            s = ln.strip()
            if s.startswith("//") and not body:
                key, _, val = s[2:].partition(":")
                key = key.strip()
                fields[key] = (fields[key] + " " + val.strip()) if key in fields else val.strip()
            elif s:
                body.append(s)
        missing = [k for k in REQUIRED if k not in fields]
        if missing or not body:
            raise ValueError(f"{file}: snippet {name!r} lacks {missing or 'a body'}")
        out[name] = Snippet(name, os.path.basename(file), fields["instruction"], fields["ptx-isa"],
                            fields["min-arch"], fields["signature"], fields["constraints"],
                            fields["side-effect"].lower() == "yes", fields.get("layout", ""),
                            "\n\t".join(body))
    return out


def load_all() -> dict[str, Snippet]:
    snippets: dict[str, Snippet] = {}
    for entry in sorted(_ptx_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".ptx"):
            for name, sn in parse(entry.read_text(), entry.name).items():
                if name in snippets:
                    raise ValueError(f"snippet {name!r} defined in {snippets[name].file} and {entry.name}")
                snippets[name] = sn
    return snippets


SNIPPETS = load_all()
