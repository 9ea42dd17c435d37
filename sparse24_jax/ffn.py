"""The 2:4 FFN block as one ``jax.custom_vjp``: two sparse linears around an activation.

    Z1 = X @ W1_s.T        A = act(Z1)        Y = A @ W2_s.T

``act`` is GPT-2's exact GELU (``"gelu"``) or a gated activation
(``"swiglu"``, ``"geglu"``: ``Z1 = [x, gate]``, ``A = x * act(gate)``).

Why one rule for the block rather than two :func:`~sparse24_jax.sparse24_linear`
calls with autodiff of ``act`` between them: the backward of the first linear
starts from ``dZ1 = act'(Z1) * dA``, and its weight-gradient GEMM needs
``S_z(dZ1.T)``, the MVUE pruning of that same tensor. Composed, ``dZ1`` is
written by the activation's backward and read back by the pruning kernel; a
backend with the capability
:class:`~sparse24_jax.backend.FusedActivationGradPrune` does both in one pass
over memory (it reads ``dA`` and the saved ``Z1``, writes ``dZ1`` and the
compressed ``S_z(dZ1.T)``). Backends without it get the composition, with the
very numbers of the two-linear path (same keys, same ops), so the block is a
drop-in for every backend.

Backward, with ``g`` the pruned operands and ``w_op`` the compressed weights::

    dA      = matmul_dx(dY, W2)                     input grad of the second linear
    dW2     = matmul_dw(prune_grad(k2, dY), A)      its weight grad (MVUE of dY.T)
    dZ1, g1 = activation_grad_prune(dA, Z1, k1)     fused, or vjp(act) then prune_grad
    dX      = matmul_dx(dZ1, W1)
    dW1     = matmul_dw(g1, X)

With a running sum of a weight's gradient (``Sparse24Weight.grad_acc``,
gradient accumulation), that ``dW`` is ``weight_grad``'s ``grad_acc + dW``: the
add in the weight-gradient GEMM's epilogue where the backend can
(:mod:`sparse24_jax.linear`).

A linear without MVUE (``mvue`` False for it, no key) gets ``prune_grad(None,
dZ)``, the exact ``dZ``, and ``matmul_dw`` is then a dense GEMM; ``mvue=(False,
True)`` does that for the first linear only, whose ``dZ1`` is the wide one.

A backend with :class:`~sparse24_jax.backend.FusedLinearActivation` runs the
forward as one GEMM whose epilogue writes ``A = act(Z1)`` and ``G1 = act'(Z1)``
(no pass over ``Z1``; the backward needs only the derivative); one with
:class:`~sparse24_jax.backend.FusedLinearActivationGrad` replaces the first
line's ``dA`` and the activation backward with one GEMM, ``dZ1 =
matmul_dx(dY, W2) * G1`` in its epilogue, then ``g1 = prune_grad(k1, dZ1)``
(taken before ``activation_grad_prune``: it writes no ``dA``). Both keep the
product in float32 until the activation, so they differ from the composed path
by a bf16 rounding of ``Z1`` / ``dA`` / ``G1``.

Residuals: ``X``, ``A``, both compressed weights and ``Z1`` or, with either
epilogue capability, ``G1 = act'(Z1)`` (:func:`activation_grad`; the same
bytes: a multiply is all the backward's epilogue then does).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._grad_acc import receipt_for
from ._vma import match_varying
from .activations import GATED_KINDS, gated, gated_activation
from .backend import Backend, capabilities, get_backend
from .fp8 import canonical_precision
from .linear import check_grad_acc, prepare, tokens_2d, validate, weight_grad

__all__ = ["ACTIVATIONS", "Sparse24Weight", "activation", "activation_grad", "activation_vjp", "mvue_pair",
           "sparse24_ffn"]

#: "gelu": exact (erf) GELU, GPT-2's; the gated kinds of sparse24_jax.activations
ACTIVATIONS = ("gelu", *GATED_KINDS)


class Sparse24Weight(NamedTuple):
    """One linear of the block: the master weight ``w`` (N, K), its mask
    (SR-STE/STE) or beta (S-STE), optionally its operands prepared once per
    optimizer step (:func:`~sparse24_jax.prepare_sparse24_weight`), and
    optionally the running sum of its gradient (``grad_acc``, as
    :func:`~sparse24_jax.sparse24_linear`'s: ``w``'s cotangent is then
    ``grad_acc + dW``)."""

    w: jax.Array
    mask: jax.Array | None = None
    beta: jax.Array | None = None
    prepared: Any = None
    grad_acc: jax.Array | None = None


def fuses_activation(backend: str | Backend, kind: str) -> bool:
    """Whether ``backend`` fuses ``kind`` somewhere in the block: its backward with the MVUE
    pruning, or into a GEMM's epilogue (forward or input gradient). Where it does not, the
    modules compose the two linears instead of calling :func:`sparse24_ffn` (the same
    numbers, no gain from the block)."""
    caps = capabilities(backend)
    return kind in (*caps.activation_grad_prune, *caps.linear_activation, *caps.linear_activation_grad)


def block_applies(fc, proj, kind: str, fused: bool) -> bool:
    """Whether an MLP module runs its two linear layers (NNX's or linen's ``SparseLinear``:
    ``method``, ``backend``, ``dtype``, ``precision``, ``dense_finetuning``) as one
    :func:`sparse24_ffn` block: ``fused``, the same sparse method, backend and dtype,
    precision "compute", no dense fine-tuning, and a backend that fuses ``kind``
    (:func:`fuses_activation`). Elsewhere the module composes the layers: the same numbers."""
    if not fused or fc.method == "dense" or fc.dense_finetuning or proj.dense_finetuning:
        return False
    if (fc.method, fc.backend, fc.dtype) != (proj.method, proj.backend, proj.dtype):
        return False
    if canonical_precision(fc.precision) != "compute" or canonical_precision(proj.precision) != "compute":
        return False
    return fuses_activation(fc.backend, kind)


def activation(kind: str, z: jax.Array, backend: Backend | None = None, fused: bool = True) -> jax.Array:
    """The block's forward activation of ``z``: GELU as ``jax.nn.gelu``
    (exact) in ``z``'s dtype, the gated kinds through the backend's fused
    kernel when it has one (and ``fused``), else
    :func:`~sparse24_jax.activations.gated_activation`."""
    if kind == "gelu":
        return jax.nn.gelu(z, approximate=False)
    return gated(z, kind, backend=backend, fused=fused)


def _gelu_grad_f32(z):
    """d/dz of z * Phi(z) = Phi(z) + z * phi(z), in float32."""
    phi = jnp.exp(-0.5 * z * z) * (1.0 / jnp.sqrt(2.0 * jnp.pi))
    cdf = 0.5 * (1.0 + jax.lax.erf(z * (1.0 / jnp.sqrt(2.0))))
    return cdf + z * phi


def activation_grad(kind: str, z: jax.Array) -> jax.Array:
    """``act'(z)`` of an ungated activation, computed in float32 and rounded once
    to ``z``'s dtype: what a :class:`~sparse24_jax.backend.FusedLinearActivation`
    forward saves for the backward (gelu: ``Phi(z) + z phi(z)``)."""
    if kind != "gelu":
        raise ValueError(f"activation_grad: {kind!r} is gated (its backward needs Z1 itself); "
                         f"only 'gelu' has an elementwise derivative here")
    return _gelu_grad_f32(z.astype(jnp.float32)).astype(z.dtype)


def activation_vjp(kind: str, z: jax.Array, da: jax.Array) -> jax.Array:
    """``dZ``, the VJP of the activation at ``z`` applied to ``da``, computed in
    float32 and rounded once to ``z``'s dtype: what a fused
    ``activation_grad_prune`` kernel writes (its pure-JAX twin).

    gelu: ``da * (Phi(z) + z phi(z))``. Gated, ``z = [x, gate]``:
    ``[da * act(gate), da * x * act'(gate)]`` with ``act`` silu (swiglu) or
    tanh-GELU (geglu)."""
    if kind == "gelu":
        return (da.astype(jnp.float32) * _gelu_grad_f32(z.astype(jnp.float32))).astype(z.dtype)
    _, vjp = jax.vjp(lambda a: gated_activation(a, kind, out_dtype=jnp.float32), z.astype(jnp.float32))
    return vjp(da.astype(jnp.float32))[0].astype(z.dtype)


def _act_grad_and_prune(kind, backend, fused, z, da, key):
    """``(dZ1, S_z(dZ1.T) operands)``: one fused pass where the backend has it,
    else the activation's backward (autodiff of :func:`activation`, whose gated
    kinds reach the backend's gated backward kernel through
    :func:`~sparse24_jax.activations.gated`) followed by ``prune_grad``."""
    if fused and key is not None and kind in capabilities(backend).activation_grad_prune:
        dz, g = backend.activation_grad_prune(kind, da, z, key)
        return match_varying(dz, z, da), g
    dz = jax.vjp(lambda a: activation(kind, a, backend, fused), z)[1](da)[0]
    return dz, backend.prune_grad(key, dz)


@functools.partial(jax.custom_vjp, nondiff_argnums=(13, 14, 15, 16, 17))
def _ffn(x, w1, w2, mask1, mask2, beta1, beta2, key1, key2, prep1, prep2, acc1, acc2, kind, method, backend, fused,
         receipts):
    return _ffn_fwd(x, w1, w2, mask1, mask2, beta1, beta2, key1, key2, prep1, prep2, acc1, acc2, kind, method,
                    backend, fused, receipts)[0]


def _epilogues(kind, backend, fused):
    """(fused forward, fused input gradient): which FFN epilogue capabilities the
    block uses. With either, the residual is ``G1 = act'(Z1)``, not ``Z1``."""
    caps = capabilities(backend)
    return fused and kind in caps.linear_activation, fused and kind in caps.linear_activation_grad


