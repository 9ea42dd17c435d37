"""Fused-epilogue CUTLASS sparse GEMMs (README "Fused epilogues") as JAX ops.

Two products of the GELU FFN ``Z1 = X @ W1_s^T (+ b1), A = gelu(Z1), Y = A @ W2_s^T``
whose epilogue does the elementwise pass XLA would otherwise run over memory:

* :func:`spmm_fwd_gelu` (first linear's forward): ``H = gelu(Z)`` and
  ``G = gelu'(Z)`` (what the backward multiplies by), both bf16 (M, N), from
  one GEMM ``Z = X @ W_s^T + bias`` (W_s: ``values, meta`` of :func:`.ops.compress`).
* :func:`spmm_dx_dgelu` (second linear's input gradient): ``dZ1 = (dY @ W_s)
  * G1`` bf16 (M, K), ``G1 = gelu'(Z1)`` (the forward's ``G``) read in the
  epilogue (W_s: the compressed W_s^T as for ``ops.spmm("dx", ...)``).

* :func:`spmm_dx_dgelu_mvue`: the same ``dZ1`` and, from the same epilogue,
  ``S_z(dZ1^T)`` (the MVUE 2:4 of the stored bf16 ``dZ1`` along the tokens,
  compressed as ``own_ops.mvue_compress`` writes it, byte for byte for the same
  seed): the first linear's weight-gradient operand without a pass over ``dZ1``
  (csrc/epilogue_mvue.cuh).

``gelu`` is the exact (erf) GELU (``jax.nn.gelu(approximate=False)``),
``gelu'(z) = Phi(z) + z phi(z)``. The forward computes both from the float32
``Z`` and rounds each once to bf16 (the unfused path rounds Z first); the
backward multiplies the float32 product by ``G1`` and rounds once. Saving
``gelu'(Z)`` instead of ``Z`` leaves the backward's epilogue one multiply per
element (csrc/gemm_epilogue.cuh says why). :func:`reference_fwd_gelu` and
:func:`reference_dx_dgelu` are the XLA twins.
Importing this module imports nothing heavy; the library loads on first call.
"""

from __future__ import annotations

import ctypes

import numpy as np

from .._seed import as_seed
from ._library import PREFIX, instance_table, load, load_library, register
from .build import EPILOGUE_CONFIGS, EPILOGUES
from .ops import check_operands, meta_nbytes, problem

__all__ = [
    "DEFAULT_EPILOGUE_CONFIG",
    "EPILOGUES",
    "EPI_MVUE_TARGET",
    "EPI_TARGET",
    "epilogue_configs",
    "epilogue_instances",
    "epilogue_workspace_bytes",
    "load_epilogues",
    "reference_dx_dgelu",
    "reference_fwd_gelu",
    "reference_gelu_grad",
    "spmm_dx_dgelu",
    "spmm_dx_dgelu_mvue",
    "spmm_fwd_gelu",
]

EPI_TARGET = PREFIX + "gemm_epi"
EPI_MVUE_TARGET = PREFIX + "gemm_epi_mvue"
DEFAULT_EPILOGUE_CONFIG = EPILOGUE_CONFIGS[0]


def _lib() -> ctypes.CDLL:
    lib = load_library()
    if not hasattr(lib, "s24c_num_epis"):
        raise RuntimeError(
            "this CUTLASS library has no fused epilogues (built before they were "
            "added): rebuild with `python -m sparse24_jax_kernels.cutlass.build`, or "
            "use the unfused path (ops.spmm + XLA's gelu)")
    if not hasattr(lib, "s24c_epi_residual") or lib.s24c_epi_residual() != 2:
        # same handler and shapes, but its epilogues pass Z, not gelu'(Z): wrong numbers here
        raise RuntimeError(
            f"the CUTLASS library {getattr(lib, '_name', '')} has fused epilogues that save Z "
            "for the backward (built before they saved gelu'(Z)): rebuild it with `python -m "
            "sparse24_jax_kernels.cutlass.build` (and unset SPARSE24_CUTLASS_KERNELS if it points "
            "at the old one), or use the unfused path (fused=False)")
    return lib


def load_epilogues() -> ctypes.CDLL:
    """Load the library (:func:`.ops.load`: needs a CUDA GPU) and register the
    fused handlers ``sparse24_cutlass_gemm_epi`` and ``..._gemm_epi_mvue`` (once)."""
    load()
    _lib()
    return register({EPI_TARGET: "s24c_gemm_epi", EPI_MVUE_TARGET: "s24c_gemm_epi_mvue"})


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
    """``(H, G)``: ``H = gelu(Z)`` (exact GELU) and ``G = gelu'(Z)``, both (M, N)
    bf16, ``Z = X @ W_s^T + bias``, from one sparse GEMM with a fused epilogue.

    ``values, meta``: :func:`.ops.compress` of W_s (N, K), 2:4 along K; ``x``:
    (M, K) bf16; ``bias``: (N,) bf16 or None. Both are computed from the float32
    ``acc + bias`` and rounded once to bf16.
    """
    import jax.numpy as jnp

    rows, cols = check_operands(values, meta, x, config, "fwd_gelu")
    mnk, out_shape, _ = problem("fwd", (rows, cols), x.shape)
    if bias is None:
        bias = jnp.zeros((0,), jnp.bfloat16)
    elif bias.shape != (rows,) or jnp.dtype(bias.dtype) != jnp.bfloat16:
        raise ValueError(f"fwd_gelu: bias must be bfloat16 ({rows},) (one per output feature), "
                         f"got {bias.dtype} {bias.shape}")
    h, g, _ = _call("fwd_gelu", config, mnk, out_shape, values, meta, x, bias)
    return h, g


