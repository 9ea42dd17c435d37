"""Transposable 2:4 mask search: the exact max-L1 pattern of every 4x4 block.

Reference twin: :func:`sparse24_jax.transposable_mask_24`, which scores the 90
candidate patterns as one ``patterns (90, 16) @ |blocks| (16, B)`` product. Here
each program holds a tile of blocks in registers (16 float32 tiles, one per
block element), scores the 90 patterns with adds and keeps a running argmax:
one read of ``W``, one write of the mask, no (90, B) score matrix in memory.

Candidate order = the reference's (``TRANSPOSABLE_PATTERNS``): ``itertools.product``
over rows 0..3 (row 0 outermost), each row one of the pairs (0,1), (0,2),
(0,3), (1,2), (1,3), (2,3), kept when every column is used twice. The loops
below walk the same product with compile-time (``tl.static_range``) indices
and skip invalid patterns at compile time, so only the 90 valid scores are
emitted. A strict ``>`` keeps the first maximum, as ``jnp.argmax`` does.

Scores are float32 sums of ``|w|`` (cast to float32). Integer-valued inputs
(and any inputs whose sums are exact) give bitwise the reference's ties; for
general inputs the summation order may differ from XLA's dot in the last bit,
which can only flip a choice between patterns whose scores differ by an
ulp. NaN inputs: unspecified (the reference picks the first NaN score).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from ._runtime import cdiv, jt


@triton.jit
def _add_pair(acc, p: tl.constexpr, x0, x1, x2, x3):
    """``(acc + x_a) + x_b`` for row pair ``p`` (0..5 = (0,1), (0,2), (0,3),
    (1,2), (1,3), (2,3)); ``x_a + x_b`` when ``acc`` is None (row 0)."""
    if p == 0:
        xa = x0
        xb = x1
    elif p == 1:
        xa = x0
        xb = x2
    elif p == 2:
        xa = x0
        xb = x3
    elif p == 3:
        xa = x1
        xb = x2
    elif p == 4:
        xa = x1
        xb = x3
    else:
        xa = x2
        xb = x3
    if acc is None:
        s = xa + xb
    else:
        s = (acc + xa) + xb
    return s


@triton.jit
def _keeps(p, col: tl.constexpr):
    """Does pair ``p`` (a tile of 0..5) keep column ``col``?"""
    if col == 0:
        k = p < 3
    elif col == 1:
        k = (p == 0) | (p == 3) | (p == 4)
    elif col == 2:
        k = (p == 1) | (p == 3) | (p == 5)
    else:
        k = (p == 2) | (p == 4) | (p == 5)
    return k


@triton.jit
def _load_row(w_ptr, r, c, ok, N_COLS: tl.constexpr, BLOCKS_R: tl.constexpr, BLOCKS_C: tl.constexpr):
    """|w| (float32) of one row ``r`` of every block: one contiguous
    ``(BLOCKS_R, 4 BLOCKS_C)`` load (vectorised: ``N_COLS`` is constexpr),
    split in registers into the four block columns."""
    t = tl.abs(tl.load(w_ptr + r[:, None] * N_COLS + c[None, :], mask=ok, other=0.0).to(tl.float32))
    t = tl.reshape(t, (BLOCKS_R, BLOCKS_C, 2, 2))  # column j = 2a + b at [..., a, b]
    even, odd = tl.split(t)
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    return x0, x1, x2, x3


@triton.jit
def _store_row(out_ptr, r, c, p, ok, N_COLS: tl.constexpr):
    """Store one row of every block of the mask as uint8 0/1: the four block
    columns interleaved back into one contiguous (vectorised) store."""
    k0 = _keeps(p, 0).to(tl.uint8)
    k1 = _keeps(p, 1).to(tl.uint8)
    k2 = _keeps(p, 2).to(tl.uint8)
    k3 = _keeps(p, 3).to(tl.uint8)
    k = tl.interleave(tl.interleave(k0, k2), tl.interleave(k1, k3))
    tl.store(out_ptr + r[:, None] * N_COLS + c[None, :], k, mask=ok)


@triton.jit
def transposable_mask_kernel(
    w_ptr,  # (N, K) row-major, any float dtype
    out_ptr,  # (N, K) uint8: 1 = kept
    # N, K (multiples of 4); constexpr (JAX shapes are static): known
    # alignment, so the accesses are vectorised (README.md, "Access widths")
    N_ROWS: tl.constexpr, N_COLS: tl.constexpr,
    BLOCKS_R: tl.constexpr,  # 4x4 blocks per program along N
    BLOCKS_C: tl.constexpr,  # ... along K
):
    """Per 4x4 block, the transposable pattern of max kept L1 (first on ties).
    Reference: ``sparse24_jax.transposable_mask_24``."""
    br = tl.program_id(0) * BLOCKS_R + tl.arange(0, BLOCKS_R)
    # the program's columns: 4 BLOCKS_C contiguous ones, block bc = c // 4
    c = tl.program_id(1) * (4 * BLOCKS_C) + tl.arange(0, 4 * BLOCKS_C)
    # (c < N_COLS is bc < N_COLS / 4: N_COLS is a multiple of 4)
    ok = (br < N_ROWS // 4)[:, None] & (c < N_COLS)[None, :]
    # row i of every block: 4*br + i; a<i><j> = |w| of element (i, j), float32
    r0 = 4 * br
    a00, a01, a02, a03 = _load_row(w_ptr, r0, c, ok, N_COLS, BLOCKS_R, BLOCKS_C)
    a10, a11, a12, a13 = _load_row(w_ptr, r0 + 1, c, ok, N_COLS, BLOCKS_R, BLOCKS_C)
    a20, a21, a22, a23 = _load_row(w_ptr, r0 + 2, c, ok, N_COLS, BLOCKS_R, BLOCKS_C)
    a30, a31, a32, a33 = _load_row(w_ptr, r0 + 3, c, ok, N_COLS, BLOCKS_R, BLOCKS_C)

    best = tl.full((BLOCKS_R, BLOCKS_C), float("-inf"), tl.float32)
    z = tl.zeros((BLOCKS_R, BLOCKS_C), tl.int32)
    bp0 = z
    bp1 = z
    bp2 = z
    bp3 = z
    # Row pair p covers columns c_a(p) < c_b(p); the column use count of a
    # pattern is tracked in 4-bit fields (one per column), so "every column
    # used twice" is "the four rows' codes sum to 0x2222", a compile-time test.
    # Scores add the 8 kept |w| in row-major order; partial sums live at the
    # loop level they depend on, so the 90 scores share their prefixes.
    for p0 in tl.static_range(6):
        s0 = _add_pair(None, p0, a00, a01, a02, a03)
        for p1 in tl.static_range(6):
            s1 = _add_pair(s0, p1, a10, a11, a12, a13)
            for p2 in tl.static_range(6):
                s2 = _add_pair(s1, p2, a20, a21, a22, a23)
                for p3 in tl.static_range(6):
                    if _CODE[p0] + _CODE[p1] + _CODE[p2] + _CODE[p3] == 0x2222:
                        s = _add_pair(s2, p3, a30, a31, a32, a33)
                        better = s > best
                        best = tl.where(better, s, best)
                        bp0 = tl.where(better, p0, bp0)
                        bp1 = tl.where(better, p1, bp1)
                        bp2 = tl.where(better, p2, bp2)
                        bp3 = tl.where(better, p3, bp3)
    _store_row(out_ptr, r0, c, bp0, ok, N_COLS)
    _store_row(out_ptr, r0 + 1, c, bp1, ok, N_COLS)
    _store_row(out_ptr, r0 + 2, c, bp2, ok, N_COLS)
    _store_row(out_ptr, r0 + 3, c, bp3, ok, N_COLS)


# 4-bit column-use code of each row pair: (a, b) -> 1 << 4a | 1 << 4b.
_CODE = tl.constexpr((0x0011, 0x0101, 0x1001, 0x0110, 0x1010, 0x1100))

BLOCKS_R = 8
BLOCKS_C = 32


def transposable_mask(w: jax.Array) -> jax.Array:
    """Boolean ``(N, K)`` transposable 2:4 mask of ``w``; equals
    ``sparse24_jax.transposable_mask_24(w)`` (see module doc for ties)."""
    if w.ndim != 2 or w.shape[0] % 4 or w.shape[1] % 4:
        raise ValueError(f"w must be (N, K) with N and K multiples of 4, got shape {w.shape}")
    n, k = w.shape
    out = jt().triton_call(
        w,
        kernel=transposable_mask_kernel,
        out_shape=jax.ShapeDtypeStruct((n, k), jnp.uint8),
        grid=(cdiv(n // 4, BLOCKS_R), cdiv(k // 4, BLOCKS_C)),
        N_ROWS=n,
        N_COLS=k,
        BLOCKS_R=BLOCKS_R,
        BLOCKS_C=BLOCKS_C,
        num_warps=4,
    )
    return out != 0
