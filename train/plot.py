"""sparse24-plot: one PNG comparing runs: loss and flip rate against step.

    sparse24-plot runs/main/dense runs/main/srste -o compare.png

Reads each run directory's metrics.csv (written by sparse24-train). Left: training loss
(solid) and validation loss (dots); right: the 2:4 mask flip rate at each mask
refresh (dense runs have none).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def read_metrics(run_dir) -> dict[str, list[tuple[int, float]]]:
    """{column: [(step, value), ...]} for the non-blank cells of run_dir/metrics.csv."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; give run directories written by sparse24-train --out")
    cols: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if k != "step" and v not in ("", None):
                    cols.setdefault(k, []).append((int(row["step"]), float(v)))
    return cols


def plot_runs(run_dirs, out_png, labels=None, title=None) -> Path:
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    labels = labels or [Path(d).name for d in run_dirs]
    fig, (ax_loss, ax_flip) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (d, label) in enumerate(zip(run_dirs, labels)):
        m, color = read_metrics(d), f"C{i}"
        if "train_loss" in m:
            ax_loss.plot(*zip(*m["train_loss"]), color=color, label=f"{label} train")
        if "val_loss" in m:
            ax_loss.plot(*zip(*m["val_loss"]), "o--", color=color, ms=4, label=f"{label} val")
        if "flip_rate" in m:
            ax_flip.plot(*zip(*m["flip_rate"]), ".-", color=color, label=label)
    ax_loss.set(xlabel="step", ylabel="loss (nats/token)", title="loss")
    ax_flip.set(xlabel="step", ylabel="fraction of mask entries changed", title="2:4 mask flip rate")
    ax_flip.set_yscale("log")
    for ax in (ax_loss, ax_flip):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def main(argv=None):
    p = argparse.ArgumentParser(prog="sparse24-plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (each with a metrics.csv)")
    p.add_argument("-o", "--out", default="compare.png", help="PNG to write (default compare.png)")
    p.add_argument("--labels", help="comma-separated labels, one per run (default: directory names)")
    args = p.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    if labels and len(labels) != len(args.runs):
        p.error(f"--labels has {len(labels)} entries for {len(args.runs)} runs")
    try:
        print(plot_runs(args.runs, args.out, labels))
    except FileNotFoundError as e:
        p.exit(2, f"sparse24-plot: error: {e}\n")


if __name__ == "__main__":
    main()
