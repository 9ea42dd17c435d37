"""GPU tests of the CUTLASS sm90 sparse GEMMs (need an H100/H200, and either a
prebuilt library in $SPARSE24_CUTLASS_KERNELS or nvcc + the nvidia-cutlass
wheel to build it, ~10 CPU-minutes).

Each product of a 2:4 linear (fwd, dx, dw) with every built config, against
the XLA reference (float32 dots of the dense pruned operand); CUTLASS's
compressor (values = the kept elements in order; metadata size as ops says);
shapes whose 2:4 axis is not a multiple of 128 (GPT-2 1.5B's 1600); jit; and
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
def ops():
    from sparse24_jax_kernels.cutlass import ops

    ops.load()  # on a GPU machine this must work: no skip
    return ops


def as_np(a):
    return np.asarray(jax.device_get(a)).astype(np.float32)


def bf16(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape).astype(np.float32)).astype(jnp.bfloat16)


def sparse_operand(rng, rows, cols, zero_frac=0.1):
    """A dense (rows, cols) bf16 matrix, 2:4 along cols, some groups with fewer than 2 nonzeros."""
    return jnp.asarray(random_24(rng, rows, cols, np.float32, zero_frac=zero_frac)).astype(
        jnp.bfloat16)


def dense_operand(rng, product, rows, cols, free):
    """The dense operand of a product whose sparse operand is (rows, cols)."""
    if product == "dw":  # X (M, K): M = cols (2:4 axis of S(dZ^T)), K = free
        return bf16(rng, cols, free)
    return bf16(rng, free, cols)  # fwd: X (M, K); dx: dZ (M, N)


def check_close(product, out, ref):
    out, ref = as_np(out), as_np(ref)
    assert out.shape == ref.shape
    scale = float(np.sqrt(np.mean(ref**2))) + 1e-30
    if product == "dw":  # float32 output: only the summation order differs
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * scale)
    else:  # bfloat16 output: one rounding of the float32 sum
        np.testing.assert_allclose(out, ref, rtol=1.6e-2, atol=1e-2 * scale)


def test_every_config_has_its_products(ops):
    built = {(i["config"], i["product"]) for i in ops.instances()}
    from sparse24_jax_kernels.cutlass.build import selected_configs

    want = {(c.name, p) for c in selected_configs() for p in c.products}
    assert want <= built, f"missing instances: {sorted(want - built)}"


@pytest.mark.parametrize("rows,cols", [(64, 128), (128, 256), (1600, 6400), (6400, 1600), (192, 320)])
def test_compressed_sizes(ops, rows, cols):
    vbytes, mbytes, _ = ops.compressed_sizes(rows, cols)
    assert vbytes == rows * cols // 2 * 2
    assert mbytes == ops.meta_nbytes(rows, cols)


def test_compress_values_are_the_kept_elements_in_order(ops):
    """With exactly two nonzeros per group, CUTLASS's values are those two, in order
    (K-major, row-major (rows, cols/2)); the metadata is checked by the products."""
    rng = np.random.default_rng(0)
    a = sparse_operand(rng, 128, 256, zero_frac=0.0)
    vals, meta = jax.jit(ops.compress)(a)
    a_np = as_np(a).reshape(128, 64, 4)
    want = a_np[a_np != 0].reshape(128, 128)
    assert as_np(vals).shape == (128, 128)
    np.testing.assert_array_equal(as_np(vals), want)
    assert meta.shape == (ops.meta_nbytes(128, 256),) and meta.dtype == jnp.uint8


# (rows, cols) of the sparse operand, the dense operand's free axis
SHAPES = [(128, 256, 128), (192, 320, 48), (1280, 1600, 512)]


@pytest.mark.parametrize("product", ["fwd", "dx", "dw"])
@pytest.mark.parametrize("rows,cols,free", SHAPES)
def test_product_matches_reference_every_config(ops, product, rows, cols, free):
    rng = np.random.default_rng(rows + cols + free)
    a = sparse_operand(rng, rows, cols)
    b = dense_operand(rng, product, rows, cols, free)
    vals, meta = ops.compress(a)
    ref = ops.reference(product, a, b)
    configs = ops.configs(product)
    assert configs and set(configs) <= set(ops.configs())
    for config in configs:  # the stream-K configs among them
        out = ops.spmm(product, vals, meta, b, config=config)
        assert out.dtype == (jnp.float32 if product == "dw" else jnp.bfloat16), config
        try:
            check_close(product, out, ref)
        except AssertionError as err:
            raise AssertionError(f"config {config}, product {product}: {err}") from None


@pytest.mark.parametrize("rows,cols,free", SHAPES)
def test_dw_acc_is_the_sum_plus_dw_every_config(ops, rows, cols, free):
    """spmm_dw_acc(C) == C + spmm("dw") of the same instance config, for every config with
    a dw_acc instance (the epilogue's add of C in float32: equal up to one rounding), and
    close to its XLA twin ops.reference("dw_acc") as dw is to its own."""
    rng = np.random.default_rng(rows + cols + free + 1)
    a = sparse_operand(rng, rows, cols)
    x = dense_operand(rng, "dw", rows, cols, free)
    acc = jnp.asarray(rng.standard_normal((rows, free)).astype(np.float32))
    vals, meta = ops.compress(a)
    ref = ops.reference("dw_acc", a, x, acc)
    configs = ops.configs("dw_acc")
    from sparse24_jax_kernels.cutlass.build import CONFIGS

    assert configs and set(configs) == {c for c in ops.configs("dw") if "dw_acc" in CONFIGS[c].products}
    for config in configs:
        dw = as_np(ops.spmm("dw", vals, meta, x, config=config))
        out = ops.spmm_dw_acc(vals, meta, x, acc, config=config)
        assert out.dtype == jnp.float32 and out.shape == acc.shape, config
        np.testing.assert_allclose(as_np(out), as_np(acc) + dw, rtol=1e-6, atol=1e-6,
                                   err_msg=f"config {config}")
        try:
            check_close("dw", out, ref)
        except AssertionError as err:
            raise AssertionError(f"config {config}, dw_acc against its reference: {err}") from None


@pytest.mark.parametrize("config", ["t128x128x128_c1x1_pingpong", "t256x128x128_c1x1_coop_sk"])
def test_dw_acc_updates_a_scan_carry_in_place(ops, config):
    """The running sum of a micro-batch scan (the training step's use) with the configs GPT-2
    1558M's weight gradients run (persistent ping-pong and stream-K): each step's sum aliased
    to the GEMM's output, the carry donated; the result is the sum of the dWs, and the
    compiled program holds no copy of the carry (XLA kept the alias in place)."""
    rng = np.random.default_rng(7)
    rows, cols, free, steps = 1280, 1600, 512, 3
    gs = [sparse_operand(rng, rows, cols) for _ in range(steps)]
    packed = [ops.compress(g) for g in gs]
    vals = jnp.stack([v for v, _ in packed])
    metas = jnp.stack([m for _, m in packed])
    xs = jnp.stack([dense_operand(rng, "dw", rows, cols, free) for _ in range(steps)])
    assert config in ops.configs("dw_acc")

    def body(acc, vmx):
        v, m, x = vmx
        return ops.spmm_dw_acc(v, m, x, acc, config=config), None

    run = jax.jit(lambda acc, v, m, x: jax.lax.scan(body, acc, (v, m, x))[0], donate_argnums=0)
    start = jnp.asarray(rng.standard_normal((rows, free)).astype(np.float32))
    want = as_np(start) + sum(as_np(ops.spmm("dw", v, m, x, config=config)) for (v, m), x in zip(packed, xs))
    text = run.lower(start, vals, metas, xs).compile().as_text()
    got = as_np(run(start, vals, metas, xs))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    import re

    copies = re.findall(rf"= f32\[{rows},{free}\]\{{[^}}]*\}} copy\(.*", text)
    assert not copies, "the running sum is copied: " + "\n".join(copies[:4])


def test_spmm_refuses_dw_acc_and_a_bad_sum(ops):
    rng = np.random.default_rng(3)
    vals, meta = ops.compress(sparse_operand(rng, 128, 256))
    x = dense_operand(rng, "dw", 128, 256, 64)
    with pytest.raises(ValueError, match="call spmm_dw_acc"):
        ops.spmm("dw_acc", vals, meta, x)
    with pytest.raises(ValueError, match="running sum must be float32"):
        ops.spmm_dw_acc(vals, meta, x, jnp.zeros((128, 64), jnp.bfloat16))
    with pytest.raises(ValueError, match="running sum must be float32"):
        ops.spmm_dw_acc(vals, meta, x, jnp.zeros((64, 128), jnp.float32))


def test_the_linear_layer_products_agree(ops):
    """The three products as a 2:4 linear uses them: W_s and W_s^T compressed
    from one transposable-pruned W; S(dZ^T) from a 2:4-pruned dZ^T."""
    from sparse24_jax import transposable_mask_24

    m, n, k = 256, 384, 512
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.standard_normal((n, k)).astype(np.float32))
    w_s = jnp.where(transposable_mask_24(w), w, 0.0).astype(jnp.bfloat16)
    x, dz = bf16(rng, m, k), bf16(rng, m, n)
    g = sparse_operand(rng, n, m)  # S(dZ^T)

    @jax.jit
    def run(w_s, x, dz, g):
        wv, wm = ops.compress(w_s)
        tv, tm = ops.compress(w_s.T)
        gv, gm = ops.compress(g)
        return (ops.spmm("fwd", wv, wm, x), ops.spmm("dx", tv, tm, dz), ops.spmm("dw", gv, gm, x))

    z, dx, dw = run(w_s, x, dz, g)
    hi = jax.lax.Precision.HIGHEST
    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
    check_close("fwd", z, jnp.dot(f32(x), f32(w_s).T, precision=hi))
    check_close("dx", dx, jnp.dot(f32(dz), f32(w_s), precision=hi))
    check_close("dw", dw, jnp.dot(f32(g), f32(x), precision=hi))


def test_bad_shapes_and_types_name_the_fix(ops):
    rng = np.random.default_rng(2)
    a = sparse_operand(rng, 128, 256)
    vals, meta = ops.compress(a)
    with pytest.raises(ValueError, match="rows % 64"):
        ops.compress(sparse_operand(rng, 96, 256))
    with pytest.raises(ValueError, match="2:4 axis % 64"):
        ops.compress(sparse_operand(rng, 128, 96))
    with pytest.raises(ValueError, match="bfloat16"):
        ops.compress(a.astype(jnp.float32))
    with pytest.raises(ValueError, match="multiple of 16"):
        ops.spmm("fwd", vals, meta, bf16(rng, 40, 256))
    with pytest.raises(ValueError, match="K = 256"):
        ops.spmm("fwd", vals, meta, bf16(rng, 64, 128))
    with pytest.raises(ValueError, match="M = 256"):
        ops.spmm("dw", vals, meta, bf16(rng, 128, 64))
    with pytest.raises(ValueError, match="meta must be uint8"):
        ops.spmm("fwd", vals, meta[:-16], bf16(rng, 64, 256))
    with pytest.raises(ValueError, match="unknown CUTLASS config"):
        ops.spmm("fwd", vals, meta, bf16(rng, 64, 256), config="t1x1x1")
    with pytest.raises(ValueError, match="product must be"):
        ops.spmm("up", vals, meta, bf16(rng, 64, 256))
