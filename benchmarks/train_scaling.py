"""Training-step throughput on 1 device and on all devices (data parallel, FSDP), dense vs 2:4.

    python benchmarks/train_scaling.py --config gpt2-124m --methods dense,srste --backend cusparselt
    python benchmarks/train_scaling.py --config gpt2-774m --batch-per-device 4 --json scaling.json
    # an A/B of a config field, alternating: dense, srste, srste (mvue_fc=false), twice (each its own process)
    python benchmarks/train_scaling.py --config gpt2-1558m --methods dense,srste --variant srste:mvue_fc=false \\
        --rounds 2 --backend cutlass --layouts one --batch-per-device 8 --grad-accum 2
    # smoke test on CPU:
    XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \\
      python benchmarks/train_scaling.py --config tiny --steps 2 --warmup 1

Each row runs in a fresh Python process of its own (the default; ``--in-process`` runs them
all in this one): on an H200 the GPT-2 1558M dense step ran 16-20 ms slower when another model
had run before it in the same process, while a model alone in its process, as a training run is,
stays at its fast speed for as long as it runs (docs/BENCHMARKS.md section 18). Later rows load
their programs from JAX's compilation cache when one is set (``$JAX_COMPILATION_CACHE_DIR``).

Weak scaling: every device gets --batch-per-device sequences of block_size random tokens, so
the global batch grows with the device count. Each row times --steps optimizer steps of
sparse24_train's jitted step (after --warmup steps, which include compilation), excluding the
host: tokens are generated once and already on the devices (benchmarks/train_step.py builds
the step as step_profile.py does, benchmarks/timing.py's time_steps times it). Prints a
markdown table with

    scaling efficiency = tok/s(N devices) / (N * tok/s(1 device))

(1.0 = perfect). Layouts: "one" (1 device), "data" (data parallel over N), "fsdp" (FSDP over
N: parameters and optimizer state sharded), "tensor" (2:4 FFNs tensor parallel over N, the
rest replicated; only if asked for). On forced CPU devices, which share the same cores, the
numbers only show that the code runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import logging
import os
import sys
import time
from pathlib import Path

import jax

from timing import run_steps, time_steps
from train_step import load_config, prepare

LAYOUTS = {"one": lambda n: (1, 1, 1), "data": lambda n: (n, 1, 1), "fsdp": lambda n: (1, n, 1),
           "tensor": lambda n: (1, 1, n)}


def layout_name(layout: str, n: int) -> str:
    return "1 device" if layout == "one" else f"{layout} {n}"


def block_sizes(steps: int, blocks: int) -> list[int]:
    """``steps`` split into ``blocks`` consecutive blocks, as even as they go (the first ones
    one step longer)."""
    return [steps // blocks + (i < steps % blocks) for i in range(blocks)]


def measure(cfg, steps: int, warmup: int, seed: int = 0, like=None, blocks: int = 1) -> tuple[dict, object]:
    """tok/s of cfg's training step on cfg's mesh, random tokens; also the state after the
    steps (the next layout's `like`: its weights have moved a few steps, which leaves the
    time per step as it is). The timed steps run as ``blocks`` consecutive blocks, each
    waited for at its end: ``block_ms`` is each one's ms per step (does the speed drift
    within a row?), ``step_ms`` their mean over all steps."""
    tp = time.perf_counter()
    mesh, _, state, step, xs, ys = prepare(cfg, seed, like)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    compile_s, state, m = time_steps(step, state, xs, ys, 1)  # the first step compiles
    print(f"  {cfg.method} on {mesh.size} device(s): state built in {t0 - tp:.1f} s, first step "
          f"(compilation) {compile_s:.1f} s", file=sys.stderr, flush=True)
    state, m = run_steps(step, state, xs, ys, warmup - 1, m)
    t1 = time.perf_counter()
    dt, block_ms = 0.0, []
    for k in block_sizes(steps, blocks):
        d, state, m = time_steps(step, state, xs, ys, k, m)
        dt += d
        block_ms.append(1e3 * d / k)
    loss = float(m["loss"])
    return dict(devices=mesh.size, mesh="x".join(str(mesh.shape[a]) for a in mesh.axis_names),
                global_batch=cfg.batch_size * cfg.grad_accum, tok_per_s=steps * cfg.tokens_per_step / dt,
                step_ms=1e3 * dt / steps, block_ms=block_ms, warmup_s=t1 - t0, build_s=t0 - tp,
                compile_s=compile_s, loss=loss, pid=os.getpid()), state


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """``METHOD:FIELD=VALUE[:FIELD=VALUE...]`` -> (method, overrides); ValueError naming the form."""
    method, *overrides = [x.strip() for x in spec.split(":")]
    if not method or not overrides or any("=" not in o or o.startswith("=") for o in overrides):
        raise ValueError(f"--variant {spec!r}: use METHOD:FIELD=VALUE[:FIELD=VALUE...], e.g. srste:mvue_fc=false")
    return method, overrides


def row_specs(methods: list[str], variants: list[str]) -> list[tuple[str, str, list[str]]]:
    """(label, method, overrides) of every row: the --methods as they are, then each --variant
    (labelled ``method (field=value, ...)``)."""
    specs = [(m, m, []) for m in methods]
    for v in variants:
        method, overrides = parse_variant(v)
        specs.append((f"{method} ({', '.join(overrides)})", method, overrides))
    return specs


def table(rows) -> str:
    lines = ["| method | backend | layout | devices (data x fsdp x tensor) | global batch | tok/s | "
             "tok/s per device | step (ms) | scaling efficiency |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    rounds = max((r.get("round", 1) for r in rows), default=1)
    for r in rows:
        eff = "" if r["efficiency"] is None else f"{r['efficiency']:.2f}"
        name = r["method"] + (f", round {r['round']}" if rounds > 1 else "")
        lines.append(f"| {name} | {r['backend']} | {r['layout']} | {r['devices']} ({r['mesh']}) | "
                     f"{r['global_batch']} | {r['tok_per_s']:,.0f} | {r['tok_per_s'] / r['devices']:,.0f} | "
                     f"{r['step_ms']:.1f} | {eff} |")
    return "\n".join(lines) + "\n"


def child_argv(args, method: str, extra: list[str], json_path: str) -> list[str]:
    """The command line that times one row (``method`` with the config overrides ``extra`` on
    top of --set) in a process of its own: every option of this run but the row list, the
    rounds and the JSON file, run in-process there."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--config", args.config,
            "--methods", method, "--in-process", "--json", json_path,
            "--batch-per-device", str(args.batch_per_device), "--grad-accum", str(args.grad_accum),
            "--devices", str(args.devices), "--layouts", args.layouts, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--blocks", str(args.blocks),
            "--stack-dump", str(args.stack_dump)]
    for o in [*args.overrides, *extra]:
        argv += ["--set", o]
    if args.backend:
        argv += ["--backend", args.backend]
    if not args.reuse_state:
        argv.append("--fresh-state")
    return argv


