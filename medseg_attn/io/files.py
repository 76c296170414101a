"""Files that are never half-written, never written over an input, and created with the process umask.

* :func:`atomic_write`: a temporary file in the same folder, then ``os.replace``. The temporary name carries the
  writer's pid and host (``.<name>.<pid>@<host>.<random><suffix>``), so :func:`remove_stale_temporaries` can tell
  the leftovers of a killed run (same host, process gone) from the files another live run is writing.
  ``mkstemp`` creates files readable by their owner only; the file gets ``0o666 & ~umask`` before the rename, as
  ``open()`` would give it.
* :func:`check_output_location`: the one rule of every command that writes: never into an input folder, never
  over an input file, and a folder option must not name an existing file.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from medseg_attn.errors import UserError

__all__ = ["atomic_write", "atomic_write_text", "check_output_location", "not_regular", "process_alive",
           "remove_stale_temporaries"]

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


def _umask() -> int:
    """The process umask: from /proc on Linux (no side effect), else set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temporary_path(path: Path) -> Path:
    # same folder (so os.replace is atomic) and same suffix (nibabel picks gzip from it)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{_HOST}.",
                                    suffix="".join(path.suffixes[-2:]), dir=path.parent)
    os.close(handle)
    return Path(name)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``; nothing half-written remains.

    The file ends up with mode ``0o666 & ~umask`` (0644 under the usual umask 022), like any file ``open()``
    creates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_path(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def process_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (``os.kill(pid, 0)``; another user's process counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files of ``path`` left by writers that provably died (this host, process gone).

    Temporary files of live processes, of other hosts, or of unknown origin are left alone.

    Returns:
        The removed files.
    """
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)@([A-Za-z0-9_-]+)\.")
    removed = []
    for candidate in path.parent.glob(f".{path.name}.*"):
        match = pattern.match(candidate.name)
        if match and match.group(2) == _HOST and not process_alive(int(match.group(1))):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def not_regular(path: Path) -> str | None:
    """Why a folder entry cannot be read as a file or folder (a dangling link, a device ...), or None."""
    if path.is_symlink() and not path.exists():
        return f"{path}: dangling symbolic link (to {os.readlink(path)}); its target is missing"
    if path.exists() and not path.is_file() and not path.is_dir():
        return f"{path}: not a regular file (a device, FIFO or socket); refusing to read it"
    return None


def check_output_location(output: str | Path, inputs: Iterable[str | Path], *, folder: bool,
                          option: str = "--output") -> None:
    """Refuse an output that would write into an input folder or over an input file.

    Args:
        output: the folder (``folder=True``) or file a command writes.
        inputs: the files and folders it reads (missing ones are ignored).
        folder: ``output`` is a folder the command writes into (it may then not be an existing file, the folder
            of an input file, an input folder or lie inside one); otherwise a file (it may not be an input file
            or lie inside an input folder).
        option: the command-line option named in the message.

    Raises:
        ValueError: one line naming the output, the input and the option to change.
    """
    given = Path(output).expanduser()
    resolved = given.resolve()
    if folder and given.exists() and not given.is_dir():
        raise UserError(f"{given}: is an existing file; {option} must name a folder")
    if not folder and given.is_dir():
        raise UserError(f"{given}: is a folder; {option} must name a file")
    where = resolved if folder else resolved.parent
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            continue
        source = path.resolve()
        if path.is_dir():
            if where == source or source in where.parents:
                raise UserError(f"{given}: lies in the input folder {path}; choose another {option}")
        elif not folder and resolved == source:
            raise UserError(f"{given}: is the input file {path}; refusing to overwrite an input, choose another "
                             f"{option}")
        elif folder and source.parent == resolved:
            raise UserError(f"{given}: is the folder of input {path}; choose another {option}")
