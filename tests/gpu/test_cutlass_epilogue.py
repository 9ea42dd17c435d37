"""GPU tests of the CUTLASS fused-epilogue sparse GEMMs (kernels/cutlass
README "Fused epilogues"; need an H100/H200 and the library with its fused
instances, $SPARSE24_CUTLASS_KERNELS or built here).

fwd_gelu: (H, G) = (gelu(Z), gelu'(Z)), Z = X @ W_s^T + b; dx_dgelu: dZ1 =
(dY @ W_s) * G1 with G1 = gelu'(Z1) the forward's G. Each against its float32
XLA twin (exact-erf GELU and its derivative on the float32 accumulator) at
GPT-2 774M / 1558M FFN shapes and small ones, the twins against jax.grad /
sparse24_jax.ffn.activation_vjp, H and G against gelu and gelu' of the plain
fwd GEMM of the same config, a chained fc1 -> fc2-backward use under jit, and
the errors for bad input.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

jax = pytest.importorskip("jax")
jnp = jax.numpy

from _random24 import random_24  # noqa: E402


@pytest.fixture(scope="module")
def epi():
    from sparse24_jax_kernels.cutlass import epilogue_ops

    epilogue_ops.load_epilogues()  # on a GPU machine this must work: no skip
    return epilogue_ops


@pytest.fixture(scope="module")
def ops():
    from sparse24_jax_kernels.cutlass import ops

    return ops


def as_np(a):
    return np.asarray(jax.device_get(a)).astype(np.float32)


def bf16(rng, *shape, scale=1.0):
    return jnp.asarray((scale * rng.standard_normal(shape)).astype(np.float32)).astype(jnp.bfloat16)


def sparse_operand(rng, rows, cols, scale=1.0):
    a = random_24(rng, rows, cols, np.float32, zero_frac=0.1) * np.float32(scale)
    return jnp.asarray(a).astype(jnp.bfloat16)


def check_close(what, out, ref):
    """bf16 outputs: one rounding of a float32 value whose sum order differs."""
    out, ref = as_np(out), as_np(ref)
    assert out.shape == ref.shape, what
    scale = float(np.sqrt(np.mean(ref**2))) + 1e-30
    try:
        np.testing.assert_allclose(out, ref, rtol=1.6e-2, atol=1e-2 * scale)
    except AssertionError as err:
        raise AssertionError(f"{what}: {err}") from None


def configs(epi):
    return epi.epilogue_configs()


def plain_config(config: str) -> str:
    """The plain GEMM's config of a fused one: itself, or a shaped epilogue's (build.Config.epi_*)
    name without the shape suffix."""
    from sparse24_jax_kernels.cutlass.build import CONFIGS

    return CONFIGS[config].plain_config if config in CONFIGS else config


def test_the_fused_instances_are_built(epi):
    from sparse24_jax_kernels.cutlass.build import epilogues_of, selected_configs

    built = {(i["config"], i["epilogue"]) for i in epi.epilogue_instances()}
    want = {(c.name, e) for c in selected_configs() for e in epilogues_of(c.name)}
    assert want and want <= built, f"missing fused instances: {sorted(want - built)}"


def test_the_twins_are_jax_grad_of_exact_gelu(epi):
    """The XLA twins themselves: gelu is jax.nn.gelu(approximate=False), its
    derivative what jax.grad and the FFN block's activation_vjp give."""
    from sparse24_jax.ffn import activation_vjp

    z = jnp.linspace(-8.0, 8.0, 4096, dtype=jnp.float32).reshape(64, 64).astype(jnp.bfloat16)
    eye = jnp.eye(64, dtype=jnp.bfloat16)
    ones = jnp.ones((64, 64), jnp.bfloat16)
    h, gg = epi.reference_fwd_gelu(eye, z)
    np.testing.assert_allclose(as_np(h), as_np(jax.nn.gelu(z.astype(jnp.float32),
                                                           approximate=False)),
                               rtol=8e-3, atol=1e-6)
    g = jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=False)))(
        z.astype(jnp.float32).ravel()).reshape(64, 64)
    np.testing.assert_allclose(as_np(gg), as_np(g), rtol=8e-3, atol=1e-6)
    d = epi.reference_dx_dgelu(eye, ones, gg)
    np.testing.assert_array_equal(as_np(d), as_np(gg))
    np.testing.assert_allclose(as_np(d), as_np(activation_vjp("gelu", z, ones)), rtol=8e-3,
                               atol=1e-6)


