"""The backend interface: who runs the three GEMMs of a 2:4 linear layer.

A 2:4 linear layer ``Z = X @ W_s.T`` does three matrix products per training
step (docs/algorithms.md):

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

import dataclasses
import importlib
import threading
from typing import Any, Callable, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = [
    "AccumulatingWeightGrad",
    "Backend",
    "BackendUnavailableError",
    "Capabilities",
    "FusedActivationGradPrune",
    "FusedGatedActivation",
    "FusedLinearActivation",
    "FusedLinearActivationGrad",
    "NativeFp8Forward",
    "PrepareFromMaster",
    "QuantizePrunedGrad",
    "available_backends",
    "capabilities",
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


# -- optional capabilities ----------------------------------------------------
#
# A backend may offer more than the six methods above: each extra is one of the
# protocols below, and `capabilities(backend)` is the one place that asks which
# a backend has. The layers above (sparse24_linear, the FFN block, the gated
# activation) take the fast path a capability gives and otherwise compose the
# same result from the six methods, so a third-party backend needs none of them.


@runtime_checkable
class NativeFp8Forward(Protocol):
    """Runs the *forward* GEMM of ``precision="fp8"`` as a real FP8 2:4 GEMM
    (e4m3 operands, float32 accumulation) instead of multiplying upcast fp8
    values. Only the forward: the recipe's input- and weight-gradient GEMMs mix
    e5m2 with e4m3, which the backends here run on the exactly upcast values
    (:mod:`sparse24_jax.linear_fp8`)."""

    def fp8_forward_available(self) -> tuple[bool, str]:
        """Whether this machine runs the FP8 forward, and why not. Called at
        trace time; may run a tiny probe once per process."""

    def prepare_weight_fp8(self, qw: Array) -> Any:
        """Compress the e4m3 values of ``W_s`` (N, K) for ``matmul_fwd_fp8``."""

    def matmul_fwd_fp8(self, qx: Array, w8: Any, out_dtype: Any) -> Array:
        """``q_x @ q_w.T`` for e4m3 ``q_x`` (M, K): (M, N) in ``out_dtype``,
        unscaled (the caller multiplies by both scales)."""


@runtime_checkable
class QuantizePrunedGrad(Protocol):
    """Quantizes the kept values of its own compressed ``S_z(dZ.T)`` to fp8
    in place (FP8 recipe), so the MVUE pruning stays in the backend's kernel."""

    def quantize_pruned_grad(self, g: Any, fp8_dtype: Any) -> tuple[Any, Array] | None:
        """``(g', scale)`` with ``g``'s kept values quantized per tensor to
        ``fp8_dtype`` (stored as exactly upcast compute-dtype values), or None
        for an unpruned ``g`` (the caller then quantizes the dense one)."""


@runtime_checkable
class PrepareFromMaster(Protocol):
    """Projects, casts and compresses the float32 master weight in one pass
    (no dense ``W_s`` written and read back)."""

    def prepare_projected(self, w: Array, mask: Array | None, beta: Array | None, *,
                          method: str, dtype: Any) -> Any:
        """The same operands as ``prepare_weight(project_weight(w, mask, beta,
        method).astype(dtype), transposable=...)``, bit for bit."""


@runtime_checkable
class FusedGatedActivation(Protocol):
    """Fused kernels of the gated activations (:mod:`sparse24_jax.activations`).
    A method ``gated_activation_bwd(h, dy, kind) -> dh`` (the backward from
    ``h``, the activation recomputed) is optional beside it; without it (or
    with it set to ``None``) the backward is the reference's VJP."""

    def gated_activation(self, h: Array, kind: str) -> Array:
        """``x * act(gate)`` for ``h = [x, gate]`` (last axis, any leading dims)."""


