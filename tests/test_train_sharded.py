"""sparse24_train on several devices: every mesh layout (data, FSDP, tensor-parallel FFN)
trains like one device, checkpoints move between meshes, the scaling benchmark runs.

8 forced CPU devices in a subprocess (the device count is fixed when jax starts). Tiny GPT,
float32, mvue=False (MVUE draws per shard, so its samples depend on the layout)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("sparse24_train")

ROOT = Path(__file__).resolve().parent.parent

COMMON = textwrap.dedent("""
    import dataclasses, json, sys, jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from flax import nnx
    from sparse24_train.config import load_config
    SMALL = dict(n_layer=1, n_head=2, n_embd=64, block_size=16, batch_size=8, tokenizer="byte",
                 mvue=False, dtype="float32", mask_interval=1, warmup_steps=1, learning_rate=3e-3,
                 eval_batches=1, log_interval=1)
    LAYOUTS = {"one": (1, 1, 1), "data8": (8, 1, 1), "data2_fsdp4": (2, 4, 1),
               "data2_tensor4": (2, 1, 4), "fsdp8": (1, 8, 1)}
    plain = lambda x: np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
""")

LAYOUT_SCRIPT = COMMON + textwrap.dedent("""
    from sparse24_train.model import cross_entropy, ffn_hidden
    from sparse24_train.sharding import batch_sharding, global_batch, make_mesh
    from sparse24_train.train import init_state, make_train_step, train_shardings
    base = load_config("tiny", SMALL)
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 256, (3, 1, 8, 16)).astype(np.int32)   # 3 steps of 1 micro-batch of 8
    ys = rng.integers(0, 256, (3, 1, 8, 16)).astype(np.int32)
    out = {}
    for name, (d, f, t) in LAYOUTS.items():
        cfg = dataclasses.replace(base, mesh_data=d, mesh_fsdp=f, mesh_tensor=t).validate()
        mesh = make_mesh(cfg, ffn_hidden(cfg))
        gd, state = init_state(cfg, 256, mesh)        # created in its shardings
        shardings = train_shardings(gd, state, mesh)
        bs = batch_sharding(mesh, 2)
        # the gradients at init, straight from the (sharded) model
        def grads(state, x, y):
            m, _ = nnx.merge(gd, state)
            return nnx.grad(lambda m: cross_entropy(m(x), y))(m)
        g0 = jax.jit(grads, in_shardings=(shardings, bs, bs))(state, global_batch(xs[0, 0], bs),
                                                                global_batch(ys[0, 0], bs))
        step = make_train_step(gd, mesh, cfg)
        losses, norms = [], []
        for i in range(3):
            state, m = step(state, global_batch(xs[i], batch_sharding(mesh, 3)),
                            global_batch(ys[i], batch_sharding(mesh, 3)))
            losses.append(float(m["loss"])); norms.append(float(m["grad_norm"]))
        fc = state[0]["h"][0]["mlp"]["fc"]["weight"][...]
        mu = state[1]["opt_state"][2][0].mu["h"][0]["mlp"]["fc"]["weight"][...]
        wte = state[0]["wte"]["embedding"][...]
        out[name] = dict(losses=losses, norms=norms, specs=[str(x.sharding.spec) for x in (fc, mu, wte)],
                         grads=[plain(x) for x in jax.tree.leaves(g0)],
                         state=[plain(x) for x in jax.tree.leaves(nnx.to_pure_dict(state))],
                         masks=[np.asarray(l.mask[...]) for l in (state[0]["h"][0]["mlp"]["fc"], state[0]["h"][0]["mlp"]["proj"])])
        print(name, losses, out[name]["specs"], flush=True)
    ref = out["one"]
    assert len(set(map(str, (ref["losses"])))) == 3
    for name, r in out.items():
        np.testing.assert_allclose(r["losses"], ref["losses"], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(r["norms"], ref["norms"], rtol=1e-4, err_msg=name)
        for a, b in zip(r["grads"], ref["grads"]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)
        diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(r["state"], ref["state"]))
        print(name, "max state diff", diff)
        # Adam divides by sqrt(v) + eps: where a gradient is ~eps, a 1e-7 difference in it moves
        # the update by a fraction of lr (3e-3), hence an atol of 1.5% of one step here
        for a, b in zip(r["state"], ref["state"]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5, err_msg=name)
        for a, b in zip(r["masks"], ref["masks"]):
            assert a.dtype == bool and (a == b).all(), name
    # where the state lives: (fc weight, its Adam moment, token embedding)
    assert out["data8"]["specs"] == ["P(None, None)"] * 3
    assert out["fsdp8"]["specs"] == ["P('fsdp', None)"] * 3, out["fsdp8"]["specs"]
    assert out["data2_tensor4"]["specs"][:2] == ["P('tensor', None)"] * 2
    print("LAYOUTS-OK")
