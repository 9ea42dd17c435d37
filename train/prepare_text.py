"""Turn local text files into nanoGPT's train.bin / val.bin (byte tokens), offline.

The convergence runs need more real text than the embedded corpus (466 KB,
memorised within a few epochs by a 20M-parameter model). Any machine with
Python has megabytes of it: the standard library's source (code, comments and
docstrings, ~30 MB for CPython 3.12). This reads files below a directory
(default: this interpreter's stdlib, site-packages excluded), in sorted path
order, joins them with a NUL byte, and writes UTF-8 bytes as uint16 token ids
(vocabulary 256): the last ``--val-fraction`` of the bytes is validation::

    python -m train.prepare_text --out data/pystdlib
    sparse24-train --set data=data/pystdlib --set vocab_size=256 ...

Nothing is downloaded. Deterministic: the same files give the same bins.
"""

from __future__ import annotations

import argparse
import json
import sysconfig
from pathlib import Path

import numpy as np


def collect(src: Path, pattern: str, exclude: tuple[str, ...]) -> list[Path]:
    files = sorted(p for p in src.rglob(pattern) if p.is_file() and not any(x in p.parts for x in exclude))
    if not files:
        raise SystemExit(f"no files matching {pattern!r} under {src}")
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default=sysconfig.get_paths()["stdlib"], help="directory to read (default: the stdlib)")
    p.add_argument("--glob", default="*.py", help="file pattern (default *.py)")
    p.add_argument("--exclude", default="site-packages,__pycache__",
                   help="comma-separated directory names to skip")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--out", required=True, help="output directory for train.bin, val.bin, meta.json")
    args = p.parse_args(argv)

    src = Path(args.src)
    files = collect(src, args.glob, tuple(x for x in args.exclude.split(",") if x))
    data = b"\0".join(f.read_bytes() for f in files)
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)
    n_val = int(len(ids) * args.val_fraction)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids[:-n_val].tofile(out / "train.bin")
    ids[-n_val:].tofile(out / "val.bin")
    meta = {"source": str(src), "glob": args.glob, "files": len(files), "bytes": len(ids),
            "train_tokens": len(ids) - n_val, "val_tokens": n_val, "tokenizer": "bytes", "vocab_size": 256}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"{len(files)} files, {len(ids) / 1e6:.1f}M byte tokens ({n_val / 1e6:.2f}M val) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