@runtime_checkable
class FusedActivationGradPrune(Protocol):
    """The FFN's activation backward fused with the MVUE pruning of its
    result: one pass reads ``dA`` and the saved pre-activation ``Z`` and writes
    ``dZ`` (for the input-gradient GEMM) and ``S_z(dZ.T)`` compressed (for the
    weight-gradient GEMM) (:mod:`sparse24_jax.ffn`)."""

    def activation_grad_prune_kinds(self) -> tuple[str, ...]:
        """The activations (``"gelu"``, ``"swiglu"``, ...) it fuses here."""

    def activation_grad_prune(self, kind: str, da: Array, z: Array, key: Array) -> tuple[Array, Any]:
        """``(dZ, prune_grad(key, dZ))`` with ``dZ`` the activation's VJP of
        ``da`` at ``z`` (2-D, tokens first), computed in float32 and rounded
        once to ``z``'s dtype (:func:`sparse24_jax.ffn.activation_vjp`)."""


@runtime_checkable
class FusedLinearActivation(Protocol):
    """The forward GEMM with the activation in its epilogue: the FFN's first
    linear writes ``A = act(Z)`` and ``G = act'(Z)`` (what the backward
    multiplies by) from the float32 accumulator, with no separate pass over
    ``Z`` (:mod:`sparse24_jax.ffn`). Ungated activations only (``act`` is
    elementwise on ``Z``)."""

    def linear_activation_kinds(self) -> tuple[str, ...]:
        """The activations (``"gelu"``, ...) its forward epilogue applies."""

    def matmul_fwd_activation(self, kind: str, x: Array, w_op: Any) -> tuple[Array, Array]:
        """``(A, G)`` with ``Z = X @ W_s.T`` (as :meth:`Backend.matmul_fwd`:
        ``(M, K) -> (M, N)``), ``A = act(Z)`` and ``G = act'(Z)``, both computed
        from the float32 accumulator and rounded once to ``x.dtype`` (gelu:
        ``z Phi(z)`` and ``Phi(z) + z phi(z)``, exact). They may differ from
        ``act`` and ``act'`` of the rounded ``Z`` by one rounding of ``Z``."""


@runtime_checkable
class FusedLinearActivationGrad(Protocol):
    """The input-gradient GEMM of the FFN's second linear with the activation's
    backward in its epilogue: ``dZ1 = (dY @ W2_s) * G1`` in one GEMM that reads
    the saved ``G1 = act'(Z1)`` (no ``dA`` written and read back;
    :mod:`sparse24_jax.ffn`)."""

    def linear_activation_grad_kinds(self) -> tuple[str, ...]:
        """The activations whose derivative its input-gradient epilogue applies."""

    def matmul_dx_activation_grad(self, kind: str, dy: Array, w_op: Any, g: Array) -> Array:
        """``dZ = (dY @ W_s) * G``: ``dY`` (M, N), ``w_op`` the second linear's
        operands (as :meth:`Backend.matmul_dx`), ``G`` (M, K) the first linear's
        ``act'(Z1)`` (:meth:`FusedLinearActivation.matmul_fwd_activation`'s
        second output, or :func:`sparse24_jax.ffn.activation_grad`); the product
        kept in float32, multiplied by ``G`` in float32 and rounded once to
        ``g``'s dtype."""


