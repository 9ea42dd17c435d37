"""CPU tests of our own kernels writing CUTLASS's sm90 compressed 2:4 format
(kernels/cutlass/csrc/own_compress.cuh): the CUDA kernels' code run on the
host (tests/_cutlass_own.py), byte for byte against the numpy reference
(kernels/cutlass/layout.py), which tests/test_cutlass_layout.py checks against
CUTLASS's own compressor. The same on the GPU against CUTLASS's compressor:
tests/gpu/test_cutlass_compress.py.

* the weight projection: W (N, K) float32 + a 2:4 transposable mask ->
  compress_sm90(where(mask, W, 0) in bf16) and of its transpose;
* the MVUE of dZ^T: the same kept entries and bits as the cuSPARSELt MVUE
  kernel with the same seed (its emulation, decompressed), in CUTLASS's bytes.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from sparse24_jax_kernels.cusparselt import layout as cl
from sparse24_jax_kernels.cutlass import layout

import _cutlass_own
from _random24 import awkward_f32

ok, why = _cutlass_own.available()
pytestmark = pytest.mark.skipif(not ok, reason=why)
BF16 = np.dtype(ml_dtypes.bfloat16)

# (N, K): the 1600-wide axes of GPT-2 1.5B (12.5 tiles of 128) on both sides,
# 64-row remainders, and a few tiles
SHAPES = [(64, 64), (128, 192), (192, 1600), (1600, 320), (256, 512)]


def transposable_mask(w, seed, sparser=False):
    import jax.numpy as jnp

    from sparse24_jax import transposable_mask_24

    mask = np.array(transposable_mask_24(jnp.asarray(w)))
    if sparser:  # groups keeping one or none: the degenerate codes
        mask &= np.random.default_rng(seed).random(mask.shape) > 0.3
    return mask


def ref_projection(w, mask):
    w_s = np.where(mask, w, np.float32(0)).astype(BF16)
    return layout.compress_sm90(w_s), layout.compress_sm90(np.ascontiguousarray(w_s.T))


@pytest.mark.parametrize("n, k", SHAPES)
@pytest.mark.parametrize("sparser", [False, True])
def test_projection_is_cutlass_bytes(n, k, sparser):
    w = awkward_f32(n * 7 + k, n, k)
    mask = transposable_mask(w, n + k, sparser)
    vals, meta, vals_t, meta_t = _cutlass_own.project(w, mask)
    (rv, rm), (rvt, rmt) = ref_projection(w, mask)
    np.testing.assert_array_equal(vals.view(np.uint16), rv.view(np.uint16))
    np.testing.assert_array_equal(meta, rm)
    np.testing.assert_array_equal(vals_t.view(np.uint16), rvt.view(np.uint16))
    np.testing.assert_array_equal(meta_t, rmt)


def test_projection_degenerate_groups_by_hand():
    # one 64 x 64 weight: group 0 of row 0 keeps only column 3 (code 0xC, value
    # at slot 1), group 1 keeps nothing (code 0), group 2 keeps a -0 and a
    # value at 1 (the -0 is zero: code 1 | 3 << 2), the rest all-zero
    w = np.zeros((64, 64), np.float32)
    mask = np.zeros((64, 64), bool)
    w[0, 3], mask[0, 3] = 2.0, True
    w[0, 4], mask[0, 4] = 5.0, False
    w[0, 8], w[0, 9], mask[0, 8], mask[0, 9] = -0.0, 1.5, True, True
    vals, meta, vals_t, meta_t = _cutlass_own.project(w, mask)
    v = vals.view(np.uint16)
    assert list(v[0, :6]) == [0, 0x4000, 0, 0, 0x3FC0, 0]
    assert meta[0] == 0x0C and meta[1] == 0xD  # (group0 0xC | group1 0 << 4), (group2 1|3<<2)
    assert not v[1:].any() and not meta[2:].any()
    # W_s^T: row 3 (column 3 of W) has its lone value at n = 0 < 3: code 0 | 3 << 2, slot 0
    vt = vals_t.view(np.uint16)
    assert vt[3, 0] == 0x4000 and meta_t[layout.metadata_byte_offset(3, 0, 64, 2)] == 0x0 | (0 | 3 << 2)


def test_projection_keeps_top2_of_an_invalid_mask():
    # a mask keeping 3 or 4 of a group: the two largest survive (cuSPARSELt's
    # projection does the same): along K for W_s, then along N of that W_s for W_s^T
    rng = np.random.default_rng(3)
    w = rng.standard_normal((128, 128)).astype(np.float32)
    mask = np.ones((128, 128), bool)
    vals, meta, vals_t, meta_t = _cutlass_own.project(w, mask)
    wb = w.astype(BF16)

    def top2(a):
        g = np.abs(a.astype(np.float32)).reshape(a.shape[0], -1, 4)
        order = np.argsort(-g, axis=-1, kind="stable")[..., :2]
        keep = np.zeros(g.shape, bool)
        np.put_along_axis(keep, order, True, -1)
        return np.where(keep.reshape(a.shape), a, np.zeros((), a.dtype))

    w_s = top2(wb)
    rv, rm = layout.compress_sm90(w_s)
    rvt, rmt = layout.compress_sm90(top2(np.ascontiguousarray(w_s.T)))
    np.testing.assert_array_equal(vals.view(np.uint16), rv.view(np.uint16))
    np.testing.assert_array_equal(meta, rm)
    np.testing.assert_array_equal(vals_t.view(np.uint16), rvt.view(np.uint16))
    np.testing.assert_array_equal(meta_t, rmt)


def random_dz(seed, m, n):
    rng = np.random.default_rng(seed)
    dz = rng.standard_normal((m, n)).astype(np.float32)
    pick = rng.random((m, n))
    dz[pick < 0.05] = 0.0
    dz[(pick >= 0.05) & (pick < 0.08)] = -0.0
    dz[(pick >= 0.08) & (pick < 0.10)] *= 1e-30  # MVUE's rescaled values may round to 0
    return dz.astype(BF16)


# (M tokens, N features)
MVUE_SHAPES = [(64, 64), (192, 128), (1600, 192), (256, 1600), (320, 320)]


@pytest.mark.parametrize("block_groups", [32, 64])
@pytest.mark.parametrize("m, n", MVUE_SHAPES)
def test_mvue_is_cusparselt_mvue_in_cutlass_bytes(m, n, block_groups):
    # either block size: the last block column is partial for every M here but 64 and 256
    # (block 64) or 64 (block 32), and a group's draw depends on its counter only
    dz = random_dz(m + 3 * n, m, n)
    seed = (0x1234 + m, 0xBEEF ^ n)
    vals, meta = _cutlass_own.mvue(dz, seed, block_groups)
    buf = _cutlass_own.cusparselt_mvue(dz, seed)
    s = cl.decompress(buf, n, m, BF16)  # cuSPARSELt's S(dZ^T), dense (n, m)
    rv, rm = layout.compress_sm90(s)
    np.testing.assert_array_equal(vals.view(np.uint16), rv.view(np.uint16))
    np.testing.assert_array_equal(meta, rm)
    # and it is a 2:4 sparsification of dZ^T: kept entries are where dZ^T is
    # (a kept value may round to zero, never appear where dZ^T is zero)
    d = layout.decompress_sm90(vals, meta, n, m).astype(np.float32)
    assert not np.any((d != 0) & (dz.T.astype(np.float32) == 0))
    assert (np.count_nonzero(d.reshape(n, -1, 4), -1) <= 2).all()


# (M tokens, F features per half): M an odd multiple of 64 leaves the last block column half
# full (32 groups per block), F 64 is one block row, 320 five
SWIGLU_SHAPES = [(64, 64), (192, 128), (320, 64), (256, 320)]


@pytest.mark.parametrize("m, f", SWIGLU_SHAPES)
def test_swiglu_grad_mvue_is_the_twin_then_own_mvue(m, f):
    """The fused SwiGLU backward + MVUE: dh is the cuSPARSELt library's fused kernel's (the
    same SwigluGrad, bit for bit), and the compressed buffer is own_mvue's of that dh with the
    same seed, byte for byte."""
    from sparse24_jax_kernels.cusparselt import emulation

    da = random_dz(m + f, m, f)
    h = random_dz(7 * m + f, m, 2 * f)
    seed = (0x51 + m, 0x7A ^ f)
    dh, vals, meta = _cutlass_own.swiglu_grad_mvue(da, h, seed)
    ref_dh, _ = emulation.emulate_act_grad_mvue("swiglu", da, h, seed=seed)
    np.testing.assert_array_equal(dh.view(np.uint16), ref_dh.view(np.uint16))
    rv, rm = _cutlass_own.mvue(dh, seed)
    np.testing.assert_array_equal(vals.view(np.uint16), rv.view(np.uint16))
    np.testing.assert_array_equal(meta, rm)


def test_swiglu_grad_is_the_jax_vjp():
    """dh against JAX's autodiff of x * silu(gate) in float32, rounded once: within one bf16
    ulp (the kernel's exponential and reciprocal are approximations of XLA's accuracy)."""
    import jax.numpy as jnp

    from sparse24_jax.ffn import activation_vjp

    m, f = 128, 64
    da = random_dz(3, m, f)
    h = random_dz(4, m, 2 * f)
    dh, _, _ = _cutlass_own.swiglu_grad_mvue(da, h, (1, 2))
    ref = np.asarray(activation_vjp("swiglu", jnp.asarray(h), jnp.asarray(da)).astype(jnp.float32))
    got = dh.astype(np.float32)
    np.testing.assert_allclose(got, ref, rtol=2 ** -7, atol=1e-30)


def test_swiglu_grad_mvue_refuses_unaligned_features():
    with pytest.raises(ValueError, match="does not take"):
        _cutlass_own.swiglu_grad_mvue(np.zeros((64, 96), BF16), np.zeros((64, 192), BF16), (0, 0))
    # the JAX op names the fix before it loads the library (so on a CPU machine too)
    import jax.numpy as jnp

    from sparse24_jax_kernels.cutlass import own_ops

    seed = jnp.zeros(2, jnp.uint32)
    bf = jnp.bfloat16
    with pytest.raises(ValueError, match="bfloat16.*astype"):
        own_ops.swiglu_grad_mvue_compress(seed, jnp.zeros((64, 64), jnp.float32), jnp.zeros((64, 128), bf))
    with pytest.raises(ValueError, match=r"h must be \(M, 2F\) = \(64, 128\)"):
        own_ops.swiglu_grad_mvue_compress(seed, jnp.zeros((64, 64), bf), jnp.zeros((64, 64), bf))
    with pytest.raises(ValueError, match="multiples of 64: pad them"):
        own_ops.swiglu_grad_mvue_compress(seed, jnp.zeros((64, 96), bf), jnp.zeros((64, 192), bf))


def test_mvue_refuses_other_blocks():
    with pytest.raises(ValueError, match="blocks of 48 groups"):
        _cutlass_own.mvue(random_dz(1, 64, 64), (1, 2), 48)
    # the JAX op says so before it loads the library (so on a CPU machine too)
    import jax.numpy as jnp

    from sparse24_jax_kernels.cutlass import own_ops

    with pytest.raises(ValueError, match=r"block_groups must be one of \(0, 32, 64\).*got 48"):
        own_ops.mvue_compress(jnp.zeros(2, jnp.uint32), jnp.zeros((64, 64), jnp.bfloat16), block_groups=48)


def test_mvue_seed_changes_the_kept_set():
    dz = random_dz(5, 128, 128)
    a = _cutlass_own.mvue(dz, (1, 2))
    b = _cutlass_own.mvue(dz, (1, 3))
    c = _cutlass_own.mvue(dz, (1, 2))
    assert not np.array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[1], c[1])
    np.testing.assert_array_equal(a[0].view(np.uint16), c[0].view(np.uint16))


def test_mvue_is_unbiased():
    # the mean of many MVUE draws of one dZ^T approaches dZ^T (the estimator's point)
    dz = random_dz(9, 64, 64)
    acc = np.zeros((64, 64), np.float64)
    draws = 400
    for s in range(draws):
        vals, meta = _cutlass_own.mvue(dz, (s, 77))
        acc += layout.decompress_sm90(vals, meta, 64, 64).astype(np.float64)
    ref = dz.T.astype(np.float64)
    err = np.abs(acc / draws - ref)
    scale = np.abs(ref).reshape(64, -1, 4).sum(-1).repeat(4, -1) + 1e-6
    assert np.mean(err / scale) < 0.06


# groups for the sampler's statistics: plain, mixed signs and scales, one value dwarfing three
# small ones (the case where S - a_j cancels in float32), equal values
MVUE_GROUPS = [(1.0, 2.0, 3.0, 4.0), (-0.5, 0.25, 8.0, -1.0), (1e-3, 2e-3, 5.0, 1e-3),
               (1.0, 1.0, 1.0, 1.0), (100.0, 1.0, -1.0, 100.0), (1.0, -1.0, 1e-3, 3.0)]


def test_mvue_draws_the_reference_inclusion_probabilities():
    """Each group of MVUE_GROUPS repeated over 8192 groups (its own counters, so independent
    draws): the kept frequency of each position is sparse24_jax.mvue's inclusion probability
    p_i, and the mean kept value is x_i (kept values are x_i / p_i), within 5 standard errors
    (+ bf16 rounding)."""
    from sparse24_jax.mvue import EPS, mvue_inclusion_probs

    groups = np.array(MVUE_GROUPS, np.float32).astype(BF16)
    ng, m = len(MVUE_GROUPS), 4096
    n = 64 * ((ng + 63) // 64)  # feature f holds group f % ng at every token group
    col = np.tile(groups, (1, 1))[np.arange(n) % ng]  # (n, 4)
    dz = np.ascontiguousarray(np.tile(col, (1, m // 4)).T)  # (m, n): dz[4g + e, f] = col[f, e]
    draws = np.zeros((ng, 4)), np.zeros((ng, 4))
    for seed in range(2):
        vals, meta = _cutlass_own.mvue(dz, (seed, 99))
        d = layout.decompress_sm90(vals, meta, n, m).astype(np.float64).reshape(n, -1, 4)
        for f in range(n):
            draws[0][f % ng] += (d[f] != 0).sum(0)
            draws[1][f % ng] += d[f].sum(0)
    count = 2 * (m // 4) * np.bincount(np.arange(n) % ng, minlength=ng)[:, None]
    x = groups.astype(np.float64)
    p = np.asarray(mvue_inclusion_probs(np.abs(groups.astype(np.float32)) + np.float32(EPS)), np.float64)
    freq, mean = draws[0] / count, draws[1] / count
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / count) + 1e-9)
    se = np.abs(x) * np.sqrt(np.maximum(1 / p - 1, 0) / count)
    np.testing.assert_array_less(np.abs(mean - x), 5 * se + 4e-3 * np.abs(x) + 1e-9)


@pytest.mark.parametrize("shape", [(64, 96), (32, 64), (100, 64)])
def test_shapes_the_kernels_refuse(shape):
    n, k = shape
    with pytest.raises(ValueError, match="does not take"):
        _cutlass_own.project(np.zeros((n, k), np.float32), np.zeros((n, k), bool))
    with pytest.raises(ValueError, match="does not take"):
        _cutlass_own.mvue(np.zeros((n, k), BF16), (0, 0))


def test_cutlass_backend_is_registered_and_names_the_fix_on_cpu():
    from sparse24_jax.backend import BackendUnavailableError, available_backends, get_backend

    assert "cutlass" in available_backends()
    with pytest.raises(BackendUnavailableError, match="Hopper"):
        get_backend("cutlass")


def test_config_table_names_built_configs():
    from sparse24_jax_kernels.cutlass import backend, build

    assert backend.DEFAULT_CONFIG in build.CONFIGS
    table = backend.gemm_table()
    for row in table.values():
        assert set(row) == {"fwd", "dx", "dw"} and set(row.values()) <= set(build.CONFIGS)
        assert all(p in build.CONFIGS[c].products for p, c in row.items()), row
    assert backend.config_for("dw", 1600, 6400) == table[(1600, 6400)]["dw"]
    assert backend.config_for("fwd", 64, 64) == backend.DEFAULT_CONFIG


@pytest.mark.parametrize("rows, cols", [(64, 128), (192, 1600), (1600, 320), (128, 192)])
def test_fused_mvue_metadata_address_is_the_layouts(rows, cols):
    """The fused MVUE epilogue (csrc/epilogue_mvue.cuh) stores each metadata byte at
    OwnMetaByte(row, group): layout.py's byte of that row's byte column group // 2,
    for odd and even groups alike (their byte is one), inside the buffer."""
    got = _cutlass_own.own_meta_byte(rows, cols).astype(np.int64)
    r, g = np.meshgrid(np.arange(rows), np.arange(cols // 4), indexing="ij")
    want = layout.metadata_byte_offset(r, g // 2, rows, 2)
    np.testing.assert_array_equal(got, want)
    assert got.max() < layout.compressed_shapes(rows, cols, BF16).metadata_nbytes
