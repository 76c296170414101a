"""Statistics per case and structure against independent computations: volumes from voxel counts and header
spacing (RAS, LPS, anisotropic, oblique), bounding boxes, components, and the mean HU of the liver in the real CT
series (decoded with pydicom) through the prediction pipeline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from torch import nn

from medseg_attn.config import InferenceConfig
from medseg_attn.io.tables import read_csv_rows
from medseg_attn.io.volumes import grid_mapping, on_grid
from medseg_attn.segmentation.data.transforms import Preprocessing
from medseg_attn.segmentation.evaluation.evaluate import evaluate_folders
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.measures.structure_statistics import case_statistics, statistics_columns, structure_rows
from medseg_attn.segmentation.qc.qc_report import Review
from medseg_attn.segmentation.workflows.batch import predict_files

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from explain_factory import grids, write_volume  # noqa: E402

NAMES = {0: "background", 1: "shell", 2: "core"}


class IntensityOracle(nn.Module):
    """logits_k = -((x - k) / 0.25)^2: the phantom's values 0, 1, 2 are its classes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centres = torch.arange(3, dtype=torch.float32).view(1, -1, *(1,) * (x.ndim - 2))
        return -((x - centres) / 0.25) ** 2


def oracle(spacing=None, intensity: str = "none", patch=(32, 32, 16), labels=NAMES) -> Predictor:
    prep = Preprocessing(spacing, "RAS", intensity, (-1000.0, 1000.0), False, 3)
    return Predictor(IntensityOracle(), prep, labels, patch, InferenceConfig(overlap=0.25), "cpu")


@pytest.mark.parametrize("grid", ["lps", "aniso"])
def test_volumes_equal_voxel_counts_times_header_voxel_volume(grid, tmp_path):
    volume, affine = grids()[grid]
    source = write_volume(tmp_path / f"{grid}.nii.gz", volume, affine)
    output = tmp_path / "out"
    records = predict_files(oracle(), [source], output, progress=False,
                            review=Review.for_predictor(oracle(), statistics=True))
    assert records[0]["status"] == "ok"
    written = nib.load(str(output / f"{grid}.nii.gz"))
    labels = np.asarray(written.dataobj)
    voxel_ml = float(np.prod(written.header.get_zooms()[:3])) / 1000.0
    saved = json.loads((output / f"{grid}_statistics.json").read_text())
    rows = {r["structure"]: r for r in read_csv_rows(output / "statistics.csv")}
    for index, name in ((1, "shell"), (2, "core")):
        expected = int((labels == index).sum()) * voxel_ml
        assert expected > 0
        found = next(r for r in saved["structures"] if r["structure"] == name)
        assert found["volume_ml"] == pytest.approx(expected, rel=1e-3)
        assert float(rows[name]["volume_ml"]) == pytest.approx(expected, rel=1e-3)
        assert found["voxels"] == int((volume == index).sum())  # the oracle segments the phantom exactly
    assert saved["spacing_mm"] == pytest.approx(list(written.header.get_zooms()[:3]))


def test_bounding_box_components_and_oblique_volume():
    labels = np.zeros((20, 30, 10), np.uint8)
    labels[2:6, 3:13, 1:4] = 1  # a 4 x 10 x 3 voxel box
    labels[10:12, 20:22, 6:8] = 1  # a second, smaller piece (8 voxels)
    labels[15, 25, 5] = 2
    spacing = np.array([0.8, 1.25, 3.0])
    lps = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS storage, seen as RAS
    rows = {r["structure"]: r for r in structure_rows(labels, lps, NAMES, image=labels * 10.0, unit=None)}
    shell = rows["shell"]
    assert shell["voxels"] == 4 * 10 * 3 + 8 and shell["components"] == 2
    assert shell["largest_component_share"] == pytest.approx(120 / 128, abs=1e-6)
    assert shell["volume_ml"] == pytest.approx(128 * spacing.prod() / 1000)
    assert (shell["bbox_rl_mm"], shell["bbox_ap_mm"], shell["bbox_si_mm"]) == pytest.approx(
        (10 * 0.8, 19 * 1.25, 7 * 3.0))  # box of both pieces: voxels 2..11, 3..21, 1..7
    assert shell["intensity_mean"] == 10.0 and shell["intensity_sd"] == 0.0
    assert rows["core"]["voxels"] == 1 and rows["core"]["components"] == 1
    rotation = np.array([[np.cos(0.4), -np.sin(0.4), 0], [np.sin(0.4), np.cos(0.4), 0], [0, 0, 1]])
    oblique = np.eye(4)
    oblique[:3, :3] = rotation @ np.diag(spacing)
    turned = structure_rows(labels, oblique, NAMES)[0]
    assert turned["volume_ml"] == pytest.approx(shell["volume_ml"], rel=1e-9)
    empty = structure_rows(np.zeros_like(labels), lps, NAMES)[1]
    assert empty["voxels"] == 0 and empty["volume_ml"] == 0 and empty["intensity_mean_hu"] is None
    assert set(shell) == set(statistics_columns(None))
    with pytest.raises(ValueError, match="image of shape"):
        structure_rows(labels, lps, NAMES, image=np.zeros((3, 3, 3)))


