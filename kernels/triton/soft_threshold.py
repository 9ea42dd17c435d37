"""S-STE's ``beta * soft_threshold(W)`` fused with packing (2:4 along K).

Reference twin: ``compress_24(beta * sparse24_jax.soft_threshold_24(W), nonzero)``
(what ``project_weight(method="sste")`` + ``prepare_weight`` compute in two
passes). Per group of 4: ``t`` = 2nd smallest ``|a|``,
``out = sign(a) * max(|a| - t, 0) * beta``, float32, cast to the output dtype.
The kept positions are the non-zeros of ``out`` (at most two).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from ._pack import load_chunk8, packed_launch, pick, positions, store_packed
from ._runtime import jt


@triton.jit
def _soft_group(x0, x1, x2, x3, beta):
    m0 = tl.abs(x0)
    m1 = tl.abs(x1)
    m2 = tl.abs(x2)
    m3 = tl.abs(x3)
    # 2nd smallest of four: min(max(min01, min23), min(max01, max23))
    t = tl.minimum(
        tl.maximum(tl.minimum(m0, m1), tl.minimum(m2, m3)),
        tl.minimum(tl.maximum(m0, m1), tl.maximum(m2, m3)),
    )
    r0 = tl.maximum(m0 - t, 0.0)
    r1 = tl.maximum(m1 - t, 0.0)
    r2 = tl.maximum(m2 - t, 0.0)
    r3 = tl.maximum(m3 - t, 0.0)
    # sign(a) * r: r is 0 where a is 0, so the sign of 0 does not matter;
    # beta multiplies last, as the reference's beta * S(W)
    y0 = tl.where(x0 < 0, -r0, r0) * beta
    y1 = tl.where(x1 < 0, -r1, r1) * beta
    y2 = tl.where(x2 < 0, -r2, r2) * beta
    y3 = tl.where(x3 < 0, -r3, r3) * beta
    i0, i1 = positions(r0 > 0, r1 > 0, r2 > 0, r3 > 0)
    # unkept named positions hold +0 (r == 0 there, and 0 * beta could be -0)
    v0 = tl.where(pick(i0, r0, r1, r2, r3) > 0, pick(i0, y0, y1, y2, y3), 0.0)
    v1 = tl.where(pick(i1, r0, r1, r2, r3) > 0, pick(i1, y0, y1, y2, y3), 0.0)
    return i0, i1, v0, v1


@triton.jit
def soft_threshold24_kernel(
    w_ptr,  # (N, K) row-major, any float dtype
    beta_ptr,  # (1,) float32
    val_ptr, meta_ptr,  # outputs: (N, K/2) in the output dtype, (N, ceil(K/8)) uint8
    N_ROWS: tl.constexpr, N_Q: tl.constexpr,  # N, K (constexpr: vectorised accesses)
    BLOCK_ROWS: tl.constexpr,
    BLOCK_CHUNKS: tl.constexpr,
):
    """Packed ``beta * S(W)``. Reference: ``soft_threshold_24`` + ``compress_24``."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    chunk_start = tl.program_id(1) * BLOCK_CHUNKS
    x0, x1, x2, x3, x4, x5, x6, x7 = load_chunk8(
        w_ptr, rows, chunk_start, N_ROWS, N_Q, N_Q, 1, BLOCK_ROWS, BLOCK_CHUNKS
    )
    beta = tl.load(beta_ptr).to(tl.float32)
    ia0, ia1, va0, va1 = _soft_group(x0, x1, x2, x3, beta)
    ib0, ib1, vb0, vb1 = _soft_group(x4, x5, x6, x7, beta)
    store_packed(
        val_ptr, meta_ptr, rows, chunk_start,
        va0, va1, ia0, ia1, vb0, vb1, ib0, ib1,
        N_ROWS, N_Q, BLOCK_CHUNKS,
    )


BLOCK_ROWS = 32
BLOCK_CHUNKS = 32


def soft_threshold_compress(
    w: jax.Array, beta: jax.Array, dtype=None
) -> tuple[jax.Array, jax.Array]:
    """Packed ``beta * soft_threshold_24(w)`` (2:4 along the last axis of the
    ``(N, K)`` weight), values in ``dtype`` (default ``w.dtype``)."""
    if w.ndim != 2 or w.shape[1] % 4:
        raise ValueError(f"w must be (N, K) with K a multiple of 4, got shape {w.shape}")
    n, k = w.shape
    return jt().triton_call(
        w, jnp.reshape(beta, (1,)).astype(jnp.float32),
        kernel=soft_threshold24_kernel,
        **packed_launch(n, k, w.dtype if dtype is None else dtype, BLOCK_ROWS, BLOCK_CHUNKS),
        N_ROWS=n,
        N_Q=k,
        BLOCK_ROWS=BLOCK_ROWS,
        BLOCK_CHUNKS=BLOCK_CHUNKS,
        num_warps=4,
    )
