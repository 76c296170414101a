"""One writer per output folder: concurrent runs do not break each other, a killed holder does not block."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from cli_helpers import assert_one_line_error, command, run
from reliability_helpers import digest, volume

from medseg_attn.io.files import atomic_write_text, remove_stale_temporaries
from medseg_attn.io.lock import LOCK_NAME, OutputLock


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_two_concurrent_predict_runs_into_one_folder(tmp_path, segmentation_model):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for k in range(4):
        volume(inputs / f"case{k}.nii.gz", k)
    before = digest(inputs)
    out = tmp_path / "out"
    args = command("-q", "predict", "--model", str(segmentation_model), "--input", str(inputs), "--output", str(out))
    runs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [process.communicate(timeout=300) + (process.returncode,) for process in runs]
    for stdout, stderr, code in results:
        assert code == 0 and "Traceback" not in stderr and "failed" not in stdout, (stdout, stderr)
    predicted = sorted(int(stdout.split("predicted ")[1].split()[0]) for stdout, _, _ in results)
    assert predicted == [0, 4], results  # every case predicted once; the second run found them done
    waited = next(stdout for stdout, _, _ in results if "predicted 0" in stdout)
    assert "skipped 4 existing" in waited  # its report agrees with the disk: every case there, none failed
    with (out / "report.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["case"] for row in rows) == [f"case{k}" for k in range(4)]
    for row in rows:
        assert row["status"] in ("ok", "skipped (exists)") and (out / f"{row['case']}.nii.gz").is_file()
    assert not (out / "failures.csv").exists() and not (out / LOCK_NAME).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert digest(inputs) == before


def test_a_killed_holder_does_not_block_the_next_run(tmp_path, segmentation_model):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom medseg_attn.io.lock import OutputLock\n"
                               f"OutputLock({str(out)!r}).acquire()\nprint('held', flush=True)\ntime.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    image = volume(tmp_path / "case.nii.gz")
    try:
        result = subprocess.run(
            command("-q", "predict", "--model", str(segmentation_model), "--input", str(image), "--output", str(out)),
            capture_output=True, text=True, env={**os.environ, "MEDSEG_ATTN_LOCK_WAIT": "1"}, timeout=300)
        assert_one_line_error(result, str(out), f"process {holder.pid}", "MEDSEG_ATTN_LOCK_WAIT", LOCK_NAME)
        assert not (out / "case.nii.gz").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid  # left behind by kill -9
    result = run("-q", "predict", "--model", str(segmentation_model), "--input", str(image), "--output", str(out))
    assert result.returncode == 0 and "predicted 1 case(s)" in result.stdout, result.stderr
    assert (out / "case.nii.gz").is_file() and not (out / LOCK_NAME).exists()


def test_a_waiting_run_proceeds_when_the_holder_finishes(tmp_path):
    first = OutputLock(tmp_path)
    first.acquire()
    started = time.monotonic()
    second = OutputLock(tmp_path, wait=30, poll=0.05)
    import threading

    timer = threading.Timer(0.5, first.release)
    timer.start()
    second.acquire()
    assert 0.4 < time.monotonic() - started < 10
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    second.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_only_provably_stale_temporary_files_are_removed(tmp_path):
    target = tmp_path / "case.nii.gz"
    host = socket.gethostname()
    import re

    tag = re.sub(r"[^A-Za-z0-9_-]", "_", host)[:40]
    dead = tmp_path / f".case.nii.gz.{_dead_pid()}@{tag}.abc.nii.gz"
    live = tmp_path / f".case.nii.gz.{os.getpid()}@{tag}.def.nii.gz"
    elsewhere = tmp_path / f".case.nii.gz.{_dead_pid()}@another-host.ghi.nii.gz"
    unknown = tmp_path / ".case.nii.gz.xyz.nii.gz"
    for path in (dead, live, elsewhere, unknown):
        path.write_text("partial")
    assert remove_stale_temporaries(target) == [dead]
    assert live.exists() and elsewhere.exists() and unknown.exists() and not dead.exists()
    atomic_write_text(target, "done")  # our own temporary file is named with our pid and host
    assert target.read_text() == "done"


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_follow_the_umask(tmp_path, mask, mode):
    previous = os.umask(mask)
    try:
        path = atomic_write_text(tmp_path / "report.csv", "a,b\n")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode


def test_predict_outputs_are_0644_under_umask_022(tmp_path, segmentation_model):
    image = volume(tmp_path / "case.nii.gz")
    result = subprocess.run(command("-q", "predict", "--model", str(segmentation_model), "--input", str(image),
                                    "--output", str(tmp_path / "out")), capture_output=True, text=True,
                            preexec_fn=lambda: os.umask(0o022), timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("case.nii.gz", "report.csv"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o644
