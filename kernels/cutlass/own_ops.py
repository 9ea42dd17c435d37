"""JAX ops of our own kernels writing CUTLASS's compressed 2:4 format
(csrc/own_compress.cuh, LAYOUT.md): no dense pruned copy, no CUTLASS compressor.

* :func:`project_compress` ``(w, mask)``: the float32 master ``W`` (N, K) and
  the boolean 2:4 transposable mask -> ``W_s = where(mask, W, 0)`` in bf16 as
  CUTLASS's ``(values, meta)`` and ``W_s^T`` likewise, in one pass; byte for
  byte ``ops.compress(W_s)`` and ``ops.compress(W_s.T)``.
* :func:`mvue_compress` ``(key_or_seed, dz)``: dZ (M, N) bf16 -> MVUE 2:4 of
  ``dZ^T`` (N, M) along M as CUTLASS's ``(values, meta)``, with the cuSPARSELt
  MVUE kernel's randomness: the same seed keeps the same entries with the same
  bits as ``sparse24_jax_kernels.cusparselt.ops.mvue_compress(seed, dz,
  transpose=True)``.

* :func:`swiglu_grad_mvue_compress` ``(key_or_seed, da, h)``: SwiGLU's backward
  ``dh = [dA silu(gate), dA x silu'(gate)]`` of ``dA`` (M, F) at ``h = [x |
  gate]`` (M, 2F) and the MVUE of ``dh^T`` in one pass: ``dh`` is the
  cuSPARSELt library's fused kernel's, bit for bit, and the compressed pair is
  ``mvue_compress(key_or_seed, dh)``'s, byte for byte.

Both axes of every operand multiples of 64 (pad them); other shapes raise
ValueError naming the fix. The outputs feed :func:`.ops.spmm` directly.
"""

from __future__ import annotations

import numpy as np

from .._seed import as_seed, seed_from_key  # noqa: F401 - seed_from_key: part of this API
from ._library import PREFIX, load, load_library, register
from .ops import meta_nbytes

__all__ = ["ALIGN", "BLOCK_GROUPS", "has_swiglu_grad_mvue", "mvue_compress", "project_compress",
           "seed_from_key", "swiglu_grad_mvue_compress"]

ALIGN = 64


def _check(what: str, rows: int, cols: int) -> None:
    if rows <= 0 or cols <= 0 or rows % ALIGN or cols % ALIGN:
        raise ValueError(
            f"{what}: got {rows} x {cols}; our CUTLASS-format kernels need both axes multiples of "
            f"{ALIGN}: pad them, or use ops.compress on the dense pruned operand"
        )
    if rows * cols // 4 >= 2**32:
        raise ValueError(f"{what}: {rows} x {cols} has 2^32 groups or more: split the operand")


