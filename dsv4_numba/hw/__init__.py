"""The hardware layer: Python bindings of the PTX snippets in ``ptx/`` (inline asm through Numba
intrinsics). This package and ``ptx/`` are the only places that know PTX strings.

``dsv4_numba.hw.ops.<name>`` is the binding of snippet ``<name>``; ``snippets.SNIPPETS`` holds the
parsed contracts (instruction, PTX-ISA section, minimum arch, signature, layout).
"""
