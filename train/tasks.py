"""Downstream tasks: GLUE and SQuAD v1.1 examples, read from TFDS or JSONL, turned into
fixed-length token arrays.

Sources (sparse24-finetune --data-dir DIR --data-format auto|tfds|jsonl):
  jsonl   DIR/<task>/<split>.jsonl, one example per line with TFDS's feature names,
          e.g. DIR/glue/mrpc/train.jsonl: {"sentence1": ..., "sentence2": ..., "label": 1}
          and DIR/squad/validation.jsonl: {"id": ..., "question": ..., "context": ...,
          "answers": {"text": [...], "answer_start": [...]}}
  tfds    the prepared TFDS datasets glue/<name> and squad (v1.1) in the TFDS data_dir
          DIR (default ~/tensorflow_datasets). tensorflow_datasets is imported only then,
          and nothing is ever downloaded.
  auto    jsonl if DIR/<task>/train.jsonl exists, else tfds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import DataError

log = logging.getLogger("sparse24_train")


@dataclass(frozen=True)
class GlueTask:
    name: str
    keys: tuple            # the text features: one (single sentence) or two (a pair)
    num_labels: int        # 1: regression (STS-B)
    eval_splits: tuple = ("validation",)
    epochs: int = 3


GLUE = {t.name: t for t in [
    GlueTask("cola", ("sentence",), 2),
    GlueTask("sst2", ("sentence",), 2),
    GlueTask("mrpc", ("sentence1", "sentence2"), 2, epochs=5),
    GlueTask("qqp", ("question1", "question2"), 2),
    GlueTask("stsb", ("sentence1", "sentence2"), 1),
    GlueTask("mnli", ("premise", "hypothesis"), 3, ("validation_matched", "validation_mismatched")),
    GlueTask("qnli", ("question", "sentence"), 2),
    GlueTask("rte", ("sentence1", "sentence2"), 2),
    GlueTask("wnli", ("sentence1", "sentence2"), 2, epochs=5),
]}
SQUAD_EPOCHS = 3


def parse_task(task: str):
    """"glue/NAME" -> GlueTask, "squad" (or "squad/v1.1") -> "squad"."""
    t = task.strip().lower()
    if t in ("squad", "squad/v1.1", "squad/plain_text"):
        return "squad"
    if t.startswith("glue/") and t[5:] in GLUE:
        return GLUE[t[5:]]
    raise DataError(f"unknown task {task!r}: use squad or glue/NAME with NAME one of {', '.join(GLUE)}")


def task_path(task) -> str:
    return "squad" if task == "squad" else f"glue/{task.name}"


# ----------------------------------------------------------------------------- reading examples

def _plain(x):
    """TFDS numpy values -> Python (bytes -> str, arrays -> lists, nested dicts)."""
    if isinstance(x, bytes):
        return x.decode("utf-8")
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return [_plain(v) for v in x.tolist()] if x.ndim else _plain(x.item())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x


def _jsonl_file(data_dir, task, split) -> Path:
    return Path(data_dir) / task_path(task) / f"{split}.jsonl"


def load_split(task, split: str, data_dir: str | None, fmt: str = "auto") -> list[dict]:
    """The examples of one split as plain dicts with TFDS's feature names."""
    if fmt not in ("auto", "jsonl", "tfds"):
        raise DataError(f"data format {fmt!r}: use auto, jsonl or tfds")
    if fmt == "jsonl" or (fmt == "auto" and data_dir and _jsonl_file(data_dir, task, "train").is_file()):
        if not data_dir:
            raise DataError("--data-format jsonl needs --data-dir")
        path = _jsonl_file(data_dir, task, split)
        if not path.is_file():
            raise DataError(f"{path}: not found (JSONL data: DIR/{task_path(task)}/<split>.jsonl, "
                            f"one example per line with TFDS's feature names)")
        examples = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    examples.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path} line {n}: not JSON ({e.msg}); JSONL holds one JSON object "
                                    f"per line, with TFDS's feature names") from None
        return check_examples(task, examples, str(path))
    return check_examples(task, _load_tfds(task_path(task), split, data_dir),
                          f"TFDS {task_path(task)} {split}")


