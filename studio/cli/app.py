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
    port_free(args.host, args.port)
    serve(ctx.workspace, args.host, args.port, auth)
    return 0


def port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind((host, port))
        except OSError as e:
            raise SystemExit(f"cannot serve on {host}:{port}: {e.strerror} (another server, or another program, may "
                             "be using that port: pass --port with a free one)") from None


def cmd_serve_model(ctx, args) -> int:
    import importlib.util
    from pathlib import Path

    from pipelines.chat import gguf_chat_template, serve_openai
    from store.db import StoreError
    from studio import judging

    given = Path(args.model).expanduser()
    if given.suffix == ".gguf" and given.is_file():  # a file needs no store: the studio may be running
        path, name = str(given), args.name or given.stem
    else:
        try:
            with ctx.workspace.open_store() as store:  # closed again before serving: the studio may open it
                known = judging.gguf_models(store)
        except StoreError as e:
            raise SystemExit(f"{e}; or give the GGUF file's path instead of its name (the Export tab shows it)") \
                from None
        path, name = known.get(args.model), args.name or args.model
        if path is None:
            raise SystemExit(f"no GGUF model named '{args.model}': export a policy first (alignstudio export-model), "
                             f"or serve one of: {', '.join(known) or 'none yet'}")
    if not gguf_chat_template(path):
        raise SystemExit(f"{name} ({path}) carries no chat template: it is not a chat model, and an "
                         "OpenAI-style chat server could not write its prompts")
    if args.host not in LOOPBACK and not args.api_key:
        raise SystemExit(f"refusing to serve on {args.host} without --api-key KEY: anyone who can reach this "
                         "machine could use the model; clients then send 'Authorization: Bearer KEY'")
    if importlib.util.find_spec("sse_starlette") is None:
        raise SystemExit("serve-model needs llama.cpp's server parts: pip install -e '.[serve]'")
    port_free(args.host, args.port)
    print(f"serving {name} ({path}) at http://{args.host}:{args.port}/v1 as the model '{name}' "
          "(OpenAI-compatible: /v1/chat/completions, /v1/models); Ctrl-C stops it", flush=True)
    try:
        serve_openai(path, name, args.host, args.port, args.api_key or None)
    except KeyboardInterrupt:
        pass
    print("stopped", flush=True)
    return 0


def add_commands(sub) -> None:
    p = command(sub, "demo", cmd_demo, "the whole loop on the demo prompts, stage by stage", opens="runner")
    p.add_argument("--auto", action="store_true",
                   help=f"label with a plain, stated rule and run unattended; the rule: {HEURISTIC_RULE}")
    config_arguments(p, DemoSettings)

    command(sub, "prepare", cmd_prepare, "convert the default model and load the demo prompts", opens=None)

    p = command(sub, "serve-model", cmd_serve_model, "serve an exported model (or the default) as an OpenAI-compatible "
                "API with llama.cpp's server", opens=None,
                description="Any OpenAI client then talks to it: base URL http://HOST:PORT/v1, the model's name as "
                            "the model. Ctrl-C stops it.")
    p.add_argument("model", help="a GGUF model's name (alignstudio models), default, or a .gguf file (no store "
                   "needed: while the studio runs, give the file)")
    p.add_argument("--name", help="the model's name in the API (default: its name, or the file's)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="a key clients must send (required for a host other than loopback)")

    p = command(sub, "serve", cmd_serve, "serve the studio in the browser", opens=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", action="append", help="user:password, repeated for each member of a team; each user "
                   "labels under their own name (a login is required for a host other than loopback)")
    p.add_argument("--auth-file", help="a file of logins, user:password a line")
