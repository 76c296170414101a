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
preprocessing code changes what it writes), the input files' content (resolved path, size and SHA-256 of the
bytes; for a DICOM folder, of every file in it) and, for cases, the resolved preprocessing, the number of classes
and the patch size. A changed case or plan therefore gets a new key and a new entry, and only what changed is
rebuilt; a file rewritten with its old size and modification time (``cp -p``, ``rsync -a``, ``tar x``) is a
changed file too. Stale entries stay until the folder is removed (``rm -rf CACHE`` is always safe between runs).

Every entry holds ``entry.json``: the inputs it was made from and the size and SHA-256 of each of its files.
:func:`entry_problem` checks both before an entry is used; a damaged entry is removed (:func:`discard_entry`) and
built again.

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
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from medseg_attn.errors import UserError
from medseg_attn.io.manifest import file_sha256

logger = logging.getLogger(__name__)

__all__ = ["CACHE_ENV", "CACHE_VERSION", "cache_folder", "cache_root", "discard_entry", "entry_inputs", "entry_key",
           "entry_problem", "ensure_entry", "file_identity", "key_of"]

CACHE_VERSION = 2  # preprocessing code version: bump when what an entry holds changes (2: content keys, entry.json)
CACHE_ENV = "MEDSEG_ATTN_CACHE"
ENTRY_FILE = "entry.json"  # in every entry: its inputs, and the size and SHA-256 of each of its files



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
    """(resolved path, size, SHA-256) of each input; of every file inside a folder (a DICOM series)."""
    identity = []
    for path in paths:
        path = Path(path).resolve()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        identity += [[str(file), file.stat().st_size, file_sha256(file)] for file in files]
    return identity


def entry_inputs(case: dict[str, Any], keys: Iterable[str]) -> dict[str, list[list[Any]]]:
    """The identity (:func:`file_identity`) of a case's ``keys``' files."""
    return {key: file_identity(_paths(case[key])) for key in keys}


def key_of(inputs: dict[str, Any], depends: dict[str, Any]) -> str:
    """The key of an entry made from ``inputs`` (:func:`entry_inputs`) and ``depends``."""
    text = json.dumps({"version": CACHE_VERSION, "inputs": inputs, **depends}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def entry_key(case: dict[str, Any], keys: Iterable[str], **depends: Any) -> str:
    """The key of a case's entry: the version, the content of its ``keys``' files and ``depends``."""
    return key_of(entry_inputs(case, keys), depends)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80] or "case"


def entry_path(folder: Path, case: str, key: str) -> Path:
    return folder / f"{_safe(case)}-{key}"


def _seal(folder: Path, inputs: dict[str, Any] | None) -> None:
    files = {p.name: [p.stat().st_size, file_sha256(p)] for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / ENTRY_FILE).write_text(json.dumps({"version": CACHE_VERSION, "inputs": inputs, "files": files}))


def entry_problem(entry: Path, inputs: dict[str, Any] | None = None) -> str | None:
    """What is wrong with a finished entry (None: nothing): its ``entry.json`` is missing or unreadable, it was made
    from other inputs than ``inputs``, or one of its files is missing or differs in size or content from when it
    was written."""
    try:
        record = json.loads((entry / ENTRY_FILE).read_text())
        files = {str(name): (int(size), str(digest)) for name, (size, digest) in record["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"{ENTRY_FILE} is missing or unreadable ({error})"
    if inputs is not None and record.get("inputs") != json.loads(json.dumps(inputs, default=str)):
        return "made from other input files than the case's (their content differs)"
    for name, (size, digest) in files.items():
        try:
            if (entry / name).stat().st_size != size:
                return f"{name} holds {(entry / name).stat().st_size} bytes, {size} when it was written"
            if file_sha256(entry / name) != digest:
                return f"{name}: its content changed after it was written"
        except OSError as error:
            return f"{name}: {error.strerror or error}"
    return None


def _locked(entry: Path) -> Any:
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        handle = open(entry.parent / f".{entry.name}.lock", "a+")  # noqa: SIM115 - closed by the caller
    except OSError as error:
        raise _unusable(entry.parent.parent, error) from None
    fcntl.flock(handle, fcntl.LOCK_EX)  # another writer of this entry: wait for it, then reuse its work
    return handle


def discard_entry(entry: Path, problem: str) -> None:
    """Remove a damaged entry (under its lock, by renaming it away first), logging one line; one line naming the
    entry and the cache folder when it cannot be removed."""
    with _locked(entry) as handle:
        try:
            if entry.is_dir():
                dead = entry.parent / f".{entry.name}.tmp-damaged-{uuid.uuid4().hex[:8]}"
                os.rename(entry, dead)
                shutil.rmtree(dead, ignore_errors=True)
                logger.warning("%s: damaged cache entry (%s); building it again", entry, problem)
        except OSError as error:
            raise UserError(f"{entry}: damaged cache entry ({problem}) that cannot be removed "
                            f"({error.strerror or error}); remove it, or choose another cache than "
                            f"{entry.parent.parent} with --cache DIR or ${CACHE_ENV}") from None
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_entry(entry: Path, build: Callable[[Path], None], inputs: dict[str, Any] | None = None) -> bool:
    """Make ``entry`` with ``build(tmp_folder)`` unless it exists; True when this call built it.

    One writer per entry (a file lock), atomic rename of a private temporary folder; a leftover temporary folder
    of an interrupted writer is removed. ``entry.json`` records ``inputs`` and the size and SHA-256 of every file.
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
                _seal(tmp, inputs)
                os.rename(tmp, entry)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
