"""``culture-rl``: the command line.

Every command takes ``--config FILE`` and dotted ``key=value`` overrides. Bad input of any kind
(config, data file, flag) ends with one line on stderr and exit code 2, and a run folder this
invocation created is removed again, so nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from culture_rl.errors import CultureRLError, ConfigError, DataError, ResourceError
from culture_rl.storage import check_storage

INPUT_ERRORS = (ConfigError, DataError, ResourceError)
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
# Commands that talk to a cluster's job server: they create no run folder here.
CLIENTS = ("submit", "jobs")
# Commands that take no config: the clients, and `report`, which reads a finished run folder.
NO_CONFIG = (*CLIENTS, "report")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message)
        # Every error line starts "culture-rl: error:" (scripts grep for it), also from a
        # subcommand's parser, whose prog is "culture-rl sft": that goes into the message.
        command = self.prog.partition(" ")[2]
        where = f"{command}: " if command else ""
        sys.stderr.write(f"culture-rl: error: {where}{message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. sft.learning_rate=1e-5 run.name=try2")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="culture-rl", description="Culturally aware language models on Ray.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    config = commands.add_parser("config", help="show the resolved config or every field's help")
    config_commands = config.add_subparsers(dest="config_command", required=True,
                                            parser_class=_Parser)
    _add_config_args(config_commands.add_parser("show", help="print the resolved config"),
                     required=False)
    config_commands.add_parser("fields", help="list every field with its default and help")

    for name, text in (("synth", "write the synthetic culture world in the real file formats"),
                       ("elicit", "write world.base_associations: the base model's own "
                                  "associations to the world's cues, the dominant culture's "
                                  "norms"),
                       ("pretrain", "train the tiny base model on the synthetic corpus"),
                       ("sft", "ALIGN stage 1: LoRA SFT on association norms (Ray Train + "
                               "DeepSpeed)"),
                       ("ppo", "ALIGN stage 2: PPO with the Spearman ranking reward on Ray "
                               "actor groups"),
                       ("calm", "CALM: culture-aware modules (disentangle, contrastive "
                                "prototypes, cross-attention, MoE, identity fusion) around the "
                                "base model with LoRA on Ray Train + DeepSpeed; held-out value "
                                "identification vs a LoRA baseline and ablations"),
                       ("reflect", "CALM's self-prompted reflective learning on Ray actors: "
                                   "answer, reflect and revise as a person from the culture, "
                                   "score both, train on the revisions that improve (SFT + "
                                   "DPO), sync, repeat"),
                       ("sweep", "Ray Tune sweep of SFT across cultures x hyper-parameters "
                                 "(ASHA); writes the best configuration per culture"),
                       ("eval", "evaluate models x cultures x evaluations (eval.models; "
                                "default: every exported stage of the run) into "
                                "eval/eval.json and eval/eval.csv"),
                       ("spa", "CultureSPA: self-generated culture questions, culture-aware "
                               "vs -unaware answers, joint / per-culture fine-tuning, "
                               "evaluation with and without CCoT"),
                       ("demo", "the quickstart: world, base, SFT, PPO, evaluation, report")):
        sub = commands.add_parser(name, help=text)
        _add_config_args(sub, required=name != "demo")
        if name == "eval":
            sub.add_argument("--model", help="evaluate only this model folder (or a stage of "
                                             "the run: pretrain, sft, ppo, calm, reflect)")
            sub.add_argument("--label", default=None, help="name of --model in the results "
                                                           "(default: its folder name)")
            sub.add_argument("--no-report", action="store_true",
                             help="do not write report.md / report.html afterwards")
    report = commands.add_parser("report", help="write report.md and a self-contained "
                                                "report.html (with plots) for a run folder")
    report.add_argument("run_dir", help="the run folder, e.g. runs/quickstart")

    from culture_rl.jobs.commands import add_parsers as add_job_parsers

    add_job_parsers(commands, _Parser)
    return parser


def _load(args) -> "ExperimentConfig":  # noqa: F821
    from culture_rl.config import load_config

    path = args.config
    if path is None and args.command == "demo":
        path = _default_quickstart()
    return load_config(path, args.overrides)


def _default_quickstart() -> str | None:
    shipped = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
    return str(shipped) if shipped.is_file() else None


def _print_table(summary: dict, run_dir: Path) -> None:
    from culture_rl.workflows.quickstart import render_markdown

    print()
    print(render_markdown(summary))
    print(f"Summary: {run_dir / 'summary.md'}  (numbers: {run_dir / 'summary.json'})")
    print(f"Report: {run_dir / 'report.html'}  (markdown: {run_dir / 'report.md'}; every "
          f"number: {run_dir / 'eval' / 'eval.json'})")


def run_command(args, config) -> int:
    """Run a parsed command; ``config`` is the loaded config (None for `config fields`)."""
    from culture_rl.config import config_to_yaml, describe_fields, write_run_config

    if args.command == "report":
        from culture_rl.eval.report import write_report

        paths = write_report(Path(args.run_dir).expanduser().resolve())
        print(f"report: {paths['html']}  (markdown: {paths['md']})")
        return 0
    if args.command in CLIENTS:
        from culture_rl.jobs import commands

        return (commands.run_submit if args.command == "submit" else commands.run_jobs)(args)
    if args.command == "config":
        if args.config_command == "fields":
            print("\n".join(describe_fields()))
        else:
            print(config_to_yaml(config), end="")
        return 0

    if args.command == "elicit":  # before the world is loaded: the world reads its output
        from culture_rl.workflows.elicit import elicit_base_associations

        done = elicit_base_associations(config)
        print(f"base associations: {done.path} ({'written' if done.written else 'already there'}"
              f"): {done.cues_with_words} of {done.cues} cues named, {done.mean_words:.1f} "
              "words a cue")
        return 0
    from culture_rl.data.align_data import load_align_data

    if args.command == "synth":
        data = load_align_data(config)  # also validates data.culture and any user files
        if data.world_files is not None:
            world, paths = data.world, data.world_files
        else:  # both data paths are the user's, so loading did not need the world
            from culture_rl.data.align_data import synthesise_world

            world, paths = synthesise_world(config)
        print(f"synthetic world: {len(world.cultures)} cultures "
              f"({', '.join(c.name for c in world.cultures)}), {len(world.cues)} cues, "
              f"{len(world.survey)} survey questions, {len(world.corpus)} corpus documents")
        for role, path in sorted(paths.items()):
            print(f"  {role}: {path}")
        return 0
    if args.command == "demo":
        from culture_rl.workflows.quickstart import run_quickstart

        summary = run_quickstart(config)
        _print_table(summary, config.run_dir)
        return 0
    if args.command in ("pretrain", "sft"):
        from culture_rl.workflows import align_sft

        data = load_align_data(config)
        job = (align_sft.build_pretrain_job if args.command == "pretrain"
               else align_sft.build_sft_job)(config, data)  # validates before any Ray work
        write_run_config(config)
        from culture_rl.train.sft import run_stage

        result = run_stage(job, config.resources)
        print(f"{args.command}: model in {result.model_dir}")
        return 0
    if args.command == "ppo":
        from culture_rl.workflows.align_ppo import run_ppo, validate

        validate(config)  # needs no data: a bad batch setting must not write the world first
        data = load_align_data(config)
        write_run_config(config)
        result = run_ppo(config, data)
        print(f"ppo: model in {result.model_dir}")
        return 0
    if args.command == "calm":
        from culture_rl.workflows.calm import build_calm_job, run_calm

        data = load_align_data(config)
        build_calm_job(config, data)  # validates statements and settings before any Ray work
        write_run_config(config)
        run_calm(config, data)
        return 0
    if args.command == "reflect":
        from culture_rl.workflows.reflect import run_reflect, validate

        # Reward and cultures are checked before the world is written or Ray is joined.
        validate(config, load_align_data(config, write_world=False))
        data = load_align_data(config)
        write_run_config(config)
        result = run_reflect(config, data)
        print(f"reflect: model in {result.export_dir / 'model'}")
        return 0
    if args.command == "spa":
        from culture_rl.spa.pipeline import load_spa_data, plan_spa, run_spa

        data = load_spa_data(config)
        plan_spa(config, data)  # cultures, topics and model checked before any Ray work
        write_run_config(config)
        run_spa(config, data)
        return 0
    if args.command == "sweep":
        from culture_rl.tune.sweep import ERROR_STATUS, print_summary, run_sweep

        result = run_sweep(config)
        print_summary(result, config.sweep.metric)
        return EXIT_FAILED if result.count(ERROR_STATUS) else 0
    if args.command == "eval":
        from culture_rl.eval.harness import plan_evaluation, run_evaluation
        from culture_rl.workflows.quickstart import render_results

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
            from culture_rl.eval.report import write_report

            print(f"report: {write_report(config.run_dir)['html']}")
        return 0
    raise AssertionError(args.command)


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what a run would create)."""
    from culture_rl.storage import outermost_missing

    return outermost_missing(path)


