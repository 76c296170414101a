"""Member agreement: pairwise Dice by hand, one member per (network, flip), and the stress tool's signals."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg_attn.io.tables import read_csv_rows
from medseg_attn.segmentation.evaluation.stress import SIGNAL_COLUMNS, run_stress
from medseg_attn.segmentation.inference.agreement import member_labels, pairwise_dice
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.train import train

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from blob_dataset import tiny_config, write_blob_dataset  # noqa: E402


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


@pytest.fixture(scope="module")
def blob_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("agreement")
    dataset = write_blob_dataset(root / "data", cases=4)
    result = train(tiny_config(dataset, "train.epochs=4"), root / "run", progress=False)
    return Predictor.from_checkpoint(result.run_dir), root / "data"


def test_one_member_per_flip_and_network(blob_model):
    predictor, data = blob_model
    image = predictor._pre({"image": predictor.load_array(np.asarray(
        nib.load(str(data / "imagesTr" / "case_0.nii.gz")).dataobj), np.diag([2.0, 2.0, 2.0, 1.0]))})["image"]
    members = member_labels(predictor, image)
    assert len(members) == 4 and all(m.shape == tuple(image.shape[1:]) for m in members)  # none, x, y, z flips
    # the unflipped member is the plain prediction without TTA on the network grid
    plain = predictor.infer(image).argmax(0).numpy() if not predictor.inference.tta else None
    if plain is not None:
        assert np.array_equal(members[0], plain)


def test_stress_signals_are_recorded_and_judged(blob_model, tmp_path):
    predictor, data = blob_model
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    variants = []
    for k in range(2):
        image = np.asarray(nib.load(str(data / "imagesTr" / f"case_{k}.nii.gz")).dataobj, dtype=np.float32)
        label = np.asarray(nib.load(str(data / "labelsTr" / f"case_{k}.nii.gz")).dataobj)
        noise = np.random.default_rng(k).normal(0, 3.0, image.shape).astype(np.float32)
        variants += [(k, ("as_is", image, label, affine)), (k, ("drowned", image + noise, label, affine))]
    rows = run_stress(predictor, variants, tmp_path, "t", signals=True)
    written = read_csv_rows(tmp_path / "stress.csv")
    assert len(written) == 4 and {*SIGNAL_COLUMNS, "qc_flags"} <= set(written[0])
    for row in rows:
        assert 0.0 <= row["disagreement"] <= 1.0 and 0.0 <= row["uncertainty_mean"] <= 1.0 and row["qc_score"] >= 0
    # drowning the image in noise makes the members disagree more than on the clean case
    by = {(r["case"], r["variant"]): r for r in rows}
    assert all(by[(k, "drowned")]["disagreement"] > by[(k, "as_is")]["disagreement"] for k in range(2))
    table = read_csv_rows(tmp_path / "failure_detection.csv")
    assert {(r["signal"], r["target"]) for r in table} == {(s, t) for s in SIGNAL_COLUMNS
                                                            for t in ("dice_below_0.80", "drop_0.05_from_as_is")}
    assert (tmp_path / "failure_detection.png").stat().st_size > 5000
    assert len(list((tmp_path / "qc").glob("case*_*.png"))) == 4
