"""What the two FFI libraries' Python loaders share (``cusparselt._library``,
``cutlass._library``): the library built on first use and ctypes-loaded once per
process under a lock, the error a failed load raises, its XLA FFI handlers
registered for CUDA once each, and the on/off switches they read from the environment."""

from __future__ import annotations

import ctypes
import importlib
import os
import threading
from typing import Callable


def has_cuda_device() -> bool:
    """Whether JAX sees a CUDA GPU."""
    import jax

    try:
        return any(d.platform == "gpu" for d in jax.devices("gpu"))
    except RuntimeError:
        return False


def env_flag(name: str) -> bool:
    """Whether ``$name`` is set to something other than empty, "0" or "false" (any case)."""
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false")


class FfiLibrary:
    """One of our ctypes-loaded XLA FFI libraries.

    ``build_module``: its build module (``library_path()`` builds or finds it; its
    ``python -m`` command is what the load error tells to rerun); ``fallback``: what
    to use instead, for the errors; ``no_gpu``: the error without a CUDA GPU;
    ``declare``: sets the exports' ctypes signatures on the loaded library.
    """

    def __init__(self, build_module: str, *, fallback: str, no_gpu: str,
                 declare: Callable[[ctypes.CDLL], None]):
        self.build_module = build_module
        self.fallback = fallback
        self.no_gpu = no_gpu
        self.declare = declare
        self.lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self._registered: set[str] = set()

    def library(self) -> ctypes.CDLL:
        """Build if needed and ctypes-load the library (no GPU needed for this)."""
        with self.lock:
            if self._lib is None:
                path = importlib.import_module(self.build_module).library_path()
                try:
                    lib = ctypes.CDLL(str(path))
                except OSError as err:
                    raise RuntimeError(
                        f"could not load {path}: {err}. Rebuild with "
                        f"`python -m {self.build_module} --force`, or {self.fallback}"
                    ) from err
                self.declare(lib)
                self._lib = lib
            return self._lib

    def register(self, targets: dict[str, str]) -> ctypes.CDLL:
        """Load the library and register ``targets`` (FFI target name -> exported
        handler symbol) for CUDA, each once. RuntimeError (``no_gpu``) when JAX has
        no CUDA GPU, or when the library cannot be built or loaded."""
        if not has_cuda_device():
            raise RuntimeError(self.no_gpu)
        lib = self.library()
        with self.lock:
            for target, symbol in targets.items():
                if target in self._registered:
                    continue
                import jax

                jax.ffi.register_ffi_target(
                    target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="CUDA"
                )
                self._registered.add(target)
        return lib
