"""Fused-epilogue CUTLASS sparse GEMMs (README "Fused epilogues") as JAX ops.

Two products of the GELU FFN ``Z1 = X @ W1_s^T (+ b1), A = gelu(Z1), Y = A @ W2_s^T``
whose epilogue does the elementwise pass XLA would otherwise run over memory:

* :func:`spmm_fwd_gelu` (first linear's forward): ``H = gelu(Z)`` and ``Z``
  (the pre-activation the backward needs), both bf16 (M, N), from one GEMM
  ``Z = X @ W_s^T + bias`` (W_s: ``values, meta`` of :func:`.ops.compress`).
* :func:`spmm_dx_dgelu` (second linear's input gradient): ``dZ1 = (dY @ W_s)
  * gelu'(Z1)`` bf16 (M, K), ``Z1`` read in the epilogue (W_s: the
  compressed W_s^T as for ``ops.spmm("dx", ...)``).

``gelu`` is the exact (erf) GELU (``jax.nn.gelu(approximate=False)``),
``gelu'(z) = Phi(z) + z phi(z)``. Both apply the epilogue to the float32
accumulator and round once to bf16 (the unfused path rounds Z to bf16 first).
:func:`reference_fwd_gelu` and :func:`reference_dx_dgelu` are the XLA twins.
Importing this module imports nothing heavy; the library loads on first call.
"""

from __future__ import annotations

import ctypes

import numpy as np

from ._library import PREFIX, instance_table, load, load_library, register
from .build import EPILOGUE_CONFIGS, EPILOGUES
from .ops import check_operands, problem

__all__ = [
    "DEFAULT_EPILOGUE_CONFIG",
    "EPILOGUES",
    "EPI_TARGET",
    "epilogue_configs",
    "epilogue_instances",
    "epilogue_workspace_bytes",
    "load_epilogues",
    "reference_dx_dgelu",
    "reference_fwd_gelu",
    "spmm_dx_dgelu",
    "spmm_fwd_gelu",
]

EPI_TARGET = PREFIX + "gemm_epi"
DEFAULT_EPILOGUE_CONFIG = EPILOGUE_CONFIGS[0]


def _lib() -> ctypes.CDLL:
    lib = load_library()
    if not hasattr(lib, "s24c_num_epis"):
        raise RuntimeError(
            "this CUTLASS library has no fused epilogues (built before they were "
            "added): rebuild with `python -m sparse24_jax_kernels.cutlass.build`, or "
            "use the unfused path (ops.spmm + XLA's gelu)")
    return lib


def load_epilogues() -> ctypes.CDLL:
    """Load the library (:func:`.ops.load`: needs a CUDA GPU) and register the
    fused handler ``sparse24_cutlass_gemm_epi`` (once)."""
    load()
    _lib()
    return register({EPI_TARGET: "s24c_gemm_epi"})


def epilogue_instances() -> list[dict]:
    """The library's fused instances: config, epilogue, tile, cluster, schedule."""
    lib = _lib()
    return instance_table(lib.s24c_num_epis, lib.s24c_epi_info, "epilogue",
                          {v: k for k, v in EPILOGUES.items()})


def epilogue_configs() -> list[str]:
    """Config names with fused instances in this build."""
    return sorted({i["config"] for i in epilogue_instances()})


def epilogue_workspace_bytes(config: str, epilogue: str, m: int, n: int, k: int) -> int:
    """Workspace of (config, epilogue) for CUTLASS's (Mc, Nc, Kc); ValueError when
    the build lacks the instance or CUTLASS cannot implement the problem."""
    e = _epilogue_id(epilogue)
    ws = int(_lib().s24c_epi_workspace_bytes(config.encode(), e, m, n, k, 0))
    if ws == -1:
        raise ValueError(f"no fused {epilogue} instance {config!r} in this build; built: "
                         f"{epilogue_configs()} (build.EPILOGUE_CONFIGS picks them)")
    if ws == -2:
        raise ValueError(f"CUTLASS config {config!r} cannot implement {epilogue} for "
                         f"(Mc, Nc, Kc) = ({m}, {n}, {k}) (its can_implement failed)")
    return ws


def _epilogue_id(epilogue: str) -> int:
    if epilogue not in EPILOGUES:
        raise ValueError(f"epilogue must be one of {list(EPILOGUES)}, got {epilogue!r}")
    return EPILOGUES[epilogue]


