"""What the two FFI libraries' build modules share (``cusparselt.build``, ``cutlass.build``):
finding nvcc, and the cache directory a built library goes to."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def find_nvcc() -> str | None:
    """The nvcc binary: $NVCC, $CUDA_HOME/bin, PATH, /usr/local/cuda/bin."""
    cands = []
    if os.environ.get("NVCC"):
        cands.append(os.environ["NVCC"])
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cands.append(os.path.join(os.environ[var], "bin", "nvcc"))
    which = shutil.which("nvcc")
    if which:
        cands.append(which)
    cands.append("/usr/local/cuda/bin/nvcc")
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def cache_dirs(name: str, package_dir: Path, own_env: str | None = None) -> list[Path]:
    """Where library ``name`` may be cached, in order: ``$own_env`` (if given and set),
    ``$SPARSE24_CACHE_DIR/name``, ``~/.cache/sparse24_jax/name``, ``build/`` beside the
    package, the system temp dir."""
    dirs = []
    if own_env and os.environ.get(own_env):
        dirs.append(Path(os.environ[own_env]))
    if os.environ.get("SPARSE24_CACHE_DIR"):
        dirs.append(Path(os.environ["SPARSE24_CACHE_DIR"]) / name)
    dirs.append(Path.home() / ".cache" / "sparse24_jax" / name)
    dirs.append(package_dir / "build")
    dirs.append(Path(tempfile.gettempdir()) / "sparse24_jax" / name)
    return dirs


def writable_dir(cands: list[Path], error: type[Exception]) -> Path:
    """The first of ``cands`` that can be created and written to; else ``error``."""
    for d in cands:
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".probe{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            return d
        except OSError:
            continue
    raise error(f"no writable directory for the built library among {[str(c) for c in cands]}")
