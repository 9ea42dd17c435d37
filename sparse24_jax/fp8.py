"""FP8 GEMMs with per-tensor amax scaling (S-STE's recipe, docs/algorithms.md).

Every GEMM of a 2:4 linear layer quantizes both operands per tensor to an
8-bit float format, multiplies with float32 accumulation and rescales the
result. Which operand gets which format:

=============  ==========================  =====================  ============
GEMM           formula                     left operand           right operand
=============  ==========================  =====================  ============
forward        ``Z  = X @ W_s.T``          ``X``          e4m3    ``W_s`` e4m3
input grad     ``dX = dZ @ W_s``           ``dZ``         e5m2    ``W_s`` e4m3
weight grad    ``dW = S_z(dZ.T) @ X``      ``S_z(dZ.T)``  e5m2    ``X``   e4m3
=============  ==========================  =====================  ============

Forward operands use e4m3 (``jnp.float8_e4m3fn``: 3 mantissa bits, largest
finite value 448, no infinities); gradients use e5m2 (``jnp.float8_e5m2``: 2
mantissa bits, largest finite value 57344), whose wider exponent range suits
their spread. The weight gradient's left operand is quantized *after* the MVUE
pruning (its kept values are rescaled by ``1/p`` and can exceed ``max|dZ|``).

Quantization of a tensor ``x`` to a format with largest finite value ``F``
(:func:`quantize`), all arithmetic in float32 (inputs are upcast exactly)::

    amax  = max_i |x_i|
    s     = amax / F                    if that is a normal float32 (> 0)
          = 1                           otherwise (amax = 0: an all-zero tensor)
    q_i   = round_to_fp8(clip(x_i / s, -F, F))      round to nearest, ties to even

``x ~= s * q``. The clip saturates: ``x_i / s`` can exceed ``F`` by an ulp of
rounding at ``|x_i| = amax``, and by any amount when a fixed ``scale`` is passed
in (delayed scaling). NaN stays NaN (so does an infinite amax: ``s = inf``
makes every ``q`` NaN or 0): non-finite inputs are not repaired.

A GEMM ``C = A @ B`` (:func:`fp8_dot` takes ``B`` transposed, ``b_t = B.T``,
the layout of ``X @ W.T`` and of cuSPARSELt's FP8 kernels, opA=N, opB=T)::

    (q_a, s_a) = quantize(A, a_dtype)
    (q_b, s_b) = quantize(B, b_dtype)
    C          = (q_a @ q_b) * (s_a * s_b)

``q_a @ q_b`` runs on the fp8 values upcast exactly to float32, with float32
accumulation (every product of two fp8 values is exact in float32; only the
sum rounds, in the dot's own order); the scale product ``s_a * s_b`` is
rounded to float32 once and the result multiplied by it (one more rounding).
The result is float32. ``s`` here is the *dequantization* scale (``amax / F``),
so "divide by both quantization scales ``F / amax``" in the paper's wording is the
same as this product.

This module is the reference. :func:`~sparse24_jax.sparse24_linear` with
``precision="fp8"`` computes the same thing through a backend's ordinary GEMMs
("simulated" FP8: the backend multiplies the upcast fp8 values, the scaling is
applied outside), so with backend "xla" its three products equal
:func:`fp8_dot` of the same operands. On Hopper the "cusparselt" backend runs
the forward as a native e4m3 2:4 GEMM (bf16 output, then scaled); the
gradient GEMMs stay simulated (docs/fp8.md).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["E4M3", "E5M2", "FP8_DTYPES", "PRECISIONS", "PRECISION_ALIASES", "canonical_precision", "fmax", "quantize",
           "dequantize", "fp8_dot"]

#: forward operands (X, W_s)
E4M3 = jnp.float8_e4m3fn
#: gradients (dZ, S_z(dZ.T))
E5M2 = jnp.float8_e5m2
FP8_DTYPES = (jnp.dtype(E4M3), jnp.dtype(E5M2))

#: ``precision=`` of sparse24_linear and the modules: "compute" runs the GEMMs
#: in the compute dtype (the input's, or the module's ``dtype``: bfloat16,
#: float16 or float32 alike; the default); "fp8" is this module's recipe.
PRECISIONS = ("compute", "fp8")

#: Earlier names, still accepted and mapped to the current one: "bf16" was
#: "compute" (it never meant bfloat16 only). Configs and run directories saved
#: before hold it.
PRECISION_ALIASES = {"bf16": "compute"}


def canonical_precision(precision: Any) -> str:
    """``precision`` by its current name (one of :data:`PRECISIONS`), an alias
    of :data:`PRECISION_ALIASES` mapped; ValueError naming the choices for
    anything else."""
    name = PRECISION_ALIASES.get(precision, precision) if isinstance(precision, str) else precision
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {PRECISIONS}")
    return name

_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32


def fmax(dtype: Any) -> float:
    """Largest finite value of an fp8 format: 448 (e4m3fn), 57344 (e5m2)."""
    dt = jnp.dtype(dtype)
    if dt not in FP8_DTYPES:
        raise ValueError(f"fp8 dtype must be float8_e4m3fn or float8_e5m2, got {dt}")
    return float(jnp.finfo(dt).max)


def quantize(x: jax.Array, dtype: Any, scale: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Per-tensor scaled cast of ``x`` to ``dtype`` (module doc).

    Args:
      x: any float array (upcast to float32 first, exactly for bf16/fp16).
      dtype: ``jnp.float8_e4m3fn`` or ``jnp.float8_e5m2``.
      scale: a fixed float32 dequantization scale instead of ``amax / F``
        (values beyond ``F * scale`` saturate to ``+-F``).

    Returns:
      ``(q, scale)``: ``q`` in ``dtype`` with ``x ~= q * scale``; ``scale`` a
      float32 scalar, ``amax / F`` (1 for an all-zero tensor).
    """
    f = fmax(dtype)
    x32 = x.astype(jnp.float32)
    if scale is None:
        amax = jnp.max(jnp.abs(x32)) if x32.size else jnp.zeros((), jnp.float32)
        s = amax / jnp.float32(f)
        # amax = 0 (or so small that amax / F is not a normal float32): scale 1,
        # every q is then 0. NaN/inf amax pass through (NaN results).
        scale = jnp.where(s >= _TINY, s, jnp.ones((), jnp.float32))
    else:
        scale = jnp.asarray(scale, jnp.float32)
    q = jnp.clip(x32 / scale, -f, f).astype(dtype)
    return q, scale


