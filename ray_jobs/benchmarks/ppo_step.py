"""PPO step throughput: the PPOController on Ray actor groups against a naive sequential loop
of the same algorithm in one process -- same model, prompts, sampling settings and samples per
step, steps interleaved in one run, so the ratio is fair on a shared, noisy machine.

    python -m ray_jobs.benchmarks.ppo_step --out ppo_step.json

"ours": the quickstart PPO set-up (configs/quickstart.yaml: ppo, rollout and ppo_resources) on a
local ``ray.init(num_cpus=2)``: 1 DeepSpeed trainer rank (policy + colocated critic), 2 rollout
workers (batched HF generate), 2 reward scorers. "naive": one process, nothing batched --
``generate`` one sample at a time, each answer scored alone, old/reference log-probs and values
one sample at a time, PPO updates with micro batch 1 and gradient accumulation up to the same
mini batch (plain torch AdamW, LoRA via peft as in the trainer), on 1 torch thread (at batch 1
a second thread is no faster, and on a loaded machine it stalls). Advantages come from the same
pure function on both sides. Each side runs 1 warm-up step, then ``--steps`` timed steps;
samples/s = samples / step seconds, median and min-max over the timed steps. Goal: ours >= 2x.

"ours_overlap": a second controller, the same set-up with ``ppo.overlap_rollout=true`` (step
t+1's rollout and reward run while step t trains), on actor groups of its own; the two
controllers' steps alternate like the others, so one side's actors only wait while the other
runs. Its ratio against "ours" is the overlap's gain.

With a GPU (``torch.cuda.is_available()``, as ``sft_throughput.detect_device`` sees it) both
sides run on CUDA in bf16: ours with GPU shares for the policy trainer (policy, reference and the
colocated critic) and the rollout workers (whole GPUs when there are enough, else fractions; on
one GPU everyone shares it, the naive loop too), DeepSpeed in bf16; the naive loop's policy,
reference (the same model, adapter off) and value model on the GPU. On CPUs nothing changes.

The policy is an untrained tiny Llama (the quickstart's default shape) unless ``--policy`` names
a trained one (e.g. runs/quickstart/sft/export). An untrained model rarely samples EOS, so
responses run to max_new_tokens and both sides generate the same number of tokens (the table
shows the mean response length of each, and the printout says whether they all ran full).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from culture_rl.rl import ppo  # noqa: E402
from culture_rl.rl.advantages import compute_step_advantages  # noqa: E402
from culture_rl.rl.experience import Experience  # noqa: E402
from culture_rl.rl.prompt_iterator import PromptIterator  # noqa: E402
from ray_jobs.benchmarks.arguments import choices_of, existing_path, positive_int  # noqa: E402
from ray_jobs.benchmarks.collect import write_results  # noqa: E402

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
# rollout_wait: with ppo.overlap_rollout, the wait before the sync for the next step's rollout
# (generated while this step trained); 0 on the other sides.
PHASES = ("rollout", "reward", "reference", "advantage", "train", "rollout_wait", "sync")
SIDES = ("ours", "ours_overlap", "naive")


class NaiveLoop:
    """The controller's PPO step written as a plain single-process loop, one sample at a time."""

    def __init__(self, config, job, threads: int, device: str = "cpu"):
        from peft import LoraConfig as PeftLoraConfig, get_peft_model

        from culture_rl.models.loading import load_model, load_tokenizer, peft_lora_config
        from culture_rl.rl.modeling import ValueModel

        cfg = self.cfg = config.ppo
        # What this loop implements is what the quickstart runs; anything else would need the
        # full-weight reference copy, GRPO or the adaptive KL controller.
        assert cfg.lora and cfg.advantage_estimator == "gae" and not cfg.adaptive_kl
        torch.set_num_threads(threads)
        self.config, self.device = config, device
        self.tok = load_tokenizer(job.policy_path)
        dtype = config.model.dtype  # bfloat16 on a GPU (see gpu_overrides), else float32
        # Policy: a fresh LoRA adapter; the reference is the same model with it switched off.
        self.policy = get_peft_model(load_model(job.policy_path, dtype).to(device),
                                     peft_lora_config(config.lora))
        # Critic: as _CriticTrainer._build_model (value head on the LM's backbone, own LoRA).
        lm = load_model(job.policy_path, dtype)
        if hasattr(lm, "merge_and_unload"):
            lm = lm.merge_and_unload()
        self.critic = ValueModel(lm)
        lora = config.lora
        self.critic.backbone = get_peft_model(self.critic.backbone, PeftLoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules="all-linear" if lora.target_modules == ["all-linear"]
            else list(lora.target_modules)))
        self.critic.to(device=device, dtype=getattr(torch, dtype))  # the value head too
        # torch AdamW without weight decay, as DeepSpeedStrategy.prepare builds it.
        self.optimizers = {
            name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                    lr=lr, weight_decay=0.0)
            for name, model, lr in (("policy", self.policy, cfg.actor_learning_rate),
                                    ("critic", self.critic, cfg.critic_learning_rate))}
        # Same seed as the controller's iterator: step k sees the same prompts on both sides.
        self.iterator = PromptIterator(job.prompts, cfg.rollout_batch_size, config.run.seed)

    def run_step(self, step: int) -> dict:
        from culture_rl.rl.modeling import response_log_probs, response_values
        from culture_rl.rl.rewards import score_batch
        from culture_rl.inference.rollout import response_mask

        cfg, ro, tok = self.cfg, self.config.rollout, self.tok
        timings = {f"seconds_{name}": 0.0 for name in PHASES}

        @contextmanager
        def phase(name):
            start = time.perf_counter()
            yield
            if self.device != "cpu":
                torch.cuda.synchronize()  # a phase ends when its kernels have
            timings[f"seconds_{name}"] += time.perf_counter() - start

        started = time.perf_counter()
        batch = self.iterator.next_batch()
        torch.manual_seed(self.config.run.seed * 100_003 + step * 131)
        self.policy.eval()
        # Generate with the adapter merged, like the rollout workers' merged weights, so a
        # token costs the same on both sides; merging is this loop's "weight sync".
        with phase("sync"):
            self.policy.merge_adapter()
        samples, texts = [], []
        with phase("rollout"), torch.no_grad():
            for group, prompt in enumerate(batch):
                encoded = tok(prompt["prompt"], return_tensors="pt",
                              add_special_tokens=False).to(self.device)
                width = encoded["input_ids"].shape[1]
                for _ in range(cfg.samples_per_prompt):
                    output = self.policy.generate(
                        **encoded, do_sample=True, temperature=ro.temperature, top_p=ro.top_p,
                        top_k=0, max_new_tokens=ro.max_new_tokens,
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                    response = output[:, width:]
                    mask = response_mask(response, tok.eos_token_id)
                    keep = int(mask.sum())  # up to and including EOS
                    meta = {k: v for k, v in prompt.items() if k != "prompt"} | {"group": group}
                    samples.append(Experience(encoded["input_ids"], encoded["attention_mask"],
                                              response[:, :keep], mask[:, :keep], meta=[meta],
                                              pad_token_id=tok.pad_token_id))
                    texts.append(tok.decode(response[0, :keep], skip_special_tokens=True))
        with phase("sync"):
            self.policy.unmerge_adapter()

        with phase("reward"):
            scores = [score_batch(cfg.reward, [text], s.meta)[0]
                      for text, s in zip(texts, samples)]

        self.critic.eval()
        with phase("reference"), torch.no_grad():
            for s in samples:
                s.old_log_probs = response_log_probs(self.policy, s)[0]
                with self.policy.disable_adapter():
                    s.ref_log_probs = response_log_probs(self.policy, s)[0]
                s.values = response_values(self.critic, s)

        with phase("advantage"):
            exp = Experience.concat(samples)
            exp.scores = torch.tensor(scores, dtype=torch.float32, device=self.device)
            exp = compute_step_advantages(exp, estimator=cfg.advantage_estimator,
                                          kl_estimator=cfg.kl_estimator, kl_coef=cfg.kl_coef,
                                          gamma=cfg.gamma, lam=cfg.lam,
                                          whiten=cfg.whiten_advantages)
            for i, s in enumerate(samples):  # back onto each sample, without the batch padding
                width = s.response_ids.shape[1]
                s.advantages, s.returns = exp.advantages[i:i + 1, :width], \
                    exp.returns[i:i + 1, :width]

        with phase("train"):
            self._train(samples, "policy", step, self._policy_loss)
            self._train(samples, "critic", step, self._value_loss)

        return {"samples": len(samples), "step_seconds": time.perf_counter() - started,
                "response_length": float(exp.response_mask.float().sum(1).mean()), **timings}

    def _policy_loss(self, s: Experience) -> torch.Tensor:
        from culture_rl.rl.modeling import response_log_probs

        log_probs, entropy = response_log_probs(self.policy, s, with_entropy=True)
        out = ppo.policy_loss(self.cfg.policy_loss, log_probs=log_probs,
                              old_log_probs=s.old_log_probs, advantages=s.advantages,
                              mask=s.response_mask, clip_eps=self.cfg.clip_range)
        return out["loss"] - self.cfg.entropy_coef * ppo.masked_mean(entropy, s.response_mask)

    def _value_loss(self, s: Experience) -> torch.Tensor:
        from culture_rl.rl.modeling import response_values

        return ppo.clipped_value_loss(response_values(self.critic, s), s.values, s.returns,
                                      s.response_mask, self.cfg.value_clip_range)["loss"]

    def _train(self, samples: list[Experience], name: str, step: int, loss_of) -> None:
        """``ppo_epochs`` shuffled passes; micro batch 1, an optimizer step (after clipping the
        gradient norm, as DeepSpeed's gradient_clipping does) every mini_batch_size samples."""
        model, optimizer = getattr(self, name), self.optimizers[name]
        params = [p for p in model.parameters() if p.requires_grad]
        mini = self.cfg.mini_batch_size
        model.train()
        for epoch in range(self.cfg.ppo_epochs):
            generator = torch.Generator().manual_seed(self.config.run.seed * 1_000_003
                                                      + step * 101 + epoch)
            order = torch.randperm(len(samples), generator=generator).tolist()
            for start in range(0, len(order), mini):
                for i in order[start:start + mini]:
                    (loss_of(samples[i]) / mini).backward()
                torch.nn.utils.clip_grad_norm_(params, self.config.deepspeed.gradient_clipping)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)


