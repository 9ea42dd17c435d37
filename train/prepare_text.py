"""Turn the text files on this machine into nanoGPT's train.bin / val.bin, offline.

A GPU machine with no network still holds hundreds of MB of real text: the source and
documentation of its Python standard library and installed packages, and /usr/share/doc.
This gathers files from several sources (default: `stdlib`, `site-packages` (this
interpreter's), `doc` (/usr/share/doc); or only the --src folders given), matching
several patterns (default *.py *.md *.rst *.txt), then:

* reads each source's folders in a fixed order (each folder's files sorted by name, then
  its subfolders sorted; symlinked files and folders are not followed), drops exact
  duplicates (same SHA-256: the first met stays) and skips empty, binary (NUL bytes),
  non-UTF-8, over-size and unreadable files;
* splits by file, never inside one: a file goes to validation when the first 8 bytes of
  its SHA-256, as a fraction of 2**64, fall below --val-fraction. The content decides, not
  the path, so the same file lands in the same split on every machine;
* tokenizes with GPT-2's BPE when its files are found (tiktoken, threads) or as UTF-8
  bytes (--tokenizer auto|gpt2|byte), each file followed by <|endoftext|> (GPT-2) or a
  NUL byte (bytes), and writes flat uint16 ids;
* records what went in: manifest.json (per source: files, bytes, duplicates, skipped and
  why, split sizes and tokens; the tokenizer and the SHA-256 of its files), files.tsv
  (every file seen and what became of it), meta.json (the short summary).

    python -m train.prepare_text --out data/pycorpus               # every default source
    python -m train.prepare_text --sources stdlib --glob '*.py' --tokenizer byte --out data/pystdlib
    sparse24-train --set data=data/pycorpus ...

Nothing is downloaded. The same files give the same bins, whatever --workers.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import site
import stat
import sysconfig
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_SOURCES = ("stdlib", "site-packages", "doc")
SKIP_REASONS = ("symlink", "too_large", "unreadable", "empty", "binary", "undecodable")
# SHA-256 of OpenAI's GPT-2 files (the hashes tiktoken pins for its "gpt2" encoding, and
# the gpt2.tiktoken both whisper packages ship): the manifest says when the files are these.
KNOWN_GPT2_FILES = {
    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783": "OpenAI GPT-2 encoder.json",
    "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5": "OpenAI GPT-2 vocab.bpe",
    "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930": "OpenAI GPT-2 gpt2.tiktoken",
}


def fail(msg: str):
    raise SystemExit(f"prepare_text: {msg}")


@dataclass
class Source:
    name: str
    roots: list[Path]
    exclude: frozenset = frozenset()
    stats: Counter = field(default_factory=Counter)


@dataclass
class Doc:
    source: Source
    path: Path
    size: int
    digest: bytes
    split: str = ""
    tokens: int = 0


def site_dirs() -> list[Path]:
    """This interpreter's package folders (site-packages / dist-packages, user site), each once."""
    cands = list(getattr(site, "getsitepackages", list)())
    if site.ENABLE_USER_SITE:
        cands.append(site.getusersitepackages())
    paths = sysconfig.get_paths()
    cands += [paths["purelib"], paths["platlib"]]
    dirs = []
    for c in cands:
        p = Path(c).resolve()
        if p.is_dir() and p not in dirs:
            dirs.append(p)
    # a folder inside another listed one would be read twice
    return [d for d in dirs if not any(o != d and d.is_relative_to(o) for o in dirs)]


def make_sources(names: list[str], srcs: list[str], exclude: frozenset) -> list[Source]:
    out = []
    for n in names:
        if n == "stdlib":  # installed packages are their own source, not part of this one
            out.append(Source(n, [Path(sysconfig.get_paths()["stdlib"]).resolve()],
                              exclude | {"site-packages", "dist-packages"}))
        elif n == "site-packages":
            out.append(Source(n, site_dirs(), exclude))
        elif n == "doc":
            out.append(Source(n, [Path("/usr/share/doc")], exclude))
        else:
            fail(f"unknown source {n!r} in --sources: use {', '.join(DEFAULT_SOURCES)} (or --src DIR)")
    for s in srcs:
        if not Path(s).is_dir():
            fail(f"--src {s}: no such directory")
        out.append(Source(s, [Path(s).resolve()], exclude))
    return out


