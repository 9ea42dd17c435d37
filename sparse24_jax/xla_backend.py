"""The reference backend: the three GEMMs as dense XLA dots on masked arrays.

It runs anywhere (CPU, GPU, TPU) and defines what the GPU backends must
compute: they are tested against it. Being dense underneath, it gives no
speed-up; its zeros are explicit.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from . import _checks
from .masks import transposable_mask_24
from .mvue import mvue_24


class XlaBackend:
    """Dense XLA dots on explicitly masked operands (the reference)."""

    name = "xla"
    compute_dtypes = tuple(jnp.dtype(d) for d in _checks.FLOAT_DTYPES)

    def check(self, n: int, k: int, dtype: Any) -> None:
        if jnp.dtype(dtype) not in self.compute_dtypes:
            raise ValueError(
                f"backend 'xla' computes in float32, bfloat16 or float16, not {jnp.dtype(dtype)}: "
                "cast the input"
            )

    def prepare_weight(self, w_s: jax.Array, *, transposable: bool) -> jax.Array:
        del transposable  # one dense array serves both products
        return w_s

    def matmul_fwd(self, x: jax.Array, w_op: jax.Array) -> jax.Array:
        return jnp.dot(x, w_op.T.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)

    def matmul_dx(self, dz: jax.Array, w_op: jax.Array) -> jax.Array:
        return jnp.dot(dz, w_op.astype(dz.dtype), preferred_element_type=jnp.float32).astype(dz.dtype)

    def prune_grad(self, key: jax.Array | None, dz: jax.Array) -> jax.Array:
        dzt = dz.T  # (N, M): prune along M, the reduction axis of dW
        return dzt if key is None else mvue_24(key, dzt, axis=-1)

    def matmul_dw(self, g: jax.Array, x: jax.Array) -> jax.Array:
        return jnp.dot(g, x.astype(g.dtype), preferred_element_type=jnp.float32)

    def transposable_mask(self, w: jax.Array) -> jax.Array:
        return transposable_mask_24(w)