def _holds_finished_work(folder: Path) -> bool:
    """Whether a stage finished inside ``folder``: an export's finished.json or a checkpoint's or
    pipeline stage's manifest.json."""
    return any(next(folder.rglob(name), None) is not None
               for name in ("finished.json", "manifest.json"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """argparse fills ``key=value`` overrides only when they come before options that follow a
    first positional (``submit WORKFLOW --config F k=v``); take the ones it left over too."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a
                                                 for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    created = config = None
    try:
        if getattr(args, "config_command", None) != "fields" and args.command not in NO_CONFIG:
            config = _load(args)
        if args.command not in ("config", *NO_CONFIG):
            created = _first_missing(config.run_dir)
            # Every command from here on writes into the run folder, most of them from Ray
            # workers: a storage path that is no folder, read-only or full fails now, in one
            # line, instead of minutes later inside a worker.
            check_storage(config.run_dir)
        return run_command(args, config)
    except CultureRLError as err:
        kept = ""
        if isinstance(err, INPUT_ERRORS) and created is not None:
            if _holds_finished_work(created):
                # A setting that only shows its fault late (e.g. a stage that finds nothing to
                # do) must not throw away the stages that finished before it.
                kept = f" (kept {created}: it holds finished stages that a rerun resumes from)"
            else:
                shutil.rmtree(created, ignore_errors=True)  # made by this call, nothing to keep
        sys.stderr.write(f"culture-rl: error: {' '.join(str(err).split())}{kept}\n")
        return EXIT_BAD_INPUT if isinstance(err, INPUT_ERRORS) else EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("culture-rl: interrupted; rerun the same command to resume\n")
        return 130


def entrypoint() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
