"""Weights compressed once per optimizer step: ``prepare_sparse24_weight`` /
``sparse24_linear(prepared=)`` and the NNX ``prepare_weights`` / ``clear_prepared``."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sparse24_jax as s24
from sparse24_jax import nnx as s24nnx
from sparse24_jax.xla_backend import XlaBackend

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from check_hoist import custom_calls_by_loop  # noqa: E402


@pytest.mark.parametrize("method", ["srste", "sste"])
def test_prepared_gives_the_same_values_and_grads(method):
    w = jax.random.normal(jax.random.key(0), (64, 32), jnp.float32)
    mask = s24.transposable_mask_24(w)
    beta = s24.sste_scale(w)
    x = jax.random.normal(jax.random.key(1), (3, 10, 32), jnp.bfloat16)
    key = jax.random.key(2)
    prep = s24.prepare_sparse24_weight(w, mask, beta, method=method, dtype=jnp.bfloat16)

    def loss(x, w, prepared):
        z = s24.sparse24_linear(x, w, mask, beta, key, method=method, prepared=prepared)
        return jnp.sum(z.astype(jnp.float32) ** 2)

    g0 = jax.grad(loss, argnums=(0, 1))(x, w, None)
    g1 = jax.grad(loss, argnums=(0, 1))(x, w, prep)
    for a, b in zip(g0, g1):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    np.testing.assert_array_equal(np.asarray(loss(x, w, None)), np.asarray(loss(x, w, prep)))


def test_prepared_errors():
    w = jnp.ones((8, 8))
    mask = s24.transposable_mask_24(w)
    x = jnp.ones((4, 8), jnp.bfloat16)
    prep = s24.prepare_sparse24_weight(w, mask)
    with pytest.raises(ValueError, match="precision='compute'"):
        s24.sparse24_linear(x, w, mask, prepared=prep, mvue=False, precision="fp8")
    with pytest.raises(ValueError, match="nothing to prepare"):
        s24.prepare_sparse24_weight(w, method="dense")


class _MarkedBackend(XlaBackend):
    """The reference backend, with an io_callback (never moved by XLA) in
    prepare_weight: where it lands in the compiled HLO shows where the weight
    compression runs."""

    name = "marked"

    def prepare_weight(self, w_s, *, transposable):
        w_s = jax.experimental.io_callback(lambda a: np.asarray(a), jax.ShapeDtypeStruct(w_s.shape, w_s.dtype), w_s)
        return super().prepare_weight(w_s, transposable=transposable)


@pytest.mark.parametrize("prepare", [False, True])
def test_weights_compressed_outside_the_micro_batch_loop(prepare):
    import jax.experimental  # noqa: F401  (io_callback)

    be = _MarkedBackend()
    model = s24nnx.SparseMLP(32, 64, backend=be, dtype=jnp.bfloat16, mvue=False, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    xs = jax.random.normal(jax.random.key(1), (3, 8, 32), jnp.bfloat16)

    def step(state, xs):
        m = nnx.merge(graphdef, state)
        if prepare:
            s24nnx.prepare_weights(m)
        gdef, params, rest = nnx.split(m, nnx.Param, ...)

        def micro(acc, x):
            _, g, _ = s24nnx.value_and_grad(lambda mm: jnp.mean(mm(x).astype(jnp.float32) ** 2), gdef, params, rest)
            return jax.tree.map(jnp.add, acc, g), None

        return jax.lax.scan(micro, jax.tree.map(jnp.zeros_like, params), xs)[0]

    text = jax.jit(step).lower(state, xs).compile().as_text()
    counts = custom_calls_by_loop(text)
    (c,) = [v for k, v in counts.items() if "callback" in k]
    # two sparse layers: fc and proj
    assert c == ({"inside": 0, "outside": 2} if prepare else {"inside": 2, "outside": 0})
    # and the same gradients either way
    if prepare:
        g = jax.jit(step)(state, xs)
        assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(g))


def _prepared_paths(model):
    return {path for path, layer in s24nnx.sparse_layers(model) if layer.prepared.get_value() is not None}


def test_prepare_weights_skips_what_compresses_itself():
    m = s24nnx.SparseMLP(32, 64, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    s24nnx.prepare_weights(m)
    assert _prepared_paths(m) == {("fc",), ("proj",)}
    s24nnx.clear_prepared(m)
    s24nnx.set_dense_finetuning(m)
    s24nnx.prepare_weights(m)
    assert _prepared_paths(m) == set()
    m2 = s24nnx.SparseMLP(32, 64, rngs=nnx.Rngs(0))  # no fixed dtype: the call's x decides
    s24nnx.prepare_weights(m2)
    assert _prepared_paths(m2) == set()


def test_prepared_model_gives_the_same_output_and_grads():
    m = s24nnx.SparseMLP(32, 64, dtype=jnp.bfloat16, mvue=False, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (4, 8, 32), jnp.bfloat16)
    loss = lambda mm: jnp.mean(mm(x).astype(jnp.float32) ** 2)
    l0, g0 = nnx.value_and_grad(loss)(m)
    s24nnx.prepare_weights(m)
    l1, g1 = nnx.value_and_grad(loss)(m)
    assert float(l0) == float(l1)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
