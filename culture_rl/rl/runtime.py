"""The actor runtime of the RL loops: groups of Ray actors and the calls between them.

The PPO loop (:mod:`culture_rl.rl.controller`) and the reflection loop
(:mod:`culture_rl.rl.reflection_loop`) each hold one :class:`ActorRuntime`; it knows no
algorithm. It starts the trainer groups (DeepSpeed ranks on one placement group), the rollout
group and the reward scorer pool; makes every call with a timeout and turns a dead trainer into
one line naming the checkpoint to resume from; replaces a dead generator (restarted on its
bundle, given the policy's current weights, its chunk retried with the same seed); fans
experience out over a group's ranks; syncs the policy's weights to the generators; saves and
loads the trainers; exports the policy; and shuts everything down.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from culture_rl.core.checkpoints import latest_complete, publish_export
from culture_rl.core.errors import CultureRLError
from culture_rl.rl.experience import Experience
from culture_rl.distributed.cluster import ActorGroup, gather_replacing_dead
from culture_rl.inference.pools import contiguous_chunks
from culture_rl.inference.rollout import RolloutWorker
from culture_rl.rl.scorers import RewardPool
from culture_rl.rl.trainers import TrainerSpec

STATE = "controller.json"  # the loop's own state in every checkpoint (step, prompt order, ...)
TRAINER_GROUPS = ("policy", "critic")


class PPORunError(CultureRLError):
    """An RL loop could not continue; the message says where and how to resume."""


@dataclass
class PPOJob:
    """What an RL loop needs, resolved on the driver before any actor starts."""

    stage_dir: Path
    run_name: str
    policy_path: str
    prompts: list[dict]  # prompt, cue, culture, words, human_order
    eval_prompts: list[dict] = field(default_factory=list)

    @property
    def checkpoint_dir(self) -> Path:
        return self.stage_dir / "checkpoints"

    @property
    def export_dir(self) -> Path:
        return self.stage_dir / "export"


def latest_checkpoint(folder: Path, pattern: str = "step_*") -> Path | None:
    """The newest complete checkpoint: renamed from ``.partial`` only after its manifest was
    written, and still matching it (see :mod:`culture_rl.core.checkpoints`). A damaged one is
    skipped with one warning line, and the one before it is used."""
    return latest_complete(folder, pattern, required=(STATE,),
                           warn=lambda line: print(f"[ppo] warning: {line}", flush=True))


class ActorRuntime:
    """One loop's actor groups (``groups``: ``policy``, ``critic``, ``rollout``) and reward
    pool, and every call the loop makes to them."""

    def __init__(self, config, job: PPOJob, stage: str, checkpoints: str):
        self.config, self.job = config, job
        self.stage = stage  # the loop's name in log lines and finished.json
        self.checkpoints = checkpoints  # its checkpoint folders' pattern under the job's
        self.groups: dict = {}
        self.pool = None
        self.rollout_replacements = 0
        # Held around a step's calls to the trainer ranks. With a rollout in flight, a dead
        # generator's replacement is synced from that thread; under ZeRO-3 the sync is a
        # collective of all ranks, so it must not interleave with the training calls.
        self.trainer_calls = threading.Lock()

    # ---------------------------------------------------------------- set-up
    def trainer_spec(self, learning_rate: float, *, lora: bool, micro_batch_size: int,
                     accumulation: int):
        config, res = self.config, self.config.ppo_resources
        return TrainerSpec(
            model_path=self.job.policy_path, deepspeed=config.deepspeed, ppo=config.ppo,
            lora=config.lora if lora else None, learning_rate=learning_rate,
            world_size=res.trainer_workers, micro_batch_size=micro_batch_size,
            gradient_accumulation_steps=accumulation, use_gpu=res.gpus_per_trainer > 0,
            threads=max(1, int(res.cpus_per_trainer)), dtype=config.model.dtype,
            trust_remote_code=config.model.trust_remote_code, seed=config.run.seed,
            max_response_tokens=config.rollout.max_new_tokens)

    def start_trainers(self, name: str, role, actor_class, spec, share: float = 1.0,
                       placement_group=None):
        """A group of trainer ranks (``name``: policy or critic); ``share`` of each bundle,
        on ``placement_group`` when given (colocated with another group)."""
        self.groups[name] = ActorGroup(role, actor_class, lambda rank: ((spec, rank), {}),
                                       self.config.ppo_resources.placement_timeout_s,
                                       placement_group=placement_group, share=share)
        return self.groups[name]

    def start_generators_and_scorers(self, role, reward: str) -> None:
        """The rollout group (serving the policy's starting weights) and the reward pool."""
        config, res = self.config, self.config.ppo_resources
        threads = max(1, int(res.cpus_per_rollout))
        self.groups["rollout"] = ActorGroup(
            role, RolloutWorker,
            lambda rank: ((self.job.policy_path, config.rollout.backend, config.model.dtype,
                           config.model.trust_remote_code, threads),
                          {"gpu_memory_utilization": config.rollout.vllm_gpu_memory_utilization,
                           "chat_template": config.model.chat_template}),
            res.placement_timeout_s)
        self.pool = RewardPool(reward, num_scorers=res.reward_scorers,
                               cpus_per_scorer=res.cpus_per_scorer, timeout_s=res.call_timeout_s)

    def setup_process_groups(self) -> None:
        """Each trainer group's rendezvous, process group and DeepSpeed engines."""
        for name in TRAINER_GROUPS:
            if name not in self.groups:
                continue
            group = self.groups[name]
            addr, port = self.get(group.actors[0].master_address.remote(),
                                  f"{group.role.name} rendezvous")
            timeout = self.config.ppo_resources.call_timeout_s
            self.get([a.setup.remote(addr, port, timeout) for a in group.actors],
                     f"{group.role.name} set-up (process group and DeepSpeed)")

    # ---------------------------------------------------------------- calls
    def get(self, refs, what: str):
        """``ray.get`` within ``ppo_resources.call_timeout_s``; a timeout or a dead actor is a
        PPORunError saying how to resume."""
        import ray

        timeout = self.config.ppo_resources.call_timeout_s
        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise PPORunError(f"{what} did not finish within {timeout:g} s "
                              "(ppo_resources.call_timeout_s)") from None
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
            # A trainer rank holds optimizer state and a share of the process group: it cannot
            # be swapped mid-run like a generator. End the run, pointing at what resumes it.
            saved = latest_checkpoint(self.job.checkpoint_dir, self.checkpoints)
            resume = (f"rerun the same command to resume from {saved}" if saved else
                      "no checkpoint was saved yet; rerun the same command to start again")
            raise PPORunError(f"an actor died during {what} ({type(err).__name__}); "
                              f"{resume}") from None

    def generate(self, prompts: list[dict], params, seed: int, what: str) -> list:
        """Near-equal contiguous chunks of ``prompts`` to the rollout workers (worker i seeded
        ``seed + i``); returns ((first, last + 1), Rollout) per non-empty chunk, in order."""
        group = self.groups["rollout"]
        chunks = contiguous_chunks(len(prompts), len(group))

        def submit(i: int):
            a, b = chunks[i]
            return group.actors[i].generate.remote([p["prompt"] for p in prompts[a:b]], params,
                                                   seed + i)

        rollouts = gather_replacing_dead(submit, len(chunks), self._replace_rollout_worker,
                                         timeout_s=self.config.ppo_resources.call_timeout_s,
                                         max_retries=2, what=what, error=PPORunError)
        return list(zip(chunks, rollouts))

    def _replace_rollout_worker(self, rank: int) -> None:
        """A dead generator is restarted on its bundle and given the policy's current
        weights before its chunk is retried (same seed: the same samples)."""
        print(f"[{self.stage}] rollout worker {rank} died; starting a replacement", flush=True)
        worker = self.groups["rollout"].replace(rank)
        self.rollout_replacements += 1
        ro, timeout = self.config.rollout, self.config.ppo_resources.call_timeout_s
        with self.trainer_calls:  # an overlapped rollout: after this step's training
            self.get([a.sync_weights.remote([worker], ro.sync_bucket_mb, timeout,
                                            ro.sync_share_pages, ro.sync_transport)
                      for a in self.groups["policy"].actors],
                     "weight sync to the new rollout worker")

    def experience(self, prompts: list[dict], params, seed: int, what: str, meta_of
                   ) -> tuple[Experience, list[str]]:
        """``params.samples_per_prompt`` samples of each prompt on the rollout group, as one
        Experience (sample j of prompt i at row i * n + j, its metadata ``meta_of(i)``) and
        the answer texts."""
        parts, texts = [], []
        for (a, b), rollout in self.generate(prompts, params, seed, what):
            meta = [meta_of(i) for i in range(a, b) for _ in range(params.samples_per_prompt)]
            parts.append(Experience(rollout.prompt_ids, rollout.prompt_mask,
                                    rollout.response_ids, rollout.response_mask,
                                    old_log_probs=rollout.log_probs, meta=meta,
                                    pad_token_id=rollout.pad_token_id))
            texts += rollout.texts
        return Experience.concat(parts), texts

    def fan_out(self, group_name: str, method: str, exp: Experience, *args) -> list:
        """One ``method`` call per rank of the group, each with its share of ``exp``."""
        actors = self.groups[group_name].actors
        parts = exp.split(len(actors))
        return [getattr(actor, method).remote(part, *args) for actor, part in zip(actors, parts)]

    def sync(self) -> dict:
        """The policy's current weights to every generator; rank 0's sync statistics."""
        receivers = self.groups["rollout"].actors
        ro = self.config.rollout
        stats = self.get([a.sync_weights.remote(receivers, ro.sync_bucket_mb,
                                                self.config.ppo_resources.call_timeout_s,
                                                ro.sync_share_pages, ro.sync_transport)
                          for a in self.groups["policy"].actors], "weight sync")
        return stats[0]

    # ---------------------------------------------------------------- checkpoints and export
    def save_trainers(self, folder: Path, meta: dict) -> None:
        """Every trainer group's weights and optimizer into ``folder/<group>``."""
        for name in TRAINER_GROUPS:
            if name in self.groups:
                self.get([a.save.remote(str(folder / name), meta)
                          for a in self.groups[name].actors], f"saving the {name}")

    def load_trainers(self, checkpoint: Path) -> None:
        for name in TRAINER_GROUPS:
            if name in self.groups:
                self.get([a.load.remote(str(checkpoint / name))
                          for a in self.groups[name].actors],
                         f"loading the {name} from {checkpoint}")

    def resume(self, iterator) -> tuple[Path, dict] | None:
        """Load the newest complete checkpoint of this loop into the trainers and the prompt
        ``iterator``; that checkpoint and the loop's state in it (None: nothing to resume)."""
        checkpoint = latest_checkpoint(self.job.checkpoint_dir, self.checkpoints)
        if checkpoint is None:
            return None
        state = json.loads((checkpoint / STATE).read_text("utf-8"))
        self.load_trainers(checkpoint)
        iterator.load_state_dict(state["prompts"])
        return checkpoint, state

    def export(self, steps: int) -> Path:
        """The policy as a plain Hugging Face model in the job's export folder."""
        partial = self.job.stage_dir / "export.partial"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        self.get([a.export.remote(str(partial / "model")) for a in self.groups["policy"].actors],
                 "exporting the policy")
        return publish_export(partial, self.job.export_dir, {"stage": self.stage, "steps": steps})

    def shutdown(self) -> None:
        import ray

        if "policy" in self.groups:
            try:
                ray.get([a.close.remote() for a in self.groups["policy"].actors], timeout=30)
            except Exception:  # a dead trainer: nothing to free, or nothing we can do now
                pass
        for group in self.groups.values():
            group.shutdown()
        if self.pool is not None:
            self.pool.shutdown()
