"""Our own CUTLASS-format compressors (kernels/cutlass/csrc/own_compress.cu) run
on the CPU: the unit is built alone with nvcc into a small host library
(tests/cutlass_src/own_compress_host.cu, cached by its sources' hash), whose
s24c_emulate_own_* exports run the CUDA kernels' code block by block and
thread by thread, as the cuSPARSELt library's emulation does."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import ml_dtypes
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SRC = Path(__file__).resolve().parent / "cutlass_src" / "own_compress_host.cu"
CUTLASS_CSRC = REPO / "kernels" / "cutlass" / "csrc"
CUSPARSELT_CSRC = REPO / "kernels" / "cusparselt" / "csrc"
_CACHE = Path(os.environ.get("SPARSE24_CUTLASS_CACHE", Path(tempfile.gettempdir()) / "sparse24_cutlass_host"))
_LIB = None
_LOAD_LOCK = threading.Lock()


def _nvcc() -> str | None:
    for c in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if c and os.path.isfile(c):
            return c
    return None


def available() -> tuple[bool, str]:
    if _nvcc() is None:
        return False, "no nvcc to build the compressors' host emulation (set NVCC or CUDA_HOME)"
    return True, ""


def load() -> ctypes.CDLL:
    # host callbacks of one jitted function can run on several XLA threads at once: one builds
    with _LOAD_LOCK:
        return _load()


def _load() -> ctypes.CDLL:
    global _LIB
    if _LIB is not None:
        return _LIB
    nvcc = _nvcc()
    if nvcc is None:
        raise FileNotFoundError(available()[1])
    h = hashlib.sha256()
    for p in [SRC, *sorted(CUTLASS_CSRC.glob("*.cu*")), *sorted(CUTLASS_CSRC.glob("*.h")),
              *sorted(CUSPARSELT_CSRC.glob("*.cuh")), *sorted(CUSPARSELT_CSRC.glob("*.h"))]:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    out = _CACHE / "bin" / f"own_compress_host-{h.hexdigest()[:16]}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        cmd = [nvcc, "-O2", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr",
               "-gencode", "arch=compute_90a,code=sm_90a", "-I", str(CUTLASS_CSRC),
               "-I", str(CUSPARSELT_CSRC), str(SRC), "-o", str(tmp)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"building {SRC.name} failed:\n{res.stderr[-4000:]}")
        tmp.replace(out)
    lib = ctypes.CDLL(str(out))
    p = ctypes.c_void_p
    lib.s24c_emulate_own_project.argtypes = [p, p, p, p, p, p, ctypes.c_int64, ctypes.c_int64]
    lib.s24c_emulate_own_mvue.argtypes = [p, p, p, p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.s24c_emulate_own_swiglu_grad_mvue.argtypes = [p, p, p, p, p, p, ctypes.c_int64, ctypes.c_int64]
    lib.s24c_test_cusparselt_mvue.argtypes = [p, p, p, ctypes.c_int64, ctypes.c_int64]
    lib.s24c_test_own_meta_byte.argtypes = [p, ctypes.c_int64, ctypes.c_int64]
    _LIB = lib
    return lib


def _meta_nbytes(rows: int, cols: int) -> int:
    return -(-rows // 64) * 64 * (-(-cols // 128) * 128) // 8


def _poisoned(shape, dtype=np.uint8):
    a = np.empty(shape, dtype)
    a.view(np.uint8)[...] = 0xAA  # every byte must be written
    return a


def project(w: np.ndarray, mask: np.ndarray):
    """(values, meta, values_t, meta_t) of W_s = where(mask, w, 0) in bf16 and W_s^T."""
    w = np.ascontiguousarray(w, np.float32)
    mk = np.ascontiguousarray(np.asarray(mask).astype(np.uint8) if np.asarray(mask).dtype == bool
                              else np.asarray(mask, np.uint8))
    n, k = w.shape
    vals = _poisoned((n, k // 2), ml_dtypes.bfloat16)
    meta = _poisoned(_meta_nbytes(n, k))
    vals_t = _poisoned((k, n // 2), ml_dtypes.bfloat16)
    meta_t = _poisoned(_meta_nbytes(k, n))
    rc = load().s24c_emulate_own_project(w.ctypes.data, mk.ctypes.data, vals.ctypes.data,
                                         meta.ctypes.data, vals_t.ctypes.data, meta_t.ctypes.data, n, k)
    if rc:
        raise ValueError(f"the projection kernel does not take a {n} x {k} weight")
    return vals, meta, vals_t, meta_t


def mvue(dz: np.ndarray, seed, block_groups: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(values (N, M/2), meta) of the MVUE of dZ^T, dz (M, N) bf16, in blocks of
    ``block_groups`` token groups (32 or 64; 0: the launcher's choice)."""
    dz = np.ascontiguousarray(dz)
    m, n = dz.shape
    sd = np.asarray(seed, np.uint32).reshape(2)
    vals = _poisoned((n, m // 2), ml_dtypes.bfloat16)
    meta = _poisoned(_meta_nbytes(n, m))
    rc = load().s24c_emulate_own_mvue(dz.ctypes.data, sd.ctypes.data, vals.ctypes.data,
                                      meta.ctypes.data, m, n, block_groups)
    if rc:
        raise ValueError(f"the MVUE kernel does not take dZ of shape {dz.shape} in blocks of "
                         f"{block_groups} groups")
    return vals, meta


def swiglu_grad_mvue(da: np.ndarray, h: np.ndarray, seed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dh (M, 2F), values (2F, M/2), meta): SwiGLU's backward of dA (M, F) at h = [x | gate]
    (M, 2F), bf16, and the MVUE of dh^T, from the fused kernel's code."""
    da, h = np.ascontiguousarray(da), np.ascontiguousarray(h)
    m, f = da.shape
    sd = np.asarray(seed, np.uint32).reshape(2)
    dh = _poisoned(h.shape, ml_dtypes.bfloat16)
    vals = _poisoned((2 * f, m // 2), ml_dtypes.bfloat16)
    meta = _poisoned(_meta_nbytes(2 * f, m))
    rc = load().s24c_emulate_own_swiglu_grad_mvue(da.ctypes.data, h.ctypes.data, dh.ctypes.data,
                                                  sd.ctypes.data, vals.ctypes.data, meta.ctypes.data, m, f)
    if rc:
        raise ValueError(f"the SwiGLU gradient kernel does not take dA of shape {da.shape}")
    return dh, vals, meta


def cusparselt_mvue(dz: np.ndarray, seed) -> np.ndarray:
    """cuSPARSELt's compressed buffer of the MVUE of dZ^T (its kernel, emulated)."""
    from sparse24_jax_kernels.cusparselt import layout as cl

    dz = np.ascontiguousarray(dz)
    m, n = dz.shape
    sd = np.asarray(seed, np.uint32).reshape(2)
    out = _poisoned(cl.compressed_nbytes(n, m, dz.dtype))
    if load().s24c_test_cusparselt_mvue(dz.ctypes.data, sd.ctypes.data, out.ctypes.data, m, n):
        raise ValueError(f"cuSPARSELt's MVUE kernel does not take dZ of shape {dz.shape}")
    return out


def own_meta_byte(rows: int, cols: int) -> np.ndarray:
    """OwnMetaByte(r, g) for every row r and group g (rows, cols // 4) uint32: the byte
    of the metadata the fused MVUE epilogue writes for groups g & ~1, g | 1 of row r."""
    out = np.zeros((rows, cols // 4), np.uint32)
    load().s24c_test_own_meta_byte(out.ctypes.data, rows, cols)
    return out
