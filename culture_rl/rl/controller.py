"""The PPO controller: one process drives the actor groups, step by step.

    rollout -> reward -> reference log-probs and values -> advantages -> PPO epochs on policy
    and critic -> weight sync to the generators

Everything algorithmic is a pure function (:mod:`culture_rl.rl.ppo`, :mod:`.advantages`), the
plan is checked in :mod:`.plan`, the data order is :mod:`.prompt_iterator`; this module only moves
batches between the groups, times the phases and keeps the run resumable. A checkpoint holds the
policy and critic (DeepSpeed: weights, optimizer), the KL controller and the prompt iterator's
position; it is written under a temporary name and renamed when complete, and a rerun with the
same run name continues at the next step with the same prompts it would have seen.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from culture_rl.checkpoints import (FINISHED, latest_complete, prune,  # noqa: F401 (re-exported)
                                    publish_export, write_checkpoint)
from culture_rl.errors import CultureRLError
from culture_rl.eval.evaluate import ranking_parse_failure_rate
from culture_rl.eval.metrics import length_summary
from culture_rl.rl import ppo
from culture_rl.rl.advantages import compute_step_advantages, sequence_kl
from culture_rl.rl.experience import Experience
from culture_rl.rl.plan import batch_plan, check_ppo_plan, ppo_roles
from culture_rl.rl.prompt_iterator import PromptIterator
from culture_rl.rl.timing import PhaseTimer

STATE = "controller.json"


class PPORunError(CultureRLError):
    """The PPO loop could not continue; the message says where and how to resume."""



@dataclass
class PPOJob:
    """What the controller needs, resolved on the driver before any actor starts."""

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
    written, and still matching it (see :mod:`culture_rl.checkpoints`). A damaged one is
    skipped with one warning line, and the one before it is used."""
    return latest_complete(folder, pattern, required=(STATE,),
                           warn=lambda line: print(f"[ppo] warning: {line}", flush=True))


