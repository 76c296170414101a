"""Failure detection, measured: does a signal (QC score, uncertainty, ...) find the cases that failed?

Each case (one case under one stress variant) has a Dice and any number of *signals*, higher = more suspicious
(the QC severity score, the mean normalised entropy, 1 - pairwise TTA Dice, ...). Per signal and target:

- **AUROC** for "failed": the probability that a failed case scores higher than a good one, ties counted half
  (the rank-average Mann-Whitney definition, the same number as ``sklearn.metrics.roc_auc_score``). NaN, with
  the reason in ``note``, when no case or every case failed: there is nothing to separate.
- **Risk-coverage curve** and **AURC** (Geifman & El-Yaniv; Zenk et al., MedIA 2025): cases are accepted from
  the least to the most suspicious; at coverage k/n the selective risk is the mean of 1 - Dice over the k accepted.
  AURC is the mean selective risk over k = 1..n (lower is better). Cases tied on the signal cannot be separated by
  any threshold: within a tie each gets the tie's mean risk (the expectation over every order of the tie).
  ``optimal_aurc`` is the AURC of the oracle that orders by the risk itself: the floor for these cases.

Targets: ``dice_below_0.80`` (Dice < 0.80) and ``drop_0.05_from_as_is`` (Dice at least 0.05 below the same
case's ``as_is`` Dice; cases without an ``as_is`` record are left out of that target). Cases whose Dice or signal
is NaN are left out of that signal's row (``n_cases`` says how many were used).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from medseg_attn.errors import UserError

__all__ = ["CaseRecord", "DetectionRow", "FAILED_DICE", "DROP", "Severity", "TARGETS", "auroc", "aurc",
           "candidate_severities", "choose_severity", "evaluate_signals", "false_alarm_rate", "good_cases",
           "risk_coverage", "with_severity", "write_failure_detection"]

FAILED_DICE = 0.80  # "failed": Dice below this
DROP = 0.05  # "degraded": Dice at least this much below the same case's as_is Dice
TARGETS = ("dice_below_0.80", "drop_0.05_from_as_is")
COLUMNS = ("signal", "target", "auroc", "aurc", "optimal_aurc", "n_cases", "n_failed", "note")


@dataclass(frozen=True)
class CaseRecord:
    """One case under one variant: its Dice (mean over foreground classes) and its signals (higher = worse)."""

    case: str
    variant: str
    dice: float
    signals: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DetectionRow:
    """One signal judged on one target; ``coverage``/``risk`` are the risk-coverage curve's points."""

    signal: str
    target: str
    auroc: float
    aurc: float
    optimal_aurc: float
    n_cases: int
    n_failed: int
    note: str
    coverage: tuple[float, ...]
    risk: tuple[float, ...]

    def as_dict(self) -> dict[str, object]:
        return {c: getattr(self, c) for c in COLUMNS}


