"""train/prepare_text.py: local text files -> nanoGPT bins that the bin source reads."""

import json

import numpy as np

from train import prepare_text


def test_prepare_text_roundtrip(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "b.py").write_text("second file\n")
    (src / "a.py").write_text("first file é\n")
    (src / "pkg" / "c.py").write_text("x" * 50)
    (src / "skip.txt").write_text("not matched")
    out = tmp_path / "bins"
    assert prepare_text.main(["--src", str(src), "--out", str(out), "--val-fraction", "0.25"]) == 0
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    data = bytes(np.concatenate([train, val]).astype(np.uint8))
    # sorted paths, NUL-joined, UTF-8 bytes
    assert data == b"\0".join([(src / "a.py").read_bytes(), (src / "b.py").read_bytes(), b"x" * 50])
    assert len(val) == int(len(data) * 0.25)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["files"] == 3 and meta["vocab_size"] == 256
