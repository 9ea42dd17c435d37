"""sparse24-jax's GPU kernels, installed as ``sparse24_jax_kernels``.

Subpackages (each imported on first use by :func:`sparse24_jax.get_backend`):

* ``triton``: Triton kernels called through jax-triton (backend ``"triton"``).
* ``cusparselt``: cuSPARSELt through the XLA FFI (backend ``"cusparselt"``).
* ``cutlass``: CUTLASS sm90 sparse GEMMs through the XLA FFI (backend ``"cutlass"``).

Shared by the two FFI libraries: ``_build`` (finding nvcc, the cache folders) and
``_loader`` (one ctypes load per process, the load error, FFI registration).

This file imports nothing, so importing the package never needs a GPU,
Triton or CUDA.
"""
