"""MVUE 2:4: exactly two kept, the inclusion probabilities, unbiasedness."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse24_jax as s24
from sparse24_jax.mvue import EPS

# Unbiasedness is checked with a z-test per element: |mean - x| / (sd / sqrt(n))
# must stay under Z. With Z = 5 the two-sided false-alarm probability of one
# element is 5.7e-7; over the 64 elements below it is under 4e-5 per test, for
# a randomly chosen seed. (The seed is fixed, so the test is deterministic.)
Z = 5.0
N_SAMPLES = 20000


def test_inclusion_probabilities_sum_to_two_and_match_formula():
    a = jnp.abs(jax.random.normal(jax.random.key(0), (100, 4))) + EPS
    p = s24.mvue_inclusion_probs(a)
    np.testing.assert_allclose(np.asarray(p.sum(-1)), 2.0, rtol=1e-5)
    an = np.asarray(a, np.float64)
    s = an.sum(-1, keepdims=True)
    ref = an / s
    for j in range(4):
        term = (an[:, j : j + 1] / s) * an / (s - an[:, j : j + 1])
        term[:, j] = 0
        ref = ref + term
    np.testing.assert_allclose(np.asarray(p), ref, rtol=1e-5)


def samples(x, n=N_SAMPLES, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    return np.asarray(jax.jit(jax.vmap(lambda k: s24.mvue_24(k, x)))(keys), np.float64)


def test_mvue_is_unbiased():
    x = jax.random.normal(jax.random.key(1), (4, 16)) * jnp.array([1.0, 10.0, 1e-3, 0.1])[:, None]
    x = x.at[0, :4].set(jnp.array([0.0, 0.0, 3.0, -1.0]))  # a group with zeros
    s = samples(x)
    mean, sd = s.mean(0), s.std(0) + 1e-30
    z = np.abs(mean - np.asarray(x, np.float64)) / (sd / np.sqrt(len(s)))
    exact = sd == 1e-30  # deterministic elements must be exact
    assert (z[~exact] < Z).all(), f"max z = {z[~exact].max():.2f}"
    np.testing.assert_allclose(mean[exact], np.asarray(x)[exact], atol=1e-6)


def test_mvue_keeps_exactly_two_and_keep_frequencies_match_probabilities():
    x = jnp.array([[3.0, -1.0, 0.5, 2.0, 1.0, 1.0, 1.0, 1.0]])
    s = samples(x)
    nz = (s != 0).reshape(len(s), -1, 4).sum(-1)
    assert (nz == 2).all()
    p = np.asarray(s24.mvue_inclusion_probs(jnp.abs(x.reshape(-1, 4)) + EPS)).reshape(-1)
    freq = (s != 0).mean(0).reshape(-1)
    se = np.sqrt(p * (1 - p) / len(s)) + 1e-12
    assert (np.abs(freq - p) / se < Z).all()
    # kept values are x / p
    first = s[0].reshape(-1)
    kept = first != 0
    np.testing.assert_allclose(first[kept], (np.asarray(x).reshape(-1) / p)[kept], rtol=1e-5)


def test_mvue_group_with_fewer_non_zeros():
    x = jnp.array([0.0, 0.0, 0.0, 5.0] * 2)
    s = samples(x, n=2000)
    assert ((s != 0).reshape(len(s), -1, 4).sum(-1) <= 1).all()
    np.testing.assert_allclose(s.mean(0), np.asarray(x), rtol=0.05)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("axis", [0, -1])
def test_mvue_dtype_axis_and_batch(dtype, axis):
    x = jax.random.normal(jax.random.key(2), (8, 3, 12)).astype(dtype)
    y = jax.jit(s24.mvue_24, static_argnums=2)(jax.random.key(0), x, axis)
    assert y.dtype == dtype and y.shape == x.shape
    g = jnp.moveaxis(y != 0, axis, -1)
    assert (g.reshape(*g.shape[:-1], -1, 4).sum(-1) == 2).all()


def test_mvue_bad_input():
    with pytest.raises(ValueError, match="multiple of 4"):
        s24.mvue_24(jax.random.key(0), jnp.ones((6,)))
    with pytest.raises(ValueError, match="floating-point"):
        s24.mvue_24(jax.random.key(0), jnp.ones((8,), jnp.int32))
