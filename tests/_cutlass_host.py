"""Finding CUTLASS's headers and CUDA, and building the small programs that run
CUTLASS's own sm90 2:4 compressor (tests/cutlass_src/): on the CPU with g++
(tests/test_cutlass_layout.py) and on the GPU with nvcc
(tests/gpu/test_cutlass_layout_gpu.py).

The headers come from, in order: ``$CUTLASS_INCLUDE_DIR``; the installed
``nvidia-cutlass`` wheel (``cutlass_library/source/include``); the wheel file in
the repository's ``.whl/`` folder, unpacked once into a cache folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SRC = Path(__file__).resolve().parent / "cutlass_src"
_MARKER = "cutlass/gemm/collective/builders/sm90_sparse_config.inl"
_CACHE = Path(os.environ.get("SPARSE24_CUTLASS_CACHE", Path(tempfile.gettempdir()) / "sparse24_cutlass_host"))

#: the C++ element type of each tag of the CPU program
ELEMENTS = {
    "bf16": "cutlass::bfloat16_t",
    "f16": "cutlass::half_t",
    "e4m3": "cutlass::float_e4m3_t",
    "i8": "int8_t",
}


def cutlass_include_dir() -> tuple[Path | None, str]:
    """(CUTLASS include folder, where it came from), or (None, why not)."""
    env = os.environ.get("CUTLASS_INCLUDE_DIR")
    if env:
        p = Path(env)
        return (p, "$CUTLASS_INCLUDE_DIR") if (p / _MARKER).exists() else (None, f"$CUTLASS_INCLUDE_DIR={env} lacks {_MARKER}")
    spec = importlib.util.find_spec("cutlass_library")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "source" / "include"
            if (p / _MARKER).exists():
                return p, "the installed nvidia-cutlass wheel"
    wheels = sorted((REPO / ".whl").glob("nvidia_cutlass-*.whl"))
    if not wheels:
        return None, "no CUTLASS headers: install nvidia-cutlass, put its wheel in .whl/, or set CUTLASS_INCLUDE_DIR"
    whl = wheels[-1]
    st = whl.stat()
    dest = _CACHE / f"headers-{whl.stem}-{st.st_size}"
    inc = dest / "cutlass_library" / "source" / "include"
    if not (inc / _MARKER).exists():
        tmp = Path(tempfile.mkdtemp(dir=_mkdir(_CACHE)))
        with zipfile.ZipFile(whl) as z:
            names = [n for n in z.namelist() if n.startswith("cutlass_library/source/include/")]
            z.extractall(tmp, names)
        try:
            tmp.rename(dest)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return inc, f"{whl.name} (unpacked in {dest})"


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def cuda_include_dirs() -> tuple[list[Path] | None, str]:
    """[include, include/cccl] of the CUDA toolkit (cuda_runtime.h, cuda/std), or (None, why)."""
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        cands.append(str(real.parent.parent))
        try:  # a wrapper script (exec /usr/local/cuda-X/bin/nvcc "$@")
            for word in real.read_text(errors="ignore").split():
                if word.endswith("/bin/nvcc"):
                    cands.append(str(Path(word).parent.parent))
        except OSError:
            pass
    for c in cands:
        if c and (Path(c) / "include" / "cuda_runtime.h").exists():
            inc = Path(c) / "include"
            dirs = [inc] + ([inc / "cccl"] if (inc / "cccl" / "cuda" / "std").exists() else [])
            return dirs, str(c)
    return None, "no CUDA toolkit headers (cuda_runtime.h) found: set CUDA_HOME"


def build_program(cmd_prefix: list[str], src: Path, out_name: str, flags: list[str]) -> Path:
    key = hashlib.sha256("\0".join([*cmd_prefix, *flags, src.read_text()]).encode()).hexdigest()[:16]
    exe = _mkdir(_CACHE / "bin") / f"{out_name}-{key}"
    if not exe.exists():
        tmp = exe.with_suffix(f".tmp{os.getpid()}")
        res = subprocess.run([*cmd_prefix, *flags, str(src), "-o", str(tmp)], capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"building {src.name} failed:\n{res.stderr[-4000:]}")
        tmp.replace(exe)
    return exe


def host_compressor_flags(tag: str, tile_k: int) -> tuple[list[str] | None, str]:
    """g++ command and flags for the CPU program, or (None, why it cannot be built)."""
    gxx = shutil.which("g++")
    if gxx is None:
        return None, "no g++ to build CUTLASS's compressor as host code"
    inc, why = cutlass_include_dir()
    if inc is None:
        return None, why
    cuda, why = cuda_include_dirs()
    if cuda is None:
        return None, why
    flags = ["-std=c++20", "-O1", "-pthread", f"-DELT={ELEMENTS[tag]}", f"-DTILEK={tile_k}", f"-I{inc}"]
    flags += [f"-I{d}" for d in cuda]
    return [gxx, *flags], ""


def build_host_compressors(variants) -> dict:
    """{(tag, tile_k): executable} for CUTLASS's compressor run on the CPU,
    built in parallel (cached by source and flags)."""
    out, procs = {}, []
    for tag, tk in variants:
        cmd, why = host_compressor_flags(tag, tk)
        if cmd is None:
            raise FileNotFoundError(why)
        key = hashlib.sha256("\0".join([*cmd, (SRC / "sm90_compress_host.cpp").read_text()]).encode()).hexdigest()[:16]
        exe = _mkdir(_CACHE / "bin") / f"sm90_compress_host-{tag}-{tk}-{key}"
        out[(tag, tk)] = exe
        if not exe.exists():
            tmp = exe.with_name(exe.name + f".tmp{os.getpid()}")
            p = subprocess.Popen([*cmd, str(SRC / "sm90_compress_host.cpp"), "-o", str(tmp)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append((p, tmp, exe))
    for p, tmp, exe in procs:
        _, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"building {exe.name} failed:\n{err[-4000:]}")
        tmp.replace(exe)
    return out


def run_compressor(exe: Path, a: np.ndarray, *args: str) -> tuple[np.ndarray, np.ndarray]:
    """CUTLASS's (values bytes, metadata bytes) of the row-major matrix ``a``."""
    a = np.ascontiguousarray(a)
    m, k = a.shape
    res = subprocess.run([str(exe), *args, "compress", str(m), str(k)], input=a.tobytes(), capture_output=True)
    if res.returncode:
        raise RuntimeError(f"{exe.name} {m} x {k} failed ({res.returncode}): {res.stderr.decode()[-2000:]}")
    out = res.stdout
    na, ne = (int(x) for x in np.frombuffer(out[:16], np.uint64))
    if len(out) != 16 + na + ne:
        raise RuntimeError(f"{exe.name}: {len(out)} bytes of output, expected {16 + na + ne}")
    return np.frombuffer(out[16:16 + na], np.uint8), np.frombuffer(out[16 + na:], np.uint8)


def run_layout(exe: Path, m: int, k: int) -> np.ndarray:
    """CuTe's metadata byte offsets of (row, byte column), row-major over the padded extent."""
    res = subprocess.run([str(exe), "layout", str(m), str(k)], capture_output=True, check=True)
    return np.frombuffer(res.stdout, np.int64)
