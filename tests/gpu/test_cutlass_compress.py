"""GPU tests of our own kernels writing CUTLASS's sm90 2:4 format
(kernels/cutlass/own_ops.py) and of the "cutlass" backend (kernels/cutlass/backend.py).
Need an H100/H200 and the CUTLASS library ($SPARSE24_CUTLASS_KERNELS or a build).

* projection: byte-exact vs CUTLASS's own compressor (ops.compress) of
  where(mask, W, 0) in bf16 and its transpose, and vs layout.py;
* MVUE of dZ^T: byte-exact vs layout.py of the cuSPARSELt MVUE's S(dZ^T) with
  the same seed (same kept entries, same bits), and vs CUTLASS's compressor;
* the backend: sparse24_linear (srste, ste) vs backend="xla", and a tiny
  model step.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

jax = pytest.importorskip("jax")
jnp = jax.numpy

from _ffn_cases import rel  # noqa: E402
from _random24 import awkward_f32  # noqa: E402

SHAPES = [(128, 192), (192, 1600), (1600, 320), (1280, 5120)]


@pytest.fixture(scope="module")
def own():
    from sparse24_jax_kernels.cutlass import ops, own_ops

    ops.load()  # on a GPU machine this must work: no skip
    return own_ops


def u8(a):
    return np.asarray(jax.device_get(a)).view(np.uint8)


def mask_of(w, sparser=False, seed=0):
    from sparse24_jax import transposable_mask_24

    mask = transposable_mask_24(w)
    if sparser:
        mask &= jax.random.uniform(jax.random.PRNGKey(seed), mask.shape) > 0.3
    return mask


@pytest.mark.parametrize("n, k", SHAPES)
@pytest.mark.parametrize("sparser", [False, True])
def test_projection_is_cutlass_compressor_bytes(own, n, k, sparser):
    from sparse24_jax_kernels.cutlass import layout, ops

    w = jnp.asarray(awkward_f32(n + 3 * k, n, k))
    mask = mask_of(w, sparser, n)
    got = jax.jit(own.project_compress)(w, mask)
    w_s = jnp.where(mask, w, 0.0).astype(jnp.bfloat16)
    ref = ops.compress(w_s) + ops.compress(w_s.T)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(u8(a), u8(b))
    # and the numpy reference
    rv, rm = layout.compress_sm90(np.asarray(w_s))
    np.testing.assert_array_equal(u8(got[0]), rv.view(np.uint8))
    np.testing.assert_array_equal(u8(got[1]), rm)


@pytest.mark.parametrize("block_groups", [0, 32, 64])
@pytest.mark.parametrize("m, n", [(256, 128), (1600, 192), (320, 1600), (4096, 1280)])
def test_mvue_is_cusparselt_mvue_in_cutlass_bytes(own, m, n, block_groups):
    from sparse24_jax_kernels.cusparselt import layout as cl
    from sparse24_jax_kernels.cusparselt import ops as cops
    from sparse24_jax_kernels.cutlass import layout, ops

    rng = np.random.default_rng(m + n)
    dz = jnp.asarray(rng.standard_normal((m, n)).astype(np.float32)).astype(jnp.bfloat16)
    key = jax.random.PRNGKey(m * 7 + n)
    values, meta = jax.jit(partial(own.mvue_compress, block_groups=block_groups))(key, dz)
    cops.load()
    buf = cops.mvue_compress(key, dz, transpose=True)  # same key -> same seed
    s = cl.decompress(np.asarray(buf), n, m, np.asarray(dz).dtype)
    rv, rm = layout.compress_sm90(s)
    np.testing.assert_array_equal(u8(values), rv.view(np.uint8))
    np.testing.assert_array_equal(u8(meta), rm)
    cv, cm = ops.compress(jnp.asarray(s))  # CUTLASS's own compressor of the same S(dZ^T)
    np.testing.assert_array_equal(u8(values), u8(cv))
    np.testing.assert_array_equal(u8(meta), u8(cm))


@pytest.mark.parametrize("m, f", [(256, 128), (320, 1344), (4096, 1408)])
def test_swiglu_grad_mvue_is_cusparselt_dz_then_own_mvue(own, m, f):
    """The fused SwiGLU backward: dh is the cuSPARSELt library's fused kernel's, bit for bit,
    and the compressed pair is own_mvue's of that dh with the same key, byte for byte."""
    from sparse24_jax_kernels.cusparselt import ops as cops

    rng = np.random.default_rng(m + f)
    da = jnp.asarray(rng.standard_normal((m, f)).astype(np.float32)).astype(jnp.bfloat16)
    h = jnp.asarray(2 * rng.standard_normal((m, 2 * f)).astype(np.float32)).astype(jnp.bfloat16)
    key = jax.random.PRNGKey(m + 3 * f)
    dh, values, meta = jax.jit(own.swiglu_grad_mvue_compress)(key, da, h)
    cops.load()
    ref_dh, _ = cops.act_grad_mvue_compress("swiglu", da, h, key)
    np.testing.assert_array_equal(u8(dh), u8(ref_dh))
    rv, rm = jax.jit(own.mvue_compress)(key, dh)
    np.testing.assert_array_equal(u8(values), u8(rv))
    np.testing.assert_array_equal(u8(meta), u8(rm))


