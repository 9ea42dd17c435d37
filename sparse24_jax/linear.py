"""``sparse24_linear``: the 2:4 linear layer as one ``jax.custom_vjp`` operation.

With ``W_s`` the projected weight (SR-STE: ``W * mask``, the mask transposable;
S-STE: ``beta * soft_threshold_24(W)``)::

    forward       Z  = X  @ W_s.T                 W_s   2:4 along K
    input grad    dX = dZ @ W_s                   W_s.T 2:4 along N (same mask)
    weight grad   dW = S_z(dZ.T) @ X              dZ.T  MVUE 2:4 along M
    master        dL/dW := dW                     straight-through (STE)

The weight gradient goes straight through the projection to the dense master
weight ``W`` (it is *not* masked), so pruned weights keep learning and can
come back when the mask is recomputed. The three products and the
compression of their sparse operands come from a backend (see
:mod:`sparse24_jax.backend`); everything else is here.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from . import _checks
from .backend import Backend, get_backend
from .sste import soft_threshold_24

__all__ = ["sparse24_linear", "project_weight", "METHODS"]

#: srste: transposable hard mask (with masked decay in the optimizer);
#: ste: the same projection, meant for runs without masked decay;
#: sste: beta * soft threshold along K; dense: no projection.
METHODS = ("srste", "ste", "sste", "dense")


def project_weight(w, mask=None, beta=None, *, method: str = "srste"):
    """The weight the GEMMs see, ``W_s``, and whether it is transposable
    (2:4 along both axes, so ``W_s.T`` can be a sparse operand too)."""
    if method in ("srste", "ste"):
        return jnp.where(mask, w, jnp.zeros((), w.dtype)), True
    if method == "sste":
        return beta.astype(w.dtype) * soft_threshold_24(w, axis=-1), False
    if method == "dense":
        return w, False
    raise ValueError(f"unknown method {method!r}: use one of {METHODS}")


def _validate(x, w, mask, beta, key, method, mvue):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {METHODS}")
    _checks.check_float(x, "x")
    _checks.check_float(w, "w")
    _checks.check_rank2(w, "w")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"x has shape {tuple(x.shape)} but w has shape {tuple(w.shape)}: the last axis of x "
            f"must equal K = w.shape[1] = {w.shape[1]} (w is (out_features, in_features))"
        )
    if method == "dense":
        return
    _checks.check_multiple(w.shape[0], 4, "N (w.shape[0], out_features)")
    _checks.check_multiple(w.shape[1], 4, "K (w.shape[1], in_features)")
    if method in ("srste", "ste"):
        if mask is None:
            raise ValueError(
                f"method={method!r} needs mask=: pass transposable_mask_24(w) (or use a "
                "SparseLinear module, which keeps it)"
            )
        _checks.check_bool(mask, "mask")
        _checks.check_same_shape(w, mask, "w", "mask")
    if method == "sste" and beta is None:
        raise ValueError("method='sste' needs beta=: pass sste_scale(w) computed once at init")
    if mvue and key is None:
        raise ValueError(
            "mvue=True needs key= (a jax.random.key) for the MVUE pruning of dZ.T; "
            "pass one, or mvue=False for a dense weight-gradient GEMM"
        )


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _sparse_linear_2d(x, w, mask, beta, key, method: str, backend: Backend):
    w_s, transposable = project_weight(w, mask, beta, method=method)
    return backend.matmul_fwd(x, backend.prepare_weight(w_s.astype(x.dtype), transposable=transposable))


def _fwd(x, w, mask, beta, key, method, backend):
    w_s, transposable = project_weight(w, mask, beta, method=method)
    w_op = backend.prepare_weight(w_s.astype(x.dtype), transposable=transposable)
    z = backend.matmul_fwd(x, w_op)
    # a 0-d array of w's dtype: the cotangent of w must come back in it
    return z, (x, w_op, key, jnp.zeros((), w.dtype))


def _bwd(method, backend, res, dz):
    x, w_op, key, w_proto = res
    dx = backend.matmul_dx(dz, w_op)
    dw = backend.matmul_dw(backend.prune_grad(key, dz), x).astype(w_proto.dtype)
    # no cotangent for mask, beta (frozen) and key
    return dx, dw, None, None, None


_sparse_linear_2d.defvjp(_fwd, _bwd)


def sparse24_linear(
    x: jax.Array,
    w: jax.Array,
    mask: jax.Array | None = None,
    beta: jax.Array | None = None,
    key: jax.Array | None = None,
    *,
    method: str = "srste",
    backend: str | Backend = "xla",
    mvue: bool = True,
) -> jax.Array:
    """``Z = X @ W_s.T`` with SPEC's 2:4 forward and backward (module doc).

    Args:
      x: ``(..., K)`` input; its dtype is the compute dtype (the weight is
        cast to it, products accumulate in float32).
      w: ``(N, K)`` dense master weight (PyTorch layout: out x in), usually
        float32. Its gradient comes back in its dtype.
      mask: ``(N, K)`` boolean transposable 2:4 mask, for ``method`` "srste"
        and "ste" (:func:`~sparse24_jax.transposable_mask_24`).
      beta: S-STE's frozen scale (:func:`~sparse24_jax.sste_scale`), for
        ``method="sste"``.
      key: JAX PRNG key for the MVUE pruning of ``dZ.T`` (needed if
        ``mvue``). Use a fresh key every step.
      method: "srste", "ste", "sste" or "dense" (a plain dense product).
      backend: "xla" (reference, anywhere), "triton" or "cusparselt" (GPU), or
        a :class:`~sparse24_jax.backend.Backend`.
      mvue: prune ``dZ.T`` with MVUE for the weight gradient; ``False`` uses
        the dense ``dZ.T``.

    Tokens are flattened to ``M = prod(x.shape[:-1])`` rows and, if M is not a
    multiple of 4 (MVUE groups 4 tokens), zero rows are appended for the
    products and dropped again; zero tokens add nothing to ``dW``.
    """
    _validate(x, w, mask, beta, key, method, mvue)
    if method == "dense":
        # No preferred_element_type=float32 here: its cotangent would be
        # float32 and make XLA run the backward GEMMs in float32, 2x slower
        # than bf16 on an H100 (GPUs accumulate bf16 dots in float32 anyway).
        return jnp.dot(x, w.T.astype(x.dtype))
    be = get_backend(backend)
    n, k = w.shape
    be.check(n, k, x.dtype)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    pad = (-m) % 4
    if pad:
        x2 = jnp.pad(x2, ((0, pad), (0, 0)))
    z = _sparse_linear_2d(x2, w, mask, beta, key if mvue else None, method, be)
    if pad:
        z = z[:m]
    return z.reshape(*lead, n)
