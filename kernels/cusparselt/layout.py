"""cuSPARSELt's compressed 2:4 format, in numpy (the reference our kernels match).

A 2:4 matrix ``A`` (m x k, row-major, at most two non-zeros in every group of
four consecutive columns) is stored by cuSPARSELt 0.8 (measured on sm90, see
docs/algorithms.md, section 7) as one byte buffer::

    values    m * k/2 * es bytes   row-major (m, k/2): each group's two kept
                                   elements in ascending column order, bits
                                   copied exactly
    metadata  Mr * Kc / 8 bytes    one 4-bit code per group, idx0 | idx1 << 2
                                   (idx0 < idx1); Mr = ceil(m/64)*64 rows,
                                   Kc = k (16-bit) or ceil(k/64)*64 (fp8)
                                   columns; padding codes are 0xE

Nibble number ``q`` lives in byte ``q // 2`` (high nibble when ``q`` is odd),
with ``g = col // 4``::

    16-bit: q = (r//64)*16*Kc + (g//8)*512 + ((r%64)//16)*128 + (r%8)*16
                + (r%16)//8 + (g%4)*4 + ((g%8)//4)*2
    fp8:    q = (r//64)*16*Kc + (g//16)*1024 + ((r%64)//16)*256 + (r%8)*32
                + ((r%16)//8)*2 + ((g%8)//2)*8 + ((g%16)//8)*4 + g%2

Groups with fewer than two non-zeros (+0 and -0 are zero) store the
positions ``idx0`` = first non-zero among 0..2 (else 2) and ``idx1`` = next
non-zero after ``idx0`` (else 3), and the bits found there.

The layout was verified for k a multiple of 32 (16-bit) or 64 (fp8); other k
are computed by the same formulas but unverified (``strict=True`` refuses them).
Everything here works on raw bits, so it needs no bfloat16/float8 support from
numpy (arrays of ml_dtypes' bfloat16 / float8_e4m3fn are viewed as uint16 /
uint8).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CODES",
    "PAD_CODE",
    "compress",
    "compressed_nbytes",
    "decompress",
    "element_size",
    "metadata_cols",
    "nibble_index",
    "pair_codes",
    "read_nibbles",
    "split",
]

#: metadata code of each (idx0, idx1) pair
CODES = {(0, 1): 0x4, (0, 2): 0x8, (0, 3): 0xC, (1, 2): 0x9, (1, 3): 0xD, (2, 3): 0xE}
#: code of padding rows and columns
PAD_CODE = 0xE


def element_size(dtype) -> int:
    """Bytes per element: 2 for bfloat16/float16 (or uint16), 1 for fp8 (or uint8)."""
    es = np.dtype(dtype).itemsize
    if es not in (1, 2):
        raise ValueError(f"cuSPARSELt's 2:4 format is for 16-bit and 8-bit elements, not {np.dtype(dtype)}")
    return es


def metadata_cols(k: int, es: int) -> int:
    """Kc: the columns the metadata covers (k, or k rounded up to 64 for fp8)."""
    return -(-k // 64) * 64 if es == 1 else k


def compressed_nbytes(m: int, k: int, dtype) -> int:
    """Size in bytes of the compressed buffer of an m x k matrix."""
    es = element_size(dtype)
    _check_shape(m, k, es, strict=False)
    mr = -(-m // 64) * 64
    return m * (k // 2) * es + mr * metadata_cols(k, es) // 8


def _check_shape(m: int, k: int, es: int, *, strict: bool) -> None:
    if m < 0 or k < 0 or k % 4:
        raise ValueError(f"a 2:4 matrix needs k (its 2:4 axis) a multiple of 4, got {m} x {k}")
    if strict:
        kmult = 32 if es == 2 else 64
        if k % kmult:
            raise ValueError(
                f"the layout is verified for k a multiple of {kmult} ({'16' if es == 2 else '8'}-bit), "
                f"got k={k}: pad k, or pass strict=False for the unverified extrapolation"
            )


def nibble_index(r, g, k: int, es: int):
    """Nibble number q of row r, group g (numpy broadcasting) for a matrix with k columns."""
    r = np.asarray(r, dtype=np.int64)
    g = np.asarray(g, dtype=np.int64)
    kc = metadata_cols(k, es)
    if es == 2:
        return (
            (r // 64) * 16 * kc
            + (g // 8) * 512
            + ((r % 64) // 16) * 128
            + (r % 8) * 16
            + (r % 16) // 8
            + (g % 4) * 4
            + ((g % 8) // 4) * 2
        )
    return (
        (r // 64) * 16 * kc
        + (g // 16) * 1024
        + ((r % 64) // 16) * 256
        + (r % 8) * 32
        + ((r % 16) // 8) * 2
        + ((g % 8) // 2) * 8
        + ((g % 16) // 8) * 4
        + (g % 2)
    )


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    es = element_size(a.dtype)
    return a.view(np.uint16 if es == 2 else np.uint8)


def _mag_mask(es: int) -> int:
    return 0x7FFF if es == 2 else 0x7F


def pair_codes(a: np.ndarray, *, on_invalid: str = "raise"):
    """(idx0, idx1) of every group of 4 along the last axis of ``a`` (m, k).

    ``on_invalid``: "raise" for a group with more than two non-zeros, or
    "top2" to keep its two largest magnitudes (ties to the lower index), as
    the CUDA kernel does. Returns ``(idx0, idx1, bits)`` with ``bits`` the
    (possibly top-2 pruned) raw bits of ``a``.
    """
    bits = _bits(a)
    if bits.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {bits.shape}")
    m, k = bits.shape
    es = bits.dtype.itemsize
    _check_shape(m, k, es, strict=False)
    grp = bits.reshape(m, k // 4, 4)
    mag = (grp & _mag_mask(es)).astype(np.int64)
    nz = mag != 0
    bad = nz.sum(-1) > 2
    if bad.any():
        if on_invalid == "raise":
            r, g = np.argwhere(bad)[0]
            raise ValueError(
                f"not 2:4: row {r}, columns {4 * g}..{4 * g + 3} hold more than two non-zeros"
            )
        if on_invalid != "top2":
            raise ValueError(f"on_invalid must be 'raise' or 'top2', got {on_invalid!r}")
        # stable top-2 by magnitude, ties to the lower index
        order = np.argsort(-mag, axis=-1, kind="stable")[..., :2]
        keep = np.zeros_like(nz)
        np.put_along_axis(keep, order, True, axis=-1)
        keep |= ~bad[..., None]
        grp = np.where(keep, grp, 0).astype(bits.dtype)
        bits = grp.reshape(m, k)
        nz = (grp & _mag_mask(es)) != 0
    # idx0: first non-zero among 0..2, else 2
    first = np.full((m, k // 4), 2, dtype=np.int64)
    for i in (2, 1, 0):
        first = np.where(nz[..., i], i, first)
    # idx1: next non-zero after idx0, else 3
    second = np.full((m, k // 4), 3, dtype=np.int64)
    for j in (3, 2, 1):
        second = np.where(nz[..., j] & (j > first), j, second)
    return first, second, bits


def compress(a: np.ndarray, *, strict: bool = True, on_invalid: str = "raise") -> np.ndarray:
    """cuSPARSELt's compressed buffer (uint8, 1-D) of the 2:4 matrix ``a`` (m, k).

    ``a`` is bfloat16/float16/uint16 or float8_e4m3fn/uint8 (any 1- or 2-byte
    dtype; only the bits matter).
    """
    bits = _bits(a)
    m, k = bits.shape
    es = bits.dtype.itemsize
    _check_shape(m, k, es, strict=strict)
    i0, i1, bits = pair_codes(bits, on_invalid=on_invalid)
    grp = bits.reshape(m, k // 4, 4)
    v0 = np.take_along_axis(grp, i0[..., None], axis=-1)[..., 0]
    v1 = np.take_along_axis(grp, i1[..., None], axis=-1)[..., 0]
    values = np.stack([v0, v1], axis=-1).reshape(m, k // 2).astype(bits.dtype)
    mr = -(-m // 64) * 64
    kc = metadata_cols(k, es)
    nibbles = np.full(mr * kc // 4, PAD_CODE, dtype=np.uint8)
    r, g = np.meshgrid(np.arange(m), np.arange(k // 4), indexing="ij")
    nibbles[nibble_index(r, g, k, es)] = (i0 | (i1 << 2)).astype(np.uint8)
    meta = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)
    values_bytes = values.astype(values.dtype.newbyteorder("<")).view(np.uint8).reshape(-1)
    return np.concatenate([values_bytes, meta])


def split(buf: np.ndarray, m: int, k: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The (values bits (m, k/2), metadata bytes) of a compressed buffer."""
    es = element_size(dtype)
    buf = np.asarray(buf, dtype=np.uint8).reshape(-1)
    n = compressed_nbytes(m, k, dtype)
    if buf.size != n:
        raise ValueError(f"a compressed {m} x {k} matrix of {es}-byte elements has {n} bytes, got {buf.size}")
    vb = m * (k // 2) * es
    values = buf[:vb].view("<u2" if es == 2 else np.uint8).reshape(m, k // 2)
    return values, buf[vb:]


def read_nibbles(meta: np.ndarray) -> np.ndarray:
    """Metadata bytes -> nibbles (nibble q = low half of byte q//2 if q even)."""
    meta = np.asarray(meta, dtype=np.uint8)
    out = np.empty(meta.size * 2, dtype=np.uint8)
    out[0::2] = meta & 0xF
    out[1::2] = meta >> 4
    return out


def decompress(buf: np.ndarray, m: int, k: int, dtype) -> np.ndarray:
    """The dense (m, k) matrix of a compressed buffer, in ``dtype`` (bits exact)."""
    dtype = np.dtype(dtype)
    es = element_size(dtype)
    values, meta = split(buf, m, k, dtype)
    nib = read_nibbles(meta)
    r, g = np.meshgrid(np.arange(m), np.arange(k // 4), indexing="ij")
    code = nib[nibble_index(r, g, k, es)].astype(np.int64)
    i0, i1 = code & 3, code >> 2
    if np.any(i0 >= i1):
        raise ValueError("corrupt metadata: a code with idx0 >= idx1")
    out = np.zeros((m, k // 4, 4), dtype=values.dtype)
    vals = values.reshape(m, k // 4, 2)
    np.put_along_axis(out, i0[..., None], vals[..., :1], axis=-1)
    np.put_along_axis(out, i1[..., None], vals[..., 1:], axis=-1)
    return out.reshape(m, k).astype(values.dtype.newbyteorder("=")).view(dtype)
