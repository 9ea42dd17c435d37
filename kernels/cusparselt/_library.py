"""The cuSPARSELt library from Python: loading, FFI registration, counters.

``load_library()`` builds the library on first use (:mod:`.build`) and loads
it with ctypes; it needs no GPU (the CPU tests' host emulation uses it).
``load()`` also registers its XLA FFI handlers for the CUDA platform, which
needs a CUDA GPU visible to JAX. Also here: the codes the library's calls take
(dtype codes, the compressed operand's shape), shared by :mod:`.ops` and
:mod:`.emulation`.
"""

from __future__ import annotations

import ctypes

import numpy as np

from .._loader import FfiLibrary, env_flag

__all__ = [
    "ACT_KINDS",
    "DT_CODES",
    "PREFIX",
    "PROJECT_MODES",
    "TARGETS",
    "act_grad_shape",
    "dt_code",
    "dtype_name",
    "load",
    "load_library",
    "operand_shape",
    "project_mode",
    "stats",
    "version",
]

PREFIX = "sparse24_cusparselt_"
#: FFI target name -> exported symbol
TARGETS = {
    PREFIX + "spmm": "s24_spmm",
    PREFIX + "compress": "s24_compress",
    PREFIX + "compress_masked": "s24_compress_masked",
    PREFIX + "mvue_compress": "s24_mvue_compress",
    PREFIX + "project_compress": "s24_project_compress",
    PREFIX + "lib_compress": "s24_lib_compress",
    PREFIX + "act_grad_mvue": "s24_act_grad_mvue",
}

def _declare(lib: ctypes.CDLL) -> None:
    lib.s24_cusparselt_version.restype = ctypes.c_int
    for name in ("s24_num_plans", "s24_num_searches", "s24_num_matmuls"):
        getattr(lib, name).restype = ctypes.c_int64
    lib.s24_compressed_bytes.restype = ctypes.c_int64
    lib.s24_compressed_bytes.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.s24_emulate_compress.restype = ctypes.c_int
    lib.s24_emulate_compress.argtypes = [
        ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
    ]
    lib.s24_emulate_project.restype = ctypes.c_int
    lib.s24_emulate_project.argtypes = [
        ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
    ]
    lib.s24_emulate_act_grad_mvue.restype = ctypes.c_int
    lib.s24_emulate_act_grad_mvue.argtypes = [
        ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
    ]


_LIBRARY = FfiLibrary(
    f"{__package__}.build",
    fallback="use backend='xla' or 'triton'",
    no_gpu="the cusparselt backend needs an NVIDIA GPU visible to JAX (jax[cuda13]); "
           "none found: use backend='xla' (runs anywhere)",
    declare=_declare,
)


def load_library() -> ctypes.CDLL:
    """Build if needed and ctypes-load the library (no GPU needed for this)."""
    return _LIBRARY.library()


def load() -> ctypes.CDLL:
    """Load the library and register its FFI targets for CUDA (once).

    Raises RuntimeError (naming the fallback backends) when JAX has no CUDA
    GPU, or the library cannot be built or loaded. With
    $SPARSE24_CUSPARSELT_CMD_BUFFER set, the matmul's target is the handler that
    CUDA graphs may capture (s24_spmm_graph).
    """
    graphs = env_flag("SPARSE24_CUSPARSELT_CMD_BUFFER")
    targets = dict(TARGETS)
    if graphs:
        targets[PREFIX + "spmm"] = "s24_spmm_graph"
    return _LIBRARY.register(targets)


def version() -> int:
    """cuSPARSELt's version, major*1000 + minor*100 + patch."""
    return int(load_library().s24_cusparselt_version())


def stats() -> dict[str, int]:
    """Counters of the library: plans built, algorithm searches, matmuls."""
    lib = load_library()
    return {
        "plans": int(lib.s24_num_plans()),
        "searches": int(lib.s24_num_searches()),
        "matmuls": int(lib.s24_num_matmuls()),
    }


# dtype codes of the library (csrc/layout.cuh's kBF16 ... kE5M2): the
# compression kernels' emulation and s24_spmm's a_dtype attribute
DT_CODES = {"bfloat16": 0, "float16": 1, "float8_e4m3fn": 2, "float8_e5m2": 3}


def dtype_name(dtype) -> str:
    """``np.dtype(dtype).name``, or the repr of what numpy does not take."""
    try:
        return np.dtype(dtype).name
    except TypeError:
        return repr(dtype)


def dt_code(dtype, what: str) -> int:
    """The library's code of ``dtype``; ValueError naming ``what`` otherwise."""
    name = dtype_name(dtype)
    if name not in DT_CODES:
        raise ValueError(f"{what} must be one of {', '.join(DT_CODES)}, not {name}")
    return DT_CODES[name]


