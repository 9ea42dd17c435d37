"""2:4 GEMM on the packed operand: ``C = A_s @ B`` with ``A_s`` packed 2:4 along
the reduction axis (``compress_24`` format), ``B`` dense with any strides.

Reference twin: ``decompress_24(values, meta) @ b`` (float32 accumulation), i.e.
the XLA backend's dots. Each program decompresses its ``(BLOCK_I, BLOCK_R)``
tile of ``A_s`` in registers (two gathers of the packed values, one of the
meta bytes, a select on the 2-bit positions) and feeds ``tl.dot`` on the
tensor cores. Triton 3.6 exposes no sparse MMA (``mma.sp``), so the tensor
cores do the dense amount of math: the saving is the halved reads of the sparse
operand, not FLOPs. The ``cusparselt`` backend runs the real 2:4 instructions;
this backend is the portable one (any NVIDIA GPU Triton supports).

All three products of a 2:4 linear layer are this one kernel with different
strides (no transposed copies): forward ``Z.T = W_s @ X.T``, input grad
``dX.T = W_s.T @ dZ.T``, weight grad ``dW = S_z(dZ.T) @ X``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from ._runtime import cdiv, jt


@triton.jit
def sparse24_matmul_kernel(
    a_val_ptr, a_meta_ptr,  # packed A_s: (I, R/2) values, (I, ceil(R/8)) uint8 meta
    b_ptr,  # dense B, element (r, j) at r * stride_br + j * stride_bj
    n_i, n_j, n_r,  # I, J, R (R a multiple of 4)
    stride_br, stride_bj, stride_ci, stride_cj,
    c_ptr,  # output, element (i, j) at i * stride_ci + j * stride_cj
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_R: tl.constexpr,
    GROUP_I: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input_precision for float32 B ("ieee" or "tf32")
):
    """``C = decompress_24(A) @ B``, float32 accumulate, cast to ``C``'s dtype
    (the compute dtype is ``B``'s; ``A`` is cast to it in registers)."""
    # Grouped program order (Triton's matmul tutorial): GROUP_I row-tiles share
    # their B column tiles while those are in L2.
    pid = tl.program_id(0)
    num_i = tl.cdiv(n_i, BLOCK_I)
    num_j = tl.cdiv(n_j, BLOCK_J)
    per_group = GROUP_I * num_j
    first_i = (pid // per_group) * GROUP_I
    group_size = tl.minimum(num_i - first_i, GROUP_I)
    pid_i = first_i + (pid % per_group) % group_size
    pid_j = (pid % per_group) // group_size

    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    offs_r = tl.arange(0, BLOCK_R)
    i_ok = (offs_i < n_i)[:, None]
    j_ok = (offs_j < n_j)[None, :]
    half = n_r // 2
    meta_w = (n_r + 7) // 8
    # Per dense column r of the tile: its group's two values sit at 2*(r//4)
    # and 2*(r//4)+1 of the packed row; its code is nibble (r//4)%2 of byte r//8.
    pos = offs_r % 4
    val_col = 2 * (offs_r // 4)
    nib_shift = ((offs_r // 4) % 2) * 4
    a_val_rows = a_val_ptr + offs_i[:, None] * half
    a_meta_rows = a_meta_ptr + offs_i[:, None] * meta_w

    acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
    for r0 in range(0, n_r, BLOCK_R):
        r_ok = (r0 + offs_r < n_r)[None, :]
        a_mask = i_ok & r_ok
        v0 = tl.load(a_val_rows + (r0 // 2 + val_col)[None, :], mask=a_mask, other=0.0)
        v1 = tl.load(a_val_rows + (r0 // 2 + val_col + 1)[None, :], mask=a_mask, other=0.0)
        meta = tl.load(a_meta_rows + ((r0 + offs_r) // 8)[None, :], mask=a_mask, other=0)
        code = (meta.to(tl.int32) >> nib_shift[None, :]) & 0xF
        idx0 = code & 3
        idx1 = code >> 2
        p = pos[None, :]
        a = tl.where(p == idx0, v0, tl.where(p == idx1, v1, tl.zeros_like(v0)))
        b = tl.load(
            b_ptr + (r0 + offs_r)[:, None] * stride_br + offs_j[None, :] * stride_bj,
            mask=(r0 + offs_r < n_r)[:, None] & j_ok,
            other=0.0,
        )
        acc = tl.dot(a.to(b.dtype), b, acc, input_precision=PRECISION)
    tl.store(
        c_ptr + offs_i[:, None] * stride_ci + offs_j[None, :] * stride_cj,
        acc.to(c_ptr.dtype.element_ty),
        mask=i_ok & j_ok,
    )


#: (BLOCK_I, BLOCK_J, BLOCK_R, num_warps, num_stages) per compute dtype. Block
#: dims stay >= 16 (tl.dot) and powers of two. Float32 uses the FMA-friendly
#: smaller tiles (precise "ieee" dot); benchmarks/kernels.py can sweep others.
CONFIGS = {
    "16bit": (128, 128, 64, 8, 3),
    "float32": (64, 64, 32, 4, 2),
}
GROUP_I = 8


def config_for(dtype) -> tuple[int, int, int, int, int]:
    return CONFIGS["float32" if jnp.dtype(dtype) == jnp.float32 else "16bit"]


def sparse24_matmul(
    a_vals: jax.Array,
    a_meta: jax.Array,
    b: jax.Array,
    *,
    b_transposed: bool = False,
    out_transposed: bool = False,
    out_dtype=None,
    precision: str = "ieee",
    config: tuple[int, int, int, int, int] | None = None,
) -> jax.Array:
    """``decompress_24(a_vals, a_meta) @ B`` where ``A_s`` is ``(I, R)``.

    ``B`` is ``b`` (``(R, J)``) or, with ``b_transposed``, ``b.T`` for a
    ``(J, R)`` array ``b`` (read in place). The result ``C`` (``(I, J)``) is
    returned as is, or as ``C.T`` (``(J, I)``, written directly) with
    ``out_transposed``. ``out_dtype`` defaults to ``b.dtype``.
    """
    n_i, half = a_vals.shape
    n_r = 2 * half
    if a_meta.shape != (n_i, cdiv(n_r, 8)) or a_meta.dtype != jnp.uint8:
        raise ValueError(
            f"a_meta has shape {a_meta.shape} {a_meta.dtype}, values {a_vals.shape}: pass the "
            "(values, meta) pair the compress kernels return"
        )
    if b_transposed:
        n_j, rb = b.shape
        stride_br, stride_bj = 1, rb
    else:
        rb, n_j = b.shape
        stride_br, stride_bj = n_j, 1
    if rb != n_r:
        raise ValueError(f"A_s is ({n_i}, {n_r}) but B has reduction length {rb}")
    out_dtype = b.dtype if out_dtype is None else jnp.dtype(out_dtype)
    if out_transposed:
        out = jax.ShapeDtypeStruct((n_j, n_i), out_dtype)
        stride_ci, stride_cj = 1, n_i
    else:
        out = jax.ShapeDtypeStruct((n_i, n_j), out_dtype)
        stride_ci, stride_cj = n_j, 1
    bi, bj, br, warps, stages = config or config_for(b.dtype)
    return jt().triton_call(
        a_vals, a_meta, b, n_i, n_j, n_r, stride_br, stride_bj, stride_ci, stride_cj,
        kernel=sparse24_matmul_kernel,
        out_shape=out,
        grid=(cdiv(n_i, bi) * cdiv(n_j, bj),),
        BLOCK_I=bi,
        BLOCK_J=bj,
        BLOCK_R=br,
        GROUP_I=GROUP_I,
        PRECISION=precision,
        num_warps=warps,
        num_stages=stages,
    )
