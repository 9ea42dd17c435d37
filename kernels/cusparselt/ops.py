"""JAX operations of the cuSPARSELt library: loading, FFI registration, calls.

``load()`` builds (on first use, see :mod:`.build`) and loads the shared
library with ctypes and registers its XLA FFI handlers for the CUDA platform.
The functions below wrap :func:`jax.ffi.ffi_call`; they work under ``jit`` and
inside ``shard_map`` (each device runs on its local shard and keeps its own
cuSPARSELt handle and plans, keyed by the FFI device ordinal). Outside
``shard_map``, sharded operands of a custom call are all-gathered by XLA.

Compressed operands are flat ``uint8`` arrays in cuSPARSELt's format
(:mod:`.layout`).
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

import numpy as np

__all__ = [
    "TARGETS",
    "compress",
    "compress_masked",
    "compressed_nbytes",
    "emulate_compress",
    "fp8_probe",
    "lib_compress",
    "load",
    "load_library",
    "mvue_compress",
    "spmm",
    "stats",
]

_PREFIX = "sparse24_cusparselt_"
#: FFI target name -> exported symbol
TARGETS = {
    _PREFIX + "spmm": "s24_spmm",
    _PREFIX + "compress": "s24_compress",
    _PREFIX + "compress_masked": "s24_compress_masked",
    _PREFIX + "mvue_compress": "s24_mvue_compress",
    _PREFIX + "lib_compress": "s24_lib_compress",
}

_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_REGISTERED = False


def load_library() -> ctypes.CDLL:
    """Build if needed and ctypes-load the library (no GPU needed for this)."""
    global _LIB
    with _LOCK:
        if _LIB is None:
            from .build import library_path

            path = library_path()
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as err:
                raise RuntimeError(
                    f"could not load {path}: {err}. Rebuild with "
                    "`python -m sparse24_jax_kernels.cusparselt.build --force`, or use "
                    "backend='xla' or 'triton'"
                ) from err
            lib.s24_cusparselt_version.restype = ctypes.c_int
            for name in ("s24_num_plans", "s24_num_searches", "s24_num_matmuls"):
                getattr(lib, name).restype = ctypes.c_int64
            lib.s24_compressed_bytes.restype = ctypes.c_int64
            lib.s24_compressed_bytes.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
            lib.s24_emulate_compress.restype = ctypes.c_int
            lib.s24_emulate_compress.argtypes = [
                ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
            ]
            _LIB = lib
        return _LIB


def _has_cuda_device() -> bool:
    import jax

    try:
        return any(d.platform == "gpu" for d in jax.devices("gpu"))
    except RuntimeError:
        return False


def load() -> ctypes.CDLL:
    """Load the library and register its FFI targets for CUDA (once).

    Raises RuntimeError (naming the fallback backends) when JAX has no CUDA
    GPU, or the library cannot be built or loaded.
    """
    global _REGISTERED
    if not _has_cuda_device():
        raise RuntimeError(
            "the cusparselt backend needs an NVIDIA GPU visible to JAX (jax[cuda13]); "
            "none found: use backend='xla' (runs anywhere)"
        )
    lib = load_library()
    with _LOCK:
        if not _REGISTERED:
            import jax

            graphs = os.environ.get("SPARSE24_CUSPARSELT_CMD_BUFFER", "0") not in ("", "0", "false")
            for target, symbol in TARGETS.items():
                if symbol == "s24_spmm" and graphs:
                    symbol = "s24_spmm_graph"
                jax.ffi.register_ffi_target(
                    target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="CUDA"
                )
            _REGISTERED = True
    return lib


def version() -> int:
    """cuSPARSELt's version, major*1000 + minor*100 + patch."""
    return int(load_library().s24_cusparselt_version())


def stats() -> dict[str, int]:
    """Counters of the library: plans built, algorithm searches, matmuls."""
    lib = load_library()
    return {
        "plans": int(lib.s24_num_plans()),
        "searches": int(lib.s24_num_searches()),
        "matmuls": int(lib.s24_num_matmuls()),
    }


def _es(dtype) -> int:
    return np.dtype(dtype).itemsize


