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

from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write, check_output_location
from medseg_attn.io.model_files import sniff_model, wrong_model_message

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_SUFFIXES", "ONNX_OPSET", "OnnxNetwork", "example_input", "export_onnx", "export_target",
           "export_torchscript", "check_onnx", "read_metadata", "METADATA_KEY"]

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


EXPORT_SUFFIXES = {"torchscript": (".ts", ".pt"), "onnx": (".onnx",)}


def export_target(model: str | Path, checkpoint: Path, fmt: str, output: str | Path) -> Path:
    """Where ``medseg-attn export`` writes: the one output rule of export.

    * an existing folder as ``output`` (torchscript / onnx): the file ``<model name>.ts|.onnx`` inside it;
    * no suffix: the format's (``.ts``, ``.onnx``) added; a suffix that is not the format's (``.ts``/``.pt`` for
      torchscript, ``.onnx`` for onnx) is refused;
    * bundle: a folder, so an existing file is refused;
    * never over the checkpoint being read, into a run's ``checkpoints/`` or a bundle being read, over an existing
      file of the run folder, and a bundle never is the run folder itself
      (:func:`medseg_attn.io.files.check_output_location`).

    Raises:
        ValueError: one line naming ``--output`` and the problem.
    """
    given = Path(output).expanduser()
    checkpoint = Path(checkpoint)
    source = Path(model).expanduser()
    run = source if source.is_dir() else (checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None)
    if fmt == "bundle":
        if given.exists() and not given.is_dir():
            raise UserError(f"{given}: is an existing file; --format bundle writes a folder, give a new or existing "
                             f"folder as --output")
        target = given
    elif given.is_dir():
        name = run.resolve().name if run is not None else checkpoint.stem
        target = given / f"{name}{EXPORT_SUFFIXES[fmt][0]}"
    elif not given.suffix:
        target = given.with_suffix(EXPORT_SUFFIXES[fmt][0])
    elif given.suffix.lower() not in EXPORT_SUFFIXES[fmt]:
        other = next((f for f, suffixes in EXPORT_SUFFIXES.items() if given.suffix.lower() in suffixes), None)
        what = f"is the suffix of {other} files" if other else "is not an export suffix"
        raise UserError(f"{given}: {given.suffix} {what}; --format {fmt} writes "
                         f"{' or '.join(EXPORT_SUFFIXES[fmt])} files, change --output or --format")
    else:
        target = given
    protected = [checkpoint]
    if run is not None:
        protected.append(run / "checkpoints")
    if source.is_dir() and not (source / "checkpoints").is_dir():  # a bundle or bare folder being read
        protected.append(source)
    if fmt == "bundle" and run is not None:
        protected.append(run)  # a bundle inside the run folder would make it read as a bundle
    check_output_location(target, protected, folder=fmt == "bundle")
    if run is not None and fmt != "bundle" and target.exists() and run.resolve() in target.resolve().parents:
        raise UserError(f"{target}: is a file of the run folder {run}; refusing to overwrite it, choose another "
                         f"--output")
    return target


def check_onnx(path: str | Path) -> None:
    """Run ``onnx.checker`` (with full shape inference) on an ONNX file.

    Raises:
        ValueError: the file fails the checker (the message names it).
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as error:  # onnx raises ValidationError / InferenceError
        raise UserError(f"{path}: not a valid ONNX model ({str(error).splitlines()[0][:200]})") from None


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The medseg-attn metadata stored in an exported ONNX or TorchScript file (told apart by their content, see
    :func:`medseg_attn.io.model_files.sniff_model`, whatever the suffix).

    Raises:
        ValueError: not an export (a checkpoint, a truncated or random file), or one without medseg-attn metadata.
    """
    path = Path(path)
    kind = sniff_model(path)
    if kind == "onnx":
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # protobuf DecodeError for truncated or random bytes
            raise UserError(f"{path}: not a valid ONNX file, truncated or not ONNX ({type(error).__name__}: "
                             f"{str(error)[:120]})") from None
        if not model.graph.node:
            raise UserError(f"{path}: not a valid ONNX file (no graph); truncated or not ONNX")
        found = {entry.key: entry.value for entry in model.metadata_props}
        if METADATA_KEY not in found:
            raise UserError(f"{path}: ONNX file without medseg-attn metadata (was it exported by medseg-attn?)")
        return json.loads(found[METADATA_KEY])
    if kind != "torchscript":
        raise UserError(wrong_model_message(path, kind, "an ONNX or TorchScript export"))
    extra = {f"{METADATA_KEY}.json": ""}
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as error:  # a damaged archive
        raise UserError(f"{path}: not a loadable TorchScript file ({str(error).splitlines()[0][:120]})") from None
    if not extra[f"{METADATA_KEY}.json"]:
        raise UserError(f"{path}: TorchScript file without medseg-attn metadata (was it exported by medseg-attn?)")
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
            raise UserError("--engine onnxruntime needs onnxruntime: pip install 'medseg-attn[onnx]'") from None
        self.path = Path(path)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail / InvalidGraph types
            raise UserError(f"{self.path}: onnxruntime cannot load it ({str(error)[:200]})") from None
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().float().cpu().numpy()  # (B, C, *S)
        logits = self.session.run(None, {self.input_name: array})[0]  # (B, K, *S) or (B, K)
        return torch.from_numpy(logits).to(x.device)
