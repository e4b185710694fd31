"""CALM training on Ray Train: our own loop through :class:`DeepSpeedStrategy` in each worker.

The worker builds the base model (LoRA via peft when ``lora.enabled``; frozen with
``calm.freeze_base``; else all weights), wraps it with
:func:`culture_rl.models.calm.build_calm_model` and trains CALM's combined loss (task
classification, optionally LM, plus the weighted contrastive, prototype, orthogonality,
load-balance and culture terms) on micro batches that hold ``calm.train.per_culture`` samples
of *every* culture (:func:`per_culture_batches`): the contrastive and orthogonality losses are
computed per micro batch and need positives and spread.

Every logging step, rank 0 appends every loss term (averaged over the step's micro batches and
the ranks) to ``<run>/calm/metrics.jsonl`` and prints a progress line; every epoch end it adds
held-out accuracy and the mean gate weight per culture and expert (``routing``). Checkpoints
(DeepSpeed engine state: trainable weights incl. the CALM modules, optimizer, scheduler; plus
the step and each rank's RNG state) are reported through ``ray.train.report`` every epoch (or
``calm.train.save_steps``); the batch order is a pure function of (seed, epoch), so the step
is the data position: a rerun with the same run name resumes from ``ray.train.get_checkpoint()``
and neither replays nor skips micro batches. A finished stage is a no-op.

The export ``<run>/calm/export/`` holds ``adapter/`` (or ``model/``; nothing for a frozen
base), ``tokenizer/``, ``calm.safetensors`` (:func:`calm_state_dict`), ``calm.json`` (the CALM
config, sizes, label and culture names, base model) and ``check.safetensors`` (logits of a few
held-out inputs, to prove a reload is the same model);
:func:`culture_rl.models.calm_policy.load_calm_export` rebuilds it.

The comparison stage (``<run>/calm/compare/``, one Ray Train run) trains the baseline (every
CALM module off: a linear classifier on the pooled hidden states, with the same LoRA, data and
sampler) and each ablation in turn, on the same held-out split; each variant's result is
written when done, so a rerun skips finished variants.

This module holds the job, the worker entry point and the driver; one model's training loop is
:mod:`culture_rl.train.calm_loop`, the data split, sampler and collation
:mod:`culture_rl.train.calm_data`, the export and its loader :mod:`culture_rl.train.calm_export`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from culture_rl.config.calm import CalmConfig, CalmTrainConfig
from culture_rl.config import DeepSpeedConfig, LoraConfig, ResourcesConfig
from culture_rl.train.calm_export import export_calm
from culture_rl.train.calm_loop import CalmLoop
from culture_rl.train.sft import FINISHED, StageFolders, TrainingError
from culture_rl.train.worker_process import root_cause, start_worker
from culture_rl.distributed.cluster import check_resources, connect
from culture_rl.distributed.deepspeed import DeepSpeedStrategy
from culture_rl.distributed.train_settings import ray_train_settings, worker_group
from culture_rl.models.loading import load_tokenizer
from culture_rl.train.callbacks import worker_log


def variant_config(calm: CalmConfig, variant: str) -> CalmConfig:
    """The CALM config of a comparison variant: ``calm`` (as is), ``baseline`` (every module
    off: a linear classification head on the pooled hidden states) or ``no_<module>``."""
    data = calm.model_dump()
    if variant in ("calm", "calm_short"):
        return calm
    if variant == "baseline":
        for module in ("disentangle", "contrastive", "prototypes", "cross_attention", "moe",
                       "fusion"):
            data[module]["enabled"] = False
        data["disentangle"]["orthogonal_cultural_parts"] = False
        data["heads"]["classification"] = True
        return CalmConfig.model_validate(data)
    if not variant.startswith("no_"):
        raise ValueError(f"unknown variant {variant!r}")
    module = variant[3:]
    data[module]["enabled"] = False
    if module == "disentangle":
        data["disentangle"]["orthogonal_cultural_parts"] = False
    return CalmConfig.model_validate(data)


# --------------------------------------------------------------------------------------------
# job


@dataclass
class CalmJob(StageFolders):
    """Everything a worker needs, built and validated on the driver."""

    stage: str
    stage_dir: str
    model_path: str
    calm: CalmConfig
    deepspeed: DeepSpeedConfig
    lora: LoraConfig | None
    train_rows: list[dict]  # {text, label_id, culture_id} (+ prompt/completion for LM rows)
    eval_rows: list[dict]
    label_names: list[str]
    culture_names: list[str]
    dtype: str = "float32"
    trust_remote_code: bool = False
    chat_template: str = "auto"  # model.chat_template
    seed: int = 42
    variants: list[str] = field(default_factory=list)  # set: a comparison stage
    variant_epochs: int = 0

    @property
    def train(self) -> CalmTrainConfig:
        return self.calm.train


# --------------------------------------------------------------------------------------------
# worker


def calm_worker(loop_config: dict) -> None:
    """The per-worker loop Ray Train runs (one DeepSpeed rank per worker)."""
    start = start_worker(loop_config)
    job: CalmJob = start.job
    use_gpu, rank, world = start.use_gpu, start.rank, start.world_size
    tokenizer = load_tokenizer(job.model_path, job.trust_remote_code, job.chat_template)
    micro = job.train.per_culture * len(job.culture_names)

    def strategy_for():
        strategy = DeepSpeedStrategy(job.deepspeed, micro_batch_size=micro,
                                     gradient_accumulation_steps=job.train.gradient_accumulation_steps,
                                     world_size=world, use_gpu=use_gpu)
        strategy.attach_distributed(rank)
        return strategy

    if not job.variants:
        strategy = strategy_for()
        engine, scores, step = CalmLoop(job, job.calm, job.train.epochs, strategy, rank, world,
                                        tokenizer, metrics_path=job.metrics_path,
                                        checkpointing=True, stage=job.stage).run()
        export_calm(job, engine, strategy, tokenizer, scores, step, rank)
        return

    folder = Path(job.stage_dir)
    for variant in job.variants:
        out = folder / f"{variant}.json"
        if out.is_file():
            continue
        calm = variant_config(job.calm, variant)
        strategy = strategy_for()
        metrics = folder / f"{variant}.metrics.jsonl"
        if rank == 0 and metrics.exists():
            metrics.unlink()
        t0 = time.perf_counter()
        epochs = (job.train.epochs if variant == "baseline"  # the same budget as CALM
                  else job.variant_epochs or job.train.epochs)
        engine, scores, step = CalmLoop(job, calm, epochs, strategy, rank, world, tokenizer,
                                        metrics_path=metrics if rank == 0 else None,
                                        checkpointing=False, stage=f"calm/{variant}").run()
        if rank == 0:
            scores.update(variant=variant, steps=step,
                          seconds=round(time.perf_counter() - t0, 1),
                          trainable_parameters=sum(p.numel() for p in engine.module.parameters()
                                                   if p.requires_grad))
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(scores, indent=2), "utf-8")
            tmp.replace(out)
            worker_log.info(f"[calm/{variant}] accuracy {scores['accuracy']:.3f} macro-F1 "
                            f"{scores['macro_f1']:.3f}")
        strategy.barrier()
        del engine


# --------------------------------------------------------------------------------------------
# driver


def _fit(job: CalmJob, resources: ResourcesConfig, name: str) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

    connect(resources.address)
    check_resources(resources)
    Path(job.stage_dir).mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        calm_worker,
        train_loop_config={"job": job, "use_gpu": resources.use_gpu,
                           "threads": max(1, int(resources.cpus_per_worker))},
        **worker_group(resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(Path(job.stage_dir).parent),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=resources.max_failures)))
    try:
        with ray_train_settings(resources):
            trainer.fit()
    except Exception as err:
        raise TrainingError(f"{job.stage} failed: {root_cause(err)} (rerun the same command "
                            f"to resume from the last checkpoint in {job.stage_dir})") from err


def run_calm_stage(job: CalmJob, resources: ResourcesConfig) -> dict:
    """Train CALM on Ray Train; resume if interrupted; no-op if finished. Returns the held-out
    scores (``already_finished`` set on a no-op)."""
    if (job.export_dir / FINISHED).is_file():
        print(f"[{job.stage}] already finished ({job.export_dir}); nothing to do. Use another "
              f"run.name to train again.", flush=True)
        scores = json.loads((job.export_dir / "eval.json").read_text("utf-8"))
        return {**scores, "already_finished": True}
    _fit(job, resources, Path(job.stage_dir).name)
    if not (job.export_dir / FINISHED).is_file():
        raise TrainingError(f"{job.stage} ended without an export in {job.export_dir}")
    return json.loads((job.export_dir / "eval.json").read_text("utf-8"))


def run_compare_stage(job: CalmJob, resources: ResourcesConfig) -> dict[str, dict]:
    """Train the baseline and ablation variants (those without a result yet) in one Ray Train
    run; returns variant -> scores."""
    folder = Path(job.stage_dir)
    missing = [v for v in job.variants if not (folder / f"{v}.json").is_file()]
    if missing:
        _fit(job, resources, folder.name)
    results = {}
    for variant in job.variants:
        path = folder / f"{variant}.json"
        if not path.is_file():
            raise TrainingError(f"{job.stage}: no result for {variant} in {folder}")
        results[variant] = json.loads(path.read_text("utf-8"))
    return results
