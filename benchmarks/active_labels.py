"""Active labelling against random labelling, on the shared HH sample with simulated labels.

    python benchmarks/active_labels.py [--workspace DIR] [--sizes 100 200 400] [--seed-size 50]
    python benchmarks/active_labels.py --workspace DIR --table      # the table of what has run so far

The 1,000 HH-RLHF pairs of ../shared/data are split in halves by prompt (seed 0): a pool to label
('al-pool') and a held-out half ('al-heldout', no prompt in both). A simulated annotator labels pool
pairs with the file's own verdicts, and a reward model (`alignstudio train rm`, today's defaults)
is trained on the pairs labelled so far and scored on the whole held-out half.

- random: the first 100, 200, 400 pairs of one seeded shuffle of the pool (each set inside the next);
- uncertain: the first `--seed-size` pairs of that same shuffle, then, in rounds, a reward model
  trained on the pairs labelled so far scores the pool (`alignstudio rewards`), and the studio's own
  label queue in the 'uncertain' order (store.labelling.queue: the smallest reward gap first, among
  pairs nobody has labelled) picks the pairs that bring the labels to the next size; the simulated
  annotator labels them (as the annotator 'simulated', through the store).

Each row: held-out accuracy with its Wilson 95% interval, and, for the uncertain arm, McNemar's exact
p against the random arm's model of the same size on the same held-out pairs. Results are appended
to <workspace>/active_labels.jsonl as each run ends; a row already there is not run again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.rm_recipe import HH, last_run, result, right_per_pair  # noqa: E402
from common.stats import paired_sign_test  # noqa: E402
from store.labelling import add_rule_labels, queue  # noqa: E402
from store.pairs import copy_pairs, seeded_order  # noqa: E402
from studio.cli import main as cli  # noqa: E402
from studio.workspace import Workspace  # noqa: E402

POOL, HELD_OUT = "al-pool", "al-heldout"
ANNOTATOR = "simulated"


def prepare(workspace: Path) -> None:
    ws = ["--workspace", str(workspace)]
    with Workspace.at(workspace).open_store() as store:
        ready = store.dataset_id(POOL) is not None
    if ready:
        return
    for argv in (["import", str(HH), "--dataset", "hh"],
                 ["split", "--dataset", "hh", "--into", POOL, HELD_OUT, "--share", "0.5", "--seed", "0"]):
        if cli(argv + ws):
            raise SystemExit(f"alignstudio {argv[0]} failed")


def pool_order(workspace: Path, seed: int) -> list[str]:
    with Workspace.at(workspace).open_store() as store:
        ids = [r["pair_id"] for r in store.query(
            "SELECT pair_id FROM dataset_pairs WHERE dataset_id = ? ORDER BY pair_id", [store.dataset_id(POOL)])]
    return seeded_order(ids, seed)


def train_on(workspace: Path, pair_ids: list[str], name: str, seed: int) -> int:
    """A reward model trained on these pool pairs (a dataset of their own), scored on the held-out half."""
    with Workspace.at(workspace).open_store() as store:
        if store.dataset_id(name) is None:
            copy_pairs(store, POOL, name, pair_ids)
    print(f"== {name}: {len(pair_ids)} labelled pairs", flush=True)
    cli(["train", "rm", "--workspace", str(workspace), "--dataset", name, "--eval-dataset", HELD_OUT,
         "--save-every", "1000", "--seed", str(seed)])  # a failure: result() says
    return last_run(workspace)


def label_most_uncertain(workspace: Path, run_id: int, wanted: int) -> list[str]:
    """Score the pool with run `run_id`'s reward model, then label the `wanted` pairs the label
    queue serves first in the 'uncertain' order, with the file's verdicts. Returns their ids."""
    model = f"rm-run{run_id}"
    cli(["rewards", "--workspace", str(workspace), "--dataset", POOL, "--reward-model", model])
    with Workspace.at(workspace).open_store() as store:
        picked = queue(store, POOL, ANNOTATOR, "uncertain", model, limit=wanted)
        verdicts = {r["id"]: r["source_verdict"] for r in store.query(
            "SELECT id, source_verdict FROM pairs WHERE id IN (SELECT unnest(?::VARCHAR[]))",
            [[r["pair_id"] for r in picked]])}
        add_rule_labels(store, ANNOTATOR, [(r["pair_id"], verdicts[r["pair_id"]]) for r in picked])
    gaps = sorted(abs(r["reward_gap"]) for r in picked)
    print(f"   picked {len(picked)} pairs by {model}: reward gaps {gaps[0]:.3f}-{gaps[-1]:.3f}", flush=True)
    return [r["pair_id"] for r in picked]


