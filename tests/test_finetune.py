"""sparse24-finetune on the fixture tasks (tests/fixtures: a few dozen made-up examples,
not the real GLUE/SQuAD) from a tiny checkpoint the trainer wrote; plus the SQuAD
windowing and answer mapping, checked with oracle logits, and the TFDS error path."""

import json
import sys
import types

import numpy as np
import pytest

pytest.importorskip("sparse24_train")

from _tiny_runs import FIXTURES, tiny_run
from sparse24_train.data import ByteTokenizer, DataError
from sparse24_train.finetune import finetune, main
from sparse24_train.metrics import squad_metrics
from sparse24_train.tasks import best_spans, encode_squad, load_split, parse_task


def test_glue_srste_evaluated_dense(tmp_path, capsys):
    main(["--task", "glue/mrpc", "--checkpoint", str(tiny_run("srste")), "--data-dir", str(FIXTURES),
          "--max-steps", "2", "--batch-size", "8", "--out", str(tmp_path), "--no-progress", "--lr", "1e-3"])
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["weights"] == "dense" and res["method"] == "srste" and res["train_steps"] == 2
    m = res["metrics"]["validation"]
    assert set(m) == {"f1", "accuracy"} and 0 <= m["f1"] <= 1 and 0 <= m["accuracy"] <= 1
    assert res["n_eval"]["validation"] == 16 and np.isfinite(res["last_loss"])
    assert res["max_length"] == 64  # the recipe's 128, capped at the model's block_size
    assert "glue/mrpc (srste, dense weights)" in capsys.readouterr().out


def test_squad_srste(tmp_path):
    res = finetune("squad", tiny_run("srste"), data_dir=FIXTURES, max_steps=2, batch_size=8,
                   lr=1e-3, stride=16, out=tmp_path, progress=False)
    m = res["metrics"]["validation"]
    assert set(m) == {"exact_match", "f1"} and 0 <= m["exact_match"] <= m["f1"] + 1e-9 <= 100 + 1e-9
    assert res["weights"] == "dense" and res["n_eval"]["validation"] == 10


def test_stsb_sste_keeps_sparse():
    res = finetune("glue/stsb", tiny_run("sste"), data_dir=FIXTURES, max_steps=2, batch_size=8,
                   lr=1e-3, progress=False)
    assert res["weights"] == "sparse"
    assert set(res["metrics"]["validation"]) == {"pearson", "spearman"}
    assert all(-1 <= v <= 1 for v in res["metrics"]["validation"].values())


def test_squad_windows_and_oracle_spans():
    # Short windows (96 tokens, overlap 32) so contexts span several; the training labels must
    # point at the answer's tokens, and logits peaked there must give back the gold answers.
    tok = ByteTokenizer()
    train = load_split("squad", "train", str(FIXTURES), "jsonl")
    enc = encode_squad(train, tok, 96, 32, train=True)
    assert len(enc.ids) > len(train) and enc.ids.shape[1] == 96
    found = set()
    for row, (s, e) in enumerate(enc.labels):
        if (s, e) == (0, 0):
            continue
        ex = train[enc.extra["example"][row]]
        assert tok.decode(enc.ids[row, s:e + 1]) == ex["answers"]["text"][0]
        found.add(int(enc.extra["example"][row]))
    assert found == set(range(len(train)))  # every answer lies wholly in some window

    val = load_split("squad", "validation", str(FIXTURES), "jsonl")
    enc = encode_squad(val, tok, 96, 32, train=False)
    start = np.full(enc.ids.shape, -5.0)
    end = np.full(enc.ids.shape, -5.0)
    for row in range(len(enc.ids)):
        ex = val[enc.extra["example"][row]]
        a0 = ex["answers"]["answer_start"][0]
        a1 = a0 + len(ex["answers"]["text"][0])
        spans = enc.extra["offsets"][enc.extra["example"][row]]
        c0, w0 = enc.extra["ctx_pos"][row], enc.extra["win_start"][row]
        for pos in range(c0, enc.lengths[row]):
            a, b = spans[w0 + pos - c0]
            start[row, pos] += 10.0 * (a == a0)
            end[row, pos] += 10.0 * (b == a1)
    answers = best_spans(start, end, enc, val)
    refs = {ex["id"]: ex["answers"]["text"] for ex in val}
    assert squad_metrics(answers, refs) == {"exact_match": 100.0, "f1": 100.0}


def test_tfds_missing_dataset_says_how_to_prepare(monkeypatch, tmp_path):
    class Builder:
        def __init__(self, name, data_dir=None):
            self.info = types.SimpleNamespace(splits={})

        def is_prepared(self):
            return False

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(builder=Builder))
    with pytest.raises(DataError, match=r"tfds build glue/mrpc --data_dir " + str(tmp_path)):
        load_split(parse_task("glue/mrpc"), "train", str(tmp_path), "auto")
    with pytest.raises(DataError, match="unknown task"):
        parse_task("glue/nope")


def test_tfds_examples_are_read(monkeypatch):
    # A stand-in for tensorflow_datasets (not installed here): bytes and arrays become plain values.
    rows = [{"id": b"q1", "context": b"Paris is big.", "question": b"What is big?",
             "answers": {"text": np.array([b"Paris"]), "answer_start": np.array([0])}}]

    class Builder:
        def __init__(self, name, data_dir=None):
            assert name == "squad"
            self.info = types.SimpleNamespace(splits={"train": 1, "validation": 1})

        def is_prepared(self):
            return True

        def as_dataset(self, split, shuffle_files):
            return rows

    monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                        types.SimpleNamespace(builder=Builder, as_numpy=iter))
    got = load_split("squad", "validation", None, "tfds")
    assert got == [{"id": "q1", "context": "Paris is big.", "question": "What is big?",
                    "answers": {"text": ["Paris"], "answer_start": [0]}}]


def test_offsets_with_a_bpe_tokenizer():
    # A toy byte-level BPE (the GPT-2 algorithm of sparse24_train.data, a few merges): tokens
    # that begin with a space or hold part of a multi-byte character map back to characters.
    from sparse24_train.data import GPT2Tokenizer
    from sparse24_train.tasks import encode_with_offsets

    encoder = {bytes([b]): b for b in range(256)}
    merges = [(b" ", b"P"), (b" P", b"a"), (b"r", b"i"), (b" Pa", b"ri"), (b" Pari", b"s"), (b"\xc3", b"\xa9")]
    for a, b in merges:
        encoder[a + b] = len(encoder)
    tok = GPT2Tokenizer(encoder, merges)
    text = "café Paris, é!"
    ids, spans = encode_with_offsets(tok, text)
    pieces = [text[a:b] for a, b in spans]
    assert tok.decode(ids) == text and "".join(pieces) == text
    assert " Paris" in pieces and "é" in pieces


@pytest.mark.parametrize("content, says", [
    ("", "no examples"),
    ("abc", "line 1: not JSON"),
    ('{"sentence1": "a", "sentence2": "b", "label": 1}\n{"text": "a", "label": 0}\n',
     "example 2 lacks 'sentence1', 'sentence2' (it has 'text', 'label')"),
])
def test_bad_jsonl_is_one_line(tmp_path, capsys, content, says):
    d = tmp_path / "glue" / "mrpc"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text(content)
    (d / "validation.jsonl").write_text((FIXTURES / "glue" / "mrpc" / "validation.jsonl").read_text())
    with pytest.raises(SystemExit) as e:
        main(["--task", "glue/mrpc", "--checkpoint", str(tiny_run("srste")), "--data-dir", str(tmp_path),
              "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("sparse24-finetune: error: ") and says in err and str(d / "train.jsonl") in err
