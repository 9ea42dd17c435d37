"""Sharded 2:4 linears: data parallel, FSDP and tensor parallel under shard_map.

Why shard_map: the GPU backends are opaque custom calls. Under plain jit
sharding, XLA cannot split a custom call, so it all-gathers the inputs and
runs the whole product on every device. Inside ``shard_map`` each device runs
the backend on its own shard, and the collectives are explicit:

* data / FSDP axes (``batch_axes``) split the tokens; the weight enters
  replicated (FSDP-sharded storage is all-gathered by the ``in_specs``), and
  shard_map's transpose sums the weight gradient over those axes.
* tensor axis, ``mode="column"``: the weight's rows N are split (the FFN's
  first linear); the output stays split along N.
  ``mode="row"``: the weight's columns K are split (the FFN's second linear,
  whose input is split along K); the partial outputs are summed (psum).

2:4 groups (4 consecutive elements along K) and transposable 4x4 blocks must
never straddle a shard boundary, so the split dimension per device must be a
multiple of 4: :func:`check_tensor_parallel` says so up front.

MVUE randomness: each data shard folds its index into the key, so shards draw
independent samples. The estimator stays unbiased, but the random draws (not
the expectation) depend on the mesh layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
from jax.sharding import Mesh, PartitionSpec as P

from ._vma import match_varying, to_varying, varying_axes
from .linear import sparse24_linear

# match_varying, to_varying and varying_axes: shard_map's varying-axes types, public for
# code that runs a whole step inside one shard_map (train/train.py) and must give its
# values the axes custom_vjp and scan expect (sparse24_jax/_vma.py says why)
__all__ = ["ShardConfig", "check_tensor_parallel", "match_varying", "sharded_sparse24_linear", "to_varying",
           "varying_axes"]

TP_MODES = (None, "column", "row")


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """Where a 2:4 linear runs: the mesh, the axes that split tokens (data,
    FSDP) and the tensor-parallel axis (``None`` for no tensor parallelism)."""

    mesh: Mesh
    batch_axes: tuple[str, ...] = ("data",)
    tensor_axis: str | None = None

    def __post_init__(self):
        names = set(self.mesh.axis_names)
        for a in (*self.batch_axes, *([self.tensor_axis] if self.tensor_axis else [])):
            if a not in names:
                raise ValueError(f"axis {a!r} is not in the mesh axes {tuple(self.mesh.axis_names)}")

    def size(self, axes: Sequence[str] | str | None) -> int:
        if axes is None:
            return 1
        axes = (axes,) if isinstance(axes, str) else axes
        n = 1
        for a in axes:
            n *= self.mesh.shape[a]
        return n


def check_tensor_parallel(n: int, k: int, tp: int, mode: str | None, *, multiple: int = 4) -> None:
    """Raise ``ValueError`` if splitting a ``(N, K)`` weight ``tp`` ways in
    ``mode`` would cut a 2:4 group or a 4x4 block (or a backend's tile of
    ``multiple``)."""
    if mode not in TP_MODES:
        raise ValueError(f"unknown tensor-parallel mode {mode!r}: use one of {TP_MODES}")
    if mode is None or tp == 1:
        return
    dim, name = (n, "N (out_features)") if mode == "column" else (k, "K (in_features)")
    if dim % tp or (dim // tp) % multiple:
        raise ValueError(
            f"{mode}-parallel over {tp} devices splits {name}={dim} into shards of "
            f"{dim / tp:g}; each shard must be a whole multiple of {multiple} so that no 2:4 group "
            f"or 4x4 block straddles two devices: choose a size divisible by {tp * multiple} "
            f"or a smaller tensor-parallel axis"
        )


def sharded_sparse24_linear(
    x: jax.Array,
    w: jax.Array,
    mask: jax.Array | None = None,
    beta: jax.Array | None = None,
    key: jax.Array | None = None,
    *,
    shard: ShardConfig,
    mode: str | None = None,
    **linear_kwargs: Any,
) -> jax.Array:
    """:func:`~sparse24_jax.sparse24_linear` run per shard inside
    ``shard_map`` (module doc). ``x`` is ``(B, ..., K)`` with its first axis
    split over ``shard.batch_axes``; ``mode`` is the tensor-parallel split of
    ``w`` ("column", "row" or ``None``)."""
    tp_axis = shard.tensor_axis if mode else None
    n, k = w.shape
    check_tensor_parallel(n, k, shard.size(tp_axis), mode)
    batch = shard.batch_axes or None
    rest = (None,) * (x.ndim - 2)
    if mode == "column":
        w_spec, x_spec, out_spec = P(tp_axis, None), P(batch, *rest, None), P(batch, *rest, tp_axis)
    elif mode == "row":
        w_spec, x_spec, out_spec = P(None, tp_axis), P(batch, *rest, tp_axis), P(batch, *rest, None)
    else:
        w_spec, x_spec, out_spec = P(), P(batch, *rest, None), P(batch, *rest, None)
    mask_spec = w_spec if mask is not None else None
    beta_spec = P() if beta is not None else None
    key_spec = P() if key is not None else None

    def local(x, w, mask, beta, key):
        # custom_vjp needs each cotangent to vary over the same mesh axes as
        # its input. dW varies over the token axes and (column mode) dX over
        # the tensor axis, so mark the inputs varying there first; the
        # transpose of that cast is the psum that sums the partial gradients.
        if batch:
            w = to_varying(w, batch)
        if mode == "column":
            x = to_varying(x, (tp_axis,))
        if key is not None and batch:
            key = jax.random.fold_in(key, jax.lax.axis_index(batch))
        if key is not None and tp_axis:
            key = jax.random.fold_in(key, jax.lax.axis_index(tp_axis))
        z = sparse24_linear(x, w, mask, beta, key, **linear_kwargs)
        if mode == "row":
            z = jax.lax.psum(z, tp_axis)
        return z

    f = jax.shard_map(
        local,
        mesh=shard.mesh,
        in_specs=(x_spec, w_spec, mask_spec, beta_spec, key_spec),
        out_specs=out_spec,
    )
    return f(x, w, mask, beta, key)
