"""SFT throughput: Ray Train + DeepSpeed (2 workers; ZeRO 0, 2, 3) against a single-process
Hugging Face training loop on the same model, data and global batch — in one run, so the
ratios are fair on a shared, noisy machine — and achieved FLOP/s against this CPU's matmul peak
measured in the same run. Two model sizes (``--models``): the quickstart's 1M-parameter tiny
Llama and a 14M one (see MODEL_SIZES).

    python -m ray_jobs.benchmarks.sft_throughput --out docs/benchmarks/sft_throughput.json

Steady-state tokens/s is the median over logging windows after the first ``--warmup-steps``;
start-up is the time from submitting the Ray Train run to its first optimizer step. Runs with
``_chunked_head`` use TRL's chunked LM-head kernel instead of the dense CPU head the SFT stage
uses (``culture_rl.train.lm_head.use_dense_lm_head``), to show what that swap buys in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from culture_rl.config import DeepSpeedConfig, ModelConfig, ResourcesConfig, \
    TinyModelConfig, TrainConfig, WorldConfig
from ray_jobs.benchmarks.arguments import choices_of, non_negative_int, positive_int
from ray_jobs.benchmarks.collect import write_results


# Tokens per training row: make_job's TrainConfig keeps the default, and packing fills rows.
SEQUENCE_LENGTH = TrainConfig().max_seq_length


@dataclass(frozen=True)
class ModelSize:
    shape: TinyModelConfig
    global_batch: int  # rows of 128 tokens per optimizer step
    steps: int
    warmup_steps: int


# The quickstart's tiny model, whose 128-wide GEMMs are too small to keep a CPU's vector units
# busy (per-op overhead is most of its 0.1 s step), and one 4x wider at a global batch of 64
# rows, where the GEMMs dominate as in any real fine-tuning run and the per-step gradient
# exchange is spread over 4x the tokens; both in one run, so the table says which effect is which.
MODEL_SIZES = {
    "tiny": ModelSize(TinyModelConfig(), global_batch=16, steps=60, warmup_steps=10),
    "small": ModelSize(TinyModelConfig(hidden_size=512, num_heads=8, intermediate_size=1536),
                       global_batch=64, steps=30, warmup_steps=5),
    # For GPUs (~0.6B parameters): a size whose step keeps a GPU busy.
    "medium": ModelSize(TinyModelConfig(hidden_size=2048, num_layers=12, num_heads=16,
                                        intermediate_size=5632), global_batch=64, steps=30,
                        warmup_steps=5),
}
ZERO_STAGES = (0, 1, 2, 3)
LOGGING_STEPS = 5  # tokens/s is logged, and the steady state read, in windows of this many steps


def run_settings(preset: ModelSize, args: argparse.Namespace) -> tuple[int, int, int]:
    """Global batch, steps and warm-up steps for one model size: the flags where given, else
    the size's own."""
    def given(value, default):
        return default if value is None else value

    return (given(args.global_batch, preset.global_batch), given(args.steps, preset.steps),
            given(args.warmup_steps, preset.warmup_steps))


def plan_problem(preset: ModelSize, args: argparse.Namespace, workers: int) -> str | None:
    """What the flags get wrong for one model size, naming the flag (None: nothing), so that a
    run that could not produce its figure stops before it starts."""
    batch, steps, warmup = run_settings(preset, args)
    if batch % workers:
        return f"--global-batch: {batch} rows do not split evenly over {workers} workers"
    if steps // LOGGING_STEPS * LOGGING_STEPS <= warmup:
        return (f"--steps: {steps} steps leave no {LOGGING_STEPS}-step logging window after the "
                f"{warmup} warm-up steps (--warmup-steps)")
    return None


