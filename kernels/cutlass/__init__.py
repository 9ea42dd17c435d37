"""CUTLASS 3.x sm90 sparse GEMM backend (issue #19).

* :mod:`.layout` -- numpy reference of CUTLASS's compressed 2:4 operand format
  (values + metadata), see LAYOUT.md.

Importing this package needs neither a GPU nor nvcc.
"""
