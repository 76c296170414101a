"""Per-lesion statistics of ``predict`` (issue 35, item 3): the table matches scipy.ndimage.label of the predicted
label map, the instance map holds the table's numbers on the input's header, report.csv and report.html count the
lesions, a model's own lesion_structures need no option, and the refusals are one line with nothing written.

The model is a small network with random weights (the two-convolution decoder, seed 3: its "core" class lies in a
handful of pieces on the phantom), so no training is needed: what is checked is that every number describes the
label map written."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cli_helpers import run  # noqa: E402
from explain_factory import grids, write_checkpoint, write_volume  # noqa: E402

from medseg_attn.config import InferenceConfig  # noqa: E402
from medseg_attn.segmentation.data.transforms import Preprocessing  # noqa: E402
from medseg_attn.segmentation.inference.predictor import Predictor  # noqa: E402
from medseg_attn.segmentation.outputs.lesions import LesionOutputs  # noqa: E402
from medseg_attn.segmentation.qc.qc_report import Review  # noqa: E402
from medseg_attn.segmentation.workflows.batch import predict_files  # noqa: E402
from medseg_attn.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lesion-statistics")
    (root / "in").mkdir()
    for name in ("ras", "lps"):  # the same phantom stored in two orientations
        write_volume(root / "in" / f"{name}.nii.gz", *grids()[name])
    write_checkpoint(root / "model.pt", model={"attention": False, "decoder_layers": 2}, seed=3)
    payload = load_checkpoint(root / "model.pt")
    save_checkpoint({**payload, "lesion_structures": ["core"]}, root / "lesion_model.pt")
    return root


def test_the_lesion_table_and_instance_map_describe_the_label_map_written(folder, tmp_path):
    out = tmp_path / "out"
    result = run("-q", "predict", "--model", str(folder / "model.pt"), "--input", str(folder / "in"), "--output",
                 str(out), "--statistics", "--lesion-structures", "core", "--instances", "--probabilities",
                 "--uncertainty", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    batch = _rows(out / "lesion_statistics.csv")
    report = {r["case"]: r for r in _rows(out / "report.csv")}
    for case in ("ras", "lps"):
        stored = nib.load(str(out / f"{case}.nii.gz"))
        labels = np.asarray(stored.dataobj)
        reference, count = ndimage.label(labels == 2, np.ones((3, 3, 3)))
        rows = _rows(out / f"{case}_lesions.csv")
        assert count >= 2 and len(rows) == count
        assert [int(r["lesion"]) for r in rows] == list(range(1, count + 1))
        assert [int(r["voxels"]) for r in rows] == list(np.bincount(reference.ravel())[1:])
        assert {r["structure"] for r in rows} == {"core"} and {r["label"] for r in rows} == {"2"}
        image = np.asarray(nib.load(str(folder / "in" / f"{case}.nii.gz")).dataobj)
        probability = np.asarray(nib.load(str(out / f"{case}_probabilities.nii.gz")).dataobj)[..., 2]
        for row in rows:
            inside = reference == int(row["lesion"])
            centre = stored.affine @ np.array([*np.argwhere(inside).mean(0), 1.0])
            assert [float(row[f"centroid_ras_mm_{a}"]) for a in "xyz"] == pytest.approx(centre[:3], abs=2e-3)
            assert float(row["volume_ml"]) == pytest.approx(inside.sum() * 8 / 1000)
            assert float(row["intensity_mean_ch0"]) == pytest.approx(image[inside].mean(), abs=1e-3)
            assert float(row["probability_mean"]) == pytest.approx(probability[inside].mean(), abs=0.01)
            assert 0 <= float(row["uncertainty_mean"]) <= 1
        instances = nib.load(str(out / f"{case}_instances.nii.gz"))
        assert instances.get_data_dtype() == np.uint16
        assert np.allclose(instances.affine, stored.affine) and instances.shape == stored.shape
        assert np.array_equal(np.asarray(instances.dataobj), reference)  # the table's numbers, voxel for voxel
        assert [r for r in batch if r["case"] == case] == rows
        assert int(report[case]["lesions_core"]) == count
        assert float(report[case]["lesion_volume_ml_core"]) == pytest.approx((labels == 2).sum() * 8 / 1000)
    # the same phantom in two orientations: the same lesions at the same scanner coordinates
    centroids = {case: sorted((round(float(r["centroid_ras_mm_x"]), 1), round(float(r["centroid_ras_mm_y"]), 1),
                               round(float(r["centroid_ras_mm_z"]), 1)) for r in batch if r["case"] == case)
                 for case in ("ras", "lps")}
    assert centroids["ras"] == centroids["lps"]
    html = (out / "report.html").read_text()
    assert "core lesions" in html and "core lesion volume (ml)" in html and "lesion(s)" in html
    assert (out / "statistics.csv").exists()


def test_a_models_own_lesion_structures_count_in_the_report_of_every_run(folder, tmp_path):
    out = tmp_path / "out"
    for _ in range(2):  # the second run skips the cases: their counts come from the files written
        result = run("-q", "predict", "--model", str(folder / "lesion_model.pt"), "--input", str(folder / "in"),
                     "--output", str(out), "--device", "cpu")
        assert result.returncode == 0, result.stderr
        rows = {r["case"]: r for r in _rows(out / "report.csv")}
        for case, row in rows.items():
            labels = np.asarray(nib.load(str(out / f"{case}.nii.gz")).dataobj)
            assert int(row["lesions_core"]) == ndimage.label(labels == 2, np.ones((3, 3, 3)))[1]
    assert {r["status"] for r in rows.values()} == {"skipped (exists)"}
    assert not list(out.glob("*lesion*.csv")) and not list(out.glob("*_instances.nii.gz"))  # no --statistics


def test_without_lesion_structures_report_csv_keeps_its_columns(folder, tmp_path):
    out = tmp_path / "out"
    assert run("-q", "predict", "--model", str(folder / "model.pt"), "--input", str(folder / "in" / "ras.nii.gz"),
               "--output", str(out), "--device", "cpu", "--statistics").returncode == 0
    assert "lesions_" not in (out / "report.csv").read_text().splitlines()[0]
    assert not (out / "lesion_statistics.csv").exists()


@pytest.mark.parametrize(("options", "message"), [
    (["--lesion-structures", "cor"], "--lesion-structures cor: the model has no class 'cor' (its classes: shell, "
                                     "core); did you mean 'core'?"),
    (["--instances"], "--instances: the model names no lesion structures"),
])
def test_bad_lesion_options_are_one_line(folder, tmp_path, options, message):
    result = run("-q", "predict", "--model", str(folder / "model.pt"), "--input", str(folder / "in" / "ras.nii.gz"),
                 "--output", str(tmp_path / "out"), "--device", "cpu", *options)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


class _Bright(nn.Module):
    """Logits of background / lesion: a lesion wherever the intensity is above 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), (x - 0.5) * 40], dim=1)


