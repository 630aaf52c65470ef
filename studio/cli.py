"""`alignstudio`: everything the studio does, scriptable."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from common.errors import StudioError
from pipelines.compare import CompareConfig
from pipelines.evaluate import EvaluateConfig
from pipelines.generate import GenerateConfig
from pipelines.judges import HEURISTIC_RULE, RULES
from pipelines.perplexity import PerplexityConfig
from pipelines.reward_scoring import RewardScoringConfig
from pipelines.settings import default_of, help_of, split_list, user_fields, value_type
from store import EXPORT_FORMATS, FORMATS, ImportFailed, export_pairs, import_file
from store.imports import DEFAULT_MAX_ROW_BYTES
from studio import jobs
from studio.demo import DemoSettings
from studio.methods import METHODS, PAIR_POLICIES
from studio.runner import Runner
from studio.workspace import ASSETS, Workspace

SHOWN_ERRORS = 50
DEMO_DATASET = "demo-prompts"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def _print_errors(errors) -> None:
    for error in errors[:SHOWN_ERRORS]:
        print(error, file=sys.stderr)
    if len(errors) > SHOWN_ERRORS:
        print(f"... and {len(errors) - SHOWN_ERRORS} more bad rows", file=sys.stderr)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {value}")
    return value


def cmd_import(ws: Workspace, args) -> int:
    with ws.open_store() as store:
        try:
            report = import_file(store, args.file, args.dataset, args.format, args.skip_bad, args.max_row_bytes)
        except KeyboardInterrupt:  # import_file has removed what it wrote
            print(f"{args.file}: import cancelled; nothing was written", file=sys.stderr)
            return 130
        except ImportFailed as e:
            _print_errors(e.report.errors)
            print(e.report.summary(), file=sys.stderr)
            if args.json:
                _print_json(e.report.to_dict())
            return 1
    _print_errors(report.errors)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.summary())
    return 0


def cmd_export(ws: Workspace, args) -> int:
    with ws.open_store() as store:
        report = export_pairs(store, args.out, args.dataset, args.format, args.annotators)
    print(report.summary())
    return 0


def cmd_stats(ws: Workspace, args) -> int:
    with ws.open_store() as store:
        stats = store.stats()
    if args.json:
        _print_json(stats)
    else:
        for name, count in stats.items():
            print(f"{name:10} {count}")
    return 0


def cmd_datasets(ws: Workspace, args) -> int:
    from store.queries import dataset_summaries

    with ws.open_store() as store:
        rows = dataset_summaries(store)
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:24} {r['pairs']:7} pairs {r['prompts']:7} prompts")
    return 0


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


def _follow_run(runner, run_id: int) -> dict:
    """Follow a run with progress lines; the run as it ended."""
    _follow(runner, run_id)
    return runner.get(run_id)


def _follow(runner, run_id: int) -> int:
    """Print progress until the run ends; Ctrl-C cancels it (checkpointed, resumable)."""
    from store.queries import latest_metrics

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


def run_job(ws: Workspace, args, start, what, after=None) -> int:
    """Open the workspace, start a job (`start(runner)` -> run id), say what it does, and follow it
    unless --no-wait; `after(runner, run_id, status)` may add to a followed run's report."""
    with ws.open_store() as store:
        runner = Runner(store, ws)
        runner.recover()
        run_id = start(runner)
        print(f"run {run_id} started: {what(runner, run_id) if callable(what) else what} "
              f"(folder {ws.runs_dir / str(run_id)})", flush=True)
        if args.no_wait:
            return 0
        status = _follow(runner, run_id)
        return after(runner, run_id, status) if after else status


def cmd_score(ws: Workspace, args) -> int:
    settings = given_settings(args, PerplexityConfig)
    return run_job(ws, args, lambda runner: jobs.start_perplexity(runner, args.dataset, **settings),
                   f"perplexity of '{args.dataset}' under '{settings.get('model', 'default')}'")


def cmd_generate(ws: Workspace, args) -> int:
    settings = given_settings(args, GenerateConfig)
    return run_job(ws, args, lambda runner: jobs.start_generation(runner, args.dataset, **settings),
                   lambda runner, run_id: "{n} samples per prompt of '{dataset}' from '{model}'".format(
                       dataset=args.dataset, **json.loads(runner.get(run_id)["config"])))


