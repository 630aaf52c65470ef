"""Runs: list them, cancel one (it checkpoints first), resume one."""

from __future__ import annotations

from store.queries import run_summaries
from studio.cli.common import command, follow, print_json


def cmd_runs(ctx, args) -> int:
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
    command(sub, "runs", cmd_runs, "list runs", opens="runner", json_output=True)
    p = command(sub, "cancel", cmd_cancel, "cancel a run (it checkpoints first)", opens="runner")
    p.add_argument("run", type=int)
    p.add_argument("--wait", action="store_true", help="follow the run until it has stopped")
    p = command(sub, "resume", cmd_resume, "resume a cancelled or failed run", job=True)
    p.add_argument("run", type=int)
