"""Static cost report of the cuSPARSELt compression kernels (no GPU needed).

Compiles the library's device units (``csrc/*.cu``) for sm_90 to cubins and prints, per
compression kernel, ptxas's registers / shared memory / stack and the number of
SASS instructions (total, and of a few kinds that decide a streaming kernel's
speed: 64-bit multiplies, MUFU special functions, calls to the IEEE division
slow path, local-memory traffic). Used to predict the effect of a kernel change
before spending device time on it::

    python benchmarks/sass_report.py [--filter Mvue]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

from sparse24_jax_kernels.cusparselt import build


def _tool(name: str) -> str:
    """A CUDA binary tool: on PATH, beside nvcc, or the copy Triton ships."""
    found = shutil.which(name)
    if found:
        return found
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filter", default="Compress24Kernel", help="substring of the kernel names")
    ap.add_argument("--arch", default="90")
    args = ap.parse_args()
    nvcc = build.find_nvcc()
    if nvcc is None:
        sys.exit("nvcc not found")
    lib, inc = build.find_cusparselt()
    cmd = build._command(nvcc, "OUT", lib, inc, [args.arch])
    units = build.sources()
    # compile only the device code of the one arch, to a cubin per .cu unit
    keep = [c for c in cmd[: cmd.index(str(units[0]))] if c not in ("-shared",)]
    keep = [c for c in keep if not c.startswith("arch=compute_") or c.endswith(f"sm_{args.arch}")]
    flags = [c for c in keep if c not in ("-gencode",) and not c.startswith("arch=")]
    res = {}
    sass = ""
    with tempfile.TemporaryDirectory() as tmp:
        for unit in (u for u in units if u.suffix == ".cu"):
            cubin = os.path.join(tmp, unit.stem + ".cubin")
            c = flags + ["-cubin", f"-arch=sm_{args.arch}", "-Xptxas", "-v", str(unit), "-o", cubin]
            r = subprocess.run(c, capture_output=True, text=True)
            if r.returncode:
                sys.exit(r.stderr)
            cur = None
            for line in r.stderr.splitlines():
                m = re.search(r"Compiling entry function '(\w+)'", line)
                if m:
                    cur = m.group(1)
                m = re.search(r"Used (\d+) registers", line)
                if m and cur:
                    res[cur] = line.split("ptxas info    :")[-1].strip()
            sass += subprocess.run([_tool("cuobjdump"), "--dump-sass", cubin], capture_output=True,
                                   text=True).stdout
    funcs = re.split(r"\n\s*Function : ", sass)
    names = subprocess.run([shutil.which("cu++filt") or "c++filt"], input="\n".join(f.split("\n", 1)[0] for f in funcs[1:]),
                           capture_output=True, text=True).stdout.splitlines() if funcs[1:] else []
    print(f"{'kernel':70s} {'instr':>6s} {'IMAD.WIDE/HI':>12s} {'MUFU':>5s} {'CALL':>5s} {'LDL/STL':>7s}  ptxas")
    for mangled_body, name in zip(funcs[1:], names):
        mangled = mangled_body.split("\n", 1)[0].strip()
        if args.filter not in name:
            continue
        body = mangled_body
        ins = re.findall(r"/\*[0-9a-f]{4,}\*/\s+([^;]+);", body)
        ops = [i.split()[0] if not i.startswith("@") else i.split()[1] for i in ins]
        cnt = lambda p: sum(1 for o in ops if o.startswith(p))
        wide = cnt("IMAD.WIDE") + cnt("IMAD.HI")
        print(f"{name[:70]:70s} {len(ops):6d} {wide:12d} {cnt('MUFU'):5d} {cnt('CALL'):5d} "
              f"{cnt('LDL') + cnt('STL'):7d}  {res.get(mangled, '')}")


if __name__ == "__main__":
    main()
