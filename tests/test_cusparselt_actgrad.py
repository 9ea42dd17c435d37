"""CPU tests of the fused activation-backward + MVUE kernels of the cuSPARSELt
library (csrc/act_grad*.cu*), run by their host emulation: ``dz`` against the
pure-JAX twin ``sparse24_jax.ffn.activation_vjp``, the compressed buffer
against the MVUE kernel's own (``emulate_compress(dz, mode="mvue",
transpose=True)``) byte for byte, and the checks. The GPU checks are in
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
