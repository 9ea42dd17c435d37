"""The recipe's optimizer and schedule, pinned: nanoGPT's warm-up + cosine, and the
SR-STE / S-STE chains of sparse24_jax (train/train.py builds them, it does not copy them)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

pytest.importorskip("sparse24_train")
import sparse24_jax as s24
from sparse24_train.config import load_config
from sparse24_train.train import dense_step_of, lr_schedule, make_optimizer


def nanogpt_lr(it, lr, min_lr, warmup, max_steps):
    """nanoGPT's get_lr(it), with it = updates applied + 1."""
    if it <= warmup:
        return lr * it / (warmup + 1)
    ratio = min(max((it - warmup) / max(max_steps - warmup, 1), 0.0), 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


@pytest.mark.parametrize("warmup,max_steps", [(30, 300), (0, 50), (5, 5), (3000, 300000)])
def test_lr_schedule_is_nanogpts(warmup, max_steps):
    cfg = load_config("tiny", {"warmup_steps": warmup, "max_steps": max_steps, "learning_rate": 6e-4,
                               "min_lr": 6e-5})
    sched = jax.jit(lr_schedule(cfg))
    counts = sorted({0, 1, warmup - 1, warmup, warmup + 1, max_steps // 2, max_steps - 1, max_steps,
                     max_steps + 7} - {-1})
    got = np.array([float(sched(c)) for c in counts])
    want = np.array([nanogpt_lr(c + 1, 6e-4, 6e-5, warmup, max_steps) for c in counts])
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-12)


@pytest.mark.parametrize("method", ["srste", "sste", "dense", "ste"])
def test_optimizer_is_the_librarys_recipe(method):
    cfg = load_config("tiny", {"method": method})
    params = {"w": jnp.ones((4, 8)), "scale": jnp.ones((8,))}
    ours = make_optimizer(cfg)
    if method == "srste":
        lib = s24.srste_optimizer(lr_schedule(cfg), alpha=cfg.alpha, dense_step=dense_step_of(cfg),
                                  weight_decay=cfg.weight_decay, b1=cfg.beta1, b2=cfg.beta2,
                                  clip_norm=cfg.grad_clip, weight_decay_mask=s24.decay_matrices_only)
        extra = dict(masks={"w": jnp.arange(32).reshape(4, 8) % 3 == 0, "scale": True})
    else:
        lib = s24.sste_optimizer(lr_schedule(cfg), weight_decay=cfg.weight_decay, b1=cfg.beta1, b2=cfg.beta2,
                                 clip_norm=cfg.grad_clip, weight_decay_mask=s24.decay_matrices_only)
        extra = {}
    s1, s2 = ours.init(params), lib.init(params)
    assert jax.tree.structure(s1) == jax.tree.structure(s2)
    g = {"w": jnp.full((4, 8), 0.3), "scale": jnp.full((8,), -0.2)}
    for _ in range(3):
        u1, s1 = ours.update(g, s1, params, **extra)
        u2, s2 = lib.update(g, s2, params, **extra)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