@dataclass(frozen=True)
class Device:
    """What the benchmark runs on: every visible GPU when there is one (bf16, NCCL; the FLOP
    fraction is then the MFU), else this machine's CPU cores (fp32, gloo)."""
    kind: str  # "cpu" | "gpu"
    name: str
    count: int  # GPUs, or CPU cores
    cpus: int

    @property
    def gpu(self) -> bool:
        return self.kind == "gpu"

    @property
    def workers(self) -> int:
        """Ray Train workers: 2 (one per GPU, or 1 CPU each); 1 on a single-GPU machine."""
        return min(2, self.count) if self.gpu else 2

    @property
    def precision(self) -> str:
        return "bf16" if self.gpu else "fp32"


def detect_device() -> Device:
    import torch

    cpus = os.cpu_count() or 2
    if torch.cuda.is_available():
        return Device("gpu", torch.cuda.get_device_name(0), torch.cuda.device_count(), cpus)
    return Device("cpu", platform.processor() or platform.machine(), cpus, cpus)


def matmul_peak_flops(device: Device, repeats: int = 10) -> float:
    """Best GEMM FLOP/s of one device: fp32 1024^3 on all CPU threads (the practical limit of
    this CPU), or bf16 8192^3 on one GPU (its tensor-core limit in practice)."""
    import torch

    size = 8192 if device.gpu else 1024
    previous = torch.get_num_threads()
    if not device.gpu:
        torch.set_num_threads(device.cpus)
    options = {"device": "cuda", "dtype": torch.bfloat16} if device.gpu else {}
    a, b = torch.randn(size, size, **options), torch.randn(size, size, **options)

    def sync():
        if device.gpu:
            torch.cuda.synchronize()

    for _ in range(3):
        a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(previous)
    return 2 * size ** 3 / best


def steady_windows(metrics_path: Path, warmup_steps: int) -> tuple[dict, float]:
    """Median, spread and count of the logged tokens/s windows after ``warmup_steps``, and when
    the first step was logged."""
    rows = [json.loads(line) for line in metrics_path.read_text("utf-8").splitlines() if line]
    windows = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r["step"] > warmup_steps]
    if not windows:
        raise SystemExit(f"no steady-state windows in {metrics_path}; raise --steps")
    first_step_time = min(r["time"] for r in rows if "loss" in r)
    return {"tokens_per_s": round(statistics.median(windows), 1),
            "tokens_per_s_min": round(min(windows), 1),
            "tokens_per_s_max": round(max(windows), 1), "windows": len(windows)}, first_step_time


def make_job(folder: Path, stage: str, model_path: str, corpus: list[str], micro_batch: int,
             zero_stage: int, steps: int, dense_lm_head: bool = True, precision: str = "fp32"):
    from culture_rl.train.sft import TrainJob

    train = TrainConfig(max_steps=steps, learning_rate=1e-3, lr_scheduler="constant",
                        warmup_ratio=0.0, micro_batch_size=micro_batch,
                        logging_steps=LOGGING_STEPS,
                        save_steps=100_000, eval_each_epoch=False)
    return TrainJob(stage=stage, stage_dir=str(folder / stage), model_path=model_path,
                    train=train, lora=None,
                    deepspeed=DeepSpeedConfig(zero_stage=zero_stage, precision=precision),
                    train_rows=[{"text": doc} for doc in corpus], text_field="text",
                    dense_lm_head=dense_lm_head)


def single_process(job, device: Device) -> None:
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTTrainer

    from culture_rl.models.loading import load_model, load_tokenizer
    from culture_rl.train.callbacks import ProgressLogger
    from culture_rl.train.lm_head import use_dense_lm_head
    from culture_rl.train.sft import sft_args

    torch.set_num_threads(device.cpus)
    Path(job.stage_dir).mkdir(parents=True)
    args = sft_args(job, 1, device.gpu, str(Path(job.stage_dir) / "scratch"), use_deepspeed=False)
    trainer = SFTTrainer(model=load_model(job.model_path), args=args,
                         train_dataset=Dataset.from_list(job.train_rows),
                         processing_class=load_tokenizer(job.model_path),
                         callbacks=[ProgressLogger(job.stage, job.metrics_path)])
    trainer.remove_callback(PrinterCallback)
    if job.dense_lm_head and not device.gpu:  # the same LM head as the Ray Train workers on CPU
        use_dense_lm_head(trainer)
    trainer.train()


