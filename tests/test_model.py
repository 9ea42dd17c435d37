"""train/model.py's tied LM head: float32 logits, gradient GEMMs in the compute dtype."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

try:
    from sparse24_train.model import lm_head
except ImportError:  # a checkout without `pip install -e .`
    from train.model import lm_head


def _inputs(dtype):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (2, 8, 32), jnp.float32).astype(dtype)
    w = jax.random.normal(kw, (96, 32), jnp.float32).astype(dtype)
    return x, w


def _plain(x, w):
    return jnp.einsum("btc,vc->btv", x, w, preferred_element_type=jnp.float32)


def _dots(fn, *args):
    """Every dot_general in fn's jaxpr, sub-jaxprs (custom_vjp, pjit) included."""
    out = []

    def walk(jaxpr):
        for e in jaxpr.eqns:
            if e.primitive.name == "dot_general":
                out.append(e)
            for sub in jax.extend.core.jaxprs_in_params(e.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return out


def _loss(f):
    return lambda x, w: jnp.sum(jnp.sin(f(x, w)))


def test_float32_equals_the_plain_einsum():
    x, w = _inputs(jnp.float32)
    np.testing.assert_array_equal(lm_head(x, w), _plain(x, w))
    got = jax.grad(_loss(lm_head), argnums=(0, 1))(x, w)
    want = jax.grad(_loss(_plain), argnums=(0, 1))(x, w)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_bfloat16_backward_runs_bf16_gemms():
    x, w = _inputs(jnp.bfloat16)
    logits = lm_head(x, w)
    assert logits.dtype == jnp.float32
    np.testing.assert_array_equal(logits, _plain(x, w))  # the forward is unchanged
    grad = jax.grad(_loss(lm_head), argnums=(0, 1))
    dots = _dots(grad, x, w)
    # forward + two gradient GEMMs, every operand bf16 (the plain einsum's VJP has float32 ones)
    assert len(dots) == 3
    assert all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)
    plain_dots = _dots(jax.grad(_loss(_plain), argnums=(0, 1)), x, w)
    assert any(v.aval.dtype == jnp.float32 for e in plain_dots for v in e.invars)
    gx, gw = grad(x, w)
    rx, rw = jax.grad(_loss(_plain), argnums=(0, 1))(x.astype(jnp.float32), w.astype(jnp.float32))
    assert gx.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(gx, np.float32), rx, rtol=5e-2, atol=5e-2)
    np.testing.assert_allclose(np.asarray(gw, np.float32), rw, rtol=5e-2, atol=5e-2)
