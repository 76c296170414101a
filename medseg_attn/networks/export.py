"""Export a trained network to TorchScript or ONNX with dynamic spatial sizes, and run an ONNX file in PyTorch code.

Both formats are made by tracing (``torch.jit.trace``; ``torch.onnx.export(..., dynamo=False)``, opset 17) on an
example input whose spatial sizes are *not* multiples of the network's divisor, so the zero padding that
:class:`~medseg_attn.networks.unet.AttentionSkipUNet` adds to reach a multiple of its divisor, and the crop back,
are recorded as shape arithmetic in the graph: the exported model takes any spatial size (and any batch size),
like the PyTorch one. fp32 only.

What a trace fixes: Python decisions taken once at export time. The one that matters is the coarsest
(global) attention level, which tiles its map into windows once it holds more than ``global_max_tokens`` tokens
(a 3D input above about 256^3 voxels for the default network): the exported graph always attends over the whole
coarsest map. Below that size the exported model equals PyTorch (max abs logit difference ~1e-6, tested);
sliding-window patches are far below it.

Metadata (task, labels, colours, preprocessing, config, model card) travels inside the file: a
``medseg_attn.json`` extra file in TorchScript, a ``medseg_attn`` metadata property in ONNX; :func:`read_metadata`
reads either.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg_attn.io.files import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["ONNX_OPSET", "OnnxNetwork", "example_input", "export_onnx", "export_torchscript", "check_onnx",
           "read_metadata", "METADATA_KEY"]

ONNX_OPSET = 17
METADATA_KEY = "medseg_attn"


class _FirstOutput(nn.Module):
    """The network in eval mode with a single tensor out (the class or segmentation logits)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return out[0] if isinstance(out, (list, tuple)) else out


def example_input(spatial_dims: int, in_channels: int, divisor: int) -> torch.Tensor:
    """A trace input (1, C, *S) whose sizes need padding (so the padding is traced): just over one divisor per
    side, so the padded input is two divisors and the coarsest (global) level stays below ``global_max_tokens``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        divisor: the network's padding multiple (``network.divisor``).
    """
    sides = [divisor + 3, divisor + 5, divisor + 1][:spatial_dims]
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, in_channels, *sides, generator=generator)  # (1, C, *S)


def _prepared(network: nn.Module) -> nn.Module:
    wrapped = _FirstOutput(network).eval()
    for parameter in wrapped.parameters():
        parameter.requires_grad_(False)
    return wrapped


def export_torchscript(network: nn.Module, example: torch.Tensor, path: str | Path,
                       metadata: dict[str, Any] | None = None) -> Path:
    """Trace ``network`` on ``example`` (1, C, *S) into a TorchScript file with ``metadata`` as an extra file."""
    module = _prepared(network).cpu()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, example.cpu(), check_trace=False)
    extra = {f"{METADATA_KEY}.json": json.dumps(metadata or {})}
    return atomic_write(path, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=extra))


def export_onnx(network: nn.Module, example: torch.Tensor, path: str | Path, metadata: dict[str, Any] | None = None,
                output_name: str = "logits") -> Path:
    """Export ``network`` to ONNX (opset 17, TorchScript-based exporter) with dynamic batch and spatial axes.

    The input is named ``image`` (B, C, *S), the output ``output_name``: (B, K, *S) for segmentation, (B, K) for
    classification. ``metadata`` is stored as a JSON metadata property.
    """
    import onnx

    module = _prepared(network).cpu()
    dims = example.ndim - 2
    image_axes = {0: "batch", **{2 + i: f"size{i}" for i in range(dims)}}
    with torch.no_grad():
        output_rank = module(example.cpu()).ndim
    output_axes = {0: "batch", **({2 + i: f"size{i}" for i in range(dims)} if output_rank == example.ndim else {})}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example.cpu(),), str(tmp), input_names=["image"], output_names=[output_name],
                              dynamic_axes={"image": image_axes, output_name: output_axes},
                              opset_version=ONNX_OPSET, dynamo=False, do_constant_folding=True)
        model = onnx.load(str(tmp))
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata or {})
        model.producer_name = "medseg-attn"
        onnx.save(model, str(tmp))

    path = atomic_write(path, write)
    check_onnx(path)
    return path


def check_onnx(path: str | Path) -> None:
    """Run ``onnx.checker`` (with full shape inference) on an ONNX file.

    Raises:
        ValueError: the file fails the checker (the message names it).
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as error:  # onnx raises ValidationError / InferenceError
        raise ValueError(f"{path}: not a valid ONNX model ({str(error).splitlines()[0][:200]})") from None


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The medseg-attn metadata stored in an exported ``.onnx`` or TorchScript ``.ts`` file.

    Raises:
        ValueError: the file carries no medseg-attn metadata.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        found = {entry.key: entry.value for entry in model.metadata_props}
        if METADATA_KEY not in found:
            raise ValueError(f"{path}: ONNX file without medseg-attn metadata (was it exported by medseg-attn?)")
        return json.loads(found[METADATA_KEY])
    extra = {f"{METADATA_KEY}.json": ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[f"{METADATA_KEY}.json"]:
        raise ValueError(f"{path}: TorchScript file without medseg-attn metadata (was it exported by medseg-attn?)")
    return json.loads(extra[f"{METADATA_KEY}.json"])


class OnnxNetwork(nn.Module):
    """An exported ONNX network run by onnxruntime, called like the PyTorch one: (B, C, *S) -> logits.

    Holds no parameters; inputs are moved to the CPU as float32 numpy arrays and the logits come back as a
    tensor on the input's device.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads for onnxruntime (0 = its default).
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError:
            raise ValueError("--engine onnxruntime needs onnxruntime: pip install 'medseg-attn[onnx]'") from None
        self.path = Path(path)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail / InvalidGraph types
            raise ValueError(f"{self.path}: onnxruntime cannot load it ({str(error)[:200]})") from None
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().float().cpu().numpy()  # (B, C, *S)
        logits = self.session.run(None, {self.input_name: array})[0]  # (B, K, *S) or (B, K)
        return torch.from_numpy(logits).to(x.device)
