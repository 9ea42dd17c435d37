"""sparse24_train.data's tokenizers: the ids are pinned, for every file format GPT2Tokenizer reads.

The vocabulary is a toy one in GPT-2's layout (tests/fixtures/bpe_toy/make.py trains it);
expected.json holds the ids the original pure-Python BPE gave, so a faster implementation
must reproduce them exactly.
"""

import base64
import os
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


# ----------------------------------------------------------------------------- tiktoken vs the reference

def toy_encoder_and_merges():
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    to_bytes = lambda s: bytes(byte_of[c] for c in s)
    vocab = json.loads((TOY / "vocab.json").read_text("utf-8"))
    encoder = {to_bytes(k) if k != "<|endoftext|>" else k.encode(): v for k, v in vocab.items()}
    return encoder, merges_of(TOY / "merges.txt")


def merges_of(path: Path):
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    return [tuple(bytes(byte_of[c] for c in s) for s in line.split())
            for line in path.read_text("utf-8").splitlines() if line and not line.startswith("#version")]


def real_texts():
    """Some English and some Python source: where the toy's merges fire."""
    import lzma
    root = Path(__file__).resolve().parents[1]
    english = lzma.decompress((root / "train/corpus/pydoc_topics.txt.xz").read_bytes()).decode()
    return [english[-30_000:], (root / "train/train.py").read_text()[:30_000]]


WORDS = list("the and of to in is it's 'll don't  \n\n\t\r.,()=:_-#0123456789éü中文🙂Ж") + [
    "return", "self", " the", "    ", "<|endoftext|>", "\u00a0", "\u3000"]


@pytest.mark.parametrize("fmt", ["hf", "tiktoken"])
def test_tiktoken_matches_the_pure_python_reference(tmp_path, monkeypatch, fmt):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    from _bpe_reference import ReferenceBPE

    monkeypatch.setenv("SPARSE24_TOKENIZER_DIR", str(write_format(tmp_path, fmt)))
    monkeypatch.setenv("HOME", str(tmp_path))
    tok = get_tokenizer("gpt2")
    encoder, merges = toy_encoder_and_merges()
    ref = ReferenceBPE.pair_ranks(encoder, merges) if fmt == "hf" else ReferenceBPE.merged_ranks(encoder)
    for text in real_texts():
        assert tok.encode(text) == ref.encode(text)

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(st.one_of(st.lists(st.sampled_from(WORDS), max_size=40).map("".join), st.text(max_size=60)))
    def same(text):
        assert tok.encode(text) == ref.encode(text)
        assert tok.decode(tok.encode(text)) == text

    same()


def test_any_id_numbering_maps_back_through_the_ranks():
    # ids that are not in merge order (tiktoken needs ranks in merge order): a lookup table
    # turns tiktoken's ranks back into the vocabulary's ids
    import numpy as np
    from _bpe_reference import ReferenceBPE
    from sparse24_train.data import GPT2Tokenizer

    encoder, merges = toy_encoder_and_merges()
    perm = np.random.default_rng(0).permutation(len(encoder))
    shuffled = {b: int(perm[i]) for b, i in encoder.items()}
    tok, ref = GPT2Tokenizer(shuffled, merges), ReferenceBPE.pair_ranks(shuffled, merges)
    assert tok._lut is not None
    for text in real_texts() + EXPECTED["texts"]:
        assert tok.encode(text) == ref.encode(text)
        assert tok.decode(tok.encode(text)) == text
    assert GPT2Tokenizer(encoder, merges)._lut is None  # GPT-2's layout: ranks are the ids


def test_bad_vocabularies_are_refused_with_the_reason():
    from sparse24_train.data import DataError, GPT2Tokenizer

    encoder, merges = toy_encoder_and_merges()
    no_newline = {b: i for b, i in encoder.items() if b != b"\n"}
    with pytest.raises(DataError, match="no token for byte 0x0a"):
        GPT2Tokenizer(no_newline, merges)
    with pytest.raises(DataError, match="do not belong together"):
        GPT2Tokenizer(encoder, merges + [(b"zq", b"xj")])


def test_missing_tiktoken_is_a_one_line_error_naming_the_install(tmp_path, monkeypatch):
    import sys

    from sparse24_train.data import DataError

    monkeypatch.setenv("SPARSE24_TOKENIZER_DIR", str(write_format(tmp_path / "tok", "hf")))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import tiktoken -> ImportError
    for kind in ("gpt2", "auto"):  # auto too: files found mean GPT-2 was meant, not bytes
        with pytest.raises(DataError, match="pip install tiktoken") as err:
            get_tokenizer(kind)
        assert "\n" not in str(err.value) and "tokenizer=byte" in str(err.value)
    assert get_tokenizer("byte").name == "byte"


GPT2_DIR = os.environ.get("SPARSE24_TEST_GPT2_DIR")


@pytest.mark.skipif(not GPT2_DIR, reason="set SPARSE24_TEST_GPT2_DIR to a folder with GPT-2's own "
                    "BPE files (see docs/training.md) to check them against the reference")
def test_real_gpt2_files_match_the_reference():
    from _bpe_reference import ReferenceBPE
    from sparse24_train.data import GPT2Tokenizer

    tok = GPT2Tokenizer.from_dir(Path(GPT2_DIR))
    assert tok.encode("hello world") == [31373, 995] and tok.eot == 50256 and tok._lut is None
    ref = (ReferenceBPE.merged_ranks(tok.encoder) if tok.files[0].name == "gpt2.tiktoken" else
           ReferenceBPE.pair_ranks(tok.encoder, merges_of(tok.files[1])))
    for text in real_texts():
        assert tok.encode(text) == ref.encode(text)

