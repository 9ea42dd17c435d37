"""``sparse24_linear``: the 2:4 linear layer as one ``jax.custom_vjp`` operation.

With ``W_s`` the projected weight (SR-STE: ``W * mask``, the mask transposable;
S-STE: ``beta * soft_threshold_24(W)``)::

    forward       Z  = X  @ W_s.T                 W_s   2:4 along K
    input grad    dX = dZ @ W_s                   W_s.T 2:4 along N (same mask)
    weight grad   dW = S_z(dZ.T) @ X              dZ.T  MVUE 2:4 along M
    master        dL/dW := dW                     straight-through (STE)

With ``grad_acc`` (a running sum of earlier micro-batches' weight gradients,
gradient accumulation), ``w``'s cotangent is ``grad_acc + dW``, added in the
weight-gradient GEMM's epilogue where the backend can
(:class:`~sparse24_jax.backend.AccumulatingWeightGrad`), so the loop over
micro-batches does not add it again (:func:`sparse24_jax.nnx.value_and_grad`).

The weight gradient goes straight through the projection to the dense master
weight ``W`` (it is *not* masked), so pruned weights keep learning and can
come back when the mask is recomputed. The three products and the
compression of their sparse operands come from a backend (see
:mod:`sparse24_jax.backend`); everything else is here. docs/algorithms.md
derives the three formulas.

This module is the computation in the input's dtype (``precision="compute"``);
``precision="fp8"`` (S-STE's FP8 recipe) is a custom_vjp of its own,
:mod:`sparse24_jax.linear_fp8`, which :func:`sparse24_linear` dispatches to.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from . import _checks
from . import fp8 as _fp8
from ._grad_acc import Receipt, fits, receipt_for
from ._vma import match_varying
from .backend import Backend, capabilities, get_backend
from .masks import mask_24
from .sste import soft_threshold_24

__all__ = ["sparse24_linear", "prepare_sparse24_weight", "project_weight", "METHODS", "PRECISIONS"]

#: "compute": the GEMMs in the input's dtype, whatever it is (the default;
#: "bf16" is accepted for it, its earlier name); "fp8": S-STE's FP8 recipe,
#: simulated (:mod:`sparse24_jax.linear_fp8`).
PRECISIONS = _fp8.PRECISIONS

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


def search_mask(method: str, backend: str | Backend, w):
    """The mask a layer of ``method`` keeps for weight ``w``: SR-STE/STE the
    transposable mask (searched by ``backend``); S-STE the support of the soft
    threshold (tracked for the flip rate only); dense all True."""
    if method in ("srste", "ste"):
        return get_backend(backend).transposable_mask(w)
    if method == "sste":
        return mask_24(w, axis=-1)
    return jnp.ones(w.shape, bool)


def prepare(w, mask, beta, method: str, backend: Backend, dtype):
    """The backend's operands of ``W_s`` in ``dtype``: straight from the
    master weight in one pass when the backend can (``prepare_projected``),
    else projected here and handed to ``prepare_weight``. Same bits either way."""
    if capabilities(backend).prepare_projected:
        return backend.prepare_projected(w, mask, beta, method=method, dtype=dtype)
    w_s, transposable = project_weight(w, mask, beta, method=method)
    return backend.prepare_weight(w_s.astype(dtype), transposable=transposable)


def check_grad_acc(grad_acc, w, name: str = "grad_acc") -> None:
    """A running sum of ``w``'s gradient has ``w``'s shape and dtype."""
    if grad_acc is None:
        return
    if not fits(grad_acc, w):
        raise ValueError(
            f"{name} must have the weight's shape and dtype {jnp.dtype(w.dtype).name} {tuple(w.shape)} (it is the "
            f"running sum of that weight's gradient), got {jnp.dtype(grad_acc.dtype).name} {tuple(grad_acc.shape)}"
        )


def weight_grad(backend: Backend, g, x, acc, receipt: Receipt | None = None):
    """``matmul_dw(g, x)``, plus the running sum ``acc`` where one is given: in
    the GEMM's epilogue where the backend can, else an add (XLA folds it into
    the output of a dense weight-gradient GEMM; after a custom call it is a
    pass of its own). Marks ``receipt``: the sum is in."""
    if acc is None:
        return backend.matmul_dw(g, x)
    if receipt is not None:
        receipt.mark()
    if capabilities(backend).weight_grad_accumulate and jnp.dtype(acc.dtype) == jnp.float32:
        return backend.matmul_dw_acc(g, x, acc)
    return acc + backend.matmul_dw(g, x).astype(acc.dtype)


def validate(x, w, mask, beta, key, method, mvue, precision="compute"):
    """The argument checks of :func:`sparse24_linear` (and the FFN block)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {METHODS}")
    _fp8.canonical_precision(precision)
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


