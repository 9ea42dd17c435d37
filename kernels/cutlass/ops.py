"""JAX operations of the CUTLASS library: the :func:`jax.ffi.ffi_call` wrappers.

The sparse operand of every product is given in CUTLASS's compressed format,
made by :func:`compress` (CUTLASS's own compressor): ``values`` (rows, cols/2)
bfloat16 and ``meta`` (:func:`meta_nbytes`,) uint8, for a dense rows x cols
operand 2:4-pruned along cols. The three products of a 2:4 linear ``Z = X @ W_s^T``
(X (M, K) tokens x in, W_s (N, K) 2:4 along K):

=======  ======================  ====================  ==========================
product  sparse operand          dense operand          result
=======  ======================  ====================  ==========================
fwd      W_s (N, K)              X (M, K) bf16          Z = X @ W_s^T  (M, N) bf16
dx       W_s^T (K, N), 2:4 on N  dZ (M, N) bf16         dX = dZ @ W_s  (M, K) bf16
dw       S(dZ^T) (N, M), on M    X (M, K) bf16          dW = S(dZ)^T @ X (N, K) f32
=======  ======================  ====================  ==========================

and ``dw_acc`` (:func:`spmm_dw_acc`): ``C + dW`` for a float32 running sum ``C``
(N, K), read by the GEMM's epilogue and updated in place: a gradient
accumulation's add without a pass of its own.

:func:`reference` is the XLA twin of all four (float32 dots of the dense operands).
Shapes: the sparse operand's rows and its 2:4 axis multiples of 64, the dense
operand's other axis of 16 (CUTLASS's metadata atom rows, TMA alignment);
other shapes raise ValueError naming the fix.
"""

from __future__ import annotations

import numpy as np

from ._library import (
    PREFIX,
    TARGETS,
    compressed_sizes,
    instances,
    load,
    load_library,
    register,
    workspace_bytes,
)
from .build import CONFIGS, PRODUCTS

__all__ = [
    "CONFIGS",
    "PRODUCTS",
    "TARGETS",
    "compress",
    "compressed_sizes",
    "configs",
    "instances",
    "load",
    "load_library",
    "meta_nbytes",
    "problem",
    "reference",
    "spmm",
    "spmm_dw_acc",
    "workspace_bytes",
]

#: the accumulating weight gradient's FFI target, registered on first use (a library
#: built before it still runs everything else)
ACC_TARGET = PREFIX + "gemm_acc"


MULT_ROWS, MULT_K, MULT_N = 64, 64, 16  # as csrc/bindings.cc (README "Shapes")
DEFAULT_CONFIG = "t128x256x128_c1x1_coop"