@runtime_checkable
class AccumulatingWeightGrad(Protocol):
    """The weight-gradient GEMM adding its product to a running float32 sum
    (gradient accumulation): the sum is read in the GEMM's epilogue instead
    of by a separate add, which reads two float32 (N, K) arrays and writes one
    per layer and micro-batch (:func:`sparse24_jax.nnx.value_and_grad`'s
    ``grad_acc``)."""

    def matmul_dw_acc(self, g: Any, x: Array, acc: Array) -> Array:
        """``acc + matmul_dw(g, x)``: ``acc`` float32 (N, K), which the
        backend may update in place (the caller does not read it again)."""


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a backend offers beyond the :class:`Backend` protocol.

    Attributes:
      compute_dtypes: the dtypes its GEMMs take (``check`` enforces them);
        ``float32`` among them lets ``precision="fp8"`` multiply the fp8
        values upcast exactly to float32.
      native_fp8_forward: :class:`NativeFp8Forward`.
      quantize_pruned_grad: :class:`QuantizePrunedGrad`.
      prepare_projected: :class:`PrepareFromMaster`.
      gated_activation / gated_activation_bwd: :class:`FusedGatedActivation`.
      activation_grad_prune: the kinds of :class:`FusedActivationGradPrune`.
      linear_activation: the kinds of :class:`FusedLinearActivation`.
      linear_activation_grad: the kinds of :class:`FusedLinearActivationGrad`.
      weight_grad_accumulate: :class:`AccumulatingWeightGrad`.
    """

    compute_dtypes: tuple[Any, ...]
    native_fp8_forward: bool = False
    quantize_pruned_grad: bool = False
    prepare_projected: bool = False
    gated_activation: bool = False
    gated_activation_bwd: bool = False
    activation_grad_prune: tuple[str, ...] = ()
    linear_activation: tuple[str, ...] = ()
    linear_activation_grad: tuple[str, ...] = ()
    weight_grad_accumulate: bool = False

    @property
    def float32_operands(self) -> bool:
        return jnp.dtype(jnp.float32) in self.compute_dtypes


#: what a backend that declares no ``compute_dtypes`` is assumed to take
DEFAULT_COMPUTE_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def capabilities(backend: str | Backend) -> Capabilities:
    """The optional capabilities of ``backend`` (a name or a Backend), from
    the protocols above and its ``compute_dtypes`` attribute. Cheap: a few
    attribute lookups, no GPU work (``native_fp8_forward`` says the methods
    exist; whether this machine runs them is ``fp8_forward_available()``)."""
    be = get_backend(backend)
    gated = isinstance(be, FusedGatedActivation) and callable(getattr(be, "gated_activation", None))
    fused_kinds: tuple[str, ...] = ()
    if isinstance(be, FusedActivationGradPrune):
        fused_kinds = tuple(be.activation_grad_prune_kinds())
    lin_kinds = tuple(be.linear_activation_kinds()) if isinstance(be, FusedLinearActivation) else ()
    lin_grad_kinds = (tuple(be.linear_activation_grad_kinds())
                      if isinstance(be, FusedLinearActivationGrad) else ())
    dtypes = getattr(be, "compute_dtypes", None)
    return Capabilities(
        compute_dtypes=tuple(jnp.dtype(d) for d in dtypes) if dtypes else DEFAULT_COMPUTE_DTYPES,
        native_fp8_forward=isinstance(be, NativeFp8Forward),
        quantize_pruned_grad=isinstance(be, QuantizePrunedGrad),
        prepare_projected=isinstance(be, PrepareFromMaster),
        gated_activation=gated,
        gated_activation_bwd=gated and callable(getattr(be, "gated_activation_bwd", None)),
        activation_grad_prune=fused_kinds,
        linear_activation=lin_kinds,
        linear_activation_grad=lin_grad_kinds,
        weight_grad_accumulate=isinstance(be, AccumulatingWeightGrad),
    )


# name -> "module:attribute" of a zero-argument factory, imported on first use.
_LAZY: dict[str, str] = {
    "xla": "sparse24_jax.xla_backend:XlaBackend",
    "triton": "sparse24_jax_kernels.triton.backend:TritonBackend",
    "cusparselt": "sparse24_jax_kernels.cusparselt.backend:CusparseltBackend",
    "cutlass": "sparse24_jax_kernels.cutlass.backend:CutlassBackend",
}
_INSTANCES: dict[str, Backend] = {}
_LOCK = threading.Lock()

_HINTS = {
    "triton": "install the GPU extra (pip install 'sparse24-jax[gpu]', which "
    "brings jax-triton 0.3.1) on a machine with an NVIDIA GPU",
    "cusparselt": "install the GPU extra (pip install 'sparse24-jax[gpu]', which "
    "brings nvidia-cusparselt-cu13) and nvcc on a machine with an NVIDIA "
    "Hopper or Ampere GPU",
    "cutlass": "install the nvidia-cutlass wheel (its headers) and nvcc, or point "
    "SPARSE24_CUTLASS_KERNELS at a prebuilt libsparse24_cutlass-*.so, on a machine with an "
    "NVIDIA Hopper (sm_90) GPU",
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