def cmd_train(ws: Workspace, args) -> int:
    from pipelines.memory import free_gpu_gb
    from pipelines.training import parameter_count, suggested_settings

    method = METHODS[args.method]
    # Options given win; the others default to what suits the base's size (and the GPU's memory).
    settings = suggested_settings(method.config(), parameter_count(args.base or "default", ws.models_dir),
                                  free_gpu_gb())
    settings.update(given_settings(args, method.config))
    if getattr(args, "judge_split", False):
        return _judge_split(ws, args, settings)
    if method.online:
        data = dict(prompts=args.prompts, reward_run=args.reward_run, judge_run=args.judge_run)
        what = f"{method.name} on the prompts of '{args.prompts}' against the reward model of run {args.reward_run}"
    else:
        data = dict(dataset=args.dataset, eval_dataset=args.eval_dataset)
        what = f"{method.name} on '{args.dataset}'"
    estimate = jobs.memory_plan(ws.models_dir, method.name, settings)
    if estimate is not None:
        print(estimate.describe(), flush=True)
    warning = jobs.export_warning(settings.get("base", "default"), ws.models_dir)
    if warning and method.makes == "policy":
        print(f"note: {warning}", flush=True)
    return run_job(ws, args, lambda runner: jobs.start_training(runner, method.name, **data, force=args.force,
                                                                 **settings),
                   f"{what} from '{settings.get('base', 'default')}'")


def _judge_split(ws: Workspace, args, settings: dict) -> int:
    """Two reward models on the two prompt-disjoint halves of a dataset: proxy and judge."""
    if args.eval_dataset:
        raise jobs.RunError("--judge-split holds out a share of each half; leave out --eval-dataset")
    with ws.open_store() as store:
        runner = Runner(store, ws)
        runner.recover()
        proxy, judge = jobs.start_judge_split(runner, args.dataset, **settings)
        print(f"run {proxy} started: the proxy reward model, on one half of the prompts of '{args.dataset}' (for PPO, "
              f"GRPO and RLOO to optimise)\nrun {judge} started: the judge reward model, on the other half (to evaluate "
              f"policies by: alignstudio evaluate --judge-run {judge})", flush=True)
        if args.no_wait:
            return 0
        return max(_follow(runner, proxy), _follow(runner, judge))


def cmd_rm_report(ws: Workspace, args) -> int:
    with ws.open_store() as store:
        lines = jobs.rm_report(Runner(store, ws), args.run)
    print(f"reward model of run {args.run}:")
    for line in lines:
        print(f"  {line}")
    return 0


def cmd_judge_report(ws: Workspace, args) -> int:
    with ws.open_store() as store:
        lines = jobs.judge_report(Runner(store, ws), args.dataset, llm_judge=args.llm_judge, rule=args.rule,
                                  reward_run=args.reward_run, limit=args.limit, guideline=_guideline(args),
                                  say=lambda line: print(line, flush=True))
    for line in lines:
        print(f"  {line}" if line is not lines[0] else line)
    return 0


def _guideline(args) -> str:
    """The judge's prompt: --guideline FILE's text, or empty for the studio's."""
    if not getattr(args, "guideline", None):
        return ""
    try:
        return Path(args.guideline).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise jobs.RunError(f"{args.guideline}: cannot read the judge's prompt ({e})") from None


def cmd_label_with_judge(ws: Workspace, args) -> int:
    return run_job(ws, args, lambda runner: jobs.start_judge_labels(runner, args.dataset, args.judge,
                                                                    _guideline(args), args.limit),
                   f"labels of '{args.dataset}' by {jobs.judge_annotator(args.judge)}")


def cmd_rewards(ws: Workspace, args) -> int:
    settings = given_settings(args, RewardScoringConfig)
    return run_job(ws, args, lambda runner: jobs.start_reward_scoring(runner, args.dataset, args.reward_model,
                                                                      **settings),
                   f"rewards of '{args.dataset}' by '{args.reward_model}'")


