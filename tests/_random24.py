"""Random 2:4 test matrices, shared by the CPU and GPU cuSPARSELt tests."""

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
