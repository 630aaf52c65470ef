"""Runs: list them, cancel one (it checkpoints first), resume one."""

from __future__ import annotations

import argparse

from store.queries import run_summaries
from studio.bundles import import_bundle
from studio.cli.common import command, follow, print_json


def cmd_runs(ctx, args) -> int:
    if args.action == "import":
        run_id = import_bundle(ctx.runner, args.folder)
        run = ctx.runner.get(run_id)
        print(f"run {run_id} imported from {args.folder}: {run['status']}" + (f" - {run['message']}"
                                                                              if run["message"] else ""))
        return 0 if run["status"] == "succeeded" else 1
    rows = run_summaries(ctx.store)  # the runner brought the status of runs left running up to date
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['id']:5} {r['kind']:12} {r['status']:10} {r['message'] or ''}")
    return 0


def cmd_cancel(ctx, args) -> int:
    ctx.runner.cancel(args.run)
    return follow(ctx.runner, args.run) if args.wait else 0


def cmd_resume(ctx, args) -> int:
    ctx.runner.resume(args.run)
    print(f"run {args.run} resumed")
    return 0 if args.no_wait else follow(ctx.runner, args.run)


def add_commands(sub) -> None:
    p = command(sub, "runs", cmd_runs, "list runs; runs import DIR brings back a bundle that ran elsewhere",
                opens="runner", json_output=True)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    imported = actions.add_parser("import", help="a bundle (train ... --bundle DIR) that ran elsewhere, as a run "
                                  "of this workspace: its events, metrics, adapter and report card")
    imported.add_argument("folder", help="the bundle's folder, with the events.jsonl and outputs of its run")
    for flag in ("--workspace", "--models-dir"):  # also after `import`; SUPPRESS keeps one given before it
        imported.add_argument(flag, default=argparse.SUPPRESS, help="as for runs")
    p = command(sub, "cancel", cmd_cancel, "cancel a run (it checkpoints first)", opens="runner")
    p.add_argument("run", type=int)
    p.add_argument("--wait", action="store_true", help="follow the run until it has stopped")
    p = command(sub, "resume", cmd_resume, "resume a cancelled or failed run", job=True)
    p.add_argument("run", type=int)
