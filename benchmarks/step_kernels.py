"""The 2:4 kernels of one or more step_profile.py runs, grouped by what they are and side by side.

    python benchmarks/step_kernels.py old/prof.json new/prof.json [--labels old new]

step_profile.py's kernel table names a CUTLASS GEMM by its mangled name (1.5 KB, the first 90
characters alike for all of them), so an in-step A/B of two libraries or two config tables
needs each kernel told apart by what differs: which product it is, its scheduler and its tile.
This reads the ``profile.top_kernels`` of each JSON (``--json`` of step_profile.py; run it with
``--top 60`` so that every kernel of the FFN is listed) and prints, per group, ms/step,
calls/step and us/call, one column block per file:

* CUTLASS GEMMs as ``<product> <scheduler> <tile>``: product ``fwd+gelu`` (the forward with
  the GELU epilogue: ``GeluGradAux`` in the name), ``dx*gelu'`` (the input gradient times
  gelu'(Z1): ``LinCombDeEltAct``), ``dx*gelu'+mvue`` (the same, also writing MVUE(dZ1^T):
  ``LinCombMulAuxMvue``), ``dW`` (a plain GEMM with float32 output: ``LinearCombination<float,``),
  ``dW+acc`` (the same with a float32 source C, the running sum of a gradient accumulation:
  ``LinearCombination<float, float, float,``)
  or ``fwd/dx`` (a plain one with bf16 output; the two are the same CUTLASS kernel); scheduler ``coop``, ``pingpong`` or ``coop-streamK``
  (``StreamKScheduler``); tile M x N from the kernel's tile shape, ``c2x1`` etc. for a cluster other than 1x1.
* our compressors (``OwnKernel<...>``) by their struct: ``OwnMvueBlock<32>``, ``OwnProject``.

Other kernels (XLA's, cuDNN's, cuSPARSELt's) are left out: step_profile.py's own categories
cover them. A field the name rules cannot read prints as ``?`` (the kernel is still counted).
"""

from __future__ import annotations

import argparse
import json
import re
import sys

# Itanium mangling of CUTLASS's kernel: the mainloop's stage count and cluster shape, then the
# kernel schedule, then the tile shape: ...SparseILi3ENS5_IJNS4_1CILi1EEESB_SB_EEE
# NS1_35KernelTmaWarpSpecializedCooperativeEEENS5_IJNSA_ILi256EEENSA_ILi128EEESG_EEE...
# A tile extent equal to an earlier one is a back-reference (S..._), not a number: for
# 128x128 the N extent is the M extent's.
_MANGLED_TILE = re.compile(r"(?:Cooperative|Pingpong)EEENS\w*?_IJNS\w*?_ILi(\d+)EEE(?:NS\w*?_ILi(\d+)EEE)?")
# The cluster's N extent is spelt out when it differs from its M extent, else a back-reference
# to it: 1x1 ...1CILi1EEESB_SB_, 2x1 ...1CILi2EEENSA_ILi1EEESC_, 1x2 ...1CILi1EEENSA_ILi2EEESB_,
# 2x2 ...1CILi2EEESB_NSA_ILi1EEE (cute::Shape<M, N, 1>).
_MANGLED_CLUSTER = re.compile(r"SparseILi\d+ENS\w*?_IJNS\w*?_1CILi(\d+)EEE(?:NS\w*?_ILi(\d+)EEE)?")
# the demangled spelling, as some profilers write it
_PLAIN_TILE = re.compile(r"(?:Cooperative|Pingpong)>, cute::tuple<cute::C<(\d+)>, cute::C<(\d+)>")
_PLAIN_CLUSTER = re.compile(r"Sparse<\d+, cute::tuple<cute::C<(\d+)>, cute::C<(\d+)>")
_OWN = re.compile(r"OwnKernel<s24c::(\w+(?:<\d+>)?)")