def compressed_nbytes(m: int, k: int, dtype) -> int:
    """Bytes of the compressed buffer of an m x k matrix (as layout.compressed_nbytes)."""
    es = _es(dtype)
    mr = -(-m // 64) * 64
    kc = -(-k // 64) * 64 if es == 1 else k
    return m * (k // 2) * es + mr * kc // 8


def _operand_shape(a, transpose: bool) -> tuple[int, int]:
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {tuple(a.shape)}")
    r, c = a.shape
    return (c, r) if transpose else (r, c)


def compress(a, *, transpose: bool = False):
    """Compressed buffer of ``a`` (m, k), or of ``a.T`` when ``transpose``
    (read in place, no transposed copy). ``a`` must be 2:4 along the
    compressed axis; groups with more than two non-zeros keep their two
    largest magnitudes."""
    import jax
    import jax.numpy as jnp

    m, k = _operand_shape(a, transpose)
    out = jax.ShapeDtypeStruct((compressed_nbytes(m, k, a.dtype),), jnp.uint8)
    return jax.ffi.ffi_call(_PREFIX + "compress", out)(a, transpose=np.int64(transpose))


def compress_masked(a, mask, *, transpose: bool = False):
    """Compressed buffer of ``where(mask, a, +0)`` (or its transpose)."""
    import jax
    import jax.numpy as jnp

    m, k = _operand_shape(a, transpose)
    out = jax.ShapeDtypeStruct((compressed_nbytes(m, k, a.dtype),), jnp.uint8)
    return jax.ffi.ffi_call(_PREFIX + "compress_masked", out)(
        a, mask, transpose=np.int64(transpose)
    )


def seed_from_key(key):
    """Two uint32 words from a JAX PRNG key (typed or raw), for the kernels."""
    import jax
    import jax.numpy as jnp

    return jax.random.bits(key, (2,), jnp.uint32)


def mvue_compress(key_or_seed, a, *, transpose: bool = False):
    """MVUE 2:4 along the compressed axis + compression of ``a`` (or ``a.T``).

    ``key_or_seed``: a JAX PRNG key, or a uint32 array of 2 words."""
    import jax
    import jax.numpy as jnp

    seed = key_or_seed
    if not (hasattr(seed, "dtype") and seed.dtype == jnp.uint32 and seed.shape == (2,)):
        seed = seed_from_key(seed)
    m, k = _operand_shape(a, transpose)
    out = jax.ShapeDtypeStruct((compressed_nbytes(m, k, a.dtype),), jnp.uint8)
    return jax.ffi.ffi_call(_PREFIX + "mvue_compress", out)(a, seed, transpose=np.int64(transpose))


def _workspace(m: int = 0, n: int = 0):
    """cuSPARSELt's workspace, as a second (discarded) output of the call so
    that XLA allocates it with its other buffers. Sized max(32 MiB, m*n*2
    bytes): split-k algorithms scale with the output (LLaMA-7B's dW asked for
    37 MB on an H100); SPARSE24_CUSPARSELT_WORKSPACE_MB overrides. A plan that
    wants more fails with a message naming that variable."""
    import jax
    import jax.numpy as jnp

    env = os.environ.get("SPARSE24_CUSPARSELT_WORKSPACE_MB")
    nbytes = int(env) << 20 if env else max(32 << 20, m * n * 2)
    return jax.ShapeDtypeStruct((nbytes,), jnp.uint8)


def lib_compress(a):
    """cuSPARSELt's own compression (cusparseLtSpMMACompress2) of ``a`` (m, k)."""
    import jax
    import jax.numpy as jnp

    m, k = _operand_shape(a, False)
    out = jax.ShapeDtypeStruct((compressed_nbytes(m, k, a.dtype),), jnp.uint8)
    buf, _ = jax.ffi.ffi_call(_PREFIX + "lib_compress", (out, _workspace()))(a)
    return buf


def spmm(a_buf, b, *, m: int, k: int, transpose_b: bool, d_col_major: bool,
         out_dtype: Any = None, alpha: float = 1.0):
    """``D = alpha * A @ op(B)`` with A (m x k) compressed in ``a_buf``.

    ``b`` is (n, k) with ``transpose_b`` (op = T), else (k, n). The result is
    (m, n), returned as the row-major array D.T of shape (n, m) when
    ``d_col_major`` (cuSPARSELt writes D column-major), else as (m, n).
    """
    import jax
    import jax.numpy as jnp

    if b.ndim != 2:
        raise ValueError(f"dense operand must be 2-D, got shape {tuple(b.shape)}")
    n = b.shape[0] if transpose_b else b.shape[1]
    out_dtype = b.dtype if out_dtype is None else jnp.dtype(out_dtype)
    shape = (n, m) if d_col_major else (m, n)
    out = jax.ShapeDtypeStruct(shape, out_dtype)
    d, _ = jax.ffi.ffi_call(_PREFIX + "spmm", (out, _workspace(m, n)))(
        a_buf, b, m=np.int64(m), k=np.int64(k), transpose_b=np.int64(transpose_b),
        d_col_major=np.int64(d_col_major), alpha=np.float32(alpha),
    )
    return d


_DT_CODES = {"bfloat16": 0, "float16": 1, "float8_e4m3fn": 2}
_MODES = {"plain": 0, "mask": 1, "mvue": 2}


def emulate_compress(a: np.ndarray, *, mode: str = "plain", transpose: bool = False,
                     mask: np.ndarray | None = None, seed=(0, 0)) -> np.ndarray:
    """Run the CUDA compression kernel's code on the CPU (host emulation in
    the same library): the exact index arithmetic of the GPU kernel, for
    tests without a GPU. ``a`` is a numpy array of ml_dtypes bfloat16 /
    float8_e4m3fn or numpy float16."""
    lib = load_library()
    dt_name = np.dtype(a.dtype).name
    if dt_name not in _DT_CODES:
        raise ValueError(f"emulate_compress takes bfloat16, float16 or float8_e4m3fn, not {dt_name}")
    src = _aligned_copy(a)
    m, k = _operand_shape(src, transpose)
    out = _aligned_empty(compressed_nbytes(m, k, a.dtype))
    out[:] = 0xAA  # poison: every byte must be written
    mk = None
    if mode == "mask":
        if mask is None or mask.shape != a.shape:
            raise ValueError("mode='mask' needs a mask of a's shape")
        mk = _aligned_copy(np.asarray(mask).astype(np.uint8))
    sd = np.asarray(seed, dtype=np.uint32).reshape(2)
    rc = lib.s24_emulate_compress(
        _DT_CODES[dt_name], _MODES[mode], int(transpose), src.ctypes.data,
        None if mk is None else mk.ctypes.data, sd.ctypes.data, out.ctypes.data, m, k,
    )
    if rc != 0:
        raise ValueError(f"the compression kernels do not take a {m} x {k} {dt_name} operand")
    return out


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


_FP8_PROBE: tuple[bool, str] | None = None


def fp8_probe() -> tuple[bool, str]:
    """Whether cuSPARSELt runs an e4m3 x e4m3 -> bfloat16 2:4 GEMM here (the
    forward of the FP8 recipe: A = W_s row-major, B = X with op T, i.e.
    K-contiguous), checked once per process on a 64 x 64 x 64 product against
    numpy, and why not. ``SPARSE24_CUSPARSELT_FP8=0`` turns it off. Safe to
    call while tracing (it evaluates eagerly)."""
    global _FP8_PROBE
    if os.environ.get("SPARSE24_CUSPARSELT_FP8", "1") in ("0", "false", ""):
        return False, "SPARSE24_CUSPARSELT_FP8=0"
    with _LOCK:
        if _FP8_PROBE is not None:
            return _FP8_PROBE
    import jax
    import jax.numpy as jnp
    import ml_dtypes

    try:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((64, 64)).astype(np.float32)
        keep = np.argsort(-np.abs(a.reshape(64, 16, 4)), axis=-1)[..., :2]
        mask = np.zeros((64, 16, 4), bool)
        np.put_along_axis(mask, keep, True, axis=-1)
        a = np.where(mask.reshape(64, 64), a, 0).astype(ml_dtypes.float8_e4m3fn)
        b = rng.standard_normal((64, 64)).astype(ml_dtypes.float8_e4m3fn)
        with jax.ensure_compile_time_eval():
            buf = compress(jnp.asarray(a))
            d = spmm(buf, jnp.asarray(b), m=64, k=64, transpose_b=True, d_col_major=False,
                     out_dtype=jnp.bfloat16)
            got = np.asarray(jax.device_get(d)).astype(np.float32)
        want = a.astype(np.float32) @ b.astype(np.float32).T
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
        result = (True, "") if err < 1e-2 else (False, f"wrong e4m3 product (max rel err {err:.2e})")
    except Exception as e:  # noqa: BLE001 - any failure means: use the bf16 GEMM
        result = (False, f"{type(e).__name__}: {str(e)[:300]}")
    with _LOCK:
        _FP8_PROBE = result
    return result
