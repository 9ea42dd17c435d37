"""CPU tests of the one-pass weight projection of the cuSPARSELt library
(``ops.project_compress``, csrc/project.cu), run by its host emulation: its
buffers must be byte for byte what the two-pass path writes (the XLA
projection + cast, then the compression kernels, themselves checked against
the numpy reference of the format), and ``CusparseltBackend.prepare_projected``
must hand back the operands of ``prepare_weight`` bit for bit. The real kernel
against the real two-pass path: tests/gpu/test_cusparselt.py.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from sparse24_jax_kernels.cusparselt import layout

from _cusparselt_host import host_ops
from _random24 import awkward_f32 as weights

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
SHAPES = [(64, 64), (64, 128), (128, 64), (192, 320), (256, 512), (512, 128)]


@pytest.fixture(scope="module")
def ops(cusparselt_host_ops):
    return cusparselt_host_ops


def numpy_soft(w, beta):
    """beta * soft_threshold_24(w) in numpy's float32: IEEE subnormals (XLA:CPU
    flushes them to zero, XLA:GPU and the kernel keep them)."""
    g = w.reshape(-1, 4)
    mag = np.abs(g)
    lo1, hi1 = np.minimum(mag[:, 0], mag[:, 1]), np.maximum(mag[:, 0], mag[:, 1])
    lo2, hi2 = np.minimum(mag[:, 2], mag[:, 3]), np.maximum(mag[:, 2], mag[:, 3])
    t = np.minimum(np.maximum(lo1, lo2), np.minimum(hi1, hi2))[:, None]
    return (np.float32(beta) * (np.sign(g) * np.maximum(mag - t, np.float32(0)))).reshape(w.shape)


def masks(w: np.ndarray, kind: str, seed: int) -> np.ndarray:
    import jax.numpy as jnp

    from sparse24_jax import transposable_mask_24

    mask = np.array(transposable_mask_24(jnp.asarray(w)))  # writable
    rng = np.random.default_rng(seed)
    if kind == "sparser":  # groups keeping one or none
        mask &= rng.random(mask.shape) > 0.3
    elif kind == "invalid":  # some groups keep 3 or 4 (top-2 of them, as compress); uint8 values
        grp = mask.reshape(-1, 4)
        pick = rng.random(grp.shape[0])
        grp[pick < 0.1] = True
        grp[(pick >= 0.1) & (pick < 0.2), :3] = True
        mask = mask.astype(np.uint8) * rng.integers(1, 255, mask.shape, dtype=np.uint8)
    return mask


def reference(w, mask=None, beta=None, *, dtype):
    """The two-pass path's W_s: sparse24_jax's projection (on XLA), cast."""
    import jax.numpy as jnp

    from sparse24_jax import project_weight

    if mask is not None:
        w_s, _ = project_weight(jnp.asarray(w), jnp.asarray(mask).astype(bool), method="srste")
    else:
        w_s, _ = project_weight(jnp.asarray(w), beta=jnp.asarray(beta), method="sste")
    return np.asarray(w_s.astype(dtype))


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
@pytest.mark.parametrize("kind", ["transposable", "sparser", "invalid"])
@pytest.mark.parametrize("n,k", SHAPES)
def test_mask_mode_is_the_two_pass_bytes(ops, n, k, dtype, kind):
    seed = 31 * n + k
    w = weights(seed, n, k)
    mask = masks(w, kind, seed)
    w_s = reference(w, mask, dtype=dtype)
    buf, buf_t = ops.emulate_project_compress(w, mask, dtype=dtype, transpose_too=True)
    assert np.array_equal(buf, ops.emulate_compress(w_s)), "W_s"
    assert np.array_equal(buf_t, ops.emulate_compress(np.ascontiguousarray(w_s.T))), "W_s^T"
    if kind != "invalid":  # the numpy reference of the format, strict about 2:4
        assert np.array_equal(buf, layout.compress(w_s))
        assert np.array_equal(buf_t, layout.compress(np.ascontiguousarray(w_s.T)))
    alone, none = ops.emulate_project_compress(w, mask, dtype=dtype, transpose_too=False)
    assert none is None and np.array_equal(alone, buf)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
@pytest.mark.parametrize("beta", [1.0, 0.7310586, -2.5])
@pytest.mark.parametrize("n,k", SHAPES)
def test_soft_mode_is_the_reference(ops, n, k, dtype, beta):
    w = weights(7 * n + k, n, k)
    w_s = reference(w, beta=np.float32(beta), dtype=dtype)
    buf, dense = ops.emulate_project_compress(w, beta=np.float32(beta), dtype=dtype, transpose_too=False)
    assert dense.dtype == dtype and dense.shape == (n, k)
    # bit for bit, signed zeros included
    np.testing.assert_array_equal(dense.view(np.uint16), w_s.view(np.uint16))
    assert np.array_equal(buf, ops.emulate_compress(w_s))
    assert np.array_equal(buf, layout.compress(w_s))


def test_soft_mode_signed_zeros_by_hand(ops):
    """Groups whose soft threshold leaves -0 where compress stores a canonical
    zero (one non-zero: positions (i, 3) or (2, 3)), and a -0 input."""
    w = np.zeros((64, 64), np.float32)
    w[0, :4] = [5.0, -1.0, -1.0, -1.0]  # t = 1: (4, -0, -0, -0): kept pair (0, 3), -0 stored
    w[1, :4] = [-1.0, -1.0, -1.0, 3.0]  # (-0, -0, -0, 2): pair (2, 3) = (-0, 2)
    w[2, :4] = [-0.0, 0.0, -0.0, -0.0]
    w[3, :4] = [2.0, -2.0, 2.0, -2.0]  # t = 2: all zeros, signs kept
    w_s = reference(w, beta=np.float32(1.0), dtype=BF16)
    assert w_s.view(np.uint16)[0, 3] == 0x8000 and w_s.view(np.uint16)[3, 1] == 0x8000
    buf, dense = ops.emulate_project_compress(w, beta=np.float32(1.0), dtype=BF16, transpose_too=False)
    np.testing.assert_array_equal(dense.view(np.uint16), w_s.view(np.uint16))
    assert np.array_equal(buf, ops.emulate_compress(w_s))
    vals = buf[: 64 * 32 * 2].view(np.uint16).reshape(64, 32)
    assert list(vals[0, :2]) == [0x4080, 0x8000] and list(vals[1, :2]) == [0x8000, 0x4000]


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
def test_subnormal_weights_are_ieee(ops, dtype):
    """Float32 subnormals are numbers (as on XLA:GPU, which does not flush
    them; XLA:CPU does, so the other tests keep away from them): checked
    against numpy, which rounds them to nearest even too."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    w.reshape(-1, 4)[::3] *= np.float32(1e-39)  # float32 subnormals
    w.view(np.uint32).reshape(-1, 4)[1::3, :2] = [0x00008000, 0x80018000]  # bf16 halfway ties
    mask = masks(w, "sparser", 11)
    w_s = np.where(mask, w, np.float32(0)).astype(dtype)
    buf, buf_t = ops.emulate_project_compress(w, mask, dtype=dtype, transpose_too=True)
    assert np.array_equal(buf, ops.emulate_compress(w_s))
    assert np.array_equal(buf_t, ops.emulate_compress(np.ascontiguousarray(w_s.T)))
    w_s = numpy_soft(w, 0.9).astype(dtype)
    buf, dense = ops.emulate_project_compress(w, beta=np.float32(0.9), dtype=dtype, transpose_too=False)
    np.testing.assert_array_equal(dense.view(np.uint16), w_s.view(np.uint16))
    assert np.array_equal(buf, ops.emulate_compress(w_s))


