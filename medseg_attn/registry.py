"""THE list of tasks, one line each: the module defining the task's ``TASK`` and the module adding its commands.

``medseg-attn`` takes its commands from here, ``export`` and the model card find a checkpoint's task here (see
"Adding a task" in docs/architecture.md). Tasks are named, not imported: a task package imports torch and MONAI,
and the CLI builds its parser without them. Arrows: cli -> registry -> tasks -> core.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medseg_attn.task import Task, TaskRegistry

__all__ = ["TASKS", "get_task", "register_task", "task_of"]

TASKS = TaskRegistry(
    ("medseg_attn.segmentation.task", "medseg_attn.cli.segmentation"),  # first: the untagged (oldest) task
    ("medseg_attn.classification.task", "medseg_attn.cli.classification"),
)


def register_task(task: Task | str, cli: str) -> None:
    """Add a task (a plug-in's): its commands join ``medseg-attn``, its checkpoints export and show their card.
    See :meth:`medseg_attn.task.TaskRegistry.register`."""
    TASKS.register(task, cli)


def get_task(name: str) -> Task:
    """The task called ``name``; a ValueError with a did-you-mean hint for an unknown name."""
    return TASKS.get(name)


def task_of(payload: Mapping[str, Any]) -> Task:
    """The task of a checkpoint payload or an export's metadata (without a ``"task"`` key: segmentation's)."""
    return TASKS.of(payload)