def tokens_2d(x, k: int):
    """``x`` as ``(M, K)`` with M padded to a multiple of 4 (an MVUE group is 4
    tokens; zero tokens add nothing to ``dW``), and a function that takes an
    ``(M_padded, N)`` result back to ``x``'s leading dims."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    pad = (-m) % 4
    if pad:
        x2 = jnp.pad(x2, ((0, pad), (0, 0)))

    def restore(z):
        return (z[:m] if pad else z).reshape(*lead, z.shape[-1])

    return x2, restore


# ---------------------------------------------------------------------------
# The custom_vjp: one algorithm, in the input's dtype
# ---------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _linear(x, w, mask, beta, key, prepared, acc, method: str, backend: Backend, receipt: Receipt | None):
    return _linear_fwd(x, w, mask, beta, key, prepared, acc, method, backend, receipt)[0]


def _linear_fwd(x, w, mask, beta, key, prepared, acc, method, backend, receipt):
    # prepared: compressed once per optimizer step by the caller (gradient accumulation)
    w_op = prepare(w, mask, beta, method, backend, x.dtype) if prepared is None else prepared
    # under shard_map a custom call's result is typed invariant: give it the operands' axes
    z = match_varying(backend.matmul_fwd(x, w_op), x, w)
    # a 0-d array of w's dtype (and shard_map axes): the cotangent of w must come back in them
    w_proto = match_varying(jnp.zeros((), w.dtype), w)
    return z, (x, w_op, key, w_proto, acc)


def _linear_bwd(method, backend, receipt, res, dz):
    x, w_op, key, w_proto, acc = res
    dx = backend.matmul_dx(dz, w_op)
    # with a running sum acc, w's cotangent is acc + dW (the accumulation's add done here)
    dw = weight_grad(backend, backend.prune_grad(key, dz), x, acc, receipt).astype(w_proto.dtype)
    # each cotangent must vary over exactly its primal's axes (custom_vjp's check)
    dx, dw = match_varying(dx, x), match_varying(dw, w_proto)
    # no cotangent for mask, beta (frozen), key, the prepared operands and the running sum
    return dx, dw, None, None, None, None, None


_linear.defvjp(_linear_fwd, _linear_bwd)


def prepare_sparse24_weight(
    w: jax.Array,
    mask: jax.Array | None = None,
    beta: jax.Array | None = None,
    *,
    method: str = "srste",
    backend: str | Backend = "xla",
    dtype: Any = jnp.bfloat16,
) -> Any:
    """The backend's operands of ``W_s`` (projected, cast to ``dtype`` and
    compressed), for ``sparse24_linear(..., prepared=)``.

    With gradient accumulation the weights do not change between the
    micro-batches of one optimizer step, but ``sparse24_linear`` projects and
    compresses ``W_s`` (and ``W_s.T``) on every call, and XLA does not hoist
    those custom calls out of the micro-batch loop
    (``benchmarks/check_hoist.py`` shows where they land). Call this once per
    step, outside the loop, and pass the result to every micro-batch's call:
    the products are the same. ``dtype`` must be the compute dtype
    (``x.dtype``) of those calls.
    """
    if method == "dense":
        raise ValueError("method='dense' has nothing to prepare: call sparse24_linear without prepared=")
    be = get_backend(backend)
    _checks.check_rank2(w, "w")
    be.check(*w.shape, dtype)
    return prepare(w, mask, beta, method, be, dtype)


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
    precision: str = "compute",
    prepared: Any = None,
    grad_acc: jax.Array | None = None,
) -> jax.Array:
    """``Z = X @ W_s.T`` with the 2:4 forward and backward of the module doc.

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
      backend: "xla" (reference, anywhere), "triton", "cusparselt" or "cutlass" (GPU), or
        a :class:`~sparse24_jax.backend.Backend`.
      mvue: prune ``dZ.T`` with MVUE for the weight gradient; ``False`` uses
        the dense ``dZ.T``.
      precision: "compute" (default): the GEMMs compute in ``x``'s dtype
        ("bf16", its earlier name, is accepted too); "fp8": S-STE's FP8
        recipe for all three GEMMs (:mod:`sparse24_jax.linear_fp8`).
        The output and ``dX`` keep ``x``'s dtype, ``dW`` ``w``'s. With
        ``method="dense"`` the dense product runs the same recipe on the "xla"
        backend.
      prepared: the result of :func:`prepare_sparse24_weight` for this
        ``w``, ``mask``, ``beta``, ``method``, ``backend`` and ``x.dtype``,
        computed once per optimizer step (gradient accumulation); ``None``
        (default) compresses here. Not with ``precision="fp8"``.
      grad_acc: the running sum of ``w``'s gradient over earlier
        micro-batches (``w``'s shape and dtype), or ``None``. Given, ``w``'s
        cotangent is ``grad_acc + dW``: the caller uses it as the new sum and
        does not add ``grad_acc`` itself (it would count twice). The add runs
        in the weight-gradient GEMM's epilogue on a backend that can, else as
        an add of its own. A sparse method with ``precision="compute"`` only.
        The sum is added by this call's backward, which JAX runs only if the
        output reaches the differentiated value; :func:`sparse24_jax.nnx.value_and_grad`
        checks that (a receipt per call) and adds a sum no backward took.

    Tokens are flattened to ``M = prod(x.shape[:-1])`` rows and, if M is not a
    multiple of 4 (MVUE groups 4 tokens), zero rows are appended for the
    products and dropped again; zero tokens add nothing to ``dW``.
    """
    validate(x, w, mask, beta, key, method, mvue, precision)
    precision = _fp8.canonical_precision(precision)
    check_grad_acc(grad_acc, w)
    # both feed the custom_vjp below, which neither the fp8 recipe nor a dense product runs
    for name, given, instead in (("grad_acc", grad_acc, "and add the gradient to the running sum yourself"),
                                 ("prepared", prepared, "(the call then compresses the weight itself)")):
        if given is not None and (precision != "compute" or method == "dense"):
            raise ValueError(
                f"{name}= works with precision='compute' and a sparse method, not precision={precision!r}, "
                f"method={method!r}: drop {name}= {instead}"
            )
    if precision == "fp8":
        from .linear_fp8 import sparse24_linear_fp8  # noqa: PLC0415  (it imports this module)

        return sparse24_linear_fp8(x, w, mask, beta, key if mvue else None, method=method, backend=backend)
    if method == "dense":
        # No preferred_element_type=float32 here: its cotangent would be
        # float32 and make XLA run the backward GEMMs in float32, 2x slower
        # than bf16 on an H100 (GPUs accumulate bf16 dots in float32 anyway).
        return jnp.dot(x, w.T.astype(x.dtype))
    be = get_backend(backend)
    n, k = w.shape
    be.check(n, k, x.dtype)
    x2, restore = tokens_2d(x, k)
    return restore(_linear(x2, w, mask, beta, key if mvue else None, prepared, grad_acc, method, be,
                           receipt_for(grad_acc)))
