#!/usr/bin/env python
"""The QC report of docs/statistics.md, rebuilt: a batch cut from the real CT series in ../shared/data, segmented
by a hand-set HU-threshold network (soft tissue 0..150 HU, bone > 300 HU; a stand-in for a trained model, so the
picture needs no training), with two planted problems: a case whose intensities were normalised to [0, 1] (not HU)
and a case cut too small for the model's patch. Then a screenshot with headless chromium.

    PYTHONPATH=. python scripts/qc_report_example.py OUT [--screenshot docs/img/qc_report.png]
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from medseg_attn.config import InferenceConfig
from medseg_attn.io.readers import LoadVolumed
from medseg_attn.segmentation.data.transforms import Preprocessing
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.qc.qc_report import Review
from medseg_attn.segmentation.qc.review import load_review_settings
from medseg_attn.segmentation.workflows.batch import predict_files

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_example_ct" / "dicom"


class Thresholds(nn.Module):
    """Logits of background / soft tissue / bone from CT-window-scaled intensities x = (HU + 1000) / 2000."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        soft = 1 - ((x - 0.5375) / 0.0375) ** 2  # positive for 0 .. 150 HU
        bone = (x - 0.65) / 0.01  # positive above 300 HU
        return torch.cat([torch.zeros_like(x), soft, bone], dim=1)  # (B, 3, *S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    loaded = LoadVolumed("image").load(SHARED)
    volume, affine = np.asarray(loaded[0], dtype=np.float32), np.asarray(loaded.affine, dtype=np.float64)
    inputs = args.output / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(7):  # crops of 320 x 320 x 20 voxels at different places
        x, y = rng.integers(60, 130, size=2)
        crop = volume[x:x + 320, y:y + 320]
        shifted = affine.copy()
        shifted[:3, 3] += affine[:3, :3] @ np.array([x, y, 0])
        nib.save(nib.Nifti1Image(crop, shifted), str(inputs / f"ct_{index:02d}.nii.gz"))
    normalised = (volume[96:416, 96:416] + 1024) / 4096  # planted: not Hounsfield units
    nib.save(nib.Nifti1Image(normalised.astype(np.float32), affine), str(inputs / "ct_normalised.nii.gz"))
    nib.save(nib.Nifti1Image(volume[200:260, 200:260, 8:12], affine), str(inputs / "ct_tiny.nii.gz"))  # planted
    prep = Preprocessing(None, "RAS", "ct", (-1000.0, 1000.0), False, 3)
    predictor = Predictor(Thresholds(), prep, {0: "background", 1: "soft tissue", 2: "bone"}, (128, 128, 20),
                          InferenceConfig(overlap=0.25), "cpu")
    # thresholded soft tissue and bone lie in hundreds of pieces by nature: fragmentation is not what this shows
    review = Review.for_predictor(predictor, load_review_settings(None, ["max_components=100000",
                                                                        "min_largest_share=0"]), statistics=True)
    predict_files(predictor, [inputs], args.output / "predictions", uncertainty=True, review=review, overwrite=True)
    if args.screenshot:
        page = (args.output / "predictions" / "report.html").resolve().as_uri()
        subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--screenshot={args.screenshot.resolve()}", "--window-size=1400,1100", page], check=True,
                       capture_output=True, timeout=120)


if __name__ == "__main__":
    main()
