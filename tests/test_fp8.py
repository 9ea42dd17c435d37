"""FP8 recipe (sparse24_jax.fp8, sparse24_linear(precision="fp8")) against a
hand-written NumPy version: ml_dtypes' float8 types, float32 division and
clipping, float64 accumulation of the exact fp8 products."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from sparse24_jax import (fp8, mvue_24, prepare_sparse24_weight, project_weight, sparse24_linear, sste_scale,
                          transposable_mask_24)

E4M3_NP, E5M2_NP = ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2
F = {E4M3_NP: 448.0, E5M2_NP: 57344.0}
JNP = {E4M3_NP: fp8.E4M3, E5M2_NP: fp8.E5M2}
TINY = np.finfo(np.float32).tiny


def np_quantize(x, mdt, scale=None):
    """The recipe in NumPy: s = amax / F (1 if not a normal float32),
    q = fp8(clip(x / s, -F, F)) with round-to-nearest-even."""
    x32 = np.asarray(x, np.float32)
    f = np.float32(F[mdt])
    if scale is None:
        amax = np.max(np.abs(x32)) if x32.size else np.float32(0)
        s = np.float32(amax) / f
        scale = s if s >= TINY else np.float32(1)
    scale = np.float32(scale)
    q = np.clip(x32 / scale, -f, f).astype(mdt)
    return q, scale


def np_fp8_dot(a, b_t, a_mdt, b_mdt):
    """(q_a @ q_b_t.T) * (s_a * s_b): the exact product sum (float64) and a
    bound on float32 accumulation's rounding."""
    qa, sa = np_quantize(a, a_mdt)
    qb, sb = np_quantize(b_t, b_mdt)
    qa64, qb64 = qa.astype(np.float64), qb.astype(np.float64)
    s = np.float64(np.float32(sa * sb))
    exact = (qa64 @ qb64.T) * s
    k = qa.shape[1]
    bound = (k + 2) * 2.0**-24 * (np.abs(qa64) @ np.abs(qb64).T) * s + 1e-30
    return exact, bound


def assert_recipe(got, a, b_t, a_mdt, b_mdt):
    exact, bound = np_fp8_dot(a, b_t, a_mdt, b_mdt)
    err = np.abs(np.asarray(got, np.float64) - exact)
    assert np.all(err <= bound), float(np.max(err - bound))


def bits(a):
    a = np.asarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[a.dtype.itemsize])


@pytest.mark.parametrize("mdt", [E4M3_NP, E5M2_NP])
def test_quantize_matches_numpy(mdt):
    rng = np.random.default_rng(0)
    # normal values spanning many binades, negatives, exact zeros
    x = (rng.standard_normal((16, 32)) * np.exp(rng.uniform(-8, 8, (16, 32)))).astype(np.float32)
    x[0, :5] = 0.0
    x[1, 0] = -np.max(np.abs(x)) * 3  # amax from a negative value
    q, s = fp8.quantize(jnp.asarray(x), JNP[mdt])
    q_ref, s_ref = np_quantize(x, mdt)
    assert q.dtype == jnp.dtype(JNP[mdt]) and s.dtype == jnp.float32
    assert bits(np.float32(s)) == bits(s_ref)
    np.testing.assert_array_equal(bits(q), bits(q_ref))
    # amax lands on +-F exactly (saturated if x / s rounds up past F)
    assert float(np.asarray(q[1, 0], np.float32)) == -F[mdt]
    assert np.all(np.asarray(q[0, :5], np.float32) == 0)
    # x ~= q * s within the format's half-ulp (3 or 2 mantissa bits) or the
    # subnormal spacing
    deq = np.asarray(fp8.dequantize(q, s))
    mant = 3 if mdt is E4M3_NP else 2
    sub = float(ml_dtypes.finfo(mdt).smallest_subnormal) * float(s)
    assert np.all(np.abs(deq - x) <= np.abs(x) * 2.0 ** -(mant + 1) + sub / 2 + 1e-30)