def _dx_problem(values, meta, dy, g1, config, name):
    """(CUTLASS's (Mc, Nc, Kc), dZ1's shape) of an input-gradient epilogue; ValueError
    naming the fix for bad operands or a G1 that is not bf16 of dZ1's shape."""
    import jax.numpy as jnp

    rows, cols = check_operands(values, meta, dy, config, name)
    mnk, out_shape, _ = problem("dx", (rows, cols), dy.shape)
    if tuple(g1.shape) != tuple(out_shape) or jnp.dtype(g1.dtype) != jnp.bfloat16:
        raise ValueError(f"{name}: G1 = gelu'(Z1) must be bfloat16 {tuple(out_shape)} (the "
                         f"output's shape: tokens x the weight's K; spmm_fwd_gelu's second "
                         f"output), got {g1.dtype} {tuple(g1.shape)}")
    return mnk, out_shape


def spmm_dx_dgelu(values, meta, dy, g1, *, config: str = DEFAULT_EPILOGUE_CONFIG):
    """``dZ1 = (dY @ W_s) * G1`` (M, K) bf16, from one sparse GEMM whose epilogue
    reads ``G1 = gelu'(Z1)`` and multiplies the float32 product by it.

    ``values, meta``: :func:`.ops.compress` of W_s^T (K, N), 2:4 along N (as for
    ``ops.spmm("dx", ...)``); ``dy``: (M, N) bf16; ``g1``: (M, K) bf16, the first
    linear's ``gelu'(Z1)`` (:func:`spmm_fwd_gelu`'s ``G``).
    """
    mnk, out_shape = _dx_problem(values, meta, dy, g1, config, "dx_dgelu")
    d, _, _ = _call("dx_dgelu", config, mnk, out_shape, values, meta, dy, g1)
    return d


def spmm_dx_dgelu_mvue(values, meta, dy, g1, key_or_seed, *, config: str = DEFAULT_EPILOGUE_CONFIG):
    """``(dZ1, (mvue_values, mvue_meta))``: :func:`spmm_dx_dgelu`'s ``dZ1`` and
    ``S_z(dZ1^T)``, the MVUE 2:4 of that bf16 ``dZ1`` along the tokens in
    CUTLASS's format ((K, M/2) bf16 values and metadata: the sparse operand of
    ``ops.spmm("dw", ...)``), both from one GEMM's epilogue. The pruned operand is
    ``own_ops.mvue_compress(key_or_seed, dZ1)``'s, byte for byte.

    ``key_or_seed``: a JAX PRNG key, or a uint32 array of 2 words
    (``own_ops.seed_from_key``); the rest as :func:`spmm_dx_dgelu`.
    """
    import jax
    import jax.numpy as jnp

    seed = as_seed(key_or_seed)
    mnk, out_shape = _dx_problem(values, meta, dy, g1, config, "dx_dgelu_mvue")
    m, k = out_shape  # tokens, features: S_z(dZ1^T) is (k, m), 2:4 along m
    load_epilogues()
    ws = epilogue_workspace_bytes(config, "dx_dgelu_mvue", *mnk)
    call = jax.ffi.ffi_call(
        EPI_MVUE_TARGET,
        (jax.ShapeDtypeStruct(out_shape, jnp.bfloat16),
         jax.ShapeDtypeStruct((k, m // 2), jnp.bfloat16),
         jax.ShapeDtypeStruct((meta_nbytes(k, m),), jnp.uint8),
         jax.ShapeDtypeStruct((max(ws, 16),), jnp.uint8)),
    )
    d, mv, mm, _ = call(values, meta, dy, g1, seed, config=config)
    return d, (mv, mm)


def reference_gelu_grad(z):
    """The exact GELU's derivative ``Phi(z) + z phi(z)`` in float32 (the formula
    of ``sparse24_jax.ffn.activation_vjp``)."""
    import jax
    import jax.numpy as jnp

    z = z.astype(jnp.float32)
    cdf = 0.5 * (1.0 + jax.lax.erf(z * (1.0 / jnp.sqrt(2.0))))
    pdf = jnp.exp(-0.5 * z * z) * (1.0 / jnp.sqrt(2.0 * jnp.pi))
    return cdf + z * pdf


def reference_fwd_gelu(w_dense, x, bias=None):
    """XLA twin of :func:`spmm_fwd_gelu`: float32 ``Z = X @ W^T + bias``, the exact
    GELU and its derivative in float32, both cast to bf16. ``w_dense``: the
    pruned W_s (N, K)."""
    import jax
    import jax.numpy as jnp

    z = jnp.dot(x.astype(jnp.float32), w_dense.astype(jnp.float32).T,
                precision=jax.lax.Precision.HIGHEST)
    if bias is not None:
        z = z + bias.astype(jnp.float32)
    h = jax.nn.gelu(z, approximate=False)
    return h.astype(jnp.bfloat16), reference_gelu_grad(z).astype(jnp.bfloat16)


def reference_dx_dgelu(wt_dense, dy, g1):
    """XLA twin of :func:`spmm_dx_dgelu`: float32 ``dY @ W_s`` times ``g1``
    (bf16 ``gelu'(Z1)``, :func:`reference_fwd_gelu`'s second output), cast to
    bf16. ``wt_dense``: the pruned W_s^T (K, N)."""
    import jax
    import jax.numpy as jnp

    dh = jnp.dot(dy.astype(jnp.float32), wt_dense.astype(jnp.float32).T,
                 precision=jax.lax.Precision.HIGHEST)
    return (dh * g1.astype(jnp.float32)).astype(jnp.bfloat16)
