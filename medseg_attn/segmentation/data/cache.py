"""The on-disk preprocessing cache: one folder per entry, written once, read by memory map.

Layout (``CACHE`` is ``data.cache_dir``, ``--cache``, ``$MEDSEG_ATTN_CACHE`` or ``~/.cache/medseg-attn``)::

    CACHE/fingerprint/<case>-<key>/record.json   one case's fingerprint (shape, spacing, body mask, intensities)
    CACHE/fingerprint/<case>-<key>/sample.npy    its sample of labelled intensities (the CT statistics)
    CACHE/cases/<case>-<key>/image.npy           the preprocessed image (C, *S) float32: cropped, resampled,
                                                 normalised (``numpy.load(..., mmap_mode=...)`` reads it lazily)
    CACHE/cases/<case>-<key>/label.npy           its label map (1, *S), uint8 (int16 beyond 255 classes)
    CACHE/cases/<case>-<key>/indices.npz         per class, the voxel locations patches are centred on
    CACHE/cases/<case>-<key>/meta.json           what the entry was made from
    CACHE/qc/<case>-<key>/features.json          its QC features on the original grid (the training fingerprint)

An entry's key hashes everything its content depends on: :data:`CACHE_VERSION` (bumped whenever the
preprocessing code changes what it writes), the input files' identity (resolved path, size, modification time;
for a DICOM folder, of every file in it) and, for cases, the resolved preprocessing, the number of classes and
the patch size. A changed case or plan therefore gets a new key and a new entry, and only what changed is
rebuilt; stale entries stay until the folder is removed (``rm -rf CACHE`` is always safe between runs).

Writers never write the same entry twice: a writer takes the entry's lock (``fcntl.flock`` on
``.<entry>.lock``), looks again whether the entry exists, builds it in a private temporary folder and renames
that onto the entry (atomic), so a reader sees a whole entry or none. An interrupted writer leaves at most a
temporary folder, removed by the next writer of that entry; finished entries are reused (a resumed preprocess
starts where it stopped).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from medseg_attn.errors import UserError

__all__ = ["CACHE_ENV", "CACHE_VERSION", "cache_folder", "cache_root", "entry_key", "ensure_entry", "file_identity"]

CACHE_VERSION = 1  # preprocessing code version: bump when what an entry holds changes
CACHE_ENV = "MEDSEG_ATTN_CACHE"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$MEDSEG_ATTN_CACHE``, else ``$XDG_CACHE_HOME/medseg-attn`` or
    ``~/.cache/medseg-attn``."""
    if cache_dir:
        return Path(cache_dir).expanduser().resolve()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(base) / "medseg-attn").expanduser().resolve()


def _unusable(root: Path, error: OSError) -> UserError:
    reason = f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
    if error.filename:  # a file where a folder should be: name that file
        path = Path(error.filename)
        reason = next((f"{p} is a file, not a folder" for p in [*reversed(path.parents), path]
                       if p.exists() and not p.is_dir()), reason)
    return UserError(f"{root}: the preprocessing cache cannot be used ({reason}); choose another folder with "
                     f"--cache DIR, data.cache_dir or ${CACHE_ENV}")


def cache_folder(root: Path, kind: str) -> Path:
    """``root/kind``, created; one line naming the cache and how to choose another when it cannot be."""
    try:
        (root / kind).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unusable(root, error) from None
    return root / kind


def _paths(value: Any) -> list[Path]:
    return [Path(v) for v in value] if isinstance(value, (list, tuple)) else [Path(value)]


def file_identity(paths: Iterable[str | Path]) -> list[list[Any]]:
    """(resolved path, size, mtime in ns) of each input; of every file inside a folder (a DICOM series)."""
    identity = []
    for path in paths:
        path = Path(path).resolve()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            stat = file.stat()
            identity.append([str(file), stat.st_size, stat.st_mtime_ns])
    return identity


def entry_key(case: dict[str, Any], keys: Iterable[str], **depends: Any) -> str:
    """The key of a case's entry: the version, the identity of its ``keys``' files and ``depends``."""
    inputs = {key: file_identity(_paths(case[key])) for key in keys}
    text = json.dumps({"version": CACHE_VERSION, "inputs": inputs, **depends}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80] or "case"


def entry_path(folder: Path, case: str, key: str) -> Path:
    return folder / f"{_safe(case)}-{key}"


def _locked(entry: Path) -> Any:
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        handle = open(entry.parent / f".{entry.name}.lock", "a+")  # noqa: SIM115 - closed by the caller
    except OSError as error:
        raise _unusable(entry.parent.parent, error) from None
    fcntl.flock(handle, fcntl.LOCK_EX)  # another writer of this entry: wait for it
    return handle


def ensure_entry(entry: Path, build: Callable[[Path], None]) -> bool:
    """Make ``entry`` with ``build(tmp_folder)`` unless it exists; True when this call built it.

    One writer per entry (a file lock), atomic rename of a private temporary folder; a leftover temporary folder
    of an interrupted writer is removed.
    """
    if entry.is_dir():
        return False
    with _locked(entry) as handle:
        try:
            if entry.is_dir():
                return False
            for stale in entry.parent.glob(f".{entry.name}.tmp-*"):  # an interrupted writer's (we hold the lock)
                shutil.rmtree(stale, ignore_errors=True)
            tmp = entry.parent / f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                tmp.mkdir()
            except OSError as error:
                raise _unusable(entry.parent.parent, error) from None
            try:
                build(tmp)
                os.rename(tmp, entry)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
