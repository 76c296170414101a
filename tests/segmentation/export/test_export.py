"""A tiny model trained on the real brain MRI leaves the tool: ONNX (onnxruntime), TorchScript and a MONAI bundle
give the label maps `medseg-attn predict` gives; segment names, colours and codes reach Slicer, ITK-SNAP, DICOM-SEG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cli_helpers import run, run_bundle_without_medseg_attn  # noqa: E402

pytest.importorskip("onnxruntime")


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    total = x.sum() + y.sum()
    return 1.0 if total == 0 else float(2 * (x & y).sum() / total)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A run trained for 40 steps on four real-brain cases at 4 mm (through the CLI), and a held-out 3 mm case."""
    from medseg_attn.demo_data import build_demo_dataset

    root = tmp_path_factory.mktemp("export")
    dataset = build_demo_dataset(root / "data", train_cases=4, test_cases=1, seed=5, train_spacing=4.0,
                                 test_spacing=3.0, progress=False)
    result = run("-q", "train", "--data", str(dataset), "--output", str(root / "run"), "--epochs", "5",
                 "--set", "data.spacing=[4,4,4]", "--set", "data.patch_size=[32,32,32]",
                 "--set", "data.samples_per_case=1", "--set", "model.channels=[8,16,32]",
                 "--set", "train.steps_per_epoch=8", "--set", "train.batch_size=2", "--set", "train.lr=0.01",
                 "--set", "data.augmentation.enabled=false")
    assert result.returncode == 0, result.stderr
    images = sorted((Path(dataset).parent / "imagesTs").glob("*.nii.gz"))
    assert images
    torch_out = root / "torch"
    assert run("-q", "predict", "--model", str(root / "run"), "--input", str(images[0].parent), "--output",
               str(torch_out), "--output-format", "nifti,seg-nrrd", "--precision", "fp32").returncode == 0
    return {"root": root, "run": root / "run", "images": images[0].parent, "torch": torch_out}


def test_exports_carry_the_model_card_and_inspect_prints_it(trained):
    root = trained["root"]
    for fmt, name in (("onnx", "model"), ("torchscript", "model"), ("bundle", "bundle")):
        result = run("-q", "export", "--model", str(trained["run"]), "--format", fmt, "--output", str(root / name))
        assert result.returncode == 0, result.stderr
    assert (root / "model.onnx").is_file() and (root / "model.ts").is_file()
    for target in (trained["run"], root / "model.onnx", root / "model.ts", root / "bundle"):
        shown = run("inspect", str(target))
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout
        assert "1=grey_matter #1f77b4" in text and "2=white_matter" in text, text
        assert "training_cases=3" in text and "modality=mr" in text and "spacing=[4.0, 4.0, 4.0]" in text, text
        assert "medseg-attn -q train --data" in text and "torch 2." in text and "monai 1." in text, text
        assert "validation Dice (mean over classes): 0." in text and "(5 epochs trained)" in text, text


def test_onnxruntime_prediction_equals_pytorch(trained, tmp_path):
    model = trained["root"] / "model.onnx"
    if not model.exists():
        assert run("-q", "export", "--model", str(trained["run"]), "--format", "onnx", "--output",
                   str(model)).returncode == 0
    result = run("-q", "predict", "--model", str(model), "--engine", "onnxruntime", "--input",
                 str(trained["images"]), "--output", str(tmp_path / "onnx"))
    assert result.returncode == 0, result.stderr
    for reference in trained["torch"].glob("*.nii.gz"):
        ours = np.asarray(nib.load(tmp_path / "onnx" / reference.name).dataobj)
        theirs = np.asarray(nib.load(reference).dataobj)
        assert ours.shape == theirs.shape and (theirs > 0).sum() > 1000
        for label in (1, 2):
            assert dice(ours, theirs, label) >= 0.999


def test_bundle_runs_in_monai_without_medseg_attn_and_back_in_predict(trained, tmp_path):
    bundle = trained["root"] / "bundle"
    if not bundle.exists():
        assert run("-q", "export", "--model", str(trained["run"]), "--format", "bundle", "--output",
                   str(bundle)).returncode == 0
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background", "1": "grey_matter", "2": "white_matter"}
    assert metadata["medseg_attn"]["card"]["data"]["training_cases"] == 3
    # MONAI's own checks, offline: the bundle's network against metadata.json's inputs/outputs
    verify = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_net_in_out", "--net_id", "network_def",
                             "--meta_file", str(bundle / "configs" / "metadata.json"), "--config_file",
                             str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle), "--n", "3",
                             "--any", "8"], capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0 and "verified with no error" in verify.stdout + verify.stderr, verify.stderr
    # the model zoo's command line, in a process where importing medseg_attn fails
    result = run_bundle_without_medseg_attn(bundle, trained["images"], tmp_path / "monai")
    assert result.returncode == 0, result.stderr[-2000:]
    again = run("-q", "predict", "--model", str(bundle), "--input", str(trained["images"]), "--output",
                str(tmp_path / "again"), "--precision", "fp32")  # as the reference: bit-for-bit equal
    assert again.returncode == 0, again.stderr
    for reference in trained["torch"].glob("*.nii.gz"):
        expected = np.asarray(nib.load(reference).dataobj)
        from_monai = nib.load(tmp_path / "monai" / reference.name)
        assert np.allclose(from_monai.affine, nib.load(reference).affine, atol=1e-4)
        labels = np.asarray(from_monai.dataobj).squeeze()
        for label in (1, 2):
            assert dice(labels, expected, label) >= 0.99
        assert np.array_equal(np.asarray(nib.load(tmp_path / "again" / reference.name).dataobj), expected)


def test_seg_nrrd_and_itksnap_labels_carry_names_colours_values(trained):
    import slicerio

    for seg in trained["torch"].glob("*.seg.nrrd"):
        segmentation = slicerio.read_segmentation(str(seg))
        found = {s["name"]: (s["labelValue"], [round(c * 255) for c in s["color"]]) for s in segmentation["segments"]}
        assert found == {"grey_matter": (1, [31, 119, 180]), "white_matter": (2, [255, 127, 14])}
        labels = np.asarray(nib.load(str(seg).replace(".seg.nrrd", ".nii.gz")).dataobj)
        assert np.array_equal(np.asarray(segmentation["voxels"]), labels)
        ijk_to_lps = np.asarray(segmentation["ijkToLPS"])
        affine = nib.load(str(seg).replace(".seg.nrrd", ".nii.gz")).affine
        assert np.allclose(np.diag([-1, -1, 1, 1]) @ affine, ijk_to_lps, atol=1e-4)
    lines = (trained["torch"] / "labels.itksnap.txt").read_text().splitlines()
    assert '    1    31  119  180       1   1   1    "grey_matter"' in lines
    assert "2 white_matter 255 127 14 255" in (trained["torch"] / "labels.ctbl").read_text()
