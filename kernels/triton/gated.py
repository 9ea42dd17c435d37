"""Fused gated activations, GEGLU and SwiGLU, forward and backward.

``h = [x | gate]`` along the feature axis (x = first half, gate = second half):

* GEGLU: ``y = x * gelu_tanh(gate)``  (reference twin: ``x * jax.nn.gelu(gate, approximate=True)``)
* SwiGLU: ``y = x * silu(gate)``      (reference twin: ``x * jax.nn.silu(gate)``)

One pass each way: the forward reads ``h`` once and writes ``y``; the backward
reads ``h`` and ``dy`` once and writes ``dh`` (no saved activations beyond
``h``). Arithmetic is float32, I/O in ``h``'s dtype.

``h`` can be the usual row-major ``(M, 2F)`` or its transpose ``(2F, M)``
(``transposed=True``): the layout a GEMM writes when it computes ``W @ X.T``
(SPEC: the sparse GEMM writes its output column-major). The kernel reads it in
place through strides instead of paying a transpose pass; ``dh`` comes back in
``h``'s layout, ready for the next GEMM. Gradients flow through
:func:`gated_act` by ``jax.custom_vjp`` (jax-triton calls have no autodiff).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from ._runtime import cdiv, jt

GELU_C = tl.constexpr(math.sqrt(2.0 / math.pi))
GELU_A = tl.constexpr(0.044715)


@triton.jit
def _act_and_grad(g, ACT: tl.constexpr):
    """(act(g), act'(g)) in float32. gelu_tanh(g) = g * sigmoid(2 z) with
    z = c (g + a g^3), since 0.5 (1 + tanh z) = sigmoid(2 z): no tanh needed."""
    if ACT == "geglu":
        s = tl.sigmoid(2.0 * GELU_C * (g + GELU_A * g * g * g))
        act = g * s
        grad = s + g * s * (1.0 - s) * (2.0 * GELU_C) * (1.0 + 3.0 * GELU_A * g * g)
    else:  # swiglu
        s = tl.sigmoid(g)
        act = g * s
        grad = s * (1.0 + g * (1.0 - s))
    return act, grad


@triton.jit
def gated_fwd_kernel(
    h_ptr,  # h: element (t, f) of the logical (M, 2F) at t * stride_t + f * stride_f
    n_tok, n_feat, stride_t, stride_f,  # M, F (half the feature axis)
    y_ptr,  # (M, F) row-major
    ACT: tl.constexpr,  # "geglu" or "swiglu"
    BLOCK_T: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    """``y = x * act(gate)``. Reference: ``x * jax.nn.gelu(gate, approximate=True)`` / ``x * jax.nn.silu(gate)``."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    ok = (t < n_tok)[:, None] & (f < n_feat)[None, :]
    x_off = t[:, None] * stride_t + f[None, :] * stride_f
    x = tl.load(h_ptr + x_off, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(h_ptr + x_off + n_feat * stride_f, mask=ok, other=0.0).to(tl.float32)
    act, _ = _act_and_grad(g, ACT)
    tl.store(y_ptr + t[:, None] * n_feat + f[None, :], (x * act).to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def gated_bwd_kernel(
    h_ptr, dy_ptr,  # h as in the forward; dy (M, F) row-major
    n_tok, n_feat, stride_t, stride_f,
    dh_ptr,  # same layout (strides) as h
    ACT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    """``dx = dy * act(gate)``, ``dgate = dy * x * act'(gate)``. Reference:
    ``jax.vjp`` of the forward's reference."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    ok = (t < n_tok)[:, None] & (f < n_feat)[None, :]
    x_off = t[:, None] * stride_t + f[None, :] * stride_f
    g_off = x_off + n_feat * stride_f
    x = tl.load(h_ptr + x_off, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(h_ptr + g_off, mask=ok, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + t[:, None] * n_feat + f[None, :], mask=ok, other=0.0).to(tl.float32)
    act, grad = _act_and_grad(g, ACT)
    tl.store(dh_ptr + x_off, (dy * act).to(dh_ptr.dtype.element_ty), mask=ok)
    tl.store(dh_ptr + g_off, (dy * x * grad).to(dh_ptr.dtype.element_ty), mask=ok)


BLOCK_T = 64
BLOCK_F = 64
ACTS = ("geglu", "swiglu")


def _layout(h, transposed):
    if transposed:
        two_f, m = h.shape
        return m, two_f // 2, 1, m  # stride_t = 1, stride_f = M
    m, two_f = h.shape
    return m, two_f // 2, two_f, 1


def _fwd_call(h, act, transposed):
    m, f, st, sf = _layout(h, transposed)
    return jt().triton_call(
        h, m, f, st, sf,
        kernel=gated_fwd_kernel,
        out_shape=jax.ShapeDtypeStruct((m, f), h.dtype),
        grid=(cdiv(m, BLOCK_T), cdiv(f, BLOCK_F)),
        ACT=act, BLOCK_T=BLOCK_T, BLOCK_F=BLOCK_F, num_warps=4,
    )


def _bwd_call(h, dy, act, transposed):
    m, f, st, sf = _layout(h, transposed)
    return jt().triton_call(
        h, dy.astype(h.dtype), m, f, st, sf,
        kernel=gated_bwd_kernel,
        out_shape=jax.ShapeDtypeStruct(h.shape, h.dtype),
        grid=(cdiv(m, BLOCK_T), cdiv(f, BLOCK_F)),
        ACT=act, BLOCK_T=BLOCK_T, BLOCK_F=BLOCK_F, num_warps=4,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _gated_2d(h, act, transposed):
    return _fwd_call(h, act, transposed)


def _gated_fwd(h, act, transposed):
    return _fwd_call(h, act, transposed), h


def _gated_bwd(act, transposed, h, dy):
    return (_bwd_call(h, dy, act, transposed),)


_gated_2d.defvjp(_gated_fwd, _gated_bwd)


def gated_act(h: jax.Array, act: str = "geglu", *, transposed: bool = False) -> jax.Array:
    """``x * act(gate)`` for ``h = [x | gate]``, differentiable.

    Row-major: ``h`` is ``(..., 2F)`` and the result ``(..., F)``. With
    ``transposed=True``: ``h`` is ``(2F, M)`` (the transposed GEMM output) and
    the result is ``(M, F)``; its gradient w.r.t. ``h`` is ``(2F, M)`` too.
    """
    if act not in ACTS:
        raise ValueError(f"act must be one of {ACTS}, got {act!r}")
    feat_axis = 0 if transposed else -1
    if transposed and h.ndim != 2:
        raise ValueError(f"transposed=True takes the 2-D (2F, M) GEMM output, got shape {h.shape}")
    if h.shape[feat_axis] % 2:
        raise ValueError(f"the feature axis of h has odd length {h.shape[feat_axis]}: it must be [x | gate]")
    if transposed:
        return _gated_2d(h, act, True)
    lead = h.shape[:-1]
    y = _gated_2d(h.reshape(-1, h.shape[-1]), act, False)
    return y.reshape(*lead, h.shape[-1] // 2)


def geglu(h: jax.Array, *, transposed: bool = False) -> jax.Array:
    """``x * gelu_tanh(gate)``; see :func:`gated_act`."""
    return gated_act(h, "geglu", transposed=transposed)


def swiglu(h: jax.Array, *, transposed: bool = False) -> jax.Array:
    """``x * silu(gate)``; see :func:`gated_act`."""
    return gated_act(h, "swiglu", transposed=transposed)
