"""Arguments that several ``medseg-attn`` commands share (segmentation and classification training)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_train_arguments(parser: argparse.ArgumentParser, *, config_help: str, data_help: str,
                        set_example: str) -> None:
    """``--config --data --output --minutes --epochs --set --resume --device`` of a training command."""
    parser.add_argument("--config", type=Path, help=config_help)
    parser.add_argument("--data", help=data_help)
    parser.add_argument("--output", type=Path, required=True, help="run folder for checkpoints, logs and config")
    parser.add_argument("--minutes", type=float, help="wall-clock budget for training (sets train.minutes)")
    parser.add_argument("--epochs", type=int, help="maximum epochs (sets train.max_epochs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key, e.g. --set {set_example} (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --output from checkpoints/last.pt with its saved config")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
