"""``medseg-attn predict`` as one workflow: options in, a batch of cases predicted, reports written.

The command line, the demo, scripts and benchmarks all call :func:`predict_batch` with a frozen
:class:`PredictOptions`, so they get the same outputs (``report.csv``, ``report.html``, ``run.json``, the formats
asked for). The order, once per batch: inputs named on the command line checked (size) and the output folder kept
away from the models read; the model loaded (PyTorch runs, CV runs, bundles, checkpoints, or an ONNX file);
attention support checked when maps are asked for; the review set up; cases collected and the output folder
checked against them; under ``torchrun`` each rank predicts its share and rank 0 writes the merged reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg_attn.errors import UserError
from medseg_attn.io.layout import OutputLayout
from medseg_attn.io.limits import check_file_size
from medseg_attn.model_layout import check_output_beside_models
from medseg_attn.runtime.device import resolve_device
from medseg_attn.runtime.distributed import Distributed, setup, shard
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.model.loading import ENGINES, check_onnx_options, is_onnx, load_model
from medseg_attn.segmentation.outputs.lesions import LesionOutputs, lesion_structures
from medseg_attn.segmentation.qc.qc_report import Review
from medseg_attn.segmentation.qc.review import load_review_settings
from medseg_attn.segmentation.workflows.batch import check_output_dir, collect_cases, predict_files, write_reports

logger = logging.getLogger(__name__)

__all__ = ["BatchResult", "PredictOptions", "load_predictor", "predict_batch"]

@dataclass(frozen=True)
class PredictOptions:
    """Everything one ``predict`` batch needs (the ``predict`` options of ``docs/cli.md``, by the same names)."""

    model: tuple[str | Path, ...]
    inputs: tuple[str | Path, ...]
    output: Path
    folds: tuple[int, ...] | None = None
    engine: str = "torch"
    device: str = "auto"
    tta: bool | None = None
    overlap: float | None = None
    sw_batch_size: int | None = None
    precision: str | None = None
    probabilities: bool = False
    overwrite: bool = False
    output_format: str = "nifti"
    series_uid: str | None = None
    resample_uneven: bool = False
    volume_index: int | None = None
    attention_maps: bool = False
    attention_heads: bool = False
    uncertainty: bool = False
    statistics: bool = False
    lesion_structures: tuple[str, ...] = ()  # besides the model's own (dataset.json lesion_structures)
    channels: tuple[str, ...] | None = None  # the model's channels the inputs hold, in file order (None: all)
    instances: bool = False
    review_config: str | Path | None = None
    review_set: tuple[str, ...] = ()
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", tuple(self.model))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "output", Path(self.output))
        object.__setattr__(self, "lesion_structures", tuple(self.lesion_structures or ()))
        if self.engine not in ENGINES:
            raise UserError(f"--engine {self.engine}: expected one of {', '.join(ENGINES)}")
        if self.volume_index is not None and self.volume_index < 0:
            raise UserError(f"--volume-index {self.volume_index}: expected 0 or more")

    @property
    def inference(self) -> dict[str, Any]:
        """Overrides of the model's saved inference settings (None: the model's own)."""
        return {"tta": self.tta or None, "overlap": self.overlap, "sw_batch_size": self.sw_batch_size,
                "precision": self.precision}


@dataclass
class BatchResult:
    """What a batch did: one record per case (``report.csv``'s rows) and where the outputs are."""

    records: list[dict[str, Any]]
    output: Path
    is_main: bool = True  # rank 0 of a torchrun job (or no torchrun): the process that speaks
    failed: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.failed = [r for r in self.records if r["status"] == "failed"]

    @property
    def done(self) -> int:
        return sum(r["status"] == "ok" for r in self.records)

    @property
    def skipped(self) -> int:
        return sum(r["status"].startswith("skipped") for r in self.records)

    def summary(self) -> str:
        text = f"predicted {self.done} case(s), skipped {self.skipped} existing"
        if self.failed:
            text += f", failed {len(self.failed)} (see {OutputLayout(self.output).failures_csv})"
        return f"{text} -> {self.output} (review: {OutputLayout(self.output).report_html})"


def load_predictor(options: PredictOptions, dist: Distributed | None = None) -> Predictor:
    """The model of ``options`` (:func:`~medseg_attn.segmentation.model.loading.load_model`) on this rank's device."""
    device = resolve_device(options.device)
    if dist is not None:
        device = dist.device(device)
    folds = None if options.folds is None else list(options.folds)
    model = load_model(list(options.model), folds, engine=options.engine, device=device, **options.inference)
    return Predictor.from_model(model, device, options.channels)


def predict_batch(options: PredictOptions) -> BatchResult:
    """Predict every input of ``options`` into ``options.output`` (under ``torchrun``, shared among the ranks).

    Raises:
        UserError / FileNotFoundError: bad options, model, inputs or output folder (before any case runs).
    """
    for item in options.inputs:  # an oversized file named on the command line: one line before the model loads
        check_file_size(Path(item).expanduser())
    check_output_beside_models(options.output, options.model)  # never into the run, bundle or checkpoint read
    if is_onnx(options.model, options.engine):  # --folds, --device cuda: refused, before the device is looked at
        check_onnx_options(options.model[0], options.folds, options.device)
    dist = setup(resolve_device(options.device))  # under torchrun every rank predicts its share, on its own GPU
    predictor = load_predictor(options, dist)
    lesions = _lesion_outputs(options, predictor)
    review = Review.for_predictor(predictor, load_review_settings(options.review_config, options.review_set),
                                  statistics=options.statistics,
                                  lesion_structures=tuple(lesions.structures.values()) if lesions else ())
    cases = collect_cases(options.inputs, predictor.in_channels, options.series_uid, predictor.channels)
    check_output_dir(cases, options.output, options.inputs)
    records = predict_files(predictor, shard(cases, dist), options.output, probabilities=options.probabilities,
                            overwrite=options.overwrite, progress=options.progress,
                            output_format=options.output_format, resample_uneven=options.resample_uneven,
                            volume_index=options.volume_index, reports=not dist.enabled,
                            attention_maps=options.attention_maps, attention_heads=options.attention_heads,
                            uncertainty=options.uncertainty, review=review, lock=not dist.enabled,
                            lesions=lesions)
    if dist.enabled:  # rank 0 writes the merged reports, every rank returns the same records
        order = {case.name: index for index, case in enumerate(cases)}
        records = sorted((record for part in dist.gather(records) for record in part),
                         key=lambda record: order.get(record["case"], len(order)))
        if dist.is_main:
            write_reports(records, options.output, review)
    return BatchResult(records, options.output, dist.is_main)


def _lesion_outputs(options: PredictOptions, predictor: Predictor) -> LesionOutputs | None:
    """The lesion structures of the batch (the model's and ``--lesion-structures``) and what is written of them;
    None when there are none (and then ``--instances`` is refused)."""
    structures = lesion_structures(predictor.labels, (*predictor.lesion_structures, *options.lesion_structures))
    if not structures:
        if options.instances:
            raise UserError("--instances: the model names no lesion structures (dataset.json 'lesion_structures'); "
                            "name them with --lesion-structures NAME ...")
        return None
    return LesionOutputs(structures, table=options.statistics, instances=options.instances)
