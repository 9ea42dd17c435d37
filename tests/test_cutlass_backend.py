"""CPU tests of the "cutlass" backend (kernels/cutlass/backend.py): its FFI
calls replaced by host callbacks with the same semantics (our compressors by
their CUDA code emulated on the host, tests/_cutlass_own.py; CUTLASS's
compressor by layout.compress_sm90; the GEMMs by numpy on the decompressed
operand). Exercises the backend's shapes, padding, layouts, configs and
pytrees on the CPU, against backend="xla"; the real kernels are tested on the
GPU (tests/gpu/test_cutlass_compress.py)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from sparse24_jax_kernels.cutlass import layout

import _cutlass_own
from _ffn_cases import ffn_grad_fn, ffn_weights, rel

ok, why = _cutlass_own.available()
pytestmark = pytest.mark.skipif(not ok, reason=why)


@pytest.fixture(params=[False])
def be(request, monkeypatch):
    """The backend with host callbacks; ``request.param``: whether the "library"
    has the fused GELU epilogues (host twins of epilogue_ops' two ops)."""
    from sparse24_jax_kernels.cutlass import backend, epilogue_ops, ops, own_ops

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

    def spmm_dw_acc(values, meta, x, acc, *, config=ops.DEFAULT_CONFIG):
        calls.append(("dw_acc", config))
        _, out_shape, _ = ops.problem("dw_acc", (values.shape[0], 2 * values.shape[1]), x.shape)
        assert acc.shape == out_shape and acc.dtype == jnp.float32
        rows, cols = values.shape[0], 2 * values.shape[1]

        def host(v, m, b, c):
            a = layout.decompress_sm90(np.asarray(v), np.asarray(m), rows, cols).astype(np.float32)
            return np.asarray(c) + a @ np.asarray(b).astype(np.float32)

        return cb(host, jax.ShapeDtypeStruct(out_shape, jnp.float32), values, meta, x, acc)

    def project_compress(w, mask):
        n, k = w.shape
        out = (jax.ShapeDtypeStruct((n, k // 2), jnp.bfloat16),
               jax.ShapeDtypeStruct((ops.meta_nbytes(n, k),), jnp.uint8),
               jax.ShapeDtypeStruct((k, n // 2), jnp.bfloat16),
               jax.ShapeDtypeStruct((ops.meta_nbytes(k, n),), jnp.uint8))
        return tuple(cb(lambda w, m: _cutlass_own.project(np.asarray(w), np.asarray(m)), out, w, mask))

    def mvue_compress(seed, dz):
        calls.append(("mvue", None))
        m, n = dz.shape
        out = (jax.ShapeDtypeStruct((n, m // 2), jnp.bfloat16),
               jax.ShapeDtypeStruct((ops.meta_nbytes(n, m),), jnp.uint8))
        return tuple(cb(lambda s, d: _cutlass_own.mvue(np.asarray(d), np.asarray(s)), out, seed, dz))

    def swiglu_grad_mvue_compress(seed, da, h):
        calls.append(("swiglu_grad_mvue", None))
        m, f = da.shape
        out = (jax.ShapeDtypeStruct((m, 2 * f), jnp.bfloat16),
               jax.ShapeDtypeStruct((2 * f, m // 2), jnp.bfloat16),
               jax.ShapeDtypeStruct((ops.meta_nbytes(2 * f, m),), jnp.uint8))
        return tuple(cb(lambda s, d, z: _cutlass_own.swiglu_grad_mvue(np.asarray(d), np.asarray(z), np.asarray(s)),
                        out, seed, da, h))

    def decompressed_product(values, meta, b):
        """float32 ``b @ A^T`` of the sparse operand A (fwd / dx shapes), on the host."""
        rows, cols = values.shape[0], 2 * values.shape[1]

        def host(v, m, b):
            a = layout.decompress_sm90(np.asarray(v), np.asarray(m), rows, cols).astype(np.float32)
            return np.asarray(b).astype(np.float32) @ a.T

        return cb(host, jax.ShapeDtypeStruct((b.shape[0], rows), jnp.float32), values, meta, b)

    def spmm_fwd_gelu(values, meta, x, bias=None, *, config=epilogue_ops.DEFAULT_EPILOGUE_CONFIG):
        calls.append(("fwd_gelu", config))
        ops.problem("fwd", (values.shape[0], 2 * values.shape[1]), x.shape)
        acc = decompressed_product(values, meta, x)
        return (jax.nn.gelu(acc, approximate=False).astype(jnp.bfloat16),
                epilogue_ops.reference_gelu_grad(acc).astype(jnp.bfloat16))

    def spmm_dx_dgelu(values, meta, dy, g1, *, config=epilogue_ops.DEFAULT_EPILOGUE_CONFIG):
        calls.append(("dx_dgelu", config))
        _, out_shape, _ = ops.problem("dx", (values.shape[0], 2 * values.shape[1]), dy.shape)
        assert g1.shape == out_shape and g1.dtype == jnp.bfloat16
        acc = decompressed_product(values, meta, dy)
        return (acc * g1.astype(jnp.float32)).astype(jnp.bfloat16)

    epi = tuple(build_epi_configs()) if request.param else ()
    monkeypatch.setattr(backend, "fused_epilogue_configs", lambda: epi)
    monkeypatch.setattr(epilogue_ops, "spmm_fwd_gelu", spmm_fwd_gelu)
    monkeypatch.setattr(epilogue_ops, "spmm_dx_dgelu", spmm_dx_dgelu)
    monkeypatch.setattr(ops, "load", lambda: None)
    from sparse24_jax_kernels.cutlass.build import CONFIGS

    monkeypatch.setattr(ops, "configs", lambda product=None: sorted(
        n for n, c in CONFIGS.items() if product is None or product in c.products))
    monkeypatch.setattr(ops, "compress", compress)
    monkeypatch.setattr(ops, "spmm", spmm)
    monkeypatch.setattr(ops, "spmm_dw_acc", spmm_dw_acc)
    monkeypatch.setattr(own_ops, "project_compress", project_compress)
    monkeypatch.setattr(own_ops, "mvue_compress", mvue_compress)
    monkeypatch.setattr(own_ops, "swiglu_grad_mvue_compress", swiglu_grad_mvue_compress)
    monkeypatch.setattr(own_ops, "has_swiglu_grad_mvue", lambda: True)
    b = backend.CutlassBackend()
    b.calls = calls
    return b


def build_epi_configs():
    from sparse24_jax_kernels.cutlass.build import EPILOGUE_CONFIGS

    return sorted(EPILOGUE_CONFIGS)


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
    assert be.calls == [("fwd", backend.config_for("fwd", 1600, 6400)), ("mvue", None),
                        ("dw", backend.gemm_table()[(1600, 6400)]["dw"])]


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
    assert not (caps.native_fp8_forward or caps.quantize_pruned_grad or caps.gated_activation)
    # GELU's backward is in the input-gradient epilogue; SwiGLU's fused with the MVUE
    assert caps.activation_grad_prune == ("swiglu",)
    # this fixture's library has no fused epilogues: no capability, a clear error if called
    assert caps.linear_activation == () and caps.linear_activation_grad == ()
    with pytest.raises(ValueError, match="no fused epilogues.*rebuild"):
        be._epilogue_config("fwd", 128, 128)


# -- fused GELU epilogues (FusedLinearActivation / FusedLinearActivationGrad) --

@pytest.mark.parametrize("be", [True], indirect=True)
@pytest.mark.parametrize("method, m", [("srste", 100), ("srste", 128), ("sste", 64)])
def test_ffn_block_runs_the_fused_epilogues(be, method, m):
    """sparse24_ffn on "cutlass" with fused epilogues: fc1's forward and fc2's
    input gradient are the fused ops (tokens padded to 64 and cut back), the
    numbers match backend="xla" (bf16: one rounding of Z1 / dA apart)."""
    from sparse24_jax.backend import capabilities
    from sparse24_jax_kernels.cutlass import backend

    caps = capabilities(be)
    assert caps.linear_activation == ("gelu",) and caps.linear_activation_grad == ("gelu",)
    d, h = 128, 256
    fc, proj = ffn_weights(d, h, method)
    rng = np.random.default_rng(m)
    x = jnp.asarray(rng.standard_normal((m, d)).astype(np.float32)).astype(jnp.bfloat16)
    be.calls.clear()
    got = ffn_grad_fn(be, fc, proj, method)(x, fc.w, proj.w)
    names = [c[0] for c in be.calls]
    assert names.count("fwd_gelu") == 1
    # S-STE's W2_s^T is not 2:4: its input gradient is the dense product (no dx_dgelu)
    assert names.count("dx_dgelu") == (0 if method == "sste" else 1)
    fused_cfgs = dict(be.calls)
    assert fused_cfgs["fwd_gelu"] == (backend.config_for("fwd", h, d)
                                      if backend.config_for("fwd", h, d) in be.epilogue_configs
                                      else be.epilogue_configs[0])
    ref = ffn_grad_fn("xla", fc, proj, method)(x, fc.w, proj.w)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        assert g.dtype == r.dtype and g.shape == r.shape
        assert rel(g, r) < 2e-2, rel(g, r)
    # fused=False: the plain products only, same numbers as before the epilogues
    be.calls.clear()
    unfused = ffn_grad_fn(be, fc, proj, method, fused=False)(x, fc.w, proj.w)
    assert not {"fwd_gelu", "dx_dgelu"} & {c[0] for c in be.calls}
    for g, r in zip(jax.tree.leaves(unfused), jax.tree.leaves(ref)):
        assert rel(g, r) < 2e-2


@pytest.mark.parametrize("be", [True], indirect=True)
def test_ffn_block_fused_with_mvue(be):
    """With MVUE on, the fused path feeds dZ1 to our MVUE kernel: the weight
    gradients are unbiased estimates in xla's error distribution."""
    d, h, m = 128, 256, 128
    fc, proj = ffn_weights(d, h, "srste", seed=1)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((m, d)).astype(np.float32)).astype(jnp.bfloat16)
    keys = (jax.random.PRNGKey(3), jax.random.PRNGKey(4))
    exact = ffn_grad_fn("xla", fc, proj, "srste")(x, fc.w, proj.w)
    got = ffn_grad_fn(be, fc, proj, "srste", keys)(x, fc.w, proj.w)
    ref = ffn_grad_fn("xla", fc, proj, "srste", keys)(x, fc.w, proj.w)
    assert [c[0] for c in be.calls].count("dx_dgelu") == 1
    assert rel(got[0], exact[0]) < 1e-2
    for i in (1, 2):
        e_c, e_x = rel(got[1][i], exact[1][i]), rel(ref[1][i], exact[1][i])
        assert 0.05 < e_c < 2.0 and 0.5 < e_c / e_x < 2.0, (i, e_c, e_x)


@pytest.mark.parametrize("be", [True], indirect=True)
def test_ffn_block_mvue_on_proj_only(be):
    """mvue=(False, True): the fused GELU epilogues still run, fc's weight gradient is the
    dense GEMM of the exact dZ1 (no MVUE pass, no sparse dW GEMM for it) and proj's stays an
    MVUE estimate; with MVUE off for both the block is fused too."""
    from sparse24_jax.ffn import sparse24_ffn

    d, h, m = 128, 256, 128
    fc, proj = ffn_weights(d, h, "srste", seed=1)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((m, d)).astype(np.float32)).astype(jnp.bfloat16)

    def run(backend, keys, mvue):
        def loss(x, w1, w2):
            y = sparse24_ffn(x, fc._replace(w=w1), proj._replace(w=w2), keys=keys, method="srste",
                             backend=backend, mvue=mvue).astype(jnp.float32)
            return jnp.mean(y * y + y)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, fc.w, proj.w)

    exact = ffn_grad_fn("xla", fc, proj, "srste")(x, fc.w, proj.w)
    keys = (None, jax.random.PRNGKey(4))
    be.calls.clear()
    got = run(be, keys, (False, True))
    kinds = [c[0] for c in be.calls]
    assert kinds.count("fwd_gelu") == 1 and kinds.count("dx_dgelu") == 1
    assert kinds.count("mvue") == 1 and kinds.count("dw") == 1  # proj's only
    ref = run("xla", keys, (False, True))
    assert rel(got[0], exact[0]) < 1e-2
    assert rel(got[1][0], exact[1][0]) < 2e-2
    assert rel(got[1][1], exact[1][1]) < 2e-2  # fc: exact dZ1, dense dW
    e_c, e_x = rel(got[1][2], exact[1][2]), rel(ref[1][2], exact[1][2])
    assert 0.05 < e_c < 2.0 and 0.5 < e_c / e_x < 2.0, (e_c, e_x)  # proj: MVUE estimate
    be.calls.clear()
    both_off = run(be, (None, None), False)
    kinds = [c[0] for c in be.calls]
    assert kinds.count("dx_dgelu") == 1 and "mvue" not in kinds and "dw" not in kinds
    for g, e in zip(jax.tree.leaves(both_off), jax.tree.leaves(exact)):
        assert rel(g, e) < 2e-2


@pytest.mark.parametrize("be", [True], indirect=True)
def test_sparse_mlp_mvue_pair_takes_the_fused_block(be):
    """SparseMLP(mvue=(False, True)) (train's mvue_fc = false) runs the fused block: each
    linear keeps its own MVUE setting, and only proj draws from its key stream."""
    from flax import nnx

    from sparse24_jax import nnx as s24nnx

    d, h = 128, 256
    mod = s24nnx.SparseMLP(d, h, backend=be, mvue=(False, True), rngs=nnx.Rngs(0, sparse24=5))
    assert (mod.fc.mvue, mod.proj.mvue) == (False, True)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, d)).astype(np.float32)).astype(jnp.bfloat16)
    fc_count, proj_count = int(mod.fc.rngs.count[...]), int(mod.proj.rngs.count[...])
    be.calls.clear()
    g = nnx.grad(lambda mm: jnp.mean(mm(x).astype(jnp.float32) ** 2))(mod)
    kinds = [c[0] for c in be.calls]
    assert kinds.count("fwd_gelu") == 1 and kinds.count("dx_dgelu") == 1 and kinds.count("mvue") == 1
    assert int(mod.fc.rngs.count[...]) == fc_count and int(mod.proj.rngs.count[...]) == proj_count + 1
    assert g.fc.weight[...].shape == (h, d) and g.proj.weight[...].shape == (d, h)


@pytest.mark.parametrize("be", [True, False], indirect=True)
@pytest.mark.parametrize("mvue", [True, (False, True)])
def test_grad_acc_runs_in_the_weight_gradient_gemm(be, mvue):
    """value_and_grad(grad_acc=) on a SparseMLP on "cutlass" (with and without the fused
    block): each MVUE weight gradient is the accumulating GEMM (dw_acc), not dw and an add,
    and every gradient is the running sum plus the one without grad_acc, leaf by leaf; fc
    without MVUE (a dense dW) gets its sum by XLA's add."""
    from flax import nnx

    from sparse24_jax import nnx as s24nnx

    d, h = 128, 256
    mod = s24nnx.SparseMLP(d, h, backend=be, mvue=mvue, dtype=jnp.bfloat16, rngs=nnx.Rngs(0, sparse24=5))
    gdef, params, rest = nnx.split(mod, nnx.Param, ...)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, d)).astype(np.float32))
    acc = jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(p.size).standard_normal(p.shape), p.dtype), params)

    def loss(m, x):
        return jnp.mean(m(x).astype(jnp.float32) ** 2)

    be.calls.clear()
    _, plain, _ = s24nnx.value_and_grad(loss, gdef, params, rest, x)
    plain_kinds = [c[0] for c in be.calls]
    be.calls.clear()
    _, summed, _ = s24nnx.value_and_grad(loss, gdef, params, rest, x, grad_acc=acc)
    kinds = [c[0] for c in be.calls]
    n_sparse_dw = 2 if mvue is True else 1
    assert plain_kinds.count("dw") == n_sparse_dw and "dw_acc" not in plain_kinds
    assert kinds.count("dw_acc") == n_sparse_dw and "dw" not in kinds, kinds
    # the same products, the sum added in the GEMM: equal up to float32 rounding of the add
    for a, g, s in zip(jax.tree.leaves(acc), jax.tree.leaves(plain), jax.tree.leaves(summed)):
        np.testing.assert_allclose(np.asarray(s), np.asarray(a) + np.asarray(g), rtol=1e-5, atol=1e-6)


