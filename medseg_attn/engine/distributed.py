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

__all__ = ["Distributed", "setup", "shard"]

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

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision, for every rank (e.g. 'the time budget is spent'), so no rank waits forever."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self._reduce_device())
        dist.broadcast(value, src=0)
        return bool(value.item())

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
