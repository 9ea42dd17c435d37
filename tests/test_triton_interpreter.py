"""The raw Triton kernels on CPU, under the Triton interpreter (TRITON_INTERPRET=1),
against their pure-JAX reference twins; plus an offline compile of every kernel
for sm_90 (Hopper), which catches what the interpreter does not check (block
and dtype rules of tl.dot, layouts) without a GPU.

Skipped, with the reason, where triton (or torch, which the interpreter's
launcher needs for the buffers) is not installed. The JAX wrappers
(jax_triton.triton_call) need a GPU: tests/gpu/test_triton_kernels.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _gpu_visible() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


# triton.jit reads TRITON_INTERPRET when a kernel (and triton's own standard
# library) is decorated, i.e. at import: it must be set before triton is
# imported, and it holds for the whole process. So this file only runs where
# no GPU is visible (there tests/gpu/ runs the compiled kernels instead, and
# interpreting would break them).
if _gpu_visible():
    pytest.skip(
        "a GPU is visible: the compiled kernels are tested in tests/gpu/ (the interpreter "
        "would replace them process-wide)",
        allow_module_level=True,
    )
if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "triton was imported before this module could turn on its interpreter: run "
        "`TRITON_INTERPRET=1 pytest tests/test_triton_interpreter.py`",
        allow_module_level=True,
    )
os.environ["TRITON_INTERPRET"] = "1"

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton==3.6.0)")
torch = pytest.importorskip("torch", reason="the Triton interpreter needs torch for its buffers")

import sparse24_jax as s24  # noqa: E402
from sparse24_jax.mvue import mvue_inclusion_probs  # noqa: E402
from _kernels_path import ensure_kernels_package  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
_KMODS = ("compress", "mask_search", "matmul", "mvue", "soft_threshold", "gated")


@pytest.fixture(scope="module")
def K():
    """The kernel modules (interpreted)."""
    import triton.runtime.interpreter as ti

    ensure_kernels_package()
    # The interpreter holds scalars as 1-element arrays and converts them with
    # int(array), which numpy >= 2.4 refuses for 1-D arrays; loops with a
    # runtime bound (the GEMM's) need it.
    orig = ti._patch_lang_tensor

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    ti._patch_lang_tensor = patched
    mods = {m: importlib.import_module(f"sparse24_jax_kernels.triton.{m}") for m in _KMODS}
    yield type("Kernels", (), mods)
    ti._patch_lang_tensor = orig


def T(a):
    """numpy / JAX array -> torch tensor (bfloat16 through its bits)."""
    a = np.asarray(a)
    if a.dtype == jnp.bfloat16:
        return torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def N(t, dtype=None):
    """torch tensor -> numpy (bfloat16 back through its bits)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy().view(jnp.bfloat16)
    return t.numpy()


def empty(shape, dtype):
    tdt = {
        jnp.dtype(jnp.float32): torch.float32,
        jnp.dtype(jnp.float16): torch.float16,
        jnp.dtype(jnp.bfloat16): torch.bfloat16,
        jnp.dtype(jnp.uint8): torch.uint8,
    }[jnp.dtype(dtype)]
    return torch.zeros(shape, dtype=tdt)


def cdiv(a, b):
    return -(-a // b)


DTYPES = [jnp.float32, jnp.float16, jnp.bfloat16]


# ---------------------------------------------------------------------------
# transposable mask search
def run_mask(K, w):
    n, k = w.shape
    out = empty((n, k), jnp.uint8)
    br, bc = 8, 32
    K.mask_search.transposable_mask_kernel[(cdiv(n // 4, br), cdiv(k // 4, bc))](
        T(w), out, N_ROWS=n, N_COLS=k, BLOCKS_R=br, BLOCKS_C=bc
    )
    return N(out).astype(bool)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 16), (20, 36), (36, 132)])
def test_mask_search_matches_reference(K, dtype, shape):
    rng = np.random.default_rng(hash(shape) % 2**32)
    # small integers: many exact ties, which must break the reference's way
    w = jnp.asarray(rng.integers(-3, 4, size=shape), dtype)
    np.testing.assert_array_equal(run_mask(K, w), np.asarray(s24.transposable_mask_24(w)))
    w = jnp.asarray(rng.standard_normal(shape), dtype)
    np.testing.assert_array_equal(run_mask(K, w), np.asarray(s24.transposable_mask_24(w)))