def walk(root: Path, globs: list[str], exclude: frozenset):
    """Matching files below root: each folder's files sorted by name, then its subfolders
    sorted, so the order is the same on every machine; symlinked folders are not entered."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in exclude)
        for f in sorted(filenames):
            if any(fnmatch.fnmatchcase(f, g) for g in globs):
                yield Path(dirpath) / f


def check(path: Path, max_bytes: int) -> tuple[str, int, bytes]:
    """(reason to skip or "", size, content)."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):  # its target is read where it lives, or lies outside the sources
            return "symlink", 0, b""
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device: reading it could block or never end
            return "unreadable", 0, b""
        size = st.st_size
        if size > max_bytes:
            return "too_large", size, b""
        data = path.read_bytes()
    except OSError:
        return "unreadable", 0, b""
    if not data.strip():
        return "empty", len(data), b""
    if b"\0" in data:
        return "binary", len(data), b""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "undecodable", len(data), b""
    return "", len(data), data


def scan(sources: list[Source], globs: list[str], max_bytes: int, log) -> tuple[list[Doc], list]:
    """Every file seen: the kept ones (Doc) and rows (status, source, bytes, path) for the rest."""
    kept, rows, seen = [], [], set()
    for s in sources:
        t0 = last = time.time()
        for root in s.roots:
            if not root.is_dir():
                s.stats["missing_roots"] += 1
                continue
            for p in walk(root, globs, s.exclude):
                s.stats["matched"] += 1
                reason, size, data = check(p, max_bytes)
                if not reason:
                    digest = hashlib.sha256(data).digest()
                    reason = "duplicate" if digest in seen else ""
                if time.time() - last > 10:
                    last = time.time()
                    log(f"  {s.name}: {s.stats['matched']} files seen, {s.stats['bytes'] / 1e6:.1f} MB kept ...")
                if reason:
                    s.stats[reason] += 1
                    s.stats[reason + "_bytes"] += size
                    rows.append((reason, s.name, size, "", "", str(p)))
                    continue
                seen.add(digest)
                kept.append(Doc(s, p, len(data), digest))
                s.stats["files"] += 1
                s.stats["bytes"] += len(data)
        skipped = ", ".join(f"{r} {s.stats[r]}" for r in SKIP_REASONS if s.stats[r]) or "none"
        log(f"  {s.name:<13} {s.stats['files']:>7} files {s.stats['bytes'] / 1e6:8.1f} MB kept; "
            f"{s.stats['duplicate']} duplicates; skipped: {skipped}  "
            f"({', '.join(map(str, s.roots)) or 'no folders'}; {time.time() - t0:.1f} s)")
    return kept, rows


def split(docs: list[Doc], val_fraction: float):
    """By content hash; with 2+ files both splits get at least one (the extreme scores move)."""
    score = lambda d: int.from_bytes(d.digest[:8], "big") / 2**64
    for d in docs:
        d.split = "val" if score(d) < val_fraction else "train"
    if not any(d.split == "val" for d in docs):
        min(docs, key=score).split = "val"
    if not any(d.split == "train" for d in docs):
        max(docs, key=score).split = "train"


def tokenizer_info(tok, requested: str) -> dict:
    info = {"name": tok.name, "requested": requested, "vocab_size": tok.vocab_size, "eot": tok.eot}
    files = getattr(tok, "files", None)
    if files:
        info["dir"] = str(files[0].parent)
        info["files"] = []
        for f in files:
            h = hashlib.sha256(f.read_bytes()).hexdigest()
            info["files"].append({"name": f.name, "bytes": f.stat().st_size, "sha256": h,
                                  "known_as": KNOWN_GPT2_FILES.get(h)})
    return info


def load_tokenizer(kind: str, tokenizer_dir: str | None):
    from .data import DataError, get_tokenizer

    dirs = [Path(tokenizer_dir)] if tokenizer_dir else None
    if tokenizer_dir and not Path(tokenizer_dir).is_dir():
        fail(f"--tokenizer-dir {tokenizer_dir}: no such directory")
    try:
        tok = get_tokenizer(kind, dirs)
    except DataError as e:  # data.py words its hints for the training CLI's --set
        fail(str(e).replace("--set tokenizer=byte", "--tokenizer byte"))
    if tok.vocab_size > 65536:
        fail(f"the tokenizer has {tok.vocab_size} tokens: more than uint16 bins can hold")
    return tok


