"""Build the cuSPARSELt FFI library: ``python -m sparse24_jax_kernels.cusparselt.build``.

One nvcc command compiles the units of ``csrc/`` (the ``.cu`` files with device
code, the ``.cc`` files host-only) against jaxlib's XLA FFI headers
(``jax.ffi.include_dir()``) and the headers of the installed
``nvidia-cusparselt`` wheel, links them and ``libcusparseLt.so.0`` from the
wheel (with an rpath) into ``libsparse24_cusparselt.so``, written to a cache
directory:
``$SPARSE24_CACHE_DIR`` or ``~/.cache/sparse24_jax``, else ``build/`` beside
this file, else the system temp dir. The output name carries a hash of every
file in ``csrc/``, the flags, nvcc and library paths, so a changed input
rebuilds. The backend runs this automatically on first use when nvcc is
present.

Environment:
  SPARSE24_CUSPARSELT_LIB      path of libcusparseLt.so.0 (or its directory)
  SPARSE24_CUSPARSELT_INCLUDE  directory holding cusparseLt.h (default: the
                               library's ../include)
  SPARSE24_CUSPARSELT_KERNELS  a prebuilt libsparse24_cusparselt.so to use
                               as is (no build)
  SPARSE24_CUDA_ARCHS          e.g. "90;80" (default), compute capabilities
  SPARSE24_CACHE_DIR           where built libraries go
  CUDA_HOME / CUDA_PATH        CUDA toolkit (default: nvcc on PATH, /usr/local/cuda)
  NVCC                         the nvcc binary
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from .._build import cache_dirs, find_nvcc, writable_dir

__all__ = [
    "BuildError",
    "build",
    "find_cusparselt",
    "find_nvcc",
    "library_path",
    "sources",
]

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
COMPAT_DIR = HERE / "compat"
LIB_NAME = "libsparse24_cusparselt"
DEFAULT_ARCHS = ("90", "80")

FALLBACK = "use backend='xla' (runs anywhere) or backend='triton' instead"


class BuildError(RuntimeError):
    """The library cannot be built or found here (names the fix and the fallback)."""


def _site_dirs() -> list[str]:
    dirs = []
    for p in sys.path:
        if p and os.path.isdir(os.path.join(p, "nvidia")):
            dirs.append(p)
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p and p not in dirs and os.path.isdir(os.path.join(p, "nvidia")):
            dirs.append(p)
    return dirs


def find_cusparselt() -> tuple[str, str]:
    """(path of libcusparseLt.so.0, directory of cusparseLt.h).

    From $SPARSE24_CUSPARSELT_LIB / $SPARSE24_CUSPARSELT_INCLUDE, else the
    installed ``nvidia-cusparselt-cu13`` / ``-cu12`` wheel (``nvidia/cusparselt``
    for 0.8, ``nvidia/cu13`` for later releases; PyTorch's dependency counts).
    """
    lib = None
    env_lib = os.environ.get("SPARSE24_CUSPARSELT_LIB")
    if env_lib:
        if os.path.isdir(env_lib):
            hits = sorted(glob.glob(os.path.join(env_lib, "libcusparseLt.so*")))
            lib = hits[0] if hits else None
        elif os.path.isfile(env_lib):
            lib = env_lib
        if lib is None:
            raise BuildError(
                f"SPARSE24_CUSPARSELT_LIB={env_lib!r} names no libcusparseLt.so*; "
                f"fix it or unset it to use the pip wheel, or {FALLBACK}"
            )
    else:
        for site in _site_dirs():
            for sub in ("cusparselt", "cu13", "cu12"):
                p = os.path.join(site, "nvidia", sub, "lib", "libcusparseLt.so.0")
                if os.path.isfile(p):
                    lib = p
                    break
            if lib:
                break
    if lib is None:
        raise BuildError(
            "cuSPARSELt not found: pip install nvidia-cusparselt-cu13 (or set "
            f"SPARSE24_CUSPARSELT_LIB to libcusparseLt.so.0), or {FALLBACK}"
        )
    inc = os.environ.get("SPARSE24_CUSPARSELT_INCLUDE")
    if not inc:
        inc = os.path.join(os.path.dirname(os.path.dirname(lib)), "include")
    if not os.path.isfile(os.path.join(inc, "cusparseLt.h")):
        raise BuildError(
            f"cusparseLt.h not found in {inc!r} (beside {lib!r}): install the "
            "nvidia-cusparselt-cu13 wheel, which ships it, or set SPARSE24_CUSPARSELT_INCLUDE; "
            f"or {FALLBACK}"
        )
    return os.path.realpath(lib), os.path.realpath(inc)


def _archs() -> list[str]:
    env = os.environ.get("SPARSE24_CUDA_ARCHS")
    if not env:
        return list(DEFAULT_ARCHS)
    out = [a.strip().replace(".", "") for a in env.replace(",", ";").split(";") if a.strip()]
    if not out or not all(a.isdigit() for a in out):
        raise BuildError(f"SPARSE24_CUDA_ARCHS={env!r}: use compute capabilities like '90;80'")
    return out


def _cuda_include(nvcc: str) -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include")


def _has_toolkit_cusparse(nvcc: str) -> bool:
    root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    cands = [os.path.join(root, "include", "cusparse.h")]
    cands += glob.glob(os.path.join(root, "targets", "*", "include", "cusparse.h"))
    return any(os.path.isfile(c) for c in cands)


def sources() -> list[Path]:
    """The units compiled into the library: csrc's ``.cu`` files (device code:
    each is compiled for every architecture) and ``.cc`` files (host-only, so
    nvcc hands them to the host compiler alone). A new unit needs no change here."""
    return sorted(CSRC.glob("*.cu")) + sorted(CSRC.glob("*.cc"))


def _source_tree() -> list[Path]:
    """Every file of csrc (units and headers): what the cache key hashes."""
    return sorted(p for p in CSRC.rglob("*") if p.is_file() and not p.name.startswith("."))


def _command(nvcc: str, out: str, lib: str, inc: str, archs: list[str]) -> list[str]:
    import jax.ffi  # jaxlib's XLA FFI headers

    libdir = os.path.dirname(lib)
    cmd = [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC,-fno-strict-aliasing",
           "-diag-suppress", "940,2473", "-lineinfo"]
    for a in archs:
        cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    top = max(archs, key=int)
    cmd += ["-gencode", f"arch=compute_{top},code=compute_{top}"]  # PTX for newer GPUs
    cmd += ["-I", jax.ffi.include_dir(), "-I", inc]
    if not _has_toolkit_cusparse(nvcc):
        cmd += ["-I", str(COMPAT_DIR)]  # cusparseLt.h 0.8 includes cusparse.h
    cmd += [str(p) for p in sources()] + ["-o", out]
    cmd += [f"-L{libdir}", f"-l:{os.path.basename(lib)}", f"-Xlinker", f"-rpath={libdir}"]
    return cmd


def _cache_dirs() -> list[Path]:
    return cache_dirs("cusparselt", HERE)


def _writable_dir(cands: list[Path]) -> Path:
    return writable_dir(cands, BuildError)


def _fingerprint(nvcc: str, lib: str, inc: str, archs: list[str]) -> str:
    import jax.ffi

    h = hashlib.sha256()
    for p in (*_source_tree(), COMPAT_DIR / "cusparse.h", Path(inc) / "cusparseLt.h",
              Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api" / "ffi.h",
              Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api" / "c_api.h"):
        h.update(str(p).encode())
        if p.is_file():
            h.update(p.read_bytes())
    h.update(os.path.realpath(nvcc).encode())
    h.update(lib.encode())
    h.update(";".join(archs).encode())
    # the command itself (minus the output path): its flags and its list of units
    h.update("\0".join(_command(nvcc, "", lib, inc, archs)).encode())
    h.update(str(_has_toolkit_cusparse(nvcc)).encode())
    return h.hexdigest()[:16]


def build(*, force: bool = False, verbose: bool = False) -> Path:
    """Compile the library (if not already built for these inputs); its path."""
    prebuilt = os.environ.get("SPARSE24_CUSPARSELT_KERNELS")
    if prebuilt:
        if not os.path.isfile(prebuilt):
            raise BuildError(f"SPARSE24_CUSPARSELT_KERNELS={prebuilt!r} is not a file")
        return Path(prebuilt)
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError(
            "nvcc not found (set CUDA_HOME or NVCC, or put nvcc on PATH) to build the "
            f"cuSPARSELt kernels; or {FALLBACK}"
        )
    lib, inc = find_cusparselt()
    archs = _archs()
    key = _fingerprint(nvcc, lib, inc, archs)
    name = f"{LIB_NAME}-{key}.so"
    for d in _cache_dirs():
        if not force and (d / name).is_file():
            return d / name
    out_dir = _writable_dir(_cache_dirs())
    target = out_dir / name
    tmp = out_dir / f".{name}.{os.getpid()}.tmp"
    cmd = _command(nvcc, str(tmp), lib, inc, archs)
    if verbose:
        print(" ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:
        raise BuildError(f"could not run {nvcc}: {err}; or {FALLBACK}") from err
    if proc.returncode != 0:
        if tmp.exists():
            tmp.unlink()
        raise BuildError(
            f"nvcc failed (exit {proc.returncode}) building {LIB_NAME}:\n"
            f"{' '.join(cmd)}\n{proc.stdout[-4000:]}{proc.stderr[-8000:]}\nOr {FALLBACK}."
        )
    if verbose and (proc.stdout or proc.stderr):
        print(proc.stdout + proc.stderr, flush=True)
    os.replace(tmp, target)  # atomic: concurrent builders agree
    return target


def library_path() -> Path:
    """The built library, building it on first use."""
    return build()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sparse24_jax_kernels.cusparselt.build",
        description="Build the cuSPARSELt XLA FFI library of sparse24-jax.",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the nvcc command")
    args = parser.parse_args(argv)
    try:
        path = build(force=args.force, verbose=args.verbose)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
