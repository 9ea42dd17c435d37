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
    if step == d: set_dense_finetuning(model)                     # dense fine-tuning

Each layer keeps an ``nnx.RngStream`` for its MVUE keys, so the stream's
counter is model state that changes on every call. Inside ``jax.grad`` under
``lax.scan`` (gradient accumulation) use :func:`value_and_grad`: it rebuilds
the model from split state with ``nnx.merge(graphdef, params, rest,
copy=True)`` and returns the advanced ``rest`` (merging without ``copy``
reuses Variables created at an outer trace level and raises
``TraceContextError``).

State a layer holds, all of it explicit ``nnx.Variable``s: the master weight
(``nnx.Param``), the mask (:class:`Sparse24Mask`), S-STE's scale
(:class:`Sparse24Scale`) and, within one optimizer step only, the weight's
operands compressed once for all micro-batches (:class:`Sparse24Prepared`, set
by :func:`prepare_weights`, emptied by :func:`clear_prepared`) and, within one
:func:`value_and_grad` call only, the running sum of the weight's gradient
(:class:`Sparse24GradAcc`).

The weight is stored ``(out_features, in_features)`` (PyTorch's layout, not
flax's ``(in, out)``) because the 2:4 groups run along the input axis K, which
must be the contiguous one for the sparse tensor cores.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from . import _grad_acc
from .activations import GATED_KINDS, fused_flag, gated
from .ffn import Sparse24Weight, block_applies, mvue_pair, sparse24_ffn
from .fp8 import canonical_precision
from .linear import METHODS, prepare_sparse24_weight, search_mask, sparse24_linear
from .parallel import ShardConfig, check_tensor_parallel, sharded_sparse24_linear
from .sste import sste_scale

__all__ = [
    "Sparse24Mask",
    "Sparse24Scale",
    "Sparse24Prepared",
    "Sparse24GradAcc",
    "SparseLinear",
    "SparseMLP",
    "SparseGatedMLP",
    "sparse_layers",
    "prepare_weights",
    "clear_prepared",
    "value_and_grad",
    "refresh_masks",
    "search_masks",
    "decay_masks",
    "set_dense_finetuning",
    "init_sste_scales",
    "path_keys",
]


class Sparse24Mask(nnx.Variable):
    """A boolean 2:4 mask (not trained; recomputed every ``mask_interval``)."""


class Sparse24Scale(nnx.Variable):
    """S-STE's per-tensor scale beta (computed once, then frozen)."""


class Sparse24Prepared(nnx.Variable):
    """The layer's weight operands, compressed once per optimizer step
    (:func:`prepare_weights`), or ``None``: then each call compresses the
    weight itself. Derived from the weight, never trained or saved: a training
    step that prepares clears it (:func:`clear_prepared`) before it returns
    the model's state."""


class Sparse24GradAcc(nnx.Variable):
    """The running sum of the layer's weight gradient that
    :func:`value_and_grad` (``grad_acc=``) hands to the layer's next call, or
    ``None``. The call takes it (this becomes ``None`` again) and its backward
    returns the weight's cotangent as that sum plus the new gradient, added in
    the weight-gradient GEMM where the backend can. Never trained or saved."""


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
      backend: "xla", "triton", "cusparselt", "cutlass" or a Backend.
      mask_interval: recompute the mask every this many optimizer steps (see
        :func:`refresh_masks`); the papers' recipe uses 40.
      mvue: MVUE-prune ``dZ.T`` in the weight-gradient GEMM.
      precision: "compute" (GEMMs in the compute dtype, whatever it is; "bf16",
        its earlier name, is accepted too) or "fp8" (S-STE's FP8 recipe,
        simulated; see :mod:`sparse24_jax.linear_fp8`). Also applies in
        dense fine-tuning. Under ``shard`` the per-tensor scales are per
        shard (each device's own amax).
      dtype: compute dtype (inputs and the projected weight are cast to it),
        ``None`` for the input's dtype.
      param_dtype: master weight dtype (float32).
      search_mask: search the mask from the initial weight now (the default);
        ``False`` starts from an all-True placeholder for :func:`search_masks`
        to fill later (building a big model inside one ``jit``: the searches
        inlined into that program make it slow to compile).
      shard: run per device inside ``shard_map`` on this mesh (needed for
        the GPU backends when training under plain jit sharding on several
        devices; see :mod:`sparse24_jax.parallel`). ``None``: as on one device
        (also inside a ``shard_map`` the caller wraps around the whole step).
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
        precision: str = "compute",
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        kernel_init: Any = default_kernel_init,
        search_mask: bool = True,
        shard: ShardConfig | None = None,
        tp_mode: str | None = None,
        rngs: nnx.Rngs,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}: use one of {METHODS}")
        precision = canonical_precision(precision)
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
        self.mask = Sparse24Mask(self._search_mask(w) if search_mask else jnp.ones(w.shape, bool))
        self.beta = Sparse24Scale(sste_scale(w) if method == "sste" else jnp.ones((), jnp.float32))
        self.prepared = Sparse24Prepared(None)
        self.grad_acc = Sparse24GradAcc(None)
        self.rngs = rngs["sparse24"].fork()
        #: dense fine-tuning: the mask is no longer applied, the master weight used as it is. A
        #: static switch (flipping it retraces once); on from the start for method="dense".
        self.dense_finetuning = method == "dense"

    def _search_mask(self, w):
        return search_mask(self.method, self.backend, w)

    def operands(self) -> Sparse24Weight:
        """This layer's weight for :func:`~sparse24_jax.ffn.sparse24_ffn`."""
        return Sparse24Weight(_get(self.weight), _get(self.mask), _get(self.beta), _get(self.prepared))

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        if self.dense_finetuning:
            return sparse24_linear(x, _get(self.weight), method="dense", precision=self.precision)
        key = self.rngs() if self.mvue else None
        args = (x, _get(self.weight), _get(self.mask), _get(self.beta), key)
        kwargs = dict(method=self.method, backend=self.backend, mvue=self.mvue, precision=self.precision)
        if self.shard is not None:
            # prepare_weights leaves sharded layers out (each shard compresses its own slice)
            return sharded_sparse24_linear(*args, shard=self.shard, mode=self.tp_mode, **kwargs)
        return sparse24_linear(*args, prepared=_get(self.prepared), grad_acc=_take(self.grad_acc), **kwargs)


def _take(v: nnx.Variable):
    """A Variable's value, leaving ``None`` in it (a running sum is added once)."""
    value = _get(v)
    if value is not None:
        _set(v, None)
    return value


def _ffn_block(fc: SparseLinear, proj: SparseLinear, x: jax.Array, activation: str, fused: bool):
    """``proj(act(fc(x)))`` as :func:`~sparse24_jax.ffn.sparse24_ffn`'s one
    custom_vjp where it gains something: the backend fuses this activation's
    backward with the MVUE pruning, or fuses it into a GEMM's epilogue (forward
    or input gradient; :mod:`sparse24_jax.ffn`), and ``fused``, and the two layers allow it
    (same sparse method, backend and dtype, precision "compute", no per-layer
    shard_map; each layer's own ``mvue``). Else ``None``: the caller composes the two layers,
    which is what the block would compute without the fusion, op for op (so a
    backend without it, like "xla", trains exactly as before the block). Each
    layer with MVUE draws its key as its own call would."""
    if fc.shard is not None or proj.shard is not None or not block_applies(fc, proj, activation, fused):
        return None
    x = x.astype(fc.dtype or x.dtype)
    keys = (fc.rngs() if fc.mvue else None, proj.rngs() if proj.mvue else None)
    fc_w = fc.operands()._replace(grad_acc=_take(fc.grad_acc))
    proj_w = proj.operands()._replace(grad_acc=_take(proj.grad_acc))
    return sparse24_ffn(x, fc_w, proj_w, activation=activation, keys=keys, method=fc.method,
                        backend=fc.backend, mvue=(fc.mvue, proj.mvue), fused=fused)


class SparseMLP(nnx.Module):
    """GPT-2's FFN: ``proj(gelu(fc(x)))`` with both linears 2:4 sparse.
    ``fc``: d_model -> d_hidden, exact GELU, ``proj``: d_hidden -> d_model.

    Where the backend fuses the GELU backward with the MVUE pruning of its
    result, or the GELU (or its backward) into a GEMM's epilogue ("cutlass"),
    the two linears run as one FFN block
    (:func:`~sparse24_jax.ffn.sparse24_ffn`); ``fused_activation=False`` (or a
    backend without that capability) composes the two layers.

    ``mvue``: as :class:`SparseLinear`'s for both linears, or a pair ``(fc's,
    proj's)``: ``(False, True)`` gives ``fc`` a dense weight-gradient GEMM of
    the exact ``dZ1`` (no MVUE pass over the 4x-wide tensor) and keeps
    ``proj``'s sparse. The other keyword arguments go to both linears."""

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        *,
        fused_activation: bool = True,
        mvue: bool | tuple[bool, bool] = True,
        kernel_init: Any = default_kernel_init,
        out_kernel_init: Any = None,
        rngs: nnx.Rngs,
        **linear_kwargs: Any,
    ):
        self.fused_activation = fused_flag(fused_activation)
        mvue_fc, mvue_proj = mvue_pair(mvue)
        tp = linear_kwargs.get("shard") is not None and linear_kwargs["shard"].tensor_axis is not None
        self.fc = SparseLinear(
            d_model, d_hidden, kernel_init=kernel_init, tp_mode="column" if tp else None, mvue=mvue_fc, rngs=rngs,
            **linear_kwargs,
        )
        self.proj = SparseLinear(
            d_hidden, d_model, kernel_init=out_kernel_init or kernel_init, tp_mode="row" if tp else None,
            mvue=mvue_proj, rngs=rngs, **linear_kwargs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = _ffn_block(self.fc, self.proj, x, "gelu", self.fused_activation)
        if y is not None:
            return y
        return self.proj(jax.nn.gelu(self.fc(x), approximate=False))


class SparseGatedMLP(nnx.Module):
    """LLaMA-style FFN: ``proj(x * act(gate))`` with ``[x, gate] = gate_up(x)``,
    ``act`` silu (``activation="swiglu"``) or tanh-GELU ("geglu").

    The activation runs the backend's fused kernels when it has them
    (``"triton"``; :func:`sparse24_jax.activations.gated`), and the block's
    backward fuses it with the MVUE pruning where the backend can
    (:mod:`sparse24_jax.ffn`); ``fused_activation=False`` forces the pure-JAX
    reference. ``mvue``: as :class:`SparseMLP`'s (a pair is ``(gate_up's,
    proj's)``)."""

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        *,
        activation: str = "swiglu",
        fused_activation: bool = True,
        mvue: bool | tuple[bool, bool] = True,
        kernel_init: Any = default_kernel_init,
        out_kernel_init: Any = None,
        rngs: nnx.Rngs,
        **linear_kwargs: Any,
    ):
        if activation not in GATED_KINDS:
            raise ValueError(f"unknown activation {activation!r}: use one of {GATED_KINDS}")
        self.activation = activation
        self.fused_activation = fused_flag(fused_activation)
        tp = linear_kwargs.get("shard") is not None and linear_kwargs["shard"].tensor_axis is not None
        # With tensor parallelism the activation splits [x, gate] outside
        # shard_map (each device holds a slice of both halves only after XLA
        # moves data): correct on any mesh, at the cost of that exchange.
        mvue_up, mvue_proj = mvue_pair(mvue)
        self.gate_up = SparseLinear(
            d_model, 2 * d_hidden, kernel_init=kernel_init, tp_mode="column" if tp else None, mvue=mvue_up,
            rngs=rngs, **linear_kwargs,
        )
        self.proj = SparseLinear(
            d_hidden, d_model, kernel_init=out_kernel_init or kernel_init, tp_mode="row" if tp else None,
            mvue=mvue_proj, rngs=rngs, **linear_kwargs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = _ffn_block(self.gate_up, self.proj, x, self.activation, self.fused_activation)
        if y is not None:
            return y
        h = self.gate_up(x)
        a = gated(
            h, self.activation, backend=self.gate_up.backend, fused=self.fused_activation, shard=self.gate_up.shard
        )
        return self.proj(a)


# ---------------------------------------------------------------------------
# Functions over a model's sparse layers
# ---------------------------------------------------------------------------


def sparse_layers(model: nnx.Module) -> Iterator[tuple[tuple, SparseLinear]]:
    """``(path, layer)`` for every :class:`SparseLinear` in ``model``."""
    for path, node in nnx.iter_graph(model):
        if isinstance(node, SparseLinear):
            yield tuple(path), node


def _one_device_sparse(layer: SparseLinear) -> bool:
    """Whether a layer's call is ``sparse24_linear``'s custom_vjp on one device:
    not dense (method "dense" or dense fine-tuning), precision "compute", not
    under a per-layer shard_map (each device there runs its own slice)."""
    return not layer.dense_finetuning and layer.shard is None and layer.precision == "compute"


def _preparable(layer: SparseLinear) -> bool:
    """Whether a layer's operands can be computed once per step: a one-device
    sparse call (:func:`_one_device_sparse`) with a fixed compute dtype."""
    return _one_device_sparse(layer) and layer.dtype is not None


def prepare_weights(model: nnx.Module) -> None:
    """Compress every sparse layer's weight once, into its
    :class:`Sparse24Prepared` Variable, for all calls until
    :func:`clear_prepared`.

    For gradient accumulation: call it once per optimizer step, before the
    micro-batch loop, so the weights are projected and compressed once per
    step instead of once per micro-batch (XLA does not hoist the compression
    out of the loop by itself). Layers that compress on every call anyway are
    left as they are: dense ones (method or fine-tuning), per-layer
    ``shard``, ``precision="fp8"``, and layers without a fixed ``dtype``. The
    operands are derived from the current weights: update the weights, and
    they are stale until prepared again."""
    for _, layer in sparse_layers(model):
        if _preparable(layer):
            _set(layer.prepared, prepare_sparse24_weight(
                _get(layer.weight), _get(layer.mask), _get(layer.beta),
                method=layer.method, backend=layer.backend, dtype=layer.dtype,
            ))


def clear_prepared(model: nnx.Module) -> None:
    """Empty every layer's :class:`Sparse24Prepared` (after the step that used
    it, before the model's state is returned or saved)."""
    for _, layer in sparse_layers(model):
        _set(layer.prepared, None)


def _hand_grad_acc(model: nnx.Module, grad_acc) -> dict[tuple, tuple[SparseLinear, int]]:
    """Put each accumulable layer's weight sum from ``grad_acc`` (shaped like
    the model's Params) into its :class:`Sparse24GradAcc`; the weight's path ->
    (layer, id of the sum the layer will pass on: its receipts' key). A sum of
    another shape or dtype than its weight stays with value_and_grad's adds."""
    sums = {path_keys(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(grad_acc)}
    handed = {}
    for path, layer in sparse_layers(model):
        acc, w = sums.get(path + ("weight",)), _get(layer.weight)
        # a sum in another dtype than the weight's (float32 sums of bf16 weights) is added here
        if acc is not None and _one_device_sparse(layer) and _grad_acc.fits(acc, w):
            _set(layer.grad_acc, acc)
            handed[path + ("weight",)] = (layer, id(_get(layer.grad_acc)))
    return handed


def value_and_grad(fn: Callable[..., jax.Array], graphdef, params, rest, *args, wrt: Any = nnx.Param,
                   grad_acc: Any = None):
    """``(fn(model, *args), grads, rest')`` for ``model = merge(graphdef,
    params, rest)``, differentiating with respect to ``params`` only.

    For a loss over a model whose layers change state when called (their MVUE
    key streams) inside ``jax.grad`` and ``lax.scan``: the model is rebuilt
    with fresh Variables at this trace level (``copy=True``), and its other
    state after the call comes back as ``rest'`` (apply it with
    ``nnx.update(model, rest')``, or carry it to the next micro-batch).
    ``graphdef, params, rest`` are ``nnx.split(model, wrt, ...)``.

    ``grad_acc``: for gradient accumulation, the running sum of the earlier
    micro-batches' gradients (a State shaped like ``params``: zeros to
    start), or ``None``. Given, ``grads`` is ``grad_acc`` plus this call's
    gradients, the next running sum. Each 2:4 layer that computes in its
    compute dtype on one device (sparse, precision "compute", no per-layer
    ``shard``) takes its weight's sum into its first call and adds it in its
    weight-gradient GEMM's epilogue where the backend can
    (:class:`~sparse24_jax.backend.AccumulatingWeightGrad`: "cutlass"); the
    other leaves are added here, as ``jax.tree.map(jnp.add, grad_acc, grads)``
    would. The same sums, without a separate pass over each 2:4 weight's
    float32 gradient per micro-batch."""
    handed: dict[tuple, tuple[SparseLinear, int]] = {}  # filled while f traces

    def f(params, rest):
        m = nnx.merge(graphdef, params, rest, copy=True)
        if grad_acc is not None:
            handed.update(_hand_grad_acc(m, grad_acc))
        value = fn(m, *args)
        for layer, _ in handed.values():
            _set(layer.grad_acc, None)  # not state to return (a layer fn did not call still holds its sum)
        return value, nnx.split(m, wrt, ...)[2]

    with _grad_acc.collecting() as receipts:
        (value, rest), grads = jax.value_and_grad(f, has_aux=True)(params, rest)
    if grad_acc is not None:
        # the sums a backward added (JAX runs none for a layer whose output the loss does not use)
        taken = {path for path, (_, key) in handed.items() if _grad_acc.was_added(receipts, key)}
        try:
            grads = jax.tree_util.tree_map_with_path(
                lambda p, g, a: g if path_keys(p) in taken else a + g, grads, grad_acc)
        except ValueError as err:
            raise ValueError(f"grad_acc must be shaped like params (e.g. jax.tree.map(jnp.zeros_like, params)): "
                             f"{err}") from None
    return value, grads, rest


@functools.lru_cache(maxsize=64)
def _jitted_search(method: str, backend: Any):
    return jax.jit(functools.partial(search_mask, method, backend))


def search_masks(model: nnx.Module) -> None:
    """Set every sparse layer's mask from its current weight, as its
    constructor does (after building with ``search_mask=False``): one
    compiled search per (method, backend, weight shape), each mask kept in its
    sharding."""
    for _, layer in sparse_layers(model):
        old = _get(layer.mask)
        try:
            search = _jitted_search(layer.method, layer.backend)
        except TypeError:  # an unhashable Backend object: no cache, same result
            search = jax.jit(functools.partial(search_mask, layer.method, layer.backend))
        new = search(_get(layer.weight))
        sharding = getattr(old, "sharding", None)
        _set(layer.mask, new if sharding is None else jax.device_put(new, sharding))


def refresh_masks(model: nnx.Module, step: Any = None) -> tuple[jax.Array, jax.Array]:
    """Recompute from their current fp32 weights the masks of the layers whose
    ``mask_interval`` divides ``step``; call it after each optimizer update
    with the new step count. Dense layers (method or fine-tuning) are skipped.

    ``step`` is an int (the layers due are picked here: no conditional in the
    program), a traced scalar (one ``lax.cond`` per distinct mask_interval,
    not one per layer: on a GPU each conditional copies its predicate to the
    host and waits), or ``None``: every layer now (for a loop that decides on
    the host when a refresh is due, keeping the training step free of
    conditionals).

    Returns ``(flip_rate, refreshed)``: the fraction of mask entries that
    changed, over all sparse weights of refreshed layers, and whether any
    layer refreshed.
    """
    layers = [layer for _, layer in sparse_layers(model) if not layer.dense_finetuning]
    concrete = step is None or _concrete_int(step) is not None
    groups: dict[int, list[SparseLinear]] = {}
    for layer in layers:
        groups.setdefault(layer.mask_interval, []).append(layer)
    flips = jnp.zeros((), jnp.float32)
    total = jnp.zeros((), jnp.float32)
    refreshed = jnp.zeros((), bool)
    for interval, group in groups.items():
        old = [_get(layer.mask) for layer in group]
        weights = [_get(layer.weight) for layer in group]

        def search(ws, group=group):
            return [layer._search_mask(w) for layer, w in zip(group, ws)]

        if concrete:
            if step is not None and _concrete_int(step) % interval:
                continue
            new, due = search(weights), jnp.ones((), bool)
        else:
            due = jnp.asarray(step) % interval == 0
            new = jax.lax.cond(due, search, lambda _, old=old: old, weights)
        for layer, o, n in zip(group, old, new):
            _set(layer.mask, n)
            flips += jnp.sum(n != o, dtype=jnp.float32)
            total += jnp.where(due, float(o.size), 0.0)
        refreshed |= due
    return jnp.where(total > 0, flips / jnp.maximum(total, 1.0), 0.0), refreshed


def _concrete_int(step) -> int | None:
    """``step`` as a Python int, or None while it is traced."""
    try:
        return int(step)
    except (jax.errors.ConcretizationTypeError, TypeError):
        return None


def path_keys(path) -> tuple:
    """A pytree path of ``nnx.state(...)`` as plain keys (dict keys, attribute
    names, list indices), without the Variable's own ``value`` entry."""
    keys = tuple(getattr(p, "key", getattr(p, "name", getattr(p, "idx", None))) for p in path)
    return keys[:-1] if keys and keys[-1] == "value" else keys


def decay_masks(model: nnx.Module, wrt: Any = nnx.Param):
    """The ``masks=`` argument of :func:`~sparse24_jax.masked_decay`: a pytree
    shaped like ``nnx.state(model, wrt)`` holding each hard-masked
    (srste/ste, not in dense fine-tuning) layer's mask at its weight, and ``True`` (keep all,
    no decay) at every other parameter."""
    masked = {
        path + ("weight",): _get(layer.mask)
        for path, layer in sparse_layers(model)
        if layer.method in ("srste", "ste") and not layer.dense_finetuning
    }
    state = nnx.state(model, wrt)
    return jax.tree_util.tree_map_with_path(lambda path, _leaf: masked.get(path_keys(path), True), state)


def set_dense_finetuning(model: nnx.Module, on: bool = True) -> None:
    """Switch dense fine-tuning on (``on=True``: the masks are no longer
    applied, each layer computes with its dense master weight) or off again,
    in every sparse layer (``method="dense"`` layers stay dense). Changes the
    static structure, so a jitted step retraces once."""
    for _, layer in sparse_layers(model):
        if layer.method != "dense":
            layer.dense_finetuning = on


def init_sste_scales(model: nnx.Module) -> None:
    """Recompute S-STE's beta from the current weights of every "sste" layer
    (after loading pretrained weights, say); it stays frozen afterwards."""
    for _, layer in sparse_layers(model):
        if layer.method == "sste":
            _set(layer.beta, sste_scale(_get(layer.weight)))
