"""Where a dataset stands in the studio's loop (prompts -> candidates -> perplexity -> filtered pairs
-> labels -> reward model -> policy -> verdict -> export -> votes): each stage's counts, read from
the store, for the Home tab's map. The runs a dataset fed are those that recorded it (`runs.dataset`)."""

from __future__ import annotations

from store.db import Store
from store.models import gguf_files
from store.queries import DATASET_RESPONSES, benchmarks_of, evaluations_of, latest_metrics

POLICY_PURPOSE = "policy"


def filtered_children(store: Store, dataset: str) -> list[dict]:
    """The datasets the perplexity filter made from `dataset` (name, pairs), oldest first."""
    return store.query("""
        SELECT d.name, (SELECT count(*) FROM dataset_pairs dp WHERE dp.dataset_id = d.id) AS pairs
        FROM datasets d WHERE json_extract_string(d.recipe, '$.source') = ?
          AND json_extract_string(d.recipe, '$.method') = 'perplexity filter' ORDER BY d.id""", [dataset])


def data_counts(store: Store, dataset_id: int) -> dict:
    """Prompts, answers (and those generated here), answers scored by perplexity, pairs, and the
    pairs with a preference: labelled first or second by anyone, or by the file they came from."""
    row = store.query(f"""
        WITH members AS ({DATASET_RESPONSES}),
             its_pairs AS (SELECT pair_id FROM dataset_pairs WHERE dataset_id = $d)
        SELECT (SELECT count(*) FROM (SELECT prompt_id FROM dataset_prompts WHERE dataset_id = $d
                                      UNION SELECT prompt_id FROM pairs WHERE id IN (SELECT pair_id FROM its_pairs)))
                   AS prompts,
               (SELECT count(*) FROM members) AS answers,
               (SELECT count(*) FROM responses WHERE id IN (SELECT id FROM members) AND generation IS NOT NULL)
                   AS generated,
               (SELECT count(DISTINCT response_id) FROM perplexities WHERE response_id IN (SELECT id FROM members))
                   AS scored,
               (SELECT count(*) FROM its_pairs) AS pairs,
               (SELECT count(*) FROM pairs WHERE id IN (SELECT pair_id FROM its_pairs)
                  AND (source_verdict IS NOT NULL OR id IN (SELECT pair_id FROM labels
                                                           WHERE verdict IN ('first', 'second')))) AS preferred
        """, {"d": dataset_id})[0]
    return row


def labels_by_annotator(store: Store, dataset_id: int) -> dict[str, int]:
    """Labels (skips left out) on a dataset's pairs, by annotator; the file's verdicts as 'source'."""
    counts = {r["annotator"]: r["n"] for r in store.query("""
        SELECT annotator, count(*) AS n FROM labels WHERE verdict <> 'skip'
          AND pair_id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)
        GROUP BY annotator ORDER BY annotator""", [dataset_id])}
    source = store.scalar("""SELECT count(*) FROM pairs WHERE source_verdict IS NOT NULL
                             AND id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)""", [dataset_id])
    return {**({"source": source} if source else {}), **counts}


def trained_from(store: Store, dataset: str) -> list[dict]:
    """The training runs that read `dataset` (newest first): id, kind, status, and the model each
    left (name, path, purpose, id), with its final metrics."""
    rows = store.query("""
        SELECT r.id, r.kind, r.status, m.id AS model_id, m.name AS model, m.path, m.purpose, m.base
        FROM runs r LEFT JOIN models m ON m.run_id = r.id AND m.kind = 'adapter'
        WHERE r.dataset = ? AND m.purpose IS NOT NULL ORDER BY r.id DESC""", [dataset])
    for r in rows:
        r["metrics"] = latest_metrics(store, r["id"])
    return rows


def evaluations_and_exports(store: Store, policy: dict) -> dict:
    """A policy's succeeded evaluations (id, message), benchmarks and GGUF exports (name)."""
    return {"evaluations": evaluations_of(store, policy["path"]), "benchmarks": benchmarks_of(store, policy["path"]),
            "exports": [r["name"] for r in gguf_files(store, parent_id=policy["model_id"])]}


def loop_state(store: Store, dataset: str) -> dict | None:
    """Every stage of the loop for `dataset`, and for the pairs the filter made from it (the newest
    such dataset carries the later stages); None when there is no such dataset."""
    dataset_id = store.dataset_id(dataset)
    if dataset_id is None:
        return None
    state = {"dataset": dataset, **data_counts(store, dataset_id)}
    children = filtered_children(store, dataset)
    state["filtered"] = children
    pairs_dataset = children[-1]["name"] if children and not state["pairs"] else dataset
    state["pairs_dataset"] = pairs_dataset
    pairs_id = store.dataset_id(pairs_dataset)
    if pairs_dataset != dataset:
        child = data_counts(store, pairs_id)
        state.update(pairs=child["pairs"], preferred=child["preferred"])
    state["labels"] = labels_by_annotator(store, pairs_id)
    runs = trained_from(store, pairs_dataset) + (trained_from(store, dataset) if pairs_dataset != dataset else [])
    state["reward_models"] = [r for r in runs if r["purpose"] == "reward"]
    state["policies"] = [{**r, **evaluations_and_exports(store, r)} for r in runs if r["purpose"] == POLICY_PURPOSE]
    state["running"] = running_on(store, {dataset, pairs_dataset})
    return state


def running_on(store: Store, datasets: set[str]) -> list[dict]:
    """The runs queued or in progress that read one of `datasets` (id, kind, status, message, progress),
    oldest first: what the map shows as under way."""
    rows = store.query("""
        SELECT r.id, r.kind, r.status, r.message,
               (SELECT arg_max(value, rowid) FROM run_metrics m WHERE m.run_id = r.id AND m.name = 'progress')
                 AS progress
        FROM runs r WHERE r.status IN ('queued', 'running') AND r.dataset IN (SELECT unnest(?)) ORDER BY r.id""",
                       [sorted(datasets)])
    return rows
