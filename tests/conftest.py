"""Shared test settings: float32 matmuls at full precision on every platform; the host
emulation of the cuSPARSELt library's kernels."""
import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module")
def cusparselt_host_ops():
    """kernels/cusparselt/ops.py with its library built (nvcc, no GPU needed): the CUDA
    kernels' code runs on the CPU through its host emulation."""
    from sparse24_jax_kernels.cusparselt import build, ops

    try:
        ops.load_library()
    except build.BuildError as err:
        pytest.skip(f"cannot build the cuSPARSELt library here: {err}")
    return ops
