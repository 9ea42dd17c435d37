"""2:4 masks: plain top-2, the transposable optimum (vs brute force), flip rate."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse24_jax as s24


def all_transposable_patterns():
    """Brute force: every 4x4 0/1 matrix with two ones per row and column."""
    out = []
    for bits in range(1 << 16):
        m = np.array([(bits >> i) & 1 for i in range(16)]).reshape(4, 4)
        if (m.sum(0) == 2).all() and (m.sum(1) == 2).all():
            out.append(m)
    return np.stack(out)


def test_pattern_table_is_exactly_the_90_patterns():
    brute = {m.tobytes() for m in all_transposable_patterns().astype(np.int8)}
    ours = [m.tobytes() for m in s24.TRANSPOSABLE_PATTERNS.astype(np.int8)]
    assert len(ours) == 90 and len(set(ours)) == 90 and set(ours) == brute


def brute_force_mask(w):
    """Per 4x4 block, the first (in table order) pattern of maximum L1, in float64."""
    a = np.abs(np.asarray(w, np.float64))
    n, k = a.shape
    pats = s24.TRANSPOSABLE_PATTERNS.astype(bool)
    out = np.zeros((n, k), bool)
    best_l1 = np.zeros((n // 4, k // 4))
    for i, j in itertools.product(range(n // 4), range(k // 4)):
        blk = a[4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
        scores = [(blk * p).sum() for p in pats]
        b = int(np.argmax(scores))
        out[4 * i : 4 * i + 4, 4 * j : 4 * j + 4] = pats[b]
        best_l1[i, j] = scores[b]
    return out, best_l1


def block_l1(w, mask):
    a = np.abs(np.asarray(w, np.float64)) * np.asarray(mask)
    n, k = a.shape
    return a.reshape(n // 4, 4, k // 4, 4).sum((1, 3))


def assert_transposable(mask):
    m = np.asarray(mask)
    n, k = m.shape
    assert (m.reshape(n, k // 4, 4).sum(-1) == 2).all(), "not 2:4 along K"
    assert (m.T.reshape(k, n // 4, 4).sum(-1) == 2).all(), "not 2:4 along N"


@pytest.mark.parametrize("shape", [(4, 4), (8, 16), (64, 32), (12, 20)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transposable_mask_is_the_optimum_on_random_input(shape, seed):
    w = jax.random.normal(jax.random.key(seed), shape)
    mask = s24.transposable_mask_24(w)
    assert mask.dtype == jnp.bool_ and mask.shape == shape
    assert_transposable(mask)
    _, best = brute_force_mask(w)
    np.testing.assert_allclose(block_l1(w, mask), best, rtol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: rng.integers(0, 3, (16, 16)).astype(np.float32),  # many exact ties
        lambda rng: np.zeros((8, 8), np.float32),
        lambda rng: np.full((8, 12), -2.5, np.float32),
        lambda rng: np.where(rng.random((16, 8)) < 0.5, 0.0, 1.0).astype(np.float32),
    ],
    ids=["integer-ties", "zeros", "constant", "binary"],
)
def test_transposable_mask_ties_follow_the_documented_order(make):
    w = make(np.random.default_rng(0))
    mask = s24.transposable_mask_24(jnp.asarray(w))
    expected, _ = brute_force_mask(w)
    assert_transposable(mask)
    np.testing.assert_array_equal(np.asarray(mask), expected)


def test_transposable_mask_of_zeros_is_the_first_pattern():
    mask = s24.transposable_mask_24(jnp.zeros((4, 4)))
    np.testing.assert_array_equal(np.asarray(mask), s24.TRANSPOSABLE_PATTERNS[0].astype(bool))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_transposable_mask_dtypes_and_jit(dtype):
    w = jax.random.normal(jax.random.key(3), (32, 64)).astype(dtype)
    mask = jax.jit(s24.transposable_mask_24)(w)
    expected, _ = brute_force_mask(np.asarray(w.astype(jnp.float32)))
    assert_transposable(mask)
    np.testing.assert_allclose(block_l1(w.astype(jnp.float32), mask), block_l1(w.astype(jnp.float32), expected), rtol=1e-6)


def numpy_mask_24(x, axis):
    x = np.moveaxis(np.abs(np.asarray(x, np.float64)), axis, -1)
    g = x.reshape(*x.shape[:-1], -1, 4)
    order = np.argsort(-g, axis=-1, kind="stable")[..., :2]
    m = np.zeros(g.shape, bool)
    np.put_along_axis(m, order, True, -1)
    return np.moveaxis(m.reshape(x.shape), -1, axis)


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_mask_24_keeps_two_largest(axis, dtype):
    x = jax.random.normal(jax.random.key(0), (8, 12, 16)).astype(dtype)
    m = jax.jit(s24.mask_24, static_argnums=1)(x, axis)
    np.testing.assert_array_equal(np.asarray(m), numpy_mask_24(x.astype(jnp.float32), axis))


def test_mask_24_ties_go_to_lower_index():
    m = s24.mask_24(jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 2.0]))
    np.testing.assert_array_equal(np.asarray(m), [1, 1, 0, 0, 0, 1, 1, 0])


def test_flip_rate_counts_changes():
    a = jnp.array([[1, 1, 0, 0]], bool)
    b = jnp.array([[1, 0, 1, 0]], bool)
    assert float(s24.flip_rate(a, b)) == pytest.approx(0.5)
    assert float(s24.flip_rate(a, a)) == 0.0


@pytest.mark.parametrize(
    "fn, arg, match",
    [
        (s24.transposable_mask_24, jnp.ones((6, 8)), "multiple of 4"),
        (s24.transposable_mask_24, jnp.ones((8, 6)), "multiple of 4"),
        (s24.transposable_mask_24, jnp.ones((4, 4, 4)), "2-D"),
        (s24.transposable_mask_24, jnp.ones((4, 4), jnp.int32), "floating-point"),
        (s24.mask_24, jnp.ones((3, 6)), "multiple of 4"),
        (s24.mask_24, jnp.ones((4,), jnp.int8), "floating-point"),
    ],
)
def test_bad_input_raises_value_error_with_fix(fn, arg, match):
    with pytest.raises(ValueError, match=match):
        fn(arg)


def test_flip_rate_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        s24.flip_rate(jnp.ones((4, 4), bool), jnp.ones((4, 8), bool))
