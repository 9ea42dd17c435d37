"""The 2:4 FFN block's test cases shared by the CPU and GPU tests of the backends
(tests/test_cutlass_backend.py, tests/gpu/test_cutlass_ffn.py, tests/gpu/test_cutlass_compress.py):
the relative error, the two weights of a block, and its loss-and-gradients function."""

from __future__ import annotations

import numpy as np


def rel(a, b) -> float:
    """||a - b|| / ||b|| in float32 (0-safe)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))


def ffn_weights(d: int, h: int, method: str, seed: int = 0, scale: float = 0.1):
    """fc (h, d) and proj (d, h) as ``Sparse24Weight``s, normal * scale: S-STE's with their
    beta, the others with a transposable 2:4 mask."""
    import jax.numpy as jnp

    import sparse24_jax as s24
    from sparse24_jax.ffn import Sparse24Weight

    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.standard_normal((h, d)).astype(np.float32) * scale)
    w2 = jnp.asarray(rng.standard_normal((d, h)).astype(np.float32) * scale)
    if method == "sste":
        return Sparse24Weight(w1, beta=s24.sste_scale(w1)), Sparse24Weight(w2, beta=s24.sste_scale(w2))
    return (Sparse24Weight(w1, s24.transposable_mask_24(w1)),
            Sparse24Weight(w2, s24.transposable_mask_24(w2)))


def ffn_grad_fn(backend, fc, proj, method: str, keys=(None, None), fused: bool = True,
                activation: str = "gelu"):
    """jit(value_and_grad) of mean(y^2 + y), y = sparse24_ffn(x, fc, proj), over (x, w1, w2):
    call it with ``(x, fc.w, proj.w)``. ``keys``: the two MVUE keys (None: no MVUE); for a
    gated ``activation`` fc is (2h, d) and proj (d, h)."""
    import jax
    import jax.numpy as jnp

    from sparse24_jax.ffn import sparse24_ffn

    def loss(x, w1, w2):
        y = sparse24_ffn(x, fc._replace(w=w1), proj._replace(w=w2), keys=keys, method=method,
                         backend=backend, mvue=keys[0] is not None, fused=fused, activation=activation)
        y = y.astype(jnp.float32)
        return jnp.mean(y * y + y)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
