"""Exported networks (TorchScript, ONNX run by onnxruntime) equal PyTorch at sizes they were not traced at."""

from __future__ import annotations

import pytest
import torch

from medseg_attn.networks.export import example_input, export_onnx, export_torchscript, read_metadata
from medseg_attn.networks.heads import AttentionClassifier
from medseg_attn.networks.unet import AttentionSkipUNet

onnxruntime = pytest.importorskip("onnxruntime")

# (traced at divisor + odd sizes; these are neither that size nor all multiples of the divisor, 16 or 32)
SIZES = {2: [(37, 29), (64, 48)], 3: [(19, 23, 17), (40, 33, 26)]}


def _network(dims: int, attention: bool) -> AttentionSkipUNet:
    torch.manual_seed(0)
    network = AttentionSkipUNet(dims, 1, 3, channels=(8, 16, 32), attention=attention, head_dim=8)
    for module in network.modules():  # the output projection starts at zero: give attention a real effect
        if hasattr(module, "attention") and hasattr(module.attention, "proj"):
            torch.nn.init.normal_(module.attention.proj.weight, std=0.2)
    return network.eval()


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("attention", [True, False])
def test_torchscript_and_onnx_match_pytorch_at_unseen_sizes(tmp_path, dims, attention):
    network = _network(dims, attention)
    example = example_input(dims, 1, network.divisor)
    metadata = {"task": "segmentation", "labels": {"0": "background", "1": "a", "2": "b"}}
    scripted = torch.jit.load(str(export_torchscript(network, example, tmp_path / "m.ts", metadata)))
    session = onnxruntime.InferenceSession(str(export_onnx(network, example, tmp_path / "m.onnx", metadata)),
                                           providers=["CPUExecutionProvider"])
    assert read_metadata(tmp_path / "m.onnx") == metadata == read_metadata(tmp_path / "m.ts")
    for size in SIZES[dims]:
        assert size != tuple(example.shape[2:])
        x = torch.randn(2, 1, *size)
        with torch.no_grad():
            reference = network(x)  # (2, 3, *size)
            traced = scripted(x)
        onnx_logits = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        assert traced.shape == onnx_logits.shape == reference.shape
        assert (traced - reference).abs().max() <= 1e-4
        assert (onnx_logits - reference).abs().max() <= 1e-4
    if attention:  # the attention blocks matter: switching them off changes the logits
        x = torch.randn(1, 1, *SIZES[dims][0])
        plain = _network(dims, False)
        plain.load_state_dict({k: v for k, v in network.state_dict().items() if "skip_attention" not in k})
        with torch.no_grad():
            assert (plain(x) - network(x)).abs().max() > 1e-3


@pytest.mark.parametrize("attention", [True, False])
def test_classifier_exports_with_any_image_size(tmp_path, attention):
    torch.manual_seed(0)
    network = AttentionClassifier(2, 3, 4, channels=(8, 16, 32), attention=attention, head_dim=8).eval()
    example = example_input(2, 3, network.divisor)
    session = onnxruntime.InferenceSession(str(export_onnx(network, example, tmp_path / "c.onnx")),
                                           providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(export_torchscript(network, example, tmp_path / "c.ts")))
    for size in [(48, 40), (61, 53)]:
        x = torch.randn(3, 3, *size)
        with torch.no_grad():
            reference = network(x)  # (3, 4)
            assert (scripted(x) - reference).abs().max() <= 1e-4
        assert (torch.from_numpy(session.run(None, {"image": x.numpy()})[0]) - reference).abs().max() <= 1e-4
