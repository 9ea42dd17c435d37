"""Input validation shared by the operators: every message names the fix."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def check_float(x, what: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{what} has dtype {x.dtype}; 2:4 operators take floating-point arrays "
            f"(float32, bfloat16 or float16): cast it first, e.g. x.astype(jnp.float32)"
        )


def normalize_axis(x, axis: int, what: str) -> int:
    if x.ndim == 0:
        raise ValueError(f"{what} is a scalar; 2:4 operators need at least one axis of length 4k")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for {what} of rank {x.ndim}")
    return axis % x.ndim


def check_multiple(size: int, m: int, what: str) -> None:
    if size % m:
        raise ValueError(
            f"{what} is {size}, not a multiple of {m}; 2:4 sparsity works on groups of 4: "
            f"pad it to {(-(-size // m)) * m} (e.g. choose a hidden size divisible by {m})"
        )


def check_rank2(w, what: str) -> None:
    if w.ndim != 2:
        raise ValueError(
            f"{what} must be a 2-D (N, K) weight, got rank {w.ndim} with shape {tuple(w.shape)}; "
            f"reshape it to (out_features, in_features)"
        )


def check_same_shape(a, b, what_a: str, what_b: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{what_b} has shape {tuple(b.shape)} but {what_a} has shape {tuple(a.shape)}; "
            f"they must match (recompute the mask from this weight)"
        )


def check_bool(m, what: str) -> None:
    if m.dtype != np.bool_:
        raise ValueError(f"{what} has dtype {m.dtype}; masks are boolean: pass mask.astype(bool)")
