"""sparse24-tune-decay: pick SR-STE's masked-decay factor alpha from flip-rate curves.

    sparse24-tune-decay --config tiny --alphas 0,6e-5,2e-4,6e-4,2e-3 --steps 150 --out runs/tune
    sparse24-tune-decay --config gpt2-124m --from runs/124m      # fork from a run's checkpoint

Paper 1 chooses alpha during warm-up by watching the flip rate (the fraction of 2:4
mask entries that change at each mask refresh): in a healthy run it rises early and
then falls steadily; with too weak a decay it stays high or keeps climbing, and the
masks never settle. Too strong a decay only costs quality (it pulls pruned weights to
zero hard), so we want the smallest alpha that makes the flip rate turn over.

How: every candidate alpha trains from the same start point (a fresh init from the
config's seed, or the latest checkpoint of --from) over the same batches for the same
steps (default: the warm-up, at least 10 mask refreshes), the learning-rate schedule
that of the full run. Each fork writes OUT/alpha=A/metrics.csv.

The rule (RULE below): a flip-rate curve "peaks and then falls" when its maximum comes
before its last quarter and the mean of its last quarter (at least 2 refreshes) is at
most (1 - drop) times that maximum (drop = 0.25 by default). The recommendation is the
smallest candidate whose curve does; if none does, the largest candidate is reported
with the advice to try stronger decays or a longer warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shutil
import sys
from pathlib import Path

import numpy as np

from .config import ConfigError, load_config
from .data import DataError
from .errors import CheckpointError, RunStopped

RULE = ("smallest alpha whose flip rate peaks before the last quarter of the warm-up and whose "
        "last-quarter mean is at most (1 - drop) x the peak")


def peaks_then_falls(flips: list[float], drop: float = 0.25) -> bool:
    if len(flips) < 4:
        return False
    tail = max(2, len(flips) // 4)
    k = int(np.argmax(flips))
    return k < len(flips) - tail and float(np.mean(flips[-tail:])) <= (1 - drop) * flips[k]


def recommend(curves: dict[float, list[float]], drop: float = 0.25) -> tuple[float, bool]:
    """(alpha, found): the smallest alpha whose curve peaks then falls, else (largest, False)."""
    for alpha in sorted(curves):
        if peaks_then_falls(curves[alpha], drop):
            return alpha, True
    return max(curves), False


def parse_alphas(text: str) -> list[float]:
    """--alphas "0,6e-5,2e-4" -> the sorted distinct candidates; ConfigError for anything else."""
    alphas = set()
    for item in (a.strip() for a in text.split(",")):
        if not item:
            continue
        try:
            alpha = float(item)
        except ValueError:
            alpha = None
        if alpha is None or not (math.isfinite(alpha) and alpha >= 0):
            raise ConfigError(f"--alphas {text!r}: {item!r} is not a decay factor (a number >= 0); give "
                              f"comma-separated candidates, e.g. --alphas 0,6e-5,2e-4")
        alphas.add(alpha)
    if not alphas:
        raise ConfigError(f"--alphas {text!r}: no candidates; e.g. --alphas 0,6e-5,2e-4")
    return sorted(alphas)


def main(argv=None):
    p = argparse.ArgumentParser(prog="sparse24-tune-decay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="config name or .toml path (default tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--alphas", default="0,2e-5,6e-5,2e-4,6e-4", help="comma-separated candidates")
    p.add_argument("--steps", type=int, help="steps per fork (default: warm-up, >= 10 mask refreshes)")
    p.add_argument("--from", dest="start", help="fork from the latest checkpoint of this run directory")
    p.add_argument("--drop", type=float, default=0.25, help="how far the flip rate must fall (fraction)")
    p.add_argument("--out", default="out/tune_decay", help="output directory")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("absl", "jax"):  # orbax's per-file messages, jax's platform probing
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from .checkpoint import Checkpointer
    from .plot import plot_runs, read_metrics
    from .train import train

    try:
        alphas = parse_alphas(args.alphas)
        cfg = load_config(args.config, list(args.overrides) + ["method=srste"])
        start = 0
        if args.start:
            src = Checkpointer(args.start, 1)
            start = src.latest_step()
            src.close()
            if start is None:
                raise ConfigError(f"--from {args.start}: no checkpoint there (a directory written by "
                                  f"sparse24-train --out)")
        steps = args.steps or max(cfg.warmup_steps, 10 * cfg.mask_interval)
        out = Path(args.out)
        curves, finals, dirs = {}, {}, []
        for alpha in alphas:
            d = out / f"alpha={alpha:g}"
            if d.exists():
                shutil.rmtree(d)
            if args.start:  # the fork starts from a copy of the start checkpoint
                shutil.copytree(Path(args.start) / "checkpoints" / str(start), d / "checkpoints" / str(start))
            print(f"== alpha = {alpha:g}: steps {start}..{start + steps} ==", flush=True)
            run_cfg = dataclasses.replace(cfg, alpha=alpha, ckpt_interval=10**9, eval_interval=10**9)
            summary = train(run_cfg, d, resume=bool(args.start), stop_after=start + steps,
                            progress=not args.no_progress)
            m = read_metrics(d)
            curves[alpha] = [v for _, v in m.get("flip_rate", [])]
            finals[alpha] = summary["train_loss"]
            dirs.append(d)
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"sparse24-tune-decay: error: {e}", file=sys.stderr)
        sys.exit(2)
    except RunStopped as e:  # a candidate diverged (NaN) or Ctrl-C: the forks are not comparable
        print(f"sparse24-tune-decay: {e}", file=sys.stderr)
        sys.exit(1)

    best, found = recommend(curves, args.drop)
    lines = ["| alpha | refreshes | peak flip rate | final flip rate | peaks then falls | final train loss |",
             "|---:|---:|---:|---:|:---:|---:|"]
    for a in alphas:
        f = curves[a] or [float("nan")]
        lines.append(f"| {a:g} | {len(curves[a])} | {max(f):.4f} | {f[-1]:.4f} | "
                     f"{'yes' if peaks_then_falls(curves[a], args.drop) else 'no'} | {finals[a]:.4f} |")
    table = "\n".join(lines)
    verdict = (f"recommended alpha: {best:g} ({RULE}, drop = {args.drop})" if found else
               f"no candidate's flip rate peaked and fell; the largest, {best:g}, is reported: try "
               f"larger alphas or more --steps")
    png = plot_runs(dirs, out / "tune_decay.png", [f"alpha={a:g}" for a in alphas],
                    title=f"masked-decay candidates, {steps} steps from step {start}")
    (out / "tune_decay.md").write_text(f"# sparse24-tune-decay\n\n{table}\n\n{verdict}\n\n![]({png.name})\n")
    print("\n" + table + "\n\n" + verdict)
    print(f"wrote {out / 'tune_decay.md'} and {png}")


if __name__ == "__main__":
    main()
