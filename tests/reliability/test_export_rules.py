"""Issue 26: export follows the one output rule (never over the model or a run's files, suffix agrees with the
format, an existing folder means inside it, a bundle over a file is one line)."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from cli_helpers import assert_one_line_error
from reliability_helpers import cli


@pytest.fixture()
def run_folder(tmp_path, segmentation_model):
    run = tmp_path / "spleen_run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        shutil.copy(segmentation_model, run / "checkpoints" / name)
    (run / "config.yaml").write_text("data: {}\n")
    return run


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_never_writes_over_the_model_or_the_run(capsys, run_folder):
    best, last = run_folder / "checkpoints" / "best.pt", run_folder / "checkpoints" / "last.pt"
    before = _sha(best)
    yaml_file = run_folder / "config.yaml"
    yaml_file.rename(run_folder / "config.ts")  # an existing file of the run with an export suffix
    for model, output, words in ((run_folder, best, "--output"), (best, best, "refusing to overwrite an input"),
                                 (best, last, "lies in the input folder"),
                                 (run_folder, run_folder / "config.ts", "is a file of the run folder")):
        result = cli(capsys, "export", "--model", str(model), "--format", "torchscript", "--output", str(output))
        assert_one_line_error(result, str(output), words)
    assert _sha(best) == before and (run_folder / "config.ts").read_text() == "data: {}\n"
    result = cli(capsys, "export", "--model", str(run_folder), "--format", "onnx", "--output", str(best))
    assert_one_line_error(result, ".pt is the suffix of torchscript files", "--format onnx")
    result = cli(capsys, "export", "--model", str(run_folder), "--format", "bundle", "--output", str(run_folder))
    assert_one_line_error(result, "lies in the input folder")
    assert not (run_folder / "configs").exists() and _sha(best) == before


@pytest.mark.parametrize("fmt, suffix, expected", [("onnx", ".ts", ".onnx"), ("torchscript", ".onnx", ".ts or .pt"),
                                                   ("onnx", ".txt", ".onnx")])
def test_a_suffix_that_is_not_the_format_is_refused(capsys, tmp_path, segmentation_model, fmt, suffix, expected):
    target = tmp_path / f"model{suffix}"
    result = cli(capsys, "export", "--model", str(segmentation_model), "--format", fmt, "--output", str(target))
    assert_one_line_error(result, str(target), f"--format {fmt} writes {expected}")
    assert not target.exists()


def test_bundle_over_an_existing_file_is_one_line(capsys, tmp_path, segmentation_model):
    target = tmp_path / "taken"
    target.write_text("keep me")
    result = cli(capsys, "export", "--model", str(segmentation_model), "--format", "bundle", "--output", str(target))
    assert_one_line_error(result, str(target), "is an existing file", "bundle")
    assert target.read_text() == "keep me"


def test_an_existing_folder_as_output_means_inside_it(capsys, tmp_path, run_folder):
    folder = tmp_path / "exports"
    folder.mkdir()
    beside = tmp_path / "exports.ts"
    beside.write_text("not ours")
    result = cli(capsys, "-q", "export", "--model", str(run_folder), "--format", "torchscript", "--output",
                 str(folder))
    assert result.returncode == 0, result.stderr
    assert (folder / "spleen_run.ts").is_file() and beside.read_text() == "not ours"
    shown = cli(capsys, "inspect", str(folder / "spleen_run.ts"))
    assert shown.returncode == 0 and "liver" in shown.stdout, shown.stderr
