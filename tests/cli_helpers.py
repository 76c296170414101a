"""Running the command line in tests: ``main(argv)`` in this process (fast: no interpreter start, torch and MONAI
imported once), or a real subprocess of ``python -m medseg_attn.cli`` where a test needs one; and the error
contract."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import traceback
import warnings
from pathlib import Path


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "medseg_attn.cli", *args]


def run_subprocess(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``medseg-attn ARGS`` as a user would, in a new process, and capture its output."""
    return subprocess.run(command(*args), capture_output=True, text=True, cwd=cwd, timeout=timeout)


def run(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``medseg-attn ARGS`` through ``main(argv)`` in this process: stdout, stderr (log lines included) and the
    exit code as a subprocess would give them. An exception that ``main`` lets through becomes exit code 1 with
    its traceback on stderr, as in a real process. The environment, the working directory, warning filters and
    the logging setup are restored afterwards. With ``MEDSEG_TEST_SUBPROCESS=1`` every call is a real process."""
    if os.environ.get("MEDSEG_TEST_SUBPROCESS"):  # the same tests through real processes
        return run_subprocess(*args, cwd=cwd, timeout=timeout)
    from medseg_attn.cli import main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    environ, here, argv = dict(os.environ), Path.cwd(), sys.argv
    sys.argv = ["medseg-attn", *args]  # what a run records as its command (model card, provenance)
    root.handlers = []  # so main's logging.basicConfig writes to the captured stderr at the level it chooses
    try:
        if cwd is not None:
            os.chdir(cwd)
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as stop:  # argparse: usage errors and --help
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
            except Exception:  # noqa: BLE001 - what a real process would print before exiting with 1
                traceback.print_exc(file=err)
                code = 1
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers, root.level = handlers, level
        os.chdir(here)
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
    return subprocess.CompletedProcess(["medseg-attn", *args], code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, exactly one ``medseg-attn: error:`` line holding every fragment, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("medseg-attn: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def run_bundle_without_medseg_attn(bundle: Path, dataset_dir: Path, output_dir: Path) -> subprocess.CompletedProcess:
    """The model zoo's command line (``python -m monai.bundle run``) on an exported bundle, in a process where
    importing medseg_attn fails: the bundle must run with torch and MONAI alone."""
    script = ("import runpy, sys; sys.modules['medseg_attn'] = None; sys.argv = ['monai.bundle'] + sys.argv[1:]; "
              "runpy.run_module('monai.bundle', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", script, "run", "--config_file",
                           str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
                           "--dataset_dir", str(dataset_dir), "--output_dir", str(output_dir)],
                          capture_output=True, text=True, timeout=300, cwd=output_dir.parent)
