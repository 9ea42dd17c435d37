"""MVUE 2:4 of ``dZ.T`` fused with packing: one read of ``dZ``, one packed write.

Reference twin: :func:`sparse24_jax.mvue_24` (``axis=-1`` on ``dZ.T``) followed
by :func:`sparse24_jax.compress_24`. Same sampler and arithmetic (float32), but
a different random stream (Philox via ``tl.rand4x``, seeded from a JAX key), so
results agree in distribution, not bitwise: tests check unbiasedness, exactly
two named positions per group, and ``kept value == x_i / p_i``.

``dZ`` is ``(M, N)`` row-major; groups are 4 consecutive tokens of one column
(2:4 along M), so each program reads a ``(8 tokens x BLOCK_N)`` slab per chunk
row, coalesced along N, and writes the ``(N, M/2)`` values / ``(N, M/8)`` meta
of ``dZ.T`` coalesced along M (Triton transposes the tile through shared
memory): no transpose pass and no intermediate dense ``S_z(dZ.T)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from ._pack import load_chunk8, packed_launch, store_packed
from ._runtime import jt

#: sparse24_jax.mvue.EPS: added to |x| so every element can be drawn.
EPS = tl.constexpr(1.19209e-07)


@triton.jit
def _mvue_group(x0, x1, x2, x3, u1, u2):
    """One group's two draws: returns the two positions (ascending) and their
    kept values ``x_i / p_i``. Float32, the reference's formulas (with the
    cancellation-free ``S - a_j`` below)."""
    a0 = tl.abs(x0) + EPS
    a1 = tl.abs(x1) + EPS
    a2 = tl.abs(x2) + EPS
    a3 = tl.abs(x3) + EPS
    c0 = a0
    c1 = c0 + a1
    c2 = c1 + a2
    s = c2 + a3
    # first draw: inverse CDF of a / S (the fall-through 3 covers u*S rounding up)
    t1 = u1 * s
    i1 = tl.where(t1 < c0, 0, tl.where(t1 < c1, 1, tl.where(t1 < c2, 2, 3)))
    # second draw among the other three, proportional to a_j / (S - a_i1)
    w0 = tl.where(i1 == 0, 0.0, a0)
    w1 = tl.where(i1 == 1, 0.0, a1)
    w2 = tl.where(i1 == 2, 0.0, a2)
    w3 = tl.where(i1 == 3, 0.0, a3)
    d0 = w0
    d1 = d0 + w1
    d2 = d1 + w2
    t2 = u2 * (d2 + w3)
    i2 = tl.where(t2 < d0, 0, tl.where(t2 < d1, 1, tl.where(t2 < d2, 2, 3)))
    # rounding can fall through to i1 (= 3): take the last other index
    i2 = tl.where(i2 == i1, tl.where(i1 == 3, 2, 3), i2)
    # inclusion probabilities p_i = a_i/S + a_i * sum_{j != i} a_j / (S (S - a_j)).
    # S - a_j is summed from the other three, never subtracted: for a group
    # like (0, 0, 5, 0), S - a_2 would round to 0 in float32 and p to NaN.
    r0 = (a1 + a2) + a3
    r1 = (a0 + a2) + a3
    r2 = (a0 + a1) + a3
    r3 = (a0 + a1) + a2
    q0 = a0 / (s * r0)
    q1 = a1 / (s * r1)
    q2 = a2 / (s * r2)
    q3 = a3 / (s * r3)
    lo = tl.minimum(i1, i2)
    hi = tl.maximum(i1, i2)
    x_lo = tl.where(lo == 0, x0, tl.where(lo == 1, x1, x2))
    a_lo = tl.where(lo == 0, a0, tl.where(lo == 1, a1, a2))
    # sum of q_j over j != lo (lo is 0, 1 or 2), summed directly (no qs - q_lo)
    qo_lo = tl.where(lo == 0, (q1 + q2) + q3, tl.where(lo == 1, (q0 + q2) + q3, (q0 + q1) + q3))
    x_hi = tl.where(hi == 1, x1, tl.where(hi == 2, x2, x3))
    a_hi = tl.where(hi == 1, a1, tl.where(hi == 2, a2, a3))
    qo_hi = tl.where(hi == 1, (q0 + q2) + q3, tl.where(hi == 2, (q0 + q1) + q3, (q0 + q1) + q2))
    p_lo = a_lo / s + a_lo * qo_lo
    p_hi = a_hi / s + a_hi * qo_hi
    return lo, hi, x_lo / p_lo, x_hi / p_hi


@triton.jit
def mvue24_kernel(
    x_ptr,  # dZ (M, N) row-major, any float dtype
    seed_ptr,  # (1,) uint32 seed
    val_ptr, meta_ptr,  # outputs: (N, M/2) in dZ's dtype, (N, ceil(M/8)) uint8
    # rows = N, q = M: the (N, M) view dZ.T; constexpr (JAX shapes are static):
    # known alignment, so the accesses are vectorised (README.md, "Access widths")
    N_ROWS: tl.constexpr, N_Q: tl.constexpr, STRIDE_ROW: tl.constexpr, STRIDE_Q: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_CHUNKS: tl.constexpr,
):
    """MVUE 2:4 of ``dZ.T`` along M, packed. Reference: ``mvue_24`` + ``compress_24``."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    chunk_start = tl.program_id(1) * BLOCK_CHUNKS
    chunks = chunk_start + tl.arange(0, BLOCK_CHUNKS)
    x0, x1, x2, x3, x4, x5, x6, x7 = load_chunk8(
        x_ptr, rows, chunk_start, N_ROWS, N_Q, STRIDE_ROW, STRIDE_Q, BLOCK_ROWS, BLOCK_CHUNKS
    )
    # One Philox call per chunk (two groups) gives the four uniforms it needs;
    # the counter is the chunk's index in the (N, ceil(M/8)) meta array, so
    # every chunk of a call gets its own stream.
    seed = tl.load(seed_ptr)
    counter = rows[:, None] * ((N_Q + 7) // 8) + chunks[None, :]
    u0, u1, u2, u3 = tl.rand4x(seed, counter)
    ia, ja, va0, va1 = _mvue_group(x0, x1, x2, x3, u0, u1)
    ib, jb, vb0, vb1 = _mvue_group(x4, x5, x6, x7, u2, u3)
    store_packed(
        val_ptr, meta_ptr, rows, chunk_start,
        va0, va1, ia, ja, vb0, vb1, ib, jb,
        N_ROWS, N_Q, BLOCK_CHUNKS,
    )


BLOCK_ROWS = 64
BLOCK_CHUNKS = 16


def seed_from_key(key: jax.Array) -> jax.Array:
    """A (1,) uint32 Philox seed drawn from a JAX PRNG key (typed or raw)."""
    return jax.random.bits(key, (1,), jnp.uint32)


def mvue_compress(key: jax.Array, dz: jax.Array) -> tuple[jax.Array, jax.Array]:
    """MVUE 2:4 of ``dz.T`` along M (``dz`` is ``(M, N)``, M a multiple of 4),
    packed: ``(values (N, M/2), meta (N, ceil(M/8)))`` in the format of
    ``compress_24``. Distributed as ``compress_24(mvue_24(key, dz.T))``."""
    if dz.ndim != 2 or dz.shape[0] % 4:
        raise ValueError(
            f"dz must be (M, N) with M (tokens) a multiple of 4, got shape {dz.shape}: pad the tokens"
        )
    m, n = dz.shape
    return jt().triton_call(
        dz, seed_from_key(key),
        kernel=mvue24_kernel,
        **packed_launch(n, m, dz.dtype, BLOCK_ROWS, BLOCK_CHUNKS),
        N_ROWS=n,
        N_Q=m,
        STRIDE_ROW=1,
        STRIDE_Q=n,
        BLOCK_ROWS=BLOCK_ROWS,
        BLOCK_CHUNKS=BLOCK_CHUNKS,
        num_warps=4,
    )
