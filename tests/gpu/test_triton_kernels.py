"""Every Triton kernel (through its jax-triton wrapper) against its pure-JAX
reference, on random, edge (zeros, ties, huge/tiny values) and odd shapes, in
float32, float16 and bfloat16; and the ``triton`` backend against ``xla``.

Needs a CUDA GPU, triton and jax-triton 0.3.1 (skipped otherwise). Kernel
modules are imported inside the tests, never at collection, so a CPU run does
not import triton.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse24_jax as s24

pytestmark = pytest.mark.gpu

DTYPES = [jnp.float32, jnp.float16, jnp.bfloat16]
ODD_SHAPES = [(4, 4), (8, 16), (20, 36), (36, 132), (300, 260)]
FFN_SHAPES = [(3072, 768), (768, 3072)]


@pytest.fixture(scope="module")
def kt():
    pytest.importorskip("jax_triton", reason="jax-triton 0.3.1 is not installed")
    names = ("compress", "mask_search", "matmul", "mvue", "soft_threshold", "gated", "backend")
    return type("KT", (), {n: importlib.import_module(f"sparse24_jax_kernels.triton.{n}") for n in names})


def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint8)


def assert_packed_equal(got, ref):
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(ref[1]))
    assert got[0].dtype == ref[0].dtype
    np.testing.assert_array_equal(_bits(got[0]), _bits(ref[0]))


def _inputs(kind, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "ints":  # many exact ties
        x = rng.integers(-3, 4, size=shape)
    elif kind == "zeros":
        x = np.zeros(shape)
    elif kind == "huge":
        # large, but sums of 8 stay finite (an inf input makes the reference's
        # 0 * inf pattern products NaN)
        x = rng.standard_normal(shape) * (1e4 if dtype == jnp.float16 else 1e36)
    elif kind == "tiny":
        x = rng.standard_normal(shape) * (1e-30 if dtype != jnp.float16 else 1e-4)
    else:
        raise ValueError(kind)
    return jnp.asarray(x, dtype)


# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ODD_SHAPES + FFN_SHAPES)
@pytest.mark.parametrize("kind", ["ints", "normal", "zeros", "huge", "tiny"])
def test_mask_search(kt, dtype, shape, kind):
    w = _inputs(kind, shape, dtype)
    got = np.asarray(jax.jit(kt.mask_search.transposable_mask)(w))
    ref = np.asarray(s24.transposable_mask_24(w))
    # always transposable 2:4
    n, k = shape
    assert (got.reshape(n, k // 4, 4).sum(-1) == 2).all()
    assert (got.T.reshape(k, n // 4, 4).sum(-1) == 2).all()
    if kind in ("ints", "zeros"):
        np.testing.assert_array_equal(got, ref)  # exact ties break the same way
    else:
        # float sums may differ from XLA's dot in the last bit: a block may
        # then pick another pattern, but never one with less kept L1 (beyond
        # rounding)
        a = np.abs(np.asarray(w, np.float64))
        kept_got = (a * got).reshape(n // 4, 4, k // 4, 4).sum((1, 3))
        kept_ref = (a * ref).reshape(n // 4, 4, k // 4, 4).sum((1, 3))
        np.testing.assert_allclose(kept_got, kept_ref, rtol=1e-6, atol=0)
        assert (got != ref).mean() < 1e-3


# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ODD_SHAPES + FFN_SHAPES)
def test_compress(kt, dtype, shape):
    w = _inputs("normal", shape, dtype)
    mask = s24.transposable_mask_24(w)
    w_s = jnp.where(mask, w, 0)
    c = jax.jit(kt.compress.compress, static_argnames=("transpose", "dtype"))
    assert_packed_equal(c(w, mask), s24.compress_24(w, mask))
    assert_packed_equal(c(w_s), s24.compress_24(w_s, w_s != 0))
    assert_packed_equal(c(w_s, transpose=True), s24.compress_24(w_s.T, w_s.T != 0))
    assert_packed_equal(c(w, mask, transpose=True), s24.compress_24(w.T, mask.T))
    if dtype == jnp.float32:
        assert_packed_equal(c(w, mask, dtype=jnp.bfloat16), s24.compress_24(w.astype(jnp.bfloat16), mask))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ODD_SHAPES + FFN_SHAPES)
def test_compress_both(kt, dtype, shape):
    """W and W.T from one read equal the two single compressions' references."""
    w = _inputs("normal", shape, dtype)
    mask = s24.transposable_mask_24(w)
    w_s = jnp.where(mask, w, 0)
    c = jax.jit(kt.compress.compress_both, static_argnames=("dtype",))
    got_w, got_t = c(w, mask)
    assert_packed_equal(got_w, s24.compress_24(w, mask))
    assert_packed_equal(got_t, s24.compress_24(w.T, mask.T))
    got_w, got_t = c(w_s)
    assert_packed_equal(got_w, s24.compress_24(w_s, w_s != 0))
    assert_packed_equal(got_t, s24.compress_24(w_s.T, w_s.T != 0))
    if dtype == jnp.float32:
        wb = w.astype(jnp.bfloat16)
        got_w, got_t = c(w, mask, dtype=jnp.bfloat16)
        assert_packed_equal(got_w, s24.compress_24(wb, mask))
        assert_packed_equal(got_t, s24.compress_24(wb.T, mask.T))


