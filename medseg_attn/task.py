"""The task interface: what a task (segmentation, classification, ...) gives the shared core and the CLI.

A task is a :class:`Task` value built in its own package (``segmentation/task.py``, ``classification/task.py``)
and listed once in :mod:`medseg_attn.registry`. Everything that used to switch on a task's name (the model card's
metric, ``medseg-attn export``, the CLI's commands) looks the task up there instead. This module names no task;
it imports a task's module only when the registry was given its name. Arrows: cli -> registry -> tasks -> core.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg_attn.errors import UserError

__all__ = ["Task", "TaskRegistry"]


@dataclass(frozen=True)
class Task:
    """One task, as the core and the CLI see it.

    Attributes:
        name: the tag every checkpoint of the task carries as its ``task``.
        config: the task's frozen config dataclass (its schema): ``load_config(path, kind=task.config)`` and
            ``from_dict(values, task.config)`` build and check it, with did-you-mean errors.
        network_from_checkpoint: ``payload -> network`` (CPU, weights loaded, eval mode); raises KeyError,
            TypeError or RuntimeError when the payload does not fit (see :meth:`network`).
        card_metric: ``payload -> text`` naming the validation metric of the model card, e.g.
            "validation Dice (mean over classes)".
        export: ``"module:function"`` of the task's exporter, ``(model, format, output) -> written path``, for
            ``medseg-attn export`` (see :meth:`export_model`); None when the task's models cannot be exported.
            Named rather than referenced: an exporter rebuilds the task's network, so its module imports the
            task's, and imported the other way round the two would form a cycle.
        untagged: checkpoints without a ``"task"`` key are this task's (those written before the key existed:
            segmentation's); one task at most.
    """

    name: str
    config: type
    network_from_checkpoint: Callable[[Mapping[str, Any]], Any]
    card_metric: Callable[[Mapping[str, Any]], str]
    export: str | None
    untagged: bool = False

    def owns(self, payload: Mapping[str, Any]) -> bool:
        """Whether a checkpoint payload (or an export's metadata) is this task's."""
        return payload.get("task", self.name if self.untagged else None) == self.name

    def export_model(self, model: str | Path, fmt: str, output: str | Path) -> Path:
        """Export a run folder or checkpoint of this task with its exporter (:attr:`export`); the written path.

        Raises:
            ValueError: the task has no exporter, or what the exporter raises (unknown format, wrong model ...).
        """
        if self.export is None:
            raise UserError(f"{model}: {self.name} models cannot be exported")
        module, _, function = self.export.partition(":")
        return getattr(importlib.import_module(module), function)(model, fmt, output)

    def network(self, payload: Mapping[str, Any], source: str | Path) -> Any:
        """:attr:`network_from_checkpoint`, with a payload that does not fit as one line naming ``source``.

        Raises:
            ValueError: not this task's checkpoint, or one this version cannot rebuild.
        """
        from medseg_attn.training.checkpoint import Checkpoint

        if not self.owns(payload):
            raise UserError(f"{source}: is a {payload.get('task')} model, not a {self.name} model")
        try:
            return self.network_from_checkpoint(Checkpoint.of(payload))
        except (KeyError, RuntimeError, TypeError) as error:
            raise UserError(f"{source}: checkpoint does not match this medseg-attn version ({error})") from None


class TaskRegistry:
    """Tasks in the order they were registered (the order of their commands in ``medseg-attn --help``), each
    with the module that adds its commands.

    A task may be given as the dotted name of a module defining ``TASK``: it is imported on the first lookup, so
    the CLI builds its parser (from :meth:`command_modules`) without importing any task package (they import
    torch and MONAI).
    """

    def __init__(self, *entries: tuple[Task | str, str]) -> None:
        self._entries: list[list[Any]] = []  # [Task or module name, its commands' module]
        for task, cli in entries:
            self.register(task, cli)

    def register(self, task: Task | str, cli: str) -> None:
        """Add a task (or the name of the module defining it as ``TASK``) and the dotted name of the module that
        adds its commands: it defines ``register_cli(subparsers) -> {command: runner}``, a runner taking the
        parsed arguments and returning the exit code. Named rather than imported: only ``medseg_attn.cli``
        imports it (the CLI sits above the tasks)."""
        self._entries.append([task, cli])

    def unregister(self, name: str) -> None:
        """Remove the task called ``name`` (a plug-in's, or a test's); an unknown name is ignored."""
        self._entries = [entry for entry in self._entries if self._load(entry).name != name]

    def command_modules(self) -> list[str]:
        """The modules adding the tasks' commands, in order (imports no task)."""
        return [cli for _, cli in self._entries]

    def tasks(self) -> dict[str, Task]:
        """Every task by name, in order (imports the tasks given by module name).

        Raises:
            ValueError: two tasks of one name, or two tasks that both claim checkpoints without a task.
        """
        found: dict[str, Task] = {}
        for entry in self._entries:
            task = self._load(entry)
            if task.name in found:
                raise UserError(f"task {task.name!r} is registered twice")
            found[task.name] = task
        untagged = [task.name for task in found.values() if task.untagged]
        if len(untagged) > 1:
            raise UserError(f"tasks {' and '.join(untagged)} both claim checkpoints without a task")
        return found

    def get(self, name: str) -> Task:
        """The task called ``name``.

        Raises:
            ValueError: no such task; names the closest known task, or all of them.
        """
        tasks = self.tasks()
        if name in tasks:
            return tasks[name]
        close = difflib.get_close_matches(str(name), list(tasks), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known tasks: {', '.join(tasks) or 'none'}"
        raise UserError(f"unknown task {name!r}; {hint}")

    def of(self, payload: Mapping[str, Any]) -> Task:
        """The task of a checkpoint payload or an export's metadata (no ``"task"`` key: the untagged task's).

        Raises:
            ValueError: an unknown task (a model from a newer version, or a plug-in not registered).
        """
        if "task" in payload:
            return self.get(payload["task"])
        untagged = [task for task in self.tasks().values() if task.untagged]
        if not untagged:
            raise UserError(f"the model names no task; known tasks: {', '.join(self.tasks()) or 'none'}")
        return untagged[0]

    @staticmethod
    def _load(entry: list[Any]) -> Task:
        if isinstance(entry[0], str):
            task = getattr(importlib.import_module(entry[0]), "TASK", None)
            if not isinstance(task, Task):
                raise UserError(f"{entry[0]}: defines no TASK (a medseg_attn.task.Task)")
            entry[0] = task
        return entry[0]