def test_matmul_dw_acc_falls_back_where_the_library_lacks_it(be):
    """A dw config without a dw_acc instance (a library built before it): matmul_dw and an
    add, the same numbers."""
    rng = np.random.default_rng(0)
    dz = jnp.asarray(rng.standard_normal((128, 192)).astype(np.float32)).astype(jnp.bfloat16)
    x = jnp.asarray(rng.standard_normal((128, 64)).astype(np.float32)).astype(jnp.bfloat16)
    acc = jnp.asarray(rng.standard_normal((192, 64)).astype(np.float32))
    g = be.prune_grad(jax.random.PRNGKey(0), dz)
    fused = be.matmul_dw_acc(g, x, acc)
    be.built["dw_acc"] = set()
    be.calls.clear()
    composed = be.matmul_dw_acc(g, x, acc)
    assert [c[0] for c in be.calls] == ["dw"]
    np.testing.assert_allclose(np.asarray(fused), np.asarray(composed), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(composed), np.asarray(acc + be.matmul_dw(g, x)), rtol=0, atol=0)


@pytest.mark.parametrize("m", [128, 100])
def test_swiglu_backward_is_fused_with_the_mvue(be, m):
    """SwiGLU with MVUE on: dZ1 and S_z(dZ1^T) come from the fused kernel (its host
    emulation here; tokens padded to 64 and cut back), the input gradient matches the
    unfused path and the weight gradients are unbiased estimates in xla's error distribution;
    without MVUE (no key) the block takes the unfused path."""
    from sparse24_jax.backend import capabilities

    assert capabilities(be).activation_grad_prune == ("swiglu",)
    d, h = 128, 256
    fc, _ = ffn_weights(d, 2 * h, "srste", seed=5)  # fc (2h, d): [x | gate]
    proj, _ = ffn_weights(h, d, "srste", seed=6)  # (d, h)
    rng = np.random.default_rng(m)
    x = jnp.asarray(rng.standard_normal((m, d)).astype(np.float32)).astype(jnp.bfloat16)
    keys = (jax.random.PRNGKey(3), jax.random.PRNGKey(4))
    args = (x, fc.w, proj.w)
    be.calls.clear()
    got = ffn_grad_fn(be, fc, proj, "srste", keys, activation="swiglu")(*args)
    assert [c[0] for c in be.calls].count("swiglu_grad_mvue") == 1
    unfused = ffn_grad_fn(be, fc, proj, "srste", keys, fused=False, activation="swiglu")(*args)
    exact = ffn_grad_fn("xla", fc, proj, "srste", activation="swiglu")(*args)
    ref = ffn_grad_fn("xla", fc, proj, "srste", keys, activation="swiglu")(*args)
    assert rel(got[0], exact[0]) < 1e-2
    assert rel(got[1][0], unfused[1][0]) < 1e-3
    for i in (1, 2):
        e_c, e_x = rel(got[1][i], exact[1][i]), rel(ref[1][i], exact[1][i])
        assert 0.05 < e_c < 2.0 and 0.5 < e_c / e_x < 2.0, (i, e_c, e_x)
    be.calls.clear()
    ffn_grad_fn(be, fc, proj, "srste", activation="swiglu")(*args)
    assert "swiglu_grad_mvue" not in {c[0] for c in be.calls}