def auroc(scores: Sequence[float] | np.ndarray, failed: Sequence[bool] | np.ndarray) -> float:
    """AUROC of ``scores`` (n,) for ``failed`` (n,) by average ranks; NaN when either class is empty."""
    scores, failed = np.asarray(scores, dtype=float), np.asarray(failed, dtype=bool)  # (n,), (n,)
    if scores.shape != failed.shape or scores.ndim != 1:
        raise UserError(f"scores {scores.shape} and failed {failed.shape} must be the same 1-D shape")
    positives, negatives = int(failed.sum()), int((~failed).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)  # (n,) ties get the average rank
    return float((ranks[failed].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def risk_coverage(scores: Sequence[float] | np.ndarray, risks: Sequence[float] | np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Coverage k/n (n,) and selective risk (n,), accepting cases from the lowest score up (ties: mean risk)."""
    scores, risks = np.asarray(scores, dtype=float), np.asarray(risks, dtype=float)  # (n,), (n,)
    if scores.shape != risks.shape or scores.ndim != 1 or scores.size == 0:
        raise UserError(f"scores {scores.shape} and risks {risks.shape} must be the same non-empty 1-D shape")
    order = np.argsort(scores, kind="stable")
    ordered_scores, ordered = scores[order], risks[order].copy()
    _, starts, counts = np.unique(ordered_scores, return_index=True, return_counts=True)
    for start, count in zip(starts, counts, strict=True):
        ordered[start:start + count] = ordered[start:start + count].mean()  # a tie: no threshold splits it
    accepted = np.arange(1, scores.size + 1)
    return accepted / scores.size, np.cumsum(ordered) / accepted


def aurc(scores: Sequence[float] | np.ndarray, risks: Sequence[float] | np.ndarray) -> float:
    """Area under the risk-coverage curve: the mean selective risk over coverages 1/n .. n/n."""
    return float(risk_coverage(scores, risks)[1].mean())


def _failed(records: Sequence[CaseRecord], target: str) -> tuple[list[CaseRecord], np.ndarray, str]:
    if target == "dice_below_0.80":
        return list(records), np.array([r.dice < FAILED_DICE for r in records], dtype=bool), ""
    if target != "drop_0.05_from_as_is":
        raise UserError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    reference = {r.case: r.dice for r in records if r.variant == "as_is"}
    kept = [r for r in records if r.case in reference and not math.isnan(reference[r.case])]
    note = f"{len(records) - len(kept)} records without an as_is Dice left out" if len(kept) < len(records) else ""
    return kept, np.array([reference[r.case] - r.dice >= DROP - 1e-12 for r in kept], dtype=bool), note


def evaluate_signals(records: Sequence[CaseRecord], signals: Sequence[str] | None = None,
                     targets: Sequence[str] = TARGETS) -> list[DetectionRow]:
    """One :class:`DetectionRow` per signal and target (signals: every name any record carries, sorted)."""
    names = sorted({s for r in records for s in r.signals}) if signals is None else list(signals)
    rows = []
    for target in targets:
        kept, failed, target_note = _failed(records, target)
        for name in names:
            usable = np.array([not math.isnan(r.dice) and not math.isnan(r.signals.get(name, math.nan))
                               for r in kept], dtype=bool)
            cases = [r for r, use in zip(kept, usable, strict=True) if use]
            fails = failed[usable] if usable.size else np.zeros(0, dtype=bool)
            notes = [target_note] if target_note else []
            if len(cases) < len(kept):
                notes.append(f"{len(kept) - len(cases)} records without Dice or {name} left out")
            if not cases:
                rows.append(DetectionRow(name, target, math.nan, math.nan, math.nan, 0, 0,
                                         "; ".join([*notes, "no case to judge"]), (), ()))
                continue
            scores = np.array([r.signals[name] for r in cases])  # (n,)
            risks = np.array([1.0 - r.dice for r in cases])  # (n,)
            n_failed = int(fails.sum())
            if n_failed == 0:
                notes.append("AUROC undefined: no case failed")
            elif n_failed == len(cases):
                notes.append("AUROC undefined: every case failed")
            coverage, risk = risk_coverage(scores, risks)
            rows.append(DetectionRow(name, target, auroc(scores, fails), float(risk.mean()), aurc(risks, risks),
                                     len(cases), n_failed, "; ".join(notes), tuple(coverage.tolist()),
                                     tuple(risk.tolist())))
    return rows


def write_failure_detection(rows: Sequence[DetectionRow], output: str | Path, title: str = "failure detection"
                            ) -> tuple[Path, Path]:
    """Write ``OUTPUT/failure_detection.csv`` (atomically) and ``OUTPUT/failure_detection.png``."""
    from medseg_attn.io.tables import write_csv
    from medseg_attn.plots import save_risk_coverage_plot

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    table = write_csv(output / "failure_detection.csv", [row.as_dict() for row in rows], columns=COLUMNS,
                      float_format=".4f")
    curves = [(row.signal, row.coverage, row.risk, row.aurc) for row in rows
              if row.target == TARGETS[0] and row.coverage]
    oracle = next((row.optimal_aurc for row in rows if row.target == TARGETS[0] and row.coverage), math.nan)
    picture = save_risk_coverage_plot(curves, oracle, output / "failure_detection.png", title)
    return table, picture


@dataclass(frozen=True)
class Severity:
    """A review severity built from the signals: ``base`` plus, where ``extra`` exceeds ``threshold``, a flag of
    severity ``extra / threshold`` (>= 1 when raised, as the QC report's flags); ``extra`` None: ``base`` alone."""

    base: str
    extra: str | None = None
    threshold: float = math.inf

    @property
    def name(self) -> str:
        return self.base if self.extra is None else f"{self.base} + {self.extra} > {self.threshold:.4g}"

    def score(self, signals: Mapping[str, float]) -> float:
        value = float(signals.get(self.base, math.nan))
        if self.extra is not None:
            extra = float(signals.get(self.extra, math.nan))
            value += extra / self.threshold if extra > self.threshold else 0.0
        return value


def good_cases(records: Sequence[CaseRecord]) -> list[CaseRecord]:
    """Cases that did not fail on either target: Dice >= 0.80 and less than 0.05 below their ``as_is`` Dice."""
    reference = {r.case: r.dice for r in records if r.variant == "as_is"}
    return [r for r in records if r.dice >= FAILED_DICE and reference.get(r.case, r.dice) - r.dice < DROP - 1e-12]


def candidate_severities(records: Sequence[CaseRecord], base: str = "qc_score") -> list[Severity]:
    """Every signal alone, and ``base`` plus a flag on each other signal above its highest value on a good case
    of ``records`` (so the flag raises no alarm on a good case of the cases it was chosen on)."""
    names = sorted({s for r in records for s in r.signals})
    candidates = [Severity(name) for name in names]
    good = good_cases(records)
    for extra in names:
        values = [r.signals[extra] for r in good if not math.isnan(r.signals.get(extra, math.nan))]
        if extra != base and base in names and values and max(values) > 0:
            candidates.append(Severity(base, extra, max(values)))
    return candidates


def with_severity(records: Sequence[CaseRecord], severity: Severity, name: str = "chosen") -> list[CaseRecord]:
    """The records with the severity's score added as signal ``name``."""
    return [CaseRecord(r.case, r.variant, r.dice, {**r.signals, name: severity.score(r.signals)}) for r in records]


def choose_severity(records: Sequence[CaseRecord], target: str = TARGETS[0]) -> tuple[Severity, list[DetectionRow]]:
    """The candidate with the highest AUROC on ``records`` for ``target`` (ties: lower AURC, then fewer signals);
    returns it and every candidate's row (signal = the candidate's name)."""
    rows = []
    for candidate in candidate_severities(records):
        row = evaluate_signals(with_severity(records, candidate), ["chosen"], [target])[0]
        rows.append((candidate, replace(row, signal=candidate.name)))
    usable = [(c, r) for c, r in rows if not math.isnan(r.auroc)]
    if not usable:
        raise UserError(f"no signal can be judged on these {len(records)} cases for {target} (none or all failed)")
    best = min(usable, key=lambda item: (-item[1].auroc, item[1].aurc, item[0].extra is not None))
    return best[0], [r for _, r in rows]


def false_alarm_rate(records: Sequence[CaseRecord], severity: Severity, variants: Sequence[str]) -> tuple[int, int]:
    """(flagged, total) among the good cases of ``variants``: flagged = the severity above 0."""
    good = [r for r in good_cases(records) if r.variant in variants]
    return sum(1 for r in good if severity.score(r.signals) > 0), len(good)
