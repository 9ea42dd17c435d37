"""CUTLASS 3.x sm90 structured-sparse GEMMs (Hopper 2:4) from JAX via XLA FFI.

* :mod:`.build` -- ``python -m sparse24_jax_kernels.cutlass.build`` compiles
  the CUDA library (cached objects per GEMM instance; also run on first use).
* :mod:`._library` -- loading it (ctypes), registering its FFI targets, its
  instance table.
* :mod:`.ops` -- the JAX operations: ``compress`` (CUTLASS's compressor) and
  ``spmm`` for the three products of a 2:4 linear (fwd, dx, dw).
* :mod:`.layout` -- numpy reference of CUTLASS's compressed 2:4 operand format
  (values + metadata), see LAYOUT.md.

Importing this package needs neither a GPU nor nvcc nor CUTLASS; using it does.
"""

__all__: list[str] = []
