"""Flax NNX modules: Variables, refresh, decay masks, dense switch, training."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sparse24_jax as s24
from sparse24_jax import nnx as s24nnx


def test_sparse_linear_variables_and_output():
    layer = s24nnx.SparseLinear(16, 8, mvue=False, rngs=nnx.Rngs(0))
    assert layer.weight[...].shape == (8, 16) and layer.weight[...].dtype == jnp.float32
    assert isinstance(layer.mask, s24nnx.Sparse24Mask) and layer.mask[...].dtype == jnp.bool_
    np.testing.assert_array_equal(layer.mask[...], s24.transposable_mask_24(layer.weight[...]))
    x = jax.random.normal(jax.random.key(1), (2, 3, 16))
    expected = x @ jnp.where(layer.mask[...], layer.weight[...], 0).T
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
    # only the weight is a trainable Param
    assert jax.tree.leaves(nnx.state(layer, nnx.Param)) == [layer.weight[...]]


def test_sste_layer_has_frozen_beta():
    layer = s24nnx.SparseLinear(16, 8, method="sste", rngs=nnx.Rngs(0))
    assert isinstance(layer.beta, s24nnx.Sparse24Scale)
    np.testing.assert_allclose(layer.beta[...], s24.sste_scale(layer.weight[...]))
    opt = nnx.Optimizer(layer, s24.sste_optimizer(1e-2), wrt=nnx.Param)
    beta0 = float(layer.beta[...])
    grads = nnx.grad(lambda m: m(jnp.ones((4, 16))).sum())(layer)
    opt.update(layer, grads)
    assert float(layer.beta[...]) == beta0  # not trained


def test_mvue_keys_advance_between_calls():
    layer = s24nnx.SparseLinear(16, 8, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (8, 16))
    g1 = nnx.grad(lambda m: (m(x) ** 2).sum())(layer)
    g2 = nnx.grad(lambda m: (m(x) ** 2).sum())(layer)
    assert not np.allclose(g1["weight"][...], g2["weight"][...])


@pytest.mark.parametrize("method", ["srste", "sste", "dense", "ste"])
def test_mlp_and_gated_mlp_shapes(method):
    rngs = nnx.Rngs(0)
    mlp = s24nnx.SparseMLP(16, 64, method=method, dtype=jnp.bfloat16, rngs=rngs)
    gated = s24nnx.SparseGatedMLP(16, 32, activation="geglu", method=method, rngs=rngs)
    x = jax.random.normal(jax.random.key(0), (2, 4, 16))
    assert mlp(x).shape == x.shape and mlp(x).dtype == jnp.bfloat16
    assert gated(x).shape == x.shape
    assert gated.gate_up.weight[...].shape == (64, 16)


def test_gated_mlp_matches_formula():
    m = s24nnx.SparseGatedMLP(8, 8, activation="swiglu", mvue=False, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 8))
    h = x @ jnp.where(m.gate_up.mask[...], m.gate_up.weight[...], 0).T
    a = h[:, :8] * jax.nn.silu(h[:, 8:])
    ref = a @ jnp.where(m.proj.mask[...], m.proj.weight[...], 0).T
    np.testing.assert_allclose(m(x), ref, rtol=1e-5, atol=1e-5)


class TwoLayer(nnx.Module):
    def __init__(self, interval=2, rngs=None):
        self.mlp = s24nnx.SparseMLP(16, 32, mask_interval=interval, rngs=rngs)
        self.head = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        return self.head(self.mlp(x))


def test_refresh_masks_on_schedule_and_flip_rate():
    model = TwoLayer(rngs=nnx.Rngs(0))
    old = model.mlp.fc.mask[...]
    # perturb weights so the optimum moves
    model.mlp.fc.weight[...] += 0.5 * jax.random.normal(jax.random.key(9), (32, 16))
    fr, refreshed = s24nnx.refresh_masks(model, 3)  # 3 % 2 != 0: nothing happens
    assert not bool(refreshed) and float(fr) == 0.0
    np.testing.assert_array_equal(model.mlp.fc.mask[...], old)
    fr, refreshed = s24nnx.refresh_masks(model, 4)
    assert bool(refreshed)
    new = model.mlp.fc.mask[...]
    np.testing.assert_array_equal(new, s24.transposable_mask_24(model.mlp.fc.weight[...]))
    total = model.mlp.fc.mask[...].size + model.mlp.proj.mask[...].size
    assert float(fr) == pytest.approx(float(jnp.sum(new != old)) / total)
    assert float(fr) > 0


def test_decay_masks_structure_and_dense_finetuning():
    model = TwoLayer(rngs=nnx.Rngs(0))
    masks = s24nnx.decay_masks(model)
    params = nnx.state(model, nnx.Param)
    assert jax.tree.structure(masks, is_leaf=lambda x: x is True) == jax.tree.structure(params)
    np.testing.assert_array_equal(masks["mlp"]["fc"]["weight"][...], model.mlp.fc.mask[...])
    assert masks["head"]["kernel"].get_value() is True
    s24nnx.set_dense_finetuning(model)
    assert model.mlp.fc.dense_finetuning and all(v is True for v in jax.tree.leaves(s24nnx.decay_masks(model), is_leaf=lambda x: x is True))
    x = jax.random.normal(jax.random.key(0), (4, 16))
    h = jax.nn.gelu(x @ model.mlp.fc.weight[...].T, approximate=False) @ model.mlp.proj.weight[...].T
    np.testing.assert_allclose(model(x), model.head(h), rtol=1e-5, atol=1e-5)


def test_srste_training_loop_learns_with_jit():
    model = TwoLayer(interval=5, rngs=nnx.Rngs(0))
    tx = s24.srste_optimizer(3e-3, alpha=1e-3, dense_step=30)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(1), (64, 16))
    y = jnp.sin(x[:, :4] * 2)

    @nnx.jit
    def step(model, opt):
        loss, grads = nnx.value_and_grad(lambda m: ((m(x) - y) ** 2).mean())(model)
        opt.update(model, grads, masks=s24nnx.decay_masks(model))
        fr, refreshed = s24nnx.refresh_masks(model, opt.step[...])
        return loss, fr, refreshed

    losses = []
    for i in range(40):
        if i == 30:
            s24nnx.set_dense_finetuning(model)
        loss, fr, refreshed = step(model, opt)
        losses.append(float(loss))
        assert bool(refreshed) == ((i + 1) % 5 == 0 and i < 30)
    assert losses[-1] < 0.7 * losses[0]
    m = model.mlp.fc.mask[...]
    assert (m.reshape(32, 4, 4).sum(-1) == 2).all()


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="multiple of 4"):
        s24nnx.SparseLinear(10, 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown method"):
        s24nnx.SparseLinear(8, 8, method="x", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown activation"):
        s24nnx.SparseGatedMLP(8, 8, activation="relu", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown backend"):
        s24nnx.SparseLinear(8, 8, backend="nope", rngs=nnx.Rngs(0))
    s24nnx.SparseLinear(10, 6, method="dense", rngs=nnx.Rngs(0))  # dense needs no alignment


@pytest.mark.parametrize("method", ["srste", "sste", "dense"])
def test_deferred_mask_search_gives_the_constructor_masks(method):
    eager = s24nnx.SparseMLP(32, 64, method=method, rngs=nnx.Rngs(0, sparse24=1))
    late = s24nnx.SparseMLP(32, 64, method=method, search_mask=False, rngs=nnx.Rngs(0, sparse24=1))
    assert bool(late.fc.mask[...].all()) and bool(late.proj.mask[...].all())  # placeholders
    s24nnx.search_masks(late)
    for a, b in ((eager.fc, late.fc), (eager.proj, late.proj)):
        np.testing.assert_array_equal(np.asarray(a.weight[...]), np.asarray(b.weight[...]))
        np.testing.assert_array_equal(np.asarray(a.mask[...]), np.asarray(b.mask[...]))


def test_refresh_masks_with_a_traced_step_has_one_conditional_per_interval():
    # each lax.cond on a GPU copies its predicate to the host and waits: one per
    # distinct mask_interval, not one per layer
    class Deep(nnx.Module):
        def __init__(self, rngs):
            self.blocks = nnx.List([s24nnx.SparseMLP(16, 32, mask_interval=4, rngs=rngs) for _ in range(3)])
            self.odd = s24nnx.SparseLinear(16, 16, mask_interval=6, rngs=rngs)

    model = Deep(nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def refresh(state, step):
        m = nnx.merge(graphdef, state)
        return s24nnx.refresh_masks(m, step)

    text = jax.jit(refresh).lower(state, 8).as_text()
    assert text.count("stablehlo.case") + text.count("mhlo.case") + text.count(" case(") == 2
    # an int step, or None (every layer now), puts no conditional in the program
    for step in (8, None):
        text = jax.jit(lambda state: refresh(state, step)).lower(state).as_text()
        assert "case" not in text
    fr, refreshed = jax.jit(refresh)(state, 12)  # 12: both intervals due
    fr_int, refreshed_int = refresh(state, 12)
    assert bool(refreshed) and bool(refreshed_int) and float(fr) == float(fr_int)


def test_prepared_weights_are_explicit_state_and_cleared():
    m = s24nnx.SparseMLP(32, 64, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert m.fc.prepared.get_value() is None
    s24nnx.prepare_weights(m)
    ws = jnp.where(m.fc.mask[...], m.fc.weight[...], 0).astype(jnp.bfloat16)  # the xla backend's operand
    np.testing.assert_array_equal(np.asarray(m.fc.prepared.get_value()), np.asarray(ws))
    assert m.proj.prepared.get_value() is not None
    # a state of its own kind: not among the trained parameters
    assert len(jax.tree.leaves(nnx.state(m, nnx.Param))) == 2
    assert len(jax.tree.leaves(nnx.state(m, s24nnx.Sparse24Prepared))) == 2
    s24nnx.clear_prepared(m)
    assert m.fc.prepared.get_value() is None and not jax.tree.leaves(nnx.state(m, s24nnx.Sparse24Prepared))


class _AccModel(nnx.Module):
    """An FFN, a layer used twice (shared weight), a layer whose output the loss ignores, a
    dense fine-tuning layer: every case value_and_grad's running sums must get right."""

    def __init__(self, rngs):
        kw = dict(dtype=jnp.bfloat16, rngs=rngs)
        self.mlp = s24nnx.SparseMLP(32, 64, **kw)
        self.shared = s24nnx.SparseLinear(32, 32, **kw)
        self.unused = s24nnx.SparseLinear(32, 32, **kw)
        self.tuned = s24nnx.SparseLinear(32, 32, **kw)
        self.tuned.dense_finetuning = True

    def __call__(self, x):
        self.unused(x)  # called, its output dropped: JAX runs no backward for it
        h = self.mlp(x) + self.shared(self.shared(x)) + self.tuned(x)
        return jnp.mean(h.astype(jnp.float32) ** 2)


