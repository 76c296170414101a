"""Batch prediction over good and bad inputs: every good case done on its own grid, every bad one named, inputs
untouched; DICOM series in, NIfTI and DICOM-SEG out."""

from __future__ import annotations

import csv
import gzip
import hashlib
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from medseg_attn.config import InferenceConfig
from medseg_attn.io.dicom import select_series
from medseg_attn.segmentation.data.transforms import Preprocessing
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.workflows.batch import check_output_dir, collect_cases, predict_files

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dicom_factory import write_series  # noqa: E402
from oracles import IntensityOracle  # noqa: E402


def phantom(shape=(30, 34, 24)) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt(((grid - np.array([0.1, -0.1, 0.0])[:, None, None, None]) ** 2).sum(0))
    labels = np.zeros(shape, np.uint8)
    labels[radius < 0.8] = 1
    labels[radius < 0.45] = 2
    return labels


@pytest.fixture()
def predictor() -> Predictor:
    prep = Preprocessing(spacing=(2.0, 2.0, 2.0), orientation="RAS", intensity="none", ct_window=(0, 1),
                         crop_foreground=False, spatial_dims=3)
    return Predictor(IntensityOracle(), prep, {0: "background", 1: "shell", 2: "core"}, (32, 32, 32),
                     InferenceConfig(overlap=0.25), "cpu")


def dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    return 2 * np.sum((a == k) & (b == k)) / max(1, np.sum(a == k) + np.sum(b == k))


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine), str(path))
    return path


