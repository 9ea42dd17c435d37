"""Flax NNX modules with 2:4 sparse weights, and the functions that maintain them.

A :class:`SparseLinear` keeps the dense float32 master weight as an
``nnx.Param`` (trained by the optimizer) and, as explicit non-trainable
Variables, its 2:4 mask (:class:`Sparse24Mask`) and S-STE's frozen scale
(:class:`Sparse24Scale`). Training with them takes three calls besides the
usual ones::

    optimizer = nnx.Optimizer(model, sparse24_jax.srste_optimizer(lr, alpha=6e-5, dense_step=d),
                              wrt=nnx.Param)
    ...
    optimizer.update(model, grads, masks=decay_masks(model))   # masked decay needs the masks
    flip, refreshed = refresh_masks(model, step)                 # every mask_interval steps
    if step == d: set_dense(model)                                # dense fine-tuning

Each layer keeps an ``nnx.RngStream`` for its MVUE keys, so the stream's
counter is model state that changes on every call. Inside ``jax.grad`` under
``lax.scan`` (gradient accumulation), rebuild the model from split state with
``nnx.merge(graphdef, params, rest, copy=True)`` and return the advanced
``rest``: merging without ``copy`` reuses Variables created at an outer trace
level and raises ``TraceContextError`` (see ``train/train.py``).

The weight is stored ``(out_features, in_features)`` (PyTorch's layout, not
flax's ``(in, out)``) because the 2:4 groups run along the input axis K, which
must be the contiguous one for the sparse tensor cores.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from .activations import GATED_KINDS, gated
from .linear import METHODS, PRECISIONS, prepare_sparse24_weight, search_mask, sparse24_linear
from .parallel import ShardConfig, check_tensor_parallel, sharded_sparse24_linear
from .sste import sste_scale

__all__ = [
    "Sparse24Mask",
    "Sparse24Scale",
    "SparseLinear",
    "SparseMLP",
    "SparseGatedMLP",
    "sparse_layers",
    "prepare_weights",
    "using_prepared",
    "refresh_masks",
    "deferred_mask_search",
    "search_masks",
    "decay_masks",
    "set_dense",
    "init_sste_scales",
]


class Sparse24Mask(nnx.Variable):
    """A boolean 2:4 mask (not trained; recomputed every ``mask_interval``)."""


class Sparse24Scale(nnx.Variable):
    """S-STE's per-tensor scale beta (computed once, then frozen)."""


#: Fan-in scaled init for the (out, in) layout (flax's defaults assume (in, out)).
default_kernel_init = nnx.initializers.variance_scaling(
    1.0, "fan_in", "truncated_normal", in_axis=-1, out_axis=-2
)


def _get(v: nnx.Variable):
    """A Variable's value (``get_value`` where flax has it: the attribute
    access is deprecated from flax 0.12)."""
    return v.get_value() if hasattr(v, "get_value") else v.value


def _set(v: nnx.Variable, value) -> None:
    if hasattr(v, "set_value"):
        v.set_value(value)
    else:
        v.value = value


def _check_features(name: str, value: int, method: str) -> None:
    if method != "dense" and value % 4:
        raise ValueError(
            f"{name}={value} is not a multiple of 4: 2:4 sparsity needs groups of 4 along both "
            f"axes of the weight; choose a size divisible by 4 (64 or more for the GPU backends), "
            f"or method='dense'"
        )


