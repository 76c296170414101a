"""``run.json``: how an output folder was made, written into every folder a command fills (see ``docs/trust.md``).

A manifest records the tool and package versions, the machine (CPU model, threads, device), the command line, the
start and end time and the outcome, plus what the command adds: the model (checkpoint SHA-256, card summary, plan
checksum, the resolved arithmetic and why), and each input (SHA-256 of the file, or of a DICOM folder's files,
shape and spacing). It is written atomically when the command ends, also when it fails or is interrupted, so a
folder with outputs and no ``run.json`` was made by a run that was killed.

    with recorded_run(output, "predict") as manifest:
        manifest.add_model(paths, precision="fp32", precision_reason="...", device="cpu")
        manifest.add_input(path, shape=(...), spacing=(...))
        ...                                   # run.json: outcome 'ok' (or the error's first line)
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medseg_attn.io.files import atomic_write_text

__all__ = ["MANIFEST_NAME", "RunManifest", "check_same_model", "file_sha256", "json_sha256",
           "path_sha256", "recorded_run", "set_command_line"]

MANIFEST_NAME = "run.json"
_COMMAND_LINE: list[str] | None = None  # set by the CLI (its argv also when called in-process)


def set_command_line(argv: Sequence[str]) -> None:
    """The arguments the manifests of this process record (default: ``sys.argv[1:]``)."""
    global _COMMAND_LINE
    _COMMAND_LINE = [str(a) for a in argv]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


SETTLED_S = 2.0  # a digest is remembered only for a file whose status is older than this (the coarsest clocks)
_digests: dict[tuple, str] = {}  # (path, device, inode, size, mtime, ctime) -> SHA-256, in this process only


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in 4 MiB blocks): THE content checksum of inputs, models and cache entries.

    Remembered in this process for the file's (device, inode, size, mtime, ctime) when its status changed more
    than :data:`SETTLED_S` before hashing began: any later write or ``touch`` sets another ctime (no tool can set
    it back, unlike mtime with ``cp -p``, ``rsync -a`` or ``tar x``), so a remembered digest is never that of a
    changed file.
    """
    path = Path(path)
    began, stat = time.time(), path.stat()
    known = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if known in _digests:
        return _digests[known]
    digest = hashlib.sha256()  # hardware-accelerated on current x86 and ARM CPUs; releases the GIL
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 << 20), b""):
            digest.update(block)
    if began - stat.st_ctime > SETTLED_S:
        _digests[known] = digest.hexdigest()
    return digest.hexdigest()


