"""GPU test of the training model's attention choice: the GPT with cuDNN's fused attention
(what attention = "auto" picks on a GPU) gives XLA's attention's loss and gradients."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

jax = pytest.importorskip("jax")
pytest.importorskip("sparse24_train")
jnp = jax.numpy

from flax import nnx  # noqa: E402

from sparse24_train.config import load_config  # noqa: E402
from sparse24_train.model import GPT, cross_entropy  # noqa: E402


def test_cudnn_attention_matches_xla():
    base = load_config("tiny", ["method=dense", "n_layer=2", "n_embd=128", "n_head=2", "block_size=128"])
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (4, 128)), jnp.int32)
    y = jnp.asarray(rng.integers(0, 256, (4, 128)), jnp.int32)
    out = {}
    for impl in ("xla", "cudnn"):
        model = GPT(dataclasses.replace(base, attention=impl), 256, rngs=nnx.Rngs(0, sparse24=1))
        assert model.h[0].attn.implementation == impl
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), y))(model)
        out[impl] = (float(loss), jax.tree.leaves(grads))
    assert abs(out["xla"][0] - out["cudnn"][0]) < 2e-3 * abs(out["xla"][0])
    for gx, gc in zip(out["xla"][1], out["cudnn"][1]):
        scale = float(jnp.abs(gx).max()) + 1e-12
        assert float(jnp.abs(gx - gc).max()) < 5e-2 * scale
