"""The FFN block as one custom_vjp (sparse24_jax.ffn): the same numbers as two
sparse24_linear calls around the activation, the fused activation-backward +
MVUE capability, the pure-JAX twin of the fused kernels, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sparse24_jax as s24
from sparse24_jax import nnx as s24nnx
from sparse24_jax.ffn import Sparse24Weight, activation, activation_vjp, sparse24_ffn
from sparse24_jax.xla_backend import XlaBackend

D, H = 32, 64


def weights(kind, method, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    h_out = 2 * H if kind != "gelu" else H
    w1 = jax.random.normal(k1, (h_out, D)) * 0.2
    w2 = jax.random.normal(k2, (D, H)) * 0.2
    if method == "sste":
        return Sparse24Weight(w1, beta=s24.sste_scale(w1)), Sparse24Weight(w2, beta=s24.sste_scale(w2))
    return Sparse24Weight(w1, s24.transposable_mask_24(w1)), Sparse24Weight(w2, s24.transposable_mask_24(w2))


def composed(x, fc, proj, kind, keys, method, backend="xla"):
    """The two-linear path the modules used before the block (no key: that linear's MVUE off)."""
    z = s24.sparse24_linear(x, fc.w, fc.mask, fc.beta, keys[0], method=method, backend=backend,
                            mvue=keys[0] is not None)
    a = activation(kind, z)
    return s24.sparse24_linear(a, proj.w, proj.mask, proj.beta, keys[1], method=method, backend=backend,
                               mvue=keys[1] is not None)


def loss_and_grads(f, x, fc, proj):
    def loss(x, w1, w2):
        y = f(x, fc._replace(w=w1), proj._replace(w=w2)).astype(jnp.float32)
        return jnp.mean(y * y + y)  # no cancellation: bf16 rounding stays relative

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, fc.w, proj.w)


@pytest.mark.parametrize("kind", ["gelu", "swiglu", "geglu"])
@pytest.mark.parametrize("method", ["srste", "sste"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_block_matches_two_linears(kind, method, dtype):
    fc, proj = weights(kind, method)
    x = jax.random.normal(jax.random.key(5), (2, 6, D)).astype(dtype)  # 12 tokens
    # float32: with MVUE, the same keys prune the same way. bf16: XLA may round the
    # two graphs' activations differently (excess precision), and an MVUE draw
    # flips on a last-bit change of its group, so compare without MVUE there
    keys = (jax.random.key(7), jax.random.key(8)) if dtype == jnp.float32 else (None, None)
    mvue = keys[0] is not None
    got = loss_and_grads(lambda x, a, b: sparse24_ffn(x, a, b, activation=kind, keys=keys, method=method, mvue=mvue),
                         x, fc, proj)
    ref = loss_and_grads(lambda x, a, b: composed(x, a, b, kind, keys, method), x, fc, proj)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        scale = float(jnp.max(jnp.abs(r.astype(jnp.float32)))) + 1e-6
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), atol=tol * scale, rtol=tol)
    assert got[1][0].dtype == dtype and got[1][1].dtype == jnp.float32


@pytest.mark.parametrize("kind", ["gelu", "swiglu"])
@pytest.mark.parametrize("mvue", [(False, True), (True, False)])
def test_block_mvue_per_linear_matches_two_linears(kind, mvue):
    """mvue=(fc's, proj's): the linear without MVUE gets the exact (dense) weight gradient,
    the other the same MVUE draws as its own sparse24_linear call with the same key."""
    fc, proj = weights(kind, "srste")
    x = jax.random.normal(jax.random.key(5), (2, 6, D))
    keys = tuple(jax.random.key(7 + i) if on else None for i, on in enumerate(mvue))
    got = loss_and_grads(lambda x, a, b: sparse24_ffn(x, a, b, activation=kind, keys=keys, mvue=mvue), x, fc, proj)
    ref = loss_and_grads(lambda x, a, b: composed(x, a, b, kind, keys, "srste"), x, fc, proj)
    exact = loss_and_grads(lambda x, a, b: composed(x, a, b, kind, (None, None), "srste"), x, fc, proj)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        scale = float(jnp.max(jnp.abs(r))) + 1e-6
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5 * scale, rtol=1e-5)
    dense_w, pruned_w = (1, 2) if not mvue[0] else (2, 1)
    np.testing.assert_allclose(got[1][dense_w], exact[1][dense_w], rtol=1e-5, atol=1e-6)
    assert not np.allclose(got[1][pruned_w], exact[1][pruned_w], rtol=1e-3, atol=1e-5)  # an MVUE sample


