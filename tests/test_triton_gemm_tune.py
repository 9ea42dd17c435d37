"""benchmarks/triton_gemm_tune.py on CPU, with the Triton GEMM replaced by its pure-JAX twin
(the timings need a GPU to mean anything): every product is checked against the twin before
it is timed, a config with a wrong result is never picked, products two linears share are
timed once, and the JSON it writes is what matmul.config_for reads."""

import importlib.util
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

# not imported here: importing triton at collection, before tests/test_triton_interpreter.py
# turns its interpreter on, would make that whole file skip in a full run
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _kernels_path import ensure_kernels_package  # noqa: E402

import sparse24_jax as s24  # noqa: E402



def test_sweep_skips_wrong_configs_and_writes_the_table(tmp_path, monkeypatch):
    ensure_kernels_package()
    from sparse24_jax_kernels.triton import matmul

    import triton_gemm_tune

    WRONG = matmul.CANDIDATES[-1]
    seen = []

    def twin(v, m, b, *, b_transposed=False, out_transposed=False, out_dtype=None, precision="ieee", config=None):
        seen.append(config)
        c = jnp.dot(s24.decompress_24(v, m), b.T if b_transposed else b, preferred_element_type=jnp.float32)
        if config == WRONG:
            c = c * 1.1
        c = c.T if out_transposed else c
        return c.astype(b.dtype if out_dtype is None else out_dtype)

    monkeypatch.setattr(matmul, "sparse24_matmul", twin)
    out = tmp_path / "cfg.json"
    triton_gemm_tune.main(["--shapes", "gpt2-124m", "--which", "both", "--m", "32", "--reps", "1",
                           "--rounds", "1", "--warmup", "0", "--out", str(out)])
    assert WRONG in seen and set(seen) == set(matmul.CANDIDATES)
    # --configs: a 5-entry config and its WORDS=0 spelling are one kernel, timed once
    seen.clear()
    triton_gemm_tune.main(["--shapes", "gpt2-124m", "--which", "up", "--m", "32", "--reps", "1", "--rounds", "1",
                           "--warmup", "0", "--configs", "128,256,64,8,3", "128,256,64,8,3,0", "128,256,64,8,3,2"])
    assert set(seen) == {(128, 256, 64, 8, 3), (128, 256, 64, 8, 3, 2)}
    with pytest.raises(ValueError, match="WORDS"):
        triton_gemm_tune.main(["--shapes", "gpt2-124m", "--m", "32", "--configs", "128,256,64,8,3,5"])
    data = json.loads(out.read_text())
    # up: fwd, dX, dW; down: its fwd and dX are up's dX and fwd, only its dW is new
    assert [r["gemm"] for r in data["rows"]] == ["fwd", "dX", "dW", "dW"]
    assert len(data["configs"]) == 4
    assert all(tuple(c) != WRONG for c in data["configs"].values())
    # the backend's lookup finds the sweep's pick for the forward product (Z.T = W_s @ X.T)
    monkeypatch.setenv(matmul.TUNED_ENV, str(out))
    matmul._tuned_table.cache_clear()
    try:
        fwd = matmul.config_for(jnp.bfloat16, 3072, 32, 768, b_transposed=True, out_transposed=True)
        assert fwd == tuple(data["rows"][0]["best"])
    finally:
        matmul._tuned_table.cache_clear()


def test_sweep_dense_ceiling_rows(tmp_path, monkeypatch):
    """--dense times Triton's dense GEMM in DENSE_CONFIGS beside each product (here a jnp.dot
    stands in for it) and records it per row; without --dense nothing is recorded."""
    ensure_kernels_package()
    from sparse24_jax_kernels.triton import matmul

    import triton_gemm_tune

    def twin(v, m, b, *, b_transposed=False, out_transposed=False, out_dtype=None, precision="ieee", config=None):
        c = jnp.dot(s24.decompress_24(v, m), b.T if b_transposed else b, preferred_element_type=jnp.float32)
        return (c.T if out_transposed else c).astype(b.dtype if out_dtype is None else out_dtype)

    dense_calls = []

    def dense(a, b, cfg, *, b_transposed=False, out_transposed=False, out_dtype=None):
        dense_calls.append(cfg)
        c = jnp.dot(a, b.T if b_transposed else b, preferred_element_type=jnp.float32)
        return (c.T if out_transposed else c).astype(b.dtype if out_dtype is None else out_dtype)

    monkeypatch.setattr(matmul, "sparse24_matmul", twin)
    monkeypatch.setattr(triton_gemm_tune, "dense_triton", dense)
    for flag in ([], ["--dense"]):
        out = tmp_path / f"cfg{len(flag)}.json"
        triton_gemm_tune.main(["--shapes", "gpt2-124m", "--which", "up", "--m", "32", "--reps", "1", "--rounds", "1",
                               "--warmup", "0", "--configs", "128,256,64,8,3", "--out", str(out), *flag])
        rows = json.loads(out.read_text())["rows"]
        assert len(rows) == 3
        want = set(",".join(map(str, c)) for c in triton_gemm_tune.DENSE_CONFIGS) if flag else set()
        assert all(set(r["triton_dense_ms"]) == want for r in rows)
    assert set(dense_calls) == set(triton_gemm_tune.DENSE_CONFIGS)
