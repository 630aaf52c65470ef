"""Runs and what they leave in the store: the run rows and their metrics, and the outputs of a
finished run (perplexities, generated responses, rewards, trained adapters, exported files,
compared answers). The job runner calls these with plain values (paths, rows, names); every write
of the studio's runs happens here, each inside one transaction.

The `record_*` functions take the cursor of the transaction that marks a run succeeded, so that a
run's outputs land together with its status or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from store.arena import add_compared_pair
from store.db import Store, fetch_one, is_empty_response, response_key

FINAL = ("succeeded", "failed", "cancelled")


def create_run(store: Store, kind: str, config: dict, runs_dir: Path, dataset: str | None = None) -> tuple[int, Path]:
    """A queued run of `kind` with its config, reading `dataset` (if from one); its folder is
    `runs_dir/<id>` (not created here)."""
    with store.transaction() as cur:
        run_id = fetch_one(cur, "INSERT INTO runs (kind, config, status, dataset) VALUES (?, ?, 'queued', ?) "
                           "RETURNING id", [kind, json.dumps(config), dataset])[0]
        folder = Path(runs_dir) / str(run_id)
        cur.execute("UPDATE runs SET folder = ? WHERE id = ?", [str(folder), run_id])
    return run_id, folder


def set_run_config(store: Store, run_id: int, config: dict) -> None:
    """A run's config as it will run here (an imported bundle's paths made this workspace's)."""
    with store.transaction() as cur:
        cur.execute("UPDATE runs SET config = ? WHERE id = ?", [json.dumps(config), run_id])


def set_run_message(store: Store, run_id: int, message: str) -> None:
    with store.transaction() as cur:
        cur.execute("UPDATE runs SET message = ? WHERE id = ?", [message, run_id])


def mark_running(store: Store, run_id: int, pid: int | None) -> None:
    with store.transaction() as cur:
        cur.execute("UPDATE runs SET status = 'running', pid = ?, message = NULL, finished_at = NULL, "
                    "started_at = coalesce(started_at, current_timestamp) WHERE id = ?", [pid, run_id])


def mark_waiting(store: Store, run_id: int, message: str) -> None:
    """A run that waits for its turn (one GPU job at a time): queued, no process yet."""
    with store.transaction() as cur:
        cur.execute("UPDATE runs SET status = 'queued', pid = NULL, message = ?, finished_at = NULL WHERE id = ?",
                    [message, run_id])


