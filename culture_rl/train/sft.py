"""Training stages on Ray Train: TRL's ``SFTTrainer`` (or ``DPOTrainer``) with DeepSpeed inside
each worker.

One path serves three stages:

- ``pretrain``: plain language modelling on a text corpus (packed sequences, all weights) — how
  the tiny "vanilla" base model is made from the synthetic world's corpus;
- ``sft``: ALIGN stage 1, LoRA on prompt/completion pairs with the loss on the completion only;
- ``dpo``: the offline preference stage, TRL's ``DPOTrainer`` (LoRA; the adapter off is the
  reference) on prompt/chosen/rejected pairs (a job with ``preference`` set).

Ray's documented pattern for Hugging Face trainers is followed: ``RayTrainReportCallback``
(behind a barrier of the ranks: ``callbacks.checkpoint_report``)
reports each Hugging Face checkpoint (weights, DeepSpeed optimizer shards, scheduler, trainer
state with the data position, per-rank RNG state) to Ray storage, and ``prepare_trainer`` wires
in Ray Data. A rerun with the same run name resumes from ``ray.train.get_checkpoint()`` through
``Trainer.train(resume_from_checkpoint=...)``, which skips the batches already consumed — no
replay, no skip. The stage folder ``<run dir>/<stage>/`` holds Ray's checkpoints,
``metrics.jsonl`` and, once finished, ``export/`` (written under a temporary name and renamed
when complete, so a half-written export is never mistaken for a finished one).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path

from culture_rl.core.checkpoints import (FINISHED,  # noqa: F401 (re-exported)
                                         publish_export)
from culture_rl.config import DeepSpeedConfig, LoraConfig, ResourcesConfig, TrainConfig
from culture_rl.distributed.deepspeed import build_deepspeed_config, describe_batch
from culture_rl.core.errors import CultureRLError
from culture_rl.train.lm_head import use_dense_lm_head
from culture_rl.train.worker_process import root_cause, start_worker
from culture_rl.distributed.cluster import connect, check_resources
from culture_rl.distributed.train_settings import ray_train_settings, worker_group
from culture_rl.models.chat import preference_example, sft_example
from culture_rl.rl.preference import PREFERENCE_LOSSES
from culture_rl.models.loading import load_model, load_tokenizer, peft_lora_config, export_merged



class TrainingError(CultureRLError):
    """A training stage failed; the message carries the workers' root cause."""


class StageFolders:
    """Where a training stage keeps its export and its metrics, under ``stage_dir`` (shared by
    the SFT and CALM jobs)."""

    stage_dir: str

    @property
    def export_dir(self) -> Path:
        return Path(self.stage_dir) / "export"

    @property
    def metrics_path(self) -> Path:
        return Path(self.stage_dir) / "metrics.jsonl"


@dataclass(frozen=True)
class PreferenceSettings:
    """A preference stage's loss: a name of culture_rl.rl.preference.PREFERENCE_LOSSES."""
    loss: str
    beta: float
    label_smoothing: float = 0.0


@dataclass
class TrainJob(StageFolders):
    """Everything a worker needs, built on the driver (data is validated before Ray starts)."""

    stage: str
    stage_dir: str
    model_path: str
    train: TrainConfig
    deepspeed: DeepSpeedConfig
    lora: LoraConfig | None  # None: train all weights
    train_rows: list[dict]
    eval_rows: list[dict] = field(default_factory=list)
    text_field: str | None = None  # set: plain LM on this field with packing; else prompt/completion
    heldout_prompts: list[str] = field(default_factory=list)
    heldout_human: list[list[str]] = field(default_factory=list)
    dtype: str = "float32"
    trust_remote_code: bool = False
    chat_template: str = "auto"  # model.chat_template
    seed: int = 42
    eval_max_new_tokens: int = 40
    eval_batch_size: int = 16
    stop_file: str | None = None  # set: training ends early once this file exists (sweeps)
    dense_lm_head: bool = True  # on CPU: see use_dense_lm_head (False: TRL's chunked head)
    # Set: DPO on train_rows of prompt/chosen/rejected (culture_rl.data.preference_pairs).
    preference: PreferenceSettings | None = None