class PPOController:
    STAGE = "ppo"  # the stage name in logs and finished.json
    CHECKPOINTS = "step_*"  # checkpoint folder names under job.checkpoint_dir

    def __init__(self, config, job: PPOJob):
        self.config, self.job = config, job
        cfg = config.ppo
        self.plan = batch_plan(config)
        self.plan.check()
        self.use_critic = cfg.advantage_estimator != "grpo"
        self.kl = (ppo.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
                   if cfg.adaptive_kl else ppo.FixedKLController(cfg.kl_coef))
        self.iterator = PromptIterator(job.prompts, cfg.rollout_batch_size, config.run.seed)
        self._no_actors_yet()

    def _no_actors_yet(self) -> None:
        """The loop's state before ``start``: no actors, nothing resumed, at step 0."""
        self.step = 0
        self.resumed_from: Path | None = None
        self.groups: dict = {}
        self.pool = None
        self.rollout_replacements = 0
        self.prefetched = None  # ppo.overlap_rollout: the next step's rollout, in flight
        # Held around the step's calls to the trainer ranks. With a rollout in flight, a dead
        # generator's replacement is synced from that thread; under ZeRO-3 the sync is a
        # collective of all ranks, so it must not interleave with the training calls.
        self.trainer_calls = threading.Lock()

    # ---------------------------------------------------------------- set-up
    def start(self) -> None:
        from culture_rl.distributed.cluster import ActorGroup, describe_plan
        from culture_rl.rl.trainers import CriticTrainer, PolicyTrainer

        config, res = self.config, self.config.ppo_resources
        roles = {r.name: r for r in ppo_roles(config)}
        print(describe_plan(list(roles.values())), flush=True)
        print(self.plan.describe(), flush=True)
        check_ppo_plan(config)

        timeout = res.placement_timeout_s
        policy_spec = self._spec(config.ppo.actor_learning_rate)
        colocated = self.use_critic and res.colocate
        share = 0.5 if colocated else 1.0  # colocated: policy and critic split each bundle
        self.groups["policy"] = ActorGroup(roles["policy_trainer"], PolicyTrainer,
                                           lambda rank: ((policy_spec, rank), {}), timeout,
                                           share=share)
        if self.use_critic:
            critic_spec = self._spec(config.ppo.critic_learning_rate)
            self.groups["critic"] = ActorGroup(
                roles["critic_trainer"], CriticTrainer, lambda rank: ((critic_spec, rank), {}),
                timeout, share=share,
                placement_group=self.groups["policy"].placement_group if colocated else None)
        self._start_generators_and_scorers(roles["rollout"], config.ppo.reward)
        for name in ("policy", "critic"):
            if name in self.groups:
                self._setup_process_group(self.groups[name])
        self._resume_if_possible()

    def _start_generators_and_scorers(self, role, reward: str) -> None:
        """The rollout group (serving the policy's starting weights) and the reward pool."""
        from culture_rl.distributed.cluster import ActorGroup
        from culture_rl.rl.rollout import RolloutWorker
        from culture_rl.rl.scorers import RewardPool

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

    def _spec(self, learning_rate: float):
        from culture_rl.rl.trainers import TrainerSpec

        config = self.config
        return TrainerSpec(
            model_path=self.job.policy_path, deepspeed=config.deepspeed, ppo=config.ppo,
            lora=config.lora if config.ppo.lora else None, learning_rate=learning_rate,
            world_size=config.ppo_resources.trainer_workers,
            micro_batch_size=config.ppo.micro_batch_size,
            gradient_accumulation_steps=self.plan.accumulation,
            use_gpu=config.ppo_resources.gpus_per_trainer > 0,
            threads=max(1, int(config.ppo_resources.cpus_per_trainer)),
            dtype=config.model.dtype, trust_remote_code=config.model.trust_remote_code,
            seed=config.run.seed)

    def _get(self, refs, what: str):
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
            saved = latest_checkpoint(self.job.checkpoint_dir, self.CHECKPOINTS)
            resume = (f"rerun the same command to resume from {saved}" if saved else
                      "no checkpoint was saved yet; rerun the same command to start again")
            raise PPORunError(f"an actor died during {what} ({type(err).__name__}); "
                              f"{resume}") from None

    def _setup_process_group(self, group) -> None:
        addr, port = self._get(group.actors[0].master_address.remote(),
                               f"{group.role.name} rendezvous")
        timeout = self.config.ppo_resources.call_timeout_s
        self._get([a.setup.remote(addr, port, timeout) for a in group.actors],
                  f"{group.role.name} set-up (process group and DeepSpeed)")

    def _resume_if_possible(self) -> None:
        checkpoint = latest_checkpoint(self.job.checkpoint_dir)
        if checkpoint is None:
            return
        state = json.loads((checkpoint / STATE).read_text("utf-8"))
        for name in ("policy", "critic"):
            if name in self.groups:
                self._get([a.load.remote(str(checkpoint / name))
                           for a in self.groups[name].actors], f"loading {name} from {checkpoint}")
        self.step = int(state["step"])
        self.iterator.load_state_dict(state["prompts"])
        self.kl.load_state_dict(state["kl"])
        self.resumed_from = checkpoint
        print(f"[ppo] resumed from {checkpoint} at step {self.step}", flush=True)
        self.sync()  # the generators start from the SFT weights: bring them up to date

    # ---------------------------------------------------------------- phases
    def _generate(self, prompts: list[dict], params, seed: int, what: str) -> list:
        """Near-equal contiguous chunks of ``prompts`` to the rollout workers (worker i seeded
        ``seed + i``); returns ((first, last + 1), Rollout) per non-empty chunk, in order."""
        from culture_rl.distributed.cluster import gather_replacing_dead
        from culture_rl.eval.inference import contiguous_chunks

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
        print(f"[{self.STAGE}] rollout worker {rank} died; starting a replacement", flush=True)
        worker = self.groups["rollout"].replace(rank)
        self.rollout_replacements += 1
        ro, timeout = self.config.rollout, self.config.ppo_resources.call_timeout_s
        with self.trainer_calls:  # an overlapped rollout: after this step's training
            self._get([a.sync_weights.remote([worker], ro.sync_bucket_mb, timeout,
                                             ro.sync_share_pages, ro.sync_transport)
                       for a in self.groups["policy"].actors],
                      "weight sync to the new rollout worker")

    def _prefetch_rollout(self, step: int) -> None:
        """Start step ``step``'s rollout and reward on a background thread. The prompt
        iterator's position before its batch is kept for checkpoints, so a resumed run draws
        that batch again (generated then from the checkpoint's weights)."""
        from culture_rl.rl.prefetch import Prefetch

        before = self.iterator.state_dict()
        batch = self.iterator.next_batch()

        def work():
            exp, texts = self.rollout(batch, step)
            return exp, texts, self.pool.score(texts, exp.meta)
        self.prefetched = Prefetch(work, tag={"step": step, "iterator": before},
                                   name=f"rollout-{step}")

    def _iterator_state(self) -> dict:
        """The prompt iterator's position as of the last finished step (a prefetched batch
        is not yet part of it)."""
        if self.prefetched is not None:
            return self.prefetched.tag["iterator"]
        return self.iterator.state_dict()

    def rollout(self, batch: list[dict], step: int) -> tuple[Experience, list[str]]:
        from culture_rl.rl.rollout import SamplingParams

        cfg, ro = self.config.ppo, self.config.rollout
        params = SamplingParams(temperature=ro.temperature, top_p=ro.top_p,
                                max_new_tokens=ro.max_new_tokens,
                                samples_per_prompt=cfg.samples_per_prompt,
                                batch_size=ro.generate_batch_size)
        return self._experience(batch, params, self.config.run.seed * 100_003 + step * 131,
                                f"rollout of step {step}",
                                lambda i: {**_meta_of(batch[i]), "group": i})

    def _experience(self, prompts: list[dict], params, seed: int, what: str, meta_of
                    ) -> tuple[Experience, list[str]]:
        """``params.samples_per_prompt`` samples of each prompt on the rollout group, as one
        Experience (sample j of prompt i at row i * n + j, its metadata ``meta_of(i)``) and
        the answer texts."""
        parts, texts = [], []
        for (a, b), rollout in self._generate(prompts, params, seed, what):
            meta = [meta_of(i) for i in range(a, b) for _ in range(params.samples_per_prompt)]
            parts.append(Experience(rollout.prompt_ids, rollout.prompt_mask,
                                    rollout.response_ids, rollout.response_mask,
                                    old_log_probs=rollout.log_probs, meta=meta,
                                    pad_token_id=rollout.pad_token_id))
            texts += rollout.texts
        return Experience.concat(parts), texts

    def _fan_out(self, group_name: str, method: str, exp: Experience, *args):
        actors = self.groups[group_name].actors
        parts = exp.split(len(actors))
        return [getattr(actor, method).remote(part, *args) for actor, part in zip(actors, parts)]

    def sync(self) -> dict:
        policy = self.groups["policy"].actors
        receivers = self.groups["rollout"].actors
        ro = self.config.rollout
        stats = self._get([a.sync_weights.remote(receivers, ro.sync_bucket_mb,
                                                 self.config.ppo_resources.call_timeout_s,
                                                 ro.sync_share_pages, ro.sync_transport)
                           for a in policy], "weight sync")
        return stats[0]

    def run_step(self, step: int) -> dict:
        from culture_rl.rl.rewards import mean_by_culture

        cfg = self.config.ppo
        timer = PhaseTimer()
        lap = timer.lap

        if self.prefetched is not None and self.prefetched.tag["step"] == step:
            exp, texts, scores = self.prefetched.result()  # made while step - 1 trained
            lap("rollout")
            lap("reward")
        else:
            exp, texts = self.rollout(self.iterator.next_batch(), step)
            lap("rollout")
            scores = self.pool.score(texts, exp.meta)
            lap("reward")
        self.prefetched = None
        rollout_log_probs = exp.old_log_probs
        exp.scores = torch.tensor(scores, dtype=torch.float32)
        if cfg.overlap_rollout and step < cfg.max_steps:
            self._prefetch_rollout(step + 1)
        with self.trainer_calls:
            log_prob_refs = self._fan_out("policy", "log_probs", exp)
            value_refs = self._fan_out("critic", "values", exp) if self.use_critic else None
            parts = self._get(log_prob_refs, "reference and old log-probs")
            exp.old_log_probs = torch.cat([p["old_log_probs"] for p in parts])
            exp.ref_log_probs = torch.cat([p["ref_log_probs"] for p in parts])
            if value_refs is not None:
                exp.values = torch.cat(self._get(value_refs, "critic values"))
            lap("reference")
            exp = compute_step_advantages(exp, estimator=cfg.advantage_estimator,
                                          kl_estimator=cfg.kl_estimator, kl_coef=self.kl.value,
                                          gamma=cfg.gamma, lam=cfg.lam,
                                          whiten=cfg.whiten_advantages)
            lap("advantage")
            policy_refs = self._fan_out("policy", "train_step", exp, step)
            critic_refs = (self._fan_out("critic", "train_step", exp, step)
                           if self.use_critic else [])
            policy_metrics = self._get(policy_refs, f"policy update of step {step}")[0]
            critic_metrics = self._get(critic_refs, f"critic update of step {step}")[0] \
                if critic_refs else {}
            lap("train")
        if self.prefetched is not None:  # the generators must be idle before new weights land
            self.prefetched.wait()
        lap("rollout_wait")
        sync_stats = self.sync()
        lap("sync")

        mask = exp.response_mask.float()
        kl_per_sequence = sequence_kl(exp.old_log_probs, exp.ref_log_probs, mask,
                                      cfg.kl_estimator).sum(1)
        self.kl.update(float(kl_per_sequence.mean()), len(exp))
        step_seconds = timer.total()
        tokens = float(mask.sum())
        values = {
            "reward_mean": float(exp.scores.mean()), "reward_std": float(exp.scores.std()),
            **{f"reward_mean/{c}": v for c, v in mean_by_culture(scores, exp.meta).items()},
            "parse_failure_rate": ranking_parse_failure_rate(texts, exp.meta),
            "kl": float(kl_per_sequence.mean()), "kl_coef": self.kl.value,
            "response_length": float(mask.sum(1).mean()),
            # Responses that reached max_new_tokens were cut, not ended at a stop token.
            **{f"response_length_{k}": v for k, v in length_summary(
                mask.sum(1).tolist(), self.config.rollout.max_new_tokens).items()},
            # The generator's sampling log-probs against the trainer's for the same tokens:
            # near zero when the generators hold the trainer's weights (temperature 1, top-p 1).
            "logprob_gap": float(ppo.masked_mean((rollout_log_probs - exp.old_log_probs).abs(),
                                                 mask)),
            **policy_metrics, **critic_metrics,
            "tokens_per_s": tokens / step_seconds, "samples": len(exp),
            "step_seconds": step_seconds, **timer.seconds,
            "sync_seconds": sync_stats.get("seconds", 0.0),
            "sync_bytes": sync_stats.get("bytes", 0),
        }
        return values

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, step: int) -> Path:
        """Written whole or not at all (``.partial``, manifest last, rename); a failure, e.g. a
        full disk, raises CheckpointError naming the checkpoint and leaves the previous one."""
        def write(partial: Path) -> None:
            for name in ("policy", "critic"):
                if name in self.groups:
                    self._get([a.save.remote(str(partial / name), {"step": step})
                               for a in self.groups[name].actors], f"saving {name}")
            state = {"step": step, "prompts": self._iterator_state(),
                     "kl": self.kl.state_dict()}
            (partial / STATE).write_text(json.dumps(state, indent=2), "utf-8")

        final = write_checkpoint(self.job.checkpoint_dir / f"step_{step:06d}", write)
        prune(self.job.checkpoint_dir, keep=final, required=(STATE,))  # and one to fall back on
        return final

    def export(self) -> Path:
        partial = self.job.stage_dir / "export.partial"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        self._get([a.export.remote(str(partial / "model")) for a in self.groups["policy"].actors],
                  "exporting the policy")
        return publish_export(partial, self.job.export_dir,
                              {"stage": self.STAGE, "steps": self.step})

    # ---------------------------------------------------------------- evaluation
    def evaluate_ranking(self) -> dict[str, float]:
        """Greedy answers to the held-out ranking prompts on the rollout workers: mean rho."""
        from culture_rl.eval.evaluate import ranking_scores
        from culture_rl.rl.rollout import SamplingParams

        prompts = self.job.eval_prompts
        if not prompts:
            return {}
        params = SamplingParams(max_new_tokens=self.config.rollout.max_new_tokens,
                                batch_size=self.config.rollout.generate_batch_size, greedy=True)
        texts = [text for _, rollout in self._generate(prompts, params, 0, "evaluation")
                 for text in rollout.texts]
        scores = ranking_scores(texts, prompts)
        return {"eval_ranking_rho": scores["rho"],
                "eval_parse_failure_rate": scores["parse_failure_rate"]}

    # ---------------------------------------------------------------- the loop
    def run(self, metrics) -> dict:
        cfg = self.config.ppo
        metrics.truncate_after(self.step)
        if self.step == 0 and cfg.eval_steps:
            start = metrics.log(0, self.evaluate_ranking())
            print(f"[ppo] step 0 (the starting model): held-out rho "
                  f"{start['eval_ranking_rho']:+.3f}, parse failures "
                  f"{start['eval_parse_failure_rate']:.2f}", flush=True)
        last: dict = {}
        while self.step < cfg.max_steps:
            step = self.step + 1
            values = self.run_step(step)
            self.step = step
            if cfg.eval_steps and (step % cfg.eval_steps == 0 or step == cfg.max_steps):
                values.update(self.evaluate_ranking())
            last = metrics.log(step, values)
            print(_progress_line(step, cfg.max_steps, values), flush=True)
            if (cfg.save_steps and step % cfg.save_steps == 0) or step == cfg.max_steps:
                saved = self.save_checkpoint(step)
                if cfg.fault_injection_step == step and self.resumed_from is None:
                    raise PPORunError(f"fault injected after the checkpoint of step {step} "
                                      f"({saved}); rerun to resume")
        return last

    def shutdown(self) -> None:
        import ray

        self.prefetched = None  # a rollout in flight fails once the actors are gone
        if "policy" in self.groups:
            try:
                ray.get([a.close.remote() for a in self.groups["policy"].actors], timeout=30)
            except Exception:  # a dead trainer: nothing to free, or nothing we can do now
                pass
        for group in self.groups.values():
            group.shutdown()
        if self.pool is not None:
            self.pool.shutdown()


def _meta_of(prompt: dict) -> dict:
    return {k: v for k, v in prompt.items() if k != "prompt"}


def _progress_line(step: int, total: int, values: dict) -> str:
    parts = [f"[ppo] step {step}/{total}", f"reward {values['reward_mean']:+.3f}",
             f"kl {values['kl']:.4f}", f"parse_fail {values['parse_failure_rate']:.2f}",
             f"{values['step_seconds']:.1f}s (rollout {values['seconds_rollout']:.1f}, "
             f"train {values['seconds_train']:.1f}, sync {values['seconds_sync']:.2f})"]
    if "eval_ranking_rho" in values:
        parts.append(f"held-out rho {values['eval_ranking_rho']:+.3f}")
    return " | ".join(parts)
