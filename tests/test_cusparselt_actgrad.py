"""CPU tests of the fused activation-backward + MVUE kernels of the cuSPARSELt
library (csrc/act_grad*.cu*), run by their host emulation: ``dz`` against the
pure-JAX twin ``sparse24_jax.ffn.activation_vjp``, the compressed buffer
against the MVUE kernel's own (``emulate_compress(dz, mode="mvue",
transpose=True)``) byte for byte, the checks, the backend's wiring into the
FFN block, and the lowering for CUDA. The GPU checks are in
tests/gpu/test_cusparselt.py.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from sparse24_jax_kernels.cusparselt import layout

from _act_grad import assert_close_to_twin

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)


@pytest.fixture(scope="module")
def ops(cusparselt_host_ops):
    return cusparselt_host_ops


def inputs(kind, tokens, feat, dtype, seed=0):
    """da (tokens, feat) with zero rows and zero elements, z (tokens, feat or 2 feat)."""
    rng = np.random.default_rng(seed)
    zc = 2 * feat if kind == "swiglu" else feat
    z = (rng.standard_normal((tokens, zc)) * 1.5).astype(dtype)
    da = (rng.standard_normal((tokens, feat)) * np.exp(rng.standard_normal((tokens, feat)))).astype(dtype)
    da[3] = 0  # a zero row (as the backend's token padding)
    da[-5:] = 0
    da[:, 7] = 0  # a zero feature: all-zero groups, kept zeros at canonical positions
    da[8:11, 1] = 0  # one non-zero in a group
    return da, z


def twin(kind, da, z):
    import jax.numpy as jnp

    from sparse24_jax.ffn import activation_vjp

    return np.asarray(activation_vjp(kind, jnp.asarray(z), jnp.asarray(da)))


# tokens x features (F for swiglu: z is 2F wide): one tile, non-square, a
# partial group tile (320 tokens: 80 groups, the second tile of 16), several
# feature tiles
SHAPES = [(64, 64), (128, 192), (320, 128), (256, 512), (192, 64)]


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
@pytest.mark.parametrize("kind", ["gelu", "swiglu"])
@pytest.mark.parametrize("tokens,feat", SHAPES)
def test_dz_is_the_twin_and_buffer_is_mvue_of_dz(ops, kind, dtype, tokens, feat):
    da, z = inputs(kind, tokens, feat, dtype, seed=tokens + feat)
    dz, buf = ops.emulate_act_grad_mvue(kind, da, z, seed=(5, 6))
    assert dz.shape == z.shape and dz.dtype == z.dtype
    assert_close_to_twin(kind, dz, twin(kind, da, z), da, z, min_equal=0.99 if kind == "gelu" else 0.999)
    # zero dA rows give zero dZ rows
    assert np.all(dz[3].astype(np.float32) == 0) and np.all(dz[-5:].astype(np.float32) == 0)
    # the compressed buffer: the MVUE kernel's of the dZ written, byte for byte
    assert np.array_equal(buf, ops.emulate_compress(dz, mode="mvue", transpose=True, seed=(5, 6)))
    assert not np.array_equal(buf, ops.emulate_act_grad_mvue(kind, da, z, seed=(5, 7))[1])


def test_swiglu_large_tile_set(ops):
    """Several feature tiles of both halves (F = 192: three blocks along y, the
    gate tiles at metadata rows 3..5) and a partial group tile."""
    da, z = inputs("swiglu", 320, 192, BF16, seed=3)
    dz, buf = ops.emulate_act_grad_mvue("swiglu", da, z, seed=(1, 2))
    assert_close_to_twin("swiglu", dz, twin("swiglu", da, z), da, z, min_equal=0.999)
    assert np.array_equal(buf, ops.emulate_compress(dz, mode="mvue", transpose=True, seed=(1, 2)))


def test_gelu_tail_and_specials(ops):
    """z over the whole bf16 range of interest (the erf tails, the clamp at
    |z| = 4 sqrt 2, the root of gelu' near -0.75, exp underflow past |z| = 13).
    A third of this sweep is tail (|z| > 5), where the twin's 1 + erf cancels:
    fewer elements are equal than for activations, all within the bound."""
    z = np.linspace(-16, 16, 64 * 128).reshape(64, 128).astype(BF16)
    da = np.ones_like(z)
    dz, buf = ops.emulate_act_grad_mvue("gelu", da, z)
    assert_close_to_twin("gelu", dz, twin("gelu", da, z), da, z, min_equal=0.9)
    assert np.array_equal(buf, ops.emulate_compress(dz, mode="mvue", transpose=True))


def test_checks_name_the_fix(ops):
    da, z = inputs("gelu", 64, 64, BF16)
    with pytest.raises(ValueError, match="kinds are gelu, swiglu.*fused=False"):
        ops.act_grad_shape("geglu", da, z)
    with pytest.raises(ValueError, match="bfloat16 or both float16"):
        ops.act_grad_shape("gelu", da.astype(F16), z)
    with pytest.raises(ValueError, match="bfloat16 or both float16"):
        ops.act_grad_shape("gelu", da.astype(np.float32), z.astype(np.float32))
    with pytest.raises(ValueError, match=r"da and z are \(M, H\)"):
        ops.act_grad_shape("gelu", da[:, :32], z)
    with pytest.raises(ValueError, match=r"\(M, 2F\) and da \(M, F\)"):
        ops.act_grad_shape("swiglu", da, z)
    with pytest.raises(ValueError, match="not a multiple of 64: pad them"):
        ops.act_grad_shape("gelu", da[:32], z[:32])
    with pytest.raises(ValueError, match="H = 96 is not a multiple of 64"):
        ops.act_grad_shape("gelu", np.zeros((64, 96), BF16), np.zeros((64, 96), BF16))
    with pytest.raises(ValueError, match=r"F \(each half of z\) = 32"):
        ops.act_grad_shape("swiglu", np.zeros((64, 32), BF16), np.zeros((64, 64), BF16))
    with pytest.raises(ValueError, match="2-D"):
        ops.act_grad_shape("gelu", da[None], z[None])
    assert ops.act_grad_shape("swiglu", np.zeros((128, 64), F16), np.zeros((128, 128), F16)) == (128, 128)
    # the library's own check (the same rule) on the emulation's entry point
    lib = ops.load_library()
    assert lib.s24_emulate_act_grad_mvue(0, 0, None, None, None, None, None, 32, 64) == -1
    assert lib.s24_emulate_act_grad_mvue(1, 0, None, None, None, None, None, 64, 64) == -1
    assert lib.s24_emulate_act_grad_mvue(0, 2, None, None, None, None, None, 64, 64) == -1


# ---------------------------------------------------------------------------
# the backend and the FFN block, with the FFI calls replaced by host callbacks
# ---------------------------------------------------------------------------


def _host_act_grad(monkeypatch, ops_mod):
    """The compression / matmul calls by host stand-ins (_cusparselt_host.host_ops),
    plus the fused kernel by its emulation."""
    import jax
    import jax.numpy as jnp
    from _cusparselt_host import host_ops

    host_ops(monkeypatch, ops_mod)
    calls = []

    def act_grad_mvue_compress(kind, da, z, key_or_seed):
        m, cols = ops_mod.act_grad_shape(kind, da, z)
        calls.append((kind, tuple(z.shape)))
        seed = ops_mod.seed_from_key(key_or_seed)
        outs = (jax.ShapeDtypeStruct(z.shape, z.dtype),
                jax.ShapeDtypeStruct((layout.compressed_nbytes(cols, m, z.dtype),), jnp.uint8))
        return jax.pure_callback(
            lambda s, d, zz: ops_mod.emulate_act_grad_mvue(kind, np.asarray(d), np.asarray(zz), seed=np.asarray(s)),
            outs, seed, da, z)

    monkeypatch.setattr(ops_mod, "act_grad_mvue_compress", act_grad_mvue_compress)
    return calls


@pytest.mark.parametrize("kind", ["gelu", "swiglu"])
def test_backend_activation_grad_prune(ops, monkeypatch, kind):
    """Tokens padded to 64 and cut back; the CompressedGrad is prune_grad's
    for the dZ the kernel wrote (so matmul_dw takes it unchanged)."""
    import jax
    import jax.numpy as jnp

    from sparse24_jax_kernels.cusparselt import backend as cb

    calls = _host_act_grad(monkeypatch, ops)
    be = cb.CusparseltBackend()
    assert be.activation_grad_prune_kinds() == ("gelu", "swiglu")
    m, f = 100, 128
    h = 2 * f if kind == "swiglu" else f
    z = jax.random.normal(jax.random.key(0), (m, h), jnp.bfloat16)
    da = jax.random.normal(jax.random.key(1), (m, f), jnp.bfloat16)
    key = jax.random.key(2)
    dz, g = be.activation_grad_prune(kind, da, z, key)
    assert calls == [(kind, (128, h))]
    assert dz.shape == (m, h) and dz.dtype == jnp.bfloat16
    assert (g.n, g.mp, g.dtype, g.dense) == (h, 128, "bfloat16", None)
    ref = be.prune_grad(key, dz)
    np.testing.assert_array_equal(np.asarray(g.buf), np.asarray(ref.buf))
    assert_close_to_twin(kind, np.asarray(dz), twin(kind, np.asarray(da), np.asarray(z)),
                         np.asarray(da), np.asarray(z), min_equal=0.99)
    # a shape the kernel does not take (F = 96): the same contract, unfused
    if kind == "swiglu":
        calls.clear()
        dz2, g2 = be.activation_grad_prune(kind, da[:, :96], z[:, :192], key)
        assert calls == [] and g2.n == 192 and g2.mp == 128
        np.testing.assert_array_equal(np.asarray(g2.buf), np.asarray(be.prune_grad(key, dz2).buf))


@pytest.mark.parametrize("kind", ["gelu", "swiglu"])
def test_ffn_block_fused_matches_unfused(ops, monkeypatch, kind):
    """sparse24_ffn on the cusparselt backend (host stand-ins) with the fused
    kernel against fused=False: the same gradients up to the MVUE draws that
    dZ's rounding moves. swiglu's unfused dZ is rounded once too (equal here);
    GELU's comes from autodiff in bf16 (several roundings): a few groups draw
    differently, moving a few of dW1's entries by up to ~13% of its largest
    (8 key pairs, 2026-11-30: at most 0.5% of the entries past the 5% tolerance,
    under both the MVUE's old and its new random stream)."""
    import jax
    import jax.numpy as jnp

    import sparse24_jax as s24
    from sparse24_jax.ffn import Sparse24Weight, sparse24_ffn
    from sparse24_jax_kernels.cusparselt import backend as cb

    calls = _host_act_grad(monkeypatch, ops)
    be = cb.CusparseltBackend()
    d, f, m = 64, 128, 200
    h = 2 * f if kind == "swiglu" else f
    w1 = jax.random.normal(jax.random.key(0), (h, d)) * 0.2
    w2 = jax.random.normal(jax.random.key(1), (d, f)) * 0.2
    fc = Sparse24Weight(w1, s24.transposable_mask_24(w1))
    proj = Sparse24Weight(w2, s24.transposable_mask_24(w2))
    x = jax.random.normal(jax.random.key(3), (m, d), jnp.bfloat16)
    keys = (jax.random.key(4), jax.random.key(5))

    def grads(fused):
        def loss(x, w1, w2):
            y = sparse24_ffn(x, fc._replace(w=w1), proj._replace(w=w2), activation=kind, keys=keys,
                             backend=be, fused=fused)
            return jnp.mean(y.astype(jnp.float32) ** 2 + y.astype(jnp.float32))

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, w1, w2)

    got = grads(True)
    assert calls == [(kind, (256, h))]  # padded from 200 tokens
    ref = grads(False)
    for g, r in zip(got, ref):
        g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
        scale = np.abs(r).max()
        if kind == "swiglu":
            np.testing.assert_allclose(g, r, atol=5e-2 * scale, rtol=5e-2)
        else:  # a few redrawn groups: few entries off, none far off
            off = np.abs(g - r) > 5e-2 * scale + 5e-2 * np.abs(r)
            assert off.mean() <= 0.01, off.mean()
            assert np.abs(g - r).max() <= 0.25 * scale


def test_lowering_for_cuda(monkeypatch):
    """The FFN block's backward on cusparselt lowers to one fused call (and one
    MVUE call, for dY); the fused call's outputs are dZ and the buffer."""
    import jax
    import jax.numpy as jnp
    from jax import export

    import sparse24_jax as s24
    from sparse24_jax.ffn import Sparse24Weight, sparse24_ffn
    from sparse24_jax_kernels.cusparselt import backend as cb
    from sparse24_jax_kernels.cusparselt import ops

    monkeypatch.setattr(ops, "load", lambda: None)
    be = cb.CusparseltBackend()
    d, f, m = 64, 128, 96
    w1 = jax.random.normal(jax.random.key(0), (2 * f, d))
    w2 = jax.random.normal(jax.random.key(1), (d, f))
    fc = Sparse24Weight(w1, s24.transposable_mask_24(w1))
    proj = Sparse24Weight(w2, s24.transposable_mask_24(w2))
    x = jax.random.normal(jax.random.key(3), (m, d), jnp.bfloat16)

    def loss(x, w1, w2, k1, k2):
        y = sparse24_ffn(x, fc._replace(w=w1), proj._replace(w=w2), activation="swiglu", keys=(k1, k2),
                         backend=be)
        return jnp.sum(y.astype(jnp.float32) ** 2)

    checks = [export.DisabledSafetyCheck.custom_call(t) for t in ops.TARGETS]
    f_ = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    text = export.export(f_, platforms=["cuda"], disabled_checks=checks)(
        x, w1, w2, jax.random.key(4), jax.random.key(5)).mlir_module()
    calls = [ln for ln in text.splitlines() if "custom_call @sparse24_cusparselt" in ln]
    names = sorted(ln.split("@")[1].split("(")[0] for ln in calls)
    assert names.count("sparse24_cusparselt_act_grad_mvue") == 1
    assert names.count("sparse24_cusparselt_mvue_compress") == 1
    fused = next(ln for ln in calls if "act_grad_mvue" in ln)
    nbytes = layout.compressed_nbytes(2 * f, 128, BF16)  # 96 tokens padded to 128
    assert f"tensor<128x{2 * f}xbf16>, tensor<{nbytes}xui8>" in fused and "kind = 1 : i64" in fused