def project_compress(w, mask):
    """``(values, meta, values_t, meta_t)``: CUTLASS's compressed ``W_s`` (N, K)
    and ``W_s^T`` (K, N) of ``W_s = where(mask, w, 0).astype(bfloat16)``.

    ``w``: float32 (N, K); ``mask``: bool (or uint8, non-zero keeps) (N, K),
    2:4 along K and N (a group keeping more than two keeps its two largest)."""
    import jax
    import jax.numpy as jnp

    if w.ndim != 2 or jnp.dtype(w.dtype) != jnp.float32:
        raise ValueError(f"project_compress takes the float32 master weight (N, K), got "
                         f"{w.dtype} {w.shape}: cast it with .astype(jnp.float32)")
    n, k = w.shape
    _check("project_compress: W (N, K)", n, k)
    if mask.shape != w.shape or jnp.dtype(mask.dtype) not in (jnp.dtype(bool), jnp.dtype(jnp.uint8)):
        raise ValueError(f"the mask must be bool (or uint8) of W's shape {w.shape}, got "
                         f"{mask.dtype} {mask.shape}")
    load()
    bf = jnp.bfloat16
    call = jax.ffi.ffi_call(
        PREFIX + "own_project",
        (jax.ShapeDtypeStruct((n, k // 2), bf), jax.ShapeDtypeStruct((meta_nbytes(n, k),), jnp.uint8),
         jax.ShapeDtypeStruct((k, n // 2), bf), jax.ShapeDtypeStruct((meta_nbytes(k, n),), jnp.uint8)),
    )
    values, meta, values_t, meta_t = call(w, mask)
    return values, meta, values_t, meta_t


BLOCK_GROUPS = (0, 32, 64)


def mvue_compress(key_or_seed, dz, *, block_groups: int = 0):
    """``(values (N, M/2) bf16, meta)``: MVUE 2:4 of ``dZ^T`` along the tokens M
    in CUTLASS's format (the sparse operand of ``spmm("dw", ...)``).

    ``key_or_seed``: a JAX PRNG key, or a uint32 array of 2 words; ``dz``
    (M, N) bfloat16. ``block_groups``: token groups per kernel block, 32 or 64
    (the same bytes either way; for benchmarks and tests), 0 (default) for the
    kernel's choice, 32 (the faster on an H200 at every GPT-2 shape)."""
    import jax
    import jax.numpy as jnp

    seed = as_seed(key_or_seed)
    if dz.ndim != 2 or jnp.dtype(dz.dtype) != jnp.bfloat16:
        raise ValueError(f"mvue_compress takes dZ (M, N) bfloat16, got {dz.dtype} {dz.shape}: "
                         "cast it with .astype(jnp.bfloat16)")
    if block_groups not in BLOCK_GROUPS:
        raise ValueError(f"block_groups must be one of {BLOCK_GROUPS} (0: the kernel's choice), "
                         f"got {block_groups!r}")
    m, n = dz.shape
    _check("mvue_compress: dZ (M tokens, N features)", m, n)
    load()
    call = jax.ffi.ffi_call(
        PREFIX + "own_mvue",
        (jax.ShapeDtypeStruct((n, m // 2), jnp.bfloat16),
         jax.ShapeDtypeStruct((meta_nbytes(n, m),), jnp.uint8)),
    )
    values, meta = call(dz, seed, block_groups=np.int64(block_groups))
    return values, meta


#: the fused SwiGLU backward's FFI target and handler symbol, registered on first use (a
#: library built before it has no such symbol: has_swiglu_grad_mvue says so)
SWIGLU_GRAD_TARGET = PREFIX + "own_swiglu_grad_mvue"
_SWIGLU_GRAD_SYMBOL = "s24c_own_swiglu_grad_mvue"


def has_swiglu_grad_mvue() -> bool:
    """Whether the CUTLASS library (built or found here) has the fused SwiGLU backward."""
    return hasattr(load_library(), _SWIGLU_GRAD_SYMBOL)


def swiglu_grad_mvue_compress(key_or_seed, da, h):
    """``(dh (M, 2F) bf16, values (2F, M/2) bf16, meta)``: SwiGLU's backward of ``da``
    (M, F) at ``h = [x | gate]`` (M, 2F), ``dh = [da * silu(gate), da * x * silu'(gate)]``
    (float32 math, rounded once), and the MVUE 2:4 of ``dh^T`` along the tokens M in
    CUTLASS's format (the sparse operand of ``spmm("dw", ...)``), from one read of ``da``
    and ``h``. The same seed gives :func:`mvue_compress`'s bytes for that ``dh``.

    M and F multiples of 64 (a kernel block owns 64 features of each half)."""
    import jax
    import jax.numpy as jnp

    seed = as_seed(key_or_seed)
    if (da.ndim != 2 or h.ndim != 2 or jnp.dtype(da.dtype) != jnp.bfloat16
            or jnp.dtype(h.dtype) != jnp.bfloat16):
        raise ValueError(f"swiglu_grad_mvue_compress takes dA (M, F) and h = [x | gate] (M, 2F) in "
                         f"bfloat16, got {da.dtype} {da.shape} and {h.dtype} {h.shape}: cast them "
                         "with .astype(jnp.bfloat16)")
    m, f = da.shape
    if h.shape != (m, 2 * f):
        raise ValueError(f"h must be (M, 2F) = ({m}, {2 * f}) for dA {da.shape}, got {h.shape}")
    _check("swiglu_grad_mvue_compress: dA (M tokens, F features)", m, f)
    _check("swiglu_grad_mvue_compress: h (M, 2F)", m, 2 * f)
    load()
    if not has_swiglu_grad_mvue():
        raise RuntimeError("this CUTLASS library has no fused SwiGLU backward (built before it): "
                           "rebuild it with `python -m sparse24_jax_kernels.cutlass.build` (and "
                           "unset SPARSE24_CUTLASS_KERNELS if it points at the old one)")
    register({SWIGLU_GRAD_TARGET: _SWIGLU_GRAD_SYMBOL})
    call = jax.ffi.ffi_call(
        SWIGLU_GRAD_TARGET,
        (jax.ShapeDtypeStruct((m, 2 * f), jnp.bfloat16),
         jax.ShapeDtypeStruct((2 * f, m // 2), jnp.bfloat16),
         jax.ShapeDtypeStruct((meta_nbytes(2 * f, m),), jnp.uint8)),
    )
    dh, values, meta = call(da, h, seed)
    return dh, values, meta

