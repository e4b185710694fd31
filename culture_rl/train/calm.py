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
held-out inputs, to prove a reload is the same model); :func:`load_calm_export` rebuilds it.

The comparison stage (``<run>/calm/compare/``, one Ray Train run) trains the baseline (every
CALM module off: a linear classifier on the pooled hidden states, with the same LoRA, data and
sampler) and each ablation in turn, on the same held-out split; each variant's result is
written when done, so a rerun skips finished variants.

This module holds the job, the worker loop and the driver; the data split, sampler and collation
live in :mod:`culture_rl.train.calm_data` and the export and its loader in
:mod:`culture_rl.train.calm_export` (both re-exported here).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from culture_rl.calm_config import CalmConfig, CalmTrainConfig
from culture_rl.config import DeepSpeedConfig, LoraConfig, ResourcesConfig
from culture_rl.train.calm_data import (IGNORE, CalmRows,  # noqa: F401  (re-exported)
                                        per_culture_batches, rank_batches, split_statements,
                                        steps_per_epoch)
from culture_rl.train.calm_export import export_calm, load_calm_export  # noqa: F401  (re-exported)
from culture_rl.train.sft import FINISHED, StageFolders, TrainingError
from culture_rl.train.worker_process import (quiet_ray_train_reports, restore_builtin_print,
                                             root_cause)

LOSS_TERMS = ("lm", "classification", "contrastive", "prototype", "orthogonality",
              "load_balance", "culture")

# --------------------------------------------------------------------------------------------
# pure helpers


def learning_rate_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def classification_scores(y_true: list[str], y_pred: list[str], cultures: list,
                          labels: list[str], subsets: list | None = None) -> dict:
    """Accuracy and macro-F1 overall, per culture and (when the rows carry one) per subset."""
    from culture_rl.eval.metrics import accuracy, macro_f1

    def part(idx: list[int]) -> dict:
        t, p = [y_true[i] for i in idx], [y_pred[i] for i in idx]
        return {"accuracy": accuracy(t, p), "macro_f1": macro_f1(t, p, labels), "n": len(idx)}

    result = {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred, labels),
              "n": len(y_true), "by_culture": {}}
    for culture in sorted({c for c in cultures if c is not None}):
        result["by_culture"][culture] = part([i for i, c in enumerate(cultures) if c == culture])
    if subsets and any(s is not None for s in subsets):
        result["by_subset"] = {name: part([i for i, s in enumerate(subsets) if s == name])
                               for name in sorted({s for s in subsets if s is not None})}
    return result


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


def _build_model(job: CalmJob, calm: CalmConfig):
    from culture_rl.models.calm import build_calm_model
    from culture_rl.models.loading import load_model, peft_lora_config

    base = load_model(job.model_path, job.dtype, job.trust_remote_code)
    if job.lora is not None:
        from peft import get_peft_model

        base = get_peft_model(base, peft_lora_config(job.lora))
    return build_calm_model(base, calm, len(job.culture_names), len(job.label_names))


def _param_groups(model, train: CalmTrainConfig) -> list[dict]:
    calm_ids = {id(p) for p in model.calm.parameters()}
    calm = [p for p in model.calm.parameters() if p.requires_grad]
    base = [p for p in model.parameters() if p.requires_grad and id(p) not in calm_ids]
    groups = [{"params": calm, "lr": train.calm_learning_rate}]
    if base:
        groups.append({"params": base, "lr": train.learning_rate})
    return groups


def _predict(strategy, engine, rows: CalmRows, label_names, rank: int, world: int,
             batch_size: int = 32) -> list[tuple[str, list[float] | None]]:
    """(predicted label, gate weights) of every row, on every rank: each rank runs its strided
    share (padded so all ranks run the same number of passes, as ZeRO-3 needs)."""
    import torch
    import torch.distributed as dist

    n = len(rows.items)
    indices = list(range(rank, n, world))
    longest = math.ceil(n / world)
    padded = indices + [indices[0] if indices else 0] * (longest - len(indices))
    model = engine.module
    was_training = model.training
    model.eval()
    mine = []
    with torch.no_grad():
        for start in range(0, len(padded), batch_size):
            chunk = padded[start:start + batch_size]
            batch = rows.batch(chunk)
            device = engine.device
            read = batch.get("identity_mask")
            out = model.identity_state(batch["input_ids"].to(device),
                                       batch["attention_mask"].to(device),
                                       None if read is None else read.to(device))
            preds = out.class_logits.argmax(-1).tolist()
            gates = out.gate_weights.float().cpu().tolist() if out.gate_weights is not None \
                else [None] * len(chunk)
            for j, p, g in zip(chunk[:], preds, gates):
                mine.append((j, label_names[p], g))
    mine = mine[:len(indices)]
    model.train(was_training)
    if dist.is_initialized() and world > 1:
        everyone: list = [None] * world
        dist.all_gather_object(everyone, mine)
    else:
        everyone = [mine]
    result: list = [None] * n
    for part in everyone:
        for j, p, g in part:
            result[j] = (p, g)
    return result


