"""Issue 26: one model-file sniffer behind every command's message; a bad model is one line with exit code 2."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error
from reliability_helpers import cli, volume

from medseg_attn.io.model_files import sniff_model


@pytest.fixture(scope="module")
def exports(tmp_path_factory, segmentation_model):
    """A TorchScript file, a valid ONNX file (not from medseg-attn), a truncated and a random .onnx, a random .pt."""
    import onnx
    from onnx import TensorProto, helper

    root = tmp_path_factory.mktemp("exports")
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(root / "model.ts"))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(root / "plain.onnx"))
    data = (root / "plain.onnx").read_bytes()
    (root / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (root / "random.onnx").write_bytes(np.random.default_rng(0).bytes(400))
    (root / "random.pt").write_bytes(np.random.default_rng(1).bytes(400))
    shutil.copy(root / "model.ts", root / "disguised.pt")
    return root


def test_sniffer_tells_every_kind_apart(exports, segmentation_model, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert sniff_model(segmentation_model) == "checkpoint"
    assert sniff_model(run) == "run" and sniff_model(tmp_path / "nothing") == "missing"
    assert sniff_model(exports / "model.ts") == "torchscript" == sniff_model(exports / "disguised.pt")
    assert sniff_model(exports / "plain.onnx") == "onnx" and sniff_model(exports / "random.pt") == "other"
    assert sniff_model(volume(tmp_path / "v.nii.gz")) == "other"


@pytest.mark.parametrize("name", ["truncated.onnx", "random.onnx"])
def test_predict_and_inspect_on_a_broken_onnx_are_one_line(capsys, exports, tmp_path, name):
    image = volume(tmp_path / "case.nii.gz")
    for args in (("predict", "--model", str(exports / name), "--input", str(image), "--output", str(tmp_path / "o")),
                 ("inspect", str(exports / name))):
        assert_one_line_error(cli(capsys, *args), str(exports / name), "not a valid ONNX file")


@pytest.mark.parametrize("name, words", [("model.ts", "this is a TorchScript export, not a checkpoint"),
                                         ("disguised.pt", "this is a TorchScript export, not a checkpoint"),
                                         ("plain.onnx", "this is an ONNX export, not a checkpoint"),
                                         ("random.pt", "not a checkpoint")])
def test_every_command_says_what_the_model_file_is(capsys, exports, tmp_path, name, words):
    image = volume(tmp_path / "case.nii.gz")
    path = str(exports / name)
    commands = [("export", "--model", path, "--format", "onnx", "--output", str(tmp_path / "x.onnx")),
                ("classify", "predict", "--model", path, "--input", str(image), "--output", str(tmp_path / "p.csv"))]
    if not name.endswith(".onnx"):  # predict runs an .onnx with onnxruntime (plain.onnx: no medseg-attn metadata)
        commands.append(("predict", "--model", path, "--input", str(image), "--output", str(tmp_path / "o")))
    if name == "random.pt":  # inspect shows an export's card (disguised.pt: one without medseg-attn metadata)
        commands.append(("inspect", path))
    for args in commands:
        assert_one_line_error(cli(capsys, *args), path, words)
    assert not (tmp_path / "x.onnx").exists()
