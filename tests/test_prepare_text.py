"""train/prepare_text.py: local text files -> nanoGPT bins that the bin source reads."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from train import prepare_text

TOY = Path(__file__).resolve().parent / "fixtures" / "bpe_toy"


def corpus(root: Path, n: int = 12) -> Path:
    """n distinct text files in two folders, and one of every kind prepare_text must skip."""
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    for i in range(n):
        (root / ("pkg" if i % 2 else "") / f"m{i:02d}.py").write_text(f"def f{i}():\n    return {i}  # é\n" * (i + 1))
    (root / "notes.md").write_text("# Notes\n\nSome *markdown* text.\n")
    (root / "zz_dup.txt").write_text((root / "m00.py").read_text())  # m00.py again, met after it
    (root / "empty.rst").write_text("  \n")
    (root / "blob.txt").write_bytes(b"abc\0def")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "big.txt").write_text("x" * 3000)
    (root / "pkg" / "__pycache__" / "m01.py").write_text("never read")
    (root / "ignored.json").write_text("{}")
    os.symlink(root / "notes.md", root / "link.md")
    os.mkfifo(root / "pipe.txt")  # reading it would wait forever for a writer
    return root


def run(tmp_path, *args):
    out = tmp_path / "bins"
    assert prepare_text.main([*args, "--out", str(out), "--quiet"]) == 0
    read = lambda n: np.fromfile(out / f"{n}.bin", dtype=np.uint16)
    return out, read("train"), read("val"), json.loads((out / "manifest.json").read_text())


def test_byte_corpus_split_by_file_with_duplicates_and_skips_counted(tmp_path):
    src = corpus(tmp_path / "src")
    out, train, val, man = run(tmp_path, "--src", str(src), "--tokenizer", "byte",
                               "--max-file-mb", "0.002", "--val-fraction", "0.3")
    kept = sorted(p for p in src.rglob("*") if p.suffix in (".py", ".md") and "__pycache__" not in p.parts
                  and not p.is_symlink())
    assert len(kept) == 13
    # each file whole in one split, in sorted path order, followed by a NUL; the content hash decides
    score = lambda p: int.from_bytes(hashlib.sha256(p.read_bytes()).digest()[:8], "big") / 2**64
    for ids, is_val in ((train, False), (val, True)):
        want = b"".join(p.read_bytes() + b"\0" for p in kept if (score(p) < 0.3) == is_val)
        assert bytes(ids.astype(np.uint8)) == want and len(ids) > 0
    t = man["totals"]
    assert (t["files"], t["duplicates"], t["matched"]) == (13, 1, 20)
    assert t["skipped"] == {"empty": 1, "binary": 1, "undecodable": 1, "too_large": 1, "symlink": 1,
                           "unreadable": 1}
    assert t["train_tokens"] == len(train) and t["val_tokens"] == len(val)
    assert t["train_files"] + t["val_files"] == 13 and t["bytes"] == sum(p.stat().st_size for p in kept)
    assert man["tokenizer"]["name"] == "byte" and man["tokenizer"]["requested"] == "byte" and man["separator"] == 0
    rows = (out / "files.tsv").read_text().splitlines()
    assert len(rows) == 1 + 20 and any(r.startswith("duplicate\t") and r.endswith("zz_dup.txt") for r in rows)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["files"] == 13 and meta["vocab_size"] == 256 and meta["train_tokens"] == len(train)
    from sparse24_train.config import load_config
    from sparse24_train.data import make_source
    source, _ = make_source(load_config("tiny", {"data": str(out), "block_size": 16}))
    assert source.max_token() < 256  # what the training CLI reads


def test_gpt2_tokens_with_eot_after_each_file_and_the_files_recorded(tmp_path):
    from sparse24_train.data import GPT2Tokenizer

    tokdir = tmp_path / "tok"
    tokdir.mkdir()
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(TOY / f, tokdir / f)
    src = corpus(tmp_path / "src")
    out, train, val, man = run(tmp_path, "--src", str(src), "--tokenizer", "gpt2", "--tokenizer-dir",
                               str(tokdir), "--glob", "*.py", "--workers", "3")
    tok = GPT2Tokenizer.from_dir(tokdir)
    files = sorted(p for p in src.rglob("*.py") if "__pycache__" not in p.parts)
    ids = np.concatenate([train, val])
    assert sorted(ids.tolist()) == sorted(i for p in files for i in tok.encode(p.read_text()) + [656])
    assert (ids == 656).sum() == len(files) and train[-1] == 656 and val[-1] == 656
    info = man["tokenizer"]
    assert info["name"] == "gpt2" and info["eot"] == 656 and info["dir"] == str(tokdir)
    assert [f["name"] for f in info["files"]] == ["vocab.json", "merges.txt"]
    assert info["files"][0]["sha256"] == hashlib.sha256((TOY / "vocab.json").read_bytes()).hexdigest()
    assert info["files"][0]["known_as"] is None  # a toy, not OpenAI's files


def test_same_files_same_bins_whatever_the_workers(tmp_path):
    src = corpus(tmp_path / "src", n=30)
    runs = []
    for w in ("1", "2"):
        out, train, val, man = run(tmp_path / w, "--src", str(src), "--tokenizer", "byte", "--workers", w)
        runs.append((train.tobytes(), val.tobytes(), (out / "manifest.json").read_text(),
                     (out / "files.tsv").read_text()))
    assert runs[0] == runs[1]


def test_tiny_inputs_still_give_both_splits(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("a = 1\n")
    (src / "b.py").write_text("b = 2\n")
    for frac in ("0.001", "0.999"):  # the hash alone would put both files in one split
        _, train, val, man = run(tmp_path / frac, "--src", str(src), "--tokenizer", "byte",
                                 "--val-fraction", frac)
        assert len(train) == len(val) == 7 and man["totals"]["train_files"] == 1


@pytest.mark.parametrize("case, args, message", [
    ("zero", ["--val-fraction", "0"], "--val-fraction must be above 0 and below 1 (got 0.0)"),
    ("one", ["--val-fraction", "1"], "--val-fraction must be above 0 and below 1 (got 1.0)"),
    ("none", ["--glob", "*.nothing"], "no files matching *.nothing"),
    ("one_file", ["--glob", "notes.md"], "only 1 usable file"),
    ("duplicates", ["--glob", "m00.py,zz_dup.txt"], "1 duplicates dropped"),
    ("unusable", ["--glob", "empty.rst,blob.txt"], "2 files matched but none is usable (empty 1, binary 1)"),
    ("no_bpe", ["--tokenizer", "gpt2", "--tokenizer-dir", "."], "or use --tokenizer byte"),
    ("source", ["--sources", "stdlib,nope"], "unknown source 'nope'"),
])
def test_unusable_inputs_are_one_line_errors_and_write_nothing(tmp_path, case, args, message):
    src = corpus(tmp_path / "src")
    out = tmp_path / "bins"
    with pytest.raises(SystemExit) as e:
        prepare_text.main(["--src", str(src), "--tokenizer", "byte", *args, "--out", str(out), "--quiet"])
    text = str(e.value)
    assert message in text and "\n" not in text and text.startswith("prepare_text: ")
    assert not (out / "train.bin").exists()


def test_default_sources_are_this_interpreters(monkeypatch):
    names = [s.name for s in prepare_text.make_sources(list(prepare_text.DEFAULT_SOURCES), [], frozenset())]
    assert names == ["stdlib", "site-packages", "doc"]
    stdlib = prepare_text.make_sources(["stdlib"], [], frozenset())[0]
    assert "site-packages" in stdlib.exclude  # counted once, as their own source
    dirs = prepare_text.site_dirs()
    assert dirs and all(d.is_dir() for d in dirs) and any(Path(np.__file__).is_relative_to(d) for d in dirs)


def test_gpt2_without_tiktoken_names_the_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tiktoken", None)
    with pytest.raises(SystemExit, match="pip install tiktoken .or use --tokenizer byte"):
        prepare_text.main(["--src", str(corpus(tmp_path / "src")), "--tokenizer-dir", str(TOY),
                           "--out", str(tmp_path / "bins"), "--quiet"])
    assert not (tmp_path / "bins").exists()
