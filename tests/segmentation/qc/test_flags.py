"""Review flags are typed records: consumers select them by field (structure, measure), never by their text, and a
batch record keeps them as plain dicts with the same keys."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import medseg_attn.plots
from medseg_attn.segmentation.measures.structure_statistics import case_statistics
from medseg_attn.segmentation.qc.qc_report import Review
from medseg_attn.segmentation.qc.review import Flag, ReviewSettings, flag_cases, load_review_settings, plan_flags

NAMES = {1: "lung", 2: "lung_left", 3: "lung: upper"}  # names that start like one another


def _labels(fragmented: str | None) -> np.ndarray:
    """Three structures side by side along x; ``fragmented`` is cut into three pieces along y."""
    labels = np.zeros((24, 24, 12), np.uint8)
    for index, name in NAMES.items():
        x = slice(8 * (index - 1) + 1, 8 * index - 1)
        if name == fragmented:
            for start in (1, 9, 17):
                labels[x, start:start + 6, 3:9] = index
        else:
            labels[x, 2:22, 3:9] = index
    return labels


def test_a_structure_gets_only_its_own_flags_in_the_volume_table(tmp_path, monkeypatch):
    review = Review(NAMES, None, (8, 8, 8), "none", ReviewSettings(max_components=2))
    records = []
    for case, fragmented in (("lung_frag", "lung"), ("left_frag", "lung_left"), ("upper_frag", "lung: upper")):
        labels = _labels(fragmented)
        measured = review.measure(case, labels, np.eye(4), labels.astype(np.float32), None, tmp_path / case,
                                  tmp_path)
        records.append({"case": case, "input": str(tmp_path / case), "status": "ok", "review": measured})
    drawn = {}
    monkeypatch.setattr(medseg_attn.plots, "save_distributions_png",
                        lambda path, volumes, *args, **kwargs: drawn.update(volumes))
    ranked = review.write(records, tmp_path)
    fragments = {(c["case"], f.structure) for c in ranked for f in c["flags"] if f.kind == "fragmented"}
    assert fragments == {("lung_frag", "lung"), ("left_frag", "lung_left"), ("upper_frag", "lung: upper")}
    flagged = {(case, name) for name, points in drawn.items() for case, _, red in points if red}
    assert flagged == fragments  # 'lung: upper: 3 components' is not lung's, 'lung_left' is not 'lung'
    assert all(len(points) == 3 for points in drawn.values()) and set(drawn) == set(NAMES.values())


def test_a_flag_round_trips_through_the_dict_a_batch_record_keeps(tmp_path):
    record = case_statistics(np.ones((4, 4, 4), np.uint8), np.diag([6.0, 1.0, 1.0, 1.0]), {1: "ball"}, None, None,
                             None, "small")
    flags = plan_flags(record, (1.0, 1.0, 1.0), (32, 32, 32), "none", ReviewSettings())
    assert [(f.kind, f.measure) for f in flags] == [("geometry", "spacing"), ("geometry", "field_of_view")]
    assert flags[0].detail.startswith("spacing 6 x 1 x 1 mm") and flags[1].detail.startswith("field of view")
    for flag in flags:
        written = json.loads(json.dumps(flag.to_dict()))
        assert {"kind", "severity", "detail"} <= set(written)
        assert set(written) == {"kind", "severity", "detail", "structure", "measure"}
        assert (written["kind"], written["severity"], written["detail"]) == (flag.kind, flag.severity, flag.detail)
        assert Flag.from_dict(written) == flag
    with pytest.raises(dataclasses.FrozenInstanceError):
        flags[0].severity = 0.0  # type: ignore[misc]
    # a record keeps dicts (older ones: only kind, severity, detail); the ranked cases get Flag records back
    old = {"kind": "geometry", "severity": 2.0, "detail": "spacing 4 mm"}
    (case,) = flag_cases([{"case": "c", "status": "ok", "statistics": None,
                           "plan_flags": [flags[0].to_dict(), old]}], ReviewSettings())
    assert case["flags"] == [flags[0], Flag("geometry", 2.0, "spacing 4 mm")]
    assert case["score"] == pytest.approx(round(flags[0].severity + 2.0, 3))


def test_unknown_review_settings_name_the_closest_or_list_the_known():
    with pytest.raises(ValueError, match=r"^--review-set: unknown review setting 'max_component'; did you mean "
                                         r"'max_components'\?$"):
        load_review_settings(None, ["max_component=3"])
    with pytest.raises(ValueError, match=r"^--review-set: unknown review setting 'zzz'; known: ct_min_range_hu, "
                                         r"expected_volume_ml, intensity_mad_k, "):
        load_review_settings(None, ["zzz=3"])
