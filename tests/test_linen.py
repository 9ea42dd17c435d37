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


class _AccNet(nn.Module):
    """An FFN, a layer used twice (shared weight), a layer whose output the value ignores,
    a dense fine-tuning layer, a dense head: every case value_and_grad's sums must get right."""

    @nn.compact
    def __call__(self, x):
        kw = {"dtype": jnp.bfloat16}
        shared = s24linen.SparseLinear(32, name="shared", **kw)
        s24linen.SparseLinear(32, name="unused", **kw)(x)  # called, output dropped: no backward runs
        h = (s24linen.SparseMLP(64, linear_kwargs=kw, name="mlp")(x) + shared(shared(x))
             + s24linen.SparseLinear(32, dense_finetuning=True, name="tuned", **kw)(x))
        return jnp.mean(nn.Dense(8)(h).astype(jnp.float32) ** 2)


def _acc_setup(net=None):
    """(params, running sums shaped like them, x, loss(params, x)) for ``net`` (_AccNet)."""
    net = net or _AccNet()
    x = jax.random.normal(jax.random.key(2), (2, 8, 32))
    v = net.init({"params": jax.random.key(0), "sparse24": jax.random.key(1)}, x)
    acc = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape, p.dtype), v["params"])

    def loss(params, x):
        return net.apply({"params": params, "sparse24": v["sparse24"]}, x, rngs={"sparse24": jax.random.key(7)})

    return v["params"], acc, x, loss


def _spy_take(monkeypatch) -> list[tuple[tuple, bool]]:
    """Record every layer's ask for its sum: (its weight's shape, whether it got one)."""
    from sparse24_jax import _grad_acc

    asks = []
    real_take = _grad_acc.take

    def spy(w):
        s = real_take(w)
        asks.append((tuple(w.shape), s is not None))
        return s

    monkeypatch.setattr(_grad_acc, "take", spy)
    return asks


def test_value_and_grad_grad_acc_is_the_running_sum_plus_the_gradient(monkeypatch):
    """grads(grad_acc=S) == S + grads() leaf by leaf; the sparse layers take their sums into
    their backward (the shared layer once, though it runs twice), the unused layer's (no
    backward ran), the dense fine-tuning layer's and the head's are added by value_and_grad."""
    params, acc, x, loss = _acc_setup()
    v0, g0 = s24linen.value_and_grad(loss, params, x)
    asks = _spy_take(monkeypatch)
    v1, g1 = s24linen.value_and_grad(loss, params, x, grad_acc=acc)
    took = {}
    for shape, got in asks:
        took.setdefault(shape, []).append(got)
    assert float(v0) == float(v1)
    for (path, a), g, s in zip(jax.tree_util.tree_leaves_with_path(acc), jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(s, np.asarray(a) + np.asarray(g), rtol=1e-5, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    # (32, 32): unused, shared twice (taken once); fc (64, 32) and proj (32, 64) once; tuned never asks
    assert sorted(took[(32, 32)]) == [False, True, True]
    assert took[(64, 32)] == [True] and took[(32, 64)] == [True]
    with pytest.raises(ValueError, match="grad_acc must be shaped like params"):
        s24linen.value_and_grad(loss, params, x, grad_acc={"mlp": acc["mlp"]})


def test_value_and_grad_grad_acc_hands_nothing_it_cannot_tell_apart(monkeypatch):
    """float32 sums of bfloat16 params, and one array object as every leaf's sum: no layer
    is handed a sum (their receipts could not say whose it was), all are added here."""
    from sparse24_jax import _grad_acc

    params, acc, x, loss = _acc_setup()
    handed = []
    real_handing = _grad_acc.handing

    def spy(sums):
        handed.append(len(sums))
        return real_handing(sums)

    monkeypatch.setattr(_grad_acc, "handing", spy)
    bf = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    _, g_bf = s24linen.value_and_grad(lambda p, x: loss(jax.tree.map(lambda a: a.astype(jnp.float32), p), x), bf, x)
    _, s_bf = s24linen.value_and_grad(lambda p, x: loss(jax.tree.map(lambda a: a.astype(jnp.float32), p), x), bf, x,
                                      grad_acc=acc)
    for a, g, s in zip(jax.tree.leaves(acc), jax.tree.leaves(g_bf), jax.tree.leaves(s_bf)):
        assert s.dtype == jnp.float32
        np.testing.assert_allclose(s, np.asarray(a) + np.asarray(g, np.float32), rtol=1e-5, atol=1e-6)
    # the three (32, 32) weights' sums as one array object: those three not handed, the other four are
    one = jnp.ones((32, 32), jnp.float32)
    shared_sum = jax.tree.map(lambda p: one if p.shape == (32, 32) else jnp.ones_like(p), params)
    _, g0 = s24linen.value_and_grad(loss, params, x)
    _, g1 = s24linen.value_and_grad(loss, params, x, grad_acc=shared_sum)
    assert handed == [0, 4]
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(b, np.asarray(a) + 1.0, rtol=1e-5, atol=1e-6)


def test_value_and_grad_grad_acc_in_a_scan_matches_adding_after():
    """A jitted micro-batch scan both ways: the sums in the layers' backward or added after."""
    params, _, _, loss = _acc_setup()
    xs = jax.random.normal(jax.random.key(3), (3, 2, 8, 32))

    @jax.jit
    def run(params, xs):
        def micro(carry, x):
            in_gemm, after = carry
            _, in_gemm = s24linen.value_and_grad(loss, params, x, grad_acc=in_gemm)
            _, g = s24linen.value_and_grad(loss, params, x)
            return (in_gemm, jax.tree.map(jnp.add, after, g)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        return jax.lax.scan(micro, (zeros, zeros), xs)[0]

    in_gemm, after = run(params, xs)
    for a, b in zip(jax.tree.leaves(in_gemm), jax.tree.leaves(after)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_value_and_grad_grad_acc_through_a_lifted_transform(monkeypatch):
    """Under nn.remat the layers see new tracers, not the params leaves handed out: no layer
    takes a sum (they would not know whose it is), all are added after: the same sums."""

    class Remat(nn.Module):
        @nn.compact
        def __call__(self, x):
            return jnp.mean(nn.remat(s24linen.SparseMLP)(64, name="mlp")(x) ** 2)

    params, acc, x, loss = _acc_setup(Remat())
    _, g0 = s24linen.value_and_grad(loss, params, x)
    asks = _spy_take(monkeypatch)
    _, g1 = s24linen.value_and_grad(loss, params, x, grad_acc=acc)
    assert asks and not any(got for _, got in asks)
    for a, g, s in zip(jax.tree.leaves(acc), jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(s, np.asarray(a) + np.asarray(g), rtol=1e-5, atol=1e-6)
