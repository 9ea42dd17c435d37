"""The official metrics of GLUE and SQuAD v1.1.

GLUE (as the benchmark and Hugging Face's `evaluate` glue metric report them), computed by
scikit-learn and scipy, the libraries `evaluate` itself calls:
  CoLA          Matthews correlation
  SST-2, QNLI, RTE, WNLI   accuracy
  MRPC, QQP     F1 (positive class 1) and accuracy
  STS-B         Pearson and Spearman correlation
  MNLI          accuracy on validation_matched and validation_mismatched
A correlation that is undefined (a constant input, an empty marginal) is 0 here, as
scikit-learn's Matthews correlation already is, instead of NaN and a warning.
SQuAD v1.1 (the official evaluate-v1.1.py, which no maintained library packages without
a network download): exact match and token F1 after normalising both answers (lowercase,
punctuation removed, articles a/an/the removed, whitespace collapsed), the maximum over
the gold answers, averaged, in percent.
"""

from __future__ import annotations

import collections
import re
import string
import warnings

import numpy as np


def _sklearn_metrics():
    try:
        import sklearn.metrics
    except ImportError:
        raise ImportError("the GLUE metrics need scikit-learn: pip install 'sparse24-jax[train]' "
                          "(or pip install scikit-learn scipy)") from None
    return sklearn.metrics


# ----------------------------------------------------------------------------- classification

def accuracy(preds, labels) -> float:
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float(np.mean(preds == labels)) if len(labels) else 0.0


def f1_binary(preds, labels, positive=1) -> float:
    """F1 of the positive class; 0 when there are no true positives."""
    if not len(labels):
        return 0.0
    return float(_sklearn_metrics().f1_score(labels, preds, pos_label=positive, average="binary",
                                             zero_division=0.0))


def matthews_corrcoef(preds, labels) -> float:
    """Binary Matthews correlation; 0 when a marginal is empty."""
    if not len(labels):
        return 0.0
    with warnings.catch_warnings():  # a constant input: sklearn warns, then returns 0
        warnings.simplefilter("ignore")
        return float(_sklearn_metrics().matthews_corrcoef(np.asarray(labels).astype(bool),
                                                          np.asarray(preds).astype(bool)))


# ----------------------------------------------------------------------------- regression

def _correlation(fn, x, y) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0  # undefined (scipy: NaN and a warning)
    return float(fn(x, y)[0])


def pearson(x, y) -> float:
    from scipy import stats

    return _correlation(stats.pearsonr, x, y)


def spearman(x, y) -> float:
    """Pearson correlation of the ranks, ties sharing their average rank."""
    from scipy import stats

    return _correlation(stats.spearmanr, x, y)


# ----------------------------------------------------------------------------- GLUE

def glue_metrics(task: str, preds, labels) -> dict:
    """The metrics GLUE reports for `task` (a bare name: "mrpc", "stsb", ...) on one split.
    `preds`: class ids, or scores for STS-B."""
    task = task.split("/")[-1]
    if task == "cola":
        return {"matthews_correlation": matthews_corrcoef(preds, labels)}
    if task == "stsb":
        return {"pearson": pearson(preds, labels), "spearman": spearman(preds, labels)}
    if task in ("mrpc", "qqp"):
        return {"f1": f1_binary(preds, labels), "accuracy": accuracy(preds, labels)}
    return {"accuracy": accuracy(preds, labels)}


# ----------------------------------------------------------------------------- SQuAD v1.1

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace
    (the official evaluate-v1.1.py, in that order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match_score(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def max_over_ground_truths(metric, prediction: str, truths) -> float:
    return max(metric(prediction, t) for t in truths)


def squad_metrics(predictions: dict, references: dict) -> dict:
    """predictions: {id: text}; references: {id: [gold texts]}. Exact match and F1 in percent,
    over all referenced questions (a missing prediction scores 0, as in the official script)."""
    em = f1 = 0.0
    for qid, truths in references.items():
        if qid not in predictions:
            continue
        em += max_over_ground_truths(exact_match_score, predictions[qid], truths)
        f1 += max_over_ground_truths(f1_score, predictions[qid], truths)
    n = max(len(references), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}
