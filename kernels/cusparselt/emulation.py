"""Host emulation of the CUDA kernels that write the compressed format, for
tests without a GPU.

The library compiles the kernels' code (``csrc/compress_kernels.cuh``,
``csrc/project.cu``, ``csrc/act_grad_kernels.cuh``) for the host too:
``s24_emulate_compress``, ``s24_emulate_project`` and
``s24_emulate_act_grad_mvue`` run it block by block and thread by thread on the
CPU, with exactly the index arithmetic of the GPU kernels. It needs nvcc and
cuSPARSELt's headers to build the library, no GPU.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from . import _library
from .layout import compressed_nbytes

__all__ = ["MODES", "emulate_act_grad_mvue", "emulate_compress", "emulate_project_compress"]

#: compression modes (csrc/compress.h's kModePlain ... kModeMvue)
MODES = {"plain": 0, "mask": 1, "mvue": 2}


def emulate_compress(a: np.ndarray, *, mode: str = "plain", transpose: bool = False,
                     mask: np.ndarray | None = None, seed=(0, 0)) -> np.ndarray:
    """Run the CUDA compression kernel's code on the CPU (host emulation in
    the same library): the exact index arithmetic of the GPU kernel, for
    tests without a GPU. ``a`` is a numpy array of ml_dtypes bfloat16 /
    float8_e4m3fn / float8_e5m2 or numpy float16."""
    lib = _library.load_library()
    dt_name = np.dtype(a.dtype).name
    code = _library.dt_code(a.dtype, "emulate_compress's input")
    src = _aligned_copy(a)
    m, k = _library.operand_shape(src, transpose)
    out = _aligned_empty(compressed_nbytes(m, k, a.dtype))
    out[:] = 0xAA  # poison: every byte must be written
    mk = None
    if mode == "mask":
        if mask is None or mask.shape != a.shape:
            raise ValueError("mode='mask' needs a mask of a's shape")
        mk = _aligned_copy(np.asarray(mask).astype(np.uint8))
    sd = np.asarray(seed, dtype=np.uint32).reshape(2)
    rc = lib.s24_emulate_compress(
        code, MODES[mode], int(transpose), src.ctypes.data,
        None if mk is None else mk.ctypes.data, sd.ctypes.data, out.ctypes.data, m, k,
    )
    if rc != 0:
        raise ValueError(f"the compression kernels do not take a {m} x {k} {dt_name} operand")
    return out


def emulate_project_compress(w: np.ndarray, mask: np.ndarray | None = None, beta=None, *,
                             dtype, transpose_too: bool):
    """The one-pass projection kernel (``ops.project_compress``) run on the
    CPU: the same arguments and results, as numpy arrays (the dense ``W_s``
    of ``beta=`` in ``dtype``, ml_dtypes bfloat16 or numpy float16)."""
    mode, code = _library.project_mode(w, mask, beta, dtype, transpose_too)
    lib = _library.load_library()
    out_dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[_library.dtype_name(dtype)]
    n, k = w.shape
    src = _aligned_copy(np.asarray(w, np.float32))
    out = _aligned_empty(compressed_nbytes(n, k, out_dtype))
    out2 = None
    if mode == "mask":
        aux = _aligned_copy(np.asarray(mask).astype(np.uint8))
        if transpose_too:
            out2 = _aligned_empty(compressed_nbytes(k, n, out_dtype))
    else:
        aux = np.asarray(beta, np.float32).reshape(1).copy()
        out2 = _aligned_empty(n * k * 2)
    out[:] = 0xAA  # poison: every byte must be written
    if out2 is not None:
        out2[:] = 0xAA
    rc = lib.s24_emulate_project(
        _library.PROJECT_MODES[mode], code, src.ctypes.data, aux.ctypes.data, out.ctypes.data,
        None if out2 is None else out2.ctypes.data, n, k,
    )
    if rc != 0:
        raise ValueError(f"the projection kernel does not take a {n} x {k} weight ({mode})")
    if mode == "soft":
        return out, out2.view(out_dtype).reshape(n, k)
    return out, out2


def emulate_act_grad_mvue(kind: str, da: np.ndarray, z: np.ndarray, *,
                          seed=(0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Run the fused activation-backward + MVUE kernel's code on the CPU:
    ``(dz, buf)`` as ``ops.act_grad_mvue_compress`` computes them (``kind``
    "gelu" or "swiglu"; ``da``, ``z`` ml_dtypes bfloat16 or numpy float16)."""
    lib = _library.load_library()
    m, cols = _library.act_grad_shape(kind, da, z)
    dac, zc = _aligned_copy(da), _aligned_copy(z)
    dz = _aligned_empty(zc.nbytes).view(zc.dtype).reshape(zc.shape)
    dz.view(np.uint8)[...] = 0xAA  # poison: every element must be written
    out = _aligned_empty(compressed_nbytes(cols, m, z.dtype))
    out[:] = 0xAA
    sd = np.asarray(seed, dtype=np.uint32).reshape(2)
    rc = lib.s24_emulate_act_grad_mvue(
        _library.ACT_KINDS[kind], _library.dt_code(z.dtype, "z"), dac.ctypes.data, zc.ctypes.data,
        dz.ctypes.data, sd.ctypes.data, out.ctypes.data, m, cols,
    )
    if rc != 0:
        raise ValueError(f"the {kind} gradient kernel does not take z of shape {z.shape}")
    return dz, out


def _aligned_empty(nbytes: int) -> np.ndarray:
    raw = np.empty(nbytes + 64, dtype=np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + nbytes]


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    buf = _aligned_empty(a.nbytes)
    out = buf.view(a.dtype).reshape(a.shape)
    out[...] = a
    return out
