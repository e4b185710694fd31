"""Hugging Face ``TrainerCallback``s used inside every Ray Train worker.

- :class:`ProgressLogger` (rank 0 only): one progress line per logging step with loss and
  tokens/s, and every logged record appended to ``<stage dir>/metrics.jsonl`` — our own record,
  because Ray Train V2 leaves ``result.metrics`` empty unless a checkpoint was reported. The
  same numbers go to the ``culture_rl_*`` Ray gauges (loss, tokens_per_s, eval_p@5, ...).
- :class:`HeldOutPrecision`: held-out P@5 by greedy generation at the end of every epoch; all
  ranks generate their share of the cues and the sums are all-reduced.
- :class:`CheckpointReport`: Ray's ``RayTrainReportCallback`` behind a barrier of all ranks
  (why: its docstring).
- :class:`FaultInjection`: raises after a chosen step on a fresh (non-resumed) attempt, so tests
  can interrupt a run at a known point and check that the rerun resumes correctly.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Sequence

from transformers import TrainerCallback

from culture_rl.distributed.metrics import RayGauges
from culture_rl.core.redact import redact
from culture_rl.eval.metrics import precision_at_k

# Inside Ray Train workers, print() is patched to go through the root logger *and*, when a
# library has wrapped sys.stdout, to the stream as well, so each line showed up twice on the
# driver. Logging through a logger goes through Ray's path exactly once.
worker_log = logging.getLogger("culture_rl.worker")


def append_jsonl(path: Path, record: dict) -> None:
    """Append one redacted record (Hugging Face puts whatever a callback logs into ``logs``)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(redact(record), ensure_ascii=False) + "\n")


def stage_gauges(stage: str, metrics_path: str | Path) -> RayGauges:
    """Ray gauges of a training stage, tagged with the run (the stage folder's parent)."""
    return RayGauges(run=Path(metrics_path).parent.parent.name, workflow=stage)


def _numbers(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("time", "stage")}


class ProgressLogger(TrainerCallback):
    def __init__(self, stage: str, metrics_path: str | Path):
        self.stage = stage
        self.metrics_path = Path(metrics_path)
        self.gauges = stage_gauges(stage, metrics_path)
        self._last_time: float | None = None
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen or 0
        if state.is_world_process_zero:
            # Also at step 0: a worker group lost before Ray Train registered a checkpoint
            # starts again from scratch, and its first attempt's records must go.
            drop_records_after(self.metrics_path, state.global_step)
            where = f"resuming at step {state.global_step}" if state.global_step else "starting"
            worker_log.info(f"[{self.stage}] {where}: {state.max_steps} optimizer steps")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.perf_counter()
        tokens = state.num_input_tokens_seen or 0
        record = {"stage": self.stage, "step": state.global_step,
                  "epoch": round(state.epoch or 0.0, 4), "time": time.time()}
        # TRL's "/" is a namespace (DPO's "rewards/margins"); ours tags a culture
        # (gauge_updates), so TRL's keys are flattened: "rewards_margins".
        record.update({k.replace("/", "_"): v for k, v in logs.items()
                       if isinstance(v, (int, float))})
        if "loss" in logs and self._last_time is not None and now > self._last_time:
            record["tokens_per_s"] = round((tokens - self._last_tokens) / (now - self._last_time), 1)
            self._last_time, self._last_tokens = now, tokens
        append_jsonl(self.metrics_path, record)
        self.gauges.set(_numbers(record))
        worker_log.info(f"[{self.stage}] " + _format_progress(record, state.max_steps))


