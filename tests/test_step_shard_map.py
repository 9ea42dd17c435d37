"""The step's own shard_map (train.py sharded_loss_and_grads, config shard_map_scope = "step"):
on 2 and 4 forced CPU devices it trains like one device, and its HLO has one reduction per
gradient (a reduce-scatter under FSDP) after the micro-batch loop, none inside it.

Subprocesses: the device count is fixed when jax starts. Tiny GPT, float32; grad_accum = 2,
so the micro-batch scan is a real loop inside the shard_map."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("sparse24_train")

ROOT = Path(__file__).resolve().parent.parent
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

COMMON = textwrap.dedent("""
    import sys, jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from flax import nnx
    from sparse24_train.config import load_config
    from sparse24_train.model import ffn_hidden
    from sparse24_train.sharding import batch_sharding, global_batch, make_mesh, step_shard_map
    from sparse24_train.train import init_state, make_eval_step, make_train_step
    SMALL = dict(n_layer=1, n_head=2, n_embd=64, block_size=16, batch_size=8, tokenizer="byte", mvue=False,
                 dtype="float32", mask_interval=1, warmup_steps=1, learning_rate=3e-3, grad_accum=2)
    plain = lambda x: np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 256, (3, 2, 8, 16)).astype(np.int32)   # 3 steps of 2 micro-batches of 8
    ys = rng.integers(0, 256, (3, 2, 8, 16)).astype(np.int32)

    def train3(layout, **over):
        cfg = load_config("tiny", SMALL | dict(mesh_data=layout[0], mesh_fsdp=layout[1]) | over).validate()
        mesh = make_mesh(cfg, ffn_hidden(cfg))
        gd, state = init_state(cfg, 256, mesh)
        step, ev = make_train_step(gd, mesh, cfg), make_eval_step(gd, mesh, cfg)
        losses, norms = [], []
        for i in range(3):
            state, m = step(state, global_batch(xs[i], batch_sharding(mesh, 3)), global_batch(ys[i], batch_sharding(mesh, 3)))
            losses.append(float(m["loss"])); norms.append(float(m["grad_norm"]))
        val = float(ev(state, global_batch(xs[0, 0], batch_sharding(mesh, 2)), global_batch(ys[0, 0], batch_sharding(mesh, 2))))
        rngs = [plain(x) for x in jax.tree.leaves(nnx.state(nnx.merge(gd, state)[0], nnx.RngState))]
        return dict(losses=losses, norms=norms, val=val, rngs=rngs, per_shard=step_shard_map(cfg, mesh),
                    state=[plain(x) for x in jax.tree.leaves(nnx.to_pure_dict(state))])

    def same(r, ref, name):
        # the tolerances of test_train_sharded.py (which explains the state's atol)
        np.testing.assert_allclose(r["losses"], ref["losses"], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(r["norms"], ref["norms"], rtol=1e-4, err_msg=name)
        np.testing.assert_allclose(r["val"], ref["val"], rtol=1e-5, err_msg=name)
        for a, b in zip(r["state"], ref["state"]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5, err_msg=name)
""")

TWO_DEVICES = COMMON + textwrap.dedent("""
    from sparse24_train.train import _per_shard
    for method in ("srste", "dense"):
        ref = train3((1, 1), method=method)
        assert not ref["per_shard"]
        for name, layout in {"data2": (2, 1), "fsdp2": (1, 2)}.items():
            # "step" asked for: by default (auto) a dense model stays on XLA's own sharding
            r = train3(layout, method=method, shard_map_scope="step")
            assert r["per_shard"], name
            same(r, ref, f"{method} {name}")
            print(method, name, "OK", r["losses"], flush=True)

    # MVUE: each shard draws its own samples, so the numbers move a little; the RNG streams'
    # state (keys and counts) stays that of one device
    ref = train3((1, 1), mvue=True)
    for name, layout in {"data2": (2, 1), "fsdp2": (1, 2)}.items():
        r = train3(layout, mvue=True)
        np.testing.assert_allclose(r["losses"], ref["losses"], rtol=1e-2, err_msg=name)
        assert r["losses"] != ref["losses"], name
        for a, b in zip(r["rngs"], ref["rngs"]):
            np.testing.assert_array_equal(a, b)

    # the running sums added inside value_and_grad (the default) or after it: the same numbers
    # on one device and per shard (the 2:4 layers' sums go through their backward rules there)
    for layout in ((1, 1), (1, 2)):
        on, off = train3(layout, mvue=True), train3(layout, mvue=True, grad_acc_in_gemm=False)
        same(on, off, f"grad_acc_in_gemm {layout}")

    # bfloat16 compute: the weights gathered in bfloat16 give the same bits as gathered in float32
    # (the model casts them anyway); reduced in bfloat16 they differ a little
    f32 = train3((1, 2), dtype="bfloat16", shard_gather_dtype="float32")
    for over, exact in [(dict(), True), (dict(grad_reduce_dtype="compute"), False)]:
        r = train3((1, 2), dtype="bfloat16", **over)
        assert (r["losses"] == f32["losses"] and r["norms"] == f32["norms"]) == exact, (over, r, f32)
        np.testing.assert_allclose(r["losses"], f32["losses"], rtol=1e-4)

    # the keys the layers draw inside the step's shard_map differ between shards
    cfg = load_config("tiny", SMALL | dict(mvue=True, mesh_data=2)).validate()
    mesh = make_mesh(cfg, ffn_hidden(cfg))
    gd, state = init_state(cfg, 256, mesh)
    def keys(state):
        model = nnx.merge(gd, state)[0]
        draw = lambda m, pull: jax.random.key_data(m.h[0].mlp.fc.rngs())[None]
        return _per_shard(mesh, model, draw, lambda _: jax.sharding.PartitionSpec("data"))[0]
    k = np.asarray(jax.jit(keys)(state))
    assert k.shape[0] == 2 and (k[0] != k[1]).any(), k
    print("TWO-OK")
""")

FOUR_DEVICES = COMMON + textwrap.dedent("""
    ref = train3((1, 1))
    for name, (layout, over) in {"data2_fsdp2": ((2, 2), {}), "fsdp4": ((1, 4), {}),
                                 "data2_fsdp2 per layer": ((2, 2), dict(shard_map_scope="layer"))}.items():
        r = train3(layout, **over)
        assert r["per_shard"] == ("layer" not in name), name
        same(r, ref, name)
        print(name, "OK", r["losses"], flush=True)
    print("FOUR-OK")
""")


def run(script, devices, timeout=600):
    env = dict(__import__("os").environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}")
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_two_devices_match_one_device():
    r = run(TWO_DEVICES, 2)
    assert r.returncode == 0 and "TWO-OK" in r.stdout, r.stdout + r.stderr[-4000:]


def test_four_devices_match_one_device():
    r = run(FOUR_DEVICES, 4)
    assert r.returncode == 0 and "FOUR-OK" in r.stdout, r.stdout + r.stderr[-4000:]


def collectives(tmp_path, scope, stage="partitioned"):
    """benchmarks/hlo_collectives.py's JSON for srste, data 2 and fsdp 2, grad_accum 2."""
    out = tmp_path / f"{scope}.json"
    r = subprocess.run(
        [sys.executable, "benchmarks/hlo_collectives.py", "--set", "n_layer=1", "--set", "n_embd=64",
         "--set", "n_head=2", "--set", "block_size=16", "--set", "tokenizer=byte", "--set",
         f"shard_map_scope={scope}", "--methods", "srste", "--layouts", "data,fsdp", "--batch-per-device", "2",
         "--grad-accum", "2", "--stage", stage, "--json", str(out)],
        env=dict(__import__("os").environ, JAX_PLATFORMS="cpu",
                 XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {FAST_COMPILE}"),
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert "| kind | phase |" in r.stdout
    return json.loads(out.read_text())


def test_step_hlo_has_one_reduction_per_gradient(tmp_path):
    # 9 parameters (wte, wpe, ln_f; ln_1, ln_2, c_attn, c_proj, fc, proj); n_embd 64 splits them all
    n_params = 9
    res = collectives(tmp_path, "step")
    arrays = lambda rows: [a for r in rows for a in r["arrays"] if not a.endswith("[]")]  # no scalars
    data, fsdp = res["srste data 2"], res["srste fsdp 2"]
    for r in data["collectives"] + fsdp["collectives"]:
        assert r["where"] != "loop body", r  # nothing per micro-batch
    grads = [r for r in data["collectives"] if r["kind"] == "all-reduce"]
    assert len(arrays(grads)) == n_params and all(r["phase"] == "backward" for r in grads if r["arrays"] != ["f32[]"])
    # FSDP: each parameter gathered once (the masks too, outside autodiff), each gradient reduce-scattered
    kinds = {k: [r for r in fsdp["collectives"] if r["kind"] == k] for k in ("all-gather", "reduce-scatter", "all-reduce")}
    assert len(kinds["reduce-scatter"]) == n_params
    assert arrays(kinds["all-reduce"]) == []  # only scalars (the loss, the gradient norm's pieces)
    gathered = arrays([r for r in kinds["all-gather"] if r["where"] == "entry"])
    # the weights used only in bfloat16 (the config's dtype) are gathered in it (shard_gather_dtype)
    assert sorted(gathered) == sorted(["bf16[256,64]", "bf16[64,256]", "pred[256,64]", "pred[64,256]", "bf16[64,192]",
                                       "bf16[64,64]", "f32[256,64]", "f32[16,64]", "f32[64]", "f32[64]", "f32[64]"]), gathered
    assert {a for r in kinds["reduce-scatter"] for a in r["arrays"]} == {
        "f32[128,64]", "f32[64,128]", "f32[64,96]", "f32[32,64]", "f32[16,32]", "f32[32]"}
    # the mask refresh runs outside the step (train.make_refresh_step): no conditional in it
    assert len(fsdp["conditionals"]) == 0 and len(data["conditionals"]) == 0

    # per layer (the previous path): the 2:4 weights' gradients are all-reduced inside the loop
    before = collectives(tmp_path, "layer")["srste fsdp 2"]["collectives"]
    looped = [a for r in before if r["kind"] == "all-reduce" and r["where"] == "loop body" for a in r["arrays"]]
    assert {"f32[256,64]", "f32[64,256]"} <= set(looped), looped
