"""Shared ``@triton.jit`` helpers: reading groups of 8 and writing the packed 2:4 format.

The packed format is the project's reference format (``sparse24_jax.packing``),
so every kernel here is checked against ``compress_24`` byte for byte:

* values ``(rows, R/2)``: each group of 4's two kept elements, ascending position;
* meta ``(rows, ceil(R/8))`` uint8: per group the code ``idx0 | idx1 << 2``
  (idx0 < idx1), even group in the low nibble, a missing last group 0xE.

Kernels work on *chunks* of 8 elements along the 2:4 axis (two groups, one
meta byte), laid out as a ``(BLOCK_ROWS, BLOCK_CHUNKS)`` tile; element ``j`` of
each chunk is its own tile (``x0 .. x7``). Source element ``(row, q)`` lives at
``ptr + row * STRIDE_ROW + q * STRIDE_Q``, so one kernel reads ``W`` (2:4 along
its rows), ``W.T`` or ``dZ.T`` without a transpose pass.
"""

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from ._runtime import cdiv


def packed_launch(n_rows: int, n_q: int, dtype, block_rows: int, block_chunks: int) -> dict:
    """``triton_call``'s ``out_shape`` and ``grid`` for a kernel that writes
    the packed format of an ``(n_rows, n_q)`` operand (2:4 along ``q``) with
    ``store_packed``: values ``(n_rows, n_q/2)`` in ``dtype`` and meta
    ``(n_rows, ceil(n_q/8))`` uint8; one program per ``block_rows`` rows and
    ``block_chunks`` chunks of 8."""
    return dict(
        out_shape=(
            jax.ShapeDtypeStruct((n_rows, n_q // 2), jnp.dtype(dtype)),
            jax.ShapeDtypeStruct((n_rows, cdiv(n_q, 8)), jnp.uint8),
        ),
        grid=(cdiv(n_rows, block_rows), cdiv(n_q, 8 * block_chunks)),
    )


@triton.jit
def load_chunk8(
    ptr, rows, chunk_start,
    N_ROWS: tl.constexpr, N_Q: tl.constexpr, STRIDE_ROW: tl.constexpr, STRIDE_Q: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_CHUNKS: tl.constexpr,
):
    """The 8 elements of each (row, chunk) as eight (BLOCK_ROWS, BLOCK_CHUNKS)
    float32 tiles; out-of-range elements read 0. Chunks are
    ``chunk_start + arange(BLOCK_CHUNKS)``.

    Sizes and strides are ``tl.constexpr`` (see README.md, "Access widths"):
    with runtime ints the compiler cannot prove any alignment and every
    access is one element wide. If ``q`` is the contiguous axis
    (``STRIDE_Q == 1``) the tile is read as one contiguous
    ``(BLOCK_ROWS, 8 BLOCK_CHUNKS)`` load and split into the eight tiles in
    registers (eight stride-8 loads cannot be vectorised); otherwise
    (``STRIDE_ROW == 1``, e.g. ``W.T`` or ``dZ.T``) each of the eight loads is
    contiguous along the rows.
    """
    row_ok = (rows < N_ROWS)[:, None]
    if STRIDE_Q == 1:
        q = chunk_start * 8 + tl.arange(0, 8 * BLOCK_CHUNKS)
        t = tl.load(
            ptr + rows[:, None] * STRIDE_ROW + q[None, :],
            mask=row_ok & (q < N_Q)[None, :], other=0.0,
        ).to(tl.float32)
        x0, x1, x2, x3, x4, x5, x6, x7 = split_chunk8(t, BLOCK_ROWS, BLOCK_CHUNKS)
    else:
        chunks = chunk_start + tl.arange(0, BLOCK_CHUNKS)
        q = (chunks * 8)[None, :]
        base = ptr + rows[:, None] * STRIDE_ROW + q * STRIDE_Q
        x0 = tl.load(base, mask=row_ok & (q < N_Q), other=0.0).to(tl.float32)
        x1 = tl.load(base + STRIDE_Q, mask=row_ok & (q + 1 < N_Q), other=0.0).to(tl.float32)
        x2 = tl.load(base + 2 * STRIDE_Q, mask=row_ok & (q + 2 < N_Q), other=0.0).to(tl.float32)
        x3 = tl.load(base + 3 * STRIDE_Q, mask=row_ok & (q + 3 < N_Q), other=0.0).to(tl.float32)
        x4 = tl.load(base + 4 * STRIDE_Q, mask=row_ok & (q + 4 < N_Q), other=0.0).to(tl.float32)
        x5 = tl.load(base + 5 * STRIDE_Q, mask=row_ok & (q + 5 < N_Q), other=0.0).to(tl.float32)
        x6 = tl.load(base + 6 * STRIDE_Q, mask=row_ok & (q + 6 < N_Q), other=0.0).to(tl.float32)
        x7 = tl.load(base + 7 * STRIDE_Q, mask=row_ok & (q + 7 < N_Q), other=0.0).to(tl.float32)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def split_chunk8(t, BLOCK_ROWS: tl.constexpr, BLOCK_CHUNKS: tl.constexpr):
    """A ``(BLOCK_ROWS, 8 BLOCK_CHUNKS)`` register tile, contiguous along the
    2:4 axis, as the eight ``(BLOCK_ROWS, BLOCK_CHUNKS)`` tiles ``x0 .. x7``
    (element ``j`` of every chunk of 8), split in registers."""
    # element j = 4a + 2b + c of a chunk sits at [..., a, b, c]
    t = tl.reshape(t, (BLOCK_ROWS, BLOCK_CHUNKS, 2, 2, 2))
    even, odd = tl.split(t)  # c = 0 / 1: (.., a, b)
    e0, e1 = tl.split(even)  # b = 0 / 1: (.., a)
    o0, o1 = tl.split(odd)
    x0, x4 = tl.split(e0)
    x2, x6 = tl.split(e1)
    x1, x5 = tl.split(o0)
    x3, x7 = tl.split(o1)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def pack_chunk8(
    val_ptr, meta_ptr, rows, chunk_start, t, keep,
    N_ROWS: tl.constexpr, N_Q: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_CHUNKS: tl.constexpr,
):
    """Prune and pack a ``(BLOCK_ROWS, 8 BLOCK_CHUNKS)`` register tile ``t``
    (float32, contiguous along the 2:4 axis) with its kept flags ``keep``
    (same shape, bool): the rows are ``rows``, the chunks of 8
    ``chunk_start + arange(BLOCK_CHUNKS)``; written with ``pack_groups``."""
    t = tl.where(keep, t, 0.0)  # an unkept position that still gets named stores +0 (reference)
    x0, x1, x2, x3, x4, x5, x6, x7 = split_chunk8(t, BLOCK_ROWS, BLOCK_CHUNKS)
    k0, k1, k2, k3, k4, k5, k6, k7 = split_chunk8(keep.to(tl.int8), BLOCK_ROWS, BLOCK_CHUNKS)
    pack_groups(
        val_ptr, meta_ptr, rows, chunk_start,
        x0, x1, x2, x3, x4, x5, x6, x7,
        k0 != 0, k1 != 0, k2 != 0, k3 != 0, k4 != 0, k5 != 0, k6 != 0, k7 != 0,
        N_ROWS, N_Q, BLOCK_CHUNKS,
    )


@triton.jit
def pack_groups(
    val_ptr, meta_ptr, rows, chunk_start,
    x0, x1, x2, x3, x4, x5, x6, x7,
    k0, k1, k2, k3, k4, k5, k6, k7,
    N_ROWS: tl.constexpr, N_Q: tl.constexpr, BLOCK_CHUNKS: tl.constexpr,
):
    """Pack one tile of chunks given as its eight element tiles ``x0 .. x7``
    (float32, already pruned: 0 where not kept) and their kept flags
    ``k0 .. k7`` (bool), with ``store_packed``: each group's two named
    positions (``positions``) and their values."""
    ia0, ia1 = positions(k0, k1, k2, k3)
    ib0, ib1 = positions(k4, k5, k6, k7)
    # Values went through float32 (exact for bf16/fp16/fp32) and are cast back.
    store_packed(
        val_ptr, meta_ptr, rows, chunk_start,
        pick(ia0, x0, x1, x2, x3), pick(ia1, x0, x1, x2, x3), ia0, ia1,
        pick(ib0, x4, x5, x6, x7), pick(ib1, x4, x5, x6, x7), ib0, ib1,
        N_ROWS, N_Q, BLOCK_CHUNKS,
    )


@triton.jit
def positions(k0, k1, k2, k3):
    """(idx0, idx1) of a group from its four kept flags, the reference rule:
    idx0 = first kept among 0..2, else 2; idx1 = next kept after idx0, else 3.
    (A group with fewer than two kept still names two positions, as cuSPARSELt
    does; the unkept one stores 0.)"""
    idx0 = tl.where(k0, 0, tl.where(k1, 1, 2))
    idx1 = tl.where((idx0 < 1) & k1, 1, tl.where((idx0 < 2) & k2, 2, 3))
    return idx0, idx1


@triton.jit
def pick(idx, x0, x1, x2, x3):
    """Element ``idx`` (0..3, a tile) of the group ``x0 .. x3``."""
    return tl.where(idx == 0, x0, tl.where(idx == 1, x1, tl.where(idx == 2, x2, x3)))


@triton.jit
def store_packed(
    val_ptr, meta_ptr, rows, chunk_start,
    a0, a1, ia0, ia1, b0, b1, ib0, ib1,
    N_ROWS: tl.constexpr, N_Q: tl.constexpr, BLOCK_CHUNKS: tl.constexpr,
):
    """Write one tile of packed output.

    ``a0, a1`` / ``b0, b1``: the kept values (any float dtype, cast to
    ``val_ptr``'s) of the chunk's first / second group; ``ia*`` / ``ib*``
    their positions. Rows are ``rows``, chunks ``chunk_start + arange``; the
    chunk's values go to columns
    ``4c .. 4c+3`` of ``(N_ROWS, N_Q/2)`` and its meta byte to column ``c`` of
    ``(N_ROWS, ceil(N_Q/8))`` (sizes constexpr: aligned, vectorised rows).
    """
    half: tl.constexpr = N_Q // 2
    meta_w: tl.constexpr = (N_Q + 7) // 8
    row_ok = (rows < N_ROWS)[:, None]
    # Interleave the four (rows, chunks) tiles into one (rows, 4*chunks) tile
    # so the store is contiguous along the row (coalesced) instead of four
    # stride-4 stores.
    vals = tl.interleave(tl.interleave(a0, b0), tl.interleave(a1, b1))
    chunks = chunk_start + tl.arange(0, BLOCK_CHUNKS)
    cols = chunk_start * 4 + tl.arange(0, 4 * BLOCK_CHUNKS)
    tl.store(
        val_ptr + rows[:, None] * half + cols[None, :],
        vals.to(val_ptr.dtype.element_ty),
        mask=row_ok & (cols < half)[None, :],
    )
    code_a = ia0 | (ia1 << 2)
    # a chunk whose second group lies past the end (n_q/4 odd) pads with 0xE,
    # like the reference
    b_ok = (chunks * 8 + 4 < N_Q)[None, :]
    code_b = tl.where(b_ok, ib0 | (ib1 << 2), 0xE)
    byte = (code_a | (code_b << 4)).to(tl.uint8)
    tl.store(
        meta_ptr + rows[:, None] * meta_w + chunks[None, :],
        byte,
        mask=row_ok & (chunks < meta_w)[None, :],
    )
