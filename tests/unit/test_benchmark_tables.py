"""The SFT benchmark's arithmetic: per-device ratios and FLOP fractions (MFU on GPUs), and the
device it picks on this machine."""

from __future__ import annotations

import pytest

from ray_jobs.benchmarks.sft_throughput import Device, detect_device, tabulate

CPU = Device("cpu", "x86_64", count=2, cpus=2)
TWO_GPUS = Device("gpu", "H100", count=8, cpus=64)


def result(single: float, ray: float, devices: int, params: int = 1_000_000) -> dict:
    return {"model_parameters": params, "global_batch": 16, "steps": 60,
            "attention_flops_per_token": 0,
            "runs": {"single_process": {"tokens_per_s": single, "devices": 1},
                     "ray_zero2": {"tokens_per_s": ray, "devices": devices,
                                   "startup_s": 11.0}}}


def test_cpu_runs_share_the_machine_so_ratios_and_fractions_are_whole_machine():
    figures = result(single=10_000, ray=9_000, devices=1)
    table = tabulate("tiny", figures, peak=100e9, device=CPU)
    ray = figures["runs"]["ray_zero2"]
    assert ray["ratio_vs_single"] == 0.9
    assert ray["fraction_of_peak"] == pytest.approx(6 * 1e6 * 9_000 / 100e9, abs=1e-3)
    assert "% of matmul peak" in table and "| ray_zero2 | 9000 | 0.90x |" in table
    # start-up includes one step: 16 rows x 128 tokens at 9000 tokens/s
    assert ray["step_s"] == 0.23 and "| 11.0 (0.23) |" in table


def test_gpu_runs_count_per_gpu_and_report_mfu():
    # Two workers on two GPUs at 1.9x one GPU's tokens/s: 0.95x per GPU, and the MFU is
    # against two GPUs' peak, not one.
    figures = result(single=100_000, ray=190_000, devices=2, params=500_000_000)
    table = tabulate("medium", figures, peak=600e12, device=TWO_GPUS)
    ray = figures["runs"]["ray_zero2"]
    assert ray["ratio_vs_single"] == 0.95
    assert ray["fraction_of_peak"] == 0.475  # 6 x 0.5B x 190k tokens/s over 2 x 600 TFLOP/s
    assert "MFU" in table and "| ray_zero2 | 190000 | 0.95x |" in table
    assert TWO_GPUS.workers == 2 and TWO_GPUS.precision == "bf16"
    assert Device("gpu", "H200", count=1, cpus=16).workers == 1


def test_this_machine_benchmarks_its_cpu_in_fp32():
    import torch

    device = detect_device()
    assert device.gpu == torch.cuda.is_available()
    if not device.gpu:
        assert device.workers == 2 and device.precision == "fp32" and device.cpus >= 1


def test_scaling_model_overlap_hides_the_shorter_of_rollout_and_update():
    from ray_jobs.benchmarks.ppo_scaling_model import Setup, phases

    for batch in (64, 256, 1024):
        plain = phases(Setup(rollout_batch=batch, backend="vllm", sync="nccl"))
        overlapped = phases(Setup(rollout_batch=batch, backend="vllm", sync="nccl",
                                  overlap=True))
        generate = plain["rollout"] + plain["reward"]
        update = plain["reference"] + plain["advantage"] + plain["train"]
        assert overlapped["step"] == pytest.approx(max(generate, update) + plain["sync"])
        assert plain["step"] - overlapped["step"] == pytest.approx(min(generate, update))