# (N, K, M): fc1 of GPT-2 774M and 1.5B (2:4 axis 1600: CUTLASS's residue path), small ones
FWD_SHAPES = [(5120, 1280, 2048), (6400, 1600, 512), (128, 256, 64), (192, 320, 48)]


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("n,k,m", FWD_SHAPES)
def test_fwd_gelu_matches_reference(epi, ops, n, k, m, with_bias):
    rng = np.random.default_rng(n + k + m + with_bias)
    w = sparse_operand(rng, n, k, scale=1.0 / np.sqrt(k / 4))  # Z ~ unit scale: GELU's bend
    x = bf16(rng, m, k, scale=2.0)
    bias = bf16(rng, n, scale=0.5) if with_bias else None
    vals, meta = ops.compress(w)
    h_ref, g_ref = epi.reference_fwd_gelu(w, x, bias)
    for config in configs(epi):
        h, g = epi.spmm_fwd_gelu(vals, meta, x, bias, config=config)
        assert h.shape == g.shape == (m, n) and h.dtype == g.dtype == jnp.bfloat16
        check_close(f"{config} G", g, g_ref)
        check_close(f"{config} H", h, h_ref)
        plain = plain_config(config)
        if not with_bias and plain in ops.configs():
            # same mainloop: H and G are gelu and gelu' of the plain fwd GEMM's accumulator,
            # within what rounding that GEMM's Z to bf16 moves them
            z = ops.spmm("fwd", vals, meta, x, config=plain).astype(jnp.float32)
            check_close(f"{config} H vs gelu(plain Z)", h, jax.nn.gelu(z, approximate=False))
            check_close(f"{config} G vs gelu'(plain Z)", g, epi.reference_gelu_grad(z))


# (K, N, M): the dx of fc2 (W2 (d, h): W2_s^T (h, d), 2:4 on d) for GPT-2 774M / 1.5B, small ones
DX_SHAPES = [(5120, 1280, 2048), (6400, 1600, 512), (128, 256, 64), (320, 192, 48)]


@pytest.mark.parametrize("kk,n,m", DX_SHAPES)
def test_dx_dgelu_matches_reference(epi, ops, kk, n, m):
    rng = np.random.default_rng(kk + n + m)
    wt = sparse_operand(rng, kk, n, scale=1.0 / np.sqrt(n / 4))  # W_s^T (K, N)
    dy = bf16(rng, m, n)
    z1 = bf16(rng, m, kk, scale=2.5)  # the whole bend of gelu', its tails too
    g1 = epi.reference_gelu_grad(z1).astype(jnp.bfloat16)
    vals, meta = ops.compress(wt)
    ref = epi.reference_dx_dgelu(wt, dy, g1)
    for config in configs(epi):
        out = epi.spmm_dx_dgelu(vals, meta, dy, g1, config=config)
        assert out.shape == (m, kk) and out.dtype == jnp.bfloat16
        check_close(f"{config} dZ1", out, ref)
        plain = plain_config(config)
        if plain in ops.configs():
            # the unfused path: plain dx GEMM (bf16), then XLA's activation backward at Z1
            from sparse24_jax.ffn import activation_vjp

            dh = ops.spmm("dx", vals, meta, dy, config=plain)
            check_close(f"{config} dZ1 vs unfused", out, activation_vjp("gelu", z1, dh))


# (K, N, M) with M (tokens) a multiple of 64 (own_mvue's): GPT-2 774M / 1558M, small ones; 192
# tokens: an odd multiple of 64, whose metadata ends in half an atom (code 0 past the tokens)
MVUE_SHAPES = [(5120, 1280, 2048), (6400, 1600, 512), (128, 256, 64), (320, 192, 192)]


@pytest.mark.parametrize("kk,n,m", MVUE_SHAPES)
def test_dx_dgelu_mvue_is_dx_dgelu_then_own_mvue(epi, ops, kk, n, m):
    """The MVUE in the epilogue: dZ1 is dx_dgelu's bit for bit (same mainloop, same
    epilogue arithmetic), and S_z(dZ1^T) is own_mvue's of that dZ1 with the same seed,
    values and metadata byte for byte (the same draw per group, the same codes)."""
    from sparse24_jax_kernels.cutlass import own_ops

    rng = np.random.default_rng(kk + n + m + 1)
    wt = sparse_operand(rng, kk, n, scale=1.0 / np.sqrt(n / 4))
    dy = bf16(rng, m, n)
    g1 = epi.reference_gelu_grad(bf16(rng, m, kk, scale=2.5)).astype(jnp.bfloat16)
    vals, meta = ops.compress(wt)
    seed = own_ops.seed_from_key(jax.random.key(m + kk))
    mvue_configs = sorted({i["config"] for i in epi.epilogue_instances()
                           if i["epilogue"] == "dx_dgelu_mvue"})
    assert mvue_configs
    for config in mvue_configs:
        d, (mv, mm) = jax.jit(lambda v, mt, dy, g, s, c=config: epi.spmm_dx_dgelu_mvue(
            v, mt, dy, g, s, config=c))(vals, meta, dy, g1, seed)
        np.testing.assert_array_equal(as_np(d), as_np(epi.spmm_dx_dgelu(vals, meta, dy, g1,
                                                                        config=config)),
                                      err_msg=f"{config}: dZ1 != dx_dgelu's")
        want_v, want_m = own_ops.mvue_compress(seed, d)
        np.testing.assert_array_equal(np.asarray(mv).view(np.uint16), np.asarray(want_v).view(np.uint16),
                                      err_msg=f"{config}: S_z(dZ1^T) values != own_mvue's")
        np.testing.assert_array_equal(np.asarray(mm), np.asarray(want_m),
                                      err_msg=f"{config}: S_z(dZ1^T) metadata != own_mvue's")


