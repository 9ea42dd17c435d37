"""GPU tests of the FFN block on the "cutlass" backend's fused GELU epilogues
(sparse24_jax.ffn with the capabilities FusedLinearActivation /
FusedLinearActivationGrad; kernels/cutlass/backend.py -> epilogue_ops). Need an
H100/H200 and the CUTLASS library with its fused instances
($SPARSE24_CUTLASS_KERNELS or a build).

* capabilities("cutlass") reports gelu for both;
* sparse24_ffn (value and gradients) on "cutlass" vs "xla", SR-STE and S-STE,
  MVUE off (close) and on (same error distribution vs the exact gradient);
* the jitted step holds the fused custom calls (two per block: fc1's forward,
  fc2's input gradient), and none with fused=False;
* SwiGLU's backward runs fused with the MVUE of dZ1 (own_swiglu_grad_mvue);
* SparseMLP (the training stack's GPT-2 FFN) takes the block on "cutlass", NNX and linen.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

jax = pytest.importorskip("jax")
jnp = jax.numpy

from _ffn_cases import ffn_grad_fn, ffn_weights, rel  # noqa: E402

EPI = "sparse24_cutlass_gemm_epi"


@pytest.fixture(scope="module")
def be():
    from sparse24_jax.backend import get_backend

    b = get_backend("cutlass")  # on a GPU machine this must work: no skip
    assert b.epilogue_configs, "the CUTLASS library has no fused epilogue instances: rebuild it"
    return b


def test_capabilities(be):
    from sparse24_jax.backend import capabilities

    caps = capabilities("cutlass")
    assert caps.linear_activation == ("gelu",) and caps.linear_activation_grad == ("gelu",)


@pytest.mark.parametrize("method", ["srste", "sste"])
@pytest.mark.parametrize("m, d, h", [(200, 256, 1024), (2048, 1280, 5120)])
def test_ffn_matches_xla(be, method, m, d, h):
    fc, proj = ffn_weights(d, h, method, seed=m, scale=0.05)
    rng = np.random.default_rng(m + 1)
    x = jnp.asarray(rng.standard_normal((m, d)).astype(np.float32)).astype(jnp.bfloat16)
    args = (x, fc.w, proj.w)
    got = ffn_grad_fn("cutlass", fc, proj, method)(*args)
    ref = ffn_grad_fn("xla", fc, proj, method)(*args)
    unfused = ffn_grad_fn("cutlass", fc, proj, method, fused=False)(*args)
    for g, r, u in zip(jax.tree.leaves(got), jax.tree.leaves(ref), jax.tree.leaves(unfused)):
        assert g.dtype == r.dtype and g.shape == r.shape
        assert rel(g, r) < 2e-2, rel(g, r)
        assert rel(g, u) < 2e-2, rel(g, u)


def test_ffn_with_mvue_is_unbiased_like_xla(be):
    m, d, h = 1024, 256, 1024
    fc, proj = ffn_weights(d, h, "srste", seed=3, scale=0.05)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((m, d)).astype(np.float32)).astype(jnp.bfloat16)
    keys = (jax.random.PRNGKey(1), jax.random.PRNGKey(2))
    args = (x, fc.w, proj.w)
    exact = ffn_grad_fn("xla", fc, proj, "srste")(*args)
    got = ffn_grad_fn("cutlass", fc, proj, "srste", keys)(*args)
    ref = ffn_grad_fn("xla", fc, proj, "srste", keys)(*args)
    assert rel(got[0], exact[0]) < 1e-2
    for i in (1, 2):  # dW1, dW2: MVUE estimates
        e_c, e_x = rel(got[1][i], exact[1][i]), rel(ref[1][i], exact[1][i])
        assert 0.05 < e_c < 2.0 and 0.5 < e_c / e_x < 2.0, (i, e_c, e_x)


@pytest.mark.parametrize("fused", [True, False])
def test_fused_custom_calls_in_the_step(be, fused):
    m, d, h = 512, 1280, 5120
    fc, proj = ffn_weights(d, h, "srste", scale=0.05)
    x = jnp.zeros((m, d), jnp.bfloat16)
    keys = (jax.random.PRNGKey(1), jax.random.PRNGKey(2))
    hlo = ffn_grad_fn("cutlass", fc, proj, "srste", keys, fused).lower(x, fc.w, proj.w).compile().as_text()
    n = hlo.count(f'custom_call_target="{EPI}"')
    assert n == (2 if fused else 0), n


def test_swiglu_backward_is_fused_with_the_mvue(be):
    """SwiGLU on "cutlass": the activation backward and the MVUE of dZ1 are one kernel
    (own_swiglu_grad_mvue, FusedActivationGradPrune), and the block's gradients match the
    unfused path (XLA's backward, then own_mvue) and XLA's 2:4 block within MVUE noise."""
    from sparse24_jax.backend import capabilities

    assert capabilities("cutlass").activation_grad_prune == ("swiglu",)
    m, d, h = 1024, 256, 512
    fc, proj = ffn_weights(d, h, "srste", seed=5, scale=0.05)
    fc2, _ = ffn_weights(d, 2 * h, "srste", seed=6, scale=0.05)  # fc: (2h, d) = [x | gate]
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((m, d)).astype(np.float32)).astype(jnp.bfloat16)
    keys = (jax.random.PRNGKey(1), jax.random.PRNGKey(2))
    args = (x, fc2.w, proj.w)

    def run(backend, fused, k=keys):
        return ffn_grad_fn(backend, fc2, proj, "srste", k, fused, activation="swiglu")

    hlo = run("cutlass", True).lower(*args).compile().as_text()
    assert hlo.count('custom_call_target="sparse24_cutlass_own_swiglu_grad_mvue"') == 1
    assert 'custom_call_target="sparse24_cutlass_own_swiglu_grad_mvue"' not in (
        run("cutlass", False).lower(*args).compile().as_text())
    exact = run("xla", False, (None, None))(*args)
    got, unfused, ref = run("cutlass", True)(*args), run("cutlass", False)(*args), run("xla", True)(*args)
    assert rel(got[0], exact[0]) < 1e-2
    # dX: dZ1 from the kernel's SwigluGrad or XLA's autodiff (rare last-bit differences)
    assert rel(got[1][0], unfused[1][0]) < 1e-3
    for i in (1, 2):  # dW1, dW2: MVUE estimates, same error as XLA's 2:4 block against the exact one
        e_c, e_x = rel(got[1][i], exact[1][i]), rel(ref[1][i], exact[1][i])
        assert 0.05 < e_c < 2.0 and 0.5 < e_c / e_x < 2.0, (i, e_c, e_x)
        assert rel(got[1][i], unfused[1][i]) < 0.5 * e_c  # mostly the same draws


def test_sparse_mlp_takes_the_fused_block(be):
    from flax import nnx

    from sparse24_jax import nnx as s24nnx

    d, h = 256, 1024
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 64, d)).astype(np.float32)).astype(jnp.bfloat16)

    def grads(backend, mvue=True):
        mod = s24nnx.SparseMLP(d, h, backend=backend, mvue=mvue, rngs=nnx.Rngs(0, sparse24=5))

        @nnx.jit
        def step(mod):
            return nnx.value_and_grad(lambda mm: jnp.mean(mm(x).astype(jnp.float32) ** 2))(mod)

        loss, g = step(mod)
        return float(loss), g

    l_c, g_c = grads("cutlass")
    l_x, g_x = grads("xla")
    _, g_exact = grads("xla", mvue=False)
    assert abs(l_c - l_x) < 2e-2 * abs(l_x)
    for a, b, e in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_x), jax.tree.leaves(g_exact)):
        e_c, e_x = rel(a, e), rel(b, e)
        assert e_c < 2.0 and 0.5 < (e_c + 1e-3) / (e_x + 1e-3) < 2.0, (e_c, e_x)
    # the module's step is the fused block: two fused GEMMs in its compiled HLO
    mod = s24nnx.SparseMLP(d, h, backend="cutlass", rngs=nnx.Rngs(0, sparse24=5))
    graphdef, params, rest = nnx.split(mod, nnx.Param, ...)

    def grad(params, rest):
        mm = nnx.merge(graphdef, params, rest)
        return nnx.grad(lambda mm: jnp.mean(mm(x).astype(jnp.float32) ** 2))(mm)

    hlo = jax.jit(grad).lower(params, rest).compile().as_text()
    assert hlo.count(f'custom_call_target="{EPI}"') == 2


def test_linen_sparse_mlp_takes_the_fused_block(be):
    """The linen SparseMLP runs the fused block on "cutlass" as the NNX one does (two fused
    GEMMs in the compiled step; it composed the layers before session 17), with gradients in
    the xla backend's error distribution around the exact ones."""
    from sparse24_jax import linen as s24linen

    d, h = 256, 1024
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 64, d)).astype(np.float32)).astype(jnp.bfloat16)

    def run(backend, mvue=True):
        mod = s24linen.SparseMLP(h, linear_kwargs={"backend": backend, "dtype": jnp.bfloat16, "mvue": mvue})
        v = mod.init({"params": jax.random.key(0), "sparse24": jax.random.key(1)}, x)

        def grad(params):
            return jax.grad(lambda p: jnp.mean(mod.apply({"params": p, "sparse24": v["sparse24"]}, x,
                                                         rngs={"sparse24": jax.random.key(5)})
                                               .astype(jnp.float32) ** 2))(params)

        f = jax.jit(grad)
        return f(v["params"]), f.lower(v["params"]).compile().as_text()

    g, hlo = run("cutlass")
    assert hlo.count(f'custom_call_target="{EPI}"') == 2
    g_x, _ = run("xla")
    g_exact, _ = run("xla", mvue=False)
    for a, b, e in zip(jax.tree.leaves(g), jax.tree.leaves(g_x), jax.tree.leaves(g_exact)):
        e_c, e_x = rel(a, e), rel(b, e)
        assert e_c < 2.0 and 0.5 < (e_c + 1e-3) / (e_x + 1e-3) < 2.0, (e_c, e_x)


