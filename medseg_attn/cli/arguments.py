"""Arguments that several ``medseg-attn`` commands share (segmentation and classification training)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def command_adder(subparsers: argparse._SubParsersAction, examples: dict[str, str]):
    """``command(name, help) -> ArgumentParser``: adds a ``medseg-attn`` command with ``help`` as its description and
    its ``examples`` entry as its epilog (what every command module's ``add_parsers`` takes)."""

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, help=help_text, description=help_text, epilog=examples.get(name),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)

    return command


def add_dataset_arguments(parser: argparse.ArgumentParser, *, config_help: str, set_example: str) -> None:
    """``--data --config --set`` of a command that reads a dataset without training it (plan, preprocess)."""
    parser.add_argument("--data",
                        help="dataset.json, a folder holding one, or an nnU-Net raw folder; sets data.dataset")
    parser.add_argument("--config", type=Path, help=config_help)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key, e.g. --set {set_example} (repeatable)")


def add_train_arguments(parser: argparse.ArgumentParser, *, config_help: str, data_help: str,
                        set_example: str) -> None:
    """``--config --data --output --minutes --epochs --set --resume --device`` of a training command."""
    parser.add_argument("--config", type=Path, help=f"{config_help}; or the name of a shipped config, e.g. ct_spleen "
                                                    "(medseg-attn config list)")
    parser.add_argument("--data", help=data_help)
    parser.add_argument("--output", type=Path, required=True, help="run folder for checkpoints, logs and config")
    parser.add_argument("--minutes", type=float, help="wall-clock budget for training (sets train.minutes)")
    parser.add_argument("--epochs", type=int, help="maximum epochs (sets train.max_epochs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key, e.g. --set {set_example} (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --output from checkpoints/last.pt with its saved config")
    parser.add_argument("--device", help="auto (default: CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N, mps")


def train_config_from_args(args: argparse.Namespace, data_key: str, kind: type | None = None) -> Any:
    """The run configuration a training command asks for: ``--config`` (with ``--resume`` and no ``--config``,
    the run's saved ``config.yaml``), then ``--data`` (into ``data_key``), ``--minutes``, ``--epochs``,
    ``--device`` and every ``--set``.

    Raises:
        FileNotFoundError: ``--resume`` on a folder without a saved config.
    """
    from medseg_attn.config import Config, load_config

    overrides = list(args.overrides)
    config_path = args.config
    if args.resume and config_path is None:
        config_path = args.output / "config.yaml"
        if not config_path.exists():
            raise FileNotFoundError(f"{config_path}: no saved config; is {args.output} a run folder?")
    # taken as typed, never parsed as YAML: `--data 2024` or `--data null` is a folder name
    literals: dict[str, Any] = {data_key: args.data} if args.data else {}
    if args.minutes is not None:
        literals["train.minutes"] = args.minutes  # nan, inf and negatives are refused by the config validation
    if args.epochs is not None:
        literals["train.max_epochs"] = args.epochs
    if args.device:
        literals["train.device"] = args.device
    return load_config(config_path, overrides, kind=kind or Config, literals=literals)


def add_demo_arguments(parser: argparse.ArgumentParser, *, output_help: str, minutes: float, minutes_help: str,
                       attention_help: str, baseline_help: str, config_name: str) -> None:
    """``--output --minutes --attention --baseline --seed --set`` of a ``demo`` command."""
    parser.add_argument("--output", type=Path, required=True, help=output_help)
    parser.add_argument("--minutes", type=float, default=minutes, help=f"{minutes_help} (default {minutes:g})")
    parser.add_argument("--attention", choices=["on", "off"], default="on", help=f"{attention_help} (default on)")
    parser.add_argument("--baseline", action="store_true", help=baseline_help)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a key of the demo config (configs/{config_name})")
