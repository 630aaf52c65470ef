"""What every command shares: the workspace options, the way a command is declared (its shared
options written once), flags generated from a pipeline's config, and following a job."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.settings import default_of, help_of, split_list, user_fields, value_type
from store.queries import latest_metrics
from studio.context import Context
from studio.kinds import RunError
from studio.runner import Runner

SHOWN_ERRORS = 50


def workspace_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", help="workspace folder (default ./studio-data or $ALIGNSTUDIO_WORKSPACE)")
    common.add_argument("--models-dir", help="folder for converted and trained models (default <workspace>/models)")
    return common


WORKSPACE_OPTIONS = workspace_options()


def command(sub, name: str, func, help: str, *, opens: str | None = "store", json_output: bool = False,
            job: bool = False, **parser_options) -> argparse.ArgumentParser:
    """A subcommand with the workspace options. `opens`: "store" (the handler gets the store),
    "runner" (the store and a runner that first brings runs left running up to date) or None (the
    handler opens what it needs). `json_output` adds --json; `job` (a command that starts a job and
    follows it) opens the runner and adds --no-wait."""
    p = sub.add_parser(name, parents=[WORKSPACE_OPTIONS], help=help, **parser_options)
    p.set_defaults(func=func, opens="runner" if job else opens)
    if json_output:
        p.add_argument("--json", action="store_true", help="print the result as JSON")
    if job:
        p.add_argument("--no-wait", action="store_true", help="start the job and return")
    return p


def print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def print_errors(errors) -> None:
    for error in errors[:SHOWN_ERRORS]:
        print(error, file=sys.stderr)
    if len(errors) > SHOWN_ERRORS:
        print(f"... and {len(errors) - SHOWN_ERRORS} more bad rows", file=sys.stderr)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {value}")
    return value


def config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """A flag for every setting of a pipeline config (`--learning-rate`, ...), with the field's own
    help and default. A flag not given stays None, so the config's (or a suggested) default applies."""
    for f in user_fields(config_cls):
        kind, default = value_type(f), default_of(f)
        shown = ",".join(default) if isinstance(default, list) else default
        help_text = f"{help_of(f)} (default: {shown})".replace("%", "%%")  # argparse formats help with %
        flags = [f"-{f.name}"] if len(f.name) == 1 else [f"--{f.name.replace('_', '-')}"]
        if kind is bool:
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif kind is list:
            parser.add_argument(*flags, dest=f.name, default=None, help=help_text + "; separate with commas",
                                type=split_list)
        else:
            parser.add_argument(*flags, dest=f.name, type=kind, default=None, choices=f.metadata.get("choices"),
                                help=help_text)


def given_settings(args, config_cls: type) -> dict:
    """The settings of `config_cls` given on the command line."""
    return {f.name: getattr(args, f.name) for f in user_fields(config_cls)
            if getattr(args, f.name, None) is not None}


def read_guideline(args) -> str:
    """The judge's prompt: --guideline FILE's text, or empty for the studio's."""
    if not getattr(args, "guideline", None):
        return ""
    try:
        return Path(args.guideline).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"{args.guideline}: cannot read the judge's prompt ({e})") from None


def follow(runner: Runner, run_id: int) -> int:
    """Print progress until the run ends (0: it succeeded); Ctrl-C cancels it (checkpointed, resumable)."""
    last = [None]

    def show(run):
        latest = latest_metrics(runner.store, run_id) if run["status"] == "running" else {}
        percent = f" {latest['progress']:.0%}" if "progress" in latest else ""
        eta = f", {latest['eta_s']:.0f} s left" if percent and "eta_s" in latest else ""
        message = f" - {run['message']}" if run["message"] else ""
        key = (run["status"], percent, message)
        if key != last[0]:  # a new line when the status, message or whole percent changes
            print(f"run {run_id}: {run['status']}{percent}{eta}{message}", flush=True)
            last[0] = key

    try:
        run = runner.wait(run_id, on_update=show)
    except KeyboardInterrupt:
        print(f"cancelling run {run_id} ...", file=sys.stderr)
        runner.cancel(run_id)
        run = runner.wait(run_id, on_update=show)
    return 0 if run["status"] == "succeeded" else 1


def announce(ctx: Context, run_id: int, what: str) -> None:
    print(f"run {run_id} started: {what} (folder {ctx.workspace.runs_dir / str(run_id)})", flush=True)


def follow_job(ctx: Context, args, run_id: int, what: str, after=None) -> int:
    """Say what the started run does, and follow it unless --no-wait; `after(run_id, status)` may
    add to a followed run's report (its exit status)."""
    announce(ctx, run_id, what)
    if args.no_wait:
        return 0
    status = follow(ctx.runner, run_id)
    return after(run_id, status) if after else status
