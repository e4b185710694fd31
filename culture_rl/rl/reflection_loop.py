"""The reflection loop on Ray actors (CALM's self-prompted reflective learning).

Each round:

    rollout workers: initial answers (sampled)  ->  reflection prompts (the model's own
    template: its answer, "think as a person from X", the prompt again)  ->  revisions (sampled)
    ->  reward scorer pool: initial and revised answers against the culture's reference
    ->  pairs (best revision beats its initial answer)  ->  policy trainer: SFT on the revision
    + DPO revised > initial (reference log-probs from the starting model)  ->  weight sync
    ->  held-out evaluation (greedy initial and revised answers)

It runs on the PPO loop's parts -- an :class:`~culture_rl.rl.runtime.ActorRuntime` with the
rollout group, the reward pool, the DeepSpeed policy trainer and the bucketed weight sync -- so
it shares their fault handling (a dead generator or
scorer is replaced and its chunk retried) and their resource plan (``ppo_resources``, no
critic). The pure parts (templates, pairing, statistics) are :mod:`culture_rl.rl.reflection`,
the losses :mod:`culture_rl.rl.preference`. A checkpoint per round holds the policy (weights and
optimizer) and the prompt order's position; a rerun with the same run name resumes. Every
round's pairs are written as text to ``<stage>/pairs.jsonl``, the DPO stage's input
(``culture-rl dpo`` with ``dpo.pairs: reflection``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from culture_rl.core.checkpoints import prune, write_checkpoint
from culture_rl.rl.experience import Experience
from culture_rl.rl.ppo import masked_mean
from culture_rl.rl.prompt_iterator import PromptIterator
from culture_rl.rl.runtime import STATE, ActorRuntime, PPOJob
from culture_rl.rl.reflection import (best_revisions, improvement_pairs, reflection_template,
                                      repeat_to_multiple, revision_prompts, round_statistics)
from culture_rl.rl.timing import PhaseTimer
from culture_rl.distributed.cluster import check_plan, connect, describe_plan
from culture_rl.core.errors import CultureRLError
from culture_rl.inference.rollout import SamplingParams
from culture_rl.rl.plan import ppo_roles
from culture_rl.rl.trainers import PolicyTrainer


def reflection_roles(config) -> list:
    """The actor groups of the loop (the PPO plan without the critic)."""
    return [role for role in ppo_roles(config) if role.name != "critic_trainer"]


def check_reflection_plan(config) -> None:
    """Join Ray and fail (ResourceError, with the numbers) if the roles cannot fit."""
    import ray

    connect(config.resources.address)
    check_plan(reflection_roles(config), ray.cluster_resources(), config.resources.autoscaling)


class ReflectionController:
    """Drives the rounds on an :class:`ActorRuntime` (``runtime``) of a policy trainer,
    generators and reward scorers (no critic)."""

    STAGE = "reflect"
    CHECKPOINTS = "round_*"

    def __init__(self, config, job: PPOJob, reward: str, seen_prompts: list[dict] = ()):
        self.config, self.job, self.reward = config, job, reward
        self.seen_prompts = list(seen_prompts)  # a fixed sample of the training prompts
        self.cfg = config.reflect
        self.template = reflection_template(self.cfg.template, config.data.language)
        self.iterator = PromptIterator(job.prompts, self.cfg.prompts_per_round, config.run.seed)
        self.runtime = ActorRuntime(config, job, self.STAGE, self.CHECKPOINTS)
        self.step = 0  # the last finished round
        self.resumed_from = None

    # ---------------------------------------------------------------- set-up
    def start(self) -> None:
        config, res, runtime = self.config, self.config.ppo_resources, self.runtime
        roles = {r.name: r for r in reflection_roles(config)}
        print(describe_plan(list(roles.values())), flush=True)
        ranks, micro = res.trainer_workers, self.cfg.micro_batch_size
        print(f"reflection batches: {self.cfg.prompts_per_round} prompts x "
              f"{self.cfg.answers_per_prompt} answers x {self.cfg.revisions_per_answer} "
              f"revisions per round; pairs repeated to a multiple of {ranks * micro} "
              f"(micro {micro} x {ranks} rank{'s' if ranks != 1 else ''}), one optimizer "
              f"step per micro batch, {self.cfg.epochs} epoch(s)", flush=True)
        check_reflection_plan(config)
        spec = runtime.trainer_spec(self.cfg.learning_rate, lora=self.cfg.lora,
                                    micro_batch_size=micro, accumulation=1)
        runtime.start_trainers("policy", roles["policy_trainer"], PolicyTrainer, spec)
        runtime.start_generators_and_scorers(roles["rollout"], self.reward)
        runtime.setup_process_groups()
        self._resume_if_possible()

    def _resume_if_possible(self) -> None:
        resumed = self.runtime.resume(self.iterator)
        if resumed is None:
            return
        self.resumed_from, state = resumed
        self.step = int(state["round"])
        print(f"[reflect] resumed from {self.resumed_from} after round {self.step}", flush=True)
        self.runtime.sync()  # the generators start from the starting model: bring them up to date

    def export(self):
        return self.runtime.export(self.step)

    def shutdown(self) -> None:
        self.runtime.shutdown()

    # ---------------------------------------------------------------- phases
    def _sample(self, prompts: list[str], metas: list[dict], per_prompt: int, seed: int,
                what: str, greedy: bool = False) -> tuple[Experience, list[str]]:
        """``per_prompt`` answers to each prompt on the rollout group: an Experience (rows in
        prompt order, sample j of prompt i at i * per_prompt + j) and the answer texts."""
        ro = self.config.rollout
        params = SamplingParams(temperature=ro.temperature, top_p=ro.top_p,
                                max_new_tokens=ro.max_new_tokens,
                                samples_per_prompt=1 if greedy else per_prompt,
                                batch_size=ro.generate_batch_size, greedy=greedy)
        return self.runtime.experience([{"prompt": p} for p in prompts], params, seed, what,
                                       lambda i: metas[i])

    def _reflect(self, batch: list[dict], seed: int, greedy: bool, what: str) -> dict:
        """Initial answers, their revisions and both sets of rewards for ``batch``."""
        cfg = self.cfg
        metas = [{k: v for k, v in p.items() if k != "prompt"} for p in batch]
        per_prompt = 1 if greedy else cfg.answers_per_prompt
        per_answer = 1 if greedy else cfg.revisions_per_answer
        first, first_texts = self._sample([p["prompt"] for p in batch], metas, per_prompt, seed,
                                          f"initial answers ({what})", greedy)
        prompts = revision_prompts([p["prompt"] for p in batch], first_texts,
                                   [meta["culture"] for meta in first.meta], per_prompt,
                                   self.template, cfg.revise_with)
        revised, revised_texts = self._sample(prompts, first.meta, per_answer, seed + 7,
                                              f"revisions ({what})", greedy)
        scores = self.runtime.pool.score(first_texts + revised_texts, first.meta + revised.meta)
        initial, after = scores[:len(first_texts)], scores[len(first_texts):]
        best = best_revisions(initial, after, per_answer)
        # Ended before the token limit (the mask covers the tokens up to the first EOS).
        limit = self.config.rollout.max_new_tokens
        finished = (revised.response_mask.sum(1) < limit).tolist()
        return {"first": first, "revised": revised, "initial": initial, "best": best,
                "finished": finished, "texts": (first_texts, revised_texts)}

    def _pairs(self, out: dict) -> list:
        cfg = self.cfg
        return improvement_pairs(out["initial"], out["best"], cfg.min_improvement,
                                 out["finished"] if cfg.require_finished else None)

    def _train(self, out: dict, pairs: list, round_index: int) -> dict:
        """The round's pairs -> reference log-probs -> one update on every rank."""
        cfg, ranks = self.cfg, self.config.ppo_resources.trainer_workers
        if not pairs:
            return {"pairs": 0}
        used = repeat_to_multiple(pairs, ranks * cfg.micro_batch_size)
        first, revised = out["first"], out["revised"]
        rejected = first.take([p.initial for p in used])
        revisions = revised.take([p.revision for p in used])
        # The revision trained under the original prompt: the model learns to answer better
        # directly, and the pair is one prompt with two answers, as DPO needs.
        chosen = Experience(rejected.prompt_ids, rejected.prompt_mask, revisions.response_ids,
                            revisions.response_mask, meta=rejected.meta,
                            pad_token_id=rejected.pad_token_id)
        gap = None
        for exp, name in ((chosen, "revisions"), (rejected, "initial answers")):
            parts = self.runtime.get(self.runtime.fan_out("policy", "log_probs", exp),
                                     f"reference log-probs of the {name}")
            exp.ref_log_probs = torch.cat([p["ref_log_probs"] for p in parts])
            if exp is rejected:  # sampled under this very prompt: the trainer must agree
                policy = torch.cat([p["old_log_probs"] for p in parts])
                gap = float(masked_mean((policy - exp.old_log_probs).abs(),
                                        exp.response_mask.float()))
        refs = [actor.train_pairs.remote(good, bad, round_index, epochs=cfg.epochs,
                                         sft_coef=cfg.sft_coef,
                                         preference_coef=cfg.preference_coef, beta=cfg.beta)
                for actor, good, bad in zip(self.runtime.groups["policy"].actors,
                                            chosen.split(ranks), rejected.split(ranks))]
        metrics = self.runtime.get(refs, f"policy update of round {round_index}")[0]
        return {"pairs": len(pairs), "pairs_trained": len(used), "logprob_gap": gap,
                "mean_gain": sum(p.gain for p in pairs) / len(pairs), **metrics}

    def evaluate(self, round_index: int) -> dict[str, float]:
        """Greedy initial answers and greedy revisions, scored: of the held-out prompts
        (``eval_*``) and of a fixed sample of the training prompts (``eval_seen_*``; the
        round's own batch changes every round, so its reward is not comparable across
        rounds)."""
        values: dict[str, float] = {}
        for prefix, prompts, what in (("eval_", self.job.eval_prompts, "held-out"),
                                      ("eval_seen_", self.seen_prompts, "training-prompt")):
            if not prompts:
                continue
            out = self._reflect(prompts, 0, greedy=True,
                                what=f"{what} evaluation after round {round_index}")
            stats = round_statistics(out["initial"], out["best"], out["first"].meta,
                                     self.cfg.min_improvement)
            values.update({prefix + key: value for key, value in stats.items()})
        return values

    def run_step(self, round_index: int) -> dict:
        timer = PhaseTimer()
        lap = timer.lap

        batch = self.iterator.next_batch()
        out = self._reflect(batch, self.config.run.seed * 100_003 + round_index * 131,
                            greedy=False, what=f"round {round_index}")
        lap("rollout_and_reward")
        values = round_statistics(out["initial"], out["best"], out["first"].meta,
                                  self.cfg.min_improvement)
        self._write_samples(round_index, batch, out)
        pairs = self._pairs(out)
        self._write_pairs(round_index, batch, out, pairs)
        values.update(self._train(out, pairs, round_index))
        lap("train")
        sync = self.runtime.sync() if values["pairs"] else {}
        lap("sync")
        values.update({"samples": len(out["first"]) + len(out["revised"]),
                       "initial_length": float(out["first"].response_mask.sum(1).float().mean()),
                       "revision_finished_share": sum(out["finished"]) / len(out["finished"]),
                       "round_seconds": timer.total(), **timer.seconds,
                       "sync_seconds": sync.get("seconds", 0.0)})
        return values

    def _write_samples(self, round_index: int, batch: list[dict], out: dict,
                       count: int = 6) -> None:
        """The round's first answers, their best revisions and rewards, to read what the
        model does (``samples.jsonl``; a resumed round rewrites its lines)."""
        first_texts, revised_texts = out["texts"]
        per_prompt = len(first_texts) // len(batch)
        records = []
        for i in range(min(count, len(first_texts))):
            best, reward = out["best"][i]
            meta = out["first"].meta[i]
            records.append({"round": round_index, "culture": meta.get("culture"),
                            "cue": meta.get("cue"), "prompt": batch[i // per_prompt]["prompt"],
                            "initial": first_texts[i], "initial_reward": out["initial"][i],
                            "revision": revised_texts[best], "revision_reward": reward})
        _write_round(self.job.stage_dir / "samples.jsonl", round_index, records)

    def _write_pairs(self, round_index: int, batch: list[dict], out: dict, pairs: list) -> None:
        """Every pair the round trains on, as text (``pairs.jsonl``: the DPO stage's input with
        ``dpo.pairs: reflection``): the original prompt, the revision chosen over the initial
        answer, and the reward gain."""
        first_texts, revised_texts = out["texts"]
        per_prompt = len(first_texts) // len(batch)
        records = [{"round": round_index, "culture": out["first"].meta[p.initial].get("culture"),
                    "prompt": batch[p.initial // per_prompt]["prompt"],
                    "chosen": revised_texts[p.revision], "rejected": first_texts[p.initial],
                    "gain": p.gain} for p in pairs]
        _write_round(self.job.stage_dir / "pairs.jsonl", round_index, records)

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, round_index: int):
        def write(partial) -> None:
            self.runtime.save_trainers(partial, {"round": round_index})
            state = {"round": round_index, "prompts": self.iterator.state_dict()}
            (partial / STATE).write_text(json.dumps(state, indent=2), "utf-8")

        final = write_checkpoint(self.job.checkpoint_dir / f"round_{round_index:04d}", write)
        prune(self.job.checkpoint_dir, keep=final, pattern=self.CHECKPOINTS, required=(STATE,))
        return final

    # ---------------------------------------------------------------- the loop
    def run(self, metrics) -> dict:
        cfg = self.cfg
        metrics.truncate_after(self.step)
        if self.step == 0 and cfg.eval_cues:
            start = metrics.log(0, self.evaluate(0))
            print(f"[reflect] round 0 (the starting model): held-out reward "
                  f"{start['eval_reward_initial']:.3f} (after revision "
                  f"{start['eval_reward_revised']:.3f}), training prompts "
                  f"{start.get('eval_seen_reward_initial', float('nan')):.3f}", flush=True)
        last: dict = {}
        while self.step < cfg.rounds:
            round_index = self.step + 1
            values = self.run_step(round_index)
            if cfg.eval_cues:
                values.update(self.evaluate(round_index))
            self.step = round_index
            last = metrics.log(round_index, values)
            print(_progress_line(round_index, cfg.rounds, values), flush=True)
            if (cfg.save_rounds and round_index % cfg.save_rounds == 0) \
                    or round_index == cfg.rounds:
                saved = self.save_checkpoint(round_index)
                if cfg.fault_injection_round == round_index and self.resumed_from is None:
                    raise CultureRLError(f"fault injected after the checkpoint of round "
                                         f"{round_index} ({saved}); rerun to resume")
        return last


def _write_round(path: Path, round_index: int, records: list[dict]) -> None:
    """Append a round's records to a JSON Lines file, first dropping any the file holds of this
    round or later (a resumed round writes its lines again)."""
    kept = [line for line in (path.read_text("utf-8").splitlines() if path.is_file() else [])
            if line.strip() and json.loads(line)["round"] < round_index]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in kept)
                    + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    "utf-8")


def _progress_line(round_index: int, total: int, values: dict) -> str:
    parts = [f"[reflect] round {round_index}/{total}",
             f"reward {values['reward_initial']:.3f} -> revised {values['reward_revised']:.3f}",
             f"improved {values['improved_share']:.0%}", f"pairs {values['pairs']}"]
    if "sft_loss" in values:
        parts.append(f"sft {values['sft_loss']:.3f} dpo {values['preference_loss']:.3f}")
    if "eval_reward_initial" in values:
        parts.append(f"held-out {values['eval_reward_initial']:.3f} "
                     f"(revised {values['eval_reward_revised']:.3f})")
    if "eval_seen_reward_initial" in values:
        parts.append(f"training prompts {values['eval_seen_reward_initial']:.3f}")
    parts.append(f"{values['round_seconds']:.1f}s")
    return " | ".join(parts)
