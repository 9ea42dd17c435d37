"""GPU tests of the cuSPARSELt backend (need an NVIDIA GPU, nvcc and the
nvidia-cusparselt wheel; the library is built on first use).

Byte identity of our compression kernels (W, W^T, masked, MVUE) with the
numpy reference and with cuSPARSELt's own compression; the three products
against jnp.dot on the decompressed operands; jit + grad through
sparse24_linear; shard_map; the plan cache; errors for bad input.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

pytestmark = pytest.mark.gpu

jax = pytest.importorskip("jax")
jnp = jax.numpy

from sparse24_jax_kernels.cusparselt import layout  # noqa: E402

from _random24 import random_24  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)


@pytest.fixture(scope="module")
def be():
    from sparse24_jax import get_backend

    return get_backend("cusparselt")  # on a GPU machine this must work: no skip


@pytest.fixture(scope="module")
def ops(be):
    from sparse24_jax_kernels.cusparselt import ops

    return ops


def transposable_24(seed, n, k, dtype=jnp.bfloat16):
    from sparse24_jax import transposable_mask_24

    w = jax.random.normal(jax.random.key(seed), (n, k), jnp.float32)
    mask = transposable_mask_24(w)
    return w, mask, jnp.where(mask, w, 0.0).astype(dtype)


def as_np(a):
    return np.asarray(jax.device_get(a))


def test_version(ops):
    v = ops.version()
    print(f"cuSPARSELt {v // 1000}.{v % 1000 // 100}.{v % 100}")
    assert v >= 800


# k a multiple of 64: at k = 96 cuSPARSELt 0.8.0 on an H100 sized the buffer
# 5632 bytes where the SPEC layout gives 5376 (metadata columns padded to 64,
# seen 2026-11-23), so the backend requires N, K multiples of 64.
SHAPES = [(16, 64), (64, 64), (96, 128), (160, 256), (48, 192), (3072, 768), (768, 3072)]


@pytest.mark.parametrize("dtype", [BF16, np.dtype(np.float16)])
@pytest.mark.parametrize("m,k", SHAPES)
def test_compress_matches_library(ops, dtype, m, k):
    a = random_24(np.random.default_rng(m * 31 + k), m, k, dtype)
    ours = as_np(jax.jit(ops.compress)(jnp.asarray(a)))
    ref = layout.compress(a)
    assert np.array_equal(ours, ref), "kernel != numpy reference"
    lib = as_np(jax.jit(ops.lib_compress)(jnp.asarray(a)))
    assert np.array_equal(lib, ref), "cuSPARSELt != numpy reference (layout assumption broken)"
    # and the host emulation of the kernel
    assert np.array_equal(ops.emulate_compress(a), ours)


@pytest.mark.parametrize("n,k", [(64, 64), (256, 128), (3072, 768), (768, 3072), (6400, 1600)])
def test_transposed_weight_matches_library(ops, n, k):
    _, _, w_s = transposable_24(n + k, n, k)
    ours_w = ops.compress(w_s)
    ours_wt = ops.compress(w_s, transpose=True)  # W_s^T, read in place
    assert np.array_equal(as_np(ours_w), as_np(ops.lib_compress(w_s)))
    assert np.array_equal(as_np(ours_wt), as_np(ops.lib_compress(w_s.T)))


def test_masked_compress_matches_library(ops):
    w, mask, _ = transposable_24(5, 512, 256)
    wb = w.astype(jnp.bfloat16)
    pruned = jnp.where(mask, wb, jnp.zeros((), wb.dtype))
    assert np.array_equal(as_np(ops.compress_masked(wb, mask)), as_np(ops.lib_compress(pruned)))
    assert np.array_equal(
        as_np(ops.compress_masked(wb, mask, transpose=True)), as_np(ops.lib_compress(pruned.T))
    )


def test_fp8_compress_matches_library(ops):
    e4m3 = np.dtype(ml_dtypes.float8_e4m3fn)
    a = random_24(np.random.default_rng(3), 128, 256, e4m3)
    ours = as_np(ops.compress(jnp.asarray(a)))
    assert np.array_equal(ours, layout.compress(a))
    try:
        lib = as_np(ops.lib_compress(jnp.asarray(a)))
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"cuSPARSELt does not compress e4m3 here: {err}")
    assert np.array_equal(ours, lib)


@pytest.mark.parametrize("m_tok,n", [(1024, 256), (16384, 768)])
def test_mvue_bytes_match_library_on_pruned(ops, m_tok, n):
    dz = jax.random.normal(jax.random.key(1), (m_tok, n), jnp.bfloat16)
    buf = as_np(jax.jit(lambda k, d: ops.mvue_compress(k, d, transpose=True))(jax.random.key(2), dz))
    pruned = layout.decompress(buf, n, m_tok, BF16)  # S_z(dZ^T), (N, M)
    assert np.all((pruned.astype(np.float32).reshape(n, -1, 4) != 0).sum(-1) <= 2)
    lib = as_np(ops.lib_compress(jnp.asarray(pruned)))
    assert np.array_equal(buf, lib)


def test_mvue_unbiased_on_gpu(be, ops):
    m_tok, n = 256, 64
    dz = jax.random.normal(jax.random.key(3), (m_tok, n), jnp.bfloat16)
    eye = jnp.eye(m_tok, dtype=jnp.bfloat16)
    trials = 2000

    @jax.jit
    def mean_of_pruned(dz):
        def body(i, acc):
            g = be.prune_grad(jax.random.fold_in(jax.random.key(4), i), dz)
            # S_z(dZ^T) @ I = S_z(dZ^T), exactly, through the dW product
            return acc + be.matmul_dw(g, eye)

        return jax.lax.fori_loop(0, trials, body, jnp.zeros((n, m_tok), jnp.float32)) / trials

    mean = as_np(mean_of_pruned(dz))
    x = as_np(dz.T.astype(jnp.float32)).astype(np.float64)
    a = np.abs(x).reshape(n, -1, 4) + 1.19209e-07
    s = a.sum(-1, keepdims=True)
    p = a / s
    for j in range(4):
        aj = a[..., j : j + 1]
        p = p + np.where(np.arange(4) == j, 0.0, (aj / s) * a / (s - aj))
    p = p.reshape(n, m_tok)
    sd = np.abs(x) * np.sqrt(np.maximum(1 / p - 1, 0)) / np.sqrt(trials)
    assert np.all(np.abs(mean - x) <= 5 * sd + 1e-2 * np.abs(x) + 1e-6)


def _close(got, want, rtol=2e-2):
    got = np.asarray(got, np.float32)
    want = np.asarray(want, np.float32)
    scale = np.abs(want).max() + 1e-6
    np.testing.assert_allclose(got, want, atol=rtol * scale, rtol=rtol)


@pytest.mark.parametrize("m,n,k", [(256, 256, 128), (200, 128, 64), (16384, 3072, 768)])
def test_products_match_dense(be, m, n, k):
    _, _, w_s = transposable_24(m + n + k, n, k)
    x = jax.random.normal(jax.random.key(10), (m, k), jnp.bfloat16)
    dz = jax.random.normal(jax.random.key(11), (m, n), jnp.bfloat16)
    w_op = jax.jit(lambda w: be.prepare_weight(w, transposable=True))(w_s)
    wf = w_s.astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    z = jax.jit(be.matmul_fwd)(x, w_op)
    assert z.shape == (m, n) and z.dtype == jnp.bfloat16
    _close(z, jnp.dot(x.astype(jnp.float32), wf.T, precision=hi))
    dx = jax.jit(be.matmul_dx)(dz, w_op)
    assert dx.shape == (m, k) and dx.dtype == jnp.bfloat16
    _close(dx, jnp.dot(dz.astype(jnp.float32), wf, precision=hi))
    g = jax.jit(be.prune_grad)(jax.random.key(12), dz)
    dw = jax.jit(be.matmul_dw)(g, x)
    assert dw.shape == (n, k) and dw.dtype == jnp.float32
    s = layout.decompress(as_np(g.buf), n, g.mp, BF16).astype(np.float32)[:, :m]
    _close(dw, s @ as_np(x.astype(jnp.float32)))
    # not transposable: dense input grad
    w_op2 = be.prepare_weight(w_s, transposable=False)
    _close(be.matmul_dx(dz, w_op2), jnp.dot(dz.astype(jnp.float32), wf, precision=hi))
    _close(be.matmul_fwd(x, w_op2), z)


def test_jit_grad_matches_xla(be):
    from sparse24_jax import sparse24_linear, transposable_mask_24

    n, k = 256, 128
    w = jax.random.normal(jax.random.key(0), (n, k), jnp.float32) * 0.05
    mask = transposable_mask_24(w)
    x = jax.random.normal(jax.random.key(1), (4, 50, k), jnp.bfloat16)  # M = 200 tokens

    def loss(x, w, backend, mvue, key=None):
        z = sparse24_linear(x, w, mask, key=key, backend=backend, mvue=mvue)
        return jnp.sum(z.astype(jnp.float32) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=(2, 3))
    gx, gw = grad(x, w, "cusparselt", False)
    rx, rw = grad(x, w, "xla", False)
    _close(gx, rx)
    _close(gw, rw)
    kx, kw = grad(x, w, "cusparselt", True, jax.random.key(5))
    assert np.all(np.isfinite(as_np(kw))) and kw.shape == (n, k) and kw.dtype == jnp.float32
    _close(kx, rx)  # the input gradient does not depend on MVUE


def test_plan_cache_reuse(be, ops):
    _, _, w_s = transposable_24(9, 192, 128)
    w_op = be.prepare_weight(w_s, transposable=True)
    x = jax.random.normal(jax.random.key(2), (320, 128), jnp.bfloat16)
    f = jax.jit(be.matmul_fwd)
    s0 = ops.stats()
    f(x, w_op).block_until_ready()
    s1 = ops.stats()
    f(x, w_op).block_until_ready()
    f(x * 2, w_op).block_until_ready()
    s2 = ops.stats()
    assert s1["plans"] - s0["plans"] == 1
    assert s1["searches"] - s0["searches"] <= 1
    assert s2["plans"] == s1["plans"] and s2["searches"] == s1["searches"]
    assert s2["matmuls"] - s1["matmuls"] == 2


def test_shard_map(be):
    from jax.sharding import Mesh, PartitionSpec as P

    try:
        from jax import shard_map
    except ImportError:
        from jax.experimental.shard_map import shard_map

    devs = np.array(jax.devices())
    mesh = Mesh(devs, ("d",))
    _, _, w_s = transposable_24(4, 256, 128)
    w_op = be.prepare_weight(w_s, transposable=True)
    x = jax.random.normal(jax.random.key(3), (128 * len(devs), 128), jnp.bfloat16)
    f = jax.jit(shard_map(be.matmul_fwd, mesh=mesh, in_specs=(P("d"), P()), out_specs=P("d")))
    np.testing.assert_array_equal(as_np(f(x, w_op)), as_np(jax.jit(be.matmul_fwd)(x, w_op)))


def test_bad_inputs(be, ops):
    with pytest.raises(ValueError, match="multiple of 64"):
        be.check(3072, 100, jnp.bfloat16)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        be.check(64, 64, jnp.float32)
    with pytest.raises(ValueError, match="multiple of 64"):
        be.prepare_weight(jnp.zeros((64, 48), jnp.bfloat16), transposable=False)
    with pytest.raises(Exception, match="multiple of 32"):
        ops.compress(jnp.zeros((64, 48), jnp.bfloat16)).block_until_ready()
    with pytest.raises(Exception, match="bfloat16, float16"):
        ops.compress(jnp.zeros((64, 64), jnp.float32)).block_until_ready()
    buf = ops.compress(jnp.zeros((64, 64), jnp.bfloat16))
    with pytest.raises(Exception, match="compressed operand"):
        ops.spmm(buf[:-1], jnp.zeros((64, 64), jnp.bfloat16), m=64, k=64, transpose_b=True,
                 d_col_major=True).block_until_ready()
    with pytest.raises(Exception, match="does not match"):
        ops.spmm(buf, jnp.zeros((64, 32), jnp.bfloat16), m=64, k=64, transpose_b=True,
                 d_col_major=True).block_until_ready()
    w_op = be.prepare_weight(jnp.zeros((64, 64), jnp.bfloat16), transposable=True)
    with pytest.raises(ValueError, match="prepared in bfloat16"):
        be.matmul_fwd(jnp.zeros((8, 64), jnp.float16), w_op)


def _hopper() -> bool:
    return getattr(jax.devices()[0], "compute_capability", "") == "9.0"


def test_fp8_probe(ops):
    ok, why = ops.fp8_probe()
    print(f"e4m3 2:4 GEMM: {'yes' if ok else 'no: ' + why}")
    if _hopper():
        assert ok, f"cuSPARSELt ran no e4m3 2:4 GEMM on this Hopper GPU: {why}"


@pytest.mark.parametrize("m,n,k", [(200, 128, 128), (16384, 3072, 768)])
def test_fp8_forward_is_native_and_matches_the_recipe(be, ops, m, n, k):
    """The forward of precision="fp8" is one e4m3 spmm and equals fp8_dot's recipe
    (up to the bf16 rounding of the product before scaling)."""
    from sparse24_jax import fp8, sparse24_linear, transposable_mask_24

    if not ops.fp8_probe()[0]:
        pytest.skip(f"no native e4m3 GEMM here: {ops.fp8_probe()[1]}")
    w = jax.random.normal(jax.random.key(m), (n, k), jnp.float32) * 0.05
    mask = transposable_mask_24(w)
    x = jax.random.normal(jax.random.key(1), (m, k), jnp.bfloat16)
    f = jax.jit(lambda x, w: sparse24_linear(x, w, mask, backend=be, mvue=False, precision="fp8"))
    hlo = f.lower(x, w).as_text()
    assert "f8E4M3FN" in hlo and "sparse24_cusparselt_spmm" in hlo
    z = f(x, w)
    w_s = jnp.where(mask, w, 0.0)
    want = fp8.fp8_dot(x, w_s, fp8.E4M3, fp8.E4M3)
    _close(z, want)


def test_fp8_training_grads_match_xla_recipe(be, ops):
    from sparse24_jax import sparse24_linear, transposable_mask_24

    n, k = 256, 128
    w = jax.random.normal(jax.random.key(0), (n, k), jnp.float32) * 0.05
    mask = transposable_mask_24(w)
    x = jax.random.normal(jax.random.key(1), (256, k), jnp.bfloat16)

    def loss(x, w, backend):
        z = sparse24_linear(x, w, mask, backend=backend, mvue=False, precision="fp8")
        return jnp.sum(z.astype(jnp.float32) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    gx, gw = grad(x, w, "cusparselt")
    rx, rw = grad(x, w, "xla")
    _close(gx, rx, rtol=5e-2)
    _close(gw, rw, rtol=5e-2)


def test_fp8_mvue_weight_grad_is_sparse_and_unbiased_on_average(be):
    """precision="fp8" with MVUE: our kernel prunes, the kept values are quantized
    in the compressed buffer; averaged over keys dW approaches the fp8 recipe's
    unpruned dW (scales differ per draw, so only approximately)."""
    from sparse24_jax import sparse24_linear, transposable_mask_24

    n, k, m = 128, 128, 256
    w = jax.random.normal(jax.random.key(0), (n, k), jnp.float32) * 0.05
    mask = transposable_mask_24(w)
    x = jax.random.normal(jax.random.key(1), (m, k), jnp.bfloat16)

    def dw(key, backend, mvue):
        f = lambda w: jnp.sum(sparse24_linear(x, w, mask, key=key, backend=backend, mvue=mvue,  # noqa: E731
                                              precision="fp8").astype(jnp.float32) ** 2)
        return jax.grad(f)(w)

    hlo = jax.jit(lambda key: dw(key, "cusparselt", True)).lower(jax.random.key(2)).as_text()
    assert "sparse24_cusparselt_mvue_compress" in hlo
    # lax.map, not vmap: the FFI calls have no batching rule
    mean = jax.jit(lambda keys: jax.lax.map(lambda kk: dw(kk, "cusparselt", True), keys).mean(0))(
        jax.random.split(jax.random.key(3), 64))
    ref = dw(None, "xla", False)
    rel = float(jnp.linalg.norm(mean - ref) / jnp.linalg.norm(ref))
    assert np.isfinite(rel) and rel < 0.25, rel