""")

CKPT_SCRIPT = COMMON + textwrap.dedent("""
    import csv
    from pathlib import Path
    from sparse24_train.config import ConfigError
    from sparse24_train.train import train
    tmp = Path(sys.argv[1])
    run = lambda layout, out, **kw: train(
        load_config("tiny", SMALL | dict(max_steps=4, ckpt_interval=2, eval_interval=100, dense_fraction=1.0, mesh_data=layout[0],
                                         mesh_fsdp=layout[1], mesh_tensor=layout[2])), tmp / out, progress=False, **kw)
    losses = lambda out: [float(r["train_loss"]) for r in csv.DictReader(open(tmp / out / "metrics.csv"))]
    run(LAYOUTS["one"], "straight")
    run(LAYOUTS["fsdp8"], "moved", stop_after=2)                  # saved on an FSDP mesh ...
    run(LAYOUTS["data2_tensor4"], "moved", resume=True)           # ... continued tensor parallel
    print(losses("straight"), losses("moved"))
    np.testing.assert_allclose(losses("moved"), losses("straight"), rtol=1e-5)
    # clear errors for impossible layouts
    for bad, match in [(dict(mesh_tensor=8, ffn_hidden=48), "FFN first linear.*shards of 6.*multiple of 4"),
                       (dict(mesh_fsdp=3), "cannot be split"),
                       (dict(mesh_data=4, mesh_fsdp=4, batch_size=16), "needs 16 devices"),
                       (dict(batch_size=6), "batch_size 6 must be a multiple")]:
        try:
            train(load_config("tiny", SMALL | dict(n_embd=32, max_steps=1) | bad), tmp / "bad", progress=False)
        except ConfigError as e:
            import re
            assert re.search(match, str(e)), (bad, str(e))
        else:
            raise AssertionError(bad)
    print("CKPT-OK")
""")


# Less LLVM optimisation: compiling dominates these runs (about a third faster on 2 cores).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def env_with(devices):
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
                JAX_PLATFORMS="cpu")


def run(script, *args, devices=8, timeout=600):
    env = env_with(devices)
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_layouts_match_one_device():
    r = run(LAYOUT_SCRIPT)
    assert r.returncode == 0 and "LAYOUTS-OK" in r.stdout, r.stdout + r.stderr[-4000:]


def test_checkpoint_moves_between_meshes(tmp_path):
    r = run(CKPT_SCRIPT, tmp_path)
    assert r.returncode == 0 and "CKPT-OK" in r.stdout, r.stdout + r.stderr[-4000:]


def test_scaling_benchmark_smoke(tmp_path):
    # 2 forced CPU devices, a 1-layer model, 2 timed steps: the script runs and its table is complete
    r = subprocess.run(
        [sys.executable, "benchmarks/train_scaling.py", "--config", "tiny", "--set", "n_layer=1",
         "--set", "n_embd=64", "--set", "n_head=2", "--set", "block_size=32", "--batch-per-device", "2",
         "--steps", "3", "--blocks", "2", "--warmup", "1", "--methods", "srste", "--json", str(tmp_path / "s.json")],
        env=env_with(2),
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert "| method |" in r.stdout and "efficiency" in r.stdout
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert {(x["method"], x["layout"]) for x in rows} >= {("srste", "1 device"), ("srste", "data 2"), ("srste", "fsdp 2")}
    assert all(x["tok_per_s"] > 0 for x in rows)
    # --blocks 2 over 3 steps: blocks of 2 and 1 steps, whose step-weighted mean is the row's
    for x in rows:
        assert len(x["block_ms"]) == 2
        assert abs((2 * x["block_ms"][0] + x["block_ms"][1]) / 3 - x["step_ms"]) < 1e-6 * x["step_ms"]
    assert "blocks " in r.stderr and "ms/step" in r.stderr


@pytest.mark.parametrize("in_process", [False, True])
def test_scaling_rows_run_in_their_own_processes(tmp_path, in_process):
    # the default: every row (here dense, then a variant of srste) times in a fresh process, its
    # label and overrides kept; --in-process: all rows in the one process
    r = subprocess.run(
        [sys.executable, "benchmarks/train_scaling.py", "--config", "tiny", "--set", "n_layer=1",
         "--set", "n_embd=64", "--set", "n_head=2", "--set", "block_size=32", "--batch-per-device", "2",
         "--steps", "1", "--warmup", "1", "--layouts", "one", "--methods", "dense",
         "--variant", "srste:mvue=false", "--json", str(tmp_path / "s.json"),
         *(["--in-process"] if in_process else [])],
        env=env_with(1), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    out = json.loads((tmp_path / "s.json").read_text())
    rows = out["rows"]
    assert [(x["method"], x["overrides"]) for x in rows] == [("dense", []), ("srste (mvue=false)", ["mvue=false"])]
    assert out["meta"]["process_per_row"] is (not in_process) and out["meta"]["device_kind"] == "cpu"
    assert len({x["pid"] for x in rows}) == (1 if in_process else 2)
    assert ("a fresh process" in r.stderr) is (not in_process)


def test_scaling_parent_process_never_starts_a_backend():
    # with a process per row the parent must not touch a device: on a GPU with JAX's default
    # allocator it would hold 75% of the memory its children need
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, "benchmarks")
        import train_scaling
        train_scaling.main(["--config", "tiny", "--set", "n_layer=1", "--set", "n_embd=64", "--set", "n_head=2",
                            "--set", "block_size=32", "--batch-per-device", "2", "--steps", "1", "--warmup", "1",
                            "--layouts", "one", "--methods", "dense"])
        from jax._src import xla_bridge
        print("BACKENDS", sorted(xla_bridge._backends))
    """)
    r = subprocess.run([sys.executable, "-c", code], env=env_with(1), capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert "BACKENDS []" in r.stdout, r.stdout[-2000:]


@pytest.mark.parametrize("script,args,message", [
    ("train_scaling.py", ["--warmup", "0"], "--warmup must be >= 1"),
    ("train_scaling.py", ["--rounds", "0"], "--rounds must be >= 1"),
    ("train_scaling.py", ["--steps", "4", "--blocks", "5"], "--blocks must be between 1 and --steps"),
    ("train_scaling.py", ["--variant", "srste"], "use METHOD:FIELD=VALUE"),
    ("train_scaling.py", ["--variant", "srste:mvue_fcc=false"], "Did you mean mvue_fc"),
    ("train_scaling.py", ["--layouts", "one,dp"], "unknown layout 'dp'"),
    ("resume_across_devices.py", ["--platform", "cpu", "--steps", "10", "--split", "10"], "--split must be between"),
])
def test_benchmark_scripts_refuse_bad_arguments(script, args, message):
    r = subprocess.run([sys.executable, f"benchmarks/{script}", *args], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env=env_with(1))
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]