def check_same_model(folder: str | Path, paths: Sequence[str | Path], option: str = "--output") -> None:
    """Refuse to predict into a folder that an earlier ``predict`` with another model filled (its ``run.json``
    names other checksums): mixing two models' label maps in one folder, with a ``run.json`` naming only the
    last, loses which model made which file. The same model (an interrupted batch finished) passes, as does a
    folder without a ``predict`` record.

    Raises:
        UserError: one line naming the folder, both models' checksums and the way out.
    """
    from medseg_attn.errors import UserError

    try:
        recorded = json.loads((Path(folder) / MANIFEST_NAME).read_text())
        before = sorted(str(m["sha256"]) for m in recorded["model"]["models"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if recorded.get("command") != "predict" or not before:
        return
    now = sorted(file_sha256(p) for p in paths if Path(p).is_file())
    if now != before:
        def shown(digests: list[str]) -> str:
            return " + ".join(d[:12] for d in digests) or "none"

        raise UserError(f"{folder}: holds the predictions of another model (run.json: sha256 {shown(before)}; this "
                        f"model: sha256 {shown(now)}); choose another {option}, or pass --overwrite to predict into "
                        f"it with this model")


def path_sha256(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder (a DICOM series): each file's relative name and bytes, in sorted order."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(item.relative_to(path)).encode() + b"\0" + bytes.fromhex(file_sha256(item)))
    return digest.hexdigest()


def json_sha256(value: Any) -> str:
    """SHA-256 of a JSON-ready value in canonical form (sorted keys, no spaces): the same plan, the same sum."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


class RunManifest:
    """The record of one command's run into ``folder`` (written by :meth:`finish`)."""

    def __init__(self, folder: str | Path | None, command: str, argv: Sequence[str] | None = None) -> None:
        import torch

        from medseg_attn.runtime.device import cpu_model, isa_caps, mps_available
        from medseg_attn.training.card import package_versions

        self.folder = Path(folder) if folder is not None else None  # None: record nothing (other DDP ranks)
        self.outcome: str | None = None
        self.data: dict[str, Any] = {
            "tool": "medseg-attn", "command": command,
            "command_line": " ".join(["medseg-attn", *(argv if argv is not None else _COMMAND_LINE
                                                        if _COMMAND_LINE is not None else sys.argv[1:])]),
            "working_directory": os.getcwd(), "started": _now(), "finished": None, "outcome": None,
            "versions": package_versions(),
            "machine": {"host": platform.node(), "system": platform.platform(), "cpu": cpu_model(),
                        "isa": torch.backends.cpu.get_cpu_capability(), "isa_caps": isa_caps(),
                        "torch_threads": torch.get_num_threads(),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                        "mps": mps_available()},
            "inputs": [],
        }

    def update(self, **fields: Any) -> None:
        """Add or replace top-level entries (e.g. ``options``, ``results``)."""
        self.data.update(fields)

    def add_input(self, path: str | Path, *, name: str | None = None, shape: Sequence[int] | None = None,
                  spacing: Sequence[float] | None = None, error: str | None = None, series_uid: str | None = None,
                  geometry: bool = False, checksum: bool = True, series: Any = None) -> None:
        """One input: its checksum (None where it cannot be read), and its shape and spacing when known (with
        ``geometry``: read from the header of an image file or DICOM folder, or from its ``series`` when the
        caller has found it)."""
        from medseg_attn.io.volumes import read_geometry

        path = Path(path)
        try:
            digest = path_sha256(path) if checksum and path.exists() else None
        except OSError:
            digest = None
        if geometry and shape is None and not error:
            try:
                found = read_geometry(path, series_uid, series)
                shape, spacing = found.shape, found.spacing
            except (ValueError, OSError):  # the case fails later with its own message
                pass
        self.data["inputs"].append({
            "name": name or path.name, "path": str(path.resolve()) if path.exists() else str(path),
            "sha256": digest, "shape": list(shape) if shape is not None else None,
            "spacing_mm": [round(float(s), 6) for s in spacing] if spacing is not None else None,
            **({"error": error} if error else {})})

    def add_model(self, paths: Sequence[str | Path], *, device: str, precision: str | None = None,
                  precision_reason: str | None = None, payload: Mapping[str, Any] | None = None) -> None:
        """The model(s): checkpoint checksums, the first one's card summary and plan checksum, and the arithmetic.

        Args:
            paths: the checkpoint (or export) files.
            device: where the network ran.
            precision: the resolved arithmetic ('fp32', 'bf16', 'fp16'); precision_reason: why.
            payload: the first checkpoint's contents (its card, plan, temperature), when loaded.
        """
        models = [{"path": str(Path(p).resolve()), "sha256": file_sha256(p)} for p in paths if Path(p).is_file()]
        record: dict[str, Any] = {"models": models, "device": device, "precision": precision,
                                  "precision_reason": precision_reason}
        if payload is not None:
            from medseg_attn.training.checkpoint import Checkpoint

            checkpoint = Checkpoint.of(payload)
            card = checkpoint.card
            record["card"] = {"created": card.get("created"), "data": card.get("data"), "epoch": checkpoint.epoch,
                              "best_metric": checkpoint.best_metric, "labels": checkpoint.labels,
                              "versions": card.get("versions")}
            record["plan_sha256"] = json_sha256(checkpoint.plan) if checkpoint.plan else None
            record["temperature"] = checkpoint.calibration.get("temperature")
            record["training_fingerprint"] = bool(checkpoint.training_fingerprint)
        self.data["model"] = record

    def finish(self, outcome: str) -> Path | None:
        """Write ``folder/run.json`` with the outcome and end time (nothing when the folder was never made)."""
        self.outcome = self.outcome or outcome
        self.data["outcome"] = self.outcome
        self.data["finished"] = _now()
        if self.folder is None or not self.folder.is_dir():
            return None
        return atomic_write_text(self.folder / MANIFEST_NAME, json.dumps(self.data, indent=1, default=str) + "\n")


@contextmanager
def recorded_run(folder: str | Path | None, command: str, argv: Sequence[str] | None = None, *,
                 models: Sequence[str | Path] | None = None) -> Iterator[RunManifest]:
    """A :class:`RunManifest` written when the block ends: outcome 'ok' (or one the block set in
    ``manifest.outcome``), 'interrupted', or 'failed: <first line of the error>'. With ``models``, a folder whose
    ``run.json`` records other models is refused first (:func:`check_same_model`; nothing written)."""
    if models is not None and folder is not None:
        check_same_model(folder, models)
    manifest = RunManifest(folder, command, argv)
    try:
        yield manifest
    except KeyboardInterrupt:
        manifest.finish("interrupted")
        raise
    except BaseException as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        manifest.finish(f"failed: {first[:300]}")
        raise
    manifest.finish("ok")
