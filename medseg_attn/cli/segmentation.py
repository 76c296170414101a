"""``medseg-attn plan|train|predict|inspect|evaluate|demo``: the segmentation commands.

``add_parsers(commands)`` adds them to the top-level sub-parsers; ``RUNNERS`` maps each to its function. Library
errors propagate to :func:`medseg_attn.cli.app.main`, which turns them into one line and an exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medseg_attn.cli.arguments import (
    add_dataset_arguments,
    add_demo_arguments,
    add_train_arguments,
    train_config_from_args,
)
from medseg_attn.cli.cv import add_train_cv_arguments, is_cv_request, run_cv_train
from medseg_attn.cli.lesions import add_lesion_arguments, lesion_options
from medseg_attn.cli.preprocess import cache_option, with_cache
from medseg_attn.errors import UserError

__all__ = ["EXAMPLES", "RUNNERS", "add_parsers"]

EXAMPLES = {
    "plan": """examples:
  medseg-attn plan --data Task09_Spleen/dataset.json
  medseg-attn plan --data Task09_Spleen --output plan.json --device cuda
  medseg-attn plan --config configs/ct_spleen.yaml --data Task09_Spleen --set data.patch_size=auto

prints the plan (target spacing, coarsened up to 2x when the budget's patch would cover less than 25 % of the
median case; patch and batch size within the voxel budget, normalisation, mask use; each value from the plan or
from the config) and writes it as JSON with the dataset fingerprint; train does the same at
its start (RUN/plan.json). See docs/preprocessing.md""",
    "train": """examples:
  medseg-attn train --data Task09_Spleen/dataset.json --output runs/spleen --minutes 30
  medseg-attn train --config configs/ct_spleen.yaml --output runs/spleen --set train.lr=1e-3
  medseg-attn train --config configs/ct_spleen.yaml --output runs/spleen --set model.attention=false
  medseg-attn train --output runs/spleen --resume --minutes 60
  torchrun --nproc_per_node=4 -m medseg_attn.cli train --config configs/ct_spleen.yaml --output runs/spleen
  medseg-attn train --data Task09_Spleen --folds 5 --output runs/spleen_cv --minutes 10   # 5-fold CV, 10 min/fold
  medseg-attn train --data Task09_Spleen --folds 5 --fold 2 --output runs/spleen_cv   # one fold (one per job)
  medseg-attn train --data NewTask --init-from runs/spleen --output runs/new --minutes 10  # fine-tune

under torchrun (DDP, see docs/scaling.md) train.batch_size is per process and rank 0 writes the run folder""",
    "predict": """examples:
  medseg-attn predict --model runs/spleen --input imagesTs/ --output predictions/
  medseg-attn predict --model runs/spleen/checkpoints/best.pt --input a.nii.gz b.nii.gz --output out/ --tta
  medseg-attn predict --model runs/liver --input dicom/patient_017/ --output out/ --output-format both
  medseg-attn predict --model runs/liver --input export/ --output out/ --series-uid 1.2.840.113619.2.55.3
  medseg-attn predict --model runs/spleen --input imagesTs/ --output out/ --attention-maps --uncertainty
  medseg-attn predict --model runs/fold0 runs/fold1 runs/fold2 --input imagesTs/ --output out/ --uncertainty

explanation maps (see docs/explainability.md): --attention-maps writes OUT/<case>_attention_<level>.nii.gz per
attention level (level0 = finest), --uncertainty OUT/<case>_uncertainty.nii.gz and two report.csv columns; both
lie on the input's grid with values in [0, 1], and either adds OUT/<case>_overlay.png

