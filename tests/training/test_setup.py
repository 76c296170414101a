"""The seeded epoch loader: the same seed draws the same batches, with or without the prefetch thread."""

from __future__ import annotations

import torch
from monai import transforms as mt
from monai.data import Dataset, ThreadDataLoader

from medseg_attn.training.setup import seeded_loader


def _batches(prefetch: bool, seed: int) -> list[torch.Tensor]:
    transform = mt.Compose([mt.RandGaussianNoised("image", prob=1.0, std=1.0)])
    dataset = Dataset([{"image": torch.zeros(1, 4, 4) + i} for i in range(6)], transform)
    loader = seeded_loader(dataset, transform, seed, rank=0, batch_size=2, num_workers=0, prefetch=prefetch)
    assert isinstance(loader, ThreadDataLoader) == prefetch
    return [batch["image"] for batch in loader]


def test_prefetch_thread_draws_the_same_batches_as_the_plain_loader():
    plain, threaded = _batches(False, seed=3), _batches(True, seed=3)
    assert len(plain) == len(threaded) == 3
    for a, b in zip(plain, threaded):
        torch.testing.assert_close(a, b)  # same order, same random noise
    assert not torch.equal(torch.cat(plain), torch.cat(_batches(False, seed=4)))  # the seed matters