def check_examples(task, examples: list, where: str) -> list:
    """The examples, if there are any and each has the features encoding reads; else one
    DataError naming the example, what it lacks and what is needed (not a KeyError later)."""
    if not examples:
        raise DataError(f"{where}: no examples (an empty split cannot be trained or evaluated on)")
    need = ("id", "question", "context", "answers") if task == "squad" else (*task.keys, "label")
    for n, ex in enumerate(examples, 1):
        has = ", ".join(map(repr, ex)) if isinstance(ex, dict) else f"a JSON {type(ex).__name__}"
        missing = [repr(k) for k in need if not isinstance(ex, dict) or k not in ex]
        if not missing and task == "squad":
            answers = ex["answers"]
            if not (isinstance(answers, dict) and isinstance(answers.get("text"), list)
                    and isinstance(answers.get("answer_start"), list)):
                missing = ['answers: {"text": [...], "answer_start": [...]}']
        elif not missing:
            texts_ok = all(isinstance(ex[k], str) for k in task.keys)
            label_ok = isinstance(ex["label"], (int, float)) and not isinstance(ex["label"], bool)
            if not (texts_ok and label_ok):
                missing = [f"{', '.join(task.keys)} as text and label as a number"]
        if missing:
            raise DataError(f"{where}: example {n} lacks {', '.join(missing)} (it has {has or 'nothing'}); "
                            f"{task_path(task)} examples need {', '.join(need)} (TFDS's feature names)")
    return examples


def _load_tfds(name: str, split: str, data_dir: str | None) -> list[dict]:
    where = data_dir or "~/tensorflow_datasets"
    how = (f"prepare it on a machine with network access: pip install tensorflow-datasets; "
           f"tfds build {name} --data_dir {where} (then copy that directory here), or give JSONL "
           f"files {where}/{name}/<split>.jsonl")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"task {name!r}: no JSONL files in --data-dir and tensorflow_datasets is not "
                        f"installed (pip install 'sparse24-jax[data]'). For TFDS data, {how}") from None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
        raise DataError(f"TFDS dataset {name!r} cannot be opened in {where} ({e}); {how}") from None
    if not builder.is_prepared():
        raise DataError(f"TFDS dataset {name!r} is not prepared in {where}, and nothing is downloaded "
                        f"at run time: {how}")
    if split not in builder.info.splits:
        raise DataError(f"TFDS dataset {name!r} has no split {split!r} (it has {', '.join(builder.info.splits)})")
    ds = builder.as_dataset(split=split, shuffle_files=False)
    return [_plain(ex) for ex in tfds.as_numpy(ds)]


# ----------------------------------------------------------------------------- tokens

def token_bytes(tok, i: int) -> bytes:
    dec = getattr(tok, "decoder", None)
    return dec[int(i)] if dec is not None else bytes([int(i)])


def encode_with_offsets(tok, text: str):
    """Token ids of `text` and each token's (start, end) character span in it."""
    ids = tok.encode(text)
    raw = text.encode("utf-8")
    char_of_byte = np.repeat(np.arange(len(text)), [len(c.encode("utf-8")) for c in text]) \
        if text else np.zeros(0, int)
    spans, pos = [], 0
    pieces = [token_bytes(tok, i) for i in ids]
    if b"".join(pieces) != raw:  # the tokenizer dropped or changed something: align approximately
        log.debug("token bytes differ from the text; offsets are approximate")
    for p in pieces:
        b0, b1 = min(pos, len(raw)), min(pos + len(p), len(raw))
        pos += len(p)
        if b1 <= b0:
            c = len(text)
            spans.append((c, c))
            continue
        spans.append((int(char_of_byte[b0]), int(char_of_byte[b1 - 1]) + 1))
    return ids, spans


def special_ids(tok):
    """(separator between two texts, padding id). GPT-2 has neither: its end-of-text token
    serves as both (padding is never attended: it comes after the read positions)."""
    if tok.eot is not None:
        return [tok.eot], tok.eot
    return list(tok.encode("\n")), 0


@dataclass
class Encoded:
    ids: np.ndarray                  # (N, L) int32, right-padded
    lengths: np.ndarray              # (N,) int32, tokens before the padding
    labels: np.ndarray | None = None  # GLUE: (N,) int32 or float32; SQuAD train: (N, 2) start/end
    extra: dict = field(default_factory=dict)


