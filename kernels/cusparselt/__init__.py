"""cuSPARSELt backend: real 2:4 sparse tensor-core GEMMs from JAX via XLA FFI.

* :mod:`.build` -- ``python -m sparse24_jax_kernels.cusparselt.build`` compiles
  the CUDA library (also run automatically on first use when nvcc is present).
* :mod:`.layout` -- numpy reference of cuSPARSELt's compressed 2:4 format.
* :mod:`.ops` -- the FFI operations (compression kernels, sparse matmul), and
  the import path of the modules below.
* :mod:`._library` -- loading the library (ctypes), registering its FFI
  targets, its version and counters.
* :mod:`.emulation` -- the compression kernels' code run on the CPU.
* :mod:`.fp8_probe` -- whether cuSPARSELt runs an fp8 GEMM pair here.
* :mod:`.backend` -- :class:`CusparseltBackend`, the ``"cusparselt"`` backend.

Importing this package needs neither a GPU nor nvcc; using the backend does.
"""

from . import layout

__all__ = ["CusparseltBackend", "layout"]


def __getattr__(name):
    if name == "CusparseltBackend":
        from .backend import CusparseltBackend

        return CusparseltBackend
    raise AttributeError(name)