@pytest.mark.parametrize("mvue", [(False, True), False])
def test_sparse_mlp_mvue_per_linear_takes_the_fused_block(be, mvue):
    """SparseMLP with MVUE off for fc (train's mvue_fc = false) or for both: still the fused
    block (two fused GEMMs), one MVUE kernel for proj's dY or none; fc's weight gradient the
    exact one (a dense GEMM), proj's an MVUE estimate in XLA's error distribution."""
    from flax import nnx

    from sparse24_jax import nnx as s24nnx

    d, h = 256, 1024
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 64, d)).astype(np.float32)).astype(jnp.bfloat16)

    def run(backend, mv):
        mod = s24nnx.SparseMLP(d, h, backend=backend, mvue=mv, rngs=nnx.Rngs(0, sparse24=5))
        graphdef, params, rest = nnx.split(mod, nnx.Param, ...)

        def grad(params, rest):
            mm = nnx.merge(graphdef, params, rest)
            return nnx.grad(lambda mm: jnp.mean(mm(x).astype(jnp.float32) ** 2))(mm)

        f = jax.jit(grad)
        return f(params, rest), f.lower(params, rest).compile().as_text()

    g, hlo = run("cutlass", mvue)
    assert hlo.count(f'custom_call_target="{EPI}"') == 2
    assert hlo.count('custom_call_target="sparse24_cutlass_own_mvue"') == (1 if mvue else 0)
    g_x, _ = run("xla", mvue)
    g_exact, _ = run("xla", False)
    assert rel(g.fc.weight[...], g_exact.fc.weight[...]) < 2e-2
    if mvue:
        exact = g_exact.proj.weight[...]
        e_c, e_x = rel(g.proj.weight[...], exact), rel(g_x.proj.weight[...], exact)
        assert 0.05 < e_c < 2.0 and 0.5 < e_c / e_x < 2.0, (e_c, e_x)
    else:
        assert rel(g.proj.weight[...], g_exact.proj.weight[...]) < 2e-2


