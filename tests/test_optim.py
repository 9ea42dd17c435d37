"""optax transforms: masked decay formula, placement in a chain, dense switch."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparse24_jax as s24


def tree():
    params = {"w": jnp.arange(8.0).reshape(2, 4), "b": jnp.ones(3)}
    grads = {"w": jnp.full((2, 4), 0.5), "b": jnp.full(3, 0.1)}
    masks = {"w": jnp.array([[1, 1, 0, 0], [0, 1, 0, 1]], bool), "b": True}
    return params, grads, masks


def test_masked_decay_formula():
    params, grads, masks = tree()
    tx = s24.masked_decay(0.1)
    out, _ = jax.jit(lambda g, s, p, m: tx.update(g, s, p, masks=m))(grads, tx.init(params), params, masks)
    expected = grads["w"] + 0.1 * params["w"] * (1 - masks["w"])
    np.testing.assert_allclose(out["w"], expected)
    np.testing.assert_allclose(out["b"], grads["b"])  # True: untouched


def test_masked_decay_stops_at_dense_step():
    params, grads, masks = tree()
    tx = s24.masked_decay(0.1, dense_step=2)
    state = tx.init(params)
    outs = []
    for _ in range(4):
        out, state = tx.update(grads, state, params, masks=masks)
        outs.append(out["w"])
    assert not np.allclose(outs[1], grads["w"]) and np.allclose(outs[2], grads["w"]) and np.allclose(outs[3], grads["w"])


def test_in_an_ordinary_chain_after_clipping_before_adamw():
    params, grads, masks = tree()
    tx = optax.chain(optax.clip_by_global_norm(1.0), s24.masked_decay(0.5), optax.adamw(1e-2))
    state = tx.init(params)
    updates, state = tx.update(grads, state, params, masks=masks)
    # reference: the same three steps by hand
    clipped, _ = optax.clip_by_global_norm(1.0).update(grads, None)
    decayed = dict(clipped, w=clipped["w"] + 0.5 * params["w"] * (1 - masks["w"]))
    ref, _ = optax.adamw(1e-2).update(decayed, optax.adamw(1e-2).init(params), params)
    for k in params:
        np.testing.assert_allclose(updates[k], ref[k], rtol=1e-6)


def test_recipes_accept_masks_and_sste_ignores_them():
    params, grads, masks = tree()
    for tx in (s24.srste_optimizer(1e-3, alpha=6e-5, dense_step=10), s24.sste_optimizer(1e-3)):
        updates, _ = tx.update(grads, tx.init(params), params, masks=masks)
        assert jax.tree.structure(updates) == jax.tree.structure(params)


def test_dense_finetune_step():
    assert s24.dense_finetune_step(300_000) == 250_000
    assert s24.dense_finetune_step(120, 0.5) == 60
    with pytest.raises(ValueError, match="fraction"):
        s24.dense_finetune_step(10, 1.5)


def test_missing_masks_error_names_the_fix():
    params, grads, _ = tree()
    tx = s24.masked_decay(0.1)
    with pytest.raises(ValueError, match="decay_masks"):
        tx.update(grads, tx.init(params), params)


def test_weight_decay_mask_skips_vectors():
    params = {"w": jnp.ones((2, 4)), "ln": jnp.ones(4)}
    grads = jax.tree.map(jnp.zeros_like, params)
    tx = s24.sste_optimizer(1.0, weight_decay=0.5, weight_decay_mask=s24.decay_matrices_only)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(updates["w"]).max()) > 0  # decayed
    np.testing.assert_array_equal(updates["ln"], 0.0)  # not decayed
