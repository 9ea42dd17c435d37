"""CPU tests of the cuSPARSELt backend: the numpy reference of the compressed
2:4 format (hand-worked cases), the CUDA compression kernels run by their host
emulation (when nvcc and the cuSPARSELt wheel are here to build the library),
and the lowering of the FFI calls for CUDA. The GPU checks (byte identity with
cuSPARSELt's own compression, products) are in tests/gpu/test_cusparselt.py.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from sparse24_jax_kernels.cusparselt import layout

from _cusparselt_host import host_ops
from _random24 import random_24

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E5M2 = np.dtype(ml_dtypes.float8_e5m2)


def bits(x, dtype):
    """Raw bits of the float x in dtype."""
    a = np.array([x], dtype=np.float32).astype(dtype)
    return int(a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint8)[0])


# ---------------------------------------------------------------------------
# the format, by hand
# ---------------------------------------------------------------------------


def test_sizes():
    assert layout.compressed_nbytes(64, 64, BF16) == 64 * 32 * 2 + 64 * 64 // 8
    assert layout.compressed_nbytes(100, 64, F16) == 100 * 32 * 2 + 128 * 64 // 8
    # fp8: the metadata covers k rounded up to 64
    assert layout.compressed_nbytes(32, 32, E4M3) == 32 * 16 + 64 * 64 // 8
    assert layout.compressed_nbytes(3072, 768, BF16) == 3072 * 768 + 3072 * 768 // 8


@pytest.mark.parametrize(
    "r,g,q",
    [
        (0, 0, 0),
        (8, 0, 1),  # (r%16)//8
        (0, 4, 2),  # ((g%8)//4)*2
        (0, 1, 4),  # (g%4)*4
        (1, 0, 16),  # (r%8)*16
        (16, 0, 128),  # ((r%64)//16)*128
        (0, 8, 512),  # (g//8)*512
        (63, 15, 1023),  # last nibble of a 64 x 64 matrix
        (64, 0, 16 * 64),  # (r//64)*16*Kc with Kc = 64
    ],
)
def test_nibble_index_16bit(r, g, q):
    assert int(layout.nibble_index(r, g, 64, 2)) == q


@pytest.mark.parametrize(
    "r,g,q",
    [
        (0, 0, 0),
        (0, 1, 1),  # g%2
        (8, 0, 2),  # ((r%16)//8)*2
        (0, 8, 4),  # ((g%16)//8)*4
        (0, 2, 8),  # ((g%8)//2)*8
        (1, 0, 32),  # (r%8)*32
        (16, 0, 256),  # ((r%64)//16)*256
        (0, 16, 1024),  # (g//16)*1024
        (64, 0, 16 * 128),  # (r//64)*16*Kc with Kc = 128
    ],
)
def test_nibble_index_fp8(r, g, q):
    assert int(layout.nibble_index(r, g, 128, 1)) == q


@pytest.mark.parametrize("es,m,k", [(2, 128, 256), (2, 64, 96), (1, 128, 256), (1, 64, 64)])
def test_nibble_index_is_a_permutation(es, m, k):
    kc = layout.metadata_cols(k, es)
    r, g = np.meshgrid(np.arange(m), np.arange(kc // 4), indexing="ij")
    q = layout.nibble_index(r, g, k, es).ravel()
    assert np.array_equal(np.sort(q), np.arange(m * kc // 4))


def test_hand_worked_64x64_bf16():
    a = np.zeros((64, 64), BF16)
    a[0, 0:4] = [1.0, 2.0, 0.0, 0.0]  # (0,1) -> 0x4 at q=0 (byte 0, low)
    a[8, 0:4] = [0.0, 3.0, 0.0, 4.0]  # (1,3) -> 0xD at q=1 (byte 0, high)
    a[0, 4:8] = [0.0, 0.0, 5.0, 6.0]  # (2,3) -> 0xE at q=4 (byte 2, low)
    a[0, 16:20] = [7.0, 0.0, 8.0, 0.0]  # g=4: (0,2) -> 0x8 at q=2 (byte 1, low)
    a[1, 0:4] = [0.0, 9.0, 10.0, 0.0]  # (1,2) -> 0x9 at q=16 (byte 8, low)
    a[16, 32:36] = [11.0, 0.0, 0.0, 12.0]  # g=8: (0,3) -> 0xC at q=512+128 (byte 320, low)
    a[63, 60:64] = [13.0, 0.0, 0.0, 0.0]  # one non-zero: (0,3) -> 0xC at q=1023 (byte 511, high)
    buf = layout.compress(a)
    assert buf.dtype == np.uint8 and buf.size == 4096 + 512
    vals = buf[:4096].view("<u2").reshape(64, 32)
    assert list(vals[0, 0:2]) == [bits(1, BF16), bits(2, BF16)]
    assert list(vals[8, 0:2]) == [bits(3, BF16), bits(4, BF16)]
    assert list(vals[0, 2:4]) == [bits(5, BF16), bits(6, BF16)]
    assert list(vals[0, 8:10]) == [bits(7, BF16), bits(8, BF16)]
    assert list(vals[1, 0:2]) == [bits(9, BF16), bits(10, BF16)]
    assert list(vals[16, 16:18]) == [bits(11, BF16), bits(12, BF16)]
    assert list(vals[63, 30:32]) == [bits(13, BF16), 0]
    meta = buf[4096:]
    expected = np.full(512, 0xEE, np.uint8)
    expected[0] = 0xD4
    expected[2] = 0xEE  # (2,3) is the padding code too
    expected[1] = 0xE8
    expected[8] = 0xE9
    expected[320] = 0xEC
    expected[511] = 0xCE
    assert np.array_equal(meta, expected)
    assert np.array_equal(layout.decompress(buf, 64, 64, BF16).view(np.uint16), a.view(np.uint16))


@pytest.mark.parametrize(
    "group,code,stored",
    [
        ([0, 0, 0, 0], 0xE, (2, 3)),
        ([1, 0, 0, 0], 0xC, (0, 3)),
        ([0, 1, 0, 0], 0xD, (1, 3)),
        ([0, 0, 1, 0], 0xE, (2, 3)),
        ([0, 0, 0, 1], 0xE, (2, 3)),
        ([1, 1, 0, 0], 0x4, (0, 1)),
        ([1, 0, 1, 0], 0x8, (0, 2)),
        ([1, 0, 0, 1], 0xC, (0, 3)),
        ([0, 1, 1, 0], 0x9, (1, 2)),
        ([0, 1, 0, 1], 0xD, (1, 3)),
        ([0, 0, 1, 1], 0xE, (2, 3)),
        (["-0", 1, 0, 0], 0xD, (1, 3)),  # -0 is a zero
        ([0, "-0", 0, "-0"], 0xE, (2, 3)),
    ],
)
@pytest.mark.parametrize("dtype", [BF16, F16, E4M3])
def test_group_codes(group, code, stored, dtype):
    k = 32 if dtype.itemsize == 2 else 64
    row = np.zeros(k, np.float32)
    row[:4] = [-0.0 if v == "-0" else float(v) * (i + 1) for i, v in enumerate(group)]
    a = np.tile(row.astype(dtype), (32, 1))
    buf = layout.compress(a)
    i0, i1, _ = layout.pair_codes(a)
    assert (i0[0, 0], i1[0, 0]) == stored
    vals, meta = layout.split(buf, 32, k, dtype)
    nib = layout.read_nibbles(meta)
    assert nib[int(layout.nibble_index(0, 0, k, dtype.itemsize))] == code
    raw = a.view(np.uint16 if dtype.itemsize == 2 else np.uint8)
    assert list(vals[0, :2]) == [raw[0, stored[0]], raw[0, stored[1]]]  # the bits, -0 included


def test_padding_rows_and_fp8_columns():
    a = np.ones((8, 32), BF16)
    a.reshape(8, 8, 4)[..., 2:] = 0
    _, meta = layout.split(layout.compress(a), 8, 32, BF16)
    nib = layout.read_nibbles(meta)
    r, g = np.meshgrid(np.arange(64), np.arange(8), indexing="ij")
    q = layout.nibble_index(r, g, 32, 2)
    assert np.all(nib[q[:8]] == 0x4)
    assert np.all(nib[q[8:]] == 0xE)  # rows 8..63 are padding
    # fp8 with k = 32: metadata covers 64 columns, groups 8..15 are padding
    b = np.ones((32, 32), E4M3)
    b.reshape(32, 8, 4)[..., 2:] = 0
    _, meta8 = layout.split(layout.compress(b, strict=False), 32, 32, E4M3)
    nib8 = layout.read_nibbles(meta8)
    r, g = np.meshgrid(np.arange(64), np.arange(16), indexing="ij")
    q8 = layout.nibble_index(r, g, 32, 1)
    assert np.all(nib8[q8[:32, :8]] == 0x4)
    assert np.all(nib8[q8[:32, 8:]] == 0xE)
    assert np.all(nib8[q8[32:]] == 0xE)


@pytest.mark.parametrize("dtype", [BF16, F16, E4M3])
@pytest.mark.parametrize("m,k", [(64, 64), (40, 96), (128, 256), (200, 160), (96, 320)])
def test_roundtrip(dtype, m, k):
    if dtype.itemsize == 1 and (m % 32 or k % 64):
        pytest.skip("fp8: m multiple of 32, k of 64")
    a = random_24(np.random.default_rng(m * k), m, k, dtype)
    buf = layout.compress(a)
    assert buf.size == layout.compressed_nbytes(m, k, dtype)
    back = layout.decompress(buf, m, k, dtype)
    view = np.uint16 if dtype.itemsize == 2 else np.uint8
    mag = 0x7FFF if dtype.itemsize == 2 else 0x7F
    ab, bb = a.view(view), back.view(view)
    nz = (ab & mag) != 0
    assert np.array_equal(ab[nz], bb[nz])
    assert np.all((bb[~nz] & mag) == 0)
    # compressing the decompressed matrix gives the same bytes
    assert np.array_equal(layout.compress(back), buf)


def test_bad_inputs():
    a = np.ones((64, 64), BF16)
    with pytest.raises(ValueError, match="not 2:4"):
        layout.compress(a)
    a.reshape(64, 16, 4)[..., 2:] = 0
    with pytest.raises(ValueError, match="multiple of 32"):
        layout.compress(a[:, :48])
    with pytest.raises(ValueError, match="16-bit and 8-bit"):
        layout.compress(np.ones((64, 64), np.float32))
    with pytest.raises(ValueError, match="bytes"):
        layout.decompress(np.zeros(10, np.uint8), 64, 64, BF16)


# ---------------------------------------------------------------------------
# the CUDA kernels, by their host emulation
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ops(cusparselt_host_ops):
    return cusparselt_host_ops


def test_library_size_is_the_layout_size(ops):
    """The C++ size formula (CompressedBytes, exported as s24_compressed_bytes), which
    the handlers check every buffer against, is layout.compressed_nbytes, which the
    JAX wrappers allocate with: for both element sizes, aligned shapes or not."""
    lib = ops.load_library()
    ms = [0, 1, 8, 32, 40, 63, 64, 65, 96, 128, 200, 1000, 3072, 11008, 65535 * 64]
    ks = [0, 4, 8, 32, 36, 60, 64, 68, 96, 100, 128, 192, 768, 1000, 4096, 11008]
    for dtype in (BF16, F16, E4M3, E5M2):
        es = dtype.itemsize
        for m in ms:
            for k in ks:
                assert lib.s24_compressed_bytes(m, k, es) == layout.compressed_nbytes(m, k, dtype), (m, k, es)


@pytest.mark.parametrize("dtype", [BF16, F16, E4M3])
@pytest.mark.parametrize("m,k", [(64, 64), (32, 32), (40, 96), (128, 256), (200, 160), (96, 320)])
def test_kernel_matches_reference(ops, dtype, m, k):
    if dtype.itemsize == 1 and m % 32:
        pytest.skip("fp8: m multiple of 32")
    a = random_24(np.random.default_rng(7 * m + k), m, k, dtype)
    ref = layout.compress(a, strict=False)
    assert np.array_equal(ops.emulate_compress(a), ref)
    # the transposed path: read (k, m), compress its transpose
    if k % (8 if dtype.itemsize == 2 else 32) == 0:
        assert np.array_equal(ops.emulate_compress(np.ascontiguousarray(a.T), transpose=True), ref)


@pytest.mark.parametrize("dtype", [BF16, E4M3, E5M2])
def test_kernel_masked_and_invalid_groups(ops, dtype):
    rng = np.random.default_rng(3)
    m, k = 96, 128
    x = (rng.standard_normal((m, k)) * (100 if dtype == E5M2 else 1)).astype(dtype)  # e5m2: its wider range
    mask = np.zeros((m, k), bool)
    mask.reshape(m, k // 4, 4)[..., [0, 3]] = True
    mask[5, 8:12] = [True, True, True, False]  # an invalid group: top-2 kept
    want = layout.compress(np.where(mask, x, np.zeros((), dtype)), on_invalid="top2")
    assert np.array_equal(ops.emulate_compress(x, mode="mask", mask=mask), want)
    xt, mt = np.ascontiguousarray(x.T), np.ascontiguousarray(mask.T)
    assert np.array_equal(ops.emulate_compress(xt, mode="mask", mask=mt, transpose=True), want)
    # the plain kernel on a dense (invalid) input keeps the two largest magnitudes
    assert np.array_equal(ops.emulate_compress(x), layout.compress(x, on_invalid="top2"))


def _inclusion(a):
    """The inclusion probabilities of MVUE 2:4 (docs/algorithms.md), groups along the last axis."""
    a = np.abs(a.astype(np.float64)) + 1.19209e-07
    s = a.sum(-1, keepdims=True)
    p = a / s
    for j in range(4):
        aj = a[..., j : j + 1]
        p = p + np.where(np.arange(4) == j, 0.0, (aj / s) * a / (s - aj))
    return p


# (64, 32): the generic compression kernel; (320, 128): the dedicated MVUE
# kernel (N and M multiples of 64), two group tiles, the second one partial
@pytest.mark.parametrize("m_tok,n", [(64, 32), (320, 128)])
def test_kernel_mvue(ops, m_tok, n):
    rng = np.random.default_rng(11)
    # dZ (M, N): MVUE of dZ^T (N, M) along the tokens
    dz = (rng.standard_normal((m_tok, n)) * np.exp(rng.standard_normal((m_tok, n)))).astype(BF16)
    dz[:4, 0] = 0  # an all-zero group
    dz[4:8, 1] = 0
    dz[5, 1] = 3.0  # one non-zero: a kept zero needs cuSPARSELt's canonical positions
    dzt = dz.T.astype(np.float32)
    buf = ops.emulate_compress(dz, mode="mvue", transpose=True, seed=(1, 2))
    assert np.array_equal(buf, ops.emulate_compress(dz, mode="mvue", transpose=True, seed=(1, 2)))
    assert not np.array_equal(buf, ops.emulate_compress(dz, mode="mvue", transpose=True, seed=(1, 3)))
    s = layout.decompress(buf, n, m_tok, BF16)
    # canonical metadata: the library's compression of the pruned matrix is the same buffer
    assert np.array_equal(layout.compress(s), buf)
    sf = s.astype(np.float32)
    assert np.all((sf.reshape(n, -1, 4) != 0).sum(-1) <= 2)
    # kept values are x / p_i (bf16-rounded)
    p = _inclusion(dzt.reshape(n, -1, 4)).reshape(n, m_tok)
    kept = sf != 0
    np.testing.assert_allclose(sf[kept], (dzt / p)[kept], rtol=1e-2)
    # unbiased: the mean over many seeds approaches dZ^T
    acc = np.zeros((n, m_tok))
    trials = 1500
    for t in range(trials):
        b = ops.emulate_compress(dz, mode="mvue", transpose=True, seed=(t, 99))
        acc += layout.decompress(b, n, m_tok, BF16).astype(np.float64)
    mean = acc / trials
    # per-element std of the estimator: |x| * sqrt(1/p - 1)
    sd = np.abs(dzt) * np.sqrt(np.maximum(1 / p - 1, 0)) / np.sqrt(trials)
    err = np.abs(mean - dzt)
    assert np.all(err <= 5 * sd + 2e-2 * np.abs(dzt) + 1e-6), float(np.max(err / (sd + 1e-9)))


# ---------------------------------------------------------------------------
# the JAX side, lowered for CUDA on this machine
# ---------------------------------------------------------------------------


def test_unavailable_without_gpu():
    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("a GPU is present")
    from sparse24_jax import BackendUnavailableError, get_backend

    with pytest.raises(BackendUnavailableError, match="xla"):
        get_backend("cusparselt")


def test_lowering_for_cuda(monkeypatch):
    import jax
    import jax.numpy as jnp
    from jax import export

    from sparse24_jax import sparse24_linear, transposable_mask_24
    from sparse24_jax_kernels.cusparselt import backend as cb
    from sparse24_jax_kernels.cusparselt import ops

    monkeypatch.setattr(ops, "load", lambda: None)
    be = cb.CusparseltBackend()
    n, k, m = 128, 64, 96  # m is padded to 128 tokens inside
    w = jax.random.normal(jax.random.key(0), (n, k), jnp.float32)
    mask = transposable_mask_24(w)
    x = jax.random.normal(jax.random.key(1), (m, k), jnp.bfloat16)

    def loss(x, w, key):
        return jnp.sum(sparse24_linear(x, w, mask, key=key, backend=be).astype(jnp.float32) ** 2)

    checks = [export.DisabledSafetyCheck.custom_call(t) for t in ops.TARGETS]
    f = jax.jit(jax.grad(loss, argnums=(0, 1)))
    text = export.export(f, platforms=["cuda"], disabled_checks=checks)(
        x, w, jax.random.key(2)
    ).mlir_module()
    calls = [ln for ln in text.splitlines() if "custom_call @sparse24_cusparselt" in ln]
    names = sorted(ln.split("@")[1].split("(")[0] for ln in calls)
    # the weight's operands in one pass from the float32 master weight (prepare_projected)
    assert names == sorted(
        ["sparse24_cusparselt_project_compress"]
        + ["sparse24_cusparselt_mvue_compress"]
        + ["sparse24_cusparselt_spmm"] * 3
    )
    nbytes = layout.compressed_nbytes(n, k, BF16)
    assert f"tensor<{nbytes}xui8>" in text
    assert "m = 128 : i64" in text and "k = 64 : i64" in text and "alpha = 1.000000e+00 : f32" in text


def test_check_errors(monkeypatch):
    import jax.numpy as jnp

    from sparse24_jax_kernels.cusparselt import backend as cb
    from sparse24_jax_kernels.cusparselt import ops

    monkeypatch.setattr(ops, "load", lambda: None)
    be = cb.CusparseltBackend()
    be.check(3072, 768, jnp.bfloat16)
    be.check(64, 128, jnp.float16)
    with pytest.raises(ValueError, match="multiple of 64.*backend='xla'"):
        be.check(3072, 100, jnp.bfloat16)
    with pytest.raises(ValueError, match="multiple of 64"):
        be.check(64, 96, jnp.bfloat16)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        be.check(64, 64, jnp.float32)
    # the native FP8 forward takes e4m3 weights only, at the same alignment
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        be.prepare_weight_fp8(jnp.zeros((64, 64), jnp.bfloat16))
    with pytest.raises(ValueError, match="multiple of 64"):
        be.prepare_weight_fp8(jnp.zeros((64, 96), jnp.float8_e4m3fn))


@pytest.mark.parametrize("m", [128, 200])
def test_backend_semantics_with_host_ops(ops, monkeypatch, m):
    import jax
    import jax.numpy as jnp

    from sparse24_jax import sparse24_linear, transposable_mask_24
    from sparse24_jax_kernels.cusparselt import backend as cb

    host_ops(monkeypatch, ops)
    be = cb.CusparseltBackend()
    n, k = 128, 64
    w = jax.random.normal(jax.random.key(0), (n, k), jnp.float32) * 0.1
    mask = transposable_mask_24(w)
    x = jax.random.normal(jax.random.key(1), (m, k), jnp.bfloat16)

    def loss(x, w, backend, mvue, key=None):
        z = sparse24_linear(x, w, mask, key=key, backend=backend, mvue=mvue)
        return jnp.sum(z.astype(jnp.float32) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=(2, 3))
    gx, gw = grad(x, w, be, False)
    rx, rw = grad(x, w, "xla", False)
    np.testing.assert_allclose(np.asarray(gx, np.float32), np.asarray(rx, np.float32), rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(gw), np.asarray(rw), rtol=2e-2, atol=2e-2 * float(jnp.abs(rw).max()))
    # with MVUE: the sparse dW path (padding M to 64, transposed compression)
    kx, kw = grad(x, w, be, True, jax.random.key(3))
    np.testing.assert_allclose(np.asarray(kx, np.float32), np.asarray(rx, np.float32), rtol=2e-2, atol=2e-2)
    assert kw.shape == (n, k) and kw.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(kw)))
    # forward value
    z = sparse24_linear(x, w, mask, backend=be, mvue=False)
    zr = sparse24_linear(x, w, mask, backend="xla", mvue=False)
    np.testing.assert_allclose(np.asarray(z, np.float32), np.asarray(zr, np.float32), rtol=2e-2, atol=2e-2)
    # dW with MVUE equals S(dZ^T) @ X for the pruned gradient the kernel made
    dz = jax.random.normal(jax.random.key(4), (m, n), jnp.bfloat16)
    g = be.prune_grad(jax.random.key(5), dz)
    s = layout.decompress(np.asarray(g.buf), n, g.mp, BF16).astype(np.float32)
    assert np.all(s[:, m:] == 0)
    np.testing.assert_allclose(np.asarray(be.matmul_dw(g, x)), s[:, :m] @ np.asarray(x, np.float32),
                               rtol=2e-2, atol=2e-2 * float(np.abs(s).max()))


@pytest.mark.parametrize("native", [True, False])
def test_fp8_forward_native_or_fallback_with_host_ops(ops, monkeypatch, native):
    """precision="fp8": with the probe passing, the forward is an e4m3 x e4m3
    product on cuSPARSELt (host stand-in here) and equals the recipe; with it
    failing, the simulated bf16 product runs instead. Gradients flow either way."""
    import jax
    import jax.numpy as jnp

    from sparse24_jax import sparse24_linear, transposable_mask_24
    from sparse24_jax_kernels.cusparselt import backend as cb

    host_ops(monkeypatch, ops)
    seen = []
    host_spmm = ops.spmm

    def spmm(a_buf, b, **kw):
        seen.append(jnp.dtype(b.dtype).name)
        return host_spmm(a_buf, b, **kw)

    monkeypatch.setattr(ops, "spmm", spmm)
    monkeypatch.setattr(ops, "fp8_probe", lambda: (native, "" if native else "probe says no"))
    be = cb.CusparseltBackend()
    n, k, m = 128, 128, 100
    w = jax.random.normal(jax.random.key(0), (n, k), jnp.float32) * 0.1
    mask = transposable_mask_24(w)
    x = jax.random.normal(jax.random.key(1), (m, k), jnp.bfloat16)
    z = sparse24_linear(x, w, mask, backend=be, mvue=False, precision="fp8")
    assert ("float8_e4m3fn" in seen) == native
    zr = sparse24_linear(x, w, mask, backend="xla", mvue=False, precision="fp8")
    # the recipe's product, rounded to bf16 before the scaling (one more rounding)
    np.testing.assert_allclose(np.asarray(z, np.float32), np.asarray(zr, np.float32),
                               rtol=2e-2, atol=2e-2 * float(jnp.abs(zr.astype(jnp.float32)).max()))

    def loss(x, w):
        return jnp.sum(sparse24_linear(x, w, mask, backend=be, mvue=False, precision="fp8")
                       .astype(jnp.float32) ** 2)

    gx, gw = jax.grad(loss, argnums=(0, 1))(x, w)
    assert gx.shape == x.shape and gw.shape == w.shape
    assert np.all(np.isfinite(np.asarray(gw)))


def test_fp8_forward_lowers_to_an_e4m3_spmm(monkeypatch):
    import jax
    import jax.numpy as jnp
    from jax import export

    from sparse24_jax import sparse24_linear, transposable_mask_24
    from sparse24_jax_kernels.cusparselt import backend as cb
    from sparse24_jax_kernels.cusparselt import ops

    monkeypatch.setattr(ops, "load", lambda: None)
    monkeypatch.setattr(ops, "fp8_probe", lambda: (True, ""))
    be = cb.CusparseltBackend()
    n, k, m = 128, 128, 128
    w = jax.random.normal(jax.random.key(0), (n, k), jnp.float32)
    mask = transposable_mask_24(w)
    x = jax.random.normal(jax.random.key(1), (m, k), jnp.bfloat16)
    f = jax.jit(lambda x, w: sparse24_linear(x, w, mask, backend=be, mvue=False, precision="fp8"))
    checks = [export.DisabledSafetyCheck.custom_call(t) for t in ops.TARGETS]
    text = export.export(f, platforms=["cuda"], disabled_checks=checks)(x, w).mlir_module()
    spmm = [ln for ln in text.splitlines() if "custom_call @sparse24_cusparselt_spmm" in ln]
    assert len(spmm) == 1 and "f8E4M3FN" in spmm[0], spmm
    # the e4m3 buffer: values m*k/2 bytes + metadata (fp8 layout)
    assert f"tensor<{layout.compressed_nbytes(n, k, np.dtype(ml_dtypes.float8_e4m3fn))}xui8>" in text


def test_fp8_weight_grad_quantized_in_the_compressed_buffer(ops, monkeypatch):
    """precision="fp8" with MVUE on cuSPARSELt: our MVUE kernel prunes dZ.T,
    its kept values are quantized to e5m2 inside the compressed buffer (the
    metadata untouched), and dW is that operand's sparse product with X."""
    import jax
    import jax.numpy as jnp

    from sparse24_jax import fp8, sparse24_linear, transposable_mask_24
    from sparse24_jax_kernels.cusparselt import backend as cb

    host_ops(monkeypatch, ops)
    monkeypatch.setattr(ops, "fp8_probe", lambda: (True, ""))
    be = cb.CusparseltBackend()
    m, n = 128, 64
    dz = jax.random.normal(jax.random.key(4), (m, n), jnp.bfloat16)
    g = be.prune_grad(jax.random.key(5), dz)
    gq, scale = be.quantize_pruned_grad(g, fp8.E5M2)
    s = layout.decompress(np.asarray(g.buf), n, g.mp, BF16).astype(np.float32)
    sq = layout.decompress(np.asarray(gq.buf), n, gq.mp, BF16).astype(np.float32)
    want_q, want_scale = fp8.quantize(jnp.asarray(s), fp8.E5M2)
    assert float(scale) == float(want_scale)
    np.testing.assert_array_equal(sq, np.asarray(want_q.astype(jnp.float32)))
    nv = n * g.mp // 2 * 2
    np.testing.assert_array_equal(np.asarray(gq.buf[nv:]), np.asarray(g.buf[nv:]))  # metadata

    k = 64
    w = jax.random.normal(jax.random.key(0), (n, k), jnp.float32) * 0.1
    mask = transposable_mask_24(w)
    x = jax.random.normal(jax.random.key(1), (m, k), jnp.bfloat16)

    def loss(x, w):
        z = sparse24_linear(x, w, mask, key=jax.random.key(7), backend=be, precision="fp8")
        return jnp.sum(z.astype(jnp.float32) ** 2)

    gx, gw = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
    assert gw.shape == (n, k) and np.all(np.isfinite(np.asarray(gw)))
