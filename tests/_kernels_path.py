"""Make ``sparse24_jax_kernels`` importable from a plain checkout.

Installed, it is ``kernels/`` under its own name (pyproject.toml); in a
checkout that was never installed, map the folder by hand.
"""

import importlib
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ensure_kernels_package():
    try:
        importlib.import_module("sparse24_jax_kernels")
    except ImportError:
        root = REPO / "kernels"
        spec = importlib.util.spec_from_file_location(
            "sparse24_jax_kernels", root / "__init__.py", submodule_search_locations=[str(root)]
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules["sparse24_jax_kernels"] = mod
        spec.loader.exec_module(mod)