def bad_inputs(folder: Path, labels: np.ndarray) -> dict[str, str]:
    """Every kind of bad input of the issue, with a fragment its failure message must hold."""
    image = (labels * 100).astype(np.int16)
    (folder / "text.nii.gz").write_text("this is not an image\n")
    (folder / "empty.nii.gz").write_bytes(b"")
    nifti(folder / "whole.nii.gz", image)
    data = (folder / "whole.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (folder / "whole.nii.gz").unlink()
    nifti(folder / "flat.nii.gz", image[:, :, 5])
    nifti(folder / "series4d.nii.gz", np.stack([image] * 3, axis=-1))
    raw = bytearray(nib.Nifti1Image(image, None).to_bytes())  # no affine: qform/sform codes 0, pixdim alone
    raw[76:88] = np.asarray([1.0, 1.5, 0.0], "<f4").tobytes()  # pixdim[0..2]: the y spacing is 0
    (folder / "nospacing.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    singular = nib.Nifti1Image(image, np.diag([1.5, 1.5, 2.0, 1.0]))
    singular.set_sform(np.diag([1.5, 1.5, 0.0, 1.0]), code=1)  # a broken header: the slice axis collapses
    singular.set_qform(None, code=0)
    nib.save(singular, str(folder / "singular.nii.gz"))
    nan = image.astype(np.float32)
    nan[3, 4, 5] = np.nan
    nifti(folder / "nan.nii.gz", nan)
    (folder / "emptydicom").mkdir()
    (folder / "notdicom").mkdir()
    (folder / "notdicom" / "report.txt").write_text("no images here")
    write_series(folder / "gap", image.astype(np.float64), (1.5, 1.5, 2.0), skip=[10])
    return {
        "text": "text.nii.gz: not a readable NIfTI file",
        "empty": "empty.nii.gz: not a readable NIfTI file",
        "truncated": "truncated.nii.gz: cannot read the voxel data",
        "flat": "flat.nii.gz: 2D image of shape (30, 34); this model expects 3D images",
        "series4d": "series4d.nii.gz: 4D image (30, 34, 24, 3) with 3 volumes along axis 4; choose one with "
                    "--volume-index",
        "nospacing": "nospacing.nii.gz: voxel spacing (pixdim) (1.5, 0.0, 1.0) must be positive and finite",
        "singular": "singular.nii.gz: the affine is singular",
        "nan": "nan.nii.gz: 1 voxel(s) are NaN or Inf",
        "emptydicom": "emptydicom: empty folder",
        "notdicom": "notdicom: no DICOM image series in this folder (found report.txt)",
        "gap": "gap: 1 slice(s) missing",
    }


def test_batch_processes_good_cases_and_names_every_bad_one(tmp_path, predictor):
    labels = phantom()
    batch = tmp_path / "batch"
    batch.mkdir()
    lps = np.diag([-1.5, -1.5, 2.0, 1.0])
    nifti(batch / "good_ras.nii.gz", (labels * 100).astype(np.int16))
    nifti(batch / "good_lps.nii.gz", (labels[::-1, ::-1] * 100).astype(np.int16), lps)
    write_series(batch / "good_dicom", labels.astype(np.float64) * 100, (1.5, 1.5, 2.0), (-20.0, 10.0, 5.0))
    (batch / "README.txt").write_text("stray file, ignored")
    expected = bad_inputs(batch, labels)
    before = digest(batch)

    records = predict_files(predictor, [batch], tmp_path / "out", progress=False)
    status = {r["case"]: r["status"] for r in records}
    assert {k for k, v in status.items() if v == "ok"} == {"good_ras", "good_lps", "good_dicom"}
    assert {k for k, v in status.items() if v == "failed"} == set(expected)
    errors = {r["case"]: r["error"] for r in records}
    for case, fragment in expected.items():
        assert fragment in errors[case], (case, errors[case])
        assert "\n" not in errors[case] and "Traceback" not in errors[case]
    assert digest(batch) == before  # the input folder is byte-identical

    with (tmp_path / "out" / "failures.csv").open() as handle:
        failures = {row["case"]: row["error"] for row in csv.DictReader(handle)}
    assert failures == {case: errors[case] for case in expected}
    with (tmp_path / "out" / "report.csv").open() as handle:
        report = list(csv.DictReader(handle))
    assert len(report) == len(records) and {"case", "status", "seconds", "error"} <= set(report[0])

    for name, stored in (("good_ras", labels), ("good_lps", labels[::-1, ::-1])):
        source = nib.load(str(batch / f"{name}.nii.gz"))
        output = nib.load(str(tmp_path / "out" / f"{name}.nii.gz"))
        np.testing.assert_array_equal(output.affine, source.affine)
        assert dice(np.asarray(output.dataobj), stored, 1) > 0.9
    series = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(batch / "good_dicom")))
    written = sitk.ReadImage(str(tmp_path / "out" / "good_dicom.nii.gz"))
    assert written.GetSize() == series.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), series.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), series.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), series.GetDirection(), atol=1e-6)
    predicted = sitk.GetArrayFromImage(written).transpose(2, 1, 0)
    assert dice(predicted, labels, 1) > 0.9 and dice(predicted, labels, 2) > 0.9

    again = predict_files(predictor, [batch], tmp_path / "out", progress=False)  # re-run: nothing redone
    assert {r["case"] for r in again if r["status"] == "skipped (exists)"} == {"good_ras", "good_lps", "good_dicom"}


def test_volume_index_picks_one_volume_of_a_4d_image(tmp_path, predictor):
    labels = phantom()
    stack = np.stack([labels * 0, labels * 100, labels * 0], axis=-1).astype(np.int16)
    path = nifti(tmp_path / "cine.nii.gz", stack)
    records = predict_files(predictor, [path], tmp_path / "out", volume_index=1, progress=False)
    assert records[0]["status"] == "ok"
    output = np.asarray(nib.load(str(tmp_path / "out" / "cine.nii.gz")).dataobj)
    assert output.shape == labels.shape and dice(output, labels, 2) > 0.9
    records = predict_files(predictor, [path], tmp_path / "out2", volume_index=3, progress=False)
    assert "--volume-index 3 is outside 0..2" in records[0]["error"]


def test_output_folder_must_not_be_or_lie_in_an_input(tmp_path, predictor):
    labels = phantom()
    series = tmp_path / "series"
    write_series(series, labels.astype(np.float64), (1.5, 1.5, 2.0))
    path = nifti(tmp_path / "case.nii.gz", labels.astype(np.int16))
    cases = collect_cases([series, path])
    with pytest.raises(ValueError, match="lies in the input folder"):
        check_output_dir(cases, series / "out")
    with pytest.raises(ValueError, match="is the folder of input"):
        check_output_dir(cases, tmp_path)
    with pytest.raises(ValueError, match="lies in the input folder"):
        predict_files(predictor, [tmp_path], tmp_path / "out", progress=False)


