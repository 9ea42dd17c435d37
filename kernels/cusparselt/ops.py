"""JAX operations of the cuSPARSELt library: the :func:`jax.ffi.ffi_call` wrappers.

They work under ``jit`` and inside ``shard_map`` (each device runs on its
local shard and keeps its own cuSPARSELt handle and plans, keyed by the FFI
device ordinal). Outside ``shard_map``, sharded operands of a custom call are
all-gathered by XLA. Compressed operands are flat ``uint8`` arrays in
cuSPARSELt's format (:mod:`.layout`, whose ``compressed_nbytes`` sizes them).

This is also the one import path of the library's Python API: it re-exports
the loader and registration (:mod:`._library`: ``load``, ``load_library``,
``version``, ``stats``, ``TARGETS``), the host emulation
(:mod:`.emulation`: ``emulate_compress``, ``emulate_project_compress``,
``emulate_act_grad_mvue``) and the FP8 probe
(:mod:`.fp8_probe`). The backend calls everything as ``ops.<name>``, so a
test's stand-in set here (``ops.load``, ``ops.spmm``, ...) is what it runs.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._library import (
    ACT_KINDS,
    PREFIX,
    PROJECT_MODES,
    TARGETS,
    act_grad_shape,
    dt_code,
    load,
    load_library,
    operand_shape,
    project_mode,
    stats,
    version,
)
from .emulation import emulate_act_grad_mvue, emulate_compress, emulate_project_compress
from .fp8_probe import (
    FP8_DTYPES,
    FP8_REL_TOL,
    Fp8Probe,
    fp8_name,
    fp8_probe,
    fp8_rel_err,
    fp8_spmm_trial,
)
from .._seed import as_seed, seed_from_key  # noqa: F401 - seed_from_key: part of this API
from .layout import compressed_nbytes  # the one size formula

__all__ = [
    "ACT_KINDS",
    "FP8_DTYPES",
    "FP8_REL_TOL",
    "Fp8Probe",
    "TARGETS",
    "act_grad_mvue_compress",
    "compress",
    "compress_masked",
    "compressed_nbytes",
    "emulate_act_grad_mvue",
    "emulate_compress",
    "emulate_project_compress",
    "fp8_name",
    "fp8_probe",
    "fp8_rel_err",
    "fp8_spmm_trial",
    "lib_compress",
    "load",
    "load_library",
    "mvue_compress",
    "project_compress",
    "seed_from_key",
    "spmm",
    "stats",
    "version",
]


def compress(a, *, transpose: bool = False):
    """Compressed buffer of ``a`` (m, k), or of ``a.T`` when ``transpose``
    (read in place, no transposed copy). ``a`` must be 2:4 along the
    compressed axis; groups with more than two non-zeros keep their two
    largest magnitudes."""
    import jax
    import jax.numpy as jnp

    m, k = operand_shape(a, transpose)
    out = jax.ShapeDtypeStruct((compressed_nbytes(m, k, a.dtype),), jnp.uint8)
    return jax.ffi.ffi_call(PREFIX + "compress", out)(a, transpose=np.int64(transpose))


def compress_masked(a, mask, *, transpose: bool = False):
    """Compressed buffer of ``where(mask, a, +0)`` (or its transpose)."""
    import jax
    import jax.numpy as jnp

    m, k = operand_shape(a, transpose)
    out = jax.ShapeDtypeStruct((compressed_nbytes(m, k, a.dtype),), jnp.uint8)
    return jax.ffi.ffi_call(PREFIX + "compress_masked", out)(
        a, mask, transpose=np.int64(transpose)
    )


def mvue_compress(key_or_seed, a, *, transpose: bool = False):
    """MVUE 2:4 along the compressed axis + compression of ``a`` (or ``a.T``).

    ``key_or_seed``: a JAX PRNG key, or a uint32 array of 2 words."""
    import jax
    import jax.numpy as jnp

    seed = as_seed(key_or_seed)
    m, k = operand_shape(a, transpose)
    out = jax.ShapeDtypeStruct((compressed_nbytes(m, k, a.dtype),), jnp.uint8)
    return jax.ffi.ffi_call(PREFIX + "mvue_compress", out)(a, seed, transpose=np.int64(transpose))


def project_compress(w, mask=None, beta=None, *, dtype, transpose_too: bool):
    """The weight side in one pass: the float32 master weight ``w`` (N, K)
    read once, projected, rounded to ``dtype`` (bfloat16 or float16) and
    compressed (csrc/project.cu). N and K multiples of 64.

    * ``mask=`` (SR-STE, STE): ``W_s = where(mask, w, 0).astype(dtype)``;
      returns ``(compress(W_s), compress(W_s, transpose=True))``, the second
      ``None`` unless ``transpose_too``.
    * ``beta=`` (S-STE): ``W_s = (beta.astype(float32) * soft_threshold_24(w)).astype(dtype)``
      (2:4 along K); returns ``(compress(W_s), W_s)``, the dense ``W_s`` for
      the input gradient (``transpose_too`` must be False: ``W_s^T`` is not 2:4).

    The buffers are byte for byte those of :func:`compress` on that ``W_s``
    as XLA:GPU computes it (round to nearest even, float32 subnormals kept,
    float16 overflow to inf). Not matched: NaN weights (their payload, and
    under the soft threshold NaN or inf weights at all, as fminf/fmaxf drop NaN).
    """
    import jax
    import jax.numpy as jnp

    mode, code = project_mode(w, mask, beta, dtype, transpose_too)
    n, k = w.shape
    dt = jnp.dtype(dtype)
    buf = jax.ShapeDtypeStruct((compressed_nbytes(n, k, dt),), jnp.uint8)
    attrs = {"mode": np.int64(PROJECT_MODES[mode]), "dtype": np.int64(code)}
    target = PREFIX + "project_compress"
    if mode == "soft":
        beta32 = jnp.asarray(beta).astype(jnp.float32).reshape(1)
        out = (buf, jax.ShapeDtypeStruct((n, k), dt))
        w_buf, dense = jax.ffi.ffi_call(target, out)(w, beta32, **attrs)
        return w_buf, dense
    if not transpose_too:
        return jax.ffi.ffi_call(target, buf)(w, mask, **attrs), None
    buf_t = jax.ShapeDtypeStruct((compressed_nbytes(k, n, dt),), jnp.uint8)
    w_buf, wt_buf = jax.ffi.ffi_call(target, (buf, buf_t))(w, mask, **attrs)
    return w_buf, wt_buf


def act_grad_mvue_compress(kind: str, da, z, key_or_seed):
    """The FFN's activation backward fused with the MVUE 2:4 + compression of
    its result, in one pass over ``da`` and ``z``: ``(dz, buf)``.

    gelu: ``da``, ``z`` (M, H), ``dz = da * gelu'(z)``; swiglu: ``z = [x |
    gate]`` (M, 2F), ``da`` (M, F), ``dz = [da * silu(gate), da * x *
    silu'(gate)]``; computed in float32 and rounded once to ``z``'s dtype
    (``sparse24_jax.ffn.activation_vjp``). ``buf`` is
    ``mvue_compress(key_or_seed, dz, transpose=True)``, byte for byte: MVUE
    of ``dz.T`` along the tokens. M and H (F) multiples of 64, bf16 or fp16.
    ``key_or_seed``: a JAX PRNG key, or a uint32 array of 2 words."""
    import jax
    import jax.numpy as jnp

    m, cols = act_grad_shape(kind, da, z)
    seed = as_seed(key_or_seed)
    outs = (jax.ShapeDtypeStruct(z.shape, z.dtype),
            jax.ShapeDtypeStruct((compressed_nbytes(cols, m, z.dtype),), jnp.uint8))
    return jax.ffi.ffi_call(PREFIX + "act_grad_mvue", outs)(
        da, z, seed, kind=np.int64(ACT_KINDS[kind]))


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

    m, k = operand_shape(a, False)
    out = jax.ShapeDtypeStruct((compressed_nbytes(m, k, a.dtype),), jnp.uint8)
    buf, _ = jax.ffi.ffi_call(PREFIX + "lib_compress", (out, _workspace()))(a)
    return buf


def spmm(a_buf, b, *, m: int, k: int, transpose_b: bool, d_col_major: bool,
         out_dtype: Any = None, alpha: float = 1.0, a_dtype: Any = None):
    """``D = alpha * A @ op(B)`` with A (m x k) compressed in ``a_buf``.

    ``b`` is (n, k) with ``transpose_b`` (op = T), else (k, n). The result is
    (m, n), returned as the row-major array D.T of shape (n, m) when
    ``d_col_major`` (cuSPARSELt writes D column-major), else as (m, n).
    ``a_dtype``: the element type A was compressed from (``a_buf`` is uint8),
    default ``b.dtype``; fp8 operands may mix e4m3 and e5m2, where cuSPARSELt
    takes the pair (:func:`.fp8_probe.fp8_probe`). ``out_dtype`` defaults to
    ``b.dtype``.
    """
    import jax
    import jax.numpy as jnp

    if b.ndim != 2:
        raise ValueError(f"dense operand must be 2-D, got shape {tuple(b.shape)}")
    n = b.shape[0] if transpose_b else b.shape[1]
    out_dtype = b.dtype if out_dtype is None else jnp.dtype(out_dtype)
    a_code = dt_code(b.dtype if a_dtype is None else a_dtype, "the sparse operand (a_dtype)")
    shape = (n, m) if d_col_major else (m, n)
    out = jax.ShapeDtypeStruct(shape, out_dtype)
    d, _ = jax.ffi.ffi_call(PREFIX + "spmm", (out, _workspace(m, n)))(
        a_buf, b, m=np.int64(m), k=np.int64(k), transpose_b=np.int64(transpose_b),
        d_col_major=np.int64(d_col_major), a_dtype=np.int64(a_code), alpha=np.float32(alpha),
    )
    return d
