"""One writer per output folder: a lock file holding its owner's pid and host.

``OUT/.medseg-attn.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on local file systems and NFSv3+) and
holds ``{"pid", "host", "started", "command"}``. A second run that finds it waits, with a message, for the owner
to finish, up to ``MEDSEG_ATTN_LOCK_WAIT`` seconds (default 3600), then refuses with one line. A lock whose owner
is provably gone (same host, ``os.kill(pid, 0)`` says no such process: killed with -9, a crash, a power cut) is
stale: the next run removes it and proceeds. A lock of another host cannot be checked; it is waited for, and the
message says which file to delete if that run is known to be dead.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from medseg_attn.errors import UserError
from medseg_attn.io.files import process_alive

logger = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "WAIT_ENV", "OutputLock"]

LOCK_NAME = ".medseg-attn.lock"
WAIT_ENV = "MEDSEG_ATTN_LOCK_WAIT"
DEFAULT_WAIT = 3600.0


def _wait_limit() -> float:
    raw = os.environ.get(WAIT_ENV, "").strip()
    if not raw:
        return DEFAULT_WAIT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise UserError(f"{WAIT_ENV}={raw!r}: expected a number of seconds >= 0")
    return value


class OutputLock:
    """Hold ``folder/.medseg-attn.lock`` while writing into ``folder`` (a context manager).

    Args:
        folder: the output folder (created when missing).
        wait: seconds to wait for another live run (default ``$MEDSEG_ATTN_LOCK_WAIT`` or 3600).
        poll: seconds between checks.

    Raises (on entering):
        ValueError: the folder is still locked by a live run after ``wait`` seconds; one line naming the folder,
            the owner and the lock file.
    """

    def __init__(self, folder: str | Path, wait: float | None = None, poll: float = 0.5) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.wait = _wait_limit() if wait is None else wait
        self.poll = poll
        self._held = False

    def _owner(self) -> dict | None:
        """The lock file's content, or None when it vanished; ``{}`` when unreadable (being written)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            owner = json.loads(text)
        except ValueError:
            return {}
        return owner if isinstance(owner, dict) else {}

    def _stale(self, owner: dict) -> bool:
        try:
            pid = int(owner.get("pid", 0))
        except (TypeError, ValueError):
            return False
        return owner.get("host") == socket.gethostname() and not process_alive(pid)

    def _try_create(self) -> bool:
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(sys.argv[:1] + sys.argv[1:4])}
        with os.fdopen(handle, "w") as stream:
            json.dump(record, stream)
        return True

    def acquire(self) -> None:
        """Take the lock, waiting for a live owner (see the class docstring)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait
        announced = 0.0
        unreadable_since: float | None = None
        while True:
            if self._try_create():
                self._held = True
                return
            owner = self._owner()
            if owner is None:
                continue  # released between our two looks
            if owner and self._stale(owner):
                logger.warning("%s: removing the stale lock of process %s (no longer running)", self.path,
                               owner.get("pid"))
                self._remove_if_unchanged(owner)
                continue
            if not owner:  # an owner between create and write: give it a moment, then it is garbage
                unreadable_since = unreadable_since or time.monotonic()
                if time.monotonic() - unreadable_since > 5.0:
                    logger.warning("%s: removing an unreadable lock file", self.path)
                    self.path.unlink(missing_ok=True)
                    continue
            now = time.monotonic()
            who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')} (since {owner.get('started', '?')})"
            if now >= deadline:
                raise UserError(f"{self.folder}: another medseg-attn run, {who}, is writing into this folder; "
                                 f"waited {self.wait:g} s (set {WAIT_ENV} to wait longer), choose another output "
                                 f"folder, or delete {self.path} if that run is dead")
            if now - announced >= 60.0:
                logger.warning("%s: waiting for %s to finish writing here (up to %g s more)", self.folder, who,
                               deadline - now)
                announced = now
            time.sleep(min(self.poll, max(0.0, deadline - now)))

    def _remove_if_unchanged(self, owner: dict) -> None:
        """Remove the lock only if it still holds ``owner`` (another waiter may have replaced it already)."""
        if self._owner() == owner:
            self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock file if this object holds it."""
        if self._held:
            owner = self._owner()
            if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
