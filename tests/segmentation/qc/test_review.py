"""The absolute foreground-uncertainty limit: silent at or below it, a graded flag above it, whatever the batch."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_attn.segmentation.measures.structure_statistics import case_statistics
from medseg_attn.segmentation.qc.review import ReviewSettings, flag_cases, load_review_settings


def _case(name: str, uncertainty: float) -> dict:
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[3:9, 3:9, 3:9] = 1
    image = np.where(labels > 0, 100.0, 0.0).astype(np.float32)
    record = case_statistics(labels, np.eye(4), {1: "ball"}, image, np.full(labels.shape, uncertainty, np.float32),
                             None, name, name)
    return {"case": name, "status": "ok", "statistics": record, "plan_flags": []}


def test_max_foreground_uncertainty_flags_above_the_limit_only():
    cases = [_case("calm", 0.20), _case("edge", 0.25), _case("unsure", 0.40)]
    off = flag_cases([dict(c) for c in cases], ReviewSettings())  # 3 cases: too few for the batch-relative check
    assert all(not c["flags"] for c in off)
    ranked = {c["case"]: c for c in flag_cases([dict(c) for c in cases],
                                               ReviewSettings(max_foreground_uncertainty=0.25))}
    assert not ranked["calm"]["flags"] and not ranked["edge"]["flags"]  # at the limit: silent
    (flag,) = ranked["unsure"]["flags"]
    assert flag.kind == "uncertainty" and flag.severity == pytest.approx(0.40 / 0.25)
    assert "0.400 above the limit 0.25" in flag.detail and ranked["unsure"]["score"] == pytest.approx(1.6)


def test_the_limit_is_a_review_setting_in_0_1(tmp_path):
    path = tmp_path / "review.yaml"
    path.write_text("review:\n  max_foreground_uncertainty: 0.2541\n")
    assert load_review_settings(path).max_foreground_uncertainty == pytest.approx(0.2541)
    with pytest.raises(ValueError, match=r"max_foreground_uncertainty = 1.5; expected a number in \[0, 1\]"):
        load_review_settings(None, ["max_foreground_uncertainty=1.5"])