def record_events(store: Store, run_id: int, events: list[dict], offset: int, status: str, message: str | None,
                  record_outputs: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> None:
    """One transaction: the events' metrics (and progress, ETA), the run's new status, message and
    events offset, and, for a run that succeeded, its outputs (`record_outputs(cur)`)."""
    with store.transaction() as cur:
        for e in events:
            step = e.get("step")
            values = [(name, value) for name, value in (e.get("metrics") or {}).items()
                      if isinstance(value, (int, float)) and step is not None]
            if step is not None and e.get("total"):
                values += [(name, value) for name, value in (("progress", step / e["total"]), ("eta_s", e.get("eta_s")))
                           if value is not None]
            for name, value in values:
                cur.execute("INSERT INTO run_metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                            [run_id, step, name, float(value)])
        if record_outputs is not None:
            record_outputs(cur)
        cur.execute("UPDATE runs SET events_offset = ?, status = ?, message = ?, finished_at = "
                    "CASE WHEN ? IN ('succeeded', 'failed', 'cancelled') THEN current_timestamp END "
                    "WHERE id = ?", [offset, status, message, status, run_id])


# --- a finished run's outputs (inside its final transaction) ---------------------------------------

def record_perplexities(cur, run_id: int, model: str, engine: str, parquet: Path) -> None:
    """Each scored response's perplexity under `model` (a response the run skipped has none)."""
    cur.execute("""
        INSERT OR REPLACE INTO perplexities (response_id, model, ppl, mean_logprob, n_tokens, engine, run_id)
        SELECT response_id, ?, ppl, mean_logprob, n_tokens, ?, ? FROM read_parquet(?) WHERE ppl IS NOT NULL""",
                [model, engine, run_id, str(parquet)])


def record_generated(cur, model: str, settings: dict, parquet: Path) -> None:
    """Sampled responses (prompt_id, sample, response, finish) by `model`, with their sampling
    settings; a response stored already (same prompt, same text) is kept once."""
    batch = {}
    for r in pq.read_table(parquet).to_pylist():
        messages = json.loads(r["response"])
        batch[response_key(r["prompt_id"], messages)] = {
            "prompt_id": r["prompt_id"], "messages": r["response"], "is_empty": is_empty_response(messages),
            "generation": json.dumps({**settings, "sample": r["sample"], "finish": r["finish"]})}
    if not batch:
        return
    cur.register("generated", pa.Table.from_pylist([{"id": k, **v} for k, v in batch.items()]))
    try:
        cur.execute("""INSERT INTO responses (id, prompt_id, messages, is_empty, model, generation, source)
                       SELECT id, prompt_id, messages, is_empty, ?, generation, 'generated' FROM generated
                       WHERE id NOT IN (SELECT id FROM responses)""", [model])
    finally:
        cur.unregister("generated")


def record_rewards(cur, run_id: int, adapter: str, parquet: Path) -> None:
    """Each response's reward under the reward model saved at `adapter` (stored under its name), and
    an ensemble's spread."""
    import pyarrow.parquet as pq

    name = fetch_one(cur, "SELECT name FROM models WHERE path = ? AND purpose = 'reward'", [adapter])[0]
    spread = "spread" if "spread" in pq.read_schema(parquet).names else "NULL"
    cur.execute(f"""INSERT OR REPLACE INTO rewards (response_id, model, reward, run_id, spread)
                    SELECT response_id, ?, reward, ?, {spread} FROM read_parquet(?)""", [name, run_id, str(parquet)])


def record_adapter(cur, run_id: int, name: str, path: Path, base: str, purpose: str) -> None:
    """A trained adapter: a 'reward' model or a 'policy'."""
    cur.execute("INSERT INTO models (name, kind, path, run_id, base, purpose) VALUES (?, 'adapter', ?, ?, ?, ?)",
                [name, str(path), run_id, base, purpose])


def record_export(cur, run_id: int, name: str, adapter: str | None, base: str, report: dict) -> None:
    """An export's merged model and GGUF files (from its report), each with its parent (the
    exported adapter) and run; a name already taken gets the run id added."""
    parent = fetch_one(cur, "SELECT id, base FROM models WHERE path = ?", [adapter]) if adapter else None
    parent_id, base = (parent[0], parent[1]) if parent else (None, base)

    def register(model_name: str, kind: str, path: str) -> None:
        if fetch_one(cur, "SELECT 1 FROM models WHERE name = ?", [model_name]):
            model_name = f"{model_name}-run{run_id}"
        cur.execute("INSERT INTO models (name, kind, path, parent_id, run_id, base, purpose) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'policy')", [model_name, kind, path, parent_id, run_id, base])

    if report["merged"]:
        register(f"{name}-merged", "merged", report["model_dir"])
    for f in report["files"]:
        register(f"{name}-{f['quant']}", "gguf", f["path"])


def record_compared(cur, run_id: int, into: str, models: tuple[str, str], generation: dict, parquet: Path) -> None:
    """Two models' answers to the same prompts, as unlabelled pairs of the dataset `into`."""
    recipe = {"source": "compare", "models": list(models), "run": run_id, **generation}
    for r in pq.read_table(parquet).to_pylist():
        # The same answer twice is kept: it is a tie in the reward win rate. It is never exported
        # (no import would take chosen == rejected back) and the arena refuses a vote on it.
        add_compared_pair(cur, into, json.loads(r["prompt"]),
                          (models[0], [{"role": "assistant", "content": r["answer_a"]}]),
                          (models[1], [{"role": "assistant", "content": r["answer_b"]}]),
                          source="compare", recipe=recipe, generation={**generation, "engine": "llama.cpp"})


def record_judge_labels(cur, annotator: str, parquet: Path) -> None:
    """An LLM judge's verdicts as labels of `annotator` (judge:<file>), replacing its earlier labels
    of the same pairs; pairs it gave no verdict on get no label. People's labels are never touched."""
    rows = [r for r in pq.read_table(parquet, columns=["pair_id", "verdict"]).to_pylist() if r["verdict"]]
    for r in rows:
        cur.execute("DELETE FROM labels WHERE pair_id = ? AND annotator = ?", [r["pair_id"], annotator])
        cur.execute("INSERT INTO labels (pair_id, annotator, verdict) VALUES (?, ?, ?)",
                    [r["pair_id"], annotator, r["verdict"]])
