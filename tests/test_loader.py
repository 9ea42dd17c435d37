"""The FFI libraries' shared Python loader (kernels/_loader.py), on the CPU: one build and
load per process even from many threads, the load error naming the rebuild command and
the fallback, the no-GPU error, and each handler registered once."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
import types

import pytest

from sparse24_jax_kernels import _loader
from sparse24_jax_kernels.cusparselt import _library as lt_library
from sparse24_jax_kernels.cutlass import _library as cutlass_library


def _fake_build(monkeypatch, path):
    mod = types.ModuleType("fake_s24_build")
    mod.calls = 0

    def library_path():
        mod.calls += 1
        return path

    mod.library_path = library_path
    monkeypatch.setitem(sys.modules, "fake_s24_build", mod)
    return mod


def _libc() -> str:
    name = ctypes.util.find_library("c")
    if name is None:
        pytest.skip("no C library to load with ctypes")
    return name


def test_library_builds_and_loads_once_across_threads(monkeypatch):
    build = _fake_build(monkeypatch, _libc())
    declared = []
    lib = _loader.FfiLibrary("fake_s24_build", fallback="use X", no_gpu="no GPU",
                             declare=declared.append)
    got = []
    threads = [threading.Thread(target=lambda: got.append(lib.library())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert build.calls == 1 and len(declared) == 1
    assert len(got) == 8 and all(g is got[0] for g in got) and declared[0] is got[0]


def test_load_error_names_the_rebuild_and_the_fallback(monkeypatch, tmp_path):
    bad = tmp_path / "libnot_a_library.so"
    bad.write_bytes(b"not an ELF file")
    _fake_build(monkeypatch, bad)
    lib = _loader.FfiLibrary("fake_s24_build", fallback="use backend='xla'", no_gpu="no GPU",
                             declare=lambda lib: None)
    with pytest.raises(RuntimeError) as err:
        lib.library()
    msg = str(err.value)
    assert msg.startswith(f"could not load {bad}: ")
    assert "Rebuild with `python -m fake_s24_build --force`, or use backend='xla'" in msg


def test_register_needs_a_gpu_then_registers_each_target_once(monkeypatch):
    _fake_build(monkeypatch, _libc())
    lib = _loader.FfiLibrary("fake_s24_build", fallback="use X",
                             no_gpu="needs a GPU: use backend='xla'", declare=lambda lib: None)
    monkeypatch.setattr(_loader, "has_cuda_device", lambda: False)
    with pytest.raises(RuntimeError, match="needs a GPU: use backend='xla'"):
        lib.register({"t_a": "strlen"})

    import jax

    seen = []
    monkeypatch.setattr(_loader, "has_cuda_device", lambda: True)
    monkeypatch.setattr(jax.ffi, "register_ffi_target",
                        lambda name, capsule, platform: seen.append((name, platform)))
    lib.register({"t_a": "strlen", "t_b": "strcmp"})
    lib.register({"t_a": "strlen"})
    lib.register({"t_b": "strcmp", "t_c": "strchr"})
    assert seen == [("t_a", "CUDA"), ("t_b", "CUDA"), ("t_c", "CUDA")]


@pytest.mark.parametrize("mod, fallback", [
    (cutlass_library, "use the cuSPARSELt or XLA path"),
    (lt_library, "use backend='xla' or 'triton'"),
])
def test_both_libraries_use_it(mod, fallback):
    lib = getattr(mod, "LIBRARY", None) or mod._LIBRARY
    assert isinstance(lib, _loader.FfiLibrary)
    assert lib.build_module == mod.__package__ + ".build" and lib.fallback == fallback
    if not _loader.has_cuda_device():
        with pytest.raises(RuntimeError, match="visible to JAX.*none found"):
            mod.load()