@pytest.mark.parametrize("mdt", [E4M3_NP, E5M2_NP])
def test_quantize_bf16_input_and_all_representable_values(mdt):
    # every finite fp8 value and every midpoint between neighbours (ties to
    # even), placed with amax = F so that the scale is exactly 1
    allv = np.arange(256, dtype=np.uint8).view(mdt).astype(np.float32)
    allv = np.unique(allv[np.isfinite(allv)])
    mids = ((allv[1:].astype(np.float64) + allv[:-1]) / 2).astype(np.float32)
    x = np.concatenate([allv, mids])
    q, s = fp8.quantize(jnp.asarray(x), JNP[mdt])
    assert float(s) == 1.0
    np.testing.assert_array_equal(bits(q), bits(np_quantize(x, mdt)[0]))
    np.testing.assert_array_equal(np.asarray(q[: allv.size], np.float32), allv)
    # bfloat16 input: upcast exactly, same result as its float32 value
    xb = jnp.asarray(np.random.default_rng(1).standard_normal(64), jnp.bfloat16)
    qb, sb = fp8.quantize(xb, JNP[mdt])
    qr, sr = np_quantize(np.asarray(xb, np.float32), mdt)
    np.testing.assert_array_equal(bits(qb), bits(qr))
    assert float(sb) == float(sr)


@pytest.mark.parametrize("mdt", [E4M3_NP, E5M2_NP])
def test_quantize_saturates_with_fixed_scale(mdt):
    f = F[mdt]
    x = np.array([f * 4, -f * 1000, f * 1.01, -f, f / 2, 0.0, 1e30, -1e30], np.float32)
    q, s = fp8.quantize(jnp.asarray(x), JNP[mdt], scale=1.0)
    got = np.asarray(q, np.float32)
    np.testing.assert_array_equal(got, [f, -f, f, -f, f / 2, 0, f, -f])
    np.testing.assert_array_equal(bits(q), bits(np_quantize(x, mdt, scale=1.0)[0]))
    assert np.all(np.isfinite(got))
    # values far above F under amax scaling: no overflow, amax maps to F
    q2, s2 = fp8.quantize(jnp.asarray(x[:5]), JNP[mdt])
    assert float(s2) == np.float32(np.float32(f * 1000) / np.float32(f))
    assert np.asarray(q2, np.float32)[1] == -f


@pytest.mark.parametrize("mdt", [E4M3_NP, E5M2_NP])
def test_quantize_zero_and_tiny_amax(mdt):
    q, s = fp8.quantize(jnp.zeros((4, 8), jnp.bfloat16), JNP[mdt])
    assert float(s) == 1.0 and np.all(np.asarray(q, np.float32) == 0)
    # -0.0 is zero too
    q, s = fp8.quantize(jnp.full((4,), -0.0), JNP[mdt])
    assert float(s) == 1.0 and np.all(np.asarray(q, np.float32) == 0)
    # amax / F below the smallest normal float32: scale 1 (the tensor is zero in fp8)
    x = np.full((4,), 1e-36, np.float32)
    q, s = fp8.quantize(jnp.asarray(x), JNP[mdt])
    assert float(s) == 1.0 and np.all(np.asarray(q, np.float32) == 0)
    np.testing.assert_array_equal(bits(q), bits(np_quantize(x, mdt)[0]))


def test_fp8_dot_recipe():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((16, 32)).astype(np.float32) * 3
    b_t = rng.standard_normal((8, 32)).astype(np.float32) * 1e-3
    for a_mdt, b_mdt in [(E4M3_NP, E4M3_NP), (E5M2_NP, E4M3_NP)]:
        got = fp8.fp8_dot(jnp.asarray(a), jnp.asarray(b_t), JNP[a_mdt], JNP[b_mdt])
        assert got.dtype == jnp.float32
        assert_recipe(got, a, b_t, a_mdt, b_mdt)
    # exact case: integer operands, amax = F, so the scales are 1 and 2 and
    # every sum is an exact float32: bit-for-bit
    ai = rng.integers(-8, 9, (8, 16)).astype(np.float32)
    ai[0, 0] = 448
    bi = rng.integers(-8, 9, (4, 16)).astype(np.float32) * 2
    bi[1, 3] = -896
    got = np.asarray(fp8.fp8_dot(jnp.asarray(ai), jnp.asarray(bi)))
    np.testing.assert_array_equal(got, (ai @ (bi / 2).T) * 2)