def meta_nbytes(rows: int, cols: int) -> int:
    """Bytes of CUTLASS's metadata for a rows x cols bf16 operand: 4 bits per group
    of 4, over rows and cols padded to CUTLASS's metadata atom (64 x 128)."""
    return -(-rows // 64) * 64 * (-(-cols // 128) * 128) // 8


def configs(product: str | None = None) -> list[str]:
    """The config names this build has; with ``product`` ("fwd", "dx", "dw", "dw_acc",
    or its number), those built for it (a stream-K config is built for the weight gradient only)."""
    if product is None:
        return sorted({i["config"] for i in instances()})
    name = {v: k for k, v in PRODUCTS.items()}[_product_id(product)]
    return sorted({i["config"] for i in instances() if i["product"] == name})


def _check_sparse_shape(what: str, rows: int, cols: int) -> None:
    if rows <= 0 or cols <= 0 or rows % MULT_ROWS or cols % MULT_K:
        raise ValueError(
            f"{what}: the sparse operand is {rows} x {cols} (rows x 2:4 axis); CUTLASS's sm90 "
            f"sparse kernels need rows % {MULT_ROWS} == 0 and the 2:4 axis % {MULT_K} == 0: "
            "pad it, or use the cuSPARSELt or XLA path"
        )


def compress(dense):
    """CUTLASS's compressed format of a dense bf16 operand, 2:4-pruned along its last axis.

    ``dense`` (rows, cols) -> ``(values (rows, cols/2) bf16, meta (meta_nbytes(rows, cols),)
    uint8)``.
    Groups of 4 along cols must hold at most 2 nonzeros (CUTLASS's compressor
    keeps the nonzeros; more than 2 is not 2:4 and gives a wrong operand).
    For dx compress W_s^T (``dense = w.T``), for dw S(dZ)^T.
    """
    import jax
    import jax.numpy as jnp

    if dense.ndim != 2 or jnp.dtype(dense.dtype) != jnp.bfloat16:
        raise ValueError(f"compress takes a 2-D bfloat16 array, got {dense.dtype} {dense.shape}: "
                         "cast it with .astype(jnp.bfloat16)")
    rows, cols = dense.shape
    _check_sparse_shape("compress", rows, cols)
    load()
    _, meta_bytes, ws = compressed_sizes(rows, cols)
    if meta_bytes != meta_nbytes(rows, cols):  # the library and this module agree
        raise RuntimeError(f"CUTLASS metadata size {meta_bytes} != {meta_nbytes(rows, cols)}")
    call = jax.ffi.ffi_call(
        PREFIX + "compress",
        (jax.ShapeDtypeStruct((rows, cols // 2), jnp.bfloat16),
         jax.ShapeDtypeStruct((meta_bytes,), jnp.uint8),
         jax.ShapeDtypeStruct((max(ws, 16),), jnp.uint8)),
    )
    values, meta, _ = call(dense)
    return values, meta


def _product_id(product) -> int:
    if isinstance(product, str):
        if product not in PRODUCTS:
            raise ValueError(f"product must be one of {list(PRODUCTS)}, got {product!r}")
        return PRODUCTS[product]
    if product not in PRODUCTS.values():
        raise ValueError(f"product must be one of {list(PRODUCTS)} (or {sorted(PRODUCTS.values())}), "
                         f"got {product!r}")
    return int(product)


def problem(product, sparse_shape, dense_shape) -> tuple[tuple[int, int, int], tuple, object]:
    """CUTLASS's (Mc, Nc, Kc), the result's shape and dtype name, for a product.

    ``sparse_shape``: the dense shape (rows, cols) of the sparse operand;
    ``dense_shape``: the dense operand's shape. Raises ValueError naming the fix.
    """
    p = _product_id(product)
    name = [k for k, v in PRODUCTS.items() if v == p][0]
    rows, cols = sparse_shape
    if len(dense_shape) != 2:
        raise ValueError(f"{name}: the dense operand must be 2-D, got {tuple(dense_shape)}")
    _check_sparse_shape(name, rows, cols)
    if p in (PRODUCTS["dw"], PRODUCTS["dw_acc"]):  # S(dZ^T) (N, M) @ X (M, K)
        if dense_shape[0] != cols:
            raise ValueError(f"dw: X must be (M, K) with M = {cols} (the 2:4 axis of S(dZ^T)), "
                             f"got {tuple(dense_shape)}")
        nc = dense_shape[1]
        out_shape, out_dtype = (rows, nc), "float32"
    else:  # fwd: W_s (N, K) @ X^T, X (M, K); dx: W_s^T (K, N) @ dZ^T, dZ (M, N)
        if dense_shape[1] != cols:
            axis = "K" if p == PRODUCTS["fwd"] else "N"
            raise ValueError(f"{name}: the dense operand must be (M, {axis}) with {axis} = {cols} "
                             f"(the sparse operand's 2:4 axis), got {tuple(dense_shape)}")
        nc = dense_shape[0]
        out_shape, out_dtype = (nc, rows), "bfloat16"
    if nc <= 0 or nc % MULT_N:
        raise ValueError(f"{name}: the dense operand's free axis is {nc}; CUTLASS needs a "
                         f"multiple of {MULT_N} (TMA's 16-byte alignment): pad it")
    return (rows, nc, cols), out_shape, out_dtype


def check_operands(values, meta, b, config: str, what: str | None = None) -> tuple[int, int]:
    """Check a GEMM's compressed operand (``values``, ``meta`` from :func:`compress`), its
    dense operand ``b`` and ``config``; returns the sparse operand's (rows, cols). Errors
    start with ``what:`` when given (the fused-epilogue ops name themselves)."""
    import jax.numpy as jnp

    pre = f"{what}: " if what else ""
    if values.ndim != 2 or jnp.dtype(values.dtype) != jnp.bfloat16:
        raise ValueError(f"{pre}values must be 2-D bfloat16 (from ops.compress), got "
                         f"{values.dtype} {values.shape}")
    if jnp.dtype(b.dtype) != jnp.bfloat16:
        raise ValueError(f"{pre}the dense operand must be bfloat16, got {b.dtype}: cast it")
    rows, cols = values.shape[0], 2 * values.shape[1]
    if meta.shape != (meta_nbytes(rows, cols),) or jnp.dtype(meta.dtype) != jnp.uint8:
        raise ValueError(f"{pre}meta must be uint8 ({meta_nbytes(rows, cols)},) for a {rows} x {cols} "
                         f"sparse operand, got {meta.dtype} {meta.shape} (make it with ops.compress)")
    if config not in CONFIGS:
        raise ValueError(f"unknown CUTLASS config {config!r}; known: {list(CONFIGS)}")
    return rows, cols


def spmm(product, values, meta, b, *, config: str = DEFAULT_CONFIG):
    """One product of a 2:4 linear on CUTLASS's sm90 sparse kernel ``config``.

    ``values, meta``: :func:`compress` of the sparse operand (see the module
    table); ``b``: the dense bf16 operand. Returns Z (M, N) bf16 (fwd), dX (M, K)
    bf16 (dx) or dW (N, K) float32 (dw).
    """
    import jax
    import jax.numpy as jnp

    p = _product_id(product)
    if p == PRODUCTS["dw_acc"]:
        raise ValueError("spmm: dw_acc adds to a running sum: call spmm_dw_acc(values, meta, x, acc)")
    rows, cols = check_operands(values, meta, b, config)
    (mc, nc, kc), out_shape, out_dtype = problem(p, (rows, cols), b.shape)
    load()
    ws = workspace_bytes(config, p, mc, nc, kc)
    call = jax.ffi.ffi_call(
        PREFIX + "gemm",
        (jax.ShapeDtypeStruct(out_shape, jnp.dtype(out_dtype)),
         jax.ShapeDtypeStruct((max(ws, 16),), jnp.uint8)),
    )
    out, _ = call(values, meta, b, product=np.int64(p), config=config)
    return out


def spmm_dw_acc(values, meta, x, acc, *, config: str = DEFAULT_CONFIG):
    """``acc + S(dZ^T) @ X``: the weight gradient added to the float32 running sum
    ``acc`` (N, K) in the GEMM's epilogue (CUTLASS's linear combination with beta 1),
    the ``dw`` instance of ``config`` otherwise.

    ``acc`` is aliased to the result: where the caller does not use it afterwards (a
    gradient accumulation's carry), XLA updates it in place; elsewhere XLA copies it
    first. Same operands as ``spmm("dw", values, meta, x)``.
    """
    import jax
    import jax.numpy as jnp

    p = PRODUCTS["dw_acc"]
    rows, cols = check_operands(values, meta, x, config, "dw_acc")
    (mc, nc, kc), out_shape, _ = problem(p, (rows, cols), x.shape)
    if tuple(acc.shape) != out_shape or jnp.dtype(acc.dtype) != jnp.float32:
        raise ValueError(f"dw_acc: the running sum must be float32 {out_shape} (dW's shape), got "
                         f"{acc.dtype} {tuple(acc.shape)}")
    register({ACC_TARGET: "s24c_gemm_acc"})
    ws = workspace_bytes(config, p, mc, nc, kc)
    call = jax.ffi.ffi_call(
        ACC_TARGET,
        (jax.ShapeDtypeStruct(out_shape, jnp.float32),
         jax.ShapeDtypeStruct((max(ws, 16),), jnp.uint8)),
        input_output_aliases={3: 0},
    )
    out, _ = call(values, meta, x, acc, config=config)
    return out


def reference(product, sparse_dense, b, acc=None):
    """The XLA twin of :func:`spmm` and :func:`spmm_dw_acc`: float32 dots of the dense
    (pruned) sparse operand and ``b``, cast as the kernel writes (bf16 for fwd and dx,
    float32 dw); ``dw_acc`` takes the float32 running sum ``acc`` and returns ``acc + dW``
    (the kernel's epilogue adds in float32 too)."""
    import jax
    import jax.numpy as jnp

    p = _product_id(product)
    if (p == PRODUCTS["dw_acc"]) != (acc is not None):
        raise ValueError("reference: pass acc= (the float32 running sum) for dw_acc, and only for it")
    a = sparse_dense.astype(jnp.float32)
    bf = b.astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    if p == PRODUCTS["dw"]:
        return jnp.dot(a, bf, precision=hi)
    if p == PRODUCTS["dw_acc"]:
        return acc.astype(jnp.float32) + jnp.dot(a, bf, precision=hi)
    return jnp.dot(bf, a.T, precision=hi).astype(jnp.bfloat16)
