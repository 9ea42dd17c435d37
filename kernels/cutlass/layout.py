"""CUTLASS 3.x's sm90 compressed 2:4 operand format, in numpy (the reference our kernels match).

CUTLASS's Hopper sparse GEMM (``Sm90GemmSparseConfig`` in
``cutlass/gemm/collective/builders/sm90_sparse_config.inl``, compressed by
``SM90StructuredSparseCompressor`` in
``cutlass/transform/kernel/sm90_sparse_gemm_compressor.hpp``, CUTLASS 4.2)
takes the sparse operand ``A`` (m x k, row-major, 2:4 along k: at most two
non-zeros in every group of four consecutive columns) as two buffers:

``values`` (A_c)   ``m x kv/2`` elements, row-major, row pitch ``kv/2``
                   elements, ``kv = ceil(k/16)*16`` (16-bit) or
                   ``ceil(k/32)*32`` (8-bit): each group's two stored elements
                   in ascending column order, bits copied exactly; the columns
                   ``k/2 .. kv/2`` are zero.
``metadata`` (E)   ``me * ke / 8`` bytes, ``me = ceil(m/64)*64``,
                   ``ke = ceil(k/tk)*tk``, ``tk = min(tile K, 128)`` of the GEMM
                   kernel (its ``MinTileShapeK``): one 4-bit code per group,
                   ``idx0 | idx1 << 2``, two codes per byte (even group in the
                   low nibble), bytes in a tiled order; padding bytes are 0.

The metadata of row ``r``, byte column ``kb = g // 2`` (``g = col // 4``) is
byte ``offset(r, kb)``; with ``nk = tk // 32`` (16-bit), ``R = r % 64``,
``B = kb % (tk/8)``::

    offset = (kb // (tk/8)) * me * tk/8            # K atoms, after all M atoms
           + (r // 64) * 8 * tk                    # M atoms of 64 rows
           + 16-bit: B%2 + 2*((R//8)%2) + 4*(B//4) + 4*nk*(R%8)
                     + 32*nk*((B//2)%2) + 64*nk*(R//16)
             8-bit:  R * tk/8 + B                  # plain row-major atom

so for 16-bit elements the 32-bit word ``offset // 4`` holds rows ``R`` and
``R + 8`` (low and high half-word) of 16 columns (the per-thread metadata
register of PTX's sparse wgmma m64nNk32 f16/bf16), and the ``nk`` words of the
``nk`` 32-column blocks of a (row pair, 16-column half) are adjacent (one
16-byte line for ``tk = 128``). ``tk`` is 128 for every tile with
K >= 128 (example 62's 128x128x128 and our kernels'); a GEMM built with tile
K 64 (``tk = 64``) reads a different byte order, so the compressor and the GEMM
must share the same ``SparseConfig``.

Which codes (CUTLASS's compressor; ``-0`` counts as zero and is stored as
``+0``; int8 has no ``-0``)::

    two non-zeros at i < j      code i | j << 2      values (a_i, a_j)
    one non-zero at i < 3       code i | 3 << 2      values (a_i, 0)
    one non-zero at 3           code 0 | 3 << 2      values (0, a_3)
    no non-zero                 code 0 (= 0 | 0<<2)  values (0, 0)

A group with more than two non-zeros is not 2:4 (CUTLASS's compressor then
writes past its two slots); :func:`compress_sm90` refuses it. These codes
differ from cuSPARSELt's and from ``sparse24_jax.packing`` (which store
``(2, 3)`` for an empty group and ``(2, 3)`` for a lone non-zero at 3): use
:func:`from_packed` to convert the project's packed format.

Everything works on raw bits (uint16 for bfloat16/float16, uint8 for
fp8/int8), so numpy needs no bfloat16/float8 support; arrays of ml_dtypes'
types are viewed as such. Only the K-major (row-major) sparse operand is
covered (the layout our weights use); tf32 (1:2) is not.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "CompressedShapes",
    "compress_sm90",
    "compressed_shapes",
    "decompress_sm90",
    "from_packed",
    "group_codes",
    "metadata_byte_offset",
    "metadata_word",
    "values_cols",
]

#: the tile K (``min(TileShapeK, 128)``) of the kernels this project builds
DEFAULT_TILE_K = 128


class CompressedShapes(NamedTuple):
    """Sizes of the two buffers of an m x k sparse operand (K-major)."""

    values: tuple[int, int]  #: (m, kv/2) elements, row-major
    metadata_rows: int  #: me = ceil(m/64)*64
    metadata_cols: int  #: ke = ceil(k/tk)*tk logical columns (ke/8 bytes per row)
    metadata_nbytes: int  #: me * ke / 8
    values_nbytes: int  #: m * kv/2 * element size


def _element_size(dtype) -> int:
    es = np.dtype(dtype).itemsize
    if es not in (1, 2):
        raise ValueError(
            f"CUTLASS's sm90 2:4 format here is for 16-bit and 8-bit elements, not {np.dtype(dtype)}"
        )
    return es


def _check_tile_k(tile_k: int, es: int) -> int:
    block = 32 if es == 2 else 64  # 512 bits of A per basic metadata block
    if tile_k <= 0 or tile_k % block or tile_k > 128:
        raise ValueError(
            f"tile_k must be min(tile K, 128) of the GEMM, a multiple of {block} for "
            f"{8 * es}-bit elements, got {tile_k}"
        )
    return tile_k


def _check_mk(m: int, k: int) -> None:
    if m <= 0 or k <= 0 or k % 4:
        raise ValueError(
            f"a 2:4 operand needs m > 0 and k (its 2:4 axis) a positive multiple of 4, got {m} x {k}"
        )


def values_cols(k: int, es: int) -> int:
    """kv/2: the row pitch (elements) of the values buffer (k aligned for 16-byte TMA rows)."""
    kalign = 16 if es == 2 else 32
    return -(-k // kalign) * kalign // 2


def compressed_shapes(m: int, k: int, dtype, *, tile_k: int = DEFAULT_TILE_K) -> CompressedShapes:
    """Sizes of the values and metadata buffers of an m x k operand of ``dtype``."""
    es = _element_size(dtype)
    _check_mk(m, k)
    _check_tile_k(tile_k, es)
    me = -(-m // 64) * 64
    ke = -(-k // tile_k) * tile_k
    kv2 = values_cols(k, es)
    return CompressedShapes((m, kv2), me, ke, me * ke // 8, m * kv2 * es)


def metadata_byte_offset(r, kb, m: int, es: int, *, tile_k: int = DEFAULT_TILE_K):
    """Byte of the metadata buffer holding row ``r``, byte column ``kb`` (groups
    ``2*kb`` in the low nibble and ``2*kb + 1`` in the high nibble), for an
    operand of ``m`` rows and ``es``-byte elements (numpy broadcasting)."""
    _check_tile_k(tile_k, es)
    r = np.asarray(r, dtype=np.int64)
    kb = np.asarray(kb, dtype=np.int64)
    me = -(-m // 64) * 64
    bpr = tile_k // 8  # bytes per row of an atom
    ka, b = kb // bpr, kb % bpr
    ma, R = r // 64, r % 64
    base = ka * me * bpr + ma * 64 * bpr
    if es == 1:
        return base + R * bpr + b
    nk = tile_k // 32
    return (
        base
        + b % 2
        + 2 * ((R // 8) % 2)
        + 4 * (b // 4)
        + 4 * nk * (R % 8)
        + 32 * nk * ((b // 2) % 2)
        + 64 * nk * (R // 16)
    )


def metadata_word(r, c, m: int, *, tile_k: int = DEFAULT_TILE_K):
    """(32-bit word index, bit shift) of the 4-bit code of row ``r``, column
    ``c`` (any column of its group) for 16-bit elements: word ``w`` holds rows
    R, R+8 (bits 0..15, 16..31) of one 16-column half of a 32-column block."""
    r = np.asarray(r, dtype=np.int64)
    g = np.asarray(c, dtype=np.int64) // 4
    off = metadata_byte_offset(r, g // 2, m, 2, tile_k=tile_k)
    shift = 8 * (off % 4) + 4 * (g % 2)
    return off // 4, shift


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    es = _element_size(a.dtype)
    return a.view(np.uint16 if es == 2 else np.uint8)


def _negative_zero(dtype, negative_zero) -> bool:
    if negative_zero is not None:
        return bool(negative_zero)
    # int8/uint8 have no -0 (CUTLASS's has_negative_zero_v); raw uint8 bits are read as fp8
    return np.dtype(dtype) != np.dtype(np.int8)


def group_codes(a: np.ndarray, *, negative_zero: bool | None = None):
    """CUTLASS's ``(idx0, idx1, v0, v1)`` of every group of 4 of ``a`` (m, k): the
    codes' two positions and the two stored raw bit patterns (see module doc)."""
    neg0 = _negative_zero(np.asarray(a).dtype, negative_zero)
    bits = _bits(a)
    if bits.ndim != 2:
        raise ValueError(f"expected a 2-D (m, k) matrix, got shape {bits.shape}")
    m, k = bits.shape
    _check_mk(m, k)
    es = bits.dtype.itemsize
    grp = bits.reshape(m, k // 4, 4)
    mask = (0x7FFF if es == 2 else 0x7F) if neg0 else (0xFFFF if es == 2 else 0xFF)
    nz = (grp & mask) != 0
    cnt = nz.sum(-1)
    if np.any(cnt > 2):
        r, g = np.argwhere(cnt > 2)[0]
        raise ValueError(
            f"not 2:4: row {r}, columns {4 * g}..{4 * g + 3} hold more than two non-zeros; "
            "prune the matrix first (sparse24_jax.masks)"
        )
    pos = np.arange(4)
    big = 4
    first = np.where(nz, pos, big).min(-1)
    second = np.where(nz & (pos > first[..., None]), pos, big).min(-1)
    zero = np.zeros((), bits.dtype)

    def take(idx):
        safe = np.minimum(idx, 3)
        return np.where(idx < big, np.take_along_axis(grp, safe[..., None], -1)[..., 0], zero)

    vf, vs = take(first), take(second)
    one_at_3 = (cnt == 1) & (first == 3)
    idx0 = np.where(cnt == 0, 0, np.where(one_at_3, 0, first))
    idx1 = np.where(cnt == 0, 0, np.where(cnt == 1, 3, second))
    v0 = np.where(one_at_3, zero, vf).astype(bits.dtype)
    v1 = np.where(one_at_3, vf, np.where(cnt == 2, vs, zero)).astype(bits.dtype)
    return idx0.astype(np.uint8), idx1.astype(np.uint8), v0, v1


def _assemble(idx0, idx1, v0, v1, m, k, es, tile_k):
    shapes = compressed_shapes(m, k, np.uint16 if es == 2 else np.uint8, tile_k=tile_k)
    vdt = np.uint16 if es == 2 else np.uint8
    values = np.zeros(shapes.values, dtype=vdt)
    values[:, : k // 2] = np.stack([v0, v1], -1).reshape(m, k // 2)
    codes = (idx0 | (idx1 << 2)).astype(np.uint8)  # (m, k/4)
    if codes.shape[1] % 2:
        codes = np.concatenate([codes, np.zeros((m, 1), np.uint8)], 1)
    byte = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)  # (m, ceil(k/8))
    meta = np.zeros(shapes.metadata_nbytes, dtype=np.uint8)
    r, kb = np.meshgrid(np.arange(m), np.arange(byte.shape[1]), indexing="ij")
    meta[metadata_byte_offset(r, kb, m, es, tile_k=tile_k)] = byte
    return values, meta


def compress_sm90(
    a: np.ndarray, *, tile_k: int = DEFAULT_TILE_K, negative_zero: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """CUTLASS's ``(values, metadata)`` of the 2:4 matrix ``a`` (m, k): exactly
    the bytes ``SM90StructuredSparseCompressor`` writes (for a GEMM of tile K
    ``tile_k`` or more).

    ``a``: bfloat16/float16/uint16 or float8/int8/uint8 (only the bits matter).
    Returns ``values`` (m, kv/2) in ``a``'s dtype and ``metadata`` (1-D uint8).
    """
    a = np.ascontiguousarray(a)
    idx0, idx1, v0, v1 = group_codes(a, negative_zero=negative_zero)
    m, k = a.shape
    values, meta = _assemble(idx0, idx1, v0, v1, m, k, a.dtype.itemsize, tile_k)
    return values.view(a.dtype), meta


def _read_codes(metadata, m, k, es, tile_k):
    shapes = compressed_shapes(m, k, np.uint16 if es == 2 else np.uint8, tile_k=tile_k)
    meta = np.asarray(metadata)
    if meta.dtype != np.uint8 or meta.ndim != 1 or meta.size != shapes.metadata_nbytes:
        raise ValueError(
            f"metadata of a {m} x {k} operand (tile_k={tile_k}) is a 1-D uint8 array of "
            f"{shapes.metadata_nbytes} bytes, got {meta.dtype} {meta.shape}: pass the array compress_sm90 returned"
        )
    r, g = np.meshgrid(np.arange(m), np.arange(k // 4), indexing="ij")
    byte = meta[metadata_byte_offset(r, g // 2, m, es, tile_k=tile_k)]
    code = (byte >> (4 * (g % 2))) & 0xF
    return (code & 3).astype(np.int64), (code >> 2).astype(np.int64)


def decompress_sm90(
    values: np.ndarray, metadata: np.ndarray, m: int, k: int, *, tile_k: int = DEFAULT_TILE_K
) -> np.ndarray:
    """The dense (m, k) matrix (bits exact, ``values``' dtype) of CUTLASS's buffers.

    Accepts any codes with ``idx0 < idx1``, and code 0 for a group whose two
    stored values are zero bits (+0); anything else is corrupt metadata.
    """
    values = np.ascontiguousarray(values)
    es = _element_size(values.dtype)
    shapes = compressed_shapes(m, k, values.dtype, tile_k=tile_k)
    if values.shape != shapes.values:
        raise ValueError(
            f"values of a {m} x {k} operand have shape {shapes.values}, got {values.shape}: "
            "pass the array compress_sm90 returned"
        )
    vbits = _bits(values)
    i0, i1 = _read_codes(metadata, m, k, es, tile_k)
    vals = vbits[:, : k // 2].reshape(m, k // 4, 2)
    empty = (i0 == 0) & (i1 == 0)
    if np.any(empty & np.any(vals != 0, -1)):
        r, g = np.argwhere(empty & np.any(vals != 0, -1))[0]
        raise ValueError(f"corrupt metadata: row {r}, group {g} has code 0 but stored values that are not +0")
    if np.any(~empty & (i0 >= i1)):
        r, g = np.argwhere(~empty & (i0 >= i1))[0]
        raise ValueError(f"corrupt metadata: row {r}, group {g} has a code with idx0 >= idx1")
    out = np.zeros((m, k // 4, 4), dtype=vbits.dtype)
    i1 = np.where(empty, 1, i1)
    np.put_along_axis(out, i0[..., None], vals[..., :1], -1)
    np.put_along_axis(out, i1[..., None], vals[..., 1:], -1)
    return out.reshape(m, k).view(values.dtype)


def from_packed(
    values: np.ndarray,
    meta: np.ndarray,
    *,
    tile_k: int = DEFAULT_TILE_K,
    negative_zero: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """CUTLASS's buffers of a matrix in ``sparse24_jax.packing``'s format.

    ``values`` (m, k/2) and ``meta`` (m, ceil(k/8)) uint8 with codes
    ``idx0 | idx1 << 2`` (even group in the low nibble) are mapped group by
    group (no dense detour, the arithmetic a fused kernel does): a stored value
    that is zero (or -0) is dropped, and the group is recoded the way CUTLASS's
    compressor codes the dense matrix (module doc), so the result is byte-equal
    to ``compress_sm90(decompress_24(values, meta))``.
    """
    vbits = _bits(values)
    if vbits.ndim != 2:
        raise ValueError(f"values must be (m, k/2), got shape {vbits.shape}")
    m, half = vbits.shape
    k = 2 * half
    _check_mk(m, k)
    meta = np.asarray(meta)
    if meta.dtype != np.uint8 or meta.shape != (m, -(-(k // 4) // 2)):
        raise ValueError(
            f"meta must be uint8 of shape {(m, -(-(k // 4) // 2))} for values {vbits.shape}, "
            f"got {meta.dtype} {meta.shape}: pass the pair sparse24_jax.packing.compress_24 returned"
        )
    es = vbits.dtype.itemsize
    neg0 = _negative_zero(np.asarray(values).dtype, negative_zero)
    codes = np.stack([meta & 0xF, meta >> 4], -1).reshape(m, -1)[:, : k // 4]
    p0, p1 = (codes & 3).astype(np.int64), (codes >> 2).astype(np.int64)
    if np.any(p0 >= p1):
        r, g = np.argwhere(p0 >= p1)[0]
        raise ValueError(f"meta: row {r}, group {g} has a code with idx0 >= idx1, not a packing code")
    pv = vbits.reshape(m, k // 4, 2)
    a, b = pv[..., 0], pv[..., 1]
    mask = (0x7FFF if es == 2 else 0x7F) if neg0 else (0xFFFF if es == 2 else 0xFF)
    nza, nzb = (a & mask) != 0, (b & mask) != 0
    zero = np.zeros((), vbits.dtype)
    # both: (p0, p1); only a: (p0, 3) [p0 < 3 always]; only b: (0, 3) if p1 == 3 else (p1, 3);
    # neither: (0, 0)
    only_b = ~nza & nzb
    idx0 = np.where(nza, p0, np.where(only_b & (p1 < 3), p1, 0))
    idx1 = np.where(nza & nzb, p1, np.where(nza | nzb, 3, 0))
    v0 = np.where(nza, a, np.where(only_b & (p1 < 3), b, zero))
    v1 = np.where(nza & nzb, b, np.where(only_b & (p1 == 3), b, zero))
    vals, md = _assemble(
        idx0.astype(np.uint8), idx1.astype(np.uint8), v0.astype(vbits.dtype), v1.astype(vbits.dtype),
        m, k, es, tile_k,
    )
    return vals.view(np.asarray(values).dtype), md
