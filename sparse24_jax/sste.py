"""S-STE's continuous 2:4 projection: soft threshold and its per-tensor scale."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _checks
from .masks import _groups_last, _ungroup

__all__ = ["second_smallest_of_4", "soft_threshold_24", "sste_scale"]


def second_smallest_of_4(a: jax.Array) -> jax.Array:
    """The 2nd smallest of the 4 entries of the last axis (exactly one of them).

    A min/max network instead of a sort: with ``(lo1, hi1)`` and ``(lo2, hi2)``
    the two sorted pairs, the 2nd smallest is ``min(max(lo1, lo2), min(hi1,
    hi2))``. Five elementwise ops that XLA fuses with their neighbours; a
    ``jnp.sort`` of (..., 4) compiles to a sort kernel over the whole tensor,
    once per layer and step in S-STE's forward."""
    lo1, hi1 = jnp.minimum(a[..., 0], a[..., 1]), jnp.maximum(a[..., 0], a[..., 1])
    lo2, hi2 = jnp.minimum(a[..., 2], a[..., 3]), jnp.maximum(a[..., 2], a[..., 3])
    return jnp.minimum(jnp.maximum(lo1, lo2), jnp.minimum(hi1, hi2))


def soft_threshold_24(x: jax.Array, axis: int = -1) -> jax.Array:
    """S-STE's soft threshold per group of 4 along ``axis``.

    With ``t`` the 2nd smallest ``|a|`` of the group::

        S(a)_i = sign(a_i) * (|a_i| - t)   for the two largest |a|,  0 otherwise

    which equals ``sign(a) * max(|a| - t, 0)`` (an element above ``t`` is one
    of the two largest). Unlike a hard top-2 mask, ``S`` is continuous in
    ``a``: a small change of the weights never makes the output jump. At most
    two non-zeros per group. Computed in float32, returned in ``x``'s dtype.
    """
    _checks.check_float(x, "x")
    axis = _checks.normalize_axis(x, axis, "x")
    _checks.check_multiple(x.shape[axis], 4, f"axis {axis} of x")
    g = _groups_last(x, axis).astype(jnp.float32)
    mag = jnp.abs(g)
    t = second_smallest_of_4(mag)[..., None]
    out = jnp.sign(g) * jnp.maximum(mag - t, 0.0)
    return _ungroup(out.astype(x.dtype), axis, x.ndim)


def sste_scale(w: jax.Array, axis: int = -1) -> jax.Array:
    """S-STE's per-tensor scale ``beta = <W, S(W)> / <S(W), S(W)>``.

    The least-squares factor that makes ``beta * S(W)`` closest to ``W``: the
    soft threshold shrinks every kept weight by ``t``, and beta restores the
    tensor's magnitude. S-STE computes it once after initialisation and
    freezes it. Returns a float32 scalar (1.0 if ``S(W)`` is all zeros).
    """
    w32 = w.astype(jnp.float32)
    s = soft_threshold_24(w32, axis)
    num = jnp.vdot(w32, s)
    den = jnp.vdot(s, s)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 1.0)
