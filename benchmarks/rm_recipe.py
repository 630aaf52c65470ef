"""The reward-model recipe on the default model: held-out accuracy (95% interval) and minutes for
each setting, trained through the studio's own commands so that every cell is a recorded run.

    python benchmarks/rm_recipe.py [--workspace DIR] [--cells "defaults" "lr 2e-4" ...] [--seeds 0 1]
    python benchmarks/rm_recipe.py --workspace DIR --table      # the table of what has run so far
    python benchmarks/rm_recipe.py --two-fold [--cells ...]     # each cell trained on each half, scored on the other

The workspace (made on first use) holds the 1,000 HH-RLHF pairs of ../shared/data split by prompt
with seed 0: 60% to train on ('hh-train'), 40% held out ('hh-heldout', no prompt in both). Each
cell is `alignstudio train rm` with the defaults changed as the cell says, checkpoints every 1,000
steps (so no evaluation during the run: its minutes are training and the final scoring of every
held-out pair). Results are appended to <workspace>/rm_recipe.jsonl as each run ends, so a long
session can stop and go on; a cell already there is not run again.

With `--two-fold` the sample is split in halves by prompt (seed 0: 'hh-half-a', 'hh-half-b') and
each cell is two runs, one trained on each half and scored on the other; the row pools their
held-out pairs (about 950 within 512 tokens: an interval of about +-0.03, against +-0.05 with the
380 of the 60/40 split) and its minutes are the two runs'. Those rows are kept apart from the
60/40 ones (their cell is named "... (two-fold)"), and each is set against the defaults' cell on
the same held-out pairs: the pairs only it ranks right, those only the defaults do, and McNemar's
exact p (two cells' intervals overlap long before their difference could be chance).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.stats import paired_sign_test, wilson_interval  # noqa: E402
from pipelines.reward import HELD_OUT_SCORES, ranked_right  # noqa: E402
from studio.cli import main as cli  # noqa: E402
from studio.workspace import Workspace  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz"
TRAIN, HELD_OUT = "hh-train", "hh-heldout"
HALVES = ("hh-half-a", "hh-half-b")
DEFAULTS_TWO_FOLD = "lr 2e-4 (two-fold)"  # `train rm`'s defaults since the two-fold table
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]

# Each cell: the settings it changes from `alignstudio train rm`'s defaults.
CELLS = {
    "defaults": {},
    "shuffled batches": {"group_by_length": False},
    "lr 5e-5": {"learning_rate": 5e-5},
    "lr 1e-4": {"learning_rate": 1e-4},  # the default until the two-fold table; 2e-4 since
    "lr 2e-4": {"learning_rate": 2e-4},
    "2 epochs": {"epochs": 2},
    "3 epochs": {"epochs": 3},
    "LoRA r 8": {"lora_r": 8, "lora_alpha": 16},
    "LoRA r 32": {"lora_r": 32, "lora_alpha": 64},
    "attention only": {"lora_targets": ATTENTION},
    "max 1024 tokens": {"max_length": 1024},
    "centre rewards 0.01": {"center_rewards": 0.01},
    "skip near-identical": {"skip_near_identical": True},
    # Against length bias (issue 30): a length head absorbs the labels' length preference, a penalty
    # keeps the reward uncorrelated with length (pipelines.reward.length_head_trainer).
    "length head 0.1": {"length_head": 0.1},
    "length head 0.3": {"length_head": 0.3},
    "length head 1": {"length_head": 1.0},
    "length head 4": {"length_head": 4.0},
    # ... or a training sample with as many "chosen is longer" pairs as "chosen is shorter" ones.
    "length balanced": {"length_balance": True},
}
# The pairs of a held-out set by which answer is the longer (card/... metrics of pipelines.reward).
LENGTH_GROUPS = ("chosen_longer", "chosen_shorter")


def flags(settings: dict) -> list[str]:
    argv = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            argv += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    return argv


def prepare(workspace: Path) -> None:
    ws = ["--workspace", str(workspace)]
    steps = {"hh": ["import", str(HH), "--dataset", "hh"],
             TRAIN: ["split", "--dataset", "hh", "--into", TRAIN, HELD_OUT, "--share", "0.6", "--seed", "0"],
             HALVES[0]: ["split", "--dataset", "hh", "--into", *HALVES, "--share", "0.5", "--seed", "0"]}
    for dataset, argv in steps.items():
        with Workspace.at(workspace).open_store() as store:
            ready = store.dataset_id(dataset) is not None
        if not ready and cli(argv + ws):
            raise SystemExit(f"alignstudio {argv[0]} failed")


def result(workspace: Path, run_id: int, cell: str, seed: int) -> dict:
    with Workspace.at(workspace).open_store() as store:
        run = store.query("SELECT status, message, epoch(finished_at - started_at) AS seconds FROM runs WHERE id = ?",
                          [run_id])[0]
        metrics = {r["name"]: r["value"] for r in store.query(
            "SELECT name, arg_max(value, step) AS value FROM run_metrics WHERE run_id = ? GROUP BY name", [run_id])}
    if run["status"] != "succeeded":
        raise SystemExit(f"run {run_id} ({cell}) {run['status']}: {run['message']}")
    return {"cell": cell, "seed": seed, "run": run_id, "minutes": run["seconds"] / 60,
            "train_minutes": metrics.get("train_runtime", float("nan")) / 60,
            "accuracy": metrics["heldout_accuracy"], "low": metrics["heldout_accuracy_low"],
            "high": metrics["heldout_accuracy_high"], "pairs": int(metrics["heldout_pairs"]),
            "accuracy_distinct": metrics.get("card/accuracy_distinct"),
            "distinct_pairs": metrics.get("card/distinct_pairs"),
            **{f"accuracy_{g}": metrics.get(f"card/accuracy_{g}") for g in LENGTH_GROUPS},
            **{f"{g}_pairs": metrics.get(f"card/{g}_pairs") for g in LENGTH_GROUPS},
            "rm_prefers_longer": metrics.get("card/rm_prefers_longer"),
            "labels_prefer_longer": metrics.get("card/labels_prefer_longer")}


def pooled(folds: list[dict], cell: str) -> dict:
    """One row from the runs of a two-fold cell: their held-out pairs pooled."""
    pairs = sum(f["pairs"] for f in folds)
    correct = sum(f["accuracy"] * f["pairs"] for f in folds)
    low, high = wilson_interval(correct, pairs)
    distinct = all(f["accuracy_distinct"] is not None for f in folds)  # pooled only when both folds have it
    distinct_pairs = sum(f["distinct_pairs"] for f in folds) if distinct else None
    return {"cell": cell, "seed": folds[0]["seed"], "run": "+".join(str(f["run"]) for f in folds),
            "minutes": sum(f["minutes"] for f in folds), "train_minutes": sum(f["train_minutes"] for f in folds),
            "accuracy": correct / pairs, "low": low, "high": high, "pairs": pairs,
            "accuracy_distinct": (sum(f["accuracy_distinct"] * f["distinct_pairs"] for f in folds) / distinct_pairs
                                  if distinct_pairs else None),
            "distinct_pairs": distinct_pairs, **pooled_length_groups(folds)}


def pooled_length_groups(folds: list[dict]) -> dict:
    """The length groups' accuracies and preferences of two folds, pooled (absent from older rows)."""
    if any(f.get("accuracy_chosen_longer") is None for f in folds):
        return {}
    pooled = {}
    for g in LENGTH_GROUPS:
        n = sum(f[f"{g}_pairs"] for f in folds)
        pooled[f"{g}_pairs"] = n
        pooled[f"accuracy_{g}"] = sum(f[f"accuracy_{g}"] * f[f"{g}_pairs"] for f in folds) / n if n else None
    unequal = [f["chosen_longer_pairs"] + f["chosen_shorter_pairs"] for f in folds]
    for name in ("rm_prefers_longer", "labels_prefer_longer"):
        pooled[name] = sum(f[name] * n for f, n in zip(folds, unequal)) / sum(unequal)
    return pooled


