"""Gated activations on CPU: the reference, and how the gated MLPs reach a
backend's fused kernels (sparse24_jax.activations.gated and its hook protocol).

The Triton kernels themselves: tests/test_triton_interpreter.py (interpreted)
and tests/gpu/test_triton_kernels.py (GPU). Here a pure-JAX backend with hooks
stands in for them, so the routing, the custom_vjp and the switches are
tested everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sparse24_jax as s24
from sparse24_jax import activations
from sparse24_jax import linen as s24linen
from sparse24_jax import nnx as s24nnx
from sparse24_jax.xla_backend import XlaBackend

REPO = Path(__file__).resolve().parents[1]
KINDS = ("swiglu", "geglu")


def _formula(h, kind):
    x, g = jnp.split(h.astype(jnp.float32), 2, axis=-1)
    a = jax.nn.silu(g) if kind == "swiglu" else jax.nn.gelu(g, approximate=True)
    return (x * a).astype(h.dtype)


class HookedXla(XlaBackend):
    """The xla backend plus gated hooks that compute the reference (scaled by
    ``scale``, so that a test can tell which path ran) and log their calls."""

    name = "xla-gated-hooks"

    def __init__(self, scale=1.0, with_bwd=True):
        self.scale, self.calls = scale, []
        if not with_bwd:
            self.gated_activation_bwd = None

    def gated_activation(self, h, kind):
        self.calls.append(("fwd", h.shape, kind))
        return (activations.gated_activation(h, kind) * self.scale).astype(h.dtype)

    def gated_activation_bwd(self, h, dy, kind):
        self.calls.append(("bwd", h.shape, kind))
        _, vjp = jax.vjp(lambda a: activations.gated_activation(a, kind) * self.scale, h)
        return vjp(dy)[0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_reference_formula_and_dtype(kind, dtype):
    h = (jax.random.normal(jax.random.key(0), (3, 5, 16)) * 3).astype(dtype)
    y = activations.gated_activation(h, kind)
    assert y.shape == (3, 5, 8) and y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(_formula(h, kind), np.float32))


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown gated activation"):
        activations.gated(jnp.ones((2, 4)), "relu")
    with pytest.raises(ValueError, match="not even"):
        activations.gated(jnp.ones((2, 5)), "swiglu", backend="xla")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", [None, "xla"])
def test_gated_without_hooks_is_the_reference(kind, backend):
    """No hook (backend None or "xla"): value and gradient are exactly the
    reference's, whatever ``fused`` says."""
    h = jax.random.normal(jax.random.key(1), (4, 6, 24)) * 2
    loss = lambda fn: lambda h: jnp.sum(jnp.cos(fn(h)))  # noqa: E731
    ref = jax.value_and_grad(loss(lambda a: activations.gated_activation(a, kind)))(h)
    for fused in (True, False):
        got = jax.jit(jax.value_and_grad(loss(lambda a: activations.gated(a, kind, backend=backend, fused=fused))))(h)
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(ref[0]))
        np.testing.assert_allclose(np.asarray(got[1]), np.asarray(ref[1]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_hooks_used_for_forward_and_backward(kind):
    be = HookedXla(scale=2.0)
    h = jax.random.normal(jax.random.key(2), (2, 3, 16))
    dy = jax.random.normal(jax.random.key(3), (2, 3, 8))
    y, vjp = jax.vjp(lambda a: activations.gated(a, kind, backend=be), h)
    (dh,) = vjp(dy)
    assert [c[0] for c in be.calls] == ["fwd", "bwd"]
    yr, vr = jax.vjp(lambda a: 2.0 * activations.gated_activation(a, kind), h)
    np.testing.assert_allclose(y, yr, rtol=1e-6)
    np.testing.assert_allclose(dh, vr(dy)[0], rtol=1e-6)
    # off by argument (there is no process-wide switch: the caller says)
    be.calls.clear()
    np.testing.assert_array_equal(activations.gated(h, kind, backend=be, fused=False),
                                  activations.gated_activation(h, kind))
    assert be.calls == []
    activations.gated(h, kind, backend=be)
    assert [c[0] for c in be.calls] == ["fwd"]


def test_forward_hook_alone_backward_by_reference():
    """A backend with only the forward hook: its backward is jax.vjp of the
    reference (recomputed), so the gradient is the unscaled reference's."""
    be = HookedXla(scale=1.0, with_bwd=False)
    h = jax.random.normal(jax.random.key(4), (5, 12))
    g = jax.grad(lambda a: jnp.sum(activations.gated(a, "geglu", backend=be) ** 2))(h)
    gr = jax.grad(lambda a: jnp.sum(activations.gated_activation(a, "geglu") ** 2))(h)
    np.testing.assert_allclose(g, gr, rtol=1e-6, atol=1e-7)
    assert [c[0] for c in be.calls] == ["fwd"]


def _register(be):
    s24.register_backend(be.name, lambda: be)
    return be.name


@pytest.mark.parametrize("kind", KINDS)
def test_nnx_gated_mlp_xla_path_unchanged(kind):
    """backend "xla": the module computes exactly proj(x * act(gate)) of the
    reference, with or without the switch."""
    m = s24nnx.SparseGatedMLP(8, 16, activation=kind, mvue=False, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 4, 8))
    h = x @ jnp.where(m.gate_up.mask[...], m.gate_up.weight[...], 0).T
    ref = _formula(h, kind) @ jnp.where(m.proj.mask[...], m.proj.weight[...], 0).T
    np.testing.assert_allclose(m(x), ref, rtol=1e-5, atol=1e-5)
    m_off = s24nnx.SparseGatedMLP(8, 16, activation=kind, mvue=False, fused_activation=False, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(m_off(x)), np.asarray(m(x)))


def test_nnx_gated_mlp_uses_backend_hooks():
    be = HookedXla(scale=3.0)
    name = _register(be)
    kw = dict(activation="geglu", mvue=False, backend=name)
    m = s24nnx.SparseGatedMLP(8, 16, **kw, rngs=nnx.Rngs(0))
    ref = s24nnx.SparseGatedMLP(8, 16, **{**kw, "backend": "xla"}, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(5), (2, 4, 8))
    # hooks triple the activation, and proj is linear
    np.testing.assert_allclose(m(x), 3.0 * ref(x), rtol=1e-5, atol=1e-5)
    be.calls.clear()
    g = nnx.grad(lambda mod: jnp.sum(mod(x) ** 2))(m)
    assert [c[0] for c in be.calls] == ["fwd", "bwd"] and be.calls[0][1] == (2, 4, 32)
    assert np.isfinite(np.asarray(g["gate_up"]["weight"][...])).all()
    # off, per module
    off = s24nnx.SparseGatedMLP(8, 16, fused_activation=False, **kw, rngs=nnx.Rngs(0))
    be.calls.clear()
    np.testing.assert_allclose(off(x), ref(x), rtol=1e-6, atol=1e-6)
    assert be.calls == []


def test_fused_activation_must_be_a_bool():
    # None once meant "the default"; read as falsy it would run the unfused path unnoticed
    with pytest.raises(TypeError, match="fused_activation must be True or False"):
        s24nnx.SparseGatedMLP(8, 16, fused_activation=None, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="fused_activation must be True or False"):
        s24nnx.SparseMLP(8, 16, fused_activation=None, rngs=nnx.Rngs(0))
    mod = s24linen.SparseGatedMLP(16, fused_activation=None, linear_kwargs={"mvue": False})
    with pytest.raises(TypeError, match="fused_activation must be True or False"):
        mod.init(jax.random.key(0), jnp.zeros((2, 4, 8)))


def test_linen_gated_mlp_paths():
    x = jax.random.normal(jax.random.key(6), (2, 4, 8))
    ref_mod = s24linen.SparseGatedMLP(16, activation="swiglu", linear_kwargs={"mvue": False})
    v = ref_mod.init(jax.random.key(0), x)
    y_ref = ref_mod.apply(v, x)
    # xla: the reference formula
    p, s = v["params"], v["sparse24"]
    w1 = jnp.where(s["gate_up"]["mask"], p["gate_up"]["weight"], 0)
    w2 = jnp.where(s["proj"]["mask"], p["proj"]["weight"], 0)
    np.testing.assert_allclose(y_ref, _formula(x @ w1.T, "swiglu") @ w2.T, rtol=1e-5, atol=1e-5)
    be = HookedXla(scale=0.5)
    name = _register(be)
    hooked = s24linen.SparseGatedMLP(16, activation="swiglu", linear_kwargs={"mvue": False, "backend": name})
    np.testing.assert_allclose(hooked.apply(v, x), 0.5 * y_ref, rtol=1e-5, atol=1e-5)
    assert [c[0] for c in be.calls] == ["fwd"]
    off = s24linen.SparseGatedMLP(
        16, activation="swiglu", linear_kwargs={"mvue": False, "backend": name}, fused_activation=False
    )
    np.testing.assert_allclose(off.apply(v, x), y_ref, rtol=1e-6, atol=1e-6)
    assert isinstance(off, nn.Module)


def test_import_and_xla_gated_mlp_need_no_triton():
    code = textwrap.dedent(
        """
        import sys, jax
        from flax import nnx
        import sparse24_jax as s
        from sparse24_jax import nnx as snnx, linen as slinen, activations
        m = snnx.SparseGatedMLP(8, 8, mvue=False, rngs=nnx.Rngs(0))
        jax.grad(lambda x: m(x).sum())(jax.numpy.ones((4, 8)))
        assert 'triton' not in sys.modules and 'jax_triton' not in sys.modules, 'imported triton'
        print('ok')
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


SHARD_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import Mesh
    import sparse24_jax as s24
    from sparse24_jax import activations
    from sparse24_jax.parallel import ShardConfig
    from sparse24_jax.xla_backend import XlaBackend
    from sparse24_jax import nnx as s24nnx
    jax.config.update("jax_default_matmul_precision", "highest")

    class Hooked(XlaBackend):
        name = "xla-gated-hooks"
        shapes = []
        def gated_activation(self, h, kind):
            self.shapes.append(h.shape)
            return activations.gated_activation(h, kind)
        def gated_activation_bwd(self, h, dy, kind):
            self.shapes.append(h.shape)
            return jax.vjp(lambda a: activations.gated_activation(a, kind), h)[1](dy)[0]

    be = Hooked()
    s24.register_backend(be.name, lambda: be)
    devs = np.array(jax.devices())
    x = jax.random.normal(jax.random.key(0), (8, 4, 16))
    ref = s24nnx.SparseGatedMLP(16, 32, mvue=False, rngs=nnx.Rngs(0))
    y_ref, g_ref = jax.value_and_grad(lambda x: jnp.sum(jnp.sin(ref(x))))(x)
    for name, mesh, batch, tp, local in [
        ("data8", Mesh(devs.reshape(8), ("data",)), ("data",), None, (1, 4, 64)),
        ("data2xtensor4", Mesh(devs.reshape(2, 4), ("data", "tensor")), ("data",), "tensor", None),
    ]:
        shard = ShardConfig(mesh, batch, tp)
        m = s24nnx.SparseGatedMLP(16, 32, mvue=False, backend=be.name, shard=shard, rngs=nnx.Rngs(0))
        be.shapes.clear()
        y, g = jax.jit(jax.value_and_grad(lambda x: jnp.sum(jnp.sin(m(x)))))(x)
        np.testing.assert_allclose(y, y_ref, rtol=2e-5, atol=2e-5, err_msg=name)
        np.testing.assert_allclose(g, g_ref, rtol=2e-5, atol=2e-5, err_msg=name)
        if local is None:
            assert be.shapes == [], (name, be.shapes)  # tensor parallel: the reference
        else:
            assert be.shapes == [local, local], (name, be.shapes)  # per device, in shard_map
        print(name, "ok")
    """
)


def test_sharded_gated_mlp_runs_hooks_per_device():
    """With a mesh the hooks run inside shard_map on each device's tokens
    (data parallel), and not at all under tensor parallelism."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", SHARD_SCRIPT], capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert "data8 ok" in res.stdout and "data2xtensor4 ok" in res.stdout
