"""``CusparseltBackend``: the three GEMMs of a 2:4 linear layer on sparse tensor cores.

=============  ====================================  ==============================
GEMM           cuSPARSELt call (A sparse, row-major)  operands
=============  ====================================  ==============================
forward        ``Z^T (N,M) = W_s (N,K) @ X^T``        A = W_s, B = X with op T;
                                                      D column-major = Z (M, N)
input grad     ``dX^T (K,M) = W_s^T (K,N) @ dZ^T``    A = W_s^T, B = dZ with op T;
                                                      D column-major = dX (M, K)
weight grad    ``dW (N,K) = S_z(dZ^T) (N,M) @ X``     A = MVUE(dZ^T), B = X (op N)
=============  ====================================  ==============================

Our CUDA kernels write cuSPARSELt's compressed format directly (no call to
the library's slow compression): ``prepare_weight`` compresses ``W_s`` and,
when the mask is transposable, ``W_s^T`` (read in place, no transposed copy);
``prepare_projected`` does the same straight from the float32 master weight,
projection and cast included, in one pass; ``prune_grad`` does MVUE 2:4 of
``dZ^T`` along the tokens and compresses in one pass over ``dZ``; in the FFN block (:mod:`sparse24_jax.ffn`),
``activation_grad_prune`` also computes that ``dZ`` from ``dA`` and the saved
pre-activation in the same pass (gelu, swiglu).

Notes:

* Without a transposable mask (S-STE), ``W_s^T`` is not 2:4, so the input
  gradient is a dense ``jnp.dot`` (as in the reference toolkit).
* ``prune_grad(None, dz)`` (no MVUE) makes the weight gradient a dense
  ``jnp.dot`` too.
* cuSPARSELt writes bf16/fp16 outputs for bf16/fp16 operands, so the weight
  gradient is rounded to the compute dtype before it is cast to float32
  (``dw_dtype`` asks for another output dtype, if the library offers it).
* The token count M is padded with zero rows to a multiple of 64 when needed
  (zero tokens add nothing); K and N must be multiples of 32 (``check``).
* ``precision="fp8"``: the forward runs as a real e4m3 2:4 GEMM
  (``matmul_fwd_fp8``, output bfloat16, scaled by the caller) when
  :func:`.ops.fp8_probe` finds cuSPARSELt runs one here; the two gradient
  GEMMs mix e5m2 with e4m3 and run as bf16 2:4 GEMMs on the exactly upcast
  fp8 values; the weight gradient's MVUE runs in our kernel and its kept
  values are quantized in the compressed buffer (``quantize_pruned_grad``).
* Operands are local arrays: inside ``shard_map`` each device runs its own
  shard with its own cuSPARSELt handle and plans. Outside ``shard_map`` XLA
  all-gathers sharded operands of a custom call.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from . import ops

__all__ = ["CompressedGrad", "CompressedWeight", "CusparseltBackend"]

_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_ALIGN_NK = 64  # the compressed axis: at k = 96 the library padded its metadata to 64 columns (H100, 2026-11-23)
_ALIGN_M = 64   # token padding


@dataclasses.dataclass(frozen=True)
class CompressedWeight:
    """``W_s`` (N, K) compressed (``w``), ``W_s^T`` compressed (``wt``, when
    transposable) or the dense ``W_s`` (``dense``, for the dense input grad)."""

    w: jax.Array
    wt: jax.Array | None
    dense: jax.Array | None
    n: int
    k: int
    dtype: str


@dataclasses.dataclass(frozen=True)
class CompressedGrad:
    """``S_z(dZ^T)`` (N, Mp) compressed (``buf``), or the dense ``dZ`` (M, N)
    when not pruned (``dense``). ``mp``: the padded token count."""

    buf: jax.Array | None
    dense: jax.Array | None
    n: int
    mp: int
    dtype: str


jax.tree_util.register_dataclass(
    CompressedWeight, data_fields=["w", "wt", "dense"], meta_fields=["n", "k", "dtype"]
)
jax.tree_util.register_dataclass(CompressedGrad, data_fields=["buf", "dense"], meta_fields=["n", "mp", "dtype"])


def _pad_rows(a: jax.Array, rows: int) -> jax.Array:
    extra = rows - a.shape[0]
    return a if extra == 0 else jnp.pad(a, ((0, extra), (0, 0)))


def _padded(m: int) -> int:
    return -(-m // _ALIGN_M) * _ALIGN_M


class CusparseltBackend:
    """2:4 GEMMs through cuSPARSELt (XLA FFI); compression by our CUDA kernels.

    Constructing it builds the CUDA library if needed (nvcc, the
    ``nvidia-cusparselt-cu13`` wheel) and registers the FFI targets; it raises
    RuntimeError naming the fallback (backend 'xla' or 'triton') when that
    cannot work here (no GPU, no nvcc, no cuSPARSELt).
    """

    name = "cusparselt"
    compute_dtypes = _DTYPES

    def __init__(self, *, dw_dtype: Any = None):
        ops.load()
        self.dw_dtype = None if dw_dtype is None else jnp.dtype(dw_dtype)

    # -- checks -------------------------------------------------------------
    def check(self, n: int, k: int, dtype: Any) -> None:
        dt = jnp.dtype(dtype)
        if dt not in _DTYPES:
            raise ValueError(
                f"backend 'cusparselt' runs bfloat16 or float16 GEMMs, not {dt}: cast the "
                "input (x.astype(jnp.bfloat16)), or use backend='xla'"
            )
        bad = [f"{name}={v}" for name, v in (("N (out_features)", n), ("K (in_features)", k))
               if v % _ALIGN_NK]
        if bad:
            raise ValueError(
                f"backend 'cusparselt' needs N and K multiples of {_ALIGN_NK} (cuSPARSELt's "
                f"compressed layout, verified for those), got {', '.join(bad)}: pad the layer's "
                f"features to a multiple of {_ALIGN_NK}, or use backend='xla' or backend='triton'"
            )

    def _check_x(self, x: jax.Array, k: int, dtype: str, what: str) -> None:
        if x.ndim != 2 or x.shape[1] != k:
            raise ValueError(f"{what} must be (M, {k}), got shape {tuple(x.shape)}")
        if jnp.dtype(x.dtype) != jnp.dtype(dtype):
            raise ValueError(
                f"{what} is {x.dtype} but the weight was prepared in {dtype}: prepare it in "
                f"{what}'s dtype (W_s.astype(x.dtype))"
            )

    # -- weight -------------------------------------------------------------
    def prepare_weight(self, w_s: jax.Array, *, transposable: bool) -> CompressedWeight:
        if w_s.ndim != 2:
            raise ValueError(f"W_s must be 2-D (N, K), got shape {tuple(w_s.shape)}")
        n, k = w_s.shape
        self.check(n, k, w_s.dtype)
        w = ops.compress(w_s)
        if transposable:
            # W_s^T (K, N), 2:4 along N: read W_s in place, transposed in the kernel
            wt = ops.compress(w_s, transpose=True)
            return CompressedWeight(w=w, wt=wt, dense=None, n=n, k=k, dtype=w_s.dtype.name)
        return CompressedWeight(w=w, wt=None, dense=w_s, n=n, k=k, dtype=w_s.dtype.name)

    def prepare_projected(self, w: jax.Array, mask: jax.Array | None, beta: jax.Array | None, *,
                          method: str, dtype: Any) -> CompressedWeight:
        """``prepare_weight(project_weight(w, mask, beta, method=method)[0].astype(dtype),
        transposable=...)`` bit for bit, in one pass over the float32 master
        weight (capability :class:`sparse24_jax.backend.PrepareFromMaster`,
        :func:`.ops.project_compress`): SR-STE / STE write ``W_s`` and ``W_s^T``
        compressed, S-STE ``W_s`` compressed and dense. Other master dtypes or
        methods take the two-pass path."""
        dt = jnp.dtype(dtype)
        if w.ndim == 2 and jnp.dtype(w.dtype) == jnp.dtype(jnp.float32) and dt in _DTYPES:
            n, k = w.shape
            if method in ("srste", "ste"):
                self.check(n, k, dt)
                buf, buf_t = ops.project_compress(w, mask, dtype=dt, transpose_too=True)
                return CompressedWeight(w=buf, wt=buf_t, dense=None, n=n, k=k, dtype=dt.name)
            if method == "sste":
                self.check(n, k, dt)
                buf, dense = ops.project_compress(w, beta=beta, dtype=dt, transpose_too=False)
                return CompressedWeight(w=buf, wt=None, dense=dense, n=n, k=k, dtype=dt.name)
        from sparse24_jax import project_weight

        w_s, transposable = project_weight(w, mask, beta, method=method)
        return self.prepare_weight(w_s.astype(dt), transposable=transposable)

    def matmul_fwd(self, x: jax.Array, w_op: CompressedWeight) -> jax.Array:
        self._check_x(x, w_op.k, w_op.dtype, "x")
        m = x.shape[0]
        mp = _padded(m)
        zt = ops.spmm(w_op.w, _pad_rows(x, mp), m=w_op.n, k=w_op.k, transpose_b=True,
                      d_col_major=True, out_dtype=x.dtype)
        return zt if mp == m else zt[:m]

    def matmul_dx(self, dz: jax.Array, w_op: CompressedWeight) -> jax.Array:
        self._check_x(dz, w_op.n, w_op.dtype, "dZ")
        if w_op.wt is None:
            # not transposable (S-STE): W_s^T is not 2:4, so a dense product
            return jnp.dot(dz, w_op.dense.astype(dz.dtype),
                           preferred_element_type=jnp.float32).astype(dz.dtype)
        m = dz.shape[0]
        mp = _padded(m)
        dx = ops.spmm(w_op.wt, _pad_rows(dz, mp), m=w_op.k, k=w_op.n, transpose_b=True,
                      d_col_major=True, out_dtype=dz.dtype)
        return dx if mp == m else dx[:m]

    # -- native FP8 forward (sparse24_jax.backend.NativeFp8Forward) ----------
    def fp8_forward_available(self) -> tuple[bool, str]:
        return ops.fp8_probe()

    def prepare_weight_fp8(self, qw: jax.Array) -> CompressedWeight:
        if qw.ndim != 2 or jnp.dtype(qw.dtype) != jnp.dtype(jnp.float8_e4m3fn):
            raise ValueError(f"W_s must be (N, K) float8_e4m3fn, got {qw.dtype}{tuple(qw.shape)}")
        n, k = qw.shape
        self.check(n, k, jnp.bfloat16)  # the same alignment; fp8 needs N % 32, which 64 covers
        return CompressedWeight(w=ops.compress(qw), wt=None, dense=None, n=n, k=k, dtype=qw.dtype.name)

    def matmul_fwd_fp8(self, qx: jax.Array, w8: CompressedWeight, out_dtype) -> jax.Array:
        self._check_x(qx, w8.k, w8.dtype, "x")
        m = qx.shape[0]
        mp = _padded(m)
        # opA=N, opB=T: the only FP8 layout cuSPARSELt takes (X is K-contiguous)
        zt = ops.spmm(w8.w, _pad_rows(qx, mp), m=w8.n, k=w8.k, transpose_b=True,
                      d_col_major=True, out_dtype=out_dtype)
        return zt if mp == m else zt[:m]

    # -- gradient -----------------------------------------------------------
    def prune_grad(self, key: jax.Array | None, dz: jax.Array) -> CompressedGrad:
        if dz.ndim != 2:
            raise ValueError(f"dZ must be 2-D (M, N), got shape {tuple(dz.shape)}")
        m, n = dz.shape
        if key is None:
            return CompressedGrad(buf=None, dense=dz, n=n, mp=m, dtype=dz.dtype.name)
        self.check(n, _ALIGN_NK, dz.dtype)
        mp = _padded(m)
        # dZ^T (N, Mp), MVUE 2:4 along the tokens: read dZ in place
        buf = ops.mvue_compress(ops.seed_from_key(key), _pad_rows(dz, mp), transpose=True)
        return CompressedGrad(buf=buf, dense=None, n=n, mp=mp, dtype=dz.dtype.name)

    def quantize_pruned_grad(self, g: CompressedGrad, fp8_dtype) -> tuple[CompressedGrad, jax.Array] | None:
        """FP8 recipe on the compressed ``S_z(dZ^T)``: its kept values
        quantized per tensor to ``fp8_dtype`` (amax over the kept values, which
        is the amax of the pruned matrix), stored back as the exactly upcast
        16-bit values; the metadata is unchanged. Returns ``(g', scale)``, or
        None for an unpruned gradient (the caller quantizes the dense one)."""
        from sparse24_jax import fp8

        if g.buf is None:
            return None
        dt = jnp.dtype(g.dtype)
        nv = g.n * (g.mp // 2) * dt.itemsize  # the values come first in the buffer
        vals = jax.lax.bitcast_convert_type(g.buf[:nv].reshape(-1, dt.itemsize), dt)
        q, scale = fp8.quantize(vals, fp8_dtype)
        qb = jax.lax.bitcast_convert_type(q.astype(dt), jnp.uint8).reshape(-1)
        buf = jnp.concatenate([qb, g.buf[nv:]])
        return dataclasses.replace(g, buf=buf), scale

    def matmul_dw(self, g: CompressedGrad, x: jax.Array) -> jax.Array:
        if g.buf is None:
            return jnp.dot(g.dense.T, x.astype(g.dense.dtype), preferred_element_type=jnp.float32)
        if x.ndim != 2 or _padded(x.shape[0]) != g.mp:
            raise ValueError(
                f"x has shape {tuple(x.shape)} but the pruned gradient has {g.mp} (padded) tokens"
            )
        x = x.astype(g.dtype)
        out_dtype = self.dw_dtype or x.dtype
        dw = ops.spmm(g.buf, _pad_rows(x, g.mp), m=g.n, k=g.mp, transpose_b=False,
                      d_col_major=False, out_dtype=out_dtype)
        return dw.astype(jnp.float32)

    # -- FFN: activation backward + MVUE (sparse24_jax.backend.FusedActivationGradPrune)
    def activation_grad_prune_kinds(self) -> tuple[str, ...]:
        return tuple(ops.ACT_KINDS)

    def activation_grad_prune(self, kind: str, da: jax.Array, z: jax.Array,
                              key: jax.Array) -> tuple[jax.Array, CompressedGrad]:
        """``(dZ, prune_grad(key, dZ))`` with ``dZ`` the activation's VJP of
        ``da`` at ``z``, in one kernel (``ops.act_grad_mvue_compress``): its
        buffer is ``prune_grad``'s for that ``dZ``, byte for byte. Shapes the
        kernel does not take (swiglu with F not a multiple of 64, mixed
        dtypes) run the same math unfused."""
        if z.ndim != 2 or da.ndim != 2:
            raise ValueError(f"dA and Z must be 2-D (M, features), got {tuple(da.shape)} and {tuple(z.shape)}")
        m, h = z.shape
        feat = h // 2 if kind == "swiglu" else h
        if kind not in ops.ACT_KINDS or feat % 64 or jnp.dtype(da.dtype) != jnp.dtype(z.dtype):
            from sparse24_jax.ffn import activation_vjp

            dz = activation_vjp(kind, z, da)
            return dz, self.prune_grad(key, dz)
        self.check(h, _ALIGN_NK, z.dtype)
        mp = _padded(m)
        # zero token rows give zero dZ rows: the padding adds nothing to dW
        dz, buf = ops.act_grad_mvue_compress(kind, _pad_rows(da, mp), _pad_rows(z, mp),
                                             ops.seed_from_key(key))
        g = CompressedGrad(buf=buf, dense=None, n=h, mp=mp, dtype=z.dtype.name)
        return (dz if mp == m else dz[:m]), g

    # -- mask ---------------------------------------------------------------
    def transposable_mask(self, w: jax.Array) -> jax.Array:
        from sparse24_jax import transposable_mask_24

        return transposable_mask_24(w)
