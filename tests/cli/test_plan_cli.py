"""``medseg-attn plan`` as a user runs it: a real subprocess on real brain MRI cases."""

from __future__ import annotations

import json

from medseg_attn.demo_data import build_demo_dataset
from tests.cli_helpers import assert_one_line_error, run


def test_plan_prints_and_writes_the_plan(tmp_path):
    dataset = build_demo_dataset(tmp_path / "data", train_cases=2, test_cases=0, seed=2, train_spacing=4.0,
                                 progress=False)
    result = run("-q", "plan", "--data", str(dataset), "--output", str(tmp_path / "plan.json"),
                 "--set", "data.patch_size=[48,48,64]")
    assert result.returncode == 0, result.stderr
    assert "patch_size: [48, 48, 64] (from the config; planned" in result.stdout
    assert "normalisation_mask: True" in result.stdout
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["resolved"]["spacing"] == [4.0, 4.0, 4.0] and plan["source"]["patch_size"] == "config"
    assert len(plan["fingerprint"]["cases"]) == 2


def test_plan_without_a_dataset_is_a_one_line_error(tmp_path):
    assert_one_line_error(run("plan", "--output", str(tmp_path / "plan.json")), "no dataset given")
