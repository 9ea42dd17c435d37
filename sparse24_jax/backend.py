"""The backend interface: who runs the three GEMMs of a 2:4 linear layer.

A 2:4 linear layer ``Z = X @ W_s.T`` does three matrix products per training
step (SPEC.md):

=============  ==========================  =================================
GEMM           formula                     sparse operand (2:4 axis)
=============  ==========================  =================================
forward        ``Z  = X  @ W_s.T``         ``W_s``    (along K)
input grad     ``dX = dZ @ W_s``           ``W_s.T``  (along N, same mask)
weight grad    ``dW = S_z(dZ.T) @ X``      ``dZ.T``   (along M, MVUE)
=============  ==========================  =================================

A backend supplies exactly those three products and the per-step work that
feeds them (compressing ``W_s`` and ``W_s.T``; pruning and compressing
``dZ.T``), nothing else. The projection of the master weight (hard mask for
SR-STE, ``beta * soft_threshold`` for S-STE), the straight-through estimator and
the modules live above this interface, so a new backend plugs in without
touching them.

Backends are looked up by name. ``"xla"`` (the pure-JAX reference, runs
anywhere) is built in; the GPU backends live in the separate
``sparse24_jax_kernels`` package and are imported lazily on first use, so
``import sparse24_jax`` works on a CPU-only machine with no Triton installed.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Callable, Protocol, runtime_checkable

import jax

Array = jax.Array

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "NativeFp8Forward",
    "available_backends",
    "get_backend",
    "register_backend",
]


class BackendUnavailableError(ValueError):
    """A known backend that cannot run on this machine (no GPU, no library)."""


@runtime_checkable
class Backend(Protocol):
    """What a backend implements. All arrays are 2-D; leading batch dims are
    flattened by the caller. ``W_s`` is ``(N, K)``, ``X`` is ``(M, K)``,
    ``dZ`` is ``(M, N)``; M is a multiple of 4 (the caller pads tokens).

    ``prepare_weight`` and ``prune_grad`` return opaque pytrees of arrays
    (dense masked arrays for the reference; packed values plus metadata for
    the sparse tensor-core backends) that only the same backend consumes.
    """

    name: str

    def check(self, n: int, k: int, dtype: Any) -> None:
        """Raise ``ValueError`` naming the fix if this backend cannot run a
        ``(N, K)`` weight in ``dtype`` (alignment, dtype support)."""

    def prepare_weight(self, w_s: Array, *, transposable: bool) -> Any:
        """Compress ``W_s`` (2:4 along K) and, if ``transposable`` (2:4 along N
        too, SR-STE's mask), ``W_s.T``, for ``matmul_fwd`` / ``matmul_dx``.
        Runs once per optimizer step in a well-built training loop."""

    def matmul_fwd(self, x: Array, w_op: Any) -> Array:
        """``Z = X @ W_s.T``: ``(M, K) -> (M, N)`` in ``x.dtype``."""

    def matmul_dx(self, dz: Array, w_op: Any) -> Array:
        """``dX = dZ @ W_s``: ``(M, N) -> (M, K)`` in ``dz.dtype``."""

    def prune_grad(self, key: Array | None, dz: Array) -> Any:
        """``S_z(dZ.T)``: MVUE 2:4 along M of ``dZ.T`` (``key`` is a JAX PRNG
        key), compressed for ``matmul_dw``. ``key=None`` means no pruning:
        the dense ``dZ.T`` is used."""

    def matmul_dw(self, g: Any, x: Array) -> Array:
        """``dW = S_z(dZ.T) @ X``: ``(N, K)`` in float32."""

    def transposable_mask(self, w: Array) -> Array:
        """The transposable 2:4 mask of ``w`` (same result as
        :func:`sparse24_jax.transposable_mask_24`)."""


@runtime_checkable
class NativeFp8Forward(Protocol):
    """Optional: a backend that runs the *forward* GEMM of
    ``precision="fp8"`` as a real FP8 2:4 GEMM (e4m3 operands, float32
    accumulation) instead of multiplying upcast fp8 values. Only the forward:
    the recipe's input- and weight-gradient GEMMs mix e5m2 with e4m3, which
    the backends here run on the exactly upcast values (module doc of
    :mod:`sparse24_jax.linear`)."""

    def fp8_forward_available(self) -> tuple[bool, str]:
        """Whether this machine runs the FP8 forward, and why not. Called at
        trace time; may run a tiny probe once per process."""

    def prepare_weight_fp8(self, qw: Array) -> Any:
        """Compress the e4m3 values of ``W_s`` (N, K) for ``matmul_fwd_fp8``."""

    def matmul_fwd_fp8(self, qx: Array, w8: Any, out_dtype: Any) -> Array:
        """``q_x @ q_w.T`` for e4m3 ``q_x`` (M, K): (M, N) in ``out_dtype``,
        unscaled (the caller multiplies by both scales)."""


# name -> "module:attribute" of a zero-argument factory, imported on first use.
_LAZY: dict[str, str] = {
    "xla": "sparse24_jax.xla_backend:XlaBackend",
    "triton": "sparse24_jax_kernels.triton.backend:TritonBackend",
    "cusparselt": "sparse24_jax_kernels.cusparselt.backend:CusparseltBackend",
}
_INSTANCES: dict[str, Backend] = {}
_LOCK = threading.Lock()

_HINTS = {
    "triton": "install the GPU extra (pip install 'sparse24-jax[gpu]', which "
    "brings jax-triton 0.3.1) on a machine with an NVIDIA GPU",
    "cusparselt": "install the GPU extra (pip install 'sparse24-jax[gpu]', which "
    "brings nvidia-cusparselt-cu13) and nvcc on a machine with an NVIDIA "
    "Hopper or Ampere GPU",
}


def register_backend(name: str, factory: Callable[[], Backend] | str) -> None:
    """Register a backend under ``name``: a zero-argument factory, or a
    ``"module:attribute"`` string imported on first use."""
    with _LOCK:
        _INSTANCES.pop(name, None)
        _LAZY[name] = factory  # type: ignore[assignment]


def available_backends() -> tuple[str, ...]:
    """Every registered backend name (whether or not it can run here)."""
    return tuple(_LAZY)


def get_backend(backend: str | Backend) -> Backend:
    """The backend called ``backend`` (or ``backend`` itself if it already is
    one). Raises ``ValueError`` for an unknown name and
    :class:`BackendUnavailableError` (a ``ValueError``) for one that cannot run
    here, naming what to install and the fallback."""
    if not isinstance(backend, str):
        if isinstance(backend, Backend):
            return backend
        raise ValueError(
            f"backend must be a name or a Backend object, got {type(backend).__name__}; "
            f"use one of {available_backends()}"
        )
    with _LOCK:
        if backend in _INSTANCES:
            return _INSTANCES[backend]
        if backend not in _LAZY:
            raise ValueError(
                f"unknown backend {backend!r}: use one of {available_backends()} "
                "(or register_backend() your own)"
            )
        factory = _LAZY[backend]
        try:
            if isinstance(factory, str):
                module_name, attr = factory.split(":")
                factory = getattr(importlib.import_module(module_name), attr)
            instance = factory()
        except (ImportError, OSError, RuntimeError) as err:
            hint = _HINTS.get(backend, "install what it needs")
            raise BackendUnavailableError(
                f"backend {backend!r} is unavailable here ({type(err).__name__}: {err}). "
                f"To use it, {hint}. backend='xla' runs everywhere (the reference)."
            ) from err
        _INSTANCES[backend] = instance
        return instance
