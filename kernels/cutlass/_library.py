"""The CUTLASS library from Python: loading, FFI registration, its instance table.

``load_library()`` builds the library on first use (:mod:`.build`, or takes
``$SPARSE24_CUTLASS_KERNELS``) and loads it with ctypes (no GPU needed for
that). ``load()`` also registers its XLA FFI handlers for the CUDA platform,
which needs a CUDA GPU visible to JAX.
"""

from __future__ import annotations

import ctypes
import threading

__all__ = [
    "PREFIX",
    "TARGETS",
    "compressed_sizes",
    "instances",
    "load",
    "load_library",
    "workspace_bytes",
]

PREFIX = "sparse24_cutlass_"
TARGETS = {PREFIX + "gemm": "s24c_gemm", PREFIX + "compress": "s24c_compress",
           PREFIX + "own_project": "s24c_own_project", PREFIX + "own_mvue": "s24c_own_mvue"}

_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_REGISTERED = False


def load_library() -> ctypes.CDLL:
    """Build if needed and ctypes-load the library."""
    global _LIB
    with _LOCK:
        if _LIB is None:
            from .build import library_path

            path = library_path()
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as err:
                raise RuntimeError(
                    f"could not load {path}: {err}. Rebuild with "
                    "`python -m sparse24_jax_kernels.cutlass.build --force`, or use the "
                    "cuSPARSELt or XLA path"
                ) from err
            lib.s24c_num_gemms.restype = ctypes.c_int
            lib.s24c_gemm_info.restype = ctypes.c_int
            lib.s24c_gemm_info.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                           ctypes.POINTER(ctypes.c_int)]
            lib.s24c_gemm_workspace_bytes.restype = ctypes.c_int64
            lib.s24c_gemm_workspace_bytes.argtypes = [ctypes.c_char_p] + [ctypes.c_int] * 5
            lib.s24c_compressed_sizes.restype = ctypes.c_int
            lib.s24c_compressed_sizes.argtypes = [ctypes.c_int, ctypes.c_int,
                                                  ctypes.POINTER(ctypes.c_int64)]
            _LIB = lib
        return _LIB


def _has_cuda_device() -> bool:
    import jax

    try:
        return any(d.platform == "gpu" for d in jax.devices("gpu"))
    except RuntimeError:
        return False


def load() -> ctypes.CDLL:
    """Load the library and register its FFI targets for CUDA (once)."""
    global _REGISTERED
    if not _has_cuda_device():
        raise RuntimeError(
            "the CUTLASS kernels need an NVIDIA Hopper GPU visible to JAX (jax[cuda13]); "
            "none found: use the XLA path (runs anywhere)"
        )
    lib = load_library()
    with _LOCK:
        if not _REGISTERED:
            import jax

            for target, symbol in TARGETS.items():
                jax.ffi.register_ffi_target(
                    target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="CUDA"
                )
            _REGISTERED = True
    return lib


def instances() -> list[dict]:
    """The library's GEMM instances: name, product, tile, cluster, schedule."""
    lib = load_library()
    out = []
    names = {0: "fwd", 1: "dx", 2: "dw"}
    for i in range(lib.s24c_num_gemms()):
        buf = ctypes.create_string_buffer(128)
        info = (ctypes.c_int * 7)()
        if lib.s24c_gemm_info(i, buf, 128, info) != 0:
            continue
        out.append({
            "config": buf.value.decode(),
            "product": names.get(info[0], str(info[0])),
            "tile": (info[1], info[2], info[3]),
            "cluster": (info[4], info[5]),
            "schedule": "coop" if info[6] == 0 else "pingpong",
        })
    return out


def workspace_bytes(config: str, product: int, m: int, n: int, k: int) -> int:
    """Workspace of (config, product) for CUTLASS's problem (m, n, k).

    Raises ValueError when the build has no such instance or CUTLASS cannot
    implement the problem.
    """
    ws = int(load_library().s24c_gemm_workspace_bytes(config.encode(), product, m, n, k, 0))
    if ws == -1:
        known = sorted({i["config"] for i in instances()})
        raise ValueError(f"no CUTLASS instance {config!r} in this build; built: {known}")
    if ws == -2:
        raise ValueError(f"CUTLASS config {config!r} cannot implement the problem "
                         f"(Mc, Nc, Kc) = ({m}, {n}, {k}) (its can_implement failed)")
    return ws


def compressed_sizes(rows: int, cols: int) -> tuple[int, int, int]:
    """(value bytes, metadata bytes, compressor workspace bytes) of a rows x cols operand."""
    out = (ctypes.c_int64 * 3)()
    if load_library().s24c_compressed_sizes(rows, cols, out) != 0:
        raise ValueError(f"bad compressed operand shape ({rows}, {cols})")
    return int(out[0]), int(out[1]), int(out[2])
