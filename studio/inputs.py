"""What jobs read from the store, as the rows of their input files: a dataset's prompts, its
labelled pairs as a training method reads them, and the prompts a finished training run read."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from store import Store
from store.db import prompt_key
from store.exports import ExportError, demonstration_records, preference_records, unpaired_records
from store.pairs import seeded_order
from store.queries import dataset_prompts
from studio.kinds import RunError
from studio.runner import Runner

EVAL_INPUTS = "eval_inputs.parquet"


def dataset_id(store: Store, name: str) -> int:
    found = store.dataset_id(name)
    if found is None:
        raise RunError(f"no dataset named '{name}'")
    return found


def prompts_of(store: Store, dataset: str, limit: int | None = None) -> list[dict]:
    rows = dataset_prompts(store, dataset_id(store, dataset), limit)
    if not rows:
        raise RunError(f"dataset '{dataset}' has no prompts")
    return rows


def training_records(store: Store, dataset: str, reads: str) -> list[dict]:
    """A dataset's labelled pairs as a method that learns from them reads them (`Method.reads`):
    "pairs" (prompt, chosen, rejected) or "verdicts" (prompt, completion, label: one row per answer),
    with pair_id and the message lists as JSON text."""
    read, what = (unpaired_records, "labelled answers") if reads == "verdicts" else \
        (preference_records, "pairs with a preference")
    try:
        records, left_out = read(store, dataset)
    except ExportError as e:
        raise RunError(str(e)) from None
    if not records:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(left_out.items())) or "it holds no pairs"
        raise RunError(f"dataset '{dataset}' has no {what} to train on ({why})")
    return [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in records]


def sft_records(store: Store, dataset: str) -> list[dict]:
    """What SFT learns from in a dataset: the preferred answers of its labelled pairs (rows as
    `training_records` gives them), else its demonstrations (prompt, completion)."""
    try:
        pairs, left_out = preference_records(store, dataset)
    except ExportError as e:
        raise RunError(str(e)) from None
    if pairs:
        return [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in pairs]
    shown = demonstration_records(store, dataset)
    if shown:
        return [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in shown]
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(left_out.items())) or "no pairs"
    raise RunError(f"dataset '{dataset}' has neither pairs with a preference ({why}) nor demonstrations (prompts "
                   "imported with their answers) to fine-tune on")


def split_by_prompt(records: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Two halves of a dataset's records that share no prompt: the prompts ordered by a seeded hash
    and cut in half (every record of a prompt goes with it)."""
    by_prompt: dict[str, list[dict]] = {}
    for r in records:
        by_prompt.setdefault(prompt_key(json.loads(r["prompt"])), []).append(r)
    order = seeded_order(by_prompt, seed)
    half = len(order) // 2
    return ([r for k in order[:half] for r in by_prompt[k]], [r for k in order[half:] for r in by_prompt[k]])


def trained_prompts(runner: Runner, run_id: int) -> set[str]:
    """The ids of every prompt a training run read (its pairs or prompts, held-out share included,
    and its eval dataset), from the input files in its folder."""
    folder = runner.workspace.runs_dir / str(run_id)
    config = json.loads((folder / "config.json").read_text())
    keys = set()
    for name in (config.get("inputs"), config.get("eval_inputs")):
        if name and (folder / name).is_file():
            table = pq.read_table(folder / name)
            if "prompt_id" in table.column_names:
                keys.update(table.column("prompt_id").to_pylist())
            else:
                keys.update(prompt_key(json.loads(p)) for p in table.column("prompt").to_pylist())
    return keys