@pytest.mark.parametrize("mvue", [True, (False, True)])
def test_grad_acc_in_the_weight_gradient_gemm(be, mvue):
    """value_and_grad(grad_acc=) on a SparseMLP on "cutlass": the running sums added in the
    weight-gradient GEMMs (sparse24_cutlass_gemm_acc, one per MVUE linear, no plain dw GEMM
    left), each gradient the sum plus value_and_grad's without it (the same kernels, keys and
    products: equal up to float32 rounding of the add); inside a jitted micro-batch scan the
    sums are not copied."""
    from flax import nnx

    from sparse24_jax import nnx as s24nnx

    d, h = 256, 1024
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.standard_normal((2, 4, 64, d)).astype(np.float32)).astype(jnp.bfloat16)
    mod = s24nnx.SparseMLP(d, h, backend="cutlass", mvue=mvue, dtype=jnp.bfloat16, rngs=nnx.Rngs(0, sparse24=5))
    gdef, params, rest = nnx.split(mod, nnx.Param, ...)
    acc = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape).astype(np.float32)), params)

    def loss(m, x):
        return jnp.mean(m(x).astype(jnp.float32) ** 2)

    plain = jax.jit(lambda p, r, x: s24nnx.value_and_grad(loss, gdef, p, r, x)[1])
    summed = jax.jit(lambda p, r, x, a: s24nnx.value_and_grad(loss, gdef, p, r, x, grad_acc=a)[1])
    g0, g1 = plain(params, rest, xs[0]), summed(params, rest, xs[0], acc)
    for a, g, s in zip(jax.tree.leaves(acc), jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(s), np.asarray(a) + np.asarray(g), rtol=1e-5, atol=1e-5)
    hlo = summed.lower(params, rest, xs[0], acc).compile().as_text()
    hlo0 = plain.lower(params, rest, xs[0]).compile().as_text()
    n_acc = 2 if mvue is True else 1
    gemm = 'custom_call_target="sparse24_cutlass_gemm"'
    assert hlo.count('custom_call_target="sparse24_cutlass_gemm_acc"') == n_acc
    assert hlo.count(gemm) == hlo0.count(gemm) - n_acc  # the sparse dW GEMMs became accumulating ones

    def scan(params, rest, xs):
        def micro(carry, x):
            grads, rest = carry
            _, grads, rest = s24nnx.value_and_grad(loss, gdef, params, rest, x, grad_acc=grads)
            return (grads, rest), None

        return jax.lax.scan(micro, (jax.tree.map(jnp.zeros_like, params), rest), xs)[0][0]

    text = jax.jit(scan).lower(params, rest, xs).compile().as_text()
    import re

    copies = re.findall(r"= f32\[(?:1024,256|256,1024)\]\{[^}]*\} copy\(.*", text)
    assert not copies, "a running sum is copied: " + "\n".join(copies[:4])


