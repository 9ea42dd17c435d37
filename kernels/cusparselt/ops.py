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
from typing import Any, NamedTuple

import numpy as np

from .layout import compressed_nbytes  # the one size formula (also ops.compressed_nbytes)

__all__ = [
    "FP8_DTYPES",
    "FP8_REL_TOL",
    "Fp8Probe",
    "TARGETS",
    "compress",
    "compress_masked",
    "compressed_nbytes",
    "emulate_compress",
    "fp8_name",
    "fp8_probe",
    "fp8_rel_err",
    "fp8_spmm_trial",
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
         out_dtype: Any = None, alpha: float = 1.0, a_dtype: Any = None):
    """``D = alpha * A @ op(B)`` with A (m x k) compressed in ``a_buf``.

    ``b`` is (n, k) with ``transpose_b`` (op = T), else (k, n). The result is
    (m, n), returned as the row-major array D.T of shape (n, m) when
    ``d_col_major`` (cuSPARSELt writes D column-major), else as (m, n).
    ``a_dtype``: the element type A was compressed from (``a_buf`` is uint8),
    default ``b.dtype``; fp8 operands may mix e4m3 and e5m2, where cuSPARSELt
    takes the pair (:func:`fp8_probe`). ``out_dtype`` defaults to ``b.dtype``.
    """
    import jax
    import jax.numpy as jnp

    if b.ndim != 2:
        raise ValueError(f"dense operand must be 2-D, got shape {tuple(b.shape)}")
    n = b.shape[0] if transpose_b else b.shape[1]
    out_dtype = b.dtype if out_dtype is None else jnp.dtype(out_dtype)
    a_code = _dt_code(b.dtype if a_dtype is None else a_dtype, "the sparse operand (a_dtype)")
    shape = (n, m) if d_col_major else (m, n)
    out = jax.ShapeDtypeStruct(shape, out_dtype)
    d, _ = jax.ffi.ffi_call(_PREFIX + "spmm", (out, _workspace(m, n)))(
        a_buf, b, m=np.int64(m), k=np.int64(k), transpose_b=np.int64(transpose_b),
        d_col_major=np.int64(d_col_major), a_dtype=np.int64(a_code), alpha=np.float32(alpha),
    )
    return d


# dtype codes of the library (its kBF16 ... kE5M2): the compression kernels'
# emulation and s24_spmm's a_dtype attribute
_DT_CODES = {"bfloat16": 0, "float16": 1, "float8_e4m3fn": 2, "float8_e5m2": 3}
_MODES = {"plain": 0, "mask": 1, "mvue": 2}


def _dtype_name(dtype) -> str:
    try:
        return np.dtype(dtype).name
    except TypeError:
        return repr(dtype)


def _dt_code(dtype, what: str) -> int:
    name = _dtype_name(dtype)
    if name not in _DT_CODES:
        raise ValueError(f"{what} must be one of {', '.join(_DT_CODES)}, not {name}")
    return _DT_CODES[name]


def emulate_compress(a: np.ndarray, *, mode: str = "plain", transpose: bool = False,
                     mask: np.ndarray | None = None, seed=(0, 0)) -> np.ndarray:
    """Run the CUDA compression kernel's code on the CPU (host emulation in
    the same library): the exact index arithmetic of the GPU kernel, for
    tests without a GPU. ``a`` is a numpy array of ml_dtypes bfloat16 /
    float8_e4m3fn / float8_e5m2 or numpy float16."""
    lib = load_library()
    dt_name = np.dtype(a.dtype).name
    code = _dt_code(a.dtype, "emulate_compress's input")
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
        code, _MODES[mode], int(transpose), src.ctypes.data,
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


#: the fp8 element types of cuSPARSELt's 2:4 GEMM we can compress and ask for
FP8_DTYPES = ("float8_e4m3fn", "float8_e5m2")
#: an fp8 product is right when fp8_rel_err is below this: its bf16 output (8
#: significant bits) of a float32 accumulation is off by about 2^-8 of the
#: largest |D| at most, with room to spare
FP8_REL_TOL = 1e-2
_FP8_ALIASES = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}


