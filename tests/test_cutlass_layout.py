"""CPU tests of the numpy reference of CUTLASS's sm90 compressed 2:4 format
(kernels/cutlass/layout.py): sizes and offsets worked by hand, the degenerate
groups, round trips, the conversion from sparse24_jax.packing's format, and a
byte-for-byte comparison with CUTLASS itself evaluated on the CPU (its compressor
kernel and CuTe's metadata layout, built with g++ from the CUTLASS headers; see
tests/cutlass_src/sm90_compress_host.cpp). The same comparison on the GPU is in
tests/gpu/test_cutlass_layout_gpu.py.
"""

from __future__ import annotations

import shutil
import subprocess

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from sparse24_jax.packing import compress_24, decompress_24
from sparse24_jax_kernels.cutlass import layout

import _cutlass_host
from _random24 import random_24

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
I8 = np.dtype(np.int8)


def bits_of(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint8)


def clear_neg_zero(a):
    """a with every -0 made +0 (what CUTLASS's compressor stores)."""
    b = bits_of(a).copy()
    if a.dtype != I8:
        b[b == (0x8000 if a.dtype.itemsize == 2 else 0x80)] = 0
    return b.view(a.dtype)


def random_i8(rng, m, k):
    a = (random_24(rng, m, k, np.float32, zero_frac=0.3) * 40).astype(np.int8)
    flat = a.reshape(-1)
    flat[::7] = np.where(flat[::7] != 0, -128, 0)  # 0x80 is -128 for int8, not a zero
    return a


def random_mat(rng, m, k, dtype):
    return random_i8(rng, m, k) if dtype == I8 else random_24(rng, m, k, dtype, zero_frac=0.3)


# ---------------------------------------------------------------------------
# sizes and offsets, by hand
# ---------------------------------------------------------------------------


