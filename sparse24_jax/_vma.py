"""Varying manual axes (``shard_map``'s type system) for the custom_vjp rules.

Inside ``shard_map`` every value's type says over which mesh axes it varies,
and ``jax.custom_vjp`` checks that each cotangent varies over exactly the axes
its primal input does. XLA custom calls (``jax.ffi.ffi_call``, jax-triton's
``triton_call``, ``pure_callback``) return values typed invariant whatever
their operands, so a GPU backend's products would fail that check (seen with
jax 0.11 on two H200s). :func:`match_varying` gives a custom call's result the
axes of the operands it was computed from: a cast, no data movement.
"""

from __future__ import annotations

import jax


def varying_axes(x) -> frozenset:
    """The mesh axes ``x`` varies over (empty outside ``shard_map``)."""
    t = jax.typeof(x)
    mat = getattr(t, "mat", None)  # jax >= 0.10: ManualAxisType(varying=...)
    if mat is not None:
        return frozenset(getattr(mat, "varying", ()))
    return frozenset(getattr(t, "vma", ()) or ())  # jax 0.7-0.9


def to_varying(x, axes):
    """``x`` cast to vary over ``axes`` too (its transpose is a psum over them)."""
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, tuple(axes), to="varying")
    return jax.lax.pvary(x, tuple(axes))  # jax < 0.8


def match_varying(y, *like):
    """``y`` varying over every axis that some array of ``like`` varies over."""
    want = frozenset().union(*(varying_axes(a) for a in like if a is not None))
    missing = want - varying_axes(y)
    return to_varying(y, sorted(missing)) if missing else y