def gpu_overrides(gpus: int, rollout_workers: int, controllers: int = 1) -> list[str]:
    """Config overrides that put ours on ``gpus`` GPUs in bf16 (none for a CPU run, ``gpus`` 0):
    the trainer bundle (policy + colocated critic) a whole GPU and each rollout worker one of
    its own when there are enough, else the rollout workers share the other GPUs in equal
    fractions; on one GPU the trainer takes half and the rollout workers split the rest.
    With ``controllers`` > 1 (ours and ours_overlap side by side) each share is divided among
    them: their steps alternate, so they split memory, not compute."""
    if gpus <= 0:
        return []
    def share(of: float, count: int) -> float:  # of/count, down to Ray's 0.0001 resolution
        return math.floor(10_000 * of / count) / 10_000

    if gpus >= 1 + rollout_workers:
        trainer, rollout = 1.0, 1.0
    elif gpus >= 2:
        trainer, rollout = 1.0, share(1, math.ceil(rollout_workers / (gpus - 1)))
    else:
        trainer, rollout = 0.5, share(0.5, rollout_workers)
    if controllers > 1:
        trainer, rollout = share(trainer, controllers), share(rollout, controllers)
    return ["model.dtype=bfloat16", "deepspeed.precision=bf16",
            f"ppo_resources.gpus_per_trainer={trainer:g}",
            f"ppo_resources.gpus_per_rollout={rollout:g}"]


