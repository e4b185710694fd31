"""PPO step time at paper scale, on paper: a model, not a measurement.

    python -m ray_jobs.benchmarks.ppo_scaling_model --out docs/benchmarks/ppo_scaling_model.json

Predicts the seconds of each phase the PPO controller times (rollout, reward, reference,
advantage, train, sync; see ``ppo_step.py``) for the paper-scale configs
(configs/align_ppo_llama31_8b_us.yaml, configs/align_ppo_qwen25_7b_zh.yaml: 8B-class policy
with LoRA, critic colocated on the trainer GPUs, 4 trainer + 4 rollout H100s) and how they move
with model size, GPU count and rollout batch. Every formula and constant is below and in
docs/benchmarks.md ("PPO at paper scale"); nothing here ran on a GPU.

Formulas (N parameters, b = bytes per parameter (bf16: 2), T = prompt + response tokens):

- rollout  = prefill + R decode steps per replica, each replica generating its share of the
             batch: prefill = 2 N B_rep P / (peak x MFU); one decode step is bound by memory
             bandwidth: (N b + KV bytes read) / (HBM bandwidth x eta), or by compute
             2 N B_rep / (peak x MFU) when the replica's batch is large, whichever is slower.
             Tensor parallelism over k GPUs divides a step by k (x0.8 for its all-reduces).
- reward   = answers x measured ms per Spearman answer / scorers (+ a few ms of RPC).
- reference = old log-probs (policy forward) + reference log-probs (the same policy with the
             LoRA adapter off) + critic values: 3 forwards of 2 N T per sample, data parallel
             over the trainer GPUs at the given MFU.
- advantage = GAE over B x R values on the driver: measured 0.002 s at 128 x 40; ~0.
- train    = policy and critic, forward + backward per sample: with frozen LoRA bases the
             backward computes activation gradients only (2 N per token; the adapters' weight
             gradients are <1 %), so 4 N T per model (6 N T with activation checkpointing).
- sync     = the merged weights (N b bytes) to every generator: over NCCL, one broadcast at
             the NVLink bus bandwidth; through today's host staging (/dev/shm), a device-to-host
             copy, a pack and one host-to-device copy per receiver at PCIe/host-memory speed.
- step     = the sum of the phases; with ``ppo.overlap_rollout`` (rollout and trainer GPUs are
             disjoint, so the next rollout and reward run beside this step's reference and
             train) max(rollout + reward, reference + advantage + train) + sync.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

from ray_jobs.benchmarks.collect import write_results

# H100 SXM (80 GB): dense bf16 tensor-core peak, HBM3 bandwidth, NVLink 4 per GPU per
# direction; host link PCIe Gen5 x16 (practical, pageable memory), host memcpy of one process.
H100_BF16_FLOPS = 989e12
H100_HBM_BYTES_S = 3.35e12
NVLINK_BUS_BYTES_S = 350e9  # NCCL broadcast bus bandwidth observed on 8x H100 NVSwitch
PCIE_BYTES_S = 25e9
HOST_MEMCPY_BYTES_S = 10e9
TRAIN_MFU = 0.40  # LoRA training / scoring forwards, micro batch 4 x ~700 tokens
PREFILL_MFU = 0.50
# Achieved share of HBM bandwidth while decoding: vLLM (paged KV, CUDA graphs) ~0.7; Hugging
# Face generate in eager mode is launch-bound at these batch sizes, ~0.2 of bandwidth.
DECODE_ETA = {"vllm": 0.70, "hf": 0.20}
SPEARMAN_S_PER_ANSWER = 0.21e-3  # measured on this CPU, idle (reward_pool.py)


@dataclass(frozen=True)
class Model:
    name: str
    params: float
    layers: int
    hidden: int
    kv_dim: int  # key/value width per layer (grouped-query attention)


LLAMA31_8B = Model("Llama-3.1-8B", 8.03e9, 32, 4096, 1024)
QWEN25_7B = Model("Qwen2.5-7B", 7.62e9, 28, 3584, 512)
LLAMA31_70B = Model("Llama-3.1-70B", 70.6e9, 80, 8192, 1024)


@dataclass(frozen=True)
class Setup:
    model: Model = LLAMA31_8B
    rollout_batch: int = 64  # prompts x samples per prompt per step
    prompt_tokens: int = 200  # a 10-word ranking prompt with its chat template (assumed)
    response_tokens: int = 512  # max_new_tokens; think-then-rank answers assumed to use it
    trainer_gpus: int = 4
    rollout_gpus: int = 4
    rollout_tp: int = 1  # GPUs per generator replica (tensor parallel)
    backend: str = "hf"  # 'hf' (the configs' default) or 'vllm'
    sync: str = "host"  # 'host' (today's /dev/shm staging) or 'nccl'
    reward_scorers: int = 4
    activation_checkpointing: bool = False
    bytes_per_param: int = 2
    overlap: bool = False  # ppo.overlap_rollout: next rollout beside this step's update


def phases(s: Setup) -> dict[str, float]:
    m = s.model
    n_bytes = m.params * s.bytes_per_param
    tokens = s.prompt_tokens + s.response_tokens
    replicas = max(1, s.rollout_gpus // s.rollout_tp)
    per_replica = -(-s.rollout_batch // replicas)
    tp_speed = s.rollout_tp * (0.8 if s.rollout_tp > 1 else 1.0)
    # rollout: prefill, then R decode steps (KV cache read grows with the context)
    prefill = 2 * m.params * per_replica * s.prompt_tokens / (H100_BF16_FLOPS * PREFILL_MFU)
    kv_bytes_per_token = 2 * m.layers * m.kv_dim * s.bytes_per_param
    mean_context = s.prompt_tokens + s.response_tokens / 2
    memory_step = ((n_bytes + per_replica * mean_context * kv_bytes_per_token)
                   / (H100_HBM_BYTES_S * DECODE_ETA[s.backend]))
    compute_step = 2 * m.params * per_replica / (H100_BF16_FLOPS * PREFILL_MFU)
    rollout = (prefill + s.response_tokens * max(memory_step, compute_step)) / tp_speed
    reward = s.rollout_batch * SPEARMAN_S_PER_ANSWER / s.reward_scorers + 0.005
    trainer_flops = H100_BF16_FLOPS * TRAIN_MFU * s.trainer_gpus
    step_tokens = s.rollout_batch * tokens
    reference = 3 * 2 * m.params * step_tokens / trainer_flops
    train = 2 * (6 if s.activation_checkpointing else 4) * m.params * step_tokens / trainer_flops
    if s.sync == "nccl":
        sync = n_bytes / NVLINK_BUS_BYTES_S
    else:  # device-to-host, pack into the staging file, each receiver copies out to its GPU
        sync = n_bytes / PCIE_BYTES_S + n_bytes / HOST_MEMCPY_BYTES_S + n_bytes / PCIE_BYTES_S
    out = {"rollout": rollout, "reward": reward, "reference": reference, "advantage": 0.0,
           "train": train, "sync": sync}
    if s.overlap:
        out["step"] = max(rollout + reward, reference + train) + sync
    else:
        out["step"] = sum(out.values())
    out["samples_per_s"] = s.rollout_batch / out["step"]
    out["decode_step_ms"] = 1000 * max(memory_step, compute_step) / tp_speed
    return out


SCENARIOS = [
    ("8B, config as shipped (HF generate, host staging)", Setup()),
    ("8B, vLLM + NCCL broadcast", Setup(backend="vllm", sync="nccl")),
    ("Qwen2.5-7B, vLLM + NCCL", Setup(model=QWEN25_7B, backend="vllm", sync="nccl")),
    ("8B, vLLM + NCCL, rollout batch 256", Setup(rollout_batch=256, backend="vllm",
                                                 sync="nccl")),
    ("8B, vLLM + NCCL, rollout batch 1024", Setup(rollout_batch=1024, backend="vllm",
                                                  sync="nccl")),
    ("8B, vLLM + NCCL, rollout TP 2 (2 replicas)", Setup(rollout_tp=2, backend="vllm",
                                                         sync="nccl")),
    ("8B, vLLM + NCCL, overlapped rollout", Setup(backend="vllm", sync="nccl", overlap=True)),
    ("8B, vLLM + NCCL, batch 256, overlapped", Setup(rollout_batch=256, backend="vllm",
                                                     sync="nccl", overlap=True)),
    ("8B, vLLM + NCCL, 16 GPUs (8 + 8)", Setup(trainer_gpus=8, rollout_gpus=8, backend="vllm",
                                               sync="nccl")),
    ("70B, vLLM TP 4 + NCCL, 16 GPUs (8 + 8)", Setup(model=LLAMA31_70B, trainer_gpus=8,
                                                      rollout_gpus=8, rollout_tp=4,
                                                      backend="vllm", sync="nccl")),
]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    names = ("rollout", "reward", "reference", "advantage", "train", "sync")
    lines = ["| scenario | " + " | ".join(f"{n} s" for n in names)
             + " | step s | samples/s | largest phase |",
             "|---|" + "---|" * (len(names) + 3)]
    results: dict = {"kind": "model (not a measurement)", "constants": {
        "h100_bf16_flops": H100_BF16_FLOPS, "h100_hbm_bytes_s": H100_HBM_BYTES_S,
        "nvlink_bus_bytes_s": NVLINK_BUS_BYTES_S, "pcie_bytes_s": PCIE_BYTES_S,
        "host_memcpy_bytes_s": HOST_MEMCPY_BYTES_S, "train_mfu": TRAIN_MFU,
        "prefill_mfu": PREFILL_MFU, "decode_eta": DECODE_ETA,
        "spearman_s_per_answer": SPEARMAN_S_PER_ANSWER}, "scenarios": {}}
    for label, setup in SCENARIOS:
        p = phases(setup)
        top = max(names, key=lambda n: p[n])
        results["scenarios"][label] = {"setup": {**asdict(setup), "model": setup.model.name},
                                       **{k: round(v, 3) for k, v in p.items()}}
        lines.append(f"| {label} | " + " | ".join(f"{p[n]:.2f}" for n in names)
                     + f" | {p['step']:.1f} | {p['samples_per_s']:.1f} | {top} "
                     f"({100 * p[top] / p['step']:.0f} %) |")
    table = "\n".join(lines)
    print("PPO step at paper scale -- a model from stated formulas, not a measurement\n\n" + table)
    results["table"] = table
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
