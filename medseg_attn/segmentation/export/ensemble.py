"""A cross-validation run exported as one model: the fold ensemble in one TorchScript or ONNX network.

``medseg-attn export --model CV_RUN --format torchscript|onnx`` writes :class:`FoldEnsemble` over the folds'
networks: each fold's logits divided by its calibration temperature, softmaxed, the probabilities averaged, and
their log returned as the network's output. A softmax of that output gives the averaged probabilities back and its
argmax is the ensemble's label map, so the file drops in wherever a single network's logits went (``predict --model
FILE.onnx``, onnxruntime, MONAI's ``SlidingWindowInferer``). ``predict --model CV_RUN`` averages the same
probabilities but applies each fold's temperature after blending the overlapping windows, so the two agree where one
window covers a voxel and differ slightly where windows overlap (without temperatures: the same). The folds are
loaded as ``predict --model CV_RUN`` loads them (which checks that they share preprocessing, classes and input
channels); the metadata carries the first fold's preprocessing, labels and card, the folds it holds, and the run's
postprocessing (``postprocessing.json``), which ``predict`` applies to the ONNX file as it does to the run. A MONAI
bundle holds one medseg-attn checkpoint, so a CV run is exported as a bundle one fold at a time (``--model
CV_RUN/fold_0``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from medseg_attn.errors import UserError
from medseg_attn.networks.export import example_input, export_onnx, export_target, export_torchscript
from medseg_attn.segmentation.model.loading import load_model
from medseg_attn.segmentation.task import TASK
from medseg_attn.training.card import export_metadata
from medseg_attn.training.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["FoldEnsemble", "export_cv_run"]

class FoldEnsemble(nn.Module):
    """log(mean_k softmax(network_k(x) / T_k)): the folds' calibrated probabilities averaged, as log-probabilities.
    For a region model (``sigmoid``): logit(mean_k sigmoid(network_k(x))), whose sigmoid is the folds' mean."""

    def __init__(self, networks: list[nn.Module], temperatures: list[float], sigmoid: bool = False) -> None:
        super().__init__()
        self.members = nn.ModuleList(networks)
        self.sigmoid = bool(sigmoid)
        self.register_buffer("temperatures", torch.tensor(temperatures, dtype=torch.float32))
        self.divisor = max(int(getattr(network, "divisor", 1)) for network in networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, *S) -> (B, K, *S)
        total = None
        for index, network in enumerate(self.members):
            out = network(x)
            logits = out[0] if isinstance(out, (list, tuple)) else out  # (B, K, *S)
            if self.sigmoid:
                probabilities = torch.sigmoid(logits.float())
            else:
                probabilities = torch.softmax(logits.float() / self.temperatures[index], dim=1)
            total = probabilities if total is None else total + probabilities
        mean = (total / len(self.members)).clamp(1e-12, 1 - 1e-7)
        return torch.log(mean / (1 - mean)) if self.sigmoid else torch.log(mean)


def export_cv_run(run: str | Path, fmt: str, output: str | Path, folds: list[int] | None = None) -> Path:
    """Export the folds of the CV run ``run`` (all, or ``folds``) as one ensemble network.

    Raises:
        ValueError: ``fmt`` 'bundle' (one fold at a time), a fold without a checkpoint, folds trained differently,
            or an architecture export does not support.
    """
    run = Path(run)
    if fmt == "bundle":
        raise UserError(f"{run}: is a cross-validation run; a MONAI bundle holds one model: export one fold "
                         f"(--model {run / 'fold_0'}), or the fold ensemble as --format onnx or torchscript")
    # the folds as predict --model RUN loads them: their checkpoints, temperatures, postprocessing, and the check
    # that they share preprocessing, classes and input channels
    members = load_model(run, folds, device="cpu", precision="fp32")
    paths = [Path(source) for source in members.sources]
    if not all(hasattr(network, "divisor") for network in members.networks):
        raise UserError(f"{paths[0]}: export supports the attention_skip_unet architecture")
    temperatures = [float(t) for t in members.temperatures]
    ensemble = FoldEnsemble(list(members.networks), temperatures, sigmoid=members.regions is not None).eval()
    target = export_target(run, paths[0], fmt, output)
    first = load_checkpoint(paths[0])
    metadata = export_metadata(first, str(run), TASK)
    metadata["calibration"] = {"temperature": 1.0, "fold_temperatures": temperatures,
                               "note": "each fold's temperature is applied inside the ensemble network"}
    metadata["ensemble"] = {"run": str(run), "folds": [path.parent.parent.name for path in paths],
                            "checkpoints": [str(path) for path in paths],
                            "output": "logit of the folds' averaged region probabilities" if members.regions else
                            "log of the folds' averaged probabilities"}
    metadata["postprocessing"] = {str(index): rule.to_entry() for index, rule in members.postprocessing.items()}
    example = example_input(int(first.preprocessing["spatial_dims"]), int(first.in_channels), ensemble.divisor)
    writer = export_torchscript if fmt == "torchscript" else export_onnx
    writer(ensemble, example, target, metadata)
    logger.info("exported %s (%d folds) as %s: %s", run, len(paths), fmt, target)
    return target