def _sste_setup(m=16, k=32, n=16, dtype=jnp.float32, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    x = (jax.random.normal(ks[0], (m, k)) * 2).astype(dtype)
    w = jax.random.normal(ks[1], (n, k)) * 0.1
    dz = (jax.random.normal(ks[2], (m, n)) * 1e-4).astype(dtype)
    return x, w, dz, ks[3]


@pytest.mark.parametrize("method,mvue", [("sste", True), ("sste", False), ("srste", True), ("srste", False),
                                         ("dense", False)])
def test_linear_fp8_three_gemms_match_recipe(method, mvue):
    x, w, dz, key = _sste_setup()
    mask = transposable_mask_24(w) if method == "srste" else None
    beta = sste_scale(w) if method == "sste" else None
    key = key if mvue else None
    f = lambda x, w: sparse24_linear(x, w, mask, beta, key, method=method, mvue=mvue, precision="fp8")
    z, vjp = jax.vjp(f, x, w)
    dx, dw = vjp(dz)
    w_s = np.asarray(project_weight(w, mask, beta, method=method)[0], np.float32)
    xn, dzn = np.asarray(x, np.float32), np.asarray(dz, np.float32)
    g = np.asarray(mvue_24(key, dz.T, axis=-1) if mvue else dz.T, np.float32)  # S_z(dZ.T)
    assert z.dtype == x.dtype and dx.dtype == x.dtype and dw.dtype == w.dtype
    assert_recipe(z, xn, w_s, E4M3_NP, E4M3_NP)           # Z  = X @ W_s.T
    assert_recipe(dx, dzn, w_s.T, E5M2_NP, E4M3_NP)       # dX = dZ @ W_s
    assert_recipe(dw, g, xn.T, E5M2_NP, E4M3_NP)          # dW = S_z(dZ.T) @ X
    # and, on the xla backend, bit-for-bit fp8_dot of the same operands
    ws = jnp.asarray(w_s)
    np.testing.assert_array_equal(bits(z), bits(fp8.fp8_dot(x, ws)))
    np.testing.assert_array_equal(bits(dx), bits(fp8.fp8_dot(dz, ws.T, fp8.E5M2)))
    np.testing.assert_array_equal(bits(dw), bits(fp8.fp8_dot(jnp.asarray(g), x.T, fp8.E5M2)))


def test_linear_fp8_bf16_exact_case_and_leading_dims():
    # bfloat16 compute dtype, 3-D input with M = 2*5 = 10 tokens (padded to
    # 12), integer-valued operands: every sum exact, so the NumPy recipe is
    # reproduced bit for bit, including the final rounding to bfloat16
    rng = np.random.default_rng(3)
    x = rng.integers(-8, 9, (2, 5, 16)).astype(np.float32)
    x[0, 0, 0] = 448
    w = rng.integers(-4, 5, (8, 16)).astype(np.float32) * 0.25
    w[0, 0] = 112.0  # amax: scale 0.25
    dz = rng.integers(-8, 9, (2, 5, 8)).astype(np.float32) * 4.0
    dz[1, 1, 1] = 57344.0 * 4  # scale 4
    f = lambda x, w: sparse24_linear(x, w, method="dense", precision="fp8")
    xb, dzb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(dz, jnp.bfloat16)
    z, vjp = jax.vjp(f, xb, jnp.asarray(w))
    dx, dw = vjp(dzb)
    bf = ml_dtypes.bfloat16
    x2, dz2 = x.reshape(-1, 16), dz.reshape(-1, 8)
    np.testing.assert_array_equal(np.asarray(z, np.float32), (x2 @ w.T).astype(bf).astype(np.float32).reshape(2, 5, 8))
    np.testing.assert_array_equal(np.asarray(dx, np.float32), (dz2 @ w).astype(bf).astype(np.float32).reshape(2, 5, 16))
    np.testing.assert_array_equal(np.asarray(dw), dz2.T @ x2)


def test_linear_fp8_differs_from_compute_by_fp8_rounding_only():
    x, w, dz, key = _sste_setup(seed=5)
    beta = sste_scale(w)
    out = {}
    for p in ("compute", "fp8"):
        f = lambda x, w: sparse24_linear(x, w, None, beta, key, method="sste", precision=p)
        z, vjp = jax.vjp(f, x, w)
        out[p] = (z, *vjp(dz))
    for a, b in zip(out["compute"], out["fp8"]):
        rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
        assert 1e-4 < rel < 0.1, rel
    with pytest.raises(ValueError, match="precision"):
        sparse24_linear(x, w, None, beta, key, method="sste", precision="fp16")


def test_modules_carry_precision():
    from flax import nnx

    from sparse24_jax import linen as s24linen
    from sparse24_jax import nnx as s24nnx

    x = jax.random.normal(jax.random.key(0), (2, 4, 16))
    layer = s24nnx.SparseLinear(16, 8, method="sste", precision="fp8", rngs=nnx.Rngs(0, sparse24=1))
    w, beta = layer.weight.get_value(), layer.beta.get_value()
    key = nnx.Rngs(0, sparse24=1)["sparse24"].fork()()
    got = layer(x)
    want = sparse24_linear(x, w, None, beta, key, method="sste", precision="fp8")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert not np.array_equal(np.asarray(got), np.asarray(sparse24_linear(x, w, None, beta, key, method="sste")))
    mlp = s24nnx.SparseMLP(16, 32, method="sste", precision="fp8", rngs=nnx.Rngs(0))
    assert mlp.fc.precision == mlp.proj.precision == "fp8"
    gmlp = s24nnx.SparseGatedMLP(16, 32, method="sste", precision="fp8", rngs=nnx.Rngs(0))
    assert gmlp.gate_up.precision == "fp8"
    with pytest.raises(ValueError, match="precision"):
        s24nnx.SparseLinear(16, 8, precision="fp4", rngs=nnx.Rngs(0))

    m = s24linen.SparseLinear(8, method="sste", precision="fp8", mvue=False)
    v = m.init(jax.random.key(0), x)
    y = m.apply(v, x)
    want = sparse24_linear(x, v["params"]["weight"], None, v["sparse24"]["beta"], method="sste", mvue=False,
                           precision="fp8")
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want))