def _truncate_pair(a: list, b: list, budget: int):
    """Longest-first truncation (Hugging Face's default for pairs) to len(a)+len(b) <= budget."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        if len(a) >= len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def encode_glue(task: GlueTask, examples, tok, max_len: int) -> Encoded:
    sep, pad = special_ids(tok)
    ids = np.full((len(examples), max_len), pad, np.int32)
    lengths = np.zeros(len(examples), np.int32)
    labels = np.zeros(len(examples), np.float32 if task.num_labels == 1 else np.int32)
    for n, ex in enumerate(examples):
        a = tok.encode(ex[task.keys[0]])
        if len(task.keys) == 2:
            b = tok.encode(ex[task.keys[1]])
            a, b = _truncate_pair(a, b, max_len - len(sep))
            row = a + sep + b
        else:
            row = a[:max_len]
        row = row or sep  # an empty text still needs one token to read the class from
        ids[n, :len(row)] = row
        lengths[n] = len(row)
        labels[n] = ex["label"]
    return Encoded(ids, lengths, labels)


def squad_windows(question_ids, context_len: int, max_len: int, stride: int, sep_len: int, max_query: int = 64):
    """Window starts over the context tokens: each window holds question + separator + up to
    `budget` context tokens, consecutive windows overlap by `stride` tokens (HF's doc_stride)."""
    q = question_ids[:min(max_query, max_len // 2)]
    budget = max_len - len(q) - sep_len
    stride = min(stride, budget - 1)  # a window must advance
    starts, s = [], 0
    while True:
        starts.append(s)
        if s + budget >= context_len:
            return q, budget, starts
        s += budget - stride


def encode_squad(examples, tok, max_len: int, stride: int, train: bool) -> Encoded:
    """One row per window. extra: example index, where the context starts in the row, the
    window's first context token, and per example the context token offsets."""
    sep, pad = special_ids(tok)
    rows, lengths, labels, ex_index, ctx_pos, win_start = [], [], [], [], [], []
    offsets = []
    for n, ex in enumerate(examples):
        q_ids = tok.encode(ex["question"].strip())
        c_ids, spans = encode_with_offsets(tok, ex["context"])
        offsets.append(spans)
        q, budget, starts = squad_windows(q_ids, len(c_ids), max_len, stride, len(sep))
        if train and ex["answers"]["text"]:
            s_char = int(ex["answers"]["answer_start"][0])
            e_char = s_char + len(ex["answers"]["text"][0])
            inside = [i for i, (a, b) in enumerate(spans) if b > s_char and a < e_char]
            tok_s, tok_e = (inside[0], inside[-1]) if inside else (-1, -1)
        for st in starts:
            win = c_ids[st:st + budget]
            row = q + sep + win
            c0 = len(q) + len(sep)
            rows.append(row)
            lengths.append(len(row))
            ex_index.append(n)
            ctx_pos.append(c0)
            win_start.append(st)
            if train:
                if tok_s >= st and tok_e >= 0 and tok_e < st + len(win):
                    labels.append((c0 + tok_s - st, c0 + tok_e - st))
                else:  # the answer is not (wholly) in this window: point at position 0
                    labels.append((0, 0))
    ids = np.full((len(rows), max_len), pad, np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return Encoded(ids, np.asarray(lengths, np.int32), np.asarray(labels, np.int32).reshape(-1, 2) if train else None,
                   extra=dict(example=np.asarray(ex_index), ctx_pos=np.asarray(ctx_pos),
                              win_start=np.asarray(win_start), offsets=offsets))


def best_spans(start_logits, end_logits, enc: Encoded, examples, n_best: int = 20, max_answer_len: int = 30):
    """{id: answer text}: per example the highest start+end logit span over all its windows, with
    start <= end, both inside the window's context, at most max_answer_len tokens; mapped back to
    the context's characters."""
    best = {}
    for row in range(len(enc.ids)):
        n = int(enc.extra["example"][row])
        c0, st, length = int(enc.extra["ctx_pos"][row]), int(enc.extra["win_start"][row]), int(enc.lengths[row])
        if length <= c0:
            continue
        sl, el = start_logits[row, c0:length], end_logits[row, c0:length]
        top_s = np.argsort(-sl)[:n_best]
        top_e = np.argsort(-el)[:n_best]
        for i in top_s:
            for j in top_e:
                if j < i or j - i + 1 > max_answer_len:
                    continue
                score = float(sl[i] + el[j])
                if n not in best or score > best[n][0]:
                    best[n] = (score, st + int(i), st + int(j))
    out = {}
    for n, ex in enumerate(examples):
        if n not in best:
            out[ex["id"]] = ""
            continue
        _, i, j = best[n]
        spans = enc.extra["offsets"][n]
        out[ex["id"]] = ex["context"][spans[i][0]:spans[j][1]].strip()
    return out