def test_linen_grad_acc_in_the_weight_gradient_gemm(be):
    """linen.value_and_grad(grad_acc=) on a linen SparseMLP on "cutlass": the running sums
    added in both weight-gradient GEMMs (sparse24_cutlass_gemm_acc, no plain dw GEMM left),
    each gradient the sum plus the plain one; inside a jitted micro-batch scan the sums are
    not copied."""
    import re

    from sparse24_jax import linen as s24linen

    d, h = 256, 1024
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.standard_normal((2, 4, 64, d)).astype(np.float32)).astype(jnp.bfloat16)
    mod = s24linen.SparseMLP(h, linear_kwargs={"backend": "cutlass", "dtype": jnp.bfloat16})
    v = mod.init({"params": jax.random.key(0), "sparse24": jax.random.key(1)}, xs[0])
    params = v["params"]
    acc = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape).astype(np.float32)), params)

    def loss(p, x):
        y = mod.apply({"params": p, "sparse24": v["sparse24"]}, x, rngs={"sparse24": jax.random.key(5)})
        return jnp.mean(y.astype(jnp.float32) ** 2)

    plain = jax.jit(lambda p, x: s24linen.value_and_grad(loss, p, x)[1])
    summed = jax.jit(lambda p, x, a: s24linen.value_and_grad(loss, p, x, grad_acc=a)[1])
    g0, g1 = plain(params, xs[0]), summed(params, xs[0], acc)
    for a, g, s in zip(jax.tree.leaves(acc), jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(s), np.asarray(a) + np.asarray(g), rtol=1e-5, atol=1e-5)
    hlo = summed.lower(params, xs[0], acc).compile().as_text()
    hlo0 = plain.lower(params, xs[0]).compile().as_text()
    gemm = 'custom_call_target="sparse24_cutlass_gemm"'
    assert hlo.count('custom_call_target="sparse24_cutlass_gemm_acc"') == 2
    assert hlo.count(gemm) == hlo0.count(gemm) - 2

    def scan(params, xs):
        def micro(grads, x):
            return s24linen.value_and_grad(loss, params, x, grad_acc=grads)[1], None

        return jax.lax.scan(micro, jax.tree.map(jnp.zeros_like, params), xs)[0]

    text = jax.jit(scan).lower(params, xs).compile().as_text()
    copies = re.findall(r"= f32\[(?:1024,256|256,1024)\]\{[^}]*\} copy\(.*", text)
    assert not copies, "a running sum is copied: " + "\n".join(copies[:4])
