"""S-STE: soft threshold and beta."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse24_jax as s24


def numpy_soft_threshold(x):
    g = np.asarray(x, np.float64).reshape(-1, 4)
    t = np.sort(np.abs(g), -1)[:, 1:2]
    order = np.argsort(-np.abs(g), -1, kind="stable")[:, :2]
    out = np.zeros_like(g)
    rows = np.arange(len(g))[:, None]
    out[rows, order] = np.sign(g[rows, order]) * (np.abs(g[rows, order]) - t)
    return out.reshape(np.shape(x))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_soft_threshold_matches_definition(dtype):
    x = jax.random.normal(jax.random.key(0), (16, 32)).astype(dtype)
    y = jax.jit(s24.soft_threshold_24)(x)
    assert y.dtype == dtype
    ref = numpy_soft_threshold(np.asarray(x.astype(jnp.float32)))
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=1e-2 if dtype != jnp.float32 else 1e-6, atol=1e-6)
    assert ((np.asarray(y) != 0).reshape(-1, 4).sum(-1) <= 2).all()


def test_soft_threshold_is_continuous_and_handles_ties():
    x = jnp.array([1.0, 1.0, 1.0, 1.0, 2.0, -3.0, 0.5, 0.5])
    np.testing.assert_array_equal(np.asarray(s24.soft_threshold_24(x)), [0, 0, 0, 0, 1.5, -2.5, 0, 0])
    # a tiny change in the weights makes a tiny change in the output (no jump)
    a = jnp.array([1.0, 0.9999, 0.5, 0.2])
    b = jnp.array([0.9999, 1.0, 0.5, 0.2])
    assert float(jnp.abs(s24.soft_threshold_24(a) - s24.soft_threshold_24(b)).max()) < 1e-3


def test_soft_threshold_along_axis_0():
    x = jax.random.normal(jax.random.key(1), (8, 3))
    y = s24.soft_threshold_24(x, axis=0)
    np.testing.assert_allclose(np.asarray(y), numpy_soft_threshold(np.asarray(x).T).T, rtol=1e-6)


def test_sste_scale_formula_and_zero():
    w = jax.random.normal(jax.random.key(2), (8, 16))
    s = np.asarray(s24.soft_threshold_24(w), np.float64)
    wn = np.asarray(w, np.float64)
    assert float(s24.sste_scale(w)) == pytest.approx((wn * s).sum() / (s * s).sum(), rel=1e-5)
    assert float(s24.sste_scale(w)) > 1.0  # restores the magnitude lost by thresholding
    assert float(s24.sste_scale(jnp.zeros((4, 4)))) == 1.0


def test_second_smallest_of_4_is_the_sorted_entry_for_every_order_and_tie():
    # all 4^4 assignments of the values {0, 1, 2, 3}: every ordering, with every kind of tie
    import itertools

    a = np.array(list(itertools.product(range(4), repeat=4)), np.float32)
    got = np.asarray(s24.sste.second_smallest_of_4(jnp.asarray(a)))
    np.testing.assert_array_equal(got, np.sort(a, -1)[:, 1])


def test_soft_threshold_compiles_without_a_sort():
    # a sort of (..., 4) groups was a whole-tensor sort kernel per layer and step on the GPU
    w = jnp.ones((64, 128), jnp.float32)
    text = jax.jit(s24.soft_threshold_24).lower(w).as_text()
    assert "sort" not in text