def test_mask_search_edges(K):
    z = jnp.zeros((8, 8), jnp.float32)  # all tied: pattern 0 everywhere
    np.testing.assert_array_equal(run_mask(K, z), np.asarray(s24.transposable_mask_24(z)))
    rng = np.random.default_rng(1)
    huge = jnp.asarray(rng.standard_normal((12, 16)) * 1e30, jnp.float32)
    np.testing.assert_array_equal(run_mask(K, huge), np.asarray(s24.transposable_mask_24(huge)))
    tiny = jnp.asarray(rng.standard_normal((12, 16)) * 1e-40, jnp.float32)  # subnormal (XLA may flush)
    m = run_mask(K, tiny)
    assert (m.reshape(3, 4, 4, 4).sum(1) == 2).all() and (m.reshape(12, 4, 4).sum(-1) == 2).all()
    ones = jnp.ones((4, 4), jnp.float16)
    np.testing.assert_array_equal(run_mask(K, ones), s24.TRANSPOSABLE_PATTERNS[0].astype(bool))


# ---------------------------------------------------------------------------
# prune + compress
def run_compress(K, x, mask=None, transpose=False, dtype=None):
    r, c = x.shape
    rows, q = (c, r) if transpose else (r, c)
    sr, sq = (1, c) if transpose else (c, 1)
    vals = empty((rows, q // 2), dtype or x.dtype)
    meta = empty((rows, cdiv(q, 8)), jnp.uint8)
    keep = x if mask is None else np.asarray(mask).astype(np.uint8)
    K.compress.compress24_kernel[(cdiv(rows, 32), cdiv(q, 256))](
        T(x), T(keep), vals, meta, N_ROWS=rows, N_Q=q, STRIDE_ROW=sr, STRIDE_Q=sq,
        HAS_MASK=mask is not None, BLOCK_ROWS=32, BLOCK_CHUNKS=32,
    )
    return N(vals), N(meta)


# The interpreter rounds float32 -> bfloat16 by truncation (the compiled
# kernels round to nearest even, and tests/gpu checks them bit for bit), so
# values computed in float32 and stored as bfloat16 get 1 ulp of slack here.
BF16_ULP = 2.0**-7


def assert_packed_equal(got, ref, cast_slack=False):
    gv, gm = got
    rv, rm = ref
    np.testing.assert_array_equal(gm, np.asarray(rm))
    if cast_slack and gv.dtype == jnp.bfloat16:
        np.testing.assert_allclose(
            gv.astype(np.float32), np.asarray(rv).astype(np.float32), rtol=BF16_ULP, atol=0
        )
        return
    # bit-exact values (compares -0/+0 and NaN payloads too)
    assert gv.dtype == rv.dtype
    np.testing.assert_array_equal(gv.view(np.uint8), np.asarray(rv).view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 16), (12, 20), (40, 72)])
def test_compress_matches_reference(K, dtype, shape):
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal(shape), dtype)
    mask = s24.transposable_mask_24(w) if shape[0] % 4 == 0 else s24.mask_24(w)
    # with a mask
    assert_packed_equal(run_compress(K, w, mask), s24.compress_24(w, mask))
    # from the non-zeros of W_s, and W_s.T read in place
    w_s = jnp.where(mask, w, 0)
    assert_packed_equal(run_compress(K, w_s), s24.compress_24(w_s, w_s != 0))
    assert_packed_equal(run_compress(K, w_s, transpose=True), s24.compress_24(w_s.T, w_s.T != 0))
    # float32 master -> bfloat16 packed in the same pass
    if dtype == jnp.float32:
        v, m = run_compress(K, w, mask, dtype=jnp.bfloat16)
        rv, rm = s24.compress_24(w.astype(jnp.bfloat16), mask)
        assert_packed_equal((v, m), (rv, rm), cast_slack=True)


