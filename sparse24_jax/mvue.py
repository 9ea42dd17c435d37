"""MVUE 2:4: an unbiased random 2-of-4 pruning, for the weight-gradient GEMM.

The weight gradient ``dW = dZ.T @ X`` reduces over tokens M, so the sparse
operand is ``dZ.T`` pruned 2:4 along M. A deterministic top-2 would bias the
gradient; sampling two of four with probabilities proportional to magnitude and
dividing by the inclusion probability keeps ``E[S_z(x)] = x``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _checks
from .masks import _groups_last, _ungroup

__all__ = ["mvue_24", "mvue_inclusion_probs"]

#: Added to |x| so that every element can be drawn (the reference's epsilon,
#: float32 machine epsilon).
EPS = 1.19209e-07


def mvue_inclusion_probs(a: jax.Array) -> jax.Array:
    """Inclusion probabilities of the two-draws-without-replacement sampler.

    For a group ``a`` (positive, last axis of size 4) with ``S = sum(a)``::

        p_i = a_i / S + sum_{j != i} (a_j / S) * a_i / (S - a_j)

    (drawn first, or drawn second after some ``j``). ``sum_i p_i = 2``.
    """
    s = a.sum(-1, keepdims=True)
    # S - a_j summed directly from the other three: S - a_j cancels to 0 in
    # float32 when a_j dwarfs the others (|x_j| = 100 next to three zeros).
    off_diag = ~jnp.eye(4, dtype=bool)

    def sum_others(v):  # (..., 4) -> sum over j != i, for each i
        return jnp.sum(jnp.where(off_diag, v[..., None, :], 0.0), -1)

    t = a / (s * sum_others(a))  # j's term a_j / (S (S - a_j))
    return a / s + a * sum_others(t)


def mvue_24(key: jax.Array, x: jax.Array, axis: int = -1) -> jax.Array:
    """The unbiased 2-of-4 sampler (docs/algorithms.md, section 3) along ``axis``.

    Per group of 4: ``a_i = |x_i| + 1.19209e-07``, ``S = sum(a)``; draw ``i1``
    with probability ``a_i / S``, then ``i2`` among the other three with
    probability ``a_j / (S - a_i1)``. The two drawn elements become
    ``x_i / p_i`` (:func:`mvue_inclusion_probs`), the others 0. So exactly two
    positions are kept per group, and ``E[mvue_24(key, x)] = x``. A group with
    fewer than two non-zeros keeps fewer non-zero *values* (a drawn zero stays
    zero). Arithmetic is float32; the result has ``x``'s dtype.
    """
    _checks.check_float(x, "x")
    axis = _checks.normalize_axis(x, axis, "x")
    _checks.check_multiple(x.shape[axis], 4, f"axis {axis} of x")
    g = _groups_last(x, axis).astype(jnp.float32)
    a = jnp.abs(g) + EPS
    s = a.sum(-1, keepdims=True)
    u1, u2 = jax.random.uniform(key, (2, *g.shape[:-1], 1), jnp.float32)
    # first draw: inverse CDF on a / S. Clamp so rounding of the cumulative sum
    # can never select past the last element.
    c1 = jnp.cumsum(a, -1)
    i1 = jnp.minimum(jnp.sum(c1 <= u1 * s, -1, keepdims=True), 3)
    onehot1 = jnp.arange(4) == i1
    # second draw among the other three, proportional to a_j / (S - a_i1)
    a2 = jnp.where(onehot1, 0.0, a)
    c2 = jnp.cumsum(a2, -1)
    i2 = jnp.sum(c2 <= u2 * a2.sum(-1, keepdims=True), -1, keepdims=True)
    # rounding can land on i1 or past 3: take the last non-i1 index instead
    last_other = jnp.where(i1 == 3, 2, 3)
    i2 = jnp.where((i2 > 3) | (i2 == i1), last_other, i2)
    keep = onehot1 | (jnp.arange(4) == i2)
    p = mvue_inclusion_probs(a)
    out = jnp.where(keep, g / p, 0.0).astype(x.dtype)
    return _ungroup(out, axis, x.ndim)
