"""Sharded 2:4 linears on 8 forced CPU devices: every layout gives the
single-device result (XLA_FLAGS must be set before jax starts: subprocess)."""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import sparse24_jax as s24
    from sparse24_jax.parallel import ShardConfig, sharded_sparse24_linear
    jax.config.update("jax_default_matmul_precision", "highest")
    devs = np.array(jax.devices())
    x = jax.random.normal(jax.random.key(0), (8, 4, 32))           # (batch, seq, d)
    w1 = jax.random.normal(jax.random.key(1), (64, 32)) * 0.2       # fc: d -> h
    w2 = jax.random.normal(jax.random.key(2), (32, 64)) * 0.2       # proj: h -> d
    m1, m2 = s24.transposable_mask_24(w1), s24.transposable_mask_24(w2)

    def ffn(x, w1, w2, shard=None, mvue=False, key=None):
        if shard is None:
            h = s24.sparse24_linear(x, w1, m1, mvue=False)
            return s24.sparse24_linear(jax.nn.gelu(h), w2, m2, mvue=False)
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        h = sharded_sparse24_linear(x, w1, m1, key=k1, shard=shard, mode="column" if shard.tensor_axis else None, mvue=mvue)
        return sharded_sparse24_linear(jax.nn.gelu(h), w2, m2, key=k2, shard=shard, mode="row" if shard.tensor_axis else None, mvue=mvue)

    loss = lambda x, w1, w2, **kw: jnp.sum(jnp.sin(ffn(x, w1, w2, **kw)))
    ref = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, w1, w2)
    layouts = {
        "data8": (Mesh(devs.reshape(8), ("data",)), ("data",), None),
        "data2xfsdp4": (Mesh(devs.reshape(2, 4), ("data", "fsdp")), ("data", "fsdp"), None),
        "data2xtensor4": (Mesh(devs.reshape(2, 4), ("data", "tensor")), ("data",), "tensor"),
        "tensor8": (Mesh(devs.reshape(1, 8), ("data", "tensor")), ("data",), "tensor"),
    }
    layouts_shard = ShardConfig(*layouts["data2xtensor4"])
    for name, (mesh, batch, tp) in layouts.items():
        shard = ShardConfig(mesh, batch, tp)
        f = jax.jit(jax.value_and_grad(lambda x, w1, w2: loss(x, w1, w2, shard=shard), argnums=(0, 1, 2)))
        got = f(x, w1, w2)
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5, err_msg=name)
        # with MVUE: runs, finite, and close to the exact gradient on average (unbiased)
        g = jax.jit(jax.grad(lambda w1, k: loss(x, w1, w2, shard=shard, mvue=True, key=k)))
        gs = np.mean([np.asarray(g(w1, jax.random.key(i))) for i in range(64)], 0)
        exact = np.asarray(ref[1][1])
        assert np.isfinite(gs).all()
        assert np.linalg.norm(gs - exact) / np.linalg.norm(exact) < 0.25, name
        print(name, "ok")
    # a tensor split that cuts a 2:4 group is refused up front
    bad = ShardConfig(Mesh(devs.reshape(1, 8), ("data", "tensor")), ("data",), "tensor")
    try:
        sharded_sparse24_linear(x, jnp.ones((16, 32)), jnp.ones((16, 32), bool), shard=bad, mode="column", mvue=False)
    except ValueError as e:
        assert "multiple of 4" in str(e) and "straddle" in str(e), e
    else:
        raise AssertionError("no error for N=16 over 8 devices")
    # the NNX module with a mesh gives the module without one
    from flax import nnx
    from sparse24_jax import nnx as s24nnx
    plain = s24nnx.SparseMLP(32, 64, mvue=False, rngs=nnx.Rngs(0))
    tp = s24nnx.SparseMLP(32, 64, mvue=False, rngs=nnx.Rngs(0), shard=layouts_shard)
    assert tp.fc.tp_mode == "column" and tp.proj.tp_mode == "row"
    gp = nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(plain)
    gt = nnx.jit(nnx.grad(lambda m: jnp.sum(jnp.sin(m(x)))))(tp)
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gt)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)
    print("PARALLEL-OK")
    """
)


def test_sharded_layouts_match_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "PARALLEL-OK" in out.stdout, out.stdout + out.stderr[-4000:]


def test_check_tensor_parallel_errors():
    from sparse24_jax.parallel import check_tensor_parallel

    check_tensor_parallel(64, 32, 4, "column")
    with pytest.raises(ValueError, match="divisible by 32"):
        check_tensor_parallel(64, 36, 8, "row")
    with pytest.raises(ValueError, match="unknown tensor-parallel mode"):
        check_tensor_parallel(64, 32, 2, "diagonal")