def test_sizes():
    s = layout.compressed_shapes(5120, 1280, BF16)
    assert s.values == (5120, 640) and s.values_nbytes == 5120 * 640 * 2
    assert (s.metadata_rows, s.metadata_cols, s.metadata_nbytes) == (5120, 1280, 5120 * 1280 // 8)
    # m padded to 64 rows (metadata only), k to 16 (values) and to tile_k (metadata)
    s = layout.compressed_shapes(100, 200, F16)
    assert s.values == (100, 104) and (s.metadata_rows, s.metadata_cols) == (128, 256)
    assert layout.compressed_shapes(100, 200, F16, tile_k=64).metadata_cols == 256
    assert layout.compressed_shapes(100, 200, F16, tile_k=32).metadata_cols == 224
    # 8-bit: values k padded to 32, metadata tile_k a multiple of 64
    s = layout.compressed_shapes(3, 12, E4M3)
    assert s.values == (3, 16) and s.values_nbytes == 48 and s.metadata_nbytes == 64 * 128 // 8


@pytest.mark.parametrize(
    "r, kb, off",
    [
        (0, 0, 0),
        (0, 1, 1),  # the other 8 columns of the same 16-column half
        (8, 0, 2),  # row + 8: the high half-word of the same 32-bit word
        (8, 1, 3),
        (0, 4, 4),  # the next 32-column block: the next word (nk = 4 words per 16 bytes)
        (0, 8, 8),
        (0, 12, 12),
        (1, 0, 16),  # the next row: the next 16 bytes
        (7, 0, 112),
        (0, 2, 128),  # columns 16..31: the second half of the atom's rows 0..15
        (16, 0, 256),  # rows 16..31
        (48, 15, 3 * 256 + 1 + 12 + 128),
        (63, 15, 1023),
        (64, 0, 1024),  # the next 64-row atom
        (0, 16, 128 * 16),  # the next 128-column atom, after all of m's (128 padded rows) atoms
    ],
)
def test_metadata_offsets_16bit(r, kb, off):
    assert layout.metadata_byte_offset(r, kb, 100, 2) == off


def test_metadata_offsets_tile_k_64_and_8bit():
    # tile_k 64: nk = 2 words per row pair and 16-column half
    assert layout.metadata_byte_offset(1, 0, 64, 2, tile_k=64) == 8
    assert layout.metadata_byte_offset(0, 2, 64, 2, tile_k=64) == 64
    assert layout.metadata_byte_offset(0, 4, 64, 2, tile_k=128) == 4
    assert layout.metadata_byte_offset(0, 8, 64, 2, tile_k=64) == 64 * 8  # next K atom
    # 8-bit: a plain row-major (64, tile_k/8) atom
    assert layout.metadata_byte_offset(1, 3, 64, 1) == 16 + 3
    assert layout.metadata_byte_offset(65, 17, 128, 1) == 128 * 16 + 1024 + 16 + 1


@pytest.mark.parametrize("es, tile_k", [(2, 128), (2, 64), (2, 32), (1, 128), (1, 64)])
@pytest.mark.parametrize("m, k", [(64, 128), (130, 264), (1, 4)])
def test_metadata_offsets_are_a_permutation(es, tile_k, m, k):
    s = layout.compressed_shapes(m, k, np.uint16 if es == 2 else np.uint8, tile_k=tile_k)
    r, kb = np.meshgrid(np.arange(s.metadata_rows), np.arange(s.metadata_cols // 8), indexing="ij")
    off = layout.metadata_byte_offset(r, kb, m, es, tile_k=tile_k).reshape(-1)
    assert np.array_equal(np.sort(off), np.arange(s.metadata_nbytes))


@pytest.mark.parametrize("tile_k", [128, 64, 32])
def test_metadata_words_hold_row_pairs_of_16_columns(tile_k):
    """What the wgmma metadata operand needs (a wrong interleave breaks it): each
    32-bit word holds rows R (bits 0..15) and R+8 (bits 16..31) of 16
    consecutive columns, 4 bits per group in column order; and each 16-byte
    line holds one row pair's words of the same 16-column half of consecutive
    32-column blocks (one vector load per thread)."""
    m, k = 128, 256
    r, c = np.meshgrid(np.arange(m), np.arange(0, k, 4), indexing="ij")
    w, shift = layout.metadata_word(r, c, m, tile_k=tile_k)
    cells = {}
    for rr, cc, ww, ss in zip(r.ravel(), c.ravel(), w.ravel(), shift.ravel()):
        cells.setdefault(int(ww), []).append((int(ss), int(rr), int(cc)))
    nk = tile_k // 32
    for ww, items in cells.items():
        items.sort()
        assert [s for s, _, _ in items] == list(range(0, 32, 4))
        rows = [rr for _, rr, _ in items]
        cols = [cc for _, _, cc in items]
        assert rows[:4] == [rows[0]] * 4 and rows[4:] == [rows[0] + 8] * 4 and rows[0] % 16 < 8
        assert cols[:4] == cols[4:] == list(range(cols[0], cols[0] + 16, 4)) and cols[0] % 16 == 0
    for line in range(0, len(cells), nk):
        firsts = [sorted(cells[line + j])[0] for j in range(nk)]
        assert len({f[1] for f in firsts}) == 1  # same rows
        assert [f[2] for f in firsts] == [firsts[0][2] + 32 * j for j in range(nk)]


# ---------------------------------------------------------------------------
# the codes, by hand
# ---------------------------------------------------------------------------

# (group, code, stored values): CUTLASS's compressor's choices
GROUPS = [
    ([1, 2, 0, 0], 0x4, [1, 2]),
    ([1, 0, 2, 0], 0x8, [1, 2]),
    ([1, 0, 0, 2], 0xC, [1, 2]),
    ([0, 1, 2, 0], 0x9, [1, 2]),
    ([0, 1, 0, 2], 0xD, [1, 2]),
    ([0, 0, 1, 2], 0xE, [1, 2]),
    ([3, 0, 0, 0], 0xC, [3, 0]),  # one non-zero at i < 3: (i, 3), (a_i, 0)
    ([0, 3, 0, 0], 0xD, [3, 0]),
    ([0, 0, 3, 0], 0xE, [3, 0]),
    ([0, 0, 0, 3], 0xC, [0, 3]),  # one non-zero at 3: (0, 3), (0, a_3)
    ([0, 0, 0, 0], 0x0, [0, 0]),  # none: code 0, (0, 0)
    ([-0.0, 0, -0.0, 5], 0xC, [0, 5]),  # -0 is zero and stored as +0
    ([-0.0, -0.0, -0.0, -0.0], 0x0, [0, 0]),
    ([0, -2, -0.0, 0], 0xD, [-2, 0]),
]


@pytest.mark.parametrize("dtype", [BF16, F16, E4M3])
@pytest.mark.parametrize("group, code, stored", GROUPS)
def test_group_codes(group, code, stored, dtype):
    a = np.array([group], np.float32).astype(dtype)
    i0, i1, v0, v1 = layout.group_codes(a)
    assert int(i0[0, 0] | (i1[0, 0] << 2)) == code
    want = bits_of(np.array(stored, np.float32).astype(dtype))
    assert [int(v0[0, 0]), int(v1[0, 0])] == [int(x) for x in want]


def test_int8_has_no_negative_zero():
    a = np.array([[0, -128, 0, 0]], np.int8)  # 0x80: -128, a non-zero
    i0, i1, v0, v1 = layout.group_codes(a)
    assert (int(i0[0, 0]), int(i1[0, 0]), int(v0[0, 0]), int(v1[0, 0])) == (1, 3, 0x80, 0)
    # the same byte as e4m3 is -0
    i0, i1, v0, v1 = layout.group_codes(a.view(np.uint8))
    assert (int(i0[0, 0]), int(i1[0, 0]), int(v0[0, 0])) == (0, 0, 0)


def test_hand_worked_example():
    """The example in kernels/cutlass/LAYOUT.md: 1 x 16 bfloat16."""
    a = np.array([[0, 1.5, 0, -2, 0, 0, 0, 0, 0, 0, 0, 7, 3, 0, 0, 0]], np.float32).astype(BF16)
    values, meta = layout.compress_sm90(a)
    assert values.shape == (1, 8)
    assert values.astype(np.float32).tolist() == [[1.5, -2, 0, 0, 0, 7, 3, 0]]
    assert meta.size == 64 * 128 // 8
    # groups: (1,3)=0xD, empty=0x0, one at 3=(0,3)=0xC, one at 0=(0,3)=0xC
    assert meta[0] == 0x0D and meta[1] == 0xCC
    assert not meta[2:].any()
    assert bits_of(values).tolist() == [[0x3FC0, 0xC000, 0, 0, 0, 0x40E0, 0x4040, 0]]


def test_padding_is_zero():
    rng = np.random.default_rng(3)
    a = random_24(rng, 70, 200, BF16)  # values cols 100 -> 104, metadata 128 x 256
    values, meta = layout.compress_sm90(a)
    assert values.shape == (70, 104) and not bits_of(values)[:, 100:].any()
    s = layout.compressed_shapes(70, 200, BF16)
    r, kb = np.meshgrid(np.arange(s.metadata_rows), np.arange(s.metadata_cols // 8), indexing="ij")
    pad = (r >= 70) | (kb >= 25)
    assert not meta[layout.metadata_byte_offset(r[pad], kb[pad], 70, 2)].any()
    # and the real groups are never all zero bytes here: every code is non-zero
    assert np.count_nonzero(meta[layout.metadata_byte_offset(r[~pad], kb[~pad], 70, 2)]) > 0.9 * (~pad).sum()


# ---------------------------------------------------------------------------
# round trips and the project's packed format
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, tile_k", [(BF16, 128), (BF16, 64), (BF16, 32), (F16, 128), (E4M3, 128), (E4M3, 64), (I8, 128)]
)
@pytest.mark.parametrize("m, k", [(64, 128), (1, 4), (70, 200), (129, 392)])
def test_roundtrip(dtype, tile_k, m, k):
    rng = np.random.default_rng(m * 1000 + k)
    a = random_mat(rng, m, k, dtype)
    values, meta = layout.compress_sm90(a, tile_k=tile_k)
    assert values.dtype == a.dtype
    back = layout.decompress_sm90(values, meta, m, k, tile_k=tile_k)
    assert np.array_equal(bits_of(back), bits_of(clear_neg_zero(a)))


@pytest.mark.parametrize("dtype", [BF16, F16])
@pytest.mark.parametrize("m, k", [(64, 128), (33, 40), (128, 1280)])
def test_from_packed_matches_compress_of_the_dense(dtype, m, k):
    """Our kernels write sparse24_jax.packing's format; from_packed turns it into
    CUTLASS's bytes, equal to compressing the dense matrix, for masks that keep
    zeros, -0 and fewer than two per group."""
    rng = np.random.default_rng(m + k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[rng.random((m, k)) < 0.15] = 0.0
    x[rng.random((m, k)) < 0.1] = -0.0
    x = x.astype(dtype)
    # a 2:4 mask that keeps 0, 1 or 2 per group (kept zeros included)
    score = rng.random((m, k // 4, 4))
    top = np.argsort(-score, -1)[..., :2]
    mask = np.zeros((m, k // 4, 4), bool)
    np.put_along_axis(mask, top, True, -1)
    mask &= rng.random(mask.shape) > 0.2
    mask = mask.reshape(m, k)
    pv, pm = compress_24(jnp.asarray(x), jnp.asarray(mask))
    pv, pm = np.asarray(pv), np.asarray(pm)
    values, meta = layout.from_packed(pv, pm)
    dense = np.asarray(decompress_24(jnp.asarray(pv), jnp.asarray(pm)))
    want_v, want_m = layout.compress_sm90(dense)
    assert np.array_equal(bits_of(values), bits_of(want_v))
    assert np.array_equal(meta, want_m)
    # the same kept values: CUTLASS's buffers decompress to where(mask, x, 0) (-0 as +0)
    kept = np.where(mask, x, np.zeros((), dtype))
    assert np.array_equal(bits_of(layout.decompress_sm90(values, meta, m, k)), bits_of(clear_neg_zero(kept)))


def test_from_packed_every_pair_of_positions_and_values():
    """All 6 position pairs x (zero / non-zero) for each stored value, one group each."""
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    vals = [(1.0, 2.0), (0.0, 2.0), (1.0, 0.0), (0.0, 0.0), (-0.0, 2.0), (1.0, -0.0)]
    dense, pv, codes = [], [], []
    for p in pairs:
        for v in vals:
            g = [0.0] * 4
            g[p[0]], g[p[1]] = v
            dense += g
            pv += list(v)
            codes.append(p[0] | p[1] << 2)
    pv = np.array([pv], np.float32).astype(BF16)
    codes = np.array(codes, np.uint8)
    pm = (codes[0::2] | codes[1::2] << 4)[None, :].astype(np.uint8)
    values, meta = layout.from_packed(pv, pm)
    want_v, want_m = layout.compress_sm90(np.array([dense], np.float32).astype(BF16))
    assert np.array_equal(bits_of(values), bits_of(want_v)) and np.array_equal(meta, want_m)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_bad_inputs():
    with pytest.raises(ValueError, match="more than two non-zeros"):
        layout.compress_sm90(np.ones((2, 8), BF16))
    with pytest.raises(ValueError, match="multiple of 4"):
        layout.compress_sm90(np.zeros((2, 6), BF16))
    with pytest.raises(ValueError, match="16-bit and 8-bit"):
        layout.compress_sm90(np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="tile_k"):
        layout.compressed_shapes(64, 64, BF16, tile_k=48)
    with pytest.raises(ValueError, match="tile_k"):
        layout.compressed_shapes(64, 64, E4M3, tile_k=32)
    v, md = layout.compress_sm90(np.zeros((4, 8), BF16))
    with pytest.raises(ValueError, match="1-D uint8"):
        layout.decompress_sm90(v, md[:-1], 4, 8)
    with pytest.raises(ValueError, match="values of a 4 x 8"):
        layout.decompress_sm90(v[:, :2], md, 4, 8)
    bad = v.copy()
    bits_of(bad)[0, 0] = 0x3F80  # code 0 with a stored 1.0
    with pytest.raises(ValueError, match="code 0"):
        layout.decompress_sm90(bad, md, 4, 8)
    md2 = md.copy()
    md2[0] = 0x07  # (3, 1)
    with pytest.raises(ValueError, match="idx0 >= idx1"):
        layout.decompress_sm90(v, md2, 4, 8)
    with pytest.raises(ValueError, match="meta must be uint8"):
        layout.from_packed(np.zeros((2, 4), BF16), np.zeros((2, 2), np.int32))


# ---------------------------------------------------------------------------
# CUTLASS itself, on the CPU
# ---------------------------------------------------------------------------

HOST_VARIANTS = [("bf16", 128), ("bf16", 64), ("f16", 128), ("e4m3", 128), ("i8", 128)]
DTYPES = {"bf16": BF16, "f16": F16, "e4m3": E4M3, "i8": I8}


@pytest.fixture(scope="module")
def host_compressors():
    for tag, tk in HOST_VARIANTS:
        cmd, why = _cutlass_host.host_compressor_flags(tag, tk)
        if cmd is None:
            pytest.skip(f"CUTLASS's compressor cannot be built on this machine: {why}")
    return _cutlass_host.build_host_compressors(HOST_VARIANTS)


@pytest.mark.parametrize("tag, tile_k", HOST_VARIANTS)
@pytest.mark.parametrize("m, k", [(64, 128), (1, 4), (70, 200), (130, 264), (192, 1280)])
def test_matches_cutlass_compressor_on_host(host_compressors, tag, tile_k, m, k):
    dtype = DTYPES[tag]
    rng = np.random.default_rng(7 * m + k)
    a = random_mat(rng, m, k, dtype)
    a.reshape(-1, 4)[::5] = 0  # some empty groups
    ac, e = _cutlass_host.run_compressor(host_compressors[(tag, tile_k)], a)
    values, meta = layout.compress_sm90(a, tile_k=tile_k)
    assert ac.size == values.nbytes and e.size == meta.size
    assert np.array_equal(ac, values.view(np.uint8).reshape(-1)), "values differ from CUTLASS's"
    assert np.array_equal(e, meta), "metadata differs from CUTLASS's"


@pytest.mark.parametrize("tag, tile_k", [("bf16", 128), ("bf16", 64), ("e4m3", 128)])
@pytest.mark.parametrize("m, k", [(64, 128), (130, 392)])
def test_offsets_match_cute_layout(host_compressors, tag, tile_k, m, k):
    """CuTe's fill_layoutE (what the GEMM's TMA reads) evaluated at every (row, byte column)."""
    off = _cutlass_host.run_layout(host_compressors[(tag, tile_k)], m, k)
    es = DTYPES[tag].itemsize
    s = layout.compressed_shapes(m, k, DTYPES[tag], tile_k=tile_k)
    r, kb = np.meshgrid(np.arange(s.metadata_rows), np.arange(s.metadata_cols // 8), indexing="ij")
    assert np.array_equal(off, layout.metadata_byte_offset(r, kb, m, es, tile_k=tile_k).reshape(-1))


# ---------------------------------------------------------------------------
# kernels/cutlass/csrc/sm90_layout.cuh (the kernels' twin of layout.py), on the host
# ---------------------------------------------------------------------------

HEADER_DIR = _cutlass_host.REPO / "kernels" / "cutlass" / "csrc"
LAYOUT_HOST = _cutlass_host.SRC / "sm90_layout_host.cpp"


def _layout_host_program(compiler):
    exe = shutil.which(compiler)
    if exe is None:
        pytest.skip(f"no {compiler} to build kernels/cutlass/csrc/sm90_layout.cuh")
    flags = ["-std=c++17", "-O1", f"-I{HEADER_DIR}"]
    if compiler == "nvcc":
        # as CUDA: the functions are __host__ __device__, and a kernel using them compiles for sm_90a
        flags += ["-x", "cu", "-arch=sm_90a"]
    return _cutlass_host.build_program([exe], LAYOUT_HOST, f"sm90_layout_host-{compiler}", flags)


def _run_layout_host(exe, mode, m, k, es_arg, tile_k, data=b""):
    res = subprocess.run([str(exe), mode, str(m), str(k), str(es_arg), str(tile_k)], input=data, capture_output=True)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout


def _split(out):
    nv, ne = (int(x) for x in np.frombuffer(out[:16], np.uint64))
    assert len(out) == 16 + nv + ne
    return np.frombuffer(out[16:16 + nv], np.uint8), np.frombuffer(out[16 + nv:], np.uint8)


@pytest.mark.parametrize("compiler", ["g++", "nvcc"])
def test_cuda_header_matches_layout_py(compiler):
    exe = _layout_host_program(compiler)
    cases = [(BF16, 2, 128), (BF16, 2, 64), (F16, 2, 32), (E4M3, 1, 128), (E4M3, 1, 64), (I8, -1, 128)]
    for dtype, es_arg, tile_k in cases:
        for m, k in [(64, 128), (1, 4), (70, 200), (130, 264)]:
            es = abs(es_arg) if es_arg != -1 else 1
            s = layout.compressed_shapes(m, k, dtype, tile_k=tile_k)
            off = np.frombuffer(_run_layout_host(exe, "offsets", m, k, es_arg, tile_k), np.int64)
            r, kb = np.meshgrid(np.arange(s.metadata_rows), np.arange(s.metadata_cols // 8), indexing="ij")
            assert np.array_equal(off, layout.metadata_byte_offset(r, kb, m, es, tile_k=tile_k).reshape(-1))
            rng = np.random.default_rng(m * k + tile_k)
            a = random_mat(rng, m, k, dtype)
            a.reshape(-1, 4)[::5] = 0
            v, md = _split(_run_layout_host(exe, "compress", m, k, es_arg, tile_k, a.tobytes()))
            want_v, want_m = layout.compress_sm90(a, tile_k=tile_k)
            assert np.array_equal(v, want_v.view(np.uint8).reshape(-1)), (dtype, tile_k, m, k)
            assert np.array_equal(md, want_m), (dtype, tile_k, m, k)


@pytest.mark.parametrize("compiler", ["g++", "nvcc"])
def test_cuda_header_from_packed_matches_layout_py(compiler):
    exe = _layout_host_program(compiler)
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    rng = np.random.default_rng(11)
    for m, k in [(64, 128), (70, 200)]:
        x = rng.standard_normal((m, k // 2)).astype(np.float32)
        x[rng.random(x.shape) < 0.25] = 0.0
        x[rng.random(x.shape) < 0.1] = -0.0
        pv = x.astype(BF16)
        codes = np.array([p0 | p1 << 2 for p0, p1 in pairs], np.uint8)[rng.integers(0, 6, (m, k // 4))]
        if codes.shape[1] % 2:
            codes = np.concatenate([codes, np.full((m, 1), 0xE, np.uint8)], 1)
        pm = (codes[:, 0::2] | codes[:, 1::2] << 4).astype(np.uint8)
        v, md = _split(_run_layout_host(exe, "packed", m, k, 2, 128, pv.tobytes() + pm.tobytes()))
        want_v, want_m = layout.from_packed(pv, pm)
        assert np.array_equal(v, want_v.view(np.uint8).reshape(-1))
        assert np.array_equal(md, want_m)
