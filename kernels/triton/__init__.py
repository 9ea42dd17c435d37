"""Triton kernels for 2:4 sparse training, called from JAX via jax-triton.

One concept per module, each a ``@triton.jit`` kernel plus a thin JAX wrapper:

=====================  ==============================================  ===========================================
module                 kernel                                          pure-JAX reference twin
=====================  ==============================================  ===========================================
``mask_search``        transposable 2:4 mask, 90 patterns per block    ``sparse24_jax.transposable_mask_24``
``compress``           prune + pack ``W`` or ``W.T`` (2:4 by mask),    ``sparse24_jax.compress_24``
                       or both from one read (``compress_both``)
``mvue``               MVUE 2:4 of ``dZ.T`` fused with packing         ``sparse24_jax.mvue_24`` + ``compress_24``
``soft_threshold``     S-STE ``beta * S(W)`` fused with packing        ``sparse24_jax.soft_threshold_24`` + pack
``gated``              GEGLU / SwiGLU forward + backward (custom_vjp)  ``x * jax.nn.gelu(g)`` / ``x * silu(g)``
``matmul``             2:4 GEMM on the packed operand                  ``decompress_24(...) @ b``
``backend``            :class:`TritonBackend` (``get_backend("triton")``)  ``sparse24_jax.xla_backend``
=====================  ==============================================  ===========================================

Nothing is imported here: ``triton`` is imported by the kernel modules and
``jax_triton`` only when a JAX wrapper first runs (it needs a CUDA jaxlib), so
the raw kernels can be tested on CPU under ``TRITON_INTERPRET=1``.
See README.md beside this file for formats, limits and measured speed.
"""
