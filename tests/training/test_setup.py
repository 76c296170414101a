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


def test_auto_precision_on_cpu_follows_the_measured_bf16_speed(monkeypatch):
    from medseg_attn.training import device as device_module

    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "cpu_bf16_speedup", lambda: 1.9)  # e.g. AMX or AMD Zen 4
    assert device_module.inference_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(device_module, "cpu_bf16_speedup", lambda: 0.85)  # bf16 instructions without fast units
    assert device_module.inference_dtype("auto", cpu) is None
    assert device_module.inference_dtype("fp32", cpu) is None
    assert device_module.inference_dtype("bf16", cpu) == torch.bfloat16


def test_the_bf16_probe_measures_something():
    from medseg_attn.training.device import cpu_bf16_speedup

    assert cpu_bf16_speedup() > 0.0  # a ratio of two measured times (0.0 only on builds without bf16 convolutions)


def test_optimizers_are_fused():
    from medseg_attn.config import TrainConfig
    from medseg_attn.training.loop import build_optimizer

    network = torch.nn.Linear(4, 2)
    for name in ("adamw", "sgd"):
        optimizer = build_optimizer(network, TrainConfig(optimizer=name))
        assert optimizer.param_groups[0]["fused"] is True
        network(torch.randn(3, 4)).sum().backward()
        before = network.weight.detach().clone()
        optimizer.step()
        assert not torch.equal(before, network.weight)


def test_the_bf16_probe_leaves_the_seeded_random_stream_alone():
    from medseg_attn.training.device import cpu_bf16_speedup

    cpu_bf16_speedup.cache_clear()
    torch.manual_seed(5)
    cpu_bf16_speedup()
    after_probe = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_probe, torch.rand(3))
