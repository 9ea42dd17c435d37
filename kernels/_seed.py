"""The MVUE kernels' seed: two uint32 words drawn from a JAX PRNG key, the same for
every backend's kernels (one key gives the cuSPARSELt and the CUTLASS paths one seed)."""

from __future__ import annotations


def seed_from_key(key):
    """Two uint32 words from a JAX PRNG key (typed or raw), for the kernels."""
    import jax
    import jax.numpy as jnp

    return jax.random.bits(key, (2,), jnp.uint32)


def as_seed(key_or_seed):
    """``key_or_seed`` as the kernels' seed: a uint32 array of 2 words as it is, a JAX
    PRNG key through :func:`seed_from_key`."""
    import jax.numpy as jnp

    s = key_or_seed
    if hasattr(s, "dtype") and s.dtype == jnp.uint32 and s.shape == (2,):
        return s
    return seed_from_key(s)
