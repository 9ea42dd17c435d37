"""GPU test of the CUTLASS handlers' command-buffer-compatible twins (the default;
$SPARSE24_CUTLASS_CMD_BUFFER=0 the plain ones, kernels/cutlass/_library.py): the FFN block's value
and gradients (SR-STE with MVUE: every CUTLASS handler runs, the plain and fused
GEMMs, the projection and the MVUE compressors) computed in a process that
registered the twins, over three calls of the jitted function (XLA records its
CUDA graphs on one call and replays them on the next), must be the bytes of the
same function in a process with the plain handlers. Needs an H100/H200 and a
library built with the twins.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

TESTS = Path(__file__).resolve().parents[1]

# Runs in a fresh process (the handlers are registered once per process, at the first
# load): the FFN block's loss and gradients, three calls, saved to argv[1].
CHILD = r"""
import sys
import numpy as np
import jax, jax.numpy as jnp
sys.path.insert(0, sys.argv[2])
from _ffn_cases import ffn_grad_fn, ffn_weights

m, d, h = 1024, 1280, 5120
fc, proj = ffn_weights(d, h, "srste", seed=7, scale=0.05)
x = jnp.asarray(np.random.default_rng(8).standard_normal((m, d)).astype(np.float32)).astype(jnp.bfloat16)
keys = (jax.random.PRNGKey(1), jax.random.PRNGKey(2))
f = ffn_grad_fn("cutlass", fc, proj, "srste", keys)
out = {}
for i in range(3):
    leaves = jax.tree.leaves(f(x, fc.w, proj.w))
    for j, a in enumerate(leaves):
        out[f"call{i}_{j}"] = np.asarray(a.astype(jnp.float32))
np.savez(sys.argv[1], **out)
"""


def _run(tmp_path: Path, cmd_buffer: bool) -> dict:
    out = tmp_path / f"cmd_buffer_{int(cmd_buffer)}.npz"
    env = dict(os.environ)
    env["SPARSE24_CUTLASS_CMD_BUFFER"] = "1" if cmd_buffer else "0"
    res = subprocess.run([sys.executable, "-c", CHILD, str(out), str(TESTS)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    with np.load(out) as z:
        return dict(z)


def test_command_buffer_handlers_give_the_plain_handlers_bytes(tmp_path):
    plain = _run(tmp_path, False)
    graphs = _run(tmp_path, True)
    assert plain.keys() == graphs.keys() and len(plain) == 3 * 4  # loss, dX, dW1, dW2; 3 calls
    for k in plain:
        np.testing.assert_array_equal(graphs[k], plain[k], err_msg=k)
        # each call the same (the MVUE keys are fixed): a replayed graph reads what it should
        np.testing.assert_array_equal(graphs[k], graphs["call0" + k[5:]], err_msg=k)
