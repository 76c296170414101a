"""The task interface (issue 25, item 2): a third task is one Task value plus one registry line.

A toy per-volume regression task, defined in this file, is registered and then found by name, gets its own
``medseg-attn`` command, exports through ``medseg-attn export`` and shows its own metric on its model card; the
two shipped tasks go through the same registry.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from medseg_attn.model_layout import find_checkpoint
from medseg_attn.registry import TASKS, get_task, register_task, task_of
from medseg_attn.task import Task, TaskRegistry
from medseg_attn.training.card import model_card
from medseg_attn.training.checkpoint import load_checkpoint, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_helpers import assert_one_line_error, run  # noqa: E402

# --- the toy task: one value per volume (e.g. an age), from a tiny network ---------------------------------------

@dataclass(frozen=True)
class RegressionConfig:
    features: int = 3


def _network(payload):
    network = torch.nn.Linear(int(payload["features"]), 1)
    network.load_state_dict(payload["model"])
    return network.eval()


def _export(model, fmt, output):
    path = find_checkpoint(model)
    network = TOY.network(load_checkpoint(path), path)
    output = Path(output)
    output.write_text(json.dumps({"format": fmt, "bias": network.bias.item()}))
    return output


TOY = Task(name="regression", config=RegressionConfig, network_from_checkpoint=_network,
           card_metric=lambda payload: "validation MAE (years)", export=f"{__name__}:_export")


def register_cli(subparsers: argparse._SubParsersAction) -> dict:
    """The toy task's commands (this module is named as its CLI module)."""
    regress = subparsers.add_parser("regress", help="predict one value per volume (toy task)")
    regress.add_argument("--model", required=True, help="a regression checkpoint")
    return {"regress": _run_regress}


def _run_regress(args: argparse.Namespace) -> int:
    path = find_checkpoint(args.model)
    network = get_task("regression").network(load_checkpoint(path), path)
    with torch.no_grad():
        value = float(network(torch.zeros(1, network.in_features)))
    print(f"predicted {value:.2f}")
    return 0


@pytest.fixture
def toy():
    register_task(TOY, cli=__name__)  # the one line a third task adds to medseg_attn/registry.py
    yield TOY
    TASKS.unregister(TOY.name)


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    network = torch.nn.Linear(3, 1)
    with torch.no_grad():
        network.weight.zero_()
        network.bias.fill_(42.0)
    return save_checkpoint({"task": "regression", "features": 3, "model": network.state_dict(), "config": {},
                            "best_metric": 1.25, "best_epoch": 4, "epoch": 5}, tmp_path / "toy.pt")


# --- the toy task through the registry --------------------------------------------------------------------------

def test_a_registered_task_is_found_by_name(toy):
    assert get_task("regression") is toy
    assert task_of({"task": "regression"}) is toy
    assert list(TASKS.tasks())[-1] == "regression" and TASKS.command_modules()[-1] == __name__


def test_a_registered_task_gets_its_command(toy, checkpoint):
    help_text = run("--help")
    assert help_text.returncode == 0 and "regress" in help_text.stdout and "toy task" in help_text.stdout
    result = run("regress", "--model", str(checkpoint))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "predicted 42.00"


def test_a_registered_task_exports_through_medseg_attn_export(toy, checkpoint, tmp_path):
    result = run("export", "--model", str(checkpoint), "--format", "onnx", "--output", str(tmp_path / "toy.json"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"exported regression model as onnx -> {tmp_path / 'toy.json'}"
    assert json.loads((tmp_path / "toy.json").read_text()) == {"format": "onnx", "bias": 42.0}


def test_a_registered_tasks_card_names_its_metric(toy, checkpoint):
    card = model_card(load_checkpoint(checkpoint), toy)
    assert card["task"] == "regression" and card["metrics"]["metric"] == "validation MAE (years)"
    result = run("inspect", str(checkpoint))
    assert result.returncode == 0, result.stderr
    assert "  task: regression" in result.stdout
    assert "  validation MAE (years): 1.2500 at epoch 4 (5 epochs trained)" in result.stdout


def test_an_unregistered_task_leaves_no_trace(checkpoint):
    assert "regression" not in TASKS.tasks() and "regress" not in run("--help").stdout
    assert_one_line_error(run("inspect", str(checkpoint)), "unknown task 'regression'",
                          "known tasks: segmentation, classification")


# --- unknown names, the shipped tasks ---------------------------------------------------------------------------

def test_an_unknown_task_names_the_closest_or_every_known_task():
    with pytest.raises(ValueError, match="unknown task 'segmentaton'; did you mean 'segmentation'"):
        get_task("segmentaton")
    with pytest.raises(ValueError, match="unknown task 'xyz'; known tasks: segmentation, classification"):
        get_task("xyz")


def test_an_unknown_task_in_a_checkpoint_is_a_one_line_export_error(tmp_path):
    path = save_checkpoint({"task": "clasification", "model": {}}, tmp_path / "typo.pt")
    assert_one_line_error(run("export", "--model", str(path), "--format", "onnx", "--output", str(tmp_path / "x")),
                          "unknown task 'clasification'", "did you mean 'classification'")


def test_the_shipped_tasks_and_untagged_checkpoints():
    assert list(TASKS.tasks()) == ["segmentation", "classification"]
    assert task_of({}).name == "segmentation"  # checkpoints written before the "task" key
    assert task_of({"task": "classification"}).name == "classification"
    assert get_task("segmentation").owns({}) and not get_task("classification").owns({})
    assert get_task("segmentation").card_metric({}) == "validation Dice (mean over classes)"
    payload = {"task": "classification", "config": {"train": {"monitor": "balanced_accuracy"}}}
    assert model_card(payload, task_of(payload))["metrics"]["metric"] == "validation balanced_accuracy"


def test_each_shipped_task_lives_in_its_package_and_its_commands_in_the_cli():
    for task, cli in zip(TASKS.tasks().values(), TASKS.command_modules()):
        assert task.network_from_checkpoint.__module__ == f"medseg_attn.{task.name}.task"
        assert task.export.startswith(f"medseg_attn.{task.name}.")
        assert cli == f"medseg_attn.cli.{task.name}" and callable(importlib.import_module(cli).register_cli)


def test_a_task_that_does_not_fit_its_checkpoint_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"toy.pt: checkpoint does not match this medseg-attn version"):
        TOY.network({"task": "regression", "features": 3, "model": {}}, tmp_path / "toy.pt")
    with pytest.raises(ValueError, match=r"toy.pt: is a segmentation model, not a regression model"):
        TOY.network({"task": "segmentation"}, tmp_path / "toy.pt")


def test_a_registry_refuses_twins():
    other = Task(name="other", config=RegressionConfig, network_from_checkpoint=_network,
                 card_metric=lambda payload: "m", export=None, untagged=True)
    with pytest.raises(ValueError, match="'regression' is registered twice"):
        TaskRegistry((TOY, "x"), (TOY, "x")).tasks()
    with pytest.raises(ValueError, match="both claim checkpoints without a task"):
        TaskRegistry((other, "x"), (replace(TOY, name="b", untagged=True), "x")).tasks()
    with pytest.raises(ValueError, match="the model names no task; known tasks: regression"):
        TaskRegistry((TOY, "x")).of({})
