"""Linen modules and their functional helpers."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparse24_jax as s24
from sparse24_jax import linen as s24linen


class Net(nn.Module):
    method: str = "srste"

    @nn.compact
    def __call__(self, x):
        x = s24linen.SparseMLP(32, linear_kwargs={"method": self.method})(x)
        return nn.Dense(4)(x)


def test_linen_mlp_matches_formula_and_keeps_state_in_collection():
    x = jax.random.normal(jax.random.key(0), (8, 16))
    v = Net().init({"params": jax.random.key(1), "sparse24": jax.random.key(2)}, x)
    fc = v["params"]["SparseMLP_0"]["fc"]["weight"]
    assert fc.shape == (32, 16)
    mask = v["sparse24"]["SparseMLP_0"]["fc"]["mask"]
    np.testing.assert_array_equal(mask, s24.transposable_mask_24(fc))
    y = Net().apply(v, x, rngs={"sparse24": jax.random.key(3)})
    assert y.shape == (8, 4)


def test_linen_sste_has_beta_and_needs_rng_for_mvue():
    x = jnp.ones((4, 16))
    layer = s24linen.SparseLinear(8, method="sste")
    v = layer.init({"params": jax.random.key(0), "sparse24": jax.random.key(1)}, x)
    np.testing.assert_allclose(v["sparse24"]["beta"], s24.sste_scale(v["params"]["weight"]))
    with pytest.raises(ValueError, match="rngs=\\{'sparse24'"):
        layer.apply(v, x)


def test_linen_training_with_helpers():
    x = jax.random.normal(jax.random.key(0), (32, 16))
    y = jnp.tanh(x[:, :4])
    v = Net().init({"params": jax.random.key(1), "sparse24": jax.random.key(2)}, x)
    params, sparse = v["params"], v["sparse24"]
    tx = s24.srste_optimizer(3e-3, alpha=1e-3, dense_step=None)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, sparse, opt_state, i):
        def loss_fn(p):
            out = Net().apply({"params": p, "sparse24": sparse}, x, rngs={"sparse24": jax.random.fold_in(jax.random.key(0), i)})
            return ((out - y) ** 2).mean()

        loss, g = jax.value_and_grad(loss_fn)(params)
        upd, opt_state = tx.update(g, opt_state, params, masks=s24linen.decay_masks(params, sparse))
        params = optax.apply_updates(params, upd)
        sparse, fr = s24linen.refresh_masks(params, sparse, i + 1, mask_interval=5)
        return params, sparse, opt_state, loss, fr

    losses = []
    for i in range(30):
        params, sparse, opt_state, loss, fr = step(params, sparse, opt_state, i)
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]
    np.testing.assert_array_equal(
        sparse["SparseMLP_0"]["fc"]["mask"], s24.transposable_mask_24(params["SparseMLP_0"]["fc"]["weight"])
    )
    dm = s24linen.decay_masks(params, sparse)
    assert dm["Dense_0"]["kernel"] is True and dm["SparseMLP_0"]["proj"]["weight"].dtype == jnp.bool_


def test_linen_dense_layers_get_no_mask_and_no_decay():
    # the helpers find 2:4 layers by their mask: a dense layer holding one got a
    # transposable mask from refresh_masks and masked decay on half its weights
    x = jax.random.normal(jax.random.key(0), (8, 16))
    v = Net(method="dense").init({"params": jax.random.key(1), "sparse24": jax.random.key(2)}, x)
    params, sparse = v["params"], v.get("sparse24", {})
    assert sparse == {}
    dm = s24linen.decay_masks(params, sparse)
    assert all(leaf is True for leaf in jax.tree.leaves(dm, is_leaf=lambda a: a is True))
    new_sparse, fr = s24linen.refresh_masks(params, sparse, 40, mask_interval=40)
    assert new_sparse == {} and float(fr) == 0.0
    y = Net(method="dense").apply(v, x)
    h = jax.nn.gelu(x @ params["SparseMLP_0"]["fc"]["weight"].T, approximate=False)
    ref = h @ params["SparseMLP_0"]["proj"]["weight"].T @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_linen_dense_finetuning_uses_the_master_weight_and_no_decay():
    x = jax.random.normal(jax.random.key(0), (8, 16))
    v = Net().init({"params": jax.random.key(1), "sparse24": jax.random.key(2)}, x)
    params, sparse = v["params"], v["sparse24"]
    dm = s24linen.decay_masks(params, sparse, dense_finetuning=True)
    assert all(leaf is True for leaf in jax.tree.leaves(dm, is_leaf=lambda a: a is True))
    layer = s24linen.SparseLinear(32, dense_finetuning=True)
    w = params["SparseMLP_0"]["fc"]["weight"]
    y = layer.apply({"params": {"weight": w}, "sparse24": sparse["SparseMLP_0"]["fc"]}, x)  # no rng: no MVUE
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-5, atol=1e-5)


def test_linen_mlp_mvue_per_linear():
    """mvue=(fc's, proj's) over linear_kwargs: (False, True) gives fc the exact weight gradient
    and proj an MVUE estimate; None leaves linear_kwargs' setting."""
    x = jax.random.normal(jax.random.key(0), (8, 16))

    def grads(mvue, kw=None):
        mod = s24linen.SparseMLP(32, linear_kwargs=kw, mvue=mvue)
        v = mod.init({"params": jax.random.key(1), "sparse24": jax.random.key(2)}, x)

        def loss(p):
            y = mod.apply({"params": p, "sparse24": v["sparse24"]}, x, rngs={"sparse24": jax.random.key(3)})
            return jnp.sum(y ** 2)

        return jax.grad(loss)(v["params"])

    exact = grads(False)
    g = grads((False, True))
    np.testing.assert_allclose(g["fc"]["weight"], exact["fc"]["weight"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(g["proj"]["weight"], exact["proj"]["weight"], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(grads(None, {"mvue": False})["proj"]["weight"], exact["proj"]["weight"],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="a pair of bools"):
        s24linen.SparseMLP(32, mvue=(True,)).init({"params": jax.random.key(1), "sparse24": jax.random.key(2)}, x)
