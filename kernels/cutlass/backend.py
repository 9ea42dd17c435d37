"""``CutlassBackend``: the three GEMMs of a 2:4 linear layer on our CUTLASS sm90 kernels.

=============  ==========================================  ============================
GEMM           CUTLASS product (:func:`.ops.spmm`)          sparse operand (compressed)
=============  ==========================================  ============================
forward        ``fwd``: Z (M, N) = X @ W_s^T                W_s (N, K), 2:4 along K
input grad     ``dx``: dX (M, K) = dZ @ W_s                  W_s^T (K, N), 2:4 along N
weight grad    ``dw``: dW (N, K) f32 = S_z(dZ^T) @ X         S_z(dZ^T) (N, M), MVUE along M
=============  ==========================================  ============================

Compression: ``prepare_projected`` (SR-STE / STE) runs our projection kernel
(:func:`.own_ops.project_compress`: the float32 master weight and the mask in,
W_s and W_s^T in CUTLASS's format out, one pass); ``prune_grad`` our MVUE
kernel (:func:`.own_ops.mvue_compress`, the cuSPARSELt kernel's randomness).
``prepare_weight`` of an already projected ``W_s`` uses CUTLASS's own
compressor (:func:`.ops.compress`). Per-shape GEMM configs: :func:`gemm_table`
(``gemm_configs.json``, the fastest built config per layer shape and product,
measured on an H200 at M = 16384 by ``benchmarks/sparse_gemm.py --cutlass
--table-out``; ``$SPARSE24_CUTLASS_GEMM_TABLE`` adds one's own), else
:data:`DEFAULT_CONFIG`.

Notes:

* bfloat16 only (``check``); N and K multiples of 64; tokens padded with zero
  rows to a multiple of 64 (zero tokens add nothing).
* Without a transposable mask (S-STE) W_s^T is not 2:4: the input gradient is a
  dense ``jnp.dot`` of the dense W_s (as the cuSPARSELt backend does).
* ``prune_grad(None, dz)``: no MVUE, the weight gradient is a dense ``jnp.dot``.
* The dw product writes float32 directly (no bf16 rounding of dW).
* SwiGLU's backward fused with the MVUE of its result (``activation_grad_prune``,
  :class:`~sparse24_jax.backend.FusedActivationGradPrune`):
  :func:`.own_ops.swiglu_grad_mvue_compress`, one pass over ``dA`` and ``Z1``.
* Fused epilogues (:mod:`.epilogue_ops`, kind ``"gelu"``, when the library has
  them): ``matmul_fwd_activation`` (the FFN's fc1 forward writing ``gelu(Z)``
  and ``gelu'(Z)``) and ``matmul_dx_activation_grad`` (fc2's input gradient
  times that saved ``gelu'(Z1)``), the capabilities
  :class:`~sparse24_jax.backend.FusedLinearActivation` /
  :class:`~sparse24_jax.backend.FusedLinearActivationGrad` that
  :func:`sparse24_jax.sparse24_ffn` uses. Config: :func:`epilogue_table`'s entry
  (``epilogue_configs.json``, measured), else the plain table's, when a fused
  instance of it is built; else the first built one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from . import epilogue_ops, ops, own_ops

__all__ = ["DEFAULT_CONFIG", "CutlassBackend", "CutlassGrad", "CutlassWeight", "config_for",
           "epilogue_table", "fused_epilogue_configs", "gemm_table"]

_DTYPES = (jnp.dtype(jnp.bfloat16),)
_ALIGN = 64

#: the config measured best most often (8 of the 18 GEMMs)
DEFAULT_CONFIG = "t256x128x128_c1x1_coop"

#: the measured configs of the plain GEMMs (``fwd``, ``dx``, ``dw``) per layer shape, written
#: by ``benchmarks/sparse_gemm.py --cutlass --table-out``; ``$SPARSE24_CUTLASS_GEMM_TABLE``
#: names a file in the same format whose entries win, e.g. a table tuned on another GPU
GEMM_TABLE_FILE = Path(__file__).with_name("gemm_configs.json")
GEMM_TABLE_ENV = "SPARSE24_CUTLASS_GEMM_TABLE"

#: the measured configs of the fused-epilogue GEMMs (fc1's ``fwd`` with GELU, fc2's ``dx``
#: with gelu'), written by ``benchmarks/cutlass_epilogue.py --table-out``; a file named by
#: ``$SPARSE24_CUTLASS_EPILOGUE_TABLE`` (same format) adds to it and wins where both have an
#: entry, e.g. to tune another GPU without editing the package
EPILOGUE_TABLE_FILE = Path(__file__).with_name("epilogue_configs.json")
EPILOGUE_TABLE_ENV = "SPARSE24_CUTLASS_EPILOGUE_TABLE"


def _config_table(shipped: Path, env: str, products: tuple[str, ...],
                  configs: dict[str, tuple[str, ...]]) -> dict[tuple[int, int], dict[str, str]]:
    """(N, K) -> {product: config}: ``shipped``'s table, then the entries of the file that
    ``$env`` names over it. ``configs``: config -> the products it is built for. ValueError
    names the file of an entry that is not ``"NxK": {product: a config built for it}``."""
    table: dict[tuple[int, int], dict[str, str]] = {}
    paths = [shipped]
    if os.environ.get(env, "").strip():
        paths.append(Path(os.environ[env]))
    for path in paths:
        if not path.is_file():
            if path != shipped:
                raise ValueError(f"${env}={str(path)!r}: no such file")
            continue
        for key, row in json.loads(path.read_text()).get("table", {}).items():
            try:
                n, k = (int(v) for v in key.split("x"))
            except ValueError:
                raise ValueError(f"{path}: table key {key!r} is not 'NxK' (e.g. '5120x1280')") from None
            bad = {p: c for p, c in row.items() if p not in products or p not in configs.get(c, ())}
            if bad:
                raise ValueError(f"{path}: entry {key}: {bad} is not a product ({', '.join(products)}) "
                                 f"with a config built for it ({', '.join(configs)})")
            table.setdefault((n, k), {}).update(row)
    return table


def gemm_table() -> dict[tuple[int, int], dict[str, str]]:
    """(N, K) of the layer -> {"fwd" | "dx" | "dw": config}: the shipped
    ``gemm_configs.json``, then ``$SPARSE24_CUTLASS_GEMM_TABLE``'s entries over it."""
    from .build import CONFIGS

    return _config_table(GEMM_TABLE_FILE, GEMM_TABLE_ENV, ("fwd", "dx", "dw"),
                         {name: c.products for name, c in CONFIGS.items()})


