"""Common-path SASS instruction count of the MVUE 2:4 kernels, per group of 4 (no GPU needed).

Compiles one unit (own_compress.cu: OwnKernel<OwnMvueBlock<32 or 64>>; the cuSPARSELt library's compress.cu:
MvueTransposedKernel; act_grad.cu: the act-grad MVUE kernels) standalone for sm_90a with line
info, and walks each kernel's control-flow graph (the kernels are loop-free: their group loops
are unrolled) for the longest path from entry to exit that executes no instruction attributed
to a *rare* source region. Rare regions are what runs only when a group's kept pair holds a
zero (an input with zeros, e.g. padding tokens): given below as (file, first line's text, last
line's text) snippets; an instruction counts as rare when any frame of its inline stack lies
in one. The longest such path is the common one (the in-range tokens, both kept values
non-zero). Prints, per kernel: registers, the path's instructions / groups per thread (16),
its MUFU count per group, and the whole kernel's static size::

    python benchmarks/mvue_sass.py            # all three units
    python benchmarks/mvue_sass.py --unit own

Needs nvcc and nvdisasm/cuobjdump (PATH, beside nvcc, or Triton's copies).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUTLASS_CSRC = ROOT / "kernels" / "cutlass" / "csrc"
CUSP_CSRC = ROOT / "kernels" / "cusparselt" / "csrc"

UNITS = {
    "own": (CUTLASS_CSRC / "own_compress.cu", "OwnMvue"),
    "cusparselt": (CUSP_CSRC / "compress.cu", "MvueTransposedKernel"),
    "act_grad": (CUSP_CSRC / "act_grad.cu", "Mvue"),
}
GROUPS_PER_THREAD = 16  # groups of 4 a thread prunes: 8 loaded words x 2 halves


def groups_per_thread(name: str) -> int:
    if "OwnMvueBlockILi32" in name:  # the CUTLASS-format MVUE in blocks of 32 groups: 4 words x 2
        return GROUPS_PER_THREAD // 2
    return 2 * GROUPS_PER_THREAD if "Swiglu" in name else GROUPS_PER_THREAD  # x and gate halves

# (file name, text of the line just before the region (its branch condition), text of the
# region's last line): code that runs only for a group whose kept pair holds a zero, or (own
# projection) a group of more than two non-zeros. The first occurrence of each snippet counts.
RARE = [
    ("compress_kernels.cuh", "if (!PruneGroupDraw(keys, counter, x, half, &pair, &code)) {", "}  // end MvueZeroKept"),
    ("own_compress.cuh", "if (!s24::MvueTransposed<s24::kBF16>::PruneGroupDraw(", "}  // end OwnMvueZeroKept"),
    ("compress_kernels.cuh", "if (!(bl & Tr::kMag) || !(bh & Tr::kMag)) {", "code = static_cast<uint32_t>(c0) | (static_cast<uint32_t>(c1) << 2);"),
    ("sm90_layout.cuh", "if (na && nb) { v0 = a; v1 = b; return p; }", "return 0;"),
    ("own_compress.cuh", "if (s24::Popc(m) > 2) {", "m = s24::NonzeroMask(w01, w23);"),
]


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for cand in ("/tmp/cuobj/x/nvidia/cu13/bin",):
        if os.path.exists(os.path.join(cand, name)):
            return os.path.join(cand, name)
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def rare_ranges() -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for fname, first, last in RARE:
        for path in (CUTLASS_CSRC / fname, CUSP_CSRC / fname):
            if not path.exists():
                continue
            lines = path.read_text().splitlines()
            starts = [i for i, l in enumerate(lines) if first in l]
            if not starts:
                continue  # a region of another version of the code
            s = starts[0]
            e = next(i for i in range(s, len(lines)) if last in lines[i])
            out.setdefault(fname, []).append((s + 2, e + 1))
    return out


def parse(dis: str, kernel_filter: str):
    """{mangled name: [(addr, text, frames)]} from nvdisasm -c -gi output."""
    funcs: dict[str, list] = {}
    labels: dict[str, dict[str, int]] = {}  # label -> index of the instruction it marks
    cur = None
    frames: list[tuple[str, int]] = []
    pending_reset = True
    for line in dis.splitlines():
        m = re.match(r"\s*\.section\s+\.text\.(\w+),", line)
        if m:
            cur = m.group(1) if kernel_filter in m.group(1) else None
            if cur:
                funcs[cur] = []
                labels[cur] = {}
            continue
        if cur is None:
            continue
        m = re.match(r"(\.L_\w+):", line)
        if m:
            labels[cur][m.group(1)] = len(funcs[cur])
            continue
        m = re.match(r'\s*//## File "([^"]+)", line (\d+)', line)
        if m:
            if pending_reset:
                frames = []
                pending_reset = False
            frames.append((os.path.basename(m.group(1)), int(m.group(2))))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            funcs[cur].append((int(m.group(1), 16), m.group(2).strip(), tuple(frames)))
            pending_reset = True
    return {k: (v, labels[k]) for k, v in funcs.items()}


def common_path(ins, labels, rare) -> tuple[int, list]:
    """Longest entry-to-exit path (instructions) avoiding rare instructions; the kernel must be a DAG."""

    def is_rare(t, frames):
        if "BSYNC" in t:
            return False  # a reconvergence point: the common path passes it too
        return any(lo <= ln <= hi for f, ln in frames for lo, hi in rare.get(f, []))

    n = len(ins)
    succ: list[list[int]] = [[] for _ in range(n)]
    for i, (a, t, _) in enumerate(ins):
        pred = t.startswith("@")
        op = t.split()[1] if pred else t.split()[0]
        if op.startswith("BRA"):
            j = labels[re.search(r"\((\.L_\w+)\)", t).group(1)]
            if j == i:
                continue  # the trailing self-loop after EXIT
            if j < i:
                raise SystemExit(f"backward branch at {a:#x}: not a loop-free kernel")
            succ[i].append(j)
            if pred and i + 1 < n:
                succ[i].append(i + 1)
        elif op.startswith("EXIT"):
            succ[i].append(-1)  # exit
            if pred and i + 1 < n:
                succ[i].append(i + 1)
        elif i + 1 < n:
            succ[i].append(i + 1)
    NEG = -(10**9)
    best = [NEG] * (n + 1)
    nxt = [None] * n
    for i in range(n - 1, -1, -1):
        if is_rare(ins[i][1], ins[i][2]):
            continue
        b = NEG
        for j in succ[i]:
            v = 0 if j == -1 else best[j]
            if v > b:
                b, nxt[i] = v, j
        best[i] = b + 1 if b > NEG else NEG
    path, i = [], 0
    while i is not None and i != -1:
        path.append(ins[i])
        i = nxt[i]
    return best[0], path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unit", choices=sorted(UNITS), action="append")
    ap.add_argument("--dump", help="write the common path's SASS of each kernel under this folder")
    ap.add_argument("--lines", action="store_true",
                    help="also print the common path's instructions per group by source line")
    args = ap.parse_args()
    nvcc = shutil.which("nvcc") or sys.exit("nvcc not found")
    rare = rare_ranges()
    inc = ["-I", str(CUTLASS_CSRC), "-I", str(CUSP_CSRC)]
    try:
        import jax.ffi

        inc += ["-I", jax.ffi.include_dir()]
    except Exception:
        pass
    print(f"{'kernel':62s} {'regs':>4s} {'path':>6s} {'/group':>7s} {'MUFU/g':>6s} {'static':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        for unit in args.unit or sorted(UNITS):
            src, filt = UNITS[unit]
            cubin = os.path.join(tmp, unit + ".cubin")
            cmd = [nvcc, "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-DNDEBUG", "-lineinfo",
                   "-diag-suppress", "940,2473", *inc, "-gencode", "arch=compute_90a,code=sm_90a",
                   "-cubin", "-o", cubin, str(src)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                sys.exit(r.stderr)
            dis = subprocess.run([_tool("nvdisasm"), "-c", "-gi", cubin], capture_output=True,
                                 text=True, check=True).stdout
            res = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin], capture_output=True,
                                 text=True, check=True).stdout
            regs = dict(re.findall(r"Function (\w+):\s*\n\s*REG:(\d+)", res))
            for name, (ins, labels) in parse(dis, filt).items():
                total, path = common_path(ins, labels, rare)
                g = groups_per_thread(name)
                mufu = sum("MUFU" in t for _, t, _ in path)
                dem = subprocess.run([shutil.which("cu++filt") or "c++filt"], input=name,
                                     capture_output=True, text=True).stdout.strip()
                print(f"{dem[:62]:62s} {regs.get(name, '?'):>4s} {total:6d} {total / g:7.1f} "
                      f"{mufu / g:6.2f} {len(ins):6d}")
                if args.lines:
                    by_line: dict[tuple[str, int], int] = {}
                    for _, _, fr in path:
                        key = fr[0] if fr else ("?", 0)
                        by_line[key] = by_line.get(key, 0) + 1
                    for (f, ln), c in sorted(by_line.items(), key=lambda kv: -kv[1]):
                        src = (CUTLASS_CSRC / f) if (CUTLASS_CSRC / f).exists() else (CUSP_CSRC / f)
                        text = src.read_text().splitlines()[ln - 1].strip() if src.exists() else ""
                        print(f"    {c / g:6.2f}  {f}:{ln}  {text[:70]}")
                if args.dump:
                    os.makedirs(args.dump, exist_ok=True)
                    with open(os.path.join(args.dump, name[:80] + ".sass"), "w") as f:
                        f.write("\n".join(f"{a:#06x} {t}" for a, t, _ in path) + "\n")


if __name__ == "__main__":
    main()
