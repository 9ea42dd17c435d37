"""The CUTLASS library from Python: loading, FFI registration, its instance table.

``load_library()`` builds the library on first use (:mod:`.build`, or takes
``$SPARSE24_CUTLASS_KERNELS``) and loads it with ctypes (no GPU needed for
that). ``load()`` also registers its XLA FFI handlers for the CUDA platform,
which needs a CUDA GPU visible to JAX. The targets get the handlers' twins that
are marked command-buffer compatible, so that XLA captures them into its CUDA
graphs instead of splitting its graphs at every CUTLASS call (290-390 per GPT-2
774M step): the step ran ~1% faster with them, twice on H200s
(docs/BENCHMARKS.md section 11), and their results are the plain handlers' bytes
(tests/gpu/test_cutlass_cmd_buffer.py). ``$SPARSE24_CUTLASS_CMD_BUFFER=0`` (read
at the first load in the process) registers the plain handlers; a library built
before the twins gets its plain handlers unless the variable asks for the twins.
"""

from __future__ import annotations

import ctypes
import os

from .._loader import FfiLibrary, env_flag, has_cuda_device

__all__ = [
    "LIBRARY",
    "PREFIX",
    "TARGETS",
    "compressed_sizes",
    "instance_table",
    "instances",
    "load",
    "load_library",
    "targets",
    "workspace_bytes",
]

PREFIX = "sparse24_cutlass_"
TARGETS = {PREFIX + "gemm": "s24c_gemm", PREFIX + "compress": "s24c_compress",
           PREFIX + "own_project": "s24c_own_project", PREFIX + "own_mvue": "s24c_own_mvue"}


def _declare(lib: ctypes.CDLL) -> None:
    lib.s24c_num_gemms.restype = ctypes.c_int
    lib.s24c_gemm_info.restype = ctypes.c_int
    lib.s24c_gemm_info.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                   ctypes.POINTER(ctypes.c_int)]
    lib.s24c_gemm_workspace_bytes.restype = ctypes.c_int64
    lib.s24c_gemm_workspace_bytes.argtypes = [ctypes.c_char_p] + [ctypes.c_int] * 5
    lib.s24c_compressed_sizes.restype = ctypes.c_int
    lib.s24c_compressed_sizes.argtypes = [ctypes.c_int, ctypes.c_int,
                                          ctypes.POINTER(ctypes.c_int64)]
    if hasattr(lib, "s24c_num_epis"):  # fused epilogues (epilogue_ops); not in older builds
        lib.s24c_num_epis.restype = ctypes.c_int
        lib.s24c_epi_info.restype = ctypes.c_int
        lib.s24c_epi_info.argtypes = lib.s24c_gemm_info.argtypes
        lib.s24c_epi_workspace_bytes.restype = ctypes.c_int64
        lib.s24c_epi_workspace_bytes.argtypes = lib.s24c_gemm_workspace_bytes.argtypes


#: the library (epilogue_ops registers its fused handler through it too)
LIBRARY = FfiLibrary(
    f"{__package__}.build",
    fallback="use the cuSPARSELt or XLA path",
    no_gpu="the CUTLASS kernels need an NVIDIA Hopper GPU visible to JAX (jax[cuda13]); "
           "none found: use the XLA path (runs anywhere)",
    declare=_declare,
)


def load_library() -> ctypes.CDLL:
    """Build if needed and ctypes-load the library."""
    return LIBRARY.library()


#: "0" / "false": register the plain handlers; unset or anything else: their
#: command-buffer-compatible twins
CMD_BUFFER_ENV = "SPARSE24_CUTLASS_CMD_BUFFER"
#: the suffix of a handler symbol's command-buffer-compatible twin (csrc/ffi_util.h S24C_DEFINE_HANDLER_SYMBOLS)
GRAPH_SUFFIX = "_graph"


def command_buffers() -> bool:
    """Whether to register the command-buffer-compatible handlers: yes unless
    ``$SPARSE24_CUTLASS_CMD_BUFFER`` is set to "", "0" or "false"."""
    return CMD_BUFFER_ENV not in os.environ or env_flag(CMD_BUFFER_ENV)


def targets(names: dict[str, str], cmd_buffer: bool | None = None) -> dict[str, str]:
    """FFI target -> handler symbol for ``names``: as given, or (``cmd_buffer``; default
    :func:`command_buffers`) each symbol's command-buffer-compatible twin. The target
    names stay the same, so the callers' custom calls do not change."""
    if cmd_buffer is None:
        cmd_buffer = command_buffers()
    return {t: sym + GRAPH_SUFFIX if cmd_buffer else sym for t, sym in names.items()}


def register(names: dict[str, str]) -> ctypes.CDLL:
    """Register ``names`` (target -> handler symbol) through :func:`targets`. A library
    built before the command-buffer twins existed gets its plain handlers, or, when
    ``$SPARSE24_CUTLASS_CMD_BUFFER`` asks for the twins, a RuntimeError naming the fix."""
    cmd_buffer = command_buffers()
    if cmd_buffer and CMD_BUFFER_ENV not in os.environ and has_cuda_device():
        lib = LIBRARY.library()
        cmd_buffer = all(hasattr(lib, sym + GRAPH_SUFFIX) for sym in names.values())
    try:
        return LIBRARY.register(targets(names, cmd_buffer))
    except AttributeError as err:  # ctypes: no such symbol
        raise RuntimeError(
            f"this CUTLASS library lacks a handler ({err}): it was built before the "
            f"command-buffer-compatible handlers; rebuild it (python -m "
            f"sparse24_jax_kernels.cutlass.build) or set ${CMD_BUFFER_ENV}=0") from err


def load() -> ctypes.CDLL:
    """Load the library and register its FFI targets for CUDA (once)."""
    return register(TARGETS)


def instance_table(count, info, kind_key: str, kind_names: dict[int, str]) -> list[dict]:
    """Rows of one of the library's instance tables, read through its exports
    ``count()`` and ``info(i, name, buflen, ints)`` (csrc/gemm_ffi.h's InstanceInfo):
    config, ``kind_key`` (the product or epilogue, by ``kind_names``), tile, cluster,
    schedule."""
    out = []
    for i in range(count()):
        buf = ctypes.create_string_buffer(128)
        ints = (ctypes.c_int * 7)()
        if info(i, buf, 128, ints) != 0:
            continue
        out.append({
            "config": buf.value.decode(),
            kind_key: kind_names.get(ints[0], str(ints[0])),
            "tile": (ints[1], ints[2], ints[3]),
            "cluster": (ints[4], ints[5]),
            "schedule": "coop" if ints[6] == 0 else "pingpong",
        })
    return out


def instances() -> list[dict]:
    """The library's GEMM instances: name, product, tile, cluster, schedule."""
    lib = load_library()
    return instance_table(lib.s24c_num_gemms, lib.s24c_gemm_info, "product",
                          {0: "fwd", 1: "dx", 2: "dw", 3: "dw_acc"})


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
