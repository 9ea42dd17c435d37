"""Flax linen versions of the 2:4 modules, for linen users.

Linen keeps state in collections: the master weight is ``params/.../weight``
(shape ``(out, in)``), and the non-trainable 2:4 state lives in the
``"sparse24"`` collection: ``mask`` (boolean) for every layer, ``beta`` for
S-STE layers. Apply with ``mutable=False`` and an rng for MVUE::

    y = model.apply({"params": p, "sparse24": s}, x, rngs={"sparse24": key})

The functional helpers :func:`refresh_masks` and :func:`decay_masks` play the
role of their NNX namesakes on those two trees, and :func:`value_and_grad` that
of :func:`sparse24_jax.nnx.value_and_grad` for gradient accumulation: the
running sums go into the 2:4 weight-gradient GEMMs::

    def loss(params, batch, key):
        return model.apply({"params": params, "sparse24": s}, batch, rngs={"sparse24": key})

    def micro(sums, xs):  # one micro-batch and its own MVUE key
        return s24linen.value_and_grad(loss, params, *xs, grad_acc=sums)[1], None

    keys = jax.random.split(step_key, batches.shape[0])
    grads = jax.lax.scan(micro, jax.tree.map(jnp.zeros_like, params), (batches, keys))[0]
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict

from . import _grad_acc
from .activations import GATED_KINDS, fused_flag, gated
from .ffn import Sparse24Weight, block_applies, mvue_pair, sparse24_ffn
from .fp8 import canonical_precision
from .linear import METHODS, search_mask, sparse24_linear
from .sste import sste_scale

__all__ = ["SparseLinear", "SparseMLP", "SparseGatedMLP", "refresh_masks", "decay_masks", "value_and_grad",
           "COLLECTION"]

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
        linears' through it to run them as one FFN block. Under :func:`value_and_grad`
        with ``grad_acc``, the weight carries its running sum (``grad_acc``) where this
        layer's backward adds it: a sparse method in the compute dtype."""
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
        acc = None
        if not self.dense_finetuning and canonical_precision(self.precision) == "compute":
            acc = _grad_acc.take(w)  # None unless value_and_grad handed this weight's sum
        return Sparse24Weight(w, mask.value, beta, grad_acc=acc), key

    def __call__(self, x):
        precision = canonical_precision(self.precision)
        weight, key = self.weight_and_key(x.shape[-1])
        x = x.astype(self.dtype or x.dtype)
        if self.method == "dense" or self.dense_finetuning:
            return sparse24_linear(x, weight.w, method="dense", precision=precision)
        return sparse24_linear(
            x, weight.w, weight.mask, weight.beta, key, method=self.method, backend=self.backend, mvue=self.mvue,
            precision=precision, grad_acc=weight.grad_acc,
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


def value_and_grad(fn: Callable[..., Any], params, *args, grad_acc: Any = None, has_aux: bool = False):
    """``jax.value_and_grad(fn, has_aux=has_aux)(params, *args)``, with gradient
    accumulation's running sum added: given ``grad_acc`` (shaped like ``params``,
    zeros to start), the gradients are ``grad_acc`` plus this call's, the next
    running sum. ``fn(params, *args)`` applies the model, e.g.
    ``model.apply({"params": params, "sparse24": s}, x, rngs=...)``.

    Each :class:`SparseLinear` that runs a sparse method in its compute dtype on
    the very ``params`` leaf given here adds its weight's sum in its backward: in
    the weight-gradient GEMM's epilogue where the backend can
    (:class:`~sparse24_jax.backend.AccumulatingWeightGrad`: "cutlass"), without a
    separate pass over the float32 gradient per micro-batch. Every other leaf's
    sum (dense layers, dense fine-tuning, fp8, a weight ``fn`` transforms before
    the model sees it, a layer whose output the value does not use) is added
    here, as ``jax.tree.map(jnp.add, grad_acc, grads)`` would: the same sums
    either way. :func:`sparse24_jax.nnx.value_and_grad` is the NNX counterpart."""
    if grad_acc is None:
        return jax.value_and_grad(fn, has_aux=has_aux)(params, *args)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    sums, sums_def = jax.tree_util.tree_flatten(grad_acc)
    if sums_def != treedef:
        raise ValueError(f"grad_acc must be shaped like params (e.g. jax.tree.map(jnp.zeros_like, params)): "
                         f"params is {treedef}, grad_acc {sums_def}")
    # a sum is handed only where its receipts can tell it apart: one array object per leaf
    ids = [id(a) for a in sums]
    handable = [ids.count(i) == 1 for i in ids]

    def f(params_in):
        handed = {}
        for w, acc, ok in zip(jax.tree_util.tree_leaves(params_in), sums, handable):
            if ok and _grad_acc.fits(acc, w):
                handed[id(w)] = acc
        with _grad_acc.handing(handed):
            return fn(params_in, *args)

    with _grad_acc.collecting() as receipts:
        out, grads = jax.value_and_grad(f, has_aux=has_aux)(params)
    # the sums a backward added (JAX runs none for a layer whose output the value does not use)
    added = [_grad_acc.was_added(receipts, id(acc)) for acc in sums]
    new = [g if took else acc + g for g, acc, took in zip(jax.tree_util.tree_leaves(grads), sums, added)]
    return out, jax.tree_util.tree_unflatten(treedef, new)
