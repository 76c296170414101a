"""Fine-tuning from a trained run (--init-from) and sparse labels (the ignore label)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from medseg_attn.cli import main
from medseg_attn.config import load_config
from medseg_attn.networks.factory import build_network
from medseg_attn.segmentation.data.sparse import ignore_index, without_ignore
from medseg_attn.segmentation.losses import IgnoreDiceCELoss
from medseg_attn.segmentation.workflows.finetune import load_initial_weights
from medseg_attn.segmentation.workflows.train import train
from medseg_attn.training.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from blob_dataset import TINY, tiny_config, write_blob_dataset  # noqa: E402


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    dataset = write_blob_dataset(root / "data", cases=3)
    train(tiny_config(dataset, "train.max_epochs=1"), root / "run", progress=False)
    return root / "run"


def test_init_from_keeps_the_body_and_the_classes_named_alike(source_run, tmp_path):
    source = load_checkpoint(source_run / "checkpoints" / "best.pt")
    config = load_config(overrides=TINY)
    new_labels = {0: "background", 1: "box", 2: "vessel"}  # 'box' was class 2; 'vessel' is new
    network = build_network(config.model, 3, 1, len(new_labels))
    fresh = {key: value.clone() for key, value in network.state_dict().items()}
    done = load_initial_weights(network, source_run, new_labels, in_channels=1)
    assert done["new_classes"] == ["vessel"] and done["kept_classes"]["box"] == "box"
    state, old = network.state_dict(), source["model"]
    encoder = [key for key in state if key.startswith("encoders.")]
    assert encoder and all(torch.equal(state[key], old[key]) for key in encoder)
    head = [key for key in state if key.startswith("head.")]
    assert head
    for key in head:  # UpsampleHead: weight (C_in, classes, ...), bias (classes,)
        axis = 1 if key.endswith("weight") else 0
        assert torch.equal(state[key].select(axis, 0), old[key].select(axis, 0))  # background
        assert torch.equal(state[key].select(axis, 1), old[key].select(axis, 2))  # box, moved from class 2
        assert torch.equal(state[key].select(axis, 2), fresh[key].select(axis, 2))  # vessel: fresh
    wider = load_config(overrides=[*TINY, "model.channels=[8,16,32]"])
    with pytest.raises(ValueError, match="fine-tuning needs the same model section"):
        load_initial_weights(build_network(wider.model, 3, 1, 3), source_run, new_labels, in_channels=1)
    with pytest.raises(ValueError, match="input channel"):
        load_initial_weights(build_network(config.model, 3, 2, 3), source_run, new_labels, in_channels=2)


def test_train_init_from_runs_with_a_changed_label_set(source_run, tmp_path, capsys):
    labels = {"0": "background", "1": "box"}  # a new task: the box only
    dataset = write_blob_dataset(tmp_path / "data", cases=3, seed=5, labels={**labels, "2": "ball"})
    spec = json.loads(dataset.read_text())
    spec["labels"] = labels
    for entry in spec["training"]:  # relabel: box -> 1, ball -> background
        path = tmp_path / "data" / entry["label"]
        image = nib.load(path)
        array = np.asarray(image.dataobj)
        nib.save(nib.Nifti1Image((array == 2).astype(np.uint8), image.affine), path)
    dataset.write_text(json.dumps(spec))
    sets = [arg for key in TINY for arg in ("--set", key)]
    assert main(["-q", "train", "--data", str(dataset), "--output", str(tmp_path / "tuned"), "--epochs", "1",
                 "--init-from", str(source_run), *sets]) == 0
    payload = load_checkpoint(tmp_path / "tuned" / "checkpoints" / "last.pt")
    assert payload["labels"] == {0: "background", 1: "box"}
    assert payload["config"]["train"]["init_from"] == str(source_run)
    assert main(["-q", "train", "--data", str(dataset), "--output", str(tmp_path / "bad"), "--epochs", "1",
                 "--init-from", str(tmp_path / "nothing"), *sets]) == 2
    assert "model not found" in capsys.readouterr().err


def test_init_from_a_monai_bundle_copies_the_same_weights_as_from_its_run(source_run, tmp_path):
    bundle = tmp_path / "bundle"
    assert main(["-q", "export", "--model", str(source_run), "--format", "bundle", "--output", str(bundle)]) == 0
    config = load_config(overrides=TINY)
    labels = {0: "background", 1: "box", 2: "vessel"}
    from_run, from_bundle = (build_network(config.model, 3, 1, len(labels)) for _ in range(2))
    from_bundle.load_state_dict(from_run.state_dict())  # the same fresh rows for the new class
    load_initial_weights(from_run, source_run, labels, in_channels=1)
    done = load_initial_weights(from_bundle, bundle, labels, in_channels=1)
    assert done["source"] == str(bundle / "models" / "model.pt") and done["new_classes"] == ["vessel"]
    run_state, bundle_state = from_run.state_dict(), from_bundle.state_dict()
    assert all(torch.equal(run_state[key], bundle_state[key]) for key in run_state)
    source = load_checkpoint(source_run / "checkpoints" / "best.pt")["model"]
    encoder = [key for key in bundle_state if key.startswith("encoders.")]
    assert encoder and all(torch.equal(bundle_state[key], source[key]) for key in encoder)  # trained, not fresh
    zoo = tmp_path / "zoo_bundle"  # a model-zoo bundle: model.pt is a bare state dict
    (zoo / "configs").mkdir(parents=True)
    (zoo / "models").mkdir()
    (zoo / "configs" / "metadata.json").write_text("{}")
    torch.save(source, zoo / "models" / "model.pt")
    with pytest.raises(ValueError, match="model.pt"):
        load_initial_weights(build_network(config.model, 3, 1, len(labels)), zoo, labels, in_channels=1)


def test_ignore_voxels_do_not_touch_the_loss_or_its_gradient():
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 1, 8, 8, 8))
    label[:, :, :3] = 3  # unannotated slab
    logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    loss_fn = IgnoreDiceCELoss(ignore=3, num_classes=3)
    loss = loss_fn(logits, label)
    loss.backward()
    assert torch.isfinite(loss)
    assert logits.grad[:, :, :3].abs().max() == 0  # no gradient at all through ignore voxels
    assert logits.grad[:, :, 3:].abs().max() > 0
    changed = logits.detach().clone()
    changed[:, :, :3] = torch.randn_like(changed[:, :, :3]) * 10
    torch.testing.assert_close(loss_fn(changed, label), loss.detach())
    # without ignore voxels it is MONAI's DiceCE
    full = torch.randint(0, 3, (2, 1, 8, 8, 8))
    reference = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    torch.testing.assert_close(loss_fn(logits.detach(), full), reference(logits.detach(), full))


def test_ignore_label_convention():
    assert ignore_index({0: "background", 1: "a", 2: "ignore"}) == 2
    assert without_ignore({0: "background", 1: "a", 2: "ignore"}) == {0: "background", 1: "a"}
    assert ignore_index({0: "background", 1: "a"}) is None
    with pytest.raises(ValueError, match="must be the highest label"):
        ignore_index({0: "background", 1: "ignore", 2: "a"})


def test_training_on_sparse_labels(tmp_path):
    dataset = write_blob_dataset(tmp_path / "data", cases=3, labels={"0": "background", "1": "ball", "2": "box",
                                                                     "3": "ignore"})
    for path in sorted((tmp_path / "data" / "labelsTr").glob("*.nii.gz")):  # every 2nd axial slice annotated
        image = nib.load(path)
        array = np.asarray(image.dataobj).copy()
        array[:, :, 1::2] = 3
        nib.save(nib.Nifti1Image(array, image.affine), path)
    result = train(tiny_config(dataset, "train.max_epochs=1", "data.validation_fraction=0.34"), tmp_path / "run",
                   progress=False)
    assert result.epochs == 1 and result.best_metric is not None and np.isfinite(result.best_metric)
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert payload["labels"] == {0: "background", 1: "ball", 2: "box"}  # the network predicts no 'ignore'
    assert payload["model"]["head.bias"].shape == (3,)
