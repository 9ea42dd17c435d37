"""Random test matrices, shared by the CPU and GPU cuSPARSELt tests: 2:4 ones,
and float32 master weights with the awkward cases of a projection."""

import numpy as np


def random_24(rng, m, k, dtype, zero_frac=0.1):
    """A random (m, k) matrix, 2:4 along k, with some extra zeros and some -0."""
    x = rng.standard_normal((m, k)).astype(np.float32)
    g = np.abs(x).reshape(m, k // 4, 4)
    top = np.argsort(-g, axis=-1, kind="stable")[..., :2]
    keep = np.zeros(g.shape, bool)
    np.put_along_axis(keep, top, True, -1)
    keep &= rng.random(keep.shape) > zero_frac
    neg_zero = np.where(rng.random((m, k)) < 0.5, -0.0, 0.0).astype(np.float32)
    return np.where(keep.reshape(m, k), x, neg_zero).astype(dtype)


def awkward_f32(seed: int, n: int, k: int) -> np.ndarray:
    """Random float32 weights with the awkward cases of a projection, in groups
    of 4 along K: ties (four equal magnitudes, two equal largest), exact zeros
    and -0.0, magnitudes that vanish or overflow in float16, and values exactly
    halfway between two bfloat16 or float16 numbers (round to even). No float32
    subnormals: XLA:CPU flushes them to zero (XLA:GPU and our kernels do not)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    grp = w.reshape(-1, 4)  # a view: groups along K
    pick = rng.random(grp.shape[0])
    grp[pick < 0.05] = [0.5, -0.5, 0.5, -0.5]
    sel = (pick >= 0.05) & (pick < 0.10)
    grp[sel, 1] = -grp[sel, 3]
    sel = (pick >= 0.10) & (pick < 0.15)
    grp[sel, :2] = [0.0, -0.0]
    grp[(pick >= 0.15) & (pick < 0.18)] = -0.0
    grp[(pick >= 0.18) & (pick < 0.21)] *= 1e-7  # float16: subnormal or zero
    grp[(pick >= 0.21) & (pick < 0.23)] *= 1e5  # float16: inf
    bits = w.view(np.uint32)
    half = np.where(np.abs(w) > 1e-30, rng.random(w.shape), 1.0)  # zeros stay zeros, not subnormals
    bits[half < 0.03] = (bits[half < 0.03] & 0xFFFF0000) | 0x8000  # bf16 halfway
    sel = (half >= 0.03) & (half < 0.06)
    bits[sel] = (bits[sel] & 0xFFFFE000) | 0x1000  # fp16 halfway
    return w
