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
from .ffn import Sparse24Weight, block_applies, mvue_pair, sparse24_ffn
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
    def weight_and_key(self, in_features: int) -> tuple[Sparse24Weight, jax.Array | None]:
        """This layer's variables, made on first use: the master weight with its
        mask (SR-STE/STE) or beta (S-STE) as a :class:`~sparse24_jax.ffn.Sparse24Weight`
        (no mask for ``method="dense"``), and this call's MVUE key (``None`` without
        MVUE, for a dense layer and in dense fine-tuning). :class:`SparseMLP` reads both
        linears' through it to run them as one FFN block."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: use one of {METHODS}")
        for name, v in (("in_features", in_features), ("features", self.features)):
            if self.method != "dense" and v % 4:
                raise ValueError(f"{name}={v} is not a multiple of 4: choose a size divisible by 4")
        w = self.param("weight", self.kernel_init, (self.features, in_features), self.param_dtype)
        if self.method == "dense":
            # no mask at all: refresh_masks and decay_masks find layers by their mask,
            # and a dense layer must get neither a transposable mask nor masked decay
            return Sparse24Weight(w), None
        mask = self.variable(COLLECTION, "mask", lambda: search_mask(self.method, self.backend, w))
        beta = None
        if self.method == "sste":
            beta = self.variable(COLLECTION, "beta", lambda: sste_scale(w)).value
        key = None
        if self.mvue and not self.dense_finetuning:
            if not self.has_rng(COLLECTION):
                raise ValueError(
                    "mvue=True needs an rng: apply(..., rngs={'sparse24': key}) with a fresh key "
                    "every step, or build the module with mvue=False"
                )
            key = self.make_rng(COLLECTION)
        return Sparse24Weight(w, mask.value, beta), key

    def __call__(self, x):
        precision = canonical_precision(self.precision)
        weight, key = self.weight_and_key(x.shape[-1])
        x = x.astype(self.dtype or x.dtype)
        if self.method == "dense" or self.dense_finetuning:
            return sparse24_linear(x, weight.w, method="dense", precision=precision)
        return sparse24_linear(
            x, weight.w, weight.mask, weight.beta, key, method=self.method, backend=self.backend, mvue=self.mvue,
            precision=precision,
        )


def _ffn_block(fc: SparseLinear, proj: SparseLinear, x, activation: str, fused: bool):
    """``proj(act(fc(x)))`` as :func:`~sparse24_jax.ffn.sparse24_ffn`'s one custom_vjp
    where :func:`~sparse24_jax.ffn.block_applies` (as :mod:`sparse24_jax.nnx`'s modules
    do); else ``None``, and the caller composes the two layers (the same numbers without
    the fusion). Each layer draws its MVUE key as its own call would."""
    if not block_applies(fc, proj, activation, fused):
        return None
    x = x.astype(fc.dtype or x.dtype)
    h = fc.features // 2 if activation in GATED_KINDS else fc.features
    fc_w, fc_key = fc.weight_and_key(x.shape[-1])
    proj_w, proj_key = proj.weight_and_key(h)
    return sparse24_ffn(x, fc_w, proj_w, activation=activation, keys=(fc_key, proj_key), method=fc.method,
                        backend=fc.backend, mvue=(fc.mvue, proj.mvue), fused=fused)


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
    :class:`sparse24_jax.nnx.SparseMLP`'s (a pair ``(fc's, proj's)``), over ``linear_kwargs``.
    Where the backend fuses the GELU (into the GEMMs' epilogues, "cutlass", or its backward
    with the MVUE pruning), the two linears run as one FFN block
    (:func:`~sparse24_jax.ffn.sparse24_ffn`), as the NNX module does;
    ``fused_activation=False`` composes them."""

    d_hidden: int
    linear_kwargs: dict = None  # forwarded to both SparseLinear layers
    mvue: Any = None
    fused_activation: bool = True

    @nn.compact
    def __call__(self, x):
        kw_fc, kw_proj = _per_linear(self.linear_kwargs, self.mvue)
        fc = SparseLinear(self.d_hidden, name="fc", **kw_fc)
        proj = SparseLinear(x.shape[-1], name="proj", **kw_proj)
        y = _ffn_block(fc, proj, x, "gelu", fused_flag(self.fused_activation))
        if y is not None:
            return y
        return proj(jax.nn.gelu(fc(x), approximate=False))


class SparseGatedMLP(nn.Module):
    """LLaMA-style FFN, ``proj(x * act(gate))`` with ``[x, gate] = gate_up(x)``.
    The activation runs the backend's fused kernels when it has them, and where the
    backend fuses its backward with the MVUE pruning the two linears run as one FFN
    block (see :class:`sparse24_jax.nnx.SparseGatedMLP`; ``fused_activation`` likewise)."""

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
        fused = fused_flag(self.fused_activation)
        gate_up = SparseLinear(2 * self.d_hidden, name="gate_up", **kw_up)
        proj = SparseLinear(x.shape[-1], name="proj", **kw_proj)
        y = _ffn_block(gate_up, proj, x, self.activation, fused)
        if y is not None:
            return y
        a = gated(gate_up(x), self.activation, backend=kw_up.get("backend", "xla"), fused=fused)
        return proj(a)


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
