"""``medseg-attn export`` (TorchScript / ONNX / MONAI bundle), ``medseg-attn config list|show`` and the model card
that ``medseg-attn inspect`` prints for a run folder, checkpoint, export or bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg_attn.errors import UserError

__all__ = ["EXAMPLES", "RUNNERS", "add_parsers", "model_card_lines"]

EXAMPLES = {
    "export": """examples:
  medseg-attn export --model runs/spleen --format onnx --output spleen.onnx
  medseg-attn export --model runs/spleen --format torchscript --output spleen.ts
  medseg-attn export --model runs/spleen --format bundle --output spleen_bundle/
  medseg-attn export --model runs/spleen_cv --format onnx --output spleen_5folds.onnx   # a CV run: the fold ensemble
  medseg-attn predict --model spleen.onnx --engine onnxruntime --input imagesTs/ --output out/
  python -m monai.bundle run --config_file spleen_bundle/configs/inference.json --bundle_root spleen_bundle \\
      --dataset_dir imagesTs/ --output_dir out/

formats and what each carries over: docs/export.md""",
    "config": """examples:
  medseg-attn config list
  medseg-attn config show ct_spleen > my_spleen.yaml
  medseg-attn train --config ct_spleen --data Task09_Spleen --output runs/spleen""",
}


def add_parsers(command) -> None:
    """Add ``export`` and ``config`` through ``command(name, help) -> ArgumentParser`` (see cli.app)."""
    export = command("export", "export a trained model: TorchScript, ONNX or a MONAI bundle (docs/export.md)")
    export.add_argument("--model", required=True, help="run folder (uses checkpoints/best.pt) or a .pt checkpoint "
                                                       "(segmentation or classification); a cross-validation run "
                                                       "(train --folds): its folds as one ensemble network "
                                                       "(torchscript / onnx)")
    export.add_argument("--format", required=True, choices=["torchscript", "onnx", "bundle"],
                        help="torchscript (.ts) and onnx (.onnx): the network with dynamic batch and spatial sizes; "
                             "bundle: a MONAI bundle folder (segmentation models)")
    export.add_argument("--output", type=Path, required=True,
                        help="the file to write (.ts / .onnx added when it has no suffix; the other format's suffix is "
                             "refused), an existing folder to write <run name>.ts|.onnx inside, or the bundle "
                             "folder; never the checkpoint being exported or a file of its run folder")
    config = command("config", "list the shipped configs, or show one with its comments")
    config.add_argument("action", choices=["list", "show"], help="list: names and descriptions; show: print one")
    config.add_argument("name", nargs="?", help="the config to show, e.g. ct_spleen")


def _run_export(args: argparse.Namespace) -> int:
    from medseg_attn.model_layout import task_checkpoint
    from medseg_attn.registry import task_of
    from medseg_attn.training.checkpoint import load_checkpoint

    task = task_of(load_checkpoint(task_checkpoint(args.model)))
    written = task.export_model(args.model, args.format, args.output)
    print(f"exported {task.name} model as {args.format} -> {written}")
    return 0


def _run_config(args: argparse.Namespace) -> int:
    from medseg_attn.config.shipped import shipped_config_text, shipped_configs

    if args.action == "list":
        configs = shipped_configs()
        width = max(len(name) for name in configs)
        for name, description in configs.items():
            print(f"{name:<{width}}  {description}")
        return 0
    if not args.name:
        raise UserError("config show: give the config's name, e.g. `medseg-attn config show ct_spleen`")
    print(shipped_config_text(args.name), end="")
    return 0


def model_card_lines(path: Path) -> list[str] | None:
    """The model card of a run folder, checkpoint, ``.onnx`` / ``.ts`` export or bundle; None for anything else."""
    from medseg_attn.io.model_files import sniff_model
    from medseg_attn.model_layout import is_cv_run
    from medseg_attn.training.card import format_card, model_card

    path = Path(path)
    if is_cv_run(path):  # a cross-validation run: its folds, then the first one's card
        return _cv_run_lines(path)
    kind = sniff_model(path)
    model_suffix = path.suffix.lower() in (".onnx", ".ts", ".pt", ".pth")
    if kind == "torchscript" or kind == "onnx" and model_suffix:
        from medseg_attn.networks.export import read_metadata

        card = dict(read_metadata(path).get("card") or {})
        card["labels"] = {int(k): v for k, v in (card.get("labels") or {}).items()}
        card["colors"] = {int(k): v for k, v in (card.get("colors") or {}).items()}
        return format_card(card, str(path))
    if kind not in ("checkpoint", "run", "bundle") and not (model_suffix and path.is_file()):
        return None
    from medseg_attn.model_layout import find_checkpoint
    from medseg_attn.registry import task_of
    from medseg_attn.training.checkpoint import load_checkpoint

    path = find_checkpoint(path)
    checkpoint = load_checkpoint(path)
    return format_card(model_card(checkpoint, task_of(checkpoint)), str(path))


def _cv_run_lines(path: Path) -> list[str]:
    """A cross-validation run: its folds and what they are ready for, then the first trained fold's card."""
    from medseg_attn.model_layout import find_checkpoint, fold_dir, fold_states
    from medseg_attn.registry import task_of
    from medseg_attn.training.card import format_card, model_card
    from medseg_attn.training.checkpoint import load_checkpoint

    states = fold_states(path)
    names = ", ".join(f"fold_{k}" for k in states)
    missing = [f"fold_{k}" for k, state in states.items() if state == "missing"]
    started = [f"fold_{k}" for k, state in states.items() if state == "started"]
    trained = [k for k, state in states.items() if state != "missing"]
    if missing:  # predict and export refuse the run whole until every fold has a checkpoint
        line = (f"cross-validation run of {len(states)} folds ({names}), not complete: no checkpoint yet in "
                f"{', '.join(missing)} (medseg-attn train --output {path} --resume trains the rest); until then "
                f"`predict --model {path}` and `export --model {path}` refuse it")
        if trained:
            line += f"; `predict --model {path} --folds {' '.join(map(str, trained))}` uses the trained folds"
        lines = [line]
    else:
        lines = [f"cross-validation run of {len(states)} folds ({names}): `predict --model {path}` and `export "
                 f"--model {path}` use them as one ensemble"]
    if started:
        lines.append(f"not finished training (no finished.json): {', '.join(started)}; `medseg-attn cv {path}` "
                     f"waits for them")
    if not trained:
        return lines
    first = find_checkpoint(fold_dir(path, trained[0]))
    checkpoint = load_checkpoint(first)
    return [*lines, f"the card of fold_{trained[0]}:", *format_card(model_card(checkpoint, task_of(checkpoint)),
                                                                    str(first))]


RUNNERS = {"export": _run_export, "config": _run_config}
