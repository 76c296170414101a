"""PyTorch DDP plumbing for ``torchrun``: process group, sharding, reductions, rank-0 decisions.

``torchrun --nproc_per_node=N -m medseg_attn.cli train ...`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
everything here is a no-op in a plain single process, so the engine calls it unconditionally.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["Distributed", "partition", "setup", "shard", "teardown"]

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per process under torchrun; the CPU stays the CPU."""
        if self.enabled and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) a tensor across ranks; identity in a single process."""
        if not self.enabled:
            return values
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def from_main(self, *values: float) -> tuple[float, ...]:
        """Rank 0's values, for every rank: decisions that must not differ between processes (the time budget,
        the learning rate of a step when it follows the wall clock)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self._reduce_device())
        dist.broadcast(tensor, src=0)
        return tuple(tensor.tolist())

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        values: list = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def _reduce_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


def setup(device: torch.device) -> Distributed:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        logger.info("rank %d of %d joined the process group (%s)", rank, world_size, backend)
    return Distributed(rank, local_rank, world_size)


def shard(items: Sequence[T], info: Distributed) -> list[T]:
    """This rank's share of a list (round robin), e.g. the cases to predict or validate."""
    return list(items[info.rank :: info.world_size])


def partition(items: Sequence[T], info: Distributed, seed: int) -> list[T]:
    """This rank's share of the training cases: a seeded shuffle split into equal parts (the list is padded by
    repeating cases so that every rank has as many and takes the same number of steps). Each rank caches only
    its part, as in MONAI's DDP recipes."""
    if not info.enabled:
        return list(items)
    from monai.data import partition_dataset

    return list(partition_dataset(list(items), num_partitions=info.world_size, shuffle=True, seed=seed,
                                  even_divisible=True)[info.rank])


def teardown() -> None:
    """Leave the process group (end of a torchrun command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
