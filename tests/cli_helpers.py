"""Running the real command line in tests: a subprocess of ``python -m medseg_attn.cli``, and its error contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "medseg_attn.cli", *args]


def run(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``medseg-attn ARGS`` as a user would and capture its output."""
    return subprocess.run(command(*args), capture_output=True, text=True, cwd=cwd, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, exactly one ``medseg-attn: error:`` line holding every fragment, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("medseg-attn: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