def test_own_ops_errors(own):
    with pytest.raises(ValueError, match="multiples of 64"):
        own.project_compress(jnp.zeros((96, 64)), jnp.zeros((96, 64), bool))
    with pytest.raises(ValueError, match="float32"):
        own.project_compress(jnp.zeros((64, 64), jnp.bfloat16), jnp.zeros((64, 64), bool))
    with pytest.raises(ValueError, match="bfloat16"):
        own.mvue_compress(jax.random.PRNGKey(0), jnp.zeros((64, 64), jnp.float32))
    with pytest.raises(ValueError, match="block_groups"):
        own.mvue_compress(jax.random.PRNGKey(0), jnp.zeros((64, 64), jnp.bfloat16), block_groups=16)
    with pytest.raises(ValueError, match=r"\(M, 2F\)"):
        own.swiglu_grad_mvue_compress(jax.random.PRNGKey(0), jnp.zeros((64, 64), jnp.bfloat16),
                                      jnp.zeros((64, 64), jnp.bfloat16))
    with pytest.raises(ValueError, match="multiples of 64"):
        own.swiglu_grad_mvue_compress(jax.random.PRNGKey(0), jnp.zeros((64, 96), jnp.bfloat16),
                                      jnp.zeros((64, 192), jnp.bfloat16))


# -- the backend ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["srste", "ste"])
@pytest.mark.parametrize("m, n, k", [(200, 1280, 320), (512, 320, 1600)])
def test_linear_matches_xla(method, m, n, k):
    import sparse24_jax as s24

    rng = np.random.default_rng(n + k)
    x = jnp.asarray(rng.standard_normal((m, k)).astype(np.float32)).astype(jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((n, k)).astype(np.float32) * 0.05)
    mask = s24.transposable_mask_24(w)
    dy = jnp.asarray(rng.standard_normal((m, n)).astype(np.float32)).astype(jnp.bfloat16)

    def run(backend, key):
        def f(x, w):
            return s24.sparse24_linear(x, w, mask, key=key, method=method, backend=backend,
                                      mvue=key is not None)

        y, vjp = jax.vjp(f, x, w)
        dx, dw = vjp(dy)
        return y, dx, dw

    y0, dx0, dw0 = jax.jit(lambda x, w: run("xla", None))(x, w)
    y1, dx1, dw1 = jax.jit(lambda x, w: run("cutlass", None))(x, w)
    assert rel(y1, y0) < 1e-2 and rel(dx1, dx0) < 1e-2
    assert rel(dw1, dw0) < 1e-2  # key=None: dense dW, exact-ish
    # MVUE: unbiased, so the same distribution as xla's MVUE dW (not the same draws)
    key = jax.random.PRNGKey(1)
    _, _, dw_c = jax.jit(lambda x, w: run("cutlass", key))(x, w)
    _, _, dw_x = jax.jit(lambda x, w: run("xla", key))(x, w)
    e_c, e_x = rel(dw_c, dw0), rel(dw_x, dw0)
    assert 0.05 < e_c < 2.0 and 0.5 < e_c / e_x < 2.0, (e_c, e_x)


def test_backend_check_and_capabilities():
    from sparse24_jax.backend import capabilities, get_backend

    be = get_backend("cutlass")
    with pytest.raises(ValueError, match="bfloat16"):
        be.check(128, 128, jnp.float16)
    with pytest.raises(ValueError, match="multiples of 64"):
        be.check(100, 128, jnp.bfloat16)
    caps = capabilities("cutlass")
    assert caps.prepare_projected and not caps.native_fp8_forward
    assert caps.compute_dtypes == (jnp.dtype(jnp.bfloat16),)


def test_prepare_projected_is_prepare_weight():
    import sparse24_jax as s24
    from sparse24_jax.backend import get_backend

    be = get_backend("cutlass")
    w = jnp.asarray(awkward_f32(4, 256, 320))
    mask = s24.transposable_mask_24(w)
    a = be.prepare_projected(w, mask, None, method="srste", dtype=jnp.bfloat16)
    b = be.prepare_weight(jnp.where(mask, w, 0.0).astype(jnp.bfloat16), transposable=True)
    for x, y in zip((a.values, a.meta, a.values_t, a.meta_t), (b.values, b.meta, b.values_t, b.meta_t)):
        np.testing.assert_array_equal(u8(x), u8(y))


def test_tiny_model_step():
    # a 2-layer 2:4 MLP, one SGD step on cutlass and on xla (key=None: no MVUE)
    import sparse24_jax as s24

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((128, 256)).astype(np.float32)).astype(jnp.bfloat16)
    t = jnp.asarray(rng.standard_normal((128, 256)).astype(np.float32))
    params = {"w1": jnp.asarray(rng.standard_normal((512, 256)).astype(np.float32) * 0.05),
              "w2": jnp.asarray(rng.standard_normal((256, 512)).astype(np.float32) * 0.05)}

    def loss(p, backend):
        m1, m2 = s24.transposable_mask_24(p["w1"]), s24.transposable_mask_24(p["w2"])
        h = jax.nn.gelu(s24.sparse24_linear(x, p["w1"], m1, backend=backend, mvue=False))
        y = s24.sparse24_linear(h.astype(jnp.bfloat16), p["w2"], m2, backend=backend,
                                mvue=False)
        return jnp.mean((y.astype(jnp.float32) - t) ** 2)

    def step(p, backend):
        l, g = jax.value_and_grad(loss)(p, backend)
        return l, jax.tree.map(lambda a, b: a - 0.1 * b, p, g)

    l0, p0 = jax.jit(lambda p: step(p, "xla"))(params)
    l1, p1 = jax.jit(lambda p: step(p, "cutlass"))(params)
    assert abs(float(l1) - float(l0)) < 1e-2 * abs(float(l0))
    for name in params:
        assert rel(p1[name] - params[name], p0[name] - params[name]) < 2e-2