def test_compress_edges(kt):
    x = jnp.asarray(
        [[0, 0, 0, 0, 0, 0, 0, 5, -0.0, 3, 0, 0],
         [1, 0, 0, 0, 0, 0, 2, 0, 0, 0, -0.0, 0],
         [0, -0.0, 7, 0, 8, 9, 0, 0, 1e-3, 0, 0, 3e38],
         [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], jnp.float32)
    assert_packed_equal(kt.compress.compress(x), s24.compress_24(x, x != 0))
    assert_packed_equal(kt.compress.compress(x, transpose=True), s24.compress_24(x.T, x.T != 0))
    both_w, both_t = kt.compress.compress_both(x[:, :8].T)  # (8, 4): W.T's groups are x's rows
    xt = x[:, :8].T
    assert_packed_equal(both_w, s24.compress_24(xt, xt != 0))
    assert_packed_equal(both_t, s24.compress_24(xt.T, xt.T != 0))


# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ODD_SHAPES + FFN_SHAPES)
def test_soft_threshold(kt, dtype, shape):
    w = _inputs("normal", shape, jnp.float32)
    w = w.at[0, :4].set(1.0)  # a tie: all four zero
    beta = s24.sste_scale(w)
    got = jax.jit(kt.soft_threshold.soft_threshold_compress, static_argnums=2)(w, beta, dtype)
    ref_dense = (beta * s24.soft_threshold_24(w)).astype(dtype)
    assert_packed_equal(got, s24.compress_24(ref_dense, ref_dense != 0))


# ---------------------------------------------------------------------------
def _p64(x):
    a = np.abs(np.asarray(x, np.float64)) + 1.19209e-07
    s = a.sum(-1, keepdims=True)
    q = a / (s * (s - a))
    return a / s + a * (q.sum(-1, keepdims=True) - q)


def _named(meta, n_groups):
    meta = np.asarray(meta)
    codes = np.stack([meta & 15, meta >> 4], -1).reshape(meta.shape[0], -1)
    return codes[:, :n_groups] & 3, codes[:, :n_groups] >> 2, codes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 4), (12, 20), (36, 132), (16384, 768)])
def test_mvue_structure_and_values(kt, dtype, shape):
    m, n = shape
    dz = _inputs("normal", shape, dtype, seed=3)
    dz = dz.at[:4, 0].set(0).at[4:8, 1 % n].set(jnp.asarray([0, 0, 5, 0], dtype)) if m >= 8 else dz
    vals, meta = jax.jit(kt.mvue.mvue_compress)(jax.random.key(0), dz)
    g = m // 4
    i0, i1, codes = _named(meta, g)
    assert (i0 < i1).all()
    if g % 2:
        assert (codes[:, g] == 0xE).all()
    x = np.asarray(dz.T, np.float32).reshape(n, g, 4)
    named = np.zeros((n, g, 4), bool)
    np.put_along_axis(named, i0[..., None], True, -1)
    np.put_along_axis(named, i1[..., None], True, -1)
    expect = np.where(named, x / _p64(x), 0).astype(np.float32)
    dense = np.asarray(s24.decompress_24(vals, meta), np.float32).reshape(n, g, 4)
    rtol = {jnp.float32: 1e-5, jnp.float16: 1e-3, jnp.bfloat16: 8e-3}[dtype]
    np.testing.assert_allclose(dense, expect, rtol=rtol, atol=1e-30)
    assert np.isfinite(dense).all()