def _pydicom_volume(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """HU volume (columns, rows, slices) and its RAS affine, decoded slice by slice with pydicom."""
    slices = sorted((pydicom.dcmread(str(p)) for p in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    assert all(list(map(float, d.ImageOrientationPatient)) == [1, 0, 0, 0, 1, 0] for d in slices)
    hu = np.stack([d.pixel_array.T * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices], axis=-1)
    row, column = (float(v) for v in slices[0].PixelSpacing)
    step = float(slices[1].ImagePositionPatient[2]) - float(slices[0].ImagePositionPatient[2])
    lps = np.diag([column, row, step, 1.0])
    lps[:3, 3] = [float(v) for v in slices[0].ImagePositionPatient]
    return hu, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_liver_mean_hu_of_the_real_series_through_the_predictor(ct_dir):
    hu, hu_affine = _pydicom_volume(ct_dir / "dicom")
    reference = nib.load(str(ct_dir / "example_seg_dicom.nii.gz"))
    labels = np.asarray(reference.dataobj).astype(np.int32)
    direct_liver = on_grid(labels, grid_mapping(labels.shape, reference.affine, hu.shape, hu_affine)) == 5
    direct = float(hu[direct_liver].mean())
    predictor = oracle(intensity="ct", patch=(128, 128, 20), labels={0: "background", 1: "a", 2: "b"})
    result = predictor.predict(ct_dir / "dicom", keep_image=True)
    assert result.image.min() == -1024  # the original HU, not the CT window's [0, 1]
    on_result = on_grid(labels, grid_mapping(labels.shape, reference.affine, result.labels.shape, result.affine))
    record = case_statistics(on_result, result.affine, {5: "liver"}, result.image, unit="hu", case="ct")
    liver = record["structures"][0]
    assert abs(liver["intensity_mean_hu"] - direct) < 1.0, (liver["intensity_mean_hu"], direct)
    assert 40 < direct < 150  # contrast-enhanced liver
    voxel_ml = float(np.prod(reference.header.get_zooms()[:3])) / 1000
    assert liver["volume_ml"] == pytest.approx(int((labels == 5).sum()) * voxel_ml, rel=1e-3)
    assert liver["intensity_p5_hu"] < liver["intensity_p50_hu"] < liver["intensity_p95_hu"]


def test_evaluate_statistics_of_reference_and_prediction(tmp_path):
    volume, affine = grids()["lps"]
    for folder, data in (("pred", volume), ("label", np.where(volume == 2, 1, volume))):
        (tmp_path / folder).mkdir()
        write_volume(tmp_path / folder / "a.nii.gz", data.astype(np.uint8), affine)
    evaluate_folders(tmp_path / "pred", tmp_path / "label", tmp_path / "eval", labels=NAMES, progress=False,
                     statistics=True)
    rows = {(r["source"], r["structure"]): r for r in read_csv_rows(tmp_path / "eval" / "statistics.csv")}
    voxel_ml = 8.0 / 1000
    assert float(rows["prediction", "core"]["volume_ml"]) == pytest.approx((volume == 2).sum() * voxel_ml)
    assert rows["reference", "core"]["voxels"] == "0"
    assert float(rows["reference", "shell"]["volume_ml"]) == pytest.approx((volume > 0).sum() * voxel_ml)
