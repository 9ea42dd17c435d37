"""Gated activations of LLaMA-style FFNs.

The up-projection writes ``h = [x, gate]`` (first half, second half of the
last axis); the FFN continues with ``x * act(gate)``.

* :func:`gated_activation` is the pure-JAX reference (float32 inside, result
  in ``h``'s dtype); XLA fuses it on any device.
* :func:`gated` is what the modules call: it runs a backend's fused kernels
  when the backend offers them (and ``fused``, the module's own setting), else
  the reference.

The backend side is the optional capability
:class:`~sparse24_jax.backend.FusedGatedActivation` (``gated_activation(h,
kind)``, and optionally ``gated_activation_bwd(h, dy, kind)``, the backward
with the activation recomputed); a backend without it, like ``"xla"``, simply
runs the reference. :func:`gated` wraps the two in one ``jax.custom_vjp``:
forward by the first, backward by the second (without it: ``jax.vjp`` of the
reference). The ``triton`` backend provides both
(``sparse24_jax_kernels.triton.gated``). Nothing here imports a backend:
``get_backend`` loads one only when a module names it, so ``import
sparse24_jax`` needs no Triton.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from ._vma import match_varying

__all__ = ["gated_activation", "gated", "GATED_KINDS"]

GATED_KINDS = ("swiglu", "geglu")


def _check(h: jax.Array, kind: str) -> None:
    if kind not in GATED_KINDS:
        raise ValueError(f"unknown gated activation {kind!r}: use one of {GATED_KINDS}")
    if h.shape[-1] % 2:
        raise ValueError(f"the last axis of h is {h.shape[-1]}, not even: it must hold [x, gate]")


def gated_activation(h: jax.Array, kind: str, out_dtype: Any = None) -> jax.Array:
    """``x * silu(gate)`` (swiglu) or ``x * gelu_tanh(gate)`` (geglu), with
    ``x, gate = split(h, 2, axis=-1)``. Computed in float32, returned in
    ``out_dtype`` (default ``h``'s dtype). The pure-JAX reference (twin of the
    fused kernels)."""
    _check(h, kind)
    x, gate = jnp.split(h.astype(jnp.float32), 2, axis=-1)
    act = jax.nn.silu(gate) if kind == "swiglu" else jax.nn.gelu(gate, approximate=True)
    return (x * act).astype(out_dtype or h.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _fused(h, kind, be):
    return _fused_fwd(h, kind, be)[0]


def _fused_fwd(h, kind, be):
    # the kernels are custom calls, typed invariant under shard_map: give them h's axes
    return match_varying(be.gated_activation(h, kind), h), h


def _fused_bwd(kind, be, h, dy):
    from .backend import capabilities  # noqa: PLC0415

    if capabilities(be).gated_activation_bwd:
        return (match_varying(be.gated_activation_bwd(h, dy.astype(h.dtype), kind), h),)
    _, vjp = jax.vjp(lambda a: gated_activation(a, kind), h)
    return vjp(dy)


_fused.defvjp(_fused_fwd, _fused_bwd)


def _fused_backend(backend: Any):
    """The backend object if it has the fused gated kernels, else None."""
    if backend is None:
        return None
    from .backend import capabilities, get_backend  # noqa: PLC0415  (no import cycle at load time)

    be = get_backend(backend)
    return be if capabilities(be).gated_activation else None


def fused_flag(value) -> bool:
    """The modules' ``fused_activation``: a bool. ``None`` meant "the default" before the
    default became ``True``; taken as falsy it would silently run the unfused path."""
    if not isinstance(value, bool):
        raise TypeError(f"fused_activation must be True or False, got {value!r} "
                        "(True, the default, uses the backend's fused kernels where it has them)")
    return value


def gated(
    h: jax.Array,
    kind: str,
    *,
    backend: Any = None,
    fused: bool = True,
    shard: Any = None,
) -> jax.Array:
    """``x * act(gate)`` for ``h = [x, gate]`` (last axis), differentiable:
    the backend's fused forward and backward kernels when it has them, else
    :func:`gated_activation` (same math, up to float32 rounding).

    Args:
      h: ``(..., 2F)``.
      kind: "swiglu" or "geglu".
      backend: a name or Backend (the gated MLP's ``gate_up.backend``);
        ``None`` (or a backend without the hook, like "xla"): the reference.
      fused: ``False`` forces the reference (the modules' ``fused_activation``).
      shard: the layers' :class:`~sparse24_jax.ShardConfig`, if any. The
        kernels are custom calls that XLA cannot split, so with a mesh they run
        per device inside ``shard_map`` over ``shard.batch_axes`` (``h``'s
        first axis); with a tensor-parallel axis each device holds unmatched
        slices of ``x`` and ``gate``, so the reference runs (XLA moves data).
    """
    _check(h, kind)
    be = _fused_backend(backend) if fused else None
    if be is None or (shard is not None and shard.tensor_axis is not None):
        return gated_activation(h, kind)
    if shard is None:
        return _fused(h, kind, be)
    from jax.sharding import PartitionSpec as P  # noqa: PLC0415

    spec = P(shard.batch_axes or None, *(None,) * (h.ndim - 1))
    local = jax.shard_map(lambda a: _fused(a, kind, be), mesh=shard.mesh, in_specs=(spec,), out_specs=spec)
    return local(h)
