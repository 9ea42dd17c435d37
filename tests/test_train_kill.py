"""A run killed with SIGKILL in the middle of writing a checkpoint: the last finished
checkpoint must stay the latest, restore, and let the run continue (--resume) exactly as
the straight run goes."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

pytest.importorskip("sparse24_train")
from flax import nnx

from sparse24_train.checkpoint import Checkpointer
from sparse24_train.config import load_config
from sparse24_train.train import build, train

SETS = ["n_layer=1", "n_head=2", "n_embd=64", "block_size=32", "batch_size=8", "tokenizer=byte",
        "eval_interval=1000", "eval_batches=1", "ckpt_interval=1", "keep_last=2", "max_steps=400",
        "dtype=float32", "log_interval=1"]


@pytest.mark.slow
def test_kill_during_save_leaves_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "sparse24_train", "--no-progress", "--out", str(out)]
    for s in SETS:
        argv += ["--set", s]
    # the tests' matmul precision (conftest.py), so that the straight run below computes the same
    env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    ckpts = out / "checkpoints"
    caught = None
    deadline = time.time() + 240
    try:
        # A checkpoint every step, written asynchronously: wait until at least one is finished
        # and another is being written (orbax's temporary directory exists), then kill.
        while time.time() < deadline and proc.poll() is None:
            names = [p.name for p in ckpts.iterdir()] if ckpts.is_dir() else []
            done = [n for n in names if n.isdigit()]
            tmp = [n for n in names if "tmp" in n]
            if len(done) >= 2 and tmp:
                os.kill(proc.pid, signal.SIGKILL)
                caught = tmp
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and caught is None:
            proc.kill()
        proc.wait()
    assert caught, "never saw a save in progress: " + proc.stderr.read().decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL

    cfg = load_config("tiny", SETS)
    ckpt = Checkpointer(out, 2)
    step = ckpt.latest_step()
    killed_step = int(caught[0].split(".")[0])  # the save that was cut off ...
    assert step is not None and step < killed_step  # ... is not taken for a checkpoint
    model, optimizer = build(cfg, 256)
    state = ckpt.restore(step, nnx.state((model, optimizer)))
    assert int(nnx.to_pure_dict(state)[1]["step"]) == step
    ckpt.close()

    # ... and the run continues from it, with the config it saved, exactly as a straight run:
    # the same batches (the checkpoint's data position is that of its step) and the same state.
    summary = train(cfg, out, resume=True, stop_after=step + 2, progress=False)
    assert summary["steps"] == step + 2 and Checkpointer(out, 2).latest_step() == step + 2
    straight = tmp_path / "straight"
    train(cfg, straight, stop_after=step + 2, progress=False)
    assert _losses(out) == _losses(straight)
    for x, y in zip(_state(out, cfg), _state(straight, cfg)):
        np.testing.assert_array_equal(x, y)


def _losses(out):
    import csv
    with open(out / "metrics.csv", newline="") as f:
        return [r["train_loss"] for r in csv.DictReader(f)]


def _state(out, cfg):
    model, optimizer = build(cfg, 256)
    ckpt = Checkpointer(out, 2)
    state = ckpt.restore(ckpt.latest_step(), nnx.state((model, optimizer)))
    ckpt.close()
    plain = lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    return [np.asarray(plain(x)) for x in jax.tree.leaves(nnx.to_pure_dict(state))]