def epilogue_table() -> dict[tuple[int, int], dict[str, str]]:
    """(N, K) of the layer -> {"fwd" | "dx": config}: the shipped
    ``epilogue_configs.json``, then ``$SPARSE24_CUTLASS_EPILOGUE_TABLE``'s entries over it."""
    from .build import EPILOGUE_CONFIGS

    # each fused config is built with both epilogues: fc1's fwd_gelu, fc2's dx_dgelu
    return _config_table(EPILOGUE_TABLE_FILE, EPILOGUE_TABLE_ENV, ("fwd", "dx"),
                         {name: ("fwd", "dx") for name in EPILOGUE_CONFIGS})


def config_for(product: str, n: int, k: int, built: set[str] | None = None,
               table: dict[tuple[int, int], dict[str, str]] | None = None) -> str:
    """The CUTLASS config for ``product`` of an (N, K) layer: its entry in ``table``
    (default :func:`gemm_table`), or :data:`DEFAULT_CONFIG` where there is none or
    (``built``: the configs the library has for the product) the library lacks it,
    e.g. one built before that config existed."""
    table = gemm_table() if table is None else table
    cfg = table.get((n, k), {}).get(product, DEFAULT_CONFIG)
    return cfg if built is None or cfg in built else DEFAULT_CONFIG


def fused_epilogue_configs() -> tuple[str, ...]:
    """The configs with the FFN's fused-epilogue instances (both ``fwd_gelu`` and
    ``dx_dgelu``) in the loaded library; ``()`` for a library built before them."""
    try:
        inst = epilogue_ops.epilogue_instances()
    except RuntimeError:  # no s24c_num_epis: a library without fused epilogues
        return ()
    have = {(i["config"], i["epilogue"]) for i in inst}
    return tuple(sorted({c for c, _ in have if all((c, e) in have for e in ("fwd_gelu", "dx_dgelu"))}))


@dataclasses.dataclass(frozen=True)
class CutlassWeight:
    """W_s (N, K) as CUTLASS's (values, meta); W_s^T likewise when transposable,
    else the dense W_s (``dense``) for the dense input gradient."""

    values: jax.Array
    meta: jax.Array
    values_t: jax.Array | None
    meta_t: jax.Array | None
    dense: jax.Array | None
    n: int
    k: int


@dataclasses.dataclass(frozen=True)
class CutlassGrad:
    """S_z(dZ^T) (N, Mp) as CUTLASS's (values, meta), or the dense dZ (M, N)."""

    values: jax.Array | None
    meta: jax.Array | None
    dense: jax.Array | None
    n: int
    mp: int


