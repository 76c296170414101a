"""The batch QC report: a small batch with planted bad cases (an emptied structure, a structure made 3x larger) is
flagged and ranked first, in the report's data and in a real headless browser (chromium) opening report.html."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg_attn.config import InferenceConfig
from medseg_attn.io.tables import read_csv_rows
from medseg_attn.segmentation.data.transforms import Preprocessing
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.qc.qc_report import Review
from medseg_attn.segmentation.qc.review import ReviewSettings, load_review_settings
from medseg_attn.segmentation.workflows.batch import predict_files

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from browser import open_browser  # noqa: E402
from oracles import IntensityOracle  # noqa: E402

PLANTED = ("bad_empty", "bad_large")


def sphere_case(shell: float, core: float | None, shape=(32, 32, 24), shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Intensities 100 (shell) and 200 (core) in a 0 background: what the oracle segments exactly."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt(((grid - np.array(shift)[:, None, None, None]) ** 2).sum(0))
    volume = np.zeros(shape, np.float32)
    volume[radius < shell] = 100
    if core is not None:
        volume[radius < core] = 200
    return volume


def write(path: Path, volume: np.ndarray) -> Path:
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    return path


@pytest.fixture()
def predictor() -> Predictor:
    prep = Preprocessing(spacing=None, orientation="RAS", intensity="none", ct_window=(0, 1), crop_foreground=False,
                         spatial_dims=3)
    return Predictor(IntensityOracle(), prep, {0: "background", 1: "shell", 2: "core"}, (32, 32, 24),
                     InferenceConfig(overlap=0.25), "cpu")


@pytest.fixture()
def planted_batch(tmp_path: Path, predictor: Predictor) -> tuple[Path, list[dict]]:
    """Six ordinary cases (radii varied by a few %) and the two planted ones; predicted with a review."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        scale = 1 + rng.uniform(-0.03, 0.03)
        write(inputs / f"case_{index}.nii.gz", sphere_case(0.5 * scale, 0.28 * scale, shift=(0.05 * index, 0, 0)))
    write(inputs / "bad_empty.nii.gz", sphere_case(0.5, None))  # the core emptied
    outer = (3 * 0.5 ** 3 - 2 * 0.28 ** 3) ** (1 / 3)  # the shell (outer sphere less the core) 3x larger
    write(inputs / "bad_large.nii.gz", sphere_case(outer, 0.28))
    output = tmp_path / "out"
    review = Review.for_predictor(predictor, ReviewSettings(), statistics=True)
    records = predict_files(predictor, [inputs], output, progress=False, review=review)
    return output, records


def test_planted_cases_are_flagged_and_ranked_first(planted_batch, predictor):
    output, records = planted_batch
    assert all(r["status"] == "ok" for r in records)
    review = Review.for_predictor(predictor, ReviewSettings())
    ranked = review.write(records, output)
    assert {c["case"] for c in ranked[:2]} == set(PLANTED)
    by_name = {c["case"]: c for c in ranked}
    assert any(f.kind == "empty" and f.structure == "core" and f.detail == "core: no voxel"
               for f in by_name["bad_empty"]["flags"])
    large = [f for f in by_name["bad_large"]["flags"] if f.kind == "volume"]
    assert large and large[0].structure == "shell" and large[0].measure == "volume_ml"
    assert large[0].detail.startswith("shell: volume (ml)") and "above" in large[0].detail
    ordinary = [c for c in ranked if c["case"] not in PLANTED]
    assert all(c["score"] == 0 and not c["flags"] for c in ordinary), [(c["case"], c["flags"]) for c in ordinary]
    # the shell of bad_large: 3x the median volume of the others, as counted from the written label map
    rows = read_csv_rows(output / "statistics.csv")
    shell = {r["case"]: float(r["volume_ml"]) for r in rows if r["structure"] == "shell"}
    others = np.median([v for k, v in shell.items() if k not in PLANTED])
    assert 2.6 < shell["bad_large"] / others < 3.4
    assert {r["case"] for r in rows} == {r["case"] for r in records} and len(rows) == 2 * len(records)
    assert (output / "report.html").exists() and (output / "qc" / "volumes.png").exists()
    assert all((output / "qc" / f"{r['case']}.png").exists() for r in records)