def test_block_mvue_argument_errors():
    fc, proj = weights("gelu", "srste")
    x = jnp.ones((4, D))
    k = jax.random.key(0)
    for bad in ((True,), (True, False, True), "fc", (1, 0)):
        with pytest.raises(ValueError, match="a pair of bools"):
            sparse24_ffn(x, fc, proj, keys=(k, k), mvue=bad)
    with pytest.raises(ValueError, match="mvue=True needs key="):
        sparse24_ffn(x, fc, proj, keys=(None, None), mvue=(False, True))
    # the key of a linear without MVUE is not used (nor needed)
    y = sparse24_ffn(x, fc, proj, keys=(k, None), mvue=(True, False))
    assert y.shape == x.shape


def test_block_without_mvue_is_the_dense_formula():
    fc, proj = weights("gelu", "srste")
    x = jax.random.normal(jax.random.key(1), (16, D))
    dy = jax.random.normal(jax.random.key(2), (16, D))
    y, vjp = jax.vjp(lambda x, w1, w2: sparse24_ffn(x, fc._replace(w=w1), proj._replace(w=w2), mvue=False),
                     x, fc.w, proj.w)
    w1s, w2s = jnp.where(fc.mask, fc.w, 0), jnp.where(proj.mask, proj.w, 0)
    z1 = x @ w1s.T
    a = jax.nn.gelu(z1, approximate=False)
    np.testing.assert_allclose(y, a @ w2s.T, rtol=1e-5, atol=1e-5)
    dx, dw1, dw2 = vjp(dy)
    dz1 = (dy @ w2s) * jax.vmap(jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=False))))(z1)
    np.testing.assert_allclose(dw2, dy.T @ a, rtol=1e-4, atol=1e-4)  # straight-through: dense
    np.testing.assert_allclose(dw1, dz1.T @ x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, dz1 @ w1s, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["gelu", "swiglu", "geglu"])
def test_activation_vjp_twin_is_the_float32_derivative(kind):
    h = 2 * H if kind != "gelu" else H
    z = jax.random.normal(jax.random.key(3), (24, h)) * 3
    da = jax.random.normal(jax.random.key(4), (24, H))
    ref = jax.vjp(lambda a: activation(kind, a), z)[1](da)[0]  # float32 in, float32 out
    np.testing.assert_allclose(activation_vjp(kind, z, da), ref, rtol=2e-6, atol=2e-6)
    # bf16 in: computed in float32, rounded once
    zb, dab = z.astype(jnp.bfloat16), da.astype(jnp.bfloat16)
    got = activation_vjp(kind, zb, dab)
    want = activation_vjp(kind, zb.astype(jnp.float32), dab.astype(jnp.float32)).astype(jnp.bfloat16)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


class FusingXla(XlaBackend):
    """The reference backend plus the fused activation-backward + MVUE
    capability, computed by the pure-JAX twin (what a GPU kernel must match)."""

    name = "xla-fusing"

    def __init__(self):
        self.calls = []

    def activation_grad_prune_kinds(self):
        return ("gelu", "swiglu")

    def activation_grad_prune(self, kind, da, z, key):
        self.calls.append((kind, z.shape))
        dz = activation_vjp(kind, z, da)
        return dz, self.prune_grad(key, dz)