def cmd_evaluate(ws: Workspace, args) -> int:
    settings = given_settings(args, EvaluateConfig)

    def people(runner, run_id, status):
        line = jobs.people_verdict(runner.store, args.policy_run) if status == 0 else None
        if line:
            print(line)
        return status

    return run_job(ws, args, lambda runner: jobs.start_evaluation(runner, args.policy_run, args.prompts, args.judge_run,
                                                                  limit=args.limit, proxy_run=args.proxy_run,
                                                                  **settings),
                   f"policy of run {args.policy_run} against its base on '{args.prompts}'", after=people)


def cmd_export_model(ws: Workspace, args) -> int:
    from pipelines.export import QUANTS, REPORT

    quants = split_list(",".join(args.quant or QUANTS))

    def report(runner, run_id, status):
        if status != 0:
            return status
        exported = json.loads((ws.runs_dir / str(run_id) / REPORT).read_text())
        names = {r["path"]: r["name"] for r in runner.store.query("SELECT name, path FROM models WHERE run_id = ?",
                                                                  [run_id])}
        for f in exported["files"]:
            print(f"{names.get(f['path'], '?'):24} {f['bytes'] / 1e6:7.1f} MB  next token "
                  f"{'agrees' if f['argmax_agrees'] else 'DIFFERS'}, logits within {f['max_abs_diff']:.4f}, "
                  f"top-10 overlap {f['top10_overlap']}/10  {f['path']}")
            print(f"{'':24} Ollama: ollama create {names.get(f['path'], 'model')} -f {f['modelfile']}")
        return status

    return run_job(ws, args, lambda runner: jobs.start_export(runner, run_id=args.run, model=args.model, quants=quants),
                   f"export of {f'run {args.run}' if args.run is not None else args.model} to {', '.join(quants)} GGUF",
                   after=report)


def cmd_compare(ws: Workspace, args) -> int:
    from store.arena import reward_win_rate

    sampling = given_settings(args, CompareConfig)

    def score_both(runner, run_id, status):
        into = json.loads(runner.get(run_id)["config"])["into"]
        reward_model = args.reward_model or runner.store.scalar(
            "SELECT name FROM models WHERE purpose = 'reward' ORDER BY id DESC LIMIT 1")
        if status != 0 or reward_model in (None, "none"):
            return status
        print(f"scoring both answers with '{reward_model}'")
        status = _follow(runner, jobs.start_reward_scoring(runner, into, reward_model))
        result = reward_win_rate(runner.store, into, reward_model)
        if status == 0 and result:
            print(f"{args.a} wins {result['win_rate']:.0%} of {result['pairs']} prompts against {args.b} by "
                  f"'{reward_model}' (ties count half; mean reward gap {result['reward_gap']:+.3f})")
        return status

    return run_job(ws, args, lambda runner: jobs.start_comparison(runner, args.a, args.b, args.dataset, args.into,
                                                                  args.limit, **sampling),
                   lambda runner, run_id: f"'{args.a}' and '{args.b}' answer the prompts of '{args.dataset}' "
                                          f"(pairs go to '{json.loads(runner.get(run_id)['config'])['into']}')",
                   after=score_both)


def cmd_demo(ws: Workspace, args) -> int:
    from studio.demo import REPORT, SCALE_UP, DemoStop, run_demo
    settings = DemoSettings(**given_settings(args, DemoSettings))
    started = time.monotonic()

    def show(stage):
        print(f"== {stage.name} ({stage.seconds:.0f} s): {stage.summary}", flush=True)

    with ws.open_store() as store:
        runner = Runner(store, ws)
        runner.recover()
        try:
            stages = run_demo(store, runner, settings, ws, auto=args.auto, follow=lambda r: _follow_run(runner, r),
                              on_stage=show)
        except DemoStop as e:
            print(str(e))
            return 0
    print(f"\nThe demo took {(time.monotonic() - started) / 60:.1f} minutes ({len(stages)} stages; report in "
          f"{ws.root / REPORT}). See the models side by side: alignstudio serve, then the Compare tab.\n{SCALE_UP}")
    return 0