def test_precision_bf16_is_the_earlier_name_of_compute():
    # "bf16" meant "the GEMMs in the compute dtype" (float32 too): still accepted everywhere,
    # mapped to "compute" where a precision comes in.
    from flax import nnx

    from sparse24_jax import linen as s24linen
    from sparse24_jax import nnx as s24nnx

    assert fp8.PRECISIONS == ("compute", "fp8") and fp8.canonical_precision("bf16") == "compute"
    assert fp8.canonical_precision("compute") == "compute" and fp8.canonical_precision("fp8") == "fp8"
    with pytest.raises(ValueError, match=r"^unknown precision 'fp16': use one of \('compute', 'fp8'\)$"):
        fp8.canonical_precision("fp16")
    x, w, dz, key = _sste_setup(seed=5)
    mask = transposable_mask_24(w)
    prep = prepare_sparse24_weight(w, mask, dtype=x.dtype)
    out = {}
    for p in ("compute", "bf16"):
        f = lambda x, w: sparse24_linear(x, w, mask, None, key, precision=p, prepared=prep)
        z, vjp = jax.vjp(f, x, w)
        out[p] = (z, *vjp(dz))
    for a, b in zip(out["compute"], out["bf16"]):
        np.testing.assert_array_equal(bits(a), bits(b))

    mlp = s24nnx.SparseMLP(16, 32, precision="bf16", dtype=jnp.float32, rngs=nnx.Rngs(0))
    assert mlp.fc.precision == mlp.proj.precision == "compute"
    s24nnx.prepare_weights(mlp)  # the FFN block and compress-once take it as "compute"
    assert mlp.fc.prepared.get_value() is not None
    xs = jax.random.normal(jax.random.key(1), (4, 16))
    ys = {}
    for p in ("compute", "bf16"):
        m = s24linen.SparseLinear(8, precision=p, mvue=False)
        ys[p] = m.apply(m.init(jax.random.key(0), xs), xs)
    np.testing.assert_array_equal(bits(ys["compute"]), bits(ys["bf16"]))