class SparseLinear(nnx.Module):
    """``y = x @ W_s.T`` with a 2:4 projected weight (see
    :func:`~sparse24_jax.sparse24_linear`), no bias.

    Args:
      in_features, out_features: K and N; multiples of 4.
      method: "srste" (transposable hard mask; pair with masked decay),
        "ste" (same mask, no decay), "sste" (beta * soft threshold), "dense".
      backend: "xla", "triton", "cusparselt" or a Backend.
      mask_interval: recompute the mask every this many optimizer steps (see
        :func:`refresh_masks`); SPEC's recipe uses 40.
      mvue: MVUE-prune ``dZ.T`` in the weight-gradient GEMM.
      precision: "bf16" (GEMMs in the compute dtype) or "fp8" (S-STE's FP8
        recipe, simulated; see :mod:`sparse24_jax.fp8`). Also applies in
        dense fine-tuning. Under ``shard`` the per-tensor scales are per
        shard (each device's own amax).
      dtype: compute dtype (inputs and the projected weight are cast to it),
        ``None`` for the input's dtype.
      param_dtype: master weight dtype (float32).
      shard: run per device inside ``shard_map`` on this mesh (needed for
        the GPU backends when training on several devices; see
        :mod:`sparse24_jax.parallel`). ``None``: plain jit sharding.
      tp_mode: tensor-parallel split of the weight with ``shard``:
        "column" (split N), "row" (split K) or ``None``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        method: str = "srste",
        backend: Any = "xla",
        mask_interval: int = 40,
        mvue: bool = True,
        precision: str = "bf16",
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        kernel_init: Any = default_kernel_init,
        shard: ShardConfig | None = None,
        tp_mode: str | None = None,
        rngs: nnx.Rngs,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}: use one of {METHODS}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: use one of {PRECISIONS}")
        if mask_interval < 1:
            raise ValueError(f"mask_interval={mask_interval} must be a positive number of steps")
        _check_features("in_features", in_features, method)
        _check_features("out_features", out_features, method)
        self.in_features, self.out_features = in_features, out_features
        self.method, self.backend, self.mvue = method, backend, mvue
        self.precision = precision
        self.mask_interval, self.dtype = mask_interval, dtype
        self.shard, self.tp_mode = shard, tp_mode
        if shard is not None:
            check_tensor_parallel(out_features, in_features, shard.size(shard.tensor_axis if tp_mode else None), tp_mode)
        w = kernel_init(rngs.params(), (out_features, in_features), param_dtype)
        self.weight = nnx.Param(w)
        # deferred (inside deferred_mask_search): a placeholder, set later by search_masks
        self.mask = Sparse24Mask(jnp.ones(w.shape, bool) if _DEFER_SEARCH.get() else self._search_mask(w))
        self.beta = Sparse24Scale(sste_scale(w) if method == "sste" else jnp.ones((), jnp.float32))
        self.rngs = rngs["sparse24"].fork()
        #: dense fine-tuning: a static switch, so flipping it retraces once.
        self.dense = method == "dense"

    def _search_mask(self, w):
        return search_mask(self.method, self.backend, w)

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        if self.dense:
            return sparse24_linear(x, _get(self.weight), method="dense", precision=self.precision)
        key = self.rngs() if self.mvue else None
        args = (x, _get(self.weight), _get(self.mask), _get(self.beta), key)
        kwargs = dict(method=self.method, backend=self.backend, mvue=self.mvue, precision=self.precision)
        if self.shard is not None:
            return sharded_sparse24_linear(*args, shard=self.shard, mode=self.tp_mode, **kwargs)
        prepared = (_PREPARED.get() or {}).get(id(self))
        return sparse24_linear(*args, prepared=prepared, **kwargs)


class SparseMLP(nnx.Module):
    """GPT-2's FFN: ``proj(gelu(fc(x)))`` with both linears 2:4 sparse.
    ``fc``: d_model -> d_hidden, exact GELU, ``proj``: d_hidden -> d_model."""

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        *,
        kernel_init: Any = default_kernel_init,
        out_kernel_init: Any = None,
        rngs: nnx.Rngs,
        **linear_kwargs: Any,
    ):
        tp = linear_kwargs.get("shard") is not None and linear_kwargs["shard"].tensor_axis is not None
        self.fc = SparseLinear(
            d_model, d_hidden, kernel_init=kernel_init, tp_mode="column" if tp else None, rngs=rngs, **linear_kwargs
        )
        self.proj = SparseLinear(
            d_hidden, d_model, kernel_init=out_kernel_init or kernel_init, tp_mode="row" if tp else None,
            rngs=rngs, **linear_kwargs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(jax.nn.gelu(self.fc(x), approximate=False))


class SparseGatedMLP(nnx.Module):
    """LLaMA-style FFN: ``proj(x * act(gate))`` with ``[x, gate] = gate_up(x)``,
    ``act`` silu (``activation="swiglu"``) or tanh-GELU ("geglu").

    The activation goes through :func:`sparse24_jax.activations.gated`: the
    backend's fused forward and backward kernels when it has them (``"triton"``),
    else the pure-JAX reference (``"xla"``). ``fused_activation=False`` forces
    the reference; ``None`` follows :func:`~sparse24_jax.activations.set_fused_gated`."""

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        *,
        activation: str = "swiglu",
        fused_activation: bool | None = None,
        kernel_init: Any = default_kernel_init,
        out_kernel_init: Any = None,
        rngs: nnx.Rngs,
        **linear_kwargs: Any,
    ):
        if activation not in GATED_KINDS:
            raise ValueError(f"unknown activation {activation!r}: use one of {GATED_KINDS}")
        self.activation = activation
        self.fused_activation = fused_activation
        tp = linear_kwargs.get("shard") is not None and linear_kwargs["shard"].tensor_axis is not None
        # With tensor parallelism the activation splits [x, gate] outside
        # shard_map (each device holds a slice of both halves only after XLA
        # moves data): correct on any mesh, at the cost of that exchange.
        self.gate_up = SparseLinear(
            d_model, 2 * d_hidden, kernel_init=kernel_init, tp_mode="column" if tp else None, rngs=rngs,
            **linear_kwargs,
        )
        self.proj = SparseLinear(
            d_hidden, d_model, kernel_init=out_kernel_init or kernel_init, tp_mode="row" if tp else None,
            rngs=rngs, **linear_kwargs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.gate_up(x)
        a = gated(
            h, self.activation, backend=self.gate_up.backend, fused=self.fused_activation, shard=self.gate_up.shard
        )
        return self.proj(a)


# id(layer) -> the layer's prepared operands, while `using_prepared` is active
_PREPARED: contextvars.ContextVar[dict[int, Any] | None] = contextvars.ContextVar(
    "sparse24_prepared", default=None
)


def prepare_weights(model: nnx.Module) -> dict[tuple, Any]:
    """Compress every sparse layer's weight once: ``{path: operands}``.

    For gradient accumulation: call it once per optimizer step, outside the
    micro-batch loop, and run each micro-batch's forward inside
    :func:`using_prepared`, so the weights are projected and compressed once
    per step instead of once per micro-batch (XLA does not hoist the
    compression out of the loop by itself). Layers that compress on every
    call anyway are left out: dense mode, tensor-parallel (``shard``),
    ``precision="fp8"``, and layers without a fixed ``dtype``.
    """
    out = {}
    for path, layer in sparse_layers(model):
        if layer.dense or layer.shard is not None or layer.precision != "bf16" or layer.dtype is None:
            continue
        out[path] = prepare_sparse24_weight(
            _get(layer.weight), _get(layer.mask), _get(layer.beta),
            method=layer.method, backend=layer.backend, dtype=layer.dtype,
        )
    return out


@contextlib.contextmanager
def using_prepared(model: nnx.Module, prepared: dict[tuple, Any] | None):
    """Within the block, ``model``'s sparse layers use ``prepared`` (from
    :func:`prepare_weights` on a model with the same structure and weights:
    layers are matched by path) instead of compressing their weights.
    ``prepared=None`` does nothing. Trace-time only: the operands are not
    stored in the model, so they never reach its state or a checkpoint."""
    if not prepared:
        yield
        return
    by_id = {id(layer): prepared[path] for path, layer in sparse_layers(model) if path in prepared}
    token = _PREPARED.set(by_id)
    try:
        yield
    finally:
        _PREPARED.reset(token)


_DEFER_SEARCH = contextvars.ContextVar("sparse24_defer_mask_search", default=False)


@contextlib.contextmanager
def deferred_mask_search():
    """Layers built inside the block start with an all-True placeholder mask;
    call :func:`search_masks` on the model afterwards.

    For building a big model under one ``jit`` (sharded init): the mask
    search of every layer would otherwise be inlined into that program, which
    is slow to compile on a GPU already (GPT-2 774M, 72 weights: dense 100 s
    on an H200, SR-STE not done in 170 s). :func:`search_masks` runs one
    jitted search per weight shape instead."""
    token = _DEFER_SEARCH.set(True)
    try:
        yield
    finally:
        _DEFER_SEARCH.reset(token)


@functools.lru_cache(maxsize=64)
def _jitted_search(method: str, backend: Any):
    return jax.jit(functools.partial(search_mask, method, backend))


def search_masks(model: nnx.Module) -> None:
    """Set every sparse layer's mask from its current weight, as its
    constructor does (see :func:`deferred_mask_search`): one compiled search
    per (method, backend, weight shape), each mask kept in its sharding."""
    for _, layer in sparse_layers(model):
        old = _get(layer.mask)
        try:
            search = _jitted_search(layer.method, layer.backend)
        except TypeError:  # an unhashable Backend object: no cache, same result
            search = jax.jit(functools.partial(search_mask, layer.method, layer.backend))
        new = search(_get(layer.weight))
        sharding = getattr(old, "sharding", None)
        _set(layer.mask, new if sharding is None else jax.device_put(new, sharding))


def sparse_layers(model: nnx.Module) -> Iterator[tuple[tuple, SparseLinear]]:
    """``(path, layer)`` for every :class:`SparseLinear` in ``model``."""
    for path, node in nnx.iter_graph(model):
        if isinstance(node, SparseLinear):
            yield tuple(path), node


def refresh_masks(model: nnx.Module, step: Any) -> tuple[jax.Array, jax.Array]:
    """Recompute the masks of the layers whose ``mask_interval`` divides
    ``step`` (an int or a traced scalar: jit-able) from their current fp32
    weights. Call it after each optimizer update with the new step count.

    Returns ``(flip_rate, refreshed)``: the fraction of mask entries that
    changed, over all sparse weights of refreshed layers, and whether any
    layer refreshed. Layers in dense mode are skipped.
    """
    flips = jnp.zeros((), jnp.float32)
    total = jnp.zeros((), jnp.float32)
    refreshed = jnp.zeros((), bool)
    for _, layer in sparse_layers(model):
        if layer.dense:
            continue
        due = jnp.asarray(step) % layer.mask_interval == 0
        old = _get(layer.mask)
        new = jax.lax.cond(due, layer._search_mask, lambda _: old, _get(layer.weight))
        _set(layer.mask, new)
        flips += jnp.sum(new != old, dtype=jnp.float32)
        total += jnp.where(due, float(old.size), 0.0)
        refreshed |= due
    return jnp.where(total > 0, flips / jnp.maximum(total, 1.0), 0.0), refreshed


def decay_masks(model: nnx.Module, wrt: Any = nnx.Param):
    """The ``masks=`` argument of :func:`~sparse24_jax.masked_decay`: a pytree
    shaped like ``nnx.state(model, wrt)`` holding each hard-masked
    (srste/ste, not dense) layer's mask at its weight, and ``True`` (keep all,
    no decay) at every other parameter."""
    masked = {
        path + ("weight",): _get(layer.mask)
        for path, layer in sparse_layers(model)
        if layer.method in ("srste", "ste") and not layer.dense
    }
    state = nnx.state(model, wrt)

    def pick(path, _leaf):
        keys = tuple(getattr(p, "key", getattr(p, "name", getattr(p, "idx", None))) for p in path)
        # drop the Variable's own `value` attribute from the pytree path
        keys = keys[:-1] if keys and keys[-1] == "value" else keys
        return masked.get(keys, True)

    return jax.tree_util.tree_map_with_path(pick, state)


def set_dense(model: nnx.Module, dense: bool = True) -> None:
    """Switch every sparse layer to dense (``dense=True``: dense fine-tuning,
    the mask is no longer applied) or back. Changes the static structure, so a
    jitted step retraces once."""
    for _, layer in sparse_layers(model):
        if layer.method != "dense":
            layer.dense = dense


def init_sste_scales(model: nnx.Module) -> None:
    """Recompute S-STE's beta from the current weights of every "sste" layer
    (after loading pretrained weights, say); it stays frozen afterwards."""
    for _, layer in sparse_layers(model):
        if layer.method == "sste":
            _set(layer.beta, sste_scale(_get(layer.weight)))
