"""Which fp8 type pairs does cuSPARSELt run as a 2:4 sparse x dense GEMM here (issue #11)?

    python3 benchmarks/fp8_types.py                              # 64^3 and 1024^3
    python3 benchmarks/fp8_types.py --json $OUT/fp8_types.json
    python3 benchmarks/fp8_types.py --shapes 64x64x64 256x512x768

Tries the four pairs (sparse A in {e4m3, e5m2}) x (dense B in {e4m3, e5m2}) in
the FP8 recipe's layout (``ops.fp8_spmm_trial``: A (m, k) 2:4 row-major,
compressed by our kernel; B (n, k) K-contiguous, op T; output bfloat16,
compute float32) at each shape and prints a markdown table: accepted or
refused (with cuSPARSELt's status text), the max abs / relative error against
the float64 numpy product of the same quantized values, and whether our
compression of A is byte-identical to cuSPARSELt's own (the layout assumed
for e5m2 is e4m3's). A refused pair is a finding, not a failure: the script
exits 0 whenever it could ask (2 when there is no GPU / library to ask).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

FP8 = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}
DEFAULT_SHAPES = ("64x64x64", "1024x1024x1024")


def _ops():
    """``sparse24_jax_kernels.cusparselt.ops``, also from a plain checkout."""
    try:
        from sparse24_jax_kernels.cusparselt import ops
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from _kernels_path import ensure_kernels_package

        ensure_kernels_package()
        from sparse24_jax_kernels.cusparselt import ops
    return ops


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        m, n, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not MxNxK (e.g. 1024x1024x1024)") from None
    if m % 32 or k % 64 or n % 8:
        raise argparse.ArgumentTypeError(
            f"shape {text}: fp8 needs m a multiple of 32, k of 64, n of 8 (docs/algorithms.md, section 7)")
    return m, n, k


def parse_pair(text: str) -> tuple[str, str]:
    try:
        a, b = text.lower().split(":")
        return FP8[a], FP8[b]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(
            f"pair {text!r} is not SPARSE:DENSE with each e4m3 or e5m2 (e.g. e5m2:e4m3)") from None


def status_text(msg: str) -> str:
    """The cuSPARSELt call and status of a refusal, e.g. ``cusparseLtMatmulDescriptorInit:
    CUSPARSE_STATUS_NOT_SUPPORTED (10): operation not supported``; else the message's
    first line."""
    call = re.search(r"(cusparseLt\w+)[^:]*? failed", msg)
    status = re.search(r"CUSPARSE_STATUS_\w+ \(-?\d+\): [^\[\n]*", msg)
    if status:
        return (f"{call.group(1)}: " if call else "") + status.group(0).strip()
    line = next((ln for ln in msg.splitlines() if ln.strip()), msg)
    return line.strip()[:300]


def layout_check(ops, sparse: str, m: int, k: int) -> str:
    """Our compression of a 2:4 (m, k) matrix vs cuSPARSELt's own, byte for byte."""
    import jax
    import jax.numpy as jnp
    import ml_dtypes

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _random24 import random_24

    a = jnp.asarray(random_24(np.random.default_rng(m + k), m, k, getattr(ml_dtypes, sparse)))
    try:
        ours = np.asarray(jax.device_get(ops.compress(a)))
    except Exception as err:  # noqa: BLE001 - report it
        return f"our kernel failed: {status_text(str(err))}"
    try:
        lib = np.asarray(jax.device_get(ops.lib_compress(a)))
    except Exception as err:  # noqa: BLE001 - the library may not compress this type
        return f"library refused: {status_text(str(err))}"
    if np.array_equal(ours, lib):
        return "identical"
    return f"DIFFERS in {int((ours != lib).sum())} of {ours.size} bytes"


def run_one(ops, sparse: str, dense: str, m: int, n: int, k: int) -> dict:
    row = {"sparse": sparse, "dense": dense, "m": m, "n": n, "k": k}
    try:
        got, want = ops.fp8_spmm_trial(sparse, dense, m, n, k, seed=m + n + k)
    except Exception as err:  # noqa: BLE001 - a refusal is the finding
        msg = str(err)
        refused = "CUSPARSE_STATUS_" in msg
        row.update(accepted=False, refused=refused, status=status_text(msg),
                   error=f"{type(err).__name__}: {msg.strip()[:2000]}")
        return row
    rel = ops.fp8_rel_err(got, want)  # the probe's measure and tolerance: the two agree on "right"
    row.update(accepted=True, refused=False, max_abs_err=float(np.abs(got - want).max()),
               max_abs_ref=float(np.abs(want).max()), max_rel_err=rel,
               correct=bool(np.isfinite(rel) and rel < ops.FP8_REL_TOL))
    return row


def markdown(rows: list[dict]) -> str:
    out = ["| m x n x k | sparse A | dense B | result | max abs err | max rel err | A's layout vs library |",
           "|---|---|---|---|---:|---:|---|"]
    short = {v: s for s, v in FP8.items()}
    for r in rows:
        shape = f"{r['m']} x {r['n']} x {r['k']}"
        a, b = short[r["sparse"]], short[r["dense"]]
        if r["accepted"]:
            verdict = "accepted, right" if r["correct"] else "accepted, WRONG NUMBERS"
            errs = f"{r['max_abs_err']:.3g} | {r['max_rel_err']:.2e}"
        else:
            verdict = ("refused: " if r["refused"] else "error: ") + r["status"].replace("|", "/")
            errs = " | "
        out.append(f"| {shape} | {a} | {b} | {verdict} | {errs} | {r.get('layout', '')} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="*", type=parse_shape, default=[parse_shape(s) for s in DEFAULT_SHAPES],
                   help=f"MxNxK, m a multiple of 32, k of 64 (default: {' '.join(DEFAULT_SHAPES)})")
    p.add_argument("--pairs", nargs="*", type=parse_pair, default=[(a, b) for a in FP8.values() for b in FP8.values()],
                   help="SPARSE:DENSE pairs, e.g. e5m2:e4m3 (default: all four); one pair per process "
                        "keeps a crash of one from spoiling the others")
    p.add_argument("--json", help="also write the rows here")
    opts = p.parse_args(argv)

    import jax

    ops = _ops()
    try:
        ops.load()
    except Exception as err:  # noqa: BLE001 - nothing to ask
        print(f"cannot ask cuSPARSELt here: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    dev = jax.devices()[0]
    v = ops.version()
    head = {"device": dev.device_kind, "compute_capability": getattr(dev, "compute_capability", ""),
            "jax": jax.__version__, "cusparselt": f"{v // 1000}.{v % 1000 // 100}.{v % 100}"}
    print(f"# {head['device']} (sm {head['compute_capability']}), cuSPARSELt {head['cusparselt']}, "
          f"jax {head['jax']}", flush=True)
    rows = []
    for m, n, k in opts.shapes:
        layouts = {s: layout_check(ops, s, m, k) for s in sorted({a for a, _ in opts.pairs})}
        for sparse, dense in opts.pairs:
            row = run_one(ops, sparse, dense, m, n, k)
            row["layout"] = layouts[sparse]
            rows.append(row)
            print(markdown([row]).splitlines()[-1], flush=True)
            if opts.json:  # after every row: a cut-off run keeps what it found
                with open(opts.json, "w") as fh:
                    json.dump({**head, "rows": rows}, fh, indent=1)
    print("\n" + markdown(rows))
    for r in rows:
        if not r["accepted"]:
            print(f"\n{r['sparse']} x {r['dense']} at {r['m']}x{r['n']}x{r['k']}: {r['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