def test_project_errors(ops):
    import jax.numpy as jnp

    w = np.zeros((64, 128), np.float32)
    mask = np.ones((64, 128), bool)
    with pytest.raises(ValueError, match="float32 master weight.*bfloat16"):
        ops.project_compress(jnp.zeros((64, 128), jnp.bfloat16), mask, dtype=jnp.bfloat16, transpose_too=True)
    with pytest.raises(ValueError, match=r"multiples of 64, got \(64, 96\): pad"):
        ops.project_compress(np.zeros((64, 96), np.float32), np.ones((64, 96), bool), dtype=jnp.bfloat16,
                             transpose_too=True)
    with pytest.raises(ValueError, match="not float8_e4m3fn: for fp8, project the weight and call compress"):
        ops.project_compress(w, mask, dtype=jnp.float8_e4m3fn, transpose_too=True)
    with pytest.raises(ValueError, match="exactly one"):
        ops.project_compress(w, mask, np.float32(1), dtype=jnp.bfloat16, transpose_too=False)
    with pytest.raises(ValueError, match="exactly one"):
        ops.project_compress(w, dtype=jnp.bfloat16, transpose_too=False)
    with pytest.raises(ValueError, match="W_s\\^T is not 2:4.*transpose_too=False"):
        ops.project_compress(w, beta=np.float32(1), dtype=jnp.bfloat16, transpose_too=True)
    with pytest.raises(ValueError, match=r"mask must be bool with the weight's shape \(64, 128\)"):
        ops.project_compress(w, mask.T, dtype=jnp.bfloat16, transpose_too=True)
    with pytest.raises(ValueError, match="beta must be a scalar"):
        ops.project_compress(w, beta=np.ones(2, np.float32), dtype=jnp.bfloat16, transpose_too=False)
    # the emulation checks the same, and the library's entry point refuses what the kernel does not take
    with pytest.raises(ValueError, match="multiples of 64"):
        ops.emulate_project_compress(np.zeros((32, 64), np.float32), np.ones((32, 64), bool),
                                     dtype=BF16, transpose_too=False)
    lib = ops.load_library()
    assert lib.s24_emulate_project(0, 0, None, None, None, None, 96, 64) == -1
    assert lib.s24_emulate_project(0, 2, None, None, None, None, 64, 64) == -1  # fp8
    assert lib.s24_emulate_project(1, 0, None, None, None, None, 64, 64) == -1  # soft without dense


