"""Read-only queries: what the studio shows (dataset and run summaries) and what its jobs read."""

from __future__ import annotations

import json

from store.db import Store


def dataset_summaries(store: Store) -> list[dict]:
    return store.query("""
        SELECT d.name,
               (SELECT count(*) FROM dataset_pairs dp WHERE dp.dataset_id = d.id) AS pairs,
               (SELECT count(*) FROM dataset_prompts dq WHERE dq.dataset_id = d.id) AS prompts,
               d.recipe, d.created_at
        FROM datasets d ORDER BY d.id""")


def dataset_names(store: Store, with_pairs: bool = False) -> list[str]:
    """Dataset names in creation order; with_pairs: only those holding pairs (to label or compare)."""
    return [d["name"] for d in dataset_summaries(store) if d["pairs"] or not with_pairs]


def run_summaries(store: Store, limit: int | None = None) -> list[dict]:
    """Each run with its kind, status and final metrics (the last value of each metric)."""
    rows = store.query(f"""
        SELECT id, kind, status, message, folder, created_at, started_at, finished_at, config
        FROM runs ORDER BY id DESC {'LIMIT ' + str(int(limit)) if limit else ''}""")
    finals = store.query("""
        SELECT run_id, name, arg_max(value, rowid) AS value
        FROM run_metrics GROUP BY run_id, name""")
    by_run: dict[int, dict] = {}
    for m in finals:
        by_run.setdefault(m["run_id"], {})[m["name"]] = m["value"]
    for r in rows:
        r["config"] = json.loads(r["config"])
        r["metrics"] = by_run.get(r["id"], {})
    return rows


def latest_metrics(store: Store, run_id: int) -> dict[str, float]:
    """The last value logged of each metric of one run (progress, eta_s, loss, ...)."""
    return {m["name"]: m["value"] for m in store.query(
        "SELECT name, arg_max(value, rowid) AS value FROM run_metrics WHERE run_id = ? GROUP BY name", [run_id])}


def dataset_prompts(store: Store, dataset_id: int, limit: int | None = None) -> list[dict]:
    """A dataset's prompts (prompt_id, prompt as JSON text) in the order they were stored."""
    return store.query("""
        SELECT id AS prompt_id, messages::VARCHAR AS prompt FROM prompts
        WHERE id IN (SELECT prompt_id FROM dataset_prompts WHERE dataset_id = ?) ORDER BY rowid LIMIT ?""",
                       [dataset_id, limit if limit is not None else 2**62])


# The ids of a dataset's responses (parameter $d): both sides of its pairs and its prompts' candidates.
DATASET_RESPONSES = """
    SELECT first_id AS id FROM pairs WHERE id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = $d)
    UNION SELECT second_id FROM pairs WHERE id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = $d)
    UNION SELECT id FROM responses WHERE prompt_id IN (SELECT prompt_id FROM dataset_prompts WHERE dataset_id = $d)"""


def unscored_responses(store: Store, dataset_id: int, scores: str, model: str) -> list[dict]:
    """A dataset's responses (response_id, prompt, response as JSON text) without a score of
    `model` in the table `scores` ('perplexities' or 'rewards')."""
    if scores not in ("perplexities", "rewards"):
        raise ValueError(f"no score table {scores!r}")
    return store.query(f"""
        WITH members AS ({DATASET_RESPONSES})
        SELECT r.id AS response_id, pr.messages::VARCHAR AS prompt, r.messages::VARCHAR AS response
        FROM members JOIN responses r USING (id) JOIN prompts pr ON pr.id = r.prompt_id
        WHERE r.id NOT IN (SELECT response_id FROM {scores} WHERE model = $m)
        ORDER BY r.id""", {"d": dataset_id, "m": model})


def pair_verdicts(store: Store, pair_ids: list[str]) -> dict[str, dict[str, str]]:
    """pair_id -> {annotator: 'first' or 'second'} for the given pairs: every label with a side
    (ties, both-bad and skips left out), and the verdict the pair was imported with as annotator
    'source'."""
    if not pair_ids:
        return {}
    rows = store.query("""
        SELECT pair_id, annotator, verdict FROM labels WHERE verdict IN ('first', 'second') AND pair_id IN (SELECT unnest($ids))
        UNION ALL
        SELECT id, 'source', source_verdict FROM pairs WHERE source_verdict IN ('first', 'second') AND id IN (SELECT unnest($ids))""",
                       {"ids": list(pair_ids)})
    found: dict[str, dict[str, str]] = {}
    for r in rows:
        found.setdefault(r["pair_id"], {})[r["annotator"]] = r["verdict"]
    return found


def dataset_pair_texts(store: Store, dataset_id: int, limit: int | None = None) -> list[dict]:
    """id, prompt_id, prompt, first and second (message lists) of a dataset's pairs, in id order."""
    rows = store.query("""
        SELECT p.id, pr.id AS prompt_id, pr.messages AS prompt, a.messages AS first, b.messages AS second
        FROM dataset_pairs dp JOIN pairs p ON p.id = dp.pair_id JOIN prompts pr ON pr.id = p.prompt_id
        JOIN responses a ON a.id = p.first_id JOIN responses b ON b.id = p.second_id
        WHERE dp.dataset_id = ? ORDER BY p.id""" + (f" LIMIT {int(limit)}" if limit else ""), [dataset_id])
    for r in rows:
        for key in ("prompt", "first", "second"):
            r[key] = json.loads(r[key])
    return rows
