"""Whether cuSPARSELt runs an fp8 2:4 GEMM here, per type pair, and why not.

:func:`fp8_probe` runs one small :func:`fp8_spmm_trial` (our compression +
cuSPARSELt's matmul, through :mod:`.ops`) per process and type pair and checks
it against numpy; the backend asks it before taking the native FP8 forward,
``benchmarks/fp8_types.py`` tabulates every pair with the same trial and
verdict (:func:`fp8_rel_err` < :data:`FP8_REL_TOL`).
"""

from __future__ import annotations

import os
import threading
from typing import Any, NamedTuple

import numpy as np

from ._library import dtype_name

__all__ = [
    "FP8_DTYPES",
    "FP8_REL_TOL",
    "Fp8Probe",
    "fp8_name",
    "fp8_probe",
    "fp8_rel_err",
    "fp8_spmm_trial",
]

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

    name = dtype_name(_FP8_ALIASES.get(dtype, dtype) if isinstance(dtype, str) else dtype)
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

    # through the module: what replaces ops.load / compress / spmm (a test's
    # stand-in) is what the trial calls
    from . import ops

    sa = getattr(ml_dtypes, fp8_name(sparse_dtype))
    sb = getattr(ml_dtypes, fp8_name(dense_dtype))
    ops.load()  # registers the FFI targets (RuntimeError without a CUDA GPU)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    keep = np.argsort(-np.abs(a.reshape(m, k // 4, 4)), axis=-1)[..., :2]
    mask = np.zeros((m, k // 4, 4), bool)
    np.put_along_axis(mask, keep, True, axis=-1)
    a = np.where(mask.reshape(m, k), a, 0).astype(sa)
    b = rng.standard_normal((n, k)).astype(sb)
    with jax.ensure_compile_time_eval():
        buf = ops.compress(jnp.asarray(a))
        d = ops.spmm(buf, jnp.asarray(b), m=m, k=k, transpose_b=True, d_col_major=False,
                 out_dtype=jnp.bfloat16, a_dtype=a.dtype)
        got = np.asarray(jax.device_get(d)).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64).T
    return got, want


def fp8_rel_err(got, want) -> float:
    """max |got - want| / max |want| (of :func:`fp8_spmm_trial`'s pair)."""
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30))


_LOCK = threading.Lock()
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
