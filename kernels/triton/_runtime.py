"""The one place that imports jax_triton (lazily: it needs a CUDA jaxlib)."""

from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=None)
def jt():
    """The ``jax_triton`` module, imported on first use.

    jax-triton 0.3.1 sets ``TRITON_CACHE_DIR=""`` on import, which makes every
    process recompile every kernel: point it back at a real directory.
    """
    prev = os.environ.get("TRITON_CACHE_DIR")
    cache = prev or os.path.join(os.path.expanduser("~"), ".cache", "sparse24_jax", "triton")
    try:
        import jax_triton  # noqa: PLC0415  (lazy on purpose)
    finally:
        # also when the import fails (no CUDA jaxlib): it has already blanked
        # the variable, which would break every later triton compile
        os.makedirs(cache, exist_ok=True)
        os.environ["TRITON_CACHE_DIR"] = cache
    return jax_triton


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