@pytest.mark.parametrize("kind", ["gelu", "swiglu", "geglu"])
def test_fused_capability_is_used_and_gives_the_twin_numbers(kind):
    be = FusingXla()
    assert s24.capabilities(be).activation_grad_prune == ("gelu", "swiglu")
    fc, proj = weights(kind, "srste")
    # float32: the twin and autodiff then agree to rounding, and MVUE draws the same
    x = jax.random.normal(jax.random.key(6), (16, D))
    keys = (jax.random.key(1), jax.random.key(2))
    got = loss_and_grads(lambda x, a, b: sparse24_ffn(x, a, b, activation=kind, keys=keys, backend=be), x, fc, proj)
    assert be.calls == ([(kind, (16, fc.w.shape[0]))] if kind != "geglu" else [])  # geglu: not fused here
    ref = loss_and_grads(lambda x, a, b: sparse24_ffn(x, a, b, activation=kind, keys=keys, fused=False), x, fc, proj)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5)
    # without MVUE there is nothing to prune: the capability is not asked
    be.calls.clear()
    loss_and_grads(lambda x, a, b: sparse24_ffn(x, a, b, activation=kind, backend=be, mvue=False), x, fc, proj)
    assert be.calls == []


@pytest.mark.parametrize("fusing", [False, True])
def test_modules_use_the_block_with_the_layers_keys(fusing):
    """SparseMLP runs the block where the backend fuses (it draws fc's key, then
    proj's, as two layer calls do: with a fixed seed the module's gradients equal
    the composed layers'), and composes the layers where it does not."""
    be = FusingXla() if fusing else "xla"
    m = s24nnx.SparseMLP(D, H, backend=be, rngs=nnx.Rngs(0, sparse24=3))
    twin = s24nnx.SparseMLP(D, H, rngs=nnx.Rngs(0, sparse24=3))
    x = jax.random.normal(jax.random.key(9), (4, 4, D))
    g = nnx.grad(lambda mod: jnp.sum(jnp.sin(mod(x))))(m)
    g_ref = nnx.grad(lambda mod: jnp.sum(jnp.sin(mod.proj(jax.nn.gelu(mod.fc(x), approximate=False)))))(twin)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    if fusing:
        assert be.calls == [("gelu", (16, H))]
        be.calls.clear()
        off = s24nnx.SparseMLP(D, H, backend=be, fused_activation=False, rngs=nnx.Rngs(0, sparse24=3))
        nnx.grad(lambda mod: jnp.sum(jnp.sin(mod(x))))(off)
        assert be.calls == []


@pytest.mark.parametrize("fusing", [False, True])
@pytest.mark.parametrize("kind", ["gelu", "swiglu"])
@pytest.mark.parametrize("mvue,method", [(True, "srste"), ((False, True), "srste"), (True, "sste")])
def test_linen_modules_use_the_block_with_the_layers_keys(fusing, kind, mvue, method):
    """The linen MLPs run the block where the backend fuses, as the NNX ones do: the same
    variables as the composed layers, fc's key then proj's (with one rng the gradients equal
    the composed path's, fused_activation=False), and the composed path where it does not."""
    from sparse24_jax import linen as s24linen

    be = FusingXla() if fusing else "xla"

    def module(fused):
        kw = {"backend": be, "method": method}
        if kind == "gelu":
            return s24linen.SparseMLP(H, linear_kwargs=kw, mvue=mvue, fused_activation=fused)
        return s24linen.SparseGatedMLP(H, activation=kind, linear_kwargs=kw, mvue=mvue, fused_activation=fused)

    x = jax.random.normal(jax.random.key(9), (4, 4, D))
    rngs = {"params": jax.random.key(0), "sparse24": jax.random.key(1)}
    block, twin = module(True), module(False)
    v = block.init(rngs, x)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, twin.init(rngs, x))
    if fusing:
        be.calls.clear()

    def grads(mod):
        def loss(p):
            y = mod.apply({"params": p, "sparse24": v["sparse24"]}, x, rngs={"sparse24": jax.random.key(5)})
            return jnp.sum(jnp.sin(y))

        return jax.grad(loss)(v["params"])

    g, g_ref = grads(block), grads(twin)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    if fusing:  # the block's fused backward + MVUE ran (once: fc's), where fc prunes its gradient
        h = H if kind == "gelu" else 2 * H
        assert be.calls == ([(kind, (16, h))] if mvue is True else [])


