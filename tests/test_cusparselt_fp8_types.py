"""CPU tests of the fp8 type pairs of the cuSPARSELt backend (issue #11): e5m2
compression by the CUDA kernels' host emulation, the lowering of a mixed
e4m3 / e5m2 spmm (the sparse operand's type travels as the ``a_dtype``
attribute), the probe's API per type pair, and the helpers of
``benchmarks/fp8_types.py``. Whether cuSPARSELt runs each pair is a GPU
question: tests/gpu/test_cusparselt.py and the benchmark itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from sparse24_jax_kernels.cusparselt import layout

from _random24 import random_24

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E5M2 = np.dtype(ml_dtypes.float8_e5m2)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ops(cusparselt_host_ops):
    return cusparselt_host_ops


@pytest.fixture
def fresh_probes(monkeypatch):
    """The probe's module (ops re-exports its functions), with its per-pair cache
    emptied for the test (and restored after): the tests replace its trial there."""
    from sparse24_jax_kernels.cusparselt import fp8_probe

    monkeypatch.setattr(fp8_probe, "_FP8_PROBES", {})
    monkeypatch.delenv("SPARSE24_CUSPARSELT_FP8", raising=False)
    return fp8_probe


# ---------------------------------------------------------------------------
# e5m2 in the compressed format and the compression kernels
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("m,k", [(64, 64), (32, 128), (96, 320), (128, 256)])
def test_layout_roundtrip_e5m2(m, k):
    a = random_24(np.random.default_rng(m * k), m, k, E5M2)
    buf = layout.compress(a)
    assert buf.size == layout.compressed_nbytes(m, k, E5M2) == layout.compressed_nbytes(m, k, E4M3)
    back = layout.decompress(buf, m, k, E5M2)
    ab, bb = a.view(np.uint8), back.view(np.uint8)
    nz = (ab & 0x7F) != 0
    assert np.array_equal(ab[nz], bb[nz])
    assert np.all((bb[~nz] & 0x7F) == 0)


@pytest.mark.parametrize("m,k", [(64, 64), (32, 32), (96, 320), (128, 256), (224, 192)])
def test_kernel_e5m2_matches_reference(ops, m, k):
    a = random_24(np.random.default_rng(5 * m + k), m, k, E5M2)
    ref = layout.compress(a, strict=False)
    assert np.array_equal(ops.emulate_compress(a), ref)
    # W^T read in place: the 2:4 axis is the input's rows
    assert np.array_equal(ops.emulate_compress(np.ascontiguousarray(a.T), transpose=True), ref)
    # the same bits as e4m3: the layout depends on the element size only
    assert np.array_equal(ops.emulate_compress(a.view(E4M3)), ref)


def test_kernel_e5m2_mvue(ops):
    """MVUE 2:4 of dZ^T in e5m2 (the generic kernel: the dedicated one is 16-bit):
    canonical 2:4 buffers, kept values x / p rounded to e5m2, saturating (not inf)."""
    rng = np.random.default_rng(12)
    m_tok, n = 128, 64
    dz = (rng.standard_normal((m_tok, n)) * 8).astype(E5M2)
    dz[0, :] = 40000.0  # / p (<= 1) overflows e5m2's 57344 for p < 0.7: must saturate
    buf = ops.emulate_compress(dz, mode="mvue", transpose=True, seed=(3, 4))
    assert not np.array_equal(buf, ops.emulate_compress(dz, mode="mvue", transpose=True, seed=(3, 5)))
    s = layout.decompress(buf, n, m_tok, E5M2)
    assert np.array_equal(layout.compress(s), buf)  # canonical metadata
    sf = s.astype(np.float32)
    assert np.all(np.isfinite(sf)) and np.abs(sf).max() <= 57344.0
    assert np.all((sf.reshape(n, -1, 4) != 0).sum(-1) <= 2)
    # every kept value has its source's sign and at least its magnitude (p <= 1)
    src = dz.T.astype(np.float32)
    kept = sf != 0
    assert np.all(np.sign(sf[kept]) == np.sign(src[kept]))
    assert np.all(np.abs(sf[kept]) >= np.abs(src[kept]) * (1 - 2**-2))  # e5m2 rounding


def test_kernel_fp8_rows_multiple_of_32(ops):
    a = random_24(np.random.default_rng(0), 40, 64, E5M2)
    with pytest.raises(ValueError, match="do not take a 40 x 64 float8_e5m2"):
        ops.emulate_compress(a)
    with pytest.raises(ValueError, match="float8_e5m2"):
        ops.emulate_compress(np.zeros((64, 64), np.float32))


# ---------------------------------------------------------------------------
# the spmm call: the sparse operand's type is an attribute
# ---------------------------------------------------------------------------


def _spmm_mlir(ops, a_dtype, b_dtype, monkeypatch):
    import jax
    import jax.numpy as jnp
    from jax import export

    monkeypatch.setattr(ops, "load", lambda: None)
    m, n, k = 64, 128, 64
    nbytes = ops.compressed_nbytes(m, k, a_dtype or b_dtype)
    f = jax.jit(lambda buf, b: ops.spmm(buf, b, m=m, k=k, transpose_b=True, d_col_major=False,
                                        out_dtype=jnp.bfloat16, a_dtype=a_dtype))
    checks = [export.DisabledSafetyCheck.custom_call(t) for t in ops.TARGETS]
    args = (jnp.zeros((nbytes,), jnp.uint8), jnp.zeros((n, k), b_dtype))
    text = export.export(f, platforms=["cuda"], disabled_checks=checks)(*args).mlir_module()
    return [ln for ln in text.splitlines() if "custom_call @sparse24_cusparselt_spmm" in ln]


@pytest.mark.parametrize("a_dtype,b_dtype,code", [
    ("float8_e5m2", "float8_e4m3fn", 3),
    ("float8_e4m3fn", "float8_e5m2", 2),
    (None, "float8_e5m2", 3),  # default: B's type
    (None, "bfloat16", 0),
])
def test_spmm_lowers_with_the_sparse_dtype(monkeypatch, a_dtype, b_dtype, code):
    from sparse24_jax_kernels.cusparselt import ops

    calls = _spmm_mlir(ops, a_dtype, b_dtype, monkeypatch)
    assert len(calls) == 1 and f"a_dtype = {code} : i64" in calls[0], calls
    b_mlir = {"float8_e4m3fn": "f8E4M3FN", "float8_e5m2": "f8E5M2", "bfloat16": "bf16"}[b_dtype]
    assert f"tensor<128x64x{b_mlir}>" in calls[0], calls  # B keeps its own type


def test_spmm_rejects_other_sparse_dtypes():
    import jax.numpy as jnp

    from sparse24_jax_kernels.cusparselt import ops

    with pytest.raises(ValueError, match="a_dtype.*float8_e5m2, not float32"):
        ops.spmm(jnp.zeros((10,), jnp.uint8), jnp.zeros((64, 64), jnp.bfloat16), m=64, k=64,
                 transpose_b=True, d_col_major=False, a_dtype=jnp.float32)


# ---------------------------------------------------------------------------
# fp8_probe: per pair, cached, truthy, reasons
# ---------------------------------------------------------------------------


def _fake_trial(calls, outcome):
    def trial(sparse, dense, m=64, n=64, k=64, *, seed=0):
        calls.append((sparse, dense))
        result = outcome(sparse, dense)
        if isinstance(result, Exception):
            raise result
        want = np.ones((m, n))
        return (want * result).astype(np.float32), want

    return trial


def test_probe_default_is_e4m3_and_unpacks_like_before(fresh_probes, monkeypatch):
    ops = fresh_probes
    calls = []
    monkeypatch.setattr(ops, "fp8_spmm_trial", _fake_trial(calls, lambda a, b: 1.0))
    probe = ops.fp8_probe()
    assert probe and probe.ok and probe.reason == ""
    ok, why = probe
    assert (ok, why) == (True, "") and probe[0] is True
    assert calls == [("float8_e4m3fn", "float8_e4m3fn")]
    # cached per pair: the same pair by any spelling runs no second trial
    import jax.numpy as jnp

    assert ops.fp8_probe(jnp.float8_e4m3fn, "e4m3") is probe
    assert ops.fp8_probe(E4M3, "float8_e4m3fn") is probe
    assert len(calls) == 1


def test_probe_refusal_is_false_with_status_and_types(fresh_probes, monkeypatch):
    ops = fresh_probes
    calls = []
    refusal = RuntimeError(
        "INTERNAL: sparse24 cuSPARSELt: cusparseLtMatmulDescriptorInit failed: "
        "CUSPARSE_STATUS_NOT_SUPPORTED (10): operation not supported [asked for: sparse A "
        "float8_e5m2 x dense B float8_e4m3fn -> D bfloat16, compute float32, m=64, n=64, k=64, "
        "opB=T, D row-major]")

    def outcome(a, b):
        if a == b:
            return 1.0
        return refusal if a == "float8_e5m2" else 1.5  # 50% off: wrong numbers

    monkeypatch.setattr(ops, "fp8_spmm_trial", _fake_trial(calls, outcome))
    refused = ops.fp8_probe("e5m2", "e4m3")
    assert not refused and refused.ok is False
    assert "CUSPARSE_STATUS_NOT_SUPPORTED" in refused.reason
    assert "float8_e5m2 x float8_e4m3fn" in refused.reason
    wrong = ops.fp8_probe("e4m3", "e5m2")
    assert not wrong and "wrong float8_e4m3fn x float8_e5m2 product" in wrong.reason
    assert ops.fp8_probe("e5m2", "e5m2")
    assert ops.fp8_probe("e5m2", "e4m3") is refused  # cached, refusals too
    assert calls == [("float8_e5m2", "float8_e4m3fn"), ("float8_e4m3fn", "float8_e5m2"),
                     ("float8_e5m2", "float8_e5m2")]


def test_probe_env_off_and_bad_types(fresh_probes, monkeypatch):
    ops = fresh_probes
    calls = []
    monkeypatch.setattr(ops, "fp8_spmm_trial", _fake_trial(calls, lambda a, b: 1.0))
    monkeypatch.setenv("SPARSE24_CUSPARSELT_FP8", "0")
    off = ops.fp8_probe("e5m2", "e5m2")
    assert not off and off.reason == "SPARSE24_CUSPARSELT_FP8=0" and calls == []
    with pytest.raises(ValueError, match="float8_e4m3fn, float8_e5m2, not bfloat16"):
        ops.fp8_probe(ml_dtypes.bfloat16)
    with pytest.raises(ValueError, match="not 'e4m4'"):
        ops.fp8_probe("e4m3", "e4m4")


def test_probe_without_gpu_says_why(fresh_probes):
    """The real trial on this CPU machine: False, with load()'s reason."""
    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("a GPU is present")
    probe = fresh_probes.fp8_probe("e5m2", "e4m3")
    assert not probe and "NVIDIA GPU" in probe.reason