def _ffn_fwd(x, w1, w2, mask1, mask2, beta1, beta2, key1, key2, prep1, prep2, acc1, acc2, kind, method, backend,
             fused, receipts):
    w1_op = prepare(w1, mask1, beta1, method, backend, x.dtype) if prep1 is None else prep1
    w2_op = prepare(w2, mask2, beta2, method, backend, x.dtype) if prep2 is None else prep2
    fused_fwd, fused_grad = _epilogues(kind, backend, fused)
    # custom calls are typed invariant under shard_map: give results their operands' axes
    if fused_fwd:
        # one GEMM whose epilogue writes A = act(Z1) and G1 = act'(Z1) (no pass over Z1)
        a, r1 = backend.matmul_fwd_activation(kind, x, w1_op)
        a, r1 = match_varying(a, x, w1), match_varying(r1, x, w1)
    else:
        z1 = match_varying(backend.matmul_fwd(x, w1_op), x, w1)
        a = activation(kind, z1, backend, fused)
        # the fused input gradient multiplies by act'(Z1): XLA fuses it into the activation
        r1 = activation_grad(kind, z1) if fused_grad else z1
    y = match_varying(backend.matmul_fwd(a, w2_op), a, w2)
    protos = (match_varying(jnp.zeros((), w1.dtype), w1), match_varying(jnp.zeros((), w2.dtype), w2))
    return y, (x, r1, a, w1_op, w2_op, key1, key2, protos, acc1, acc2)


