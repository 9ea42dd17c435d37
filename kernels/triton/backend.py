"""``TritonBackend``: the three 2:4 GEMMs and their per-step packing as Triton kernels.

Registered as ``"triton"`` in :mod:`sparse24_jax.backend`; reference twin:
:class:`sparse24_jax.xla_backend.XlaBackend` (same results up to float32
summation order, and up to the random stream for MVUE).

============  =================================================================
method        what runs
============  =================================================================
prepare       ``compress`` kernel on ``W_s`` (2:4 along K); if transposable,
              ``compress_both``: ``W_s`` and ``W_s.T`` (2:4 along N) from one
              read of ``W_s``
matmul_fwd    ``sparse24_matmul(W_s packed, X.T) -> Z.T`` written as ``Z``
matmul_dx     transposable: ``sparse24_matmul(W_s.T packed, dZ.T) -> dX``;
              otherwise (S-STE, 2:4 along K only) a dense XLA dot on ``W_s``
prune_grad    ``mvue`` kernel: MVUE 2:4 of ``dZ.T`` fused with packing;
              ``key=None``: ``dZ`` kept dense
matmul_dw     ``sparse24_matmul(S_z(dZ.T) packed, X) -> dW`` in float32;
              dense ``dZ.T @ X`` when not pruned
mask          ``mask_search`` kernel (90 patterns per 4x4 block)
gated act     optional hooks of :func:`sparse24_jax.activations.gated`, the
              ``gated`` kernels: ``gated_activation`` (GEGLU / SwiGLU forward)
              and ``gated_activation_bwd`` (backward, activation recomputed)
============  =================================================================

Limits (``check``): N and K multiples of 4, at most 2**31 - 1 elements per
operand (int32 offsets); dtypes float32, bfloat16, float16 (float32 GEMMs use
precise "ieee" dots: correct but not fast; train in bfloat16). Other dtypes:
cast, or use backend "xla".
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from . import compress as _compress
from . import gated as _gated
from . import mask_search as _mask_search
from . import matmul as _matmul
from . import mvue as _mvue
from . import soft_threshold as _soft_threshold
from ._runtime import jt

_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_INT32_MAX = 2**31 - 1


class TritonBackend:
    """2:4 GEMMs on Triton kernels (see the module doc)."""

    name = "triton"
    compute_dtypes = _DTYPES

    def __init__(self) -> None:
        # Fail at construction (get_backend turns these into a clear
        # BackendUnavailableError) rather than at the first traced call.
        jt()  # ImportError without jax-triton or without a CUDA jaxlib
        try:
            gpus = jax.devices("gpu")
        except RuntimeError as err:
            raise RuntimeError(f"no GPU visible to JAX ({err})") from err
        if not gpus:
            raise RuntimeError("no GPU visible to JAX")

    # -- validation ---------------------------------------------------------
    def check(self, n: int, k: int, dtype: Any) -> None:
        dt = jnp.dtype(dtype)
        if dt not in _DTYPES:
            raise ValueError(
                f"backend 'triton' computes in float32, bfloat16 or float16, not {dt}: cast the "
                "input (bfloat16 is the fast path), or use backend='xla'"
            )
        if n % 4 or k % 4:
            raise ValueError(
                f"backend 'triton' needs N and K (the weight's shape ({n}, {k})) to be multiples of 4 "
                "(2:4 groups along both axes): pad the layer's features"
            )
        if n * k > _INT32_MAX:
            raise ValueError(
                f"backend 'triton' indexes with int32: the ({n}, {k}) weight has more than 2**31 - 1 "
                "elements; split the layer or use backend='xla'"
            )

    # -- weights ------------------------------------------------------------
    def prepare_weight(self, w_s: jax.Array, *, transposable: bool) -> dict:
        if transposable:  # W and W.T from one read of W_s
            (vals, meta), (t_vals, t_meta) = _compress.compress_both(w_s)
            return {"w_vals": vals, "w_meta": meta, "wt_vals": t_vals, "wt_meta": t_meta}
        vals, meta = _compress.compress(w_s)
        # W_s is 2:4 along K only (S-STE): dX = dZ @ W_s reduces over N, where
        # W_s is dense, so the input gradient is a dense dot.
        return {"w_vals": vals, "w_meta": meta, "w_dense": w_s}

    def prepare_projected(self, w: jax.Array, mask: Any, beta: Any, *, method: str, dtype: Any) -> dict:
        """``prepare_weight`` of ``W_s`` in ``dtype``, straight from the float32
        master weight (capability :class:`sparse24_jax.backend.PrepareFromMaster`):
        SR-STE/STE prune with ``mask`` and pack ``W_s`` and ``W_s.T`` from one
        read of ``w`` (no dense ``W_s``); S-STE packs ``beta * soft_threshold(w)``
        in one pass (its dense copy stays, for ``matmul_dx``). The same bits as
        the two-pass path."""
        if method in ("srste", "ste"):
            (vals, meta), (t_vals, t_meta) = _compress.compress_both(w, mask, dtype=dtype)
            return {"w_vals": vals, "w_meta": meta, "wt_vals": t_vals, "wt_meta": t_meta}
        if method == "sste":
            vals, meta = _soft_threshold.soft_threshold_compress(w, beta, dtype)
            from sparse24_jax import soft_threshold_24  # noqa: PLC0415

            w_s = (beta.astype(w.dtype) * soft_threshold_24(w, axis=-1)).astype(dtype)
            return {"w_vals": vals, "w_meta": meta, "w_dense": w_s}
        raise ValueError(f"method {method!r} has no 2:4 weight to prepare")

    # -- products -----------------------------------------------------------
    def matmul_fwd(self, x: jax.Array, w_op: dict) -> jax.Array:
        # Z.T = W_s @ X.T, written straight into Z's (M, N) layout
        return _matmul.sparse24_matmul(
            w_op["w_vals"], w_op["w_meta"], x, b_transposed=True, out_transposed=True, out_dtype=x.dtype
        )

    def matmul_dx(self, dz: jax.Array, w_op: dict) -> jax.Array:
        if "wt_vals" in w_op:
            # dX.T = W_s.T @ dZ.T, written as dX (M, K)
            return _matmul.sparse24_matmul(
                w_op["wt_vals"], w_op["wt_meta"], dz, b_transposed=True, out_transposed=True,
                out_dtype=dz.dtype,
            )
        w = w_op["w_dense"].astype(dz.dtype)
        return jnp.dot(dz, w, preferred_element_type=jnp.float32).astype(dz.dtype)

    def prune_grad(self, key: jax.Array | None, dz: jax.Array) -> dict:
        if key is None:
            return {"dz": dz}
        vals, meta = _mvue.mvue_compress(key, dz)
        return {"vals": vals, "meta": meta}

    def matmul_dw(self, g: dict, x: jax.Array) -> jax.Array:
        if "dz" in g:
            dz = g["dz"]
            return jnp.dot(dz.T, x.astype(dz.dtype), preferred_element_type=jnp.float32)
        return _matmul.sparse24_matmul(g["vals"], g["meta"], x, out_dtype=jnp.float32)

    def transposable_mask(self, w: jax.Array) -> jax.Array:
        return _mask_search.transposable_mask(w)

    # -- gated activation hooks (sparse24_jax.activations.gated) ------------
    def gated_activation(self, h: jax.Array, kind: str) -> jax.Array:
        """``x * act(gate)`` for ``h = [x, gate]`` (last axis, any leading
        dims) by the fused kernel; differentiable on its own (custom_vjp).
        Dtypes the kernels do not take run the pure-JAX reference."""
        if jnp.dtype(h.dtype) not in _DTYPES:
            from sparse24_jax.activations import gated_activation  # noqa: PLC0415

            return gated_activation(h, kind)
        return _gated.gated_act(h, kind)

    def gated_activation_bwd(self, h: jax.Array, dy: jax.Array, kind: str) -> jax.Array:
        """``dh`` of :meth:`gated_activation` from ``h`` and ``dy`` (one fused pass)."""
        if jnp.dtype(h.dtype) not in _DTYPES:
            from sparse24_jax.activations import gated_activation  # noqa: PLC0415

            return jax.vjp(lambda a: gated_activation(a, kind), h)[1](dy)[0]
        return _gated.gated_bwd(h, dy, kind)