def measure_model(size: str, folder: Path, corpus: list[str], args, device: Device) -> dict:
    """Tokens/s of the single process and of every Ray Train run for one model size."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from culture_rl.models.loading import build_tiny_model
    from culture_rl.train.sft import run_stage

    folder = folder / size
    preset = MODEL_SIZES[size]
    workers = device.workers
    global_batch, steps, warmup = run_settings(preset, args)
    model_path = str(build_tiny_model(ModelConfig(tiny=preset.shape), corpus,
                                      folder / "model", 0))
    model_config = AutoConfig.from_pretrained(model_path)
    params = AutoModelForCausalLM.from_config(model_config).num_parameters()
    # PaLM's model FLOPs add the attention scores and values: 12 x layers x width x sequence
    # per trained token (6N alone leaves them out; at 128 tokens they are ~13 % more here).
    result = {"model_parameters": params, "shape": preset.shape.model_dump(),
              "global_batch": global_batch, "steps": steps, "warmup_steps": warmup,
              "attention_flops_per_token": 12 * model_config.num_hidden_layers
              * model_config.hidden_size * SEQUENCE_LENGTH, "runs": {}}

    where = "1 GPU" if device.gpu else f"{device.cpus} threads"
    print(f"[{size}] single process ({where}) ...", flush=True)
    job = make_job(folder, "single", model_path, corpus, global_batch, 0, steps,
                   precision=device.precision)
    single_process(job, device)
    steady, _ = steady_windows(job.metrics_path, warmup)
    result["runs"]["single_process"] = {**steady, "devices": 1}

    # TRL's chunked head is what GPUs run anyway; the dense swap is CPU-only.
    chunked = set() if device.gpu else set(args.chunked_head_stages)
    plan = []
    for stage in args.stages:
        plan.append((stage, True))
        if stage in chunked:
            plan.append((stage, False))
    for stage, dense in plan:
        name = f"ray_zero{stage}" + ("" if dense else "_chunked_head")
        print(f"[{size}] Ray Train + DeepSpeed ZeRO-{stage}, {workers} workers"
              f"{'' if dense else ', TRL chunked LM head'} ...", flush=True)
        job = make_job(folder, name, model_path, corpus, global_batch // workers,
                       stage, steps, dense_lm_head=dense, precision=device.precision)
        submitted = time.time()
        run_stage(job, ResourcesConfig(num_workers=workers, use_gpu=device.gpu,
                                       cpus_per_worker=device.cpus // workers))
        steady, first_step = steady_windows(job.metrics_path, warmup)
        result["runs"][name] = {**steady, "startup_s": round(first_step - submitted, 1),
                                # a GPU run uses one GPU per worker; on a CPU every run has
                                # the whole machine
                                "devices": workers if device.gpu else 1}
    return result


def tabulate(size: str, result: dict, peak: float, device: Device) -> str:
    """Ratios and FLOP/s of one model size's runs (filled into ``result`` too). Per device: a
    GPU run's tokens/s over its GPUs against one GPU's peak (the MFU), a CPU run's against the
    whole machine's."""
    params = result["model_parameters"]
    base = result["runs"]["single_process"]["tokens_per_s"]
    fraction = "MFU" if device.gpu else "% of matmul peak"
    lines = [f"{size}: {params:,} parameters, global batch {result['global_batch']}, "
             f"{result['steps']} steps", "",
             f"| run | tokens/s median (min-max) | per device vs single process | "
             f"achieved GFLOP/s (6N) | "
             f"{fraction} | {fraction} with attention | start-up s (of it, one step) |",
             "|---|---|---|---|---|---|---|"]
    for name, run in result["runs"].items():
        per_device = run["tokens_per_s"] / run["devices"]
        flops = 6 * params * run["tokens_per_s"]
        run["ratio_vs_single"] = round(per_device / base, 3)
        run["achieved_gflops"] = round(flops / 1e9, 2)
        run["fraction_of_peak"] = round(flops / (peak * run["devices"]), 3)
        run["fraction_of_peak_with_attention"] = round(
            (flops + result["attention_flops_per_token"] * run["tokens_per_s"])
            / (peak * run["devices"]), 3)
        startup = "-"
        if "startup_s" in run:
            # Start-up ends with the first logged step, so it holds one step of training too:
            # at steady speed that step takes a global batch of full rows / tokens per second.
            run["step_s"] = round(result["global_batch"] * SEQUENCE_LENGTH
                                  / run["tokens_per_s"], 2)
            startup = f"{run['startup_s']} ({run['step_s']})"
        spread = (f" ({run['tokens_per_s_min']:.0f}-{run['tokens_per_s_max']:.0f})"
                  if "tokens_per_s_min" in run else "")
        lines.append(f"| {name} | {run['tokens_per_s']:.0f}{spread} | "
                     f"{run['ratio_vs_single']:.2f}x | "
                     f"{run['achieved_gflops']:.2f} | {100 * run['fraction_of_peak']:.0f}% | "
                     f"{100 * run['fraction_of_peak_with_attention']:.0f}% | {startup} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=positive_int, help="optimizer steps per run "
                        "(default: the size's, 60 tiny / 30 small)")
    parser.add_argument("--warmup-steps", type=non_negative_int, help="steps excluded from the "
                        "steady-state median (default: the size's, 10 / 5)")
    parser.add_argument("--global-batch", type=positive_int, help="rows per optimizer step "
                        "(default: the size's, 16 / 64)")
    parser.add_argument("--stages", default="0,2,3", type=choices_of(ZERO_STAGES, int),
                        help="ZeRO stages to run")
    parser.add_argument("--chunked-head-stages", default="2",
                        type=choices_of(ZERO_STAGES, int, allow_empty=True),
                        help="ZeRO stages also run with TRL's chunked LM head ('' for none)")
    parser.add_argument("--models", type=choices_of(MODEL_SIZES),
                        help=f"model sizes to run, of {', '.join(MODEL_SIZES)} "
                        "(default: tiny,small on a CPU, small,medium on GPUs)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    device = detect_device()
    sizes = args.models or (["small", "medium"] if device.gpu else ["tiny", "small"])
    for size in sizes:
        problem = plan_problem(MODEL_SIZES[size], args, device.workers)
        if problem:
            parser.error(f"{problem} (model size {size})")

    from culture_rl.data.synthetic import generate_world
    from culture_rl.distributed.cluster import connect

    folder = Path(tempfile.mkdtemp(prefix="culture_rl_bench_"))
    world = generate_world(WorldConfig())
    peak_before = matmul_peak_flops(device)
    results: dict = {"machine": {"device": device.kind, "device_name": device.name,
                                 "device_count": device.count, "cpus": device.cpus,
                                 "precision": device.precision, "workers": device.workers,
                                 "load_average_start": os.getloadavg()[0]},
                     "sequence_length": SEQUENCE_LENGTH, "models": {}}
    connect(None)
    for size in sizes:
        results["models"][size] = measure_model(size, folder, world.corpus, args, device)

    # The machine's GEMM peak, measured before and after the runs (the best of the two: a busy
    # neighbour only ever lowers it).
    peak_after = matmul_peak_flops(device)
    peak = max(peak_before, peak_after)
    results["machine"].update(matmul_peak_gflops=round(peak / 1e9, 2),
                              matmul_peak_gflops_before_after=[round(peak_before / 1e9, 2),
                                                               round(peak_after / 1e9, 2)],
                              load_average_end=os.getloadavg()[0])
    table = "\n\n".join(tabulate(size, results["models"][size], peak, device)
                          for size in sizes)
    unit = "one GPU, bf16" if device.gpu else f"{device.cpus} threads, fp32"
    print(f"\n{device.name}: matmul peak {peak / 1e9:.1f} GFLOP/s ({unit})\n\n{table}")
    results["table"] = table
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