jax.tree_util.register_dataclass(
    CutlassWeight, data_fields=["values", "meta", "values_t", "meta_t", "dense"], meta_fields=["n", "k"])
jax.tree_util.register_dataclass(
    CutlassGrad, data_fields=["values", "meta", "dense"], meta_fields=["n", "mp"])


def _padded(m: int) -> int:
    return -(-m // _ALIGN) * _ALIGN


def _pad_rows(a: jax.Array, rows: int) -> jax.Array:
    extra = rows - a.shape[0]
    return a if extra == 0 else jnp.pad(a, ((0, extra), (0, 0)))


class CutlassBackend:
    """2:4 GEMMs on our CUTLASS sm90 kernels (XLA FFI), compression by our own
    kernels. Constructing it loads the library (building it if needed) and
    registers the FFI targets; RuntimeError (no Hopper GPU, no library) names
    the fallback."""

    name = "cutlass"
    compute_dtypes = _DTYPES

    def __init__(self):
        ops.load()
        #: configs with fused GELU epilogues; empty: no FusedLinearActivation(Grad)
        self.epilogue_configs = fused_epilogue_configs()
        #: measured configs of the plain and the fused GEMMs per layer shape
        self.gemm_table = gemm_table()
        self.epilogue_table = epilogue_table()
        #: product -> the configs the library has for it (config_for falls back from others)
        self.built = {p: set(ops.configs(p)) for p in ("fwd", "dx", "dw", "dw_acc")}
        #: the fused SwiGLU backward + MVUE kernel (FusedActivationGradPrune); not in older builds
        self.swiglu_grad = own_ops.has_swiglu_grad_mvue()

    # -- fused-epilogue capabilities (sparse24_jax.backend) ------------------
    _FUSED_KINDS = ("gelu",)

    def linear_activation_kinds(self) -> tuple[str, ...]:
        return self._FUSED_KINDS if self.epilogue_configs else ()

    def linear_activation_grad_kinds(self) -> tuple[str, ...]:
        return self._FUSED_KINDS if self.epilogue_configs else ()

    # -- FFN: SwiGLU's backward + MVUE (sparse24_jax.backend.FusedActivationGradPrune) --
    def activation_grad_prune_kinds(self) -> tuple[str, ...]:
        # GELU's backward is in the input-gradient epilogue (matmul_dx_activation_grad)
        return ("swiglu",) if self.swiglu_grad else ()

    def activation_grad_prune(self, kind: str, da: Array, z: Array, key: Array) -> tuple[Array, CutlassGrad]:
        """``(dZ, prune_grad(key, dZ))`` with ``dZ`` SwiGLU's backward of ``da`` at ``z = [x |
        gate]``, in one kernel (:func:`.own_ops.swiglu_grad_mvue_compress`): the compressed
        pair is ``prune_grad``'s for that ``dZ``, byte for byte. Other kinds, F not a multiple
        of 64 or dtypes other than bf16 run the same math unfused."""
        if z.ndim != 2 or da.ndim != 2:
            raise ValueError(f"dA and Z must be 2-D (M, features), got {tuple(da.shape)} and {tuple(z.shape)}")
        m, h = z.shape
        bf = jnp.dtype(jnp.bfloat16)
        if (kind != "swiglu" or not self.swiglu_grad or (h // 2) % _ALIGN
                or jnp.dtype(da.dtype) != bf or jnp.dtype(z.dtype) != bf):
            from sparse24_jax.ffn import activation_vjp

            dz = activation_vjp(kind, z, da)
            return dz, self.prune_grad(key, dz)
        mp = _padded(m)
        # zero token rows give zero dZ rows: the padding adds nothing to dW
        dz, values, meta = own_ops.swiglu_grad_mvue_compress(own_ops.seed_from_key(key), _pad_rows(da, mp),
                                                             _pad_rows(z, mp))
        return (dz if mp == m else dz[:m]), CutlassGrad(values, meta, None, h, mp)

    def _epilogue_config(self, product: str, n: int, k: int) -> str:
        if not self.epilogue_configs:
            raise ValueError(
                "this CUTLASS library has no fused epilogues: rebuild it (python -m "
                "sparse24_jax_kernels.cutlass.build) or call the unfused path (fused=False)")
        for cfg in (self.epilogue_table.get((n, k), {}).get(product),
                    config_for(product, n, k, table=self.gemm_table)):
            if cfg in self.epilogue_configs:
                return cfg
        return self.epilogue_configs[0]

    def _config(self, product: str, n: int, k: int) -> str:
        return config_for(product, n, k, self.built[product], self.gemm_table)

    def _check_kind(self, kind: str) -> None:
        if kind not in self._FUSED_KINDS:
            raise ValueError(f"backend 'cutlass' fuses only {self._FUSED_KINDS} into its GEMM "
                             f"epilogues, not {kind!r}: use the unfused path (fused=False)")

    def matmul_fwd_activation(self, kind: str, x: jax.Array, w_op: CutlassWeight):
        """``(gelu(Z), gelu'(Z))``, ``Z = X @ W_s^T``, from one GEMM
        (:func:`.epilogue_ops.spmm_fwd_gelu`)."""
        self._check_kind(kind)
        self._check_x(x, w_op.k, "x")
        m = x.shape[0]
        mp = _padded(m)
        h, g = epilogue_ops.spmm_fwd_gelu(w_op.values, w_op.meta, _pad_rows(x, mp),
                                          config=self._epilogue_config("fwd", w_op.n, w_op.k))
        return (h, g) if mp == m else (h[:m], g[:m])

    def matmul_dx_activation_grad(self, kind: str, dy: jax.Array, w_op: CutlassWeight,
                                  g: jax.Array) -> jax.Array:
        """``(dY @ W_s) * G``, ``G = gelu'(Z1)``, from one GEMM
        (:func:`.epilogue_ops.spmm_dx_dgelu`); without a transposable W_s (S-STE)
        the dense product, then the factor in float32."""
        self._check_kind(kind)
        self._check_x(dy, w_op.n, "dY")
        if g.shape != (dy.shape[0], w_op.k) or jnp.dtype(g.dtype) != jnp.bfloat16:
            raise ValueError(f"G = gelu'(Z1) must be bfloat16 ({dy.shape[0]}, {w_op.k}) (tokens x the "
                             f"weight's K), got {g.dtype} {tuple(g.shape)}")
        if w_op.values_t is None:
            da = jnp.dot(dy, w_op.dense.astype(dy.dtype), preferred_element_type=jnp.float32)
            return (da * g.astype(jnp.float32)).astype(g.dtype)
        m = dy.shape[0]
        mp = _padded(m)
        dz = epilogue_ops.spmm_dx_dgelu(w_op.values_t, w_op.meta_t, _pad_rows(dy, mp), _pad_rows(g, mp),
                                        config=self._epilogue_config("dx", w_op.n, w_op.k))
        return dz if mp == m else dz[:m]

    # -- checks -------------------------------------------------------------
    def check(self, n: int, k: int, dtype: Any) -> None:
        dt = jnp.dtype(dtype)
        if dt not in _DTYPES:
            raise ValueError(
                f"backend 'cutlass' runs bfloat16 GEMMs only (its kernels are built for bf16), "
                f"not {dt}: cast the input (x.astype(jnp.bfloat16)) and use compute dtype "
                "bfloat16, or use backend='cusparselt' (bf16/fp16) or 'xla'"
            )
        bad = [f"{name}={v}" for name, v in (("N (out_features)", n), ("K (in_features)", k))
               if v <= 0 or v % _ALIGN]
        if bad:
            raise ValueError(
                f"backend 'cutlass' needs N and K multiples of {_ALIGN} (CUTLASS's metadata "
                f"atom rows, our compressors' tiles), got {', '.join(bad)}: pad the layer's "
                f"features to a multiple of {_ALIGN}, or use backend='xla'"
            )

    @staticmethod
    def _check_x(x: jax.Array, k: int, what: str) -> None:
        if x.ndim != 2 or x.shape[1] != k:
            raise ValueError(f"{what} must be (M, {k}), got shape {tuple(x.shape)}")
        if jnp.dtype(x.dtype) != jnp.bfloat16:
            raise ValueError(f"{what} is {x.dtype}; backend 'cutlass' takes bfloat16: cast it")

    # -- weight -------------------------------------------------------------
    def prepare_weight(self, w_s: jax.Array, *, transposable: bool) -> CutlassWeight:
        if w_s.ndim != 2:
            raise ValueError(f"W_s must be 2-D (N, K), got shape {tuple(w_s.shape)}")
        n, k = w_s.shape
        self.check(n, k, w_s.dtype)
        values, meta = ops.compress(w_s)
        if transposable:
            values_t, meta_t = ops.compress(w_s.T)
            return CutlassWeight(values, meta, values_t, meta_t, None, n, k)
        return CutlassWeight(values, meta, None, None, w_s, n, k)

    def prepare_projected(self, w: jax.Array, mask: jax.Array | None, beta: jax.Array | None, *,
                          method: str, dtype: Any) -> CutlassWeight:
        """SR-STE / STE from the float32 master weight in one pass (our
        projection kernel); byte for byte ``prepare_weight(where(mask, w, 0)
        .astype(bf16), transposable=True)``. S-STE and other dtypes: two passes."""
        dt = jnp.dtype(dtype)
        if (method in ("srste", "ste") and mask is not None and w.ndim == 2
                and jnp.dtype(w.dtype) == jnp.float32 and dt in _DTYPES):
            n, k = w.shape
            self.check(n, k, dt)
            values, meta, values_t, meta_t = own_ops.project_compress(w, mask)
            return CutlassWeight(values, meta, values_t, meta_t, None, n, k)
        from sparse24_jax import project_weight

        w_s, transposable = project_weight(w, mask, beta, method=method)
        return self.prepare_weight(w_s.astype(dt), transposable=transposable)

    def matmul_fwd(self, x: jax.Array, w_op: CutlassWeight) -> jax.Array:
        self._check_x(x, w_op.k, "x")
        m = x.shape[0]
        mp = _padded(m)
        z = ops.spmm("fwd", w_op.values, w_op.meta, _pad_rows(x, mp),
                     config=self._config("fwd", w_op.n, w_op.k))
        return z if mp == m else z[:m]

    def matmul_dx(self, dz: jax.Array, w_op: CutlassWeight) -> jax.Array:
        self._check_x(dz, w_op.n, "dZ")
        if w_op.values_t is None:
            return jnp.dot(dz, w_op.dense.astype(dz.dtype),
                           preferred_element_type=jnp.float32).astype(dz.dtype)
        m = dz.shape[0]
        mp = _padded(m)
        dx = ops.spmm("dx", w_op.values_t, w_op.meta_t, _pad_rows(dz, mp),
                      config=self._config("dx", w_op.n, w_op.k))
        return dx if mp == m else dx[:m]

    # -- gradient -----------------------------------------------------------
    def prune_grad(self, key: jax.Array | None, dz: jax.Array) -> CutlassGrad:
        if dz.ndim != 2:
            raise ValueError(f"dZ must be 2-D (M, N), got shape {tuple(dz.shape)}")
        m, n = dz.shape
        if key is None:
            return CutlassGrad(None, None, dz, n, m)
        self.check(n, _ALIGN, dz.dtype)
        mp = _padded(m)
        values, meta = own_ops.mvue_compress(own_ops.seed_from_key(key), _pad_rows(dz, mp))
        return CutlassGrad(values, meta, None, n, mp)

    def _dw_operand(self, g: CutlassGrad, x: jax.Array) -> tuple[jax.Array, str]:
        """X as a pruned ``g``'s weight-gradient GEMM takes it (bf16, tokens padded as
        ``g``'s) and the layer's dw config."""
        if x.ndim != 2 or _padded(x.shape[0]) != g.mp:
            raise ValueError(
                f"x has shape {tuple(x.shape)} but the pruned gradient has {g.mp} (padded) tokens")
        return _pad_rows(x.astype(jnp.bfloat16), g.mp), self._config("dw", g.n, x.shape[1])

    def matmul_dw(self, g: CutlassGrad, x: jax.Array) -> jax.Array:
        if g.values is None:
            return jnp.dot(g.dense.T, x.astype(g.dense.dtype), preferred_element_type=jnp.float32)
        xp, config = self._dw_operand(g, x)
        return ops.spmm("dw", g.values, g.meta, xp, config=config)

    def matmul_dw_acc(self, g: CutlassGrad, x: jax.Array, acc: jax.Array) -> jax.Array:
        """``acc + matmul_dw(g, x)`` (sparse24_jax.backend.AccumulatingWeightGrad): for a
        pruned ``g``, the running sum read as the source C of the weight-gradient GEMM's
        epilogue and updated in place (:func:`.ops.spmm_dw_acc`, the instance of the
        layer's dw config). A dense ``g`` (no MVUE), a library without that instance or a
        sum other than float32: ``matmul_dw`` and an add (XLA folds it into a dense GEMM)."""
        if g.values is not None and jnp.dtype(acc.dtype) == jnp.float32:
            xp, config = self._dw_operand(g, x)
            if config in self.built["dw_acc"]:
                return ops.spmm_dw_acc(g.values, g.meta, xp, acc, config=config)
        return acc + self.matmul_dw(g, x).astype(acc.dtype)

    # -- mask ---------------------------------------------------------------
    def transposable_mask(self, w: jax.Array) -> jax.Array:
        from sparse24_jax import transposable_mask_24

        return transposable_mask_24(w)
