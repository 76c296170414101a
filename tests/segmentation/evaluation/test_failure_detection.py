"""AUROC and AURC of failure-detection signals against hand-computed values (and sklearn when it is installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg_attn.segmentation.evaluation.failure_detection import (
    CaseRecord,
    Severity,
    aurc,
    auroc,
    candidate_severities,
    choose_severity,
    evaluate_signals,
    false_alarm_rate,
    good_cases,
    risk_coverage,
    with_severity,
    write_failure_detection,
)


def test_auroc_by_hand():
    # failed 0.35 and 0.8 against good 0.1 and 0.4: 0.35 > 0.1, 0.35 < 0.4, 0.8 > both -> 3 of 4 pairs
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert auroc([0.0, 1.0], [False, True]) == 1.0 and auroc([1.0, 0.0], [False, True]) == 0.0


def test_auroc_counts_ties_half():
    # pairs (failed, good): (1 vs 1) 0.5, (1 vs 2) 0, (2 vs 1) 1, (2 vs 2) 0.5 -> 2 / 4
    assert auroc([1, 1, 2, 2], [False, True, False, True]) == pytest.approx(0.5)
    # failed 1 against good 0 (1) and good 1 (0.5) -> 0.75
    assert auroc([0, 1, 1], [False, False, True]) == pytest.approx(0.75)
    assert auroc([3, 3, 3, 3], [True, False, True, False]) == pytest.approx(0.5)  # a constant signal knows nothing


def test_auroc_is_nan_when_one_class_is_empty():
    assert math.isnan(auroc([0.1, 0.2], [True, True])) and math.isnan(auroc([0.1, 0.2], [False, False]))
    with pytest.raises(ValueError, match="same 1-D shape"):
        auroc([0.1, 0.2], [True])


def test_auroc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, 60).astype(float)  # many ties
    failed = rng.random(60) < 0.4
    assert auroc(scores, failed) == pytest.approx(metrics.roc_auc_score(failed, scores))


def test_risk_coverage_and_aurc_by_hand():
    coverage, risk = risk_coverage([1, 3, 2], [0.1, 0.3, 0.2])  # accepted in order 0.1, 0.2, 0.3
    assert np.allclose(coverage, [1 / 3, 2 / 3, 1]) and np.allclose(risk, [0.1, 0.15, 0.2])
    assert aurc([1, 3, 2], [0.1, 0.3, 0.2]) == pytest.approx(0.15)
    assert aurc([3, 1, 2], [0.1, 0.3, 0.2]) == pytest.approx((0.3 + 0.25 + 0.2) / 3)  # the worst order
    # a tie on the signal: both tied cases get their mean risk 0.2, whatever order they were given in
    assert np.allclose(risk_coverage([0, 0, 1], [0.0, 0.4, 0.2])[1], [0.2, 0.2, 0.2])
    assert aurc([0, 0, 1], [0.4, 0.0, 0.2]) == pytest.approx(0.2)
    assert aurc([0.0, 0.4, 0.2], [0.0, 0.4, 0.2]) == pytest.approx((0.0 + 0.1 + 0.2) / 3)  # the oracle
    with pytest.raises(ValueError, match="non-empty"):
        risk_coverage([], [])


def _records() -> list[CaseRecord]:
    return [
        CaseRecord("0", "as_is", 0.90, {"qc": 0.0, "entropy": 0.10}),
        CaseRecord("0", "flipped_header", 0.30, {"qc": 2.0, "entropy": 0.12}),
        CaseRecord("0", "heavy_noise", 0.84, {"qc": 0.0, "entropy": 0.30}),  # a drop of 0.06: degraded, not failed
        CaseRecord("1", "as_is", 0.88, {"qc": 1.0, "entropy": 0.11}),
        CaseRecord("1", "ghosting", 0.87, {"qc": 0.0, "entropy": math.nan}),
        CaseRecord("2", "truncated_fov", 0.50, {"qc": 1.0, "entropy": 0.20}),  # no as_is for case 2
    ]


def test_evaluate_signals_per_target():
    rows = {(r.signal, r.target): r for r in evaluate_signals(_records())}
    assert set(rows) == {(s, t) for s in ("entropy", "qc") for t in ("dice_below_0.80", "drop_0.05_from_as_is")}
    qc = rows["qc", "dice_below_0.80"]
    # failed: 0.30 (qc 2) and 0.50 (qc 1); good: qc 0, 0, 1, 0 -> pairs won 4 + (3 + 0.5) of 8
    assert (qc.n_cases, qc.n_failed) == (6, 2) and qc.auroc == pytest.approx(7.5 / 8)
    risks = [0.1, 0.7, 0.16, 0.12, 0.13, 0.5]
    assert qc.aurc == pytest.approx(aurc([0, 2, 0, 1, 0, 1], risks))
    assert qc.optimal_aurc == pytest.approx(aurc(risks, risks)) and qc.optimal_aurc < qc.aurc
    entropy = rows["entropy", "dice_below_0.80"]
    assert entropy.n_cases == 5 and "1 records without Dice or entropy left out" in entropy.note
    drop = rows["qc", "drop_0.05_from_as_is"]
    # case 2 has no as_is; failed (drop >= 0.05): flipped_header (0.60) and heavy_noise (0.06)
    assert (drop.n_cases, drop.n_failed) == (5, 2) and "without an as_is Dice" in drop.note
    # failed qc 2, 0 against good qc 0, 1, 0: (1 + 1 + 1) + (0.5 + 0 + 0.5) of 6
    assert drop.auroc == pytest.approx(4 / 6)


def test_no_failed_or_all_failed_is_nan_with_a_reason():
    good = [CaseRecord(str(i), "as_is", 0.9, {"qc": float(i)}) for i in range(3)]
    row = evaluate_signals(good, targets=("dice_below_0.80",))[0]
    assert math.isnan(row.auroc) and row.note == "AUROC undefined: no case failed" and row.n_failed == 0
    assert row.aurc == pytest.approx(0.1)  # the curve is still defined
    bad = [CaseRecord(str(i), "as_is", 0.2, {"qc": float(i)}) for i in range(3)]
    row = evaluate_signals(bad, targets=("dice_below_0.80",))[0]
    assert math.isnan(row.auroc) and row.note == "AUROC undefined: every case failed"
    empty = evaluate_signals([CaseRecord("0", "as_is", math.nan, {"qc": 1.0})], targets=("dice_below_0.80",))[0]
    assert empty.n_cases == 0 and "no case to judge" in empty.note
    with pytest.raises(ValueError, match="unknown target"):
        evaluate_signals(good, targets=("dice",))


def test_write_failure_detection(tmp_path):
    from medseg_attn.io.tables import read_csv_rows

    table, picture = write_failure_detection(evaluate_signals(_records()), tmp_path, "test")
    rows = read_csv_rows(table)
    assert list(rows[0]) == ["signal", "target", "auroc", "aurc", "optimal_aurc", "n_cases", "n_failed", "note"]
    assert len(rows) == 4 and {r["signal"] for r in rows} == {"qc", "entropy"}
    qc = next(r for r in rows if r["signal"] == "qc" and r["target"] == "dice_below_0.80")
    assert float(qc["auroc"]) == pytest.approx(0.9375) and qc["n_cases"] == "6"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 5000
    assert not list(tmp_path.glob("*.tmp*"))


def _flagged_records():
    """Two cases, each as-is (good), a good variant and two failures; signals chosen by hand."""
    table = [  # case, variant, dice, qc_score, disagreement
        ("0", "as_is", 0.93, 0.0, 0.10), ("0", "noisy", 0.92, 0.0, 0.11), ("0", "flipped", 0.50, 5.0, 0.10),
        ("0", "ghost", 0.70, 0.0, 0.30), ("1", "as_is", 0.94, 0.0, 0.09), ("1", "noisy", 0.91, 0.0, 0.12),
        ("1", "flipped", 0.55, 5.0, 0.11), ("1", "ghost", 0.75, 0.0, 0.25)]
    return [CaseRecord(c, v, d, {"qc_score": q, "disagreement": g}) for c, v, d, q, g in table]


def test_severity_adds_a_flag_above_its_threshold():
    severity = Severity("qc_score", "disagreement", 0.12)
    assert severity.name == "qc_score + disagreement > 0.12"
    assert severity.score({"qc_score": 2.0, "disagreement": 0.12}) == 2.0  # at the threshold: no flag
    assert severity.score({"qc_score": 2.0, "disagreement": 0.24}) == pytest.approx(4.0)  # flag severity 0.24/0.12
    assert Severity("qc_score").score({"qc_score": 3.0, "disagreement": 1.0}) == 3.0


def test_choose_severity_picks_the_combination_that_separates_failures():
    records = _flagged_records()
    assert [r.variant for r in good_cases(records)] == ["as_is", "noisy", "as_is", "noisy"]
    candidates = candidate_severities(records)
    # each signal alone, and the QC score plus a flag above the highest disagreement of a good case (0.12)
    assert [c.name for c in candidates] == ["disagreement", "qc_score", "qc_score + disagreement > 0.12"]
    chosen, rows = choose_severity(records)
    # alone, the QC score misses the ghosts and disagreement the flips; together every failure scores above
    # every good case
    assert chosen == Severity("qc_score", "disagreement", 0.12)
    by = {row.signal: row.auroc for row in rows}
    assert by["qc_score + disagreement > 0.12"] == 1.0 and by["qc_score"] < 1.0 and by["disagreement"] < 1.0
    assert false_alarm_rate(records, chosen, ["as_is", "noisy"]) == (0, 4)
    # reported on other cases, the threshold found on the first ones may raise alarms: counted, not hidden
    other = [CaseRecord("2", "as_is", 0.93, {"qc_score": 0.0, "disagreement": 0.2})]
    assert false_alarm_rate(other, chosen, ["as_is"]) == (1, 1)
    assert with_severity(other, chosen)[0].signals["chosen"] == pytest.approx(0.2 / 0.12)