def test_compress_edges(K):
    # groups with 0 or 1 kept, -0, odd number of groups (meta padding nibble).
    # (No subnormals: the kernels count them as non-zero, XLA on CPU flushes them.)
    x = np.array(
        [[0, 0, 0, 0, 0, 0, 0, 5, -0.0, 3, 0, 0],
         [1, 0, 0, 0, 0, 0, 2, 0, 0, 0, -0.0, 0],
         [0, -0.0, 7, 0, 8, 9, 0, 0, 1e-3, 0, 0, 3e38],
         [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    xj = jnp.asarray(x)
    assert_packed_equal(run_compress(K, x), s24.compress_24(xj, xj != 0))
    mask = np.zeros_like(x, bool)
    mask[:, 1] = True
    assert_packed_equal(run_compress(K, x, mask), s24.compress_24(xj, jnp.asarray(mask)))


def run_compress_both(K, x, mask=None, dtype=None, block_n=16, block_chunks=2):
    """compress24_both_kernel: W and W.T packed from one read (small blocks, so
    the odd shapes below span several programs in both directions)."""
    n, k = x.shape
    dt = dtype or x.dtype
    outs = (empty((n, k // 2), dt), empty((n, cdiv(k, 8)), jnp.uint8),
            empty((k, n // 2), dt), empty((k, cdiv(n, 8)), jnp.uint8))
    keep = x if mask is None else np.asarray(mask).astype(np.uint8)
    K.compress.compress24_both_kernel[(cdiv(n, block_n), cdiv(k, 8 * block_chunks))](
        T(x), T(keep), *outs, N=n, K=k, HAS_MASK=mask is not None, BLOCK_N=block_n, BLOCK_CHUNKS=block_chunks,
    )
    return (N(outs[0]), N(outs[1])), (N(outs[2]), N(outs[3]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 16), (12, 20), (20, 36), (40, 72)])
def test_compress_both_matches_two_references(K, dtype, shape):
    """N or K = 4 mod 8 (a last chunk of one group, meta padding) in both outputs."""
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.standard_normal(shape), dtype)
    mask = s24.transposable_mask_24(w)
    got_w, got_t = run_compress_both(K, w, mask)
    assert_packed_equal(got_w, s24.compress_24(w, mask))
    assert_packed_equal(got_t, s24.compress_24(w.T, mask.T))
    w_s = jnp.where(mask, w, 0)  # from the non-zeros
    got_w, got_t = run_compress_both(K, w_s)
    assert_packed_equal(got_w, s24.compress_24(w_s, w_s != 0))
    assert_packed_equal(got_t, s24.compress_24(w_s.T, w_s.T != 0))
    if dtype == jnp.float32:  # float32 master -> bfloat16 packed
        got_w, got_t = run_compress_both(K, w, mask, dtype=jnp.bfloat16, block_n=8, block_chunks=1)
        wb = w.astype(jnp.bfloat16)
        assert_packed_equal(got_w, s24.compress_24(wb, mask), cast_slack=True)
        assert_packed_equal(got_t, s24.compress_24(wb.T, mask.T), cast_slack=True)


def test_compress_both_edges(K):
    """Groups with 0, 1 or 3 non-zeros along either axis, -0, huge values."""
    x = np.zeros((8, 12), np.float32)
    x[0, 7] = 5
    x[1, [0, 6]] = [1, 2]
    x[2, [2, 4, 5, 11]] = [7, 8, 9, 3e38]
    x[3, 1] = -0.0
    x[5:8, 3] = [1, 2, 3]  # three non-zeros in one column group of W.T: the first two are kept
    got_w, got_t = run_compress_both(K, x, block_n=8, block_chunks=1)
    xj = jnp.asarray(x)
    assert_packed_equal(got_w, s24.compress_24(xj, xj != 0))
    assert_packed_equal(got_t, s24.compress_24(xj.T, xj.T != 0))


# ---------------------------------------------------------------------------
# soft threshold + compress
@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_threshold_matches_reference(K, dtype):
    rng = np.random.default_rng(2)
    n, k = 12, 40
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[0, :4] = [1, 1, 1, 1]  # ties: all zero
    w[1, :4] = [0, -2, 2, 0]
    beta = np.float32(1.37)
    vals = empty((n, k // 2), dtype)
    meta = empty((n, cdiv(k, 8)), jnp.uint8)
    K.soft_threshold.soft_threshold24_kernel[(1, 1)](
        T(w), torch.tensor([beta]), vals, meta, N_ROWS=n, N_Q=k, BLOCK_ROWS=32, BLOCK_CHUNKS=32
    )
    ref = (beta * s24.soft_threshold_24(jnp.asarray(w))).astype(dtype)
    rv, rm = s24.compress_24(ref, ref != 0)
    assert_packed_equal((N(vals), N(meta)), (rv, rm), cast_slack=True)


# ---------------------------------------------------------------------------
# MVUE + compress
def inclusion_probs64(x):
    """MVUE's p_i (docs/algorithms.md) in float64, S - a_j summed from the others (exact enough to
    judge the float32 kernel, also for groups like (0, 0, 5, 0))."""
    a = np.abs(np.asarray(x, np.float64)) + 1.19209e-07
    s = a.sum(-1, keepdims=True)
    rest = s - a
    q = a / (s * rest)
    return a / s + a * (q.sum(-1, keepdims=True) - q)


def run_mvue(K, dz, seed, dtype=None):
    m, n = dz.shape
    vals = empty((n, m // 2), dz.dtype)
    meta = empty((n, cdiv(m, 8)), jnp.uint8)
    K.mvue.mvue24_kernel[(cdiv(n, 64), cdiv(m, 128))](
        T(dz), torch.tensor([seed], dtype=torch.uint32), vals, meta, N_ROWS=n, N_Q=m, STRIDE_ROW=1, STRIDE_Q=n,
        BLOCK_ROWS=64, BLOCK_CHUNKS=16,
    )
    return N(vals), N(meta)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 8), (36, 20)])
def test_mvue_structure_and_values(K, dtype, shape):
    rng = np.random.default_rng(3)
    dz = rng.standard_normal(shape).astype(np.float32)
    dz[:4, 0] = 0  # an all-zero group
    dz[4:8, 1] = [0, 0, 5, 0]  # one non-zero
    dz = np.asarray(jnp.asarray(dz, dtype))
    vals, meta = run_mvue(K, dz, seed=7)
    m, n = shape
    codes = np.stack([meta & 15, meta >> 4], -1).reshape(n, -1)
    g = m // 4
    idx0, idx1 = codes[:, :g] & 3, codes[:, :g] >> 2
    assert (idx0 < idx1).all(), "exactly two distinct positions per group, ascending"
    if g % 2:
        assert (codes[:, g] == 0xE).all()
    dense = np.asarray(s24.decompress_24(jnp.asarray(vals), jnp.asarray(meta))).astype(np.float32)
    x = dz.T.astype(np.float32).reshape(n, g, 4)
    p = inclusion_probs64(x)
    named = np.zeros((n, g, 4), bool)
    np.put_along_axis(named, idx0[..., None], True, -1)
    np.put_along_axis(named, idx1[..., None], True, -1)
    expect = np.where(named, x / p, 0).astype(dtype).astype(np.float32)
    rtol = BF16_ULP if dtype == jnp.bfloat16 else 1e-5
    np.testing.assert_allclose(dense.reshape(n, g, 4), expect, rtol=rtol, atol=0)
    # a different seed draws differently; the same seed is deterministic
    assert (run_mvue(K, dz, seed=7)[1] == meta).all()
    assert (run_mvue(K, dz, seed=8)[1] != meta).any()


def test_mvue_unbiased_and_inclusion_probs(K):
    # one group per column, the same 4 values in 4096 columns: 4096 draws
    x = np.array([3.0, -1.0, 0.5, 0.0], np.float32)
    n = 4096
    dz = np.repeat(x[:, None], n, 1)  # (M=4, N)
    vals, meta = run_mvue(K, dz, seed=123)
    dense = np.asarray(s24.decompress_24(jnp.asarray(vals), jnp.asarray(meta))).reshape(n, 4)
    codes = meta[:, 0] & 15
    kept = np.zeros((n, 4), bool)
    np.put_along_axis(kept, (codes & 3)[:, None], True, 1)
    np.put_along_axis(kept, (codes >> 2)[:, None], True, 1)
    p = inclusion_probs64(x)
    np.testing.assert_allclose(p, np.asarray(mvue_inclusion_probs(jnp.abs(jnp.asarray(x)) + 1.19209e-07)), rtol=1e-6)
    freq = kept.mean(0)
    sd = np.sqrt(p * (1 - p) / n)
    assert (np.abs(freq - p) < 5 * sd + 1e-6).all(), (freq, p)
    mean = dense.mean(0)
    sd_mean = np.sqrt(np.maximum(x**2 / p - x**2, 0) / n)
    assert (np.abs(mean - x) < 5 * sd_mean + 1e-6).all(), (mean, x)


# ---------------------------------------------------------------------------
# the 2:4 GEMM
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b_t", [False, True])
@pytest.mark.parametrize("out_t", [False, True])
@pytest.mark.parametrize("shape", [(40, 72, 20), (32, 64, 48)])
@pytest.mark.parametrize("words", [0, 1, 3])
def test_matmul_matches_reference(K, dtype, b_t, out_t, shape, words):
    if dtype == jnp.bfloat16:
        pytest.skip("the interpreter's tl.dot multiplies bfloat16 as raw uint16 bits; bf16 runs in tests/gpu")
    rng = np.random.default_rng(4)
    # (40, 72, 20): ragged against the 16/32 blocks, R/4 odd (masked loads and
    # stores); (32, 64, 48): every block full (the unmasked path of FFN shapes)
    n_i, n_r, n_j = shape
    a = jnp.asarray(rng.standard_normal((n_i, n_r)), dtype)
    mask = s24.mask_24(a)
    av, am = s24.compress_24(a, mask)
    b = jnp.asarray(rng.standard_normal((n_r, n_j)), dtype)
    ref = np.asarray(jnp.dot(jnp.where(mask, a, 0), b, preferred_element_type=jnp.float32))
    bb = b.T if b_t else b
    sbr, sbj = (1, n_r) if b_t else (n_j, 1)
    sci, scj = (1, n_i) if out_t else (n_j, 1)
    c = empty((n_j, n_i) if out_t else (n_i, n_j), jnp.float32)
    grid = (cdiv(n_i, 16) * cdiv(n_j, 16),)
    K.matmul.sparse24_matmul_kernel[grid](
        T(av), T(am), T(bb), c, N_I=n_i, N_J=n_j, N_R=n_r, STRIDE_BR=sbr, STRIDE_BJ=sbj,
        STRIDE_CI=sci, STRIDE_CJ=scj, BLOCK_I=16, BLOCK_J=16, BLOCK_R=32, GROUP_I=2, PRECISION="ieee",
        WORDS=words,  # 16-bit values expanded as 32-bit words (float32: ignored, the element path)
    )
    got = N(c).T if out_t else N(c)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------
# gated activations (GEGLU / SwiGLU), against the pure-JAX reference
# sparse24_jax.activations.gated_activation and jax.vjp of it
def _gated_inputs(m, f, dtype, seed):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((m, 2 * f)).astype(np.float32) * 3
    h[0, f:f + 4] = [0, 30, -30, 1e4][: min(4, f)]  # saturated gates
    h = np.asarray(jnp.asarray(h, dtype))
    dy = np.asarray(jnp.asarray(rng.standard_normal((m, f)), dtype))
    return h, dy


def _gated_ref(act, h, dy):
    """Forward and h-gradient of the reference, in float32 on the rounded inputs."""
    h32, dy32 = jnp.asarray(h, jnp.float32), jnp.asarray(dy, jnp.float32)
    yr, vjp = jax.vjp(lambda a: s24.gated_activation(a, act), h32)
    return np.asarray(yr), np.asarray(vjp(dy32)[0])


_GATED_TOL = {jnp.dtype(jnp.float32): 1e-4, jnp.dtype(jnp.float16): 2e-3, jnp.dtype(jnp.bfloat16): 1.6e-2}


def _poisoned(shape, dtype):
    t = empty(shape, dtype)
    t.fill_(float("nan"))  # every element must be written
    return t


def _run_gated(K, act, h, dy, transposed, **blocks):
    """Both raw kernels, launched as the wrapper launches them
    (gated.launch_config), with optional smaller blocks."""
    m, f = h.shape[0], h.shape[1] // 2
    cfg = K.gated.launch_config(m, f, transposed)
    cfg.update(blocks)
    if blocks:  # recompute the grid for the smaller blocks
        cfg["grid"] = ((cdiv(m, cfg["BLOCK_T"]), cdiv(f, cfg["BLOCK_F"])) if transposed
                       else (cdiv(m * f, cfg["BLOCK"]),))
    grid = cfg.pop("grid")
    cfg.pop("num_warps")
    hh = h.T.copy() if transposed else h
    y = _poisoned((m, f), h.dtype)
    dh = _poisoned(hh.shape, h.dtype)
    K.gated.gated_fwd_kernel[grid](T(hh), y, ACT=act, **cfg)
    K.gated.gated_bwd_kernel[grid](T(hh), T(dy), dh, ACT=act, **cfg)
    got_dh = N(dh).T if transposed else N(dh)
    return N(y).astype(np.float32), got_dh.astype(np.float32)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")  # saturated gates
@pytest.mark.parametrize("act", ["geglu", "swiglu"])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,blocks",
    [
        ((20, 24), {}),  # one program, mostly masked
        ((37, 45), {"BLOCK": 256, "BLOCK_T": 16, "BLOCK_F": 32}),  # odd M and F: ragged, unaligned rows
        ((70, 100), {}),  # the real blocks, M F not a multiple of BLOCK
        ((64, 128), {"BLOCK": 512, "BLOCK_T": 32, "BLOCK_F": 16}),  # exact multiples
        ((37, 45), {"BLOCK": 256, "BLOCK_T": 16, "BLOCK_F": 32, "WIDE": True}),  # int64 offsets
    ],
)
def test_gated_matches_reference(K, act, transposed, dtype, shape, blocks):
    m, f = shape
    h, dy = _gated_inputs(m, f, dtype, seed=m * f)
    yr, dhr = _gated_ref(act, h, dy)
    y, dh = _run_gated(K, act, h, dy, transposed, **blocks)
    tol = _GATED_TOL[jnp.dtype(dtype)]
    assert np.isfinite(y).all() and np.isfinite(dh).all(), "an element was not written"
    np.testing.assert_allclose(y, yr, rtol=tol, atol=tol)
    np.testing.assert_allclose(dh, dhr, rtol=tol, atol=tol)


def test_gated_module_reference_is_the_jax_formula():
    """The twin the kernels are compared with is exactly the modules' fallback."""
    h = jax.random.normal(jax.random.key(3), (6, 16)) * 3
    x, g = jnp.split(h, 2, -1)
    np.testing.assert_array_equal(s24.gated_activation(h, "geglu"), x * jax.nn.gelu(g, approximate=True))
    np.testing.assert_array_equal(s24.gated_activation(h, "swiglu"), x * jax.nn.silu(g))


def test_gated_wide_offsets_flag(K):
    """int64 offsets switch on before any lane's offset could pass 2**31 - 1."""
    cfg = K.gated.launch_config
    assert not cfg(16384, 11008, False)["WIDE"] and not cfg(16384, 11008, True)["WIDE"]
    assert cfg(2**20, 2**10, False)["WIDE"] and cfg(2**20, 2**10, True)["WIDE"]
    assert cfg(2**20 - 64, 2**10 - 64, False)["WIDE"] is False


# ---------------------------------------------------------------------------
# offline compile for Hopper (sm_90): no GPU needed, catches what the
# interpreter lets through (see triton_sm90_compile.py).
def _sm90_compile_run(tmp_path_factory, code: str, drop=()) -> None:
    """Runs `code` (which imports triton_sm90_compile) in a fresh process, not interpreting
    (this one interprets), without the environment variables in `drop`; fails with its output
    unless it exits 0."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and k not in drop}
    # a real cache directory (an empty TRITON_CACHE_DIR, as jax-triton leaves
    # it, makes triton fail)
    if not env.get("TRITON_CACHE_DIR"):
        env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90(tmp_path_factory):
    """Compiled in a fresh process (this one interprets)."""
    _sm90_compile_run(tmp_path_factory, (
        "import triton_sm90_compile as t; fails = t.compile_all(); "
        "print('\\n'.join(fails)); raise SystemExit(1 if fails else 0)"
    ))


@pytest.mark.slow
def test_gemm_at_ffn_shapes_is_pipelined_wgmma(tmp_path_factory):
    """The bf16 2:4 GEMM compiled for sm_90 at the issue-23 FFN shapes (GPT-2
    774M, 1558M, LLaMA-7B; 16384 tokens; fwd, dX and dW in the backend's
    layouts and tuned/default configs, element and prmt decompression): wgmma, every global load a cp.async
    into shared memory (software-pipelined; the old kernel's runtime-int sizes
    gave 128 scalar ld.global per thread per iteration and no cp.async),
    16-byte stores, no spills. Compiled in a fresh process (this one interprets), with the
    shipped config table (no $SPARSE24_TRITON_GEMM_CONFIGS)."""
    _sm90_compile_run(tmp_path_factory, (
        "import triton_sm90_compile as t; lines, fails = t.gemm_report(); "
        "print('\\n'.join(lines + fails)); raise SystemExit(1 if fails or len(lines) != 18 else 0)"
    ), drop=("SPARSE24_TRITON_GEMM_CONFIGS",))


def test_gemm_config_table(K, tmp_path, monkeypatch):
    """matmul.config_for: the per-dtype defaults, and a tuned entry (from
    $SPARSE24_TRITON_GEMM_CONFIGS) for exactly its shape, dtypes and layouts."""
    matmul = K.matmul
    monkeypatch.delenv(matmul.TUNED_ENV, raising=False)
    matmul._tuned_table.cache_clear()
    assert matmul.config_for(jnp.bfloat16, 5120, 16384, 1280) == matmul.CONFIGS["16bit"]
    assert matmul.config_for(jnp.bfloat16, 5120, 128, 1280) == matmul.CONFIGS["16bit_narrow"]
    assert matmul.config_for(jnp.float32, 5120, 16384, 1280) == matmul.CONFIGS["float32"]
    key = matmul.config_key(5120, 16384, 1280, jnp.bfloat16, True, True, jnp.bfloat16)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"configs": {key: [64, 256, 64, 4, 2]}}))
    monkeypatch.setenv(matmul.TUNED_ENV, str(path))
    assert matmul.config_for(jnp.bfloat16, 5120, 16384, 1280, b_transposed=True, out_transposed=True) == (
        64, 256, 64, 4, 2)
    # another layout or output dtype of the same sizes is another product
    assert matmul.config_for(jnp.bfloat16, 5120, 16384, 1280) == matmul.CONFIGS["16bit"]
    assert matmul.config_for(jnp.bfloat16, 5120, 16384, 1280, b_transposed=True, out_transposed=True,
                             out_dtype=jnp.float32) == matmul.CONFIGS["16bit"]
    # a sixth entry names the decompression variant (WORDS); five mean WORDS 0
    path.write_text(json.dumps({"configs": {key: [128, 256, 64, 8, 3, 2]}}))
    matmul._tuned_table.cache_clear()
    cfg = matmul.config_for(jnp.bfloat16, 5120, 16384, 1280, b_transposed=True, out_transposed=True)
    assert cfg == (128, 256, 64, 8, 3, 2) and matmul.split_config(cfg)[-1] == 2
    assert matmul.split_config((64, 256, 64, 4, 4)) == (64, 256, 64, 4, 4, 0)
    # 16-bit with 4 warps and >= 3 stages computed wrong products on an H200: refused
    for bad, msg in (([64, 256], "BLOCK_I, BLOCK_J, BLOCK_R, warps, stages"), ([128, 256, 64, 8, 3, 7], "WORDS"),
                     ([64, 256, 64, 4, 3], "wrong results"), ([128, 128, 64, 4, 4, 2], "wrong results")):
        path.write_text(json.dumps({"configs": {key: bad}}))
        matmul._tuned_table.cache_clear()
        with pytest.raises(ValueError, match=msg):
            matmul.config_for(jnp.bfloat16, 5120, 16384, 1280)
    monkeypatch.setenv(matmul.TUNED_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError, match="triton_gemm_tune.py"):
        matmul.config_for(jnp.bfloat16, 5120, 16384, 1280)
    matmul._tuned_table.cache_clear()


# ---------------------------------------------------------------------------
def test_core_imports_without_triton():
    """`import sparse24_jax` must not import triton or jax_triton, and
    get_backend('triton') must fail with a message naming the fix here."""
    code = (
        "import sys; import sparse24_jax as s\n"
        "assert 'triton' not in sys.modules and 'jax_triton' not in sys.modules, 'core imported triton'\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


# ---------------------------------------------------------------------------
# The JAX wrappers (argument order, grids, output shapes, custom_vjp), eagerly,
# with jax_triton.triton_call replaced by an interpreter launch.
class _FakeJaxTriton:
    @staticmethod
    def triton_call(*args, kernel, out_shape, grid, num_warps=None, num_stages=None, **meta):
        outs = out_shape if isinstance(out_shape, (tuple, list)) else (out_shape,)
        bufs = [empty(o.shape, o.dtype) for o in outs]
        targs = [T(a) if hasattr(a, "shape") else a for a in args]
        kernel[grid](*targs, *bufs, **meta)
        res = tuple(jnp.asarray(N(b)) for b in bufs)
        return res if isinstance(out_shape, (tuple, list)) else res[0]


@pytest.fixture
def W(K, monkeypatch):
    for m in _KMODS:
        monkeypatch.setattr(getattr(K, m), "jt", lambda: _FakeJaxTriton)
    return K


def test_wrappers_match_references(W):
    rng = np.random.default_rng(9)
    w = jnp.asarray(rng.integers(-3, 4, size=(20, 36)), jnp.float32)
    mask = W.mask_search.transposable_mask(w)
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(s24.transposable_mask_24(w)))
    assert_packed_equal(W.compress.compress(w, mask), s24.compress_24(w, mask))
    w_s = jnp.where(mask, w, 0)
    vt, mt = W.compress.compress(w_s, transpose=True)
    assert_packed_equal((vt, mt), s24.compress_24(w_s.T, w_s.T != 0))
    beta = jnp.float32(0.7)
    ref = (beta * s24.soft_threshold_24(w)).astype(jnp.float32)
    assert_packed_equal(W.soft_threshold.soft_threshold_compress(w, beta), s24.compress_24(ref, ref != 0))
    # GEMMs in the backend's three orientations
    x = jnp.asarray(rng.standard_normal((24, 36)), jnp.float32)  # (M, K)
    dz = jnp.asarray(rng.standard_normal((24, 20)), jnp.float32)  # (M, N)
    v, m = W.compress.compress(w_s)
    cfg = (16, 16, 32, 4, 1)
    z = W.matmul.sparse24_matmul(v, m, x, b_transposed=True, out_transposed=True, config=cfg)
    np.testing.assert_allclose(z, x @ w_s.T, rtol=1e-5, atol=1e-4)
    dx = W.matmul.sparse24_matmul(vt, mt, dz, b_transposed=True, out_transposed=True, config=cfg)
    np.testing.assert_allclose(dx, dz @ w_s, rtol=1e-5, atol=1e-4)
    gv, gm = W.mvue.mvue_compress(jax.random.key(0), dz)
    dw = W.matmul.sparse24_matmul(gv, gm, x, out_dtype=jnp.float32, config=cfg)
    np.testing.assert_allclose(dw, s24.decompress_24(gv, gm) @ x, rtol=1e-5, atol=1e-4)
    assert gv.shape == (20, 12) and gm.shape == (20, 3)


def test_compress_wrappers_reject_bad_shapes(W):
    """Shapes the packed format cannot hold: a clear error naming the fix, before any launch."""
    with pytest.raises(ValueError, match="N and K multiples of 4"):
        W.compress.compress_both(jnp.ones((6, 8), jnp.float32))
    with pytest.raises(ValueError, match="N and K multiples of 4"):
        W.compress.compress_both(jnp.ones((8, 10), jnp.float32))
    with pytest.raises(ValueError, match="N and K multiples of 4"):
        W.compress.compress_both(jnp.ones((2, 4, 8), jnp.float32))
    with pytest.raises(ValueError, match="pad it to a multiple of 4"):
        W.compress.compress(jnp.ones((8, 10), jnp.float32))
    with pytest.raises(ValueError, match="2-D array"):
        W.compress.compress(jnp.ones((8,), jnp.float32))


@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")  # saturated gates
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_wrapper_custom_vjp(W, transposed, dtype):
    """gated_act's custom_vjp (fused forward and backward) against jax.vjp of
    the reference, leading dims included for the row-major layout."""
    m, f = 20, 24
    h, dy = _gated_inputs(m, f, dtype, seed=10)
    h, dy = jnp.asarray(h), jnp.asarray(dy)
    tol = _GATED_TOL[jnp.dtype(dtype)]
    for act in ("geglu", "swiglu"):
        yr, dhr = _gated_ref(act, h, dy)
        if transposed:
            y, v = jax.vjp(lambda a: W.gated.gated_act(a, act, transposed=True), h.T)
            (dh,) = v(dy)
            dh = dh.T
        else:  # (2, 10, 2F): leading dims flattened by the wrapper
            y, v = jax.vjp(lambda a: W.gated.gated_act(a, act), h.reshape(2, 10, 2 * f))
            (dh,) = v(dy.reshape(2, 10, f))
            assert y.shape == (2, 10, f) and dh.shape == (2, 10, 2 * f)
            y, dh = y.reshape(m, f), dh.reshape(m, 2 * f)
        assert y.dtype == dtype and dh.dtype == dtype
        np.testing.assert_allclose(np.asarray(y, np.float32), yr, rtol=tol, atol=tol)
        np.testing.assert_allclose(np.asarray(dh, np.float32), dhr, rtol=tol, atol=tol)
        # the raw passes agree with the differentiable one
        np.testing.assert_array_equal(np.asarray(W.gated.gated_fwd(h, act)), np.asarray(W.gated.gated_act(h, act)))


def test_gated_wrapper_rejects_bad_input(W):
    with pytest.raises(ValueError, match="odd length"):
        W.gated.gated_act(jnp.ones((4, 6), jnp.float32)[:, :5], "geglu")
    with pytest.raises(ValueError, match="act must be"):
        W.gated.gated_act(jnp.ones((4, 6), jnp.float32), "relu")
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        W.gated.gated_fwd(jnp.ones((4, 6), jnp.int32), "geglu")
    assert W.gated.gated_fwd(jnp.ones((0, 6), jnp.bfloat16), "swiglu").shape == (0, 3)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")  # saturated gates
@pytest.mark.parametrize("kind", ["geglu", "swiglu"])
def test_gated_through_backend_hooks(W, kind):
    """sparse24_jax.activations.gated with the triton backend's hooks (forward
    and backward kernels, interpreted) against the reference's value and
    gradient; the switch turns the kernels off."""
    from sparse24_jax import activations
    from sparse24_jax_kernels.triton import backend as tb

    be = object.__new__(tb.TritonBackend)  # skip __init__'s GPU check
    calls = []
    monkey_fwd, monkey_bwd = be.gated_activation, be.gated_activation_bwd
    be.gated_activation = lambda h, k: calls.append("fwd") or monkey_fwd(h, k)
    be.gated_activation_bwd = lambda h, dy, k: calls.append("bwd") or monkey_bwd(h, dy, k)
    h = jax.random.normal(jax.random.key(1), (2, 3, 32), jnp.float32) * 2
    loss = lambda fn: lambda h: jnp.sum(jnp.sin(fn(h)))  # noqa: E731
    ref_v, ref_g = jax.value_and_grad(loss(lambda a: s24.gated_activation(a, kind)))(h)
    v, g = jax.value_and_grad(loss(lambda a: activations.gated(a, kind, backend=be)))(h)
    assert calls == ["fwd", "bwd"]
    np.testing.assert_allclose(v, ref_v, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g, ref_g, rtol=1e-4, atol=1e-5)
    calls.clear()
    activations.gated(h, kind, backend=be, fused=False)
    assert calls == []


def test_gemm_refuses_configs_that_were_wrong_on_the_gpu(K):
    """A 16-bit config with 4 warps and 3+ stages raises (it returned wrong products on an
    H200); the same tile with 8 warps, or with 2 stages, and float32 configs are accepted,
    and the sweep no longer offers a refused one."""
    matmul = K.matmul
    with pytest.raises(ValueError, match="use 8 warps, or at most 2 stages"):
        matmul.check_config((64, 256, 64, 4, 3), jnp.bfloat16)
    with pytest.raises(ValueError, match="wrong results"):
        matmul.check_config((128, 128, 64, 4, 3, 2), jnp.float16)
    for ok, dt in (((64, 256, 64, 8, 3), jnp.bfloat16), ((64, 256, 64, 4, 2, 2), jnp.bfloat16),
                   (matmul.CONFIGS["float32"], jnp.float32), (matmul.CONFIGS["16bit"], jnp.bfloat16)):
        matmul.check_config(ok, dt)
    for cfg in matmul.CANDIDATES:
        matmul.check_config(cfg, jnp.bfloat16)
