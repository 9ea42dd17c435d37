"""2:4 masks: the plain one, the transposable one, and the flip rate between two.

"2:4" means: in every group of 4 consecutive elements along an axis, at most 2
are non-zero. The hardware wants the sparse operand 2:4 along its reduction
axis; a *transposable* mask is 2:4 along both axes of a weight, so one mask
serves the forward GEMM (``W``, 2:4 along K) and the input-gradient GEMM
(``W.T``, 2:4 along N).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks

__all__ = ["mask_24", "transposable_mask_24", "flip_rate", "TRANSPOSABLE_PATTERNS"]


def _groups_last(x, axis: int):
    """Move ``axis`` last and split it into groups of 4: (..., G, 4)."""
    x = jnp.moveaxis(x, axis, -1)
    return x.reshape(*x.shape[:-1], x.shape[-1] // 4, 4)


def _ungroup(g, axis: int, ndim: int):
    x = g.reshape(*g.shape[:-2], g.shape[-2] * 4)
    return jnp.moveaxis(x, -1, axis % ndim)


def mask_24(x: jax.Array, axis: int = -1) -> jax.Array:
    """Boolean mask of the 2 largest ``|x|`` in each group of 4 along ``axis``.

    Ties go to the lower index (a stable sort on ``-|x|``), so the result is
    deterministic: a group of four equal values keeps positions 0 and 1.
    """
    _checks.check_float(x, "x")
    axis = _checks.normalize_axis(x, axis, "x")
    _checks.check_multiple(x.shape[axis], 4, f"axis {axis} of x")
    g = jnp.abs(_groups_last(x, axis)).astype(jnp.float32)
    # rank of each element within its group = number of elements that beat it
    # (strictly larger, or equal and earlier): keep rank 0 and 1.
    a = g[..., :, None]  # element i
    b = g[..., None, :]  # element j
    j_idx = jnp.arange(4)
    earlier = j_idx[None, :] < j_idx[:, None]  # j < i
    beats = (b > a) | ((b == a) & earlier)
    rank = beats.sum(-1)
    return _ungroup(rank < 2, axis, x.ndim)


def _make_patterns() -> np.ndarray:
    """The 90 4x4 binary matrices with exactly two ones per row and column, in
    the documented order: ``itertools.product`` over the 4 rows (row 0
    outermost), each row choosing one of the pairs (0,1), (0,2), (0,3), (1,2),
    (1,3), (2,3) in that order; kept if every column sums to 2."""
    pairs = list(itertools.combinations(range(4), 2))
    out = []
    for rows in itertools.product(pairs, repeat=4):
        m = np.zeros((4, 4), np.int8)
        for r, (a, b) in enumerate(rows):
            m[r, a] = m[r, b] = 1
        if (m.sum(0) == 2).all():
            out.append(m)
    pats = np.stack(out)
    assert pats.shape == (90, 4, 4)
    return pats


#: (90, 4, 4) int8: every transposable 2:4 pattern of a 4x4 block, in tie-break order.
TRANSPOSABLE_PATTERNS: np.ndarray = _make_patterns()


def transposable_mask_24(w: jax.Array) -> jax.Array:
    """The exact maximum-L1 transposable 2:4 mask of ``w`` (shape (N, K)).

    ``|w|`` is cut into 4x4 blocks; each block's 90 candidate patterns are
    scored at once as one matrix product ``patterns (90, 16) @ blocks (16, B)``
    in float32 (at HIGHEST precision, so GPUs do not round the scores to TF32),
    and each block takes the argmax. Ties go to the first pattern in
    :data:`TRANSPOSABLE_PATTERNS` order (``jnp.argmax`` returns the first
    maximum), so the mask is deterministic. The result is 2:4 along both axes.
    """
    _checks.check_float(w, "w")
    _checks.check_rank2(w, "w")
    n, k = w.shape
    _checks.check_multiple(n, 4, "N (rows of w)")
    _checks.check_multiple(k, 4, "K (columns of w)")
    a = jnp.abs(w).astype(jnp.float32)
    # (N/4, 4, K/4, 4) -> (N/4, K/4, 4, 4) -> (16, B)
    blocks = a.reshape(n // 4, 4, k // 4, 4).transpose(0, 2, 1, 3).reshape(-1, 16).T
    pats = jnp.asarray(TRANSPOSABLE_PATTERNS.reshape(90, 16), jnp.float32)
    scores = jnp.dot(pats, blocks, precision=jax.lax.Precision.HIGHEST)
    best = jnp.argmax(scores, axis=0)  # (B,)
    chosen = jnp.asarray(TRANSPOSABLE_PATTERNS, bool)[best]  # (B, 4, 4)
    return chosen.reshape(n // 4, k // 4, 4, 4).transpose(0, 2, 1, 3).reshape(n, k)


def flip_rate(old_mask: jax.Array, new_mask: jax.Array) -> jax.Array:
    """Fraction of mask entries that changed: ``count(old != new) / size``
    (float32 scalar). A healthy 2:4 run's flip rate rises early, then falls."""
    _checks.check_same_shape(old_mask, new_mask, "old_mask", "new_mask")
    return jnp.mean((old_mask != new_mask).astype(jnp.float32))