def run_rows_in_processes(args, specs) -> list[dict]:
    """Every round's rows, each in a fresh process (``child_argv``), their output passed
    through; the rows (and the first child's device meta) gathered here, the JSON written
    after every row. This process never touches a device: it would hold the GPU's memory
    pool the children need."""
    import subprocess
    import tempfile

    rows, meta = [], dict(config=args.config, overrides=args.overrides, steps=args.steps,
                          rounds=args.rounds, process_per_row=True)
    with tempfile.TemporaryDirectory(prefix="train_scaling_") as tmp:
        for rnd in range(args.rounds):
            for i, (label, method, extra) in enumerate(specs):
                out = Path(tmp) / f"round{rnd + 1}_row{i}.json"
                print(f"# round {rnd + 1}, {label}: a fresh process", file=sys.stderr, flush=True)
                rc = subprocess.run(child_argv(args, method, extra, str(out))).returncode
                if rc != 0 or not out.exists():
                    if args.json and rows:
                        Path(args.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
                    raise SystemExit(f"train_scaling: the process timing {label!r} (round {rnd + 1}) "
                                     f"exited with {rc}; the rows before it are above")
                child = json.loads(out.read_text())
                for key in ("devices", "device_kind", "batch_per_device", "block_size"):
                    meta.setdefault(key, child["meta"].get(key))
                for r in child["rows"]:
                    r.update(method=label, overrides=extra, round=rnd + 1)
                    rows.append(r)
                if args.json:  # after every row: a run cut short keeps what it measured
                    Path(args.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="config name (tiny, gpt2-124m, ...) or .toml path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field (repeatable)")
    p.add_argument("--methods", default="dense,srste", help="comma-separated: dense, srste, sste, ste")
    p.add_argument("--variant", action="append", default=[], metavar="METHOD:FIELD=VALUE[:FIELD=VALUE]",
                   help="one more row after --methods: METHOD with these config overrides on top of --set "
                        "(repeatable; e.g. srste:mvue_fc=false)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run all rows this many times in turn (A, B, A, B: an A/B on one machine state)")
    p.add_argument("--backend", default=None, help="2:4 backend (xla, triton, cusparselt); default: the config's")
    p.add_argument("--batch-per-device", type=int, default=8, help="sequences per device per step")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--devices", type=int, default=0, help="N for the multi-device layouts (0: all)")
    p.add_argument("--layouts", default="one,data,fsdp", help=f"comma-separated, of {', '.join(LAYOUTS)}")
    p.add_argument("--steps", type=int, default=10, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first compiles)")
    p.add_argument("--blocks", type=int, default=1,
                   help="time each row's --steps as this many consecutive blocks and print each block's "
                        "ms/step (whether a row's speed drifts: a dense step timed first in its process ran "
                        "faster than after another model, docs/BENCHMARKS.md section 17)")
    p.add_argument("--in-process", dest="process_per_row", action="store_false",
                   help="time every row in this one process instead of one fresh process per row (the "
                        "default; in one process the rows' order moved the dense step by up to 5%%)")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--fresh-state", dest="reuse_state", action="store_false",
                   help="initialise the state again for every layout (default: once per method, then "
                        "resharded)")
    p.add_argument("--stack-dump", type=float, default=0, metavar="S",
                   help="print every thread's Python stack every S seconds (0: never)")
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first step compiles)")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if not 1 <= args.blocks <= args.steps:
        p.error(f"--blocks must be between 1 and --steps ({args.steps})")
    try:
        specs = row_specs([m.strip() for m in args.methods.split(",") if m.strip()], args.variant)
    except ValueError as e:
        p.error(str(e))
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    for x in layouts:
        if x not in LAYOUTS:
            p.error(f"unknown layout {x!r}: use {', '.join(LAYOUTS)}")
    if args.process_per_row:
        try:  # every override checked before a process starts
            for _, _, extra in specs:
                load_config(args.config, [*args.overrides, *extra])
        except ValueError as e:
            p.error(str(e))
        rows = run_rows_in_processes(args, specs)
        print(table(rows))
        return rows
    logging.getLogger("sparse24_train").setLevel(logging.ERROR)  # "mesh uses 1 of N devices" is intended
    if args.stack_dump:  # where a slow row spends its time (tracing, compiling, running)
        faulthandler.dump_traceback_later(args.stack_dump, repeat=True)

    n = args.devices or jax.device_count()
    try:  # every override checked before anything is built
        base = load_config(args.config, list(args.overrides))
        bases = {label: load_config(args.config, [*args.overrides, *extra]) if extra else base
                 for label, _, extra in specs}
    except ValueError as e:  # ConfigError: the message names the fix
        p.error(str(e))
    if n == 1:
        layouts = [x for x in layouts if x == "one"] or ["one"]
    print(f"# train step scaling: config {args.config}, {n} device(s) of {jax.devices()[0].device_kind}, "
          f"{args.batch_per_device} x {base.block_size} tokens per device, {args.steps} timed steps",
          flush=True)
    rows = []
    meta = dict(config=args.config, overrides=args.overrides, devices=n, device_kind=jax.devices()[0].device_kind,
                batch_per_device=args.batch_per_device, block_size=base.block_size, steps=args.steps,
                rounds=args.rounds, process_per_row=False)
    for rnd in range(args.rounds):
        for label, method, extra in specs:
            single, state, row_base = None, None, bases[label]
            for layout in layouts:
                d, f, t = LAYOUTS[layout](n)
                size = d * f * t
                cfg = dataclasses.replace(
                    row_base, method=method, backend=args.backend or row_base.backend, grad_accum=args.grad_accum,
                    batch_size=args.batch_per_device * size, mesh_data=d, mesh_fsdp=f, mesh_tensor=t,
                    max_steps=max(row_base.max_steps, args.steps + args.warmup + 1)).validate()
                # one init per row (it compiles slowly for big models); later layouts reshard it
                r, state = measure(cfg, args.steps, args.warmup, like=state if args.reuse_state else None,
                                   blocks=args.blocks)
                if layout == "one":
                    single = r["tok_per_s"]
                r.update(method=label, overrides=extra, round=rnd + 1,
                         backend=cfg.backend if method != "dense" else "-", layout=layout_name(layout, size),
                         efficiency=None if single is None else r["tok_per_s"] / (r["devices"] * single))
                rows.append(r)
                blocks = (", blocks " + " / ".join(f"{b:.1f}" for b in r["block_ms"]) + " ms/step"
                          if args.blocks > 1 else "")
                print(f"{label} {r['layout']}: {r['tok_per_s']:,.0f} tok/s (compile+warm-up {r['warmup_s']:.1f} s)"
                      f"{blocks}", file=sys.stderr, flush=True)
                if args.json:  # after every row: a run cut short keeps what it measured
                    Path(args.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
