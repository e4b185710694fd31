"""The ``culture-rl`` commands that run a workflow on a config: one table (:data:`COMMANDS`),
each entry its help line and the function that runs it. The CLI (culture_rl/cli.py) builds its
parser from the table and dispatches over it; the Ray job workflows (culture_rl/jobs) name
their commands from it.

Every runner checks its inputs before any Ray work or run-folder write (so bad input is one
line and leaves nothing behind), then writes the run's config and runs. The heavy modules are
imported inside the runners: importing the workflows pulls in torch and Ray (about 3 s here
against 0.2 s for the config), which ``culture-rl --help`` and a bad config's one-line error
should not wait for.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from culture_rl.config import ExperimentConfig, write_run_config

EXIT_FAILED = 1


@dataclass(frozen=True)
class Command:
    help: str
    run: Callable[[argparse.Namespace, ExperimentConfig], int]
    config_required: bool = True  # False: --config may be left out (demo: the quickstart)


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


def _train_stage(args, config) -> int:  # pretrain and sft
    from culture_rl.data.align_data import load_align_data
    from culture_rl.train.sft import run_stage
    from culture_rl.methods.align import sft as align_sft

    data = load_align_data(config)
    job = (align_sft.build_pretrain_job if args.command == "pretrain"
           else align_sft.build_sft_job)(config, data)  # validates before any Ray work
    write_run_config(config)
    result = run_stage(job, config.resources)
    print(f"{args.command}: model in {result.model_dir}")
    return 0


def _ppo(args, config) -> int:
    from culture_rl.data.align_data import load_align_data
    from culture_rl.methods.align.ppo import run_ppo, validate

    plan = validate(config)  # needs no data: a bad batch setting must not write the world first
    data = load_align_data(config)
    write_run_config(config)
    result = run_ppo(config, data, plan)
    print(f"ppo: model in {result.model_dir}")
    return 0


def _calm(args, config) -> int:
    from culture_rl.data.align_data import load_align_data
    from culture_rl.methods.calm.train import build_calm_job, run_calm

    data = load_align_data(config)
    build_calm_job(config, data)  # validates statements and settings before any Ray work
    write_run_config(config)
    run_calm(config, data)
    return 0


def _reflect(args, config) -> int:
    from culture_rl.data.align_data import load_align_data
    from culture_rl.methods.calm.reflect import run_reflect, validate

    # Reward and cultures are checked before the world is written or Ray is joined.
    validate(config, load_align_data(config, write_world=False))
    data = load_align_data(config)
    write_run_config(config)
    result = run_reflect(config, data)
    print(f"reflect: model in {result.export_dir / 'model'}")
    return 0


def _spa(args, config) -> int:
    from culture_rl.methods.culturespa.pipeline import load_spa_data, plan_spa, run_spa

    data = load_spa_data(config)
    plan_spa(config, data)  # cultures, topics and model checked before any Ray work
    write_run_config(config)
    run_spa(config, data)
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
    "pretrain": Command("train the tiny base model on the synthetic corpus", _train_stage),
    "sft": Command("ALIGN stage 1: LoRA SFT on association norms (Ray Train + DeepSpeed)",
                   _train_stage),
    "ppo": Command("ALIGN stage 2: PPO with the Spearman ranking reward on Ray actor groups",
                   _ppo),
    "calm": Command("CALM: culture-aware modules (disentangle, contrastive prototypes, "
                    "cross-attention, MoE, identity fusion) around the base model with LoRA on "
                    "Ray Train + DeepSpeed; held-out value identification vs a LoRA baseline "
                    "and ablations", _calm),
    "reflect": Command("CALM's self-prompted reflective learning on Ray actors: answer, "
                       "reflect and revise as a person from the culture, score both, train on "
                       "the revisions that improve (SFT + DPO), sync, repeat", _reflect),
    "sweep": Command("Ray Tune sweep of SFT across cultures x hyper-parameters (ASHA); writes "
                     "the best configuration per culture", _sweep),
    "eval": Command("evaluate models x cultures x evaluations (eval.models; default: every "
                    "exported stage of the run) into eval/eval.json and eval/eval.csv", _eval),
    "spa": Command("CultureSPA: self-generated culture questions, culture-aware vs -unaware "
                   "answers, joint / per-culture fine-tuning, evaluation with and without "
                   "CCoT", _spa),
    "demo": Command("the quickstart: world, base, SFT, PPO, evaluation, report", _demo,
                    config_required=False),
}
