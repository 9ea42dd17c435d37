"""sparse24-train: the command line.

    sparse24-train                                   # configs/tiny.toml on the embedded corpus
    sparse24-train --config gpt2-124m --set data=data/openwebtext --out runs/124m
    sparse24-train --config tiny --set method=sste --set n_layer=2 --steps 200
    sparse24-train --out runs/124m --resume          # continue exactly where the run stopped
    sparse24-train --out runs/124m --resume --step 2000    # ... or from an earlier checkpoint
    sparse24-train --compare dense,srste --out runs/main   # the README main job
    sparse24-train --config gpt2-124m --set mesh_fsdp=8 --out runs/124m    # FSDP over 8 devices

--compare trains the same config once per method (each into OUT/METHOD), then writes
OUT/summary.md (a markdown table: final train/val loss, perplexity, throughput, time)
and OUT/compare.png (loss and flip rate against step).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from .config import FIELDS, ConfigError, load_config, parse_overrides
from .data import DataError
from .errors import CheckpointError, Diverged, RunStopped


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="sparse24-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="config name in configs/ (tiny, gpt2-124m, gpt2-350m, gpt2-774m, gpt2-1558m) "
                        "or a .toml path; default tiny, or the run's own config with --resume")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"override a config field (repeatable). Fields: {', '.join(FIELDS)}")
    p.add_argument("--steps", type=int, help="total optimizer steps (sets max_steps, the schedule's length)")
    p.add_argument("--stop-after", type=int, help="stop after this step; the schedule still runs to max_steps")
    p.add_argument("--out", default="out", help="run directory (default ./out)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--step", type=int, help="with --resume: continue from this checkpoint instead of the "
                   "latest (the later ones are moved to OUT/checkpoints.superseded/)")
    p.add_argument("--overwrite", action="store_true", help="delete --out's old checkpoints and start afresh")
    p.add_argument("--compare", metavar="M1,M2", help="train once per method (e.g. dense,srste), then "
                   "write OUT/summary.md and OUT/compare.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="several hosts: call jax.distributed.initialize() (cluster auto-detection, e.g. "
                        "SLURM or Open MPI; also done whenever JAX_COORDINATOR_ADDRESS is set). "
                        "Start one process per host with the same arguments; see docs/training.md")
    return p.parse_args(argv)


def resolve_config(args, out: Path):
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"max_steps={args.steps}")
    saved = out / "config.json"
    if args.resume and args.config is None and saved.is_file():
        # Resuming: the run's own config, so the model and schedule match the checkpoint.
        base = {k: v for k, v in json.loads(saved.read_text()).items() if k in FIELDS}
        return load_config("tiny", base | parse_overrides(overrides))
    return load_config(args.config or "tiny", overrides)


def check_out(out: Path, resume: bool, overwrite: bool):
    """A run directory with checkpoints needs --resume or --overwrite. Only checks: train()
    deletes the old checkpoints (--overwrite) once everything else has checked out."""
    ckpts = out / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()) and not (resume or overwrite):
        raise ConfigError(f"{out} already holds checkpoints: add --resume to continue that run, "
                          f"--overwrite to start it afresh, or choose another --out")


def summary_table(rows) -> str:
    lines = ["| method | steps | params (M) | train loss | val loss | val perplexity | tokens/s | wall time (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['steps']} | {r['params_m']:.2f} | {r['train_loss']:.4f} | "
                     f"{r['val_loss']:.4f} | {r['val_ppl']:.2f} | {r['tok_per_s']:,.0f} | {r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def compare(args, cfg, out: Path):
    from .plot import plot_runs
    from .train import train

    from .train import check_backend

    methods = [m.strip() for m in args.compare.split(",") if m.strip()]
    if len(methods) < 1 or len(set(methods)) != len(methods):
        raise ConfigError(f"--compare {args.compare!r}: give distinct methods separated by commas, "
                          f"e.g. --compare dense,srste")
    if args.step is not None:
        raise ConfigError("--step picks one run's checkpoint: resume the runs of --compare one at a time "
                          "(sparse24-train --out OUT/METHOD --resume --step N)")
    # Every run checked before the first trains: a typo in the last method must not cost the others.
    run_cfgs = [dataclasses.replace(cfg, method=m).validate() for m in methods]
    check_backend(cfg)
    for method in methods:
        check_out(out / method, args.resume, args.overwrite)
    t0, rows = time.time(), []
    for method, run_cfg in zip(methods, run_cfgs):
        print(f"== {method} ==", flush=True)
        rows.append(train(run_cfg, out / method, resume=args.resume, overwrite=args.overwrite,
                          stop_after=args.stop_after, progress=not args.no_progress))
    table = summary_table(rows)
    png = plot_runs([out / m for m in methods], out / "compare.png", methods,
                    title=f"{cfg.n_layer}-layer GPT, d={cfg.n_embd}, data={cfg.data}")
    (out / "summary.md").write_text(
        f"# {' vs '.join(methods)}\n\nconfig: {args.config or 'tiny'}, {cfg.max_steps} steps of "
        f"{cfg.tokens_per_step} tokens, data {cfg.data}\n\n{table}\n![loss and flip rate](compare.png)\n")
    print("\n" + table)
    print(f"wrote {out / 'summary.md'} and {png}; total {time.time() - t0:.0f} s")


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("absl", "jax"):  # orbax's per-file messages, jax's platform probing
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = Path(args.out)
    try:
        from .sharding import maybe_initialize_distributed
        maybe_initialize_distributed(args.distributed)  # before anything touches the devices
        cfg = resolve_config(args, out)
        if args.compare:
            return compare(args, cfg, out)
        from .train import train
        check_out(out, args.resume, args.overwrite)
        summary = train(cfg, out, resume=args.resume, step=args.step, overwrite=args.overwrite,
                        stop_after=args.stop_after, progress=not args.no_progress)
        import jax
        if jax.process_index() == 0 and not summary.get("already_finished"):
            print(f"final: val loss {summary['val_loss']:.4f}, val perplexity {summary['val_ppl']:.2f} "
                  f"({summary['wall_s']:.0f} s)")
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"sparse24-train: error: {e}", file=sys.stderr)
        sys.exit(2)
    except RunStopped as e:  # NaN or Ctrl-C in the loop: where to continue from, in one line
        again = f"--resume{' --compare ' + args.compare if args.compare else ''} --out {out}"
        if isinstance(e, Diverged):
            hint = (f": continue with {again} and a lower --set learning_rate (or another seed)"
                    if e.checkpoint is not None else ": lower --set learning_rate (or try another seed)")
        else:
            hint = f": continue with {again}" if e.checkpoint is not None else ""
        print(f"sparse24-train: {'error: ' if isinstance(e, Diverged) else ''}{e}{hint}", file=sys.stderr)
        sys.exit(1 if isinstance(e, Diverged) else 130)
    except KeyboardInterrupt:  # outside the loop (loading, building, plotting): no save was cut off
        print(f"sparse24-train: interrupted (Ctrl-C); the checkpoints in {out} are intact: add --resume "
              f"to the command to continue", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
