"""Every configuration value is checked against its range before any work, for both tasks and every command."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run

from medseg_attn.cli.arguments import train_config_from_args
from medseg_attn.config import ClassifyConfig, Config, ConfigError, load_config


@pytest.mark.parametrize("override,fragment", [
    ("train.val_interval=0", "train.val_interval: must be >= 1, got 0"),
    ("model.channels=[0,0]", "model.channels: every element must be in [1, 65536], got [0, 0]"),
    ("model.channels=[-8,16]", "model.channels: every element"),
    ("model.head_dim=0", "model.head_dim: must be >= 1"),
    ("model.window_size=0", "model.window_size: must be >= 1"),
    ("train.steps_per_epoch=-1", "train.steps_per_epoch: must be >= 1"),
    ("train.lr=.inf", "train.lr must be a finite number"),
    ("train.lr=.nan", "train.lr must be a finite number"),
    ("train.lr=0", "train.lr: must be > 0"),
    ("train.minutes=nan", "train.minutes (--minutes) must be a finite number"),
    ("train.minutes=-1", "train.minutes (--minutes): must be > 0"),
    ("data.ct_window=[-.inf, 100]", "data.ct_window must be a finite number"),
    ("data.augmentation.noise_std=-1", "data.augmentation.noise_std: must be >= 0"),
    ("model.attention_dropout=1.5", "model.attention_dropout: must be in [0, 1)"),
])
@pytest.mark.parametrize("kind", [Config, ClassifyConfig])
def test_shared_values_are_checked_for_both_tasks(override, fragment, kind):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=[override], kind=kind)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("override,fragment", [
    ("inference.sw_batch_size=0", "inference.sw_batch_size (--sw-batch-size): must be >= 1"),
    ("data.patch_size=[32,32,32]", "data.patch_size [32, 32, 32] is too small for model.channels"),
    ("inference.patch_size=[32,32,32]", "inference.patch_size [32, 32, 32] is too small"),
    ("data.spacing=[1e6,1,1]", "data.spacing: every element must be in (0, 1000]"),
])
def test_segmentation_values(override, fragment):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=[override])
    assert fragment in str(caught.value)


def test_a_patch_that_fits_the_depth_is_accepted():
    assert load_config(overrides=["data.patch_size=[48,48,48]"]).data.patch_size == (48, 48, 48)
    assert load_config(overrides=["data.patch_size=[16,16,16]", "model.channels=[8,16]"]).model.channels == (8, 16)


def _train_args(**values) -> argparse.Namespace:
    defaults = {"overrides": [], "config": None, "resume": False, "output": Path("run"), "data": None,
                "minutes": None, "epochs": None, "device": None}
    return argparse.Namespace(**{**defaults, **values})


@pytest.mark.parametrize("data", ["2024", "null", "true", "[a]"])
def test_data_is_a_path_never_yaml(data):
    assert train_config_from_args(_train_args(data=data), "data.dataset").data.dataset == data
    assert train_config_from_args(_train_args(data=data), "data.train", ClassifyConfig).data.train == data


@pytest.mark.parametrize("minutes", [float("nan"), float("inf"), -2.0, 0.0])
def test_minutes_must_be_a_positive_finite_budget(minutes):
    with pytest.raises(ConfigError, match=r"train.minutes \(--minutes\)"):
        train_config_from_args(_train_args(minutes=minutes), "data.dataset")


def test_cli_refuses_bad_values_before_any_work(tmp_path, segmentation_model):
    run_dir = tmp_path / "run"
    started = time.perf_counter()
    result = run("train", "--data", str(tmp_path), "--output", str(run_dir), "--minutes", "nan")
    assert_one_line_error(result, "train.minutes (--minutes) must be a finite number, got nan")
    result = run("train", "--data", str(tmp_path), "--output", str(run_dir), "--set", "train.val_interval=0")
    assert_one_line_error(result, "train.val_interval: must be >= 1, got 0")
    assert not run_dir.exists() and time.perf_counter() - started < 60
    result = run("train", "--data", "2024", "--output", str(run_dir))
    assert_one_line_error(result, "2024")
    assert "must be a string" not in result.stderr
    volume = tmp_path / "v.nii.gz"
    from reliability_helpers import volume as write_volume

    write_volume(volume)
    result = run("predict", "--model", str(segmentation_model), "--input", str(volume), "--output",
                 str(tmp_path / "out"), "--sw-batch-size", "-3")
    assert_one_line_error(result, "inference.sw_batch_size (--sw-batch-size): must be >= 1, got -3")
    assert not (tmp_path / "out").exists()