def kernel_group(name: str) -> str | None:
    """The group of one kernel name (see the module docstring), or None for a kernel that is
    not ours (XLA, cuDNN, cuBLAS, cuSPARSELt)."""
    own = _OWN.search(name)
    if own:
        return own.group(1)
    if "GemmUniversal" not in name or "Sparse" not in name:
        return None
    if "GeluGradAux" in name:
        product = "fwd+gelu"
    elif "LinCombMulAuxMvue" in name:
        product = "dx*gelu'+mvue"
    elif "LinCombDeEltAct" in name:
        product = "dx*gelu'"
    elif "LinearCombinationIffff" in name or "LinearCombination<float, float, float," in name:
        product = "dW+acc"  # dw_acc: float32 output and a float32 source C (the running sum)
    elif "LinearCombinationIff" in name or "LinearCombination<float," in name:
        product = "dW"  # float32 output (mangled: ff = float, float), no source C (v = void)
    else:
        product = "fwd/dx"
    if "Pingpong" in name:
        sched = "pingpong"
    elif "Cooperative" in name:
        sched = "coop-streamK" if "StreamK" in name else "coop"
    else:
        sched = "?"
    tile = _MANGLED_TILE.search(name) or _PLAIN_TILE.search(name)
    shape = f"{tile.group(1)}x{tile.group(2) or tile.group(1)}" if tile else "?x?"
    cluster = _MANGLED_CLUSTER.search(name) or _PLAIN_CLUSTER.search(name)
    if cluster:
        cm = cluster.group(1)
        cn = cluster.group(2) or cm  # mangled: no N extent spelt out = the same as M
        if (cm, cn) != ("1", "1"):
            shape += f" c{cm}x{cn}"
    return f"{product} {sched} {shape}"


def group_kernels(top_kernels: list[dict]) -> dict[str, tuple[float, float]]:
    """{group: (ms per step, calls per step)} over step_profile's top_kernels rows."""
    out: dict[str, list[float]] = {}
    for row in top_kernels:
        group = kernel_group(row["name"])
        if group is None:
            continue
        acc = out.setdefault(group, [0.0, 0.0])
        acc[0] += row["ms_per_step"]
        acc[1] += row["calls_per_step"]
    return {g: (ms, calls) for g, (ms, calls) in out.items()}


def table(runs: dict[str, dict]) -> str:
    """Markdown: one row per group, ms/step, calls and us/call of each run side by side."""
    grouped = {label: group_kernels(r["profile"]["top_kernels"]) for label, r in runs.items()}
    groups = sorted({g for gs in grouped.values() for g in gs})
    head = "| kernel | " + " | ".join(f"{lb}: ms/step | calls | us/call" for lb in runs) + " |"
    sep = "|---|" + "---:|---:|---:|" * len(runs)
    lines = [head, sep]
    for g in groups:
        cells = []
        for label in runs:
            ms, calls = grouped[label].get(g, (0.0, 0.0))
            cells.append(f"{ms:.3f} | {calls:g} | {1e3 * ms / calls:.1f}" if calls else "- | - | -")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    totals = " | ".join(f"{sum(ms for ms, _ in grouped[lb].values()):.3f} | |" for lb in runs)
    steps = " | ".join(f"{runs[lb]['timing']['step_ms']:.2f} | |" for lb in runs)
    lines.append(f"| **these kernels** | {totals} |")
    lines.append(f"| **step (ms, timed)** | {steps} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", nargs="+", help="step_profile.py --json outputs")
    p.add_argument("--labels", nargs="+", help="a column label per file (default: the paths)")
    args = p.parse_args(argv)
    labels = args.labels or args.json
    if len(labels) != len(args.json):
        p.error(f"{len(labels)} labels for {len(args.json)} files")
    runs = {}
    for label, path in zip(labels, args.json):
        with open(path) as f:
            runs[label] = json.load(f)
        if "top_kernels" not in runs[label].get("profile", {}):
            p.error(f"{path} has no profile.top_kernels: is it step_profile.py's --json output?")
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
