r"""The 128x4 swizzled scale-factor layout that SM100 block-scaled tensor cores read.

Source: CUTLASS ``sm100_blockscaled_layout.hpp`` (SfKMajorAtom), as summarised in
``shared/reference/ptx-facts.md``; TransformerEngine calls it "padded to 128x4", Triton's
block-scaled matmul tutorial writes it as the 5-D shape (M/128, K/4, 32, 4, 4).

Scale factors sf[m, k] (m = row of A, or of B over N; k = block index along K) are padded to
M' = 128*ceil(M/128) rows and K' = 4*ceil(K/4) columns with zero bytes, then cut into atoms of
128 rows x 4 scale factors = 512 bytes.  Inside an atom, row m and column k sit at::

    offset_in_atom = 16 * (m % 32) + 4 * ((m // 32) % 4) + (k % 4)

    byte   0    1    2    3    4    5    6    7    8  ...  12   13   14   15   16 ...
         +----+----+----+----+----+----+----+----+----+---+----+----+----+----+----+
         |r0k0|r0k1|r0k2|r0k3|r32 |r32 |r32 |r32 |r64 |...|r96 |r96 |r96 |r96 |r1k0| ...
         +----+----+----+----+----+----+----+----+----+---+----+----+----+----+----+
          \______ rows {l, l+32, l+64, l+96} x 4 SFs = 16 B for lane l ______/

Each 16-byte run is what one TMEM lane receives from ``tcgen05.cp .32x128b.warpx4``.  Atoms are
tiled K-first (the k-atoms of one 128-row band are contiguous)::

    atom_offset(m, k) = ((m // 128) * ceil(K / 4) + (k // 4)) * 512

    buffer = [atom(0,0) | atom(0,1) | ... | atom(0,K'/4-1) | atom(1,0) | ...]   (512 B each)

so the whole buffer is uint8 [ceil(M/128), ceil(K/4), 512] and
byte offset(m, k) = atom_offset(m, k) + offset_in_atom(m, k).
"""

import numpy as np

ATOM_ROWS = 128
ATOM_COLS = 4
ATOM_BYTES = ATOM_ROWS * ATOM_COLS   # 512


def _ceil_div(a, b):
    return -(-a // b)


def swizzled_shape(M, K):
    """Shape (ceil(M/128), ceil(K/4), 512) of the swizzled buffer for an [M, K] scale matrix.

    Constraints: M, K non-negative integers.
    """
    if M < 0 or K < 0:
        raise ValueError(f"M and K must be >= 0, got M={M}, K={K}")
    return (_ceil_div(M, ATOM_ROWS), _ceil_div(K, ATOM_COLS), ATOM_BYTES)


def swizzled_offset(m, k, K):
    """Byte offset of scale factor (m, k) in the flat swizzled buffer of an [M, K] matrix.

    Constraints: 0 <= k < K (m is not bounded: any row of the padded matrix); works on ints or
    integer numpy arrays (broadcast).
    """
    m = np.asarray(m, dtype=np.int64)
    k = np.asarray(k, dtype=np.int64)
    atom = (m // 128) * _ceil_div(K, ATOM_COLS) + k // 4
    return atom * ATOM_BYTES + 16 * (m % 32) + 4 * ((m // 32) % 4) + k % 4


def swizzle_scales(sf):
    """Scale codes uint8 [M, K] -> 128x4 layout, uint8 [ceil(M/128), ceil(K/4), 512].

    Padding rows/columns are zero bytes.  ``.reshape(-1)`` gives the flat buffer a kernel reads.
    Constraints: a 2-D uint8 array (TypeError/ValueError otherwise); batch dims (e.g. experts)
    must be looped by the caller.
    """
    sf = np.asarray(sf)
    if sf.dtype != np.uint8:
        raise TypeError(f"sf has dtype {sf.dtype}; pass uint8 scale codes")
    if sf.ndim != 2:
        raise ValueError(f"sf must be 2-D [M, K], got shape {sf.shape}; loop over batch dims")
    M, K = sf.shape
    m_atoms, k_atoms, _ = swizzled_shape(M, K)
    padded = np.zeros((m_atoms * ATOM_ROWS, k_atoms * ATOM_COLS), dtype=np.uint8)
    padded[:M, :K] = sf
    # m = 128*mt + 32*r + l and k = 4*kt + c  ->  atom (mt, kt), byte 16*l + 4*r + c
    t = padded.reshape(m_atoms, 4, 32, k_atoms, 4)          # (mt, r, l, kt, c)
    t = t.transpose(0, 3, 2, 1, 4)                           # (mt, kt, l, r, c)
    return np.ascontiguousarray(t).reshape(m_atoms, k_atoms, ATOM_BYTES)


def unswizzle_scales(buf, M, K):
    """Inverse of ``swizzle_scales``: the 128x4 buffer (flat or 3-D) -> uint8 [M, K].

    Constraints: uint8 with exactly ceil(M/128) * ceil(K/4) * 512 bytes (ValueError otherwise).
    Padding bytes are dropped without being checked.
    """
    buf = np.asarray(buf)
    if buf.dtype != np.uint8:
        raise TypeError(f"buf has dtype {buf.dtype}; pass the uint8 swizzled buffer")
    m_atoms, k_atoms, _ = swizzled_shape(M, K)
    if buf.size != m_atoms * k_atoms * ATOM_BYTES:
        raise ValueError(f"buf has {buf.size} bytes; an [{M}, {K}] scale matrix needs "
                         f"{m_atoms * k_atoms * ATOM_BYTES} (= ceil(M/128)*ceil(K/4)*512)")
    t = buf.reshape(m_atoms, k_atoms, 32, 4, 4)              # (mt, kt, l, r, c)
    t = t.transpose(0, 3, 2, 1, 4)                           # (mt, r, l, kt, c)
    return t.reshape(m_atoms * ATOM_ROWS, k_atoms * ATOM_COLS)[:M, :K].copy()