def encode_file(tok, sep: int, path: Path) -> np.ndarray:
    ids = tok.encode_array(path.read_text("utf-8"))
    return np.concatenate([ids.astype(np.uint16), np.array([sep], np.uint16)])


def write_bins(docs: list[Doc], tok, out: Path, workers: int, log) -> None:
    """Tokenize in file order (threads: tiktoken releases the GIL) into *.bin.tmp, then rename,
    so a failed run never leaves a half-written train.bin."""
    sep = tok.eot if tok.eot is not None else 0
    total = sum(d.size for d in docs)
    done = ntok = 0
    t0 = last = time.time()
    files = {name: open(out / f"{name}.bin.tmp", "wb") for name in ("train", "val")}
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            chunk, chunk_bytes = [], 0
            for i, d in enumerate(docs):
                chunk.append(d)
                chunk_bytes += d.size
                # bounded chunks (~64 MB of text) keep memory flat; map() keeps their order
                if chunk_bytes < 64e6 and i + 1 < len(docs):
                    continue
                for c, ids in zip(chunk, pool.map(lambda c: encode_file(tok, sep, c.path), chunk)):
                    ids.tofile(files[c.split])
                    c.tokens = len(ids)
                    done, ntok = done + c.size, ntok + len(ids)
                    if time.time() - last > 5 or done == total:
                        last, dt = time.time(), time.time() - t0
                        log(f"  tokenized {done / 1e6:7.1f}/{total / 1e6:.1f} MB, {ntok / 1e6:.1f}M tokens, "
                            f"{ntok / max(dt, 1e-9) / 1e6:.2f}M tokens/s, "
                            f"{dt / done * (total - done):.0f} s left")
                chunk, chunk_bytes = [], 0
    finally:
        for f in files.values():
            f.close()
    for name in ("train", "val"):
        os.replace(out / f"{name}.bin.tmp", out / f"{name}.bin")