def _with_uids(source: Path, target: Path) -> None:
    """Copy an anonymised series, filling in the blank Study/Series/SOP UIDs (as a PACS export has them)."""
    target.mkdir()
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(target / path.name)


class LiverOracle(nn.Module):
    """Class 1 where the (CT-windowed) intensity is soft tissue, class 2 for bone: a deterministic 'model'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hu = x * 800.0 - 150.0
        soft = -((hu - 60.0) / 40.0) ** 2
        bone = (hu - 300.0) / 50.0
        return torch.cat([torch.zeros_like(x) - 1.0, soft, bone], dim=1)


def test_dicom_seg_of_the_real_series_reads_back_on_the_source_frames(ct_dir, tmp_path):
    import highdicom as hd

    _with_uids(ct_dir / "dicom", tmp_path / "ct")
    prep = Preprocessing(spacing=(4.0, 4.0, 4.0), orientation="RAS", intensity="ct", ct_window=(-150, 650),
                         crop_foreground=False, spatial_dims=3)
    predictor = Predictor(LiverOracle(), prep, {0: "background", 1: "soft tissue", 2: "bone"}, (64, 64, 16),
                          InferenceConfig(overlap=0.0), "cpu")
    records = predict_files(predictor, [tmp_path / "ct", ct_dir / "dicom"], tmp_path / "out", output_format="both",
                            progress=False)
    status = {r["case"]: r for r in records}
    assert status["ct"]["status"] == "ok"
    assert status["dicom"]["status"] == "failed"  # the anonymised original: said in one line
    assert "blank StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID" in status["dicom"]["error"]
    labels = np.asarray(nib.load(str(tmp_path / "out" / "ct.nii.gz")).dataobj)  # (columns, rows, slices)
    seg = hd.seg.segread(tmp_path / "out" / "ct.seg.dcm")
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["soft tissue", "bone"]
    series = select_series(tmp_path / "ct")
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: k for k, f in enumerate(series.files)}
    normal = np.cross(*np.asarray(series.direction).reshape(3, 3).T[:2])
    pixels = seg.pixel_array
    expected = sum(bool(np.any(labels[:, :, k] == segment)) for k in range(labels.shape[2]) for segment in (1, 2))
    checked = 0
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        slice_index = int(round((position @ normal - series.positions[0]) / series.spacing))
        source_uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert sources[source_uid] == slice_index  # the frame references the slice at its position
        np.testing.assert_array_equal(pixels[frame] > 0, labels[:, :, slice_index].T == segment)
        checked += 1
    assert checked == expected == 40  # one frame per slice and segment: both are on every slice
    # soft tissue really is where the CT says so: about 60 HU
    ct = sitk.GetArrayFromImage(sitk.ReadImage([str(f) for f in series.files])).transpose(2, 1, 0)
    assert 0 < ct[labels == 1].mean() < 120


def test_rtstruct_of_the_real_series_names_every_structure_found(ct_dir, tmp_path):
    """Issue 36: ``nifti,rtstruct`` for the real CT series: one ROI per structure found, named after its class,
    read back by pydicom without a warning and filled back onto the NIfTI label map; a structure the model never
    finds is left out and listed in the report; a NIfTI input asking for an RTSTRUCT alone fails in one line."""
    import warnings

    from medseg_attn.io.rtstruct_read import rtstruct_label_map

    _with_uids(ct_dir / "dicom", tmp_path / "ct")
    prep = Preprocessing(spacing=(4.0, 4.0, 4.0), orientation="RAS", intensity="ct", ct_window=(-150, 650),
                         crop_foreground=False, spatial_dims=3)
    names = {0: "background", 1: "soft tissue", 2: "bone", 3: "never"}
    predictor = Predictor(LiverOracle(), prep, {0: "background", 1: "soft tissue", 2: "bone"}, (64, 64, 16),
                          InferenceConfig(overlap=0.0), "cpu")
    predictor.labels = names  # a fourth class the oracle never predicts
    nifti_input = nifti(tmp_path / "scan.nii.gz", (phantom() * 100).astype(np.int16))
    records = predict_files(predictor, [tmp_path / "ct", nifti_input], tmp_path / "out",
                            output_format="rtstruct", progress=False)
    status = {r["case"]: r for r in records}
    assert status["ct"]["status"] == "ok" and status["ct"]["absent_structures"] == "never"
    assert status["scan"]["status"] == "failed"
    assert "scan.nii.gz: not a DICOM series; an RTSTRUCT references the DICOM series" in status["scan"]["error"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = pydicom.dcmread(tmp_path / "out" / "ct.rtstruct.dcm")
        assert [r.ROIName for r in ds.StructureSetROISequence] == ["soft tissue", "bone"]
        series = select_series(tmp_path / "ct", keep_headers=True)
        assert ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[
            0].SeriesInstanceUID == series.uid
        back = rtstruct_label_map(tmp_path / "out" / "ct.rtstruct.dcm", series, names)
    both = predict_files(predictor, [tmp_path / "ct"], tmp_path / "both", output_format="nifti,rtstruct",
                         progress=False)
    assert both[0]["status"] == "ok"
    labels = np.asarray(nib.load(str(tmp_path / "both" / "ct.nii.gz")).dataobj)
    assert np.array_equal(back, labels)  # the contours hold the label map, voxel for voxel
    with (tmp_path / "out" / "report.csv").open() as handle:
        assert {row["case"]: row["absent_structures"] for row in csv.DictReader(handle)}["ct"] == "never"


def test_folder_mixing_the_real_series_with_another_and_an_uneven_one(ct_dir, tmp_path, predictor):
    mixed = tmp_path / "mixed"
    shutil.copytree(ct_dir / "dicom", mixed)
    labels = phantom()
    files = write_series(mixed, labels.astype(np.float64) * 100, (1.5, 1.5, 2.0), names=[f"p{k}.dcm" for k in
                                                                                         range(labels.shape[2])])
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    records = predict_files(predictor, [mixed], tmp_path / "out", progress=False)
    assert sorted((r["case"], r["status"]) for r in records) == [("mixed_" + uid, "ok"), ("mixed_blank-uid", "ok")]
    ct = nib.load(str(tmp_path / "out" / "mixed_blank-uid.nii.gz"))
    assert ct.shape == (512, 512, 20) and nib.aff2axcodes(ct.affine) == ("L", "P", "S")
    phantom_out = np.asarray(nib.load(str(tmp_path / "out" / f"mixed_{uid}.nii.gz")).dataobj)
    assert dice(phantom_out, labels, 2) > 0.9
    chosen = predict_files(predictor, [mixed], tmp_path / "one", series_uid=uid, progress=False)
    assert [r["case"] for r in chosen] == ["mixed"]  # one series chosen: named after the folder

    write_series(tmp_path / "gap", labels.astype(np.float64) * 100, (1.5, 1.5, 2.0), skip=[7])
    records = predict_files(predictor, [tmp_path / "gap"], tmp_path / "gap_out", resample_uneven=True,
                            progress=False)
    assert records[0]["status"] == "ok"
    regular = np.asarray(nib.load(str(tmp_path / "gap_out" / "gap.nii.gz")).dataobj)
    assert regular.shape == labels.shape and dice(regular, labels, 2) > 0.9  # the missing slice interpolated


def test_each_output_is_written_by_the_writer_of_its_kind(tmp_path, predictor):
    """What a file holds follows its Output record's kind, never its name: a case named like the suffixes of
    other outputs still gets its label map as a label map, each attention level its own values."""
    import highdicom as hd
    import slicerio

    from medseg_attn.segmentation.inference.predictor import Prediction
    from medseg_attn.segmentation.measures.lesion_statistics import lesion_table
    from medseg_attn.segmentation.outputs.writers import (
        Explain,
        Output,
        OutputKind,
        plan_outputs,
        write_output,
        write_outputs,
    )

    shape = (16, 12, 6)
    labels = np.zeros(shape, np.uint8)
    labels[2:6, 2:6, 1:4], labels[8:12, 4:9, 2:5] = 1, 2
    write_series(tmp_path / "ct", np.zeros(shape))  # the DICOM-SEG's source series
    probabilities = (0.1 + 0.7 * np.stack([labels == k for k in range(3)])).astype(np.float32)
    uncertainty = np.linspace(0, 1, labels.size, dtype=np.float32).reshape(shape)
    attention = {"up": np.full(shape, 0.25, np.float32), "down": np.stack([np.full(shape, 0.5), np.ones(shape)])}
    name = "scan_attention_up_probabilities"
    result = Prediction(name, labels, np.diag([1.5, 1.5, 2.0, 1.0]), probabilities, attention=attention,
                        uncertainty=uncertainty)
    result.lesions = lesion_table(labels, result.affine, {1: "shell", 2: "core"}, case=name)
    out = tmp_path / "out"
    outputs = plan_outputs(out, name, ("nifti", "dicom-seg", "seg-nrrd", "rtstruct"), probabilities=True,
                           explain=Explain(("up", "down"), heads=True, uncertainty=True), lesion_table=True,
                           instances=True)
    assert [(o.kind, o.path.name, o.level) for o in outputs] == [
        (OutputKind.NIFTI, f"{name}.nii.gz", None), (OutputKind.DICOM_SEG, f"{name}.seg.dcm", None),
        (OutputKind.SEG_NRRD, f"{name}.seg.nrrd", None), (OutputKind.RTSTRUCT, f"{name}.rtstruct.dcm", None),
        (OutputKind.PROBABILITIES, f"{name}_probabilities.nii.gz", None),
        (OutputKind.ATTENTION, f"{name}_attention_up.nii.gz", "up"),
        (OutputKind.ATTENTION, f"{name}_attention_down.nii.gz", "down"),
        (OutputKind.UNCERTAINTY, f"{name}_uncertainty.nii.gz", None),
        (OutputKind.LESIONS, f"{name}_lesions.csv", None), (OutputKind.INSTANCES, f"{name}_instances.nii.gz", None),
        (OutputKind.OVERLAY, f"{name}_overlay.png", None)]
    assert {o.kind for o in outputs} == set(OutputKind)
    out.mkdir()
    write_outputs(result, outputs, predictor, tmp_path / "ct")

    def read(suffix: str) -> np.ndarray:
        return np.asarray(nib.load(str(out / f"{name}{suffix}")).get_fdata())

    label_map = nib.load(str(out / f"{name}.nii.gz"))
    assert label_map.shape == shape and np.array_equal(np.asarray(label_map.dataobj), labels)
    seg = hd.seg.segread(out / f"{name}.seg.dcm")
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["shell", "core"]
    assert np.array_equal(slicerio.read_segmentation(str(out / f"{name}.seg.nrrd"))["voxels"], labels)
    rtstruct = pydicom.dcmread(out / f"{name}.rtstruct.dcm")
    assert [item.ROIName for item in rtstruct.StructureSetROISequence] == ["shell", "core"]
    np.testing.assert_allclose(read("_probabilities.nii.gz"), np.moveaxis(probabilities, 0, -1), atol=1 / 255)
    np.testing.assert_allclose(read("_attention_up.nii.gz"), 0.25, atol=1 / 255)
    down = read("_attention_down.nii.gz")
    assert down.shape == (*shape, 2)  # per head: a 4th axis
    np.testing.assert_allclose(down[..., 0], 0.5, atol=1 / 255)
    np.testing.assert_allclose(down[..., 1], 1.0, atol=1 / 255)
    np.testing.assert_allclose(read("_uncertainty.nii.gz"), uncertainty, atol=1 / 255)
    assert (out / f"{name}_overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / f"{name}_lesions.csv").read_text().splitlines()[1].startswith(f"{name},shell,1,1,48,0.216,")
    instances = nib.load(str(out / f"{name}_instances.nii.gz"))
    assert instances.get_data_dtype() == np.uint16 and np.array_equal(np.asarray(instances.dataobj), labels)

    with pytest.raises(ValueError, match="attention output names its level"):
        Output(OutputKind.ATTENTION, out / "x.nii.gz")
    with pytest.raises(ValueError, match="attention output names its level"):
        Output(OutputKind.NIFTI, out / "x.nii.gz", "up")
    bare = Prediction(name, labels, np.eye(4))
    with pytest.raises(ValueError, match="x_probabilities.nii.gz: the prediction holds no probabilities to write"):
        write_output(bare, Output(OutputKind.PROBABILITIES, out / "x_probabilities.nii.gz"), predictor, out)


def test_a_case_named_like_an_output_suffix_keeps_its_label_map_and_report_row(tmp_path, predictor):
    labels = phantom()
    path = nifti(tmp_path / "scan_probabilities.nii.gz", (labels * 100).astype(np.int16))
    out = tmp_path / "out"
    records = predict_files(predictor, [path], out, probabilities=True, uncertainty=True, progress=False)
    names = ["scan_probabilities.nii.gz", "scan_probabilities_probabilities.nii.gz",
             "scan_probabilities_uncertainty.nii.gz", "scan_probabilities_overlay.png"]
    assert records[0]["status"] == "ok" and records[0]["output"] == ";".join(str(out / n) for n in names)
    assert list(records[0]) == ["case", "input", "output", "status", "seconds", "uncertainty_mean",
                                "uncertainty_foreground_mean", "absent_structures", "error"]
    assert float(records[0]["uncertainty_mean"]) >= 0 and records[0]["seconds"] > 0
    label_map = np.asarray(nib.load(str(out / names[0])).dataobj)
    assert label_map.shape == labels.shape and dice(label_map, labels, 2) > 0.9
    assert nib.load(str(out / names[1])).shape == (*labels.shape, 3)
    with (out / "report.csv").open() as handle:
        assert next(csv.DictReader(handle))["output"] == records[0]["output"]
    again = predict_files(predictor, [path], out, probabilities=True, uncertainty=True, progress=False)
    assert again[0]["status"] == "skipped (exists)" and again[0]["output"] == records[0]["output"]


@pytest.mark.parametrize("output_format", ["nifti", "all"])
def test_a_dicom_case_is_read_once(predictor, tmp_path, monkeypatch, output_format):
    """Issue 33: each slice's header is parsed once per case (twice with a DICOM-SEG, which references the
    headers: the batch's listing keeps none, so memory stays flat over many series) and the pixels are decoded
    once, whatever the outputs (NIfTI, seg.nrrd, DICOM-SEG, the review)."""
    from medseg_attn.io import dicom

    labels = phantom()
    files = write_series(tmp_path / "series", labels.astype(np.float64) * 100, (1.5, 1.5, 2.0))
    parsed: dict[str, int] = {}
    decoded = []
    real_headers, real_decode = dicom._headers, dicom.read_series

    def counting_headers(paths):
        for path in paths:
            parsed[Path(path).name] = parsed.get(Path(path).name, 0) + 1
        return real_headers(paths)

    def counting_decode(series, resample_uneven=False):
        decoded.append(series.folder)
        return real_decode(series, resample_uneven)

    monkeypatch.setattr(dicom, "_headers", counting_headers)
    monkeypatch.setattr(dicom, "read_series", counting_decode)
    records = predict_files(predictor, [tmp_path / "series"], tmp_path / "out", progress=False,
                            output_format=output_format)
    assert [r["status"] for r in records] == ["ok"]
    expected = 2 if output_format == "all" else 1  # the DICOM-SEG's own read of the headers it references
    assert parsed == {path.name: expected for path in files}
    assert decoded == [tmp_path / "series"]
    written = nib.load(str(tmp_path / "out" / "series.nii.gz"))
    assert dice(np.asarray(written.dataobj), labels, 2) > 0.9
    if output_format == "all":
        assert (tmp_path / "out" / "series.seg.dcm").is_file() and (tmp_path / "out" / "series.seg.nrrd").is_file()