@pytest.mark.parametrize("be", [True], indirect=True)
def test_sparse_mlp_takes_the_block_on_cutlass(be):
    from flax import nnx

    from sparse24_jax import nnx as s24nnx

    m = s24nnx.SparseMLP(128, 256, backend=be, dtype=jnp.bfloat16, rngs=nnx.Rngs(0, sparse24=1))
    x = jnp.ones((2, 32, 128), jnp.bfloat16)
    nnx.grad(lambda mod: jnp.sum(mod(x).astype(jnp.float32)))(m)
    assert {"fwd_gelu", "dx_dgelu"} <= {c[0] for c in be.calls}


@pytest.mark.parametrize("be", [True], indirect=True)
def test_linen_sparse_mlp_takes_the_block_on_cutlass(be):
    # linen users get the fused GELU epilogues too (the module composed the layers before)
    from sparse24_jax import linen as s24linen

    m = s24linen.SparseMLP(256, linear_kwargs={"backend": be, "dtype": jnp.bfloat16})
    x = jnp.ones((2, 32, 128), jnp.bfloat16)
    v = m.init({"params": jax.random.key(0), "sparse24": jax.random.key(1)}, x)
    be.calls.clear()
    jax.grad(lambda p: jnp.sum(m.apply({"params": p, "sparse24": v["sparse24"]}, x,
                                       rngs={"sparse24": jax.random.key(2)}).astype(jnp.float32)))(v["params"])
    assert {"fwd_gelu", "dx_dgelu"} <= {c[0] for c in be.calls}


