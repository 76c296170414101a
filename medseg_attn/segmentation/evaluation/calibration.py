"""The end of a training run: temperature scaling fitted on the validation cases, stored in ``best.pt``.

The best checkpoint's network predicts every validation case (sliding window, as in validation); up to
``max_voxels`` voxels are drawn at random from them, half to fit the temperature
(:func:`medseg_attn.training.calibration.fit_temperature`) and half to report NLL, ECE and Brier score before and
after it (``after`` is out of sample); the temperature stored is then fitted on all drawn voxels. The numbers
are also given inside the structures (voxels where the reference or the prediction is foreground), where the
errors are. ``RUN/calibration.json`` holds them; the ``calibration`` of ``best.pt`` too, and the predictor
applies the temperature to every probability and uncertainty map (see ``docs/trust.md``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from medseg_attn.io.files import atomic_write_text
from medseg_attn.training.calibration import apply_temperature, calibration_metrics, fit_temperature
from medseg_attn.training.checkpoint import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["calibrate_run", "sample_voxels"]


def sample_voxels(predictor: Any, dataset: Any, max_voxels: int = 400_000, seed: int = 0,
                  ignore: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) uncalibrated probabilities and (N,) reference classes of voxels drawn from every case (never a voxel
    labelled ``ignore``: sparse labels)."""
    generator = torch.Generator().manual_seed(seed)
    per_case = max(1, max_voxels // max(1, len(dataset)))
    probabilities, targets = [], []
    for index in range(len(dataset)):
        item = dataset[index]
        item = item[0] if isinstance(item, list) else item
        p = predictor.infer(item["image"], calibrated=False).cpu()  # (K, *S)
        p = p.reshape(p.shape[0], -1).T
        label = torch.as_tensor(item["label"][0]).reshape(-1).long().cpu()
        chosen = torch.randperm(label.numel(), generator=generator)
        if ignore is not None:  # unannotated voxels have no reference class
            chosen = chosen[label[chosen] != ignore]
        chosen = chosen[:per_case]
        probabilities.append(p[chosen].float())
        targets.append(label[chosen])
    return torch.cat(probabilities), torch.cat(targets)


def calibrate_run(predictor: Any, dataset: Any, checkpoint: Path, output: Path, seed: int = 0,
                  ignore: int | None = None) -> dict[str, Any] | None:
    """Fit the temperature of ``checkpoint``'s network on ``dataset`` and store it (see the module docstring).

    Returns:
        The ``calibration`` record, or None without validation cases.
    """
    if dataset is None or not len(dataset) or not checkpoint.exists():
        return None
    saved = load_checkpoint(checkpoint)
    predictor.network.load_state_dict(saved.model)  # the best epoch's weights
    probabilities, targets = sample_voxels(predictor, dataset, seed=seed, ignore=ignore)
    if not len(targets):
        return None
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed + 1))
    fit_half, test_half = order[: len(order) // 2], order[len(order) // 2:]
    temperature_half = fit_temperature(probabilities[fit_half], targets[fit_half])
    temperature = fit_temperature(probabilities, targets)

    def report(indices: torch.Tensor, t: float) -> dict[str, Any]:
        p = apply_temperature(probabilities[indices].clone(), t, dim=1)
        inside = (targets[indices] > 0) | (p.argmax(1) > 0)
        return {**calibration_metrics(p, targets[indices]),
                "structures": calibration_metrics(p[inside], targets[indices][inside]) if inside.any() else None}

    record = {"temperature": round(temperature, 6), "method": "temperature scaling (LBFGS on log T, NLL)",
              "cases": len(dataset), "voxels": len(targets),
              "held_out_half": {"temperature": round(temperature_half, 6), "before": report(test_half, 1.0),
                                "after": report(test_half, temperature_half)},
              "all_voxels": {"before": report(order, 1.0), "after": report(order, temperature)}}
    save_checkpoint({**saved, "calibration": record}, checkpoint)
    atomic_write_text(output / "calibration.json", json.dumps(record, indent=1) + "\n")
    before, after = record["held_out_half"]["before"], record["held_out_half"]["after"]
    logger.info("calibration: temperature %.3f; held-out voxels NLL %.4f -> %.4f, ECE %.4f -> %.4f, Brier %.4f -> "
                "%.4f", temperature, before["nll"], after["nll"], before["ece"], after["ece"], before["brier"],
                after["brier"])
    return record