def test_more_lesions_than_an_instance_map_holds_fail_the_case_with_nothing_written(tmp_path):
    dotted = np.zeros((84, 84, 84), np.float32)
    dotted[::2, ::2, ::2] = 1.0  # 42^3 = 74,088 lone voxels: as many lesions at 26-connectivity
    write_volume(tmp_path / "dotted.nii.gz", dotted, np.eye(4))
    few = np.zeros((20, 20, 20), np.float32)
    few[2:5, 2:5, 2:5] = few[10:12, 10:12, 10:12] = 1.0
    write_volume(tmp_path / "few.nii.gz", few, np.eye(4))
    predictor = Predictor(_Bright(), Preprocessing(None, "RAS", "none", (0.0, 1.0), False, 3),
                          {0: "background", 1: "lesion"}, (84, 84, 84), InferenceConfig(overlap=0.0), "cpu")
    review = Review.for_predictor(predictor, statistics=True, lesion_structures=("lesion",))
    records = predict_files(predictor, [tmp_path / "dotted.nii.gz", tmp_path / "few.nii.gz"], tmp_path / "out",
                            progress=False, review=review, lesions=LesionOutputs({1: "lesion"}, True, True))
    status = {r["case"]: r for r in records}
    assert status["dotted"]["status"] == "failed" and status["few"]["status"] == "ok"
    error = status["dotted"]["error"]
    assert "dotted: 74088 lesions" in error and "at most 65,535" in error and "\n" not in error
    assert not list((tmp_path / "out").glob("dotted*"))  # nothing of the case: no label map, table or map
    assert [r["voxels"] for r in _rows(tmp_path / "out" / "few_lesions.csv")] == ["27", "8"]
    assert _rows(tmp_path / "out" / "lesion_statistics.csv") == _rows(tmp_path / "out" / "few_lesions.csv")


def test_a_region_model_gives_each_lesion_the_probability_of_its_region_and_every_channel_its_mean():
    from types import SimpleNamespace

    from medseg_attn.segmentation.inference.predictor import Prediction
    from medseg_attn.segmentation.measures.regions import Regions

    labels = np.zeros((8, 8, 8), np.uint8)
    labels[1:3, 1:3, 1:3], labels[5:7, 5:7, 5:7] = 2, 3  # white matter, then a lesion painted inside it
    probabilities = np.stack([np.full(labels.shape, v, np.float32) for v in (0.9, 0.6, 0.3)])  # one per region
    channels = np.stack([np.full(labels.shape, 5.0, np.float32), np.full(labels.shape, 7.0, np.float32)])
    result = Prediction("c", labels, np.eye(4), probabilities, channels=channels)
    regions = Regions(("grey_matter", "white_matter", "lesion"), ((1,), (2, 3), (3,)), (1, 2, 3))
    predictor = SimpleNamespace(regions=regions, in_channels=2, prep=SimpleNamespace(intensity="zscore"))
    (row,) = LesionOutputs({3: "lesion"}, table=True).measure(result, predictor, "c").rows
    assert (row["voxels"], row["probability_mean"]) == (8, 0.3)  # the region named lesion, not class value 3
    assert (row["intensity_mean_ch0"], row["intensity_mean_ch1"]) == (5.0, 7.0)
    assert LesionOutputs({3: "lesion"}).measure(result, predictor, "c").rows[0]["intensity_mean_ch1"] is None