def test_lowering_for_cuda(ops):
    import jax
    import jax.numpy as jnp
    from jax import export

    checks = [export.DisabledSafetyCheck.custom_call(t) for t in ops.TARGETS]
    w = jnp.zeros((128, 64), jnp.float32)

    def text(f, *args):
        return export.export(jax.jit(f), platforms=["cuda"], disabled_checks=checks)(*args).mlir_module()

    t = text(lambda w, m: ops.project_compress(w, m, dtype=jnp.bfloat16, transpose_too=True),
             w, jnp.ones(w.shape, bool))
    call = [ln for ln in t.splitlines() if "custom_call @sparse24_cusparselt_project_compress" in ln]
    assert len(call) == 1 and "mode = 0 : i64" in call[0] and "dtype = 0 : i64" in call[0]
    assert f"tensor<{layout.compressed_nbytes(128, 64, BF16)}xui8>, tensor<{layout.compressed_nbytes(64, 128, BF16)}xui8>" in t
    t = text(lambda w, b: ops.project_compress(w, beta=b, dtype=jnp.float16, transpose_too=False),
             w, jnp.float32(1.0))
    call = [ln for ln in t.splitlines() if "custom_call @sparse24_cusparselt_project_compress" in ln]
    assert len(call) == 1 and "mode = 1 : i64" in call[0] and "dtype = 1 : i64" in call[0]
    assert "tensor<128x64xf16>" in call[0]


# ---------------------------------------------------------------------------
# the backend: prepare_projected == prepare_weight(project_weight(...)), bit for bit
# ---------------------------------------------------------------------------


def _leaves_equal(a, b):
    import jax

    la, lb = jax.tree_util.tree_flatten(a), jax.tree_util.tree_flatten(b)
    assert la[1] == lb[1], (la[1], lb[1])  # same structure and meta (n, k, dtype)
    for x, y in zip(la[0], lb[0]):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("method", ["srste", "ste", "sste"])