@dataclass
class StageResult:
    stage: str
    export_dir: Path
    model_dir: Path  # the folder to load for evaluation or the next stage
    final_metrics: dict
    already_finished: bool = False


def checkpointing_argument(enabled: bool) -> dict:
    """transformers 5.23 renamed ``gradient_checkpointing`` to ``activation_checkpointing``; the
    old name still works but warns in every worker, and versions before the rename know only
    the old one. So: the name this transformers has."""
    from trl import SFTConfig

    names = {option.name for option in fields(SFTConfig)}
    new_name = "activation_checkpointing"
    return {new_name if new_name in names else "gradient_checkpointing": enabled}


def training_arguments(job: TrainJob, world_size: int, use_gpu: bool, scratch_dir: str,
                       use_deepspeed: bool = True) -> dict:
    """The Hugging Face training arguments every stage shares (TRL's SFT and DPO configs both
    extend ``TrainingArguments``)."""
    train = job.train
    has_eval = bool(job.eval_rows) and train.eval_each_epoch
    return dict(
        output_dir=scratch_dir,
        num_train_epochs=train.epochs, max_steps=train.max_steps,
        learning_rate=train.learning_rate, lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=train.weight_decay, max_grad_norm=job.deepspeed.gradient_clipping,
        per_device_train_batch_size=train.micro_batch_size,
        per_device_eval_batch_size=train.micro_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        max_length=train.max_seq_length,
        # Explicit: TRL defaults to bf16 autocast and gradient checkpointing, which made tiny
        # CPU runs 10x slower.
        bf16=job.deepspeed.precision == "bf16", fp16=job.deepspeed.precision == "fp16",
        **checkpointing_argument(train.gradient_checkpointing),
        deepspeed=(build_deepspeed_config(job.deepspeed, train, world_size, use_gpu)
                   if use_deepspeed else None),
        save_strategy="steps" if train.save_steps else "epoch",
        save_steps=train.save_steps or 500, save_total_limit=1,
        eval_strategy="epoch" if has_eval else "no",
        logging_steps=train.logging_steps, logging_first_step=True,
        include_num_input_tokens_seen=True, report_to=[], disable_tqdm=True,
        seed=job.seed, data_seed=job.seed, use_cpu=not use_gpu,
        dataloader_num_workers=0, remove_unused_columns=True,
    )


def sft_args(job: TrainJob, world_size: int, use_gpu: bool, scratch_dir: str,
             use_deepspeed: bool = True):
    """TRL ``SFTConfig`` for a job (``use_deepspeed=False``: the plain single-process baseline
    the benchmark compares against)."""
    from trl import SFTConfig

    train = job.train
    return SFTConfig(
        **training_arguments(job, world_size, use_gpu, scratch_dir, use_deepspeed),
        # "wrapped" packing fills every row; best-fit packing is padding-free with
        # per-document attention, which on CPU (no flash attention) ran at half the speed.
        packing=job.text_field is not None and train.packing != "none",
        packing_strategy="bfd" if train.packing == "none" else train.packing,  # unread if off
        dataset_text_field=job.text_field or "text",
        completion_only_loss=job.text_field is None or None,
    )


def dpo_args(job: TrainJob, world_size: int, use_gpu: bool, scratch_dir: str,
             use_deepspeed: bool = True):
    """TRL ``DPOConfig`` for a preference job: our loss as TRL's loss types and weights."""
    from trl import DPOConfig

    settings = job.preference
    loss = PREFERENCE_LOSSES[settings.loss](settings.label_smoothing)
    return DPOConfig(**training_arguments(job, world_size, use_gpu, scratch_dir, use_deepspeed),
                     beta=settings.beta, loss_type=loss.loss_type,
                     loss_weights=loss.loss_weights, label_smoothing=loss.label_smoothing)


