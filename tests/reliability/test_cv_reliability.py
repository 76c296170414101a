"""Cross-validation runs and fine-tuning (issue 34, round three): every fold job has the run's configuration,
plan and fine-tuning source; nothing else takes a CV run folder over; patients are read or refused; half-finished
runs say what is missing; refusals come before any work and leave the folders as they were; run.json everywhere."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from medseg_attn.config import load_config
from medseg_attn.io.manifest import file_sha256
from medseg_attn.networks.factory import build_network
from medseg_attn.segmentation.data.datasets import load_dataset
from medseg_attn.segmentation.workflows.finetune import load_initial_weights
from medseg_attn.training.checkpoint import load_checkpoint, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from blob_dataset import TINY, write_blob_dataset  # noqa: E402
from cli_helpers import assert_one_line_error, run  # noqa: E402

SETS = [argument for key in TINY for argument in ("--set", key)]


def state(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` with its SHA-256 and modification time: a refused command leaves both."""
    return {str(p.relative_to(folder)): (file_sha256(p), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def half_run(tmp_path_factory):
    """A 3-fold CV run of 6 tiny cases with only fold 0 trained (1 epoch of 2 steps): half-finished."""
    root = tmp_path_factory.mktemp("cv")
    dataset = write_blob_dataset(root / "data")
    result = run("-q", "train", "--data", str(dataset), "--folds", "3", "--fold", "0", "--epochs", "1",
                 "--output", str(root / "run"), *SETS)
    assert result.returncode == 0, result.stderr
    return dataset, root / "run"


@pytest.fixture
def finished_run(half_run, tmp_path):
    """A copy of the half run whose folds 1 and 2 are copies of fold 0, finished: a complete CV run."""
    dataset, source = half_run
    copy = tmp_path / "finished"
    shutil.copytree(source, copy)
    for fold in (1, 2):
        shutil.rmtree(copy / f"fold_{fold}", ignore_errors=True)
        shutil.copytree(copy / "fold_0", copy / f"fold_{fold}")
    return dataset, copy


# row 2: a fold job with another configuration or plan joins no CV run
@pytest.mark.parametrize("setting, fragments", [
    ("data.spacing=[3,3,3]", ("data.spacing (run [2.0, 2.0, 2.0], this job [3.0, 3.0, 3.0])",)),
    ("model.channels=[4,8,32]", ("model.channels (run [4, 8, 16], this job [4, 8, 32])",)),
    ("train.lr=0.01", ("train.lr (run 0.002, this job 0.01)",)),
])
def test_a_fold_job_with_another_configuration_is_refused(half_run, setting, fragments):
    dataset, cv = half_run
    before = state(cv)
    result = run("-q", "train", "--data", str(dataset), "--folds", "3", "--fold", "1", "--epochs", "1",
                 "--output", str(cv), *SETS, "--set", setting)
    assert_one_line_error(result, "config.yaml", "differs from the CV run's", *fragments)
    assert state(cv) == before and not (cv / "fold_1").exists()


def test_a_fold_job_trains_with_the_runs_plan_and_a_fold_planned_otherwise_is_refused(half_run, tmp_path):
    dataset, source = half_run
    cv = tmp_path / "cv"
    shutil.copytree(source, cv)
    assert json.loads((cv / "plan.json").read_text())["resolved"] == \
        json.loads((cv / "fold_0" / "plan.json").read_text())["resolved"]  # the run's plan: the first fold's
    plan = json.loads((cv / "fold_0" / "plan.json").read_text())
    plan["resolved"]["patch_size"] = [24, 24, 24]  # as if fold 0 had been planned otherwise (another version)
    (cv / "fold_0" / "plan.json").write_text(json.dumps(plan))
    before = state(cv)
    result = run("-q", "train", "--output", str(cv), "--resume", "--epochs", "1")
    assert_one_line_error(result, "fold_0/plan.json", "patch_size (run [16, 16, 16], this fold [24, 24, 24])")
    assert state(cv) == before


# row 3: a plain train never takes a CV run folder over
def test_a_plain_train_into_a_cv_run_folder_is_refused(half_run):
    dataset, cv = half_run
    before = state(cv)
    result = run("-q", "train", "--data", str(dataset), "--epochs", "1", "--output", str(cv), *SETS,
                 "--set", "data.spacing=[3,3,3]")
    assert_one_line_error(result, str(cv), "holds a cross-validation run (3 folds)", "--resume")
    assert state(cv) == before


# row 4: a patients map that names no case, or leaves cases out, is refused
def test_a_patients_map_must_name_the_cases(tmp_path):
    dataset = write_blob_dataset(tmp_path / "data")
    spec = json.loads(dataset.read_text())
    names = [f"case_{i}" for i in range(6)]
    spec["patients"] = {f"{name}.nii.gz": f"p{i // 2}" for i, name in enumerate(names)}  # file names, not cases
    dataset.write_text(json.dumps(spec))
    result = run("-q", "train", "--data", str(dataset), "--folds", "3", "--epochs", "1", "--output",
                 str(tmp_path / "cv"), *SETS)
    assert_one_line_error(result, "'patients' names 6 case(s) that are not in the dataset",
                          "case_0.nii.gz, case_1.nii.gz, case_2.nii.gz and 3 more", "'case_0'")
    assert not (tmp_path / "cv").exists()
    spec["patients"] = {name: f"p{i // 2}" for i, name in enumerate(names[:3])}  # cases 3-5 left out
    dataset.write_text(json.dumps(spec))
    result = run("-q", "plan", "--data", str(dataset), "--output", str(tmp_path / "plan.json"))
    assert_one_line_error(result, "'patients' gives no patient for 3 case(s): case_3, case_4, case_5")
    spec["patients"] = {name: f"p{i // 2}" for i, name in enumerate(names)}  # the right map: read, silently
    dataset.write_text(json.dumps(spec))
    assert [case["patient"] for case in load_dataset(dataset).training] == ["p0", "p0", "p1", "p1", "p2", "p2"]


# row 19: too few patients for the folds is said in patients
def test_too_few_patients_for_the_folds_says_patients(tmp_path):
    dataset = write_blob_dataset(tmp_path / "data", patients=["a"] * 6)
    result = run("-q", "train", "--data", str(dataset), "--folds", "2", "--epochs", "1", "--output",
                 str(tmp_path / "cv"), *SETS)
    assert_one_line_error(result, "needs at least 2 patients", "got 1 patient (6 cases)")
    assert not (tmp_path / "cv").exists()


# rows 5 and 20: the fine-tuning source is recorded absolute with its checksum, checked before any work
def test_init_from_is_recorded_absolute_with_its_checksum_and_a_changed_source_is_refused(half_run, tmp_path):
    dataset, source_run = half_run
    shutil.copytree(source_run / "fold_0", tmp_path / "source")
    work = tmp_path / "work"
    work.mkdir()
    result = run("-q", "train", "--data", str(dataset), "--folds", "3", "--fold", "0", "--epochs", "1",
                 "--init-from", "../source", "--output", "cv", *SETS, cwd=work)  # a relative path
    assert result.returncode == 0, result.stderr
    cv = work / "cv"
    checkpoint = tmp_path / "source" / "checkpoints" / "best.pt"
    recorded = json.loads((cv / "cv.json").read_text())["init_from"]
    assert recorded["path"] == str(tmp_path / "source") and recorded["sha256"] == file_sha256(checkpoint)
    assert load_config(cv / "config.yaml").train.init_from == str(tmp_path / "source")
    inputs = {entry["name"]: entry for entry in json.loads((cv / "run.json").read_text())["inputs"]}
    assert inputs["init_from"]["sha256"] == file_sha256(checkpoint)
    source = load_checkpoint(checkpoint)  # the source changes under the same name
    save_checkpoint({**source, "model": {key: value + 1 if value.is_floating_point() else value
                                         for key, value in source.model.items()}}, checkpoint)
    before = state(cv)
    result = run("-q", "train", "--output", str(cv), "--resume", "--epochs", "1", cwd=tmp_path)  # elsewhere
    assert_one_line_error(result, str(checkpoint), "not the checkpoint this CV run fine-tunes from", "sha256")
    assert state(cv) == before


# rows 11 and 20: fine-tuning across another model section is refused before any work
@pytest.mark.parametrize("setting, fragment", [
    ("model.attention=false", "model.attention (source True, this run False)"),
    ("model.head_dim=4", "model.head_dim (source 16, this run 4)"),
])
def test_init_from_another_model_section_is_refused_before_any_work(half_run, tmp_path, setting, fragment):
    dataset, cv = half_run
    for folds in ([], ["--folds", "3"]):
        output = tmp_path / f"out{len(folds)}"
        result = run("-q", "train", "--data", str(dataset), "--epochs", "1", "--init-from", str(cv / "fold_0"),
                     "--output", str(output), *folds, *SETS, "--set", setting)
        assert_one_line_error(result, "--init-from needs the source's model section", fragment)
        assert not output.exists()


def test_load_initial_weights_refuses_source_weights_with_no_place_in_the_network(half_run):
    _, cv = half_run
    config = load_config(overrides=[*TINY, "model.attention=false"])
    network = build_network(config.model, 3, 1, 3)
    fresh = {key: value.clone() for key, value in network.state_dict().items()}
    with pytest.raises(ValueError, match="have no place in this run's network"):
        load_initial_weights(network, cv / "fold_0", {0: "background", 1: "ball", 2: "box"}, 1)
    assert all(torch.equal(fresh[key], value) for key, value in network.state_dict().items())


def test_a_bad_init_from_leaves_nothing_behind(half_run, tmp_path):
    dataset, _ = half_run
    for folds in ([], ["--folds", "3"]):
        output = tmp_path / f"out{len(folds)}"
        result = run("-q", "train", "--data", str(dataset), "--epochs", "1", "--init-from", str(tmp_path / "none"),
                     "--output", str(output), *folds, *SETS)
        assert_one_line_error(result, "model not found")
        assert not output.exists()


# rows 16 and 20: `cv` checks every fold and its arguments before predicting a case
def test_cv_of_a_half_finished_run_names_the_missing_folds_and_writes_nothing(half_run):
    _, cv = half_run
    before = state(cv)
    result = run("-q", "cv", str(cv))
    assert_one_line_error(result, "fold 1 has no checkpoint yet; fold 2 has no checkpoint yet", "--resume")
    assert state(cv) == before and not (cv / "cv").exists()


def test_cv_with_a_bad_tolerance_is_refused_before_any_prediction(finished_run):
    _, cv = finished_run
    assert run("-q", "cv", str(cv)).returncode == 0
    before = state(cv)
    result = run("-q", "cv", str(cv), "--tolerance", "-1")
    assert_one_line_error(result, "tolerance -1.0 mm must be a positive number")
    assert state(cv) == before  # not one prediction rewritten


# row 17: inspect of a half-finished run says what is missing
def test_inspect_of_a_half_finished_run_says_what_is_missing(half_run):
    _, cv = half_run
    result = run("inspect", str(cv))
    assert result.returncode == 0, result.stderr
    assert "not complete: no checkpoint yet in fold_1, fold_2" in result.stdout
    assert f"`predict --model {cv} --folds 0` uses the trained folds" in result.stdout
    assert "one ensemble" not in result.stdout and "the card of fold_0" in result.stdout
    assert run("-q", "predict", "--model", str(cv), "--input", str(cv), "--output", str(cv.parent / "p")
               ).returncode == 2  # what inspect says: predict refuses it


# row 18: a finished run resumed says that nothing was trained, and does not evaluate again
def test_resuming_a_finished_run_says_nothing_was_trained(finished_run):
    _, cv = finished_run
    result = run("-q", "train", "--output", str(cv), "--resume", "--minutes", "5")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "nothing trained" in line]
    assert len(lines) == 1 and "every fold of this cross-validation run had finished" in lines[0]
    assert "finished before" not in result.stdout and (cv / "cv" / "summary.json").is_file()
    before = state(cv)
    assert run("-q", "train", "--output", str(cv), "--resume", "--minutes", "5").returncode == 0
    after = state(cv)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {"run.json"}  # no fold trained, no evaluation redone: only the job's own record


# row 22: a CV run folder and its cv/ folder have run.json
def test_a_cv_run_and_its_evaluation_have_run_json(half_run, finished_run):
    _, half = half_run
    manifest = json.loads((half / "run.json").read_text())
    assert manifest["command"] == "train" and manifest["outcome"] == "ok" and "fold_0" in manifest["result"]
    assert manifest["inputs"][0]["name"] == "dataset"
    _, cv = finished_run
    assert run("-q", "cv", str(cv)).returncode == 0
    manifest = json.loads((cv / "cv" / "run.json").read_text())
    assert manifest["command"] == "cv" and manifest["outcome"] == "ok" and len(manifest["model"]["models"]) == 3
    assert manifest["options"] == {"tolerance_mm": 1.0, "lesions": None}  # lesion rules when --lesions
