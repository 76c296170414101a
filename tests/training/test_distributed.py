"""DDP with torchrun: the helpers in a single process, and real 2-process gloo training runs on the CPU."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg_attn.demo_data import build_demo_dataset
from medseg_attn.runtime.distributed import Distributed, partition, setup, shard
from medseg_attn.training.checkpoint import load_checkpoint


def test_single_process_is_a_no_op():
    info = setup(torch.device("cpu"))
    assert info == Distributed() and not info.enabled and info.is_main
    values = torch.tensor([1.0, 2.0])
    assert info.sum(values) is values
    assert info.gather({"a": 1}) == [{"a": 1}]
    assert info.from_main(3.5, 1.0) == (3.5, 1.0)
    assert partition([1, 2, 3], info, seed=0) == [1, 2, 3] and shard([1, 2, 3], info) == [1, 2, 3]


def test_partition_and_shard_cover_every_case_in_equal_parts():
    cases = list(range(7))
    parts = [partition(cases, Distributed(rank, rank, 3), seed=4) for rank in range(3)]
    assert [len(part) for part in parts] == [3, 3, 3]  # padded by repeating, so every rank takes as many steps
    assert set().union(*parts) == set(cases)
    assert parts == [partition(cases, Distributed(rank, rank, 3), seed=4) for rank in range(3)]  # seeded
    shards = [shard(cases, Distributed(rank, rank, 3)) for rank in range(3)]
    assert sorted(sum(shards, [])) == cases  # validation / prediction: every case exactly once


def torchrun(*args: str, processes: int = 2, module: str | None = "medseg_attn.cli") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", *(["-m", module] if module else []), *args],
                          capture_output=True, text=True, timeout=600, env=env)


def test_two_ranks_end_a_step_with_the_weights_of_one_process_on_all_the_data(tmp_path):
    """Oracle: one process on the whole batch. DDP averages the gradients of the two equal halves, so after two
    SGD steps both ranks hold exactly the single process's weights (ranks that do not synchronise drift apart)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from ddp_step import run as one_process

    result = torchrun(str(Path(__file__).parent / "ddp_step.py"), str(tmp_path), module=None)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = one_process(tmp_path / "single", Distributed())
    torch.manual_seed(0)
    initial = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).state_dict()
    assert all((expected[key] - initial[key]).abs().max() > 1e-3 for key in initial)  # the steps moved every tensor
    for rank in (0, 1):
        weights = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for key, value in expected.items():
            torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6, msg=f"rank {rank}: {key}")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    return build_demo_dataset(root / "data", train_cases=4, test_cases=1, seed=2, train_spacing=4.0,
                              test_spacing=4.0, progress=False)


def test_two_process_gloo_training_completes_and_its_checkpoint_loads(tmp_path, dataset):
    run_dir = tmp_path / "run"
    common = ["--set", "data.patch_size=[32,32,32]", "--set", "model.channels=[8,16,32]",
              "--set", "train.steps_per_epoch=3", "--set", "train.val_interval=1", "--set", "train.batch_size=2",
              "--set", "data.validation_fraction=0.25", "--set", "train.device=cpu"]
    result = torchrun("train", "--data", str(dataset), "--output", str(run_dir), "--epochs", "2", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trained 2 epochs") == 1  # rank 0 reports, rank 1 stays quiet

    payload = load_checkpoint(run_dir / "checkpoints" / "last.pt")  # weights_only loading
    assert payload["world_size"] == 2 and payload["epoch"] == 2 and payload["step"] == 6
    assert not any(key.startswith("module.") for key in payload["model"])  # the unwrapped network
    with (run_dir / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in history] == [1, 2]
    assert all(0.0 <= float(row["val_dice"]) <= 1.0 for row in history)
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0 alone logs

    # resume with another world size (a single process) from the 2-process checkpoint
    result = subprocess.run([sys.executable, "-m", "medseg_attn.cli", "-q", "train", "--output", str(run_dir),
                             "--resume", "--epochs", "3"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert payload["world_size"] == 1 and payload["epoch"] == 3 and payload["step"] == 9

    # predict shards the cases across ranks; every case is written once and reported once
    images = dataset.parent / "imagesTs"
    extra = sorted(images.iterdir())[0]
    cases = tmp_path / "cases"
    cases.mkdir()
    for index in range(3):
        (cases / f"case{index}.nii.gz").write_bytes(extra.read_bytes())
    result = torchrun("predict", "--model", str(run_dir), "--input", str(cases), "--output", str(tmp_path / "pred"),
                      "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "pred").glob("case*.nii.gz")) == [f"case{i}.nii.gz" for i in range(3)]
    with (tmp_path / "pred" / "report.csv").open() as handle:
        assert sorted(row["case"] for row in csv.DictReader(handle)) == ["case0", "case1", "case2"]


def test_two_process_classification_training(tmp_path):
    """classify train under torchrun: validation gathered from both ranks, rank 0 writes one run folder."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        (tmp_path / "images" / f"class_{k}").mkdir(parents=True)
        for i in range(8):
            image = rng.integers(0, 40, (32, 32, 3)).astype(np.uint8)
            image[8:24, 8:24] = colour
            Image.fromarray(image).save(tmp_path / "images" / f"class_{k}" / f"{i}.png")
    run_dir = tmp_path / "run"
    result = torchrun("classify", "train", "--data", str(tmp_path / "images"), "--output", str(run_dir),
                      "--epochs", "2", "--set", "model.channels=[8,16,32]", "--set", "train.batch_size=4",
                      "--set", "train.device=cpu", "--set", "train.balance=sampler")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trained 2 epochs") == 1
    payload = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert payload["world_size"] == 2 and payload["classes"] == ["class_0", "class_1", "class_2"]
    with (run_dir / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == 2 and all(0.0 <= float(row["val_accuracy"]) <= 1.0 for row in history)
    assert (run_dir / "confusion_matrix.png").stat().st_size > 1000
