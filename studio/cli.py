"""`alignstudio`: everything the studio does, scriptable."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from store import EXPORT_FORMATS, FORMATS, ExportError, ImportFailed, StoreError, export_pairs, import_file
from store.imports import DEFAULT_MAX_ROW_BYTES
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


def cmd_import(ws: Workspace, args) -> int:
    with ws.open_store() as store:
        try:
            report = import_file(store, args.file, args.dataset, args.format, args.skip_bad, args.max_row_bytes)
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
        report = export_pairs(store, args.out, args.dataset, args.format)
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


def cmd_score(ws: Workspace, args) -> int:
    from studio.runner import Runner

    with ws.open_store() as store:
        runner = Runner(store, ws)
        run_id = runner.start_perplexity(args.dataset, args.model, args.batch_size, args.max_length,
                                         args.device, args.dtype)
        print(f"run {run_id} started: perplexity of '{args.dataset}' under '{args.model}' "
              f"(folder {ws.runs_dir / str(run_id)})")
        if args.no_wait:
            return 0
        return _follow(runner, run_id)


def cmd_generate(ws: Workspace, args) -> int:
    from studio.runner import Runner

    with ws.open_store() as store:
        runner = Runner(store, ws)
        run_id = runner.start_generation(args.dataset, args.model, args.n, args.temperature, args.top_p,
                                         args.max_new_tokens, args.seed, args.engine, args.device, args.dtype)
        print(f"run {run_id} started: {args.n} samples per prompt of '{args.dataset}' from '{args.model}' "
              f"(folder {ws.runs_dir / str(run_id)})")
        return 0 if args.no_wait else _follow(runner, run_id)


TRAIN_KINDS = {"rm": "reward", "dpo": "dpo", "ppo": "ppo", "grpo": "grpo", "rloo": "rloo"}
ONLINE = ("ppo", "grpo", "rloo")
# CLI option -> config field, for the settings every training run shares.
TRAIN_OPTIONS = ("base", "learning_rate", "batch_size", "grad_accum", "max_length", "epochs", "max_steps", "seed",
                 "lora_r", "lora_alpha", "lora_dropout", "save_every", "device", "dtype", "load_in_4bit",
                 "gradient_checkpointing", "eval_share")
PPO_OPTIONS = ("kl_coef", "max_new_tokens", "ppo_epochs", "mini_batch_size", "temperature", "missing_eos_penalty")
GROUP_OPTIONS = ("beta", "max_new_tokens", "num_generations", "num_iterations", "temperature")  # grpo, rloo


def cmd_train(ws: Workspace, args) -> int:
    from studio.runner import Runner

    from pipelines.training import parameter_count, suggested_settings
    from studio.runner import TRAIN_CONFIGS

    kind = TRAIN_KINDS[args.kind]
    # Options given win; the others default to what suits the base's size.
    settings = suggested_settings(TRAIN_CONFIGS[kind](), parameter_count(args.base, ws.models_dir))
    settings.update({name: getattr(args, name) for name in TRAIN_OPTIONS if getattr(args, name) is not None})
    if kind == "dpo":
        settings.update(loss_type=args.loss_type, precompute_ref_log_probs=args.precompute_ref)
        if args.beta is not None:
            settings["beta"] = args.beta
    if kind in ONLINE:
        if not args.prompts or args.reward_run is None:
            raise SystemExit(f"train {kind} needs --prompts DATASET and --reward-run ID")
        settings.pop("eval_share", None)
        options = PPO_OPTIONS if kind == "ppo" else GROUP_OPTIONS
        settings.update({name: getattr(args, name) for name in options if getattr(args, name) is not None})
    elif not args.dataset:
        raise SystemExit(f"train {args.kind} needs --dataset")
    with ws.open_store() as store:
        runner = Runner(store, ws)
        if kind in ONLINE:
            run_id = runner.start_online(kind, args.prompts, args.reward_run, **settings)
            what = f"prompts of '{args.prompts}' against the reward model of run {args.reward_run}"
        else:
            run_id = runner.start_training(kind, args.dataset, args.eval_dataset, **settings)
            what = f"'{args.dataset}'"
        print(f"run {run_id} started: {args.kind} on {what} from '{args.base}' (folder {ws.runs_dir / str(run_id)})")
        return 0 if args.no_wait else _follow(runner, run_id)


def cmd_rewards(ws: Workspace, args) -> int:
    from studio.runner import Runner

    with ws.open_store() as store:
        runner = Runner(store, ws)
        run_id = runner.start_reward_scoring(args.dataset, args.reward_model, args.batch_size, args.device, args.dtype)
        print(f"run {run_id} started: rewards of '{args.dataset}' by '{args.reward_model}'")
        return 0 if args.no_wait else _follow(runner, run_id)


def cmd_evaluate(ws: Workspace, args) -> int:
    from studio.runner import Runner

    settings = {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "seed") if getattr(args, k) is not None}
    with ws.open_store() as store:
        runner = Runner(store, ws)
        run_id = runner.start_evaluation(args.policy_run, args.reward_run, args.prompts, args.limit, **settings)
        print(f"run {run_id} started: policy of run {args.policy_run} against its base on '{args.prompts}'")
        return 0 if args.no_wait else _follow(runner, run_id)


def cmd_export_model(ws: Workspace, args) -> int:
    from pipelines.export import QUANTS, REPORT
    from studio.runner import Runner

    quants = [q.strip() for q in ",".join(args.quant or QUANTS).split(",") if q.strip()]
    with ws.open_store() as store:
        runner = Runner(store, ws)
        run_id = runner.start_export(run_id=args.run, model=args.model, quants=quants)
        print(f"run {run_id} started: export of {f'run {args.run}' if args.run is not None else args.model} "
              f"to {', '.join(quants)} GGUF")
        if args.no_wait:
            return 0
        status = _follow(runner, run_id)
        if status == 0:
            report = json.loads((ws.runs_dir / str(run_id) / REPORT).read_text())
            names = {r["path"]: r["name"] for r in store.query("SELECT name, path FROM models WHERE run_id = ?", [run_id])}
            for f in report["files"]:
                print(f"{names.get(f['path'], '?'):24} {f['bytes'] / 1e6:7.1f} MB  next token "
                      f"{'agrees' if f['argmax_agrees'] else 'DIFFERS'}, logits within {f['max_abs_diff']:.4f}, "
                      f"top-10 overlap {f['top10_overlap']}/10  {f['path']}")
                print(f"{'':24} Ollama: ollama create {names.get(f['path'], 'model')} -f {f['modelfile']}")
        return status


def cmd_compare(ws: Workspace, args) -> int:
    from store.arena import reward_win_rate
    from studio.runner import Runner

    sampling = {k: getattr(args, k) for k in ("temperature", "top_p", "max_tokens", "seed") if getattr(args, k) is not None}
    with ws.open_store() as store:
        runner = Runner(store, ws)
        run_id = runner.start_comparison(args.a, args.b, args.dataset, args.into, args.limit, **sampling)
        into = json.loads(runner.get(run_id)["config"])["into"]
        print(f"run {run_id} started: '{args.a}' and '{args.b}' answer the prompts of '{args.dataset}' "
              f"(pairs go to '{into}')")
        if args.no_wait:
            return 0
        status = _follow(runner, run_id)
        reward_model = args.reward_model or store.scalar(
            "SELECT name FROM models WHERE purpose = 'reward' ORDER BY id DESC LIMIT 1")
        if status != 0 or reward_model in (None, "none"):
            return status
        print(f"scoring both answers with '{reward_model}'")
        status = _follow(runner, runner.start_reward_scoring(into, reward_model))
        result = reward_win_rate(store, into, reward_model)
        if status == 0 and result:
            print(f"{args.a} wins {result['win_rate']:.0%} of {result['pairs']} prompts against {args.b} by "
                  f"'{reward_model}' (ties count half; mean reward gap {result['reward_gap']:+.3f})")
        return status


def cmd_demo(ws: Workspace, args) -> int:
    from studio.demo import REPORT, SCALE_UP, DemoSettings, DemoStop, run_demo
    from studio.runner import Runner

    settings = DemoSettings(**{k: v for k, v in vars(args).items() if k in DemoSettings.__dataclass_fields__
                               and v is not None})
    started = time.monotonic()

    def show(stage):
        print(f"== {stage.name} ({stage.seconds:.0f} s): {stage.summary}", flush=True)

    with ws.open_store() as store:
        runner = Runner(store, ws)
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
    from studio.runner import Runner

    with ws.open_store() as store:
        Runner(store, ws)  # brings the status of runs left running up to date
        rows = run_summaries(store)
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(f"{r['id']:5} {r['kind']:12} {r['status']:10} {r['message'] or ''}")
    return 0


def cmd_cancel(ws: Workspace, args) -> int:
    from studio.runner import Runner

    with ws.open_store() as store:
        runner = Runner(store, ws)
        runner.cancel(args.run)
        return _follow(runner, args.run) if args.wait else 0


def cmd_resume(ws: Workspace, args) -> int:
    from studio.runner import Runner

    with ws.open_store() as store:
        runner = Runner(store, ws)
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
            print(import_file(store, ASSETS / "demo_prompts.jsonl", DEMO_DATASET).summary())
        print(f"workspace ready: {ws.root}")
    return 0


def cmd_serve(ws: Workspace, args) -> int:
    from studio.app import serve

    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            raise SystemExit("--auth must be user:password")
        auth = (user, password)
    if args.host not in LOOPBACK and auth is None:
        raise SystemExit(f"refusing to serve on {args.host} without --auth user:password: anyone who "
                         "can reach this machine could read and change the workspace")
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
    p.add_argument("--max-row-bytes", type=int, default=DEFAULT_MAX_ROW_BYTES)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", parents=[common], help="export pairs for TRL (.jsonl or .parquet)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dataset")
    p.add_argument("--format", default="conversational", choices=EXPORT_FORMATS)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("stats", parents=[common], help="counts of what the workspace holds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("datasets", parents=[common], help="list datasets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("score", parents=[common], help="perplexity of a dataset's responses under a model (a job)")
    p.add_argument("--model", default="default")
    p.add_argument("--dataset", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("generate", parents=[common], help="sample N candidate responses per prompt (a job)")
    p.add_argument("--model", default="default")
    p.add_argument("--dataset", required=True)
    p.add_argument("-n", type=int, default=4, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", default="auto", choices=("auto", "llama.cpp", "transformers"),
                   help="auto: llama.cpp for a GGUF model (the default is one), else transformers")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
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

    p = sub.add_parser("train", parents=[common], help="train a reward model (rm) or a policy with DPO or PPO (a job)")
    p.add_argument("kind", choices=list(TRAIN_KINDS))
    p.add_argument("--base", default="default", help="default, a model folder or a hub id")
    p.add_argument("--dataset", help="rm, dpo: pairs with a preference (from the file or from labels)")
    p.add_argument("--prompts", help="ppo, grpo, rloo: the dataset whose prompts the policy answers")
    p.add_argument("--reward-run", type=int, help="ppo, grpo, rloo: the run that trained the reward model")
    p.add_argument("--num-generations", type=int, help="grpo, rloo: answers per prompt (4)")
    p.add_argument("--num-iterations", type=int,
                   help="grpo, rloo: optimizer steps on each batch of answers before sampling new ones (4)")
    p.add_argument("--kl-coef", type=float, help="ppo: weight of the per-token KL penalty to the base (0.15)")
    p.add_argument("--max-new-tokens", type=int, help="ppo, grpo, rloo: answer length limit (64)")
    p.add_argument("--ppo-epochs", type=int, help="ppo: passes over each rollout batch (2)")
    p.add_argument("--mini-batch-size", type=int, help="ppo: sequences per optimizer step (4)")
    p.add_argument("--temperature", type=float, help="ppo, grpo, rloo: sampling temperature (1.0)")
    p.add_argument("--missing-eos-penalty", type=float,
                   help="ppo: subtracted when an answer never ends, in standard deviations of the batch's rewards (1.0)")
    p.add_argument("--eval-dataset", help="pairs to evaluate on (default: a held-out share of --dataset)")
    p.add_argument("--eval-share", type=float, help="held-out share when there is no --eval-dataset (0.1)")
    p.add_argument("--learning-rate", "--lr", type=float, dest="learning_rate")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--max-length", type=int, help="tokens; longer pairs are left out (rm) or cut (dpo)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
    p.add_argument("--seed", type=int)
    p.add_argument("--lora-r", type=int)
    p.add_argument("--lora-alpha", type=int)
    p.add_argument("--lora-dropout", type=float)
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (and on cancel)")
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--load-in-4bit", action="store_true", default=None, help="QLoRA: 4-bit base (CUDA)")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None)
    p.add_argument("--beta", type=float, help="dpo (0.1), grpo and rloo (0.04): strength of the pull to the base")
    p.add_argument("--loss-type", default="sigmoid", choices=("sigmoid", "ipo", "hinge", "sigmoid_norm"),
                   help="dpo: sigmoid (DPO), ipo, hinge, sigmoid_norm (length-normalised)")
    p.add_argument("--precompute-ref", action="store_true", help="dpo: reference log-probs once, before training")
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("rewards", parents=[common], help="score a dataset's responses with a reward model (a job)")
    p.add_argument("--reward-model", required=True, help="its name, e.g. reward-run3 (alignstudio models)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.set_defaults(func=cmd_rewards)

    p = sub.add_parser("evaluate", parents=[common], help="policy vs its base, judged by a reward model (a job)")
    p.add_argument("--policy-run", type=int, required=True, help="the run that trained the policy")
    p.add_argument("--reward-run", type=int, required=True, help="the run that trained the reward model")
    p.add_argument("--prompts", required=True, help="a dataset whose prompts both answer (held out from training)")
    p.add_argument("--limit", type=int, default=64, help="at most this many prompts")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.set_defaults(func=cmd_evaluate)

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
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", parents=[common], help="the whole loop on the demo prompts, stage by stage")
    p.add_argument("--auto", action="store_true", help="label with the documented heuristic and run unattended")
    p.add_argument("--base", help="the model to align (default)")
    p.add_argument("--prompts", type=int, help="demo prompts that get candidates (40)")
    p.add_argument("--heldout", type=int, help="other prompts for evaluation and comparison (16)")
    p.add_argument("--candidates", type=int, help="answers sampled per prompt (4)")
    p.add_argument("--max-new-tokens", type=int, help="answer length limit (96)")
    p.add_argument("--rm-steps", type=int, help="reward model steps (30)")
    p.add_argument("--dpo-steps", type=int, help="DPO steps (30)")
    p.add_argument("--batch-size", type=int, help="(4)")
    p.add_argument("--eval-prompts", type=int, help="held-out prompts in the evaluation (16)")
    p.add_argument("--compare-prompts", type=int, help="held-out prompts in the comparison (8)")
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
    p.add_argument("--auth", help="user:password (required for a host other than loopback)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipelines.models import ModelError
    from store.filtering import FilterError
    from studio.runner import RunError

    args = build_parser().parse_args(argv)
    ws = Workspace.at(args.workspace, args.models_dir)
    try:
        return args.func(ws, args)
    except (StoreError, ExportError, RunError, ModelError, FilterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`alignstudio runs | head`): stop quietly, as other commands do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
