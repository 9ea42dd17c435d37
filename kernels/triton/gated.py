"""Fused gated activations, GEGLU and SwiGLU, forward and backward.

``h = [x | gate]`` along the feature axis (x = first half, gate = second half):

* GEGLU: ``y = x * gelu_tanh(gate)``  (reference twin: ``x * jax.nn.gelu(gate, approximate=True)``)
* SwiGLU: ``y = x * silu(gate)``      (reference twin: ``x * jax.nn.silu(gate)``)

The same math as :func:`sparse24_jax.activations.gated_activation` (float32
inside, I/O in ``h``'s dtype: float32, bfloat16 or float16).

Bytes: the forward reads ``h`` (2 M F elements) and writes ``y`` (M F); the
backward reads ``h`` and ``dy`` (3 M F) and writes ``dh`` (2 M F), recomputing
the activation instead of saving it: 8 M F elements per step, the minimum for
two separate passes.

Layouts. ``h`` is either the usual row-major ``(M, 2F)`` or the transposed
``(2F, M)`` (``transposed=True``: the layout a GEMM writes when it computes
``W @ X.T``), read in place, no transpose pass:

* row-major: one flat block of ``BLOCK`` elements of ``y`` per program
  (``e = t F + f``; ``x`` sits at ``e + t F`` and ``gate`` ``F`` further on),
  so ``y``/``dy`` are contiguous and ``x``/``gate`` contiguous within rows;
* transposed: 2-D tiles ``(BLOCK_F, BLOCK_T)`` with the token axis (the
  contiguous one of ``h``) innermost; ``y``/``dy`` (row-major ``(M, F)``) go
  through the compiler's layout conversion (shared memory) so both sides stay
  coalesced. ``dh`` comes back in ``h``'s layout, ready for the next GEMM.

Speed (README.md, "Gated activations: why they were slow"): the sizes are ``tl.constexpr``.
jax-triton 0.3.1 passes int scalars with no divisibility hint, so runtime
sizes or strides made every access a 2-byte scalar one; with the sizes known
at compile time each thread moves 16 bytes per access (when ``F``, resp. ``M``
in the transposed layout, is a multiple of 8 bf16/fp16 or 4 float32
elements; otherwise it stays correct, only narrower). One compile per shape,
cached by jax-triton (JAX shapes are static anyway).

Gradients flow through :func:`gated_act` by ``jax.custom_vjp`` (jax-triton
calls have no autodiff); :func:`gated_fwd` / :func:`gated_bwd` are the raw
passes the ``triton`` backend hands to :func:`sparse24_jax.activations.gated`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from ._runtime import cdiv, jt

ACTS = ("geglu", "swiglu")

# gelu_tanh(g) = 0.5 g (1 + tanh(z)) = g * sigmoid(2 z), z = C (g + A g^3),
# and sigmoid(u) = 1 / (1 + 2^(-u log2 e)): the constants below fold 2 C and
# log2 e together. Python floats as tl.constexpr become float32 immediates
# (only a *runtime* Python float argument would be float64).
_LOG2E = 1.0 / math.log(2.0)
_C = math.sqrt(2.0 / math.pi)
_A = 0.044715
GELU_K1 = tl.constexpr(2.0 * _C * _LOG2E)  # log2(e) * 2C
GELU_K3 = tl.constexpr(2.0 * _C * _A * _LOG2E)  # log2(e) * 2CA
GELU_D1 = tl.constexpr(2.0 * _C)  # d(2z)/dg = 2C + 6CA g^2
GELU_D3 = tl.constexpr(6.0 * _C * _A)
LOG2E = tl.constexpr(_LOG2E)

# Launch configuration (tuned for H100 bf16; see README.md)
BLOCK = 4096  # row-major: elements of y per program
ROW_WARPS = 8
BLOCK_T = 64  # transposed: tokens per tile (contiguous in h)
BLOCK_F = 64  # transposed: features per tile (contiguous in y)
COL_WARPS = 8
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_INT32_MAX = 2**31 - 1


@triton.jit
def _act_and_grad(g, ACT: tl.constexpr, NEED_GRAD: tl.constexpr):
    """(act(g), act'(g)) in float32 (act'(g) only if NEED_GRAD, else 0)."""
    if ACT == "geglu":
        g2 = g * g
        s = 1.0 / (1.0 + tl.exp2(-g * (GELU_K1 + GELU_K3 * g2)))  # sigmoid(2z)
        act = g * s
        if NEED_GRAD:
            grad = s + act * (1.0 - s) * (GELU_D1 + GELU_D3 * g2)
        else:
            grad = 0.0
    else:  # swiglu
        s = 1.0 / (1.0 + tl.exp2(-g * LOG2E))  # sigmoid(g)
        act = g * s
        if NEED_GRAD:
            grad = s + act * (1.0 - s)
        else:
            grad = 0.0
    return act, grad


@triton.jit
def _offsets(
    N_TOK: tl.constexpr, N_FEAT: tl.constexpr, TRANSPOSED: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr, WIDE: tl.constexpr,
):
    """(offset of x in h, offset of gate in h, offset in y/dy, in-bounds mask)
    for this program's elements."""
    if TRANSPOSED:
        # h is (2F, M): x[t, f] at f M + t, gate at (F + f) M + t; y (M, F) at t F + f
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
        if WIDE:
            t = t.to(tl.int64)
            f = f.to(tl.int64)
        ok = (f < N_FEAT)[:, None] & (t < N_TOK)[None, :]
        x_off = f[:, None] * N_TOK + t[None, :]
        y_off = t[None, :] * N_FEAT + f[:, None]
        return x_off, x_off + N_FEAT * N_TOK, y_off, ok
    else:
        # h is (M, 2F): y element e = t F + f; x at t 2F + f = e + t F, gate F further
        pid = tl.program_id(0)
        if WIDE:
            pid = pid.to(tl.int64)
        e = pid * BLOCK + tl.arange(0, BLOCK)
        ok = e < N_TOK * N_FEAT
        x_off = e + (e // N_FEAT) * N_FEAT
        return x_off, x_off + N_FEAT, e, ok


@triton.jit
def gated_fwd_kernel(
    h_ptr,  # [x | gate]: (M, 2F) row-major, or (2F, M) if TRANSPOSED
    y_ptr,  # (M, F) row-major
    N_TOK: tl.constexpr,  # M
    N_FEAT: tl.constexpr,  # F (half the feature axis)
    ACT: tl.constexpr,  # "geglu" or "swiglu"
    TRANSPOSED: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_F: tl.constexpr,
    WIDE: tl.constexpr,  # int64 offsets (h has 2**31 elements or more)
):
    """``y = x * act(gate)``. Reference: ``x * jax.nn.gelu(gate, approximate=True)`` / ``x * jax.nn.silu(gate)``."""
    x_off, g_off, y_off, ok = _offsets(N_TOK, N_FEAT, TRANSPOSED, BLOCK, BLOCK_T, BLOCK_F, WIDE)
    x = tl.load(h_ptr + x_off, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(h_ptr + g_off, mask=ok, other=0.0).to(tl.float32)
    act, _ = _act_and_grad(g, ACT, False)
    tl.store(y_ptr + y_off, (x * act).to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def gated_bwd_kernel(
    h_ptr,  # as in the forward
    dy_ptr,  # (M, F) row-major
    dh_ptr,  # out: h's shape and layout
    N_TOK: tl.constexpr,
    N_FEAT: tl.constexpr,
    ACT: tl.constexpr,
    TRANSPOSED: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_F: tl.constexpr,
    WIDE: tl.constexpr,
):
    """``dx = dy * act(gate)``, ``dgate = dy * x * act'(gate)``, the
    activation recomputed from ``h``. Reference: ``jax.vjp`` of the forward's
    reference."""
    x_off, g_off, y_off, ok = _offsets(N_TOK, N_FEAT, TRANSPOSED, BLOCK, BLOCK_T, BLOCK_F, WIDE)
    x = tl.load(h_ptr + x_off, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(h_ptr + g_off, mask=ok, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + y_off, mask=ok, other=0.0).to(tl.float32)
    act, grad = _act_and_grad(g, ACT, True)
    tl.store(dh_ptr + x_off, (dy * act).to(dh_ptr.dtype.element_ty), mask=ok)
    tl.store(dh_ptr + g_off, (dy * x * grad).to(dh_ptr.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------
# JAX wrappers
def launch_config(m: int, f: int, transposed: bool) -> dict:
    """Grid, warps and constexprs of one call (shared by both passes)."""
    # the largest offset any lane computes (masked lanes included) must fit int32
    if transposed:
        reach = (2 * f + BLOCK_F) * (m + BLOCK_T)
    else:
        reach = 2 * (m * f + BLOCK)
    meta = dict(N_TOK=m, N_FEAT=f, TRANSPOSED=transposed, BLOCK=BLOCK, BLOCK_T=BLOCK_T, BLOCK_F=BLOCK_F,
                WIDE=reach > _INT32_MAX)
    if transposed:
        return dict(grid=(cdiv(m, BLOCK_T), cdiv(f, BLOCK_F)), num_warps=COL_WARPS, **meta)
    return dict(grid=(cdiv(m * f, BLOCK),), num_warps=ROW_WARPS, **meta)


def _check(h, act, transposed):
    if act not in ACTS:
        raise ValueError(f"act must be one of {ACTS}, got {act!r}")
    if jnp.dtype(h.dtype) not in _DTYPES:
        raise ValueError(f"the gated kernels take float32, bfloat16 or float16, not {h.dtype}")
    if transposed and h.ndim != 2:
        raise ValueError(f"transposed=True takes the 2-D (2F, M) GEMM output, got shape {h.shape}")
    feat = h.shape[0 if transposed else -1]
    if feat % 2:
        raise ValueError(f"the feature axis of h has odd length {feat}: it must be [x | gate]")


def _mf(h, transposed):
    if transposed:
        two_f, m = h.shape
    else:
        two_f = h.shape[-1]
        m = math.prod(h.shape[:-1])
    return m, two_f // 2


def gated_fwd(h: jax.Array, act: str = "geglu", *, transposed: bool = False) -> jax.Array:
    """The forward pass alone (no autodiff): ``x * act(gate)``. Row-major ``h``
    ``(..., 2F)`` gives ``(..., F)``; ``transposed=True``: ``(2F, M)`` gives ``(M, F)``."""
    _check(h, act, transposed)
    m, f = _mf(h, transposed)
    out = (m, f) if transposed else (*h.shape[:-1], f)
    if m * f == 0:
        return jnp.zeros(out, h.dtype)
    h2 = h if transposed else h.reshape(m, 2 * f)
    y = jt().triton_call(
        h2, kernel=gated_fwd_kernel, out_shape=jax.ShapeDtypeStruct((m, f), h.dtype), num_stages=1,
        ACT=act, **launch_config(m, f, transposed),
    )
    return y.reshape(out)


def gated_bwd(h: jax.Array, dy: jax.Array, act: str = "geglu", *, transposed: bool = False) -> jax.Array:
    """The backward pass alone: ``dh`` (``h``'s shape, layout and dtype) from
    ``h`` and ``dy`` (the forward output's shape), the activation recomputed."""
    _check(h, act, transposed)
    m, f = _mf(h, transposed)
    if m * f == 0:
        return jnp.zeros(h.shape, h.dtype)
    h2 = h if transposed else h.reshape(m, 2 * f)
    dy2 = dy.astype(h.dtype).reshape(m, f)
    dh = jt().triton_call(
        h2, dy2, kernel=gated_bwd_kernel, out_shape=jax.ShapeDtypeStruct(h2.shape, h.dtype), num_stages=1,
        ACT=act, **launch_config(m, f, transposed),
    )
    return dh.reshape(h.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _gated(h, act, transposed):
    return gated_fwd(h, act, transposed=transposed)


def _gated_vjp_fwd(h, act, transposed):
    return gated_fwd(h, act, transposed=transposed), h


def _gated_vjp_bwd(act, transposed, h, dy):
    return (gated_bwd(h, dy, act, transposed=transposed),)


_gated.defvjp(_gated_vjp_fwd, _gated_vjp_bwd)


def gated_act(h: jax.Array, act: str = "geglu", *, transposed: bool = False) -> jax.Array:
    """``x * act(gate)`` for ``h = [x | gate]``, differentiable (fused backward).

    Row-major: ``h`` is ``(..., 2F)`` and the result ``(..., F)``. With
    ``transposed=True``: ``h`` is ``(2F, M)`` (the transposed GEMM output) and
    the result is ``(M, F)``; its gradient w.r.t. ``h`` is ``(2F, M)`` too.
    """
    _check(h, act, transposed)
    return _gated(h, act, transposed)


def geglu(h: jax.Array, *, transposed: bool = False) -> jax.Array:
    """``x * gelu_tanh(gate)``; see :func:`gated_act`."""
    return gated_act(h, "geglu", transposed=transposed)


def swiglu(h: jax.Array, *, transposed: bool = False) -> jax.Array:
    """``x * silu(gate)``; see :func:`gated_act`."""
    return gated_act(h, "swiglu", transposed=transposed)