def dequantize(q: jax.Array, scale: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """``q * scale`` in ``dtype`` (rounded once, from float32)."""
    return (q.astype(jnp.float32) * scale).astype(dtype)


def fp8_dot(a: jax.Array, b_t: jax.Array, a_dtype: Any = E4M3, b_dtype: Any = E4M3) -> jax.Array:
    """``a @ b_t.T`` in FP8: ``(M, K) x (N, K) -> (M, N)`` float32.

    Quantizes ``a`` to ``a_dtype`` and ``b_t`` to ``b_dtype`` (per-tensor
    amax scales ``s_a``, ``s_b``), multiplies the fp8 values with float32
    accumulation and returns ``(q_a @ q_b_t.T) * (s_a * s_b)`` (module doc).
    The recipe's three GEMMs::

        Z  = fp8_dot(x, w_s, E4M3, E4M3)
        dX = fp8_dot(dz, w_s.T, E5M2, E4M3)
        dW = fp8_dot(S_z(dz.T), x.T, E5M2, E4M3)
    """
    if a.ndim != 2 or b_t.ndim != 2 or a.shape[1] != b_t.shape[1]:
        raise ValueError(
            f"fp8_dot computes a @ b_t.T: a is (M, K), b_t is (N, K); got {tuple(a.shape)} and "
            f"{tuple(b_t.shape)}"
        )
    qa, sa = quantize(a, a_dtype)
    qb, sb = quantize(b_t, b_dtype)
    return scaled_dot_nt(qa.astype(jnp.float32), qb.astype(jnp.float32), sa * sb)


def scaled_dot_nt(a32: jax.Array, b_t32: jax.Array, scale: jax.Array) -> jax.Array:
    """``(a32 @ b_t32.T) * scale`` with float32 accumulation (the upcast fp8
    values in, float32 out)."""
    acc = jnp.dot(a32, b_t32.T, preferred_element_type=jnp.float32)
    return acc * scale
