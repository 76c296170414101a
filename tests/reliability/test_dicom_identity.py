"""A DICOM series mixing patients, studies, frames of reference or modalities is refused, naming the stray file;
anonymised series whose UIDs are blank on every slice still read."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from cli_helpers import run
from dicom_factory import write_series

from medseg_attn.io.dicom import find_series, read_dicom, select_series
from medseg_attn.io.dicom_seg import check_seg_source
from medseg_attn.io.volumes import read_geometry


def _series(folder):
    return write_series(folder, np.random.default_rng(0).normal(0, 50, (12, 14, 6)), (2.0, 2.0, 3.0))


@pytest.mark.parametrize("tag,value", [("PatientID", "SOMEONE_ELSE"), ("StudyInstanceUID", "1.2.3.4.5"),
                                       ("FrameOfReferenceUID", "1.2.3.4.6"), ("Modality", "MR")])
def test_a_stray_slice_is_named_with_its_tag(tmp_path, tag, value):
    files = _series(tmp_path / "series")
    stray = pydicom.dcmread(files[3])
    setattr(stray, tag, value)
    stray.save_as(files[3])
    (series,) = find_series(tmp_path / "series")
    assert series.problems and tag in series.problems[0] and files[3].name in series.problems[0]
    for read in (lambda: read_dicom(tmp_path / "series"), lambda: read_geometry(tmp_path / "series")):
        with pytest.raises(ValueError) as caught:
            read()
        message = str(caught.value)
        assert str(tmp_path / "series") in message and tag in message and files[3].name in message
        assert "\n" not in message


def test_the_same_blank_uids_on_every_slice_pass(tmp_path, ct_dir):
    (series,) = find_series(ct_dir / "dicom")
    assert series.problems == () and "StudyInstanceUID" in series.missing_uids
    files = _series(tmp_path / "series")
    for path in files:
        header = pydicom.dcmread(path)
        header.PatientID = ""
        header.save_as(path)
    assert find_series(tmp_path / "series")[0].problems == ()


def test_a_mixed_series_is_a_failed_case_in_predict(tmp_path, segmentation_model):
    files = _series(tmp_path / "series")
    stray = pydicom.dcmread(files[2])
    stray.PatientID = "OTHER"
    stray.save_as(files[2])
    result = run("-q", "predict", "--model", str(segmentation_model), "--input", str(tmp_path / "series"),
                 "--output", str(tmp_path / "out"), "--output-format", "dicom-seg")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("medseg-attn: failed:")]
    assert len(failed) == 1 and "differ in PatientID" in failed[0] and files[2].name in failed[0]
    assert not list((tmp_path / "out").glob("series*"))


def test_blank_sop_class_uid_is_one_line_for_dicom_seg(tmp_path):
    files = _series(tmp_path / "series")
    for path in files:
        header = pydicom.dcmread(path)
        header.SOPClassUID = ""
        header.save_as(path)
    series = select_series(tmp_path / "series")
    with pytest.raises(ValueError, match="blank SOPClassUID"):
        check_seg_source(series)
