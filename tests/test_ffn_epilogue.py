"""The FFN block's fused-epilogue capabilities (sparse24_jax.backend
FusedLinearActivation / FusedLinearActivationGrad, used by sparse24_jax.ffn):
a backend built on the xla reference whose two extra methods are their
pure-JAX twins (float32 product, activation in float32, one rounding). Checks
that the block reaches them, and that it gives the unfused path's numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sparse24_jax as s24
from sparse24_jax import nnx as s24nnx
from sparse24_jax.ffn import _gelu_grad_f32, activation_grad, activation_vjp, sparse24_ffn
from sparse24_jax.xla_backend import XlaBackend

from test_ffn import D, H, FusingXla, composed, loss_and_grads, weights


class EpilogueXla(XlaBackend):
    """xla plus the fused-epilogue GEMMs (as the "cutlass" backend's kernels
    compute them), each optional (``fwd`` / ``grad``)."""

    name = "xla-epilogue"

    def __init__(self, fwd=True, grad=True):
        self.calls = []
        self._fwd, self._grad = fwd, grad

    def linear_activation_kinds(self):
        return ("gelu",) if self._fwd else ()

    def linear_activation_grad_kinds(self):
        return ("gelu",) if self._grad else ()

    def matmul_fwd_activation(self, kind, x, w_op):
        assert kind == "gelu"
        self.calls.append(("fwd", x.shape, w_op.shape))
        acc = jnp.dot(x, w_op.T.astype(x.dtype), preferred_element_type=jnp.float32)
        return jax.nn.gelu(acc, approximate=False).astype(x.dtype), _gelu_grad_f32(acc).astype(x.dtype)

    def matmul_dx_activation_grad(self, kind, dy, w_op, g):
        assert kind == "gelu"
        self.calls.append(("dx", dy.shape, g.shape))
        acc = jnp.dot(dy, w_op.astype(dy.dtype), preferred_element_type=jnp.float32)
        return (acc * g.astype(jnp.float32)).astype(g.dtype)


class BothXla(EpilogueXla, FusingXla):
    """Both the epilogue capabilities and the fused activation-grad + MVUE."""

    name = "xla-both"

    def __init__(self):
        EpilogueXla.__init__(self)


def close(got, ref, tol):
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
        scale = float(np.max(np.abs(r))) + 1e-6
        np.testing.assert_allclose(g, r, atol=tol * scale, rtol=tol)


def test_capabilities_report_the_kinds():
    caps = s24.capabilities(EpilogueXla())
    assert caps.linear_activation == ("gelu",) and caps.linear_activation_grad == ("gelu",)
    assert caps.activation_grad_prune == ()
    caps = s24.capabilities(EpilogueXla(fwd=False))
    assert caps.linear_activation == () and caps.linear_activation_grad == ("gelu",)
    caps = s24.capabilities("xla")
    assert caps.linear_activation == () and caps.linear_activation_grad == ()


@pytest.mark.parametrize("method", ["srste", "sste"])
@pytest.mark.parametrize("fwd, grad", [(True, True), (True, False), (False, True)])
def test_block_uses_the_epilogues_float32(method, fwd, grad):
    """float32: the twins equal the composed path to rounding (MVUE on: the same
    keys draw the same pruning)."""
    be = EpilogueXla(fwd, grad)
    fc, proj = weights("gelu", method)
    x = jax.random.normal(jax.random.key(6), (2, 8, D))
    keys = (jax.random.key(1), jax.random.key(2))
    got = loss_and_grads(lambda x, a, b: sparse24_ffn(x, a, b, keys=keys, method=method, backend=be), x, fc, proj)
    want = [("fwd", (16, D), (H, D))] if fwd else []
    want += [("dx", (16, D), (16, H))] if grad else []
    assert be.calls == want
    ref = loss_and_grads(lambda x, a, b: sparse24_ffn(x, a, b, keys=keys, method=method, fused=False), x, fc, proj)
    close(got, ref, 1e-4)
    ref2 = loss_and_grads(lambda x, a, b: composed(x, a, b, "gelu", keys, method), x, fc, proj)
    close(got, ref2, 1e-4)
    # fused=False asks neither
    be.calls.clear()
    loss_and_grads(lambda x, a, b: sparse24_ffn(x, a, b, keys=keys, method=method, backend=be, fused=False),
                   x, fc, proj)
    assert be.calls == []


def test_block_uses_the_epilogues_bf16():
    """bf16 (the cutlass backend's dtype): the fused path rounds once where the
    composed one rounds Z1 / dA first; no MVUE (a last-bit change flips a draw)."""
    be = EpilogueXla()
    fc, proj = weights("gelu", "srste")
    x = jax.random.normal(jax.random.key(5), (2, 6, D)).astype(jnp.bfloat16)  # 12 tokens
    got = loss_and_grads(lambda x, a, b: sparse24_ffn(x, a, b, backend=be, mvue=False), x, fc, proj)
    assert [c[0] for c in be.calls] == ["fwd", "dx"]
    ref = loss_and_grads(lambda x, a, b: composed(x, a, b, "gelu", (None, None), "srste"), x, fc, proj)
    close(got, ref, 2e-2)
    assert got[1][0].dtype == jnp.bfloat16 and got[1][1].dtype == jnp.float32


def test_epilogue_grad_is_taken_before_the_fused_prune():
    """With both capabilities the input-gradient epilogue runs (no dA at all),
    then prune_grad; the activation_grad_prune kernel is not asked."""
    be = BothXla()
    fc, proj = weights("gelu", "srste")
    x = jax.random.normal(jax.random.key(6), (16, D))
    keys = (jax.random.key(1), jax.random.key(2))
    got = loss_and_grads(lambda x, a, b: sparse24_ffn(x, a, b, keys=keys, backend=be), x, fc, proj)
    assert [c[0] for c in be.calls] == ["fwd", "dx"]
    ref = loss_and_grads(lambda x, a, b: sparse24_ffn(x, a, b, keys=keys, fused=False), x, fc, proj)
    close(got, ref, 1e-4)


def test_gated_kinds_do_not_reach_the_gelu_epilogues():
    be = EpilogueXla()
    fc, proj = weights("swiglu", "srste")
    x = jax.random.normal(jax.random.key(6), (16, D))
    loss_and_grads(lambda x, a, b: sparse24_ffn(x, a, b, activation="swiglu", backend=be, mvue=False), x, fc, proj)
    assert be.calls == []


def test_twin_dx_is_activation_vjp_of_the_unrounded_product():
    """The capability's contract: (dY @ W_s) * G with G = activation_grad(Z) the
    saved derivative, the product in float32, rounded once: activation_vjp of
    the float32 dA but for G's own bf16 rounding."""
    be = EpilogueXla()
    w = jax.random.normal(jax.random.key(0), (D, H)) * 0.2
    dy = jax.random.normal(jax.random.key(1), (8, D)).astype(jnp.bfloat16)
    z = (jax.random.normal(jax.random.key(2), (8, H)) * 2).astype(jnp.bfloat16)
    g = activation_grad("gelu", z)
    assert g.dtype == jnp.bfloat16
    got = be.matmul_dx_activation_grad("gelu", dy, w, g)
    da = jnp.dot(dy, w.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    want = (da * g.astype(jnp.float32)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    vjp = activation_vjp("gelu", z.astype(jnp.float32), da)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(vjp), rtol=1.6e-2,
                               atol=1e-2 * float(jnp.max(jnp.abs(vjp))))


def test_activation_grad_is_the_derivative_rounded_once():
    z = jnp.linspace(-6.0, 6.0, 1001, dtype=jnp.float32)
    g = jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=False)))(z)
    np.testing.assert_allclose(np.asarray(activation_grad("gelu", z)), np.asarray(g), rtol=1e-5,
                               atol=1e-6)
    zb = z.astype(jnp.bfloat16)
    np.testing.assert_array_equal(
        np.asarray(activation_grad("gelu", zb), np.float32),
        np.asarray(_gelu_grad_f32(zb.astype(jnp.float32)).astype(jnp.bfloat16), np.float32))
    with pytest.raises(ValueError, match="gated"):
        activation_grad("swiglu", z)


@pytest.mark.parametrize("fused", [True, False])
def test_sparse_mlp_uses_the_block_on_epilogue_backends(fused):
    """SparseMLP runs the block when the backend has only the epilogue
    capabilities (the "cutlass" case), with the layers' keys in order."""
    be = EpilogueXla()
    m = s24nnx.SparseMLP(D, H, backend=be, fused_activation=fused, rngs=nnx.Rngs(0, sparse24=3))
    twin = s24nnx.SparseMLP(D, H, rngs=nnx.Rngs(0, sparse24=3))
    x = jax.random.normal(jax.random.key(9), (4, 4, D))
    g = nnx.grad(lambda mod: jnp.sum(jnp.sin(mod(x))))(m)
    g_ref = nnx.grad(lambda mod: jnp.sum(jnp.sin(mod.proj(jax.nn.gelu(mod.fc(x), approximate=False)))))(twin)
    close(g, g_ref, 1e-4)
    assert [c[0] for c in be.calls] == (["fwd", "dx"] if fused else [])
