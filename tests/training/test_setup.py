"""The seeded epoch loader: the same seed draws the same batches, with or without the prefetch thread."""

from __future__ import annotations

import json

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


def test_pinned_memory_is_asked_only_when_training_on_cuda_and_draws_the_same_batches():
    transform = mt.Compose([mt.RandGaussianNoised("image", prob=1.0, std=1.0)])
    dataset = Dataset([{"image": torch.zeros(1, 4, 4) + i} for i in range(4)], transform)
    plain = seeded_loader(dataset, transform, 3, rank=0, batch_size=2, num_workers=0)
    assert plain.pin_memory is False
    import warnings

    with warnings.catch_warnings():  # a CPU-only machine warns that there is nothing to pin for
        warnings.simplefilter("ignore")
        pinned = seeded_loader(dataset, transform, 3, rank=0, batch_size=2, num_workers=0, pin_memory=True)
        assert pinned.pin_memory is True
        pinned_batches = [batch["image"] for batch in pinned]
    plain = seeded_loader(dataset, transform, 3, rank=0, batch_size=2, num_workers=0)
    for a, b in zip([batch["image"] for batch in plain], pinned_batches):
        torch.testing.assert_close(a, b)


def _fresh_decision(monkeypatch, tmp_path, flags, speedup):
    from medseg_attn.runtime import device as device_module

    calls = []

    def probe():
        calls.append(1)
        return speedup

    monkeypatch.setenv("MEDSEG_ATTN_CACHE", str(tmp_path))
    monkeypatch.setattr(device_module, "_cpuinfo", lambda: ("Test CPU 9000", set(flags)))
    monkeypatch.setattr(device_module, "cpu_bf16_speedup", probe)
    device_module._cpu_decision.cache_clear()
    dtype = device_module.inference_dtype("auto", torch.device("cpu"))
    device_module._cpu_decision.cache_clear()
    return dtype, calls


def test_auto_precision_on_cpu_comes_from_flags_or_a_probe_cached_per_machine(monkeypatch, tmp_path):
    from medseg_attn.runtime import device as device_module

    cpu = torch.device("cpu")
    # no bf16 instructions: fp32 without any timing; AMX: bf16 without any timing
    assert _fresh_decision(monkeypatch, tmp_path / "a", {"avx2", "fma"}, 1.9) == (None, [])
    assert _fresh_decision(monkeypatch, tmp_path / "b", {"avx512_bf16", "amx_bf16"}, 0.5) == (torch.bfloat16, [])
    # AVX-512 bf16 without AMX (Zen 4 fast, some Xeons slow): probed once (3 rounds), then read from the cache
    dtype, calls = _fresh_decision(monkeypatch, tmp_path / "c", {"avx512_bf16"}, 1.9)
    assert dtype == torch.bfloat16 and len(calls) == 3
    cached = json.loads((tmp_path / "c" / "precision.json").read_text())
    assert [entry["bf16_speedup"] for entry in cached.values()] == [1.9]
    # a later process on a busy machine would measure 0.85: the cached answer stands, no new timing
    dtype, calls = _fresh_decision(monkeypatch, tmp_path / "c", {"avx512_bf16"}, 0.85)
    assert dtype == torch.bfloat16 and calls == []
    dtype, calls = _fresh_decision(monkeypatch, tmp_path / "d", {"avx512_bf16"}, 0.85)
    assert dtype is None and len(calls) == 3  # a slow-bf16 machine stays fp32
    assert device_module.inference_dtype("fp32", cpu) is None
    assert device_module.inference_dtype("bf16", cpu) == torch.bfloat16
    assert device_module.precision_name(torch.bfloat16) == "bf16" and device_module.precision_name(None) == "fp32"


def test_an_avx2_cap_keeps_auto_in_fp32_and_is_read_back(monkeypatch, tmp_path):
    from medseg_attn.runtime import device as device_module

    # under ONEDNN_MAX_CPU_ISA=AVX2 oneDNN has no bf16 dot products, whatever /proc/cpuinfo says: no probe
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert _fresh_decision(monkeypatch, tmp_path / "a", {"avx512_bf16", "amx_bf16"}, 1.9) == (None, [])
    assert device_module.isa_caps() == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    # what oneDNN really uses is read from its own report in a child process: a cap it obeys shows there
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")
    isa = device_module.cpu_isa.__wrapped__()
    assert isa["onednn"] == "Intel SSE4.1"
    assert isa["aten"] == torch.backends.cpu.get_cpu_capability()


def test_an_unwritable_cache_means_fp32_not_a_per_process_timing(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    dtype, calls = _fresh_decision(monkeypatch, blocker, {"avx512_bf16"}, 1.9)
    assert dtype is None


def test_the_bf16_probe_measures_something():
    from medseg_attn.runtime.device import cpu_bf16_speedup

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
    from medseg_attn.runtime.device import cpu_bf16_speedup

    cpu_bf16_speedup.cache_clear()
    torch.manual_seed(5)
    cpu_bf16_speedup()
    after_probe = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_probe, torch.rand(3))