def test_value_and_grad_grad_acc_is_the_running_sum_plus_the_gradient():
    """grads(grad_acc=S) == S + grads() for every leaf: the 2:4 layers' sums added by their
    backward (once, though `shared` runs twice), the others' by value_and_grad (the unused
    layer's too: its backward never ran), the dense fine-tuning layer's as any leaf."""
    model = _AccModel(nnx.Rngs(0, sparse24=1))
    gdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(2), (2, 8, 32))
    acc = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape, p.dtype), params)

    def loss(m, x):
        return m(x)

    v0, g0, r0 = s24nnx.value_and_grad(loss, gdef, params, rest, x)
    v1, g1, r1 = s24nnx.value_and_grad(loss, gdef, params, rest, x, grad_acc=acc)
    assert float(v0) == float(v1)
    for path, a, g, s in zip(jax.tree_util.tree_leaves_with_path(acc), jax.tree.leaves(acc),
                             jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(s, np.asarray(a) + np.asarray(g), rtol=1e-5, atol=1e-6, err_msg=str(path[0]))
    # the sums are not state: nothing of them comes back in rest
    assert all(_get_value(v) is None for _, v in nnx.iter_graph(nnx.merge(gdef, params, r1))
               if isinstance(v, s24nnx.Sparse24GradAcc))
    # float32 sums of bfloat16 weights: nothing handed to the layers, every sum added here, in float32
    bf = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    _, g_bf, _ = s24nnx.value_and_grad(loss, gdef, bf, rest, x)
    _, s_bf, _ = s24nnx.value_and_grad(loss, gdef, bf, rest, x, grad_acc=acc)
    for a, g, s in zip(jax.tree.leaves(acc), jax.tree.leaves(g_bf), jax.tree.leaves(s_bf)):
        assert s.dtype == jnp.float32
        np.testing.assert_allclose(s, np.asarray(a) + np.asarray(g, np.float32), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="grad_acc must be shaped like params"):
        s24nnx.value_and_grad(loss, gdef, params, rest, x, grad_acc={"mlp": acc["mlp"]})


def _get_value(v):
    return v.get_value() if hasattr(v, "get_value") else v.value


def test_value_and_grad_grad_acc_in_a_scan_matches_adding_after():
    """The micro-batch loop both ways (the train step's two paths): same loss, same sums."""
    model = _AccModel(nnx.Rngs(0, sparse24=1))
    gdef, params, rest = nnx.split(model, nnx.Param, ...)
    xs = jax.random.normal(jax.random.key(2), (3, 2, 8, 32))

    def loss(m, x):
        return m(x)

    @functools.partial(jax.jit, static_argnums=0)
    def run(in_gemm, params, rest, xs):
        def micro(carry, x):
            grads, rest = carry
            if in_gemm:
                _, grads, rest = s24nnx.value_and_grad(loss, gdef, params, rest, x, grad_acc=grads)
            else:
                _, g, rest = s24nnx.value_and_grad(loss, gdef, params, rest, x)
                grads = jax.tree.map(jnp.add, grads, g)
            return (grads, rest), None

        return jax.lax.scan(micro, (jax.tree.map(jnp.zeros_like, params), rest), xs)[0][0]

    for a, b in zip(jax.tree.leaves(run(False, params, rest, xs)), jax.tree.leaves(run(True, params, rest, xs))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
