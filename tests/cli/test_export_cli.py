"""`medseg-attn export`, `predict --engine onnxruntime`, `--output-format` combinations and `config list|show`,
run as a user would (subprocesses of the real CLI) on small real checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import assert_one_line_error, run  # noqa: E402
from explain_factory import grids, write_checkpoint, write_classifier, write_volume  # noqa: E402

pytest.importorskip("onnxruntime")


def _attention_on(network) -> None:
    for module in network.modules():  # the output projection starts at zero: give attention a real effect
        if hasattr(module, "attention") and hasattr(module.attention, "proj"):
            torch.nn.init.normal_(module.attention.proj.weight, std=0.2)


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cases")
    (root / "in").mkdir()
    for name, (volume, affine) in grids().items():  # 2 mm RAS, LPS, and 1.5 x 1.5 x 4 mm (resampled)
        write_volume(root / "in" / f"{name}.nii.gz", volume, affine)
    return write_checkpoint(root / "model.pt", edit=_attention_on, crop_foreground=True), root / "in"


def test_onnxruntime_predictor_equals_pytorch_in_process(cases, tmp_path):
    """The fast check: the same Predictor pipeline on the ONNX file (onnxruntime) and on the checkpoint."""
    from medseg_attn.segmentation.export.models import export_segmentation
    from medseg_attn.segmentation.inference.predictor import Predictor

    model, inputs = cases
    onnx_predictor = Predictor.from_checkpoint(export_segmentation(model, "onnx", tmp_path / "m.onnx"))
    torch_predictor = Predictor.from_checkpoint(model, device="cpu", precision="fp32")  # ONNX runs fp32
    assert onnx_predictor.colors == torch_predictor.colors == {0: [0, 0, 0], 1: [31, 119, 180], 2: [255, 127, 14]}
    for name in ("ras", "aniso"):
        expected = torch_predictor.predict(inputs / f"{name}.nii.gz").labels
        found = onnx_predictor.predict(inputs / f"{name}.nii.gz").labels
        assert len(np.unique(expected)) == 3
        for label in (1, 2):
            both = ((expected == label) & (found == label)).sum()
            assert 2 * both / ((expected == label).sum() + (found == label).sum()) >= 0.999


def test_onnxruntime_predictions_equal_pytorch(cases, tmp_path):
    model, inputs = cases
    result = run("-q", "export", "--model", str(model), "--format", "onnx", "--output", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    assert "exported segmentation model as onnx" in result.stdout and (tmp_path / "m.onnx").is_file()
    assert run("-q", "predict", "--model", str(model), "--input", str(inputs), "--output",
               str(tmp_path / "torch"), "--precision", "fp32").returncode == 0  # ONNX runs fp32
    result = run("-q", "predict", "--model", str(tmp_path / "m.onnx"), "--engine", "onnxruntime", "--input",
                 str(inputs), "--output", str(tmp_path / "onnx"), "--output-format", "all")
    assert result.returncode == 0, result.stderr
    for name in ("ras", "lps", "aniso"):
        expected = np.asarray(nib.load(tmp_path / "torch" / f"{name}.nii.gz").dataobj)
        found = np.asarray(nib.load(tmp_path / "onnx" / f"{name}.nii.gz").dataobj)
        assert len(np.unique(expected)) == 3
        for label in (1, 2):
            both = ((expected == label) & (found == label)).sum()
            assert 2 * both / ((expected == label).sum() + (found == label).sum()) >= 0.999
        assert (tmp_path / "onnx" / f"{name}.seg.nrrd").is_file()  # 'all' on NIfTI inputs: no DICOM-SEG
        assert not (tmp_path / "onnx" / f"{name}.seg.dcm").exists()
    assert (tmp_path / "onnx" / "labels.itksnap.txt").is_file() and (tmp_path / "onnx" / "labels.ctbl").is_file()


def test_export_errors_are_one_line(cases, tmp_path):
    model, inputs = cases
    assert_one_line_error(run("predict", "--model", str(model), "--engine", "onnxruntime", "--input", str(inputs),
                              "--output", str(tmp_path / "o")), "give one .onnx file")
    assert_one_line_error(run("predict", "--model", str(model), "--input", str(inputs), "--output",
                              str(tmp_path / "o"), "--output-format", "nifti,png"), "output format 'png'")
    classifier = write_classifier(tmp_path / "c.pt")
    assert_one_line_error(run("export", "--model", str(classifier), "--format", "bundle", "--output",
                              str(tmp_path / "b")), "bundles are for segmentation")
    result = run("-q", "export", "--model", str(classifier), "--format", "torchscript", "--output",
                 str(tmp_path / "c.ts"))
    assert result.returncode == 0 and torch.jit.load(str(tmp_path / "c.ts"))(torch.randn(2, 3, 50, 44)).shape == (2, 3)


def test_config_list_show_and_names():
    listed = run("config", "list")
    assert listed.returncode == 0
    assert {"ct_spleen", "mr_hippocampus", "classify_2d", "classify_3d", "demo"} <= {
        line.split()[0] for line in listed.stdout.splitlines()}
    shown = run("config", "show", "ct_spleen")
    assert shown.returncode == 0 and shown.stdout.startswith("# Spleen segmentation")
    assert "ct_window: [-57, 164]        # soft-tissue window" in shown.stdout  # comments kept
    assert_one_line_error(run("config", "show", "ct_spleeen"), "no shipped config", "ct_spleen")


def test_shipped_configs_are_the_repository_configs():
    from medseg_attn.config import load_config
    from medseg_attn.config.shipped import shipped_config_text, shipped_configs

    repository = Path(__file__).resolve().parents[2] / "configs"
    assert sorted(p.stem for p in repository.glob("*.yaml")) == sorted(shipped_configs())
    for path in repository.glob("*.yaml"):
        assert shipped_config_text(path.stem) == path.read_text(), f"{path} differs from its packaged copy"
    assert load_config("ct_spleen").data.ct_window == (-57, 164) or list(load_config("ct_spleen").data.ct_window) \
        == [-57, 164]
