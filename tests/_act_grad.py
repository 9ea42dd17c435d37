"""The bound between the fused activation-backward kernels' dZ and its pure-JAX
twin, shared by the CPU (emulation) and GPU cuSPARSELt tests."""

import numpy as np


def assert_close_to_twin(kind, dz, want, da, z, min_equal):
    """``dz`` (numpy, 16-bit) within one ulp of the twin ``want``, plus
    2^-20 |dA| (|dA| max(1, |x|) in the gate half of swiglu): in the GELU
    tail (z < -4) float32's 1 + erf(z / sqrt 2) cancels, and both are
    accurate only in absolute terms (erf: the twin's XLA 3e-7, the kernel's
    rational 4.5e-7, half that in Phi). At least ``min_equal`` of the
    elements exactly equal."""
    k, t = dz.astype(np.float32), want.astype(np.float32)
    ulp = np.spacing(np.maximum(np.abs(k), np.abs(t)).astype(dz.dtype)).astype(np.float32)
    scale = np.abs(da.astype(np.float32))
    if kind == "swiglu":
        f = da.shape[1]
        scale = np.concatenate([scale, scale * np.maximum(1, np.abs(z[:, :f].astype(np.float32)))], 1)
    bad = np.abs(k - t) > ulp + 2.0**-20 * scale
    i = np.argmax(bad)
    assert not bad.any(), (f"{bad.sum()} elements off, e.g. z={z.reshape(-1)[i]}: "
                           f"{k.reshape(-1)[i]} vs twin {t.reshape(-1)[i]}")
    assert np.mean(k == t) >= min_equal, f"only {np.mean(k == t):.4%} equal to the twin"
