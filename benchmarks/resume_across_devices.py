"""A checkpoint saved on N devices, restored on 1 device: does the loss carry on?

    python benchmarks/resume_across_devices.py --config gpt2-conv-gpu --set data=/tmp/pystdlib \\
        --layout mesh_fsdp --steps 60 --split 30 --out /tmp/resume
    # on a CPU (forced devices):
    python benchmarks/resume_across_devices.py --platform cpu --devices 2 --steps 20 --split 10

Three `python -m train` runs of the same config, same data order:

  reference  N devices (--layout: mesh_fsdp=N, or mesh_data=N), steps 0..--steps, uninterrupted
  first      N devices, the same, stopped after --split (its checkpoint is sharded over N devices)
  resumed    1 device, --resume from first's checkpoint, on to --steps

The resumed run's logged train losses (and validation loss) after the split are compared with
the reference's at the same steps. They are not bit-identical in general: the reductions of
1 and N devices differ in order, and with mvue=true the MVUE draws depend on the layout
(docs/training.md). The table shows how far apart they are; the exit status is 1 only if a run
fails or the resumed run logged no train loss after --split.

GPU: the 1-device run sees only the first GPU (CUDA_VISIBLE_DEVICES=0). CPU: XLA_FLAGS forces
N host devices, then 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_train(args, out: Path, devices: int, *extra: str) -> float:
    """One `python -m train` run on `devices` devices; returns its wall seconds."""
    env = dict(os.environ)
    layout = [f"--set={args.layout}={devices}"] + (["--set=mesh_data=1"] if args.layout == "mesh_fsdp" else [])
    if args.platform == "cpu":
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    elif devices == 1:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    # log_interval=1: every logged train loss is one step's, so the two runs' rows compare
    # like with like (a resumed run's first row would otherwise average fewer steps)
    cmd = [sys.executable, "-m", "train", "--config", args.config, "--out", str(out), "--no-progress",
           "--steps", str(args.steps), *[f"--set={o}" for o in args.overrides], "--set=log_interval=1",
           *layout, *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, env=env)
    if r.returncode:
        sys.exit(f"resume_across_devices: the run into {out} failed (exit {r.returncode})")
    return time.time() - t0


def read_metrics(path: Path) -> dict[int, dict]:
    with open(path / "metrics.csv", newline="") as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--layout", choices=["mesh_fsdp", "mesh_data"], default="mesh_fsdp",
                   help="how the N-device runs split the work (FSDP shards the checkpointed state too)")
    p.add_argument("--devices", type=int, default=0, help="N (0: all GPUs JAX sees; CPU: 2)")
    p.add_argument("--platform", choices=["gpu", "cpu"], default="gpu")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--split", type=int, default=30, help="the first run stops and saves after this step")
    p.add_argument("--out", default="/tmp/resume_across_devices")
    p.add_argument("--json", help="also write the comparison here")
    args = p.parse_args(argv)
    if not 0 < args.split < args.steps:
        p.error("--split must be between 0 and --steps")
    n = args.devices
    if not n:
        if args.platform == "cpu":
            n = 2
        else:
            import jax
            n = jax.device_count()
    if n < 2:
        p.error(f"needs at least 2 devices for the first runs; found {n}")
    out = Path(args.out)
    for d in ("reference", "split"):
        shutil.rmtree(out / d, ignore_errors=True)

    wall = dict(reference=run_train(args, out / "reference", n),
                first=run_train(args, out / "split", n, "--stop-after", str(args.split)),
                resumed=run_train(args, out / "split", 1, "--resume"))
    ref, res = read_metrics(out / "reference"), read_metrics(out / "split")
    rows, worst = [], 0.0
    for step in sorted(s for s in ref if s > args.split):
        a, b = ref[step].get("train_loss"), res.get(step, {}).get("train_loss")
        if not a or not b:
            continue
        diff = float(b) - float(a)
        worst = max(worst, abs(diff) / abs(float(a)))
        rows.append(dict(step=step, reference=float(a), resumed=float(b), diff=diff))
    val = {k: float(m[max(m)]["val_loss"]) if m[max(m)].get("val_loss") else None
           for k, m in (("reference", ref), ("resumed", res))}
    result = dict(config=args.config, overrides=args.overrides, layout=args.layout, devices=n,
                  steps=args.steps, split=args.split, platform=args.platform, wall_s=wall, rows=rows,
                  max_rel_train_loss_diff=worst, final_val_loss=val)

    print(f"\n# checkpoint saved on {n} devices ({args.layout}={n}) after step {args.split}, "
          f"resumed on 1 device to step {args.steps} ({args.config})\n")
    print("| step | train loss, reference (N devices) | train loss, resumed (1 device) | difference |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['step']} | {r['reference']:.4f} | {r['resumed']:.4f} | {r['diff']:+.4f} |")
    print(f"\nfinal validation loss: reference {val['reference']}, resumed {val['resumed']}; "
          f"largest relative train-loss difference after the split: {100 * worst:.2f}%")
    print("wall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in wall.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if not rows:
        sys.exit("resume_across_devices: the resumed run logged nothing after the split")
    return result


if __name__ == "__main__":
    main()
