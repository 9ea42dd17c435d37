"""CPU tests of the "cutlass" backend (kernels/cutlass/backend.py): its FFI
calls replaced by host callbacks with the same semantics (our compressors by
their CUDA code emulated on the host, tests/_cutlass_own.py; CUTLASS's
compressor by layout.compress_sm90; the GEMMs by numpy on the decompressed
operand). Exercises the backend's shapes, padding, layouts, configs and
pytrees on the CPU, against backend="xla"; the real kernels are tested on the
GPU (tests/gpu/test_cutlass_compress.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from sparse24_jax_kernels.cutlass import layout

import _cutlass_own

ok, why = _cutlass_own.available()
pytestmark = pytest.mark.skipif(not ok, reason=why)


@pytest.fixture()
def be(monkeypatch):
    from sparse24_jax_kernels.cutlass import backend, ops, own_ops

    def cb(fn, out, *args):
        return jax.pure_callback(fn, out, *args)

    def compress(dense):
        rows, cols = dense.shape
        out = (jax.ShapeDtypeStruct((rows, cols // 2), jnp.bfloat16),
               jax.ShapeDtypeStruct((ops.meta_nbytes(rows, cols),), jnp.uint8))
        return tuple(cb(lambda d: layout.compress_sm90(np.asarray(d)), out, dense))

    calls = []

    def spmm(product, values, meta, b, *, config=ops.DEFAULT_CONFIG):
        calls.append((product, config))
        rows, cols = values.shape[0], 2 * values.shape[1]
        _, out_shape, out_dtype = ops.problem(product, (rows, cols), b.shape)

        def host(v, m, b):
            a = layout.decompress_sm90(np.asarray(v), np.asarray(m), rows, cols).astype(np.float32)
            bf = np.asarray(b).astype(np.float32)
            d = a @ bf if product == "dw" else bf @ a.T
            return d.astype(ml_dtypes.bfloat16 if out_dtype == "bfloat16" else np.float32)

        return cb(host, jax.ShapeDtypeStruct(out_shape, jnp.dtype(out_dtype)), values, meta, b)

    def project_compress(w, mask):
        n, k = w.shape
        out = (jax.ShapeDtypeStruct((n, k // 2), jnp.bfloat16),
               jax.ShapeDtypeStruct((ops.meta_nbytes(n, k),), jnp.uint8),
               jax.ShapeDtypeStruct((k, n // 2), jnp.bfloat16),
               jax.ShapeDtypeStruct((ops.meta_nbytes(k, n),), jnp.uint8))
        return tuple(cb(lambda w, m: _cutlass_own.project(np.asarray(w), np.asarray(m)), out, w, mask))

    def mvue_compress(seed, dz):
        m, n = dz.shape
        out = (jax.ShapeDtypeStruct((n, m // 2), jnp.bfloat16),
               jax.ShapeDtypeStruct((ops.meta_nbytes(n, m),), jnp.uint8))
        return tuple(cb(lambda s, d: _cutlass_own.mvue(np.asarray(d), np.asarray(s)), out, seed, dz))

    monkeypatch.setattr(ops, "load", lambda: None)
    monkeypatch.setattr(ops, "compress", compress)
    monkeypatch.setattr(ops, "spmm", spmm)
    monkeypatch.setattr(own_ops, "project_compress", project_compress)
    monkeypatch.setattr(own_ops, "mvue_compress", mvue_compress)
    b = backend.CutlassBackend()
    b.calls = calls
    return b


def rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))


@pytest.mark.parametrize("method", ["srste", "ste", "sste"])
@pytest.mark.parametrize("m, n, k", [(100, 128, 192), (64, 320, 128)])
def test_linear_matches_xla(be, method, m, n, k):
    import sparse24_jax as s24

    rng = np.random.default_rng(n + k)
    x = jnp.asarray(rng.standard_normal((m, k)).astype(np.float32)).astype(jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((n, k)).astype(np.float32) * 0.05)
    mask = s24.transposable_mask_24(w) if method != "sste" else None
    beta = jnp.float32(0.9) if method == "sste" else None
    dy = jnp.asarray(rng.standard_normal((m, n)).astype(np.float32)).astype(jnp.bfloat16)

    def run(backend, key=None):
        def f(x, w):
            return s24.sparse24_linear(x, w, mask, beta, key=key, method=method, backend=backend,
                                      mvue=key is not None)

        y, vjp = jax.vjp(f, x, w)
        return (y, *vjp(dy))

    y0, dx0, dw0 = run("xla")
    y1, dx1, dw1 = run(be)
    assert y1.dtype == y0.dtype and y1.shape == y0.shape
    assert rel(y1, y0) < 1e-2 and rel(dx1, dx0) < 1e-2 and rel(dw1, dw0) < 1e-2
    # MVUE dW: an unbiased estimate, in the same distribution as xla's
    key = jax.random.PRNGKey(3)
    dw_c, dw_x = run(be, key)[2], run("xla", key)[2]
    e_c, e_x = rel(dw_c, dw0), rel(dw_x, dw0)
    assert 0.05 < e_c < 2.0 and 0.5 < e_c / e_x < 2.0, (e_c, e_x)


def test_products_use_the_config_table(be):
    from sparse24_jax_kernels.cutlass import backend

    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((1600, 6400)).astype(np.float32))[:, :6400]
    import sparse24_jax as s24

    mask = s24.transposable_mask_24(w)
    op = be.prepare_projected(w, mask, None, method="srste", dtype=jnp.bfloat16)
    x = jnp.zeros((64, 6400), jnp.bfloat16)
    be.calls.clear()
    be.matmul_fwd(x, op)
    g = be.prune_grad(jax.random.PRNGKey(0), jnp.ones((64, 1600), jnp.bfloat16))
    be.matmul_dw(g, x)
    assert be.calls == [("fwd", backend.config_for("fwd", 1600, 6400)),
                        ("dw", "t128x128x128_c1x1_pingpong")]


def test_prepare_projected_is_prepare_weight(be):
    import sparse24_jax as s24

    from _random24 import awkward_f32

    w = jnp.asarray(awkward_f32(1, 192, 320))
    mask = s24.transposable_mask_24(w)
    a = be.prepare_projected(w, mask, None, method="srste", dtype=jnp.bfloat16)
    b = be.prepare_weight(jnp.where(mask, w, 0.0).astype(jnp.bfloat16), transposable=True)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))


def test_check_names_the_fix(be):
    with pytest.raises(ValueError, match="bfloat16 GEMMs only.*cusparselt"):
        be.check(128, 128, jnp.float16)
    with pytest.raises(ValueError, match="multiples of 64.*pad"):
        be.check(128, 96, jnp.bfloat16)
    from sparse24_jax.backend import capabilities

    caps = capabilities(be)
    assert caps.prepare_projected and caps.compute_dtypes == (jnp.dtype(jnp.bfloat16),)
    assert not (caps.native_fp8_forward or caps.quantize_pruned_grad or caps.gated_activation
                or caps.activation_grad_prune)