def cmd_filter(ws: Workspace, args) -> int:
    from store.filtering import filter_by_perplexity

    with ws.open_store() as store:
        plan = filter_by_perplexity(store, args.dataset, args.model, args.into, args.max_ppl,
                                    args.keep_quantile, args.per_prompt)
    print(plan.summary(args.into))
    return 0


def cmd_split(ws: Workspace, args) -> int:
    from store.pairs import split_pairs

    with ws.open_store() as store:
        first, second = split_pairs(store, args.dataset, tuple(args.into), args.share, args.by, args.seed)
    print(f"'{args.dataset}' split by {args.by}: {first} pairs into '{args.into[0]}', {second} into '{args.into[1]}'"
          + (" (no prompt in both)" if args.by == "prompt" else ""))
    return 0


def cmd_models(ws: Workspace, args) -> int:
    with ws.open_store() as store:
        rows = store.query("SELECT name, kind, purpose, base, run_id, path, created_at FROM models ORDER BY id")
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:20} {r['purpose'] or r['kind']:8} base {r['base'] or '-':24} {r['path']}")
    return 0


def cmd_runs(ws: Workspace, args) -> int:
    from store.queries import run_summaries
    with ws.open_store() as store:
        Runner(store, ws).recover()  # brings the status of runs left running up to date
        rows = run_summaries(store)
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(f"{r['id']:5} {r['kind']:12} {r['status']:10} {r['message'] or ''}")
    return 0


def cmd_cancel(ws: Workspace, args) -> int:
    with ws.open_store() as store:
        runner = Runner(store, ws)
        runner.recover()
        runner.cancel(args.run)
        return _follow(runner, args.run) if args.wait else 0


def cmd_resume(ws: Workspace, args) -> int:
    with ws.open_store() as store:
        runner = Runner(store, ws)
        runner.recover()
        runner.resume(args.run)
        print(f"run {args.run} resumed")
        return 0 if args.no_wait else _follow(runner, args.run)


def cmd_prepare(ws: Workspace, args) -> int:
    """Convert the default model once and load the demo prompts: what `make run` does first."""
    from pipelines.models import DEFAULT_MODEL, resolve_model

    path = resolve_model(DEFAULT_MODEL, ws.models_dir)
    print(f"default model ready: {path}")
    with ws.open_store() as store:
        if store.dataset_id(DEMO_DATASET) is None:
            print(import_file(store, ASSETS / "demo_prompts.jsonl", DEMO_DATASET, internal=True).summary())
        print(f"workspace ready: {ws.root}")
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