def test_resume_across_devices_smoke(tmp_path):
    # saved on 2 forced CPU devices (FSDP), resumed on 1: the losses after the split are the
    # uninterrupted 2-device run's (same data; mvue off, so only reduction order differs)
    r = subprocess.run(
        [sys.executable, "benchmarks/resume_across_devices.py", "--platform", "cpu", "--devices", "2",
         "--steps", "6", "--split", "3", "--set", "n_layer=1", "--set", "n_embd=64", "--set", "n_head=2",
         "--set", "block_size=32", "--set", "mvue=false", "--set", "eval_interval=3",
         "--out", str(tmp_path / "r"), "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    res = json.loads((tmp_path / "r.json").read_text())
    assert [x["step"] for x in res["rows"]] == [4, 5, 6]
    assert res["max_rel_train_loss_diff"] < 1e-3, res["rows"]
    assert abs(res["final_val_loss"]["reference"] - res["final_val_loss"]["resumed"]) < 1e-3


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    # Multi-host on one machine: 2 processes x 2 CPU devices (jax.distributed through
    # JAX_COORDINATOR_ADDRESS, collectives over gloo), mesh data 2 x fsdp 2 spanning both, each
    # process feeding its half of the batch; the same run in one process with 4 devices agrees.
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    args = ["-m", "train", "--set", "n_layer=1", "--set", "n_embd=64", "--set", "n_head=2", "--set",
            "block_size=16", "--set", "batch_size=8", "--set", "tokenizer=byte", "--set", "mvue=false",
            "--set", "mesh_fsdp=2", "--set", "eval_batches=1", "--set", "log_interval=1", "--set",
            "dense_fraction=1.0", "--steps", "2", "--no-progress"]
    procs = [subprocess.Popen([sys.executable, *args, "--out", str(tmp_path / "multi")], cwd=ROOT,
                              env=env_with(2) | dict(JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                                                     JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    assert "2 process(es)" in outs[0]
    single = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "single")], cwd=ROOT,
                            env=env_with(4), capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    import csv

    loss = lambda d: [float(r["train_loss"]) for r in csv.DictReader(open(tmp_path / d / "metrics.csv"))]
    assert len(loss("multi")) == 2
    assert loss("multi") == pytest.approx(loss("single"), rel=1e-5)
