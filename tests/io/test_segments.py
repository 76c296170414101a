"""Segment names, colours and codes: the palette, ITK-SNAP / Slicer label files, .seg.nrrd, DICOM-SEG codes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from medseg_attn.io.segments import resolve_colors, structure_code, write_itksnap_labels, write_seg_nrrd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_colours_from_the_palette_and_from_a_dataset():
    labels = {0: "background", 1: "liver", 2: "spleen"}
    assert resolve_colors(labels) == {0: [0, 0, 0], 1: [31, 119, 180], 2: [255, 127, 14]}
    chosen = resolve_colors(labels, {"spleen": "#9d6ca2", "1": [221, 130, 101]})
    assert chosen[2] == [157, 108, 162] and chosen[1] == [221, 130, 101]
    with pytest.raises(ValueError, match="dataset.json: colors: colour for 'kidney', which is not a class"):
        resolve_colors(labels, {"kidney": "#ffffff"}, "dataset.json: colors")
    with pytest.raises(ValueError, match="expected '#rrggbb' or \\[r, g, b\\]"):
        resolve_colors(labels, {1: "red"})


def test_known_structures_get_snomed_codes():
    assert structure_code("Spleen")[1].value == "78961009"
    assert structure_code("grey_matter")[1].value == "389081007"
    assert structure_code("WM")[1].value == "389080008"
    assert structure_code("kidney_left")[1].value == "64033007"
    assert structure_code("tumour")[0].value == "49755003"  # morphologically abnormal structure
    assert structure_code("label_7")[1].value == "85756007"  # generic tissue


def test_seg_nrrd_reads_back_in_slicerio_with_names_colours_values(tmp_path):
    import slicerio

    labels = np.zeros((12, 10, 8), np.uint8)
    labels[2:5, 2:6, 1:4], labels[7:11, 3:8, 4:7] = 1, 2
    affine = np.array([[-1.5, 0, 0, 10], [0, -1.5, 0, 20], [0, 0, 3, -5], [0, 0, 0, 1]])
    names = {0: "background", 1: "liver", 2: "spleen"}
    write_seg_nrrd(labels, affine, names, resolve_colors(names), tmp_path / "case.seg.nrrd")
    segmentation = slicerio.read_segmentation(str(tmp_path / "case.seg.nrrd"))
    found = {s["name"]: (s["labelValue"], [round(c * 255) for c in s["color"]]) for s in segmentation["segments"]}
    assert found == {"liver": (1, [31, 119, 180]), "spleen": (2, [255, 127, 14])}
    assert np.array_equal(segmentation["voxels"], labels)
    assert np.allclose(segmentation["ijkToLPS"], np.diag([-1, -1, 1, 1]) @ affine)
    write_itksnap_labels(tmp_path / "labels.txt", names, resolve_colors(names))
    assert '    2   255  127   14       1   1   1    "spleen"' in (tmp_path / "labels.txt").read_text().splitlines()


def test_dicom_seg_has_snomed_codes_and_display_colours(tmp_path):
    import highdicom as hd
    from dicom_factory import write_series

    from medseg_attn.io.dicom import select_series
    from medseg_attn.io.dicom_seg import write_dicom_seg

    volume = np.zeros((16, 12, 6), np.float32)
    write_series(tmp_path / "ct", volume)
    labels = np.zeros((16, 12, 6), np.uint8)
    labels[2:6, 2:6, 1:4], labels[8:12, 4:9, 2:5], labels[12:15, 1:3, 0:2] = 1, 2, 3
    names = {0: "background", 1: "spleen", 2: "left_kidney", 3: "lesion core"}
    write_dicom_seg(labels, select_series(tmp_path / "ct"), names, tmp_path / "x.seg.dcm",
                    colors={1: [157, 108, 162], 2: [185, 102, 83], 3: [10, 200, 30]})
    seg = hd.seg.segread(tmp_path / "x.seg.dcm")
    segments = {item.SegmentLabel: item for item in seg.SegmentSequence}
    codes = {name: item.SegmentedPropertyTypeCodeSequence[0] for name, item in segments.items()}
    assert (codes["spleen"].CodeValue, codes["spleen"].CodingSchemeDesignator) == ("78961009", "SCT")
    assert codes["left_kidney"].CodeValue == "64033007" and codes["lesion core"].CodeValue == "85756007"  # tissue
    colour = hd.color.CIELabColor.from_dicom_value(segments["spleen"].RecommendedDisplayCIELabValue).to_rgb()
    assert np.allclose(colour, [157, 108, 162], atol=2)