def cmd_serve(ws: Workspace, args) -> int:
    from studio.app import serve

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
    serve(ws, args.host, args.port, auth)
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", help="workspace folder (default ./studio-data or $ALIGNSTUDIO_WORKSPACE)")
    common.add_argument("--models-dir", help="folder for converted and trained models (default <workspace>/models)")
    parser = argparse.ArgumentParser(prog="alignstudio", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import", parents=[common], help="import pairs or prompts from a file")
    p.add_argument("file", type=Path)
    p.add_argument("--dataset", help="dataset to add to (default: the file's name)")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--skip-bad", action="store_true", help="import the good rows, report the bad ones")
    p.add_argument("--max-row-bytes", type=positive_int, default=DEFAULT_MAX_ROW_BYTES,
                   help=f"a longer row is bad (default {DEFAULT_MAX_ROW_BYTES:,})")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", parents=[common], help="export pairs for TRL (.jsonl or .parquet)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dataset")
    p.add_argument("--format", default="conversational", choices=EXPORT_FORMATS)
    p.add_argument("--annotators", default="all", choices=("all", "people"),
                   help="all: every pair's verdict, an AI judge's where nobody else judged it; people: leave out the "
                        "pairs only an AI judge labelled (default all)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("stats", parents=[common], help="counts of what the workspace holds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("datasets", parents=[common], help="list datasets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("score", parents=[common], help="perplexity of a dataset's responses under a model (a job)")
    p.add_argument("--dataset", required=True)
    config_arguments(p, PerplexityConfig)
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("generate", parents=[common], help="sample N candidate responses per prompt (a job)")
    p.add_argument("--dataset", required=True)
    config_arguments(p, GenerateConfig)
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("filter", parents=[common], help="keep what a model could plausibly have written")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", default="default", help="the model whose perplexities decide")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--max-ppl", type=float, help="keep responses with perplexity at most this")
    rule.add_argument("--keep-quantile", type=float, help="keep this fraction (0-1] with the lowest perplexity")
    p.add_argument("--per-prompt", action="store_true", help="apply the quantile within each prompt")
    p.add_argument("--into", required=True, help="name of the new dataset")
    p.set_defaults(func=cmd_filter)

    p = sub.add_parser("split", parents=[common], help="split a dataset's pairs into two new datasets (by prompt: "
                       "they share no prompt)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--into", nargs=2, required=True, metavar=("FIRST", "SECOND"), help="names of the two new datasets")
    p.add_argument("--share", type=float, default=0.5, help="share of the prompts (or pairs) in the first (default 0.5)")
    p.add_argument("--by", choices=["prompt", "pair"], default="prompt",
                   help="prompt: all pairs of a prompt go together (default); pair: a random sample of pairs")
    p.add_argument("--seed", type=int, default=0, help="seed of the order (default 0)")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("train", help="train a reward model or a policy (a job): "
                       + ", ".join(f"{m.name} ({m.label})" for m in METHODS.values()),
                       description="Train with one of the studio's methods; `alignstudio train METHOD --help` lists "
                                   "that method's settings.")
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    for method in METHODS.values():
        m = methods.add_parser(method.name, parents=[common], help=method.summary,
                               description=f"{method.label}: {method.summary}.")
        if method.online:
            m.add_argument("--prompts", required=True, help="the dataset whose prompts the policy answers")
            m.add_argument("--reward-run", type=int, required=True, help="the run that trained the reward model")
            m.add_argument("--judge-run", type=int, help="a reward model that shares no prompt with it, to judge the "
                           "over-optimisation watch (alignstudio train rm --judge-split makes both)")
        else:
            m.add_argument("--dataset", required=True, help="pairs with a preference (from the file or from labels)")
            m.add_argument("--eval-dataset", help="pairs to evaluate on (default: a held-out share of --dataset)")
        if method.judge_split:
            m.add_argument("--judge-split", action="store_true",
                           help="train two reward models on the two halves of the dataset's prompts: a proxy (for "
                                "PPO, GRPO, RLOO to optimise) and a judge that shares no prompt with it (to evaluate "
                                "policies by)")
        config_arguments(m, method.config)
        m.add_argument("--force", action="store_true",
                       help="start even when the memory plan says the run will not fit the GPU")
        m.add_argument("--no-wait", action="store_true", help="start the job and return")
        m.set_defaults(func=cmd_train)

    p = sub.add_parser("rewards", parents=[common], help="score a dataset's responses with a reward model (a job)")
    p.add_argument("--reward-model", required=True, help="its name, e.g. rm-run3 (alignstudio models)")
    p.add_argument("--dataset", required=True)
    config_arguments(p, RewardScoringConfig)
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.set_defaults(func=cmd_rewards)

    p = sub.add_parser("evaluate", parents=[common], help="policy vs its base, by its proxy and independent judges (a job)",
                       description="Both answer the same prompts. The policy's proxy (the reward model it was trained "
                                   "against, if any) is always reported, labelled as such; give at least one "
                                   "independent judge: --judge-run (a reward model trained on other prompts) or --rule.")
    p.add_argument("--policy-run", type=int, required=True, help="the run that trained the policy")
    p.add_argument("--judge-run", type=int, help="a reward-model run trained on prompts that share nothing with the "
                   "policy's or its proxy's training pairs (alignstudio train rm --judge-split makes one)")
    p.add_argument("--proxy-run", type=int, help=f"for a policy trained on pairs ({PAIR_POLICIES}): a reward-model run "
                   "trained on the same pairs, reported as its proxy beside the judges, to show the gap between them")
    p.add_argument("--prompts", required=True, help="a dataset whose prompts both answer (held out from training)")
    p.add_argument("--limit", type=int, default=jobs.EVAL_PROMPTS,
                   help=f"at most this many prompts (default: {jobs.EVAL_PROMPTS})")
    config_arguments(p, EvaluateConfig)
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("rm-report", parents=[common], help="a reward model's report card: accuracy with its interval, "
                       "length bias, calibration, agreement with each annotator")
    p.add_argument("run", type=int, help="the run that trained the reward model")
    p.set_defaults(func=cmd_rm_report)

    p = sub.add_parser("judge-report", parents=[common], help="judges (an LLM judge, a rule, a reward model) side "
                       "by side against people's labels: agreement and Cohen's kappa with intervals, length preference")
    p.add_argument("--dataset", required=True, help="a dataset whose pairs people labelled (or came with verdicts)")
    p.add_argument("--llm-judge", help="a GGUF chat model (its name in `alignstudio models`, or a .gguf file)")
    p.add_argument("--rule", choices=sorted(RULES), help="a named rule")
    p.add_argument("--reward-run", type=int, help="a reward-model run (judged on the pairs it was not trained on)")
    p.add_argument("--guideline", help="a text file: the LLM judge's prompt, with {prompt}, {answer_a}, {answer_b}")
    p.add_argument("--limit", type=int, default=200, help="labelled pairs judged at most (default 200)")
    p.set_defaults(func=cmd_judge_report)

    p = sub.add_parser("label-with-judge", parents=[common], help="label a dataset's pairs with an LLM judge, as the "
                       "annotator judge:<file>; people's labels and the file's verdicts outrank them (a job)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--judge", required=True, help="a GGUF chat model (its name in `alignstudio models`, or a .gguf "
                   "file)")
    p.add_argument("--guideline", help="a text file: the judge's prompt, with {prompt}, {answer_a}, {answer_b}")
    p.add_argument("--limit", type=int, help="pairs labelled at most (in id order)")
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.set_defaults(func=cmd_label_with_judge)

    p = sub.add_parser("export-model", parents=[common], help="merge a policy and export it to GGUF (a job)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=int, help="the run that trained the policy")
    source.add_argument("--model", help="a policy's name (alignstudio models), default, or a model folder")
    p.add_argument("--quant", action="append", default=None,
                   help="f16, q8_0, q4_k_m; repeat or separate with commas (default: all three)")
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.set_defaults(func=cmd_export_model)

    p = sub.add_parser("compare", parents=[common], help="two GGUF models answer a dataset's prompts (a job)")
    p.add_argument("--a", required=True, help="a GGUF model's name (default, or an exported one)")
    p.add_argument("--b", required=True)
    p.add_argument("--dataset", required=True, help="the prompts to answer")
    p.add_argument("--into", help="the new dataset of pairs (default <dataset>-<a>-vs-<b>)")
    p.add_argument("--limit", type=int, help="at most this many prompts")
    p.add_argument("--reward-model", help="score both answers with it (default: the latest; 'none' to skip)")
    config_arguments(p, CompareConfig)
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", parents=[common], help="the whole loop on the demo prompts, stage by stage")
    p.add_argument("--auto", action="store_true",
                   help=f"label with a plain, stated rule and run unattended; the rule: {HEURISTIC_RULE}")
    config_arguments(p, DemoSettings)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", parents=[common], help="list trained and exported models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("runs", parents=[common], help="list runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("cancel", parents=[common], help="cancel a run (it checkpoints first)")
    p.add_argument("run", type=int)
    p.add_argument("--wait", action="store_true")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("resume", parents=[common], help="resume a cancelled or failed run")
    p.add_argument("run", type=int)
    p.add_argument("--no-wait", action="store_true")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("prepare", parents=[common], help="convert the default model and load the demo prompts")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("serve", parents=[common], help="serve the studio in the browser")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", action="append", help="user:password, repeated for each member of a team; each user "
                   "labels under their own name (a login is required for a host other than loopback)")
    p.add_argument("--auth-file", help="a file of logins, user:password a line")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ws = Workspace.at(args.workspace, args.models_dir)
    try:
        return args.func(ws, args)
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


if __name__ == "__main__":
    sys.exit(main())
