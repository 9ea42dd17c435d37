"""sparse24_train.data's tokenizers: the ids are pinned, for every file format GPT2Tokenizer reads.

The vocabulary is a toy one in GPT-2's layout (tests/fixtures/bpe_toy/make.py trains it);
expected.json holds the ids the original pure-Python BPE gave, so a faster implementation
must reproduce them exactly.
"""

import base64
import json
import shutil
from pathlib import Path

import pytest

from sparse24_train.data import ByteTokenizer, _bytes_to_unicode, get_tokenizer

TOY = Path(__file__).resolve().parent / "fixtures" / "bpe_toy"
EXPECTED = json.loads((TOY / "expected.json").read_text("utf-8"))


def write_format(d: Path, fmt: str) -> Path:
    """The toy vocabulary in one of the three layouts GPT2Tokenizer.from_dir reads."""
    d.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        shutil.copy(TOY / "vocab.json", d / "vocab.json")
        shutil.copy(TOY / "merges.txt", d / "merges.txt")
    elif fmt == "openai":
        shutil.copy(TOY / "vocab.json", d / "encoder.json")
        shutil.copy(TOY / "merges.txt", d / "vocab.bpe")
    else:  # tiktoken: base64 of the token's bytes, then its rank (= id); no special tokens
        byte_of = {c: b for b, c in _bytes_to_unicode().items()}
        vocab = json.loads((TOY / "vocab.json").read_text("utf-8"))
        lines = [f"{base64.b64encode(bytes(byte_of[c] for c in k)).decode()} {v}"
                 for k, v in sorted(vocab.items(), key=lambda kv: kv[1]) if k != "<|endoftext|>"]
        (d / "gpt2.tiktoken").write_text("\n".join(lines) + "\n", "ascii")
    return d


@pytest.mark.parametrize("fmt", ["hf", "openai", "tiktoken"])
def test_gpt2_ids_are_pinned_for_every_file_format(tmp_path, monkeypatch, fmt):
    monkeypatch.setenv("SPARSE24_TOKENIZER_DIR", str(write_format(tmp_path / fmt, fmt)))
    monkeypatch.setenv("HOME", str(tmp_path))
    tok = get_tokenizer("gpt2")
    # a rank file has no special tokens: <|endoftext|> is GPT-2's 50256 whatever the file holds
    eot = 50256 if fmt == "tiktoken" else 656
    assert tok.name == "gpt2" and tok.eot == eot and tok.vocab_size == eot + 1
    for text, ids in zip(EXPECTED["texts"], EXPECTED["ids"]):
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == text
    # "<|endoftext|>" written in a text is text, never the special token
    assert tok.eot not in tok.encode("a<|endoftext|>b")


def test_auto_picks_gpt2_when_files_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE24_TOKENIZER_DIR", str(write_format(tmp_path / "tok", "hf")))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert get_tokenizer("auto").name == "gpt2"
    assert get_tokenizer("byte").name == "byte"


def test_byte_tokenizer_is_utf8():
    tok = ByteTokenizer()
    text = "café 🙂\n\0"
    assert tok.encode(text) == list(text.encode("utf-8")) and tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 256 and tok.eot is None
    assert tok.decode([0xC3]) == "\ufffd"  # a cut multi-byte character decodes, replaced
