"""What `pip install` gives a user: the named configs ship inside the package (so that
`sparse24-train --config tiny` works from any directory), and the GPU extra pins the set the
README documents."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _gpu_extra() -> dict[str, str]:
    """{distribution (with its extras): version specifier} of the `gpu` extra."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    out = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+(?:\[[^\]]+\])?)\s*(.*)", dep.strip())
        out[m.group(1).lower()] = m.group(2).replace(" ", "")
    return out


def test_gpu_extra_installs_a_cuda_jaxlib_and_the_working_triton():
    gpu = _gpu_extra()
    # without jax[cudaNN] pip keeps the CPU-only jaxlib of the base install
    assert any(name.startswith("jax[cuda13") for name in gpu), gpu
    # jax-triton 0.3.1 asks for triton>=3.6, which resolves to a newer triton it fails with
    assert gpu.get("jax-triton") == "==0.3.1" and gpu.get("triton") == "==3.6.0", gpu
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(re.match(r"(jax-triton|triton|jax\[cuda)", d) for d in base)  # CPU install stays CPU
    # the README's GPU section installs the extra and names the same versions
    section = (ROOT / "README.md").read_text().split("## GPU install", 1)[1]
    assert ".[gpu" in section and "jax-triton 0.3.1" in section and "triton 3.6.0" in section
    jax_pin = next(v for k, v in gpu.items() if k.startswith("jax[cuda13"))
    assert jax_pin.lstrip("=") in section, (jax_pin, "the README's tested jax version")


@pytest.mark.slow
def test_wheel_ships_configs_and_cli_works_from_another_directory(tmp_path):
    # built from a copy: setuptools writes build/ and *.egg-info into the tree it builds
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".*venv*", "runs", "out", ".pytest_cache", "*.so"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(src)], capture_output=True, text=True, timeout=300)
    if built.returncode and "satisfies the requirement setuptools" in built.stderr:
        pytest.skip("cannot fetch the build backend (setuptools) here: no package index")
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("sparse24_jax-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "sparse24_train/configs/tiny.toml" in names and "sparse24_train/configs/gpt2-124m.toml" in names
    # the CUTLASS kernels' sources, which the first GPU use compiles
    for f in ("build.py", "ops.py", "csrc/gemm_instance.cu", "csrc/gemm_kernel.cuh", "csrc/products.h",
              "csrc/bindings.cc", "epilogue_ops.py", "csrc/epilogue_instance.cu",
              "csrc/gemm_epilogue.cuh", "csrc/epilogue.h", "csrc/epilogue_bindings.cc"):
        assert f"sparse24_jax_kernels/cutlass/{f}" in names, f
    # the FFI helpers both libraries' host units include
    assert "sparse24_jax_kernels/cusparselt/csrc/ffi_common.h" in names

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"  # no configs/ here, and not the repository
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "SPARSE24_CONFIG_DIR"}
    env["PYTHONPATH"] = str(site)
    where = subprocess.run([sys.executable, "-c", "import sparse24_train; print(sparse24_train.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(site))  # the installed copy, not the checkout
    run = subprocess.run([sys.executable, "-m", "sparse24_train", "--config", "tiny", "--steps", "1",
                          "--no-progress", "--out", "run", "--set", "n_layer=1", "--set", "n_embd=64",
                          "--set", "n_head=2", "--set", "block_size=32", "--set", "batch_size=4",
                          "--set", "eval_batches=1", "--set", "tokenizer=byte", "--set", "dtype=float32"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (elsewhere / "run" / "summary.json").is_file()
