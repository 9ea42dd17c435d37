"""optax pieces of 2:4 training: masked decay, dense fine-tuning, the two recipes.

SR-STE ("v1", paper 1) adds a decay on the *pruned* weights to the gradient,
after clipping and before AdamW, so that the decay passes through Adam's
normalisation and holds the flip rate down::

    optax.chain(optax.clip_by_global_norm(1.0),
                masked_decay(alpha, dense_step=d),
                optax.adamw(lr, b1=0.9, b2=0.95, weight_decay=0.1))

S-STE ("v2", paper 2) needs no decay: plain clipped AdamW; its scale beta is a
frozen module variable, not a parameter, so no optimizer touches it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "masked_decay",
    "MaskedDecayState",
    "dense_finetune_step",
    "srste_optimizer",
    "sste_optimizer",
    "decay_matrices_only",
]


class MaskedDecayState(NamedTuple):
    count: jax.Array  # optimizer steps taken


def _decay_leaf(g, w, m, alpha):
    if m is True or g is None:
        return g
    return g + alpha * w * (1.0 - jnp.asarray(m, g.dtype))


def masked_decay(alpha: float, *, dense_step: int | None = None) -> optax.GradientTransformationExtraArgs:
    """SR-STE's masked decay on gradients (paper 1; docs/algorithms.md)::

        g <- g + alpha * W * (1 - mask)         while count < dense_step
        g <- g                                  from dense_step on (dense fine-tuning)

    ``mask`` is each sparse weight's current 2:4 mask, passed to ``update`` as
    the extra argument ``masks``: a pytree shaped like ``params`` with a
    boolean mask at every sparse weight and ``True`` (nothing pruned, no decay)
    elsewhere — :func:`sparse24_jax.nnx.decay_masks` builds it for NNX models,
    :func:`sparse24_jax.linen.decay_masks` for linen ones. Place it after
    ``clip_by_global_norm`` and before ``adamw``.

    Args:
      alpha: decay factor (the papers: 6e-5 for GPT-2 124M, 2e-4 for 350M).
      dense_step: first optimizer step of dense fine-tuning (see
        :func:`dense_finetune_step`); ``None`` never stops.
    """
    if alpha < 0:
        raise ValueError(f"alpha={alpha} must be >= 0")

    def init_fn(params):
        del params
        return MaskedDecayState(count=jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, *, masks=None, **extra):
        del extra
        if params is None:
            raise ValueError("masked_decay needs params: call tx.update(grads, state, params, masks=...)")
        if masks is None:
            raise ValueError(
                "masked_decay needs the masks: call tx.update(grads, state, params, masks=...), "
                "e.g. optimizer.update(model, grads, masks=sparse24_jax.nnx.decay_masks(model))"
            )
        active = jnp.asarray(True) if dense_step is None else state.count < dense_step
        a = jnp.where(active, jnp.float32(alpha), jnp.float32(0.0))
        new = jax.tree.map(
            lambda m, g, w: _decay_leaf(g, w, m, a),
            masks,
            updates,
            params,
            is_leaf=lambda x: x is True or x is None,
        )
        return new, MaskedDecayState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dense_finetune_step(total_steps: int, fraction: float = 5 / 6) -> int:
    """First step of dense fine-tuning: the papers' recipe switches at 250k of 300k
    iterations, i.e. ``fraction=5/6`` of training."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must be in [0, 1] (5/6 in the papers)")
    return int(round(total_steps * fraction))


def srste_optimizer(
    learning_rate: Any,
    *,
    alpha: float,
    dense_step: int | None,
    weight_decay: float = 0.1,
    b1: float = 0.9,
    b2: float = 0.95,
    clip_norm: float = 1.0,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """SR-STE's recipe: clip -> masked decay -> AdamW. ``update`` needs
    ``masks=`` (see :func:`masked_decay`). ``weight_decay_mask`` is AdamW's
    ``mask`` (e.g. :func:`decay_matrices_only`, nanoGPT's choice)."""
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        masked_decay(alpha, dense_step=dense_step),
        optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=weight_decay_mask),
    )


def sste_optimizer(
    learning_rate: Any,
    *,
    weight_decay: float = 0.1,
    b1: float = 0.9,
    b2: float = 0.95,
    clip_norm: float = 1.0,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """S-STE's recipe (also the dense and plain-STE baselines): clip ->
    AdamW. Accepts and ignores ``masks=``, so one training loop serves all."""
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=weight_decay_mask),
    )


def decay_matrices_only(params):
    """AdamW ``mask`` that decays only parameters of rank >= 2 (weights and
    embeddings, not LayerNorm scales or biases), as nanoGPT does."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)
