"""sparse24_linear: forward, the three backward formulas, transforms, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse24_jax as s24

M, K, N = 24, 32, 16


def setup(dtype=jnp.float32, seed=0):
    kx, kw, kd = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (M, K)).astype(dtype)
    w = jax.random.normal(kw, (N, K))
    dz = jax.random.normal(kd, (M, N)).astype(dtype)
    return x, w, s24.transposable_mask_24(w), dz


def vjp(x, w, dz, **kw):
    z, f = jax.vjp(lambda x, w: s24.sparse24_linear(x, w, **kw), x, w)
    return (z, *f(dz))


def test_srste_formulas_without_mvue():
    x, w, mask, dz = setup()
    z, dx, dw = vjp(x, w, dz, mask=mask, mvue=False)
    ws = np.where(mask, w, 0)
    np.testing.assert_allclose(z, np.asarray(x) @ ws.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, np.asarray(dz) @ ws, rtol=1e-5, atol=1e-5)
    # straight-through: the full dense gradient reaches the master weight
    np.testing.assert_allclose(dw, np.asarray(dz).T @ np.asarray(x), rtol=1e-5, atol=1e-5)


def test_weight_grad_uses_mvue_of_dz_transpose_with_the_given_key():
    x, w, mask, dz = setup()
    key = jax.random.key(7)
    _, _, dw = vjp(x, w, dz, mask=mask, key=key)
    expected = np.asarray(s24.mvue_24(key, dz.T, axis=-1)) @ np.asarray(x)
    np.testing.assert_allclose(dw, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(dw, np.asarray(dz).T @ np.asarray(x))  # it really is pruned


def test_mvue_weight_grad_is_unbiased_on_average():
    x, w, mask, dz = setup()
    keys = jax.random.split(jax.random.key(0), 4000)
    g = jax.jit(jax.vmap(lambda k: vjp(x, w, dz, mask=mask, key=k)[2]))(keys)
    mean = np.asarray(g, np.float64).mean(0)
    sd = np.asarray(g, np.float64).std(0)
    exact = np.asarray(dz, np.float64).T @ np.asarray(x, np.float64)
    z = np.abs(mean - exact) / (sd / np.sqrt(len(keys)) + 1e-12)
    assert z.max() < 5.5  # per-element false alarm < 4e-8; 512 elements


def test_sste_forward_and_backward():
    x, w, _, dz = setup()
    beta = s24.sste_scale(w)
    z, dx, dw = vjp(x, w, dz, beta=beta, method="sste", mvue=False)
    ws = float(beta) * np.asarray(s24.soft_threshold_24(w))
    np.testing.assert_allclose(z, np.asarray(x) @ ws.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, np.asarray(dz) @ ws, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, np.asarray(dz).T @ np.asarray(x), rtol=1e-5, atol=1e-5)


def test_dense_method_is_plain_matmul():
    x, w, _, dz = setup()
    z, dx, dw = vjp(x, w, dz, method="dense")
    np.testing.assert_allclose(z, np.asarray(x) @ np.asarray(w).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, np.asarray(dz).T @ np.asarray(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_dtypes_preserved_and_close_to_float32(dtype):
    x, w, mask, dz = setup(dtype)
    z, dx, dw = jax.jit(lambda x, w, dz: vjp(x, w, dz, mask=mask, mvue=False))(x, w, dz)
    assert z.dtype == dtype and dx.dtype == dtype and dw.dtype == jnp.float32
    ws = np.where(mask, np.asarray(w.astype(dtype), np.float64), 0)
    ref = np.asarray(x, np.float64) @ ws.T
    tol = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2, jnp.float16: 2e-3}[dtype]
    assert np.linalg.norm(np.asarray(z, np.float64) - ref) / np.linalg.norm(ref) < tol


def test_leading_dims_and_token_padding():
    x, w, mask, _ = setup()
    x3 = x[:21].reshape(3, 7, K)  # M = 21: not a multiple of 4, padded inside
    key = jax.random.key(1)
    f = lambda x, w: (s24.sparse24_linear(x, w, mask, key=key) ** 2).sum()
    z = s24.sparse24_linear(x3, w, mask, key=key)
    assert z.shape == (3, 7, N)
    np.testing.assert_allclose(z.reshape(21, N), np.asarray(x[:21]) @ np.where(mask, w, 0).T, rtol=1e-5, atol=1e-5)
    gx, gw = jax.jit(jax.grad(f, argnums=(0, 1)))(x3, w)
    assert gx.shape == x3.shape and gw.shape == w.shape and np.isfinite(gw).all()


def test_vmap_over_batch_of_inputs():
    x, w, mask, _ = setup()
    xs = jnp.stack([x, 2 * x])
    f = lambda x: s24.sparse24_linear(x, w, mask, mvue=False)
    np.testing.assert_allclose(jax.vmap(f)(xs)[1], 2 * f(x), rtol=1e-5, atol=1e-5)
    g = jax.vmap(jax.grad(lambda x: f(x).sum()))(xs)
    assert g.shape == xs.shape


def test_grad_of_jit_matches_eager():
    x, w, mask, _ = setup()
    key = jax.random.key(3)
    f = lambda w: jnp.sum(jnp.tanh(s24.sparse24_linear(x, w, mask, key=key)))
    # jit fuses differently from eager: float32 sums may round differently (seen on an H100)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(w), jax.grad(f)(w), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(w=jnp.ones((6, 32))), "multiple of 4"),
        (dict(w=jnp.ones((16, 30)), x=jnp.ones((8, 30))), "multiple of 4"),
        (dict(w=jnp.ones((2, 16, 32))), "2-D"),
        (dict(x=jnp.ones((8, 32), jnp.int32)), "floating-point"),
        (dict(x=jnp.ones((8, 31))), "last axis of x"),
        (dict(mask=jnp.ones((16, 16), bool)), "shape"),
        (dict(mask=jnp.ones((16, 32), jnp.float32)), "boolean"),
        (dict(mask=None), "needs mask"),
        (dict(method="magic"), "unknown method"),
        (dict(backend="nonsense"), "unknown backend"),
        (dict(key=None), "key="),
        (dict(method="sste", beta=None), "needs beta"),
        (dict(grad_acc=jnp.ones((32, 16))), "weight's shape and dtype"),
        (dict(grad_acc=jnp.ones((16, 32), jnp.bfloat16)), "weight's shape and dtype"),
        (dict(grad_acc=jnp.ones((16, 32)), precision="fp8"), "grad_acc= works with"),
        (dict(grad_acc=jnp.ones((16, 32)), method="dense"), "grad_acc= works with"),
    ],
)
def test_bad_input_raises_value_error_naming_the_fix(kwargs, match):
    args = dict(x=jnp.ones((8, 32)), w=jnp.ones((16, 32)), mask=jnp.ones((16, 32), bool), key=jax.random.key(0))
    args.update(kwargs)
    x, w = args.pop("x"), args.pop("w")
    with pytest.raises(ValueError, match=match):
        s24.sparse24_linear(x, w, **args)


@pytest.mark.parametrize("method", ["srste", "sste"])
def test_grad_acc_makes_the_weight_cotangent_the_running_sum(method):
    """grad_acc=S: w's cotangent is S + dW (the same dW, the same key), x's is unchanged;
    the sum gets no cotangent of its own."""
    x, w, mask, dz = setup()
    acc = jax.random.normal(jax.random.key(9), w.shape)
    kw = dict(mask=mask) if method == "srste" else dict(beta=s24.sste_scale(w))
    kw.update(method=method, key=jax.random.key(7))
    z0, dx0, dw0 = vjp(x, w, dz, **kw)
    z, f = jax.vjp(lambda x, w, a: s24.sparse24_linear(x, w, grad_acc=a, **kw), x, w, acc)
    dx, dw, dacc = f(dz)
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_array_equal(dx, dx0)
    np.testing.assert_allclose(dw, np.asarray(acc) + np.asarray(dw0), rtol=1e-6, atol=1e-6)
    assert not np.any(np.asarray(dacc))