def labelled(workspace: Path) -> list[str]:
    with Workspace.at(workspace).open_store() as store:
        return [r["pair_id"] for r in store.query("SELECT pair_id FROM labels WHERE annotator = ? ORDER BY id",
                                                  [ANNOTATOR])]


def record(path: Path, row: dict, done: list[dict]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    done.append(row)


def run(workspace: Path, sizes: list[int], seed_size: int, seed: int, done: list[dict], results: Path) -> None:
    prepare(workspace)
    order = pool_order(workspace, seed)
    have = {(r["arm"], r["labels"]) for r in done}
    for size in sizes:
        if ("random", size) not in have:
            run_id = train_on(workspace, order[:size], f"al-random-{size}", seed)
            record(results, {"arm": "random", "labels": size, **result(workspace, run_id, f"random {size}", seed)},
                   done)
    if not labelled(workspace):
        with Workspace.at(workspace).open_store() as store:
            verdicts = {r["id"]: r["source_verdict"] for r in store.query(
                "SELECT id, source_verdict FROM pairs WHERE id IN (SELECT unnest(?::VARCHAR[]))",
                [order[:seed_size]])}
            add_rule_labels(store, ANNOTATOR, [(p, verdicts[p]) for p in order[:seed_size]])
    previous = next((r["run"] for r in done if r["arm"] == "uncertain" and r["labels"] == seed_size), None)
    if previous is None:
        previous = train_on(workspace, labelled(workspace), f"al-uncertain-{seed_size}", seed)
        record(results, {"arm": "uncertain", "labels": seed_size,
                         **result(workspace, previous, f"uncertain {seed_size} (the first {seed_size} at random)",
                                  seed)}, done)
    for size in sizes:
        if size <= seed_size:
            continue
        row = next((r for r in done if r["arm"] == "uncertain" and r["labels"] == size), None)
        if row is not None:
            previous = row["run"]
            continue
        have_now = labelled(workspace)
        if len(have_now) < size:
            label_most_uncertain(workspace, previous, size - len(have_now))
        previous = train_on(workspace, labelled(workspace)[:size], f"al-uncertain-{size}", seed)
        record(results, {"arm": "uncertain", "labels": size,
                         **result(workspace, previous, f"uncertain {size}", seed)}, done)


def table(done: list[dict], workspace: Path) -> str:
    lines = ["| labels | random: held-out accuracy (95% interval) | uncertain first: held-out accuracy (95% interval) "
             "| uncertain against random, paired | runs |", "|---|---|---|---|---|"]
    for size in sorted({r["labels"] for r in done}):
        by_arm = {r["arm"]: r for r in done if r["labels"] == size}
        cells = [f"{by_arm[a]['accuracy']:.3f} ({by_arm[a]['low']:.3f}-{by_arm[a]['high']:.3f}; "
                 f"{by_arm[a]['pairs']} pairs)" if a in by_arm else "-" for a in ("random", "uncertain")]
        paired = "-"
        if len(by_arm) == 2:
            mine, theirs = right_per_pair(workspace, by_arm["uncertain"]), right_per_pair(workspace, by_arm["random"])
            shared = mine.keys() & theirs.keys()
            only_mine = sum(1 for k in shared if mine[k] == 1 and theirs[k] == 0)
            only_theirs = sum(1 for k in shared if mine[k] == 0 and theirs[k] == 1)
            paired = f"+{only_mine} / -{only_theirs}, p {paired_sign_test(only_mine, only_theirs):.2f}"
        runs = ", ".join(f"{a} {by_arm[a]['run']}" for a in ("random", "uncertain") if a in by_arm)
        lines.append(f"| {size} | {cells[0]} | {cells[1]} | {paired} | {runs} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=str(ROOT / "benchmarks" / "active-labels-workspace"))
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 200, 400])
    parser.add_argument("--seed-size", type=int, default=50, help="labels chosen at random before the first round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table", action="store_true", help="print the table of the runs so far and stop")
    args = parser.parse_args()
    workspace = Path(args.workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    results = workspace / "active_labels.jsonl"
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    if not args.table:
        run(workspace, sorted(args.sizes), args.seed_size, args.seed, done, results)
    print(table(done, workspace))


if __name__ == "__main__":
    main()
