"""`alignstudio`: everything the studio does, scriptable. Each group of commands is a module here
that declares its commands beside their handlers."""

from __future__ import annotations

import argparse
import os
import sys

from common.errors import StudioError
from studio.cli import app, build, data, models, runs, training
from studio.context import Context
from studio.runner import Runner
from studio.workspace import Workspace

GROUPS = (data, build, training, models, app, runs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignstudio", description="everything the studio does, scriptable")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_commands(sub)
    return parser


def run_command(args) -> int:
    """Run the parsed command with what it opens (its `opens`: the store, a runner, or nothing)."""
    ws = Workspace.at(args.workspace, args.models_dir)
    if args.opens is None:
        return args.func(Context(ws), args)
    with ws.open_store() as store:
        runner = Runner(store, ws)
        if args.opens == "runner":
            runner.recover()  # brings the status of runs left running up to date
        return args.func(Context(ws, store, runner), args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except StudioError as e:  # anything else is a bug, and keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C anywhere else: a short line, not a traceback
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`alignstudio runs | head`): stop quietly, as other commands do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def reference(width: int = 100) -> str:
    """Every command's --help (and every `train METHOD`'s), as markdown: docs/cli.md
    (`python scripts/cli_docs.py` writes it; a test keeps the two equal)."""
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)  # argparse wraps help to the terminal's width: the same everywhere
    try:
        return _reference(build_parser())
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


def _reference(parser: argparse.ArgumentParser) -> str:
    parts = ["# `alignstudio` command reference", "",
             "Generated from `--help` by `python scripts/cli_docs.py`; `tests/test_docs.py` keeps it current.", "",
             "```", parser.format_help().rstrip(), "```"]

    def add(sub_parser, name: str) -> None:
        parts.extend(["", f"## `{name}`", "", "```", sub_parser.format_help().rstrip(), "```"])
        for action in sub_parser._actions:  # argparse keeps its subcommands on a private action
            if isinstance(action, argparse._SubParsersAction):
                for child, child_parser in action.choices.items():
                    add(child_parser, f"{name} {child}")

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub_parser in action.choices.items():
                add(sub_parser, f"alignstudio {name}")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.exit(main())
