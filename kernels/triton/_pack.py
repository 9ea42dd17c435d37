"""Shared ``@triton.jit`` helpers: reading groups of 8 and writing the packed 2:4 format.

The packed format is the project's reference format (``sparse24_jax.packing``),
so every kernel here is checked against ``compress_24`` byte for byte:

* values ``(rows, R/2)``: each group of 4's two kept elements, ascending position;
* meta ``(rows, ceil(R/8))`` uint8: per group the code ``idx0 | idx1 << 2``
  (idx0 < idx1), even group in the low nibble, a missing last group 0xE.

Kernels work on *chunks* of 8 elements along the 2:4 axis (two groups, one
meta byte), laid out as a ``(BLOCK_ROWS, BLOCK_CHUNKS)`` tile; element ``j`` of
each chunk is its own tile (``x0 .. x7``). Source element ``(row, q)`` lives at
``ptr + row * stride_row + q * stride_q``, so one kernel reads ``W`` (2:4 along
its rows), ``W.T`` or ``dZ.T`` without a transpose pass.
"""

import triton
import triton.language as tl


@triton.jit
def load_chunk8(ptr, rows, chunks, n_rows, n_q, stride_row, stride_q):
    """The 8 elements of each (row, chunk) as eight (BLOCK_ROWS, BLOCK_CHUNKS)
    float32 tiles; out-of-range elements read 0."""
    base = ptr + rows[:, None] * stride_row + (chunks * 8)[None, :] * stride_q
    row_ok = (rows < n_rows)[:, None]
    q = (chunks * 8)[None, :]
    x0 = tl.load(base, mask=row_ok & (q < n_q), other=0.0).to(tl.float32)
    x1 = tl.load(base + stride_q, mask=row_ok & (q + 1 < n_q), other=0.0).to(tl.float32)
    x2 = tl.load(base + 2 * stride_q, mask=row_ok & (q + 2 < n_q), other=0.0).to(tl.float32)
    x3 = tl.load(base + 3 * stride_q, mask=row_ok & (q + 3 < n_q), other=0.0).to(tl.float32)
    x4 = tl.load(base + 4 * stride_q, mask=row_ok & (q + 4 < n_q), other=0.0).to(tl.float32)
    x5 = tl.load(base + 5 * stride_q, mask=row_ok & (q + 5 < n_q), other=0.0).to(tl.float32)
    x6 = tl.load(base + 6 * stride_q, mask=row_ok & (q + 6 < n_q), other=0.0).to(tl.float32)
    x7 = tl.load(base + 7 * stride_q, mask=row_ok & (q + 7 < n_q), other=0.0).to(tl.float32)
    return x0, x1, x2, x3, x4, x5, x6, x7


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
    val_ptr, meta_ptr, rows, chunk_start, n_rows, n_q,
    a0, a1, ia0, ia1, b0, b1, ib0, ib1,
    BLOCK_CHUNKS: tl.constexpr,
):
    """Write one tile of packed output.

    ``a0, a1`` / ``b0, b1``: the kept values (any float dtype, cast to
    ``val_ptr``'s) of the chunk's first / second group; ``ia*`` / ``ib*``
    their positions. Rows are ``rows``, chunks ``chunk_start + arange``; the
    chunk's values go to columns
    ``4c .. 4c+3`` of ``(n_rows, n_q/2)`` and its meta byte to column ``c`` of
    ``(n_rows, ceil(n_q/8))``.
    """
    half = n_q // 2
    meta_w = (n_q + 7) // 8
    row_ok = (rows < n_rows)[:, None]
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
    b_ok = (chunks * 8 + 4 < n_q)[None, :]
    code_b = tl.where(b_ok, ib0 | (ib1 << 2), 0xE)
    byte = (code_a | (code_b << 4)).to(tl.uint8)
    tl.store(
        meta_ptr + rows[:, None] * meta_w + chunks[None, :],
        byte,
        mask=row_ok & (chunks < meta_w)[None, :],
    )
