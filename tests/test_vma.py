"""Sharded layers whose backend returns custom-call results: shard_map types those invariant
(jax.ffi.ffi_call, triton_call and pure_callback alike), and custom_vjp insists that each
cotangent varies over its primal's mesh axes. A stand-in backend computes the reference's
products through pure_callback; under shard_map on 2 forced CPU devices the layers must give
the reference backend's values and gradients (they raised a ValueError before
sparse24_jax._vma, as the cuSPARSELt backend did on two H200s)."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    import sparse24_jax as s24
    from sparse24_jax.activations import gated
    from sparse24_jax.parallel import ShardConfig, sharded_sparse24_linear
    from sparse24_jax.xla_backend import XlaBackend
    from sparse24_jax._vma import varying_axes, match_varying
    jax.config.update("jax_default_matmul_precision", "highest")

    def opaque(f):
        # f's result through a host callback: typed invariant under shard_map, like a custom call
        def g(*args):
            out = jax.eval_shape(f, *args)
            return jax.pure_callback(lambda *a: np.asarray(f(*a)), out, *args)
        return g

    class CallbackBackend(XlaBackend):
        name = "callback"
        matmul_fwd = staticmethod(opaque(XlaBackend().matmul_fwd))
        matmul_dx = staticmethod(opaque(XlaBackend().matmul_dx))
        matmul_dw = staticmethod(opaque(XlaBackend().matmul_dw))
        def gated_activation(self, h, kind):
            return opaque(lambda a: s24.gated_activation(a, kind))(h)
        def gated_activation_bwd(self, h, dy, kind):
            return opaque(lambda a, d: jax.vjp(lambda b: s24.gated_activation(b, kind), a)[1](d)[0])(h, dy)

    devs = np.array(jax.devices())
    mesh = Mesh(devs.reshape(2), ("data",))
    shard = ShardConfig(mesh, ("data",), None)
    x = jax.random.normal(jax.random.key(0), (4, 8, 32))
    w1 = jax.random.normal(jax.random.key(1), (128, 32)) * 0.2
    w2 = jax.random.normal(jax.random.key(2), (32, 64)) * 0.2
    m1, m2 = s24.transposable_mask_24(w1), s24.transposable_mask_24(w2)
    key = jax.random.key(3)

    def loss(x, w1, w2, backend):
        k1, k2 = jax.random.split(key)
        h = sharded_sparse24_linear(x, w1, m1, key=k1, shard=shard, backend=backend)
        a = gated(h, "swiglu", backend=backend, shard=shard)
        return jnp.sum(jnp.sin(sharded_sparse24_linear(a, w2, m2, key=k2, shard=shard, backend=backend)))

    ref = jax.jit(jax.value_and_grad(lambda *a: loss(*a, "xla"), argnums=(0, 1, 2)))(x, w1, w2)
    got = jax.jit(jax.value_and_grad(lambda *a: loss(*a, CallbackBackend()), argnums=(0, 1, 2)))(x, w1, w2)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)

    # match_varying itself: adds what is missing, leaves the rest
    def local(v):
        inv = jnp.zeros((), v.dtype)
        assert varying_axes(inv) == frozenset() and varying_axes(v) == {"data"}
        assert varying_axes(match_varying(inv, v)) == {"data"}
        assert match_varying(v, inv) is v
        return v
    jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=P("data")))(x)
    print("VMA-OK")
    """
)


def test_custom_call_results_under_shard_map():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "VMA-OK" in out.stdout, out.stdout + out.stderr[-4000:]