exit codes: 0 every case done (or skipped as existing), 1 some case failed (see OUT/failures.csv),
2 bad usage or model (before any case ran)""",
    "inspect": """examples:
  medseg-attn inspect case_017.nii.gz
  medseg-attn inspect dicom/patient_017/            # the series in the folder, then the volume
  medseg-attn inspect export/ --series-uid 1.2.840.113619.2.55.3""",
    "evaluate": """examples:
  medseg-attn evaluate --pred predictions/ --label labelsTs/ --output evaluation/ --labels dataset.json
  medseg-attn evaluate --pred predictions/ --label labelsTs/ --output evaluation/ --lesions
  medseg-attn evaluate --pred p/ --label l/ --output e/ --labels 1=metastasis --lesions metastasis \\
      --lesion-overlap iou:0.1 --min-lesion-volume 0.01

--lesions adds lesions.csv (per case and structure: reference_lesions, predicted_lesions, true_positives,
false_positives, false_negatives, lesion_f1, lesionwise_dice, lesionwise_hd95) and lesion_pairs.csv (one row per
lesion: matched, missed or false_positive, with both volumes, Dice and HD95); see docs/lesions.md""",
    "demo": """examples:
  medseg-attn demo --output demo_out            # about 7 minutes on a 2-core CPU
  medseg-attn demo --output demo_out --minutes 2 --baseline""",
}



def add_parsers(command) -> None:
    """Add the segmentation commands through ``command(name, help) -> ArgumentParser`` (see cli.main)."""
    plan = command("plan", "fingerprint a dataset and print the plan training would use (spacing, patch, "
                           "normalisation)")
    add_dataset_arguments(plan, config_help="YAML config whose values override the plan's",
                          set_example="data.patch_size=[96,96,64]")
    plan.add_argument("--output", type=Path, default=Path("plan.json"), help="where to write the plan (plan.json)")
    plan.add_argument("--device", default="cpu",
                      help="cpu (default) or cuda: which voxel budget the patch and batch size must fit")
    cache_option(plan)
    train = command("train", "train a segmentation network on a labelled dataset")
    add_train_arguments(train, config_help="YAML config (see configs/ and docs/configuration.md)",
                        data_help="dataset.json (MSD layout), a folder holding one, or an nnU-Net raw folder "
                                  "(imagesTr/, labelsTr/); sets data.dataset", set_example="train.lr=0.001")
    cache_option(train)
    add_train_cv_arguments(train)

    predict = command("predict", "segment volumes with a trained model; outputs keep each input's exact geometry")
    predict.add_argument("--model", required=True, nargs="+",
                         help="run folder (uses checkpoints/best.pt), a cross-validation run folder (its folds as an "
                              "ensemble, with its postprocessing), a .pt checkpoint, a MONAI bundle medseg-attn "
                              "exported, or an exported .onnx (with --engine onnxruntime); several: an ensemble "
                              "(class probabilities averaged; models trained with the same classes and preprocessing)")
    predict.add_argument("--folds", type=int, nargs="+", metavar="K",
                         help="with a cross-validation run as --model: ensemble only these folds (default all; "
                              "refused with an exported .onnx, which holds every fold it was exported with)")
    predict.add_argument("--input", nargs="+", required=True,
                         help="image files (NIfTI, NRRD, MHA/MHD, multi-frame DICOM), DICOM series folders, and "
                              "folders of these (a folder's sub-folders are DICOM series)")
    predict.add_argument("--output", type=Path, required=True,
                         help="folder for <case>.nii.gz label maps, report.csv, failures.csv, report.html (the "
                              "QC report: cases ranked for review) and run.json (versions, model and input "
                              "checksums, arithmetic, command line, outcome; see docs/trust.md); never an input "
                              "folder or the model's own folder (RUN/predictions is fine)")
    predict.add_argument("--output-format", default="nifti", metavar="FORMATS",
                         help="nifti (default; with labels.itksnap.txt and labels.ctbl label tables), dicom-seg "
                              "(<case>.seg.dcm for DICOM series inputs, NIfTI for other inputs), seg-nrrd "
                              "(<case>.seg.nrrd, a 3D Slicer segmentation with named, coloured segments), rtstruct "
                              "(<case>.rtstruct.dcm, a DICOM RT Structure Set of contours, DICOM series inputs only; "
                              "structures not found are left out and listed in report.csv); a comma list such as "
                              "nifti,rtstruct; both = nifti,dicom-seg; all = every format")
    predict.add_argument("--engine", choices=["torch", "onnxruntime"], default="torch",
                         help="torch (default), or onnxruntime: run an exported .onnx file given as --model "
                              "(pip install 'medseg-attn[onnx]'; CPU only: --device cuda and --folds are refused); "
                              "a .onnx --model implies it")
    predict.add_argument("--series-uid", help="the SeriesInstanceUID to read from DICOM folders holding several "
                                              "series (default: each series is its own case)")
    predict.add_argument("--resample-uneven", action="store_true",
                         help="interpolate DICOM series with missing slices or uneven slice spacing onto a regular "
                              "grid (default: report them as failed cases)")
    predict.add_argument("--channels", type=lambda text: tuple(text.split(",")), metavar="NAME,NAME",
                         help="the model's channels (its dataset.json channel_names, e.g. T1,FLAIR; see inspect) the "
                              "inputs hold, in the order of their _0000, _0001 ... files; the others are filled as "
                              "missing sequences (docs/inputs.md); default: every channel")
    predict.add_argument("--volume-index", type=int,
                         help="for 4D images (X, Y, Z, T): the volume to segment with a single-channel model")
    predict.add_argument("--tta", action="store_true", help="average over flips of every axis (slower, smoother)")
    predict.add_argument("--overlap", type=float, help="sliding-window overlap in [0, 1) (default: the model's)")
    predict.add_argument("--sw-batch-size", type=int, help="windows per forward pass")
    predict.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                         help="arithmetic of the network's forward pass (default: the model's inference.precision, "
                              "auto = fp16 on CUDA; on a CPU the same in every run on a machine: bf16 with AMX, fp32 "
                              "without bf16 instructions, else a probe run once per machine and cached in "
                              "~/.cache/medseg-attn (bf16 when >= 1.3x faster); OUT/run.json records it); "
                              "fp32 for bit-for-bit reproducible results across machines")
    predict.add_argument("--probabilities", action="store_true",
                         help="also write <case>_probabilities.nii.gz (4D: one channel per class)")
    predict.add_argument("--attention-maps", action="store_true",
                         help="also write OUT/<case>_attention_<level>.nii.gz: how much attention each voxel receives "
                              "at each attention level (summed over queries, mean over heads, maximum 1), on the "
                              "input's grid; needs a model trained with attention")
    predict.add_argument("--attention-heads", action="store_true",
                         help="with --attention-maps (implied): keep the heads apart, one volume per head on a "
                              "4th axis")
    predict.add_argument("--uncertainty", action="store_true",
                         help="also write OUT/<case>_uncertainty.nii.gz: entropy of the class probabilities averaged "
                              "over TTA flips and ensemble models, divided by log(classes) (0 certain .. 1 uniform); "
                              "report.csv gets each case's mean, overall and inside the predicted foreground")
    predict.add_argument("--statistics", action="store_true",
                         help="also write OUT/<case>_statistics.json and OUT/statistics.csv: per structure voxels, "
                              "volume (ml), intensity mean/sd/percentiles (HU for CT models), connected components, "
                              "bounding box (mm), mean uncertainty (see docs/statistics.md)")
    predict.add_argument("--lesion-structures", nargs="+", default=(), metavar="NAME",
                         help="classes whose connected components (26-connected) are lesions, besides those the "
                              "model's dataset.json named (lesion_structures): report.csv and report.html get each "
                              "case's lesion count and total lesion volume; with --statistics also "
                              "OUT/<case>_lesions.csv and OUT/lesion_statistics.csv, one row per lesion (volume, "
                              "centroid in RAS mm, extent, mean intensity per channel, mean probability and "
                              "uncertainty; see docs/statistics.md)")
    predict.add_argument("--instances", action="store_true",
                         help="also write OUT/<case>_instances.nii.gz: each lesion of the lesion structures its own "
                              "value (its number in <case>_lesions.csv; uint16, so at most 65,535 lesions per case: "
                              "a case with more fails and nothing of it is written)")
    predict.add_argument("--review-config", type=Path,
                         help="YAML file of review-flag settings for OUT/report.html (MAD factors, expected volumes "
                              "per structure, fragmentation limits ...; see docs/statistics.md)")
    predict.add_argument("--review-set", action="append", default=[], metavar="KEY=VALUE",
                         help="override one review setting, e.g. volume_mad_k=5 (repeatable)")
    predict.add_argument("--overwrite", action="store_true",
                         help="redo cases whose output already exists; also predict into a folder another model "
                              "filled (refused without it)")
    predict.add_argument("--device", default="auto",
                         help="auto (default: CUDA, else Apple MPS where torch offers it, else CPU), cpu, cuda, "
                              "cuda:N, mps")

    inspect = command("inspect", "show what the reader sees in a volume, DICOM folder or folder of volumes, or the "
                                 "model card of a run folder, checkpoint, export or bundle")
    inspect.add_argument("path", type=Path, help="a NIfTI/NRRD/MHA/DICOM file, a DICOM folder or a folder of volumes; "
                                                 "or a run folder, .pt checkpoint, .onnx/.ts export or MONAI bundle")
    inspect.add_argument("--series-uid", help="the series to describe in a DICOM folder holding several")
    inspect.add_argument("--resample-uneven", action="store_true",
                         help="show a DICOM series with missing slices or uneven spacing as resampled for prediction")

    evaluate = command("evaluate", "Dice, HD95 and surface Dice per case and class, with a summary and box plot")
    evaluate.add_argument("--pred", type=Path, required=True, help="folder of predicted label maps")
    evaluate.add_argument("--label", type=Path, required=True, help="folder of reference label maps (same names)")
    evaluate.add_argument("--output", type=Path, required=True, help="folder for metrics.csv, summary.json, PNG")
    evaluate.add_argument("--labels", help="class names: a dataset.json, a run folder or checkpoint, or "
                                           "'1=liver,2=spleen' (default: label_<k>); a label named ignore (sparse "
                                           "labels) marks unannotated voxels, left out of every metric")
    evaluate.add_argument("--tolerance", type=float, default=1.0, help="surface Dice tolerance in mm (default 1)")
    evaluate.add_argument("--include-background", action="store_true", help="also score class 0")
    evaluate.add_argument("--statistics", action="store_true",
                          help="also write statistics.csv: volume, components, bounding box per case, structure and "
                               "source (reference and prediction; see docs/statistics.md)")
    add_lesion_arguments(evaluate)

    demo = command("demo", "build a brain-tissue dataset from the shipped MNI152 MRI, train, predict, evaluate")
    add_demo_arguments(demo, output_help="folder for the dataset, run, predictions, report", minutes=5.0,
                       minutes_help="training budget in minutes", attention_help="attention in the skips",
                       baseline_help="also train the matched U-Net without attention in the same budget and compare "
                                     "(--task lesions: and MONAI's UNet too)",
                       config_name="demo.yaml")
    demo.add_argument("--task", choices=["brain", "lesions"], default="brain",
                      help="brain: grey/white matter on T1 MRI (default); lesions: white-matter lesions on two-channel "
                           "MRI (T1, FLAIR) with nested regions, scored lesion by lesion (docs/lesions.md)")
    demo.add_argument("--train-cases", type=int, default=20, help="training cases to generate (default 20)")
    demo.add_argument("--test-cases", type=int, default=4, help="held-out cases to generate (default 4)")
    demo.add_argument("--stress-cases", type=int, default=1,
                      help="unseen deformations for the stress test (13 acquisition variants and 6 failure modes "
                           "each, with the failure signals judged as detectors; 0 = none; default 1)")


def _run_train(args: argparse.Namespace) -> int:
    from medseg_attn.segmentation.workflows.train import train

    config = with_cache(train_config_from_args(args, "data.dataset"), args)
    if args.init_from:
        config = config.replace(train={"init_from": str(Path(args.init_from).expanduser().resolve())})
    if is_cv_request(args):
        return run_cv_train(args, config)
    if args.fold is not None:
        raise UserError("--fold K: give --folds N too (the number of folds of the cross-validation)")
    result = train(config, args.output, resume=args.resume, progress=not args.quiet)
    if args.resume and result.epochs_run == 0:
        print(f"nothing trained: the run already has {result.epochs} epochs and {result.seconds / 60:.1f} min "
              f"(stopped: {result.stopped}); its checkpoints are unchanged; raise --minutes or --epochs to train on; "
              f"run: {result.run_dir}")
        return 0
    best = f"{result.best_metric:.4f} at epoch {result.best_epoch}" if result.best_metric is not None else "n/a"
    print(f"trained {result.epochs} epochs ({result.steps} steps, {result.seconds / 60:.1f} min, stopped: "
          f"{result.stopped}); best validation Dice {best}; run: {result.run_dir}")
    return 0


def _run_plan(args: argparse.Namespace) -> int:
    from medseg_attn.config import load_config
    from medseg_attn.segmentation.data.dataset_plan import plan_dataset
    from medseg_attn.segmentation.data.planning import describe_plan, save_plan

    overrides = list(args.overrides) + ([f"data.dataset={args.data}"] if args.data else [])
    planned = plan_dataset(with_cache(load_config(args.config, overrides), args), args.device, progress=not args.quiet)
    print(describe_plan(planned.plan))
    print(f"plan written to {save_plan(planned.plan, args.output)}")
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from medseg_attn.segmentation.workflows.predict import PredictOptions, predict_batch

    names = ("folds", "engine", "device", "tta", "overlap", "sw_batch_size", "precision", "probabilities", "overwrite",
             "output_format", "series_uid", "resample_uneven", "volume_index", "attention_maps", "attention_heads",
             "uncertainty", "statistics", "lesion_structures", "instances", "review_config", "review_set", "channels")
    options = PredictOptions(model=args.model, inputs=args.input, output=args.output, progress=not args.quiet,
                             **{name: getattr(args, name) for name in names})
    result = predict_batch(options)
    for record in result.failed if result.is_main else []:
        print(f"medseg-attn: failed: {record['case']}: {record['error']}", file=sys.stderr)
    print(result.summary())
    return 1 if result.failed else 0


def _run_inspect(args: argparse.Namespace) -> int:
    from medseg_attn.cli.export import model_card_lines
    from medseg_attn.io.describe import describe

    card = model_card_lines(args.path)  # a run folder, checkpoint, export or bundle: its model card
    print("\n".join(card if card is not None else describe(args.path, args.series_uid, args.resample_uneven)))
    return 0


def _labels_from(spec: str | None) -> dict[int, str] | None:
    if spec is None:
        return None
    path = Path(spec)
    if path.exists():
        if path.is_dir() and (path / "dataset.json").exists() or path.suffix == ".json":
            from medseg_attn.segmentation.data.datasets import load_dataset

            return load_dataset(path).labels
        from medseg_attn.model_layout import find_checkpoint
        from medseg_attn.training.checkpoint import load_checkpoint

        return load_checkpoint(find_checkpoint(path)).labels
    labels = {0: "background"}
    for part in spec.split(","):
        key, _, name = part.partition("=")
        if not key.strip().isdigit() or not name.strip():
            raise UserError(f"--labels {spec!r}: expected a dataset.json, a run folder, or '1=liver,2=spleen'")
        if int(key) in labels and int(key) != 0:
            raise UserError(f"--labels {spec!r}: class {int(key)} is named twice ({labels[int(key)]}, "
                             f"{name.strip()}); give each class once")
        labels[int(key)] = name.strip()
    from medseg_attn.segmentation.data.datasets import check_class_names

    check_class_names(labels, f"--labels {spec!r}")
    return labels


def _regions_from(spec: str | None) -> object:
    """The regions of ``--labels`` when it names a region dataset.json or a region model (None otherwise)."""
    path = Path(spec) if spec is not None else None
    if path is None or not path.exists():
        return None
    from medseg_attn.segmentation.measures.regions import Regions

    if path.is_dir() and (path / "dataset.json").exists() or path.suffix == ".json":
        from medseg_attn.segmentation.data.datasets import load_dataset

        return load_dataset(path).regions
    from medseg_attn.model_layout import find_checkpoint
    from medseg_attn.training.checkpoint import load_checkpoint

    return Regions.from_dict(load_checkpoint(find_checkpoint(path)).regions)


def _run_evaluate(args: argparse.Namespace) -> int:
    from medseg_attn.segmentation.evaluation.evaluate import evaluate_folders

    summary = evaluate_folders(args.pred, args.label, args.output, labels=_labels_from(args.labels),
                               tolerance_mm=args.tolerance, include_background=args.include_background,
                               progress=not args.quiet, statistics=args.statistics, lesions=lesion_options(args),
                               regions=_regions_from(args.labels))
    lines = [f"{name}: Dice {values['dice']['mean']:.4f}" for name, values in summary["classes"].items()]
    for name, values in summary.get("lesions", {}).get("structures", {}).items():
        lines.append(f"{name} lesions: F1 {values['lesion_f1']:.4f} ({values['true_positives']} found, "
                     f"{values['false_negatives']} missed, {values['false_positives']} false), lesion-wise Dice "
                     f"{values['lesionwise_dice']['mean']:.4f}")
    regions = summary.get("regions", {})
    lines += [f"{name} region: Dice {values['dice']['mean']:.4f}" for name, values in regions.items()]
    print(f"{summary['cases']} case(s); " + "; ".join(lines) + f" -> {args.output}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from medseg_attn.io.files import check_output_location
    from medseg_attn.io.manifest import recorded_run
    from medseg_attn.segmentation.workflows.demo import run_demo

    check_output_location(args.output, [], folder=True)
    with recorded_run(args.output, "demo"):  # run.json; each sub-folder (run, predictions ...) has its own
        if args.task == "lesions":
            from medseg_attn.segmentation.workflows.lesion_demo import run_lesion_demo

            report = run_lesion_demo(args.output, minutes=args.minutes, attention=args.attention == "on",
                                     baseline=args.baseline, train_cases=args.train_cases,
                                     test_cases=args.test_cases, seed=args.seed, overrides=args.overrides,
                                     progress=not args.quiet)
        else:
            report = run_demo(args.output, minutes=args.minutes, attention=args.attention == "on",
                              baseline=args.baseline, train_cases=args.train_cases, test_cases=args.test_cases,
                              seed=args.seed, overrides=args.overrides, progress=not args.quiet,
                              stress_cases=args.stress_cases)
    print(report.read_text())
    return 0



RUNNERS = {"plan": _run_plan, "train": _run_train, "predict": _run_predict, "evaluate": _run_evaluate,
           "demo": _run_demo, "inspect": _run_inspect}


def register_cli(subparsers: argparse._SubParsersAction) -> dict:
    """Add the segmentation commands (with ``cv`` and ``preprocess``) to ``medseg-attn``; their runners by name."""
    from medseg_attn.cli import cv, preprocess
    from medseg_attn.cli.arguments import command_adder

    for module in (sys.modules[__name__], cv, preprocess):
        module.add_parsers(command_adder(subparsers, module.EXAMPLES))
    return {**RUNNERS, **cv.RUNNERS, **preprocess.RUNNERS}
