"""The ``culture-rl`` commands that run on a config: one table (:data:`COMMANDS`). The CLI
(culture_rl/cli.py) builds its parser from it and dispatches over it; the Ray job entrypoints
(``ray_jobs/<job>.py``, :data:`JOBS`) run its commands, so a job and a local run share every
line of code.

A method (pretrain, sft, ppo, calm, reflect, dpo, spa) is a module keeping the protocol of
:mod:`culture_rl.methods` -- ``plan(config)`` checks everything once, ``run(plan)`` runs it --
and all of them go through :func:`run_method`. The operations (synth, elicit, sweep, eval, demo)
have a runner each. Either way the inputs are checked before any Ray work or run-folder write
(so bad input is one line and leaves nothing behind). The heavy modules are imported only when
a command runs: importing the methods pulls in torch and Ray (about 3 s here against 0.2 s for
the config), which ``culture-rl --help`` and a bad config's one-line error should not wait for.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from culture_rl.config import ExperimentConfig, write_run_config

EXIT_FAILED = 1


@dataclass(frozen=True)
class Command:
    help: str
    # An operation's runner; a method's is run_method over its module (``method``).
    runner: Callable[[argparse.Namespace, ExperimentConfig], int] | None = None
    # A method module keeping the protocol of culture_rl.methods: plan(config), run(plan),
    # summary(result). Named, not imported: see the module docstring.
    method: str | None = None
    # The Ray job entrypoint running this command: ray_jobs/<job>.py (None: no job).
    job: str | None = None
    config_required: bool = True  # False: --config may be left out (demo: the quickstart)

    def run(self, args: argparse.Namespace, config: ExperimentConfig) -> int:
        return run_method(self.method, config) if self.method else self.runner(args, config)


def run_method(module: str, config: ExperimentConfig) -> int:
    """The one path of every method: check everything, write the run's config, run, summarise."""
    method = importlib.import_module(module)
    plan = method.plan(config)  # every input checked before any Ray work or run-folder write
    write_run_config(config)
    line = method.summary(method.run(plan))
    if line:
        print(line)
    return 0


def _synth(args, config) -> int:
    from culture_rl.data.align_data import load_align_data, synthesise_world

    data = load_align_data(config)  # also validates data.culture and any user files
    if data.world_files is not None:
        world, paths = data.world, data.world_files
    else:  # both data paths are the user's, so loading did not need the world
        world, paths = synthesise_world(config)
    print(f"synthetic world: {len(world.cultures)} cultures "
          f"({', '.join(c.name for c in world.cultures)}), {len(world.cues)} cues, "
          f"{len(world.survey)} survey questions, {len(world.corpus)} corpus documents")
    for role, path in sorted(paths.items()):
        print(f"  {role}: {path}")
    return 0


def _elicit(args, config) -> int:
    # Before the world is loaded: the world reads what this writes.
    from culture_rl.methods.elicit import elicit_base_associations

    done = elicit_base_associations(config)
    print(f"base associations: {done.path} ({'written' if done.written else 'already there'}"
          f"): {done.cues_with_words} of {done.cues} cues named, {done.mean_words:.1f} "
          "words a cue")
    return 0


def _sweep(args, config) -> int:
    from culture_rl.tune.sweep import ERROR_STATUS, print_summary, run_sweep

    result = run_sweep(config)
    print_summary(result, config.sweep.metric)
    return EXIT_FAILED if result.count(ERROR_STATUS) else 0


def _eval(args, config) -> int:
    from culture_rl.data.align_data import load_align_data
    from culture_rl.eval.harness import plan_evaluation, run_evaluation
    from culture_rl.eval.report import write_report
    from culture_rl.methods.quickstart import render_results

    data = load_align_data(config)
    models = None
    if args.model:
        label = args.label or Path(args.model).name
        models = {label: args.model}
    plan = plan_evaluation(config, data, models)  # every input checked before Ray starts
    write_run_config(config)
    results = run_evaluation(config, plan)
    print(render_results(results))
    print(f"results: {config.run_dir / 'eval' / 'eval.json'} (and eval.csv)")
    if not args.no_report:
        print(f"report: {write_report(config.run_dir)['html']}")
    return 0


def _demo(args, config) -> int:
    from culture_rl.methods.quickstart import render_markdown, run_quickstart

    summary = run_quickstart(config)
    run_dir = config.run_dir
    print()
    print(render_markdown(summary))
    print(f"Summary: {run_dir / 'summary.md'}  (numbers: {run_dir / 'summary.json'})")
    print(f"Report: {run_dir / 'report.html'}  (markdown: {run_dir / 'report.md'}; every "
          f"number: {run_dir / 'eval' / 'eval.json'})")
    return 0


COMMANDS: dict[str, Command] = {
    "synth": Command("write the synthetic culture world in the real file formats", _synth),
    "elicit": Command("write world.base_associations: the base model's own associations to "
                      "the world's cues, the dominant culture's norms", _elicit),
    "pretrain": Command("train the tiny base model on the synthetic corpus",
                        method="culture_rl.methods.pretrain"),
    "sft": Command("ALIGN stage 1: LoRA SFT on association norms (Ray Train + DeepSpeed)",
                   method="culture_rl.methods.align.sft", job="align_sft"),
    "ppo": Command("ALIGN stage 2: PPO with the Spearman ranking reward on Ray actor groups",
                   method="culture_rl.methods.align.ppo", job="align_ppo"),
    "calm": Command("CALM: culture-aware modules (disentangle, contrastive prototypes, "
                    "cross-attention, MoE, identity fusion) around the base model with LoRA on "
                    "Ray Train + DeepSpeed; held-out value identification vs a LoRA baseline "
                    "and ablations", method="culture_rl.methods.calm.train", job="calm"),
    "reflect": Command("CALM's self-prompted reflective learning on Ray actors: answer, "
                       "reflect and revise as a person from the culture, score both, train on "
                       "the revisions that improve (SFT + DPO), sync, repeat",
                       method="culture_rl.methods.calm.reflect", job="reflect"),
    "dpo": Command("offline preference training (DPO, IPO, cDPO, rDPO with TRL's "
                   "DPOTrainer on Ray Train + DeepSpeed) on pairs from the reflection loop, "
                   "CultureSPA or a JSON Lines file", method="culture_rl.methods.dpo", job="dpo"),
    "sweep": Command("Ray Tune sweep of SFT across cultures x hyper-parameters (ASHA); writes "
                     "the best configuration per culture", _sweep, job="sweep"),
    "eval": Command("evaluate models x cultures x evaluations (eval.models; default: every "
                    "exported stage of the run) into eval/eval.json and eval/eval.csv", _eval,
                    job="eval"),
    "spa": Command("CultureSPA: self-generated culture questions, culture-aware vs -unaware "
                   "answers, joint / per-culture fine-tuning, evaluation with and without "
                   "CCoT", method="culture_rl.methods.culturespa.pipeline", job="culture_spa"),
    "demo": Command("the quickstart: world, base, SFT, PPO, evaluation, report", _demo,
                    job="quickstart", config_required=False),
}

# The Ray job entrypoints: ray_jobs/<job>.py -> the command it runs.
JOBS: dict[str, str] = {c.job: name for name, c in COMMANDS.items() if c.job}