# ---------------------------------------------------------------------------
# benchmarks/fp8_types.py's helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("fp8_types", REPO / "benchmarks" / "fp8_types.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_status_text(bench):
    msg = ("INTERNAL: sparse24 cuSPARSELt: cusparseLtDenseDescriptorInit(B) failed: "
           "CUSPARSE_STATUS_INVALID_VALUE (3): invalid value [asked for: sparse A float8_e4m3fn x "
           "dense B float8_e5m2 -> D bfloat16, ...]")
    assert bench.status_text(msg) == ("cusparseLtDenseDescriptorInit: CUSPARSE_STATUS_INVALID_VALUE (3): "
                                      "invalid value")
    assert bench.status_text("\nRuntimeError: something else\nmore") == "RuntimeError: something else"


def test_bench_args_and_table(bench):
    import argparse

    assert bench.parse_shape("1024x512x256") == (1024, 512, 256)
    with pytest.raises(argparse.ArgumentTypeError, match="multiple of 32"):
        bench.parse_shape("40x64x64")
    assert bench.parse_pair("E5M2:e4m3") == ("float8_e5m2", "float8_e4m3fn")
    with pytest.raises(argparse.ArgumentTypeError, match="SPARSE:DENSE"):
        bench.parse_pair("e5m2")
    rows = [
        dict(sparse="float8_e4m3fn", dense="float8_e4m3fn", m=64, n=64, k=64, accepted=True,
             refused=False, max_abs_err=0.01, max_rel_err=1e-3, correct=True, layout="identical"),
        dict(sparse="float8_e5m2", dense="float8_e4m3fn", m=64, n=64, k=64, accepted=False,
             refused=True, status="cusparseLtMatmulDescriptorInit: CUSPARSE_STATUS_NOT_SUPPORTED (10): x",
             layout="identical"),
    ]
    table = bench.markdown(rows).splitlines()
    assert len(table) == 4
    assert "| e4m3 | e4m3 | accepted, right | 0.01 | 1.00e-03 | identical |" in table[2]
    assert "| e5m2 | e4m3 | refused: cusparseLtMatmulDescriptorInit: CUSPARSE_STATUS_NOT_SUPPORTED" in table[3]


