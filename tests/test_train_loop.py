"""sparse24_train's loop: the loss falls, resume is exact, data parallel runs.

Each run is a 1-2 layer GPT on the embedded corpus for a handful of steps."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("sparse24_train")
from flax import nnx

import sparse24_jax as s24
from sparse24_train.checkpoint import Checkpointer, dense_finetuning_of
from sparse24_train.config import load_config
from sparse24_train.train import build, train

SMALL = {"n_layer": 1, "n_head": 2, "n_embd": 64, "block_size": 32, "batch_size": 8,
         "tokenizer": "byte", "eval_batches": 2, "log_interval": 1, "warmup_steps": 5}


def rows(out):
    with open(Path(out) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_loss_falls(tmp_path):
    cfg = load_config("tiny", SMALL | {"max_steps": 40, "eval_interval": 40, "mask_interval": 5,
                                       "learning_rate": 3e-3, "ckpt_interval": 1000})
    summary = train(cfg, tmp_path, progress=False)
    losses = [float(r["train_loss"]) for r in rows(tmp_path) if r["train_loss"]]
    assert losses[-1] < losses[0] - 1.0, losses  # bytes start at ln(256) = 5.5 nats
    flips = [float(r["flip_rate"]) for r in rows(tmp_path) if r["flip_rate"]]
    assert len(flips) >= 6 and all(0 <= f < 0.5 for f in flips)
    assert np.isfinite(summary["val_loss"]) and summary["val_ppl"] > 1


def load_state(out, cfg):
    model, optimizer = build(cfg, 256)
    ckpt = Checkpointer(out, 3)
    step = ckpt.latest_step()
    if dense_finetuning_of(ckpt.restore_meta(step)):
        from sparse24_jax import nnx as s24nnx
        s24nnx.set_dense_finetuning(model)
    state = ckpt.restore(step, nnx.state((model, optimizer)))
    ckpt.close()
    return step, jax.tree.leaves(nnx.to_pure_dict(state))


def plain(x):
    """An array of a checkpointed state, PRNG keys as their key data."""
    return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)


def assert_same_state(out_a, out_b, cfg):
    """The latest checkpoints of two runs hold the same state, bit for bit."""
    _, a = load_state(out_a, cfg)
    _, b = load_state(out_b, cfg)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(plain(x), plain(y))


@pytest.mark.parametrize("method", ["srste", "sste"])
def test_resume_is_exact(tmp_path, method):
    # 3 straight steps + resume + 3 more == 6 straight; masks refresh every 2 steps, SR-STE goes
    # dense at step 5 (after the resume), and gradients accumulate over 2 micro-batches.
    cfg = load_config("tiny", SMALL | {"method": method, "max_steps": 6, "mask_interval": 2,
                                       "dense_fraction": 0.75, "grad_accum": 2, "ckpt_interval": 3,
                                       "eval_interval": 100})
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_after=3)
    train(cfg, tmp_path / "split", progress=False, resume=True)
    step_a, a = load_state(tmp_path / "straight", cfg)
    step_b, b = load_state(tmp_path / "split", cfg)
    assert step_a == step_b == 6 and len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(plain(x), plain(y), rtol=1e-5, atol=1e-6)
    la = [r["train_loss"] for r in rows(tmp_path / "straight")]
    lb = [r["train_loss"] for r in rows(tmp_path / "split")]
    np.testing.assert_allclose(np.array(la, float), np.array(lb, float), rtol=1e-5)


@pytest.mark.slow
def test_two_devices_data_parallel(tmp_path):
    # The same code on a 2-device CPU mesh (a subprocess: the device count is fixed at start-up).
    code = ("import logging; logging.basicConfig(level=logging.INFO); "
            "from sparse24_train.config import load_config; from sparse24_train.train import train; "
            "import jax, json; assert jax.device_count() == 2; "
            f"s = train(load_config('tiny', {SMALL!r} | dict(max_steps=2, eval_interval=2)), "
            f"{str(tmp_path)!r}, progress=False); print(json.dumps(s))")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 device(s)" in r.stderr
    assert np.isfinite(float(rows(tmp_path)[-1]["val_loss"]))


def test_init_state_like_reshards_instead_of_initialising():
    """init_state(like=): the same arrays, on the new mesh's shardings; masks searched after the
    init program (deferred) equal the ones the layers' constructors compute."""
    from sparse24_train.model import padded_vocab
    from sparse24_train.sharding import make_mesh
    from sparse24_train.train import init_state

    cfg = load_config("tiny", ["n_layer=1", "method=srste"])
    mesh = make_mesh(cfg, 4 * cfg.n_embd)
    vocab = padded_vocab(cfg, 256)
    graphdef, state = init_state(cfg, vocab, mesh)
    model, _ = nnx.merge(graphdef, state)
    for layer in (model.h[0].mlp.fc, model.h[0].mlp.proj):
        want = s24.transposable_mask_24(layer.weight[...])  # what the constructor would keep
        np.testing.assert_array_equal(np.asarray(layer.mask[...]), np.asarray(want))
        assert not bool(layer.mask[...].all())
    _, again = init_state(cfg, vocab, mesh, like=state)
    def raw(a):  # key arrays compare by their data
        return np.asarray(jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a)

    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(again)):
        np.testing.assert_array_equal(raw(x), raw(y))
    other = load_config("tiny", ["n_layer=2", "method=srste"])
    with pytest.raises(ValueError, match="same config"):
        init_state(other, vocab, mesh, like=state)


