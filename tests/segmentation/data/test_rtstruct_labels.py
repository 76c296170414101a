"""Issue 36: an RTSTRUCT beside its DICOM series as a training label: rasterised on the series grid with values by
class name, the same label map as the NIfTI labels it was written from; one line for each bad structure set."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medseg_attn.errors import UserError
from medseg_attn.io.dicom import select_series
from medseg_attn.io.readers import LoadVolumed
from medseg_attn.io.rtstruct import write_rtstruct
from medseg_attn.segmentation.data.datasets import check_cases, load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dicom_factory import write_series  # noqa: E402

LABELS = {0: "background", 1: "liver", 2: "spleen"}


def case(folder: Path, seed: int = 0) -> np.ndarray:
    """A CT series in ``folder/ct`` and its RTSTRUCT ``folder/ct.rtstruct.dcm`` (beside it); the label map."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((24, 20, 8), np.uint8)
    labels[4:14, 3:12, 1:6] = 1
    labels[7:10, 6:9, 2:4] = 0  # a hole
    labels[16:21, 12:18, 3:7] = 2
    write_series(folder / "ct", rng.normal(0, 5, labels.shape) + 40.0 * labels, spacing=(1.2, 1.1, 2.0))
    write_rtstruct(labels, select_series(folder / "ct", keep_headers=True), LABELS, folder / "ct.rtstruct.dcm")
    return labels


def dataset_json(root: Path, labels: dict, names: list[str], **extra) -> Path:
    spec = {"name": "rt", "labels": labels, "modality": {"0": "CT"},
            "training": [{"image": f"{n}/ct", "label": f"{n}/ct.rtstruct.dcm"} for n in names], **extra}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root / "dataset.json"


def test_rtstruct_labels_are_the_label_maps_they_were_drawn_from(tmp_path):
    truth = {name: case(tmp_path / name, seed) for seed, name in enumerate(["a", "b"])}
    dataset = load_dataset(dataset_json(tmp_path, {"0": "background", "1": "liver", "2": "spleen"}, ["a", "b"]))
    for item in dataset.training:
        label = Path(item["label"])
        assert label.name.endswith(".nii.gz") and label.is_file()  # rasterised once, into the cache
        loaded = LoadVolumed(["image", "label"])({"image": item["image"], "label": label})
        assert loaded["label"].shape == loaded["image"].shape
        np.testing.assert_allclose(np.asarray(loaded["label"].affine), np.asarray(loaded["image"].affine), atol=1e-4)
        assert np.array_equal(np.asarray(loaded["label"][0]), truth[Path(item["image"]).parent.name])
    assert check_cases(dataset.training, num_classes=3) == []
    again = load_dataset(tmp_path / "dataset.json")  # the cached label map is reused, not written again
    assert [c["label"] for c in again.training] == [c["label"] for c in dataset.training]
    assert nib.load(str(again.training[0]["label"])).get_data_dtype() == np.uint8
    # data.cache_dir is honoured: the rasterised maps go there (same content key, so the same names)
    own = load_dataset(tmp_path / "dataset.json", cache_dir=str(tmp_path / "own_cache"))
    assert all(Path(c["label"]).parent == (tmp_path / "own_cache" / "rtstruct").resolve() for c in own.training)
    assert [Path(c["label"]).name for c in own.training] == [Path(c["label"]).name for c in dataset.training]


def test_bad_rtstruct_labels_one_line_each(tmp_path):
    case(tmp_path / "a")
    with pytest.raises(UserError, match="ROI 'spleen' matches no class of the dataset"):
        load_dataset(dataset_json(tmp_path, {"0": "background", "1": "liver", "2": "kidney"}, ["a"]))

    case(tmp_path / "b", seed=1)  # a's RTSTRUCT given with b's series
    spec = json.loads((tmp_path / "dataset.json").read_text())
    spec["labels"] = {"0": "background", "1": "liver", "2": "spleen"}
    spec["training"] = [{"image": "b/ct", "label": "a/ct.rtstruct.dcm"}]
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match="references series .* not the case's image series"):
        load_dataset(tmp_path / "dataset.json")

    ds = pydicom.dcmread(tmp_path / "a" / "ct.rtstruct.dcm")  # spleen drawn over the liver
    ds.ROIContourSequence[1].ContourSequence = ds.ROIContourSequence[0].ContourSequence
    ds.save_as(tmp_path / "a" / "ct.rtstruct.dcm")
    with pytest.raises(UserError, match="ROIs 'liver' and 'spleen' overlap in .*declare overlapping structures as "
                                        "regions"):
        load_dataset(dataset_json(tmp_path, {"0": "background", "1": "liver", "2": "spleen"}, ["a"]))
    regions = load_dataset(dataset_json(tmp_path, {"background": 0, "liver": [1, 2], "spleen": [2]}, ["a"],
                                        regions_class_order=[1, 2]))
    painted = np.asarray(nib.load(str(regions.training[0]["label"])).dataobj)
    assert set(np.unique(painted)) == {0, 2}  # the spleen painted over the liver it covers
