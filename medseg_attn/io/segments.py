"""Segment names, colours and codes: the one palette, and the label files other viewers read.

Every label map medseg-attn writes can carry its model's class names and a colour per class:

* :func:`label_palette` / :func:`resolve_colors`: the default palette (matplotlib's tab10, tab20 beyond 10
  classes; class 0 black) and the colours a dataset asks for (``"colors": {"1": [255, 0, 0], "2": "#00ff00"}``
  in its dataset.json); the PNGs in :mod:`medseg_attn.plots` use the same palette;
* :func:`write_itksnap_labels`: an ITK-SNAP label description file (``Segmentation -> Import Label
  Descriptions``), :func:`write_color_table`: a 3D Slicer / FreeSurfer-style colour table (``.ctbl``);
* :func:`write_seg_nrrd`: a 3D Slicer segmentation (``.seg.nrrd``, one label layer) with named, coloured segments;
* :func:`structure_code`: the SNOMED CT concept of a known structure (spleen, liver, grey matter, ...) for
  DICOM-SEG, generic tissue otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write, atomic_write_text

__all__ = ["label_palette", "resolve_colors", "structure_code", "write_itksnap_labels", "write_color_table",
           "write_seg_nrrd", "KNOWN_STRUCTURES", "colors_from_dataset"]

# matplotlib's tab10 and tab20, as 0..255 RGB (kept here so io needs no matplotlib)
_TAB10 = ["1f77b4", "ff7f0e", "2ca02c", "d62728", "9467bd", "8c564b", "e377c2", "7f7f7f", "bcbd22", "17becf"]
_TAB20 = ["1f77b4", "aec7e8", "ff7f0e", "ffbb78", "2ca02c", "98df8a", "d62728", "ff9896", "9467bd", "c5b0d5",
          "8c564b", "c49c94", "e377c2", "f7b6d2", "7f7f7f", "c7c7c7", "bcbd22", "dbdb8d", "17becf", "9edae5"]

# class-name words (lower case, '_'/'-'/' ' free) -> SNOMED CT attribute of pydicom's ``codes.SCT``
KNOWN_STRUCTURES = {
    "spleen": "Spleen", "liver": "Liver", "kidney": "Kidney", "stomach": "Stomach", "pancreas": "Pancreas",
    "gallbladder": "Gallbladder", "esophagus": "Esophagus", "oesophagus": "Esophagus", "aorta": "Aorta",
    "brain": "Brain", "greymatter": "GrayMatter", "graymatter": "GrayMatter", "gm": "GrayMatter",
    "whitematter": "WhiteMatter", "wm": "WhiteMatter", "hippocampus": "Hippocampus", "duodenum": "Duodenum",
    "lung": "Lung", "heart": "Heart", "prostate": "Prostate", "tumor": "Neoplasm", "tumour": "Neoplasm",
    "adrenalgland": "AdrenalGland", "inferiorvenacava": "InferiorVenaCava", "portalvein": "PortalVein",
    "colon": "Colon", "smallintestine": "SmallIntestine", "csf": "CerebrospinalFluid",
    "cerebrospinalfluid": "CerebrospinalFluid",
}


def _hex(value: str) -> list[int]:
    return [int(value[i:i + 2], 16) for i in (0, 2, 4)]


def label_palette(count: int) -> np.ndarray:
    """(count, 3) RGB in [0, 1]: class 0 black, then tab10 (tab20 beyond 11 classes)."""
    table = _TAB10 if count <= 11 else _TAB20
    colours = [[0, 0, 0]] + [_hex(table[i % len(table)]) for i in range(max(count - 1, 0))]
    return np.asarray(colours[:count], dtype=np.float64) / 255.0


def _parse_color(key: Any, value: Any, source: str) -> list[int]:
    if isinstance(value, str) and re.fullmatch(r"#?[0-9a-fA-F]{6}", value):
        return _hex(value.lstrip("#"))
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3:
        numbers = [float(v) for v in value]
        if all(0 <= v <= 255 for v in numbers):
            scale = 255.0 if all(v <= 1 for v in numbers) and any(0 < v < 1 for v in numbers) else 1.0
            return [int(round(v * scale)) for v in numbers]
    raise UserError(f"{source}: colour {value!r} of class {key}: expected '#rrggbb' or [r, g, b] in 0..255")


def resolve_colors(labels: Mapping[int, str], given: Mapping[Any, Any] | None = None, source: str = "colors"
                   ) -> dict[int, list[int]]:
    """A 0..255 RGB colour per class: ``given`` (keys: class index or name) over the default palette.

    Raises:
        ValueError: a colour that is not '#rrggbb' or [r, g, b], or a key that is no class (names ``source``).
    """
    indices = sorted(int(k) for k in labels)
    palette = label_palette(max(indices) + 1 if indices else 1)
    colours = {index: [int(round(v * 255)) for v in palette[index]] for index in indices}
    by_name = {str(name).lower(): int(index) for index, name in labels.items()}
    for key, value in (given or {}).items():
        index = int(key) if str(key).isdigit() else by_name.get(str(key).lower())
        if index not in colours:
            raise UserError(f"{source}: colour for {key!r}, which is not a class ({dict(labels)})")
        colours[index] = _parse_color(key, value, source)
    return colours


def structure_code(name: str) -> tuple[Any, Any]:
    """(segmented property category, type) for DICOM-SEG: SNOMED CT for a known structure, tissue otherwise.

    A name matches when one of :data:`KNOWN_STRUCTURES` is its whole word-joined form or a word of it
    ('left_kidney' -> kidney, 'GM' -> grey matter); a neoplasm is a morphologically abnormal structure.
    """
    from pydicom.sr.codedict import codes

    joined = re.sub(r"[\s_\-]+", "", name.lower())
    words = [re.sub(r"[^a-z]", "", word) for word in re.split(r"[\s_\-]+", name.lower())]
    key = joined if joined in KNOWN_STRUCTURES else next((w for w in words if w in KNOWN_STRUCTURES), None)
    if key is None:
        return codes.SCT.Tissue, codes.SCT.Tissue
    concept = getattr(codes.SCT, KNOWN_STRUCTURES[key])
    category = codes.SCT.MorphologicallyAbnormalStructure if KNOWN_STRUCTURES[key] == "Neoplasm" \
        else codes.SCT.AnatomicalStructure
    return category, concept


def write_itksnap_labels(path: str | Path, labels: Mapping[int, str], colors: Mapping[int, Sequence[int]]) -> Path:
    """ITK-SNAP label description file: ``IDX R G B A VIS MESH "LABEL"`` per class (0 = Clear Label)."""
    lines = ["# ITK-SnAP Label Description File (medseg-attn)",
             "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL"]
    for index in sorted(labels):
        red, green, blue = colors.get(index, (0, 0, 0))
        alpha, visible = (0, 0) if index == 0 else (1, 1)
        name = "Clear Label" if index == 0 else str(labels[index]).replace('"', "'")
        lines.append(f"{index:5d} {red:5d}{green:5d}{blue:5d}{alpha:8d}{visible:4d}{visible:4d}    \"{name}\"")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def write_color_table(path: str | Path, labels: Mapping[int, str], colors: Mapping[int, Sequence[int]]) -> Path:
    """A colour table (``.ctbl``, 3D Slicer's and FreeSurfer's format): ``index name R G B A`` per class."""
    lines = ["# Color table written by medseg-attn", f"# {len(labels)} values"]
    for index in sorted(labels):
        red, green, blue = colors.get(index, (0, 0, 0))
        name = re.sub(r"\s+", "_", str(labels[index]))
        lines.append(f"{index} {name} {red} {green} {blue} {0 if index == 0 else 255}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def write_seg_nrrd(labels_array: np.ndarray, affine: np.ndarray, labels: Mapping[int, str],
                   colors: Mapping[int, Sequence[int]], path: str | Path) -> Path:
    """Write a 3D Slicer segmentation file (``.seg.nrrd``) with one segment per foreground class.

    Args:
        labels_array: (X, Y, Z) class indices (2D maps are written with one slice).
        affine: 4x4 voxel-to-world RAS affine (mm).
        labels: class index -> name (segment names; class 0 is not a segment).
        colors: class index -> 0..255 RGB (segment colours).
        path: output file ending in ``.seg.nrrd``.
    """
    import slicerio

    array = np.asarray(labels_array)
    if array.ndim == 2:
        array = array[..., None]
    ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    ijk_to_lps = ras_to_lps @ np.asarray(affine, dtype=np.float64)
    segments = []
    for index in sorted(i for i in labels if int(i) > 0):
        red, green, blue = colors.get(index, (128, 128, 128))
        segments.append({"id": f"Segment_{index}", "name": str(labels[index]), "labelValue": int(index),
                         "layer": 0, "color": [red / 255.0, green / 255.0, blue / 255.0]})
    segmentation = {"voxels": array.astype(np.uint8 if array.max(initial=0) < 256 else np.uint16),
                    "ijkToLPS": ijk_to_lps, "encoding": "gzip", "segments": segments}

    def write(tmp: Path) -> None:
        slicerio.write_segmentation(str(tmp), segmentation)

    return atomic_write(path, write)


def colors_from_dataset(path: str | Path | None) -> dict[str, Any]:
    """The ``colors`` entry of a dataset.json (the file, or a folder holding one); empty when there is none."""
    import json

    if not path:
        return {}
    file = Path(path).expanduser()
    file = file / "dataset.json" if file.is_dir() else file
    if file.suffix != ".json" or not file.is_file():
        return {}
    colors = json.loads(file.read_text()).get("colors") or {}
    if not isinstance(colors, dict):
        raise UserError(f"{file}: 'colors' must map class index or name to '#rrggbb' or [r, g, b], got {colors!r}")
    return colors
