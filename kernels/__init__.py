"""sparse24-jax's GPU kernels, installed as ``sparse24_jax_kernels``.

Subpackages (each imported on first use by :func:`sparse24_jax.get_backend`):

* ``triton``: Triton kernels called through jax-triton (backend ``"triton"``).
* ``cusparselt``: cuSPARSELt through the XLA FFI (backend ``"cusparselt"``).

This file imports nothing, so importing the package never needs a GPU,
Triton or CUDA.
"""