def test_mvue_unbiased(kt):
    x = jnp.asarray([3.0, -1.0, 0.5, 0.0, 1e-3, 2.0, 2.0, -2.0], jnp.float32)
    n = 1 << 16
    dz = jnp.tile(x[:, None], (1, n))  # (8, N): two groups, N draws each
    vals, meta = jax.jit(kt.mvue.mvue_compress)(jax.random.key(1), dz)
    dense = np.asarray(s24.decompress_24(vals, meta)).reshape(n, 8)
    p = _p64(np.asarray(x).reshape(2, 4)).reshape(8)
    freq = (dense != 0).mean(0)
    nz = np.asarray(x) != 0
    np.testing.assert_array_less(np.abs(freq - p)[nz], 5 * np.sqrt(p * (1 - p) / n)[nz] + 1e-6)
    xs = np.asarray(x, np.float64)
    sd = np.sqrt(np.maximum(xs**2 / p - xs**2, 0) / n)
    np.testing.assert_array_less(np.abs(dense.mean(0) - xs), 5 * sd + 1e-6)
    # different keys, different draws
    _, meta2 = kt.mvue.mvue_compress(jax.random.key(2), dz)
    assert (np.asarray(meta2) != np.asarray(meta)).any()


# ---------------------------------------------------------------------------
def _tol(dtype):
    return {jnp.float32: 1e-4, jnp.float16: 2e-2, jnp.bfloat16: 8e-2}[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(20, 36, 52), (128, 256, 64), (3072, 768, 1024), (300, 260, 1000)])
def test_backend_products(kt, dtype, shape):
    """forward, input grad, weight grad (dense dZ and MVUE) vs backend 'xla'."""
    n, k, m = shape
    be = s24.get_backend("triton")
    ref = s24.get_backend("xla")
    be.check(n, k, dtype)
    w = _inputs("normal", (n, k), jnp.float32, seed=1)
    mask = s24.transposable_mask_24(w)
    w_s = jnp.where(mask, w, 0).astype(dtype)
    x = _inputs("normal", (m, k), dtype, seed=2)
    dz = _inputs("normal", (m, n), dtype, seed=3)
    for transposable in (True, False):
        w_op = jax.jit(be.prepare_weight, static_argnames="transposable")(w_s, transposable=transposable)
        r_op = ref.prepare_weight(w_s, transposable=transposable)
        z, zr = jax.jit(be.matmul_fwd)(x, w_op), ref.matmul_fwd(x, r_op)
        scale = float(jnp.abs(zr.astype(jnp.float32)).max()) + 1
        np.testing.assert_allclose(np.asarray(z, np.float32), np.asarray(zr, np.float32), atol=_tol(dtype) * scale, rtol=_tol(dtype))
        dx, dxr = jax.jit(be.matmul_dx)(dz, w_op), ref.matmul_dx(dz, r_op)
        scale = float(jnp.abs(dxr.astype(jnp.float32)).max()) + 1
        np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(dxr, np.float32), atol=_tol(dtype) * scale, rtol=_tol(dtype))
    dw = jax.jit(lambda d, x: be.matmul_dw(be.prune_grad(None, d), x))(dz, x)
    dwr = ref.matmul_dw(ref.prune_grad(None, dz), x)
    scale = float(jnp.abs(dwr).max()) + 1
    np.testing.assert_allclose(np.asarray(dw), np.asarray(dwr), atol=_tol(dtype) * scale, rtol=_tol(dtype))
    # MVUE weight grad: exact against the dense product of its own pruned dZ.T
    g = jax.jit(be.prune_grad)(jax.random.key(0), dz)
    dw = jax.jit(be.matmul_dw)(g, x)
    dzt_s = s24.decompress_24(g["vals"], g["meta"])
    dwr = jnp.dot(dzt_s, x.astype(dzt_s.dtype), preferred_element_type=jnp.float32)
    scale = float(jnp.abs(dwr).max()) + 1
    np.testing.assert_allclose(np.asarray(dw), np.asarray(dwr), atol=_tol(dtype) * scale, rtol=_tol(dtype))
    # transposable mask through the backend
    np.testing.assert_array_equal(
        np.asarray(be.transposable_mask(jnp.round(w * 2))), np.asarray(s24.transposable_mask_24(jnp.round(w * 2)))
    )


