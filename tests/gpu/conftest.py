"""GPU tests: every test marked ``gpu`` is skipped, with the reason, unless JAX
sees a CUDA device."""

import jax
import pytest


def _cuda_visible() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_visible():
        return
    skip = pytest.mark.skip(reason="no CUDA device visible to JAX: GPU tests run on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
