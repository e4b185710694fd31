"""One CALM model's training inside a Ray Train worker: build, resume, train, evaluate.

:class:`CalmLoop` is the loop :func:`culture_rl.train.calm.calm_worker` runs once for the CALM
stage and once per comparison variant. Each optimizer step it may log (every
``calm.train.logging_steps``), evaluate held-out rows (every ``eval_steps`` and at each epoch
end) and checkpoint (each epoch end or ``save_steps``); the batch order is a pure function of
(seed, epoch), so the step is the data position and a resumed run neither replays nor skips
micro batches.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from culture_rl.config.calm import CalmConfig, CalmTrainConfig
from culture_rl.eval.metrics import accuracy, macro_f1
from culture_rl.train.callbacks import append_jsonl, drop_records_after, worker_log
from culture_rl.train.calm_data import CalmRows, per_culture_batches, rank_batches, steps_per_epoch
from culture_rl.train.sft import TrainingError
from culture_rl.models.calm import build_calm_model, routing_by_culture
from culture_rl.models.loading import load_model, peft_lora_config

if TYPE_CHECKING:
    from culture_rl.train.calm import CalmJob

LOSS_TERMS = ("lm", "classification", "contrastive", "prototype", "orthogonality",
              "load_balance", "culture")


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


def _build_model(job: CalmJob, calm: CalmConfig):
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


def _predict(engine, rows: CalmRows, label_names, rank: int, world: int,
             batch_size: int = 32) -> list[tuple[str, list[float] | None]]:
    """(predicted label, gate weights) of every row, on every rank: each rank runs its strided
    share (padded so all ranks run the same number of passes, as ZeRO-3 needs)."""
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


def evaluate_held_out(engine, rows: CalmRows, job: CalmJob, rank: int, world: int) -> dict:
    """Held-out classification scores and (with MoE) the mean gate weight per culture."""
    predictions = _predict(engine, rows, job.label_names, rank, world)
    y_true = [r["label"] for r in job.eval_rows]
    y_pred = [p for p, _ in predictions]
    cultures = [r["culture"] for r in job.eval_rows]
    scores = classification_scores(y_true, y_pred, cultures, job.label_names,
                                   [r.get("subset") for r in job.eval_rows])
    gates = [g for _, g in predictions]
    if gates and gates[0] is not None:
        table = routing_by_culture(torch.tensor(gates),
                                   torch.tensor([r["culture_id"] for r in job.eval_rows]),
                                   len(job.culture_names))
        scores["routing"] = {name: [round(v, 4) for v in table[i].tolist()]
                             for i, name in enumerate(job.culture_names)}
    return scores


@dataclass
class StepPlan:
    """How many optimizer steps one CALM model takes, from its rows and the batch shape."""

    rows_per_culture: list[int]
    steps_per_epoch: int
    total: int
    warmup: int

    @classmethod
    def of(cls, culture_ids: list[int], train: CalmTrainConfig, epochs: int, world: int,
           stage: str) -> StepPlan:
        per = [culture_ids.count(c) for c in sorted(set(culture_ids))]
        spe = steps_per_epoch(per, train.per_culture, world, train.gradient_accumulation_steps)
        if spe < 1:
            raise TrainingError(f"{stage}: too few rows for one optimizer step (smallest culture "
                                f"{min(per)} rows, per_culture {train.per_culture}, {world} "
                                f"workers)")
        total = epochs * spe if train.max_steps < 0 else min(train.max_steps, epochs * spe)
        return cls(per, spe, total, int(train.warmup_ratio * total))


class CalmLoop:
    """Build, (resume,) train and evaluate one CALM model on this rank; :meth:`run` returns
    (engine, held-out scores, final step)."""

    def __init__(self, job: CalmJob, calm: CalmConfig, epochs: int, strategy, rank: int,
                 world: int, tokenizer, *, metrics_path: Path | None, checkpointing: bool,
                 stage: str):
        self.job, self.calm, self.train = job, calm, calm.train
        self.strategy, self.rank, self.world = strategy, rank, world
        self.metrics_path, self.checkpointing, self.stage = metrics_path, checkpointing, stage
        lm = self.train.lm_task and calm.heads.lm
        self.rows = CalmRows(tokenizer, job.train_rows, self.train.max_seq_length, lm)
        self.eval_rows = CalmRows(tokenizer, job.eval_rows, self.train.max_seq_length, False)
        self.culture_ids = [r["culture_id"] for r in job.train_rows]
        self.plan = StepPlan.of(self.culture_ids, self.train, epochs, world, stage)
        self.frozen_base = job.lora is not None or calm.freeze_base
        self.step, self.resumed = 0, False
        self.curve: list = []  # [step, accuracy, macro-F1] of every held-out evaluation
        self.scores: dict = {}
        self.engine = self._prepare_engine()

    def _prepare_engine(self):
        torch.manual_seed(self.job.seed)  # the same initial CALM weights on every rank
        model = _build_model(self.job, self.calm)
        plan, train = self.plan, self.train

        def lr_lambda(step: int) -> float:
            return learning_rate_factor(step, plan.total, plan.warmup, train.lr_scheduler)

        return self.strategy.prepare(
            model, train.calm_learning_rate, train.weight_decay,
            param_groups=_param_groups(model, train),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda))

    def _resume(self) -> None:
        import ray.train

        checkpoint = ray.train.get_checkpoint() if self.checkpointing else None
        if checkpoint is None:
            return
        with checkpoint.as_directory() as folder:
            client = self.strategy.load(self.engine, Path(folder) / "ds",
                                        frozen_base=self.frozen_base)
            self.step, self.resumed = int(client["global_step"]), True
            self.curve = [list(point) for point in client.get("curve", [])]
            rng = Path(folder) / f"rng_rank{self.rank}.pt"
            if rng.is_file():
                state = torch.load(rng, weights_only=True)  # tensors, ints and tuples only
                torch.set_rng_state(state["torch"])
                random.setstate(state["python"])

    def _announce(self) -> None:
        if self.metrics_path is not None:
            drop_records_after(self.metrics_path, self.step)
        trainable = sum(p.numel() for p in self.engine.module.parameters() if p.requires_grad)
        where = f"resuming at step {self.step}" if self.resumed else "starting"
        train, plan = self.train, self.plan
        worker_log.info(f"[{self.stage}] {where}: {plan.total} optimizer steps "
                        f"({plan.steps_per_epoch} per epoch); micro batch {train.per_culture} x "
                        f"{len(plan.rows_per_culture)} cultures x accumulation "
                        f"{train.gradient_accumulation_steps} x {self.world} workers; ZeRO-"
                        f"{self.job.deepspeed.zero_stage}; {trainable:,} trainable parameters")

    def _record(self, **fields) -> dict:
        return {"stage": self.stage, "step": self.step,
                "epoch": round(self.step / self.plan.steps_per_epoch, 4), "time": time.time(),
                **fields}

    def _log_losses(self, sums: dict[str, float], count: int, samples: int,
                    elapsed: float) -> None:
        means = self.strategy.all_reduce_mean({k: v / count for k, v in sums.items()})
        if self.rank != 0:
            return
        record = self._record(**{k: round(v, 6) for k, v in means.items()},
                              learning_rate=self.engine.get_lr()[0],
                              samples_per_s=round(samples * self.world / max(elapsed, 1e-9), 1))
        if self.metrics_path is not None:
            append_jsonl(self.metrics_path, record)
        parts = [f"step {record['step']}/{self.plan.total}", f"epoch {record['epoch']:.2f}",
                 f"loss {record['loss']:.4f}"]
        parts += [f"{k} {record[k]:.4f}" for k in LOSS_TERMS if k in record]
        worker_log.info(f"[{self.stage}] " + "  ".join(parts))

    def _evaluate(self, epoch_end: bool) -> None:
        self.scores = evaluate_held_out(self.engine, self.eval_rows, self.job, self.rank,
                                        self.world)
        self.curve.append([self.step, round(self.scores["accuracy"], 4),
                           round(self.scores["macro_f1"], 4)])
        self.scores["curve"] = list(self.curve)
        if self.rank != 0:
            return
        scores = self.scores
        record = self._record(eval_accuracy=round(scores["accuracy"], 4),
                              eval_macro_f1=round(scores["macro_f1"], 4))
        if epoch_end and "routing" in scores:
            record["routing_by_culture"] = scores["routing"]
        if self.metrics_path is not None:
            append_jsonl(self.metrics_path, record)
        if epoch_end:
            routing = "; ".join(f"{c} {v}" for c, v in scores.get("routing", {}).items())
            worker_log.info(f"[{self.stage}] epoch {record['epoch']:.2f}: held-out accuracy "
                            f"{scores['accuracy']:.3f}, macro-F1 {scores['macro_f1']:.3f}"
                            + (f"; gate weights per culture: {routing}" if routing else ""))

    def _checkpoint(self) -> None:
        import ray.train

        tmp = Path(tempfile.mkdtemp(prefix=f"calm-ckpt-r{self.rank}-"))
        self.strategy.save(self.engine, tmp / "ds", {"global_step": self.step,
                                                     "curve": self.curve},
                           frozen_base=self.frozen_base)
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()},
                   tmp / f"rng_rank{self.rank}.pt")
        ray.train.report({"step": self.step},
                         checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
        shutil.rmtree(tmp, ignore_errors=True)
        fault = self.train.fault_injection_step
        if fault and not self.resumed and self.step >= fault:
            raise RuntimeError(f"fault injected after step {self.step} "
                               f"(calm.train.fault_injection_step={fault})")

    def _after_optimizer_step(self) -> None:
        train, step = self.train, self.step
        epoch_end = step % self.plan.steps_per_epoch == 0 or step == self.plan.total
        if epoch_end or (train.eval_steps and step % train.eval_steps == 0):
            self._evaluate(epoch_end)
        if self.checkpointing and (epoch_end or (train.save_steps
                                                 and step % train.save_steps == 0)):
            self._checkpoint()

    def run(self):
        self._resume()
        if self.rank == 0:
            self._announce()
        train, plan, device = self.train, self.plan, self.engine.device
        accumulation = train.gradient_accumulation_steps
        self.engine.train()
        sums: dict[str, float] = {}
        count, t0, samples = 0, time.perf_counter(), 0
        while self.step < plan.total:
            epoch = self.step // plan.steps_per_epoch
            batches = rank_batches(per_culture_batches(self.culture_ids, train.per_culture,
                                                       self.job.seed, epoch),
                                   self.rank, self.world)
            start = (self.step % plan.steps_per_epoch) * accumulation
            for i in range(start, plan.steps_per_epoch * accumulation):
                batch = {k: v.to(device) for k, v in self.rows.batch(batches[i]).items()}
                out = self.engine(**batch)
                self.strategy.backward(self.engine, out.loss)
                self.strategy.step(self.engine)
                sums["loss"] = sums.get("loss", 0.0) + float(out.loss.detach())
                for name, value in out.losses.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                count += 1
                samples += len(batches[i])
                if (i + 1) % accumulation:
                    continue
                self.step += 1
                if self.step == 1 or self.step % train.logging_steps == 0 \
                        or self.step == plan.total:
                    self._log_losses(sums, count, samples, time.perf_counter() - t0)
                    sums, count, t0, samples = {}, 0, time.perf_counter(), 0
                self._after_optimizer_step()
                if self.step >= plan.total:
                    break
        if not self.scores:  # resumed at the very end
            self.scores = evaluate_held_out(self.engine, self.eval_rows, self.job, self.rank,
                                            self.world)
        return self.engine, self.scores, self.step