def test_init_uses_threefry_kernel_lowering_on_gpu_and_falls_back(monkeypatch, caplog):
    """On a GPU the init program runs with jax_threefry_gpu_kernel_lowering on (then restored);
    if that path fails, it runs again the usual way, with a warning."""
    from sparse24_train import train as train_mod

    seen = []

    def init():
        seen.append(jax.config.jax_threefry_gpu_kernel_lowering)
        return "state"

    assert train_mod._run_init(init) == "state" and seen == [False]  # CPU: untouched
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    seen.clear()
    assert train_mod._run_init(init) == "state" and seen == [True]
    assert jax.config.jax_threefry_gpu_kernel_lowering is False

    def flaky():
        seen.append(jax.config.jax_threefry_gpu_kernel_lowering)
        if seen[-1]:
            raise RuntimeError("no cu_threefry2x32 here")
        return "state"

    seen.clear()
    with caplog.at_level("WARNING", logger="sparse24_train"):
        assert train_mod._run_init(flaky) == "state"
    assert seen == [True, False] and "threefry GPU kernel lowering failed" in caplog.text
    assert jax.config.jax_threefry_gpu_kernel_lowering is False


def test_resume_is_exact_from_a_checkpoint_saved_mid_run(tmp_path, monkeypatch):
    # A checkpoint written while training went on (step 3 of 6) must hold the data position of
    # step 3: the asynchronous save once serialised the live position after the loader had
    # drawn more batches, and a run resumed from it skipped them.
    from sparse24_train.checkpoint import Checkpointer as Ckpt

    saved = {}
    real_save = Ckpt.save

    def spy(self, step, state, meta):
        saved[step] = meta  # the very object handed to the asynchronous save
        return real_save(self, step, state, meta)

    monkeypatch.setattr(Ckpt, "save", spy)
    cfg = load_config("tiny", SMALL | {"max_steps": 6, "mask_interval": 2, "grad_accum": 2,
                                       "ckpt_interval": 3, "eval_interval": 100, "keep_last": 3,
                                       "dtype": "float32"})
    train(cfg, tmp_path / "straight", progress=False)
    assert {s: m["data"] for s, m in saved.items()} == {3: {"batches": 6}, 6: {"batches": 12}}

    # resume a copy of the run from its mid-run checkpoint (the later one removed)
    import shutil
    shutil.copytree(tmp_path / "straight", tmp_path / "again")
    shutil.rmtree(tmp_path / "again" / "checkpoints" / "6")
    assert Checkpointer(tmp_path / "again", 3).restore_meta(3)["data"] == {"batches": 6}
    train(cfg, tmp_path / "again", progress=False, resume=True)
    assert_same_state(tmp_path / "straight", tmp_path / "again", cfg)
    la = [r["train_loss"] for r in rows(tmp_path / "straight")]
    lb = [r["train_loss"] for r in rows(tmp_path / "again")]
    assert la == lb


def test_a_run_saved_before_the_renames_resumes(tmp_path, monkeypatch):
    # Runs saved before the renames hold the checkpoint meta key "dense" only (now also
    # "dense_finetuning") and precision "bf16" in config.json (now "compute"): both still read,
    # `--resume` of such a run continues it exactly.
    import json

    import sparse24_train.train as train_mod
    from sparse24_train import cli
    from sparse24_train.pretrained import load_pretrained

    assert dense_finetuning_of({"dense": True, "data": {}}) is True
    assert dense_finetuning_of({"dense": False, "data": {}}) is False
    assert dense_finetuning_of({"dense_finetuning": True, "dense": True}) is True
    with pytest.raises(KeyError):
        dense_finetuning_of({"data": {}})

    # SR-STE, 4 steps, dense fine-tuning from step 2: the checkpoint of step 3 has it on
    cfg = load_config("tiny", SMALL | {"max_steps": 4, "mask_interval": 2, "dense_fraction": 0.5,
                                       "ckpt_interval": 3, "eval_interval": 100, "dtype": "float32"})
    train(cfg, tmp_path / "straight", progress=False)
    with monkeypatch.context() as m:
        m.setattr(train_mod, "dense_finetuning_meta", lambda on: {"dense": bool(on)})  # the old format
        train(cfg, tmp_path / "old", progress=False, stop_after=3)
    saved = tmp_path / "old" / "config.json"
    saved.write_text(json.dumps(json.loads(saved.read_text()) | {"precision": "bf16"}))
    meta = Checkpointer(tmp_path / "old", 3).restore_meta(3)
    assert meta["dense"] is True and "dense_finetuning" not in meta
    pre = load_pretrained(tmp_path / "old", step=3)
    assert pre.model.h[0].mlp.fc.dense_finetuning is True and pre.cfg.precision == "compute"
    cli.main(["--out", str(tmp_path / "old"), "--resume", "--no-progress"])
    assert json.loads(saved.read_text())["precision"] == "compute"
    assert_same_state(tmp_path / "straight", tmp_path / "old", cfg)
    assert Checkpointer(tmp_path / "old", 3).restore_meta(4)["dense_finetuning"] is True
