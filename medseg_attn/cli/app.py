"""``medseg-attn`` command line: thin wrappers that turn library errors into one-line messages and exit codes.

Exit codes: 0 success, 1 some cases of a batch failed or an internal error (a bug: "internal error", the
traceback saved beside the outputs), 2 bad input or configuration (one line), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

from medseg_attn.cli import export
from medseg_attn.cli.arguments import command_adder
from medseg_attn.errors import UserError
from medseg_attn.registry import TASKS

logger = logging.getLogger("medseg_attn.cli")


def _parser(runners: dict | None = None) -> argparse.ArgumentParser:
    """The ``medseg-attn`` parser: every registered task's commands (:mod:`medseg_attn.registry`), then ``export``
    and ``config``; fills ``runners`` (command -> function) when given."""
    runners = {} if runners is None else runners
    parser = argparse.ArgumentParser(
        prog="medseg-attn",
        description="3D medical image segmentation with multi-head attention in the U-Net skip connections.",
        epilog="exit codes: 0 done; 1 a case of a batch failed, or an internal error (a bug: the traceback is saved as "
               "medseg-attn-internal-error.txt in the output folder, else in the temporary folder); 2 bad input or "
               "settings (one line naming the file or option); 130 interrupted. MEDSEG_ATTN_DEBUG=1 shows tracebacks.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--max-voxels", type=float, metavar="N",
                        help="refuse images whose header declares more voxels than N (default 2**30, or "
                             "$MEDSEG_ATTN_MAX_VOXELS; see docs/reliability.md)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in TASKS.command_modules():
        runners.update(importlib.import_module(module).register_cli(commands))
    export.add_parsers(command_adder(commands, export.EXAMPLES))
    runners.update(export.RUNNERS)
    return parser


# (message regex, module regex) of third-party warnings that say nothing a user can act on; everything else shows
QUIET_WARNINGS: list[tuple[str, str]] = []


def _configure_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("monai", "PIL", "matplotlib", "nibabel"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # MONAI's LoadImage registers a pydicom reader that warns on every construction when NVIDIA's optional
    # nvImageCodec is absent; medseg-attn decodes DICOM with SimpleITK and never uses that reader
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    for message, module in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medseg-attn`` console script."""
    runners: dict = {}
    parser = _parser(runners)
    args = parser.parse_args(argv)
    if args.version:
        from medseg_attn import __version__

        print(f"medseg-attn {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    if args.max_voxels is not None:
        from medseg_attn.io.limits import MAX_VOXELS_ENV

        if not args.max_voxels >= 1 or args.max_voxels == float("inf"):
            print(f"medseg-attn: error: --max-voxels {args.max_voxels:g}: expected a positive number of voxels",
                  file=sys.stderr)
            return 2
        os.environ[MAX_VOXELS_ENV] = str(int(args.max_voxels))  # read by every reader, worker processes too
    rank = int(os.environ.get("RANK", "0"))  # under torchrun, rank 0 alone logs and shows progress
    _configure_logging(args.quiet or rank > 0, args.verbose)
    if rank > 0:  # the other ranks do the same work silently; errors still reach stderr
        args.quiet = True
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    from medseg_attn.io.manifest import set_command_line

    set_command_line(sys.argv[1:] if argv is None else argv)  # what every run.json records
    try:
        return runners[args.command](args)
    except KeyboardInterrupt:
        print("medseg-attn: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every failure ends as one line and an exit code
        if os.environ.get("MEDSEG_ATTN_DEBUG"):
            raise
        cause = _user_error(error)
        if cause is not None:  # the user's input or setting: what was wrong, in one line
            print(f"medseg-attn: error: {cause}", file=sys.stderr)
            return 2
        saved = _save_traceback(error, getattr(args, "output", None))
        print(f"medseg-attn: internal error: {type(error).__name__}: {_first_line(error)} (a bug in medseg-attn, "
              f"not in your input; the traceback is in {saved}: please report it)", file=sys.stderr)
        return 1
    finally:
        if "medseg_attn.runtime.distributed" in sys.modules:  # torch is not imported for nothing (inspect)
            from medseg_attn.runtime.distributed import teardown

            teardown()


# bad input or settings: our own UserError, and a file or folder the user named that is missing or unreadable
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
INTERNAL_ERROR_LOG = "medseg-attn-internal-error.txt"


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")[:300]


def _save_traceback(error: BaseException, output: str | Path | None) -> Path:
    """Write the traceback of an internal error beside the outputs (the command's output folder when it exists,
    else the temporary folder); returns where."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    folder = Path(output) if output is not None and Path(output).is_dir() else Path(tempfile.gettempdir())
    path = folder / INTERNAL_ERROR_LOG
    try:
        path.write_text(f"medseg-attn {' '.join(sys.argv[1:])}\n{text}")
    except OSError:  # an output folder we cannot write: the temporary folder
        path = Path(tempfile.gettempdir()) / f"medseg-attn-internal-error-{os.getpid()}.txt"
        path.write_text(text)
    return path


def _user_error(error: BaseException) -> BaseException | None:
    """The user-facing error behind ``error``: MONAI wraps errors raised inside transforms in
    ``RuntimeError("applying transform ...")``; the UserError that names the file is further down the chain."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, USER_ERRORS):
            return current
        current = current.__cause__ or current.__context__
    return None