class Fp8Probe(NamedTuple):
    """Result of :func:`fp8_probe`: truthy iff the GEMM ran and was right.

    Unpacks as ``ok, reason`` (the probe's historical ``(bool, str)``).
    ``reason`` is empty when ``ok``; otherwise it says why not: cuSPARSELt's
    refusal (its ``CUSPARSE_STATUS_...`` text and the types asked for), a
    wrong product, or ``SPARSE24_CUSPARSELT_FP8=0``."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return bool(self.ok)


def fp8_name(dtype) -> str:
    """``np.dtype(dtype).name`` of an fp8 type (``"e4m3"``/``"e5m2"`` accepted);
    ValueError for any other type."""
    import ml_dtypes  # noqa: F401 - registers the fp8 names with numpy

    name = _dtype_name(_FP8_ALIASES.get(dtype, dtype) if isinstance(dtype, str) else dtype)
    if name not in FP8_DTYPES:
        raise ValueError(f"an fp8 2:4 GEMM operand is one of {', '.join(FP8_DTYPES)}, not {name}")
    return name


def fp8_spmm_trial(sparse_dtype, dense_dtype, m: int = 64, n: int = 64, k: int = 64, *,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One fp8 2:4 GEMM on the GPU, in the FP8 recipe's layout: ``D (m, n) =
    A @ B.T`` with A (m, k) 2:4 in ``sparse_dtype`` (compressed by our kernel,
    row-major) and B (n, k) in ``dense_dtype`` (K-contiguous, opB = T: the only
    fp8 layout cuSPARSELt takes), output bfloat16, compute float32.

    Returns ``(got, want)``: the product as float32 and the float64 numpy
    product of the same quantized values. Raises what the call raises (a
    refusal of the type pair carries cuSPARSELt's status and both types).
    Evaluates eagerly, also while tracing. m must be a multiple of 32 and k of
    64 (fp8 layout), n of 8."""
    import jax
    import jax.numpy as jnp
    import ml_dtypes

    sa = getattr(ml_dtypes, fp8_name(sparse_dtype))
    sb = getattr(ml_dtypes, fp8_name(dense_dtype))
    load()  # registers the FFI targets (RuntimeError without a CUDA GPU)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    keep = np.argsort(-np.abs(a.reshape(m, k // 4, 4)), axis=-1)[..., :2]
    mask = np.zeros((m, k // 4, 4), bool)
    np.put_along_axis(mask, keep, True, axis=-1)
    a = np.where(mask.reshape(m, k), a, 0).astype(sa)
    b = rng.standard_normal((n, k)).astype(sb)
    with jax.ensure_compile_time_eval():
        buf = compress(jnp.asarray(a))
        d = spmm(buf, jnp.asarray(b), m=m, k=k, transpose_b=True, d_col_major=False,
                 out_dtype=jnp.bfloat16, a_dtype=a.dtype)
        got = np.asarray(jax.device_get(d)).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64).T
    return got, want


def fp8_rel_err(got, want) -> float:
    """max |got - want| / max |want| (of :func:`fp8_spmm_trial`'s pair)."""
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30))


_FP8_PROBES: dict[tuple[str, str], Fp8Probe] = {}


def fp8_probe(sparse_dtype: Any = "float8_e4m3fn", dense_dtype: Any = "float8_e4m3fn") -> Fp8Probe:
    """Whether cuSPARSELt runs a ``sparse_dtype`` x ``dense_dtype`` -> bfloat16
    2:4 GEMM here, and why not: one 64 x 64 x 64 :func:`fp8_spmm_trial`
    checked against numpy, once per process and type pair. The dtypes are
    anything ``np.dtype`` takes (``jnp.float8_e5m2``, ``"float8_e5m2"``) or
    ``"e4m3"`` / ``"e5m2"``; both default to e4m3, the forward of the FP8
    recipe (A = W_s row-major, B = X with op T). The gradient GEMMs would pair
    e4m3 with e5m2 (issue #11; ``benchmarks/fp8_types.py`` tabulates all four
    pairs).

    Returns an :class:`Fp8Probe`: ``if fp8_probe(...)`` tests it, ``ok, why =
    fp8_probe(...)`` unpacks it. A refused pair is False with cuSPARSELt's
    status text in ``.reason``, never an exception (but ValueError for a type
    that is not fp8). ``SPARSE24_CUSPARSELT_FP8=0`` turns every pair off.
    Safe to call while tracing (it evaluates eagerly)."""
    key = (fp8_name(sparse_dtype), fp8_name(dense_dtype))
    if os.environ.get("SPARSE24_CUSPARSELT_FP8", "1") in ("0", "false", ""):
        return Fp8Probe(False, "SPARSE24_CUSPARSELT_FP8=0")
    with _LOCK:
        if key in _FP8_PROBES:
            return _FP8_PROBES[key]
    pair = f"{key[0]} x {key[1]}"
    try:
        got, want = fp8_spmm_trial(*key)
        err = fp8_rel_err(got, want)
        result = (Fp8Probe(True, "") if err < FP8_REL_TOL else
                  Fp8Probe(False, f"wrong {pair} product (max rel err {err:.2e})"))
    except Exception as e:  # noqa: BLE001 - any failure means: do not use this pair
        result = Fp8Probe(False, f"{pair}: {type(e).__name__}: {_short(str(e))}")
    with _LOCK:
        _FP8_PROBES[key] = result
    return result


def _short(msg: str, limit: int = 1000) -> str:
    """An error message, bounded (the handler's refusals fit: status, then
    the types asked for)."""
    msg = msg.strip()
    return msg if len(msg) <= limit else msg[:limit] + " ..."