def drop_records_after(path: Path, step: int) -> None:
    """On resume, forget what the interrupted attempt logged past the checkpoint: those steps
    are trained again, and metrics.jsonl must show each step once."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text("utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), "utf-8")
    tmp.replace(path)


def _format_progress(record: dict, max_steps: int) -> str:
    parts = [f"step {record['step']}/{max_steps}", f"epoch {record['epoch']:.2f}"]
    for key, fmt in (("loss", ".4f"), ("rewards_margins", ".3f"), ("rewards_accuracies", ".2f"),
                     ("eval_loss", ".4f"), ("eval_p@5", ".3f"),
                     ("learning_rate", ".2e"), ("tokens_per_s", ".0f")):
        if key in record and not (isinstance(record[key], float) and math.isnan(record[key])):
            parts.append(f"{key} {record[key]:{fmt}}")
    return "  ".join(parts)


class HeldOutPrecision(TrainerCallback):
    """P@k of greedy association answers on held-out cues, logged as ``eval_p@k``."""

    def __init__(self, tokenizer, prompts: Sequence[str], human: Sequence[Sequence[str]], *,
                 k: int = 5, max_new_tokens: int = 40, batch_size: int = 16,
                 synced_gpus: bool = False,
                 metrics_path: str | Path | None = None, stage: str = ""):
        self.prompts, self.human = list(prompts), [list(h) for h in human]
        self.k, self.max_new_tokens, self.batch_size = k, max_new_tokens, batch_size
        self.synced_gpus = synced_gpus
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.gauges = stage_gauges(stage, metrics_path) if metrics_path else None
        self.stage = stage
        self.tokenizer = tokenizer

    def score(self, model) -> float:
        import torch
        import torch.distributed as dist

        # Imported here, not at module level: culture_rl.eval.metrics pulls in scipy.stats
        # (~0.4 s), which every Ray Train worker paid at start-up even with no held-out cues.
        from culture_rl.inference.generation import generate_answers

        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        # Strided shards; under ZeRO-3 every rank must run the same number of batches, so each
        # shard is padded to the longest with a repeated prompt whose score is dropped.
        indices = list(range(rank, len(self.prompts), world))
        longest = math.ceil(len(self.prompts) / world)
        padded = indices + [indices[0] if indices else 0] * (longest - len(indices))
        answers = generate_answers(model, self.tokenizer, [self.prompts[i] for i in padded],
                                   max_new_tokens=self.max_new_tokens,
                                   batch_size=self.batch_size, synced_gpus=self.synced_gpus)
        total = sum(precision_at_k(answers[j], self.human[i], self.k)
                    for j, i in enumerate(indices))
        sums = torch.tensor([total, float(len(indices))], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(sums)
        return float(sums[0] / max(sums[1], 1.0))

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        value = self.score(model)
        record = {f"eval_p@{self.k}": round(value, 4), "epoch": round(state.epoch or 0.0, 4),
                  "step": state.global_step}
        # Into log_history so RayTrainReportCallback reports it with the epoch's checkpoint.
        state.log_history.append(dict(record))
        if state.is_world_process_zero and self.metrics_path is not None:
            append_jsonl(self.metrics_path, {"stage": self.stage, "time": time.time(), **record})
            self.gauges.set(record)
            worker_log.info(f"[{self.stage}] epoch {record['epoch']:.2f}: held-out "
                            f"P@{self.k} {value:.3f} on {len(self.prompts)} cues")


class FaultInjection(TrainerCallback):
    """Raise after optimizer step ``at_step`` unless the run resumed from a checkpoint."""

    def __init__(self, at_step: int):
        self.at_step = at_step
        self._resumed = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._resumed = state.global_step > 0

    def on_save(self, args, state, control, **kwargs):
        # After the checkpoint of this step is written and reported, so a rerun resumes from it.
        if not self._resumed and state.global_step >= self.at_step:
            raise RuntimeError(f"fault injected after step {state.global_step} "
                               f"(train.fault_injection_step={self.at_step})")


class StopOnRequest(TrainerCallback):
    """End training at the next optimizer step once ``stop_file`` exists.

    A sweep's scheduler (ASHA) stops trials while their Ray Train run is mid-epoch; killing the
    run would leave its workers' placement group behind (Train V2 removes it only on a graceful
    end, or through a state-API watcher that needs the dashboard). Asked to stop this way, the
    run ends normally: no further checkpoint or evaluation, then the usual export. All ranks
    agree on the step (an all-reduce of the flag), so DeepSpeed's collectives stay in step.
    """

    def __init__(self, stop_file: str | Path):
        self.stop_file = Path(stop_file)
        self.stopped = False

    def _requested(self, args) -> bool:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([float(self.stop_file.exists())], device=args.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._requested(args):
            self.stopped = True
            control.should_training_stop = True
            control.should_save = control.should_evaluate = False

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped:  # no save or evaluation of the epoch cut short
            control.should_save = control.should_evaluate = False


def checkpoint_report():
    """A :class:`CheckpointReport` (Ray's callback class is imported only inside workers)."""
    from ray.train.huggingface.transformers import RayTrainReportCallback

    class CheckpointReport(RayTrainReportCallback):
        """Reports each checkpoint to Ray Train once every rank has finished writing it.

        The ranks of one node share the Trainer's ``output_dir``. After DeepSpeed's collective
        save, rank 0 alone goes on to write ``scheduler.pt`` and ``trainer_state.json`` and
        rotate old checkpoints, and the Trainer calls ``on_save`` with no barrier between.
        Another rank could then copy the folder while a file was half written, and its upload
        replace rank 0's complete one: seen as a 0-byte ``scheduler.pt`` and an EOFError when
        the run resumed. Every rank reaches ``on_save`` at the same step, so the barrier is
        safe.
        """

        def on_save(self, args, state, control, **kwargs):
            import torch.distributed as dist

            if dist.is_initialized() and dist.get_world_size() > 1:
                dist.barrier()
            return super().on_save(args, state, control, **kwargs)

    return CheckpointReport()