def test_dx_dgelu_mvue_bad_input_names_the_fix(epi, ops):
    rng = np.random.default_rng(4)
    vals, meta = ops.compress(sparse_operand(rng, 128, 256))
    dy = bf16(rng, 64, 256)
    with pytest.raises(ValueError, match="G1 = gelu'\\(Z1\\) must be bfloat16 \\(64, 128\\)"):
        epi.spmm_dx_dgelu_mvue(vals, meta, dy, bf16(rng, 64, 256), jax.random.key(0))
    with pytest.raises(ValueError, match="unknown CUTLASS config"):
        epi.spmm_dx_dgelu_mvue(vals, meta, dy, bf16(rng, 64, 128), jax.random.key(0), config="t1x1x1")


def test_fc1_forward_then_fc2_backward_under_jit(epi, ops):
    """The FFN's use: fc1's fused forward keeps G1 = gelu'(Z1); fc2's fused input
    gradient reads it. Against jax.vjp of the dense float32 block."""
    d, h, m = 256, 1024, 128
    rng = np.random.default_rng(7)
    w1 = sparse_operand(rng, h, d, scale=1.0 / np.sqrt(d / 4))  # (h, d), 2:4 on d
    w2t = sparse_operand(rng, h, d, scale=1.0 / np.sqrt(h / 4))  # W2^T (h, d), 2:4 on d
    b1 = bf16(rng, h, scale=0.3)
    x, dy = bf16(rng, m, d), bf16(rng, m, d)

    @jax.jit
    def run(w1, w2t, b1, x, dy):
        v1, m1 = ops.compress(w1)
        v2, m2 = ops.compress(w2t)
        a, g1 = epi.spmm_fwd_gelu(v1, m1, x, b1)
        return a, epi.spmm_dx_dgelu(v2, m2, dy, g1)

    a, dz1 = run(w1, w2t, b1, x, dy)
    f32 = lambda t: t.astype(jnp.float32)  # noqa: E731
    hi = jax.lax.Precision.HIGHEST

    def block(z1):
        return jnp.dot(jax.nn.gelu(z1, approximate=False), f32(w2t), precision=hi)

    z1_ref = jnp.dot(f32(x), f32(w1).T, precision=hi) + f32(b1)
    _, vjp = jax.vjp(block, z1_ref)
    check_close("A", a, jax.nn.gelu(z1_ref, approximate=False))
    check_close("dZ1", dz1, vjp(f32(dy))[0])


def test_bad_input_names_the_fix(epi, ops):
    rng = np.random.default_rng(3)
    w = sparse_operand(rng, 128, 256)
    vals, meta = ops.compress(w)
    x = bf16(rng, 64, 256)
    with pytest.raises(ValueError, match="bias must be bfloat16 \\(128,\\)"):
        epi.spmm_fwd_gelu(vals, meta, x, bf16(rng, 64))
    with pytest.raises(ValueError, match="multiple of 16"):
        epi.spmm_fwd_gelu(vals, meta, bf16(rng, 40, 256))
    with pytest.raises(ValueError, match="K = 256"):
        epi.spmm_fwd_gelu(vals, meta, bf16(rng, 64, 128))
    with pytest.raises(ValueError, match="meta must be uint8"):
        epi.spmm_fwd_gelu(vals, meta[:-16], x)
    with pytest.raises(ValueError, match="dense operand must be bfloat16"):
        epi.spmm_fwd_gelu(vals, meta, x.astype(jnp.float32))
    # dx_dgelu: W_s^T (128, 256) -> dZ1 (M, 128); G1 must have that shape
    dy = bf16(rng, 64, 256)
    with pytest.raises(ValueError, match="G1 = gelu'\\(Z1\\) must be bfloat16 \\(64, 128\\)"):
        epi.spmm_dx_dgelu(vals, meta, dy, bf16(rng, 64, 256))
    with pytest.raises(ValueError, match="G1 = gelu'\\(Z1\\) must be bfloat16"):
        epi.spmm_dx_dgelu(vals, meta, dy, bf16(rng, 64, 128).astype(jnp.float32))
    with pytest.raises(ValueError, match="unknown CUTLASS config"):
        epi.spmm_dx_dgelu(vals, meta, dy, bf16(rng, 64, 128), config="t1x1x1")
    unbuilt = [c for c in ops.CONFIGS if c not in epi.epilogue_configs()]
    if unbuilt:
        with pytest.raises(ValueError, match="no fused fwd_gelu instance"):
            epi.spmm_fwd_gelu(vals, meta, x, config=unbuilt[0])
