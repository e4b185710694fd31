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

from culture_rl.commands import COMMANDS, EXIT_FAILED
from culture_rl.config import ExperimentConfig, config_to_yaml, describe_fields, load_config
from culture_rl.core.errors import CultureRLError, ConfigError, DataError, ResourceError
from culture_rl.core.storage import check_storage

INPUT_ERRORS = (ConfigError, DataError, ResourceError)
EXIT_BAD_INPUT = 2
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

    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help)
        _add_config_args(sub, required=command.config_required)
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


def _load(args) -> ExperimentConfig:
    path = args.config
    if path is None and args.command == "demo":
        path = _default_quickstart()
    return load_config(path, args.overrides)


def _default_quickstart() -> str | None:
    shipped = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
    return str(shipped) if shipped.is_file() else None


def run_command(args, config) -> int:
    """Run a parsed command; ``config`` is the loaded config (None for `config fields`)."""
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
    return COMMANDS[args.command].run(args, config)


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what a run would create)."""
    from culture_rl.core.storage import outermost_missing

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