def summarize(docs, sources, tok, args) -> dict:
    """The manifest: deterministic (no times, no host names), so equal inputs give equal files."""
    def counts(ds):
        c = {f"{s}_{k}": 0 for s in ("train", "val") for k in ("files", "bytes", "tokens")}
        for d in ds:
            c[f"{d.split}_files"] += 1
            c[f"{d.split}_bytes"] += d.size
            c[f"{d.split}_tokens"] += d.tokens
        return c

    per_source = []
    for s in sources:
        st = s.stats
        per_source.append({
            "name": s.name, "roots": [str(r) for r in s.roots], "missing_roots": st["missing_roots"],
            "matched": st["matched"],
            "files": st["files"], "bytes": st["bytes"], "duplicates": st["duplicate"],
            "duplicate_bytes": st["duplicate_bytes"],
            "skipped": {r: st[r] for r in SKIP_REASONS if st[r]},
            **counts([d for d in docs if d.source is s])})
    totals = {k: sum(p[k] for p in per_source) for k in
              ("matched", "files", "bytes", "duplicates", "duplicate_bytes")}
    totals["skipped"] = dict(sum((Counter(p["skipped"]) for p in per_source), Counter()))
    totals.update(counts(docs))
    return {
        "tool": "sparse24_train.prepare_text",
        "format": "flat uint16 token ids (nanoGPT); each file's tokens then the separator",
        "separator": tok.eot if tok.eot is not None else 0,
        "tokenizer": tokenizer_info(tok, args.tokenizer),
        "globs": args.glob.split(","), "max_file_bytes": int(args.max_file_mb * 1e6),
        "split": {"by": "file", "rule": "val if sha256(content)[:8] / 2**64 < val_fraction",
                  "val_fraction": args.val_fraction,
                  "val_fraction_of_bytes": totals["val_bytes"] / max(totals["bytes"], 1)},
        "sources": per_source, "totals": totals,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", default=None,
                   help=f"comma-separated: {','.join(DEFAULT_SOURCES)} (the default, unless --src "
                        f"is given: then none of them unless listed here)")
    p.add_argument("--src", action="append", default=[], metavar="DIR", help="a folder to read (repeatable)")
    p.add_argument("--glob", default="*.py,*.md,*.rst,*.txt", help="comma-separated file name patterns")
    p.add_argument("--exclude", default="__pycache__,.git,.hg,.svn,.tox,node_modules",
                   help="comma-separated folder names not entered")
    p.add_argument("--max-file-mb", type=float, default=4.0,
                   help="skip larger files (generated tables, data dumps); default 4")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of files (about the same share of bytes) for val.bin; 0 < f < 1")
    p.add_argument("--tokenizer", choices=("auto", "gpt2", "byte"), default="auto",
                   help="gpt2: GPT-2 BPE (its files + tiktoken); byte: UTF-8 bytes; auto: gpt2 if its "
                        "files are found, else byte")
    p.add_argument("--tokenizer-dir", default=None,
                   help="folder with GPT-2's files (default: $SPARSE24_TOKENIZER_DIR, then "
                        "~/.cache/sparse24_jax/gpt2/)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizer threads")
    p.add_argument("--out", required=True, help="output folder for train.bin, val.bin and the manifest")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda msg: print(msg, flush=True))
    t0 = time.time()

    if not 0 < args.val_fraction < 1:  # 0 used to write everything to val.bin (ids[:-0])
        fail(f"--val-fraction must be above 0 and below 1 (got {args.val_fraction}): training reads "
             f"both train.bin and val.bin; 0.05 is usual")
    names = [n for n in (args.sources if args.sources is not None else
                         ("" if args.src else ",".join(DEFAULT_SOURCES))).split(",") if n]
    if not names and not args.src:
        fail("no sources: give --sources and/or --src DIR")
    globs = [g for g in args.glob.split(",") if g]
    tok = load_tokenizer(args.tokenizer, args.tokenizer_dir)  # before the scan: fail fast
    log(f"tokenizer: {tok.name} (vocab {tok.vocab_size})"
        + (f" from {tok.files[0].parent}" if getattr(tok, "files", None) else ""))

    sources = make_sources(names, args.src, frozenset(x for x in args.exclude.split(",") if x))
    log(f"scanning {', '.join(s.name for s in sources)} for {' '.join(globs)}")
    docs, rows = scan(sources, globs, int(args.max_file_mb * 1e6), log)
    matched = sum(s.stats["matched"] for s in sources)
    if not docs:
        if not matched:
            fail(f"no files matching {' '.join(globs)} in {', '.join(s.name for s in sources)}: "
                 f"check --src, --sources and --glob")
        why = sum((s.stats for s in sources), Counter())
        why = ", ".join(f"{k} {why[k]}" for k in SKIP_REASONS + ("duplicate",) if why[k])
        fail(f"{matched} files matched but none is usable ({why}): "
             f"add text files (--src DIR) or patterns (--glob)")
    if len(docs) < 2:
        dups = sum(s.stats["duplicate"] for s in sources)
        fail(f"only 1 usable file ({docs[0].path}; {dups} duplicates dropped): train and validation "
             f"are split by file, so at least 2 are needed: add files (--src DIR) or patterns (--glob)")
    split(docs, args.val_fraction)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_bins(docs, tok, out, args.workers, log)
    seconds = time.time() - t0
    manifest = summarize(docs, sources, tok, args)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    with open(out / "files.tsv", "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("status\tsource\tbytes\ttokens\tsha256_16\tpath\n")
        for d in docs:
            f.write(f"{d.split}\t{d.source.name}\t{d.size}\t{d.tokens}\t{d.digest.hex()[:16]}\t{d.path}\n")
        for r in rows:
            f.write("\t".join(map(str, r)) + "\n")
    t = manifest["totals"]
    (out / "meta.json").write_text(json.dumps({
        "sources": [s.name for s in sources], "glob": args.glob, "files": t["files"], "bytes": t["bytes"],
        "train_tokens": t["train_tokens"], "val_tokens": t["val_tokens"],
        "tokenizer": tok.name, "vocab_size": tok.vocab_size}, indent=1) + "\n")
    for name in ("train", "val"):
        if t[f"{name}_tokens"] < 1026:  # GPT-2's block_size 1024 + 2: what the bin source needs
            log(f"warning: {name}.bin has {t[f'{name}_tokens']} tokens, fewer than a 1024-token "
                f"block needs (block_size+2); training with such a block_size will refuse it")
    log(f"{t['files']} files ({t['duplicates']} duplicates dropped), {t['bytes'] / 1e6:.1f} MB -> "
        f"train {t['train_tokens'] / 1e6:.2f}M tokens ({t['train_files']} files), val "
        f"{t['val_tokens'] / 1e6:.2f}M tokens ({t['val_files']} files), {tok.name} tokens; "
        f"{seconds:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