def _ffn_bwd(kind, method, backend, fused, receipts, res, dy):
    x, r1, a, w1_op, w2_op, key1, key2, (p1, p2), acc1, acc2 = res
    fused_fwd, fused_grad = _epilogues(kind, backend, fused)
    dw2 = weight_grad(backend, backend.prune_grad(key2, dy), a, acc2, receipts[1])
    if fused_grad:
        # dZ1 = (dY @ W2_s) * G1 in one GEMM's epilogue (no dA pass), then the MVUE
        dz1 = match_varying(backend.matmul_dx_activation_grad(kind, dy, w2_op, r1), dy, r1)
        g1 = backend.prune_grad(key1, dz1)
    elif fused_fwd:
        # the forward saved G1 = act'(Z1): the activation's backward is a multiply
        da = match_varying(backend.matmul_dx(dy, w2_op), dy)
        dz1 = (da.astype(jnp.float32) * r1.astype(jnp.float32)).astype(r1.dtype)
        g1 = backend.prune_grad(key1, dz1)
    else:
        da = match_varying(backend.matmul_dx(dy, w2_op), dy)
        dz1, g1 = _act_grad_and_prune(kind, backend, fused, r1, da, key1)
    dx = backend.matmul_dx(dz1, w1_op)
    dw1 = weight_grad(backend, g1, x, acc1, receipts[0])
    # each cotangent must vary over exactly its primal's axes (custom_vjp's check)
    dx = match_varying(dx, x)
    dw1 = match_varying(dw1.astype(p1.dtype), p1)
    dw2 = match_varying(dw2.astype(p2.dtype), p2)
    # no cotangents for masks, betas (frozen), keys, prepared operands and running sums
    return (dx, dw1, dw2) + (None,) * 10


