"""The 2:4 linear layer in S-STE's FP8 recipe: its own ``jax.custom_vjp``.

The three GEMMs of :mod:`sparse24_jax.linear`, each on per-tensor scaled fp8
operands (:mod:`sparse24_jax.fp8`: amax scaling, ``X``/``W_s`` e4m3,
``dZ``/``S_z(dZ.T)`` e5m2, float32 accumulation, the result times both
scales). The operands are quantized here and the scale product multiplies
each result here. Residuals differ from the bf16 rule: ``X`` is kept in e4m3
(it feeds the weight-gradient GEMM) and ``W_s``'s prepared e4m3 values with
their scales.

Which products are real FP8 GEMMs:

* the forward, on a backend with a native FP8 forward
  (:class:`~sparse24_jax.backend.NativeFp8Forward`: cuSPARSELt's e4m3 2:4 GEMM
  on Hopper, when its probe passes): it multiplies the e4m3 values themselves;
* every other product is *simulated*: the backend multiplies the fp8 values
  upcast exactly to float32, or, for a backend whose GEMMs take no float32
  (``Capabilities.compute_dtypes``, e.g. cuSPARSELt), to the compute dtype,
  whose output then rounds before the scaling. The gradient GEMMs are always
  simulated: they mix e5m2 with e4m3. With backend "xla" that is exactly
  :func:`sparse24_jax.fp8.fp8_dot` of the same operands.

The MVUE pruning of ``dZ.T`` uses the reference :func:`~sparse24_jax.mvue_24`
(identical to the "xla" backend's) on the compute-dtype ``dZ``, and the pruned
tensor is quantized and passed to the backend as an unpruned (dense) operand,
unless the backend quantizes its own pruned gradient
(:class:`~sparse24_jax.backend.QuantizePrunedGrad`): then its MVUE kernel
prunes and compresses ``dZ.T`` and the kept values are quantized in the
compressed operand (cuSPARSELt: a sparse weight-gradient GEMM).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from . import fp8 as _fp8
from ._vma import match_varying
from .backend import Backend, capabilities, get_backend
from .linear import project_weight, tokens_2d
from .mvue import mvue_24

__all__ = ["sparse24_linear_fp8"]


def _sim_dtype(backend: Backend, dtype) -> Any:
    """The dtype that carries fp8 values into a backend's GEMMs: float32 (so
    the products are the recipe's exactly) where its GEMMs take float32."""
    return jnp.float32 if capabilities(backend).float32_operands else dtype


def _native_forward(backend: Backend) -> bool:
    """Whether ``backend`` runs the FP8 forward natively on this machine."""
    return capabilities(backend).native_fp8_forward and backend.fp8_forward_available()[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _linear_fp8(x, w, mask, beta, key, method: str, backend: Backend):
    return _linear_fp8_fwd(x, w, mask, beta, key, method, backend)[0]


def _linear_fp8_fwd(x, w, mask, beta, key, method, backend):
    w_s, transposable = project_weight(w, mask, beta, method=method)
    sim = _sim_dtype(backend, x.dtype)
    qw, sw = _fp8.quantize(w_s, _fp8.E4M3)
    qx, sx = _fp8.quantize(x, _fp8.E4M3)
    w_op = backend.prepare_weight(qw.astype(sim), transposable=transposable)
    if _native_forward(backend):
        # a real e4m3 2:4 GEMM (w_op then only feeds the input gradient)
        z = backend.matmul_fwd_fp8(qx, backend.prepare_weight_fp8(qw), x.dtype)
    else:
        z = backend.matmul_fwd(qx.astype(sim), w_op)
    z = z.astype(jnp.float32) * (sx * sw)
    # 0-d arrays carrying the primals' dtypes (and shard_map axes) and the simulation dtype
    protos = (match_varying(jnp.zeros((), w.dtype), w), match_varying(jnp.zeros((), x.dtype), x),
              jnp.zeros((), sim))
    return match_varying(z.astype(x.dtype), x, w), (qx, sx, w_op, sw, key, protos)


def _linear_fp8_bwd(method, backend, res, dz):
    qx, sx, w_op, sw, key, (w_proto, x_proto, sim_proto) = res
    sim = sim_proto.dtype
    qdz, sdz = _fp8.quantize(dz, _fp8.E5M2)
    dx = backend.matmul_dx(qdz.astype(sim), w_op).astype(jnp.float32) * (sdz * sw)
    pruned = None
    if key is not None and capabilities(backend).quantize_pruned_grad:
        # the backend's MVUE kernel, then its kept values quantized in place
        pruned = backend.quantize_pruned_grad(backend.prune_grad(key, dz), _fp8.E5M2)
    if pruned is not None:
        g_op, sg = pruned
    else:
        g = dz.T if key is None else mvue_24(key, dz.T, axis=-1)  # S_z(dZ.T), (N, M)
        qg, sg = _fp8.quantize(g, _fp8.E5M2)
        g_op = backend.prune_grad(None, qg.astype(sim).T)  # already pruned: pass it dense
    dw = backend.matmul_dw(g_op, qx.astype(sim)).astype(jnp.float32) * (sg * sx)
    # each cotangent must vary over exactly its primal's axes (custom_vjp's check)
    dx = match_varying(dx.astype(x_proto.dtype), x_proto)
    dw = match_varying(dw.astype(w_proto.dtype), w_proto)
    return dx, dw, None, None, None


_linear_fp8.defvjp(_linear_fp8_fwd, _linear_fp8_bwd)


def sparse24_linear_fp8(x, w, mask=None, beta=None, key=None, *, method: str = "srste",
                        backend: str | Backend = "xla") -> jax.Array:
    """``Z = X @ W_s.T`` in the FP8 recipe (module doc); the arguments are
    :func:`~sparse24_jax.sparse24_linear`'s, already validated by it
    (``key=None``: no MVUE). ``method="dense"``: dense fine-tuning in FP8, the
    same recipe with dense ``W`` and no MVUE, on the "xla" backend."""
    if method == "dense":
        backend, key = "xla", None
    be = get_backend(backend)
    n, k = w.shape
    be.check(n, k, x.dtype)
    x2, restore = tokens_2d(x, k)
    return restore(_linear_fp8(x2, w, mask, beta, key, method, be))
