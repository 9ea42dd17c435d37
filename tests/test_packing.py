"""compress_24 / decompress_24: the packed format, exact round trip."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparse24_jax as s24


def random_24_mask(rng, shape, allow_fewer=True):
    g = np.zeros((*shape[:-1], shape[-1] // 4, 4), bool)
    for idx in np.ndindex(g.shape[:-1]):
        k = rng.integers(0, 3) if allow_fewer else 2
        g[idx][rng.choice(4, size=k, replace=False)] = True
    return g.reshape(shape)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("shape", [(8, 16), (3, 5, 12), (4,)])
def test_round_trip_is_exact(dtype, shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), dtype)
    mask = jnp.asarray(random_24_mask(rng, shape))
    values, meta = jax.jit(s24.compress_24)(x, mask)
    assert values.shape == (*shape[:-1], shape[-1] // 2) and values.dtype == dtype
    assert meta.shape == (*shape[:-1], -(-shape[-1] // 8)) and meta.dtype == jnp.uint8
    back = jax.jit(s24.decompress_24)(values, meta)
    np.testing.assert_array_equal(np.asarray(back), np.asarray(jnp.where(mask, x, 0)))


def test_codes_and_nibble_order_are_as_documented():
    x = jnp.arange(1.0, 13.0)  # three groups
    mask = jnp.array([1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 1], bool)
    values, meta = s24.compress_24(x, mask)
    np.testing.assert_array_equal(np.asarray(values), [1, 2, 6, 8, 11, 12])
    # group codes: (0,1)=0x4, (1,3)=0xD, (2,3)=0xE; group 2's partner nibble is 0xE padding
    np.testing.assert_array_equal(np.asarray(meta), [0x4 | 0xD << 4, 0xE | 0xE << 4])


def test_groups_with_fewer_than_two_kept_use_cusparselt_positions():
    x = jnp.array([5.0, 6.0, 7.0, 8.0] * 4)
    mask = jnp.array([1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0], bool)
    values, meta = s24.compress_24(x, mask)
    # (0,3) keeps x0 and a zero; (2,3) for the lone last; (2,3) for none; (2,3) for lone third
    np.testing.assert_array_equal(np.asarray(values), [5, 0, 0, 8, 0, 0, 7, 0])
    np.testing.assert_array_equal(np.asarray(meta), [0xC | 0xE << 4, 0xE | 0xE << 4])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_round_trip_property(rows, groups, seed):
    rng = np.random.default_rng(seed)
    shape = (rows, 4 * groups)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    mask = jnp.asarray(random_24_mask(rng, shape))
    back = s24.decompress_24(*s24.compress_24(x, mask))
    np.testing.assert_array_equal(np.asarray(back), np.asarray(jnp.where(mask, x, 0)))


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        s24.compress_24(jnp.ones((4, 8)), jnp.ones((4, 4), bool))
    with pytest.raises(ValueError, match="boolean"):
        s24.compress_24(jnp.ones((4, 8)), jnp.ones((4, 8)))
    with pytest.raises(ValueError, match="multiple of 4"):
        s24.compress_24(jnp.ones((4, 6)), jnp.ones((4, 6), bool))
    with pytest.raises(ValueError, match="uint8"):
        s24.decompress_24(jnp.ones((4, 4)), jnp.ones((4, 1), jnp.int32))
