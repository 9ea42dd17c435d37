"""Prune + pack a 2:4 operand (``W`` along K, or ``W.T`` along N) in one pass.

Reference twin: :func:`sparse24_jax.compress_24` (same bytes). With no mask the
kept elements are the non-zeros (``+0`` and ``-0`` count as zero), which is what
``prepare_weight`` needs: ``W_s`` arrives already projected.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from ._pack import load_chunk8, pack_chunk8, pack_groups, packed_launch
from ._runtime import cdiv, jt


@triton.jit
def compress24_kernel(
    x_ptr, keep_ptr,  # inputs: values, and kept flags (uint8) if HAS_MASK
    val_ptr, meta_ptr,  # outputs: (N_ROWS, N_Q/2), (N_ROWS, ceil(N_Q/8)) uint8
    # (rows, 2:4 axis) view of x and keep; constexpr (JAX shapes are static):
    # known alignment, so the accesses are vectorised (README.md, "Access widths")
    N_ROWS: tl.constexpr, N_Q: tl.constexpr, STRIDE_ROW: tl.constexpr, STRIDE_Q: tl.constexpr,
    HAS_MASK: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_CHUNKS: tl.constexpr,
):
    """Pack ``where(keep, x, 0)`` 2:4 along ``q``; reference: ``compress_24``."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    chunk_start = tl.program_id(1) * BLOCK_CHUNKS
    x0, x1, x2, x3, x4, x5, x6, x7 = load_chunk8(
        x_ptr, rows, chunk_start, N_ROWS, N_Q, STRIDE_ROW, STRIDE_Q, BLOCK_ROWS, BLOCK_CHUNKS
    )
    if HAS_MASK:
        m0, m1, m2, m3, m4, m5, m6, m7 = load_chunk8(
            keep_ptr, rows, chunk_start, N_ROWS, N_Q, STRIDE_ROW, STRIDE_Q, BLOCK_ROWS, BLOCK_CHUNKS
        )
        k0 = m0 != 0
        k1 = m1 != 0
        k2 = m2 != 0
        k3 = m3 != 0
        k4 = m4 != 0
        k5 = m5 != 0
        k6 = m6 != 0
        k7 = m7 != 0
    else:
        k0 = x0 != 0.0
        k1 = x1 != 0.0
        k2 = x2 != 0.0
        k3 = x3 != 0.0
        k4 = x4 != 0.0
        k5 = x5 != 0.0
        k6 = x6 != 0.0
        k7 = x7 != 0.0
    # An unkept position that still gets named (a group with fewer than 2
    # kept) stores +0, as the reference's where(mask, x, 0) does (also for -0).
    x0 = tl.where(k0, x0, 0.0)
    x1 = tl.where(k1, x1, 0.0)
    x2 = tl.where(k2, x2, 0.0)
    x3 = tl.where(k3, x3, 0.0)
    x4 = tl.where(k4, x4, 0.0)
    x5 = tl.where(k5, x5, 0.0)
    x6 = tl.where(k6, x6, 0.0)
    x7 = tl.where(k7, x7, 0.0)
    pack_groups(
        val_ptr, meta_ptr, rows, chunk_start,
        x0, x1, x2, x3, x4, x5, x6, x7, k0, k1, k2, k3, k4, k5, k6, k7,
        N_ROWS, N_Q, BLOCK_CHUNKS,
    )


BLOCK_ROWS = 32
BLOCK_CHUNKS = 32


def compress(
    x: jax.Array, mask: jax.Array | None = None, *, transpose: bool = False, dtype=None
) -> tuple[jax.Array, jax.Array]:
    """Pack ``x`` (2-D) 2:4 along its last axis, or, with ``transpose=True``,
    ``x.T`` 2:4 along ``x``'s first axis (read in place, no transpose pass).

    Keeps ``mask`` (same shape as ``x``) or, if None, the non-zeros (at most two
    per group; a group with more keeps its first two). Returns ``(values,
    meta)`` exactly as ``compress_24(x or x.T, mask)``, values cast to
    ``dtype`` (default ``x.dtype``): pruning a float32 master weight straight
    into bfloat16 packed values is one pass.
    """
    if x.ndim != 2:
        raise ValueError(f"compress takes a 2-D array, got shape {x.shape}")
    r, c = x.shape
    n_rows, n_q = (c, r) if transpose else (r, c)
    if n_q % 4:
        raise ValueError(f"the 2:4 axis has length {n_q}: pad it to a multiple of 4")
    stride_row, stride_q = (1, c) if transpose else (c, 1)
    keep = x if mask is None else mask.astype(jnp.uint8)
    return jt().triton_call(
        x, keep,
        kernel=compress24_kernel,
        **packed_launch(n_rows, n_q, x.dtype if dtype is None else dtype, BLOCK_ROWS, BLOCK_CHUNKS),
        N_ROWS=n_rows,
        N_Q=n_q,
        STRIDE_ROW=stride_row,
        STRIDE_Q=stride_q,
        HAS_MASK=mask is not None,
        BLOCK_ROWS=BLOCK_ROWS,
        BLOCK_CHUNKS=BLOCK_CHUNKS,
        num_warps=4,
    )