def _gemm_exact_case(shape, orient, dtype, seed, degenerate=False):
    """Integer-valued operands of one product (every float32 partial sum exact,
    so any summation order gives the twin's bits) and the twin's result
    ``decompress_24(v, m) @ B`` in float32, cast to the output dtype.
    ``degenerate``: also groups with fewer than two kept (their codes name
    padding positions, packing.py), as a pruned dZ.T with zeros has."""
    n_i, n_j, n_r = shape
    rng = np.random.default_rng(seed)
    a = jnp.asarray(rng.integers(-3, 4, size=(n_i, n_r)), dtype)
    mask = s24.mask_24(a) & (a != 0) if degenerate else s24.mask_24(a)
    av, am = s24.compress_24(a, mask)
    b = jnp.asarray(rng.integers(-3, 4, size=(n_r, n_j)), dtype)
    out_dtype = jnp.float32 if orient == "dW" else dtype
    ref = jnp.dot(s24.decompress_24(av, am).astype(jnp.float32), b.astype(jnp.float32),
                  precision="highest").astype(out_dtype)
    kw = dict(b_transposed=True, out_transposed=True) if orient != "dW" else dict(out_dtype=jnp.float32)
    bb = b.T if orient != "dW" else b
    return av, am, bb, kw, ref


@pytest.mark.parametrize("shape", [(512, 1024, 1024), (200, 300, 520)])
@pytest.mark.parametrize("orient", ["fwd", "dW"])
def test_gemm_exact_default_config(kt, shape, orient):
    """The bf16 GEMM in its default config, full tiles (the FFN path, no
    masks) and ragged edges, in the backend's two layouts: the same bits as
    the pure-JAX twin."""
    av, am, b, kw, ref = _gemm_exact_case(shape, orient, jnp.bfloat16, seed=11)
    got = jax.jit(lambda v, m, b: kt.matmul.sparse24_matmul(v, m, b, **kw))(av, am, b)
    want = ref.T if kw.get("out_transposed") else ref
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


# One config per kernel variant the sweep may pick (decompression WORDS 0/1/2,
# 4 or 8 warps, K tile 64 or 128): full tiles, then ragged edges with degenerate
# groups in the dW layout. Small shapes and few configs: each one is a compile.
# (The sweep checks every candidate against the twin before timing it.)
@pytest.mark.parametrize("cfg", [(128, 256, 64, 8, 3, 2), (64, 64, 32, 4, 2, 2), (64, 64, 32, 4, 2, 1),
                                 (64, 64, 32, 4, 2, 3)])
def test_gemm_exact_variants(kt, cfg):
    """The decompression variants (prmt words, select words, the interpreter's
    emulated prmt) give the twin's bits, in bfloat16 and float16."""
    for shape, orient, dtype, degenerate in (((256, 512, 512), "fwd", jnp.bfloat16, False),
                                             ((200, 300, 520), "dW", jnp.float16, True)):
        av, am, b, kw, ref = _gemm_exact_case(shape, orient, dtype, seed=12, degenerate=degenerate)
        got = jax.jit(lambda v, m, b, cfg=cfg: kt.matmul.sparse24_matmul(v, m, b, config=cfg, **kw))(av, am, b)
        want = ref.T if kw.get("out_transposed") else ref
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                      err_msg=f"{cfg} {orient} {dtype}")


def test_backend_fast_paths(kt):
    be = s24.get_backend("triton")
    w = _inputs("normal", (256, 512), jnp.float32)
    mask = s24.transposable_mask_24(w)
    assert s24.capabilities(be).prepare_projected
    fast = be.prepare_projected(w, mask, None, method="srste", dtype=jnp.bfloat16)
    slow = be.prepare_weight(jnp.where(mask, w, 0).astype(jnp.bfloat16), transposable=True)
    assert set(fast) == set(slow)
    for key in slow:
        np.testing.assert_array_equal(_bits(fast[key]), _bits(slow[key]))
    beta = s24.sste_scale(w)
    fast = be.prepare_projected(w, None, beta, method="sste", dtype=jnp.bfloat16)
    w_s = (beta * s24.soft_threshold_24(w)).astype(jnp.bfloat16)
    slow = be.prepare_weight(w_s, transposable=False)
    assert set(fast) == set(slow)
    np.testing.assert_array_equal(np.asarray(fast["w_meta"]), np.asarray(slow["w_meta"]))
    for key in ("w_vals", "w_dense"):
        np.testing.assert_array_equal(_bits(fast[key]), _bits(slow[key]))