def length_table(rows: list[dict]) -> str:
    """Accuracy by which answer is the longer, with intervals, for the rows that have it."""
    lines = ["| setting | held-out accuracy (95% interval) | chosen is longer (pairs) | chosen is shorter (pairs) "
             "| prefers the longer answer (labels) | run |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("accuracy_chosen_longer") is None:
            continue
        groups = []
        for g in LENGTH_GROUPS:
            n = r[f"{g}_pairs"]
            low, high = wilson_interval(r[f"accuracy_{g}"] * n, n)
            groups.append(f"{r[f'accuracy_{g}']:.3f} ({low:.3f}-{high:.3f}; {n:.0f})")
        lines.append(f"| {r['cell']} | {r['accuracy']:.3f} ({r['low']:.3f}-{r['high']:.3f}) | {groups[0]} | "
                     f"{groups[1]} | {r['rm_prefers_longer']:.0%} ({r['labels_prefer_longer']:.0%}) | {r['run']} |")
    return "\n".join(lines)


def last_run(workspace: Path) -> int:
    with Workspace.at(workspace).open_store() as store:
        return store.scalar("SELECT max(id) FROM runs")


def right_per_pair(workspace: Path, row: dict) -> dict[str, float]:
    """Each held-out pair of a row's runs: 1 if the reward model ranks it as labelled, 0 if not, 0.5 a tie."""
    right = {}
    for run_id in str(row["run"]).split("+"):
        for r in pq.read_table(workspace / "runs" / run_id / HELD_OUT_SCORES,
                               columns=["pair_id", "reward_chosen", "reward_rejected"]).to_pylist():
            right[r["pair_id"]] = ranked_right(r)
    return right


def against_defaults(workspace: Path, row: dict, defaults: dict | None, theirs: dict[str, float]) -> str:
    """A two-fold cell against the defaults' cell (`theirs`: its right_per_pair) on the same held-out
    pairs: how many pairs only it ranks right, how many only the defaults, and McNemar's exact p
    (the intervals of two cells overlap long before their difference is chance: this test pairs them)."""
    if defaults is None or row is defaults or not row["cell"].endswith("(two-fold)"):
        return "-"
    mine = right_per_pair(workspace, row)
    shared = mine.keys() & theirs.keys()
    only_mine = sum(1 for k in shared if mine[k] == 1 and theirs[k] == 0)
    only_theirs = sum(1 for k in shared if mine[k] == 0 and theirs[k] == 1)
    return f"+{only_mine} / -{only_theirs}, p {paired_sign_test(only_mine, only_theirs):.2f}"


def table(rows: list[dict], workspace: Path) -> str:
    defaults = next((r for r in rows if r["cell"] == DEFAULTS_TWO_FOLD), None)
    theirs = right_per_pair(workspace, defaults) if defaults else {}
    lines = ["| setting | seed | held-out accuracy (95% interval) | pairs | on distinct pairs | minutes (training) "
             "| run | against the defaults, paired |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        distinct = ("-" if r["accuracy_distinct"] is None
                    else f"{r['accuracy_distinct']:.3f} ({r['distinct_pairs']:.0f})")
        lines.append(f"| {r['cell']} | {r['seed']} | {r['accuracy']:.3f} ({r['low']:.3f}-{r['high']:.3f}) | "
                     f"{r['pairs']} | {distinct} | {r['minutes']:.0f} ({r['train_minutes']:.0f}) | {r['run']} | "
                     f"{against_defaults(workspace, r, defaults, theirs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=str(ROOT / "benchmarks" / "rm-recipe-workspace"))
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--table", action="store_true", help="print the table of the runs so far and stop")
    parser.add_argument("--two-fold", action="store_true",
                        help="train each cell on each half of the sample, score on the other, pool the two")
    parser.add_argument("--adopt", nargs=2, metavar=("RUN", "CELL"),
                        help="record an earlier run of this workspace as a cell (seed 0)")
    args = parser.parse_args()
    workspace = Path(args.workspace)
    results = workspace / "rm_recipe.jsonl"
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    if args.adopt:
        row = result(workspace, int(args.adopt[0]), args.adopt[1], 0)
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        done.append(row)
    if not args.table and not args.adopt:
        prepare(workspace)
        for cell in args.cells:
            for seed in args.seeds:
                name = f"{cell} (two-fold)" if args.two_fold else cell
                if any(r["cell"] == name and r["seed"] == seed for r in done):
                    continue
                folds = []
                for train, held_out in ([HALVES, HALVES[::-1]] if args.two_fold else [(TRAIN, HELD_OUT)]):
                    print(f"== {name}, seed {seed}: {train} scored on {held_out}", flush=True)
                    cli(["train", "rm", "--workspace", str(workspace), "--dataset", train, "--eval-dataset", held_out,
                         "--save-every", "1000", "--seed", str(seed), *flags(CELLS[cell])])  # a failure: result() says
                    folds.append(result(workspace, last_run(workspace), name, seed))
                row = pooled(folds, name) if args.two_fold else folds[0]
                with open(results, "a") as f:
                    f.write(json.dumps(row) + "\n")
                done.append(row)
    print(table(done, workspace))
    print()
    print(length_table(done))


if __name__ == "__main__":
    main()