def train_worker(loop_config: dict) -> None:
    """The per-worker loop Ray Train runs (one DeepSpeed rank per worker)."""
    start = start_worker(loop_config)
    import ray.train
    from datasets import Dataset
    from ray.train.huggingface.transformers import prepare_trainer
    from transformers import PrinterCallback
    from trl import DPOTrainer, SFTTrainer

    # The callbacks and the sample ledger (peft, transformers' trainer) take ~3 s to import
    # (measured: importing this module went from 0.13 s to 3.2 s with them at module level);
    # the workers need them, the driver that only launches the workers should not wait.
    from culture_rl.train.callbacks import worker_log

    job: TrainJob = start.job
    use_gpu, rank, world_size = start.use_gpu, start.rank, start.world_size
    tokenizer = load_tokenizer(job.model_path, job.trust_remote_code, job.chat_template)
    model = load_model(job.model_path, job.dtype, job.trust_remote_code)
    scratch = loop_config["scratch_dir"]
    trainer_class = DPOTrainer if job.preference else SFTTrainer
    args = (dpo_args(job, world_size, use_gpu, scratch) if job.preference
            else sft_args(job, world_size, use_gpu, scratch))
    train_set = Dataset.from_list(training_rows(job, tokenizer, job.train_rows))
    eval_set = (Dataset.from_list(training_rows(job, tokenizer, job.eval_rows))
                if args.eval_strategy != "no" else None)

    trainer = trainer_class(model=model, args=args, train_dataset=train_set,
                            eval_dataset=eval_set, processing_class=tokenizer,
                            peft_config=peft_lora_config(job.lora) if job.lora else None,
                            callbacks=_callbacks(job, tokenizer, model, rank))
    trainer.remove_callback(PrinterCallback)  # raw dicts; ProgressLogger prints our lines
    if not use_gpu and job.dense_lm_head:
        use_dense_lm_head(trainer)
    trainer = prepare_trainer(trainer)
    if rank == 0:
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        worker_log.info(f"[{job.stage}] {describe_batch(job.train, world_size)}; ZeRO-"
                        f"{job.deepspeed.zero_stage}; {trainable:,} trainable parameters; "
                        f"{len(train_set)} training rows")

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.train(resume_from_checkpoint=str(Path(folder) / "checkpoint"))
    else:
        trainer.train()

    _export(job, trainer, tokenizer, rank)
    if start.local_rank == 0:
        shutil.rmtree(loop_config["scratch_dir"], ignore_errors=True)


def _callbacks(job: TrainJob, tokenizer, model, rank: int) -> list:
    """The trainer callbacks of a stage, in the order they must run."""
    from culture_rl.train.callbacks import (FaultInjection, HeldOutPrecision, ProgressLogger,
                                            StopOnRequest, checkpoint_report)  # see train_worker
    from culture_rl.train.ledger import SampleLedger  # transformers.trainer_utils: likewise

    callbacks = [ProgressLogger(job.stage, job.metrics_path)]
    if job.heldout_prompts and job.train.eval_each_epoch:
        callbacks.append(HeldOutPrecision(
            tokenizer, job.heldout_prompts, job.heldout_human, k=5,
            max_new_tokens=job.eval_max_new_tokens, batch_size=job.eval_batch_size,
            synced_gpus=job.deepspeed.zero_stage == 3, metrics_path=job.metrics_path,
            stage=job.stage))
    callbacks.append(checkpoint_report())  # Ray's RayTrainReportCallback, after a barrier
    if job.stop_file:  # a sweep's scheduler may stop this run early
        callbacks.append(StopOnRequest(job.stop_file))
    if job.train.fault_injection_step:
        callbacks.append(FaultInjection(job.train.fault_injection_step))  # after the report
    if job.train.log_sample_ids:
        callbacks.append(SampleLedger(model, job.stage_dir, rank))
    return callbacks


