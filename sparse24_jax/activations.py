"""Gated activations of LLaMA-style FFNs (reference versions).

The up-projection writes ``h = [x, gate]`` (first half, second half of the
last axis); the FFN continues with ``x * act(gate)``. GPU backends may offer a
fused version as ``backend.gated_activation(h, kind)``; the modules use it
when present, else these.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["gated_activation", "GATED_KINDS"]

GATED_KINDS = ("swiglu", "geglu")


def gated_activation(h: jax.Array, kind: str) -> jax.Array:
    """``x * silu(gate)`` (swiglu) or ``x * gelu_tanh(gate)`` (geglu), with
    ``x, gate = split(h, 2, axis=-1)``. Computed in float32, returned in
    ``h``'s dtype."""
    if kind not in GATED_KINDS:
        raise ValueError(f"unknown gated activation {kind!r}: use one of {GATED_KINDS}")
    if h.shape[-1] % 2:
        raise ValueError(f"the last axis of h is {h.shape[-1]}, not even: it must hold [x, gate]")
    x, gate = jnp.split(h.astype(jnp.float32), 2, axis=-1)
    act = jax.nn.silu(gate) if kind == "swiglu" else jax.nn.gelu(gate, approximate=True)
    return (x * act).astype(h.dtype)