def test_bench_without_gpu_exits_2(bench, capsys):
    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("a GPU is present")
    assert bench.main([]) == 2
    assert "NVIDIA GPU" in capsys.readouterr().err


def test_bench_main_with_a_stand_in_library(bench, monkeypatch, tmp_path, capsys):
    """The script's loop on a stand-in: one pair refused by cuSPARSELt, one
    wrong, the others right; exits 0 (a refusal is a finding) and writes JSON."""
    import json

    from sparse24_jax_kernels.cusparselt import ops as real_ops

    class FakeOps:
        # the pure numpy verdict of the real module: the script and the probe share it
        FP8_REL_TOL = real_ops.FP8_REL_TOL
        fp8_rel_err = staticmethod(real_ops.fp8_rel_err)

        def load(self):
            pass

        def version(self):
            return 800

        def compress(self, a):
            return np.zeros(8, np.uint8)

        def lib_compress(self, a):
            if np.dtype(a.dtype).name == "float8_e5m2":
                raise RuntimeError("INTERNAL: sparse24 cuSPARSELt: cusparseLtSpMMACompress2 failed: "
                                   "CUSPARSE_STATUS_NOT_SUPPORTED (10): operation not supported")
            return np.zeros(8, np.uint8)

        def fp8_spmm_trial(self, sparse, dense, m, n, k, *, seed=0):
            if (sparse, dense) == ("float8_e5m2", "float8_e4m3fn"):
                raise RuntimeError(
                    "INTERNAL: sparse24 cuSPARSELt: cusparseLtMatmulDescriptorInit failed: "
                    "CUSPARSE_STATUS_NOT_SUPPORTED (10): operation not supported [asked for: sparse A "
                    "float8_e5m2 x dense B float8_e4m3fn -> D bfloat16, ...]")
            want = np.ones((m, n))
            return (want * (2.0 if sparse == dense == "float8_e5m2" else 1.0)).astype(np.float32), want

    monkeypatch.setattr(bench, "_ops", lambda: FakeOps())
    out = tmp_path / "fp8.json"
    assert bench.main(["--shapes", "64x64x64", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 64 x 64 x 64 | e5m2 | e4m3 | refused: cusparseLtMatmulDescriptorInit: " \
           "CUSPARSE_STATUS_NOT_SUPPORTED (10): operation not supported |" in text
    assert "| 64 x 64 x 64 | e5m2 | e5m2 | accepted, WRONG NUMBERS |" in text
    assert "| e4m3 | e5m2 | accepted, right | 0 | 0.00e+00 | identical |" in text
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and sum(r["accepted"] for r in rows) == 3
    assert rows[2]["refused"] and "library refused" in rows[2]["layout"]
