"""GPU test: CUTLASS's own sm90 2:4 compressor, run on the GPU as its example 62
runs it (the SparseConfig of a real sparse GEMM mainloop), writes exactly the
bytes of kernels/cutlass/layout.py, at small, padded and FFN shapes; and the
project's packed format converted by layout.from_packed equals CUTLASS's
compression of the dense matrix.

The program (tests/cutlass_src/sm90_compress_gpu.cu) is built with nvcc from the
CUTLASS headers of the nvidia-cutlass wheel (installed, or in .whl/) on first use.
"""

from __future__ import annotations

import shutil
import subprocess

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from sparse24_jax.packing import compress_24
from sparse24_jax_kernels.cutlass import layout

import _cutlass_host
from _random24 import random_24

pytestmark = pytest.mark.gpu

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
VARIANTS = {"bf16_k128": (BF16, 128), "bf16_k64": (BF16, 64), "f16_k128": (F16, 128), "e4m3_k128": (E4M3, 128)}


def _sm90() -> tuple[bool, str]:
    try:
        dev = jax.devices("gpu")[0]
    except RuntimeError as e:
        return False, f"no GPU: {e}"
    cc = getattr(dev, "compute_capability", None)
    if cc is not None and not str(cc).startswith("9."):
        return False, f"CUTLASS's sm90 sparse kernels need an sm90 GPU, this is compute capability {cc}"
    return True, ""


@pytest.fixture(scope="module")
def compressor():
    ok, why = _sm90()
    if not ok:
        pytest.skip(why)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc to build CUTLASS's compressor")
    inc, why = _cutlass_host.cutlass_include_dir()
    if inc is None:
        pytest.skip(why)
    flags = ["-std=c++17", "-O2", "-arch=sm_90a", "--expt-relaxed-constexpr", f"-I{inc}"]
    return _cutlass_host.build_program([nvcc], _cutlass_host.SRC / "sm90_compress_gpu.cu", "sm90_compress_gpu", flags)


def _check(compressor, variant, a):
    dtype, tile_k = VARIANTS[variant]
    ac, e = _cutlass_host.run_compressor(compressor, a, variant)
    values, meta = layout.compress_sm90(a, tile_k=tile_k)
    assert ac.size == values.nbytes and e.size == meta.size, (ac.size, values.nbytes, e.size, meta.size)
    vb = values.view(np.uint8).reshape(-1)
    bad_v, bad_e = np.flatnonzero(ac != vb), np.flatnonzero(e != meta)
    assert bad_v.size == 0, f"{bad_v.size} value bytes differ, first at {bad_v[:8]}"
    assert bad_e.size == 0, f"{bad_e.size} metadata bytes differ, first at {bad_e[:8]}"


SHAPES = [(64, 128), (1, 4), (70, 200), (130, 264), (5120, 1280), (1280, 5120), (3456, 1280), (1280, 3456)]


@pytest.mark.parametrize("m, k", SHAPES)
def test_bf16_matches_cutlass_compressor(compressor, m, k):
    rng = np.random.default_rng(m + 3 * k)
    a = random_24(rng, m, k, BF16, zero_frac=0.2)
    a.reshape(-1, 4)[::9] = 0  # some empty groups
    _check(compressor, "bf16_k128", a)


@pytest.mark.parametrize("variant", ["bf16_k64", "f16_k128", "e4m3_k128"])
@pytest.mark.parametrize("m, k", [(64, 128), (70, 200), (1280, 5120)])
def test_other_variants_match_cutlass_compressor(compressor, variant, m, k):
    dtype, _ = VARIANTS[variant]
    rng = np.random.default_rng(m + 5 * k)
    _check(compressor, variant, random_24(rng, m, k, dtype, zero_frac=0.2))


@pytest.mark.parametrize("m, k", [(5120, 1280), (70, 200)])
def test_from_packed_matches_cutlass_compressor(compressor, m, k):
    """The project's packed format (what our kernels write today), converted,
    is CUTLASS's compression of the same matrix."""
    rng = np.random.default_rng(k)
    x = rng.standard_normal((m, k)).astype(np.float32).astype(BF16)
    score = rng.random((m, k // 4, 4))
    mask = np.zeros(score.shape, bool)
    np.put_along_axis(mask, np.argsort(-score, -1)[..., :2], True, -1)
    mask &= rng.random(mask.shape) > 0.1
    mask = mask.reshape(m, k)
    pv, pm = (np.asarray(t) for t in compress_24(jnp.asarray(x), jnp.asarray(mask)))
    values, meta = layout.from_packed(pv, pm)
    dense = np.where(mask, x, np.zeros((), BF16))
    ac, e = _cutlass_host.run_compressor(compressor, dense, "bf16_k128")
    assert np.array_equal(ac, values.view(np.uint8).reshape(-1))
    assert np.array_equal(e, meta)


def test_program_reports_bad_input(compressor):
    res = subprocess.run([str(compressor), "nope", "compress", "4", "8"], capture_output=True)
    assert res.returncode != 0 and b"unknown variant" in res.stderr
