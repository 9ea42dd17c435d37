"""The backend registry: lazy loading, clear errors, plugging in a backend."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse24_jax as s24
from sparse24_jax.backend import BackendUnavailableError
from sparse24_jax.xla_backend import XlaBackend


def test_import_loads_no_gpu_code():
    code = "import sys, sparse24_jax; bad = [m for m in sys.modules if m.startswith(('jax_triton', 'triton', 'sparse24_jax_kernels'))]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_names():
    assert {"xla", "triton", "cusparselt"} <= set(s24.available_backends())
    assert s24.get_backend("xla").name == "xla"
    with pytest.raises(ValueError, match="unknown backend 'foo'.*xla"):
        s24.get_backend("foo")


def test_unavailable_backend_names_the_fix_and_the_fallback():
    def broken():
        raise ImportError("No module named 'jax_triton'")

    s24.register_backend("broken-test", broken)
    with pytest.raises(BackendUnavailableError, match="unavailable here.*backend='xla' runs everywhere"):
        s24.get_backend("broken-test")


@pytest.mark.skipif(any(d.platform == "gpu" for d in jax.devices()), reason="this machine has a GPU")
@pytest.mark.parametrize("name", ["triton", "cusparselt"])
def test_gpu_backends_are_unavailable_on_cpu_with_a_clear_error(name):
    with pytest.raises(ValueError, match="xla"):
        s24.get_backend(name)


class CountingBackend(XlaBackend):
    """A custom backend: the reference with a call counter."""

    name = "counting"

    def __init__(self):
        self.calls = []

    def prepare_weight(self, w_s, *, transposable):
        self.calls.append("prepare")
        return super().prepare_weight(w_s, transposable=transposable)

    def prune_grad(self, key, dz):
        self.calls.append("prune")
        return super().prune_grad(key, dz)


def test_a_registered_backend_runs_all_three_products():
    be = CountingBackend()
    s24.register_backend("counting", lambda: be)
    w = jax.random.normal(jax.random.key(0), (8, 16))
    x = jax.random.normal(jax.random.key(1), (4, 16))
    mask = s24.transposable_mask_24(w)
    g = jax.grad(lambda w: s24.sparse24_linear(x, w, mask, key=jax.random.key(2), backend="counting").sum())(w)
    ref = jax.grad(lambda w: s24.sparse24_linear(x, w, mask, key=jax.random.key(2)).sum())(w)
    np.testing.assert_allclose(g, ref, rtol=1e-6)
    assert "prepare" in be.calls and "prune" in be.calls
