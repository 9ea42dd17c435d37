"""What `pip install` gives a user: the named configs ship inside the package (so that
`sparse24-train --config tiny` works from any directory)."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_configs_and_cli_works_from_another_directory(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(ROOT)], capture_output=True, text=True, timeout=300)
    if built.returncode and "satisfies the requirement setuptools" in built.stderr:
        pytest.skip("cannot fetch the build backend (setuptools) here: no package index")
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("sparse24_jax-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "sparse24_train/configs/tiny.toml" in names and "sparse24_train/configs/gpt2-124m.toml" in names

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
