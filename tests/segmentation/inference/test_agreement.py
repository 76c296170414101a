"""Member agreement: pairwise Dice by hand, one member per (network, flip), and the stress tool's signals."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg_attn.io.tables import read_csv_rows
from medseg_attn.segmentation.inference.agreement import member_labels, pairwise_dice
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.workflows.stress import SIGNAL_COLUMNS, run_stress
from medseg_attn.segmentation.workflows.train import train

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from blob_dataset import tiny_config, write_blob_dataset  # noqa: E402

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def test_pairwise_dice_by_hand():
    a = np.array([0, 1, 1, 2, 2, 0])
    b = np.array([0, 1, 0, 2, 2, 2])
    c = np.zeros(6, int)
    assert pairwise_dice([a, a, a], [1, 2]) == 1.0
    # class 1: 2*1/(2+1) = 2/3; class 2: 2*2/(2+3) = 4/5
    assert pairwise_dice([a, b], [1, 2]) == pytest.approx((2 / 3 + 4 / 5) / 2)
    # pairs (a,b), (a,c): both classes 0, (b,c): 0; c alone has no class: a pair of two empty maps counts 1
    assert pairwise_dice([a, b, c], [1, 2]) == pytest.approx(((2 / 3 + 4 / 5) / 2 + 0 + 0) / 3)
    assert pairwise_dice([c, c], [1, 2]) == 1.0
    with pytest.raises(ValueError, match="at least 2 members"):
        pairwise_dice([a], [1])


class Pointwise(torch.nn.Module):
    """Logits from each voxel's own value: mirror-equivariant, so every flip member gives the same labels."""

    def forward(self, x):  # (B, 1, *S) -> (B, 3, *S)
        return torch.cat([torch.zeros_like(x), 4 * x, -4 * x], 1)


class Ramp(torch.nn.Module):
    """Logits from the position inside the window: a mirrored window gets mirrored labels, so flips disagree."""

    def forward(self, x):  # (B, 1, *S) -> (B, 3, *S)
        ramp = torch.linspace(-1, 1, x.shape[-1]).expand_as(x)
        return torch.cat([torch.zeros_like(x), 4 * ramp, -4 * ramp], 1)


@pytest.fixture(scope="module")
def blob_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("agreement")
    dataset = write_blob_dataset(root / "data", cases=2)
    result = train(tiny_config(dataset, "train.max_epochs=1"), root / "run", progress=False)
    return result.run_dir, root / "data"


def _case(data, k):
    image = np.asarray(nib.load(str(data / "imagesTr" / f"case_{k}.nii.gz")).dataobj, dtype=np.float32)
    return image, np.asarray(nib.load(str(data / "labelsTr" / f"case_{k}.nii.gz")).dataobj)


def test_one_member_per_flip_and_network(blob_model):
    run, data = blob_model
    predictor = Predictor.from_checkpoint(run)
    predictor.networks = [Pointwise(), Ramp()]
    image = predictor.preprocess(predictor.load_array(_case(data, 0)[0], AFFINE))  # (1, *S)
    members = member_labels(predictor, image)
    assert len(members) == 8 and all(m.shape == tuple(image.shape[1:]) for m in members)  # 2 networks x 4 flips
    pointwise, ramp = members[:4], members[4:]
    assert all(np.array_equal(m, pointwise[0]) for m in pointwise)  # equivariant: the flips agree
    assert not np.array_equal(ramp[0], ramp[3])  # the last axis mirrored: the ramp's labels are not
    assert np.array_equal(ramp[0], ramp[1]) and np.array_equal(ramp[0], ramp[2])  # other axes: the ramp agrees


def test_stress_signals_are_recorded_and_judged(blob_model, tmp_path):
    run, data = blob_model
    predictor = Predictor.from_checkpoint(run)
    predictor.networks = [Pointwise()]
    variants = []
    for k in range(2):
        image, label = _case(data, k)
        variants += [(k, ("as_is", image, label, AFFINE)), (k, ("inverted", -image, label, AFFINE))]
    rows = run_stress(predictor, variants, tmp_path, "t", signals=True)
    written = read_csv_rows(tmp_path / "stress.csv")
    assert len(written) == 4 and {*SIGNAL_COLUMNS, "qc_flags"} <= set(written[0])
    for row, (_, (_, image, _, _)) in zip(rows, variants):
        assert row["disagreement"] == 0.0  # a mirror-equivariant network: its members agree
        assert 0.0 <= row["uncertainty_mean"] <= 1.0 and row["qc_score"] >= 0
        again = predictor.predict(image, affine=AFFINE, uncertainty=True)
        assert row["uncertainty_mean"] == pytest.approx(float(again.uncertainty.mean()), abs=1e-5)
    predictor.networks = [Ramp()]
    ramp = run_stress(predictor, variants[:1], tmp_path / "ramp", "t", signals=True)
    assert ramp[0]["disagreement"] > 0.05
    table = read_csv_rows(tmp_path / "failure_detection.csv")
    assert {(r["signal"], r["target"]) for r in table} == {(s, t) for s in SIGNAL_COLUMNS
                                                            for t in ("dice_below_0.80", "drop_0.05_from_as_is")}
    assert (tmp_path / "failure_detection.png").stat().st_size > 5000
    assert len(list((tmp_path / "qc").glob("case*_*.png"))) == 4
