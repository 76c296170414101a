"""The one model-file sniffer: what a ``--model`` path holds, from its first bytes and zip listing (no unpickling).

:func:`sniff_model` tells a run folder, a MONAI bundle folder, a checkpoint (``torch.save`` zip or legacy pickle),
a TorchScript export (``torch.jit.save`` zip: it holds ``code/``), an ONNX export (a protobuf starting with its
``ir_version`` field) and anything else apart. Every command that reads a model (``predict``, ``inspect``,
``export``, ``classify predict``) words its one-line error from it (:func:`wrong_model_message`), so a TorchScript
file given where a checkpoint is expected says so instead of failing deep inside PyTorch or protobuf.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from medseg_attn.model_layout import CHECKPOINT_NAMES, is_bundle

__all__ = ["MODEL_KINDS", "sniff_model", "wrong_model_message"]

MODEL_KINDS = ("missing", "run", "bundle", "folder", "checkpoint", "torchscript", "onnx", "other")

_WHAT = {"torchscript": "a TorchScript export", "onnx": "an ONNX export", "bundle": "a MONAI bundle folder",
         "run": "a run folder", "folder": "a folder without checkpoints", "checkpoint": "a checkpoint",
         "other": "another kind of file", "missing": "not found"}


def sniff_model(path: str | Path) -> str:
    """One of :data:`MODEL_KINDS` for ``path``; reads at most the first bytes and a zip's listing."""
    path = Path(path).expanduser()
    if path.is_dir():
        if is_bundle(path):
            return "bundle"
        if (path / "checkpoints").is_dir() or any((path / name).is_file() for name in CHECKPOINT_NAMES):
            return "run"
        return "folder"
    if not path.is_file():
        return "missing"
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError:
        return "other"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "other"  # a truncated zip
        if any("/code/" in name or name.endswith("/constants.pkl") for name in names):
            return "torchscript"
        return "checkpoint" if any(name.endswith("data.pkl") for name in names) else "other"
    if head[:1] == b"\x80":  # a pickle: torch.save's legacy (non-zip) format
        return "checkpoint"
    if head[:1] == b"\x08" or path.suffix.lower() == ".onnx":  # ModelProto field 1 (ir_version), or its suffix
        return "onnx"
    return "other"


def wrong_model_message(path: str | Path, kind: str, wanted: str) -> str:
    """One line: ``path`` is ``kind`` (e.g. a TorchScript export), the command needs ``wanted``."""
    if kind == "other":
        return f"{path}: not a checkpoint (neither a medseg-attn checkpoint nor an export it wrote); {wanted} expected"
    hint = {"torchscript": "; give the run folder or .pt checkpoint it was exported from",
            "onnx": "; give the run folder or .pt checkpoint it was exported from (predict runs an .onnx file with "
                    "--engine onnxruntime)",
            }.get(kind, "")
    return f"{path}: this is {_WHAT[kind]}, not {wanted}{hint}"