def summarise(steps: list[dict]) -> dict:
    rates = [s["samples"] / s["step_seconds"] for s in steps]
    return {"samples_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
            "step_seconds": statistics.median(s["step_seconds"] for s in steps),
            "response_length": statistics.mean(s["response_length"] for s in steps),
            **{f"seconds_{p}": statistics.median(s[f"seconds_{p}"] for s in steps)
               for p in PHASES},
            "steps": steps}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=positive_int, default=4, help="timed steps per side")
    parser.add_argument("--prompts", type=positive_int, default=32, help="prompts per step")
    parser.add_argument("--samples-per-prompt", type=positive_int, default=4)
    parser.add_argument("--max-new-tokens", type=positive_int, default=40)
    parser.add_argument("--mini-batch", type=positive_int, default=32,
                        help="samples per optimizer step (capped at the samples per step)")
    parser.add_argument("--micro-batch", type=positive_int, default=16,
                        help="ours: samples per forward pass (capped at the mini batch)")
    parser.add_argument("--naive-threads", type=positive_int, default=1,
                        help="torch threads of the naive loop: at batch 1 a second thread is "
                        "no faster, and on a loaded machine it stalls for seconds")
    parser.add_argument("--policy", type=existing_path, help="a trained policy (model or SFT "
                        "export folder); default: an untrained tiny Llama")
    parser.add_argument("--sides", default=",".join(SIDES), type=choices_of(SIDES),
                        help=f"comma-separated sides to run, among {', '.join(SIDES)} "
                        "('ours' and 'naive' are required: the goal's ratio)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    sides_run = args.sides
    if not {"ours", "naive"} <= set(sides_run):
        parser.error(f"--sides: expected 'ours', 'naive' and optionally 'ours_overlap', not "
                     f"{','.join(sides_run)!r}")
    controllers = 2 if "ours_overlap" in sides_run else 1

    import ray

    from culture_rl.config import load_config
    from culture_rl.core.errors import ConfigError
    from culture_rl.models.loading import build_tiny_model
    from culture_rl.rl.controller import PPOController
    from culture_rl.rl.plan import batch_plan
    from culture_rl.data.align_data import load_align_data
    from culture_rl.models.paths import resolve_policy_path
    from culture_rl.methods.align.ppo import build_ppo_job
    from ray_jobs.benchmarks.sft_throughput import detect_device

    device = detect_device()
    samples = args.prompts * args.samples_per_prompt
    mini = min(args.mini_batch, samples)
    micro = min(args.micro_batch, mini)
    folder = Path(tempfile.mkdtemp(prefix="culture_rl_ppo_bench_"))
    overrides = [
        f"run.storage_path={folder}", "run.name=bench",
        f"ppo.rollout_batch_size={args.prompts}",
        f"ppo.samples_per_prompt={args.samples_per_prompt}",
        f"rollout.max_new_tokens={args.max_new_tokens}", f"ppo.mini_batch_size={mini}",
        f"ppo.micro_batch_size={micro}", "ppo.eval_steps=0", "ppo.save_steps=0",
        f"ppo.max_steps={args.steps + 1}"]  # the overlapped side prefetches up to the last
    try:  # flags that make an impossible PPO config are usage errors, not tracebacks
        rollout_workers = load_config(QUICKSTART, overrides).ppo_resources.rollout_workers
        overrides += gpu_overrides(device.count if device.gpu else 0, rollout_workers,
                                   controllers)
        config = load_config(QUICKSTART, overrides)
        batch_plan(config).check()  # batch sizes that do not divide
        data = load_align_data(config, write_world=False)
        if args.policy:
            policy, trained = resolve_policy_path(args.policy), True
        else:
            policy, trained = str(build_tiny_model(config.model, data.corpus,
                                                   folder / "policy", config.run.seed)), False
        job = build_ppo_job(config, data, policy)
    except ConfigError as err:
        shutil.rmtree(folder, ignore_errors=True)
        parser.error(str(err))
    cpus = os.cpu_count() or 2
    results: dict = {
        "machine": {"cpus": cpus, "load_average_1m": os.getloadavg()[0],
                    **({"device": device.name, "gpus": device.count} if device.gpu else {})},
        "settings": {"policy": args.policy or "untrained tiny Llama (quickstart shape)",
                     "prompts_per_step": args.prompts,
                     "samples_per_prompt": args.samples_per_prompt, "samples_per_step": samples,
                     "max_new_tokens": args.max_new_tokens,
                     "temperature": config.rollout.temperature, "top_p": config.rollout.top_p,
                     "mini_batch": mini, "micro_batch_ours": micro, "micro_batch_naive": 1,
                     "ppo_epochs": config.ppo.ppo_epochs, "warmup_steps": 1,
                     "timed_steps": args.steps, "naive_threads": args.naive_threads,
                     "ppo_resources": config.ppo_resources.model_dump()}}
    if device.gpu:
        results["settings"]["dtype"] = config.model.dtype

    # Each controller's groups take 2 logical CPUs (quickstart ppo_resources); the sides
    # alternate, so two of them on 2 cores never run at once.
    ray.init(num_cpus=2 * controllers, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    ours = {"ours": PPOController(config, job)}
    if controllers > 1:
        overlap_config = load_config(QUICKSTART, overrides + [
            "run.name=bench_overlap", "ppo.overlap_rollout=true"])
        ours["ours_overlap"] = PPOController(overlap_config, build_ppo_job(
            overlap_config, data, policy))
    steps: dict[str, list[dict]] = {name: [] for name in sides_run}
    try:
        for name, controller in ours.items():
            start = time.perf_counter()
            controller.start()
            results[f"{name}_startup_s"] = time.perf_counter() - start
        naive = NaiveLoop(config, job, threads=args.naive_threads,
                          device="cuda" if device.gpu else "cpu")
        sides = {name: controller.run_step for name, controller in ours.items()}
        sides["naive"] = naive.run_step
        # Step 1 is the warm-up. Steps alternate sides (and which goes first), so load from
        # other users of the machine falls on both alike; the idle side's processes only wait.
        for step in range(1, args.steps + 2):
            order = list(sides) if step % 2 else list(sides)[::-1]
            for name in order:
                values = sides[name](step)
                keep = {k: values[k] for k in ("samples", "step_seconds", "response_length",
                                               *(f"seconds_{p}" for p in PHASES))}
                print(f"[{name}] step {step}{' (warm-up)' if step == 1 else ''}: "
                      f"{keep['samples']} samples in {keep['step_seconds']:.1f} s", flush=True)
                if step > 1:
                    steps[name].append(keep)
    finally:
        for controller in ours.values():
            controller.shutdown()
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)

    runs = results["runs"] = {name: summarise(values) for name, values in steps.items()}
    # Per step pair, same samples on both sides: samples/s ratio = naive s / ours s.
    paired = [naive_step["step_seconds"] / ours_step["step_seconds"]
              for ours_step, naive_step in zip(steps["ours"], steps["naive"])]
    results["ratio_ours_vs_naive"] = runs["ours"]["samples_per_s"] / runs["naive"][
        "samples_per_s"]
    results["ratio_per_step_min_max"] = [min(paired), max(paired)]
    if "ours_overlap" in runs:
        overlap_paired = [o["step_seconds"] / v["step_seconds"]
                          for o, v in zip(steps["ours"], steps["ours_overlap"])]
        results["ratio_overlap_vs_ours"] = runs["ours_overlap"]["samples_per_s"] / runs[
            "ours"]["samples_per_s"]
        results["ratio_overlap_per_step_min_max"] = [min(overlap_paired), max(overlap_paired)]
    results["machine"]["load_average_1m_end"] = os.getloadavg()[0]

    lines = ["| run | samples/s median (min-max) | step s | "
             + " | ".join(f"{p} s" for p in PHASES) + " | mean response tokens |",
             "|---|---|---|" + "---|" * len(PHASES) + "---|"]
    for name, run in runs.items():
        lines.append(f"| {name} | {run['samples_per_s']:.2f} ({run['min']:.2f}-{run['max']:.2f})"
                     f" | {run['step_seconds']:.1f} | "
                     + " | ".join(f"{run[f'seconds_{p}']:.2f}" for p in PHASES)
                     + f" | {run['response_length']:.1f} |")
    table = "\n".join(lines)
    lengths = [run["response_length"] for run in runs.values()]
    note = (f"{'trained' if trained else 'untrained'} policy; "
            + ("every timed response ran to max_new_tokens, so both sides generated the same "
               "token counts" if min(lengths) == args.max_new_tokens else
               "some responses ended at EOS: compare the token counts (last column)"))
    print(f"\n{samples} samples per step ({args.prompts} prompts x {args.samples_per_prompt}), "
          f"max_new_tokens {args.max_new_tokens}, temperature {config.rollout.temperature:g}, "
          f"mini batch {mini} (ours micro {micro}, naive micro 1); {args.steps} timed steps "
          f"after 1 warm-up; phases are medians; {note}; load average "
          f"{results['machine']['load_average_1m']:.1f} at start, "
          f"{results['machine']['load_average_1m_end']:.1f} at end; ours start-up "
          f"{results['ours_startup_s']:.0f} s (not timed)\n\n{table}\n\n"
          f"ours / naive: {results['ratio_ours_vs_naive']:.2f}x samples/s (per step "
          f"{min(paired):.2f}-{max(paired):.2f}x; goal >= 2x)"
          + (f"\nours_overlap / ours: {results['ratio_overlap_vs_ours']:.2f}x samples/s (per "
             f"step {min(overlap_paired):.2f}-{max(overlap_paired):.2f}x)"
             if "ours_overlap" in runs else ""))
    results["table"] = table
    results["note"] = note
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