@pytest.mark.parametrize("be", [True, False], indirect=True)
def test_linen_grad_acc_runs_in_the_weight_gradient_gemm(be):
    """linen.value_and_grad(grad_acc=) on a linen SparseMLP on "cutlass" (with and without
    the fused block): both MVUE weight gradients are the accumulating GEMM (dw_acc), not dw
    and an add, and the gradients are the running sums plus the plain ones."""
    from sparse24_jax import linen as s24linen

    m = s24linen.SparseMLP(256, linear_kwargs={"backend": be, "dtype": jnp.bfloat16})
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 128)).astype(np.float32))
    v = m.init({"params": jax.random.key(0), "sparse24": jax.random.key(1)}, x)
    acc = jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(p.size).standard_normal(p.shape), p.dtype),
                       v["params"])

    def loss(params, x):
        y = m.apply({"params": params, "sparse24": v["sparse24"]}, x, rngs={"sparse24": jax.random.key(2)})
        return jnp.mean(y.astype(jnp.float32) ** 2)

    be.calls.clear()
    _, plain = s24linen.value_and_grad(loss, v["params"], x)
    plain_kinds = [c[0] for c in be.calls]
    be.calls.clear()
    _, summed = s24linen.value_and_grad(loss, v["params"], x, grad_acc=acc)
    kinds = [c[0] for c in be.calls]
    assert plain_kinds.count("dw") == 2 and "dw_acc" not in plain_kinds
    assert kinds.count("dw_acc") == 2 and "dw" not in kinds, kinds
    for a, g, s in zip(jax.tree.leaves(acc), jax.tree.leaves(plain), jax.tree.leaves(summed)):
        np.testing.assert_allclose(np.asarray(s), np.asarray(a) + np.asarray(g), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("be", [True], indirect=True)
def test_fused_methods_check_their_inputs(be):
    import sparse24_jax as s24

    w = jnp.asarray(np.random.default_rng(0).standard_normal((128, 64)).astype(np.float32))
    op = be.prepare_projected(w, s24.transposable_mask_24(w), None, method="srste", dtype=jnp.bfloat16)
    x = jnp.ones((64, 64), jnp.bfloat16)
    with pytest.raises(ValueError, match="fuses only.*swiglu|fuses only"):
        be.matmul_fwd_activation("swiglu", x, op)
    with pytest.raises(ValueError, match="bfloat16"):
        be.matmul_fwd_activation("gelu", x.astype(jnp.float32), op)
    dy = jnp.ones((64, 128), jnp.bfloat16)
    with pytest.raises(ValueError, match="gelu'\\(Z1\\) must be bfloat16 \\(64, 64\\)"):
        be.matmul_dx_activation_grad("gelu", dy, op, jnp.ones((64, 128), jnp.bfloat16))


@pytest.mark.parametrize("be", [True], indirect=True)
def test_epilogue_config_choice(be, monkeypatch, tmp_path):
    """The fused GEMM's config: the epilogue table's entry (the shipped file, then
    $SPARSE24_CUTLASS_EPILOGUE_TABLE's entries over it) when built, else the plain table's
    when it has a fused instance, else the first built one; a bad table names its file."""
    import json

    from sparse24_jax_kernels.cutlass import backend
    from sparse24_jax_kernels.cutlass.build import CONFIGS

    built = be.epilogue_configs
    assert len(built) >= 2
    shipped = backend.epilogue_table()  # the package's own file must load
    assert all(set(row) <= {"fwd", "dx"} for row in shipped.values())
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"table": {"256x128": {"fwd": built[1]},
                                           "1280x5120": {"dx": built[-1]}}}))
    monkeypatch.setenv(backend.EPILOGUE_TABLE_ENV, str(table))
    be.epilogue_table = backend.epilogue_table()
    assert be._epilogue_config("fwd", 256, 128) == built[1]
    assert be._epilogue_config("dx", 1280, 5120) == built[-1]
    plain = backend.config_for("dx", 256, 128)
    assert be._epilogue_config("dx", 256, 128) == (plain if plain in built else built[0])
    # a known config without a fused instance in this library: the fallback
    unbuilt = next(c for c in CONFIGS if c not in built)
    be.epilogue_table = {(256, 128): {"fwd": unbuilt}}
    assert be._epilogue_config("fwd", 256, 128) in built
    for bad, msg in (({"table": {"256-128": {"fwd": built[0]}}}, "is not 'NxK'"),
                     ({"table": {"256x128": {"dw": built[0]}}}, "is not a product"),
                     ({"table": {"256x128": {"fwd": "t1x1x1"}}}, "config built for it")):
        table.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=msg):
            backend.epilogue_table()
    monkeypatch.setenv(backend.EPILOGUE_TABLE_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="no such file"):
        backend.epilogue_table()


