"""Markdown tables for docs/BENCHMARKS.md from the JSON the benchmarks write.

    python benchmarks/tables.py gemm docs/data/sparse_gemm_h100_2026-11-23.json
    python benchmarks/tables.py ffn docs/data/ffn_block_h100_2026-11-23.json
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict


def geo(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def gemm(path: str) -> str:
    rows = json.load(open(path))["rows"]
    by = defaultdict(dict)
    comp = defaultdict(dict)
    for r in rows:
        key = (r["model"], r["N"], r["K"])
        (by if "xla" in r else comp)[key][r["gemm"]] = r
    out = [
        "| model | W (N x K) | GEMM | XLA dense ms | ours ms | ours vs XLA | torch dense ms | torch 2:4 ms | ours vs torch 2:4 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    summary = defaultdict(list)
    for (model, n, k), gs in by.items():
        for name in ("fwd", "dX", "dW", "dW+prune"):
            r = gs.get(name)
            if r is None:
                continue
            t = lambda key: f"{1e3 * r[key]:.3f}" if r.get(key) else ""  # noqa: E731
            vs_t = f"{r['torch24'] / r['ours']:.2f}x" if r.get("torch24") else ""
            out.append(f"| {model} | {n} x {k} | {name} | {t('xla')} | {t('ours')} | {r['xla'] / r['ours']:.2f}x | "
                       f"{t('torch')} | {t('torch24')} | {vs_t} |")
            if name in ("fwd", "dX", "dW"):
                summary[model].append(r["xla"] / r["ours"])
    out += ["", "| model | geometric mean of fwd, dX, dW over both FFN linears: ours vs XLA dense |", "|---|---:|"]
    out += [f"| {m} | {geo(v):.2f}x |" for m, v in summary.items()]
    out += ["", "| W (N x K) | per-step compression | ours ms | GB/s |", "|---|---|---:|---:|"]
    for (model, n, k), gs in comp.items():
        for name, r in gs.items():
            out.append(f"| {n} x {k} ({model}) | {name} | {1e3 * r['ours']:.3f} | {r['bytes'] / r['ours'] / 1e9:.0f} |")
    return "\n".join(out)


def ffn(path: str) -> str:
    rows = json.load(open(path))["rows"]
    out = [
        "| model | act | d x h | ours ms | XLA dense ms | torch dense ms | torch 2:4 ms | ours vs XLA | ours vs torch dense | ours vs torch 2:4 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['act']} | {r['d']} x {r['h']} | {r['ours_ms']:.3f} | {r['xla_dense_ms']:.3f} | "
            f"{r.get('torch_dense_ms', float('nan')):.3f} | {r.get('torch_24_ms', float('nan')):.3f} | "
            f"{r['xla_dense_ms'] / r['ours_ms']:.2f}x | {r.get('torch_dense_ms', float('nan')) / r['ours_ms']:.2f}x | "
            f"{r.get('torch_24_ms', float('nan')) / r['ours_ms']:.2f}x |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    print({"gemm": gemm, "ffn": ffn}[sys.argv[1]](sys.argv[2]))
