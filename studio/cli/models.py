"""Models: list them, export a policy to GGUF (export-model), and set two GGUF models against each
other on a dataset's prompts (compare)."""

from __future__ import annotations

import json

from pipelines.compare import CompareConfig
from pipelines.export import QUANTS, REPORT
from pipelines.settings import split_list
from store.arena import reward_win_rate
from store.models import all_models, names_by_path, reward_models
from studio import service
from studio.cli.common import command, config_arguments, follow, follow_job, given_settings, print_json


def cmd_models(ctx, args) -> int:
    rows = all_models(ctx.store)
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:20} {r['purpose'] or r['kind']:8} base {r['base'] or '-':24} {r['path']}")
    return 0


def cmd_export_model(ctx, args) -> int:
    quants = split_list(",".join(args.quant or QUANTS))
    run_id = service.start_export(ctx.runner, run_id=args.run, model=args.model, quants=quants)

    def report(run_id, status):
        if status != 0:
            return status
        exported = json.loads((ctx.workspace.runs_dir / str(run_id) / REPORT).read_text())
        names = names_by_path(ctx.store, run_id)
        for f in exported["files"]:
            print(f"{names.get(f['path'], '?'):24} {f['bytes'] / 1e6:7.1f} MB  next token "
                  f"{'agrees' if f['argmax_agrees'] else 'DIFFERS'}, logits within {f['max_abs_diff']:.4f}, "
                  f"top-10 overlap {f['top10_overlap']}/10  {f['path']}")
            print(f"{'':24} Ollama: ollama create {names.get(f['path'], 'model')} -f {f['modelfile']}")
        return status

    source = f"run {args.run}" if args.run is not None else args.model
    return follow_job(ctx, args, run_id, f"export of {source} to {', '.join(quants)} GGUF", after=report)


def cmd_compare(ctx, args) -> int:
    run_id = service.start_comparison(ctx.runner, args.a, args.b, args.dataset, args.into, args.limit,
                                      **given_settings(args, CompareConfig))
    into = json.loads(ctx.runner.get(run_id)["config"])["into"]

    def score_both(run_id, status):
        known = reward_models(ctx.store)
        reward_model = args.reward_model or (known[0]["name"] if known else None)
        if status != 0 or reward_model in (None, "none"):
            return status
        print(f"scoring both answers with '{reward_model}'")
        status = follow(ctx.runner, service.start_reward_scoring(ctx.runner, into, reward_model))
        result = reward_win_rate(ctx.store, into, reward_model)
        if status == 0 and result:
            print(f"{args.a} wins {result['win_rate']:.0%} of {result['pairs']} prompts against {args.b} by "
                  f"'{reward_model}' (ties count half; mean reward gap {result['reward_gap']:+.3f})")
        return status

    return follow_job(ctx, args, run_id, f"'{args.a}' and '{args.b}' answer the prompts of '{args.dataset}' (pairs "
                      f"go to '{into}')", after=score_both)


def add_commands(sub) -> None:
    command(sub, "models", cmd_models, "list trained and exported models", json_output=True)

    p = command(sub, "export-model", cmd_export_model, "merge a policy and export it to GGUF (a job)", job=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=int, help="the run that trained the policy")
    source.add_argument("--model", help="a policy's name (alignstudio models), default, or a model folder")
    p.add_argument("--quant", action="append", default=None,
                   help="f16, q8_0, q4_k_m; repeat or separate with commas (default: all three)")

    p = command(sub, "compare", cmd_compare, "two GGUF models answer a dataset's prompts (a job)", job=True)
    p.add_argument("--a", required=True, help="a GGUF model's name (default, or an exported one)")
    p.add_argument("--b", required=True)
    p.add_argument("--dataset", required=True, help="the prompts to answer")
    p.add_argument("--into", help="the new dataset of pairs (default <dataset>-<a>-vs-<b>)")
    p.add_argument("--limit", type=int, help="at most this many prompts")
    p.add_argument("--reward-model", help="score both answers with it (default: the latest; 'none' to skip)")
    config_arguments(p, CompareConfig)