def _evaluate(strategy, engine, rows: CalmRows, job: CalmJob, rank: int, world: int) -> dict:
    predictions = _predict(strategy, engine, rows, job.label_names, rank, world)
    y_true = [r["label"] for r in job.eval_rows]
    y_pred = [p for p, _ in predictions]
    cultures = [r["culture"] for r in job.eval_rows]
    scores = classification_scores(y_true, y_pred, cultures, job.label_names,
                                   [r.get("subset") for r in job.eval_rows])
    gates = [g for _, g in predictions]
    if gates and gates[0] is not None:
        import torch

        from culture_rl.models.calm import routing_by_culture

        table = routing_by_culture(torch.tensor(gates),
                                   torch.tensor([r["culture_id"] for r in job.eval_rows]),
                                   len(job.culture_names))
        scores["routing"] = {name: [round(v, 4) for v in table[i].tolist()]
                             for i, name in enumerate(job.culture_names)}
    return scores


def _log(job_stage: str, metrics_path: Path | None, record: dict, total: int) -> None:
    from culture_rl.train.callbacks import append_jsonl, worker_log

    if metrics_path is not None:
        append_jsonl(metrics_path, record)
    parts = [f"step {record['step']}/{total}", f"epoch {record['epoch']:.2f}",
             f"loss {record['loss']:.4f}"]
    parts += [f"{k} {record[k]:.4f}" for k in LOSS_TERMS if k in record]
    worker_log.info(f"[{job_stage}] " + "  ".join(parts))


def _train(job: CalmJob, calm: CalmConfig, epochs: int, strategy, rank: int, world: int,
           tokenizer, *, metrics_path: Path | None, checkpointing: bool, use_gpu: bool,
           stage: str):
    """Build, (resume,) train and evaluate one CALM model; returns (engine, scores, step)."""
    import ray.train
    import torch

    from culture_rl.train.callbacks import drop_records_after, worker_log

    train = calm.train
    lm = train.lm_task and calm.heads.lm
    rows = CalmRows(tokenizer, job.train_rows, train.max_seq_length, lm)
    eval_rows = CalmRows(tokenizer, job.eval_rows, train.max_seq_length, False)
    culture_ids = [r["culture_id"] for r in job.train_rows]
    per = [culture_ids.count(c) for c in sorted(set(culture_ids))]
    spe = steps_per_epoch(per, train.per_culture, world, train.gradient_accumulation_steps)
    if spe < 1:
        raise TrainingError(f"{stage}: too few rows for one optimizer step (smallest culture "
                            f"{min(per)} rows, per_culture {train.per_culture}, {world} workers)")
    total = epochs * spe if train.max_steps < 0 else min(train.max_steps, epochs * spe)
    warmup = int(train.warmup_ratio * total)

    torch.manual_seed(job.seed)  # the same initial CALM weights on every rank
    model = _build_model(job, calm)
    lr_lambda = (lambda s: learning_rate_factor(s, total, warmup, train.lr_scheduler))
    engine = strategy.prepare(
        model, train.calm_learning_rate, train.weight_decay,
        param_groups=_param_groups(model, train),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda))
    frozen_base = job.lora is not None or calm.freeze_base

    step, resumed, resumed_curve = 0, False, []
    checkpoint = ray.train.get_checkpoint() if checkpointing else None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            client = strategy.load(engine, Path(folder) / "ds", frozen_base=frozen_base)
            step, resumed = int(client["global_step"]), True
            resumed_curve = [list(point) for point in client.get("curve", [])]
            rng = Path(folder) / f"rng_rank{rank}.pt"
            if rng.is_file():
                state = torch.load(rng, weights_only=True)  # tensors, ints and tuples only
                torch.set_rng_state(state["torch"])
                random.setstate(state["python"])
    if rank == 0:
        if metrics_path is not None:
            drop_records_after(metrics_path, step)
        trainable = sum(p.numel() for p in engine.module.parameters() if p.requires_grad)
        where = f"resuming at step {step}" if resumed else "starting"
        worker_log.info(f"[{stage}] {where}: {total} optimizer steps ({spe} per epoch); micro "
                        f"batch {train.per_culture} x {len(per)} cultures x accumulation "
                        f"{train.gradient_accumulation_steps} x {world} workers; ZeRO-"
                        f"{job.deepspeed.zero_stage}; {trainable:,} trainable parameters")

    def save_and_report(metrics: dict) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f"calm-ckpt-r{rank}-"))
        strategy.save(engine, tmp / "ds", {"global_step": step, "curve": curve},
                      frozen_base=frozen_base)
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()},
                   tmp / f"rng_rank{rank}.pt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
        shutil.rmtree(tmp, ignore_errors=True)

    device = engine.device
    engine.train()
    sums: dict[str, float] = {}
    count, t0, samples = 0, time.perf_counter(), 0
    scores: dict = {}
    curve: list = resumed_curve  # [step, accuracy, macro-F1] of every held-out evaluation
    while step < total:
        epoch = step // spe
        batches = rank_batches(per_culture_batches(culture_ids, train.per_culture, job.seed,
                                                   epoch), rank, world)
        start = (step % spe) * train.gradient_accumulation_steps
        for i in range(start, spe * train.gradient_accumulation_steps):
            batch = {k: v.to(device) for k, v in rows.batch(batches[i]).items()}
            out = engine(**batch)
            strategy.backward(engine, out.loss)
            strategy.step(engine)
            sums["loss"] = sums.get("loss", 0.0) + float(out.loss.detach())
            for name, value in out.losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            count += 1
            samples += len(batches[i])
            if (i + 1) % train.gradient_accumulation_steps:
                continue
            step += 1
            if step == 1 or step % train.logging_steps == 0 or step == total:
                means = strategy.all_reduce_mean({k: v / count for k, v in sums.items()})
                if rank == 0:
                    elapsed = max(time.perf_counter() - t0, 1e-9)
                    record = {"stage": stage, "step": step, "epoch": round(step / spe, 4),
                              "time": time.time(), **{k: round(v, 6) for k, v in means.items()},
                              "learning_rate": engine.get_lr()[0],
                              "samples_per_s": round(samples * world / elapsed, 1)}
                    _log(stage, metrics_path, record, total)
                sums, count, t0, samples = {}, 0, time.perf_counter(), 0
            epoch_end = step % spe == 0 or step == total
            if epoch_end or (train.eval_steps and step % train.eval_steps == 0):
                scores = _evaluate(strategy, engine, eval_rows, job, rank, world)
                curve.append([step, round(scores["accuracy"], 4), round(scores["macro_f1"], 4)])
                scores["curve"] = list(curve)
            if rank == 0 and metrics_path is not None and curve and curve[-1][0] == step \
                    and not epoch_end:
                from culture_rl.train.callbacks import append_jsonl

                append_jsonl(metrics_path, {"stage": stage, "step": step,
                                            "epoch": round(step / spe, 4), "time": time.time(),
                                            "eval_accuracy": curve[-1][1],
                                            "eval_macro_f1": curve[-1][2]})
            if epoch_end:
                if rank == 0:
                    from culture_rl.train.callbacks import append_jsonl

                    record = {"stage": stage, "step": step, "epoch": round(step / spe, 4),
                              "time": time.time(), "eval_accuracy": round(scores["accuracy"], 4),
                              "eval_macro_f1": round(scores["macro_f1"], 4)}
                    if "routing" in scores:
                        record["routing_by_culture"] = scores["routing"]
                    if metrics_path is not None:
                        append_jsonl(metrics_path, record)
                    routing = "; ".join(f"{c} {v}" for c, v in scores.get("routing", {}).items())
                    worker_log.info(f"[{stage}] epoch {record['epoch']:.2f}: held-out accuracy "
                                    f"{scores['accuracy']:.3f}, macro-F1 {scores['macro_f1']:.3f}"
                                    + (f"; gate weights per culture: {routing}" if routing else ""))
            if checkpointing and (epoch_end or (train.save_steps and step % train.save_steps == 0)):
                save_and_report({"step": step})
                if train.fault_injection_step and not resumed and step >= train.fault_injection_step:
                    raise RuntimeError(f"fault injected after step {step} "
                                       f"(calm.train.fault_injection_step="
                                       f"{train.fault_injection_step})")
            if step >= total:
                break
    if not scores:  # resumed at the very end
        scores = _evaluate(strategy, engine, eval_rows, job, rank, world)
    return engine, scores, step


