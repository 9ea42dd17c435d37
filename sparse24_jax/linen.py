"""Flax linen versions of the 2:4 modules, for linen users.

Linen keeps state in collections: the master weight is ``params/.../weight``
(shape ``(out, in)``), and the non-trainable 2:4 state lives in the
``"sparse24"`` collection: ``mask`` (boolean) for every layer, ``beta`` for
S-STE layers. Apply with ``mutable=False`` and an rng for MVUE::

    y = model.apply({"params": p, "sparse24": s}, x, rngs={"sparse24": key})

The functional helpers :func:`refresh_masks` and :func:`decay_masks` play the
role of their NNX namesakes on those two trees.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict

from .activations import GATED_KINDS, fused_flag, gated
from .ffn import mvue_pair
from .fp8 import canonical_precision
from .linear import METHODS, search_mask, sparse24_linear
from .sste import sste_scale

__all__ = ["SparseLinear", "SparseMLP", "SparseGatedMLP", "refresh_masks", "decay_masks", "COLLECTION"]

COLLECTION = "sparse24"

default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-1, out_axis=-2)


class SparseLinear(nn.Module):
    """``y = x @ W_s.T`` with a 2:4 projected weight; see
    :class:`sparse24_jax.nnx.SparseLinear` for the arguments.
    ``dense_finetuning=True``: dense fine-tuning (the mask is no longer
    applied, the master weight used as it is)."""

    features: int
    method: str = "srste"
    backend: Any = "xla"
    mvue: bool = True
    precision: str = "compute"  # GEMMs in the compute dtype ("bf16": its earlier name) or "fp8" (S-STE's recipe)
    dense_finetuning: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = default_kernel_init

    @nn.compact
    def __call__(self, x):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: use one of {METHODS}")
        precision = canonical_precision(self.precision)
        k = x.shape[-1]
        for name, v in (("in_features", k), ("features", self.features)):
            if self.method != "dense" and v % 4:
                raise ValueError(f"{name}={v} is not a multiple of 4: choose a size divisible by 4")
        w = self.param("weight", self.kernel_init, (self.features, k), self.param_dtype)
        if self.method == "dense":
            # no mask at all: refresh_masks and decay_masks find layers by their mask,
            # and a dense layer must get neither a transposable mask nor masked decay
            return sparse24_linear(x.astype(self.dtype or x.dtype), w, method="dense", precision=precision)
        mask = self.variable(COLLECTION, "mask", lambda: search_mask(self.method, self.backend, w))
        beta = None
        if self.method == "sste":
            beta = self.variable(COLLECTION, "beta", lambda: sste_scale(w)).value
        x = x.astype(self.dtype or x.dtype)
        if self.dense_finetuning:
            return sparse24_linear(x, w, method="dense", precision=precision)
        key = None
        if self.mvue:
            if not self.has_rng(COLLECTION):
                raise ValueError(
                    "mvue=True needs an rng: apply(..., rngs={'sparse24': key}) with a fresh key "
                    "every step, or build the module with mvue=False"
                )
            key = self.make_rng(COLLECTION)
        return sparse24_linear(
            x, w, mask.value, beta, key, method=self.method, backend=self.backend, mvue=self.mvue,
            precision=precision,
        )


def _per_linear(linear_kwargs, mvue):
    """The two linears' keyword arguments: ``linear_kwargs`` for both, ``mvue`` (a bool or a
    pair, first linear's then proj's; ``None``: as ``linear_kwargs`` says) set per linear."""
    kw = dict(linear_kwargs or {})
    if mvue is None:
        return kw, kw
    first, second = mvue_pair(mvue)
    return {**kw, "mvue": first}, {**kw, "mvue": second}


class SparseMLP(nn.Module):
    """GPT-2's FFN, ``proj(gelu(fc(x)))``, both linears 2:4. ``mvue``: as
    :class:`sparse24_jax.nnx.SparseMLP`'s (a pair ``(fc's, proj's)``), over ``linear_kwargs``."""

    d_hidden: int
    linear_kwargs: dict = None  # forwarded to both SparseLinear layers
    mvue: Any = None

    @nn.compact
    def __call__(self, x):
        kw_fc, kw_proj = _per_linear(self.linear_kwargs, self.mvue)
        h = SparseLinear(self.d_hidden, name="fc", **kw_fc)(x)
        return SparseLinear(x.shape[-1], name="proj", **kw_proj)(jax.nn.gelu(h, approximate=False))


class SparseGatedMLP(nn.Module):
    """LLaMA-style FFN, ``proj(x * act(gate))`` with ``[x, gate] = gate_up(x)``.
    The activation runs the backend's fused kernels when it has them (see
    :class:`sparse24_jax.nnx.SparseGatedMLP`; ``fused_activation`` likewise)."""

    d_hidden: int
    activation: str = "swiglu"
    linear_kwargs: dict = None
    fused_activation: bool = True
    mvue: Any = None  # as SparseMLP's: a pair is (gate_up's, proj's)

    @nn.compact
    def __call__(self, x):
        if self.activation not in GATED_KINDS:
            raise ValueError(f"unknown activation {self.activation!r}: use one of {GATED_KINDS}")
        kw_up, kw_proj = _per_linear(self.linear_kwargs, self.mvue)
        h = SparseLinear(2 * self.d_hidden, name="gate_up", **kw_up)(x)
        a = gated(h, self.activation, backend=kw_up.get("backend", "xla"), fused=fused_flag(self.fused_activation))
        return SparseLinear(x.shape[-1], name="proj", **kw_proj)(a)


def _layers(params, sparse_state):
    """(path, weight, layer_state) for every layer with a ``mask`` in the
    sparse24 collection: the 2:4 layers (``method="dense"`` layers keep none;
    ``beta`` marks S-STE's, the others are hard-masked SR-STE/STE layers)."""
    flat_p = flatten_dict(params)
    flat_s = flatten_dict(sparse_state)
    for path, m in flat_s.items():
        if path[-1] == "mask":
            prefix = path[:-1]
            yield prefix, flat_p[prefix + ("weight",)], {k[-1]: v for k, v in flat_s.items() if k[:-1] == prefix}


def refresh_masks(params, sparse_state, step, *, mask_interval: int = 40, backend: Any = "xla"):
    """Recompute the masks (transposable for layers without ``beta``, the
    soft-threshold support for S-STE layers) when ``mask_interval`` divides
    ``step``. Returns ``(new_sparse_state, flip_rate)``. Jit-able."""
    flat = flatten_dict(sparse_state)
    due = jnp.asarray(step) % mask_interval == 0
    flips = jnp.zeros((), jnp.float32)
    total = 0
    for prefix, w, st in _layers(params, sparse_state):
        method = "sste" if "beta" in st else "srste"
        old = st["mask"]
        new = jax.lax.cond(due, lambda w: search_mask(method, backend, w), lambda _: old, w)
        flat[prefix + ("mask",)] = new
        flips += jnp.sum(new != old, dtype=jnp.float32)
        total += old.size
    return unflatten_dict(flat), jnp.where(due, flips / max(total, 1), 0.0)


def decay_masks(params, sparse_state, *, dense_finetuning: bool = False):
    """The ``masks=`` tree for :func:`~sparse24_jax.masked_decay`: the mask at
    every hard-masked weight, ``True`` elsewhere (and everywhere in dense
    fine-tuning, ``dense_finetuning=True``)."""
    masked = {} if dense_finetuning else {
        p + ("weight",): st["mask"] for p, _, st in _layers(params, sparse_state) if "beta" not in st
    }
    flat = {path: masked.get(path, True) for path in flatten_dict(params)}
    return unflatten_dict(flat)