def test_block_errors():
    fc, proj = weights("gelu", "srste")
    x = jnp.ones((4, D))
    with pytest.raises(ValueError, match="unknown activation"):
        sparse24_ffn(x, fc, proj, activation="relu", mvue=False)
    with pytest.raises(ValueError, match="method='dense'"):
        sparse24_ffn(x, fc, proj, method="dense", mvue=False)
    with pytest.raises(ValueError, match="needs key="):
        sparse24_ffn(x, fc, proj)
    with pytest.raises(ValueError, match="last axis of x"):
        sparse24_ffn(jnp.ones((4, D + 4)), fc, proj, mvue=False)
    odd = Sparse24Weight(jnp.ones((4 * H + 4, D)), s24.transposable_mask_24(jnp.ones((4 * H + 4, D))))
    with pytest.raises(ValueError, match="last axis of x|even"):
        sparse24_ffn(x, odd, proj, activation="swiglu", mvue=False)


def test_block_reaches_a_backends_gated_kernels():
    """Without the fused pruning, the block's gated activation runs the backend's
    gated forward and backward kernels (sparse24_jax.activations.gated's hooks)."""
    from test_activations import HookedXla

    be = HookedXla(scale=2.0)
    fc, proj = weights("swiglu", "srste")
    x = jax.random.normal(jax.random.key(3), (16, D))
    got = loss_and_grads(lambda x, a, b: sparse24_ffn(x, a, b, activation="swiglu", backend=be, mvue=False),
                         x, fc, proj)
    kinds = [c[0] for c in be.calls]
    assert "fwd" in kinds and "bwd" in kinds
    ref = loss_and_grads(lambda x, a, b: sparse24_ffn(x, a, b, activation="swiglu", mvue=False), x, fc, proj)
    assert not np.allclose(float(got[0]), float(ref[0]))  # the hooks' scale shows: they ran


class AccumulatingXla(XlaBackend):
    """The reference with the AccumulatingWeightGrad capability, recording its calls."""

    def __init__(self):
        self.calls = 0

    def matmul_dw_acc(self, g, x, acc):
        self.calls += 1
        return acc + self.matmul_dw(g, x)


@pytest.mark.parametrize("backend", ["xla", "accumulating"])
@pytest.mark.parametrize("kind", ["gelu", "swiglu"])
def test_block_grad_acc_adds_the_running_sums(backend, kind):
    """grad_acc on fc and proj: their cotangents are the sums plus the plain block's (same
    keys), through the capability where the backend has it (both linears, once each), else
    an add; x's cotangent and the loss are unchanged; a sum of the wrong shape is refused."""
    be = AccumulatingXla() if backend == "accumulating" else "xla"
    fc, proj = weights(kind, "srste")
    x = jax.random.normal(jax.random.key(3), (16, D))
    keys = (jax.random.key(4), jax.random.key(5))
    acc1 = jax.random.normal(jax.random.key(6), fc.w.shape)
    acc2 = jax.random.normal(jax.random.key(7), proj.w.shape)
    plain = loss_and_grads(lambda x, a, b: sparse24_ffn(x, a, b, activation=kind, keys=keys, backend=be), x, fc, proj)
    summed = loss_and_grads(
        lambda x, a, b: sparse24_ffn(x, a._replace(grad_acc=acc1), b._replace(grad_acc=acc2), activation=kind,
                                     keys=keys, backend=be), x, fc, proj)
    if backend == "accumulating":
        assert be.calls == 2
    assert float(plain[0]) == float(summed[0])
    np.testing.assert_array_equal(summed[1][0], plain[1][0])
    np.testing.assert_allclose(summed[1][1], acc1 + plain[1][1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(summed[1][2], acc2 + plain[1][2], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="proj.grad_acc must have the weight's shape"):
        sparse24_ffn(x, fc, proj._replace(grad_acc=acc1), activation=kind, keys=keys, backend=be)
