"""The two kinds of failure (issue 33, item 7): a user's bad input is one line and exit 2; a bug in medseg-attn is
'internal error', exit 1, and its traceback saved beside the outputs, so it is never mistaken for the user's
mistake."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import assert_one_line_error, run, run_subprocess  # noqa: E402

from medseg_attn.cli.app import INTERNAL_ERROR_LOG  # noqa: E402
from medseg_attn.errors import UserError  # noqa: E402


def _evaluate(tmp_path: Path) -> list[str]:
    for name in ("pred", "label"):
        (tmp_path / name).mkdir()
    (tmp_path / "out").mkdir()
    return ["evaluate", "--pred", str(tmp_path / "pred"), "--label", str(tmp_path / "label"), "--output",
            str(tmp_path / "out")]


@pytest.mark.parametrize("bug", [ValueError("math domain error"), KeyError("spacing"), RuntimeError("boom")])
def test_a_bug_is_an_internal_error_with_its_traceback_saved(tmp_path, monkeypatch, bug):
    from medseg_attn.segmentation.evaluation import evaluate

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(evaluate, "evaluate_folders", broken)
    result = run(*_evaluate(tmp_path))
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("medseg-attn:")]
    assert len(lines) == 1 and lines[0].startswith("medseg-attn: internal error: ") and "Traceback" not in result.stderr
    assert type(bug).__name__ in lines[0] and "please report it" in lines[0]
    saved = tmp_path / "out" / INTERNAL_ERROR_LOG
    assert str(saved) in lines[0]
    text = saved.read_text()
    assert "Traceback (most recent call last)" in text and ", in broken" in text  # where the bug is


def test_a_user_error_deep_in_a_chain_is_still_one_line_with_exit_2(tmp_path, monkeypatch):
    from medseg_attn.segmentation.evaluation import evaluate

    def wrapped(*args, **kwargs):
        try:
            raise UserError("case_7.nii.gz: 3 voxel(s) are NaN")
        except UserError as error:  # as MONAI wraps an error raised inside a transform
            raise RuntimeError("applying transform <LoadVolumed>") from error

    monkeypatch.setattr(evaluate, "evaluate_folders", wrapped)
    assert_one_line_error(run(*_evaluate(tmp_path)), "case_7.nii.gz: 3 voxel(s) are NaN")
    assert not (tmp_path / "out" / INTERNAL_ERROR_LOG).exists()


def test_good_runs_and_user_errors_leave_no_internal_error_file(tmp_path):
    result = run_subprocess("evaluate", "--pred", str(tmp_path / "missing"), "--label", str(tmp_path),
                            "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "missing")
    assert not list(tmp_path.rglob(INTERNAL_ERROR_LOG))
