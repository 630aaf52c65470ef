"""The studio itself: prepare a workspace, serve it in the browser, and the guided demo."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from pipelines.judges import HEURISTIC_RULE
from pipelines.models import DEFAULT_MODEL, resolve_model
from store import import_file
from studio.cli.common import command, config_arguments, follow, given_settings
from studio.demo import REPORT, SCALE_UP, DemoSettings, DemoStop, run_demo
from studio.workspace import ASSETS

DEMO_DATASET = "demo-prompts"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cmd_demo(ctx, args) -> int:
    settings = DemoSettings(**given_settings(args, DemoSettings))
    started = time.monotonic()

    def show(stage):
        print(f"== {stage.name} ({stage.seconds:.0f} s): {stage.summary}", flush=True)

    def follow_run(run_id):
        follow(ctx.runner, run_id)
        return ctx.runner.get(run_id)

    try:
        stages = run_demo(ctx.store, ctx.runner, settings, ctx.workspace, auto=args.auto, follow=follow_run,
                          on_stage=show)
    except DemoStop as e:
        print(str(e))
        return 0
    print(f"\nThe demo took {(time.monotonic() - started) / 60:.1f} minutes ({len(stages)} stages; report in "
          f"{ctx.workspace.root / REPORT}). See the models side by side: alignstudio serve, then the Compare tab."
          f"\n{SCALE_UP}")
    return 0


def cmd_prepare(ctx, args) -> int:
    """Convert the default model once and load the demo prompts: what `make run` does first."""
    print(f"default model ready: {resolve_model(DEFAULT_MODEL, ctx.workspace.models_dir)}")
    with ctx.workspace.open_store() as store:
        if store.dataset_id(DEMO_DATASET) is None:
            print(import_file(store, ASSETS / "demo_prompts.jsonl", DEMO_DATASET, internal=True).summary())
        print(f"workspace ready: {ctx.workspace.root}")
    return 0


def logins(given: list[str], path: str | None) -> list[tuple[str, str]]:
    """user:password pairs from --auth (repeated) and --auth-file (one a line, # comments), checked:
    with logins, each user labels under their own name."""
    entries = [("--auth", None, a) for a in given]
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise SystemExit(f"{path}: cannot read the logins file ({e})") from None
        entries += [(path, n, line.strip()) for n, line in enumerate(lines, 1)
                    if line.strip() and not line.lstrip().startswith("#")]
    found: dict[str, str] = {}
    for where, line, entry in entries:
        user, sep, password = entry.partition(":")
        place = f"{where}:{line}" if line else where
        if not sep or not user.strip() or not password:
            raise SystemExit(f"{place}: a login is user:password")
        if user in found:
            raise SystemExit(f"{place}: the user {user!r} is given twice")
        found[user.strip()] = password
    return list(found.items())


def cmd_serve(ctx, args) -> int:
    from studio.app import serve  # Gradio takes seconds to import: only for this command

    auth = logins(args.auth or [], args.auth_file) or None
    if args.host not in LOOPBACK and auth is None:
        raise SystemExit(f"refusing to serve on {args.host} without --auth user:password: anyone who "
                         "can reach this machine could read and change the workspace")
    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind((args.host, args.port))
        except OSError as e:
            raise SystemExit(f"cannot serve on {args.host}:{args.port}: {e.strerror} (another studio, or another "
                             "program, may be using that port: pass --port with a free one)") from None
    serve(ctx.workspace, args.host, args.port, auth)
    return 0


def add_commands(sub) -> None:
    p = command(sub, "demo", cmd_demo, "the whole loop on the demo prompts, stage by stage", opens="runner")
    p.add_argument("--auto", action="store_true",
                   help=f"label with a plain, stated rule and run unattended; the rule: {HEURISTIC_RULE}")
    config_arguments(p, DemoSettings)

    command(sub, "prepare", cmd_prepare, "convert the default model and load the demo prompts", opens=None)

    p = command(sub, "serve", cmd_serve, "serve the studio in the browser", opens=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", action="append", help="user:password, repeated for each member of a team; each user "
                   "labels under their own name (a login is required for a host other than loopback)")
    p.add_argument("--auth-file", help="a file of logins, user:password a line")