def test_gemm_table_file_and_override(monkeypatch, tmp_path, capsys):
    """The plain GEMMs' configs: the shipped gemm_configs.json, then
    $SPARSE24_CUTLASS_GEMM_TABLE's entries over it; what benchmarks/sparse_gemm.py
    --table-out writes is such a file; a bad entry names its file and the fix."""
    import json
    import sys

    from sparse24_jax_kernels.cutlass import backend
    from sparse24_jax_kernels.cutlass.build import CONFIGS

    shipped = backend.gemm_table()
    assert shipped and all(set(row) == {"fwd", "dx", "dw"} for row in shipped.values())
    # the benchmark's writer -> the backend's reader
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import sparse_gemm
    finally:
        sys.path.pop(0)
    sk = next(c for c, cfg in CONFIGS.items() if c.endswith("_sk") and "fwd" not in cfg.products)
    rows = [{"N": 1280, "K": 5120, "M": 16384, "gemm": "dW", "cutlass_config": sk},
            {"N": 1280, "K": 5120, "M": 16384, "gemm": "fwd", "cutlass_config": backend.DEFAULT_CONFIG},
            {"N": 1280, "K": 5120, "M": 16384, "gemm": "compress W,W.T"},  # not a product
            {"N": 96, "K": 64, "M": 16384, "gemm": "dX"}]  # no CUTLASS time: no entry
    table = tmp_path / "t.json"
    with pytest.raises(SystemExit):  # the table is the CUTLASS configs': refused without them
        sparse_gemm.main(["--table-out", str(table)])
    assert "--table-out writes the CUTLASS configs' table: add --cutlass" in capsys.readouterr().err
    assert not table.exists()
    sparse_gemm.write_table(str(table), rows, "NVIDIA H200", ["--cutlass"])
    assert json.loads(table.read_text())["table"] == {
        "1280x5120": {"dw": sk, "fwd": backend.DEFAULT_CONFIG}}
    monkeypatch.setenv(backend.GEMM_TABLE_ENV, str(table))
    got = backend.gemm_table()
    assert got[(1280, 5120)] == {**shipped[(1280, 5120)], "dw": sk, "fwd": backend.DEFAULT_CONFIG}
    assert backend.config_for("dw", 1280, 5120) == sk
    assert backend.config_for("dx", 1280, 5120) == shipped[(1280, 5120)]["dx"]  # from the shipped file
    stream_k_fwd = {"table": {"256x128": {"fwd": sk}}}  # built for dw only
    for bad, msg in (({"table": {"256-128": {"fwd": backend.DEFAULT_CONFIG}}}, "is not 'NxK'"),
                     ({"table": {"256x128": {"bwd": backend.DEFAULT_CONFIG}}}, "is not a product"),
                     ({"table": {"256x128": {"fwd": "t1x1x1"}}}, "built for it"),
                     (stream_k_fwd, "built for it")):
        table.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=msg) as err:
            backend.gemm_table()
        assert str(table) in str(err.value)
    monkeypatch.setenv(backend.GEMM_TABLE_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="SPARSE24_CUTLASS_GEMM_TABLE.*no such file"):
        backend.gemm_table()


def test_config_for_falls_back_from_configs_the_library_lacks():
    from sparse24_jax_kernels.cutlass import backend

    sk = backend.gemm_table()[(6400, 1600)]["dw"]
    assert sk.endswith("_sk")
    assert backend.config_for("dw", 6400, 1600) == sk
    assert backend.config_for("dw", 6400, 1600, {sk, backend.DEFAULT_CONFIG}) == sk
    # a library built before the stream-K configs: the default config, not an unknown name
    assert backend.config_for("dw", 6400, 1600, {backend.DEFAULT_CONFIG}) == backend.DEFAULT_CONFIG
    assert backend.config_for("fwd", 96, 64, set()) == backend.DEFAULT_CONFIG
