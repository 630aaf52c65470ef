"""Data in and out: import, export, stats, datasets, and the datasets made from others (filter,
split)."""

from __future__ import annotations

import sys
from pathlib import Path

from store import EXPORT_FORMATS, FORMATS, ImportFailed, export_pairs, import_file
from store.filtering import filter_by_perplexity
from store.imports import DEFAULT_MAX_ROW_BYTES
from store.labelling import ORDERS, queue
from store.pairs import split_pairs
from store.queries import dataset_summaries
from studio.cli.common import command, positive_int, print_errors, print_json


def cmd_import(ctx, args) -> int:
    try:
        report = import_file(ctx.store, args.file, args.dataset, args.format, args.skip_bad, args.max_row_bytes)
    except KeyboardInterrupt:  # import_file has removed what it wrote
        print(f"{args.file}: import cancelled; nothing was written", file=sys.stderr)
        return 130
    except ImportFailed as e:
        print_errors(e.report.errors)
        print(e.report.summary(), file=sys.stderr)
        if args.json:
            print_json(e.report.to_dict())
        return 1
    print_errors(report.errors)
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.summary())
    return 0


def cmd_export(ctx, args) -> int:
    print(export_pairs(ctx.store, args.out, args.dataset, args.format, args.annotators).summary())
    return 0


def cmd_stats(ctx, args) -> int:
    stats = ctx.store.stats()
    if args.json:
        print_json(stats)
    else:
        for name, count in stats.items():
            print(f"{name:10} {count}")
    return 0


def cmd_datasets(ctx, args) -> int:
    rows = dataset_summaries(ctx.store)
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:24} {r['pairs']:7} pairs {r['prompts']:7} prompts")
    return 0


def cmd_filter(ctx, args) -> int:
    plan = filter_by_perplexity(ctx.store, args.dataset, args.model, args.into, args.max_ppl, args.keep_quantile,
                                args.per_prompt)
    print(plan.summary(args.into))
    return 0


def cmd_split(ctx, args) -> int:
    first, second = split_pairs(ctx.store, args.dataset, tuple(args.into), args.share, args.by, args.seed)
    print(f"'{args.dataset}' split by {args.by}: {first} pairs into '{args.into[0]}', {second} into '{args.into[1]}'"
          + (" (no prompt in both)" if args.by == "prompt" else ""))
    return 0


def cmd_label_queue(ctx, args) -> int:
    rows = queue(ctx.store, args.dataset, args.annotator, args.order, args.reward_model, args.limit)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no pair of '{args.dataset}' is left for {args.annotator}")
    for r in rows:
        gap = "" if r["reward_gap"] is None else f"  reward gap {r['reward_gap']:+.3f}"
        judge = f"  judge: {r['judge_verdict']}" if r["judge_verdict"] else ""
        against = "  (the reward model and the judge disagree)" if r["disagree"] else ""
        print(f"{r['pair_id']}  labels {r['labels']}{gap}{judge}{against}")
    return 0


def add_commands(sub) -> None:
    p = command(sub, "import", cmd_import, "import pairs or prompts from a file", json_output=True)
    p.add_argument("file", type=Path)
    p.add_argument("--dataset", help="dataset to add to (default: the file's name)")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--skip-bad", action="store_true", help="import the good rows, report the bad ones")
    p.add_argument("--max-row-bytes", type=positive_int, default=DEFAULT_MAX_ROW_BYTES,
                   help=f"a longer row is bad (default {DEFAULT_MAX_ROW_BYTES:,})")

    p = command(sub, "export", cmd_export, "export pairs for TRL (.jsonl or .parquet)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dataset")
    p.add_argument("--format", default="conversational", choices=EXPORT_FORMATS)
    p.add_argument("--annotators", default="all", choices=("all", "people"),
                   help="all: every pair's verdict, an AI judge's where nobody else judged it; people: leave out the "
                        "pairs only an AI judge labelled (default all)")

    command(sub, "stats", cmd_stats, "counts of what the workspace holds", json_output=True)
    command(sub, "datasets", cmd_datasets, "list datasets", json_output=True)

    p = command(sub, "label-queue", cmd_label_queue, "the next pairs an annotator would be served, in an order: the "
                "pairs that matter first (active labelling)", json_output=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--annotator", default="you", help="their labelled pairs are left out (default you)")
    p.add_argument("--order", default="shuffled", choices=ORDERS,
                   help="; ".join(f"{name}: {what}" for name, what in ORDERS.items()) + " (default shuffled; every "
                        "order serves the pairs with the fewest labels first)")
    p.add_argument("--reward-model", help="the reward model the uncertain and disagree orders read (alignstudio "
                   "models); it must have scored the dataset (alignstudio rewards)")
    p.add_argument("--limit", type=positive_int, default=20, help="pairs listed (default 20)")

    p = command(sub, "filter", cmd_filter, "keep what a model could plausibly have written")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", default="default", help="the model whose perplexities decide")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--max-ppl", type=float, help="keep responses with perplexity at most this")
    rule.add_argument("--keep-quantile", type=float, help="keep this fraction (0-1] with the lowest perplexity")
    p.add_argument("--per-prompt", action="store_true", help="apply the quantile within each prompt")
    p.add_argument("--into", required=True, help="name of the new dataset")

    p = command(sub, "split", cmd_split, "split a dataset's pairs into two new datasets (by prompt: they share no "
                "prompt)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--into", nargs=2, required=True, metavar=("FIRST", "SECOND"), help="names of the two new datasets")
    p.add_argument(
        "--share", type=float, default=0.5, help="share of the prompts (or pairs) in the first (default 0.5)"
    )
    p.add_argument("--by", choices=["prompt", "pair"], default="prompt",
                   help="prompt: all pairs of a prompt go together (default); pair: a random sample of pairs")
    p.add_argument("--seed", type=int, default=0, help="seed of the order (default 0)")