def test_prepare_projected_is_prepare_weight(ops, monkeypatch, method, dtype):
    import jax
    import jax.numpy as jnp

    import sparse24_jax as s24
    from sparse24_jax_kernels.cusparselt import backend as cb

    host_ops(monkeypatch, ops)
    calls = []
    one_pass = ops.project_compress
    monkeypatch.setattr(ops, "project_compress", lambda *a, **kw: calls.append(1) or one_pass(*a, **kw))
    be = cb.CusparseltBackend()
    assert s24.capabilities(be).prepare_projected
    w = jnp.asarray(weights(3, 192, 128))
    mask = s24.transposable_mask_24(w) if method != "sste" else None
    beta = s24.sste_scale(w) if method == "sste" else None
    fast = jax.jit(lambda w: be.prepare_projected(w, mask, beta, method=method, dtype=dtype))(w)
    assert calls, "the one-pass kernel ran"
    w_s, transposable = s24.project_weight(w, mask, beta, method=method)
    slow = be.prepare_weight(w_s.astype(dtype), transposable=transposable)
    assert (fast.wt is None) == (method == "sste") and (fast.dense is None) == (method != "sste")
    _leaves_equal(fast, slow)


@pytest.mark.parametrize("case", ["bf16 master", "dense"])
def test_prepare_projected_falls_back_to_two_passes(ops, monkeypatch, case):
    import jax.numpy as jnp

    import sparse24_jax as s24
    from sparse24_jax_kernels.cusparselt import backend as cb

    host_ops(monkeypatch, ops)
    monkeypatch.setattr(ops, "project_compress", lambda *a, **kw: pytest.fail("one-pass kernel called"))
    be = cb.CusparseltBackend()
    w = jnp.asarray(weights(5, 64, 128))
    method = "dense" if case == "dense" else "srste"
    mask = s24.transposable_mask_24(w)
    if case == "bf16 master":
        w = w.astype(jnp.bfloat16)
    fast = be.prepare_projected(w, mask, None, method=method, dtype=jnp.bfloat16)
    w_s, transposable = s24.project_weight(w, mask, method=method)
    _leaves_equal(fast, be.prepare_weight(w_s.astype(jnp.bfloat16), transposable=transposable))
    with pytest.raises(ValueError, match="multiple of 64"):
        be.prepare_projected(jnp.zeros((64, 96), jnp.float32), jnp.ones((64, 96), bool), None,
                             method="srste", dtype=jnp.bfloat16)


@pytest.mark.parametrize("method", ["srste", "sste"])
def test_linear_prepares_in_one_pass(monkeypatch, method):
    """sparse24_linear on the cusparselt backend: the weight's operands come
    from one project_compress call (no compress of W_s, no XLA cast of W)."""
    import jax
    import jax.numpy as jnp
    from jax import export

    import sparse24_jax as s24
    from sparse24_jax_kernels.cusparselt import backend as cb
    from sparse24_jax_kernels.cusparselt import ops

    monkeypatch.setattr(ops, "load", lambda: None)
    be = cb.CusparseltBackend()
    w = jax.random.normal(jax.random.key(0), (128, 64), jnp.float32)
    mask = s24.transposable_mask_24(w) if method == "srste" else None
    beta = s24.sste_scale(w) if method == "sste" else None
    x = jax.random.normal(jax.random.key(1), (64, 64), jnp.bfloat16)

    def loss(x, w):
        z = s24.sparse24_linear(x, w, mask, beta, key=jax.random.key(2), method=method, backend=be)
        return jnp.sum(z.astype(jnp.float32) ** 2)

    checks = [export.DisabledSafetyCheck.custom_call(t) for t in ops.TARGETS]
    text = export.export(jax.jit(jax.grad(loss, argnums=(0, 1))), platforms=["cuda"],
                         disabled_checks=checks)(x, w).mlir_module()
    names = sorted(ln.split("@")[1].split("(")[0] for ln in text.splitlines()
                   if "custom_call @sparse24_cusparselt" in ln)
    spmm = 3 if method == "srste" else 2  # S-STE's input gradient is a dense dot
    assert names == sorted(["sparse24_cusparselt_project_compress", "sparse24_cusparselt_mvue_compress"]
                           + ["sparse24_cusparselt_spmm"] * spmm)
