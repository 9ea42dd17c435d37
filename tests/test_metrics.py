"""The GLUE and SQuAD metrics against cases computed by hand."""

import math

import numpy as np
import pytest

pytest.importorskip("sparse24_train")
from sparse24_train import metrics as M


def test_accuracy_and_f1():
    assert M.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    # tp = 2 (positions 0, 4), fp = 1 (1), fn = 1 (3): F1 = 2*2 / (2*2 + 1 + 1) = 2/3
    assert M.f1_binary([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(2 / 3)
    assert M.f1_binary([0, 0], [1, 0]) == 0.0  # no true positives


def test_matthews():
    # tp = 2, tn = 1, fp = 1, fn = 1: (2*1 - 1*1) / sqrt(3 * 3 * 2 * 2) = 1/6
    assert M.matthews_corrcoef([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(1 / 6)
    assert M.matthews_corrcoef([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert M.matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert M.matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # one predicted class: 0 by convention


def test_pearson_spearman():
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert M.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # deviations (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5): 4 / 5
    assert M.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ranks (1, 2.5, 2.5, 4) vs (1, 3, 2, 4): 4.5 / sqrt(4.5 * 5)
    assert M.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert M.spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # monotonic, not linear


def test_glue_metrics_per_task():
    assert set(M.glue_metrics("glue/mrpc", [1, 0], [1, 1])) == {"f1", "accuracy"}
    assert set(M.glue_metrics("qqp", [1, 0], [1, 1])) == {"f1", "accuracy"}
    assert M.glue_metrics("cola", [1, 0], [1, 0]) == {"matthews_correlation": 1.0}
    assert set(M.glue_metrics("stsb", [0.1, 0.5, 0.2], [1, 3, 2])) == {"pearson", "spearman"}
    assert M.glue_metrics("mnli", [0, 1, 2, 2], [0, 1, 2, 0]) == {"accuracy": 0.75}


def test_squad_normalisation():
    assert M.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert M.normalize_answer("an apple a day") == "apple day"
    assert M.normalize_answer("Theatre of the Absurd") == "theatre of absurd"  # only whole words
    assert M.normalize_answer("  1,000 (approx.)\n") == "1000 approx"


def test_squad_em_f1():
    assert M.exact_match_score("the Eiffel Tower", "Eiffel tower.") == 1.0
    assert M.exact_match_score("Eiffel", "Eiffel tower") == 0.0
    # [big, red, dog] vs [red, dog, barked]: 2 common, precision = recall = 2/3
    assert M.f1_score("the big red dog", "red dog barked") == pytest.approx(2 / 3)
    # repeated tokens count once each: x x y vs x y y share one x and one y
    assert M.f1_score("x x y", "x y y") == pytest.approx(2 / 3)
    assert M.f1_score("the", "a") == 0.0  # both normalise to nothing
    assert M.max_over_ground_truths(M.exact_match_score, "Paris", ["paris, france", "Paris"]) == 1.0
    preds = {"q1": "Paris", "q2": "red dog"}
    refs = {"q1": ["Paris", "the city of Paris"], "q2": ["a red dog barked"]}
    # q1: EM 1, F1 1; q2: EM 0, F1 = 2 * 1 * (2/3) / (1 + 2/3) = 0.8
    got = M.squad_metrics(preds, refs)
    assert got["exact_match"] == pytest.approx(50.0) and got["f1"] == pytest.approx(90.0)
    assert M.squad_metrics({}, refs) == {"exact_match": 0.0, "f1": 0.0}  # missing answers score 0


def test_undefined_correlations_are_zero():
    # a constant prediction (a collapsed regression head): 0, not NaN, and no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.pearson([1, 1, 1], [1, 2, 3]) == 0.0
        assert M.spearman([1, 2, 3], [5, 5, 5]) == 0.0
        assert M.pearson([1], [2]) == 0.0
        assert M.matthews_corrcoef([0, 0, 0], [1, 0, 1]) == 0.0
    assert M.f1_binary([], []) == 0.0 and M.accuracy([], []) == 0.0