def operand_shape(a, transpose: bool) -> tuple[int, int]:
    """(m, k) of the compressed operand A: ``a``'s shape, or its transpose's."""
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {tuple(a.shape)}")
    r, c = a.shape
    return (c, r) if transpose else (r, c)


#: projections of s24_project_compress (csrc/project.h's kProjectMask, kProjectSoft)
PROJECT_MODES = {"mask": 0, "soft": 1}


def project_mode(w, mask, beta, dtype, transpose_too: bool) -> tuple[str, int]:
    """The checks of the one-pass projection (``ops.project_compress`` and its
    emulation): its mode ("mask" or "soft") and the output's dtype code, or a
    ValueError naming the fix."""
    if w.ndim != 2 or dtype_name(w.dtype) != "float32":
        raise ValueError(
            f"project_compress takes the float32 master weight (N, K), got "
            f"{dtype_name(w.dtype)} {tuple(w.shape)}: pass it in float32, or project it and call compress"
        )
    n, k = w.shape
    if n % 64 or k % 64:
        raise ValueError(
            f"project_compress needs N and K multiples of 64, got ({n}, {k}): pad the layer's "
            "features, or project the weight and call compress"
        )
    name = dtype_name(dtype)
    if name not in ("bfloat16", "float16"):
        raise ValueError(
            f"project_compress writes bfloat16 or float16, not {name}: for fp8, project the "
            "weight and call compress"
        )
    if (mask is None) == (beta is None):
        raise ValueError("project_compress takes mask= (SR-STE, STE) or beta= (S-STE): exactly one of them")
    if mask is not None:
        if tuple(mask.shape) != (n, k) or dtype_name(mask.dtype) not in ("bool", "uint8", "int8"):
            raise ValueError(
                f"mask must be bool with the weight's shape ({n}, {k}), got "
                f"{dtype_name(mask.dtype)} {tuple(mask.shape)}"
            )
        return "mask", DT_CODES[name]
    if transpose_too:
        raise ValueError(
            "the soft threshold's W_s^T is not 2:4: call project_compress(w, beta=beta, "
            "dtype=..., transpose_too=False), which returns the dense W_s for the input gradient"
        )
    if int(np.prod(np.shape(beta))) != 1:
        raise ValueError(f"beta must be a scalar, got shape {tuple(np.shape(beta))}")
    return "soft", DT_CODES[name]


#: activations of the fused backward + MVUE kernels (csrc/act_grad.h's kActGelu, kActSwiglu)
ACT_KINDS = {"gelu": 0, "swiglu": 1}


def act_grad_shape(kind: str, da, z) -> tuple[int, int]:
    """(tokens M, columns of z) of a fused activation-backward + MVUE call,
    after checking what the kernels take; ValueError naming the fix otherwise.
    gelu: ``da`` and ``z`` (M, H); swiglu: ``z = [x | gate]`` (M, 2F), ``da`` (M, F)."""
    if kind not in ACT_KINDS:
        raise ValueError(f"no fused activation-gradient kernel for {kind!r}: the kinds are "
                         f"{', '.join(ACT_KINDS)} (others: sparse24_ffn(..., fused=False))")
    if da.ndim != 2 or z.ndim != 2:
        raise ValueError(f"{kind}: da and z must be 2-D (tokens, features), got shapes "
                         f"{tuple(da.shape)} and {tuple(z.shape)}")
    dn, zn = dtype_name(da.dtype), dtype_name(z.dtype)
    if dn != zn or zn not in ("bfloat16", "float16"):
        raise ValueError(f"{kind}: da and z must both be bfloat16 or both float16, got {dn} and "
                         f"{zn}: cast them to the compute dtype")
    m, cols = z.shape
    want = (m, cols // 2) if kind == "swiglu" else (m, cols)
    if tuple(da.shape) != want or (kind == "swiglu" and cols % 2):
        form = "z = [x | gate] is (M, 2F) and da (M, F)" if kind == "swiglu" else "da and z are (M, H)"
        raise ValueError(f"{kind}: {form}, got da {tuple(da.shape)} and z {tuple(z.shape)}")
    if m % 64:
        raise ValueError(f"{kind}: {m} tokens, not a multiple of 64: pad them with zero rows "
                         "(CusparseltBackend.activation_grad_prune does)")
    feat, name = (cols // 2, "F (each half of z)") if kind == "swiglu" else (cols, "H")
    if feat % 64:
        raise ValueError(f"{kind}: {name} = {feat} is not a multiple of 64: pad the layer, or "
                         "run the unfused backward (sparse24_ffn(..., fused=False))")
    if cols * (m // 4) >= 1 << 32:
        raise ValueError(f"{kind}: MVUE of a {cols} x {m} matrix has 2^32 groups or more (the RNG "
                         "counter is 32-bit): split the tokens into micro-batches")
    return m, cols
