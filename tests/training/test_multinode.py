"""Two machines, simulated: ``torchrun --nnodes 2 --nproc_per_node 1`` as two node processes on this host that
meet over the loopback (c10d rendezvous on 127.0.0.1, gloo), training and predicting with one shared
preprocessing cache."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from medseg_attn.demo_data import build_demo_dataset
from medseg_attn.training.checkpoint import load_checkpoint


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_nodes(*args: str, cache: Path, run_id: str) -> list[tuple[int, str, str]]:
    """The same torchrun command on 'node' 0 and 'node' 1; (return code, stdout, stderr) of each."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MEDSEG_ATTN_CACHE": str(cache)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={run_id}",
               "--max_restarts=0", "-m", "medseg_attn.cli", *args]
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = []
    for node in nodes:
        try:
            out, err = node.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for other in nodes:
                other.kill()
            raise
        results.append((node.returncode, out, err))
    return results


@pytest.mark.slow
def test_two_node_training_and_sharded_prediction_share_one_cache(tmp_path):
    dataset = build_demo_dataset(tmp_path / "data", train_cases=4, test_cases=1, seed=2, train_spacing=4.0,
                                 test_spacing=4.0, progress=False)
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    results = two_nodes("train", "--data", str(dataset), "--output", str(run_dir), "--epochs", "1",
                        "--set", "data.patch_size=[32,32,32]", "--set", "model.channels=[8,16,32]",
                        "--set", "train.steps_per_epoch=2", "--set", "train.batch_size=2",
                        "--set", "data.validation_fraction=0.25", "--set", "train.device=cpu",
                        cache=cache, run_id="train")
    assert all(code == 0 for code, _, _ in results), [err[-3000:] for _, _, err in results]
    assert sum(out.count("trained 1 epochs") for _, out, _ in results) == 1  # global rank 0 reports
    payload = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert payload["world_size"] == 2 and payload["step"] == 2
    # one preprocessing cache for both nodes: every case preprocessed once, no leftovers
    cases = sorted(p.name for p in (cache / "cases").iterdir() if not p.name.startswith("."))
    assert len(cases) == 4 and len({name.rsplit("-", 1)[0] for name in cases}) == 4
    assert not list(cache.rglob("*.tmp-*"))

    images = tmp_path / "cases"
    images.mkdir()
    source = sorted((dataset.parent / "imagesTs").iterdir())[0]
    for index in range(3):
        (images / f"case{index}.nii.gz").write_bytes(source.read_bytes())
    results = two_nodes("predict", "--model", str(run_dir), "--input", str(images), "--output",
                        str(tmp_path / "pred"), "--device", "cpu", cache=cache, run_id="predict")
    assert all(code == 0 for code, _, _ in results), [err[-3000:] for _, _, err in results]
    assert sorted(p.name for p in (tmp_path / "pred").glob("case*.nii.gz")) == [f"case{i}.nii.gz" for i in range(3)]
    with (tmp_path / "pred" / "report.csv").open() as handle:
        assert sorted(row["case"] for row in csv.DictReader(handle)) == ["case0", "case1", "case2"]