def calm_worker(loop_config: dict) -> None:
    """The per-worker loop Ray Train runs (one DeepSpeed rank per worker)."""
    restore_builtin_print()
    import ray.train
    import torch

    from culture_rl.distributed.deepspeed import DeepSpeedStrategy
    from culture_rl.models.loading import load_tokenizer
    from culture_rl.train.callbacks import worker_log

    quiet_ray_train_reports()
    job: CalmJob = loop_config["job"]
    use_gpu: bool = loop_config["use_gpu"]
    torch.set_num_threads(loop_config["threads"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
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
        engine, scores, step = _train(job, job.calm, job.train.epochs, strategy, rank, world,
                                      tokenizer, metrics_path=job.metrics_path,
                                      checkpointing=True, use_gpu=use_gpu, stage=job.stage)
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
        engine, scores, step = _train(job, calm, epochs,
                                      strategy, rank, world, tokenizer,
                                      metrics_path=metrics if rank == 0 else None,
                                      checkpointing=False, use_gpu=use_gpu,
                                      stage=f"calm/{variant}")
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
    from ray.train.torch import TorchConfig, TorchTrainer

    from culture_rl.distributed.cluster import check_resources, connect
    from culture_rl.distributed.deepspeed import torch_backend
    from culture_rl.distributed.train_settings import ray_train_settings

    connect(resources.address)
    check_resources(resources)
    Path(job.stage_dir).mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        calm_worker,
        train_loop_config={"job": job, "use_gpu": resources.use_gpu,
                           "threads": max(1, int(resources.cpus_per_worker))},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers, use_gpu=resources.use_gpu,
            resources_per_worker={"CPU": resources.cpus_per_worker}),
        torch_config=TorchConfig(backend=torch_backend(resources.use_gpu),
                                 timeout_s=int(resources.collective_timeout_s)),
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