_ffn.defvjp(_ffn_fwd, _ffn_bwd)


def mvue_pair(mvue) -> tuple[bool, bool]:
    """``mvue`` of :func:`sparse24_ffn` as ``(fc's, proj's)``."""
    if isinstance(mvue, (bool, np.bool_)):
        return bool(mvue), bool(mvue)
    if isinstance(mvue, (tuple, list)) and len(mvue) == 2 and all(isinstance(m, (bool, np.bool_)) for m in mvue):
        return bool(mvue[0]), bool(mvue[1])
    raise ValueError(f"mvue={mvue!r}: use a bool (both linears) or a pair of bools (fc's, proj's)")


def sparse24_ffn(
    x: jax.Array,
    fc: Sparse24Weight,
    proj: Sparse24Weight,
    *,
    activation: str = "gelu",
    keys: tuple[jax.Array | None, jax.Array | None] = (None, None),
    method: str = "srste",
    backend: str | Backend = "xla",
    mvue: bool | tuple[bool, bool] = True,
    fused: bool = True,
) -> jax.Array:
    """``proj(act(fc(x)))`` with both linears 2:4, as one custom_vjp (module doc).

    Args:
      x: ``(..., d)``; its dtype is the compute dtype.
      fc: the first linear, ``w`` of shape ``(h, d)`` (``(2h, d)`` for a gated
        activation: ``[x, gate]`` along its output axis). A ``grad_acc`` in
        ``fc`` or ``proj`` makes that weight's cotangent ``grad_acc + dW``.
      proj: the second linear, ``w`` of shape ``(d, h)``.
      activation: "gelu" (exact), "swiglu" or "geglu".
      keys: the MVUE keys of ``fc`` and ``proj`` (each needed if its
        ``mvue``); the same keys give the same pruning as two
        ``sparse24_linear`` calls.
      method, backend: as in :func:`~sparse24_jax.sparse24_linear` (a sparse
        method; "dense" has no block: compose plain layers).
      mvue: as in :func:`~sparse24_jax.sparse24_linear`, for both linears, or a
        pair ``(fc's, proj's)``. ``(False, True)`` runs the first linear's
        weight gradient as a dense GEMM of the exact ``dZ1`` (no MVUE pass over
        it) and keeps the second's sparse: where the pruning pass over the wide
        ``dZ1`` costs more than the sparse GEMM saves (docs/BENCHMARKS.md).
      fused: use the backend's fused activation kernels where it has them;
        ``False`` composes the reference activation with the six products.

    The output, like each linear's, is in ``x``'s dtype; the weight gradients
    in their weights' dtypes.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: use one of {ACTIVATIONS}")
    if method == "dense":
        raise ValueError("sparse24_ffn is the 2:4 block: for method='dense' compose plain dense layers")
    key1, key2 = keys
    mvue1, mvue2 = mvue_pair(mvue)
    h_out = fc.w.shape[0] // 2 if activation in GATED_KINDS else fc.w.shape[0]
    validate(x, fc.w, fc.mask, fc.beta, key1, method, mvue1)
    if activation in GATED_KINDS and fc.w.shape[0] % 2:
        raise ValueError(f"a gated activation needs fc's out_features even ([x, gate]), got {fc.w.shape[0]}")
    a_proto = jax.ShapeDtypeStruct((*x.shape[:-1], h_out), x.dtype)
    validate(a_proto, proj.w, proj.mask, proj.beta, key2, method, mvue2)
    check_grad_acc(fc.grad_acc, fc.w, "fc.grad_acc")
    check_grad_acc(proj.grad_acc, proj.w, "proj.grad_acc")
    be = get_backend(backend)
    be.check(*fc.w.shape, x.dtype)
    be.check(*proj.w.shape, x.dtype)
    x2, restore = tokens_2d(x, fc.w.shape[1])
    # no key: that linear's weight gradient is a dense GEMM of the exact output gradient
    key1 = key1 if mvue1 else None
    key2 = key2 if mvue2 else None
    y = _ffn(x2, fc.w, proj.w, fc.mask, proj.mask, fc.beta, proj.beta, key1, key2, fc.prepared, proj.prepared,
             fc.grad_acc, proj.grad_acc, activation, method, be, fused,
             (receipt_for(fc.grad_acc), receipt_for(proj.grad_acc)))
    return restore(y)