def _export(job: TrainJob, trainer, tokenizer, rank: int) -> None:
    """Every rank joins save_model (ZeRO-3 gathers the shards); rank 0 writes the export."""
    import torch.distributed as dist

    from culture_rl.train.callbacks import worker_log  # see train_worker

    partial = Path(job.stage_dir) / "export.partial"
    weights_dir = partial / ("adapter" if job.lora else "model")
    trainer.save_model(str(weights_dir))
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        tokenizer.save_pretrained(str(weights_dir))
        if job.lora and job.lora.merge_on_export:
            # Under ZeRO-3 the HF integration makes from_pretrained partition weights across
            # ranks (a collective): loading the base here on rank 0 alone would hang.
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
            export_merged(weights_dir, partial / "model", job.dtype)
        final = {}
        for record in trainer.state.log_history:
            final.update(record)
        publish_export(partial, job.export_dir, {"stage": job.stage,
                                                 "global_step": trainer.state.global_step,
                                                 "final_metrics": final})
        worker_log.info(f"[{job.stage}] exported to {job.export_dir}")
    if dist.is_initialized():
        dist.barrier()


def _result_of(job: TrainJob, already_finished: bool) -> StageResult:
    info = json.loads((job.export_dir / FINISHED).read_text("utf-8"))
    model_dir = job.export_dir / "model"
    if not model_dir.is_dir():
        model_dir = job.export_dir / "adapter"
    return StageResult(job.stage, job.export_dir, model_dir, info.get("final_metrics", {}),
                       already_finished)


def run_stage(job: TrainJob, resources: ResourcesConfig, callbacks: list | None = None
              ) -> StageResult:
    """Train one stage on Ray Train; resume it if it was interrupted; no-op if it finished.

    ``callbacks`` go to the Ray Train ``RunConfig`` (a sweep trial passes one that forwards
    each epoch's report to its Tune trial)."""
    if (job.export_dir / FINISHED).is_file():
        print(f"[{job.stage}] already finished ({job.export_dir}); nothing to do. Use another "
              f"run.name to train again.", flush=True)
        return _result_of(job, already_finished=True)

    import ray.train
    from ray.train.torch import TorchTrainer

    connect(resources.address)
    check_resources(resources)
    Path(job.stage_dir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.gettempdir()) / "culture_rl" / f"{job.stage}-{uuid.uuid4().hex[:8]}"
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"job": job, "use_gpu": resources.use_gpu,
                           "threads": max(1, int(resources.cpus_per_worker)),
                           "scratch_dir": str(scratch)},
        **worker_group(resources),
        # Ray Train resumes from <storage_path>/<name>: that is the stage's own folder, so a
        # stage trained anew beside another (CultureSPA's keyed joint-<key> folders) never
        # resumes from the other's checkpoints.
        run_config=ray.train.RunConfig(
            name=Path(job.stage_dir).name, storage_path=str(Path(job.stage_dir).parent),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=resources.max_failures),
            callbacks=list(callbacks or [])))
    try:
        with ray_train_settings(resources):
            trainer.fit()
    except Exception as err:  # Ray wraps worker errors; surface the root cause in one line
        raise TrainingError(f"{job.stage} failed: {root_cause(err)} (rerun the same command "
                            f"to resume from the last checkpoint in {job.stage_dir})") from err
    if not (job.export_dir / FINISHED).is_file():
        raise TrainingError(f"{job.stage} ended without an export in {job.export_dir}")
    return _result_of(job, already_finished=False)


def training_rows(job: TrainJob, tokenizer, rows: list[dict]) -> list[dict]:
    """The rows TRL trains on: the text field (language modelling), prompt/completion pairs
    or prompt/chosen/rejected pairs (preference), as chat messages when the model has a chat
    template (culture_rl.models.chat)."""
    if job.text_field:
        return [{job.text_field: row[job.text_field]} for row in rows]
    if job.preference:
        return [preference_example(tokenizer, row["prompt"], row["chosen"], row["rejected"])
                for row in rows]
    return [sft_example(tokenizer, row["prompt"], row["completion"]) for row in rows]
