"""The packed 2:4 format: kept values plus 2-bit positions.

For ``x`` of shape ``(..., K)`` and a 2:4 ``mask`` along the last axis:

* ``values``: shape ``(..., K/2)``, ``x``'s dtype. Each group of 4 contributes
  its two kept elements, in ascending position order.
* ``meta``: shape ``(..., ceil(K/8))``, uint8. Each group has a 4-bit code
  ``idx0 | idx1 << 2`` with ``idx0 < idx1`` its two positions (so (0,1)=0x4,
  (0,2)=0x8, (0,3)=0xC, (1,2)=0x9, (1,3)=0xD, (2,3)=0xE). Group ``g`` lives in
  byte ``g // 2``: the low nibble for even ``g``, the high nibble for odd ``g``.
  If K/4 is odd the last high nibble is padding, 0xE.

These are cuSPARSELt's per-group codes (docs/algorithms.md, section 7); cuSPARSELt's own buffer
interleaves them in a tiled order, which the GPU backends write themselves.

A group with fewer than two kept elements still stores two positions (as
cuSPARSELt does): ``idx0`` = first kept position among 0..2, else 2;
``idx1`` = next kept position after ``idx0``, else 3; a stored position that
is not kept holds 0. So ``decompress_24(*compress_24(x, mask)) ==
where(mask, x, 0)`` exactly, for any mask with at most two kept per group.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _checks
from .masks import _groups_last, _ungroup

__all__ = ["compress_24", "decompress_24"]


def _positions(m):
    """(idx0, idx1) per group of a boolean (..., G, 4) mask (see module doc)."""
    pos = jnp.arange(4)
    # first kept among 0..2, else 2
    first = jnp.where(m[..., :3], pos[:3], 4).min(-1)
    idx0 = jnp.where(first == 4, 2, first)
    # next kept after idx0, else 3
    nxt = jnp.where(m & (pos > idx0[..., None]), pos, 4).min(-1)
    idx1 = jnp.where(nxt == 4, 3, nxt)
    return idx0, idx1


def compress_24(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pack ``where(mask, x, 0)`` (2:4 along the last axis) into
    ``(values, meta)``; see the module docstring for the format. ``mask`` must
    keep at most 2 of every 4 (a group with more keeps only its first two)."""
    _checks.check_float(x, "x")
    _checks.check_bool(mask, "mask")
    _checks.check_same_shape(x, mask, "x", "mask")
    if x.ndim == 0:
        raise ValueError("x is a scalar; compress_24 packs the last axis of an array")
    k = x.shape[-1]
    _checks.check_multiple(k, 4, "the last axis of x")
    g = _groups_last(jnp.where(mask, x, jnp.zeros((), x.dtype)), -1)
    idx0, idx1 = _positions(_groups_last(mask, -1))
    idx = jnp.stack([idx0, idx1], -1)
    values = jnp.take_along_axis(g, idx, -1).reshape(*x.shape[:-1], k // 2)
    codes = (idx0 | (idx1 << 2)).astype(jnp.uint8)  # (..., G)
    if codes.shape[-1] % 2:
        pad = jnp.full((*codes.shape[:-1], 1), 0xE, jnp.uint8)
        codes = jnp.concatenate([codes, pad], -1)
    pairs = codes.reshape(*codes.shape[:-1], -1, 2)
    meta = pairs[..., 0] | (pairs[..., 1] << 4)
    return values, meta


def decompress_24(values: jax.Array, meta: jax.Array) -> jax.Array:
    """Inverse of :func:`compress_24`: the dense ``(..., K)`` array with
    ``K = 2 * values.shape[-1]``, zeros where nothing was kept."""
    _checks.check_float(values, "values")
    if meta.dtype != jnp.uint8:
        raise ValueError(f"meta has dtype {meta.dtype}; pass the uint8 array compress_24 returned")
    k = 2 * values.shape[-1]
    _checks.check_multiple(k, 4, "2 * values.shape[-1]")
    n_groups = k // 4
    if tuple(meta.shape) != (*values.shape[:-1], -(-n_groups // 2)):
        raise ValueError(
            f"meta has shape {tuple(meta.shape)}, values {tuple(values.shape)}: expected meta "
            f"{(*values.shape[:-1], -(-n_groups // 2))}; pass the pair compress_24 returned"
        )
    codes = jnp.stack([meta & 0xF, meta >> 4], -1).reshape(*meta.shape[:-1], -1)[..., :n_groups]
    idx0 = (codes & 3).astype(jnp.int32)
    idx1 = (codes >> 2).astype(jnp.int32)
    v = values.reshape(*values.shape[:-1], n_groups, 2)
    pos = jnp.arange(4)
    dense = jnp.where(pos == idx0[..., None], v[..., :1], jnp.zeros((), values.dtype))
    dense = jnp.where(pos == idx1[..., None], v[..., 1:], dense)
    return _ungroup(dense, -1, values.ndim)
