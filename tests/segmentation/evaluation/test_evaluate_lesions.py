"""``evaluate_folders(..., lesions=LesionOptions(...))`` and ``medseg-attn evaluate --lesions``: lesions.csv and
lesion_pairs.csv with exactly their columns, the summary's lesions entry, today's outputs unchanged, and the bad
inputs refused in one line with nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cli_helpers import assert_one_line_error, run_subprocess  # noqa: E402

from medseg_attn.errors import UserError
from medseg_attn.io.tables import read_csv_rows
from medseg_attn.segmentation.evaluation.evaluate import evaluate_folders
from medseg_attn.segmentation.evaluation.lesion_report import LesionOptions
from medseg_attn.segmentation.measures.lesions import LesionRules

LESION_HEADER = ["case", "structure", "reference_lesions", "predicted_lesions", "true_positives", "false_positives",
                 "false_negatives", "lesion_f1", "lesionwise_dice", "lesionwise_hd95"]
PAIR_HEADER = ["case", "structure", "kind", "reference_lesion", "predicted_lesions", "reference_volume_ml",
               "predicted_volume_ml", "dice", "hd95_mm"]
SHAPE = (20, 16, 12)


def save(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))


@pytest.fixture()
def lesion_cases(tmp_path: Path) -> Path:
    """case_a: lesion (1) has two reference lesions, one found exactly, one missed, and a false one; organ (2) is
    found. case_b: no lesion in either map, the organ only in the reference (missed)."""
    label, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    label[2:5, 2:5, 2:4] = 1
    label[10:13, 10:13, 6:8] = 1
    label[14:19, 2:7, 2:6] = 2
    pred[2:5, 2:5, 2:4] = 1
    pred[8:10, 2:4, 9:11] = 1
    pred[14:19, 2:7, 2:6] = 2
    save(tmp_path / "labels" / "case_a.nii.gz", label)
    save(tmp_path / "preds" / "case_a.nii.gz", pred)
    label, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    label[5:9, 5:9, 5:9] = 2
    save(tmp_path / "labels" / "case_b.nii.gz", label)
    save(tmp_path / "preds" / "case_b.nii.gz", pred)
    return tmp_path


def header(path: Path) -> list[str]:
    return path.read_text().splitlines()[0].split(",")


def test_lesions_csv_pairs_csv_summary_and_plot(lesion_cases):
    root = lesion_cases
    plain = evaluate_folders(root / "preds", root / "labels", root / "plain", labels={1: "lesion", 2: "organ"},
                             progress=False)
    summary = evaluate_folders(root / "preds", root / "labels", root / "out", labels={1: "lesion", 2: "organ"},
                               progress=False, lesions=LesionOptions())
    assert not (root / "plain" / "lesions.csv").exists() and "lesions" not in plain
    assert (root / "plain" / "metrics.csv").read_text() == (root / "out" / "metrics.csv").read_text()
    assert header(root / "out" / "lesions.csv") == LESION_HEADER
    assert header(root / "out" / "lesion_pairs.csv") == PAIR_HEADER
    rows = {(row["case"], row["structure"]): row for row in read_csv_rows(root / "out" / "lesions.csv")}
    assert list(rows) == [("case_a", "lesion"), ("case_a", "organ"), ("case_b", "lesion"), ("case_b", "organ")]
    a = rows["case_a", "lesion"]
    assert [int(a[key]) for key in LESION_HEADER[2:7]] == [2, 2, 1, 1, 1]
    assert float(a["lesion_f1"]) == pytest.approx(0.5) and float(a["lesionwise_dice"]) == pytest.approx(1 / 3)
    assert float(a["lesionwise_hd95"]) == pytest.approx(2 * 374 / 3)
    empty = rows["case_b", "lesion"]  # no lesion in either map: a valid row, zeros and F1 1 by convention
    assert [int(empty[key]) for key in LESION_HEADER[2:7]] == [0] * 5
    assert (float(empty["lesion_f1"]), float(empty["lesionwise_dice"]), float(empty["lesionwise_hd95"])) == (1, 1, 0)
    pairs = read_csv_rows(root / "out" / "lesion_pairs.csv")
    lesion_pairs = [(p["case"], p["kind"], p["reference_lesion"], p["predicted_lesions"]) for p in pairs
                    if p["structure"] == "lesion"]
    assert lesion_pairs == [("case_a", "matched", "1", "1"), ("case_a", "missed", "2", ""),
                            ("case_a", "false_positive", "", "2")]
    first = next(p for p in pairs if p["kind"] == "matched" and p["structure"] == "lesion")
    assert float(first["reference_volume_ml"]) == pytest.approx(18 * 2 / 1000)  # 18 voxels of 2 mm^3
    assert float(first["dice"]) == 1.0 and float(first["hd95_mm"]) == 0.0
    lesion = summary["lesions"]["structures"]["lesion"]
    assert (lesion["true_positives"], lesion["false_positives"], lesion["false_negatives"]) == (1, 1, 1)
    assert lesion["lesion_f1"] == pytest.approx(0.5) and lesion["pooled_lesionwise_dice"] == pytest.approx(1 / 3)
    assert lesion["lesionwise_dice"]["mean"] == pytest.approx((1 / 3 + 1) / 2)
    assert lesion["per_case"]["case_b"]["lesion_f1"] == 1.0
    organ = summary["lesions"]["structures"]["organ"]
    assert (organ["true_positives"], organ["false_negatives"], organ["lesion_f1"]) == (1, 1, pytest.approx(2 / 3))
    written = json.loads((root / "out" / "summary.json").read_text())
    assert written["lesions"]["rules"] == {"connectivity": 26, "overlap": "any", "min_volume_ml": 0.0,
                                           "hd95_max_mm": 374.0}
    assert (root / "out" / "dice_boxplot.png").stat().st_size > 0


def test_named_structure_rules_and_refusals(lesion_cases):
    root = lesion_cases
    rules = LesionRules(min_volume_ml=0.01)  # 5 voxels of 2 mm^3: the false lesion (8 voxels) is 0.016 ml, kept
    summary = evaluate_folders(root / "preds", root / "labels", root / "named", labels={1: "lesion", 2: "organ"},
                               progress=False, lesions=LesionOptions(structures=("lesion",), rules=rules))
    assert list(summary["lesions"]["structures"]) == ["lesion"]
    assert {row["structure"] for row in read_csv_rows(root / "named" / "lesions.csv")} == {"lesion"}
    with pytest.raises(UserError, match="not an evaluated structure"):
        evaluate_folders(root / "preds", root / "labels", root / "bad", labels={1: "lesion", 2: "organ"},
                         progress=False, lesions=LesionOptions(structures=("tumour",)))
    # a named structure with no lesion in any case (class 3 named, absent from every map): nothing written
    with pytest.raises(UserError, match="cyst has no lesion in any reference or prediction of the 2 case"):
        evaluate_folders(root / "preds", root / "labels", root / "absent", progress=False,
                         labels={1: "lesion", 2: "organ", 3: "cyst"}, lesions=LesionOptions(structures=("cyst",)))
    assert not (root / "absent").exists() and not (root / "bad").exists()


def test_cli_lesions_by_subprocess_and_its_one_line_errors(lesion_cases):
    root = lesion_cases
    result = run_subprocess("-q", "evaluate", "--pred", str(root / "preds"), "--label", str(root / "labels"),
                            "--output", str(root / "cli"), "--labels", "1=lesion,2=organ", "--lesions", "lesion",
                            "--lesion-overlap", "iou:0.1", "--lesion-connectivity", "6", "--min-lesion-volume", "0")
    assert result.returncode == 0, result.stderr
    assert "lesion lesions: F1 0.5000 (1 found, 1 missed, 1 false)" in result.stdout
    assert header(root / "cli" / "lesions.csv") == LESION_HEADER
    rules = json.loads((root / "cli" / "summary.json").read_text())["lesions"]["rules"]
    assert rules["overlap"] == "iou:0.1" and rules["connectivity"] == 6
    assert_one_line_error(run_subprocess("evaluate", "--pred", str(root / "preds"), "--label", str(root / "labels"),
                                         "--output", str(root / "e1"), "--labels", "1=lesion,2=organ,3=cyst",
                                         "--lesions", "cyst"), "cyst has no lesion", "nothing written")
    assert_one_line_error(run_subprocess("evaluate", "--pred", str(root / "preds"), "--label", str(root / "labels"),
                                         "--output", str(root / "e2"), "--lesions", "--lesion-overlap", "dice:3"),
                          "expected 'any' or 'iou:T'")
    assert_one_line_error(run_subprocess("evaluate", "--pred", str(root / "preds"), "--label", str(root / "labels"),
                                         "--output", str(root / "e3"), "--min-lesion-volume", "1"), "need --lesions")
    assert not any((root / name).exists() for name in ("e1", "e2", "e3"))


def test_more_than_65535_lesions_is_refused_with_nothing_written(tmp_path):
    noise = np.zeros((82, 82, 82), np.uint8)
    noise[::2, ::2, ::2] = 1  # 68921 isolated voxels: one structure, too many lesions
    save(tmp_path / "labels" / "case_n.nii.gz", noise)
    save(tmp_path / "preds" / "case_n.nii.gz", noise)
    with pytest.raises(UserError, match=r"case_n \(lesion\): reference: 68921 connected components; at most 65535"):
        evaluate_folders(tmp_path / "preds", tmp_path / "labels", tmp_path / "out", labels={1: "lesion"},
                         progress=False, lesions=LesionOptions())
    assert not (tmp_path / "out").exists()
