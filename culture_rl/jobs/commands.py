"""The ``submit`` and ``jobs`` commands of the CLI (argument parsing lives in cli.py)."""

from __future__ import annotations

import sys

from culture_rl.jobs import client as jobs
from culture_rl.core.redact import redact_text
from culture_rl.jobs.workflows import WORKFLOWS

EXIT_INTERRUPTED = 130


def add_parsers(commands, parser_class) -> None:
    submit = commands.add_parser(
        "submit", help="submit a workflow as a Ray job, follow its log, exit with its outcome")
    submit.add_argument("workflow", choices=sorted(WORKFLOWS), metavar="WORKFLOW",
                        help="one of: " + ", ".join(f"{name} (culture-rl {WORKFLOWS[name].command})"
                                                    for name in sorted(WORKFLOWS)))
    _add_address(submit)
    submit.add_argument("--config", required=True, help="YAML config inside the working dir")
    submit.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, passed on to the job")
    submit.add_argument("--no-wait", action="store_true",
                        help="print the submission id and return at once")
    submit.add_argument("--working-dir", default=".",
                        help="project folder uploaded to the cluster (default: .)")
    submit.add_argument("--runtime-env", default=None,
                        help="runtime env YAML (default: ray_jobs/runtime_env.yaml; "
                             "ray_jobs/runtime_env_pip.yaml also installs the dependencies)")
    submit.add_argument("--timeout", type=float, default=24 * 3600,
                        help="seconds to wait for the job to end (default: a day)")

    group = commands.add_parser("jobs", help="list, inspect, read or stop Ray jobs")
    actions = group.add_subparsers(dest="jobs_command", required=True, parser_class=parser_class)
    _add_address(actions.add_parser("list", help="every job on the cluster"))
    for name, text in (("status", "status, times, exit code and metadata of a job"),
                       ("logs", "the job's log so far"),
                       ("stop", "stop a running job and wait until it has stopped")):
        action = actions.add_parser(name, help=text)
        action.add_argument("job_id", metavar="SUBMISSION_ID")
        _add_address(action)
        if name == "logs":
            action.add_argument("--follow", action="store_true",
                                help="keep printing until the job ends")


def _add_address(parser) -> None:
    parser.add_argument("--address", default=None,
                        help=f"Ray dashboard address (default: RAY_API_SERVER_ADDRESS, an http "
                             f"RAY_ADDRESS, else {jobs.DEFAULT_ADDRESS})")


def run_submit(args) -> int:
    submission = jobs.prepare_submission(args.workflow, args.config, args.overrides,
                                         args.working_dir, args.runtime_env)
    client = jobs.connect(args.address)
    job_id = jobs.submit(client, submission)
    # The job itself gets the overrides as given; the terminal (and CI logs) get no password.
    print(f"submitted {job_id}: {redact_text(submission['entrypoint'])}", flush=True)
    print(f"  run folder on the cluster: {submission['metadata']['run_dir']}", flush=True)
    if args.no_wait:
        print(f"  follow it with: culture-rl jobs logs {job_id} --follow", flush=True)
        return 0
    try:
        jobs.follow_logs(client, job_id)
        info = jobs.wait_until_terminal(client, job_id, timeout_s=args.timeout)
    except KeyboardInterrupt:
        sys.stderr.write(f"culture-rl: stopped following; job {job_id} keeps running "
                         f"(culture-rl jobs stop {job_id})\n")
        return EXIT_INTERRUPTED
    print(f"job {job_id}: {info.status.value}", flush=True)
    return jobs.exit_code_of(info)


def run_jobs(args) -> int:
    client = jobs.connect(args.address)
    if args.jobs_command == "list":
        print(jobs.table(client.list_jobs()))
        return 0
    info = jobs.job_info(client, args.job_id)
    if args.jobs_command == "status":
        print(jobs.describe(info))
        return 0
    if args.jobs_command == "logs":
        if args.follow:
            jobs.follow_logs(client, args.job_id)
        else:
            sys.stdout.write(client.get_job_logs(args.job_id))
        return 0
    if args.jobs_command == "stop":
        if info.status.is_terminal():
            print(f"job {args.job_id} already ended: {info.status.value}")
            return 0
        client.stop_job(args.job_id)
        info = jobs.wait_until_terminal(client, args.job_id, timeout_s=120)
        print(f"job {args.job_id}: {info.status.value}")
        return 0
    raise AssertionError(args.jobs_command)
