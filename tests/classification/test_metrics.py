"""The classification AUC against an independent oracle: scikit-learn's ``roc_auc_score`` (a test-only dependency,
in the ``dev`` extra; the package never imports it)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medseg_attn.classification.metrics import binary_auc, classification_metrics


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [None, 4, 2])  # continuous scores, heavy ties, two score values only
def test_binary_auc_matches_sklearn(seed, levels):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    positive = rng.random(n) < rng.uniform(0.2, 0.8)
    positive[0], positive[1] = True, False  # both classes present
    scores = rng.normal(size=n) + positive * rng.uniform(0.0, 2.0)
    if levels is not None:  # quantise: many tied scores, also across the two classes
        scores = np.floor(scores * levels / 2.0)
    expected = roc_auc_score(positive, scores)
    assert binary_auc(scores, positive) == pytest.approx(expected, abs=1e-12)
    assert binary_auc(-scores, positive) == pytest.approx(1.0 - expected, abs=1e-12)


def test_binary_auc_all_tied_and_single_class():
    positive = np.array([True, False, True, False, False])
    scores = np.full(5, 0.3)
    assert binary_auc(scores, positive) == pytest.approx(roc_auc_score(positive, scores)) == pytest.approx(0.5)
    assert math.isnan(binary_auc(np.array([0.1, 0.9]), np.array([False, False])))  # sklearn raises here


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("classes", [3, 5])
def test_macro_one_vs_rest_auc_matches_sklearn(seed, classes):
    rng = np.random.default_rng(100 + seed)
    n = 40
    truth = np.concatenate([np.arange(classes), rng.integers(0, classes, n - classes)])  # every class occurs
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), truth] += rng.uniform(0.0, 1.5)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probabilities = np.round(probabilities, 1)  # ties within each class column
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    names = [f"c{k}" for k in range(classes)]
    metrics = classification_metrics(truth, probabilities, names)
    expected = roc_auc_score(truth, probabilities, multi_class="ovr", average="macro", labels=list(range(classes)))
    assert metrics["auc"] == pytest.approx(expected, abs=1e-12)
    per_class = roc_auc_score(np.eye(classes)[truth], probabilities, average=None)
    for k, name in enumerate(names):
        assert metrics["per_class"][name]["auc"] == pytest.approx(per_class[k], abs=1e-12)


def test_macro_auc_skips_an_absent_class_where_sklearn_would_refuse():
    """A class absent from the reference has no AUC (NaN); the macro mean is over the others, which equals
    sklearn's macro mean over the classes it can score."""
    rng = np.random.default_rng(7)
    truth = np.array([0, 1, 0, 1, 0, 1, 1, 0])
    probabilities = rng.dirichlet(np.ones(3), size=len(truth))
    metrics = classification_metrics(truth, probabilities, ["a", "b", "c"])
    assert math.isnan(metrics["per_class"]["c"]["auc"])
    expected = np.mean([roc_auc_score(truth == k, probabilities[:, k]) for k in (0, 1)])
    assert metrics["auc"] == pytest.approx(expected, abs=1e-12)