@pytest.mark.parametrize("method", ["srste", "sste"])
def test_sparse24_linear_triton_vs_xla(kt, method):
    n, k, m = 256, 128, 96
    w = _inputs("normal", (n, k), jnp.float32, seed=5) * 0.1
    x = _inputs("normal", (2, m // 2, k), jnp.bfloat16, seed=6)
    mask = s24.transposable_mask_24(w) if method == "srste" else None
    beta = s24.sste_scale(w) if method == "sste" else None

    def loss(w, x, backend):
        z = s24.sparse24_linear(x, w, mask, beta, None, method=method, backend=backend, mvue=False)
        return jnp.sum(z.astype(jnp.float32) ** 2)

    for argnum in (0, 1):
        g = jax.jit(jax.grad(loss, argnum), static_argnums=2)(w, x, "triton")
        gr = jax.grad(loss, argnum)(w, x, "xla")
        scale = float(jnp.abs(gr.astype(jnp.float32)).max())
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(gr, np.float32), atol=0.03 * scale)
    # with MVUE: runs, finite, right shape
    key = jax.random.key(0)
    g = jax.jit(jax.grad(lambda w: jnp.sum(s24.sparse24_linear(x, w, mask, beta, key, method=method, backend="triton").astype(jnp.float32) ** 2)))(w)
    assert g.shape == w.shape and bool(jnp.isfinite(g).all())


def test_check_messages(kt):
    be = s24.get_backend("triton")
    with pytest.raises(ValueError, match="multiples of 4"):
        be.check(6, 8, jnp.bfloat16)
    with pytest.raises(ValueError, match="cast"):
        be.check(8, 8, jnp.int8)
    be.check(3072, 768, jnp.bfloat16)


# ---------------------------------------------------------------------------
# gated activations: forward and backward kernels against the reference
# (sparse24_jax.activations.gated_activation) and jax.vjp of it
GATED_TOL = {jnp.float32: 1e-4, jnp.float16: 2e-3, jnp.bfloat16: 1.6e-2}


def _gated_case(shape, dtype, seed=7):
    m, two_f = shape
    h = _inputs("normal", shape, dtype, seed=seed) * 3
    sat = jnp.asarray([0, 30, -30, 1e4], jnp.float32)[: min(4, two_f // 2)].astype(dtype)
    h = h.at[0, two_f // 2: two_f // 2 + sat.shape[0]].set(sat)  # saturated gates
    dy = _inputs("normal", (m, two_f // 2), dtype, seed=seed + 1)
    return h, dy


def _gated_ref(act, h, dy):
    yr, vjp = jax.vjp(lambda a: s24.gated_activation(a, act), h.astype(jnp.float32))
    return np.asarray(yr), np.asarray(vjp(dy.astype(jnp.float32))[0])


def _assert_gated_close(y, dh, yr, dhr, dtype):
    tol = GATED_TOL[dtype]
    y, dh = np.asarray(y, np.float32), np.asarray(dh, np.float32)
    assert np.isfinite(y).all() and np.isfinite(dh).all()  # every element written
    np.testing.assert_allclose(y, yr, rtol=tol, atol=tol)
    np.testing.assert_allclose(dh, dhr, rtol=tol, atol=tol * 10)
    assert np.linalg.norm(dh - dhr) <= tol * np.linalg.norm(dhr)


@pytest.mark.parametrize("act", ["geglu", "swiglu"])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(20, 48), (37, 90), (1000, 260), (257, 2002), (4096, 6144), (16384, 2 * 3072)])
def test_gated(kt, act, transposed, dtype, shape):
    """Odd sizes (F = 45, 1001; M = 37, 257: unaligned rows, ragged blocks),
    a ragged multi-block one, and FFN shapes (16-byte accesses)."""
    h, dy = _gated_case(shape, dtype)
    yr, dhr = _gated_ref(act, h, dy)
    hin = h.T if transposed else h
    f = jax.jit(lambda h: kt.gated.gated_act(h, act, transposed=transposed))
    y, vjp2 = jax.vjp(f, hin)
    (dh,) = vjp2(dy)
    dh = dh.T if transposed else dh
    assert y.dtype == dtype and dh.dtype == dtype
    _assert_gated_close(y, dh, yr, dhr, dtype)
    # the raw passes the backend hands out compute the same
    y2 = jax.jit(lambda h: kt.gated.gated_fwd(h, act, transposed=transposed))(hin)
    dh2 = jax.jit(lambda h, dy: kt.gated.gated_bwd(h, dy, act, transposed=transposed))(hin, dy)
    np.testing.assert_array_equal(_bits(y2), _bits(y))
    np.testing.assert_array_equal(_bits(dh2.T if transposed else dh2), _bits(dh))


@pytest.mark.parametrize("act", ["geglu", "swiglu"])
def test_gated_leading_dims(kt, act):
    h, dy = _gated_case((4 * 96, 2 * 200), jnp.bfloat16)
    yr, dhr = _gated_ref(act, h, dy)
    y, vjp = jax.vjp(jax.jit(lambda a: kt.gated.gated_act(a, act)), h.reshape(4, 96, 400))
    (dh,) = vjp(dy.reshape(4, 96, 200))
    assert y.shape == (4, 96, 200) and dh.shape == (4, 96, 400)
    _assert_gated_close(y.reshape(-1, 200), dh.reshape(-1, 400), yr, dhr, jnp.bfloat16)


def _n_triton_calls(fn, *args):
    return jax.jit(fn).lower(*args).as_text().count("triton_kernel_call")


@pytest.mark.parametrize("act", ["geglu", "swiglu"])
def test_gated_through_activations_gated(kt, act):
    """sparse24_jax.activations.gated with backend "triton": both passes are
    the fused kernels (two Triton calls in the compiled value-and-grad), and
    the result is the reference's; fused=False gives none."""
    from sparse24_jax import activations

    h, dy = _gated_case((2 * 512, 2 * 768), jnp.bfloat16, seed=3)
    h = h.reshape(2, 512, 1536)
    dy = dy.reshape(2, 512, 768)

    def fb(fused):
        def f(h, dy):
            y, vjp = jax.vjp(lambda a: activations.gated(a, act, backend="triton", fused=fused), h)
            return y, vjp(dy)[0]
        return f

    assert _n_triton_calls(fb(True), h, dy) == 2
    assert _n_triton_calls(fb(False), h, dy) == 0
    y, dh = jax.jit(fb(True))(h, dy)
    yr, dhr = _gated_ref(act, h.reshape(1024, 1536), dy.reshape(1024, 768))
    _assert_gated_close(y.reshape(1024, 768), dh.reshape(1024, 1536), yr, dhr, jnp.bfloat16)


@pytest.mark.parametrize("act", ["geglu", "swiglu"])
def test_gated_mlp_triton_matches_xla(kt, act):
    """SparseGatedMLP on the triton backend (2:4 GEMMs and the fused gated
    kernels) against the xla backend: same value and gradients up to bf16
    rounding; its compiled step holds the two gated kernels."""
    from flax import nnx

    from sparse24_jax import nnx as s24nnx

    x = jax.random.normal(jax.random.key(0), (4, 64, 256), jnp.bfloat16)

    def model(backend, fused=True):
        return s24nnx.SparseGatedMLP(256, 512, activation=act, backend=backend, mvue=False,
                                     dtype=jnp.bfloat16, fused_activation=fused, rngs=nnx.Rngs(0))

    def loss(m, x):
        return jnp.sum(m(x).astype(jnp.float32) ** 2)

    m_t, m_x = model("triton"), model("xla")
    v_t, g_t = nnx.value_and_grad(loss)(m_t, x)
    v_x, g_x = nnx.value_and_grad(loss)(m_x, x)
    np.testing.assert_allclose(float(v_t), float(v_x), rtol=2e-2)
    for name in ("gate_up", "proj"):
        a = np.asarray(g_t[name]["weight"][...], np.float32)
        b = np.asarray(g_x[name]["weight"][...], np.float32)
        assert np.linalg.norm(a - b) <= 3e-2 * np.linalg.norm(b), name

    def n_calls(m):
        graph, params, rest = nnx.split(m, nnx.Param, ...)
        step = lambda p, x: jax.grad(lambda p: loss(nnx.merge(graph, p, rest), x))(p)  # noqa: E731
        return _n_triton_calls(step, params, x)

    assert n_calls(m_t) - n_calls(model("triton", fused=False)) == 2
