"""PTX snippets shipped as package data; loaded by dsv4_numba.hw.snippets."""
