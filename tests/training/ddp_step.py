"""Two optimizer steps of a tiny network through ``fit``, on this process's share of a fixed batch.

Run by tests/training/test_distributed.py under ``torchrun --nproc_per_node=2`` (each rank takes half the rows)
and in the test process itself on all the rows; DDP averages the gradients of equal halves, so every rank must
end with the weights of the single process. Usage: python ddp_step.py OUTPUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from medseg_attn.config import TrainConfig
from medseg_attn.runtime.distributed import Distributed, setup, teardown
from medseg_attn.training.loop import TrainTask, fit

ROWS = 8


def run(output: Path, dist: Distributed) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(ROWS, 6, generator=generator), torch.randn(ROWS, 2, generator=generator)
    share = ROWS // dist.world_size
    batch = {"x": x[dist.rank * share:(dist.rank + 1) * share], "y": y[dist.rank * share:(dist.rank + 1) * share]}
    task = TrainTask(network=network, optimizer=torch.optim.SGD(network.parameters(), lr=0.5),
                     loss=lambda model, b: nn.functional.mse_loss(model(b["x"]), b["y"]),
                     loader=lambda seed: [batch], steps_per_epoch=2, validate=None, metric="val_loss",
                     payload={}, curves=None)
    train = TrainConfig(max_epochs=1, steps_per_epoch=2, lr=0.5, warmup_steps=0, schedule="constant", amp="off",
                        device="cpu", log_images=False)
    fit(task, train, output, None, torch.device("cpu"), progress=False, dist=dist)
    return {key: value.detach().clone() for key, value in network.state_dict().items()}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    info = setup(torch.device("cpu"))
    weights = run(out / "run", info)
    torch.save(weights, out / f"rank{info.rank}.pt")
    teardown()