def _call(epilogue, config, mnk, out_shape, values, meta, b, extra):
    import jax
    import jax.numpy as jnp

    load_epilogues()
    ws = epilogue_workspace_bytes(config, epilogue, *mnk)
    aux_shape = out_shape if epilogue == "fwd_gelu" else (8,)
    call = jax.ffi.ffi_call(
        EPI_TARGET,
        (jax.ShapeDtypeStruct(out_shape, jnp.bfloat16),
         jax.ShapeDtypeStruct(aux_shape, jnp.bfloat16),
         jax.ShapeDtypeStruct((max(ws, 16),), jnp.uint8)),
    )
    return call(values, meta, b, extra, epilogue=np.int64(EPILOGUES[epilogue]), config=config)


def spmm_fwd_gelu(values, meta, x, bias=None, *, config: str = DEFAULT_EPILOGUE_CONFIG):
    """``(H, Z)``: ``Z = X @ W_s^T + bias`` and ``H = gelu(Z)`` (exact GELU), both
    (M, N) bf16, from one sparse GEMM with a fused epilogue.

    ``values, meta``: :func:`.ops.compress` of W_s (N, K), 2:4 along K; ``x``:
    (M, K) bf16; ``bias``: (N,) bf16 or None. gelu is applied to the float32
    ``acc + bias`` (then both are rounded to bf16).
    """
    import jax.numpy as jnp

    rows, cols = check_operands(values, meta, x, config, "fwd_gelu")
    mnk, out_shape, _ = problem("fwd", (rows, cols), x.shape)
    if bias is None:
        bias = jnp.zeros((0,), jnp.bfloat16)
    elif bias.shape != (rows,) or jnp.dtype(bias.dtype) != jnp.bfloat16:
        raise ValueError(f"fwd_gelu: bias must be bfloat16 ({rows},) (one per output feature), "
                         f"got {bias.dtype} {bias.shape}")
    h, z, _ = _call("fwd_gelu", config, mnk, out_shape, values, meta, x, bias)
    return h, z


def spmm_dx_dgelu(values, meta, dy, z1, *, config: str = DEFAULT_EPILOGUE_CONFIG):
    """``dZ1 = (dY @ W_s) * gelu'(Z1)`` (M, K) bf16, from one sparse GEMM whose
    epilogue reads ``Z1`` (exact GELU's derivative ``Phi(z) + z phi(z)``).

    ``values, meta``: :func:`.ops.compress` of W_s^T (K, N), 2:4 along N (as for
    ``ops.spmm("dx", ...)``); ``dy``: (M, N) bf16; ``z1``: (M, K) bf16, the first
    linear's pre-activation (:func:`spmm_fwd_gelu`'s ``Z``).
    """
    import jax.numpy as jnp

    rows, cols = check_operands(values, meta, dy, config, "dx_dgelu")
    mnk, out_shape, _ = problem("dx", (rows, cols), dy.shape)
    if tuple(z1.shape) != tuple(out_shape) or jnp.dtype(z1.dtype) != jnp.bfloat16:
        raise ValueError(f"dx_dgelu: Z1 must be bfloat16 {tuple(out_shape)} (the output's shape: "
                         f"tokens x the weight's K), got {z1.dtype} {tuple(z1.shape)}")
    d, _, _ = _call("dx_dgelu", config, mnk, out_shape, values, meta, dy, z1)
    return d


def reference_fwd_gelu(w_dense, x, bias=None):
    """XLA twin of :func:`spmm_fwd_gelu`: float32 ``Z = X @ W^T + bias``, exact GELU
    in float32, both cast to bf16. ``w_dense``: the pruned W_s (N, K)."""
    import jax
    import jax.numpy as jnp

    z = jnp.dot(x.astype(jnp.float32), w_dense.astype(jnp.float32).T,
                precision=jax.lax.Precision.HIGHEST)
    if bias is not None:
        z = z + bias.astype(jnp.float32)
    h = jax.nn.gelu(z, approximate=False)
    return h.astype(jnp.bfloat16), z.astype(jnp.bfloat16)


def reference_dx_dgelu(wt_dense, dy, z1):
    """XLA twin of :func:`spmm_dx_dgelu`: float32 ``dY @ W_s`` times the exact
    GELU's derivative at ``z1``, ``Phi(z) + z phi(z)`` (the formula of
    ``sparse24_jax.ffn.activation_vjp``), cast to bf16. ``wt_dense``: the pruned
    W_s^T (K, N)."""
    import jax
    import jax.numpy as jnp

    dh = jnp.dot(dy.astype(jnp.float32), wt_dense.astype(jnp.float32).T,
                 precision=jax.lax.Precision.HIGHEST)
    z = z1.astype(jnp.float32)
    cdf = 0.5 * (1.0 + jax.lax.erf(z * (1.0 / jnp.sqrt(2.0))))
    pdf = jnp.exp(-0.5 * z * z) * (1.0 / jnp.sqrt(2.0 * jnp.pi))
    return (dh * (cdf + z * pdf)).astype(jnp.bfloat16)