@triton.jit
def compress24_both_kernel(
    x_ptr, keep_ptr,  # inputs: (N, K) row-major values, and kept flags (uint8) if HAS_MASK
    val_ptr, meta_ptr,  # outputs: W packed along K: (N, K/2), (N, ceil(K/8)) uint8
    tval_ptr, tmeta_ptr,  # W.T packed along N: (K, N/2), (K, ceil(N/8)) uint8
    N: tl.constexpr, K: tl.constexpr,  # constexpr: aligned, vectorised accesses
    HAS_MASK: tl.constexpr,
    BLOCK_N: tl.constexpr,  # rows of W per program (a multiple of 8: whole chunks of W.T)
    BLOCK_CHUNKS: tl.constexpr,  # chunks of 8 along K per program
):
    """Pack ``where(keep, W, 0)`` 2:4 along K *and* along N from one read of a
    ``(BLOCK_N, 8 BLOCK_CHUNKS)`` tile: the W.T half transposes the tile in
    registers. Reference: ``compress_24(W, keep)`` and ``compress_24(W.T, keep.T)``."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    chunk_start = tl.program_id(1) * BLOCK_CHUNKS
    cols = chunk_start * 8 + tl.arange(0, 8 * BLOCK_CHUNKS)
    ok = (rows < N)[:, None] & (cols < K)[None, :]
    offs = rows[:, None] * K + cols[None, :]
    t = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if HAS_MASK:
        keep = tl.load(keep_ptr + offs, mask=ok, other=0) != 0
    else:
        keep = t != 0.0
    pack_chunk8(val_ptr, meta_ptr, rows, chunk_start, t, keep, N, K, BLOCK_N, BLOCK_CHUNKS)
    t_chunks: tl.constexpr = BLOCK_N // 8
    pack_chunk8(tval_ptr, tmeta_ptr, cols, tl.program_id(0) * t_chunks, tl.trans(t), tl.trans(keep),
                K, N, 8 * BLOCK_CHUNKS, t_chunks)


BOTH_BLOCK_N = 64
BOTH_BLOCK_CHUNKS = 8


def compress_both(
    x: jax.Array, mask: jax.Array | None = None, *, dtype=None
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """``(compress(x, mask), compress(x, mask, transpose=True))`` in one pass
    over ``x`` (and ``mask``): what a transposable 2:4 weight needs every
    optimizer step (W for the forward, W.T for the input gradient). Same
    bytes as the two calls; ``x`` is (N, K) with N and K multiples of 4."""
    if x.ndim != 2 or x.shape[0] % 4 or x.shape[1] % 4:
        raise ValueError(f"compress_both takes an (N, K) array with N and K multiples of 4, got shape {x.shape}")
    n, k = x.shape
    dt = x.dtype if dtype is None else dtype
    keep = x if mask is None else mask.astype(jnp.uint8)
    w_out = packed_launch(n, k, dt, BOTH_BLOCK_N, BOTH_BLOCK_CHUNKS)["out_shape"]
    t_out = packed_launch(k, n, dt, 1, 1)["out_shape"]
    vals, meta, t_vals, t_meta = jt().triton_call(
        x, keep,
        kernel=compress24_both_kernel,
        out_shape=(*w_out, *t_out),
        grid=(cdiv(n, BOTH_BLOCK_N), cdiv(k, 8 * BOTH_BLOCK_CHUNKS)),
        N=n,
        K=k,
        HAS_MASK=mask is not None,
        BLOCK_N=BOTH_BLOCK_N,
        BLOCK_CHUNKS=BOTH_BLOCK_CHUNKS,
        num_warps=4,
    )
    return (vals, meta), (t_vals, t_meta)
