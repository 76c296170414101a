"""The benchmark's parts on tiny inputs: they measure real runs and the report shows every ratio with its target.

(No timing is asserted here: speed targets live in ``scripts/benchmark.py``, not in unit tests.)
"""

from __future__ import annotations

import torch

from medseg_attn.networks import AttentionSkipUNet
from medseg_attn.segmentation.benchmark import (
    TARGETS,
    benchmark_inference,
    benchmark_networks,
    format_report,
    make_report,
)

NAMES = ["AttentionSkipUNet (attention on)", "AttentionSkipUNet (attention off)", "MONAI AttentionUnet"]


def test_networks_and_inference_are_measured_and_reported():
    networks, rate = benchmark_networks(size=48, batch=1, repetitions=1, names=NAMES, progress=False)
    assert rate > 1e8  # FLOP/s of a real matrix multiply
    assert [r.name for r in networks] == NAMES
    ours = networks[0]
    assert ours.parameters == sum(p.numel() for p in AttentionSkipUNet(3, 1, 3, channels=(16, 32, 64, 128, 256))
                                  .parameters())
    assert networks[0].forward_gflops > networks[1].forward_gflops > 0  # attention adds FLOPs
    for result in networks:
        assert result.forward_seconds > 0 and result.train_step_seconds > 0
        assert 0 < result.forward_fraction_of_matmul < 2

    inference = benchmark_inference([(48, 40, 32)], overlap=0.25)  # each prediction in a fresh process
    assert [r.name.split()[0] for r in inference] == ["medseg-attn", "MONAI"]
    assert all(r.voxels_per_second > 0 and 0 <= r.added_memory_mb < r.peak_memory_mb for r in inference)

    pipeline = {"data_wait_fraction": 0.04, "steps": 10, "cache": True, "num_workers": 0}
    report = make_report(networks, rate, inference, pipeline, 0.25, torch.device("cpu"), quick=True)
    assert set(report["ratios"]) == set(TARGETS)
    expected = ours.train_step_seconds / networks[1].train_step_seconds
    assert abs(report["ratios"]["attention_overhead"] - expected) < 1e-12
    assert report["targets"]["data_wait_fraction"]["met"] is True
    text = format_report(report)
    for what, target, sense in TARGETS.values():
        assert what in text and f"(target {sense} {target})" in text
