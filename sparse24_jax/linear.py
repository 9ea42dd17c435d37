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

``precision="fp8"`` runs the three products in S-STE's FP8 recipe
(:mod:`sparse24_jax.fp8`: per-tensor amax scaling, ``X``/``W_s`` e4m3,
``dZ``/``S_z(dZ.T)`` e5m2, float32 accumulation, result times both scales).
The operands are quantized here and the scale product multiplies each result
here. A backend with a native FP8 forward
(:class:`~sparse24_jax.backend.NativeFp8Forward`: cuSPARSELt's e4m3 2:4 GEMM
on Hopper, when its probe passes) runs the forward on the e4m3 values
themselves; every other product is *simulated*: the backend multiplies the fp8
values upcast exactly to float32 (to the compute dtype for a backend that
rejects float32, e.g. cuSPARSELt, whose output then rounds before the
scaling). The gradient GEMMs are always simulated: they mix e5m2 with e4m3. With backend
"xla" that is exactly :func:`sparse24_jax.fp8.fp8_dot` of the same operands.
The MVUE pruning of ``dZ.T`` then uses the reference :func:`~sparse24_jax.mvue_24`
(identical to the "xla" backend's) on the compute-dtype ``dZ``, and the pruned
tensor is quantized and passed to the backend as an unpruned (dense) operand,
unless the backend has ``quantize_pruned_grad(g, fp8_dtype)``: then its own
MVUE kernel prunes and compresses ``dZ.T`` and the kept values are quantized
in the compressed operand (cuSPARSELt: a sparse weight-gradient GEMM).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from . import _checks
from . import fp8 as _fp8
from ._vma import match_varying
from .backend import Backend, NativeFp8Forward, get_backend
from .masks import mask_24
from .mvue import mvue_24
from .sste import soft_threshold_24

__all__ = ["sparse24_linear", "prepare_sparse24_weight", "project_weight", "METHODS", "PRECISIONS"]

#: "bf16": compute in the input's dtype (the default); "fp8": S-STE's FP8
#: recipe, simulated (module doc).
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


def _validate(x, w, mask, beta, key, method, mvue, precision="bf16"):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {METHODS}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {PRECISIONS}")
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _sparse_linear_2d(x, w, mask, beta, key, prepared, method: str, backend: Backend,
                      precision: str = "bf16"):
    return _fwd(x, w, mask, beta, key, prepared, method, backend, precision)[0]


def _sim_dtype(backend: Backend, n: int, k: int, dtype) -> Any:
    """The dtype that carries fp8 values into a backend's GEMMs: float32 (so
    the products are the recipe's exactly) unless the backend rejects it."""
    try:
        backend.check(n, k, jnp.float32)
    except ValueError:
        return dtype
    return jnp.float32


def _native_fp8(backend: Backend) -> bool:
    """Whether ``backend`` runs the FP8 forward natively here."""
    return isinstance(backend, NativeFp8Forward) and backend.fp8_forward_available()[0]


def _prepare(w, mask, beta, method, backend: Backend, dtype):
    """Project ``W`` to ``W_s`` and let the backend compress it (in ``dtype``)."""
    w_s, transposable = project_weight(w, mask, beta, method=method)
    return backend.prepare_weight(w_s.astype(dtype), transposable=transposable)


def _fwd(x, w, mask, beta, key, prepared, method, backend, precision="bf16"):
    # a 0-d array of w's dtype (and shard_map axes): the cotangent of w must come back in them
    w_proto = match_varying(jnp.zeros((), w.dtype), w)
    if precision == "fp8":
        w_s, transposable = project_weight(w, mask, beta, method=method)
        sim = _sim_dtype(backend, *w.shape, x.dtype)
        qw, sw = _fp8.quantize(w_s, _fp8.E4M3)
        qx, sx = _fp8.quantize(x, _fp8.E4M3)
        w_op = backend.prepare_weight(qw.astype(sim), transposable=transposable)
        if _native_fp8(backend):
            # a real e4m3 2:4 GEMM (w_op then only feeds the input gradient)
            z = backend.matmul_fwd_fp8(qx, backend.prepare_weight_fp8(qw), x.dtype)
        else:
            z = backend.matmul_fwd(qx.astype(sim), w_op)
        z = z.astype(jnp.float32) * (sx * sw)
        # residuals: X in e4m3 (reused by the weight-gradient GEMM) and W_s's
        # prepared e4m3 values (input-gradient GEMM), with their scales
        protos = (w_proto, match_varying(jnp.zeros((), x.dtype), x), jnp.zeros((), sim))
        return match_varying(z.astype(x.dtype), x, w), (qx, sx, w_op, sw, key, protos)
    # prepared: compressed once per optimizer step by the caller (gradient accumulation)
    w_op = _prepare(w, mask, beta, method, backend, x.dtype) if prepared is None else prepared
    # under shard_map a custom call's result is typed invariant: give it the operands' axes
    z = match_varying(backend.matmul_fwd(x, w_op), x, w)
    return z, (x, w_op, key, w_proto)


def _bwd(method, backend, precision, res, dz):
    if precision == "fp8":
        qx, sx, w_op, sw, key, (w_proto, x_proto, sim_proto) = res
        sim = sim_proto.dtype
        qdz, sdz = _fp8.quantize(dz, _fp8.E5M2)
        dx = backend.matmul_dx(qdz.astype(sim), w_op).astype(jnp.float32) * (sdz * sw)
        pruned = None
        quantize_pruned = getattr(backend, "quantize_pruned_grad", None)
        if key is not None and quantize_pruned is not None:
            # the backend's MVUE kernel, then its kept values quantized in place
            pruned = quantize_pruned(backend.prune_grad(key, dz), _fp8.E5M2)
        if pruned is not None:
            g_op, sg = pruned
        else:
            g = dz.T if key is None else mvue_24(key, dz.T, axis=-1)  # S_z(dZ.T), (N, M)
            qg, sg = _fp8.quantize(g, _fp8.E5M2)
            g_op = backend.prune_grad(None, qg.astype(sim).T)  # already pruned: pass it dense
        dw = backend.matmul_dw(g_op, qx.astype(sim)).astype(jnp.float32) * (sg * sx)
        # each cotangent must vary over exactly its primal's axes (custom_vjp's check)
        dx, dw = match_varying(dx.astype(x_proto.dtype), x_proto), match_varying(dw.astype(w_proto.dtype), w_proto)
        return dx, dw, None, None, None, None
    x, w_op, key, w_proto = res
    dx = backend.matmul_dx(dz, w_op)
    dw = backend.matmul_dw(backend.prune_grad(key, dz), x).astype(w_proto.dtype)
    # each cotangent must vary over exactly its primal's axes (custom_vjp's check)
    dx, dw = match_varying(dx, x), match_varying(dw, w_proto)
    # no cotangent for mask, beta (frozen), key and the prepared operands
    return dx, dw, None, None, None, None


_sparse_linear_2d.defvjp(_fwd, _bwd)


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
    those custom calls out of the micro-batch loop (checked on an H100 with
    ``benchmarks/check_hoist.py``). Call this once per step, outside the loop,
    and pass the result to every micro-batch's call: the products are the
    same. ``dtype`` must be the compute dtype (``x.dtype``) of those calls.
    """
    if method == "dense":
        raise ValueError("method='dense' has nothing to prepare: call sparse24_linear without prepared=")
    be = get_backend(backend)
    _checks.check_rank2(w, "w")
    be.check(*w.shape, dtype)
    return _prepare(w, mask, beta, method, be, dtype)


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
    precision: str = "bf16",
    prepared: Any = None,
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
      precision: "bf16" (default): the GEMMs compute in ``x``'s dtype; "fp8":
        S-STE's FP8 recipe for all three GEMMs (:mod:`sparse24_jax.fp8`),
        simulated through the backend (module doc). The output and ``dX`` keep
        ``x``'s dtype, ``dW`` ``w``'s. With ``method="dense"`` the dense
        product runs the same recipe on the "xla" backend.
      prepared: the result of :func:`prepare_sparse24_weight` for this
        ``w``, ``mask``, ``beta``, ``method``, ``backend`` and ``x.dtype``,
        computed once per optimizer step (gradient accumulation); ``None``
        (default) compresses here. Not with ``precision="fp8"``.

    Tokens are flattened to ``M = prod(x.shape[:-1])`` rows and, if M is not a
    multiple of 4 (MVUE groups 4 tokens), zero rows are appended for the
    products and dropped again; zero tokens add nothing to ``dW``.
    """
    _validate(x, w, mask, beta, key, method, mvue, precision)
    if prepared is not None and (precision != "bf16" or method == "dense"):
        raise ValueError(
            f"prepared= works with precision='bf16' and a sparse method, not precision={precision!r}, "
            f"method={method!r}: drop prepared= (the call then compresses the weight itself)"
        )
    if method == "dense" and precision == "fp8":
        # dense fine-tuning in FP8: the same recipe, dense W, no MVUE
        backend, key, mvue = "xla", None, False
    elif method == "dense":
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
    z = _sparse_linear_2d(x2, w, mask, beta, key if mvue else None, prepared, method, be, precision)
    if pad:
        z = z[:m]
    return z.reshape(*lead, n)