def test_expected_volume_range_and_settings_errors(planted_batch, predictor, tmp_path):
    output, records = planted_batch
    shell = {r["case"]: r["review"]["statistics"]["structures"][0]["volume_ml"] for r in records}
    low = min(shell.values()) - 1
    settings = load_review_settings(None, [f"expected_volume_ml.shell=[{low}, {low + 1}]", "min_batch_cases=50"])
    ranked = Review.for_predictor(predictor, settings).write(records, output)
    flagged = {c["case"] for c in ranked if any(f.kind == "volume" for f in c["flags"])}
    assert flagged == set(shell) - {min(shell, key=shell.get)}  # all but the smallest lie above the range
    config = tmp_path / "review.yaml"
    config.write_text("review:\n  volume_mad_kk: 3\n")
    with pytest.raises(ValueError, match="unknown review setting 'volume_mad_kk'; did you mean 'volume_mad_k'"):
        load_review_settings(config)
    with pytest.raises(ValueError, match="min_largest_share = 1.5; expected a number in"):
        load_review_settings(None, ["min_largest_share=1.5"])


def test_skipped_cases_are_measured_from_their_files(planted_batch, predictor):
    output, records = planted_batch
    first = {r["case"]: r["review"]["statistics"] for r in records}
    (output / "bad_large_statistics.json").unlink()  # measured again from the label map and input
    review = Review.for_predictor(predictor, ReviewSettings(), statistics=True)
    again = predict_files(predictor, [Path(records[0]["input"]).parent], output, progress=False, review=review)
    assert all(r["status"] == "skipped (exists)" for r in again)
    second = {r["case"]: r["review"]["statistics"] for r in again}
    assert second == first
    html_text = (output / "report.html").read_text()
    assert html_text.index('data-case="bad_') < html_text.index('data-case="case_')


def test_report_in_a_real_headless_browser(planted_batch):
    from PIL import Image

    output, records = planted_batch
    browser = open_browser()
    try:
        url = (output / "report.html").resolve().as_uri()
        browser.open(url)
        assert browser.errors() == []
        requested = browser.requests()
        assert requested and all(u.startswith(("file://", "data:")) for u in requested), requested
        cases = browser.evaluate("Array.from(document.querySelectorAll('#cases tbody tr')).map(r => r.dataset.case)")
        assert sorted(cases) == sorted(r["case"] for r in records)
        assert set(cases[:2]) == set(PLANTED)  # worst first by default
        images = browser.evaluate("Array.from(document.images).map(i => [i.src, i.complete && i.naturalWidth > 0])")
        assert images and all(loaded for _, loaded in images), images
        worst = browser.evaluate("document.getElementById('open-worst').getAttribute('href')")
        assert browser.evaluate(f"document.querySelector('{worst}').textContent").startswith("1. bad_")
        # sort by name (ascending), then by the 'empty' and 'volume' flag columns with real clicks
        for column, planted in (("case", None), ("empty", "bad_empty"), ("volume", "bad_large")):
            header = f"Array.from(document.querySelectorAll('#cases th')).find(h => h.textContent === '{column}')"
            browser.evaluate(f"{header}.click()")
            order = browser.evaluate(
                "Array.from(document.querySelectorAll('#cases tbody tr')).map(r => r.dataset.case)")
            if planted is None:
                assert order == sorted(order)
            else:
                assert order[0] == planted, (column, order)
        assert browser.errors() == []
        picture = Image.open(io.BytesIO(browser.screenshot())).convert("L")
        pixels = np.asarray(picture, dtype=np.float64)
        assert picture.size[0] >= 800 and pixels.std() > 10, pixels.std()
    finally:
        browser.close()
