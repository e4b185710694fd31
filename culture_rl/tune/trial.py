"""The Ray side of a sweep: the Tune trial that runs one Ray Train SFT run, the Train callback
that hands it each epoch's result, ASHA per culture, and the driver's progress lines.

Why a class ``Trainable`` rather than a trial function: when ASHA stops a trial, Tune calls the
trial's ``cleanup()`` before it ends the actor. A function trial would just be ended, taking
its Train controller with it mid-run; Train V2 then leaves the workers' placement group behind
(its watcher that removes it needs the dashboard's state API), holding their CPUs/GPUs for the
rest of the sweep. ``cleanup()`` instead asks the run to stop (a file its workers check each
step, see :class:`culture_rl.train.callbacks.StopOnRequest`) and waits for it to end normally.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
from pathlib import Path

from ray import tune
from ray.train import UserCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from culture_rl.tune.plan import epoch_results, normalise_point, trial_config
from culture_rl.data.align_data import load_align_data
from culture_rl.methods.align.sft import build_sft_job
from culture_rl.train.sft import FINISHED, run_stage

STOP_FILE = "stop_requested"
POLL_S = 1.0
STOP_WAIT_S = 600  # Tune's own limit for a stopping trial (TUNE_FORCE_TRIAL_CLEANUP_S)


class EpochToTrial(UserCallback):
    """Runs in the Train controller: each report (one per epoch: checkpoints are per epoch)
    goes to the trial as a flat numeric result with an integer ``epoch``, ASHA's time."""

    def __init__(self, results):
        self.results = results  # a ray.util.queue.Queue owned by the trial

    def after_report(self, run_context, metrics, checkpoint):
        record = {k: v for k, v in metrics[0].items() if isinstance(v, (int, float))}
        if "epoch" in record:
            record["epoch"] = round(record["epoch"])
        self.results.put(record)  # unbounded: never blocks the controller


class SweepTrial(tune.Trainable):
    """One search point: SFT on Ray Train in a background thread; ``step()`` returns its next
    epoch; ``cleanup()`` ends the run gracefully when Tune stops the trial early."""

    def setup(self, config, base=None, folder=None):
        from ray.util.queue import Queue

        self.point = normalise_point(config)
        run_config = trial_config(base, self.point)
        data = load_align_data(run_config)  # the world files were written by the driver
        stage = Path(folder) / "trials" / self.trial_name / "sft"  # named by the point
        self.job = dataclasses.replace(build_sft_job(run_config, data), stage_dir=str(stage),
                                       stop_file=str(stage / STOP_FILE))
        Path(self.job.stop_file).unlink(missing_ok=True)  # left by a run stopped earlier
        self.thread = None
        self.failure: BaseException | None = None
        if (self.job.export_dir / FINISHED).is_file():
            # Trained by an earlier run of this sweep: give Tune the epochs it recorded.
            self.replay = epoch_results(_read_jsonl(self.job.metrics_path), base.sweep.metric)
            return
        self.replay = None
        self.results = Queue(actor_options={"num_cpus": 0})
        self.thread = threading.Thread(target=self._train, args=(run_config.resources,),
                                       name="sweep-trial-train", daemon=True)
        self.thread.start()

    def _train(self, resources) -> None:
        try:
            run_stage(self.job, resources, callbacks=[EpochToTrial(self.results)])
        except BaseException as err:  # re-raised by step() so Tune records the trial's error
            self.failure = err

    def step(self) -> dict:
        result = self._next_replayed() if self.replay is not None else self._next_reported()
        # The last epoch ends the trial; Tune then calls cleanup(), which waits for the run's
        # export instead of cutting it off.
        if not result or result.get("epoch", 0) >= self.point["epochs"] or self.replay == []:
            result["done"] = True
        return result

    def _next_replayed(self) -> dict:
        return self.replay.pop(0) if self.replay else {}

    def _next_reported(self) -> dict:
        while True:
            try:
                return self.results.get(timeout=POLL_S)
            except queue.Empty:
                if self.thread.is_alive():
                    continue
                if self.failure is not None:
                    raise self.failure
                if self.results.empty():  # the run ended without reporting its last epoch
                    return {}

    def cleanup(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            return
        stop_file = Path(self.job.stop_file)
        stop_file.touch()  # no effect once training is over (export in progress)
        self.thread.join(timeout=STOP_WAIT_S)
        if not self.thread.is_alive():
            stop_file.unlink(missing_ok=True)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


class PerCultureASHA(FIFOScheduler):
    """ASHA with its own rungs for each culture. Held-out P@5 against one culture's norms is
    not on the same scale as against another's, so a trial is only ever compared with the
    trials of its own culture (one plain ``ASHAScheduler`` per culture, made on first use)."""

    def __init__(self, **asha_settings):
        super().__init__()
        self._settings = asha_settings
        self._metric = self._mode = None
        self._by_culture: dict[str, ASHAScheduler] = {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return True

    def _asha(self, trial) -> ASHAScheduler:
        culture = trial.config["culture"]
        if culture not in self._by_culture:
            self._by_culture[culture] = ASHAScheduler(metric=self._metric, mode=self._mode,
                                                      **self._settings)
        return self._by_culture[culture]

    def on_trial_add(self, tune_controller, trial):
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self._asha(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self._asha(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{culture}: {asha.debug_string()}"
                         for culture, asha in self._by_culture.items())


class SweepProgress(tune.Callback):
    """One line per trial event on the driver: started, epoch result, finished, stopped early
    by the scheduler, failed."""

    def __init__(self, total: int, metric: str):
        self.total, self.metric = total, metric
        self.started = self.finished = self.stopped = self.errored = 0

    def _counts(self) -> str:
        return (f"{self.started}/{self.total} started, {self.finished} finished, "
                f"{self.stopped} stopped early, {self.errored} failed")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started += 1
        print(f"[sweep] started {trial}  ({self._counts()})", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is not None and "epoch" in result:
            print(f"[sweep] {trial} epoch {result['epoch']}/{trial.config['epochs']}: "
                  f"{self.metric} {value:.4f}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        done = (trial.last_result or {}).get("epoch", 0)
        if done < int(trial.config["epochs"]):
            self.stopped += 1
            what = f"stopped early after epoch {done}/{trial.config['epochs']}"
        else:
            self.finished += 1
            what = "finished"
        print(f"[sweep] {what}: {trial}  ({self._counts()})", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.errored += 1
        print(f"[sweep] failed: {trial}  ({self._counts()})", flush=True)
